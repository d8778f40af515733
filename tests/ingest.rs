//! Buffered ingest: commits by size and by time, bad rows rejected at once, failed commits
//! retried or reported (never dropped), concurrent writers losing nothing, background refresh.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use tracelake::synth::{TraceShape, traces};
use tracelake::table::AppenderConfig;
use tracelake::{Span, TableOptions, TraceLake};

const DAY0: i64 = 1_714_521_600_000_000_000;

fn spans(seed: u64, n_traces: usize) -> Vec<Span> {
    traces(seed, TraceShape::Fixed(5), n_traces, DAY0, 1_000_000_000)
}

async fn count(lake: &TraceLake) -> i64 {
    let ctx = lake.session_context().unwrap();
    let batches = ctx
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

/// Fails writes to `_delta_log` while `failures` is positive (each failure decrements it).
#[derive(Debug)]
struct FlakyLog {
    inner: InMemory,
    failures: AtomicUsize,
}

impl fmt::Display for FlakyLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlakyLog")
    }
}

impl FlakyLog {
    fn fail(&self, path: &Path) -> Result<()> {
        if path.as_ref().contains("_delta_log/")
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(object_store::Error::Generic {
                store: "FlakyLog",
                source: "injected failure".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FlakyLog {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
        self.fail(l)?;
        self.inner.put_opts(l, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(l, o).await
    }
    async fn get_ranges(&self, l: &Path, r: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(l, r).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
        self.fail(t)?;
        self.inner.copy_opts(f, t, o).await
    }
    async fn rename_opts(&self, f: &Path, t: &Path, o: RenameOptions) -> Result<()> {
        self.fail(t)?;
        self.inner.rename_opts(f, t, o).await
    }
}

fn quick(max_rows: usize, max_delay: Duration) -> AppenderConfig {
    AppenderConfig {
        max_rows,
        max_delay,
        queue_batches: 4,
        max_attempts: 3,
        initial_backoff: Duration::from_millis(5),
    }
}

#[tokio::test]
async fn commits_by_size_and_by_time() {
    let lake = TraceLake::create("memory:///appender-size").await.unwrap();
    let appender = lake.appender(quick(500, Duration::from_secs(3600)));
    for seed in 0..5 {
        appender.append(&spans(seed, 40)).await.unwrap(); // 200 spans each
    }
    // 600 spans were buffered after the third append: one commit so far.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(lake.version(), 1);
    let outcome = appender.shutdown().await.unwrap();
    assert_eq!(outcome.rows, 400);
    assert_eq!(lake.version(), 2);
    assert_eq!(count(&lake).await, 1_000);

    let lake = TraceLake::create("memory:///appender-time").await.unwrap();
    let appender = lake.appender(quick(1_000_000, Duration::from_millis(50)));
    appender.append(&spans(9, 2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lake.version(), 1, "committed by time, without a flush");
    assert_eq!(count(&lake).await, 10);
    appender.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_rows_fail_the_append_and_queue_nothing() {
    let lake = TraceLake::create("memory:///appender-bad").await.unwrap();
    let appender = lake.appender(quick(10, Duration::from_secs(3600)));
    let mut bad = spans(1, 4);
    bad[3].span_id = "xyz".into();
    let err = appender.append(&bad).await.unwrap_err().to_string();
    assert!(err.contains("span_id \"xyz\""), "{err}");
    appender.shutdown().await.unwrap();
    assert_eq!(lake.version(), 0);
}

#[tokio::test]
async fn failed_commits_are_retried_or_reported_never_dropped() {
    let store = Arc::new(FlakyLog {
        inner: InMemory::new(),
        failures: AtomicUsize::new(0),
    });
    let options = TableOptions {
        root_store: Some(store.clone()),
        ..Default::default()
    };
    let lake = TraceLake::create_with_options("memory:///flaky", &options)
        .await
        .unwrap();

    // Two failures, three attempts: the retry commits.
    let appender = lake.appender(quick(1_000_000, Duration::from_secs(3600)));
    appender.append(&spans(1, 10)).await.unwrap();
    store.failures.store(2, Ordering::SeqCst);
    let outcome = appender.flush().await.unwrap();
    assert_eq!(outcome.rows, 50);
    assert_eq!(count(&lake).await, 50);

    // A store that keeps failing: the flush reports it, the spans stay buffered.
    store.failures.store(usize::MAX, Ordering::SeqCst);
    appender.append(&spans(2, 10)).await.unwrap();
    let err = appender.flush().await.unwrap_err().to_string();
    assert!(err.contains("could not commit buffered spans"), "{err}");
    assert!(err.contains("injected failure"), "{err}");
    // While a failure is outstanding, appends say so (their spans are still queued).
    let err = appender.append(&spans(3, 2)).await.unwrap_err().to_string();
    assert!(err.contains("injected failure"), "{err}");

    // The store heals: the next flush commits everything, once.
    store.failures.store(0, Ordering::SeqCst);
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
    let _refresh = reader.refresh_every(Duration::from_millis(20));
    writer.append_spans(&spans(5, 3)).await.unwrap();
    let mut waited = 0;
    while reader.version() < 1 && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
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
    let snapshot = lake.table().snapshot();
    let log_data = snapshot
        .delta_table()
        .snapshot()
        .unwrap()
        .snapshot()
        .try_log_data()
        .unwrap();
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
    let table = lake.table().snapshot().delta_table().clone();
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
