//! Table maintenance: incremental optimize (compaction clustered by trace id), vacuum with a
//! retention window, expiry of old partitions, checkpoints, and table statistics.
//!
//! Optimize rewrites only the partitions that need it: those whose files' trace-id ranges
//! overlap (several small appends, each covering the whole id space). It Z-orders them on
//! `trace_id` (with one column, a sort), so the rewritten files have disjoint id ranges and
//! sorted row groups, and the next run skips them. It never holds the commit lock while
//! rewriting: appends go on, Delta's optimistic concurrency orders the commits.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::time::Duration;

use futures::future::BoxFuture;

use deltalake::operations::optimize::OptimizeType;
use deltalake::{FilterOp, FilterValue};
use tracing::{Instrument, field};

use super::{TraceTable, writer_properties};
use crate::error::{Result, TraceLakeError};
use crate::observe::names;
use crate::schema::col;

/// What an optimize run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
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
        let mut ranges: BTreeMap<String, Vec<Option<(String, String)>>> = BTreeMap::new();
        for slot in snapshot.state().files.values() {
            let date = slot.log.span_date.clone().unwrap_or_default();
            ranges.entry(date).or_default().push(slot.trace_id_range());
        }
        Ok(ranges
            .into_iter()
            .filter(|(_, files)| overlapping(files))
            .map(|(date, _)| date)
            .collect())
    }

    /// Compacts the partitions that need it (see [`TraceTable::partitions_to_optimize`]) into
    /// files sorted by trace id, as one commit, and installs the new version:
    /// `table.optimize().await`.
    pub fn optimize(&self) -> OptimizeBuilder<'_> {
        OptimizeBuilder {
            table: self,
            target_file_size: None,
        }
    }

    async fn run_optimize(&self, target_file_size: Option<u64>) -> Result<OptimizeOutcome> {
        let target = match target_file_size {
            None => None,
            Some(bytes)
                if (MIN_OPTIMIZE_TARGET_FILE_SIZE..=MAX_OPTIMIZE_TARGET_FILE_SIZE)
                    .contains(&bytes) =>
            {
                std::num::NonZeroU64::new(bytes)
            }
            Some(bytes) => {
                return Err(TraceLakeError::InvalidArgument(format!(
                    "optimize target_file_size {bytes} is out of range: \
                     {MIN_OPTIMIZE_TARGET_FILE_SIZE} to {MAX_OPTIMIZE_TARGET_FILE_SIZE} bytes"
                )));
            }
        };
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
            let table = self.delta_table().await?;
            let values: Vec<&str> = partitions.iter().map(String::as_str).collect();
            let filters = [(col::SPAN_DATE, FilterOp::In, FilterValue::Set(values))];
            let mut optimize = table
                .optimize()
                .with_type(OptimizeType::ZOrder(vec![col::TRACE_ID.to_string()]))
                .with_filters(&filters)
                .with_writer_properties(writer_properties());
            if let Some(target) = target {
                optimize = optimize.with_target_size(target);
            }
            let (optimized, metrics) = optimize.await?;
            let version = self
                .advance_to(optimized.version().map(|v| v as i64).unwrap_or(-1))
                .await?;
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

/// The longest vacuum retention accepted (100 years).
pub const MAX_VACUUM_RETENTION_HOURS: u64 = 876_000;

/// The vacuum retention used when none is given: 7 days, Delta's default.
pub const DEFAULT_VACUUM_RETENTION_HOURS: u64 = 168;

/// The largest `older_than_days` expiry accepts (100 years).
pub const MAX_EXPIRE_DAYS: u64 = 36_500;

/// What a vacuum run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VacuumOutcome {
    /// Data files deleted from storage (with `dry_run`: that would be deleted).
    pub files_deleted: usize,
    /// Their paths, relative to the table.
    pub files: Vec<String>,
    pub dry_run: bool,
    pub version: i64,
}

/// What an expiry run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpireOutcome {
    /// Partitions (`span_date`) dropped.
    pub partitions: Vec<String>,
    pub files_removed: u64,
    pub version: i64,
}

/// `table.optimize()`: see [`TraceTable::optimize`].
#[derive(Debug)]
#[must_use = "an optimize does nothing until awaited"]
pub struct OptimizeBuilder<'a> {
    table: &'a TraceTable,
    target_file_size: Option<u64>,
}

/// The smallest target file size [`OptimizeBuilder::target_file_size`] accepts (1 MiB).
pub const MIN_OPTIMIZE_TARGET_FILE_SIZE: u64 = 1 << 20;

/// The largest target file size [`OptimizeBuilder::target_file_size`] accepts (64 GiB).
pub const MAX_OPTIMIZE_TARGET_FILE_SIZE: u64 = 64 << 30;

impl OptimizeBuilder<'_> {
    /// The size in bytes of the files optimize writes (1 MiB to 64 GiB; default: the table's
    /// `delta.targetFileSize`, else deltalake's 100 MiB). Lookups cost the same whatever the
    /// size of the file that holds a trace; larger files mean fewer files in the log.
    pub fn target_file_size(mut self, bytes: u64) -> Self {
        self.target_file_size = Some(bytes);
        self
    }
}

impl<'a> IntoFuture for OptimizeBuilder<'a> {
    type Output = Result<OptimizeOutcome>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.table.run_optimize(self.target_file_size))
    }
}

/// `table.vacuum().retention(..).dry_run(..)`: see [`TraceTable::vacuum`].
#[derive(Debug)]
#[must_use = "a vacuum does nothing until awaited"]
pub struct VacuumBuilder<'a> {
    table: &'a TraceTable,
    retention: Duration,
    dry_run: bool,
}

impl VacuumBuilder<'_> {
    /// Keep files removed from the table less than `retention` ago (1 hour to 100 years;
    /// default 7 days): a query that started before they were removed may still read them.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Like [`VacuumBuilder::retention`], in hours.
    pub fn retention_hours(mut self, hours: u64) -> Self {
        self.retention = Duration::from_secs(hours.saturating_mul(3_600));
        if hours > MAX_VACUUM_RETENTION_HOURS {
            // Kept out of range (and so refused) even where the product saturates.
            self.retention = Duration::MAX;
        }
        self
    }

    /// List what would be deleted without deleting it.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

impl<'a> IntoFuture for VacuumBuilder<'a> {
    type Output = Result<VacuumOutcome>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.table.run_vacuum(self.retention, self.dry_run))
    }
}

/// `table.expire().older_than_days(n)`: see [`TraceTable::expire`].
#[derive(Debug)]
#[must_use = "an expiry does nothing until awaited"]
pub struct ExpireBuilder<'a> {
    table: &'a TraceTable,
    older_than_days: Option<u64>,
    now_unix_nano: Option<i64>,
}

impl ExpireBuilder<'_> {
    /// Drop the days (UTC) entirely older than this many days before now (0 to 36,500;
    /// required).
    pub fn older_than_days(mut self, days: u64) -> Self {
        self.older_than_days = Some(days);
        self
    }

    /// The time expiry counts from, in unix nanoseconds (default: the clock).
    pub fn now_unix_nano(mut self, now: i64) -> Self {
        self.now_unix_nano = Some(now);
        self
    }
}

impl<'a> IntoFuture for ExpireBuilder<'a> {
    type Output = Result<ExpireOutcome>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let days = self.older_than_days.ok_or_else(|| {
                TraceLakeError::InvalidArgument(
                    "expire needs older_than_days: table.expire().older_than_days(N)".into(),
                )
            })?;
            let now = match self.now_unix_nano {
                Some(now) => now,
                None => now_unix_nano()?,
            };
            self.table.run_expire(days, now).await
        })
    }
}

/// The clock in unix nanoseconds.
pub(crate) fn now_unix_nano() -> Result<i64> {
    chrono::Utc::now().timestamp_nanos_opt().ok_or_else(|| {
        TraceLakeError::InvalidArgument("the clock is outside the years 1677 to 2262".into())
    })
}

/// The `span_date` before which expiry drops partitions: the day of `now` minus `days`.
pub(crate) fn expiry_cutoff(days: u64, now_unix_nano: i64) -> Result<String> {
    if days > MAX_EXPIRE_DAYS {
        return Err(TraceLakeError::out_of_range(
            "expire older_than_days",
            format!("between 0 and {MAX_EXPIRE_DAYS}"),
            days,
        ));
    }
    let cutoff = (days as i64)
        .checked_mul(DAY_NS)
        .and_then(|age| now_unix_nano.checked_sub(age))
        .ok_or_else(|| {
            TraceLakeError::out_of_range(
                "expire older_than_days",
                "a number of days that, counted back from now, is after the year 1677",
                days,
            )
        })?;
    Ok(crate::schema::span_date(cutoff))
}

const DAY_NS: i64 = 86_400_000_000_000;

/// A summary of the current version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Deletes data files that left the table more than a retention ago (7 days unless
    /// set; at least [`MIN_VACUUM_RETENTION_HOURS`], since a query that started before the
    /// files were removed may still be reading them):
    /// `table.vacuum().retention(Duration::from_secs(24 * 3600)).dry_run(false).await`.
    pub fn vacuum(&self) -> VacuumBuilder<'_> {
        VacuumBuilder {
            table: self,
            retention: Duration::from_secs(DEFAULT_VACUUM_RETENTION_HOURS * 3_600),
            dry_run: false,
        }
    }

    async fn run_vacuum(&self, retention: Duration, dry_run: bool) -> Result<VacuumOutcome> {
        let min = Duration::from_secs(MIN_VACUUM_RETENTION_HOURS * 3_600);
        let max = Duration::from_secs(MAX_VACUUM_RETENTION_HOURS * 3_600);
        if retention < min || retention > max {
            let shown = if retention == Duration::MAX {
                format!("more than {MAX_VACUUM_RETENTION_HOURS} hours")
            } else {
                format!("{:.3} hours", retention.as_secs_f64() / 3_600.0)
            };
            return Err(TraceLakeError::out_of_range(
                "vacuum retention",
                format!(
                    "between {MIN_VACUUM_RETENTION_HOURS} and {MAX_VACUUM_RETENTION_HOURS} hours \
                     (shorter retentions could delete files running queries read)"
                ),
                shown,
            ));
        }
        let retention = chrono::Duration::from_std(retention)
            .map_err(|e| TraceLakeError::InvalidArgument(format!("vacuum retention: {e}")))?;
        let before = self.version();
        let span = tracing::info_span!(
            names::DELTA_VACUUM,
            { names::ATTR_VERSION_BEFORE } = before,
            { names::ATTR_VERSION_AFTER } = field::Empty,
            { names::ATTR_FILES_REMOVED } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        let result = async {
            let table = self.delta_table().await?;
            let (vacuumed, metrics) = table
                .vacuum()
                .with_retention_period(retention)
                .with_enforce_retention_duration(false)
                .with_dry_run(dry_run)
                .await?;
            let version = self
                .advance_to(vacuumed.version().map(|v| v as i64).unwrap_or(-1))
                .await?;
            Ok(VacuumOutcome {
                files_deleted: metrics.files_deleted.len(),
                files: metrics.files_deleted,
                dry_run,
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
    /// `older_than_days` days before now: whole files are removed from the table, nothing is
    /// rewritten. The files stay in storage until vacuum.
    /// `table.expire().older_than_days(14).await`.
    pub fn expire(&self) -> ExpireBuilder<'_> {
        ExpireBuilder {
            table: self,
            older_than_days: None,
            now_unix_nano: None,
        }
    }

    async fn run_expire(&self, older_than_days: u64, now_unix_nano: i64) -> Result<ExpireOutcome> {
        let cutoff = expiry_cutoff(older_than_days, now_unix_nano)?;
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
            let table = self.delta_table().await?;
            let (expired, metrics) = table
                .delete()
                .with_predicate(format!("{} < '{cutoff}'", col::SPAN_DATE))
                .await?;
            let version = self
                .advance_to(expired.version().map(|v| v as i64).unwrap_or(-1))
                .await?;
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
        let table = self.delta_table().await?;
        let version = table.version().map(|v| v as i64).unwrap_or(-1);
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
        let mut stats = TableStats {
            version: snapshot.version(),
            ..Default::default()
        };
        let mut partitions = std::collections::BTreeSet::new();
        for slot in snapshot.state().files.values() {
            let log = &slot.log;
            stats.files += 1;
            stats.bytes += log.size;
            stats.spans += log.num_records.unwrap_or(0);
            if let Some(date) = &log.span_date {
                partitions.insert(date.clone());
            }
            if let Some((min, max)) = log.starts {
                stats.oldest_start_unix_nano =
                    Some(stats.oldest_start_unix_nano.map_or(min, |o| o.min(min)));
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
    fn expiry_cutoffs_never_wrap() {
        let now = 1_714_564_800_000_000_000; // 2024-05-01T12:00Z
        assert_eq!(expiry_cutoff(1, now).unwrap(), "2024-04-30");
        assert_eq!(expiry_cutoff(0, now).unwrap(), "2024-05-01");
        // 100 years back is still a date in the past.
        assert_eq!(expiry_cutoff(MAX_EXPIRE_DAYS, now).unwrap(), "1924-05-26");
        // Once days * 86,400e9 overflowed and wrapped to a cutoff of a few minutes ago.
        let err = expiry_cutoff(213_504, now).unwrap_err().to_string();
        assert!(err.contains("between 0 and 36500"), "{err}");
        assert!(err.contains("213504"), "{err}");
        let err = expiry_cutoff(u64::MAX, now).unwrap_err().to_string();
        assert!(err.contains("between 0 and 36500"), "{err}");
        // A clock near the start of the representable range.
        assert!(expiry_cutoff(36_000, -9_000_000_000_000_000_000).is_err());
    }

    #[test]
    fn only_overlapping_partitions_need_work() {
        assert!(!overlapping(&[r("0", "f")]));
        assert!(!overlapping(&[r("0", "3"), r("4", "7"), r("8", "f")]));
        assert!(overlapping(&[r("0", "8"), r("4", "f")]));
        assert!(overlapping(&[r("0", "3"), None]));
    }
}
