//! The trace-id index of one table version: a slot per data file, with what the Delta log says
//! about the file (size, trace-id and start-time ranges from its statistics) and, once read,
//! what its parquet footer says (row-group trace-id ranges, the bloom filter of `trace_id`,
//! the footer with its page index, for reading the file without decoding the footer again).
//!
//! Slots outlive versions: a new version reuses the slots of the files it keeps, so installing
//! a version reads nothing about files already known. A file whose footer cannot be read does
//! not fail the version: its slot stays empty, and only a query that needs the file (one the
//! log statistics cannot rule out) tries to read it again, failing with an error that names
//! the file if it still cannot. The query path never lists; it reads only footers, bloom
//! filters and pages of files the version names.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use delta_kernel::expressions::Scalar;
use deltalake::kernel::{EagerSnapshot, LogicalFileView};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::statistics::Statistics;

use super::file_schema;
use super::filters::StartBounds;
use super::reader::StoreReader;
use crate::error::{Result, TraceLakeError};
use crate::schema::col;

/// Footers read at the same time (when a version is installed, or by a query that needs
/// several files not read yet).
const CONCURRENT_FOOTER_READS: usize = 8;

/// One row group of a read file.
#[derive(Debug)]
pub(crate) struct IndexedRowGroup {
    /// Smallest and largest trace id (lowercase hex), if the file has statistics.
    pub(crate) trace_ids: Option<(String, String)>,
    /// The parquet bloom filter of `trace_id`, if the file has one.
    pub(crate) bloom: Option<Sbbf>,
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

/// What the footer of one data file says, read once and kept while the file is in the table.
#[derive(Debug)]
pub(crate) struct IndexedFile {
    /// Path in the root object store.
    pub(crate) location: Path,
    pub(crate) size: u64,
    /// The footer (with the page index) and its Arrow schema, for reading the file without
    /// decoding the footer again.
    pub(crate) reader: ArrowReaderMetadata,
    /// Whether the file's columns have exactly the storage names and types, in order (every
    /// file tracelake writes): lookups then read it directly (see
    /// [`LookupExec`](super::lookup_exec::LookupExec)).
    pub(crate) native: bool,
    /// Leaf (parquet) and root (Arrow) index of `trace_id`.
    pub(crate) trace_id_column: Option<usize>,
    pub(crate) trace_id_root: usize,
    pub(crate) row_groups: Vec<IndexedRowGroup>,
}

impl IndexedFile {
    /// The file's parquet footer, with the page index.
    pub(crate) fn metadata(&self) -> &Arc<ParquetMetaData> {
        self.reader.metadata()
    }

    /// The file's smallest and largest trace id, if every row group has statistics.
    pub(crate) fn trace_id_range(&self) -> Option<(String, String)> {
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

fn statistics_range(stats: Option<&Statistics>) -> Option<(String, String)> {
    match stats? {
        Statistics::ByteArray(s) => Some((
            String::from_utf8(s.min_bytes_opt()?.to_vec()).ok()?,
            String::from_utf8(s.max_bytes_opt()?.to_vec()).ok()?,
        )),
        _ => None,
    }
}

/// Reads the footer (with the page index) and the `trace_id` bloom filters of a data file.
async fn read_footer(
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
) -> Result<IndexedFile> {
    let mut reader = StoreReader::new(store, location.clone(), size);
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let metadata = ArrowReaderMetadata::load_async(&mut reader, options)
        .await
        .map_err(|e| TraceLakeError::data_file(&location, e))?;
    let parquet = metadata.metadata().clone();
    let expected = file_schema();
    let native = metadata.schema().fields().len() == expected.fields().len()
        && metadata
            .schema()
            .fields()
            .iter()
            .zip(expected.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    let trace_id_root = metadata
        .schema()
        .index_of(col::TRACE_ID)
        .unwrap_or_default();
    let reader_metadata = metadata.clone();
    let column = parquet
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|d| d.path().string() == col::TRACE_ID);
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata);
    let mut row_groups = Vec::with_capacity(parquet.num_row_groups());
    for rg in 0..parquet.num_row_groups() {
        let (trace_ids, bloom) = match column {
            Some(c) => (
                statistics_range(parquet.row_group(rg).column(c).statistics()),
                builder
                    .get_row_group_column_bloom_filter(rg, c)
                    .await
                    .map_err(|e| TraceLakeError::data_file(&location, e))?,
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

/// One data file of the table: what the log says about it, and its footer once read.
#[derive(Debug)]
pub(crate) struct FileSlot {
    location: Path,
    size: u64,
    /// Smallest and largest trace id per the log statistics (`None` when not recorded).
    log_trace_ids: Option<(String, String)>,
    /// Earliest and latest span start (unix ns) per the log statistics.
    log_starts: Option<(i64, i64)>,
    footer: ArcSwapOption<IndexedFile>,
    /// One footer read at a time per file.
    reading: tokio::sync::Mutex<()>,
}

impl FileSlot {
    fn new(location: Path, view: &LogicalFileView) -> Self {
        Self {
            location,
            size: view.size().max(0) as u64,
            log_trace_ids: log_trace_id_range(view),
            log_starts: log_start_range(view),
            footer: ArcSwapOption::empty(),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether the file may hold one of `ids`, per the log statistics.
    fn may_contain_any(&self, ids: &[String]) -> bool {
        match &self.log_trace_ids {
            Some((min, max)) => ids
                .iter()
                .any(|id| id.as_str() >= min.as_str() && id.as_str() <= max.as_str()),
            None => true,
        }
    }

    /// Whether the file may hold spans starting within `bounds` (inclusive), per the log
    /// statistics.
    fn may_start_within(&self, bounds: &StartBounds) -> bool {
        match self.log_starts {
            Some((min, max)) => {
                bounds.min.is_none_or(|lo| max >= lo) && bounds.max.is_none_or(|hi| min <= hi)
            }
            None => true,
        }
    }

    /// The footer entry, reading it if it was not read yet (or failed before).
    async fn footer(&self, store: &Arc<dyn ObjectStore>) -> Result<Arc<IndexedFile>> {
        if let Some(footer) = self.footer.load_full() {
            return Ok(footer);
        }
        let _reading = self.reading.lock().await;
        if let Some(footer) = self.footer.load_full() {
            return Ok(footer);
        }
        let footer = Arc::new(read_footer(store.clone(), self.location.clone(), self.size).await?);
        self.footer.store(Some(footer.clone()));
        Ok(footer)
    }
}

/// The field `name` of a statistics struct (`minValues` or `maxValues`).
fn stat(scalar: Option<Scalar>, name: &str) -> Option<Scalar> {
    let Scalar::Struct(data) = scalar? else {
        return None;
    };
    let i = data.fields().iter().position(|f| f.name() == name)?;
    Some(data.values()[i].clone())
}

/// The earliest and latest span start of a file per its Delta statistics.
fn log_start_range(view: &LogicalFileView) -> Option<(i64, i64)> {
    let long = |s: Option<Scalar>| match s? {
        Scalar::Long(v) => Some(v),
        _ => None,
    };
    Some((
        long(stat(view.min_values(), col::START_TIME_UNIX_NANO))?,
        long(stat(view.max_values(), col::START_TIME_UNIX_NANO))?,
    ))
}

/// The smallest and largest trace id of a file per its Delta statistics, when both are
/// complete trace ids (a truncated string statistic could not rule anything out).
fn log_trace_id_range(view: &LogicalFileView) -> Option<(String, String)> {
    fn trace_id(scalar: Option<Scalar>) -> Option<String> {
        let Scalar::Struct(data) = scalar? else {
            return None;
        };
        let i = data
            .fields()
            .iter()
            .position(|f| f.name() == col::TRACE_ID)?;
        match &data.values()[i] {
            Scalar::String(s) if crate::table::ingest::is_hex_id(s, 32) => {
                Some(s.to_ascii_lowercase())
            }
            _ => None,
        }
    }
    Some((trace_id(view.min_values())?, trace_id(view.max_values())?))
}

/// The row groups to read for a scan, with the footer entries of their files.
#[derive(Debug, Default, Clone)]
pub(crate) struct ScanPlan {
    /// (file, row group indices) in table order.
    pub(crate) files: Vec<(Arc<IndexedFile>, Vec<usize>)>,
}

/// The index of one table version. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct TraceIdIndex {
    /// In table order (sorted by path).
    files: Vec<Arc<FileSlot>>,
    by_path: HashMap<Path, usize>,
}

/// The prefix of a table's files in its root store.
pub(crate) fn table_prefix(url: &url::Url) -> Path {
    Path::from_url_path(url.path()).unwrap_or_default()
}

impl TraceIdIndex {
    /// The index of `snapshot`, reusing the slots of `previous` for the files it had, and
    /// reading the footers of the other files. A footer that cannot be read is logged and left
    /// for the queries that need it. `None` when the version has files with deletion vectors
    /// (scans then use deltalake's own).
    pub(crate) async fn build(
        store: &Arc<dyn ObjectStore>,
        prefix: &Path,
        snapshot: &EagerSnapshot,
        previous: Option<&TraceIdIndex>,
    ) -> Result<Option<Self>> {
        let log_data = snapshot.try_log_data()?;
        let mut files: Vec<Arc<FileSlot>> = Vec::with_capacity(log_data.num_files());
        let mut new = Vec::new();
        for view in log_data.iter() {
            if view.deletion_vector_descriptor().is_some() {
                return Ok(None);
            }
            let relative = view.object_store_path();
            let location = Path::from_iter(prefix.parts().chain(relative.parts()));
            match previous.and_then(|p| p.slot(&location)) {
                Some(slot) => files.push(slot.clone()),
                None => {
                    let slot = Arc::new(FileSlot::new(location, &view));
                    new.push(slot.clone());
                    files.push(slot);
                }
            }
        }
        files.sort_by(|a, b| a.location.cmp(&b.location));
        let by_path = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.location.clone(), i))
            .collect();
        futures::stream::iter(new)
            .map(|slot| {
                let store = store.clone();
                async move {
                    if let Err(e) = slot.footer(&store).await {
                        tracing::warn!(error = %e, "a data file's footer could not be read; queries that need it will try again");
                    }
                }
            })
            .buffer_unordered(CONCURRENT_FOOTER_READS)
            .collect::<()>()
            .await;
        Ok(Some(Self { files, by_path }))
    }

    fn slot(&self, location: &Path) -> Option<&Arc<FileSlot>> {
        self.by_path.get(location).map(|&i| &self.files[i])
    }

    /// The footer entries of `slots`, reading those not read yet; fails naming the first file
    /// that cannot be read.
    async fn footers(
        store: &Arc<dyn ObjectStore>,
        slots: Vec<Arc<FileSlot>>,
    ) -> Result<Vec<Arc<IndexedFile>>> {
        futures::stream::iter(slots)
            .map(|slot| {
                let store = store.clone();
                async move { slot.footer(&store).await }
            })
            .buffered(CONCURRENT_FOOTER_READS)
            .try_collect()
            .await
    }

    /// The row groups that may hold any of `ids` with a start within `bounds`: files the log
    /// statistics cannot rule out, then row groups by their trace-id range and bloom filter.
    pub(crate) async fn plan(
        &self,
        store: &Arc<dyn ObjectStore>,
        ids: &[String],
        bounds: &StartBounds,
    ) -> Result<ScanPlan> {
        let candidates: Vec<Arc<FileSlot>> = self
            .files
            .iter()
            .filter(|slot| slot.may_contain_any(ids) && slot.may_start_within(bounds))
            .cloned()
            .collect();
        let footers = Self::footers(store, candidates).await?;
        let mut plan = ScanPlan::default();
        for file in footers {
            let wanted: Vec<usize> = file
                .row_groups
                .iter()
                .enumerate()
                .filter(|(_, rg)| ids.iter().any(|id| rg.may_contain(id)))
                .map(|(i, _)| i)
                .collect();
            if !wanted.is_empty() {
                plan.files.push((file, wanted));
            }
        }
        Ok(plan)
    }

    /// Every row group of the files that may hold spans starting within `bounds` (for scans
    /// without a trace-id restriction).
    pub(crate) async fn plan_all(
        &self,
        store: &Arc<dyn ObjectStore>,
        bounds: &StartBounds,
    ) -> Result<ScanPlan> {
        let candidates: Vec<Arc<FileSlot>> = self
            .files
            .iter()
            .filter(|slot| slot.may_start_within(bounds))
            .cloned()
            .collect();
        let footers = Self::footers(store, candidates).await?;
        let mut plan = ScanPlan::default();
        for file in footers {
            let n = file.row_groups.len();
            plan.files.push((file, (0..n).collect()));
        }
        Ok(plan)
    }

    /// The smallest and largest trace id of a data file: from its footer if read, else from
    /// the log statistics.
    pub(crate) fn trace_id_range(&self, location: &Path) -> Option<(String, String)> {
        let slot = self.slot(location)?;
        match slot.footer.load_full() {
            Some(footer) => footer.trace_id_range(),
            None => slot.log_trace_ids.clone(),
        }
    }
}
