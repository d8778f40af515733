//! The Delta lifecycle of a trace table: open or create, append as one commit, refresh, and
//! the snapshot swap that makes every new version visible to the next query.
//!
//! tracelake keeps the table's state itself ([`state`]): loaded from deltalake's snapshot when
//! the table is opened, then moved forward by each commit's actions. An append writes its data
//! files, then its commit (a conditional put of the next log entry: another writer's commit in
//! between is read, checked, and the put tried at the next version), and installs the new
//! state: its cost follows what it writes, not the size of the table. Checkpoints are written
//! in the background every `delta.checkpointInterval` commits.
//!
//! This module owns the only code that lists `_delta_log` (refresh, which reads the commits
//! made since the installed version). The query path only reads the installed
//! [`TableSnapshot`] and never lists.

pub mod appender;
pub mod background;
pub(crate) mod compact;
pub(crate) mod ingest;
pub mod maintenance;
pub(crate) mod state;
pub(crate) mod write;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::execution::object_store::ObjectStoreUrl;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitData, CommitProperties, TransactionError};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::logstore::{CommitOrBytes, LogStoreRef};
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tracing::{Instrument, field};

use crate::error::{Result, TraceLakeError};
use crate::observe::{TraceLakeMetrics, names};
pub use crate::read::decoded::DEFAULT_LOOKUP_CACHE_BYTES;
use crate::read::decoded::DecodedCache;
use crate::read::index::{FooterBudget, SlotHome, TraceIdIndex, table_prefix};
use crate::schema::{self, col, storage_schema};
use crate::span::{Span, spans_to_batch};
use crate::store::TableLocation;
pub use appender::{AppenderConfig, SpanAppender};
pub use background::{BackgroundTask, MaintenanceSchedule};
pub use maintenance::{
    ExpireBuilder, ExpireOutcome, MAX_OPTIMIZE_TARGET_FILE_SIZE, MIN_OPTIMIZE_TARGET_FILE_SIZE,
    OptimizeBuilder, OptimizeOutcome, TableStats, VacuumBuilder, VacuumOutcome,
};
use state::{Next, TableState};

/// Rows per parquet row group. Rows are sorted by trace id inside a file, so a row group
/// covers a narrow id range and a lookup by id reads one or two of them.
pub const ROW_GROUP_ROWS: usize = 16 * 1024;

/// Rows per data page at most: with the page index, a lookup decodes only the pages that
/// hold its rows (contiguous, since rows are sorted by trace id) instead of the row group.
pub const PAGE_ROWS: usize = 1024;

/// Attempts of one commit against other writers' commits at the same version.
const COMMIT_ATTEMPTS: usize = 16;

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
pub struct TableSnapshot {
    state: TableState,
    /// The trace-id index (`None` when the version has files with deletion vectors: scans
    /// then use deltalake's reader).
    index: Option<Arc<TraceIdIndex>>,
    /// deltalake's table at this version, loaded when something needs it (maintenance, scans
    /// of versions with deletion vectors); not held otherwise.
    delta: tokio::sync::OnceCell<DeltaTable>,
    delta_scan: tokio::sync::OnceCell<Arc<dyn TableProvider>>,
}

impl std::fmt::Debug for TableSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSnapshot")
            .field("version", &self.state.version)
            .field("files", &self.state.files.len())
            .finish_non_exhaustive()
    }
}

impl TableSnapshot {
    fn new(state: TableState, delta: Option<DeltaTable>, home: &SlotHome) -> Self {
        let index = (state.deletion_vectors == 0)
            .then(|| Arc::new(TraceIdIndex::new(state.files.clone(), home.decoded.clone())));
        // deltalake's table holds the whole log in memory (every file's statistics, tags and
        // partition values): it is kept only for versions whose scans or appends need it
        // (deletion vectors; tables only deltalake's writer may write); maintenance loads it
        // again when it runs.
        let loaded = tokio::sync::OnceCell::new();
        if let Some(table) = delta
            && (state.deletion_vectors > 0 || !state.write.direct)
        {
            let _ = loaded.set(table);
        }
        Self {
            state,
            index,
            delta: loaded,
            delta_scan: tokio::sync::OnceCell::new(),
        }
    }

    /// The trace-id index of this version (`None` when it has deletion vectors).
    pub(crate) fn index(&self) -> Option<&Arc<TraceIdIndex>> {
        self.index.as_ref()
    }

    /// The state of this version.
    pub(crate) fn state(&self) -> &TableState {
        &self.state
    }

    /// The Delta version of this snapshot.
    pub fn version(&self) -> i64 {
        self.state.version
    }

    /// Data files in this version.
    pub fn num_files(&self) -> usize {
        self.state.files.len()
    }

    /// The latest span start (unix ns) any file of this version may hold at or before `upper`,
    /// from the files' log statistics: `Ok(None)` when no file holds a span that early,
    /// `Err(())` when a file has no statistics of its start times.
    pub(crate) fn latest_start_until(&self, upper: i64) -> std::result::Result<Option<i64>, ()> {
        let mut latest: Option<i64> = None;
        for slot in self.state.files.values() {
            let (lo, hi) = slot.log.starts.ok_or(())?;
            if lo <= upper {
                let candidate = hi.min(upper);
                latest = Some(latest.map_or(candidate, |l| l.max(candidate)));
            }
        }
        Ok(latest)
    }

    /// The earliest and latest span start (unix ns) of this version per the files' log
    /// statistics (`None` when it has no file or a file has no such statistics).
    pub(crate) fn start_extent(&self) -> Option<(i64, i64)> {
        let mut extent: Option<(i64, i64)> = None;
        for slot in self.state.files.values() {
            let (lo, hi) = slot.log.starts?;
            extent = Some(extent.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
        extent
    }

    /// deltalake's table at this version (loaded on first use).
    async fn delta_table(&self, log_store: &LogStoreRef) -> Result<&DeltaTable> {
        let version = self.state.version;
        self.delta
            .get_or_try_init(|| async move {
                let mut table = DeltaTable::new(log_store.clone());
                table.load_version(version as u64).await?;
                Ok::<_, TraceLakeError>(table)
            })
            .await
    }

    /// deltalake's scan over this version (storage schema), for versions the index cannot
    /// serve (deletion vectors).
    pub(crate) async fn delta_scan(
        &self,
        log_store: &LogStoreRef,
    ) -> Result<&Arc<dyn TableProvider>> {
        let table = self.delta_table(log_store).await?;
        self.delta_scan
            .get_or_try_init(|| async move {
                let state = table.snapshot()?;
                let scan = table
                    .table_provider()
                    .with_eager_snapshot(state.snapshot().clone())
                    .build()
                    .await?;
                Ok::<_, TraceLakeError>(Arc::new(scan) as Arc<dyn TableProvider>)
            })
            .await
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
    /// Bytes of parquet footers (with page indexes and `trace_id` bloom filters) kept in
    /// memory for lookups; beyond, the footers read longest ago are dropped and read again
    /// when a query needs them. Footers are read only for files a query cannot rule out by
    /// the log statistics, so this bounds the index whatever the number of files.
    pub footer_cache_bytes: u64,
    /// Bytes of decoded lookup rows kept for lookups asked again: the rows one data file gave
    /// a lookup of some trace ids with some columns, in the SQL types, keyed by all of that
    /// (see docs/architecture.md, "The decoded cache"); 0 turns it off.
    pub lookup_cache_bytes: u64,
    /// Rows an `INSERT INTO spans` (or [`TraceTable::append_stream`]) holds before sorting
    /// and writing them as data files of its commit: the statement's memory is bounded by
    /// this many rows whatever its size (1 to 100,000,000; each run writes at least one file
    /// per day it covers).
    pub insert_run_rows: usize,
    /// The dedicated attribute columns a table created with these options gets (its
    /// `tracelake.dedicatedColumns` property; see [`crate::dedicated`]): the OpenTelemetry
    /// semantic conventions' [`DedicatedColumns::defaults`](crate::dedicated::DedicatedColumns::defaults)
    /// unless set. Opening a table ignores it: the table's property counts, changed with
    /// [`TraceTable::set_dedicated_columns`].
    pub dedicated_columns: crate::dedicated::DedicatedColumns,
}

/// The default run of a streaming INSERT: 131,072 rows (eight row groups).
pub const DEFAULT_INSERT_RUN_ROWS: usize = 128 * 1024;

/// The default footer budget: 256 MiB.
pub const DEFAULT_FOOTER_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// The default size of the object cache: 256 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            storage_options: HashMap::new(),
            metrics: TraceLakeMetrics::new(),
            root_store: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            footer_cache_bytes: DEFAULT_FOOTER_CACHE_BYTES,
            lookup_cache_bytes: DEFAULT_LOOKUP_CACHE_BYTES,
            insert_run_rows: DEFAULT_INSERT_RUN_ROWS,
            dedicated_columns: crate::dedicated::DedicatedColumns::defaults(),
        }
    }
}

impl TableOptions {
    /// Resolves `location` and assembles its store stack (see [`crate::store`]).
    fn resolve(&self, location: &str, create: bool) -> Result<TableLocation> {
        appender::check_range(
            "insert_run_rows",
            self.insert_run_rows as u128,
            1,
            100_000_000,
        )?;
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
    log_store: LogStoreRef,
    /// The prefix of the table's files in the root store, and the budget of their footers.
    home: SlotHome,
    /// Rows per run of a streaming append.
    insert_run_rows: usize,
    current: ArcSwap<TableSnapshot>,
    /// Serializes this process's commits and snapshot installs.
    commit_lock: tokio::sync::Mutex<()>,
    metrics: TraceLakeMetrics,
    /// The background checkpoint, if one is running.
    checkpointing: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
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
    // Either attribute layout: tables created before the lean one keep the nested layout.
    let expected = schema::storage_schema_of(
        schema::layout_of(&actual).unwrap_or(schema::AttributeLayout::Lean),
    );
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
/// `trace_id`, and neither a dictionary nor Snappy (zstd(1) instead) on the nearly unique id
/// and time columns (see docs/architecture.md, "Inside a commit").
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
    // The nearly unique columns are most of a file's bytes (hex ids, nanosecond times): zstd(1)
    // took the search fixture from 76.5 to 52.2 bytes a span, at the cost of one zstd context
    // for each of these chunks a read opens (the others stay Snappy; docs/architecture.md).
    let zstd = Compression::ZSTD(ZstdLevel::default());
    for column in PLAIN_COLUMNS {
        builder = builder
            .set_column_dictionary_enabled((*column).into(), false)
            .set_column_compression((*column).into(), zstd);
    }
    // Attribute leaves (maps, events, links): no statistics (min/max of mixed keys and values
    // prune nothing, and they were a third of a small file's footer), bloom filters on the
    // keys and string values of span and resource attributes instead (see
    // `crate::read::attribute_filter`).
    for path in attribute_leaves() {
        builder = builder.set_column_statistics_enabled(path.clone(), EnabledStatistics::None);
    }
    for column in [col::ATTRIBUTES, col::RESOURCE_ATTRIBUTES] {
        for (leaf, ndv) in [
            (AttributeLeaf::Key, ATTRIBUTE_KEYS_NDV),
            (AttributeLeaf::StringValue, ROW_GROUP_ROWS as u64 * 4),
        ] {
            let path = leaf.path(column);
            builder = builder
                .set_column_bloom_filter_enabled(path.clone(), true)
                .set_column_bloom_filter_fpp(path.clone(), ATTRIBUTE_BLOOM_FPP)
                .set_column_bloom_filter_max_ndv(path, ndv);
        }
    }
    builder.build()
}

/// `properties` with the footer record of the dedicated columns `held` (see
/// [`crate::dedicated::FILE_METADATA_KEY`]).
pub(crate) fn with_dedicated_metadata(
    properties: WriterProperties,
    held: &[crate::dedicated::DedicatedColumn],
) -> WriterProperties {
    let mut metadata = properties.key_value_metadata().cloned().unwrap_or_default();
    metadata.push(parquet::file::metadata::KeyValue::new(
        crate::dedicated::FILE_METADATA_KEY.to_string(),
        crate::dedicated::file_metadata_value(held),
    ));
    properties
        .into_builder()
        .set_key_value_metadata(Some(metadata))
        .build()
}

/// The false-positive rate of the attribute bloom filters (folded to the values written).
pub(crate) const ATTRIBUTE_BLOOM_FPP: f64 = 0.01;

/// Distinct attribute keys a row group is sized for at most (the filter folds to fewer).
const ATTRIBUTE_KEYS_NDV: u64 = 4_096;

/// A leaf of an attribute map that has a bloom filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttributeLeaf {
    Key,
    StringValue,
}

impl AttributeLeaf {
    /// The parquet path of this leaf in the map column `column`.
    pub(crate) fn path(self, column: &str) -> parquet::schema::types::ColumnPath {
        let mut parts = vec![column.to_string(), schema::MAP_ENTRIES.to_string()];
        match self {
            AttributeLeaf::Key => parts.push("key".into()),
            AttributeLeaf::StringValue => {
                parts.push("value".into());
                parts.push("string_value".into());
            }
        }
        parquet::schema::types::ColumnPath::new(parts)
    }
}

/// The parquet paths of every leaf under the attribute, event and link columns, in either
/// layout.
fn attribute_leaves() -> &'static [parquet::schema::types::ColumnPath] {
    static LEAVES: std::sync::LazyLock<Vec<parquet::schema::types::ColumnPath>> =
        std::sync::LazyLock::new(|| {
            let mut out = Vec::new();
            for layout in [
                schema::AttributeLayout::Lean,
                schema::AttributeLayout::Nested,
            ] {
                let Ok(descr) = parquet::arrow::ArrowSchemaConverter::new()
                    .convert(&schema::storage_schema_of(layout))
                else {
                    continue;
                };
                for column in descr.columns() {
                    let path = column.path();
                    if [
                        col::ATTRIBUTES,
                        col::RESOURCE_ATTRIBUTES,
                        col::EVENTS,
                        col::LINKS,
                    ]
                    .contains(&path.parts()[0].as_str())
                        && !out.contains(path)
                    {
                        out.push(path.clone());
                    }
                }
            }
            out
        });
    &LEAVES
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
        Self::with_table(location, table, options)
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
            .with_configuration(
                [(
                    crate::dedicated::DEDICATED_COLUMNS_PROPERTY.to_string(),
                    Some(options.dedicated_columns.to_string()),
                )]
                .into_iter()
                .collect::<HashMap<String, Option<String>>>(),
            )
            // tracelake's own property is not one Delta knows.
            .with_raise_if_key_not_exists(false)
            .await?;
        Self::with_table(location, table, options)
    }

    /// The table's dedicated attribute columns, as the current version names them.
    pub fn dedicated_columns(&self) -> crate::dedicated::DedicatedColumns {
        self.snapshot().state().write.dedicated.clone()
    }

    /// Sets the table's dedicated attribute columns (one Delta commit of its
    /// `tracelake.dedicatedColumns` property). Files written from then on hold `columns`;
    /// files written before keep theirs, and filters on a key a file does not hold read its
    /// attribute maps, so answers do not change. Returns the new version.
    pub async fn set_dedicated_columns(
        &self,
        columns: &crate::dedicated::DedicatedColumns,
    ) -> Result<i64> {
        let table = self.delta_table().await?;
        let properties = HashMap::from([(
            crate::dedicated::DEDICATED_COLUMNS_PROPERTY.to_string(),
            columns.to_string(),
        )]);
        let updated = table
            .set_tbl_properties()
            .with_properties(properties)
            .with_raise_if_not_exists(false)
            .await?;
        self.advance_to(updated.version().map(|v| v as i64).unwrap_or(-1))
            .await
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

    fn with_table(
        location: TableLocation,
        table: DeltaTable,
        options: &TableOptions,
    ) -> Result<Self> {
        let metrics = options.metrics.clone();
        let home = SlotHome {
            prefix: table_prefix(&location.url),
            budget: FooterBudget::new(options.footer_cache_bytes),
            decoded: DecodedCache::new(options.lookup_cache_bytes, metrics.clone()),
        };
        let state = TableState::from_delta(&table, &home, None)?;
        static NEXT_TABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_TABLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store_url =
            ObjectStoreUrl::parse(crate::store::location::store_url(id, &location.url))?;
        let log_store = table.log_store();
        let current = ArcSwap::from_pointee(TableSnapshot::new(state, Some(table), &home));
        Ok(Self {
            location,
            store_url,
            log_store,
            home,
            insert_run_rows: options.insert_run_rows,
            current,
            commit_lock: tokio::sync::Mutex::new(()),
            metrics,
            checkpointing: std::sync::Mutex::new(None),
        })
    }

    /// Bytes of parquet footers (with page indexes and bloom filters) held for lookups now,
    /// at most [`TableOptions::footer_cache_bytes`] plus the footers queries are reading.
    pub fn footer_memory(&self) -> u64 {
        self.home.budget.used()
    }

    /// Bytes of decoded lookup rows held for lookups asked again, at most
    /// [`TableOptions::lookup_cache_bytes`] (as of the cache's last housekeeping).
    pub fn lookup_cache_memory(&self) -> u64 {
        self.home.decoded.as_ref().map_or(0, |d| d.weighted_size())
    }

    /// The metrics this table reports into.
    pub fn metrics(&self) -> &TraceLakeMetrics {
        &self.metrics
    }

    /// The table's location.
    pub fn location(&self) -> &TableLocation {
        &self.location
    }

    /// The URL the root store is registered under for scans: unique to this instance, and
    /// naming the table's location so that a Ballista executor can resolve it (see
    /// `tracelake::distributed`, cargo feature `cluster`).
    pub fn store_url(&self) -> &ObjectStoreUrl {
        &self.store_url
    }

    /// The table's Delta log store (the table's own store, rooted at the table).
    pub fn log_store(&self) -> &LogStoreRef {
        &self.log_store
    }

    /// The snapshot queries currently start from.
    pub fn snapshot(&self) -> Arc<TableSnapshot> {
        self.current.load_full()
    }

    /// The current version.
    pub fn version(&self) -> i64 {
        self.current.load().version()
    }

    /// deltalake's `DeltaTable` at the current version, for operations tracelake does not
    /// offer itself (loaded on first use for each version).
    pub async fn delta_table(&self) -> Result<DeltaTable> {
        Ok(self.snapshot().delta_table(&self.log_store).await?.clone())
    }

    /// Installs `snapshot` unless a newer version is installed already. Called with the
    /// commit lock held.
    fn install(&self, state: TableState, delta: Option<DeltaTable>) -> i64 {
        let before = self.version();
        let after = state.version;
        let _span = tracing::info_span!(
            names::DELTA_CATALOG_SWAP,
            { names::ATTR_VERSION_BEFORE } = before,
            { names::ATTR_VERSION_AFTER } = after,
        )
        .entered();
        if after <= before {
            return before;
        }
        self.current
            .store(Arc::new(TableSnapshot::new(state, delta, &self.home)));
        after
    }

    /// The actions of commit `version`, `None` if there is no such commit (yet).
    async fn read_commit(&self, version: i64) -> Result<Option<Vec<Action>>> {
        let store = self.log_store.object_store(None);
        match store.get(&state::commit_path(version)).await {
            Ok(result) => {
                let bytes = result.bytes().await?;
                Ok(Some(state::parse_commit(version, &bytes)?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The versions of the commits after `version` in the log (listing `_delta_log`).
    async fn list_commits_after(&self, version: i64) -> Result<Vec<i64>> {
        let store = self.log_store.object_store(None);
        let prefix = Path::from("_delta_log");
        let offset = state::commit_path(version);
        let entries: Vec<_> = store
            .list_with_offset(Some(&prefix), &offset)
            .try_collect()
            .await?;
        let mut versions: Vec<i64> = entries
            .iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                let digits = name.strip_suffix(".json")?;
                (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| digits.parse().ok())
                    .flatten()
            })
            .filter(|v| *v > version)
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Loads the table anew (at `version`, or the newest), checks it is still a trace table,
    /// and returns its state (keeping the footers already read of files still there).
    async fn reload(
        &self,
        previous: &TableState,
        version: Option<i64>,
    ) -> Result<(TableState, DeltaTable)> {
        let mut table = DeltaTable::new(self.log_store.clone());
        match version {
            Some(v) => table.load_version(v as u64).await?,
            None => table.load().await?,
        }
        check_trace_schema(&self.location, &table)?;
        let state = TableState::from_delta(&table, &self.home, Some(previous))?;
        Ok((state, table))
    }

    /// The state after following the log from `state`: up to `upto` (reading exactly those
    /// commits), or to the newest commit (listing the log). A commit that changes the
    /// table's metadata or protocol, or a gap (commits already cleaned up), loads the table
    /// anew.
    async fn follow_log(
        &self,
        state: &TableState,
        upto: Option<i64>,
    ) -> Result<(TableState, Option<DeltaTable>)> {
        let versions: Vec<i64> = match upto {
            Some(target) => (state.version + 1..=target).collect(),
            None => self.list_commits_after(state.version).await?,
        };
        if versions.first().is_some_and(|v| *v != state.version + 1) {
            let (state, table) = self.reload(state, None).await?;
            return Ok((state, Some(table)));
        }
        let mut current = state.clone();
        for version in versions {
            let Some(actions) = self.read_commit(version).await? else {
                let (state, table) = self.reload(state, upto).await?;
                return Ok((state, Some(table)));
            };
            match current.follow(version, &actions, &self.home) {
                Next::State(next) => current = next,
                Next::Reload => {
                    let (state, table) = self.reload(state, Some(version)).await?;
                    // Commits after a reload point are followed from the reloaded state.
                    let rest = match upto {
                        Some(target) if target > version => Some(target),
                        Some(_) => return Ok((state, Some(table))),
                        None => None,
                    };
                    let (state, later) = Box::pin(self.follow_log(&state, rest)).await?;
                    return Ok((state, later.or(Some(table))));
                }
            }
        }
        Ok((current, None))
    }

    /// Moves the installed version forward to `version` (committed by an operation that ran
    /// without the commit lock), reading the commits in between.
    pub(crate) async fn advance_to(&self, version: i64) -> Result<i64> {
        let _guard = self.commit_lock.lock().await;
        let current = self.snapshot();
        if version <= current.version() {
            return Ok(current.version());
        }
        let (state, table) = self.follow_log(current.state(), Some(version)).await?;
        Ok(self.install(state, table))
    }

    /// Reads commits made since the current snapshot (by this or any other process) and
    /// installs the newest version. Returns it.
    pub async fn refresh(&self) -> Result<i64> {
        let _guard = self.commit_lock.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<i64> {
        let before = self.version();
        let span = tracing::info_span!(
            names::DELTA_SNAPSHOT_REFRESH,
            { names::ATTR_VERSION_BEFORE } = before,
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        let result = async {
            let current = self.snapshot();
            let (state, table) = self
                .follow_log(current.state(), None)
                .instrument(tracing::info_span!(names::UPDATE_INCREMENTAL))
                .await?;
            Ok(self.install(state, table))
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
            // Sorted on a thread of its own from here (before taking the lock: other commits
            // of this process need not wait), while the writer encodes what is sorted.
            let sorted = ingest::sort_in_background(storage);
            let _guard = self.commit_lock.lock().await;
            tracing::Span::current().record(names::ATTR_VERSION_BEFORE, self.version());
            if retry && let Some(txn) = txn {
                self.refresh_locked().await?;
                let committed = self
                    .transaction_version_locked(&txn.app_id)
                    .await?
                    .is_some_and(|v| v >= txn.version);
                if committed {
                    tracing::info!(
                        app_id = %txn.app_id,
                        txn_version = txn.version,
                        "an earlier attempt of this append was committed; not writing it again"
                    );
                    return Ok(self.version());
                }
            }
            let properties = match txn {
                Some(txn) => CommitProperties::default().with_application_transaction(
                    Transaction::new(txn.app_id.as_ref(), txn.version),
                ),
                None => CommitProperties::default(),
            };
            let snapshot = self.snapshot();
            if !snapshot.state().write.direct {
                // deltalake's write operation enforces what the direct path does not.
                let table = snapshot.delta_table(&self.log_store).await?.clone();
                let settings = &snapshot.state().write;
                let batches = sorted
                    .collect()
                    .await?
                    .into_iter()
                    .map(|b| settings.for_files(b))
                    .collect::<Result<Vec<_>>>()?;
                let written = table
                    .write(batches)
                    .with_save_mode(SaveMode::Append)
                    .with_partition_columns([col::SPAN_DATE])
                    .with_writer_properties(writer_properties())
                    .with_commit_properties(properties)
                    .await?;
                let version = written.version().map(|v| v as i64).unwrap_or(-1);
                let (state, _) = self.follow_log(snapshot.state(), Some(version)).await?;
                return Ok(self.install(state, Some(written)));
            }
            let adds = write::write_files(&self.log_store, &snapshot.state().write, sorted).await?;
            self.commit_adds(snapshot.state(), adds, txn).await
        }
        .instrument(span.clone())
        .await;
        self.metrics
            .record_commit(result.is_ok(), rows, started.elapsed().as_secs_f64());
        let version = record_result(&span, result)?;
        span.record(names::ATTR_VERSION_AFTER, version);
        Ok(AppendOutcome { version, rows })
    }

    /// Appends a stream of storage batches as one Delta commit, writing data files as the
    /// batches arrive: every `run_rows` rows (at least) are sorted and written as files of
    /// their own, so memory is bounded by one run whatever the size of the stream. The commit
    /// holds every run's files, or nothing: when a batch fails (bad rows, a failing input or
    /// store), the files already written are deleted (best effort; they were never part of
    /// the table either way) and the error returned. Tables whose features the direct write
    /// path does not enforce (see [`state::WriteSettings`]) collect the stream and commit
    /// through deltalake's write operation.
    pub async fn append_stream(
        &self,
        batches: impl futures::Stream<Item = Result<RecordBatch>> + Unpin,
    ) -> Result<AppendOutcome> {
        use futures::StreamExt;
        // Tiny batches are gathered first: a run of them held many times its rows' memory.
        let mut batches = Box::pin(ingest::coalesce_small(batches));
        let run_rows = self.insert_run_rows;
        if !self.snapshot().state().write.direct {
            let mut storage = Vec::new();
            let mut rows = 0u64;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                storage.push(batch);
            }
            return self.commit(storage, rows, None, false).await;
        }
        let span = tracing::info_span!(
            names::DELTA_APPEND,
            { names::ATTR_ROWS } = field::Empty,
            { names::ATTR_VERSION_BEFORE } = field::Empty,
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        let started = std::time::Instant::now();
        let mut adds: Vec<Action> = Vec::new();
        let mut rows = 0u64;
        // One run is written (sorted, encoded, uploaded) in a task of its own while the next
        // one is read and checked: at most two runs are held.
        let mut in_flight: Option<tokio::task::JoinHandle<Result<Vec<Action>>>> = None;
        let settings = self.snapshot().state().write.clone();
        let start_run = |run: Vec<RecordBatch>| {
            let log_store = self.log_store.clone();
            let settings = settings.clone();
            tokio::spawn(
                async move {
                    let sorted = ingest::sort_in_background(run);
                    write::write_files(&log_store, &settings, sorted).await
                }
                .instrument(tracing::Span::current()),
            )
        };
        let written = async {
            let mut run: Vec<RecordBatch> = Vec::new();
            let mut buffered = 0usize;
            loop {
                let next = batches.next().await;
                let end = next.is_none();
                let mut pending = match next {
                    Some(batch) => {
                        let batch = batch?;
                        rows += batch.num_rows() as u64;
                        Some(batch)
                    }
                    None => None,
                };
                // A batch larger than what the run has room for is split across runs.
                while let Some(batch) = pending.take() {
                    let room = run_rows - buffered;
                    if batch.num_rows() > room {
                        pending = Some(batch.slice(room, batch.num_rows() - room));
                        run.push(batch.slice(0, room));
                        buffered = run_rows;
                    } else {
                        buffered += batch.num_rows();
                        run.push(batch);
                    }
                    if buffered >= run_rows {
                        if let Some(previous) = in_flight.take() {
                            adds.extend(joined(previous.await)?);
                        }
                        in_flight = Some(start_run(std::mem::take(&mut run)));
                        buffered = 0;
                    }
                }
                if end {
                    if let Some(previous) = in_flight.take() {
                        adds.extend(joined(previous.await)?);
                    }
                    if buffered > 0 {
                        adds.extend(joined(start_run(std::mem::take(&mut run)).await)?);
                    }
                    return Ok(());
                }
            }
        }
        .instrument(span.clone())
        .await;
        // A run still being written when the statement failed: its files are waited for, to be
        // deleted with the others.
        if let Some(last) = in_flight.take()
            && let Ok(Ok(last)) = last.await
        {
            adds.extend(last);
        }
        span.record(names::ATTR_ROWS, rows);
        let result = match written {
            Err(e) => {
                // Nothing was committed: the files written so far are deleted. (Once the log
                // entry is attempted, they stay: a commit whose answer was lost may have
                // landed, and its files must not go.)
                self.delete_unreferenced(&adds).await;
                Err(e)
            }
            Ok(()) if rows == 0 => {
                return Ok(AppendOutcome {
                    version: self.version(),
                    rows: 0,
                });
            }
            Ok(()) => {
                async {
                    let _guard = self.commit_lock.lock().await;
                    tracing::Span::current().record(names::ATTR_VERSION_BEFORE, self.version());
                    let snapshot = self.snapshot();
                    self.commit_adds(snapshot.state(), adds.clone(), None).await
                }
                .instrument(span.clone())
                .await
            }
        };
        self.metrics
            .record_commit(result.is_ok(), rows, started.elapsed().as_secs_f64());
        let version = record_result(&span, result)?;
        span.record(names::ATTR_VERSION_AFTER, version);
        Ok(AppendOutcome { version, rows })
    }

    /// Deletes data files written for a commit that did not happen (best effort).
    async fn delete_unreferenced(&self, adds: &[Action]) {
        let store = self.log_store.object_store(None);
        for add in adds {
            if let Action::Add(add) = add {
                let path = object_store::path::Path::from_url_path(&add.path)
                    .unwrap_or_else(|_| object_store::path::Path::from(add.path.as_str()));
                if let Err(e) = store.delete(&path).await {
                    tracing::warn!(error = %e, path = %add.path, "cannot delete a data file of a failed commit");
                }
            }
        }
    }

    /// Commits `adds` on top of `base` (with `txn`): a conditional put of the next log entry;
    /// when another writer took that version, its commit is read and followed, and the put
    /// tried at the next one. Installs the new version and returns it. Called with the commit
    /// lock held.
    async fn commit_adds(
        &self,
        base: &TableState,
        adds: Vec<Action>,
        txn: Option<&AppTransaction>,
    ) -> Result<i64> {
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(vec![col::SPAN_DATE.to_string()]),
            predicate: None,
        };
        let span = tracing::info_span!(names::DELTA_APPEND_COMMIT);
        self.commit_actions(base, adds, txn, operation, &[])
            .instrument(span)
            .await
    }

    /// Commits `actions` on top of `base` as [`TraceTable::commit_adds`] does, provided every
    /// file of `requires` (log paths) is still in the table at the version the commit lands
    /// on: a rewrite (compaction) whose inputs another writer removed in the meantime fails
    /// with a conflict instead. Called with the commit lock held.
    pub(crate) async fn commit_actions(
        &self,
        base: &TableState,
        actions: Vec<Action>,
        txn: Option<&AppTransaction>,
        operation: DeltaOperation,
        requires: &[String],
    ) -> Result<i64> {
        let transactions: Vec<Transaction> = txn
            .map(|t| vec![Transaction::new(t.app_id.as_ref(), t.version)])
            .unwrap_or_default();
        let data = CommitData::new(actions, operation, HashMap::new(), transactions);
        let bytes = data.get_bytes().map_err(DeltaTableError::from)?;
        let mut state = base.clone();
        let still_there = |state: &TableState| -> Result<()> {
            if requires.is_empty() {
                return Ok(());
            }
            let present: std::collections::HashSet<&str> =
                state.files.values().map(|s| s.log.path.as_str()).collect();
            match requires.iter().find(|p| !present.contains(p.as_str())) {
                None => Ok(()),
                Some(gone) => Err(TraceLakeError::Conflict(format!(
                    "data file {gone} was removed from the table by another commit (by version \
                     {}) while it was being rewritten; nothing was committed, try again",
                    state.version
                ))),
            }
        };
        still_there(&state)?;
        let committed = async {
            for _ in 0..COMMIT_ATTEMPTS {
                let version = state.version + 1;
                match self
                    .log_store
                    .write_commit_entry(
                        version as u64,
                        CommitOrBytes::LogBytes(bytes.clone()),
                        uuid::Uuid::new_v4(),
                    )
                    .await
                {
                    Ok(()) => return Ok(version),
                    Err(TransactionError::VersionAlreadyExists(_)) => {
                        // Another writer's commit: appends never conflict with appends or
                        // maintenance, but a change of metadata or protocol (a new schema,
                        // constraints) is checked by a reload before trying again.
                        let (next, _) = self.follow_log(&state, Some(version)).await?;
                        if !next.write.direct {
                            return Err(TraceLakeError::Delta(DeltaTableError::Generic(format!(
                                "commit {version} by another writer changed the table so that \
                                 appends must be written by deltalake; try again"
                            ))));
                        }
                        still_there(&next)?;
                        state = next;
                    }
                    Err(e) => return Err(TraceLakeError::Delta(e.into())),
                }
            }
            Err(TraceLakeError::Delta(DeltaTableError::Generic(format!(
                "{COMMIT_ATTEMPTS} attempts to commit lost to other writers' commits; try again"
            ))))
        }
        .await?;
        match state.follow(committed, &data.actions, &self.home) {
            Next::State(next) => {
                let version = self.install(next, None);
                self.checkpoint_if_due(committed, &state);
                Ok(version)
            }
            Next::Reload => {
                let (next, table) = self.reload(&state, Some(committed)).await?;
                Ok(self.install(next, Some(table)))
            }
        }
    }

    /// Starts a checkpoint of `version` in the background when the table's checkpoint interval
    /// says so (every `interval`-th commit, as deltalake's post-commit hook does), unless one
    /// is running.
    fn checkpoint_if_due(&self, version: i64, state: &TableState) {
        let interval = state.write.checkpoint_interval.max(1) as i64;
        if version <= 0 || (version + 1) % interval != 0 {
            return;
        }
        let Ok(mut running) = self.checkpointing.lock() else {
            return;
        };
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let log_store = self.log_store.clone();
        *running = Some(tokio::spawn(
            async move {
                if let Err(e) = write_checkpoint(log_store, version).await {
                    tracing::warn!(error = %e, version, "background checkpoint failed");
                }
            }
            .instrument(tracing::info_span!(
                names::DELTA_CHECKPOINT,
                { names::ATTR_VERSION_AFTER } = version
            )),
        ));
    }

    /// Waits for a background checkpoint, if one is running (for a process about to exit).
    pub async fn wait_for_background_work(&self) {
        let handle = self.checkpointing.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Whether the commit numbered `txn` is in the table (reading the log), installing what
    /// was read.
    pub(crate) async fn transaction_committed(&self, txn: &AppTransaction) -> Result<bool> {
        let _guard = self.commit_lock.lock().await;
        self.refresh_locked().await?;
        Ok(self
            .transaction_version_locked(&txn.app_id)
            .await?
            .is_some_and(|v| v >= txn.version))
    }

    /// The version of application transaction `app_id` in the installed version: from the
    /// commits this process followed, else from the Delta log (a state loaded through
    /// deltalake, at open or after a metadata change, does not carry the transactions).
    /// Called with the commit lock held.
    async fn transaction_version_locked(&self, app_id: &str) -> Result<Option<i64>> {
        let snapshot = self.snapshot();
        if let Some(version) = snapshot.state().transaction_version(app_id) {
            return Ok(Some(version));
        }
        let table = snapshot.delta_table(&self.log_store).await?;
        Ok(table
            .snapshot()?
            .transaction_version(self.log_store.as_ref(), app_id)
            .await?)
    }
}

/// Writes a checkpoint of `version` and cleans up expired log files (as deltalake's
/// post-commit hook does).
async fn write_checkpoint(log_store: LogStoreRef, version: i64) -> Result<()> {
    let mut table = DeltaTable::new(log_store);
    table.load_version(version as u64).await?;
    deltalake::checkpoints::create_checkpoint(&table, None).await?;
    let cleanup = table
        .snapshot()?
        .table_config()
        .enable_expired_log_cleanup();
    if cleanup {
        deltalake::checkpoints::cleanup_metadata(&table, None).await?;
    }
    Ok(())
}

/// A Delta application transaction (`txn` action): the appender numbers its commits so that a
/// retried commit is written at most once.
#[derive(Debug, Clone)]
pub(crate) struct AppTransaction {
    pub(crate) app_id: Arc<str>,
    pub(crate) version: i64,
}

/// Records an error on `span` and passes the result on.
/// The outcome of a task writing files (a panic in it becomes an error).
fn joined(
    outcome: std::result::Result<Result<Vec<Action>>, tokio::task::JoinError>,
) -> Result<Vec<Action>> {
    outcome
        .map_err(|e| TraceLakeError::InvalidArgument(format!("writing data files failed: {e}")))?
}

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
        let delta = reopened.delta_table().await.unwrap();
        let actual = delta.snapshot().unwrap().snapshot().arrow_schema();
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
    async fn a_committed_transaction_is_known_after_a_reopen() {
        // Transactions committed before this process opened the table come from the log (the
        // state loaded at open does not list them): a retry after a reopen writes nothing.
        let writer = TraceTable::create("memory:///txn-reopen", &TableOptions::default())
            .await
            .unwrap();
        let txn = AppTransaction {
            app_id: Arc::from("appender-1"),
            version: 3,
        };
        let batch = crate::span::spans_to_batch(&[span(1, 1, None, 0)]).unwrap();
        let storage = vec![ingest::to_storage(&batch, 0).unwrap()];
        writer
            .commit(storage.clone(), 1, Some(&txn), false)
            .await
            .unwrap();
        assert!(writer.transaction_committed(&txn).await.unwrap());
        let reopened = TraceTable::open("memory:///txn-reopen", &TableOptions::default())
            .await
            .unwrap();
        assert!(reopened.transaction_committed(&txn).await.unwrap());
        let later = AppTransaction {
            app_id: Arc::from("appender-1"),
            version: 4,
        };
        assert!(!reopened.transaction_committed(&later).await.unwrap());
        let outcome = reopened.commit(storage, 1, Some(&txn), true).await.unwrap();
        assert_eq!(
            outcome.version, 1,
            "the retried commit is not written again"
        );
        assert_eq!(reopened.version(), 1);
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
