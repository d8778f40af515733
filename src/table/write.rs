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
use tracing::Instrument;

use super::state::WriteSettings;
use super::writer_properties;
use crate::error::{Result, TraceLakeError};
use crate::observe::names;
use crate::schema::{col, storage_schema};

/// Writes `batches` (storage schema, sorted by `span_date`) as data files of the table behind
/// `log_store`, with the statistics `settings` name; returns their `Add` actions.
pub(super) async fn write_files(
    log_store: &LogStoreRef,
    settings: &WriteSettings,
    batches: &[RecordBatch],
) -> Result<Vec<Action>> {
    async {
        let config = WriterConfig::new(
            storage_schema(),
            vec![col::SPAN_DATE.to_string()],
            Some(writer_properties()),
            // The table's `delta.targetFileSize` (deltalake's default otherwise), as the write
            // operation uses.
            Some(settings.target_file_size),
            None,
            settings.stats.num_indexed_cols,
            settings.stats.stats_columns.clone(),
        );
        let mut writer = DeltaWriter::new(log_store.object_store(None), config);
        for batch in batches {
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
        Ok(writer.close().await?.into_iter().map(Action::Add).collect())
    }
    .instrument(tracing::info_span!(names::DELTA_APPEND_WRITE))
    .await
}
