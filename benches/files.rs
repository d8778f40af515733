//! Tables of many files (issue 13), Tier 1 (`make bench.extended`, group `files`): the same
//! 1M spans (5-span traces over one day) written in 24, 2,000 and 10,000 commits of one data
//! file each, in one run. For each table:
//!
//! - `files_<n>_open`: `TraceLake::open` p50 (local directory), with the heap bytes the open
//!   holds (a counting allocator: live bytes after the open minus before) and resident memory;
//!   opens and lookups are interleaved across the three tables (one on each in turn), so
//!   that drift of this shared machine hits all three alike;
//! - `SELECT * FROM spans WHERE trace_id = X` p50 over 200 ids: `files_<n>_lookup_footer_cold`
//!   (fresh ids right after the open: the footer of the file an id is in is read by its
//!   first lookup), `files_<n>_lookup_fresh` (other fresh ids once a scan has read every
//!   footer, as in a long-lived process: data pages not in the object cache) and
//!   `files_<n>_lookup_repeated` (those ids again); with the heap the index then holds;
//! - on the latency-injected store (the table copied into object_store's `ThrottledStore`
//!   over memory: 15 ms a GET, 25 ms a LIST), `files_<n>_throttled_open` and
//!   `files_<n>_throttled_cold_lookup`: time and requests per lookup with fresh ids, and the
//!   sequential round trips that time amounts to (p50 / 15 ms).
//!
//! Every artifact of the 2,000- and 10,000-file tables refers to the same figure at 24 files.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::SessionContext;
use object_store::memory::InMemory;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use serde_json::json;
use support::{Artifact, BenchTier, enabled, group_selected, runtime, sample};
use tracelake::observe::TraceLakeMetrics;
use tracelake::{TableOptions, TraceLake};

#[global_allocator]
static ALLOC: support::CountingAlloc = support::CountingAlloc;

const SPANS: usize = 1_000_000;
const FILE_COUNTS: [usize; 3] = [24, 2_000, 10_000];
/// Lookups per measurement (fresh ids: each looked up once).
const LOOKUPS: usize = 200;
/// Cold lookups on the latency-injected store.
const COLD_LOOKUPS: usize = 12;
const GET_LATENCY: Duration = Duration::from_millis(15);

fn throttle() -> ThrottleConfig {
    ThrottleConfig {
        wait_get_per_call: GET_LATENCY,
        wait_list_per_call: Duration::from_millis(25),
        wait_put_per_call: Duration::from_millis(30),
        wait_delete_per_call: Duration::from_millis(15),
        ..Default::default()
    }
}

fn per_lookup(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    n: u64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d as f64 / n as f64))
        })
        .collect()
}

/// Writes `artifact`, referring to the 24-file figure of the same measure (`base`, filled by
/// the 24-file table, measured first).
fn write(base: &mut BTreeMap<String, u64>, commits: usize, measure: &str, mut artifact: Artifact) {
    match base.get(measure) {
        Some(reference) if commits != FILE_COUNTS[0] => {
            artifact.reference = Some((format!("files_{}_{measure}", FILE_COUNTS[0]), *reference));
        }
        _ => {
            base.insert(measure.to_string(), artifact.p50());
        }
    }
    artifact.write();
}

fn table_json(commits: usize, files: usize) -> serde_json::Value {
    json!({"spans": SPANS, "commits": commits, "files": files})
}

/// One table, open in this process.
struct Held {
    commits: usize,
    fixture: support::Fixture,
    lake: TraceLake,
    ctx: SessionContext,
    files: usize,
}

/// `f(k, i)` for sample `i` of table `k`, interleaved (sample 0 of every table, then sample
/// 1...) so that machine drift hits every table alike; per table, the sorted timings.
fn interleaved(tables: usize, n: usize, mut f: impl FnMut(usize, usize)) -> Vec<Vec<Duration>> {
    let mut out = vec![Vec::new(); tables];
    for i in 0..n {
        for (k, timings) in out.iter_mut().enumerate() {
            let t = Instant::now();
            f(k, i);
            timings.push(t.elapsed());
        }
    }
    for timings in &mut out {
        timings.sort();
    }
    out
}

/// Open time, heap held by an open, lookups: the tables side by side.
fn local(rt: &tokio::runtime::Runtime, base: &mut BTreeMap<String, u64>) -> Vec<support::Fixture> {
    let fixtures: Vec<support::Fixture> = FILE_COUNTS
        .iter()
        .map(|&commits| rt.block_on(support::fixture(SPANS, commits)))
        .collect();
    for f in &fixtures {
        assert!(
            f.sample_ids.len() > 2 * LOOKUPS + COLD_LOOKUPS + 1,
            "too few sample ids"
        );
    }
    let paths: Vec<String> = fixtures
        .iter()
        .map(|f| f.path.to_str().expect("utf-8 path").to_string())
        .collect();
    let opens = interleaved(fixtures.len(), 7, |k, _| {
        drop(rt.block_on(TraceLake::open(&paths[k])).expect("open"));
    });

    // One open of each held, for the memory it keeps.
    let mut held = Vec::new();
    for ((&commits, fixture), timings) in FILE_COUNTS.iter().zip(&fixtures).zip(opens) {
        let (heap_before, rss_before) = (support::heap_live(), support::resident_bytes());
        let lake = rt
            .block_on(TraceLake::open(fixture.path.to_str().expect("utf-8")))
            .expect("open");
        let (heap_open, rss_open) = (support::heap_live(), support::resident_bytes());
        let files = lake.table().snapshot().num_files();
        let mut open = Artifact::new(
            &format!("files_{commits}_open"),
            BenchTier::Extended,
            "TraceLake::open",
        );
        open.timings = timings;
        open.table = table_json(commits, files);
        open.extra = json!({
            "heap_bytes_held": heap_open.saturating_sub(heap_before),
            "heap_bytes_held_per_file": heap_open.saturating_sub(heap_before) / files.max(1),
            "resident_bytes_added": rss_open.saturating_sub(rss_before),
        });
        write(base, commits, "open", open);
        let ctx = lake.session_context().expect("context");
        // The first query of a context plans its functions once.
        let ids = &fixture.sample_ids;
        rt.block_on(support::lookup_rows(&ctx, &ids[ids.len() - 1]));
        held.push(Held {
            commits,
            fixture: fixture.clone(),
            lake,
            ctx,
            files,
        });
    }

    // Lookups. First with fresh ids whose files' footers are not read yet (each pays the
    // read of one footer); then, once a scan has read every footer (as a long-lived process
    // has), with other fresh ids (data pages not in the object cache); then those ids again.
    let mut rows = 0;
    let mut look = |k: usize, id: usize| {
        let h: &Held = &held[k];
        rows = rt.block_on(support::lookup_rows(&h.ctx, &h.fixture.sample_ids[id]));
    };
    let footer_cold = interleaved(FILE_COUNTS.len(), LOOKUPS, &mut look);
    let footers_cold: Vec<u64> = held
        .iter()
        .map(|h| h.lake.table().footer_memory())
        .collect();
    for h in &held {
        rt.block_on(async {
            h.ctx
                .sql("SELECT count(*) FROM spans")
                .await
                .expect("plan")
                .collect()
                .await
                .expect("count")
        });
    }
    let fresh = interleaved(FILE_COUNTS.len(), LOOKUPS, |k, i| look(k, LOOKUPS + i));
    let repeated = interleaved(FILE_COUNTS.len(), LOOKUPS, |k, i| look(k, LOOKUPS + i));
    for (k, h) in held.iter().enumerate() {
        for (name, timings, footers) in [
            ("lookup_footer_cold", &footer_cold[k], footers_cold[k]),
            ("lookup_fresh", &fresh[k], h.lake.table().footer_memory()),
            (
                "lookup_repeated",
                &repeated[k],
                h.lake.table().footer_memory(),
            ),
        ] {
            let mut a = Artifact::new(
                &format!("files_{}_{name}", h.commits),
                BenchTier::Extended,
                "SELECT * FROM spans WHERE trace_id = '<id>'",
            );
            a.timings = timings.clone();
            a.rows = rows as u64;
            a.table = table_json(h.commits, h.files);
            a.extra = json!({
                "footer_bytes_held": footers,
                "footer_budget_bytes": TableOptions::default().footer_cache_bytes,
                "ids": LOOKUPS,
                "interleaved": "one lookup on each table in turn",
            });
            write(base, h.commits, name, a);
        }
    }
    fixtures
}

/// The latency-injected store: each table, cold (filled before the waits apply).
fn throttled(
    rt: &tokio::runtime::Runtime,
    commits: usize,
    fixture: &support::Fixture,
    base: &mut BTreeMap<String, u64>,
) {
    let store = Arc::new(ThrottledStore::new(
        InMemory::new(),
        ThrottleConfig::default(),
    ));
    let prefix = format!("files-{commits}");
    rt.block_on(support::load_into(store.as_ref(), &fixture.path, &prefix));
    store.config_mut(|config| *config = throttle());
    let store: Arc<dyn object_store::ObjectStore> = store;
    let metrics = TraceLakeMetrics::new();
    let options = TableOptions {
        root_store: Some(store),
        metrics: metrics.clone(),
        ..Default::default()
    };
    let url = format!("memory:///{prefix}");
    let started = Instant::now();
    let lake = rt
        .block_on(TraceLake::open_with_options(&url, &options))
        .expect("open throttled");
    let files = lake.table().snapshot().num_files();
    let mut open = Artifact::new(
        &format!("files_{commits}_throttled_open"),
        BenchTier::Extended,
        "TraceLake::open (15 ms a GET, 25 ms a LIST)",
    );
    open.timings = vec![started.elapsed()];
    open.requests = support::requests(&metrics, "memory");
    open.table = table_json(commits, files);
    write(base, commits, "throttled_open", open);

    let ctx = lake.session_context().expect("context");
    let before = support::requests(&metrics, "memory");
    let ids = &fixture.sample_ids;
    let cold_ids = &ids[2 * LOOKUPS..2 * LOOKUPS + COLD_LOOKUPS];
    let mut rows = 0;
    let cold = sample(COLD_LOOKUPS, |i| {
        rows = rt.block_on(support::lookup_rows(&ctx, &cold_ids[i]))
    });
    let after = support::requests(&metrics, "memory");
    let p50 = support::percentile(&cold, 50.0);
    let mut a = Artifact::new(
        &format!("files_{commits}_throttled_cold_lookup"),
        BenchTier::Extended,
        "SELECT * FROM spans WHERE trace_id = '<fresh id>' (15 ms a GET)",
    );
    a.timings = cold;
    a.rows = rows as u64;
    a.table = table_json(commits, files);
    a.extra = json!({
        "requests_per_lookup": per_lookup(&before, &after, COLD_LOOKUPS as u64),
        "sequential_round_trips_p50": p50 as f64 / GET_LATENCY.as_nanos() as f64,
    });
    write(base, commits, "throttled_cold_lookup", a);
}

fn files(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("files") {
        return;
    }
    let rt = runtime();
    let mut base = BTreeMap::new();
    let fixtures = local(&rt, &mut base);
    for (&commits, fixture) in FILE_COUNTS.iter().zip(&fixtures) {
        throttled(&rt, commits, fixture, &mut base);
    }
}

criterion_group!(benches, files);
criterion_main!(benches);
