//! `tracelake scheduler` and `tracelake executor`: Ballista nodes serving tracelake's plans
//! (see `tracelake::distributed`), until SIGTERM or SIGINT; then the run ends as every
//! command's does (`--export-spans` flushed, `--metrics PATH` written). With
//! `--metrics-addr ADDR`, `GET http://ADDR/metrics` serves the node's Prometheus metrics
//! while it runs (the object-store requests it made, per backend, operation and kind).

use std::io::Write;
use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tracelake::TableOptions;
use tracelake::distributed::{ExecutorOptions, run_executor, run_scheduler};

use super::CliResult;
use super::serve::shutdown_signal;

/// Serves `GET /metrics` with the node's metrics on `addr`.
async fn serve_metrics(addr: SocketAddr, options: &TableOptions) -> CliResult<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (metrics): {e}"))?;
    let bound = listener.local_addr()?;
    let metrics = options.metrics.clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let text = metrics.encode_text();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    );
    tokio::spawn(axum::serve(listener, app).into_future());
    Ok(bound)
}

/// Serves the metrics on `addr` when given, and says where.
async fn serve_metrics_if_asked(
    out: &mut dyn Write,
    addr: Option<SocketAddr>,
    options: &TableOptions,
) -> CliResult<()> {
    if let Some(addr) = addr {
        let bound = serve_metrics(addr, options).await?;
        writeln!(out, "metrics on http://{bound}/metrics")?;
    }
    Ok(())
}

/// Runs `node` until it fails or a signal stops the process.
async fn until_signal(
    node: impl std::future::Future<Output = tracelake::Result<()>>,
) -> CliResult<()> {
    tokio::select! {
        result = node => Ok(result?),
        _ = shutdown_signal() => Ok(()),
    }
}

pub(crate) async fn scheduler(
    out: &mut dyn Write,
    bind: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    options: &TableOptions,
) -> CliResult<()> {
    serve_metrics_if_asked(out, metrics_addr, options).await?;
    writeln!(out, "tracelake scheduler listening on {bind}")?;
    out.flush()?;
    until_signal(run_scheduler(bind, options.clone())).await
}

pub(crate) async fn executor(
    out: &mut dyn Write,
    scheduler: &str,
    executor: ExecutorOptions,
    metrics_addr: Option<SocketAddr>,
    options: &TableOptions,
) -> CliResult<()> {
    serve_metrics_if_asked(out, metrics_addr, options).await?;
    writeln!(
        out,
        "tracelake executor on {}, scheduler {scheduler}",
        executor.bind
    )?;
    out.flush()?;
    until_signal(run_executor(executor, options.clone())).await
}
