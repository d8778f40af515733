//! Tier 2 (`make bench.certification`): the same lookups against object storage with real
//! request latency, twice: object_store's `ThrottledStore` (per-call waits close to a cloud
//! store's first-byte latency), and an S3-protocol server on loopback (moto, which the make
//! target installs and starts) reached through object_store's S3 client over HTTP. Reports open
//! time and lookup latency with their request counts: with latency, request counts are the
//! cost.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use object_store::memory::InMemory;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use serde_json::json;
use support::{Artifact, BenchTier, enabled, runtime};
use tracelake::observe::TraceLakeMetrics;
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

/// A store under test: where the table lives and how to reach it.
struct Target {
    /// Artifact name prefix.
    label: &'static str,
    /// Backend name in the request counters.
    backend: &'static str,
    url: String,
    options: TableOptions,
}

impl Target {
    fn options(&self, metrics: &TraceLakeMetrics) -> TableOptions {
        TableOptions {
            storage_options: self.options.storage_options.clone(),
            root_store: self.options.root_store.clone(),
            metrics: metrics.clone(),
            ..Default::default()
        }
    }
}

/// The latency-injected store: object_store's `ThrottledStore` over memory.
fn throttled() -> Target {
    let store = Arc::new(ThrottledStore::new(InMemory::new(), throttle()));
    Target {
        label: "throttled",
        backend: "memory",
        url: "memory:///certification".into(),
        options: TableOptions {
            root_store: Some(store),
            ..Default::default()
        },
    }
}

/// The S3-protocol server on loopback that `make bench.certification` starts (moto), when
/// tracelake is built with the `s3` feature and `TRACELAKE_S3_ENDPOINT` names it.
fn s3() -> Option<Target> {
    let endpoint = std::env::var("TRACELAKE_S3_ENDPOINT").ok()?;
    if !cfg!(feature = "s3") {
        eprintln!("TRACELAKE_S3_ENDPOINT is set but the bench was built without the `s3` feature");
        return None;
    }
    let bucket = std::env::var("TRACELAKE_S3_BUCKET").unwrap_or_else(|_| "tracelake-bench".into());
    // A fresh prefix per run: the server may keep objects of an earlier run.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let storage_options = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "testing"),
        ("aws_secret_access_key", "testing"),
        ("aws_region", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Some(Target {
        label: "s3",
        backend: "s3",
        url: format!("s3://{bucket}/certification-{run}"),
        options: TableOptions {
            storage_options,
            ..Default::default()
        },
    })
}

/// Writes a 24-commit table to `target`, then measures open and lookups with fresh ids.
fn run_target(rt: &tokio::runtime::Runtime, target: &Target) {
    let mut ids = Vec::new();
    rt.block_on(async {
        let lake =
            TraceLake::create_with_options(&target.url, &target.options(&TraceLakeMetrics::new()))
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
    let started = Instant::now();
    let lake = rt
        .block_on(TraceLake::open_with_options(
            &target.url,
            &target.options(&metrics),
        ))
        .unwrap();
    let mut open = Artifact::new(
        &format!("{}_open", target.label),
        BenchTier::Certification,
        "TraceLake::open, 24 commits",
    );
    open.timings = vec![started.elapsed()];
    open.requests = support::requests(&metrics, target.backend);
    open.table = json!({"spans": 120_000, "commits": 24, "store": target.url});
    open.write();

    let ctx = lake.session_context().unwrap();
    let mut lookup = Artifact::new(
        &format!("{}_trace_tree_lookup", target.label),
        BenchTier::Certification,
        "SELECT * FROM trace_tree('<id>')",
    );
    let before = support::requests(&metrics, target.backend);
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
    let after = support::requests(&metrics, target.backend);
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

fn certification(_c: &mut Criterion) {
    if !enabled(BenchTier::Certification) {
        return;
    }
    let rt = runtime();
    run_target(&rt, &throttled());
    match s3() {
        Some(target) => run_target(&rt, &target),
        None => eprintln!(
            "S3-protocol server not configured: run `make bench.certification`, which starts one \
             on loopback (TRACELAKE_S3_ENDPOINT) and builds with the `s3` feature"
        ),
    }
}

criterion_group!(benches, certification);
criterion_main!(benches);
