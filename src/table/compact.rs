//! tracelake's own compaction: a streaming k-way merge of sorted data files in bounded
//! memory.
//!
//! Every data file tracelake writes is sorted by (`span_date`, `trace_id`,
//! `start_time_unix_nano`), and a file holds one day. Compacting a day is then a merge of its
//! files, read a batch at a time, into new files of the target size that are cut between two
//! traces, so that their trace-id ranges are disjoint and a lookup by id reads one file. The
//! memory a merge holds grows with the number of files it reads at once (one row group and a
//! few batches of each), never with the size of the day: when a day has more files than the
//! memory budget lets one merge open, groups of them are first merged into sorted runs
//! (files outside the table, deleted once the day is written), and the runs are merged.
//!
//! A file whose rows turn out not to be in order (one written by another engine) is sorted
//! into a run first, by DataFusion's external sort under the same budget (spilling to disk
//! through its memory pool), and the merge starts again.
//!
//! Which files are rewritten ([`plan_partition`]): the groups of files whose trace-id ranges
//! overlap, and runs of small files next to each other in id order. A day whose files are
//! already disjoint and large is left alone, so a second optimize with nothing new rewrites
//! nothing and commits nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, new_null_array};
use arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{SendableRecordBatchStream, execute_stream};
use datafusion::prelude::SessionConfig;
use deltalake::kernel::{Action, Remove};
use deltalake::logstore::LogStoreRef;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

use super::state::WriteSettings;
use crate::error::{Result, TraceLakeError};
use crate::read::reader::StoreReader;
use crate::schema::{col, storage_schema};

/// The memory a compaction holds when none is set: 256 MiB.
pub const DEFAULT_COMPACTION_MEMORY: u64 = 256 << 20;

/// The smallest compaction memory budget accepted (16 MiB).
pub const MIN_COMPACTION_MEMORY: u64 = 16 << 20;

/// Files smaller than this share of the target file size are "small": two or more of them
/// next to each other in trace-id order are merged even when their ranges do not overlap.
const SMALL_FILE_DIVISOR: u64 = 4;

/// Rows a merge input decodes at a time (a page of the files tracelake writes).
const INPUT_BATCH_ROWS: usize = 1024;

/// The most files one merge reads at once, whatever the budget.
const MAX_FAN_IN: usize = 512;

/// Bytes a merge input holds besides its row group and batches: the decoded footer and the
/// reader's state.
const INPUT_OVERHEAD_BYTES: u64 = 512 << 10;

/// A data file of the table as compaction sees it.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    /// The path as the log names it (relative to the table).
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) rows: u64,
    /// Smallest and largest trace id; `None` when the log has no statistics.
    pub(crate) ids: Option<(String, String)>,
    /// A run this compaction wrote (not in the table; deleted once the day is written).
    pub(crate) run: bool,
}

/// The groups of a day's files worth rewriting (each group becomes new files covering the
/// same id range): overlapping files, and runs of adjacent small files.
pub(crate) fn plan_partition(files: &[Input], target_file_size: u64) -> Vec<Vec<Input>> {
    if files.len() < 2 {
        return Vec::new();
    }
    // A file without statistics could hold any id: the whole day is one group.
    if files.iter().any(|f| f.ids.is_none()) {
        return vec![files.to_vec()];
    }
    let mut sorted: Vec<&Input> = files.iter().collect();
    sorted.sort_by(|a, b| a.ids.cmp(&b.ids));
    // Connected groups of overlapping ranges, in id order.
    let mut components: Vec<Vec<Input>> = Vec::new();
    let mut reach = String::new();
    for file in sorted {
        let (min, max) = file.ids.clone().unwrap_or_default();
        match components.last_mut() {
            Some(last) if min <= reach => {
                last.push(file.clone());
                if max > reach {
                    reach = max;
                }
            }
            _ => {
                components.push(vec![file.clone()]);
                reach = max;
            }
        }
    }
    let small = target_file_size / SMALL_FILE_DIVISOR;
    let mut groups: Vec<Vec<Input>> = Vec::new();
    let mut smalls: Vec<Input> = Vec::new();
    let mut small_bytes = 0u64;
    let flush = |smalls: &mut Vec<Input>, groups: &mut Vec<Vec<Input>>| {
        if smalls.len() >= 2 {
            groups.push(std::mem::take(smalls));
        } else {
            smalls.clear();
        }
    };
    for component in components {
        if component.len() >= 2 {
            flush(&mut smalls, &mut groups);
            small_bytes = 0;
            groups.push(component);
            continue;
        }
        let file = &component[0];
        if file.size < small && small_bytes + file.size <= target_file_size {
            small_bytes += file.size;
            smalls.push(file.clone());
        } else {
            flush(&mut smalls, &mut groups);
            small_bytes = 0;
            if file.size < small {
                small_bytes = file.size;
                smalls.push(file.clone());
            }
        }
    }
    flush(&mut smalls, &mut groups);
    groups
}

/// How a compaction reads and writes: the table's store and write settings, the day it
/// compacts, and its memory.
#[derive(Clone)]
pub(crate) struct Compactor {
    pub(crate) log_store: LogStoreRef,
    pub(crate) settings: WriteSettings,
    pub(crate) span_date: String,
    pub(crate) memory: u64,
    pub(crate) target_file_size: u64,
    /// Merge passes run (runs included), for the outcome.
    pub(crate) passes: Arc<AtomicUsize>,
    /// The largest merge reservation seen, bytes.
    pub(crate) peak_reserved: Arc<AtomicUsize>,
}

/// What merging one group wrote.
pub(crate) struct Merged {
    /// The `add` actions of the new files (with `dataChange = false`).
    pub(crate) adds: Vec<Action>,
    /// Runs written on the way (to delete once the commit is decided).
    pub(crate) runs: Vec<String>,
}

impl Compactor {
    fn store(&self) -> Arc<dyn ObjectStore> {
        self.log_store.object_store(None)
    }

    /// Merges `group` into files of the target size with disjoint trace-id ranges. On an
    /// error, every file it wrote (runs and outputs) is deleted.
    pub(crate) async fn merge_group(&self, group: Vec<Input>) -> Result<Merged> {
        let mut runs: Vec<String> = Vec::new();
        let result = self.merge_group_inner(group, &mut runs).await;
        match result {
            Ok(adds) => Ok(Merged { adds, runs }),
            Err(e) => {
                self.delete_paths(&runs).await;
                Err(e)
            }
        }
    }

    async fn merge_group_inner(
        &self,
        mut group: Vec<Input>,
        runs: &mut Vec<String>,
    ) -> Result<Vec<Action>> {
        let per_input = self.per_input_bytes(&group).await?;
        // About half the budget goes to the merge's inputs; the rest to its output batches,
        // the writer's row group and uploads.
        let fan_in = ((self.memory / 2) / per_input.max(1)).clamp(2, MAX_FAN_IN as u64) as usize;
        loop {
            if group.len() > fan_in {
                // Merge groups of `fan_in` into sorted runs, then the runs.
                let mut next = Vec::new();
                let mut chunks = group.into_iter().peekable();
                while chunks.peek().is_some() {
                    let chunk: Vec<Input> = chunks.by_ref().take(fan_in).collect();
                    if chunk.len() == 1 {
                        next.extend(chunk);
                        continue;
                    }
                    next.extend(self.merge_to_run(chunk, runs).await?);
                }
                group = next;
                continue;
            }
            match self.merge_to_outputs(&group).await? {
                Ok(adds) => return Ok(adds),
                Err(unsorted) => {
                    // One input was out of order: sort it into a run and merge again.
                    let input = group.remove(unsorted);
                    group.extend(self.sort_to_run(&input, runs).await?);
                }
            }
        }
    }

    /// What one merge input holds: its largest row group (read whole) and a few decoded
    /// batches, estimated from the log and one footer.
    async fn per_input_bytes(&self, group: &[Input]) -> Result<u64> {
        let mut row_group = 0u64;
        let mut compressed_per_row = 1u64;
        for input in group {
            let rows = input.rows.max(1);
            let groups = rows.div_ceil(super::ROW_GROUP_ROWS as u64).max(1);
            row_group = row_group.max(input.size.div_ceil(groups));
            compressed_per_row = compressed_per_row.max(input.size / rows);
        }
        // Decoded rows are larger than stored ones by the compression and the encodings:
        // measured from the first input's footer (uncompressed size), times two for Arrow's
        // offsets and buffers.
        let decoded_per_row = match group.first() {
            Some(first) => {
                let metadata = self.footer(first).await?;
                let groups = metadata.row_groups().iter();
                let (rows, bytes) = groups.fold((0u64, 0u64), |(rows, bytes), g| {
                    (
                        rows.saturating_add(g.num_rows().max(0) as u64),
                        bytes.saturating_add(g.total_byte_size().max(0) as u64),
                    )
                });
                (bytes / rows.max(1))
                    .max(compressed_per_row)
                    .saturating_mul(2)
            }
            None => compressed_per_row.saturating_mul(8),
        };
        // (Saturating: a corrupt footer's sizes must not wrap into a small estimate.)
        Ok(row_group
            .saturating_add((3 * INPUT_BATCH_ROWS as u64).saturating_mul(decoded_per_row))
            .saturating_add(INPUT_OVERHEAD_BYTES))
    }

    async fn footer(&self, input: &Input) -> Result<Arc<parquet::file::metadata::ParquetMetaData>> {
        use parquet::arrow::async_reader::AsyncFileReader;
        let mut reader = StoreReader::new(self.store(), location(&input.path), input.size);
        Ok(reader.get_metadata(None).await?)
    }

    /// Merges `group` into one sorted run (a file outside the table).
    async fn merge_to_run(
        &self,
        group: Vec<Input>,
        runs: &mut Vec<String>,
    ) -> Result<Option<Input>> {
        let (stream, unsorted) = self.merged_stream(&group).await?;
        let run = self.write_run(stream, runs).await;
        if let Some(index) = unsorted.iter().position(|f| f.load(Ordering::Relaxed)) {
            // Written out of order: sort the offending input, then merge the group again.
            if let Ok(Some(run)) = &run {
                self.delete_paths(std::slice::from_ref(&run.path)).await;
                runs.retain(|p| p != &run.path);
            }
            let mut group = group;
            let input = group.remove(index);
            group.extend(self.sort_to_run(&input, runs).await?);
            return Box::pin(self.merge_to_run(group, runs)).await;
        }
        run
    }

    /// Sorts one input into a run with DataFusion's external sort, spilling under the
    /// budget.
    async fn sort_to_run(&self, input: &Input, runs: &mut Vec<String>) -> Result<Option<Input>> {
        let schema = storage_schema();
        let source = Arc::new(FileStream {
            compactor: self.clone(),
            input: input.clone(),
            schema: schema.clone(),
        });
        let scan =
            StreamingTableExec::try_new(schema.clone(), vec![source], None, vec![], false, None)?;
        let sort = Arc::new(SortExec::new(sort_order(&schema)?, Arc::new(scan)));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(self.memory as usize)))
            .build_arc()?;
        let context = TaskContext::default()
            .with_session_config(SessionConfig::new().with_batch_size(INPUT_BATCH_ROWS))
            .with_runtime(runtime);
        let sorted = execute_stream(sort, Arc::new(context))?;
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.write_run(sorted, runs).await
    }

    /// Writes a sorted stream as one file outside the table's log (a run); `None` when the
    /// stream has no rows.
    async fn write_run(
        &self,
        stream: SendableRecordBatchStream,
        runs: &mut Vec<String>,
    ) -> Result<Option<Input>> {
        let mut settings = self.settings.clone();
        // One file, whatever its size.
        settings.target_file_size = std::num::NonZeroU64::MAX;
        settings.dedicated = crate::dedicated::DedicatedColumns::none();
        let mut stream = stream;
        let (send, writer) = spawn_writer(self.log_store.clone(), settings);
        let mut failed = None;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(TraceLakeError::from);
            let stop = batch.is_err();
            if let Err(e) = batch {
                failed = Some(e);
            } else if send.send(batch).await.is_err() {
                break;
            }
            if stop {
                break;
            }
        }
        drop(send);
        let adds = joined(writer.await)?;
        let mut run = None;
        for action in adds {
            if let Action::Add(add) = action {
                runs.push(add.path.clone());
                run = Some(Input {
                    path: add.path.clone(),
                    size: add.size.max(0) as u64,
                    rows: crate::read::index::LogFile::of_add(&add)
                        .num_records
                        .unwrap_or(0),
                    ids: None,
                    run: true,
                });
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(run),
        }
    }

    /// The inputs merged into one sorted stream, and a flag per input set when its rows were
    /// found out of order.
    async fn merged_stream(
        &self,
        group: &[Input],
    ) -> Result<(SendableRecordBatchStream, Vec<Arc<AtomicBool>>)> {
        let schema = storage_schema();
        let mut streams = Vec::with_capacity(group.len());
        let mut flags = Vec::with_capacity(group.len());
        for input in group {
            let flag = Arc::new(AtomicBool::new(false));
            let stream = self.input_stream(input).await?;
            streams.push(checked_order(stream, flag.clone(), schema.clone()));
            flags.push(flag);
        }
        let ordering = sort_order(&schema)?;
        let pool: Arc<dyn MemoryPool> = Arc::new(PeakPool::new(
            self.memory as usize,
            self.peak_reserved.clone(),
        ));
        let reservation: MemoryReservation =
            MemoryConsumer::new("tracelake compaction").register(&pool);
        let merged = StreamingMergeBuilder::new()
            .with_streams(streams)
            .with_schema(schema)
            .with_expressions(&ordering)
            .with_metrics(BaselineMetrics::new(&ExecutionPlanMetricsSet::new(), 0))
            .with_batch_size(INPUT_BATCH_ROWS)
            .with_reservation(reservation)
            .build()?;
        self.passes.fetch_add(1, Ordering::Relaxed);
        Ok((merged, flags))
    }

    /// Merges `group` into the day's new files, cut between traces once a file reaches the
    /// target size. `Err(index)` when input `index` turned out not to be sorted (what was
    /// written is deleted).
    async fn merge_to_outputs(
        &self,
        group: &[Input],
    ) -> Result<std::result::Result<Vec<Action>, usize>> {
        let bytes: u64 = group.iter().map(|f| f.size).sum();
        let rows: u64 = group.iter().map(|f| f.rows).sum();
        let target_rows = if bytes == 0 {
            u64::MAX
        } else {
            ((self.target_file_size as u128 * rows as u128) / bytes as u128).max(1) as u64
        };
        let (mut stream, flags) = self.merged_stream(group).await?;
        let mut adds: Vec<Action> = Vec::new();
        let mut file: Option<OutputFile> = None;
        let mut last_id: Option<String> = None;
        let result: Result<()> = async {
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let ids = batch
                    .column_by_name(col::TRACE_ID)
                    .and_then(|c| c.as_string_opt::<i32>())
                    .ok_or_else(|| TraceLakeError::SchemaMismatch("missing trace_id".into()))?
                    .clone();
                let mut start = 0usize;
                while start < batch.num_rows() {
                    let current = file.get_or_insert_with(|| self.output_file());
                    let room = target_rows.saturating_sub(current.rows) as usize;
                    let mut end = batch.num_rows();
                    if room < batch.num_rows() - start {
                        // Full: cut at the first new trace after the target.
                        let from = start + room;
                        let previous = if from == 0 {
                            last_id.clone()
                        } else {
                            Some(ids.value(from - 1).to_string())
                        };
                        end = (from..batch.num_rows())
                            .find(|&i| previous.as_deref().is_some_and(|p| p != ids.value(i)))
                            .unwrap_or(batch.num_rows());
                    }
                    if end > start {
                        current.rows += (end - start) as u64;
                        current.send(batch.slice(start, end - start)).await?;
                    }
                    if end < batch.num_rows()
                        && let Some(full) = file.take()
                    {
                        adds.extend(full.close().await?);
                    }
                    start = end;
                }
                if batch.num_rows() > 0 {
                    last_id = Some(ids.value(batch.num_rows() - 1).to_string());
                }
            }
            if let Some(last) = file.take() {
                adds.extend(last.close().await?);
            }
            Ok(())
        }
        .await;
        let unsorted = flags.iter().position(|f| f.load(Ordering::Relaxed));
        if result.is_err() || unsorted.is_some() {
            if let Some(open) = file.take() {
                adds.extend(open.close().await.unwrap_or_default());
            }
            let paths: Vec<String> = adds
                .iter()
                .filter_map(|a| match a {
                    Action::Add(add) => Some(add.path.clone()),
                    _ => None,
                })
                .collect();
            self.delete_paths(&paths).await;
        }
        if let Some(index) = unsorted {
            return Ok(Err(index));
        }
        result?;
        for action in &mut adds {
            if let Action::Add(add) = action {
                add.data_change = false;
            }
        }
        Ok(Ok(adds))
    }

    fn output_file(&self) -> OutputFile {
        let mut settings = self.settings.clone();
        // The cut is made here, between traces; the writer's own roll (mid-trace) only past
        // four times the target, when the size estimate was far off.
        settings.target_file_size =
            std::num::NonZeroU64::new(self.target_file_size.saturating_mul(4))
                .unwrap_or(std::num::NonZeroU64::MAX);
        let (send, writer) = spawn_writer(self.log_store.clone(), settings);
        OutputFile {
            send: Some(send),
            writer,
            rows: 0,
        }
    }

    /// A stream of `input`'s rows in the storage schema (lean attribute maps, `span_date`
    /// from the partition, no dedicated columns).
    async fn input_stream(&self, input: &Input) -> Result<SendableRecordBatchStream> {
        open_input(self.store(), input, &self.span_date).await
    }

    /// Deletes files this compaction wrote (best effort: a file left behind is an orphan that
    /// `vacuum` with orphans reclaims).
    pub(crate) async fn delete_paths(&self, paths: &[String]) {
        let store = self.store();
        for path in paths {
            if let Err(e) = store.delete(&location(path)).await {
                tracing::warn!(error = %e, path = %path, "cannot delete a file compaction wrote");
            }
        }
    }
}

type Writer = tokio::task::JoinHandle<Result<Vec<Action>>>;

/// A task writing the sorted batches sent to it as data files with `settings` (the append
/// path's writer), and the sender of those batches; the files are written once it is dropped.
fn spawn_writer(
    log_store: LogStoreRef,
    settings: WriteSettings,
) -> (tokio::sync::mpsc::Sender<Result<RecordBatch>>, Writer) {
    let (send, receive) = tokio::sync::mpsc::channel(2);
    let writer = tokio::spawn(async move {
        super::write::write_files(
            &log_store,
            &settings,
            super::ingest::SortedChunks::presorted(receive),
        )
        .await
    });
    (send, writer)
}

/// An output file being written: its rows go to a writer task.
struct OutputFile {
    send: Option<tokio::sync::mpsc::Sender<Result<RecordBatch>>>,
    writer: Writer,
    rows: u64,
}

impl OutputFile {
    async fn send(&mut self, batch: RecordBatch) -> Result<()> {
        let Some(send) = &self.send else {
            return Ok(());
        };
        if send.send(Ok(batch)).await.is_err() {
            // The writer stopped: its error comes with `close`.
            self.send = None;
        }
        Ok(())
    }

    async fn close(mut self) -> Result<Vec<Action>> {
        self.send = None;
        joined(self.writer.await)
    }
}

fn joined(
    outcome: std::result::Result<Result<Vec<Action>>, tokio::task::JoinError>,
) -> Result<Vec<Action>> {
    outcome.map_err(|e| {
        TraceLakeError::InvalidArgument(format!("writing a compacted file failed: {e}"))
    })?
}

/// The table-relative object-store path of a log path.
pub(crate) fn location(path: &str) -> Path {
    Path::from_url_path(path).unwrap_or_else(|_| Path::from(path))
}

/// The storage order: `trace_id`, then `start_time_unix_nano`.
fn sort_order(schema: &SchemaRef) -> Result<LexOrdering> {
    let keys = [col::TRACE_ID, col::START_TIME_UNIX_NANO]
        .into_iter()
        .map(|name| -> Result<PhysicalSortExpr> {
            Ok(PhysicalSortExpr::new_default(Arc::new(
                Column::new_with_schema(name, schema)?,
            )))
        })
        .collect::<Result<Vec<_>>>()?;
    LexOrdering::new(keys).ok_or_else(|| TraceLakeError::InvalidArgument("empty sort order".into()))
}

/// Opens `input` (a file of day `span_date`) as a stream of storage batches.
async fn open_input(
    store: Arc<dyn ObjectStore>,
    input: &Input,
    span_date: &str,
) -> Result<SendableRecordBatchStream> {
    let reader = StoreReader::new(store, location(&input.path), input.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let file_schema = builder.schema().clone();
    let target = storage_schema();
    // The columns of the storage schema the file has (dedicated columns are not read: the
    // writer derives them again from the maps).
    let roots: Vec<usize> = file_schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| target.field_with_name(f.name()).is_ok())
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let stream = builder
        .with_projection(mask)
        .with_batch_size(INPUT_BATCH_ROWS)
        .build()?;
    let date: Arc<str> = Arc::from(span_date);
    let path: Arc<str> = Arc::from(input.path.as_str());
    let converted = stream.map(move |batch| {
        let batch = batch?;
        to_storage_batch(&batch, &date).map_err(|e| {
            TraceLakeError::SchemaMismatch(format!("data file {path} cannot be compacted: {e}"))
        })
    });
    let converted = converted
        .map_err(|e: TraceLakeError| datafusion::error::DataFusionError::External(Box::new(e)));
    Ok(Box::pin(RecordBatchStreamAdapter::new(target, converted)))
}

/// A batch read from a data file as the storage schema has it: attribute maps lean, the
/// partition column from the partition value, absent optional columns null.
fn to_storage_batch(batch: &RecordBatch, span_date: &str) -> Result<RecordBatch> {
    let target = storage_schema();
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let column = if field.name() == col::SPAN_DATE {
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                span_date, rows,
            ))) as ArrayRef
        } else {
            match batch.column_by_name(field.name()) {
                Some(column) => crate::layout::to_lean(column)?,
                None if field.is_nullable() => new_null_array(field.data_type(), rows),
                None => {
                    return Err(TraceLakeError::SchemaMismatch(format!(
                        "the file has no column {}",
                        field.name()
                    )));
                }
            }
        };
        if column.data_type() != field.data_type() {
            let column = arrow::compute::cast(&column, field.data_type())?;
            columns.push(column);
        } else {
            columns.push(column);
        }
    }
    Ok(RecordBatch::try_new(target, columns)?)
}

/// `stream`, with `flag` set (and the stream ended) when a row is out of storage order.
fn checked_order(
    stream: SendableRecordBatchStream,
    flag: Arc<AtomicBool>,
    schema: SchemaRef,
) -> SendableRecordBatchStream {
    let mut last: Option<(String, i64)> = None;
    let checked = stream
        .map(move |batch| {
            let batch = batch?;
            if in_order(&batch, &mut last) {
                Ok(Some(batch))
            } else {
                flag.store(true, Ordering::Relaxed);
                Ok(None)
            }
        })
        .take_while(|b: &datafusion::error::Result<Option<RecordBatch>>| {
            futures::future::ready(!matches!(b, Ok(None)))
        })
        .filter_map(|b| futures::future::ready(b.transpose()));
    Box::pin(RecordBatchStreamAdapter::new(schema, checked))
}

/// Whether `batch` continues the order after `last` (updated to its last row).
fn in_order(batch: &RecordBatch, last: &mut Option<(String, i64)>) -> bool {
    let (Some(ids), Some(starts)) = (
        batch
            .column_by_name(col::TRACE_ID)
            .and_then(|c| c.as_string_opt::<i32>()),
        batch
            .column_by_name(col::START_TIME_UNIX_NANO)
            .and_then(|c| c.as_primitive_opt::<Int64Type>()),
    ) else {
        return false;
    };
    for row in 0..batch.num_rows() {
        let id = ids.value(row);
        let start = starts.value(row);
        if let Some((last_id, last_start)) = last.as_ref() {
            let ordered = match id.cmp(last_id.as_str()) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => start >= *last_start,
                std::cmp::Ordering::Less => false,
            };
            if !ordered {
                return false;
            }
        }
        match last {
            Some((last_id, last_start)) => {
                if last_id != id {
                    last_id.clear();
                    last_id.push_str(id);
                }
                *last_start = start;
            }
            None => *last = Some((id.to_string(), start)),
        }
    }
    true
}

/// One input of an external sort: the rows of a file.
struct FileStream {
    compactor: Compactor,
    input: Input,
    schema: SchemaRef,
}

impl std::fmt::Debug for FileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStream")
            .field("path", &self.input.path)
            .finish()
    }
}

impl PartitionStream for FileStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let store = self.compactor.store();
        let input = self.input.clone();
        let date = self.compactor.span_date.clone();
        let opened = futures::stream::once(async move {
            open_input(store, &input, &date)
                .await
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
        })
        .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), opened))
    }
}

/// A greedy memory pool of `limit` bytes that records the most it held.
#[derive(Debug)]
struct PeakPool {
    used: AtomicUsize,
    limit: usize,
    peak: Arc<AtomicUsize>,
}

impl PeakPool {
    fn new(limit: usize, peak: Arc<AtomicUsize>) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            peak,
        }
    }
}

impl std::fmt::Display for PeakPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}(used: {}, pool_size: {})",
            self.name(),
            self.used.load(Ordering::Relaxed),
            self.limit
        )
    }
}

impl MemoryPool for PeakPool {
    fn name(&self) -> &str {
        "tracelake compaction"
    }

    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        let now = self.used.fetch_add(additional, Ordering::Relaxed) + additional;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let new = used.checked_add(additional)?;
                (new <= self.limit).then_some(new)
            })
            .map_err(|used| {
                datafusion::error::DataFusionError::ResourcesExhausted(format!(
                    "compaction needs more than its memory budget of {} bytes ({used} held, \
                     {additional} more asked by {}): raise it with \
                     OptimizeBuilder::memory_budget or `tracelake optimize --memory-budget`",
                    self.limit,
                    reservation.consumer().name()
                ))
            })?;
        self.peak
            .fetch_max(self.used.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

/// The `remove` actions of compacted files (`dataChange = false`: the rows are the same).
pub(crate) fn removes(inputs: &[Input], span_date: &str, now_ms: i64) -> Vec<Action> {
    inputs
        .iter()
        .filter(|f| !f.run)
        .map(|f| {
            Action::Remove(Remove {
                path: f.path.clone(),
                data_change: false,
                deletion_timestamp: Some(now_ms),
                extended_file_metadata: Some(true),
                partition_values: Some(std::collections::HashMap::from([(
                    col::SPAN_DATE.to_string(),
                    Some(span_date.to_string()),
                )])),
                size: Some(f.size as i64),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, ids: Option<(&str, &str)>) -> Input {
        Input {
            path: path.into(),
            size,
            rows: 100,
            ids: ids.map(|(a, b)| (a.into(), b.into())),
            run: false,
        }
    }

    fn paths(groups: &[Vec<Input>]) -> Vec<Vec<&str>> {
        groups
            .iter()
            .map(|g| g.iter().map(|f| f.path.as_str()).collect())
            .collect()
    }

    #[test]
    fn only_what_pays_is_rewritten() {
        let mb = 1 << 20;
        // Disjoint large files: nothing.
        let big = [
            file("a", 100 * mb, Some(("0", "3"))),
            file("b", 100 * mb, Some(("4", "7"))),
        ];
        assert!(plan_partition(&big, 100 * mb).is_empty());
        // Overlapping files form one group; a disjoint large file stays.
        let mixed = [
            file("a", 100 * mb, Some(("0", "3"))),
            file("b", 5 * mb, Some(("2", "5"))),
            file("c", 5 * mb, Some(("5", "6"))),
            file("d", 100 * mb, Some(("7", "9"))),
        ];
        assert_eq!(paths(&plan_partition(&mixed, 100 * mb)), [["a", "b", "c"]]);
        // Adjacent small files merge; a lone small file between large ones does not.
        let smalls = [
            file("a", mb, Some(("0", "1"))),
            file("b", mb, Some(("2", "3"))),
            file("c", 100 * mb, Some(("4", "5"))),
            file("d", mb, Some(("6", "7"))),
        ];
        assert_eq!(paths(&plan_partition(&smalls, 100 * mb)), [["a", "b"]]);
        // Unknown ranges: everything.
        let unknown = [file("a", mb, None), file("b", 100 * mb, Some(("4", "5")))];
        assert_eq!(plan_partition(&unknown, 100 * mb).len(), 1);
        assert!(plan_partition(&[file("a", mb, None)], 100 * mb).is_empty());
    }

    #[test]
    fn order_checks_follow_ids_then_starts() {
        use arrow::array::Int64Array;
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new(col::TRACE_ID, arrow::datatypes::DataType::Utf8, false),
            arrow::datatypes::Field::new(
                col::START_TIME_UNIX_NANO,
                arrow::datatypes::DataType::Int64,
                false,
            ),
        ]));
        let batch = |ids: &[&str], starts: &[i64]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(ids.to_vec())),
                    Arc::new(Int64Array::from(starts.to_vec())),
                ],
            )
            .unwrap()
        };
        let mut last = None;
        assert!(in_order(&batch(&["a", "a", "b"], &[1, 2, 0]), &mut last));
        assert!(in_order(&batch(&["b", "c"], &[0, 5]), &mut last));
        assert!(!in_order(&batch(&["b"], &[9]), &mut last.clone()));
        assert!(!in_order(&batch(&["c"], &[4]), &mut last));
    }

    use crate::table::tests::span;
    use crate::table::{TableOptions, TraceTable};

    const DAY: i64 = 1_714_564_800_000_000_000; // 2024-05-01T12:00Z

    /// `commits` appends of `per` spans each, every append covering the whole id space (as
    /// OTLP batches do), traces of three spans.
    async fn overlapping_table(path: &str, commits: u64, per: u64) -> TraceTable {
        let table = TraceTable::create(path, &TableOptions::default())
            .await
            .unwrap();
        for c in 0..commits {
            let spans: Vec<_> = (0..per)
                .map(|i| {
                    let trace = ((i / 3) * commits + c) as u128 * 0x9e37_79b9_7f4a_7c15;
                    span(trace, c * per + i + 1, None, DAY + (i % 3) as i64 * 1_000)
                })
                .collect();
            table.append_spans(&spans).await.unwrap();
        }
        table
    }

    /// Every data file's rows, checked to be in storage order; returns (rows, span ids).
    async fn read_files(table: &TraceTable) -> (u64, Vec<String>) {
        let store = table.log_store().object_store(None);
        let mut ids = Vec::new();
        let mut rows = 0u64;
        let mut ranges = Vec::new();
        for slot in table.snapshot().state().files.values() {
            let input = Input {
                path: slot.log.path.clone(),
                size: slot.log.size,
                rows: 0,
                ids: None,
                run: false,
            };
            let date = slot.log.span_date.clone().unwrap();
            let mut stream = open_input(store.clone(), &input, &date).await.unwrap();
            let mut last = None;
            let mut range: Option<(String, String)> = None;
            while let Some(batch) = stream.next().await {
                let batch = batch.unwrap();
                assert!(in_order(&batch, &mut last), "{} is not sorted", input.path);
                rows += batch.num_rows() as u64;
                let traces = batch
                    .column_by_name(col::TRACE_ID)
                    .unwrap()
                    .as_string::<i32>();
                for t in traces.iter().flatten() {
                    range = Some(match range {
                        None => (t.to_string(), t.to_string()),
                        Some((a, b)) => (a.min(t.to_string()), b.max(t.to_string())),
                    });
                }
                let spans = batch
                    .column_by_name(col::SPAN_ID)
                    .unwrap()
                    .as_string::<i32>();
                ids.extend(spans.iter().flatten().map(str::to_string));
            }
            ranges.extend(range);
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 < pair[1].0, "files overlap: {pair:?}");
        }
        ids.sort();
        (rows, ids)
    }

    #[tokio::test]
    async fn a_day_merges_in_passes_within_the_budget_and_a_second_run_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans");
        let table = overlapping_table(path.to_str().unwrap(), 7, 12_000).await;
        assert_eq!(table.snapshot().num_files(), 7);
        let mut expected: Vec<String> = (1..=84_000).map(|i| format!("{i:016x}")).collect();
        expected.sort();

        let err = table
            .optimize()
            .memory_budget(1 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory_budget 1048576 is too small"), "{err}");
        assert_eq!(table.version(), 7, "a refused optimize committed");
        // The smallest budget: one merge reads fewer than seven files at a time, so the day
        // takes a pass through a run.
        let outcome = table
            .optimize()
            .memory_budget(MIN_COMPACTION_MEMORY)
            .await
            .unwrap();
        assert_eq!(outcome.partitions, ["2024-05-01"]);
        assert_eq!(outcome.files_removed, 7);
        assert!(outcome.merge_passes >= 2, "{outcome:?}");
        assert!(outcome.peak_merge_memory > 0, "{outcome:?}");
        assert!(
            outcome.peak_merge_memory <= MIN_COMPACTION_MEMORY,
            "{outcome:?}"
        );
        assert_eq!(outcome.version, 8);
        let (rows, ids) = read_files(&table).await;
        assert_eq!(rows, 84_000);
        assert_eq!(ids, expected);
        // No run is left behind: the table's directory holds the table's files only.
        let on_disk = std::fs::read_dir(path.join("span_date=2024-05-01"))
            .unwrap()
            .count();
        assert_eq!(on_disk, 7 + table.snapshot().num_files());

        let again = table.optimize().await.unwrap();
        assert_eq!(again.version, 8, "{again:?}");
        assert_eq!((again.files_removed, again.files_added), (0, 0));
        assert!(table.partitions_to_optimize().unwrap().is_empty());

        // Small output files: cut between traces, never within one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans");
        let table = overlapping_table(path.to_str().unwrap(), 4, 3000).await;
        let outcome = table
            .optimize()
            .target_file_size(crate::table::maintenance::MIN_OPTIMIZE_TARGET_FILE_SIZE)
            .await
            .unwrap();
        assert_eq!(outcome.files_removed, 4);
        let (rows, _) = read_files(&table).await;
        assert_eq!(rows, 12_000);
    }

    #[tokio::test]
    async fn files_of_another_engine_out_of_order_are_sorted_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans");
        let table = overlapping_table(path.to_str().unwrap(), 2, 300).await;
        // A file written by deltalake's own writer, its rows in descending id order.
        let spans: Vec<_> = (0..300u64)
            .rev()
            .map(|i| span(i as u128 * 0x1234_5678_9abc_def1, 10_000 + i, None, DAY))
            .collect();
        let batch = crate::span::spans_to_batch(&spans).unwrap();
        let storage = crate::table::ingest::to_storage(&batch, 0).unwrap();
        table
            .delta_table()
            .await
            .unwrap()
            .write(vec![storage])
            .with_save_mode(deltalake::protocol::SaveMode::Append)
            .with_partition_columns([col::SPAN_DATE])
            .await
            .unwrap();
        table.refresh().await.unwrap();
        assert_eq!(table.snapshot().num_files(), 3);
        let outcome = table.optimize().await.unwrap();
        assert_eq!(outcome.files_removed, 3, "{outcome:?}");
        // A first merge that found the file out of order, its sort, the merge again.
        assert_eq!(outcome.merge_passes, 3, "{outcome:?}");
        let (rows, ids) = read_files(&table).await;
        assert_eq!(rows, 900);
        assert_eq!(ids.len(), 900);
        assert!(table.partitions_to_optimize().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_compaction_that_lost_its_files_to_another_commit_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans");
        let path_str = path.to_str().unwrap();
        let stale = overlapping_table(path_str, 3, 300).await;
        // Another process compacts the same files first.
        let other = TraceTable::open(path_str, &TableOptions::default())
            .await
            .unwrap();
        let first = other.optimize().await.unwrap();
        assert_eq!(first.files_removed, 3);
        let partition = path.join("span_date=2024-05-01");
        let on_disk = std::fs::read_dir(&partition).unwrap().count();
        // This handle has not seen that commit: it merges the same three files, then finds
        // them gone when it commits.
        let err = stale.optimize().await.unwrap_err();
        assert!(matches!(err, TraceLakeError::Conflict(_)), "{err}");
        assert!(err.is_transient());
        assert!(err.to_string().contains("nothing was committed"), "{err}");
        // What it wrote is gone; the table is the other process's.
        assert_eq!(std::fs::read_dir(&partition).unwrap().count(), on_disk);
        stale.refresh().await.unwrap();
        assert_eq!(stale.version(), first.version);
        let (rows, ids) = read_files(&stale).await;
        assert_eq!(rows, 900);
        assert_eq!(ids.len(), 900);
    }
}
