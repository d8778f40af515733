//! Trace lookups: `trace_tree` p50 with fresh ids at several table sizes, and `trace_tree`
//! against what a user would write without tracelake (deltalake's own table provider and a
//! `WITH RECURSIVE` query building the same tree), in the same run.
//!
//! Every table is opened with the decoded cache of lookup rows off (criterion's loops repeat
//! ids; these figures are of the read), except `trace_tree_lookup_1m_cached`: the same ids
//! asked again with the cache on.
//!
//! Tier 1 (`make bench.extended`): `lookup_vs_recursive_1m` (the comparison at 1M spans),
//! `lookup_scaling` (100k, 1M and 10M spans in one run, and the 10M / 100k ratio) and
//! `lookup_after_optimize` (1M and 5M spans in 24 commits, then the same spans compacted by
//! `optimize`: the compacted table must look up at least as fast), `lookup_file_size` (one
//! compacted file of 1M rows against one of 10M rows). `TRACELAKE_BENCH_GROUP`
//! selects groups (comma-separated) and skips the others' fixtures.

mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::SessionContext;
use serde_json::json;
use support::{Artifact, BenchTier, Fixture, enabled, fixture, group_selected, runtime, sample};
use tracelake::TraceLake;
use tracelake::observe::ScanMetrics;

const COMMITS: usize = 24;

struct Opened {
    fixture: Fixture,
    lake: TraceLake,
    ctx: SessionContext,
}

/// Opens the table at `path` with the decoded cache of lookup rows off: criterion's loops
/// repeat ids, and the figures here are of the read and decode of a lookup (the cache is
/// measured apart, `trace_tree_lookup_1m_cached`).
async fn open_lake(path: &std::path::Path) -> TraceLake {
    let options = tracelake::TableOptions {
        lookup_cache_bytes: 0,
        ..Default::default()
    };
    TraceLake::open_with_options(path.to_str().unwrap(), &options)
        .await
        .expect("open fixture")
}

async fn open(spans: usize) -> Opened {
    let fixture = fixture(spans, COMMITS).await;
    let lake = open_lake(&fixture.path).await;
    let ctx = lake.session_context().expect("context");
    Opened { fixture, lake, ctx }
}

/// Runs `sql` and returns (rows, scan metrics).
async fn run(ctx: &SessionContext, sql: &str) -> (usize, ScanMetrics) {
    let df = ctx.sql(sql).await.expect("plan");
    let plan = df.create_physical_plan().await.expect("physical plan");
    let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
        .await
        .expect("execute");
    (
        batches.iter().map(|b| b.num_rows()).sum(),
        ScanMetrics::from_plan(&plan),
    )
}

fn tree_sql(id: &str) -> String {
    format!("SELECT * FROM trace_tree('{id}')")
}

/// The same tree with SQL only: a recursive CTE over deltalake's provider (`raw`).
fn recursive_sql(id: &str) -> String {
    format!(
        "WITH RECURSIVE tree AS ( \
           SELECT span_id, parent_span_id, name, service_name, start_time_unix_nano, 0 AS depth, \
                  CAST(span_id AS VARCHAR) AS path \
           FROM raw WHERE trace_id = '{id}' AND parent_span_id IS NULL \
           UNION ALL \
           SELECT s.span_id, s.parent_span_id, s.name, s.service_name, s.start_time_unix_nano, \
                  t.depth + 1, concat(t.path, '/', s.span_id) \
           FROM raw s JOIN tree t ON s.parent_span_id = t.span_id \
           WHERE s.trace_id = '{id}' \
         ) SELECT * FROM tree ORDER BY path"
    )
}

/// p50 of `trace_tree` with fresh ids on `opened`; returns the artifact.
fn measure_lookup(
    rt: &tokio::runtime::Runtime,
    opened: &Opened,
    tier: BenchTier,
    name: &str,
) -> Artifact {
    let ids = &opened.fixture.sample_ids;
    // Warm: the first query of a context plans its functions once.
    rt.block_on(run(&opened.ctx, &tree_sql(&ids[0])));
    let mut rows = 0;
    let timings = sample(200.min(ids.len()), |i| {
        rows = rt
            .block_on(run(&opened.ctx, &tree_sql(&ids[i % ids.len()])))
            .0;
    });
    lookup_artifact(rt, opened, tier, name, timings, rows)
}

/// Like [`measure_lookup`] on two tables, their samples interleaved (a lookup on `a`, then
/// one on `b`, ...) so that both see the same machine: for ratios between them. Each id is
/// looked up once per table.
fn measure_lookup_pair(
    rt: &tokio::runtime::Runtime,
    (a, name_a): (&Opened, &str),
    (b, name_b): (&Opened, &str),
) -> (Artifact, Artifact) {
    let tier = BenchTier::Extended;
    let (ids_a, ids_b) = (&a.fixture.sample_ids, &b.fixture.sample_ids);
    rt.block_on(run(&a.ctx, &tree_sql(&ids_a[0])));
    rt.block_on(run(&b.ctx, &tree_sql(&ids_b[0])));
    let n = 300.min(ids_a.len()).min(ids_b.len()) - 1;
    let (mut times_a, mut times_b) = (Vec::new(), Vec::new());
    let (mut rows_a, mut rows_b) = (0, 0);
    for i in 1..=n {
        let t = std::time::Instant::now();
        rows_a = rt.block_on(run(&a.ctx, &tree_sql(&ids_a[i]))).0;
        times_a.push(t.elapsed());
        let t = std::time::Instant::now();
        rows_b = rt.block_on(run(&b.ctx, &tree_sql(&ids_b[i]))).0;
        times_b.push(t.elapsed());
    }
    times_a.sort();
    times_b.sort();
    let first = lookup_artifact(rt, a, tier, name_a, times_a, rows_a);
    let mut second = lookup_artifact(rt, b, tier, name_b, times_b, rows_b);
    second.reference = Some((name_a.to_string(), first.p50()));
    (first, second)
}

/// The artifact of lookups on `opened` that took `timings` (sorted).
fn lookup_artifact(
    rt: &tokio::runtime::Runtime,
    opened: &Opened,
    tier: BenchTier,
    name: &str,
    timings: Vec<std::time::Duration>,
    rows: usize,
) -> Artifact {
    let ids = &opened.fixture.sample_ids;
    let (_, metrics) = rt.block_on(run(&opened.ctx, &tree_sql(&ids[1])));
    let files = opened.lake.table().snapshot().num_files();
    let mut artifact = Artifact::new(name, tier, "SELECT * FROM trace_tree('<fresh id>')");
    artifact.timings = timings;
    artifact.rows = rows as u64;
    artifact.bytes_read = metrics.bytes_scanned as u64;
    artifact.table = json!({
        "spans": opened.fixture.spans,
        "files": files,
        "commits": opened.fixture.commits,
    });
    artifact.extra = json!({
        "files_opened": metrics.files_opened,
        "row_groups_read": metrics.row_groups_read(),
    });
    artifact
}

fn lookup_vs_recursive_1m(c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("lookup_vs_recursive_1m") {
        return;
    }
    let rt = runtime();
    let small = rt.block_on(open(100_000));
    let large = rt.block_on(open(1_000_000));

    let mut group = c.benchmark_group("lookup_vs_recursive_1m");
    for (label, opened) in [("100k", &small), ("1m", &large)] {
        let ids = opened.fixture.sample_ids.clone();
        let mut i = 0;
        group.bench_function(format!("trace_tree_{label}"), |b| {
            b.iter(|| {
                i += 1;
                rt.block_on(run(&opened.ctx, &tree_sql(&ids[i % ids.len()])))
            })
        });
    }
    group.finish();
    measure_lookup(
        &rt,
        &small,
        BenchTier::Extended,
        "trace_tree_lookup_100k_t1",
    )
    .write();
    let tree_1m = measure_lookup(&rt, &large, BenchTier::Extended, "trace_tree_lookup_1m");
    tree_1m.write();

    // The alternative: deltalake's provider and WITH RECURSIVE, same table, same ids.
    let raw_ctx = SessionContext::new();
    let url =
        url::Url::from_directory_path(std::path::absolute(&large.fixture.path).unwrap()).unwrap();
    let provider = rt.block_on(async {
        let table = deltalake::open_table(url)
            .await
            .expect("open with deltalake");
        table.table_provider().await.expect("deltalake provider")
    });
    raw_ctx
        .register_table("raw", provider)
        .expect("register raw");
    let ids = &large.fixture.sample_ids;
    let (tree_rows, _) = rt.block_on(run(&large.ctx, &tree_sql(&ids[3])));
    let (recursive_rows, _) = rt.block_on(run(&raw_ctx, &recursive_sql(&ids[3])));
    assert_eq!(tree_rows, recursive_rows, "both build the same tree");
    let mut recursive = Artifact::new(
        "with_recursive_deltalake_1m",
        BenchTier::Extended,
        "WITH RECURSIVE over deltalake's DeltaTableProvider",
    );
    recursive.timings = sample(10, |i| {
        recursive.rows = rt.block_on(run(&raw_ctx, &recursive_sql(&ids[i + 10]))).0 as u64;
    });
    recursive.table = tree_1m.table.clone();
    let mut ratio = Artifact::new(
        "trace_tree_vs_recursive_1m",
        BenchTier::Extended,
        "trace_tree p50 relative to WITH RECURSIVE p50 (same run)",
    );
    ratio.timings = tree_1m.timings.clone();
    ratio.rows = tree_1m.rows;
    ratio.table = tree_1m.table.clone();
    ratio.reference = Some((recursive.name.clone(), recursive.p50()));
    ratio.extra = json!({ "speedup": recursive.p50() as f64 / tree_1m.p50().max(1) as f64 });
    recursive.write();
    ratio.write();

    // The same trace_tree lookups asked a second time, with the decoded cache of lookup rows
    // on (the default): a trace view showing a trace again.
    let cached_lake = rt
        .block_on(TraceLake::open(large.fixture.path.to_str().unwrap()))
        .expect("open fixture");
    let cached_ctx = cached_lake.session_context().expect("context");
    let n = 200.min(ids.len());
    for id in &ids[..n] {
        rt.block_on(run(&cached_ctx, &tree_sql(id)));
    }
    let mut cached = Artifact::new(
        "trace_tree_lookup_1m_cached",
        BenchTier::Extended,
        "SELECT * FROM trace_tree('<id looked up before>')",
    );
    cached.timings = sample(n, |i| {
        cached.rows = rt.block_on(run(&cached_ctx, &tree_sql(&ids[i]))).0 as u64;
    });
    let (_, metrics) = rt.block_on(run(&cached_ctx, &tree_sql(&ids[0])));
    cached.table = tree_1m.table.clone();
    cached.reference = Some((recursive.name.clone(), recursive.p50()));
    cached.extra = json!({
        "decoded_cache_hits": metrics.decoded_cache_hits,
        "speedup_vs_recursive": recursive.p50() as f64 / cached.p50().max(1) as f64,
    });
    cached.write();
}

fn lookup_after_optimize(c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("lookup_after_optimize") {
        return;
    }
    let _ = c;
    let rt = runtime();
    for (spans, label) in [(1_000_000, "1m"), (5_000_000, "5m")] {
        let before = rt.block_on(open(spans));
        // The same spans, compacted: a copy of the fixture, optimized, opened afresh.
        let dir = tempfile::tempdir().expect("temp dir");
        let compacted = compacted_copy(&rt, &before, dir.path(), None);
        let (before_artifact, after) = measure_lookup_pair(
            &rt,
            (&before, &format!("lookup_before_optimize_{label}")),
            (&compacted, &format!("lookup_after_optimize_{label}")),
        );
        before_artifact.write();
        after.write();
    }
}

/// A copy of `before`'s fixture under `dir`, optimized (into files of `target_file_size`
/// when given) and opened afresh.
fn compacted_copy(
    rt: &tokio::runtime::Runtime,
    before: &Opened,
    dir: &std::path::Path,
    target_file_size: Option<u64>,
) -> Opened {
    let path = dir.join("spans");
    support::copy_dir(&before.fixture.path, &path);
    rt.block_on(async {
        let lake = TraceLake::open(path.to_str().unwrap())
            .await
            .expect("open copy");
        let mut optimize = lake.table().optimize();
        if let Some(bytes) = target_file_size {
            optimize = optimize.target_file_size(bytes);
        }
        optimize.await.expect("optimize");
        let lake = open_lake(&path).await;
        let ctx = lake.session_context().expect("context");
        Opened {
            fixture: Fixture {
                path: path.clone(),
                ..before.fixture.clone()
            },
            lake,
            ctx,
        }
    })
}

/// `spans` spans of the fixture (24 commits), copied and optimized into one file (files of
/// up to 4 GiB; the fixture's spans are all on one day).
fn one_file(rt: &tokio::runtime::Runtime, spans: usize, dir: &std::path::Path) -> Opened {
    let before = rt.block_on(open(spans));
    let compacted = compacted_copy(rt, &before, dir, Some(4 << 30));
    assert_eq!(
        compacted.lake.table().snapshot().num_files(),
        1,
        "one compacted file"
    );
    compacted
}

/// Lookup cost must not depend on the size of the file that holds the trace: the same lookup
/// on one compacted file of 1M rows and on one of 10M rows.
fn lookup_file_size(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("lookup_file_size") {
        return;
    }
    let rt = runtime();
    let small_dir = tempfile::tempdir().expect("temp dir");
    let small = one_file(&rt, 1_000_000, small_dir.path());
    let large_dir = tempfile::tempdir().expect("temp dir");
    let large = one_file(&rt, 10_000_000, large_dir.path());
    let (small_artifact, large_artifact) = measure_lookup_pair(
        &rt,
        (&small, "lookup_file_1m_rows"),
        (&large, "lookup_file_10m_rows"),
    );
    small_artifact.write();
    large_artifact.write();
}

fn lookup_scaling(c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("lookup_scaling") {
        return;
    }
    let rt = runtime();
    let sizes = [(100_000, "100k"), (1_000_000, "1m"), (10_000_000, "10m")];
    let opened: Vec<Opened> = sizes.iter().map(|(n, _)| rt.block_on(open(*n))).collect();
    let mut group = c.benchmark_group("lookup_scaling");
    group.sample_size(50);
    for ((_, label), o) in sizes.iter().zip(&opened) {
        let ids = o.fixture.sample_ids.clone();
        let mut i = 0;
        group.bench_function(format!("trace_tree_{label}"), |b| {
            b.iter(|| {
                i += 1;
                rt.block_on(run(&o.ctx, &tree_sql(&ids[i % ids.len()])))
            })
        });
    }
    group.finish();
    let artifacts: Vec<Artifact> = sizes
        .iter()
        .zip(&opened)
        .map(|((_, label), o)| {
            measure_lookup(
                &rt,
                o,
                BenchTier::Extended,
                &format!("lookup_scaling_{label}"),
            )
        })
        .collect();
    let base = artifacts[0].p50();
    for mut a in artifacts {
        a.reference = Some(("lookup_scaling_100k".into(), base));
        a.write();
    }
}

criterion_group!(
    benches,
    lookup_vs_recursive_1m,
    lookup_scaling,
    lookup_after_optimize,
    lookup_file_size
);
criterion_main!(benches);
