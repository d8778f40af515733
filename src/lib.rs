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
//!
//! # Cargo features
//!
//! The core (the table, the `spans` provider, the SQL functions, TraceQL, observability and
//! [`synth`]) needs no feature. The default features add everything the `tracelake` binary
//! uses; an embedder depends on `tracelake` with `default-features = false` and names only
//! what it calls:
//!
//! - `otlp`: `tracelake::otlp` (OTLP decoding and the HTTP/gRPC receivers);
//! - `query-api`: `tracelake::tempo` (Grafana's Tempo HTTP API and the trace view);
//! - `flight-sql`: `tracelake::flight_sql` (an Arrow Flight SQL endpoint);
//! - `cluster`: `tracelake::distributed` (Apache Ballista);
//! - `cli`: the `tracelake` binary (with `otlp` and `query-api`);
//! - `s3`, `gcs`, `azure` (not default): tables on cloud object stores.

pub mod dedicated;
#[cfg(feature = "cluster")]
pub mod distributed;
pub mod error;
#[cfg(feature = "flight-sql")]
pub mod flight_sql;
pub mod functions;
pub(crate) mod layout;
pub mod observe;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod provider;
mod read;
pub mod schema;
pub mod span;
pub mod store;
pub mod synth;
pub mod table;
#[cfg(feature = "query-api")]
pub mod tempo;
pub mod traceql;

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use error::{Result, TraceLakeError};
pub use observe::TraceLakeMetrics;
pub use provider::TraceTableProvider;
pub use read::lookup_exec::LOOKUP_PREFETCH_BYTES;
pub use span::{AttributeValue, Event, Link, Span, SpanKind, StatusCode};
pub use table::{AppendOutcome, DEFAULT_LOOKUP_CACHE_BYTES, TableOptions, TraceTable};

/// How [`TraceLake::register_with`] registers a lake into a `SessionContext`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Registration {
    /// The table name (default `spans`). The table functions are named for it:
    /// `trace_tree`, `trace_summaries`, `service_graph` for `spans`,
    /// `<name>_trace_tree`, ... otherwise.
    pub table_name: String,
    /// Refuse `INSERT INTO` (default: no). For contexts that run SQL their users type; see
    /// docs/operations.md for DataFusion's `SQLOptions`, which refuse DDL and DML wholesale.
    pub read_only: bool,
}

impl Default for Registration {
    fn default() -> Self {
        Self {
            table_name: schema::SPANS_TABLE.to_string(),
            read_only: false,
        }
    }
}

impl Registration {
    /// The table name (a lowercase SQL identifier).
    pub fn table_name(mut self, name: impl Into<String>) -> Self {
        self.table_name = name.into();
        self
    }

    /// Refuse `INSERT INTO`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }
}

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
    /// Fails, registering nothing, if `ctx` already has a table `spans` or a `trace_tree`,
    /// `trace_summaries` or `service_graph` function (another lake, say: register it under
    /// another name with [`TraceLake::register_with`]).
    pub fn register(&self, ctx: &SessionContext) -> Result<()> {
        self.register_with(ctx, &Registration::default())
    }

    /// Registers this lake into `ctx` as `registration` says: under which table name (the
    /// table functions are then named for it: `<name>_trace_tree`, ...), and whether `INSERT`
    /// is refused. Fails, registering nothing, if the name is not a plain lowercase SQL
    /// identifier or if the table or one of its functions is already registered.
    pub fn register_with(&self, ctx: &SessionContext, registration: &Registration) -> Result<()> {
        let name = registration.table_name.as_str();
        let plain = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(TraceLakeError::InvalidArgument(format!(
                "table name {name:?} is not a plain SQL identifier: use lowercase letters, \
                 digits and underscores, starting with a letter or underscore"
            )));
        }
        if ctx.table_exist(name)? {
            return Err(TraceLakeError::InvalidArgument(format!(
                "this context already has a table named {name:?}; register this lake under \
                 another name with TraceLake::register_with(ctx, \
                 &Registration::default().table_name(\"...\"))"
            )));
        }
        let state = ctx.state();
        let existing = state.table_functions();
        for base in functions::TABLE_FUNCTIONS {
            let function = functions::table_function_name(name, base);
            if existing.contains_key(&function) {
                return Err(TraceLakeError::InvalidArgument(format!(
                    "this context already has a table function named {function:?} (bound to \
                     another trace table); register this lake under another table name"
                )));
            }
        }
        let provider = if registration.read_only {
            TraceTableProvider::read_only(self.table.clone())
        } else {
            self.provider()
        };
        ctx.register_table(name, Arc::new(provider))?;
        functions::register(ctx, &self.table, name);
        Ok(())
    }

    /// A new `SessionContext` with `spans` and every tracelake function registered.
    /// The context is instrumented ([`observe::instrument_session_state`]).
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
    /// on transient failures (at most once each, see [`table::SpanAppender`]), and flushed on
    /// `shutdown`. Fails if a setting is out of range or outside a tokio runtime.
    pub fn appender(&self, config: table::AppenderConfig) -> Result<table::SpanAppender> {
        table::SpanAppender::new(self.table.clone(), config)
    }

    /// Refreshes the table every `interval` (1 ms to 1 day) in the background (another
    /// process's commits become visible without calling `refresh()`); stops when the handle
    /// is dropped. Fails outside a tokio runtime.
    pub fn refresh_every(&self, interval: std::time::Duration) -> Result<table::BackgroundTask> {
        table::background::refresh_every(self.table.clone(), interval)
    }

    /// Runs maintenance (expiry, optimize, vacuum, checkpoint) on a schedule in the
    /// background; stops when the handle is dropped. Fails if a setting is out of range or
    /// outside a tokio runtime.
    pub fn maintain_every(
        &self,
        schedule: table::MaintenanceSchedule,
    ) -> Result<table::BackgroundTask> {
        table::background::maintain_every(self.table.clone(), schedule)
    }

    /// The version queries currently see.
    pub fn version(&self) -> i64 {
        self.table.version()
    }

    /// Compacts the partitions whose files overlap in trace id: `lake.optimize().await`.
    /// See [`TraceTable::optimize`].
    pub fn optimize(&self) -> table::OptimizeBuilder<'_> {
        self.table.optimize()
    }

    /// Deletes files removed from the table more than a retention ago:
    /// `lake.vacuum().retention(Duration::from_secs(7 * 86_400)).dry_run(true).await`.
    /// See [`TraceTable::vacuum`].
    pub fn vacuum(&self) -> table::VacuumBuilder<'_> {
        self.table.vacuum()
    }

    /// Drops the days older than a number of days: `lake.expire().older_than_days(14).await`.
    /// See [`TraceTable::expire`].
    pub fn expire(&self) -> table::ExpireBuilder<'_> {
        self.table.expire()
    }

    /// Waits for background work of this lake's table (a checkpoint being written): call it
    /// before a short-lived process exits.
    pub async fn wait_for_background_work(&self) {
        self.table.wait_for_background_work().await
    }

    /// Writes a checkpoint of the current version and cleans up old log files.
    pub async fn checkpoint(&self) -> Result<i64> {
        self.table.checkpoint().await
    }

    /// Version, files, spans, bytes, partitions and time range, from the Delta log alone.
    pub fn stats(&self) -> Result<table::TableStats> {
        self.table.stats()
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
