//! Buffered ingest: commits by size and by time, bad rows rejected at once, failed commits
//! retried or reported (never dropped), concurrent writers losing nothing, background refresh.

use crate::common;

use std::time::Duration;

use crate::common::{DAY0, Fault, TestStore, count_spans as count, spans, wait_until};
use tracelake::synth::{TraceShape, traces};
use tracelake::table::AppenderConfig;
use tracelake::{TableOptions, TraceLake};

fn quick(max_rows: usize, max_delay: Duration) -> AppenderConfig {
    AppenderConfig::default()
        .with_max_rows(max_rows)
        .with_max_delay(max_delay)
        .with_queue_batches(4)
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(5))
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn commits_by_size_and_by_time() {
    let lake = TraceLake::create("memory:///appender-size").await.unwrap();
    let appender = lake
        .appender(quick(500, Duration::from_secs(3600)))
        .unwrap();
    for seed in 0..5 {
        appender.append(&spans(seed, 40)).await.unwrap(); // 200 spans each
    }
    // 600 spans were buffered after the third append: one commit, and no other (the 400
    // left are under the size and an hour from the time limit).
    wait_until("the size-triggered commit", WAIT, || lake.version() >= 1).await;
    assert_eq!(lake.version(), 1);
    let outcome = appender.shutdown().await.unwrap();
    assert_eq!(outcome.rows, 400);
    assert_eq!(lake.version(), 2);
    assert_eq!(count(&lake).await, 1_000);

    let lake = TraceLake::create("memory:///appender-time").await.unwrap();
    let appender = lake
        .appender(quick(1_000_000, Duration::from_millis(50)))
        .unwrap();
    appender.append(&spans(9, 2)).await.unwrap();
    wait_until("the time-triggered commit", WAIT, || lake.version() >= 1).await;
    assert_eq!(lake.version(), 1, "committed by time, without a flush");
    assert_eq!(count(&lake).await, 10);
    appender.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_rows_fail_the_append_and_queue_nothing() {
    let lake = TraceLake::create("memory:///appender-bad").await.unwrap();
    let appender = lake.appender(quick(10, Duration::from_secs(3600))).unwrap();
    let mut bad = spans(1, 4);
    bad[3].span_id = "xyz".into();
    let err = appender.append(&bad).await.unwrap_err().to_string();
    assert!(err.contains("span_id \"xyz\""), "{err}");
    appender.shutdown().await.unwrap();
    assert_eq!(lake.version(), 0);
}

#[tokio::test]
async fn failed_commits_are_retried_or_reported_never_dropped() {
    let store = TestStore::new();
    let options = TableOptions {
        root_store: Some(store.clone()),
        ..Default::default()
    };
    let lake = TraceLake::create_with_options("memory:///flaky", &options)
        .await
        .unwrap();

    // Two failures, three attempts: the retry commits.
    let appender = lake
        .appender(quick(1_000_000, Duration::from_secs(3600)))
        .unwrap();
    appender.append(&spans(1, 10)).await.unwrap();
    store.fail(Fault::LogWrites, 2);
    let outcome = appender.flush().await.unwrap();
    assert_eq!(outcome.rows, 50);
    assert_eq!(count(&lake).await, 50);

    // A store that keeps failing: the flush reports it, the spans stay buffered.
    store.fail(Fault::LogWrites, usize::MAX);
    appender.append(&spans(2, 10)).await.unwrap();
    let err = appender.flush().await.unwrap_err().to_string();
    assert!(err.contains("could not commit buffered spans"), "{err}");
    assert!(err.contains("injected failure"), "{err}");
    // While a failure is outstanding, appends say so (their spans are still queued).
    let err = appender.append(&spans(3, 2)).await.unwrap_err().to_string();
    assert!(err.contains("injected failure"), "{err}");

    // The store heals: the next flush commits everything, once.
    store.clear();
    let outcome = appender.shutdown().await.unwrap();
    assert_eq!(outcome.rows, 60);
    assert_eq!(count(&lake).await, 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_table_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let path = path.to_str().unwrap().to_string();
    let first = TraceLake::create(&path).await.unwrap();
    // A second, independent writer (its own snapshot and commit lock), as another process.
    let second = TraceLake::open(&path).await.unwrap();
    let write = |lake: TraceLake, base: u64| {
        tokio::spawn(async move {
            for i in 0..6 {
                lake.append_spans(&spans(base + i, 20)).await.unwrap();
            }
        })
    };
    let (a, b) = tokio::join!(write(first.clone(), 100), write(second.clone(), 200));
    a.unwrap();
    b.unwrap();
    first.refresh().await.unwrap();
    assert_eq!(first.version(), 12);
    assert_eq!(count(&first).await, 1_200);
}

#[tokio::test]
async fn background_refresh_shows_other_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let reader = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    let writer = TraceLake::open(path.to_str().unwrap()).await.unwrap();
    let _refresh = reader.refresh_every(Duration::from_millis(20)).unwrap();
    writer.append_spans(&spans(5, 3)).await.unwrap();
    wait_until("the background refresh", WAIT, || reader.version() >= 1).await;
    assert_eq!(reader.version(), 1);
    assert_eq!(count(&reader).await, 15);
}

#[tokio::test]
async fn appended_files_carry_delta_statistics_for_the_stats_columns_only() {
    let lake = TraceLake::create("memory:///ingest-stats").await.unwrap();
    // Two days in one append: one file per day, each with its own statistics.
    let mut batch = spans(1, 20);
    batch.extend(traces(
        2,
        TraceShape::Fixed(5),
        20,
        DAY0 + 86_400_000_000_000,
        1_000_000,
    ));
    lake.append_spans(&batch).await.unwrap();
    let delta = lake.table().delta_table().await.unwrap();
    let log_data = delta.snapshot().unwrap().snapshot().try_log_data().unwrap();
    let mut files = 0;
    for view in log_data.iter() {
        files += 1;
        assert_eq!(view.num_records(), Some(100));
        let stats: serde_json::Value = serde_json::from_str(&view.stats().unwrap()).unwrap();
        let ids: Vec<&str> = batch
            .iter()
            .filter(|s| {
                view.partition_values_map().get("span_date")
                    == Some(&Some(
                        if s.start_time_unix_nano < DAY0 + 86_400_000_000_000 {
                            "2024-05-01"
                        } else {
                            "2024-05-02"
                        }
                        .to_string(),
                    ))
            })
            .map(|s| s.trace_id.as_str())
            .collect();
        let (min, max) = (ids.iter().min().unwrap(), ids.iter().max().unwrap());
        assert_eq!(stats["minValues"]["trace_id"], *min, "{stats}");
        assert_eq!(stats["maxValues"]["trace_id"], *max, "{stats}");
        assert!(
            stats["minValues"]["start_time_unix_nano"].is_i64(),
            "{stats}"
        );
        // Only the columns named in delta.dataSkippingStatsColumns.
        assert!(stats["minValues"].get("attributes").is_none(), "{stats}");
        assert!(
            stats["nullCount"].get("parent_span_id").is_none(),
            "{stats}"
        );
    }
    assert_eq!(files, 2);
}

#[tokio::test]
async fn a_table_with_a_check_constraint_is_appended_through_deltalake_which_enforces_it() {
    let lake = TraceLake::create("memory:///ingest-constraint")
        .await
        .unwrap();
    lake.append_spans(&spans(1, 2)).await.unwrap();
    // Another Delta writer adds a CHECK constraint to the table.
    let table = lake.table().delta_table().await.unwrap();
    table
        .add_constraint()
        .with_constraint("no_forbidden", "name <> 'forbidden'")
        .await
        .unwrap();
    lake.refresh().await.unwrap();
    let mut bad = spans(2, 1);
    bad[0].name = "forbidden".into();
    let err = lake.append_spans(&bad).await.unwrap_err().to_string();
    assert!(err.contains("failed validation"), "{err}");
    assert_eq!(count(&lake).await, 10);
    lake.append_spans(&spans(3, 1)).await.unwrap();
    assert_eq!(count(&lake).await, 15);
}

#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_written_once() {
    // The store applies the commit but answers with an error (a lost answer): the appender
    // retries, finds its own transaction in the log, and writes nothing more.
    let store = TestStore::new();
    let options = TableOptions {
        root_store: Some(store.clone()),
        ..Default::default()
    };
    let lake = TraceLake::create_with_options("memory:///lost-answer", &options)
        .await
        .unwrap();
    let appender = lake
        .appender(quick(1_000_000, Duration::from_secs(3600)))
        .unwrap();
    appender.append(&spans(1, 10)).await.unwrap();
    store.fail(Fault::LogWritesAppliedButFailed, 1);
    let outcome = appender.flush().await.unwrap();
    assert_eq!(outcome.rows, 50);
    assert_eq!(lake.version(), 1, "one commit, not two");
    assert_eq!(count(&lake).await, 50);
    // The next commits go on as usual.
    appender.append(&spans(2, 10)).await.unwrap();
    assert_eq!(appender.shutdown().await.unwrap().rows, 50);
    assert_eq!(lake.version(), 2);
    assert_eq!(count(&lake).await, 100);
}

#[tokio::test]
async fn a_commit_whose_new_files_cannot_be_read_at_first_is_committed_once() {
    // The commit lands; the first read of each new file fails (a transient error). That is not
    // a failed commit: nothing is retried, nothing written twice, and the query that reads the
    // new files' footers tries again.
    let store = TestStore::new();
    let options = TableOptions {
        root_store: Some(store.clone()),
        cache_bytes: 0,
        ..Default::default()
    };
    let lake = TraceLake::create_with_options("memory:///first-get-fails", &options)
        .await
        .unwrap();
    let appender = lake
        .appender(quick(1_000_000, Duration::from_secs(3600)))
        .unwrap();
    store.fail(Fault::FirstReadOfNewDataFiles, usize::MAX);
    appender.append(&spans(1, 10)).await.unwrap();
    let outcome = appender.flush().await.unwrap();
    assert_eq!((outcome.version, outcome.rows), (1, 50));
    assert_eq!(lake.version(), 1);
    assert_eq!(count(&lake).await, 50);
    assert!(store.count("get_range", "parquet_data") + store.count("get", "parquet_data") > 1);

    // The same through a direct append.
    lake.append_spans(&spans(2, 10)).await.unwrap();
    assert_eq!(lake.version(), 2);
    assert_eq!(count(&lake).await, 100);
    store.clear();
    appender.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_that_are_not_transient_are_not_retried() {
    let store = TestStore::new();
    let options = TableOptions {
        root_store: Some(store.clone()),
        ..Default::default()
    };
    let lake = TraceLake::create_with_options("memory:///not-transient", &options)
        .await
        .unwrap();
    let appender = lake
        .appender(quick(1_000_000, Duration::from_secs(3600)).with_max_attempts(5))
        .unwrap();
    appender.append(&spans(1, 2)).await.unwrap();
    store.fail(Fault::LogWritesDenied, usize::MAX);
    store.reset_calls();
    let err = appender.flush().await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("denied"), "{err}");
    // One attempt: one put of the commit file (a retry would have made more).
    assert_eq!(store.count("put", "delta_log"), 1, "{:?}", store.calls());
    store.clear();
    assert_eq!(appender.shutdown().await.unwrap().rows, 10);
    assert_eq!(count(&lake).await, 10);
}

#[tokio::test]
async fn appender_settings_out_of_range_are_refused() {
    let lake = TraceLake::create("memory:///appender-ranges")
        .await
        .unwrap();
    let cases = [
        (
            AppenderConfig::default().with_max_rows(0),
            "appender max_rows must be between 1 and 100000000, got 0",
        ),
        (
            AppenderConfig::default().with_queue_batches(0),
            "appender queue_batches must be between 1",
        ),
        (
            AppenderConfig::default().with_max_attempts(0),
            "appender max_attempts must be between 1 and 100, got 0",
        ),
        (
            AppenderConfig::default().with_max_delay(Duration::ZERO),
            "appender max_delay must be between 1ms and 86400s",
        ),
        (
            AppenderConfig::default().with_initial_backoff(Duration::from_secs(3600)),
            "appender initial_backoff",
        ),
    ];
    for (config, expected) in cases {
        let err = lake.appender(config).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    let err = lake.refresh_every(Duration::ZERO).unwrap_err().to_string();
    assert!(err.contains("refresh interval must be between"), "{err}");
}

#[test]
fn background_work_outside_a_runtime_is_an_error_not_a_panic() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let lake = runtime
        .block_on(TraceLake::create("memory:///no-runtime"))
        .unwrap();
    // Called from plain sync code, with no runtime entered.
    let err = lake.appender(AppenderConfig::default()).unwrap_err();
    assert!(err.to_string().contains("needs a tokio runtime"), "{err}");
    let err = lake.refresh_every(Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("needs a tokio runtime"), "{err}");
    let err = lake
        .maintain_every(tracelake::table::MaintenanceSchedule::default())
        .unwrap_err();
    assert!(err.to_string().contains("needs a tokio runtime"), "{err}");
}

/// Files under `dir` ending in `.parquet`, recursively.
fn parquet_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            n += parquet_files(&path);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            n += 1;
        }
    }
    n
}

const INSERT_SELECT: &str = "INSERT INTO spans (trace_id, span_id, parent_span_id, name, \
     service_name, start_time, end_time) \
     SELECT md5(CAST(v / 5 AS VARCHAR)), substr(md5(CAST(v AS VARCHAR)), 1, 16), \
     CASE WHEN v % 5 = 0 THEN NULL ELSE substr(md5(CAST(v - v % 5 AS VARCHAR)), 1, 16) END, \
     'op', 'svc', \
     to_timestamp_nanos(1714521600000000000 + v * 1000000), \
     to_timestamp_nanos(1714521600000000000 + v * 1000000 + 500000) \
     FROM generate_series(0, 19999) AS t(v)";

#[tokio::test]
async fn an_insert_select_is_written_in_runs_as_one_commit() {
    // Runs of 1,000 rows: the 20,000 rows of the statement become 20 sorted files, all in
    // one commit.
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("spans");
    let options = TableOptions {
        insert_run_rows: 1_000,
        ..Default::default()
    };
    let lake = TraceLake::create_with_options(location.to_str().unwrap(), &options)
        .await
        .unwrap();
    let ctx = lake.session_context().unwrap();
    ctx.sql(INSERT_SELECT)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(lake.version(), 1, "one commit");
    assert_eq!(count(&lake).await, 20_000);
    assert!(
        parquet_files(&location) >= 20,
        "{} files",
        parquet_files(&location)
    );
    let trees = common::count(
        &ctx,
        "SELECT count(*) FROM trace_tree(md5('7')) WHERE depth = 1",
    )
    .await;
    assert_eq!(trees, 4);

    // A bad row in the third input batch (8,192 rows each), after the first 16 runs were
    // written: the statement fails, nothing is committed, and the files of its runs are
    // deleted.
    let before = parquet_files(&location);
    let bad = INSERT_SELECT.replace(
        "substr(md5(CAST(v AS VARCHAR)), 1, 16)",
        "CASE WHEN v = 19000 THEN 'not-a-span-id' ELSE substr(md5(CAST(v AS VARCHAR)), 1, 16) END",
    );
    let err = ctx.sql(&bad).await.unwrap().collect().await.unwrap_err();
    assert!(err.to_string().contains("not-a-span-id"), "{err}");
    assert_eq!(lake.version(), 1);
    assert_eq!(count(&lake).await, 20_000);
    assert_eq!(
        parquet_files(&location),
        before,
        "the failed statement's files are gone"
    );

    // The run size is checked.
    let err = TraceLake::create_with_options(
        dir.path().join("other").to_str().unwrap(),
        &TableOptions {
            insert_run_rows: 0,
            ..Default::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("insert_run_rows") && err.contains("100000000"),
        "{err}"
    );
}
