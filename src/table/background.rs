//! Background tasks: a refresh tick for readers, and scheduled maintenance. Each runs on the
//! tokio runtime until its [`BackgroundTask`] is stopped or dropped; errors are logged (as
//! `tracing` errors) and the next tick tries again.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::TraceTable;
use super::appender::{check_duration, check_range};
use super::maintenance::{MAX_EXPIRE_DAYS, MAX_VACUUM_RETENTION_HOURS, MIN_VACUUM_RETENTION_HOURS};
use crate::error::{Result, TraceLakeError};

/// A running background task; stops when dropped.
#[derive(Debug)]
pub struct BackgroundTask {
    handle: JoinHandle<()>,
}

impl BackgroundTask {
    /// Stops the task (an operation in progress is abandoned between Delta commits).
    pub fn stop(self) {
        self.handle.abort();
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The shortest interval of a background refresh.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(1);
/// The longest interval of a background task.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
/// The shortest interval of scheduled maintenance.
pub const MIN_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

fn runtime(what: &'static str) -> Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|_| TraceLakeError::NoRuntime(what))
}

/// Refreshes `table` every `interval` (each refresh installs the newest version).
pub fn refresh_every(table: Arc<TraceTable>, interval: Duration) -> Result<BackgroundTask> {
    check_duration(
        "refresh interval",
        interval,
        MIN_REFRESH_INTERVAL,
        MAX_INTERVAL,
    )?;
    let handle = runtime("refresh_every")?.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = table.refresh().await {
                tracing::error!(error = %e, "background refresh failed");
            }
        }
    });
    Ok(BackgroundTask { handle })
}

/// What scheduled maintenance does on each run, in this order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MaintenanceSchedule {
    /// Time between runs (1 second to 1 day; default 15 minutes).
    pub interval: Duration,
    /// Drop partitions older than this many days (0 to 36,500; default: never).
    pub expire_older_than_days: Option<u64>,
    /// Compact partitions whose files overlap in trace id (default: yes).
    pub optimize: bool,
    /// Delete files removed more than this many hours ago (1 to 876,000; default 168).
    pub vacuum_retention_hours: Option<u64>,
    /// Write a checkpoint and clean up old log files.
    pub checkpoint: bool,
}

impl Default for MaintenanceSchedule {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15 * 60),
            expire_older_than_days: None,
            optimize: true,
            vacuum_retention_hours: Some(168),
            checkpoint: true,
        }
    }
}

impl MaintenanceSchedule {
    /// Time between runs.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Drop partitions older than this many days (`None`: never).
    pub fn with_expire_older_than_days(mut self, days: Option<u64>) -> Self {
        self.expire_older_than_days = days;
        self
    }

    /// Compact partitions whose files overlap in trace id.
    pub fn with_optimize(mut self, optimize: bool) -> Self {
        self.optimize = optimize;
        self
    }

    /// Delete files removed more than this many hours ago (`None`: never).
    pub fn with_vacuum_retention_hours(mut self, hours: Option<u64>) -> Self {
        self.vacuum_retention_hours = hours;
        self
    }

    /// Write a checkpoint and clean up old log files.
    pub fn with_checkpoint(mut self, checkpoint: bool) -> Self {
        self.checkpoint = checkpoint;
        self
    }

    /// Checks every setting against its accepted range.
    pub fn validate(&self) -> Result<()> {
        check_duration(
            "maintenance interval",
            self.interval,
            MIN_MAINTENANCE_INTERVAL,
            MAX_INTERVAL,
        )?;
        if let Some(days) = self.expire_older_than_days {
            check_range(
                "maintenance expire_older_than_days",
                days as u128,
                0,
                MAX_EXPIRE_DAYS as u128,
            )?;
        }
        if let Some(hours) = self.vacuum_retention_hours {
            check_range(
                "maintenance vacuum_retention_hours",
                hours as u128,
                MIN_VACUUM_RETENTION_HOURS as u128,
                MAX_VACUUM_RETENTION_HOURS as u128,
            )?;
        }
        Ok(())
    }
}

/// Runs one round of `schedule` on `table`, logging and skipping failed steps.
pub async fn run_maintenance(table: &TraceTable, schedule: &MaintenanceSchedule) {
    if let Some(days) = schedule.expire_older_than_days
        && let Err(e) = table.expire().older_than_days(days).await
    {
        tracing::error!(error = %e, "scheduled expiry failed");
    }
    if schedule.optimize
        && let Err(e) = table.optimize().await
    {
        tracing::error!(error = %e, "scheduled optimize failed");
    }
    if let Some(hours) = schedule.vacuum_retention_hours
        && let Err(e) = table.vacuum().retention_hours(hours).await
    {
        tracing::error!(error = %e, "scheduled vacuum failed");
    }
    if schedule.checkpoint
        && let Err(e) = table.checkpoint().await
    {
        tracing::error!(error = %e, "scheduled checkpoint failed");
    }
}

/// Runs `schedule` on `table` every `schedule.interval`.
pub fn maintain_every(
    table: Arc<TraceTable>,
    schedule: MaintenanceSchedule,
) -> Result<BackgroundTask> {
    schedule.validate()?;
    let handle = runtime("maintain_every")?.spawn(async move {
        let mut tick = tokio::time::interval(schedule.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            run_maintenance(&table, &schedule).await;
        }
    });
    Ok(BackgroundTask { handle })
}
