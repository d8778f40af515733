//! Where the time of a lookup and of an append goes, phase by phase (the figures quoted in
//! docs/architecture.md and docs/benchmarks.md).
//!
//! ```text
//! cargo run --profile bench --example phases -- lookup [SPANS] [optimized]   # default 1,000,000
//! cargo run --profile bench --example phases -- ingest
//! cargo run --profile bench --example phases -- commits [N] [SPANS]   # default 300 x 800
//! cargo run --profile bench --example phases -- scale [SPANS] [COMMITS]   # default 1M in 24
//! cargo run --profile bench --example phases -- hot   # the Tier 0 hot query, planning and execution
//! cargo run --profile bench --example phases -- open [SPANS] [COMMITS] [N]   # N opens (default 50)
//! ```
//!
//! `lookup` opens the bench fixture of SPANS spans in 24 commits (built under
//! target/bench-fixtures/ if missing) and prints, for four lookups, the p50 of
//! SQL planning, physical planning and execution. `ingest` appends 1M spans in 10 batches and
//! prints the p50 of validation, of the commit-wide sort, of parquet's `ArrowWriter` with
//! tracelake's writer properties on the sorted batches, and of the whole `append_batches`.

#[path = "../benches/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use tracelake::__internals::{self as ingest, writer_properties};
use tracelake::TraceLake;

const SAMPLES: usize = 300;

/// A labelled query over one trace id.
type Lookup = (&'static str, fn(&str) -> String);

fn p50_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn lookup(spans: usize, optimized: bool) {
    let rt = support::runtime();
    rt.block_on(async {
        let fixture = support::fixture(spans, 24).await;
        // `optimized`: a copy of the fixture, compacted by `optimize`.
        let copy = tempfile::tempdir().expect("temp dir");
        let path = if optimized {
            let path = copy.path().join("spans");
            support::copy_dir(&fixture.path, &path);
            let lake = TraceLake::open(path.to_str().expect("utf-8 path"))
                .await
                .expect("open copy");
            let outcome = lake.table().optimize().await.expect("optimize");
            println!(
                "optimized: {} files removed, {} added",
                outcome.files_removed, outcome.files_added
            );
            path
        } else {
            fixture.path.clone()
        };
        let lake = TraceLake::open(path.to_str().expect("utf-8 path"))
            .await
            .expect("open fixture");
        let ctx = lake.session_context().expect("context");
        let queries: [Lookup; 4] = [
            ("trace_tree *", |id| {
                format!("SELECT * FROM trace_tree('{id}')")
            }),
            ("spans *", |id| {
                format!("SELECT * FROM spans WHERE trace_id = '{id}'")
            }),
            ("spans span_id", |id| {
                format!("SELECT span_id FROM spans WHERE trace_id = '{id}'")
            }),
            ("trace_tree 3 cols", |id| {
                format!("SELECT span_id, depth, name FROM trace_tree('{id}')")
            }),
        ];
        println!(
            "{spans} spans, 24 commits, p50 of up to {SAMPLES} lookups with fresh ids, then of \
             the same ids again (their pages in the object cache) (ms):"
        );
        // Each query gets its own ids, so that its first pass finds none of their pages in
        // the object cache.
        let per_query = SAMPLES.min(fixture.sample_ids.len() / queries.len());
        for (q, ((label, sql), pass)) in queries
            .iter()
            .flat_map(|q| [(q, "fresh"), (q, "repeated")])
            .enumerate()
        {
            let label = format!("{label} ({pass})");
            let ids = &fixture.sample_ids[q / 2 * per_query..(q / 2 + 1) * per_query];
            let (mut logical, mut physical, mut execution) = (vec![], vec![], vec![]);
            for id in ids {
                let sql = sql(id);
                let t0 = Instant::now();
                let df = ctx.sql(&sql).await.expect("plan");
                let t1 = Instant::now();
                let plan = df.create_physical_plan().await.expect("physical plan");
                let t2 = Instant::now();
                let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
                    .await
                    .expect("execute");
                let t3 = Instant::now();
                assert!(batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
                logical.push(t1 - t0);
                physical.push(t2 - t1);
                execution.push(t3 - t2);
            }
            let total: Vec<Duration> = logical
                .iter()
                .zip(&physical)
                .zip(&execution)
                .map(|((l, p), e)| *l + *p + *e)
                .collect();
            println!(
                "  {label:29} sql {:.3}  physical {:.3}  execution {:.3}  total {:.3}",
                p50_ms(logical),
                p50_ms(physical),
                p50_ms(execution),
                p50_ms(total)
            );
        }
    });
}

/// The time of `SELECT * ... WHERE trace_id = X` for each of `ids` (each must find spans).
async fn timed_lookups<'a>(
    ctx: &datafusion::prelude::SessionContext,
    ids: impl Iterator<Item = &'a String>,
) -> Vec<Duration> {
    let mut timings = Vec::new();
    for id in ids {
        let t = Instant::now();
        support::lookup_rows(ctx, id).await;
        timings.push(t.elapsed());
    }
    timings
}

/// Opening and looking up a table of SPANS spans written in COMMITS commits (one file each):
/// open time, memory added by the open, the first lookups (footers not read yet) and warm
/// lookups with fresh ids.
fn scale(spans: usize, commits: usize) {
    let rt = support::runtime();
    rt.block_on(async {
        let fixture = support::fixture(spans, commits).await;
        let path = fixture.path.to_str().expect("utf-8 path").to_string();
        let mut opens = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let lake = TraceLake::open(&path).await.expect("open");
            opens.push(t.elapsed());
            drop(lake);
        }
        let before = support::resident_bytes();
        let lake = TraceLake::open(&path).await.expect("open");
        let after_open = support::resident_bytes();
        let ctx = lake.session_context().expect("context");
        let ids = &fixture.sample_ids;
        let first = timed_lookups(&ctx, ids.iter().take(5)).await;
        let warm = timed_lookups(&ctx, ids.iter().skip(5).take(SAMPLES)).await;
        let after_lookups = support::resident_bytes();
        println!(
            "{spans} spans in {commits} commits: open p50 {:.1} ms, +{:.1} MB at open; first lookups p50 {:.2} ms (max {:.1}); fresh-id lookups p50 {:.3} ms; +{:.1} MB after lookups, footers held {:.1} MB",
            p50_ms(opens),
            (after_open.saturating_sub(before)) as f64 / 1e6,
            p50_ms(first.clone()),
            first.iter().max().map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
            p50_ms(warm),
            (after_lookups.saturating_sub(before)) as f64 / 1e6,
            lake.table().footer_memory() as f64 / 1e6,
        );
    });
}

/// The Tier 0 hot query (an aggregate over every file of the 100k fixture), p50 of 200 runs.
fn hot() {
    let rt = support::runtime();
    rt.block_on(async {
        let fixture = support::fixture(100_000, 24).await;
        let lake = TraceLake::open(fixture.path.to_str().expect("utf-8 path"))
            .await
            .expect("open");
        let ctx = lake.session_context().expect("context");
        let sql = support::HOT_SQL;
        let (mut planning, mut execution) = (vec![], vec![]);
        for _ in 0..200 {
            let t0 = Instant::now();
            let plan = ctx
                .sql(sql)
                .await
                .expect("plan")
                .create_physical_plan()
                .await
                .expect("physical");
            let t1 = Instant::now();
            datafusion::physical_plan::collect(plan, ctx.task_ctx())
                .await
                .expect("run");
            planning.push(t1 - t0);
            execution.push(t1.elapsed());
        }
        println!(
            "hot query: planning p50 {:.3} ms, execution p50 {:.3} ms",
            p50_ms(planning),
            p50_ms(execution)
        );
    });
}

fn ingest_phases() {
    let rt = support::runtime();
    let batches = support::ingest_batches();
    let (mut validate, mut sort, mut write, mut append) = (vec![], vec![], vec![], vec![]);
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("temp dir");
        let t0 = Instant::now();
        let mut storage = Vec::new();
        let mut rows = 0;
        for batch in &batches {
            storage.push(ingest::to_storage(batch, rows).expect("valid"));
            rows += batch.num_rows();
        }
        let t1 = Instant::now();
        let sorted = ingest::sort_for_storage(&storage).expect("sort");
        let t2 = Instant::now();
        let file = std::fs::File::create(dir.path().join("direct.parquet")).expect("file");
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            file,
            sorted[0].schema(),
            Some(writer_properties()),
        )
        .expect("writer");
        for batch in &sorted {
            writer.write(batch).expect("write");
        }
        writer.close().expect("close");
        let t3 = Instant::now();
        let lake = rt
            .block_on(TraceLake::create(
                dir.path().join("t").to_str().expect("utf-8"),
            ))
            .expect("create");
        let t4 = Instant::now();
        rt.block_on(lake.append_batches(&batches)).expect("append");
        append.push(t4.elapsed());
        validate.push(t1 - t0);
        sort.push(t2 - t1);
        write.push(t3 - t2);
    }
    println!("1M spans in 10 batches, p50 of 3 (ms):");
    println!("  validation and conversion        {:.0}", p50_ms(validate));
    println!("  commit-wide sort                 {:.0}", p50_ms(sort));
    println!("  ArrowWriter, tracelake props     {:.0}", p50_ms(write));
    println!("  append_batches (all of it)       {:.0}", p50_ms(append));
}

/// Wall time of each named span (summed by name), from creation to close.
#[derive(Clone, Default)]
struct SpanTimes(
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, (Duration, u64)>>>,
);

struct Started(Instant);

impl<S> tracing_subscriber::Layer<S> for SpanTimes
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Started(Instant::now()));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(started) = span.extensions().get::<Started>()
        {
            let mut times = self.0.lock().expect("span times");
            let entry = times.entry(span.name().to_string()).or_default();
            entry.0 += started.0.elapsed();
            entry.1 += 1;
        }
    }
}

/// `n` commits of `spans` realistic spans each, one after another, on a local table: the mean
/// time of a commit and of each span inside it.
fn commit_phases(n: usize, spans: usize) {
    use tracing_subscriber::layer::SubscriberExt;
    let times = SpanTimes::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(times.clone()))
        .expect("subscriber");
    let rt = support::runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut generator =
        tracelake::synth::TraceGenerator::new(7, tracelake::synth::TraceShape::Realistic);
    let mut t = support::DAY0;
    let batches: Vec<_> = (0..n)
        .map(|_| {
            let mut chunk = Vec::new();
            while chunk.len() < spans {
                chunk.extend(generator.trace(t));
                t += 1_000_000;
            }
            chunk.truncate(spans);
            tracelake::span::spans_to_batch(&chunk).expect("batch")
        })
        .collect();
    let lake = rt
        .block_on(TraceLake::create(
            dir.path().join("t").to_str().expect("utf-8"),
        ))
        .expect("create");
    times.0.lock().expect("times").clear();
    let started = Instant::now();
    let mut each = Vec::new();
    for batch in &batches {
        let t0 = Instant::now();
        rt.block_on(lake.append_batches(std::slice::from_ref(batch)))
            .expect("append");
        each.push(t0.elapsed());
    }
    let total = started.elapsed();
    rt.block_on(lake.wait_for_background_work());
    let mut sorted = each.clone();
    sorted.sort();
    println!(
        "{n} commits of {spans} spans: {:.0} spans/s; per commit p50 {:.2} ms, first 10 {:.2} ms, last 10 {:.2} ms",
        (n * spans) as f64 / total.as_secs_f64(),
        sorted[n / 2].as_secs_f64() * 1e3,
        each[..10.min(n)].iter().sum::<Duration>().as_secs_f64() * 1e3 / 10f64.min(n as f64),
        each[n.saturating_sub(10)..]
            .iter()
            .sum::<Duration>()
            .as_secs_f64()
            * 1e3
            / 10f64.min(n as f64),
    );
    println!("mean wall time per span, over the commits (ms):");
    for (name, (time, count)) in times.0.lock().expect("times").iter() {
        if name.starts_with("delta.") || name == "update_incremental" {
            println!(
                "  {name:28} {:8.3}  ({count} spans)",
                time.as_secs_f64() * 1e3 / n as f64
            );
        }
    }
}

/// Opens the fixture of SPANS spans in COMMITS commits `n` times: the p50 of the whole open
/// and of its `delta.table.load` span (deltalake's load of the log; the rest builds
/// tracelake's file slots).
fn open_phases(spans: usize, commits: usize, n: usize) {
    use tracing_subscriber::layer::SubscriberExt;
    let times = SpanTimes::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(times.clone()))
        .expect("subscriber");
    let rt = support::runtime();
    let fixture = rt.block_on(support::fixture(spans, commits));
    let path = fixture.path.to_str().expect("utf-8 path").to_string();
    times.0.lock().expect("times").clear();
    let mut opens = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let lake = rt.block_on(TraceLake::open(&path)).expect("open");
        opens.push(t.elapsed());
        drop(lake);
    }
    let load = times
        .0
        .lock()
        .expect("times")
        .get(tracelake::observe::names::DELTA_TABLE_LOAD)
        .map(|(time, count)| time.as_secs_f64() * 1e3 / (*count).max(1) as f64)
        .unwrap_or_default();
    println!(
        "{spans} spans in {commits} commits: open p50 {:.1} ms; delta.table.load mean {load:.1} ms",
        p50_ms(opens)
    );
}

/// The next argument as a number, or `default`.
fn number(args: &mut impl Iterator<Item = String>, name: &str, default: usize) -> usize {
    args.next()
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or(default)
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("ingest") => ingest_phases(),
        Some("hot") => hot(),
        Some("open") => {
            let spans = number(&mut args, "SPANS", 1_000_000);
            let commits = number(&mut args, "COMMITS", 24);
            let n = number(&mut args, "N", 50);
            open_phases(spans, commits, n)
        }
        Some("scale") => {
            let spans = number(&mut args, "SPANS", 1_000_000);
            let commits = number(&mut args, "COMMITS", 24);
            scale(spans, commits)
        }
        Some("commits") => {
            let n = number(&mut args, "N", 300);
            let spans = number(&mut args, "SPANS", 800);
            commit_phases(n, spans)
        }
        Some("lookup") | None => {
            let spans = number(&mut args, "SPANS", 1_000_000);
            lookup(spans, args.next().as_deref() == Some("optimized"))
        }
        Some(other) => {
            eprintln!(
                "unknown mode {other:?}: use `lookup [SPANS]`, `ingest` or `commits [N] [SPANS]`"
            );
            std::process::exit(2);
        }
    }
}
