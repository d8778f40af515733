//! Appending sorted storage batches as one Delta commit, without deltalake's write operation.
//!
//! deltalake's `write` plans a DataFusion write and splits every batch by partition with a
//! full copy. A commit's batches are already sorted by `span_date` (see
//! [`sort_for_storage`](super::ingest::sort_for_storage)), so each day is a contiguous slice:
//! they go straight to deltalake's own `DeltaWriter` (which writes the parquet files and
//! computes their Delta statistics) one slice per partition, and the `Add` actions are
//! committed with deltalake's `CommitBuilder` (conflict checks and retries included), as the
//! write operation does after its plan.
//!
//! Tables with features this path does not enforce (column mapping, CHECK constraints,
//! generated columns, invariants) take deltalake's write operation instead.

use arrow::array::{AsArray, RecordBatch};
use delta_kernel::expressions::Scalar;
use delta_kernel::table_features::ColumnMappingMode;
use deltalake::DeltaTable;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::operations::write::WriterStatsConfig;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use indexmap::IndexMap;

use super::writer_properties;
use crate::error::{Result, TraceLakeError};
use crate::schema::{col, storage_schema};

/// Field metadata keys of columns whose values the writer would have to compute or check.
const ENFORCED_FIELD_METADATA: [&str; 2] = ["delta.generationExpression", "delta.invariants"];

/// Writes `batches` (storage schema, sorted by `span_date`) as one append commit on top of
/// `table`'s current version; `None` when the table needs deltalake's write operation.
pub(super) async fn direct_append(
    table: &DeltaTable,
    batches: &[RecordBatch],
    commit_properties: CommitProperties,
) -> Result<Option<DeltaTable>> {
    let state = table.snapshot()?;
    let properties = state.table_config();
    let plain = matches!(
        properties.column_mapping_mode,
        None | Some(ColumnMappingMode::None)
    ) && !properties
        .unknown_properties
        .keys()
        .any(|k| k.starts_with("delta.constraints."))
        && state.schema().fields().all(|f| {
            ENFORCED_FIELD_METADATA
                .iter()
                .all(|key| !f.metadata().contains_key(*key))
        });
    if !plain {
        return Ok(None);
    }
    let stats = WriterStatsConfig::from_config(state.snapshot().table_configuration());
    let log_store = table.log_store();
    let config = WriterConfig::new(
        storage_schema(),
        vec![col::SPAN_DATE.to_string()],
        Some(writer_properties()),
        // The table's `delta.targetFileSize` (deltalake's default otherwise), as the write
        // operation uses.
        Some(properties.target_file_size()),
        None,
        stats.num_indexed_cols,
        stats.stats_columns,
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
    let actions: Vec<Action> = writer.close().await?.into_iter().map(Action::Add).collect();
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(vec![col::SPAN_DATE.to_string()]),
        predicate: None,
    };
    // With the post-commit hook of the write operation's default properties: checkpoints
    // every `delta.checkpointInterval` commits, and log cleanup per the table's settings.
    let commit = CommitBuilder::from(commit_properties)
        .with_actions(actions)
        .build(Some(state), log_store.clone(), operation)
        .await?;
    let mut written = DeltaTable::new(log_store);
    written.state = Some(commit.snapshot);
    Ok(Some(written))
}
