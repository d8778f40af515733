//! The table lifecycle under load: expiry removes exactly the old partitions, vacuum keeps
//! files a running query may still read, a reader querying during appends and maintenance
//! never errors and sees every committed span exactly once, checkpoints keep opening bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;
use tracelake::synth::{TraceShape, traces};
use tracelake::{Span, TraceLake};

const DAY: i64 = 86_400_000_000_000;
const DAY0: i64 = 1_714_521_600_000_000_000; // 2024-05-01

fn day(seed: u64, d: i64, n: usize) -> Vec<Span> {
    traces(seed, TraceShape::Fixed(5), n, DAY0 + d * DAY, DAY / 2)
}

async fn count(ctx: &SessionContext) -> i64 {
    let batches = ctx
        .sql("SELECT count(*) FROM spans")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn stats_expiry_and_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    for d in 0..3 {
        lake.append_spans(&day(d as u64, d, 100)).await.unwrap();
    }
    let table = lake.table();
    let stats = table.stats().unwrap();
    assert_eq!(stats.version, 3);
    assert_eq!(stats.files, 3);
    assert_eq!(stats.spans, 1_500);
    assert_eq!(stats.partitions, ["2024-05-01", "2024-05-02", "2024-05-03"]);
    assert_eq!(stats.oldest_start_unix_nano, Some(DAY0));
    assert!(stats.newest_start_unix_nano.unwrap() < DAY0 + 3 * DAY);
    assert!(stats.bytes > 0);

    let ctx = lake.session_context().unwrap();
    // A query planned before expiry and vacuum, executed after both.
    let running = ctx
        .sql("SELECT count(*) FROM spans")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();

    // Now is 2024-05-03T12:00Z; older than one day means before 2024-05-02T12:00Z: only
    // 2024-05-01 is entirely older.
    let outcome = table.expire(1, DAY0 + 2 * DAY + DAY / 2).await.unwrap();
    assert_eq!(outcome.partitions, ["2024-05-01"]);
    assert_eq!(outcome.files_removed, 1);
    assert_eq!(count(&ctx).await, 1_000);
    assert_eq!(
        table.stats().unwrap().partitions,
        ["2024-05-02", "2024-05-03"]
    );
    // Nothing left to expire at the same cutoff.
    let again = table.expire(1, DAY0 + 2 * DAY + DAY / 2).await.unwrap();
    assert!(again.partitions.is_empty());
    assert_eq!(again.version, outcome.version);

    // vacuum(0) would break running queries: refused.
    let err = table.vacuum(0).await.unwrap_err().to_string();
    assert!(err.contains("shorter than the minimum"), "{err}");
    // Within the retention window the expired file stays: the running query still reads it.
    let vacuumed = table.vacuum(1).await.unwrap();
    assert_eq!(vacuumed.files_deleted, 0);
    let batches = collect(running, ctx.task_ctx()).await.unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        1_500
    );
}

#[tokio::test]
async fn checkpoints_keep_the_table_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    for d in 0..4 {
        lake.append_spans(&day(10 + d as u64, 0, 20)).await.unwrap();
    }
    let version = lake.table().checkpoint().await.unwrap();
    assert_eq!(version, 4);
    let checkpoints = std::fs::read_dir(path.join("_delta_log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".checkpoint.parquet")
        })
        .count();
    assert_eq!(checkpoints, 1);
    let reopened = TraceLake::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(reopened.version(), 4);
    assert_eq!(count(&reopened.session_context().unwrap()).await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_during_appends_optimize_and_vacuum_sees_each_span_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    let ctx = lake.session_context().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let ctx = ctx.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                seen.push(count(&ctx).await);
            }
            seen
        })
    };
    let mut committed = vec![0i64];
    for round in 0..8u64 {
        lake.append_spans(&day(100 + round, (round % 2) as i64, 40))
            .await
            .unwrap();
        committed.push(committed.last().unwrap() + 200);
        if round == 3 || round == 6 {
            lake.table().optimize().await.unwrap();
            lake.table().vacuum(1).await.unwrap();
        }
    }
    done.store(true, Ordering::Relaxed);
    let seen = reader.await.unwrap();
    assert!(!seen.is_empty());
    for (i, n) in seen.iter().enumerate() {
        // Every count is a committed total: never a partial commit, never a span twice
        // (optimize rewrites files but the reader sees old or new, not both).
        assert!(
            committed.contains(n),
            "read {i}: {n} is not one of {committed:?}"
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "counts never go back"
    );
    assert_eq!(count(&ctx).await, 1_600);
}

#[tokio::test]
async fn appends_write_checkpoints_at_the_table_checkpoint_interval() {
    // deltalake's default `delta.checkpointInterval` is 100: the 100th commit (version 99)
    // gets a checkpoint from the append's post-commit hook, so opening the table does not
    // replay every commit.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    for i in 0..100u64 {
        lake.append_spans(&day(1_000 + i, 0, 1)).await.unwrap();
    }
    assert_eq!(lake.version(), 100);
    let log: Vec<String> = std::fs::read_dir(path.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        log.iter()
            .any(|f| f == "00000000000000000099.checkpoint.parquet"),
        "{log:?}"
    );
}
