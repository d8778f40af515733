//! OTLP in: decoding `ExportTraceServiceRequest`s (protobuf and OTLP/JSON) into span rows with
//! partial-success accounting, and the receivers that feed them to a [`SpanAppender`]: an axum
//! [`Router`](axum::Router) serving `POST /v1/traces` ([`http::router`]) and a tonic
//! `TraceService` ([`grpc::service`]), for an embedder to mount next to its own routes.
//! `tracelake serve` runs both.
//!
//! **Acknowledged = committed.** A request is answered with success only after the Delta
//! commit that holds its spans; concurrent requests share commits (the appender's size and
//! time limits). Invalid spans are rejected, counted in `partial_success`, never stored.
//! When the commit queue is full the receivers answer "retry later" at once (HTTP 429 with
//! `Retry-After`, gRPC `UNAVAILABLE`) instead of holding the request.
//!
//! ```no_run
//! # async fn serve() -> tracelake::Result<()> {
//! use std::sync::Arc;
//! use tracelake::otlp::{OtlpConfig, OtlpReceiver};
//!
//! let lake = tracelake::TraceLake::open_or_create("./tracelake-data").await?;
//! let appender = Arc::new(lake.appender(Default::default())?);
//! let receiver = Arc::new(OtlpReceiver::new(appender, lake.metrics().clone(), OtlpConfig::default()));
//! let app = tracelake::otlp::http::router(receiver.clone()); // merge with your own routes
//! let grpc = tracelake::otlp::grpc::service(receiver);       // add to your tonic server
//! # let _ = (app, grpc);
//! # Ok(()) }
//! ```

pub mod decode;
pub mod grpc;
pub mod http;
pub mod json;

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest,
};
use tracing::field;

use crate::error::TraceLakeError;
use crate::observe::{TraceLakeMetrics, names};
use crate::table::SpanAppender;

pub use decode::{DecodedSpans, decode_protobuf, spans};

/// How the receivers treat requests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OtlpConfig {
    /// The largest request body accepted, compressed or not (default 16 MiB; 1 KiB to
    /// 1 GiB). Larger bodies get HTTP 413 / gRPC `RESOURCE_EXHAUSTED`.
    pub max_body_bytes: usize,
    /// The `Retry-After` of a 429 or 503 answer, in seconds (default 1).
    pub retry_after_seconds: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            retry_after_seconds: 1,
        }
    }
}

impl OtlpConfig {
    /// The largest request body accepted.
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The `Retry-After` of a 429 or 503 answer, in seconds.
    pub fn with_retry_after_seconds(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = seconds;
        self
    }

    /// Checks every setting against its accepted range.
    pub fn validate(&self) -> crate::Result<()> {
        crate::table::appender::check_range(
            "otlp max_body_bytes",
            self.max_body_bytes as u128,
            1024,
            1 << 30,
        )?;
        crate::table::appender::check_range(
            "otlp retry_after_seconds",
            self.retry_after_seconds as u128,
            1,
            3_600,
        )
    }
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The body is not an OTLP request (HTTP 400, gRPC `INVALID_ARGUMENT`).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The body is over the limit (HTTP 413, gRPC `RESOURCE_EXHAUSTED`).
    #[error("request body over the limit of {0} bytes")]
    TooLarge(usize),
    /// The commit queue is full (HTTP 429, gRPC `UNAVAILABLE`): retry later.
    #[error("{0}")]
    Busy(String),
    /// The commit failed and nothing was written (HTTP 503, gRPC `UNAVAILABLE`): retry.
    #[error("{0}")]
    Unavailable(String),
    /// Something that retrying will not fix (HTTP 500, gRPC `INTERNAL`).
    #[error("{0}")]
    Internal(String),
}

impl ExportError {
    /// The `outcome` label of `tracelake_otlp_requests`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ExportError::Malformed(_) => "malformed",
            ExportError::TooLarge(_) => "too_large",
            ExportError::Busy(_) => "busy",
            ExportError::Unavailable(_) | ExportError::Internal(_) => "unavailable",
        }
    }
}

/// A request's outcome once its spans are committed.
#[derive(Debug, Clone)]
pub struct Export {
    /// Spans committed.
    pub accepted: usize,
    /// Spans rejected as invalid.
    pub rejected: usize,
    /// The `partial_success` of the answer (rejected spans, ignored fields).
    pub partial_success: Option<ExportTracePartialSuccess>,
    /// The table version that holds the spans (the current one if none were accepted).
    pub version: i64,
}

/// Checks requests and commits their spans through a [`SpanAppender`]; shared by the HTTP
/// and gRPC receivers.
#[derive(Debug)]
pub struct OtlpReceiver {
    appender: Arc<SpanAppender>,
    pub(crate) metrics: TraceLakeMetrics,
    pub(crate) config: OtlpConfig,
}

impl OtlpReceiver {
    /// A receiver feeding `appender`, counting into `metrics`.
    pub fn new(appender: Arc<SpanAppender>, metrics: TraceLakeMetrics, config: OtlpConfig) -> Self {
        Self {
            appender,
            metrics,
            config,
        }
    }

    /// The appender the receiver feeds.
    pub fn appender(&self) -> &Arc<SpanAppender> {
        &self.appender
    }

    /// Checks `request`'s spans and commits the valid ones; returns once they are committed.
    /// `ignored` notes fields the decoder did not know (reported in `partial_success`).
    /// `protocol` (`http`, `grpc`) labels the metrics.
    pub async fn export(
        &self,
        request: &ExportTraceServiceRequest,
        ignored: Vec<String>,
        protocol: &'static str,
    ) -> Result<Export, ExportError> {
        let mut decoded =
            decode::spans(request).map_err(|e| ExportError::Malformed(e.to_string()))?;
        if !ignored.is_empty() {
            decoded
                .notes
                .push(format!("ignored unknown fields: {}", ignored.join(", ")));
        }
        let span = tracing::Span::current();
        span.record(names::ATTR_ROWS, decoded.accepted);
        span.record(names::ATTR_OTLP_REJECTED, decoded.rejected);
        let mut version = self.appender_version();
        if decoded.accepted > 0 {
            match self
                .appender
                .try_append_committed(decoded.batch.clone())
                .await
            {
                Ok(outcome) => version = outcome.version,
                Err(e) => {
                    span.record(names::ATTR_ERROR, field::display(&e));
                    return Err(match e {
                        TraceLakeError::Busy(_) => ExportError::Busy(e.to_string()),
                        TraceLakeError::InvalidSpan { .. } | TraceLakeError::SchemaMismatch(_) => {
                            ExportError::Internal(e.to_string())
                        }
                        e if e.is_transient() => ExportError::Unavailable(e.to_string()),
                        TraceLakeError::AppenderStopped => ExportError::Unavailable(e.to_string()),
                        e => ExportError::Internal(e.to_string()),
                    });
                }
            }
        }
        self.metrics
            .otlp_spans(decoded.accepted as u64, decoded.rejected as u64);
        let partial_success = decoded.partial_success();
        self.metrics.otlp_request(
            protocol,
            if partial_success.is_some() {
                "partial"
            } else {
                "ok"
            },
        );
        Ok(Export {
            accepted: decoded.accepted,
            rejected: decoded.rejected,
            partial_success,
            version,
        })
    }

    fn appender_version(&self) -> i64 {
        self.appender.table_version()
    }
}
