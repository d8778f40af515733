//! `tracelake serve`: OTLP/HTTP (`POST /v1/traces`, plus `GET /metrics` and `GET /healthz`)
//! and OTLP/gRPC into one table, answering each request after the commit that holds its
//! spans. Refreshes and maintains the table in the background. SIGTERM or SIGINT: stop
//! accepting, commit what was accepted, answer those requests, exit 0.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tracelake::otlp::{OtlpConfig, OtlpReceiver};
use tracelake::table::{AppenderConfig, MaintenanceSchedule};
use tracelake::{TableOptions, TraceLake};

use super::{CliResult, DEFAULT_TABLE};

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// The table location (created if there is none).
    #[arg(long, default_value = DEFAULT_TABLE)]
    table: String,
    /// OTLP/HTTP address (`POST /v1/traces`), also serving `/metrics` and `/healthz`. Other
    /// interfaces than loopback must be named explicitly (for example 0.0.0.0:4318).
    #[arg(long, default_value = "127.0.0.1:4318")]
    otlp_http: SocketAddr,
    /// OTLP/gRPC address (`TraceService/Export`).
    #[arg(long, default_value = "127.0.0.1:4317")]
    otlp_grpc: SocketAddr,
    /// The Grafana Tempo query API (`/api/traces/<id>`, `/api/search`, tags, metrics; see
    /// docs/grafana.md), read-only. `off` to disable.
    #[arg(long, default_value = "127.0.0.1:3200")]
    query_http: String,
    /// A file holding the bearer token the query API requires (`Authorization: Bearer ...`).
    #[arg(long)]
    query_token_file: Option<std::path::PathBuf>,
    /// Cancel a query-API request running longer than this many seconds (504).
    #[arg(long, default_value_t = 30)]
    query_timeout_seconds: u64,
    /// The longest search or metrics window the query API accepts, in hours.
    #[arg(long, default_value_t = 168)]
    query_max_window_hours: u64,
    /// Arrow Flight SQL address (for ADBC, JDBC and other Arrow clients; see
    /// docs/flight-sql.md), for example 127.0.0.1:50061. Off unless given.
    #[arg(long, value_name = "ADDR")]
    flight_sql: Option<SocketAddr>,
    /// Accept `INSERT INTO spans` over Flight SQL (default: read-only).
    #[arg(long)]
    flight_sql_allow_insert: bool,
    /// A file holding the bearer token Flight SQL calls must carry.
    #[arg(long)]
    flight_sql_token_file: Option<std::path::PathBuf>,
    /// Cancel a Flight SQL query running longer than this many seconds (DEADLINE_EXCEEDED).
    #[arg(long, default_value_t = 300)]
    flight_sql_timeout_seconds: u64,
    /// Flight SQL queries running at once; beyond, new ones get RESOURCE_EXHAUSTED (1 to
    /// 65,536).
    #[arg(long, default_value_t = 16)]
    flight_sql_max_queries: usize,
    /// Run the Flight SQL queries on the Ballista cluster whose scheduler is at
    /// df://HOST:PORT (its nodes must reach the table).
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// Commit when this many spans are waiting (1 to 100,000,000).
    #[arg(long, default_value_t = 100_000)]
    commit_max_spans: usize,
    /// Let requests wait this long (ms) for others to share their commit (0: commit as soon
    /// as the previous commit is done; requests arriving meanwhile share the next one).
    #[arg(long, default_value_t = 0)]
    commit_linger_ms: u64,
    /// Requests that may wait for a commit; beyond, new requests get HTTP 429 / gRPC
    /// UNAVAILABLE with a retry hint (1 to 1,000,000).
    #[arg(long, default_value_t = 1_024)]
    queue_requests: usize,
    /// The largest request body, compressed or not, in bytes (1 KiB to 1 GiB).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Read other writers' commits every this many seconds (0: never).
    #[arg(long, default_value_t = 10)]
    refresh_seconds: u64,
    /// Run maintenance (optimize, vacuum, checkpoint, and expiry if set) every this many
    /// seconds (0: never).
    #[arg(long, default_value_t = 900)]
    maintenance_seconds: u64,
    /// With maintenance: drop days older than this many days.
    #[arg(long)]
    expire_older_than_days: Option<u64>,
    /// With maintenance: delete files removed more than this many hours ago.
    #[arg(long, default_value_t = 168)]
    vacuum_retention_hours: u64,
}

/// What `/healthz` and `/metrics` need.
struct Health {
    ready: AtomicBool,
    lake: TraceLake,
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.lake.metrics().encode_text(),
    )
}

/// Resolves when SIGTERM or SIGINT arrives.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub(crate) async fn run(
    out: &mut dyn Write,
    args: ServeArgs,
    options: &TableOptions,
) -> CliResult<()> {
    let appender_config = AppenderConfig::default()
        .with_max_rows(args.commit_max_spans)
        .with_max_delay(Duration::from_secs(1).max(Duration::from_millis(args.commit_linger_ms)))
        .with_linger(Duration::from_millis(args.commit_linger_ms))
        .with_queue_batches(args.queue_requests);
    appender_config.validate()?;
    let otlp_config = OtlpConfig::default().with_max_body_bytes(args.max_body_bytes);
    otlp_config.validate()?;

    let lake = TraceLake::open_or_create_with_options(&args.table, options).await?;
    let appender = Arc::new(lake.appender(appender_config)?);
    let receiver = Arc::new(OtlpReceiver::new(
        appender.clone(),
        lake.metrics().clone(),
        otlp_config,
    ));
    let _refresh = match args.refresh_seconds {
        0 => None,
        s => Some(lake.refresh_every(Duration::from_secs(s))?),
    };
    let _maintenance = match args.maintenance_seconds {
        0 => None,
        s => Some(
            lake.maintain_every(
                MaintenanceSchedule::default()
                    .with_interval(Duration::from_secs(s))
                    .with_expire_older_than_days(args.expire_older_than_days)
                    .with_vacuum_retention_hours(Some(args.vacuum_retention_hours)),
            )?,
        ),
    };

    let http_listener = tokio::net::TcpListener::bind(args.otlp_http)
        .await
        .map_err(|e| format!("cannot listen on {} (OTLP/HTTP): {e}", args.otlp_http))?;
    let grpc_listener = tokio::net::TcpListener::bind(args.otlp_grpc)
        .await
        .map_err(|e| format!("cannot listen on {} (OTLP/gRPC): {e}", args.otlp_grpc))?;
    let query_listener = match args.query_http.as_str() {
        "off" | "" => None,
        addr => {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|e| format!("--query-http {addr:?} is not an address or `off`: {e}"))?;
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} (query API): {e}"))?,
            )
        }
    };
    let token = read_token(args.query_token_file.as_deref(), "--query-token-file")?;
    if args.flight_sql.is_none() && args.cluster.is_some() {
        return Err("--cluster runs Flight SQL queries: give --flight-sql ADDR too".into());
    }
    let flight_sql = flight_sql_endpoint(&args, &lake).await?;
    let query_config = tracelake::tempo::TempoApiConfig::default()
        .with_bearer_token(token)
        .with_timeout(Duration::from_secs(args.query_timeout_seconds.max(1)))
        .with_max_window(Duration::from_secs(
            args.query_max_window_hours.max(1) * 3600,
        ));
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;

    let health = Arc::new(Health {
        ready: AtomicBool::new(false),
        lake: lake.clone(),
    });
    let app = tracelake::otlp::http::router(receiver.clone()).merge(
        Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .with_state(health.clone()),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let http = tokio::spawn(
        axum::serve(http_listener, app)
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(tracelake::otlp::grpc::service(receiver))
            .serve_with_incoming_shutdown(
                tokio_stream_listener(grpc_listener),
                stopped(stop_rx.clone()),
            ),
    );
    let query = match query_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let app = tracelake::tempo::router(&lake, query_config)?;
            let task = tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .into_future(),
            );
            Some((addr, task))
        }
        None => None,
    };
    let flight = match flight_sql {
        Some(endpoint) => Some(start_flight_sql(endpoint, stopped(stop_rx.clone()))?),
        None => None,
    };
    health.ready.store(true, Ordering::SeqCst);
    writeln!(
        out,
        "tracelake serve: table {} (version {})\n\
         listening otlp-http http://{http_addr}/v1/traces (also /metrics, /healthz)\n\
         listening otlp-grpc {grpc_addr}",
        lake.table().location().url,
        lake.version()
    )?;
    if let Some((addr, _)) = &query {
        writeln!(
            out,
            "listening query-http http://{addr} (Grafana Tempo API; the trace view at http://{addr}/)"
        )?;
    }
    if let Some((addr, _)) = &flight {
        writeln!(
            out,
            "listening flight-sql {addr} (Arrow Flight SQL; {})",
            if args.flight_sql_allow_insert {
                "queries and INSERT"
            } else {
                "read-only"
            }
        )?;
    }
    out.flush()?;

    shutdown_signal().await;
    writeln!(
        out,
        "tracelake serve: stopping: committing what was accepted"
    )?;
    out.flush()?;
    health.ready.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    // The servers stop accepting and wait for the requests in flight, which wait for their
    // commits: the appender is still running.
    let http_result = http.await;
    let grpc_result = grpc.await;
    if let Some((_, task)) = query {
        let _ = task.await;
    }
    if let Some((_, task)) = flight
        && let Ok(Err(e)) = task.await
    {
        writeln!(out, "tracelake serve: {e}")?;
    }
    let outcome = match Arc::try_unwrap(appender) {
        Ok(appender) => appender.shutdown().await?,
        Err(appender) => appender.flush().await?,
    };
    lake.wait_for_background_work().await;
    if let Ok(Err(e)) = http_result {
        return Err(format!("OTLP/HTTP server: {e}").into());
    }
    if let Ok(Err(e)) = grpc_result {
        return Err(format!("OTLP/gRPC server: {e}").into());
    }
    writeln!(
        out,
        "tracelake serve: stopped at version {}",
        outcome.version.max(lake.version())
    )?;
    Ok(())
}

/// The Flight SQL endpoint `--flight-sql` asks for: the context its queries run in, its
/// configuration and its bound listener (`Infallible` in a build without Flight SQL).
#[cfg(feature = "flight-sql")]
type FlightSql = (
    datafusion::prelude::SessionContext,
    tracelake::flight_sql::FlightSqlConfig,
    tokio::net::TcpListener,
);
#[cfg(not(feature = "flight-sql"))]
type FlightSql = std::convert::Infallible;

/// A running endpoint: the URI its clients connect to and the task serving it.
type Running = (String, tokio::task::JoinHandle<tracelake::Result<()>>);

/// Checks the Flight SQL flags and binds the endpoint's address, before anything starts.
#[cfg(feature = "flight-sql")]
async fn flight_sql_endpoint(args: &ServeArgs, lake: &TraceLake) -> CliResult<Option<FlightSql>> {
    Ok(match args.flight_sql {
        Some(addr) => {
            let config = tracelake::flight_sql::FlightSqlConfig::default()
                .with_allow_insert(args.flight_sql_allow_insert)
                .with_bearer_token(read_token(
                    args.flight_sql_token_file.as_deref(),
                    "--flight-sql-token-file",
                )?)
                .with_query_timeout(Duration::from_secs(args.flight_sql_timeout_seconds.max(1)))
                .with_max_concurrent_queries(args.flight_sql_max_queries);
            config.validate()?;
            let ctx = match &args.cluster {
                #[cfg(feature = "cluster")]
                Some(url) => {
                    tracelake::distributed::remote_context(
                        lake,
                        url,
                        datafusion::prelude::SessionConfig::new(),
                    )
                    .await?
                }
                #[cfg(not(feature = "cluster"))]
                Some(_) => return Err(crate::not_built("--cluster", "cluster")),
                None => {
                    let ctx = datafusion::prelude::SessionContext::new_with_config(
                        datafusion::prelude::SessionConfig::new().with_information_schema(true),
                    );
                    lake.register_with(
                        &ctx,
                        &tracelake::Registration::default()
                            .read_only(!args.flight_sql_allow_insert),
                    )?;
                    ctx
                }
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (Flight SQL): {e}"))?;
            Some((ctx, config, listener))
        }
        None => None,
    })
}

#[cfg(not(feature = "flight-sql"))]
async fn flight_sql_endpoint(args: &ServeArgs, _lake: &TraceLake) -> CliResult<Option<FlightSql>> {
    if args.flight_sql.is_some() {
        return Err(crate::not_built("--flight-sql", "flight-sql"));
    }
    Ok(None)
}

/// Serves the endpoint until `stop` completes.
#[cfg(feature = "flight-sql")]
fn start_flight_sql(
    (ctx, config, listener): FlightSql,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> CliResult<Running> {
    let addr = listener.local_addr()?;
    let task = tokio::spawn(tracelake::flight_sql::serve(ctx, config, listener, stop));
    Ok((tracelake::flight_sql::client_uri(addr), task))
}

#[cfg(not(feature = "flight-sql"))]
fn start_flight_sql(
    endpoint: FlightSql,
    _stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> CliResult<Running> {
    match endpoint {}
}

/// The accepted connections of `listener`, as the stream tonic serves.
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

/// The token in the file `path` names (trimmed), if one is given; an empty file is an error.
fn read_token(path: Option<&std::path::Path>, flag: &str) -> CliResult<Option<String>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(format!("{flag} holds no token").into());
    }
    Ok(Some(token))
}
