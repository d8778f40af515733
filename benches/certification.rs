//! Tier 2 (`make bench.certification`): the same lookups against object storage with real
//! request latency, simulated with object_store's `ThrottledStore` (per-call waits close to a
//! cloud store's first-byte latency). Reports open time, lookup and cold-query latency with
//! their request counts: with latency, request counts are the cost.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use object_store::memory::InMemory;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use serde_json::json;
use support::{Artifact, BenchTier, enabled, runtime};
use tracelake::observe::{TraceLakeMetrics, telemetry};
use tracelake::synth::{TraceShape, traces};
use tracelake::{TableOptions, TraceLake};

fn throttle() -> ThrottleConfig {
    ThrottleConfig {
        wait_get_per_call: Duration::from_millis(15),
        wait_list_per_call: Duration::from_millis(25),
        wait_put_per_call: Duration::from_millis(30),
        wait_delete_per_call: Duration::from_millis(15),
        ..Default::default()
    }
}

fn requests(metrics: &TraceLakeMetrics) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for op in telemetry::OPERATIONS {
        for kind in telemetry::PATH_KINDS {
            let n = metrics.request_count("memory", op, kind);
            if n > 0 {
                out.insert(format!("{op}/{kind}"), n);
            }
        }
    }
    out
}

fn certification(_c: &mut Criterion) {
    if !enabled(BenchTier::Certification) {
        return;
    }
    let rt = runtime();
    let store = Arc::new(ThrottledStore::new(InMemory::new(), throttle()));
    let write_options = TableOptions {
        root_store: Some(store.clone()),
        ..Default::default()
    };
    let url = "memory:///certification";
    let mut ids = Vec::new();
    rt.block_on(async {
        let lake = TraceLake::create_with_options(url, &write_options)
            .await
            .unwrap();
        for commit in 0..24u64 {
            let spans = traces(
                commit,
                TraceShape::Fixed(5),
                1_000,
                support::DAY0 + commit as i64 * 3_600_000_000_000,
                3_600_000_000_000,
            );
            ids.push(spans[100].trace_id.clone());
            lake.append_spans(&spans).await.unwrap();
        }
    });

    // Open (load the log, index the files).
    let metrics = TraceLakeMetrics::new();
    let options = TableOptions {
        root_store: Some(store.clone()),
        metrics: metrics.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    let lake = rt
        .block_on(TraceLake::open_with_options(url, &options))
        .unwrap();
    let mut open = Artifact::new(
        "throttled_open",
        BenchTier::Certification,
        "TraceLake::open, 24 commits",
    );
    open.timings = vec![started.elapsed()];
    open.requests = requests(&metrics);
    open.table = json!({"spans": 120_000, "commits": 24});
    open.write();

    let ctx = lake.session_context().unwrap();
    let mut lookup = Artifact::new(
        "throttled_trace_tree_lookup",
        BenchTier::Certification,
        "SELECT * FROM trace_tree('<id>')",
    );
    let before = requests(&metrics);
    let mut timings = Vec::new();
    for id in &ids {
        let t = Instant::now();
        let rows: usize = rt
            .block_on(async {
                ctx.sql(&format!("SELECT * FROM trace_tree('{id}')"))
                    .await?
                    .collect()
                    .await
            })
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        timings.push(t.elapsed());
        lookup.rows = rows as u64;
    }
    timings.sort();
    lookup.timings = timings;
    let after = requests(&metrics);
    lookup.requests = after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d / ids.len() as u64))
        })
        .collect();
    lookup.table = open.table.clone();
    lookup.extra = json!({"note": "requests are per lookup (averaged over 24 fresh ids)"});
    lookup.write();
}

criterion_group!(benches, certification);
criterion_main!(benches);
