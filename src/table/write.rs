//! Writing a commit's data files without deltalake's write operation.
//!
//! deltalake's `write` plans a DataFusion write and splits every batch by partition with a
//! full copy. A commit's batches are already sorted by `span_date` (see
//! [`sort_for_storage`](super::ingest::sort_for_storage)), so each day is a contiguous slice:
//! they go straight to deltalake's own `DeltaWriter` (which writes the parquet files and
//! computes their Delta statistics) one slice per partition; the table commits the `Add`
//! actions (see [`super::TraceTable`]).
//!
//! Tables with features this path does not enforce (column mapping, CHECK constraints,
//! generated columns, invariants) take deltalake's write operation instead (see
//! [`super::state::WriteSettings`]).

use arrow::array::{AsArray, RecordBatch};
use delta_kernel::expressions::Scalar;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::Action;
use deltalake::logstore::LogStoreRef;
use indexmap::IndexMap;
use parquet::bloom_filter::Sbbf;
use tracing::Instrument;

use super::ingest::SortedChunks;
use super::state::WriteSettings;
use super::writer_properties;
use crate::error::{Result, TraceLakeError};
use crate::observe::names;
use crate::schema::{col, storage_schema_of};

/// Files of at most this many distinct trace ids carry a filter of them in their log entry.
pub(crate) const LOG_FILTER_MAX_IDS: usize = 4096;

/// The tag of an `add` action holding the file's trace-id filter: a split-block bloom filter
/// (parquet's), 0.1% false positives, its bitset in base64.
pub(crate) const TRACE_ID_FILTER_TAG: &str = "tracelake.trace_id_filter";

/// The distinct trace ids of each day of a commit, while they are few.
#[derive(Default)]
struct DayFilters {
    /// `None` once a day has too many ids for a log filter.
    days: std::collections::HashMap<String, Option<std::collections::HashSet<String>>>,
}

impl DayFilters {
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let (Some(dates), Some(ids)) = (
            batch
                .column_by_name(col::SPAN_DATE)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(col::TRACE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) else {
            return Err(TraceLakeError::SchemaMismatch(
                "missing span_date or trace_id".into(),
            ));
        };
        for row in 0..batch.num_rows() {
            let day = self
                .days
                .entry(dates.value(row).to_string())
                .or_insert_with(|| Some(Default::default()));
            if let Some(set) = day {
                if !set.contains(ids.value(row)) {
                    set.insert(ids.value(row).to_string());
                }
                if set.len() > LOG_FILTER_MAX_IDS {
                    *day = None;
                }
            }
        }
        Ok(())
    }

    /// Tags each file that is alone in its day with the filter of that day's ids.
    fn tag(self, adds: &mut [deltalake::kernel::Add]) {
        use base64::Engine;
        for (day, ids) in self.days {
            let Some(ids) = ids else { continue };
            let mut files = adds.iter_mut().filter(|a| {
                a.partition_values
                    .get(col::SPAN_DATE)
                    .is_some_and(|v| v.as_deref() == Some(day.as_str()))
            });
            let (Some(add), None) = (files.next(), files.next()) else {
                continue;
            };
            let Ok(mut filter) = Sbbf::new_with_ndv_fpp(ids.len().max(1) as u64, 0.001) else {
                continue;
            };
            for id in &ids {
                filter.insert(id.as_str());
            }
            let mut bitset = Vec::new();
            if filter.write_bitset(&mut bitset).is_err() {
                continue;
            }
            add.tags.get_or_insert_with(Default::default).insert(
                TRACE_ID_FILTER_TAG.to_string(),
                Some(base64::engine::general_purpose::STANDARD.encode(bitset)),
            );
        }
    }
}

/// Writes `batches` (storage schema, sorted by `span_date`) as data files of the table behind
/// `log_store`, with the statistics `settings` name, encoding each batch as it arrives;
/// returns their `Add` actions.
pub(super) async fn write_files(
    log_store: &LogStoreRef,
    settings: &WriteSettings,
    mut batches: SortedChunks,
) -> Result<Vec<Action>> {
    async {
        // The dedicated columns the files hold: those of the table's list whose keys the first
        // sorted batch has (a file without one answers from the maps, see `crate::dedicated`).
        let first = match batches.next().await {
            Some(batch) => Some(settings.for_files(batch?)?),
            None => None,
        };
        let held = match &first {
            Some(batch) if !settings.dedicated.is_empty() => {
                crate::dedicated::held_in(&settings.dedicated, batch)?
            }
            _ => Vec::new(),
        };
        let mut properties = writer_properties();
        if !held.is_empty() {
            properties = super::with_dedicated_metadata(properties, &held);
        }
        let config = WriterConfig::new(
            crate::dedicated::with_columns(&storage_schema_of(settings.layout), &held),
            vec![col::SPAN_DATE.to_string()],
            Some(properties),
            // The table's `delta.targetFileSize` (deltalake's default otherwise), as the write
            // operation uses.
            Some(settings.target_file_size),
            None,
            settings.stats.num_indexed_cols,
            settings.stats.stats_columns.clone(),
        );
        let mut writer = DeltaWriter::new(log_store.object_store(None), config);
        let mut filters = DayFilters::default();
        let mut first = first;
        loop {
            let batch = match first.take() {
                Some(batch) => batch,
                None => match batches.next().await {
                    Some(batch) => settings.for_files(batch?)?,
                    None => break,
                },
            };
            filters.add(&batch)?;
            let batch = crate::dedicated::add_columns(batch, &held)?;
            let dates = batch
                .column_by_name(col::SPAN_DATE)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| TraceLakeError::SchemaMismatch("missing span_date".into()))?;
            let mut start = 0;
            while start < batch.num_rows() {
                let day = dates.value(start);
                let end = (start..batch.num_rows())
                    .find(|&i| dates.value(i) != day)
                    .unwrap_or(batch.num_rows());
                let values =
                    IndexMap::from([(col::SPAN_DATE.to_string(), Scalar::String(day.to_string()))]);
                writer
                    .write_partition(batch.slice(start, end - start), &values)
                    .await?;
                start = end;
            }
        }
        let mut adds = writer.close().await?;
        filters.tag(&mut adds);
        Ok(adds.into_iter().map(Action::Add).collect())
    }
    .instrument(tracing::info_span!(names::DELTA_APPEND_WRITE))
    .await
}
