//! Table maintenance: incremental optimize (compaction clustered by trace id), vacuum with a
//! retention window (and of orphans), expiry of old partitions, checkpoints, and table
//! statistics.
//!
//! Optimize rewrites only what pays: in each day, the files whose trace-id ranges overlap
//! (several small appends, each covering the whole id space) and runs of adjacent small
//! files. tracelake's own compaction ([`super::compact`]) merges them in bounded memory into
//! files sorted by trace id with disjoint id ranges, so the next run skips them; tables with
//! deletion vectors or features tracelake's writer does not honour take deltalake's Z-order
//! optimize instead. It never holds the commit lock while rewriting: appends go on, and the
//! commit checks that no other commit removed the files it rewrote.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use deltalake::kernel::Action;
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use deltalake::{FilterOp, FilterValue};
use tracing::{Instrument, field};

use super::compact::{Compactor, Input, plan_partition};
pub use super::compact::{DEFAULT_COMPACTION_MEMORY, MIN_COMPACTION_MEMORY};
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
    /// Merge passes run (tracelake's own compaction: one per group of files, more when a
    /// group has more files than the memory budget lets one merge read, or holds an unsorted
    /// file); 0 with deltalake's optimize.
    pub merge_passes: u64,
    /// The most memory the merges reserved at once, bytes (their batches, as DataFusion's
    /// memory pool counts them; never more than the budget).
    pub peak_merge_memory: u64,
}

impl TraceTable {
    /// The partitions whose files overlap in trace-id range and would be rewritten by
    /// [`TraceTable::optimize`].
    pub fn partitions_to_optimize(&self) -> Result<Vec<String>> {
        let target = self.snapshot().state().write.target_file_size.get();
        Ok(self
            .compaction_plan(target)
            .into_iter()
            .map(|(date, _)| date)
            .collect())
    }

    /// The groups of files to rewrite, by partition: in each day, the files whose trace-id
    /// ranges overlap, and runs of adjacent small files (see [`plan_partition`]).
    fn compaction_plan(&self, target_file_size: u64) -> Vec<(String, Vec<Vec<Input>>)> {
        let snapshot = self.snapshot();
        let mut days: BTreeMap<String, Vec<Input>> = BTreeMap::new();
        for slot in snapshot.state().files.values() {
            let log = &slot.log;
            let date = log.span_date.clone().unwrap_or_default();
            days.entry(date).or_default().push(Input {
                path: log.path.clone(),
                size: log.size,
                rows: log.num_records.unwrap_or(0),
                ids: slot.trace_id_range(),
                run: false,
            });
        }
        days.into_iter()
            .filter_map(|(date, files)| {
                let groups = plan_partition(&files, target_file_size);
                (!groups.is_empty()).then_some((date, groups))
            })
            .collect()
    }

    /// tracelake's own compaction (see [`super::compact`]): each day with groups to rewrite
    /// is merged in bounded memory and committed on its own (`dataChange = false`), so a
    /// failure in one day leaves the days already committed.
    async fn run_compaction(
        &self,
        target: Option<std::num::NonZeroU64>,
        memory: u64,
    ) -> Result<OptimizeOutcome> {
        let settings = (*self.snapshot().state().write).clone();
        let target_file_size = target.unwrap_or(settings.target_file_size).get();
        let plan = self.compaction_plan(target_file_size);
        let before = self.version();
        let span = optimize_span(before, plan.len());
        let passes = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let result = async {
            let mut outcome = OptimizeOutcome {
                version: before,
                ..Default::default()
            };
            for (date, groups) in plan {
                let compactor = Compactor {
                    log_store: self.log_store.clone(),
                    settings: settings.clone(),
                    span_date: date.clone(),
                    memory,
                    target_file_size,
                    passes: passes.clone(),
                    peak_reserved: peak.clone(),
                };
                let mut actions: Vec<Action> = Vec::new();
                let mut inputs: Vec<String> = Vec::new();
                let mut runs: Vec<String> = Vec::new();
                let mut written: Vec<String> = Vec::new();
                let mut removed = 0u64;
                let mut added = 0u64;
                let now_ms = chrono::Utc::now().timestamp_millis();
                let mut failed = None;
                for group in groups {
                    inputs.extend(group.iter().map(|f| f.path.clone()));
                    removed += group.len() as u64;
                    actions.extend(super::compact::removes(&group, &date, now_ms));
                    match compactor.merge_group(group).await {
                        Ok(merged) => {
                            runs.extend(merged.runs);
                            for action in &merged.adds {
                                if let Action::Add(add) = action {
                                    written.push(add.path.clone());
                                }
                            }
                            added += merged.adds.len() as u64;
                            actions.extend(merged.adds);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                // The runs are not needed once the day's files are written.
                compactor.delete_paths(&runs).await;
                if let Some(e) = failed {
                    compactor.delete_paths(&written).await;
                    return Err(e);
                }
                let operation = DeltaOperation::Optimize {
                    predicate: Some(format!("{} = '{date}'", col::SPAN_DATE)),
                    target_size: target_file_size as i64,
                };
                let committed = {
                    let _guard = self.commit_lock.lock().await;
                    let snapshot = self.snapshot();
                    self.commit_actions(snapshot.state(), actions, None, operation, &inputs)
                        .instrument(tracing::info_span!(names::DELTA_APPEND_COMMIT))
                        .await
                };
                match committed {
                    Ok(version) => outcome.version = version,
                    Err(e) => {
                        // Not committed (a conflict or a failing store before the log entry
                        // was attempted): the new files are not part of the table.
                        if matches!(e, TraceLakeError::Conflict(_)) {
                            compactor.delete_paths(&written).await;
                        }
                        return Err(e);
                    }
                }
                outcome.partitions.push(date);
                outcome.files_removed += removed;
                outcome.files_added += added;
            }
            outcome.merge_passes = passes.load(Ordering::Relaxed) as u64;
            outcome.peak_merge_memory = peak.load(Ordering::Relaxed) as u64;
            Ok(outcome)
        }
        .instrument(span.clone())
        .await;
        finish_optimize(&span, result)
    }

    /// Compacts the partitions that need it (see [`TraceTable::partitions_to_optimize`]) into
    /// files sorted by trace id, as one commit, and installs the new version:
    /// `table.optimize().await`.
    pub fn optimize(&self) -> OptimizeBuilder<'_> {
        OptimizeBuilder {
            table: self,
            target_file_size: None,
            memory_budget: None,
        }
    }

    async fn run_optimize(
        &self,
        target_file_size: Option<u64>,
        memory: Option<u64>,
    ) -> Result<OptimizeOutcome> {
        let memory = match memory {
            None => DEFAULT_COMPACTION_MEMORY,
            Some(bytes) if bytes >= MIN_COMPACTION_MEMORY => bytes,
            Some(bytes) => {
                return Err(TraceLakeError::InvalidArgument(format!(
                    "optimize memory_budget {bytes} is too small: at least \
                     {MIN_COMPACTION_MEMORY} bytes"
                )));
            }
        };
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
        let snapshot = self.snapshot();
        let state = snapshot.state();
        // tracelake's own compaction reads the data files directly: tables whose files have
        // deletion vectors, or whose features the direct write path does not honour, take
        // deltalake's optimize instead.
        if state.deletion_vectors == 0 && state.write.direct {
            drop(snapshot);
            return self.run_compaction(target, memory).await;
        }
        drop(snapshot);
        let partitions = self.partitions_to_optimize()?;
        let before = self.version();
        let span = optimize_span(before, partitions.len());
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
                ..Default::default()
            })
        }
        .instrument(span.clone())
        .await;
        finish_optimize(&span, result)
    }
}

/// The `delta.optimize` span of a run from version `before` over `partitions` days.
fn optimize_span(before: i64, partitions: usize) -> tracing::Span {
    tracing::info_span!(
        names::DELTA_OPTIMIZE,
        { names::ATTR_VERSION_BEFORE } = before,
        { names::ATTR_VERSION_AFTER } = field::Empty,
        { names::ATTR_PARTITIONS } = partitions,
        { names::ATTR_FILES_ADDED } = field::Empty,
        { names::ATTR_FILES_REMOVED } = field::Empty,
        { names::ATTR_ERROR } = field::Empty,
    )
}

/// Records an optimize's outcome (or error) on its `delta.optimize` span.
fn finish_optimize(
    span: &tracing::Span,
    result: Result<OptimizeOutcome>,
) -> Result<OptimizeOutcome> {
    let outcome = super::record_result(span, result)?;
    span.record(names::ATTR_VERSION_AFTER, outcome.version);
    span.record(names::ATTR_FILES_ADDED, outcome.files_added);
    span.record(names::ATTR_FILES_REMOVED, outcome.files_removed);
    Ok(outcome)
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
    memory_budget: Option<u64>,
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

    /// The memory compaction may hold, in bytes (at least [`MIN_COMPACTION_MEMORY`]; default
    /// [`DEFAULT_COMPACTION_MEMORY`], 256 MiB). It bounds how many files one merge reads at
    /// once (a day with more files is merged in several passes through sorted runs) and the
    /// external sort of files that are not in storage order; it does not grow with the size
    /// of a day.
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }
}

impl<'a> IntoFuture for OptimizeBuilder<'a> {
    type Output = Result<OptimizeOutcome>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(
            self.table
                .run_optimize(self.target_file_size, self.memory_budget),
        )
    }
}

/// `table.vacuum().retention(..).dry_run(..)`: see [`TraceTable::vacuum`].
#[derive(Debug)]
#[must_use = "a vacuum does nothing until awaited"]
pub struct VacuumBuilder<'a> {
    table: &'a TraceTable,
    retention: Duration,
    dry_run: bool,
    orphans: bool,
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

    /// Also delete orphans (default: no): data files in the table's directory that no
    /// version names, such as the files of a writer killed before its commit or a
    /// compaction's runs. As Delta's full vacuum defines it: a file is deleted only when it is
    /// older than the retention and neither the current version nor a file removed within
    /// the retention names it, so a writer still committing and a reader of any version
    /// within the retention keep their files. This lists the table's directory (one request
    /// per page of a thousand files on object stores).
    pub fn orphans(mut self, orphans: bool) -> Self {
        self.orphans = orphans;
        self
    }
}

impl<'a> IntoFuture for VacuumBuilder<'a> {
    type Output = Result<VacuumOutcome>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(
            self.table
                .run_vacuum(self.retention, self.dry_run, self.orphans),
        )
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
            orphans: false,
        }
    }

    async fn run_vacuum(
        &self,
        retention: Duration,
        dry_run: bool,
        orphans: bool,
    ) -> Result<VacuumOutcome> {
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
                .with_mode(if orphans {
                    VacuumMode::Full
                } else {
                    VacuumMode::Lite
                })
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
