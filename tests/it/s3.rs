//! A trace table on an S3-protocol server (built with `--features s3`; `.ci/run` and
//! `make bench.certification` start moto's server on loopback and pass its address in
//! `TRACELAKE_S3_ENDPOINT`): create, concurrent appends from two handles (conditional-put
//! commits, nothing lost), lookups with no LIST on the query path, refresh, reopen.

use std::collections::HashMap;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use tracelake::observe::TraceLakeMetrics;
use tracelake::synth::{TraceShape, traces};
use tracelake::{TableOptions, TraceLake};

const DAY0: i64 = 1_714_521_600_000_000_000;

fn endpoint() -> String {
    std::env::var("TRACELAKE_S3_ENDPOINT").expect(
        "TRACELAKE_S3_ENDPOINT must name an S3-protocol server for the s3 tests \
         (benches/s3-server.sh start PORT BUCKET starts moto on loopback)",
    )
}

fn options(metrics: &TraceLakeMetrics) -> TableOptions {
    let storage_options: HashMap<String, String> = [
        ("aws_endpoint", endpoint()),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", "testing".into()),
        ("aws_secret_access_key", "testing".into()),
        ("aws_region", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    TableOptions {
        storage_options,
        metrics: metrics.clone(),
        ..Default::default()
    }
}

fn location(name: &str) -> String {
    let bucket = std::env::var("TRACELAKE_S3_BUCKET").unwrap_or_else(|_| "tracelake-bench".into());
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://{bucket}/tests/{name}-{run}")
}

async fn count(lake: &TraceLake) -> i64 {
    let batches = lake
        .session_context()
        .unwrap()
        .sql("SELECT count(*), count(DISTINCT trace_id || span_id) FROM spans")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let total = batches[0].column(0).as_primitive::<Int64Type>().value(0);
    let distinct = batches[0].column(1).as_primitive::<Int64Type>().value(0);
    assert_eq!(total, distinct, "no span twice");
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_on_s3_takes_concurrent_writers_and_serves_lookups_without_listing() {
    let url = location("concurrent");
    let metrics = TraceLakeMetrics::new();
    let first = TraceLake::create_with_options(&url, &options(&metrics))
        .await
        .unwrap();
    let second = TraceLake::open_with_options(&url, &options(&TraceLakeMetrics::new()))
        .await
        .unwrap();

    // Two handles append at once: each commit is a conditional put, a lost race is retried
    // on the next version, and no commit overwrites another.
    let write = |lake: &TraceLake, seed: u64| {
        let spans = traces(seed, TraceShape::Fixed(5), 40, DAY0, 1_000_000_000);
        let lake = lake.clone();
        async move {
            for round in 0..4u64 {
                let batch = traces(
                    seed * 100 + round,
                    TraceShape::Fixed(5),
                    40,
                    DAY0,
                    1_000_000_000,
                );
                lake.append_spans(&batch).await.unwrap();
            }
            spans[0].trace_id.clone()
        }
    };
    let (a, b) = tokio::join!(write(&first, 1), write(&second, 2));
    assert_ne!(a, b);
    first.refresh().await.unwrap();
    assert_eq!(
        first.version(),
        8,
        "eight commits, none lost or overwritten"
    );
    assert_eq!(count(&first).await, 8 * 200);

    // A lookup reads data ranges only: no LIST, no log read.
    let id = traces(101, TraceShape::Fixed(5), 40, DAY0, 1_000_000_000)[7]
        .trace_id
        .clone();
    let lists = metrics.operation_count("s3", "list");
    let log_reads = metrics.request_count("s3", "get", "delta_log");
    let batches = first
        .session_context()
        .unwrap()
        .sql(&format!("SELECT span_id FROM trace_tree('{id}')"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    assert_eq!(metrics.operation_count("s3", "list"), lists);
    assert_eq!(metrics.request_count("s3", "get", "delta_log"), log_reads);

    // A fresh process-like open sees everything.
    let reopened = TraceLake::open_with_options(&url, &options(&TraceLakeMetrics::new()))
        .await
        .unwrap();
    assert_eq!(reopened.version(), 8);
    assert_eq!(count(&reopened).await, 8 * 200);
}

#[tokio::test]
async fn a_missing_table_on_s3_is_a_clear_error() {
    let url = location("missing");
    let err = TraceLake::open_with_options(&url, &options(&TraceLakeMetrics::new()))
        .await
        .expect_err("no table there")
        .to_string();
    assert!(
        err.contains(&url) || err.contains("no Delta table"),
        "{err}"
    );
}

/// The same queries on an in-process Ballista cluster whose nodes open the S3 table with
/// their own credentials (`StandaloneOptions::table_options`) and read its files there.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_on_s3_answers_the_same_on_a_ballista_cluster() {
    let url = location("cluster");
    let client_metrics = TraceLakeMetrics::new();
    let lake = TraceLake::create_with_options(&url, &options(&client_metrics))
        .await
        .unwrap();
    for seed in 0..3 {
        lake.append_spans(&traces(seed, TraceShape::Fixed(5), 60, DAY0, 1_000_000_000))
            .await
            .unwrap();
    }
    let node_metrics = TraceLakeMetrics::new();
    let mut standalone = tracelake::distributed::StandaloneOptions::default().executors(2);
    standalone.table_options = options(&node_metrics);
    let cluster = tracelake::distributed::standalone_context(
        &lake,
        datafusion::prelude::SessionConfig::new().with_target_partitions(2),
        standalone,
    )
    .await
    .unwrap();
    let local = lake.session_context().unwrap();
    for sql in [
        "SELECT service_name, count(*), count(DISTINCT trace_id) FROM spans GROUP BY 1 ORDER BY 1",
        "SELECT trace_id, span_count FROM trace_summaries(NULL, NULL) ORDER BY trace_id LIMIT 5",
    ] {
        let show = |batches: Vec<arrow::array::RecordBatch>| {
            arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
        };
        let expected = show(local.sql(sql).await.unwrap().collect().await.unwrap());
        let got = show(cluster.sql(sql).await.unwrap().collect().await.unwrap());
        assert_eq!(got, expected, "{sql}");
    }
    assert!(
        node_metrics.operation_count("s3", "get_range") + node_metrics.operation_count("s3", "get")
            > 0,
        "the cluster's nodes read the table from S3 themselves"
    );
}
