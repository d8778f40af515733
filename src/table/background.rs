//! Background tasks: a refresh tick for readers, and scheduled maintenance. Each runs on the
//! tokio runtime until its [`BackgroundTask`] is stopped or dropped; errors are logged (as
//! `tracing` errors) and the next tick tries again.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::TraceTable;

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

/// Refreshes `table` every `interval` (each refresh installs the newest version).
pub fn refresh_every(table: Arc<TraceTable>, interval: Duration) -> BackgroundTask {
    let handle = tokio::spawn(async move {
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
    BackgroundTask { handle }
}

/// What scheduled maintenance does on each run, in this order.
#[derive(Debug, Clone)]
pub struct MaintenanceSchedule {
    /// Time between runs.
    pub interval: Duration,
    /// Drop partitions older than this many days.
    pub expire_older_than_days: Option<u64>,
    /// Compact partitions whose files overlap in trace id.
    pub optimize: bool,
    /// Delete files removed more than this many hours ago (at least 1).
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

/// Runs one round of `schedule` on `table`, logging and skipping failed steps.
pub async fn run_maintenance(table: &TraceTable, schedule: &MaintenanceSchedule) {
    if let Some(days) = schedule.expire_older_than_days {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        if let Err(e) = table.expire(days, now).await {
            tracing::error!(error = %e, "scheduled expiry failed");
        }
    }
    if schedule.optimize
        && let Err(e) = table.optimize().await
    {
        tracing::error!(error = %e, "scheduled optimize failed");
    }
    if let Some(hours) = schedule.vacuum_retention_hours
        && let Err(e) = table.vacuum(hours).await
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
pub fn maintain_every(table: Arc<TraceTable>, schedule: MaintenanceSchedule) -> BackgroundTask {
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(schedule.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            run_maintenance(&table, &schedule).await;
        }
    });
    BackgroundTask { handle }
}
