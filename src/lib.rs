//! tracelake stores OpenTelemetry trace spans in a Delta Lake table on any object store and
//! makes them queryable from any Apache DataFusion `SessionContext`.
//!
//! ```no_run
//! # async fn demo() -> tracelake::Result<()> {
//! use datafusion::prelude::SessionContext;
//!
//! let lake = tracelake::TraceLake::open_or_create("./tracelake-data").await?;
//! let ctx = SessionContext::new();
//! lake.register(&ctx)?; // `spans` and every tracelake function
//! ctx.sql("SELECT service_name, count(*) FROM spans GROUP BY 1").await?.show().await?;
//! # Ok(()) }
//! ```

pub mod error;
pub mod functions;
pub mod observe;
pub mod provider;
mod read;
pub mod schema;
pub mod span;
pub mod store;
pub mod synth;
pub mod table;

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use error::{Result, TraceLakeError};
pub use observe::TraceLakeMetrics;
pub use provider::TraceTableProvider;
pub use span::{AttributeValue, Event, Link, Span, SpanKind, StatusCode};
pub use table::{AppendOutcome, TableOptions, TraceTable};

/// A trace table and everything needed to query it with DataFusion.
///
/// Cloning is cheap; clones share the table and its current snapshot.
#[derive(Debug, Clone)]
pub struct TraceLake {
    table: Arc<TraceTable>,
    metrics: TraceLakeMetrics,
}

impl TraceLake {
    /// Opens the trace table at `location` (a local path, `file://`, `memory://`, or with
    /// cargo features `s3://`, `gs://`, `az://`). Fails if it is not a trace table.
    pub async fn open(location: &str) -> Result<Self> {
        Self::open_with_options(location, &TableOptions::default()).await
    }

    /// Like [`TraceLake::open`], with options: object-store settings (credentials, region,
    /// endpoint) and the metrics to report into.
    pub async fn open_with_options(location: &str, options: &TableOptions) -> Result<Self> {
        Ok(Self::from_table(
            TraceTable::open(location, options).await?,
            options,
        ))
    }

    /// Creates an empty trace table at `location`. Fails if a Delta table is already there.
    pub async fn create(location: &str) -> Result<Self> {
        Self::create_with_options(location, &TableOptions::default()).await
    }

    /// Like [`TraceLake::create`], with options.
    pub async fn create_with_options(location: &str, options: &TableOptions) -> Result<Self> {
        Ok(Self::from_table(
            TraceTable::create(location, options).await?,
            options,
        ))
    }

    /// Opens the trace table at `location`, creating it when there is none.
    pub async fn open_or_create(location: &str) -> Result<Self> {
        Self::open_or_create_with_options(location, &TableOptions::default()).await
    }

    /// Like [`TraceLake::open_or_create`], with object-store options.
    pub async fn open_or_create_with_options(
        location: &str,
        options: &TableOptions,
    ) -> Result<Self> {
        Ok(Self::from_table(
            TraceTable::open_or_create(location, options).await?,
            options,
        ))
    }

    fn from_table(table: TraceTable, options: &TableOptions) -> Self {
        Self {
            table: Arc::new(table),
            metrics: options.metrics.clone(),
        }
    }

    /// The metrics this lake's object stores report into. Register them into your own
    /// Prometheus registry with [`TraceLakeMetrics::register`].
    pub fn metrics(&self) -> &TraceLakeMetrics {
        &self.metrics
    }

    /// The underlying table.
    pub fn table(&self) -> &Arc<TraceTable> {
        &self.table
    }

    /// The `spans` table provider. It always serves the newest installed snapshot.
    pub fn provider(&self) -> TraceTableProvider {
        TraceTableProvider::new(self.table.clone())
    }

    /// Registers `spans` and every tracelake function into `ctx`. Register once: later
    /// appends, `INSERT`s and refreshes are visible to the next query without re-registering.
    pub fn register(&self, ctx: &SessionContext) -> Result<()> {
        ctx.register_table(schema::SPANS_TABLE, Arc::new(self.provider()))?;
        functions::register(ctx, &self.table);
        Ok(())
    }

    /// A new `SessionContext` with `spans` and every tracelake function registered.
    pub fn session_context(&self) -> Result<SessionContext> {
        self.session_context_with_config(SessionConfig::new())
    }

    /// Like [`TraceLake::session_context`], with a DataFusion configuration.
    /// The context is instrumented ([`observe::instrument_session_state`]): every query emits
    /// `df.logical.build`, `df.physical.plan` and `df.collect` spans.
    pub fn session_context_with_config(&self, config: SessionConfig) -> Result<SessionContext> {
        let ctx = observe::instrumented_context(config);
        self.register(&ctx)?;
        Ok(ctx)
    }

    /// Appends spans as one Delta commit.
    pub async fn append_spans(&self, spans: &[Span]) -> Result<AppendOutcome> {
        self.table.append_spans(spans).await
    }

    /// Appends Arrow batches (columns named as in `spans`) as one Delta commit.
    pub async fn append_batches(&self, batches: &[RecordBatch]) -> Result<AppendOutcome> {
        self.table.append_batches(batches).await
    }

    /// Reads new commits from storage and installs the newest version; returns it.
    pub async fn refresh(&self) -> Result<i64> {
        self.table.refresh().await
    }

    /// A buffered appender: spans are checked on `append`, committed by size or time, retried
    /// on failure, and flushed on `shutdown`.
    pub fn appender(&self, config: table::AppenderConfig) -> table::SpanAppender {
        table::SpanAppender::new(self.table.clone(), config)
    }

    /// Refreshes the table every `interval` in the background (another process's commits
    /// become visible without calling `refresh()`); stops when the handle is dropped.
    pub fn refresh_every(&self, interval: std::time::Duration) -> table::BackgroundTask {
        table::background::refresh_every(self.table.clone(), interval)
    }

    /// Runs maintenance (expiry, optimize, vacuum, checkpoint) on a schedule in the
    /// background; stops when the handle is dropped.
    pub fn maintain_every(&self, schedule: table::MaintenanceSchedule) -> table::BackgroundTask {
        table::background::maintain_every(self.table.clone(), schedule)
    }

    /// The version queries currently see.
    pub fn version(&self) -> i64 {
        self.table.version()
    }
}

/// Not part of the API: the internals `examples/phases.rs` times phase by phase (validation,
/// the commit-wide sort, the writer properties). They may change in any release.
#[doc(hidden)]
pub mod __internals {
    pub use crate::table::ingest::{sort_for_storage, to_storage};

    /// The writer properties of every data file tracelake writes.
    pub fn writer_properties() -> parquet::file::properties::WriterProperties {
        crate::table::writer_properties()
    }
}

/// The README's Rust examples compile as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
