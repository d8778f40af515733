//! Trace lookups that do not grow with the table: an in-memory index of every data file's
//! row groups (trace id range, start time range, the parquet bloom filter of `trace_id`, and
//! the file's parquet metadata), and a scan that reads exactly the row groups that can hold
//! the wanted trace ids.
//!
//! The index is built when a snapshot is installed (open, append, refresh), for the files that
//! are new in that version only; files kept from the previous version keep their entries.
//! A lookup then costs a few in-memory checks per row group and one read per matching row
//! group: no footer or bloom filter is read on the query path, and nothing is listed.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use bytes::Bytes;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    ParquetAccessPlan, ParquetFileMetrics, ParquetFileReaderFactory,
};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{col, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet};
use deltalake::kernel::EagerSnapshot;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;

use crate::error::{Result, TraceLakeError};
use crate::schema::{col as c, storage_schema};

/// Files whose index entries are read at the same time when a version is installed.
const CONCURRENT_FILE_READS: usize = 8;

/// One row group of an indexed file.
#[derive(Debug)]
pub struct IndexedRowGroup {
    /// Smallest and largest trace id (lowercase hex), if the file has statistics.
    pub trace_ids: Option<(String, String)>,
    /// The parquet bloom filter of `trace_id`, if the file has one.
    pub bloom: Option<Sbbf>,
}

impl IndexedRowGroup {
    fn may_contain(&self, id: &str) -> bool {
        if let Some((min, max)) = &self.trace_ids
            && (id < min.as_str() || id > max.as_str())
        {
            return false;
        }
        self.bloom.as_ref().is_none_or(|b| b.check(id))
    }
}

/// One data file of the current version.
#[derive(Debug)]
pub struct IndexedFile {
    /// Path in the root object store.
    pub location: Path,
    pub size: u64,
    /// The footer (with the page index) and its Arrow schema, for reading the file without
    /// decoding the footer again.
    pub reader: ArrowReaderMetadata,
    /// Whether the file's columns have exactly the storage names and types, in order (every
    /// file tracelake writes): lookups then read it directly (see [`LookupExec`]).
    ///
    /// [`LookupExec`]: super::lookup_exec::LookupExec
    pub native: bool,
    /// Leaf (parquet) and root (Arrow) index of `trace_id`.
    pub trace_id_column: Option<usize>,
    pub trace_id_root: usize,
    pub row_groups: Vec<IndexedRowGroup>,
}

impl IndexedFile {
    /// The file's parquet footer, with the page index.
    pub fn metadata(&self) -> &Arc<ParquetMetaData> {
        self.reader.metadata()
    }

    /// The file's smallest and largest trace id, if every row group has statistics.
    pub fn trace_id_range(&self) -> Option<(String, String)> {
        let mut range: Option<(String, String)> = None;
        for rg in &self.row_groups {
            let (lo, hi) = rg.trace_ids.as_ref()?;
            range = Some(match range {
                None => (lo.clone(), hi.clone()),
                Some((a, b)) => (a.min(lo.clone()), b.max(hi.clone())),
            });
        }
        range
    }
}

/// The index of one table version.
#[derive(Debug, Default)]
pub struct TraceIdIndex {
    files: HashMap<Path, Arc<IndexedFile>>,
}

/// Row groups to read for a lookup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LookupPlan {
    /// (file location, row group indices) in table order.
    pub files: Vec<(Path, Vec<usize>)>,
    /// Row groups in the version.
    pub row_groups_total: usize,
    /// Data files in the version.
    pub files_total: usize,
}

impl LookupPlan {
    /// Row groups the lookup reads.
    pub fn row_groups_read(&self) -> usize {
        self.files.iter().map(|(_, r)| r.len()).sum()
    }
}

fn statistics_range(stats: Option<&Statistics>) -> Option<(String, String)> {
    match stats? {
        Statistics::ByteArray(s) => Some((
            String::from_utf8(s.min_bytes_opt()?.to_vec()).ok()?,
            String::from_utf8(s.max_bytes_opt()?.to_vec()).ok()?,
        )),
        _ => None,
    }
}

async fn index_file(store: Arc<dyn ObjectStore>, location: Path, size: u64) -> Result<IndexedFile> {
    let mut reader = StoreReader::new(store, location.clone(), size);
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let metadata = ArrowReaderMetadata::load_async(&mut reader, options)
        .await
        .map_err(|e| TraceLakeError::InvalidArgument(format!("reading {location}: {e}")))?;
    let parquet = metadata.metadata().clone();
    let expected = file_schema();
    let native = metadata.schema().fields().len() == expected.fields().len()
        && metadata
            .schema()
            .fields()
            .iter()
            .zip(expected.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    let trace_id_root = metadata.schema().index_of(c::TRACE_ID).unwrap_or_default();
    let reader_metadata = metadata.clone();
    let column = parquet
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|d| d.path().string() == c::TRACE_ID);
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata);
    let mut row_groups = Vec::with_capacity(parquet.num_row_groups());
    for rg in 0..parquet.num_row_groups() {
        let (trace_ids, bloom) = match column {
            Some(col) => (
                statistics_range(parquet.row_group(rg).column(col).statistics()),
                builder
                    .get_row_group_column_bloom_filter(rg, col)
                    .await
                    .map_err(|e| {
                        TraceLakeError::InvalidArgument(format!("reading {location}: {e}"))
                    })?,
            ),
            None => (None, None),
        };
        row_groups.push(IndexedRowGroup { trace_ids, bloom });
    }
    Ok(IndexedFile {
        location,
        size,
        reader: reader_metadata,
        native: native && column.is_some(),
        trace_id_column: column,
        trace_id_root,
        row_groups,
    })
}

/// The prefix of a table's files in its root store.
pub fn table_prefix(url: &url::Url) -> Path {
    Path::from_url_path(url.path()).unwrap_or_default()
}

impl TraceIdIndex {
    /// Indexes the files of `snapshot`, reusing the entries of `previous` for files it had.
    /// `None` when the version has files with deletion vectors (lookups then use the Delta
    /// scan).
    pub async fn build(
        store: &Arc<dyn ObjectStore>,
        prefix: &Path,
        snapshot: &EagerSnapshot,
        previous: Option<&TraceIdIndex>,
    ) -> Result<Option<Self>> {
        let log_data = snapshot.try_log_data()?;
        let mut files = HashMap::with_capacity(log_data.num_files());
        let mut missing = Vec::new();
        for view in log_data.iter() {
            if view.deletion_vector_descriptor().is_some() {
                return Ok(None);
            }
            let relative = view.object_store_path();
            let location = Path::from_iter(prefix.parts().chain(relative.parts()));
            match previous.and_then(|p| p.files.get(&location)) {
                Some(entry) => {
                    files.insert(location, entry.clone());
                }
                None => missing.push((location, view.size().max(0) as u64)),
            }
        }
        let built: Vec<IndexedFile> = futures::stream::iter(missing)
            .map(|(location, size)| index_file(store.clone(), location, size))
            .buffer_unordered(CONCURRENT_FILE_READS)
            .try_collect()
            .await?;
        for file in built {
            files.insert(file.location.clone(), Arc::new(file));
        }
        Ok(Some(Self { files }))
    }

    /// The entry of one data file.
    pub fn file(&self, location: &Path) -> Option<&Arc<IndexedFile>> {
        self.files.get(location)
    }

    /// The row groups that may hold any of `ids`.
    pub fn plan(&self, ids: &[String]) -> LookupPlan {
        let mut plan = LookupPlan {
            files_total: self.files.len(),
            ..Default::default()
        };
        let mut locations: Vec<&Path> = self.files.keys().collect();
        locations.sort();
        for location in locations {
            let file = &self.files[location];
            plan.row_groups_total += file.row_groups.len();
            let wanted: Vec<usize> = file
                .row_groups
                .iter()
                .enumerate()
                .filter(|(_, rg)| ids.iter().any(|id| rg.may_contain(id)))
                .map(|(i, _)| i)
                .collect();
            if !wanted.is_empty() {
                plan.files.push((location.clone(), wanted));
            }
        }
        plan
    }

    /// Every row group of the version (for scans that need no column, such as `count(*)`,
    /// answered from the footers held in memory).
    pub fn plan_all(&self) -> LookupPlan {
        let mut plan = LookupPlan {
            files_total: self.files.len(),
            ..Default::default()
        };
        let mut locations: Vec<&Path> = self.files.keys().collect();
        locations.sort();
        for location in locations {
            let n = self.files[location].row_groups.len();
            plan.row_groups_total += n;
            plan.files.push((location.clone(), (0..n).collect()));
        }
        plan
    }

    /// The direct read of a lookup of `ids` planned as `plan` (see [`LookupExec`]), producing
    /// the file columns `projection` as `schema`; `None` if a planned file was not written
    /// with the storage schema (another writer's file), which the general scan adapts instead.
    ///
    /// [`LookupExec`]: super::lookup_exec::LookupExec
    pub fn lookup_exec(
        &self,
        store: &Arc<dyn ObjectStore>,
        plan: &LookupPlan,
        ids: &[String],
        projection: Vec<usize>,
        schema: SchemaRef,
    ) -> Option<super::lookup_exec::LookupExec> {
        let files = plan
            .files
            .iter()
            .map(|(location, row_groups)| {
                let file = self.files.get(location)?;
                file.native.then(|| (file.clone(), row_groups.clone()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(super::lookup_exec::LookupExec::new(
            store.clone(),
            files,
            ids.to_vec(),
            projection,
            schema,
        ))
    }

    /// A scan of the row groups of `plan`, with the storage columns `projection` (indices
    /// into the storage schema without `span_date`), filtering rows to `ids` when given and
    /// pruning with `filters` (on the storage schema; conjuncts on `span_date`, which files do
    /// not hold, are left out: `start_time_unix_nano` carries the same bound).
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        store_url: &ObjectStoreUrl,
        plan: &LookupPlan,
        ids: Option<&[String]>,
        filters: &[datafusion::logical_expr::Expr],
        projection: Vec<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let file_schema = file_schema();
        let mut files = Vec::with_capacity(plan.files.len());
        for (location, row_groups) in &plan.files {
            let entry = &self.files[location];
            let mut access = ParquetAccessPlan::new_none(entry.row_groups.len());
            for &rg in row_groups {
                access.scan(rg);
            }
            let mut file = PartitionedFile::new(location.to_string(), entry.size);
            file.extensions.insert(access);
            files.push(file);
        }
        let df_schema = DFSchema::try_from(file_schema.as_ref().clone())?;
        let mut conjuncts: Vec<datafusion::logical_expr::Expr> = filters
            .iter()
            .flat_map(|f| datafusion::logical_expr::utils::split_conjunction_owned(f.clone()))
            .filter(|e| {
                e.column_refs()
                    .iter()
                    .all(|col| df_schema.has_column_with_unqualified_name(&col.name))
            })
            .collect();
        if let Some(ids) = ids {
            conjuncts.push(
                col(c::TRACE_ID).in_list(ids.iter().map(|id| lit(id.as_str())).collect(), false),
            );
        }
        // Pruning only: a predicate DataFusion cannot build here is left out (the filters are
        // re-applied above the scan).
        let predicate = datafusion::logical_expr::utils::conjunction(conjuncts)
            .and_then(|expr| state.create_physical_expr(expr, &df_schema).ok());
        let factory = IndexedReaderFactory {
            store: store.clone(),
            files: plan
                .files
                .iter()
                .map(|(l, _)| (l.clone(), self.files[l].clone()))
                .collect(),
        };
        let mut source = ParquetSource::new(file_schema)
            .with_parquet_file_reader_factory(Arc::new(factory))
            .with_pushdown_filters(true)
            .with_enable_page_index(true)
            .with_bloom_filter_on_read(false);
        if let Some(predicate) = predicate {
            source = source.with_predicate(predicate);
        }
        // Files spread over the session's target partitions, so full scans run in parallel.
        let partitions = state
            .config()
            .target_partitions()
            .clamp(1, files.len().max(1));
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
        for (i, file) in files.into_iter().enumerate() {
            groups[i % partitions].push(file);
        }
        let config = FileScanConfigBuilder::new(store_url.clone(), Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(Some(projection))?
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The columns stored in each parquet file: the storage schema without the partition column.
pub fn file_schema() -> SchemaRef {
    let storage = storage_schema();
    Arc::new(Schema::new(
        storage
            .fields()
            .iter()
            .filter(|f| f.name() != c::SPAN_DATE)
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

/// Hands the parquet scan the metadata held by the index, so a lookup reads only data pages.
#[derive(Debug)]
struct IndexedReaderFactory {
    store: Arc<dyn ObjectStore>,
    files: HashMap<Path, Arc<IndexedFile>>,
}

impl ParquetFileReaderFactory for IndexedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let location = partitioned_file.object_meta.location.clone();
        let entry = self.files.get(&location).cloned();
        let file_metrics = ParquetFileMetrics::new(partition_index, location.as_ref(), metrics);
        let size = partitioned_file.object_meta.size;
        Ok(Box::new(IndexedReader {
            inner: StoreReader::new(self.store.clone(), location, size),
            metadata: entry.map(|e| e.metadata().clone()),
            bytes_scanned: file_metrics.bytes_scanned,
        }))
    }
}

/// Reads a parquet file from an object store.
pub(super) struct StoreReader {
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
}

impl StoreReader {
    pub(super) fn new(store: Arc<dyn ObjectStore>, location: Path, size: u64) -> Self {
        Self {
            store,
            location,
            size,
        }
    }
}

fn external(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.location, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.location, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let policy = options
            .map(|o| o.column_index_policy())
            .unwrap_or(PageIndexPolicy::Optional);
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(policy)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Reads a data file through the store, counting the bytes, with the footer held by the
/// index when there is one (read from the file otherwise). Used by DataFusion's scan and by
/// [`LookupExec`](super::lookup_exec::LookupExec).
pub(super) struct IndexedReader {
    pub(super) inner: StoreReader,
    pub(super) metadata: Option<Arc<ParquetMetaData>>,
    pub(super) bytes_scanned: Count,
}

impl AsyncFileReader for IndexedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.bytes_scanned.add((range.end - range.start) as usize);
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.bytes_scanned.add(total as usize);
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        match &self.metadata {
            Some(metadata) => futures::future::ready(Ok(metadata.clone())).boxed(),
            None => self.inner.get_metadata(options),
        }
    }
}
