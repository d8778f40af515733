//! One process vs a Ballista cluster of `tracelake` processes on this machine, Tier 1
//! (`make bench.extended`, group `distributed`), over the 10M-span fixture (24 commits):
//!
//! - `service_graph(NULL, NULL)` and `trace_summaries(NULL, NULL)` (counted on the cluster, 2M
//!   traces), in one process (`target_partitions` 2) and on a scheduler with one executor and
//!   with two executors (2 task slots each), one sample of each setup in turn;
//! - a lookup by a fresh trace id (`SELECT * FROM spans WHERE trace_id = ...`), the same way.
//!
//! This machine has 2 cores: a cluster on it cannot be faster than one process; the artifacts
//! report its overhead (reference: the one-process p50 of the same run). Artifacts
//! `distributed_<query>_{local,1_executor,2_executors}`.

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::json;
use support::{Artifact, BenchTier, enabled, fixture, group_selected, runtime};
use tracelake::TraceLake;

const SAMPLES: usize = 5;
const LOOKUPS: usize = 40;

/// The processes of one cluster, stopped when dropped.
struct Cluster {
    nodes: Vec<Child>,
    scheduler_port: u16,
    _work: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = first.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}

fn wait_for(port: u16) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scheduler and `executors` executors (2 slots each), `tracelake` processes on loopback.
fn cluster(executors: usize) -> Cluster {
    let bin = env!("CARGO_BIN_EXE_tracelake");
    let work = tempfile::tempdir().expect("work dir");
    let scheduler_port = free_port_pair();
    let scheduler = format!("127.0.0.1:{scheduler_port}");
    let mut nodes = vec![
        Command::new(bin)
            .args(["scheduler", "--bind", &scheduler])
            .stdout(Stdio::null())
            .spawn()
            .expect("start scheduler"),
    ];
    wait_for(scheduler_port);
    for i in 0..executors {
        let port = free_port_pair();
        let dir = work.path().join(format!("executor-{i}"));
        std::fs::create_dir_all(&dir).expect("executor dir");
        nodes.push(
            Command::new(bin)
                .args(["executor", "--scheduler", &scheduler, "--slots", "2"])
                .args(["--bind", &format!("127.0.0.1:{port}")])
                .args(["--work-dir", dir.to_str().expect("utf-8 path")])
                .stdout(Stdio::null())
                .spawn()
                .expect("start executor"),
        );
        wait_for(port);
    }
    Cluster {
        nodes,
        scheduler_port,
        _work: work,
    }
}

async fn run(ctx: &SessionContext, sql: &str) -> (Duration, usize) {
    let started = Instant::now();
    let batches = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (
        started.elapsed(),
        batches.iter().map(|b| b.num_rows()).sum(),
    )
}

fn distributed(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("distributed") {
        return;
    }
    let rt = runtime();
    let fixture = rt.block_on(fixture(10_000_000, 24));
    let lake = rt
        .block_on(TraceLake::open(fixture.path.to_str().expect("utf-8 path")))
        .expect("open fixture");
    let config = SessionConfig::new().with_target_partitions(2);
    let local = lake
        .session_context_with_config(config.clone())
        .expect("local context");
    let one = cluster(1);
    let two = cluster(2);
    let contexts: Vec<(&str, SessionContext)> = std::iter::once(("local", local))
        .chain(
            [("1_executor", &one), ("2_executors", &two)].map(|(name, c)| {
                let url = format!("df://127.0.0.1:{}", c.scheduler_port);
                let ctx = rt
                    .block_on(tracelake::distributed::remote_context(
                        &lake,
                        &url,
                        config.clone(),
                    ))
                    .expect("cluster context");
                (name, ctx)
            }),
        )
        .collect();

    let queries = [
        (
            "service_graph",
            "SELECT * FROM service_graph(NULL, NULL) ORDER BY 1, 2",
        ),
        (
            "trace_summaries",
            "SELECT count(*), sum(span_count), sum(error_count) FROM trace_summaries(NULL, NULL)",
        ),
    ];
    for (name, sql) in queries {
        // One warm-up each (the object cache, the executors' footers), then interleaved samples.
        let mut rows = Vec::new();
        for (_, ctx) in &contexts {
            rows.push(rt.block_on(run(ctx, sql)).1);
        }
        assert!(rows.iter().all(|r| *r == rows[0]), "{name}: rows {rows:?}");
        let mut timings = vec![Vec::new(); contexts.len()];
        for _ in 0..SAMPLES {
            for (i, (_, ctx)) in contexts.iter().enumerate() {
                timings[i].push(rt.block_on(run(ctx, sql)).0);
            }
        }
        write_artifacts(name, sql, &contexts, timings, rows[0] as u64);
    }

    let ids: Vec<&String> = fixture.sample_ids.iter().take(LOOKUPS).collect();
    let mut timings = vec![Vec::new(); contexts.len()];
    for id in ids {
        let sql = format!("SELECT * FROM spans WHERE trace_id = '{id}'");
        for (i, (_, ctx)) in contexts.iter().enumerate() {
            let (time, rows) = rt.block_on(run(ctx, &sql));
            assert_eq!(rows, 5, "{sql}");
            timings[i].push(time);
        }
    }
    write_artifacts(
        "lookup",
        "SELECT * FROM spans WHERE trace_id = <fresh id>",
        &contexts,
        timings,
        5,
    );
}

fn write_artifacts(
    query: &str,
    sql: &str,
    contexts: &[(&str, SessionContext)],
    mut timings: Vec<Vec<Duration>>,
    rows: u64,
) {
    for t in &mut timings {
        t.sort();
    }
    let local_p50 = support::percentile(&timings[0], 50.0);
    for (i, (setup, _)) in contexts.iter().enumerate() {
        let mut artifact = Artifact::new(
            &format!("distributed_{query}_{setup}"),
            BenchTier::Extended,
            sql,
        );
        artifact.timings = std::mem::take(&mut timings[i]);
        artifact.rows = rows;
        artifact.table = json!({"spans": 10_000_000, "commits": 24});
        if i > 0 {
            artifact.reference = Some((format!("distributed_{query}_local"), local_p50));
        }
        artifact.extra = json!({
            "setup": setup,
            "target_partitions": 2,
            "executor_slots": 2,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        });
        artifact.write();
    }
}

criterion_group!(benches, distributed);
criterion_main!(benches);
