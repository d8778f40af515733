//! Tier 0 (`make bench.core`): the pull-request smoke suite, on a 100k-span fixture.
//!
//! Artifacts: `calibration` (the run's timing reference), `trace_tree_lookup_100k`,
//! `lookup_cached_100k` (lookups asked again, from the decoded cache), `cold_query`, `hot_query`, `refresh_sentinel` (queries after a background refresh: zero
//! LIST requests), `trace_tree_vs_recursive_100k`, `instrumented_vs_plain`,
//! `append_vs_arrowwriter`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Mutex;

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::json;
use support::{Artifact, BenchTier, Fixture, HOT_SQL, enabled, fixture, runtime, sample};
use tracelake::observe::{ScanMetrics, TraceLakeMetrics, names};
use tracelake::synth::{TraceShape, traces};
use tracelake::{TableOptions, TraceLake};
use tracing::Instrument;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const SPANS: usize = 100_000;
/// The Tier 0 search: the newest 20 traces with a matching span in a 10-minute window.
const SEARCH_SQL: &str = "SELECT * FROM trace_search('attr_str(resource_attributes, ''service.name'') = ''payments''', '2024-05-01T12:00:00Z', '2024-05-01T12:10:00Z', 20)";
const COMMITS: usize = 24;

/// Requests on the table's own backend (not the cache) between two snapshots of metrics.
fn requests_between(
    before: &BTreeMap<String, u64>,
    metrics: &TraceLakeMetrics,
) -> BTreeMap<String, u64> {
    let now = support::requests(metrics, "local");
    now.into_iter()
        .filter_map(|(k, v)| {
            let delta = v - before.get(&k).copied().unwrap_or(0);
            (delta > 0).then_some((k, delta))
        })
        .collect()
}

async fn run(ctx: &SessionContext, sql: &str) -> (usize, ScanMetrics) {
    let plan = ctx
        .sql(sql)
        .await
        .expect("plan")
        .create_physical_plan()
        .await
        .expect("physical plan");
    let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
        .await
        .expect("execute");
    (
        batches.iter().map(|b| b.num_rows()).sum(),
        ScanMetrics::from_plan(&plan),
    )
}

fn table_json(f: &Fixture, lake: &TraceLake) -> serde_json::Value {
    let stats = lake.table().stats().expect("stats");
    json!({ "spans": f.spans, "files": stats.files, "commits": f.commits })
}

/// Opens the fixture with the decoded cache of lookup rows off: the lookups measured here
/// repeat their ids (criterion's loop), and these figures are of the read and decode of a
/// lookup (`lookup_cached_100k` measures the cache).
async fn open(f: &Fixture, metrics: &TraceLakeMetrics) -> TraceLake {
    let options = TableOptions {
        metrics: metrics.clone(),
        lookup_cache_bytes: 0,
        ..Default::default()
    };
    TraceLake::open_with_options(f.path.to_str().unwrap(), &options)
        .await
        .expect("open fixture")
}

/// A fixed CPU workload: the reference the other timings are divided by.
fn calibration() -> Artifact {
    let mut a = Artifact::new("calibration", BenchTier::Core, "sort 1M pseudo-random u64");
    let data: Vec<u64> = (0..1_000_000u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    a.timings = sample(20, |_| {
        let mut v = data.clone();
        v.sort_unstable();
        std::hint::black_box(v);
    });
    a.rows = data.len() as u64;
    a
}

/// Backend requests made on behalf of a query, by `operation/path_kind`: the
/// `object_store.request` spans (backend other than `cache`) under a `bench.query` span.
/// Counters alone cannot tell a query's requests from those deltalake's background runtime
/// finishes after a refresh.
static QUERY_REQUESTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

struct QueryRequestCounter;

impl<S> tracing_subscriber::Layer<S> for QueryRequestCounter
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().name() != names::OBJECT_STORE_REQUEST {
            return;
        }
        #[derive(Default)]
        struct Fields {
            op: String,
            kind: String,
            backend: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                match f.name() {
                    names::ATTR_OS_OPERATION => self.op = v.to_string(),
                    names::ATTR_OS_PATH_KIND => self.kind = v.to_string(),
                    names::ATTR_OS_BACKEND => self.backend = v.to_string(),
                    _ => {}
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if fields.backend != "cache"
            && let Some(span) = ctx.span(id)
            && span.scope().skip(1).any(|s| s.name() == "bench.query")
            && let Ok(mut map) = QUERY_REQUESTS.lock()
        {
            *map.entry(format!("{}/{}", fields.op, fields.kind))
                .or_default() += 1;
        }
    }
}

fn core(c: &mut Criterion) {
    if !enabled(BenchTier::Core) {
        return;
    }
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(QueryRequestCounter),
    );
    let rt = runtime();
    let calib = calibration();
    calib.write();
    let reference = Some(("calibration".to_string(), calib.p50()));
    let fx = rt.block_on(fixture(SPANS, COMMITS));
    let metrics = TraceLakeMetrics::new();
    let lake = rt.block_on(open(&fx, &metrics));
    let ctx = lake.session_context().unwrap();
    let table = table_json(&fx, &lake);
    let ids = fx.sample_ids.clone();

    // trace_tree lookups with fresh ids.
    let mut group = c.benchmark_group("core");
    group.sample_size(30);
    let mut i = 0;
    group.bench_function("trace_tree_lookup_100k", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(run(
                &ctx,
                &format!("SELECT * FROM trace_tree('{}')", ids[i % ids.len()]),
            ))
        })
    });
    group.bench_function("hot_query", |b| b.iter(|| rt.block_on(run(&ctx, HOT_SQL))));
    group.finish();

    let mut lookup = Artifact::new(
        "trace_tree_lookup_100k",
        BenchTier::Core,
        "SELECT * FROM trace_tree('<fresh id>')",
    );
    let before = support::requests(&metrics, "local");
    let (rows, scan) = rt.block_on(run(
        &ctx,
        &format!("SELECT * FROM trace_tree('{}')", ids[7]),
    ));
    lookup.requests = requests_between(&before, &metrics);
    lookup.rows = rows as u64;
    lookup.bytes_read = scan.bytes_scanned as u64;
    lookup.timings = sample(200, |i| {
        rt.block_on(run(
            &ctx,
            &format!("SELECT * FROM trace_tree('{}')", ids[(i + 11) % ids.len()]),
        ));
    });
    lookup.table = table.clone();
    lookup.reference = reference.clone();
    lookup.extra =
        json!({"files_opened": scan.files_opened, "row_groups_read": scan.row_groups_read()});
    lookup.write();

    // The same lookups asked again on a lake with the decoded cache of lookup rows on (the
    // default): what a trace view opening a trace it showed before costs.
    let cached_metrics = TraceLakeMetrics::new();
    let cached_lake = rt
        .block_on(TraceLake::open_with_options(
            fx.path.to_str().unwrap(),
            &TableOptions {
                metrics: cached_metrics.clone(),
                ..Default::default()
            },
        ))
        .expect("open fixture");
    let cached_ctx = cached_lake.session_context().unwrap();
    let lookup_sql = |i: usize| {
        format!(
            "SELECT * FROM spans WHERE trace_id = '{}'",
            ids[(i + 11) % ids.len()]
        )
    };
    for i in 0..200 {
        rt.block_on(run(&cached_ctx, &lookup_sql(i)));
    }
    let mut cached = Artifact::new(
        "lookup_cached_100k",
        BenchTier::Core,
        "SELECT * FROM spans WHERE trace_id = '<id looked up before>'",
    );
    let before = support::requests(&cached_metrics, "local");
    let (rows, scan) = rt.block_on(run(&cached_ctx, &lookup_sql(0)));
    cached.requests = requests_between(&before, &cached_metrics);
    cached.rows = rows as u64;
    cached.bytes_read = scan.bytes_scanned as u64;
    cached.timings = sample(200, |i| {
        rt.block_on(run(&cached_ctx, &lookup_sql(i)));
    });
    cached.table = table.clone();
    cached.reference = reference.clone();
    cached.extra = json!({
        "decoded_cache_hits": scan.decoded_cache_hits,
        "lookup_cache_bytes": cached_lake.table().lookup_cache_memory(),
    });
    cached.write();
    drop(cached_ctx);
    drop(cached_lake);

    // Hot path: the same aggregate, warm cache.
    let mut hot = Artifact::new("hot_query", BenchTier::Core, HOT_SQL);
    rt.block_on(run(&ctx, HOT_SQL));
    let before = support::requests(&metrics, "local");
    let (rows, scan) = rt.block_on(run(&ctx, HOT_SQL));
    hot.requests = requests_between(&before, &metrics);
    hot.rows = rows as u64;
    hot.bytes_read = scan.bytes_scanned as u64;
    hot.timings = sample(30, |_| {
        rt.block_on(run(&ctx, HOT_SQL));
    });
    hot.table = table.clone();
    hot.reference = reference.clone();
    hot.write();

    // Search: the 20 newest traces with a span on a route in a 10-minute window (the
    // candidates found by time slices at planning, then 20 lookups).
    let mut search = Artifact::new("trace_search_100k", BenchTier::Core, SEARCH_SQL);
    rt.block_on(run(&ctx, SEARCH_SQL));
    let before = support::requests(&metrics, "local");
    let (rows, scan) = rt.block_on(run(&ctx, SEARCH_SQL));
    search.requests = requests_between(&before, &metrics);
    search.rows = rows as u64;
    search.bytes_read = scan.bytes_scanned as u64;
    search.timings = sample(30, |_| {
        rt.block_on(run(&ctx, SEARCH_SQL));
    });
    search.table = table.clone();
    search.reference = reference.clone();
    search.write();

    // Cold: a fresh lake (empty cache) and a fresh context for every sample; the open is
    // not timed, the first query is.
    let mut cold = Artifact::new("cold_query", BenchTier::Core, HOT_SQL);
    let mut timings = Vec::new();
    for s in 0..10 {
        let m = TraceLakeMetrics::new();
        let fresh = rt.block_on(open(&fx, &m));
        let fresh_ctx = fresh.session_context().unwrap();
        let before = support::requests(&m, "local");
        let started = std::time::Instant::now();
        let (rows, scan) = rt.block_on(run(&fresh_ctx, HOT_SQL));
        timings.push(started.elapsed());
        if s == 0 {
            cold.requests = requests_between(&before, &m);
            cold.rows = rows as u64;
            cold.bytes_read = scan.bytes_scanned as u64;
        }
    }
    timings.sort();
    cold.timings = timings;
    cold.table = table.clone();
    cold.reference = reference.clone();
    cold.write();

    // Refresh-origin sentinel: a reader refreshed by the background tick after another
    // writer's commit; its queries issue no LIST request.
    let sentinel_dir = tempfile::tempdir().unwrap();
    let path = sentinel_dir.path().join("spans");
    let m = TraceLakeMetrics::new();
    let options = TableOptions {
        metrics: m.clone(),
        ..Default::default()
    };
    let reader = rt
        .block_on(TraceLake::create_with_options(
            path.to_str().unwrap(),
            &options,
        ))
        .unwrap();
    let writer = rt
        .block_on(TraceLake::open(path.to_str().unwrap()))
        .unwrap();
    let sentinel_ctx = reader.session_context().unwrap();
    let mut sentinel = Artifact::new(
        "refresh_sentinel",
        BenchTier::Core,
        "queries after a background refresh (LIST must be 0)",
    );
    let mut timings = Vec::new();
    let mut requests: BTreeMap<String, u64> = BTreeMap::new();
    let mut rows_total = 0;
    rt.block_on(async {
        let _tick = reader.refresh_every(Duration::from_millis(10));
        for round in 0..5u64 {
            let spans = traces(
                round,
                TraceShape::Fixed(5),
                200,
                support::DAY0,
                1_000_000_000,
            );
            writer.append_spans(&spans).await.unwrap();
            while reader.version() < writer.version() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if let Ok(mut map) = QUERY_REQUESTS.lock() {
                map.clear();
            }
            let started = std::time::Instant::now();
            let (rows, _) = run(
                &sentinel_ctx,
                "SELECT count(*) FROM spans WHERE kind = 'SERVER'",
            )
            .instrument(tracing::info_span!("bench.query"))
            .await;
            timings.push(started.elapsed());
            if let Ok(map) = QUERY_REQUESTS.lock() {
                for (k, v) in map.iter() {
                    *requests.entry(k.clone()).or_default() += v;
                }
            }
            rows_total += rows;
        }
    });
    assert!(
        !requests.keys().any(|k| k.starts_with("list/")),
        "a query listed after a background refresh: {requests:?}"
    );
    timings.sort();
    sentinel.timings = timings;
    sentinel.requests = requests;
    sentinel.rows = rows_total as u64;
    sentinel.reference = reference.clone();
    sentinel.write();

    // trace_tree against WITH RECURSIVE over deltalake's provider, same table, same ids.
    let raw_ctx = SessionContext::new();
    let url = url::Url::from_directory_path(std::path::absolute(&fx.path).unwrap()).unwrap();
    let provider = rt.block_on(async {
        let t = deltalake::open_table(url).await.expect("deltalake open");
        t.table_provider().await.expect("deltalake provider")
    });
    raw_ctx.register_table("raw", provider).unwrap();
    let recursive_sql = |id: &str| {
        format!(
            "WITH RECURSIVE tree AS ( \
               SELECT span_id, parent_span_id, 0 AS depth, CAST(span_id AS VARCHAR) AS path \
               FROM raw WHERE trace_id = '{id}' AND parent_span_id IS NULL \
               UNION ALL \
               SELECT s.span_id, s.parent_span_id, t.depth + 1, concat(t.path, '/', s.span_id) \
               FROM raw s JOIN tree t ON s.parent_span_id = t.span_id WHERE s.trace_id = '{id}' \
             ) SELECT * FROM tree ORDER BY path"
        )
    };
    let mut recursive = Artifact::new(
        "with_recursive_deltalake_100k",
        BenchTier::Core,
        "WITH RECURSIVE over deltalake's table provider",
    );
    recursive.timings = sample(10, |i| {
        recursive.rows = rt.block_on(run(&raw_ctx, &recursive_sql(&ids[i + 20]))).0 as u64;
    });
    recursive.table = table.clone();
    recursive.write();
    let mut vs = Artifact::new(
        "trace_tree_vs_recursive_100k",
        BenchTier::Core,
        "trace_tree p50 / WITH RECURSIVE p50, same run",
    );
    vs.timings = sample(10, |i| {
        vs.rows = rt
            .block_on(run(
                &ctx,
                &format!("SELECT * FROM trace_tree('{}')", ids[i + 20]),
            ))
            .0 as u64;
    });
    assert_eq!(vs.rows, recursive.rows, "both build the same tree");
    vs.reference = Some((recursive.name.clone(), recursive.p50()));
    vs.extra = json!({ "speedup": recursive.p50() as f64 / vs.p50().max(1) as f64 });
    vs.table = table.clone();
    vs.write();

    // Instrumentation overhead: the same query on a plain and an instrumented context.
    let plain = SessionContext::new_with_config(SessionConfig::new());
    lake.register(&plain).unwrap();
    let overhead_sql = format!("SELECT * FROM spans WHERE trace_id = '{}'", ids[3]);
    rt.block_on(run(&plain, &overhead_sql));
    rt.block_on(run(&ctx, &overhead_sql));
    let mut plain_a = Artifact::new("plain_context_lookup", BenchTier::Core, &overhead_sql);
    let mut inst_a = Artifact::new("instrumented_vs_plain", BenchTier::Core, &overhead_sql);
    let mut p = Vec::new();
    let mut q = Vec::new();
    for _ in 0..300 {
        // Interleaved, so both see the same machine noise.
        p.extend(sample(1, |_| {
            plain_a.rows = rt.block_on(run(&plain, &overhead_sql)).0 as u64;
        }));
        q.extend(sample(1, |_| {
            inst_a.rows = rt.block_on(run(&ctx, &overhead_sql)).0 as u64;
        }));
    }
    p.sort();
    q.sort();
    plain_a.timings = p;
    inst_a.timings = q;
    inst_a.reference = Some((plain_a.name.clone(), plain_a.p50()));
    inst_a.extra = json!({ "overhead": inst_a.p50() as f64 / plain_a.p50().max(1) as f64 - 1.0 });
    plain_a.write();
    inst_a.write();

    // Append throughput against ArrowWriter writing the same batches to the same disk.
    let spans = traces(
        77,
        TraceShape::Fixed(5),
        SPANS / 5 / 4,
        support::DAY0,
        3_600_000_000_000,
    );
    let batch = tracelake::span::spans_to_batch(&spans).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut append = Artifact::new(
        "append_vs_arrowwriter",
        BenchTier::Core,
        "append 25k spans as one commit",
    );
    let mut writer_a = Artifact::new(
        "arrowwriter_25k",
        BenchTier::Core,
        "parquet ArrowWriter, same batch",
    );
    let lakes: Vec<TraceLake> = (0..5)
        .map(|n| {
            rt.block_on(TraceLake::create(
                dir.path().join(format!("a{n}")).to_str().unwrap(),
            ))
            .unwrap()
        })
        .collect();
    append.timings = sample(lakes.len(), |n| {
        append.rows = rt
            .block_on(lakes[n].append_batches(std::slice::from_ref(&batch)))
            .unwrap()
            .rows;
    });
    writer_a.timings = sample(5, |i| {
        let file = std::fs::File::create(dir.path().join(format!("w{i}.parquet"))).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        writer_a.rows = batch.num_rows() as u64;
    });
    append.reference = Some((writer_a.name.clone(), writer_a.p50()));
    append.extra = json!({
        "spans_per_second": append.rows as f64 / (append.p50() as f64 / 1e9),
        "arrowwriter_spans_per_second": writer_a.rows as f64 / (writer_a.p50() as f64 / 1e9),
    });
    writer_a.write();
    append.write();
}

criterion_group!(benches, core);
criterion_main!(benches);
