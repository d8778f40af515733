//! Scale-out on [Apache Ballista](https://datafusion.apache.org/ballista/): the same SQL over
//! the same lake, planned by a Ballista scheduler and run by its executors.
//!
//! - [`remote_context`]: a `SessionContext` whose queries run on a running cluster
//!   (`tracelake scheduler` and `tracelake executor` processes), with the lake registered as in
//!   one process: `spans`, the table functions and the UDFs.
//! - [`standalone_context`]: the same with an in-process cluster (a scheduler and executors
//!   on loopback, inside this process), for tests and for trying it out.
//! - [`run_scheduler`] and [`run_executor`]: the node processes `tracelake scheduler` and
//!   `tracelake executor` run.
//!
//! What runs where: the client parses and plans the statement logically (table functions and
//! UDFs resolve there) and sends the plan to the scheduler; the scheduler opens the lake the
//! plan names (by location: [`Lakes`]), refreshes it to its newest version, plans the scans
//! physically (the trace-id index prunes files and row groups there) and splits the plan
//! into stages; executors run the stages, reading the data files from the object store
//! themselves. An `INSERT` is committed by the executor that runs its sink. Every node needs
//! the object-store credentials of the tables it serves (`--storage-option` or the
//! `AWS_*`/`GOOGLE_*`/`AZURE_*` environment variables). See docs/distributed.md.
//!
//! How tracelake's plan pieces travel: [`TraceLogicalCodec`] and [`TracePhysicalCodec`].

mod codec;
mod errors;
mod lakes;

use std::net::SocketAddr;
use std::sync::Arc;

use ballista::prelude::SessionConfigExt;
use ballista_core::extension::SessionStateExt;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use codec::{TraceLogicalCodec, TracePhysicalCodec};
use lakes::LakeStores;
pub use lakes::Lakes;

use crate::error::{Result, TraceLakeError};
use crate::table::TableOptions;
use crate::{TraceLake, functions, observe};

/// The scheduler port Ballista uses when a `df://` URL names none.
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

fn cluster_error(what: &str, e: impl std::fmt::Display) -> TraceLakeError {
    TraceLakeError::Cluster(format!("{what}: {e}"))
}

/// `config` upgraded for Ballista, with tracelake's codecs (wrapping Ballista's), decoded
/// tables opened from `lakes`.
pub fn with_codecs(config: SessionConfig, lakes: &Arc<Lakes>) -> SessionConfig {
    let (logical, physical) = codecs(lakes);
    config
        .upgrade_for_ballista()
        .with_ballista_logical_extension_codec(logical)
        .with_ballista_physical_extension_codec(physical)
}

/// tracelake's codecs around Ballista's, decoded tables opened from `lakes`.
fn codecs(
    lakes: &Arc<Lakes>,
) -> (
    Arc<dyn datafusion_proto::logical_plan::LogicalExtensionCodec>,
    Arc<dyn datafusion_proto::physical_plan::PhysicalExtensionCodec>,
) {
    (
        Arc::new(TraceLogicalCodec::new(
            Arc::new(BallistaLogicalExtensionCodec::default()),
            lakes.clone(),
        )),
        Arc::new(TracePhysicalCodec::new(
            Arc::new(BallistaPhysicalExtensionCodec::default()),
            lakes.clone(),
        )),
    )
}

/// The session state of a scheduler or executor: `config` with tracelake's codecs,
/// tracelake's UDFs, planner instrumentation (the scheduler's physical planning emits
/// `df.physical.plan`, each executor task `df.collect`), and an object-store registry that
/// resolves the stores the scans name ([`Lakes`]).
pub fn node_session_state(lakes: &Arc<Lakes>, config: SessionConfig) -> Result<SessionState> {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(LakeStores::new(lakes.clone())))
        .build_arc()?;
    let builder = SessionStateBuilder::new()
        .with_config(with_codecs(config, lakes))
        .with_runtime_env(runtime)
        .with_default_features();
    let mut state = observe::instrument_session_state(builder).build();
    for udf in functions::udfs::all() {
        state.register_udf(Arc::new(udf))?;
    }
    Ok(state)
}

/// A client context on a Ballista scheduler at `scheduler_url` (`http://host:port`), with
/// `lake` registered.
fn client_context(
    lake: &TraceLake,
    lakes: &Arc<Lakes>,
    scheduler_url: String,
    config: SessionConfig,
) -> Result<SessionContext> {
    let base = SessionStateBuilder::new()
        .with_config(with_codecs(config, lakes))
        .with_default_features()
        .build();
    let state = base.upgrade_for_ballista(scheduler_url)?;
    let planner = Arc::new(ClusterPlanner {
        ballista: state.query_planner().clone(),
    });
    let builder = SessionStateBuilder::new_from_existing(state).with_query_planner(planner);
    let state = observe::instrument_session_state(builder).build();
    let ctx = SessionContext::new_with_state(state);
    lake.register(&ctx)?;
    Ok(ctx)
}

/// The client's query planner: Ballista's (its errors made readable, see [`errors`]), except
/// for statements that read no data and that Ballista cannot ship (`DESCRIBE`), which are
/// answered from the client's catalog.
#[derive(Debug)]
struct ClusterPlanner {
    ballista: Arc<dyn QueryPlanner + Send + Sync>,
}

#[async_trait::async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if matches!(logical_plan, LogicalPlan::DescribeTable(_)) {
            DefaultPhysicalPlanner::default()
                .create_physical_plan(logical_plan, session_state)
                .await
        } else {
            let plan = self
                .ballista
                .create_physical_plan(logical_plan, session_state)
                .await?;
            Ok(Arc::new(errors::ClusterErrorsExec::new(plan)))
        }
    }
}

/// `http://host:port` of a `df://host[:port]` URL (the form Ballista's clients take).
fn scheduler_http_url(url: &str) -> Result<String> {
    let parsed = url::Url::parse(url).map_err(|e| {
        TraceLakeError::InvalidArgument(format!(
            "invalid scheduler URL {url:?} (expected df://HOST:PORT): {e}"
        ))
    })?;
    if parsed.scheme() != "df" {
        return Err(TraceLakeError::InvalidArgument(format!(
            "invalid scheduler URL {url:?}: expected df://HOST:PORT"
        )));
    }
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
        TraceLakeError::InvalidArgument(format!(
            "invalid scheduler URL {url:?}: no host (expected df://HOST:PORT)"
        ))
    })?;
    let port = parsed.port().unwrap_or(DEFAULT_SCHEDULER_PORT);
    Ok(format!("http://{host}:{port}"))
}

/// A `SessionContext` whose queries run on the Ballista cluster whose scheduler is at
/// `scheduler` (`df://HOST:PORT`), with `lake` registered as [`TraceLake::register`] does.
/// The cluster's nodes must reach the lake's location with their own credentials. Queries
/// return the same rows as in one process (`EXPLAIN` shows the plan without Ballista's stages).
///
/// Fails if the URL is not `df://HOST[:PORT]` or the scheduler cannot be reached.
pub async fn remote_context(
    lake: &TraceLake,
    scheduler: &str,
    config: SessionConfig,
) -> Result<SessionContext> {
    let url = scheduler_http_url(scheduler)?;
    SchedulerGrpcClient::connect(url.clone())
        .await
        .map_err(|e| cluster_error(&format!("cannot reach the scheduler at {scheduler}"), e))?;
    client_context(lake, &Lakes::new(TableOptions::default()), url, config)
}

/// What [`standalone_context`] starts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StandaloneOptions {
    /// Executors started (1 to 16; default 1).
    pub executors: usize,
    /// Task slots of each executor (1 to 256; default: the session's `target_partitions`).
    pub slots: Option<usize>,
    /// How the in-process scheduler and executors open tables (default: defaults).
    pub table_options: TableOptions,
}

impl Default for StandaloneOptions {
    fn default() -> Self {
        Self {
            executors: 1,
            slots: None,
            table_options: TableOptions::default(),
        }
    }
}

impl StandaloneOptions {
    /// How many executors to start.
    pub fn executors(mut self, executors: usize) -> Self {
        self.executors = executors;
        self
    }

    /// Task slots of each executor.
    pub fn slots(mut self, slots: usize) -> Self {
        self.slots = Some(slots);
        self
    }
}

/// Starts a Ballista cluster inside this process (a scheduler and `options.executors`
/// executors on loopback, serving tracelake's plans) and returns a context whose queries run
/// on it, with `lake` registered. The cluster lives as long as the process.
pub async fn standalone_context(
    lake: &TraceLake,
    config: SessionConfig,
    options: StandaloneOptions,
) -> Result<SessionContext> {
    crate::table::appender::check_range("executors", options.executors as u128, 1, 16)?;
    let slots = options.slots.unwrap_or(config.target_partitions());
    crate::table::appender::check_range("slots", slots as u128, 1, 256)?;
    let lakes = Lakes::new(options.table_options.clone());
    let node_state = node_session_state(&lakes, config.clone())?;
    let addr = ballista_scheduler::standalone::new_standalone_scheduler_from_state(&node_state)
        .await
        .map_err(|e| cluster_error("cannot start the in-process scheduler", e))?;
    let url = format!("http://localhost:{}", addr.port());
    for _ in 0..options.executors {
        let scheduler = connect_with_retry(&url).await?;
        ballista_executor::new_standalone_executor_from_state(scheduler, slots, &node_state)
            .await
            .map_err(|e| cluster_error("cannot start an in-process executor", e))?;
    }
    client_context(lake, &lakes, url, config)
}

async fn connect_with_retry(url: &str) -> Result<SchedulerGrpcClient<tonic::transport::Channel>> {
    let mut attempts = 0;
    loop {
        match SchedulerGrpcClient::connect(url.to_string()).await {
            Ok(client) => return Ok(client),
            Err(e) if attempts >= 50 => {
                return Err(cluster_error(
                    &format!("cannot reach the scheduler at {url}"),
                    e,
                ));
            }
            Err(_) => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs a Ballista scheduler serving tracelake's plans on `bind` until the process ends.
/// Tables named by the plans it receives are opened with `options` (credentials, caches,
/// metrics).
pub async fn run_scheduler(bind: SocketAddr, options: TableOptions) -> Result<()> {
    let lakes = Lakes::new(options);
    let (logical, physical) = codecs(&lakes);
    let builder_lakes = lakes.clone();
    let producer_lakes = lakes.clone();
    let config = ballista_scheduler::config::SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
        override_session_builder: Some(Arc::new(move |config: SessionConfig| {
            node_session_state(&builder_lakes, config)
                .map_err(datafusion::error::DataFusionError::from)
        })),
        override_config_producer: Some(Arc::new(move || {
            with_codecs(SessionConfig::new(), &producer_lakes)
        })),
        override_logical_codec: Some(logical),
        override_physical_codec: Some(physical),
        ..Default::default()
    };
    let cluster = ballista_scheduler::cluster::BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| cluster_error("cannot set up the scheduler", e))?;
    ballista_scheduler::scheduler_process::start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| cluster_error(&format!("scheduler on {bind}"), e))
}

/// Where [`run_executor`] listens and which scheduler it serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExecutorOptions {
    /// The scheduler's host and port.
    pub scheduler: (String, u16),
    /// The address of the executor's Arrow Flight service (where other executors fetch its
    /// shuffle output); its gRPC service listens on the next port.
    pub bind: SocketAddr,
    /// Concurrent tasks (default: the machine's cores).
    pub slots: Option<usize>,
    /// Where shuffle files are written (default: a temporary directory).
    pub work_dir: Option<String>,
}

impl ExecutorOptions {
    /// An executor on `bind` serving the scheduler at `host:port`.
    pub fn new(scheduler_host: impl Into<String>, scheduler_port: u16, bind: SocketAddr) -> Self {
        Self {
            scheduler: (scheduler_host.into(), scheduler_port),
            bind,
            slots: None,
            work_dir: None,
        }
    }
}

/// Runs a Ballista executor serving tracelake's plans until the process ends. Tables are
/// opened (for `INSERT`s) and data files read with `table_options`.
pub async fn run_executor(options: ExecutorOptions, table_options: TableOptions) -> Result<()> {
    let lakes = Lakes::new(table_options);
    let (logical, physical) = codecs(&lakes);
    let state = node_session_state(&lakes, SessionConfig::new())?;
    let runtime = state.runtime_env().clone();
    let config_lakes = lakes.clone();
    let grpc_port = options.bind.port().checked_add(1).ok_or_else(|| {
        TraceLakeError::InvalidArgument(format!(
            "executor port {} leaves no port for its gRPC service (the next one)",
            options.bind.port()
        ))
    })?;
    let mut config = ballista_executor::executor_process::ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        external_host: Some(options.bind.ip().to_string()),
        port: options.bind.port(),
        grpc_port,
        scheduler_host: options.scheduler.0.clone(),
        scheduler_port: options.scheduler.1,
        scheduler_connect_timeout_seconds: 30,
        work_dir: options.work_dir.clone(),
        override_logical_codec: Some(logical),
        override_physical_codec: Some(physical),
        override_function_registry: Some(Arc::new((&state).into())),
        override_runtime_producer: Some(Arc::new(move |_| Ok(runtime.clone()))),
        override_config_producer: Some(Arc::new(move || {
            with_codecs(SessionConfig::new(), &config_lakes)
        })),
        ..Default::default()
    };
    if let Some(slots) = options.slots {
        crate::table::appender::check_range("executor slots", slots as u128, 1, 1024)?;
        config.vcores = slots;
    }
    ballista_executor::executor_process::start_executor_process(Arc::new(config))
        .await
        .map_err(|e| cluster_error(&format!("executor on {}", options.bind), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_urls_are_checked() {
        assert_eq!(
            scheduler_http_url("df://localhost:50051").unwrap(),
            "http://localhost:50051"
        );
        assert_eq!(
            scheduler_http_url("df://example").unwrap(),
            "http://example:50050"
        );
        for bad in ["http://localhost:1", "localhost:50050", "df://", "df:///x"] {
            let e = scheduler_http_url(bad).unwrap_err().to_string();
            assert!(e.contains("df://HOST:PORT"), "{bad}: {e}");
        }
    }
}
