//! The table's state as tracelake keeps it: the version, its data files (a persistent map of
//! the read path's file slots), the application transactions, and what a writer must know.
//!
//! It is built once from deltalake's snapshot when the table is opened (or when the log can no
//! longer be followed), then moved forward commit by commit from the actions of each commit:
//! tracelake's own appends, and the commits of other writers and of maintenance, read from the
//! log. Moving forward costs what the commit changed, not what the table holds: appending to a
//! table of 100,000 files touches one entry of the map, and reads nothing about the others.

use std::num::NonZeroU64;
use std::sync::Arc;

use arrow::array::RecordBatch;
use delta_kernel::table_features::ColumnMappingMode;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::operations::write::WriterStatsConfig;
use deltalake::table::config::TablePropertiesExt;
use object_store::path::Path;

use crate::error::{Result, TraceLakeError};
use crate::read::index::{FileMap, FileSlot, LogFile, SlotHome};
use crate::schema::AttributeLayout;

/// Field metadata keys of columns whose values a writer would have to compute or check.
const ENFORCED_FIELD_METADATA: [&str; 2] = ["delta.generationExpression", "delta.invariants"];

/// Writer features an append written directly (without deltalake's write operation) honours:
/// none of them asks anything of an append but to be present.
const DIRECT_WRITER_FEATURES: [&str; 6] = [
    "appendOnly",
    "invariants",
    "checkConstraints",
    "deletionVectors",
    "timestampNtz",
    "v2Checkpoint",
];

/// What an append must know about the table.
#[derive(Clone)]
pub(crate) struct WriteSettings {
    /// Whether appends are written directly (no column mapping, constraints, generated
    /// columns, invariants, or writer features an append would have to honour); otherwise
    /// deltalake's write operation, which enforces them.
    pub(crate) direct: bool,
    /// The columns Delta keeps statistics for.
    pub(crate) stats: WriterStatsConfig,
    pub(crate) target_file_size: NonZeroU64,
    /// A checkpoint is written every this many commits.
    pub(crate) checkpoint_interval: u64,
    /// How the table's files hold attribute maps (from the table's schema).
    pub(crate) layout: AttributeLayout,
    /// The table's dedicated attribute columns (its `tracelake.dedicatedColumns` property).
    pub(crate) dedicated: crate::dedicated::DedicatedColumns,
}

impl std::fmt::Debug for WriteSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteSettings")
            .field("direct", &self.direct)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl WriteSettings {
    fn of(table: &DeltaTable) -> Result<Self> {
        let state = table.snapshot()?;
        let properties = state.table_config();
        let protocol = state.protocol();
        let writer_features_ok = protocol.writer_features().is_none_or(|features| {
            features
                .iter()
                .all(|f| DIRECT_WRITER_FEATURES.contains(&f.as_ref()))
        });
        let direct = writer_features_ok
            && matches!(
                properties.column_mapping_mode,
                None | Some(ColumnMappingMode::None)
            )
            && !properties
                .unknown_properties
                .keys()
                .any(|k| k.starts_with("delta.constraints."))
            && state.schema().fields().all(|f| {
                ENFORCED_FIELD_METADATA
                    .iter()
                    .all(|key| !f.metadata().contains_key(*key))
            });
        Ok(Self {
            direct,
            stats: WriterStatsConfig::from_config(state.snapshot().table_configuration()),
            target_file_size: properties.target_file_size(),
            checkpoint_interval: properties.checkpoint_interval().get(),
            layout: crate::schema::layout_of(&state.snapshot().arrow_schema())
                .unwrap_or(AttributeLayout::Lean),
            dedicated: dedicated_of(&properties.unknown_properties),
        })
    }

    /// `batch` (storage columns, attribute maps lean as `to_storage` makes them) as this
    /// table's files hold it.
    pub(crate) fn for_files(&self, batch: RecordBatch) -> Result<RecordBatch> {
        match self.layout {
            AttributeLayout::Lean => Ok(batch),
            _ => {
                let schema = crate::schema::storage_schema_of(self.layout);
                let columns = batch
                    .columns()
                    .iter()
                    .map(crate::layout::to_nested)
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(RecordBatch::try_new(schema, columns)?)
            }
        }
    }
}

/// The dedicated columns a table's configuration names; none (with a warning) when the
/// property does not parse, so that appends go on answering from the maps.
fn dedicated_of(
    properties: &std::collections::HashMap<String, String>,
) -> crate::dedicated::DedicatedColumns {
    let value = properties.get(crate::dedicated::DEDICATED_COLUMNS_PROPERTY);
    crate::dedicated::DedicatedColumns::of_configuration(value.map(String::as_str)).unwrap_or_else(
        |e| {
            tracing::warn!(
                "table property {}: {e}; no dedicated columns are written",
                crate::dedicated::DEDICATED_COLUMNS_PROPERTY
            );
            crate::dedicated::DedicatedColumns::none()
        },
    )
}

/// One version of the table. Cloning is cheap (persistent maps).
#[derive(Debug, Clone)]
pub(crate) struct TableState {
    pub(crate) version: i64,
    pub(crate) files: FileMap,
    /// Files with deletion vectors (scans of such versions use deltalake's reader).
    pub(crate) deletion_vectors: usize,
    /// The latest version of each application transaction (`txn`) seen in the commits this
    /// state followed (appenders use fresh ids, so a full load need not read them).
    pub(crate) txns: imbl::HashMap<Arc<str>, i64>,
    pub(crate) write: Arc<WriteSettings>,
}

/// What following one more commit leads to.
pub(crate) enum Next {
    /// The state after the commit.
    State(TableState),
    /// The commit changes the table's metadata or protocol: load the table anew.
    Reload,
}

impl TableState {
    /// The state of `table` (a loaded deltalake table), its files under `home`; the slots
    /// of `previous` are kept for files it had (with the footers already read).
    pub(crate) fn from_delta(
        table: &DeltaTable,
        home: &SlotHome,
        previous: Option<&TableState>,
    ) -> Result<Self> {
        let snapshot = table.snapshot()?;
        let log_data = snapshot.snapshot().try_log_data()?;
        let mut files = FileMap::new();
        let mut deletion_vectors = 0;
        for view in log_data.iter() {
            #[allow(deprecated)] // the only public way to the tags of a file
            let log = LogFile::of_add(&view.add_action());
            deletion_vectors += usize::from(log.deletion_vector);
            let slot = FileSlot::new(home, log);
            let key: Arc<str> = Arc::from(slot.location.as_ref());
            let slot = match previous.and_then(|p| p.files.get(&key)) {
                Some(kept) if kept.log.size == slot.log.size => kept.clone(),
                _ => Arc::new(slot),
            };
            files.insert(key, slot);
        }
        Ok(Self {
            version: table.version().map(|v| v as i64).unwrap_or(-1),
            files,
            deletion_vectors,
            txns: imbl::HashMap::new(),
            write: Arc::new(WriteSettings::of(table)?),
        })
    }

    /// The state after commit `version` with `actions`, its new files under `prefix`.
    pub(crate) fn follow(&self, version: i64, actions: &[Action], home: &SlotHome) -> Next {
        let mut next = self.clone();
        next.version = version;
        for action in actions {
            match action {
                Action::Add(add) => {
                    let log = LogFile::of_add(add);
                    let deletion_vector = log.deletion_vector;
                    let slot = Arc::new(FileSlot::new(home, log));
                    next.deletion_vectors += usize::from(deletion_vector);
                    if let Some(old) = next.files.insert(Arc::from(slot.location.as_ref()), slot) {
                        next.deletion_vectors -= usize::from(old.log.deletion_vector);
                    }
                }
                Action::Remove(remove) => {
                    let log = LogFile::new(remove.path.clone(), 0, None, None, false);
                    let location = FileSlot::new(home, log).location.clone();
                    if let Some(old) = next.files.remove(location.as_ref()) {
                        next.deletion_vectors -= usize::from(old.log.deletion_vector);
                    }
                }
                Action::Txn(txn) => {
                    next.txns
                        .insert(Arc::from(txn.app_id.as_str()), txn.version);
                }
                Action::CommitInfo(_) | Action::Cdc(_) | Action::DomainMetadata(_) => {}
                Action::Metadata(_) | Action::Protocol(_) => return Next::Reload,
            }
        }
        Next::State(next)
    }

    /// The version of application transaction `app_id` this state has seen.
    pub(crate) fn transaction_version(&self, app_id: &str) -> Option<i64> {
        self.txns.get(app_id).copied()
    }
}

/// The actions of a commit file (`_delta_log/NNN.json`: one action per line).
pub(crate) fn parse_commit(version: i64, bytes: &[u8]) -> Result<Vec<Action>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        TraceLakeError::InvalidArgument(format!("commit {version} of the log is not UTF-8: {e}"))
    })?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<Action>(line).map_err(|e| {
                TraceLakeError::InvalidArgument(format!(
                    "commit {version} of the log has an action tracelake cannot read: {e}"
                ))
            })
        })
        .collect()
}

/// The path of commit `version` in the table's log store.
pub(crate) fn commit_path(version: i64) -> Path {
    Path::from(format!("_delta_log/{version:020}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_parse_into_actions() {
        let commit = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE"}}
{"txn":{"appId":"a","version":3}}
{"add":{"path":"span_date=2024-05-01/part-0.parquet","partitionValues":{"span_date":"2024-05-01"},"size":10,"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":5,\"minValues\":{\"trace_id\":\"00000000000000000000000000000001\",\"start_time_unix_nano\":7},\"maxValues\":{\"trace_id\":\"00000000000000000000000000000009\",\"start_time_unix_nano\":9}}"}}
{"remove":{"path":"span_date=2024-05-01/part-old.parquet","dataChange":true,"deletionTimestamp":5}}
"#;
        let actions = parse_commit(4, commit).unwrap();
        assert_eq!(actions.len(), 4);
        let add = LogFile::new(
            "p".into(),
            10,
            None,
            match &actions[2] {
                Action::Add(a) => a.stats.as_deref(),
                _ => None,
            },
            false,
        );
        assert_eq!(add.num_records, Some(5));
        assert_eq!(add.starts, Some((7, 9)));
        assert_eq!(
            add.trace_ids,
            Some((
                "00000000000000000000000000000001".to_string(),
                "00000000000000000000000000000009".to_string()
            ))
        );
        assert!(parse_commit(5, b"{not json").is_err());
        assert_eq!(
            commit_path(12).as_ref(),
            "_delta_log/00000000000000000012.json"
        );
    }
}
