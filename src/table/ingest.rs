//! Checking and converting incoming spans to the storage schema.
//!
//! Every append (span values, Arrow batches, `INSERT INTO spans`) passes here: ids are
//! validated and lowercased, `kind` and `status_code` normalized, defaults filled in, times
//! converted to unix nanoseconds and the `span_date` partition derived. A row that does not fit
//! fails the whole append with an error naming the row and the column; nothing is written.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, StringBuilder, UInt32Array,
    new_null_array,
};
use arrow::compute::{cast, concat, interleave, take};
use arrow::datatypes::{Int64Type, TimestampNanosecondType};

use crate::error::{Result, TraceLakeError};
use crate::schema::{self, col, input_schema, storage_schema};

fn invalid(row: usize, message: impl Into<String>) -> TraceLakeError {
    TraceLakeError::InvalidSpan {
        row,
        message: message.into(),
    }
}

pub use crate::schema::is_hex_id;

/// Validates a trace id (32 hex characters, either case) and returns it in lowercase.
pub fn normalize_trace_id(s: &str) -> Option<String> {
    is_hex_id(s, 32).then(|| s.to_ascii_lowercase())
}

/// The column `name` of `batch`, cast to its input-schema type, or all nulls when absent.
/// `offset` is the number of rows before this batch in the same append, for error messages.
fn column(batch: &RecordBatch, name: &str, offset: usize) -> Result<ArrayRef> {
    let target = input_schema().field_with_name(name)?.data_type().clone();
    match batch.column_by_name(name) {
        None => Ok(new_null_array(&target, batch.num_rows())),
        Some(array) if array.data_type() == &target => Ok(array.clone()),
        Some(array) => {
            let converted = cast(array, &target).map_err(|e| {
                TraceLakeError::SchemaMismatch(format!(
                    "column {name} has type {} but {target} was expected: {e}",
                    array.data_type()
                ))
            })?;
            // A value the target type cannot hold (a timestamp outside the years 1677 to
            // 2262 in nanoseconds, say) becomes NULL in a cast: name it instead.
            if converted.null_count() > array.null_count()
                && let Some(i) =
                    (0..array.len()).find(|&i| array.is_valid(i) && converted.is_null(i))
            {
                return Err(invalid(
                    offset + i,
                    format!(
                        "{name} value {} does not fit {target}",
                        arrow::util::display::array_value_to_string(array, i)
                            .unwrap_or_else(|_| "?".into())
                    ),
                ));
            }
            Ok(converted)
        }
    }
}

fn strings(array: &ArrayRef) -> &StringArray {
    array.as_string::<i32>()
}

/// Whether every value of `values` is `len` lowercase hex characters (or NULL, when not
/// `required`): one tight pass over the value bytes for the common case, before the
/// row-by-row pass that names the first bad row and lowercases.
fn lowercase_hex_ids(values: &StringArray, len: usize, required: bool) -> bool {
    const LOWER_HEX: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = matches!(b as u8, b'0'..=b'9' | b'a'..=b'f');
            b += 1;
        }
        table
    };
    if required && values.null_count() > 0 {
        return false;
    }
    let offsets = values.value_offsets();
    let bytes = values.values();
    let nulls = values.nulls();
    (0..values.len()).all(|i| {
        if nulls.is_some_and(|n| n.is_null(i)) {
            return true;
        }
        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
        end - start == len && bytes[start..end].iter().all(|&b| LOWER_HEX[b as usize])
    })
}

/// An id column: required or not, checked for hex of `len` characters and lowercased.
fn id_column(
    batch: &RecordBatch,
    name: &str,
    len: usize,
    required: bool,
    offset: usize,
) -> Result<ArrayRef> {
    let array = column(batch, name, offset)?;
    let values = strings(&array);
    if lowercase_hex_ids(values, len, required) {
        return Ok(array);
    }
    let mut clean = true;
    for (i, v) in values.iter().enumerate() {
        match v {
            None if required => return Err(invalid(offset + i, format!("{name} is required"))),
            None => {}
            Some("") if !required => clean = false,
            Some(s) if !is_hex_id(s, len) => {
                return Err(invalid(
                    offset + i,
                    format!("{name} {s:?} is not {len} hexadecimal characters"),
                ));
            }
            Some(s) => clean &= !s.bytes().any(|b| b.is_ascii_uppercase()),
        }
    }
    if clean {
        return Ok(array);
    }
    Ok(Arc::new(
        values
            .iter()
            .map(|v| v.filter(|s| !s.is_empty()).map(|s| s.to_ascii_lowercase()))
            .collect::<StringArray>(),
    ))
}

/// A column of symbolic values (`kind`, `status_code`): case-insensitive, with or without
/// the OTLP prefix (`SPAN_KIND_`, `STATUS_CODE_`), `NULL` meaning `default`.
fn enum_column(
    batch: &RecordBatch,
    name: &str,
    allowed: &[&'static str],
    otlp_prefix: &str,
    offset: usize,
) -> Result<ArrayRef> {
    let array = column(batch, name, offset)?;
    let values = strings(&array);
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let value = match v {
            None => allowed[0],
            // Already canonical: no allocation.
            Some(s) if let Some(a) = allowed.iter().copied().find(|a| *a == s) => a,
            Some(s) => {
                let upper = s.trim().to_ascii_uppercase();
                let bare = upper.strip_prefix(otlp_prefix).unwrap_or(&upper);
                allowed
                    .iter()
                    .copied()
                    .find(|a| *a == bare)
                    .ok_or_else(|| {
                        invalid(
                            offset + i,
                            format!("{name} {s:?} is not one of {}", allowed.join(", ")),
                        )
                    })?
            }
        };
        out.push(value);
    }
    Ok(Arc::new(StringArray::from(out)))
}

fn time_column(batch: &RecordBatch, name: &str, offset: usize) -> Result<Int64Array> {
    let array = column(batch, name, offset)?;
    let times = array.as_primitive::<TimestampNanosecondType>();
    if let Some(i) = (0..times.len()).find(|&i| times.is_null(i)) {
        return Err(invalid(offset + i, format!("{name} is required")));
    }
    Ok(Int64Array::new(times.values().clone(), None))
}

fn count_column(batch: &RecordBatch, name: &str, offset: usize) -> Result<ArrayRef> {
    let array = column(batch, name, offset)?;
    let counts = array.as_primitive::<Int64Type>();
    let mut out = Vec::with_capacity(counts.len());
    for (i, v) in counts.iter().enumerate() {
        match v {
            Some(n) if n < 0 => {
                return Err(invalid(offset + i, format!("{name} {n} is negative")));
            }
            v => out.push(v.unwrap_or(0)),
        }
    }
    Ok(Arc::new(Int64Array::from(out)))
}

/// Checks `batch` (columns named as in the SQL schema; absent optional columns are allowed)
/// and converts it to the storage schema. [`sort_for_storage`] then orders the batches of a
/// commit.
/// `offset` is the number of rows before this batch in the same append, for error messages.
pub fn to_storage(batch: &RecordBatch, offset: usize) -> Result<RecordBatch> {
    let sql = input_schema();
    if let Some(unknown) = batch
        .schema()
        .fields()
        .iter()
        .find(|f| sql.field_with_name(f.name()).is_err())
    {
        return Err(TraceLakeError::SchemaMismatch(format!(
            "unknown column {:?}; span columns are {}",
            unknown.name(),
            sql.fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    let start = time_column(batch, col::START_TIME, offset)?;
    let end = time_column(batch, col::END_TIME, offset)?;
    let duration = column(batch, col::DURATION_NS, offset)?;
    let duration = duration.as_primitive::<Int64Type>();
    let mut durations = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let (s, e) = (start.value(i), end.value(i));
        if e < s {
            return Err(invalid(
                offset + i,
                format!("end_time ({e} ns) is before start_time ({s} ns)"),
            ));
        }
        let Some(computed) = e.checked_sub(s) else {
            return Err(invalid(
                offset + i,
                format!(
                    "end_time - start_time ({e} - {s} ns) does not fit duration_ns (a 64-bit \
                     number of nanoseconds, about 292 years)"
                ),
            ));
        };
        if duration.is_valid(i) && duration.value(i) != computed {
            return Err(invalid(
                offset + i,
                format!(
                    "duration_ns {} does not equal end_time - start_time ({computed})",
                    duration.value(i)
                ),
            ));
        }
        durations.push(computed);
    }

    let name = column(batch, col::NAME, offset)?;
    if let Some(i) = (0..name.len()).find(|&i| name.is_null(i)) {
        return Err(invalid(offset + i, "name is required"));
    }
    let service = column(batch, col::SERVICE_NAME, offset)?;
    let service: ArrayRef = if service.null_count() == 0 {
        service
    } else {
        Arc::new(
            strings(&service)
                .iter()
                .map(|v| Some(v.unwrap_or("unknown_service")))
                .collect::<StringArray>(),
        )
    };
    // One date string per day, not per row.
    let mut day: Option<(i64, String)> = None;
    let mut span_dates = StringBuilder::with_capacity(start.len(), start.len() * 10);
    for &t in start.values() {
        let d = t.div_euclid(DAY_NS);
        match &day {
            Some((cached, date)) if *cached == d => span_dates.append_value(date),
            _ => {
                let date = schema::span_date(t);
                span_dates.append_value(&date);
                day = Some((d, date));
            }
        }
    }
    let span_dates = span_dates.finish();

    let storage = storage_schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(storage.fields().len());
    for field in storage.fields() {
        let array: ArrayRef = match field.name().as_str() {
            col::TRACE_ID => id_column(batch, col::TRACE_ID, 32, true, offset)?,
            col::SPAN_ID => id_column(batch, col::SPAN_ID, 16, true, offset)?,
            col::PARENT_SPAN_ID => id_column(batch, col::PARENT_SPAN_ID, 16, false, offset)?,
            col::START_TIME_UNIX_NANO => Arc::new(start.clone()),
            col::END_TIME_UNIX_NANO => Arc::new(end.clone()),
            col::DURATION_NS => Arc::new(Int64Array::from(std::mem::take(&mut durations))),
            col::SERVICE_NAME => service.clone(),
            col::NAME => name.clone(),
            col::KIND => enum_column(batch, col::KIND, &schema::SPAN_KINDS, "SPAN_KIND_", offset)?,
            col::STATUS_CODE => enum_column(
                batch,
                col::STATUS_CODE,
                &schema::STATUS_CODES,
                "STATUS_CODE_",
                offset,
            )?,
            col::DROPPED_ATTRIBUTES_COUNT
            | col::DROPPED_EVENTS_COUNT
            | col::DROPPED_LINKS_COUNT => count_column(batch, field.name(), offset)?,
            col::SPAN_DATE => Arc::new(span_dates.clone()),
            col::ATTRIBUTES | col::RESOURCE_ATTRIBUTES | col::EVENTS | col::LINKS => {
                let name = field.name();
                crate::layout::to_lean(&column(batch, name, offset)?)
                    .map_err(|e| TraceLakeError::SchemaMismatch(format!("column {name}: {e}")))?
            }
            other => column(batch, other, offset)?,
        };
        debug_assert_eq!(array.data_type(), field.data_type(), "{}", field.name());
        columns.push(array);
    }
    Ok(RecordBatch::try_new(storage, columns)?)
}

/// Rows per batch handed to the writer after sorting.
const SORTED_BATCH_ROWS: usize = 16 * 1024;

const DAY_NS: i64 = 86_400_000_000_000;

/// Orders the storage batches of one commit by `span_date`, `trace_id`,
/// `start_time_unix_nano` (all rows together, not batch by batch), so that each row group of
/// a written file covers a narrow, disjoint range of trace ids.
///
/// Trace ids here are validated lowercase hex, whose string order is the order of their
/// 128-bit values: the sort compares integers, and the rows are gathered once.
pub fn sort_for_storage(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    SortedRun::new(batches.to_vec())?.collect()
}

/// The sorted batches of one commit, gathered one batch of [`SORTED_BATCH_ROWS`] at a time,
/// so that a writer can encode a batch while the next one is gathered (see
/// [`sort_in_background`]).
///
/// Each column is gathered with the kernel that is faster for its type: flat columns (ids,
/// names, times) are concatenated once and `take`n, nested ones (attributes, events, links)
/// are interleaved from the batches as they are (concatenating them would copy every
/// attribute once more). The input's flat columns are dropped once concatenated, its nested
/// ones once the last batch is gathered: a run is held once, plus the sorted batches that
/// the caller still holds.
pub(crate) struct SortedRun {
    state: RunState,
}

enum RunState {
    /// Already in order, or too small to gain from sorting: the batches as they came.
    AsIs(std::vec::IntoIter<RecordBatch>),
    Gather {
        schema: arrow::datatypes::SchemaRef,
        /// The global row number of each output row, in output order.
        order: Vec<u32>,
        /// Output rows already produced.
        done: usize,
        gathers: Vec<Gather>,
        /// The global row number of each input batch's first row.
        starts: Vec<u32>,
    },
}

enum Gather {
    Take(ArrayRef),
    Interleave(Vec<ArrayRef>),
}

impl SortedRun {
    /// Computes the order of the rows of `batches` (the gathering is done by the iterator).
    pub(crate) fn new(batches: Vec<RecordBatch>) -> Result<Self> {
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        if u32::try_from(total).is_err() {
            return Err(TraceLakeError::InvalidArgument(format!(
                "one commit holds at most {} rows, got {total}: append in smaller commits",
                u32::MAX
            )));
        }
        let as_is = |batches: Vec<RecordBatch>| SortedRun {
            state: RunState::AsIs(batches.into_iter()),
        };
        let mut keys: Vec<(i64, u128, i64, u32)> = Vec::with_capacity(total);
        let mut row = 0u32;
        for batch in &batches {
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| TraceLakeError::SchemaMismatch(format!("missing {name}")))
            };
            let ids = column(col::TRACE_ID)?
                .as_string_opt::<i32>()
                .ok_or_else(|| TraceLakeError::SchemaMismatch("trace_id is not a string".into()))?;
            let starts = column(col::START_TIME_UNIX_NANO)?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| {
                    TraceLakeError::SchemaMismatch("start_time_unix_nano is not a long".into())
                })?;
            for i in 0..batch.num_rows() {
                let start = starts.value(i);
                let id = u128::from_str_radix(ids.value(i), 16).unwrap_or_default();
                keys.push((start.div_euclid(DAY_NS), id, start, row));
                row += 1;
            }
        }
        if keys.is_sorted() && batches.len() <= 1 {
            return Ok(as_is(batches));
        }
        // A commit that fits one data page of one day gains nothing from sorting: a lookup
        // decodes the whole page anyway, and the page's statistics are the same in any order.
        if total <= super::PAGE_ROWS
            && keys.first().map(|k| k.0) == keys.last().map(|k| k.0)
            && keys.iter().all(|k| Some(k.0) == keys.first().map(|f| f.0))
        {
            return Ok(as_is(batches));
        }
        keys.sort_unstable();
        let order: Vec<u32> = keys.iter().map(|k| k.3).collect();
        drop(keys);
        let Some(first) = batches.first() else {
            return Ok(as_is(batches));
        };
        let schema = first.schema();
        let gathers = (0..schema.fields().len())
            .map(|c| {
                let arrays: Vec<ArrayRef> = batches.iter().map(|b| b.column(c).clone()).collect();
                if schema.field(c).data_type().is_nested() {
                    Ok(Gather::Interleave(arrays))
                } else {
                    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
                    Ok(Gather::Take(concat(&refs)?))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let starts: Vec<u32> = batches
            .iter()
            .scan(0u32, |at, b| {
                let start = *at;
                *at += b.num_rows() as u32;
                Some(start)
            })
            .collect();
        Ok(SortedRun {
            state: RunState::Gather {
                schema,
                order,
                done: 0,
                gathers,
                starts,
            },
        })
    }
}

impl Iterator for SortedRun {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        let (schema, order, done, gathers, starts) = match &mut self.state {
            RunState::AsIs(batches) => return batches.next().map(Ok),
            RunState::Gather {
                schema,
                order,
                done,
                gathers,
                starts,
            } => (schema, order, done, gathers, starts),
        };
        let chunk = order.get(*done..(*done + SORTED_BATCH_ROWS).min(order.len()))?;
        if chunk.is_empty() {
            return None;
        }
        *done += chunk.len();
        // The batch and row of each global row number, for interleaving.
        let locate = |row: u32| {
            let b = starts.partition_point(|&s| s <= row) - 1;
            (b, (row - starts[b]) as usize)
        };
        let indices = UInt32Array::from_iter_values(chunk.iter().copied());
        let mut pairs: Option<Vec<(usize, usize)>> = None;
        let columns = gathers
            .iter()
            .map(|g| match g {
                Gather::Take(array) => Ok(take(array.as_ref(), &indices, None)?),
                Gather::Interleave(arrays) => {
                    let pairs = pairs.get_or_insert_with(|| {
                        chunk.iter().map(|&r| locate(r)).collect::<Vec<_>>()
                    });
                    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
                    Ok(interleave(&refs, pairs)?)
                }
            })
            .collect::<Result<Vec<_>>>();
        if *done == order.len() {
            // The last batch: the input is no longer needed.
            gathers.clear();
        }
        Some(columns.and_then(|c| Ok(RecordBatch::try_new(schema.clone(), c)?)))
    }
}

/// The sorted batches of a commit, gathered on a blocking thread of the runtime while the
/// caller writes the ones already handed over: sorting and encoding run on two cores. At most
/// [`SORTED_AHEAD`] sorted batches wait for the writer.
pub(crate) struct SortedChunks(Chunks);

enum Chunks {
    Background {
        batches: tokio::sync::mpsc::Receiver<Result<RecordBatch>>,
        task: Option<tokio::task::JoinHandle<()>>,
    },
    /// Outside a Tokio runtime: sorted on the caller's thread, one batch per `next`.
    Inline(Option<Result<SortedRun>>),
}

/// Batches of fewer rows than this are gathered into one of about this many rows before they
/// are converted and buffered (see [`coalesce_small`]).
pub(crate) const COALESCE_ROWS: usize = 8 * 1024;

/// `input` with its small batches gathered into batches of about [`COALESCE_ROWS`] rows (in
/// order; batches as large pass through). A plan can emit thousands of tiny batches (a cross
/// join emits one per row of its build side): each carries a dozen buffers and allocations
/// of its own, so holding a run of them took ten times the memory of its rows, and every
/// conversion and sort step paid per batch. Gathering copies the rows once into compact
/// buffers. A batch whose schema differs from the gathered ones starts a new batch.
pub(crate) fn coalesce_small<S, E>(
    input: S,
) -> impl futures::Stream<Item = std::result::Result<RecordBatch, E>>
where
    S: futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
    E: From<arrow::error::ArrowError>,
{
    use futures::StreamExt;
    struct State<S> {
        input: S,
        pending: Vec<RecordBatch>,
        rows: usize,
        ready: std::collections::VecDeque<RecordBatch>,
        done: bool,
    }
    fn flush<S>(state: &mut State<S>) -> std::result::Result<(), arrow::error::ArrowError> {
        match state.pending.len() {
            0 => {}
            1 => state.ready.extend(state.pending.pop()),
            _ => {
                let schema = state.pending[0].schema();
                let batch = arrow::compute::concat_batches(&schema, &state.pending)?;
                state.pending.clear();
                state.ready.push_back(batch);
            }
        }
        state.rows = 0;
        Ok(())
    }
    let state = State {
        input,
        pending: Vec::new(),
        rows: 0,
        ready: std::collections::VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(batch) = state.ready.pop_front() {
                return Some((Ok(batch), state));
            }
            if state.done {
                return None;
            }
            match state.input.next().await {
                None => {
                    state.done = true;
                    if let Err(e) = flush(&mut state) {
                        return Some((Err(E::from(e)), state));
                    }
                }
                Some(Err(e)) => {
                    // What was gathered goes first: the consumer stops at the error.
                    state.done = true;
                    let _ = flush(&mut state);
                    state.ready.clear();
                    return Some((Err(e), state));
                }
                Some(Ok(batch)) => {
                    let other_schema = state
                        .pending
                        .first()
                        .is_some_and(|first| first.schema() != batch.schema());
                    if (other_schema || batch.num_rows() >= COALESCE_ROWS)
                        && let Err(e) = flush(&mut state)
                    {
                        state.done = true;
                        return Some((Err(E::from(e)), state));
                    }
                    if batch.num_rows() >= COALESCE_ROWS {
                        state.ready.push_back(batch);
                        continue;
                    }
                    state.rows += batch.num_rows();
                    state.pending.push(batch);
                    if state.rows >= COALESCE_ROWS
                        && let Err(e) = flush(&mut state)
                    {
                        state.done = true;
                        return Some((Err(E::from(e)), state));
                    }
                }
            }
        }
    })
}

/// Sorted batches [`sort_in_background`] gathers ahead of the writer.
const SORTED_AHEAD: usize = 2;

/// Sorts `batches` as [`sort_for_storage`] does, on a blocking thread (see [`SortedChunks`]);
/// on the caller's thread when they fit one sorted batch (nothing to overlap: small commits
/// take no thread hop) or when there is no Tokio runtime to run it.
pub(crate) fn sort_in_background(batches: Vec<RecordBatch>) -> SortedChunks {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let runtime = match tokio::runtime::Handle::try_current() {
        Ok(runtime) if rows > SORTED_BATCH_ROWS => runtime,
        _ => return SortedChunks(Chunks::Inline(Some(SortedRun::new(batches)))),
    };
    let (send, receive) = tokio::sync::mpsc::channel(SORTED_AHEAD);
    let span = tracing::Span::current();
    let task = runtime.spawn_blocking(move || {
        let _entered = span.enter();
        let run = match SortedRun::new(batches) {
            Ok(run) => run,
            Err(e) => {
                let _ = send.blocking_send(Err(e));
                return;
            }
        };
        for batch in run {
            let failed = batch.is_err();
            // The writer gave up (its own error): nothing more to sort.
            if send.blocking_send(batch).is_err() || failed {
                return;
            }
        }
    });
    SortedChunks(Chunks::Background {
        batches: receive,
        task: Some(task),
    })
}

impl SortedChunks {
    /// Batches that arrive already in storage order (a compaction's merge): handed to the
    /// writer as they come, until every sender is dropped.
    pub(crate) fn presorted(batches: tokio::sync::mpsc::Receiver<Result<RecordBatch>>) -> Self {
        SortedChunks(Chunks::Background {
            batches,
            task: None,
        })
    }

    /// The next sorted batch; `None` once all are handed over. A sort that panicked is an
    /// error here, never a silently shorter commit.
    pub(crate) async fn next(&mut self) -> Option<Result<RecordBatch>> {
        match &mut self.0 {
            Chunks::Background { batches, task } => {
                if let Some(batch) = batches.recv().await {
                    return Some(batch);
                }
                match task.take()?.await {
                    Ok(()) => None,
                    Err(e) => Some(Err(TraceLakeError::InvalidArgument(format!(
                        "sorting the rows of a commit failed: {e}"
                    )))),
                }
            }
            Chunks::Inline(run) => match run {
                Some(Ok(sorted)) => {
                    let next = sorted.next();
                    if next.is_none() {
                        *run = None;
                    }
                    next
                }
                Some(Err(_)) => run.take().and_then(|r| r.err()).map(Err),
                None => None,
            },
        }
    }

    /// All the sorted batches.
    pub(crate) async fn collect(mut self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        while let Some(batch) = self.next().await {
            out.push(batch?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tiny_batches_are_gathered_in_order_and_large_ones_pass_through() {
        use arrow::array::Int64Array;
        use futures::StreamExt;
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
        ]));
        let batch = |from: i64, n: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
            )
            .unwrap()
        };
        // 2,000 batches of five rows (a cross join's), then one large batch, then a tail.
        let mut input: Vec<Result<RecordBatch>> = (0..2_000).map(|i| Ok(batch(i * 5, 5))).collect();
        input.push(Ok(batch(10_000, COALESCE_ROWS as i64)));
        input.push(Ok(batch(10_000 + COALESCE_ROWS as i64, 3)));
        let out: Vec<RecordBatch> = coalesce_small(futures::stream::iter(input))
            .map(|b| b.unwrap())
            .collect()
            .await;
        let sizes: Vec<usize> = out.iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, [8_195, 1_805, COALESCE_ROWS, 3]);
        let values: Vec<i64> = out
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(
            values,
            (0..10_003 + COALESCE_ROWS as i64).collect::<Vec<_>>()
        );
        // An error ends the stream where it came.
        let input: Vec<Result<RecordBatch>> = vec![
            Ok(batch(0, 5)),
            Err(TraceLakeError::InvalidArgument("bad row".into())),
            Ok(batch(5, 5)),
        ];
        let out: Vec<Result<RecordBatch>> =
            coalesce_small(futures::stream::iter(input)).collect().await;
        assert_eq!(out.len(), 1);
        assert!(out[0].is_err());
    }
    use crate::span::{Span, SpanKind, spans_to_batch};

    fn span(trace: &str, span: &str) -> Span {
        Span {
            trace_id: trace.into(),
            span_id: span.into(),
            name: "op".into(),
            kind: SpanKind::Client,
            service_name: "svc".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 30,
            ..Default::default()
        }
    }

    const T: &str = "0AF7651916CD43DD8448EB211C80319C";

    #[test]
    fn clean_ids_are_recognized_in_one_pass() {
        let ids = |v: Vec<Option<&str>>| StringArray::from(v);
        assert!(lowercase_hex_ids(
            &ids(vec![Some("0af7"), Some("ffff")]),
            4,
            true
        ));
        assert!(lowercase_hex_ids(&ids(vec![Some("0af7"), None]), 4, false));
        assert!(!lowercase_hex_ids(&ids(vec![Some("0af7"), None]), 4, true));
        assert!(!lowercase_hex_ids(&ids(vec![Some("0AF7")]), 4, true));
        assert!(!lowercase_hex_ids(&ids(vec![Some("0af")]), 4, true));
        assert!(!lowercase_hex_ids(&ids(vec![Some("0afg")]), 4, true));
        assert!(!lowercase_hex_ids(&ids(vec![Some("")]), 4, false));
        assert!(lowercase_hex_ids(&ids(vec![]), 4, true));
    }

    #[test]
    fn ids_are_lowercased_and_defaults_filled() {
        let batch = spans_to_batch(&[span(T, "B7AD6B7169203331")]).unwrap();
        let stored = to_storage(&batch, 0).unwrap();
        let s = |n: &str| {
            stored
                .column_by_name(n)
                .unwrap()
                .as_string::<i32>()
                .value(0)
                .to_string()
        };
        assert_eq!(s(col::TRACE_ID), T.to_ascii_lowercase());
        assert_eq!(s(col::SPAN_ID), "b7ad6b7169203331");
        assert_eq!(s(col::KIND), "CLIENT");
        assert_eq!(s(col::STATUS_CODE), "UNSET");
        assert_eq!(s(col::SPAN_DATE), "1970-01-01");
        assert!(
            stored
                .column_by_name(col::PARENT_SPAN_ID)
                .unwrap()
                .is_null(0)
        );
    }

    #[test]
    fn bad_rows_name_the_row_and_column() {
        let cases = [
            (span("abc", "b7ad6b7169203331"), "trace_id \"abc\""),
            (span(T, "zzzzzzzzzzzzzzzz"), "span_id"),
            (
                Span {
                    end_time_unix_nano: 1,
                    ..span(T, "b7ad6b7169203331")
                },
                "before start_time",
            ),
        ];
        for (bad, expected) in cases {
            let batch = spans_to_batch(&[span(T, "b7ad6b7169203331"), bad]).unwrap();
            let err = to_storage(&batch, 5).unwrap_err().to_string();
            assert!(err.contains("row 6"), "{err}");
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn durations_that_overflow_are_refused_not_wrapped() {
        // 1677-09-22 to 2262-04-10: the difference does not fit an i64 of nanoseconds.
        let wide = Span {
            start_time_unix_nano: -9_223_285_636_854_775_808,
            end_time_unix_nano: 9_223_286_400_000_000_000 - 1,
            ..span(T, "b7ad6b7169203331")
        };
        let batch = spans_to_batch(&[span(T, "b7ad6b7169203331"), wide]).unwrap();
        let err = to_storage(&batch, 0).unwrap_err().to_string();
        assert!(err.contains("row 1"), "{err}");
        assert!(err.contains("does not fit duration_ns"), "{err}");
    }

    #[test]
    fn times_of_other_units_that_do_not_fit_nanoseconds_are_named() {
        use arrow::array::TimestampMicrosecondArray;
        let batch = spans_to_batch(&[span(T, "b7ad6b7169203331")]).unwrap();
        let mut columns = batch.columns().to_vec();
        let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
        let idx = batch.schema().index_of(col::START_TIME).unwrap();
        // Year 3000 in microseconds: representable in µs, not in ns.
        columns[idx] = Arc::new(
            TimestampMicrosecondArray::from(vec![32_503_680_000_000_000]).with_timezone("UTC"),
        );
        fields[idx] = Arc::new(arrow::datatypes::Field::new(
            col::START_TIME,
            columns[idx].data_type().clone(),
            true,
        ));
        let batch =
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns).unwrap();
        let err = to_storage(&batch, 3).unwrap_err().to_string();
        assert!(err.contains("row 3"), "{err}");
        assert!(err.contains("start_time value 3000-01-01"), "{err}");
    }

    #[test]
    fn kinds_accept_otlp_spelling_and_reject_unknown() {
        let batch = spans_to_batch(&[span(T, "b7ad6b7169203331")]).unwrap();
        let mut columns = batch.columns().to_vec();
        let idx = batch.schema().index_of(col::KIND).unwrap();
        columns[idx] = Arc::new(StringArray::from(vec!["span_kind_server"]));
        let ok = RecordBatch::try_new(batch.schema(), columns.clone()).unwrap();
        let stored = to_storage(&ok, 0).unwrap();
        assert_eq!(
            stored
                .column_by_name(col::KIND)
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "SERVER"
        );
        columns[idx] = Arc::new(StringArray::from(vec!["SIDEWAYS"]));
        let bad = RecordBatch::try_new(batch.schema(), columns).unwrap();
        let err = to_storage(&bad, 0).unwrap_err().to_string();
        assert!(err.contains("kind \"SIDEWAYS\" is not one of"), "{err}");
    }

    #[test]
    fn a_commit_is_sorted_by_day_trace_id_and_start_across_batches() {
        let at = |trace: &str, id: &str, start: i64| Span {
            start_time_unix_nano: start,
            end_time_unix_nano: start + 5,
            ..span(trace, id)
        };
        let day = 86_400_000_000_000;
        let hi = "ffffffffffffffffffffffffffffffff";
        let lo = "00000000000000000000000000000001";
        let mid = "8000000000000000000000000000000a";
        // Two batches of one commit, each unsorted, spanning two days.
        let first = spans_to_batch(&[
            at(hi, "0000000000000001", 30),
            at(lo, "0000000000000002", day + 1),
            at(mid, "0000000000000003", 20),
        ])
        .unwrap();
        let second = spans_to_batch(&[
            at(mid, "0000000000000004", 10),
            at(lo, "0000000000000005", 40),
        ])
        .unwrap();
        let stored = [
            to_storage(&first, 0).unwrap(),
            to_storage(&second, 3).unwrap(),
        ];
        let sorted = sort_for_storage(&stored).unwrap();
        let batch = arrow::compute::concat_batches(&sorted[0].schema(), &sorted).unwrap();
        let spans: Vec<&str> = batch
            .column_by_name(col::SPAN_ID)
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(
            spans,
            [
                "0000000000000005",
                "0000000000000004",
                "0000000000000003",
                "0000000000000001",
                "0000000000000002"
            ]
        );
        // Already sorted single batches are kept as they are.
        let once = sort_for_storage(&sorted[..1]).unwrap();
        assert_eq!(once[0], sorted[0]);
    }

    #[tokio::test]
    async fn the_background_sort_hands_over_the_same_batches_and_its_errors() {
        // 40,000 spans in three batches, in reverse trace order: several sorted batches of
        // SORTED_BATCH_ROWS, gathered while the earlier ones are taken.
        let spans: Vec<Span> = (0..40_000u32)
            .rev()
            .map(|i| span(&format!("{:032x}", i / 5), &format!("{:016x}", i + 1)))
            .collect();
        let stored: Vec<RecordBatch> = spans
            .chunks(15_000)
            .scan(0, |row, chunk| {
                let batch = to_storage(&spans_to_batch(chunk).unwrap(), *row).unwrap();
                *row += chunk.len();
                Some(batch)
            })
            .collect();
        let expected = sort_for_storage(&stored).unwrap();
        assert_eq!(expected.len(), 40_000usize.div_ceil(SORTED_BATCH_ROWS));
        let mut chunks = sort_in_background(stored.clone());
        let mut got = Vec::new();
        while let Some(batch) = chunks.next().await {
            got.push(batch.unwrap());
        }
        assert_eq!(got, expected);
        assert!(chunks.next().await.is_none(), "the end is reported once");

        // Batches that do not fit: the error reaches the writer, not a shorter commit.
        let broken: Vec<RecordBatch> = stored[..2]
            .iter()
            .map(|b| b.project(&[0, 1]).unwrap())
            .collect();
        let chunks = sort_in_background(broken.clone());
        assert!(matches!(chunks.0, Chunks::Background { .. }));
        let err = chunks.collect().await.unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");

        // What fits one sorted batch is sorted on the caller's thread.
        assert!(matches!(
            sort_in_background(stored[..1].to_vec()).0,
            Chunks::Inline(_)
        ));

        // Without a Tokio runtime (another executor), the sort runs on the caller's thread.
        let inline = std::thread::spawn(move || {
            let chunks = sort_in_background(stored);
            assert!(matches!(chunks.0, Chunks::Inline(_)));
            let sorted = futures::executor::block_on(chunks.collect());
            let broken = futures::executor::block_on(sort_in_background(broken).collect());
            (sorted.unwrap(), broken.unwrap_err().to_string())
        })
        .join()
        .unwrap();
        assert_eq!(inline.0, expected);
        assert!(inline.1.contains("missing"), "{}", inline.1);
    }
}
