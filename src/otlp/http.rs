//! OTLP/HTTP: `POST /v1/traces` as an axum [`Router`] an embedder mounts next to its own
//! routes.
//!
//! Bodies are `application/x-protobuf` or `application/json`, plain or
//! `Content-Encoding: gzip`. The answer has the request's encoding: `200` with an
//! `ExportTraceServiceResponse` (its `partial_success` counting rejected spans) only after
//! the Delta commit that holds the request's spans; `400` with a `google.rpc.Status` for a
//! malformed body; `413` for a body over the limit (compressed or not); `415` for another
//! content type or encoding; `429` with `Retry-After` when the commit queue is full; `503`
//! with `Retry-After` when the commit failed and nothing was written (sending again is safe).

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tracing::{Instrument, field};

use super::{Export, ExportError, OtlpReceiver};
use crate::observe::names;

/// The path of the trace export route.
pub const TRACES_PATH: &str = "/v1/traces";

/// The router serving `POST /v1/traces` into `receiver`.
pub fn router(receiver: Arc<OtlpReceiver>) -> Router {
    Router::new()
        .route(TRACES_PATH, post(export))
        .with_state(receiver)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "json",
        }
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn error_response(
    status: StatusCode,
    encoding: Encoding,
    grpc_code: i32,
    message: String,
    retry_after: Option<u64>,
) -> Response {
    let body = match encoding {
        Encoding::Protobuf => RpcStatus {
            code: grpc_code,
            message,
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": grpc_code, "message": message })
            .to_string()
            .into_bytes(),
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if let Some(seconds) = retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Reads at most `limit` bytes of gzip-decompressed data.
fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, ExportError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ExportError::Malformed(format!("the body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(ExportError::TooLarge(limit));
    }
    Ok(out)
}

async fn export(
    State(receiver): State<Arc<OtlpReceiver>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let encoding = match mime {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            receiver.metrics.otlp_request("http", "unsupported");
            return error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Encoding::Json,
                3,
                format!(
                    "unsupported content type {other:?}: use application/x-protobuf or application/json"
                ),
                None,
            );
        }
    };
    let span = tracing::info_span!(
        names::OTLP_EXPORT,
        { names::ATTR_OTLP_PROTOCOL } = "http",
        { names::ATTR_OTLP_ENCODING } = encoding.name(),
        { names::ATTR_ROWS } = field::Empty,
        { names::ATTR_OTLP_REJECTED } = field::Empty,
        { names::ATTR_ERROR } = field::Empty,
    );
    async move {
        let limit = receiver.config.max_body_bytes;
        let compressed = match headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("identity") => false,
            Some("gzip") => true,
            Some(other) => {
                receiver.metrics.otlp_request("http", "unsupported");
                return error_response(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    encoding,
                    3,
                    format!("unsupported content encoding {other:?}: use gzip or none"),
                    None,
                );
            }
        };
        let raw: Bytes = match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => bytes,
            Err(_) => return answer_error(&receiver, encoding, ExportError::TooLarge(limit)),
        };
        let body = if compressed {
            match gunzip(&raw, limit) {
                Ok(body) => Bytes::from(body),
                Err(e) => return answer_error(&receiver, encoding, e),
            }
        } else {
            raw
        };
        let decoded = match encoding {
            Encoding::Protobuf => super::decode::decode_protobuf(&body)
                .map(|r| (r, Vec::new()))
                .map_err(ExportError::Malformed),
            Encoding::Json => super::json::decode(&body).map_err(|e| ExportError::Malformed(e.0)),
        };
        let result = match decoded {
            Ok((request, ignored)) => receiver.export(&request, ignored, "http").await,
            Err(e) => Err(e),
        };
        match result {
            Ok(done) => answer(encoding, &done),
            Err(e) => answer_error(&receiver, encoding, e),
        }
    }
    .instrument(span)
    .await
}

fn answer(encoding: Encoding, done: &Export) -> Response {
    let response = ExportTraceServiceResponse {
        partial_success: done.partial_success.clone(),
    };
    let body = match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        Encoding::Json => {
            let mut value = serde_json::json!({});
            if let Some(p) = &response.partial_success {
                value["partialSuccess"] = serde_json::json!({
                    "rejectedSpans": p.rejected_spans.to_string(),
                    "errorMessage": p.error_message,
                });
            }
            value.to_string().into_bytes()
        }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

fn answer_error(receiver: &OtlpReceiver, encoding: Encoding, error: ExportError) -> Response {
    tracing::Span::current().record(names::ATTR_ERROR, field::display(&error));
    receiver.metrics.otlp_request("http", error.outcome());
    let retry = receiver.config.retry_after_seconds;
    let (status, code, retry_after) = match &error {
        ExportError::Malformed(_) => (StatusCode::BAD_REQUEST, 3, None),
        ExportError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 8, None),
        ExportError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, 8, Some(retry)),
        ExportError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, 14, Some(retry)),
        ExportError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 13, None),
    };
    error_response(status, encoding, code, error.to_string(), retry_after)
}
