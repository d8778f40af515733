//! [`LookupExec`]: the scan of a lookup by trace id, straight on parquet's async reader.
//!
//! A lookup reads a handful of rows. DataFusion's general parquet scan spends more time on
//! setting itself up per file (pruning predicates, schema adaptation, per-file metrics) than on
//! those rows, so lookups planned on the [trace-id index](super::index) use this node instead:
//! for each row group the index points at, it selects the pages of `trace_id` whose min/max
//! may hold a wanted id (page index held in memory), decodes `trace_id` there, and decodes the
//! other projected columns only for the matching rows. The footers come from the index, so the
//! only object-store reads are the data pages, in one request per file: the candidate pages
//! of every projected column, fetched together before decoding (see [`FileRead::prefetch`]).
//!
//! The output has the SQL types and names of `spans` (the storage columns converted), so no
//! projection sits above it.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, StringArray};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult, exec_err};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, RowFilter, RowSelection, RowSelector};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::column_index::ColumnIndexMetaData;

use super::decoded::{DecodedCache, DecodedKey};
use super::index::IndexedFile;
use super::reader::{IndexedReader, StoreReader};

/// Files of one lookup opened (their pages fetched) at the same time (a lookup usually reads
/// one or two).
const CONCURRENT_FILES: usize = 4;

/// The most bytes one file's read fetches ahead of decoding. A lookup of a few ids fetches a
/// few pages per column (well under 1 MiB); a lookup of many ids (a long `IN` list) may have
/// candidate pages in every row group of a large file: beyond this, the pages are fetched one
/// row group at a time as parquet's reader asks for them, so what a read holds stays bounded.
pub const LOOKUP_PREFETCH_BYTES: u64 = 8 * 1024 * 1024;

/// The rows of one file, as read or from the decoded cache.
type BatchStream = futures::stream::BoxStream<'static, DfResult<RecordBatch>>;

/// Reads the rows of the wanted trace ids from the row groups the index planned.
#[derive(Debug)]
pub struct LookupExec {
    store: Arc<dyn ObjectStore>,
    /// The URL `store` is registered under (what a plan shipped to another node names).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    store_url: ObjectStoreUrl,
    /// Files with the row groups to read, in table order.
    pub(crate) files: Vec<(Arc<IndexedFile>, Vec<usize>)>,
    pub(crate) ids: Arc<[String]>,
    /// Indices into the file schema of the columns to read, in output order.
    pub(crate) projection: Vec<usize>,
    /// The output: SQL names and types.
    schema: SchemaRef,
    /// The table's decoded cache of lookup rows (`None` when off, or when shipped).
    decoded: Option<Arc<DecodedCache>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl LookupExec {
    /// A lookup of `ids` in `files`, producing the file columns `projection` as `schema` (the
    /// SQL fields of those columns, same order), keeping what each file gives in `decoded`.
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        store_url: ObjectStoreUrl,
        files: Vec<(Arc<IndexedFile>, Vec<usize>)>,
        ids: Vec<String>,
        projection: Vec<usize>,
        schema: SchemaRef,
        decoded: Option<Arc<DecodedCache>>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            store,
            store_url,
            files,
            ids: ids.into(),
            projection,
            schema,
            decoded,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl LookupExec {
    /// The URL the files' store is registered under.
    #[cfg(feature = "cluster")]
    pub(crate) fn store_url(&self) -> &ObjectStoreUrl {
        &self.store_url
    }
}

impl DisplayAs for LookupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        const SHOWN: usize = 5;
        let row_groups: usize = self.files.iter().map(|(_, r)| r.len()).sum();
        let mut ids = self.ids[..self.ids.len().min(SHOWN)].join(", ");
        if self.ids.len() > SHOWN {
            ids.push_str(&format!(", ... ({} ids)", self.ids.len()));
        }
        write!(
            f,
            "LookupExec: trace_ids=[{ids}], files={}, row_groups={row_groups}",
            self.files.len(),
        )
    }
}

impl ExecutionPlan for LookupExec {
    fn name(&self) -> &'static str {
        "LookupExec"
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            exec_err!("LookupExec has no children")
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return exec_err!("LookupExec has one partition, asked for {partition}");
        }
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let batch_size = context.session_config().batch_size();
        let reads: Vec<FileRead> = self
            .files
            .iter()
            .map(|(file, row_groups)| {
                let location = file.location.to_string();
                let metric = || {
                    MetricBuilder::new(&self.metrics).with_new_label("filename", location.clone())
                };
                let pruning = metric().pruning_metrics("row_groups_pruned_statistics", partition);
                pruning.add_matched(row_groups.len());
                FileRead {
                    store: self.store.clone(),
                    file: file.clone(),
                    row_groups: row_groups.clone(),
                    ids: self.ids.clone(),
                    projection: self.projection.clone(),
                    schema: self.schema.clone(),
                    batch_size,
                    bytes_scanned: metric().counter("bytes_scanned", partition),
                    decoded: self.decoded.clone(),
                    decoded_hits: metric().counter("decoded_cache_hits", partition),
                }
            })
            .collect();
        // Up to CONCURRENT_FILES files are opened (their pages fetched) at once; their rows
        // are decoded and handed over one file after the other, as they are asked for.
        let stream = futures::stream::iter(reads)
            .map(FileRead::open)
            .buffered(CONCURRENT_FILES)
            .try_flatten()
            .inspect_ok(move |batch| baseline.record_output(batch.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// The read of one file's planned row groups.
struct FileRead {
    store: Arc<dyn ObjectStore>,
    file: Arc<IndexedFile>,
    row_groups: Vec<usize>,
    ids: Arc<[String]>,
    projection: Vec<usize>,
    schema: SchemaRef,
    batch_size: usize,
    bytes_scanned: Count,
    decoded: Option<Arc<DecodedCache>>,
    /// Files whose rows came from `decoded` (0 or 1).
    decoded_hits: Count,
}

impl FileRead {
    /// The file's rows of the wanted ids: from the decoded cache if this very read was done
    /// before, else read (and kept there once the stream has ended).
    async fn open(self) -> DfResult<BatchStream> {
        let Some(decoded) = self.decoded.clone() else {
            return self.read().await;
        };
        let key = DecodedKey {
            location: self.file.location.clone(),
            size: self.file.size,
            row_groups: self.row_groups.clone(),
            ids: self.ids.clone(),
            projection: self.projection.clone(),
        };
        if let Some(batches) = decoded.get(&key).await {
            self.decoded_hits.add(1);
            // Kept as one batch: handed over in batches of at most the session's size.
            let size = self.batch_size.max(1);
            let slices: Vec<DfResult<RecordBatch>> = batches
                .iter()
                .flat_map(|batch| {
                    (0..batch.num_rows()).step_by(size).map(move |start| {
                        Ok(batch.slice(start, size.min(batch.num_rows() - start)))
                    })
                })
                .collect();
            return Ok(futures::stream::iter(slices).boxed());
        }
        let read = self.read().await?;
        Ok(kept_in(decoded, key, read))
    }

    /// Reads the file's rows of the wanted ids: the pages are fetched here, the rows decoded
    /// as the stream is polled (one row group's pages at a time when they were not
    /// prefetched).
    async fn read(self) -> DfResult<BatchStream> {
        let reader_metadata = self.file.reader.clone();
        let metadata = self.file.metadata().clone();
        let descr = metadata.file_metadata().schema_descr_ptr();
        let Some(trace_id) = self.file.trace_id_column else {
            return exec_err!("{} has no trace_id column", self.file.location);
        };
        let groups = page_selections(&metadata, &self.row_groups, trace_id, &self.ids);
        let selection = groups
            .as_ref()
            .map(|groups| RowSelection::from(groups.concat()));
        if selection.as_ref().is_some_and(|s| !s.selects_any()) {
            return Ok(futures::stream::empty().boxed());
        }
        // Parquet returns the projected root columns in file order.
        let mut roots = self.projection.clone();
        roots.sort_unstable();
        roots.dedup();
        let order: Vec<usize> = self
            .projection
            .iter()
            .map(|p| roots.binary_search(p).unwrap_or_default())
            .collect();
        let trace_root = self.file.trace_id_root;
        let ids = self.ids.clone();
        let predicate = ArrowPredicateFn::new(
            ProjectionMask::roots(&descr, [trace_root]),
            move |batch: RecordBatch| {
                let column = batch.column(0);
                let values = column
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| {
                        arrow::error::ArrowError::InvalidArgumentError(
                            "trace_id is not a string column".into(),
                        )
                    })?;
                Ok(matching(values, &ids))
            },
        );
        let projection = ProjectionMask::roots(&descr, roots.iter().copied());
        let prefetched = match &groups {
            Some(groups) => self.prefetch(&metadata, groups, &projection).await?,
            None => Vec::new(),
        };
        let reader = IndexedReader {
            inner: StoreReader::new(
                self.store.clone(),
                self.file.location.clone(),
                self.file.size,
            ),
            metadata: Some(metadata.clone()),
            bytes_scanned: self.bytes_scanned.clone(),
            prefetched,
        };
        let mut builder =
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader, reader_metadata)
                .with_row_groups(self.row_groups.clone())
                .with_projection(projection)
                .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
                // A lookup reads a few pages of at most PAGE_ROWS rows: decoding buffers sized
                // for the session's batch (8,192 rows) cost more than they hold (measured with
                // `phases lookup`: a 3-column trace_tree 0.41-0.45 -> 0.31-0.37 ms fresh).
                .with_batch_size(self.batch_size.min(crate::table::PAGE_ROWS));
        if let Some(selection) = selection {
            builder = builder.with_row_selection(selection);
        }
        let schema = self.schema.clone();
        Ok(builder
            .build()
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e)))
            .try_filter(|batch| futures::future::ready(batch.num_rows() > 0))
            .and_then(move |batch| futures::future::ready(output(&schema, &batch, &order)))
            .boxed())
    }

    /// Every page the read may need, in one request: for each projected leaf of each planned
    /// row group, the pages holding candidate rows (`groups`, from the `trace_id` page
    /// index) and the dictionary page. Parquet's reader would ask for the `trace_id` pages,
    /// decode them, then ask for the other columns' pages of the matching rows: two round
    /// trips to the store per file, where one does (the matching rows are among the
    /// candidates, so their pages are among these). Empty when the footer has no offset index,
    /// or when the pages come to more than [`LOOKUP_PREFETCH_BYTES`].
    async fn prefetch(
        &self,
        metadata: &ParquetMetaData,
        groups: &[Vec<RowSelector>],
        projection: &ProjectionMask,
    ) -> DfResult<Vec<(Range<u64>, Bytes)>> {
        let Some(offset_index) = metadata.offset_index() else {
            return Ok(Vec::new());
        };
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for (&rg, selectors) in self.row_groups.iter().zip(groups) {
            let selection = RowSelection::from(selectors.clone());
            if !selection.selects_any() {
                continue;
            }
            let (Some(group), Some(pages)) = (metadata.row_groups().get(rg), offset_index.get(rg))
            else {
                return Ok(Vec::new());
            };
            for (leaf, chunk) in group.columns().iter().enumerate() {
                if !projection.leaf_included(leaf) {
                    continue;
                }
                let Some(locations) = pages.get(leaf) else {
                    return Ok(Vec::new());
                };
                let (start, _) = chunk.byte_range();
                if let Some(first) = locations.page_locations.first()
                    && first.offset as u64 != start
                {
                    ranges.push(start..first.offset as u64);
                }
                ranges.extend(selection.scan_ranges(&locations.page_locations));
            }
        }
        ranges.sort_by_key(|r| (r.start, r.end));
        ranges.dedup();
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if total > LOOKUP_PREFETCH_BYTES {
            return Ok(Vec::new());
        }
        self.bytes_scanned.add(total as usize);
        let bytes = self
            .store
            .get_ranges(&self.file.location, &ranges)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(ranges.into_iter().zip(bytes).collect())
    }
}

/// The read columns of `batch` in output order (`order`), with the SQL types of `schema`.
fn output(schema: &SchemaRef, batch: &RecordBatch, order: &[usize]) -> DfResult<RecordBatch> {
    let columns: Vec<ArrayRef> = order
        .iter()
        .zip(schema.fields())
        .map(|(&i, field)| {
            let column = batch.column(i);
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else if crate::layout::holds_lean(column.data_type()) {
                Ok(crate::layout::to_nested(column)?)
            } else {
                Ok(cast(column, field.data_type())?)
            }
        })
        .collect::<DfResult<_>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// `stream`, its batches kept in `decoded` under `key` once it has ended. Meanwhile they are
/// staged (held as decoded) up to the cache's staging limit; beyond it nothing is kept and the
/// staged batches are let go. A stream dropped before its end (a `LIMIT` above) keeps nothing.
fn kept_in(decoded: Arc<DecodedCache>, key: DecodedKey, stream: BatchStream) -> BatchStream {
    let limit = decoded.staging_limit();
    let staged = Some((key, Vec::new(), 0usize));
    futures::stream::try_unfold(
        (stream, staged, decoded),
        move |(mut stream, mut staged, decoded)| async move {
            match stream.next().await {
                Some(batch) => {
                    let batch = batch?;
                    if let Some((_, batches, bytes)) = staged.as_mut() {
                        *bytes = bytes.saturating_add(batch.get_array_memory_size());
                        if *bytes > limit {
                            staged = None;
                        } else {
                            batches.push(batch.clone());
                        }
                    }
                    Ok(Some((batch, (stream, staged, decoded))))
                }
                None => {
                    if let Some((key, batches, _)) = staged {
                        decoded.insert(key, &batches).await;
                    }
                    Ok(None)
                }
            }
        },
    )
    .boxed()
}

/// Which of `values` are one of `ids`.
fn matching(values: &StringArray, ids: &[String]) -> BooleanArray {
    if ids.len() <= 8 {
        values
            .iter()
            .map(|v| Some(v.is_some_and(|v| ids.iter().any(|id| id == v))))
            .collect()
    } else {
        let set: HashSet<&str> = ids.iter().map(String::as_str).collect();
        values
            .iter()
            .map(|v| Some(v.is_some_and(|v| set.contains(v))))
            .collect()
    }
}

/// For each of `row_groups` (in that order), its rows on pages of `column` whose min/max may
/// hold one of `ids` (every row of a single-page chunk without a column index); `None` when
/// the file has no page index for the column (every row of the row groups is then a
/// candidate).
fn page_selections(
    metadata: &ParquetMetaData,
    row_groups: &[usize],
    column: usize,
    ids: &[String],
) -> Option<Vec<Vec<RowSelector>>> {
    let column_index = metadata.column_index()?;
    let offset_index = metadata.offset_index()?;
    // Sorted once: a page is a candidate if the first id at or above its min is within its
    // max (a long `IN` list costs a binary search per page, not a pass over the ids).
    let mut sorted: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
    sorted.sort_unstable();
    let mut groups = Vec::with_capacity(row_groups.len());
    for &rg in row_groups {
        let mut selectors = Vec::new();
        let rows = metadata.row_group(rg).num_rows().max(0) as usize;
        let pages = &offset_index.get(rg)?.get(column)?.page_locations;
        let index = match column_index.get(rg)?.get(column)? {
            ColumnIndexMetaData::BYTE_ARRAY(index) => index,
            // One page, whose column index is not held (its row group's statistics say the
            // same, and the row group was picked by them): its rows are candidates.
            ColumnIndexMetaData::NONE if pages.len() == 1 => {
                groups.push(vec![RowSelector::select(rows)]);
                continue;
            }
            _ => return None,
        };
        for (page, location) in pages.iter().enumerate() {
            let start = location.first_row_index.max(0) as usize;
            let end = pages
                .get(page + 1)
                .map(|next| next.first_row_index.max(0) as usize)
                .unwrap_or(rows);
            let wanted = match (index.min_value(page), index.max_value(page)) {
                (Some(min), Some(max)) => {
                    let first = sorted.partition_point(|id| *id < min);
                    sorted.get(first).is_some_and(|id| *id <= max)
                }
                // A page of nulls holds no id; a page without statistics may hold any.
                _ => !index.is_null_page(page),
            };
            let count = end.saturating_sub(start);
            selectors.push(if wanted {
                RowSelector::select(count)
            } else {
                RowSelector::skip(count)
            });
        }
        groups.push(selectors);
    }
    Some(groups)
}
