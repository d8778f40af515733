//! The Delta lifecycle of a trace table: open or create, append as one commit, refresh, and
//! the snapshot swap that makes every new version visible to the next query.
//!
//! This module owns the only code that lists `_delta_log` (load and refresh). The query path
//! only reads the [`TableSnapshot`] installed here and never lists.

pub mod appender;
pub mod background;
pub(crate) mod ingest;
pub mod maintenance;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::execution::object_store::ObjectStoreUrl;
use deltalake::kernel::StructType;
use deltalake::kernel::Transaction;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use tracing::{Instrument, field};

use crate::error::{Result, TraceLakeError};
use crate::observe::{TraceLakeMetrics, names};
use crate::read::index::{TraceIdIndex, table_prefix};
use crate::schema::{self, col, storage_schema};
use crate::span::{Span, spans_to_batch};
use crate::store::TableLocation;
pub use appender::{AppenderConfig, SpanAppender};
pub use background::{BackgroundTask, MaintenanceSchedule};
pub use maintenance::{
    ExpireBuilder, ExpireOutcome, OptimizeBuilder, OptimizeOutcome, TableStats, VacuumBuilder,
    VacuumOutcome,
};

/// Rows per parquet row group. Rows are sorted by trace id inside a file, so a row group
/// covers a narrow id range and a lookup by id reads one or two of them.
pub const ROW_GROUP_ROWS: usize = 16 * 1024;

/// Rows per data page at most: with the page index, a lookup decodes only the pages that
/// hold its rows (contiguous, since rows are sorted by trace id) instead of the row group.
pub const PAGE_ROWS: usize = 1024;

/// Columns written without a dictionary: (nearly) unique per row, so a dictionary would be as
/// large as the data, and a lookup would decode the whole row group's dictionary to read a
/// few rows of one page.
const PLAIN_COLUMNS: &[&str] = &[
    col::TRACE_ID,
    col::SPAN_ID,
    col::PARENT_SPAN_ID,
    col::START_TIME_UNIX_NANO,
    col::END_TIME_UNIX_NANO,
    col::DURATION_NS,
];

/// One committed version of the table, ready to scan. Installed atomically; a query that
/// loaded it keeps it until the query ends.
#[derive(Debug)]
pub struct TableSnapshot {
    table: DeltaTable,
    scan: Arc<dyn TableProvider>,
    index: Option<Arc<TraceIdIndex>>,
}

impl TableSnapshot {
    /// Prepares `table` for scans: deltalake's scan and the trace-id index (reusing the
    /// entries of `previous` for files it already indexed).
    async fn new(
        table: DeltaTable,
        location: &TableLocation,
        previous: Option<&TableSnapshot>,
    ) -> Result<Self> {
        let state = table.snapshot()?;
        let scan = table
            .table_provider()
            .with_eager_snapshot(state.snapshot().clone())
            .build()
            .await?;
        let index = TraceIdIndex::build(
            &location.root_store,
            &table_prefix(&location.url),
            state.snapshot(),
            previous.and_then(|p| p.index.as_deref()),
        )
        .await?
        .map(Arc::new);
        Ok(Self {
            table,
            scan: Arc::new(scan),
            index,
        })
    }

    /// The trace-id index of this version (`None` when it has deletion vectors).
    pub(crate) fn index(&self) -> Option<&Arc<TraceIdIndex>> {
        self.index.as_ref()
    }

    /// The Delta version of this snapshot.
    pub fn version(&self) -> i64 {
        self.table.version().map(|v| v as i64).unwrap_or(-1)
    }

    /// The Delta table at this version.
    pub fn delta_table(&self) -> &DeltaTable {
        &self.table
    }

    /// deltalake's scan over this version (storage schema), used by the span provider.
    pub(crate) fn delta_scan(&self) -> &Arc<dyn TableProvider> {
        &self.scan
    }
}

/// How a table is opened: object-store options and the metrics its stores report into.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// Options for cloud object stores (credentials, region, endpoint...).
    pub storage_options: HashMap<String, String>,
    /// Where object-store requests are counted.
    pub metrics: TraceLakeMetrics,
    /// A store to use as the root of the location instead of the one its URL names (for
    /// example object_store's `InMemory` or `ThrottledStore` to simulate a remote store).
    pub root_store: Option<Arc<dyn object_store::ObjectStore>>,
    /// Bytes of immutable objects (parquet data, checkpoints, commits) kept in memory by an
    /// [`ObjectCache`](crate::store::ObjectCache); 0 turns the cache off.
    pub cache_bytes: u64,
}

/// The default size of the object cache: 256 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            storage_options: HashMap::new(),
            metrics: TraceLakeMetrics::new(),
            root_store: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

impl TableOptions {
    /// Resolves `location` and assembles its store stack (see [`crate::store`]).
    fn resolve(&self, location: &str, create: bool) -> Result<TableLocation> {
        crate::store::stack(
            location,
            &self.storage_options,
            self.root_store.as_ref(),
            self.cache_bytes,
            &self.metrics,
            create,
        )
    }
}

/// What an append committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The table version the append created (the current version if nothing was appended).
    pub version: i64,
    /// Spans written.
    pub rows: u64,
}

/// A Delta table of spans with an atomically swapped current snapshot.
pub struct TraceTable {
    location: TableLocation,
    /// The URL the table's root store is registered under in the sessions that scan it.
    store_url: ObjectStoreUrl,
    current: ArcSwap<TableSnapshot>,
    /// Serializes this process's commits and snapshot installs.
    commit_lock: tokio::sync::Mutex<()>,
    /// A committed version whose install failed, installed by the next query or commit.
    pending_install: std::sync::Mutex<Option<DeltaTable>>,
    metrics: TraceLakeMetrics,
}

impl std::fmt::Debug for TraceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceTable")
            .field("url", &self.location.url.as_str())
            .field("version", &self.version())
            .finish()
    }
}

fn builder(location: &TableLocation) -> Result<DeltaTableBuilder> {
    Ok(DeltaTableBuilder::from_url(location.url.clone())?
        .with_storage_backend(location.root_store.clone(), location.url.clone()))
}

fn not_a_trace_table(location: &TableLocation, reason: impl Into<String>) -> TraceLakeError {
    TraceLakeError::NotATraceTable {
        location: location.url.to_string(),
        reason: reason.into(),
    }
}

/// Checks that a loaded Delta table has the span storage schema.
fn check_trace_schema(location: &TableLocation, table: &DeltaTable) -> Result<()> {
    let snapshot = table.snapshot()?;
    let actual = snapshot.snapshot().arrow_schema();
    let expected = storage_schema();
    for field in expected.fields() {
        match actual.field_with_name(field.name()) {
            Err(_) => {
                return Err(not_a_trace_table(
                    location,
                    format!(
                        "the Delta table has no column {:?} (its columns: {})",
                        field.name(),
                        actual
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            Ok(found) if !types_match(found.data_type(), field.data_type()) => {
                return Err(not_a_trace_table(
                    location,
                    format!(
                        "column {:?} has type {} where a trace table has {}",
                        field.name(),
                        found.data_type(),
                        field.data_type()
                    ),
                ));
            }
            Ok(_) => {}
        }
    }
    let partitions = snapshot.metadata().partition_columns();
    if partitions.len() != 1 || partitions[0] != col::SPAN_DATE {
        return Err(not_a_trace_table(
            location,
            format!(
                "partitioned by {partitions:?}, a trace table is partitioned by [\"span_date\"]"
            ),
        ));
    }
    Ok(())
}

/// Types are equal up to nested field names and nullability (Delta spells some of them its
/// own way).
fn types_match(a: &arrow::datatypes::DataType, b: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType::*;
    match (a, b) {
        (Struct(x), Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(f, g)| f.name() == g.name() && types_match(f.data_type(), g.data_type()))
        }
        (List(x), List(y)) | (LargeList(x), List(y)) | (List(x), LargeList(y)) => {
            types_match(x.data_type(), y.data_type())
        }
        (Map(x, _), Map(y, _)) => types_match(x.data_type(), y.data_type()),
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        _ => a == b,
    }
}

/// The parquet writer properties of every data file tracelake writes: row groups of
/// [`ROW_GROUP_ROWS`], pages of [`PAGE_ROWS`], Snappy, page statistics, a bloom filter on
/// `trace_id`, and no dictionary on the nearly unique id and time columns (see
/// docs/architecture.md, "Inside a commit").
pub(crate) fn writer_properties() -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_write_batch_size(PAGE_ROWS)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_bloom_filter_enabled(col::TRACE_ID.into(), true)
        .set_column_bloom_filter_fpp(col::TRACE_ID.into(), 0.001)
        .set_column_bloom_filter_max_ndv(col::TRACE_ID.into(), ROW_GROUP_ROWS as u64);
    for column in PLAIN_COLUMNS {
        builder = builder.set_column_dictionary_enabled((*column).into(), false);
    }
    builder.build()
}

impl TraceTable {
    /// Opens the trace table at `location`. Fails if there is no Delta table there, or if it is
    /// a Delta table of another schema.
    pub async fn open(location: &str, options: &TableOptions) -> Result<Self> {
        let location = options.resolve(location, false)?;
        let span = tracing::info_span!(
            names::DELTA_TABLE_LOAD,
            { names::ATTR_TABLE_URL } = location.url.as_str(),
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        let result = async {
            let mut table = builder(&location)?.build()?;
            match table.verify_deltatable_existence().await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(not_a_trace_table(
                        &location,
                        "no Delta table found (no _delta_log)",
                    ));
                }
                Err(e) => {
                    return Err(not_a_trace_table(&location, format!("cannot read it: {e}")));
                }
            }
            match table.load().await {
                Ok(()) => {}
                Err(DeltaTableError::NotATable(reason)) => {
                    return Err(not_a_trace_table(
                        &location,
                        format!("no Delta table found ({reason})"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            check_trace_schema(&location, &table)?;
            Ok(table)
        }
        .instrument(span.clone())
        .await;
        let table = record_result(&span, result)?;
        span.record(
            names::ATTR_VERSION_AFTER,
            table.version().unwrap_or(0) as i64,
        );
        Self::with_table(location, table, options.metrics.clone()).await
    }

    /// Creates an empty trace table at `location`. Fails if a Delta table is already there.
    pub async fn create(location: &str, options: &TableOptions) -> Result<Self> {
        let location = options.resolve(location, true)?;
        let columns: StructType = storage_schema().as_ref().try_into_kernel().map_err(|e| {
            TraceLakeError::SchemaMismatch(format!("span schema is not a Delta schema: {e}"))
        })?;
        let table = builder(&location)?.build()?;
        if table.verify_deltatable_existence().await? {
            return Err(TraceLakeError::InvalidLocation {
                location: location.url.to_string(),
                reason: "a Delta table already exists there; open it instead".into(),
            });
        }
        let table = table
            .create()
            .with_table_name(schema::SPANS_TABLE)
            .with_comment("OpenTelemetry spans (tracelake)")
            .with_columns(columns.fields().cloned())
            .with_partition_columns([col::SPAN_DATE])
            .with_configuration_property(
                TableProperty::DataSkippingStatsColumns,
                Some(schema::STATS_COLUMNS.join(",")),
            )
            .await?;
        Self::with_table(location, table, options.metrics.clone()).await
    }

    /// Opens the trace table at `location`, creating it if no Delta table is there.
    pub async fn open_or_create(location: &str, options: &TableOptions) -> Result<Self> {
        let resolved = options.resolve(location, true)?;
        let probe = builder(&resolved)?.build()?;
        if probe.verify_deltatable_existence().await? {
            Self::open(location, options).await
        } else {
            Self::create(location, options).await
        }
    }

    async fn with_table(
        location: TableLocation,
        table: DeltaTable,
        metrics: TraceLakeMetrics,
    ) -> Result<Self> {
        let snapshot = TableSnapshot::new(table, &location, None).await?;
        static NEXT_TABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_TABLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store_url = ObjectStoreUrl::parse(format!("tracelake://table-{id}/"))?;
        Ok(Self {
            location,
            store_url,
            current: ArcSwap::from_pointee(snapshot),
            commit_lock: tokio::sync::Mutex::new(()),
            pending_install: std::sync::Mutex::new(None),
            metrics,
        })
    }

    /// The metrics this table reports into.
    pub fn metrics(&self) -> &TraceLakeMetrics {
        &self.metrics
    }

    /// The table's location.
    pub fn location(&self) -> &TableLocation {
        &self.location
    }

    /// The URL the root store is registered under for scans (unique to this instance).
    pub fn store_url(&self) -> &ObjectStoreUrl {
        &self.store_url
    }

    /// The snapshot queries currently start from.
    pub fn snapshot(&self) -> Arc<TableSnapshot> {
        self.current.load_full()
    }

    /// The current version.
    pub fn version(&self) -> i64 {
        self.current.load().version()
    }

    /// Installs `table` as the current snapshot unless a newer one is installed already.
    /// Called with the commit lock held.
    async fn install(&self, table: DeltaTable) -> Result<i64> {
        let before = self.version();
        let after = table.version().map(|v| v as i64).unwrap_or(-1);
        let span = tracing::info_span!(
            names::DELTA_CATALOG_SWAP,
            { names::ATTR_VERSION_BEFORE } = before,
            { names::ATTR_VERSION_AFTER } = after,
        );
        if after <= before {
            return Ok(before);
        }
        let previous = self.snapshot();
        let snapshot = TableSnapshot::new(table, &self.location, Some(&previous))
            .instrument(span)
            .await?;
        self.current.store(Arc::new(snapshot));
        if let Ok(mut pending) = self.pending_install.lock()
            && pending
                .as_ref()
                .is_some_and(|p| p.version().map(|v| v as i64).unwrap_or(-1) <= after)
        {
            *pending = None;
        }
        Ok(after)
    }

    /// Installs a version committed by a maintenance operation, taking the commit lock (the
    /// operation itself ran without it, so appends went on).
    pub(crate) async fn install_locked(&self, table: DeltaTable) -> Result<i64> {
        let _guard = self.commit_lock.lock().await;
        self.install(table).await
    }

    /// Reads commits made since the current snapshot (by this or any other process) and
    /// installs the newest version. Returns it.
    pub async fn refresh(&self) -> Result<i64> {
        let _guard = self.commit_lock.lock().await;
        let before = self.version();
        let span = tracing::info_span!(
            names::DELTA_SNAPSHOT_REFRESH,
            { names::ATTR_VERSION_BEFORE } = before,
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        let result = async {
            let mut table = self.snapshot().table.clone();
            table
                .update_incremental(None)
                .instrument(tracing::info_span!(names::UPDATE_INCREMENTAL))
                .await?;
            self.install(table).await
        }
        .instrument(span.clone())
        .await;
        let version = record_result(&span, result)?;
        span.record(names::ATTR_VERSION_AFTER, version);
        Ok(version)
    }

    /// Appends spans as one Delta commit.
    pub async fn append_spans(&self, spans: &[Span]) -> Result<AppendOutcome> {
        let batch = spans_to_batch(spans)?;
        self.append_batches(&[batch]).await
    }

    /// Appends Arrow batches as one Delta commit. Each batch has columns named as in the SQL
    /// schema (`start_time` as a timestamp); optional columns may be absent. If any row does
    /// not fit the schema nothing is written.
    pub async fn append_batches(&self, batches: &[RecordBatch]) -> Result<AppendOutcome> {
        let mut storage = Vec::with_capacity(batches.len());
        let mut rows = 0usize;
        for batch in batches {
            storage.push(ingest::to_storage(batch, rows)?);
            rows += batch.num_rows();
        }
        self.commit(storage, rows as u64, None, false).await
    }

    /// Commits storage batches (already checked by [`ingest::to_storage`]) as one Delta
    /// commit, with `txn` as its application transaction when given. With `retry`, the log is
    /// read first and nothing is written if `txn` is already committed (an earlier attempt
    /// landed although it was reported as failed).
    ///
    /// The outcome is the commit's: once the commit has landed this returns `Ok`, even if
    /// installing the new version fails (it is then installed by the next query, append or
    /// refresh), so that a caller never retries a commit that landed.
    pub(crate) async fn commit(
        &self,
        storage: Vec<RecordBatch>,
        rows: u64,
        txn: Option<&AppTransaction>,
        retry: bool,
    ) -> Result<AppendOutcome> {
        if rows == 0 {
            return Ok(AppendOutcome {
                version: self.version(),
                rows: 0,
            });
        }
        let span = tracing::info_span!(
            names::DELTA_APPEND,
            { names::ATTR_ROWS } = rows,
            { names::ATTR_VERSION_BEFORE } = field::Empty,
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        let started = std::time::Instant::now();
        let result = async {
            // Sorted before taking the lock: other commits of this process need not wait.
            let storage = ingest::sort_for_storage(&storage)?;
            let _guard = self.commit_lock.lock().await;
            let mut table = self.snapshot().table.clone();
            tracing::Span::current().record(names::ATTR_VERSION_BEFORE, self.version());
            if retry && let Some(txn) = txn {
                table.update_incremental(None).await?;
                let committed = table
                    .snapshot()?
                    .transaction_version(table.log_store().as_ref(), txn.app_id.as_ref())
                    .await?;
                if committed.is_some_and(|v| v >= txn.version) {
                    tracing::info!(
                        app_id = %txn.app_id,
                        txn_version = txn.version,
                        "an earlier attempt of this append was committed; not writing it again"
                    );
                    return Ok(self.install_committed(table).await);
                }
            }
            let properties = match txn {
                Some(txn) => CommitProperties::default().with_application_transaction(
                    Transaction::new(txn.app_id.as_ref(), txn.version),
                ),
                None => CommitProperties::default(),
            };
            let written = match write::direct_append(&table, &storage, properties.clone()).await? {
                Some(written) => written,
                None => {
                    table
                        .write(storage)
                        .with_save_mode(SaveMode::Append)
                        .with_partition_columns([col::SPAN_DATE])
                        .with_writer_properties(writer_properties())
                        .with_commit_properties(properties)
                        .await?
                }
            };
            Ok(self.install_committed(written).await)
        }
        .instrument(span.clone())
        .await;
        self.metrics
            .record_commit(result.is_ok(), rows, started.elapsed().as_secs_f64());
        let version = record_result(&span, result)?;
        span.record(names::ATTR_VERSION_AFTER, version);
        Ok(AppendOutcome { version, rows })
    }

    /// Whether the commit numbered `txn` is in the table (reading the log), installing what
    /// was read.
    pub(crate) async fn transaction_committed(&self, txn: &AppTransaction) -> Result<bool> {
        let _guard = self.commit_lock.lock().await;
        let mut table = self.snapshot().table.clone();
        table.update_incremental(None).await?;
        let committed = table
            .snapshot()?
            .transaction_version(table.log_store().as_ref(), txn.app_id.as_ref())
            .await?;
        self.install_committed(table).await;
        Ok(committed.is_some_and(|v| v >= txn.version))
    }

    /// Installs a version that is committed, returning its version whether or not the install
    /// succeeds: if it fails (the error is logged), the version is kept and installed by the
    /// next query, append or refresh. Called with the commit lock held.
    async fn install_committed(&self, table: DeltaTable) -> i64 {
        let version = table.version().map(|v| v as i64).unwrap_or(-1);
        if let Err(e) = self.install(table.clone()).await {
            tracing::warn!(
                error = %e,
                version,
                "committed, but installing the new version failed; the next query installs it"
            );
            if let Ok(mut pending) = self.pending_install.lock() {
                *pending = Some(table);
            }
        }
        version
    }

    /// The snapshot a query starts from: the current one, after installing a committed
    /// version whose install failed before (unless a commit of this process is running, which
    /// installs it).
    pub(crate) async fn snapshot_for_query(&self) -> Arc<TableSnapshot> {
        let pending = self
            .pending_install
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|t| t.version()));
        if pending.is_some()
            && let Ok(_guard) = self.commit_lock.try_lock()
        {
            let table = self.pending_install.lock().ok().and_then(|mut p| p.take());
            if let Some(table) = table
                && let Err(e) = self.install(table.clone()).await
            {
                tracing::warn!(error = %e, "installing a committed version failed again");
                if let Ok(mut pending) = self.pending_install.lock() {
                    pending.get_or_insert(table);
                }
            }
        }
        self.snapshot()
    }
}

/// A Delta application transaction (`txn` action): the appender numbers its commits so that a
/// retried commit is written at most once.
#[derive(Debug, Clone)]
pub(crate) struct AppTransaction {
    pub(crate) app_id: Arc<str>,
    pub(crate) version: i64,
}

/// Records an error on `span` and passes the result on.
fn record_result<T>(span: &tracing::Span, result: Result<T>) -> Result<T> {
    if let Err(e) = &result {
        span.record(names::ATTR_ERROR, field::display(e));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{SpanKind, StatusCode};

    pub(crate) fn span(trace: u128, id: u64, parent: Option<u64>, start: i64) -> Span {
        Span {
            trace_id: format!("{trace:032x}"),
            span_id: format!("{id:016x}"),
            parent_span_id: parent.map(|p| format!("{p:016x}")),
            name: format!("op-{id}"),
            kind: SpanKind::Server,
            service_name: "svc".into(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 1_000,
            status_code: StatusCode::Ok,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn create_append_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans");
        let path = path.to_str().unwrap();
        let table = TraceTable::create(path, &TableOptions::default())
            .await
            .unwrap();
        assert_eq!(table.version(), 0);
        let out = table
            .append_spans(&[span(1, 1, None, 1_700_000_000_000_000_000)])
            .await
            .unwrap();
        assert_eq!(
            out,
            AppendOutcome {
                version: 1,
                rows: 1
            }
        );

        let reopened = TraceTable::open(path, &TableOptions::default())
            .await
            .unwrap();
        assert_eq!(reopened.version(), 1);
        let actual = reopened
            .snapshot()
            .table
            .snapshot()
            .unwrap()
            .snapshot()
            .arrow_schema();
        for field in storage_schema().fields() {
            let found = actual.field_with_name(field.name()).unwrap();
            assert!(
                types_match(found.data_type(), field.data_type()),
                "{}",
                field.name()
            );
        }

        let err = TraceTable::create(path, &TableOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[tokio::test]
    async fn refresh_sees_other_writers() {
        let reader = TraceTable::create("memory:///refresh-test", &TableOptions::default())
            .await
            .unwrap();
        let writer = TraceTable::open("memory:///refresh-test", &TableOptions::default())
            .await
            .unwrap();
        writer.append_spans(&[span(1, 1, None, 0)]).await.unwrap();
        writer.append_spans(&[span(2, 1, None, 0)]).await.unwrap();
        assert_eq!(reader.version(), 0);
        assert_eq!(reader.refresh().await.unwrap(), 2);
        assert_eq!(reader.version(), 2);
    }

    #[tokio::test]
    async fn a_bad_row_writes_nothing() {
        let table = TraceTable::create("memory:///bad-row-test", &TableOptions::default())
            .await
            .unwrap();
        let mut bad = span(1, 2, None, 0);
        bad.trace_id = "nothex".into();
        let err = table
            .append_spans(&[span(1, 1, None, 0), bad])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        assert_eq!(table.version(), 0);
        assert_eq!(table.refresh().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn opening_something_else_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let err = TraceTable::open(dir.path().to_str().unwrap(), &TableOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is not a trace table"), "{err}");

        // A Delta table with another schema.
        let other = dir.path().join("other");
        let other_url =
            url::Url::from_directory_path(std::path::absolute(&other).unwrap()).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        DeltaTable::try_from_url(other_url)
            .await
            .unwrap()
            .create()
            .with_column(
                "x",
                deltalake::kernel::DataType::Primitive(deltalake::kernel::PrimitiveType::Long),
                true,
                None,
            )
            .await
            .unwrap();
        let err = TraceTable::open(other.to_str().unwrap(), &TableOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a trace table"), "{err}");
        assert!(err.contains("no column \"trace_id\""), "{err}");
    }
}
