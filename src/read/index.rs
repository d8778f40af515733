//! The trace-id index of one table version: a slot per data file, with what the Delta log says
//! about the file (size, partition, row count, trace-id and start-time ranges from its
//! statistics) and, once read, what its parquet footer says (row-group trace-id ranges, the
//! bloom filter of `trace_id`, the footer with its page index, for reading the file without
//! decoding the footer again).
//!
//! Slots outlive versions: the table's state is a persistent map of slots, so a new version
//! shares the slots of the files it keeps, and installing it reads nothing about them. A file
//! whose footer cannot be read does not fail the version: its slot stays empty, and only a
//! query that needs the file (one the log statistics cannot rule out) tries to read it again,
//! failing with an error that names the file if it still cannot. The query path never lists;
//! it reads only footers, bloom filters and pages of files the version names.

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::statistics::Statistics;

use super::decoded::DecodedCache;
use super::file_schema;
use super::filters::StartBounds;
use super::reader::TailReader;
use crate::error::{Result, TraceLakeError};
use crate::schema::{AttributeLayout, col};

/// Footers read at the same time (when a version is installed, or by a query that needs
/// several files not read yet).
const CONCURRENT_FOOTER_READS: usize = 8;

/// Retries of a footer read that failed with a transient error.
const FOOTER_RETRIES: u32 = 2;

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
    /// How the file holds attribute maps (from its schema).
    pub(crate) layout: AttributeLayout,
    /// The dedicated attribute columns the file holds (after the table's columns).
    pub(crate) dedicated: Arc<[crate::dedicated::DedicatedColumn]>,
    /// Heap bytes of the footer's schema descriptor when it is shared with other files (not
    /// counted in [`IndexedFile::memory_size`]).
    shared_schema_bytes: u64,
    /// Leaf (parquet) and root (Arrow) index of `trace_id`.
    pub(crate) trace_id_column: Option<usize>,
    pub(crate) trace_id_root: usize,
    pub(crate) row_groups: Vec<IndexedRowGroup>,
    /// Bytes of the bloom filters held.
    bloom_bytes: u64,
}

impl IndexedFile {
    /// The memory this entry holds: the decoded footer with its page index, and the bloom
    /// filters.
    pub(crate) fn memory_size(&self) -> u64 {
        (self.metadata().memory_size() as u64)
            .saturating_sub(self.shared_schema_bytes)
            .saturating_add(self.bloom_bytes)
            .saturating_add((self.row_groups.len() as u64).saturating_mul(80))
    }

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

/// Parquet schema descriptors shared by the footers of files of the same schema, with the
/// heap bytes each holds (counted once, not in each footer's share of the budget): at most
/// [`MAX_SHARED_SCHEMAS`] (tables have one or two schemas; files of other schemas keep their
/// own).
static SHARED_SCHEMAS: std::sync::LazyLock<
    std::sync::Mutex<Vec<(parquet::schema::types::SchemaDescPtr, u64)>>,
> = std::sync::LazyLock::new(Default::default);

const MAX_SHARED_SCHEMAS: usize = 64;

/// The shared descriptor equal to `descr` (registering `descr` when there is none and room),
/// with its heap bytes.
fn shared_schema(
    descr: parquet::schema::types::SchemaDescPtr,
) -> Option<(parquet::schema::types::SchemaDescPtr, u64)> {
    let mut shared = SHARED_SCHEMAS.lock().ok()?;
    if let Some(found) = shared
        .iter()
        .find(|(s, _)| s.root_schema() == descr.root_schema())
    {
        return Some(found.clone());
    }
    if shared.len() >= MAX_SHARED_SCHEMAS {
        return None;
    }
    let only_schema = ParquetMetaData::new(
        parquet::file::metadata::FileMetaData::new(0, 0, None, None, descr.clone(), None),
        Vec::new(),
    );
    let heap = only_schema
        .memory_size()
        .saturating_sub(std::mem::size_of::<ParquetMetaData>()) as u64;
    shared.push((descr.clone(), heap));
    Some((descr, heap))
}

/// `loaded`, trimmed of what nothing reads once it is loaded: the footer's key-value metadata
/// (the Arrow schema as base64, the dedicated columns' record) when the Arrow schema parquet
/// derives without it is the same, the column index of chunks of a single page (their chunk
/// statistics say the same) and the offset index's unencoded sizes. `Err(loaded)` when it
/// cannot be rebuilt with the same Arrow schema.
fn trimmed(
    loaded: ArrowReaderMetadata,
    options: &ArrowReaderOptions,
) -> std::result::Result<ArrowReaderMetadata, ArrowReaderMetadata> {
    use parquet::file::page_index::column_index::ColumnIndexMetaData;
    use parquet::file::page_index::offset_index::OffsetIndexMetaData;
    let metadata = loaded.metadata();
    let file = metadata.file_metadata();
    let derives = parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), None)
        .is_ok_and(|derived| derived.fields() == loaded.schema().fields());
    let key_value = if derives {
        None
    } else {
        file.key_value_metadata().cloned()
    };
    let trimmed_file = parquet::file::metadata::FileMetaData::new(
        file.version(),
        file.num_rows(),
        file.created_by().map(str::to_string),
        key_value,
        file.schema_descr_ptr(),
        file.column_orders().cloned(),
    );
    let offset_index = metadata.offset_index();
    let column_index = metadata.column_index().map(|groups| {
        groups
            .iter()
            .enumerate()
            .map(|(rg, columns)| {
                columns
                    .iter()
                    .enumerate()
                    .map(|(c, index)| {
                        let pages = offset_index
                            .and_then(|o| o.get(rg))
                            .and_then(|o| o.get(c))
                            .map(|o| o.page_locations().len());
                        if pages == Some(1) {
                            ColumnIndexMetaData::NONE
                        } else {
                            index.clone()
                        }
                    })
                    .collect()
            })
            .collect()
    });
    let offset_index = offset_index.map(|groups| {
        groups
            .iter()
            .map(|columns| {
                columns
                    .iter()
                    .map(|o| OffsetIndexMetaData {
                        page_locations: o.page_locations().clone(),
                        unencoded_byte_array_data_bytes: None,
                    })
                    .collect()
            })
            .collect()
    });
    let rebuilt = parquet::file::metadata::ParquetMetaDataBuilder::new(trimmed_file)
        .set_row_groups(metadata.row_groups().to_vec())
        .set_column_index(column_index)
        .set_offset_index(offset_index)
        .build();
    match ArrowReaderMetadata::try_new(Arc::new(rebuilt), options.clone()) {
        Ok(trimmed) if trimmed.schema().fields() == loaded.schema().fields() => Ok(trimmed),
        _ => Err(loaded),
    }
}

/// The offset where a file's footer metadata and page index begin.
fn metadata_start(metadata: &ParquetMetaData, size: u64) -> u64 {
    let mut start = size;
    for rg in metadata.row_groups() {
        for chunk in rg.columns() {
            for offset in [chunk.column_index_offset(), chunk.offset_index_offset()]
                .into_iter()
                .flatten()
            {
                start = start.min(offset.max(0) as u64);
            }
        }
    }
    // The footer follows the page index; without a page index its start is not known here:
    // the whole file must be in the tail.
    if start == size { 0 } else { start }
}

/// Reads the footer (with the page index) and the `trace_id` bloom filters of a data file.
async fn read_footer(
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
) -> Result<IndexedFile> {
    let mut reader = TailReader::new(store, location.clone(), size)
        .await
        .map_err(|e| TraceLakeError::data_file(&location, e))?;
    // Encoding statistics as a bitmask and no size statistics: nothing reads them, and they
    // were a few KB of a small file's footer.
    let options = ArrowReaderOptions::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .with_encoding_stats_as_mask(true)
        .with_size_stats_policy(parquet::file::metadata::ParquetStatisticsPolicy::SkipAll);
    let mut loaded = ArrowReaderMetadata::load_async(&mut reader, options.clone())
        .await
        .map_err(|e| TraceLakeError::data_file(&location, e))?;
    // Files of one schema share one parquet schema descriptor (a third of a small file's
    // decoded footer): the footer is decoded again with the shared one when it and its page
    // index lie in the tail already read (no request more).
    let mut schema_shared = false;
    if let Some((shared, _)) = shared_schema(loaded.metadata().file_metadata().schema_descr_ptr()) {
        if Arc::ptr_eq(
            &shared,
            &loaded.metadata().file_metadata().schema_descr_ptr(),
        ) {
            schema_shared = true;
        } else if reader.holds_from(metadata_start(loaded.metadata(), size)) {
            let again = ArrowReaderMetadata::load_async(
                &mut reader,
                options.clone().with_parquet_schema(shared.clone()),
            )
            .await
            .map_err(|e| TraceLakeError::data_file(&location, e))?;
            if again.schema() == loaded.schema() {
                loaded = again;
                schema_shared = true;
            }
        }
    }
    let layout = crate::schema::layout_of(loaded.schema()).unwrap_or(AttributeLayout::Lean);
    let base = file_schema(layout);
    // The dedicated attribute columns the file holds, after the table's columns.
    let dedicated = crate::dedicated::of_file(
        loaded.metadata().file_metadata().key_value_metadata(),
        loaded.schema(),
        base.fields().len(),
    );
    let expected = if dedicated.is_empty() {
        base
    } else {
        crate::dedicated::with_columns(&base, &dedicated)
    };
    // What is read by now, or never, is not held (see `trimmed`).
    let loaded = trimmed(loaded, &options).unwrap_or_else(|kept| kept);
    // Files other writers produce may record other Arrow types for the same parquet columns
    // (deltalake's optimize records strings as Utf8View): they are read with tracelake's
    // types when parquet can (the same parquet columns), so lookups read them directly too.
    let metadata = if loaded.schema().fields() == expected.fields() {
        loaded
    } else {
        ArrowReaderMetadata::try_new(
            loaded.metadata().clone(),
            options.with_schema(expected.clone()),
        )
        .unwrap_or(loaded)
    };
    let parquet = metadata.metadata().clone();
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
    // The bloom filters of every row group in one request (parquet's writer records their
    // lengths); a filter without a recorded length is read through parquet's own reader.
    let mut blooms: Vec<Option<Sbbf>> = vec![None; parquet.num_row_groups()];
    let mut bloom_bytes = 0u64;
    let mut unsized_blooms = Vec::new();
    if let Some(c) = column {
        let mut ranges = Vec::new();
        let mut owners = Vec::new();
        for rg in 0..parquet.num_row_groups() {
            let chunk = parquet.row_group(rg).column(c);
            match (chunk.bloom_filter_offset(), chunk.bloom_filter_length()) {
                (Some(offset), Some(length)) if offset >= 0 && length > 0 => {
                    ranges.push(offset as u64..offset as u64 + length as u64);
                    owners.push(rg);
                }
                (Some(_), _) => unsized_blooms.push(rg),
                (None, _) => {}
            }
        }
        if !ranges.is_empty() {
            let parts = reader
                .ranges(&ranges)
                .await
                .map_err(|e| TraceLakeError::data_file(&location, e))?;
            for (rg, bytes) in owners.into_iter().zip(parts) {
                bloom_bytes += bytes.len() as u64;
                blooms[rg] = Some(
                    Sbbf::from_bytes(&bytes)
                        .map_err(|e| TraceLakeError::data_file(&location, e))?,
                );
            }
        }
    }
    if let (Some(c), false) = (column, unsized_blooms.is_empty()) {
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata);
        for rg in unsized_blooms {
            // Not recorded: counted at the size tracelake's writer gives a row group's filter.
            bloom_bytes += 32 * 1024;
            blooms[rg] = builder
                .get_row_group_column_bloom_filter(rg, c)
                .await
                .map_err(|e| TraceLakeError::data_file(&location, e))?;
        }
    }
    let row_groups = blooms
        .into_iter()
        .enumerate()
        .map(|(rg, bloom)| IndexedRowGroup {
            trace_ids: column
                .and_then(|c| statistics_range(parquet.row_group(rg).column(c).statistics())),
            bloom,
        })
        .collect();
    Ok(IndexedFile {
        location,
        size,
        reader: reader_metadata,
        native: native && column.is_some(),
        layout,
        dedicated: dedicated.into(),
        shared_schema_bytes: if schema_shared {
            shared_schema(parquet.file_metadata().schema_descr_ptr()).map_or(0, |(_, heap)| heap)
        } else {
            0
        },
        trace_id_column: column,
        trace_id_root,
        row_groups,
        bloom_bytes,
    })
}

/// The part of a file's Delta statistics the index reads.
#[derive(serde::Deserialize)]
struct LogStats {
    #[serde(rename = "numRecords", default)]
    num_records: Option<serde_json::Value>,
    #[serde(rename = "minValues", default)]
    min_values: Option<LogBounds>,
    #[serde(rename = "maxValues", default)]
    max_values: Option<LogBounds>,
}

/// Bounds of the columns the index reads (`minValues` or `maxValues`).
#[derive(serde::Deserialize)]
struct LogBounds {
    #[serde(rename = "trace_id", default)]
    trace_id: Option<serde_json::Value>,
    #[serde(rename = "start_time_unix_nano", default)]
    start_time_unix_nano: Option<serde_json::Value>,
}

/// What the Delta log says about one data file.
#[derive(Debug, Clone)]
pub(crate) struct LogFile {
    /// The path as the log names it (relative to the table, percent-decoded).
    pub(crate) path: String,
    pub(crate) size: u64,
    /// The `span_date` partition value.
    pub(crate) span_date: Option<String>,
    pub(crate) num_records: Option<u64>,
    /// Smallest and largest trace id per the statistics (`None` when not recorded).
    pub(crate) trace_ids: Option<(String, String)>,
    /// Earliest and latest span start (unix ns) per the statistics.
    pub(crate) starts: Option<(i64, i64)>,
    /// Whether the file has a deletion vector (some of its rows are deleted).
    pub(crate) deletion_vector: bool,
    /// The filter of the file's trace ids its log entry carries (files tracelake writes with
    /// few ids; see [`crate::table::write::TRACE_ID_FILTER_TAG`]).
    pub(crate) trace_filter: Option<LogFilter>,
}

/// The trace-id filter of a file's log entry: a split-block bloom filter with parquet's
/// layout, hash (xxHash64, seed 0) and salt, so that [`parquet::bloom_filter::Sbbf`] writes
/// it. Checked with the id's hash computed once per lookup ([`id_hash`]) rather than once
/// per file: a lookup checks the filter of every file of the table.
#[derive(Debug, Clone)]
pub(crate) struct LogFilter(Arc<[[u32; 8]]>);

/// parquet's split-block bloom filter salt (the parquet-format specification).
const SBBF_SALT: [u32; 8] = [
    0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31,
];

/// Whether the id of `hash` may be in the split-block bloom filter of `blocks`.
fn check_blocks(blocks: &[[u32; 8]], hash: u64) -> bool {
    let index = ((hash >> 32).saturating_mul(blocks.len() as u64) >> 32) as usize;
    let Some(block) = blocks.get(index) else {
        return true;
    };
    let x = hash as u32;
    block
        .iter()
        .zip(SBBF_SALT)
        .all(|(word, salt)| word & (1u32 << (x.wrapping_mul(salt) >> 27)) != 0)
}

/// The hash a split-block bloom filter takes of a trace id.
pub(crate) fn id_hash(id: &str) -> u64 {
    twox_hash::XxHash64::oneshot(0, id.as_bytes())
}

impl LogFilter {
    /// The filter of a bitset (32-byte blocks of little-endian words); `None` if the bitset
    /// is empty or not whole blocks.
    pub(crate) fn from_bitset(bitset: &[u8]) -> Option<Self> {
        if bitset.is_empty() || !bitset.len().is_multiple_of(32) {
            return None;
        }
        let blocks = bitset
            .chunks_exact(32)
            .map(|block| {
                let mut words = [0u32; 8];
                for (word, bytes) in words.iter_mut().zip(block.chunks_exact(4)) {
                    *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                }
                words
            })
            .collect();
        Some(Self(blocks))
    }

    /// Whether the id of `hash` ([`id_hash`]) may be in the filter.
    #[cfg(test)]
    fn check_hash(&self, hash: u64) -> bool {
        check_blocks(&self.0, hash)
    }

    /// Bytes held.
    #[cfg(test)]
    fn memory_size(&self) -> usize {
        self.0.len() * 32
    }
}

impl LogFile {
    /// A file from its `add` action: path, size, partition value, statistics, deletion
    /// vector and the trace-id filter tag.
    pub(crate) fn of_add(add: &deltalake::kernel::Add) -> Self {
        use base64::Engine;
        let mut file = Self::new(
            add.path.clone(),
            add.size,
            add.partition_values.get(col::SPAN_DATE).cloned().flatten(),
            add.stats.as_deref(),
            add.deletion_vector.is_some(),
        );
        // A filter that does not decode is ignored (the footer decides instead).
        file.trace_filter = add
            .tags
            .as_ref()
            .and_then(|tags| {
                tags.get(crate::table::write::TRACE_ID_FILTER_TAG)?
                    .as_deref()
            })
            .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .and_then(|bitset| LogFilter::from_bitset(&bitset));
        file
    }

    /// A file from its log entry: path, size, partition value and the statistics JSON.
    pub(crate) fn new(
        path: String,
        size: i64,
        span_date: Option<String>,
        stats: Option<&str>,
        deletion_vector: bool,
    ) -> Self {
        // Only the fields the index uses are decoded (a table of thousands of files parses
        // as many statistics at open); values of another type count as absent.
        let parsed: Option<LogStats> = stats.and_then(|s| serde_json::from_str(s).ok());
        let (min, max) = match &parsed {
            Some(p) => (p.min_values.as_ref(), p.max_values.as_ref()),
            None => (None, None),
        };
        // A truncated string statistic could not rule anything out: only complete ids count.
        let id = |b: Option<&LogBounds>| match b.and_then(|b| b.trace_id.as_ref()) {
            Some(serde_json::Value::String(s)) if crate::schema::is_hex_id(s, 32) => {
                Some(s.to_ascii_lowercase())
            }
            _ => None,
        };
        let long = |b: Option<&LogBounds>| b?.start_time_unix_nano.as_ref()?.as_i64();
        let trace_ids = match (id(min), id(max)) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };
        let starts = match (long(min), long(max)) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };
        Self {
            path,
            size: size.max(0) as u64,
            span_date,
            num_records: parsed
                .as_ref()
                .and_then(|p| p.num_records.as_ref()?.as_u64()),
            trace_ids,
            starts,
            deletion_vector,
            trace_filter: None,
        }
    }
}

/// One data file of the table: what the log says about it, and its footer once read.
#[derive(Debug)]
pub(crate) struct FileSlot {
    /// Path in the root object store.
    pub(crate) location: Path,
    pub(crate) log: LogFile,
    footer: ArcSwapOption<IndexedFile>,
    /// One footer read at a time per file.
    reading: tokio::sync::Mutex<()>,
    /// The budget the footer is charged to, and how much it is charged now.
    budget: Arc<FooterBudget>,
    charged: AtomicU64,
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        self.budget.release(&self.charged);
    }
}

/// Where a table's file slots live: the prefix of its files in the root store and the
/// budget of the footers they hold, and the table's decoded cache of lookup rows.
#[derive(Debug, Clone)]
pub(crate) struct SlotHome {
    pub(crate) prefix: Path,
    pub(crate) budget: Arc<FooterBudget>,
    /// The decoded rows of recent lookups (`None` when off), shared by every version.
    pub(crate) decoded: Option<Arc<DecodedCache>>,
}

impl FileSlot {
    /// The slot of `log`, a file of the table under `home`.
    pub(crate) fn new(home: &SlotHome, log: LogFile) -> Self {
        let relative = Path::parse(&log.path).unwrap_or_else(|_| Path::from(log.path.as_str()));
        Self {
            location: Path::from_iter(home.prefix.parts().chain(relative.parts())),
            log,
            footer: ArcSwapOption::empty(),
            reading: tokio::sync::Mutex::new(()),
            budget: home.budget.clone(),
            charged: AtomicU64::new(0),
        }
    }

    /// Whether the file may hold one of `ids`, per the log statistics (the log's trace-id
    /// filter is checked by [`FilterTable`]).
    fn may_contain_any(&self, ids: &[String]) -> bool {
        match &self.log.trace_ids {
            Some((min, max)) => ids
                .iter()
                .any(|id| id.as_str() >= min.as_str() && id.as_str() <= max.as_str()),
            None => true,
        }
    }

    /// Whether the file may hold spans starting within `bounds` (inclusive), per the log
    /// statistics.
    fn may_start_within(&self, bounds: &StartBounds) -> bool {
        match self.log.starts {
            Some((min, max)) => {
                bounds.min.is_none_or(|lo| max >= lo) && bounds.max.is_none_or(|hi| min <= hi)
            }
            None => true,
        }
    }

    /// The footer entry, reading it if it was not read yet (or failed before).
    pub(crate) async fn footer(
        self: &Arc<Self>,
        store: &Arc<dyn ObjectStore>,
    ) -> Result<Arc<IndexedFile>> {
        if let Some(footer) = self.footer.load_full() {
            return Ok(footer);
        }
        let _reading = self.reading.lock().await;
        if let Some(footer) = self.footer.load_full() {
            return Ok(footer);
        }
        // A transient error (a network error, a throttled request) is tried again twice.
        let mut attempt = 0;
        let footer = loop {
            match read_footer(store.clone(), self.location.clone(), self.log.size).await {
                Ok(footer) => break Arc::new(footer),
                Err(e) if e.is_transient() && attempt < FOOTER_RETRIES => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "reading a footer failed; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.footer.store(Some(footer.clone()));
        self.budget.admit(self, footer.memory_size());
        Ok(footer)
    }

    /// The smallest and largest trace id of the file: from its footer if read, else from the
    /// log statistics.
    pub(crate) fn trace_id_range(&self) -> Option<(String, String)> {
        match self.footer.load_full() {
            Some(footer) => footer.trace_id_range(),
            None => self.log.trace_ids.clone(),
        }
    }
}

/// Bounds the memory held by the footers (with page indexes and bloom filters) that file
/// slots keep for lookups: when a new footer takes the total over the limit, the footers held
/// longest are dropped (first in, first out) and read again by the next query that needs
/// them. Queries running keep what they hold. Shared by every version of a table.
#[derive(Debug)]
pub(crate) struct FooterBudget {
    limit: u64,
    used: AtomicU64,
    held: std::sync::Mutex<std::collections::VecDeque<std::sync::Weak<FileSlot>>>,
}

impl FooterBudget {
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
            held: std::sync::Mutex::new(std::collections::VecDeque::new()),
        })
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges `slot`'s new footer of `bytes`, then drops the oldest footers while over the
    /// limit (never the one just read).
    fn admit(&self, slot: &Arc<FileSlot>, bytes: u64) {
        // A footer replaced without a release (read again after an error) is not charged twice.
        let previous = slot.charged.swap(bytes, Ordering::AcqRel);
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.used.fetch_sub(previous, Ordering::AcqRel);
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        // Weak references: a slot dropped with its file (and released by its drop) costs
        // nothing here.
        held.push_back(Arc::downgrade(slot));
        while self.used.load(Ordering::Acquire) > self.limit && held.len() > 1 {
            let Some(oldest) = held.pop_front() else {
                break;
            };
            if let Some(oldest) = oldest.upgrade()
                && !Arc::ptr_eq(&oldest, slot)
            {
                oldest.footer.store(None);
                self.release(&oldest.charged);
            }
        }
    }

    /// Gives back what a slot is charged.
    fn release(&self, charged: &AtomicU64) {
        let bytes = charged.swap(0, Ordering::AcqRel);
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The data files of a version, by location (table order).
pub(crate) type FileMap = imbl::OrdMap<Arc<str>, Arc<FileSlot>>;

/// The row groups to read for a scan, with the footer entries of their files.
#[derive(Debug, Default, Clone)]
pub(crate) struct ScanPlan {
    /// (file, row group indices) in table order.
    pub(crate) files: Vec<(Arc<IndexedFile>, Vec<usize>)>,
}

/// The index of one table version: its data files, by location. See the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct TraceIdIndex {
    files: FileMap,
    /// The files' log filters side by side, built by the version's first lookup.
    filters: std::sync::OnceLock<FilterTable>,
    /// The table's decoded cache of lookup rows (`None` when off).
    decoded: Option<Arc<DecodedCache>>,
}

/// The files of a version with their log filters in one array: a lookup checks every file's
/// filter, and reading the filters from here touches one block per file instead of the
/// file's slot and then its filter (two cache misses a file at 10,000 files).
#[derive(Debug, Clone, Default)]
struct FilterTable {
    slots: Vec<Arc<FileSlot>>,
    /// The filter of each slot, if its log entry has one.
    filters: Vec<Option<Arc<[[u32; 8]]>>>,
}

impl FilterTable {
    fn new(files: &FileMap) -> Self {
        let slots: Vec<Arc<FileSlot>> = files.values().cloned().collect();
        let filters = slots
            .iter()
            .map(|slot| slot.log.trace_filter.as_ref().map(|f| f.0.clone()))
            .collect();
        Self { slots, filters }
    }

    /// The slots whose filter may hold one of the ids of `hashes` (or that have none).
    fn candidates<'a>(&'a self, hashes: &'a [u64]) -> impl Iterator<Item = &'a Arc<FileSlot>> {
        self.filters
            .iter()
            .zip(&self.slots)
            .filter(|(filter, _)| {
                filter
                    .as_ref()
                    .is_none_or(|blocks| hashes.iter().any(|h| check_blocks(blocks, *h)))
            })
            .map(|(_, slot)| slot)
    }
}

/// The prefix of a table's files in its root store.
pub(crate) fn table_prefix(url: &url::Url) -> Path {
    Path::from_url_path(url.path()).unwrap_or_default()
}

impl TraceIdIndex {
    /// The index over `files`, with the table's decoded cache of lookup rows.
    pub(crate) fn new(files: FileMap, decoded: Option<Arc<DecodedCache>>) -> Self {
        Self {
            files,
            filters: std::sync::OnceLock::new(),
            decoded,
        }
    }

    /// The table's decoded cache of lookup rows (`None` when off).
    pub(crate) fn decoded(&self) -> Option<&Arc<DecodedCache>> {
        self.decoded.as_ref()
    }

    /// The footer entries of `slots`, reading those not read yet; fails naming the first file
    /// that cannot be read.
    async fn footers(
        store: &Arc<dyn ObjectStore>,
        slots: Vec<Arc<FileSlot>>,
    ) -> Result<Vec<Arc<IndexedFile>>> {
        // Footers held already are taken without a future each (a lookup over thousands of
        // files checks them all); only the others are read, 8 at a time.
        let mut held: Vec<Option<Arc<IndexedFile>>> =
            slots.iter().map(|slot| slot.footer.load_full()).collect();
        let missing: Vec<(usize, Arc<FileSlot>)> = slots
            .into_iter()
            .enumerate()
            .filter(|(i, _)| held[*i].is_none())
            .collect();
        if !missing.is_empty() {
            let read: Vec<(usize, Arc<IndexedFile>)> = futures::stream::iter(missing)
                .map(|(i, slot)| {
                    let store = store.clone();
                    async move { slot.footer(&store).await.map(|footer| (i, footer)) }
                })
                .buffered(CONCURRENT_FOOTER_READS)
                .try_collect()
                .await?;
            for (i, footer) in read {
                held[i] = Some(footer);
            }
        }
        Ok(held.into_iter().flatten().collect())
    }

    /// The row groups that may hold any of `ids` with a start within `bounds`: files the log
    /// statistics cannot rule out, then row groups by their trace-id range and bloom filter.
    pub(crate) async fn plan(
        &self,
        store: &Arc<dyn ObjectStore>,
        ids: &[String],
        bounds: &StartBounds,
    ) -> Result<ScanPlan> {
        let hashes: Vec<u64> = ids.iter().map(|id| id_hash(id)).collect();
        let candidates: Vec<Arc<FileSlot>> = self
            .filters
            .get_or_init(|| FilterTable::new(&self.files))
            .candidates(&hashes)
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
            .values()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_answer_as_parquets_filter_does() {
        // Built and serialized by parquet, as the writer does; read back and checked with a
        // hash computed once: the same answers as parquet's own check, for present and
        // absent ids, at several sizes.
        for n in [1usize, 20, 700, 4096] {
            let ids: Vec<String> = (0..n).map(|i| format!("{:032x}", i * 7919 + 1)).collect();
            let mut sbbf = Sbbf::new_with_ndv_fpp(n as u64, 0.001).unwrap();
            for id in &ids {
                sbbf.insert(id.as_str());
            }
            let mut bitset = Vec::new();
            sbbf.write_bitset(&mut bitset).unwrap();
            let filter = LogFilter::from_bitset(&bitset).unwrap();
            assert_eq!(filter.memory_size(), bitset.len());
            for id in &ids {
                assert!(filter.check_hash(id_hash(id)), "{id} missing at n = {n}");
            }
            let mut false_positives = 0;
            for i in 0..20_000u64 {
                let absent = format!("{:032x}", u64::MAX - i);
                let ours = filter.check_hash(id_hash(&absent));
                assert_eq!(ours, sbbf.check(absent.as_str()), "{absent} at n = {n}");
                false_positives += usize::from(ours);
            }
            assert!(false_positives < 100, "{false_positives} at n = {n}");
        }
        assert!(LogFilter::from_bitset(&[]).is_none());
        assert!(LogFilter::from_bitset(&[0u8; 33]).is_none());
    }
}
