//! Table maintenance: incremental optimize (compaction clustered by trace id), vacuum with a
//! retention window, expiry of old partitions, checkpoints, and table statistics.
//!
//! Optimize rewrites only the partitions that need it: those whose files' trace-id ranges
//! overlap (several small appends, each covering the whole id space). It Z-orders them on
//! `trace_id` (with one column, a sort), so the rewritten files have disjoint id ranges and
//! sorted row groups, and the next run skips them. It never holds the commit lock while
//! rewriting: appends go on, Delta's optimistic concurrency orders the commits.

use std::collections::BTreeMap;

use deltalake::operations::optimize::OptimizeType;
use deltalake::{FilterOp, FilterValue};
use tracing::{Instrument, field};

use super::{TraceTable, writer_properties};
use crate::error::Result;
use crate::observe::names;
use crate::schema::col;

/// What an optimize run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptimizeOutcome {
    /// Partitions (`span_date` values) rewritten.
    pub partitions: Vec<String>,
    pub files_removed: u64,
    pub files_added: u64,
    /// The version after the run (unchanged when nothing needed optimizing).
    pub version: i64,
}

impl TraceTable {
    /// The partitions whose files overlap in trace-id range and would be rewritten by
    /// [`TraceTable::optimize`].
    pub fn partitions_to_optimize(&self) -> Result<Vec<String>> {
        let snapshot = self.snapshot();
        let log_data = snapshot
            .delta_table()
            .snapshot()?
            .snapshot()
            .try_log_data()?;
        let prefix = crate::read::index::table_prefix(&self.location().url);
        let mut ranges: BTreeMap<String, Vec<Option<(String, String)>>> = BTreeMap::new();
        for view in log_data.iter() {
            let date = view
                .partition_values_map()
                .get(col::SPAN_DATE)
                .cloned()
                .flatten()
                .unwrap_or_default();
            let location = object_store::path::Path::from_iter(
                prefix.parts().chain(view.object_store_path().parts()),
            );
            let range = snapshot
                .index()
                .and_then(|index| index.trace_id_range(&location));
            ranges.entry(date).or_default().push(range);
        }
        Ok(ranges
            .into_iter()
            .filter(|(_, files)| overlapping(files))
            .map(|(date, _)| date)
            .collect())
    }

    /// Compacts the partitions that need it (see [`TraceTable::partitions_to_optimize`]) into
    /// files sorted by trace id, as one commit, and installs the new version.
    pub async fn optimize(&self) -> Result<OptimizeOutcome> {
        let partitions = self.partitions_to_optimize()?;
        let before = self.version();
        let span = tracing::info_span!(
            names::DELTA_OPTIMIZE,
            { names::ATTR_VERSION_BEFORE } = before,
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_PARTITIONS } = partitions.len(),
            { names::ATTR_FILES_ADDED } = field::Empty,
            { names::ATTR_FILES_REMOVED } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        if partitions.is_empty() {
            span.record(names::ATTR_VERSION_AFTER, before);
            return Ok(OptimizeOutcome {
                version: before,
                ..Default::default()
            });
        }
        let result = async {
            let table = self.snapshot().delta_table().clone();
            let values: Vec<&str> = partitions.iter().map(String::as_str).collect();
            let filters = [(col::SPAN_DATE, FilterOp::In, FilterValue::Set(values))];
            let (optimized, metrics) = table
                .optimize()
                .with_type(OptimizeType::ZOrder(vec![col::TRACE_ID.to_string()]))
                .with_filters(&filters)
                .with_writer_properties(writer_properties())
                .await?;
            let version = self.install_locked(optimized).await?;
            Ok(OptimizeOutcome {
                partitions: partitions.clone(),
                files_removed: metrics.num_files_removed,
                files_added: metrics.num_files_added,
                version,
            })
        }
        .instrument(span.clone())
        .await;
        let outcome = super::record_result(&span, result)?;
        span.record(names::ATTR_VERSION_AFTER, outcome.version);
        span.record(names::ATTR_FILES_ADDED, outcome.files_added);
        span.record(names::ATTR_FILES_REMOVED, outcome.files_removed);
        Ok(outcome)
    }
}

/// The shortest vacuum retention accepted: files removed from the table less than this long
/// ago may still be read by a running query.
pub const MIN_VACUUM_RETENTION_HOURS: u64 = 1;

/// What a vacuum run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumOutcome {
    /// Data files deleted from storage.
    pub files_deleted: usize,
    pub version: i64,
}

/// What an expiry run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpireOutcome {
    /// Partitions (`span_date`) dropped.
    pub partitions: Vec<String>,
    pub files_removed: u64,
    pub version: i64,
}

/// A summary of the current version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    pub version: i64,
    pub files: usize,
    pub spans: u64,
    pub bytes: u64,
    /// `span_date` values, oldest first.
    pub partitions: Vec<String>,
    /// Oldest and newest span start, unix nanoseconds (from file statistics).
    pub oldest_start_unix_nano: Option<i64>,
    pub newest_start_unix_nano: Option<i64>,
}

impl TraceTable {
    /// Deletes data files that left the table more than `retention_hours` ago (and are no
    /// longer needed by any version within the window). Fails for less than
    /// [`MIN_VACUUM_RETENTION_HOURS`]: a query that started before the files were removed
    /// may still be reading them.
    pub async fn vacuum(&self, retention_hours: u64) -> Result<VacuumOutcome> {
        if retention_hours < MIN_VACUUM_RETENTION_HOURS {
            return Err(crate::error::TraceLakeError::InvalidArgument(format!(
                "vacuum retention of {retention_hours} hours is shorter than the minimum of \
                 {MIN_VACUUM_RETENTION_HOURS} hour: running queries could lose files they read"
            )));
        }
        let before = self.version();
        let span = tracing::info_span!(
            names::DELTA_VACUUM,
            { names::ATTR_VERSION_BEFORE } = before,
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_FILES_REMOVED } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        let result = async {
            let table = self.snapshot().delta_table().clone();
            let (vacuumed, metrics) = table
                .vacuum()
                .with_retention_period(chrono::Duration::hours(retention_hours as i64))
                .with_enforce_retention_duration(false)
                .await?;
            let version = self.install_locked(vacuumed).await?;
            Ok(VacuumOutcome {
                files_deleted: metrics.files_deleted.len(),
                version,
            })
        }
        .instrument(span.clone())
        .await;
        let outcome = super::record_result(&span, result)?;
        span.record(names::ATTR_VERSION_AFTER, outcome.version);
        span.record(names::ATTR_FILES_REMOVED, outcome.files_deleted);
        Ok(outcome)
    }

    /// Drops every partition whose day (`span_date`, UTC) is entirely older than
    /// `older_than_days` days before `now_unix_nano`: whole files are removed from the table,
    /// nothing is rewritten. The files stay in storage until vacuum.
    pub async fn expire(&self, older_than_days: u64, now_unix_nano: i64) -> Result<ExpireOutcome> {
        let cutoff_ns = now_unix_nano - older_than_days as i64 * 86_400_000_000_000;
        let cutoff = crate::schema::span_date(cutoff_ns);
        let partitions: Vec<String> = self
            .stats()?
            .partitions
            .into_iter()
            .filter(|p| p.as_str() < cutoff.as_str())
            .collect();
        let before = self.version();
        let span = tracing::info_span!(
            names::DELTA_EXPIRE,
            { names::ATTR_VERSION_BEFORE } = before,
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_PARTITIONS } = partitions.len(),
            { names::ATTR_FILES_REMOVED } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        if partitions.is_empty() {
            span.record(names::ATTR_VERSION_AFTER, before);
            return Ok(ExpireOutcome {
                version: before,
                ..Default::default()
            });
        }
        let result = async {
            let table = self.snapshot().delta_table().clone();
            let (expired, metrics) = table
                .delete()
                .with_predicate(format!("{} < '{cutoff}'", col::SPAN_DATE))
                .await?;
            let version = self.install_locked(expired).await?;
            Ok(ExpireOutcome {
                partitions: partitions.clone(),
                files_removed: metrics.num_removed_files as u64,
                version,
            })
        }
        .instrument(span.clone())
        .await;
        let outcome = super::record_result(&span, result)?;
        span.record(names::ATTR_VERSION_AFTER, outcome.version);
        span.record(names::ATTR_FILES_REMOVED, outcome.files_removed);
        Ok(outcome)
    }

    /// Writes a checkpoint of the current version and removes log files older than the
    /// table's log retention, so that opening and refreshing stay bounded.
    pub async fn checkpoint(&self) -> Result<i64> {
        let table = self.snapshot().delta_table().clone();
        let version = self.version();
        let span = tracing::info_span!(
            names::DELTA_CHECKPOINT,
            { names::ATTR_VERSION_AFTER } = version,
            { names::ATTR_ERROR } = field::Empty,
        );
        let result: Result<()> = async {
            deltalake::checkpoints::create_checkpoint(&table, None).await?;
            deltalake::checkpoints::cleanup_metadata(&table, None).await?;
            Ok(())
        }
        .instrument(span.clone())
        .await;
        super::record_result(&span, result)?;
        Ok(version)
    }

    /// Version, files, spans, bytes, partitions and time range of the current version, from
    /// the Delta log alone (no data file is read).
    pub fn stats(&self) -> Result<TableStats> {
        let snapshot = self.snapshot();
        let log_data = snapshot
            .delta_table()
            .snapshot()?
            .snapshot()
            .try_log_data()?;
        let mut stats = TableStats {
            version: snapshot.version(),
            ..Default::default()
        };
        let mut partitions = std::collections::BTreeSet::new();
        for view in log_data.iter() {
            stats.files += 1;
            stats.bytes += view.size().max(0) as u64;
            stats.spans += view.num_records().unwrap_or(0) as u64;
            if let Some(Some(date)) = view.partition_values_map().get(col::SPAN_DATE) {
                partitions.insert(date.clone());
            }
            let parsed: Option<serde_json::Value> = view
                .stats()
                .and_then(|json| serde_json::from_str(&json).ok());
            let bound = |key: &str| -> Option<i64> {
                parsed
                    .as_ref()?
                    .get(key)?
                    .get(col::START_TIME_UNIX_NANO)?
                    .as_i64()
            };
            if let Some(min) = bound("minValues") {
                stats.oldest_start_unix_nano =
                    Some(stats.oldest_start_unix_nano.map_or(min, |o| o.min(min)));
            }
            if let Some(max) = bound("maxValues") {
                stats.newest_start_unix_nano =
                    Some(stats.newest_start_unix_nano.map_or(max, |o| o.max(max)));
            }
        }
        stats.partitions = partitions.into_iter().collect();
        Ok(stats)
    }
}

/// Whether files (by trace-id range; `None` when unknown) need clustering: two or more whose
/// ranges overlap, or any unknown range among several files.
fn overlapping(files: &[Option<(String, String)>]) -> bool {
    if files.len() < 2 {
        return false;
    }
    let mut ranges: Vec<&(String, String)> = Vec::with_capacity(files.len());
    for f in files {
        match f {
            Some(r) => ranges.push(r),
            None => return true,
        }
    }
    ranges.sort();
    ranges.windows(2).any(|w| w[1].0 <= w[0].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &str, b: &str) -> Option<(String, String)> {
        Some((a.into(), b.into()))
    }

    #[test]
    fn only_overlapping_partitions_need_work() {
        assert!(!overlapping(&[r("0", "f")]));
        assert!(!overlapping(&[r("0", "3"), r("4", "7"), r("8", "f")]));
        assert!(overlapping(&[r("0", "8"), r("4", "f")]));
        assert!(overlapping(&[r("0", "3"), None]));
    }
}
