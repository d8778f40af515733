//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` as a tonic
//! service an embedder adds to its own server (`Server::builder().add_service(..)`).
//!
//! Gzip-compressed requests are accepted. The answer comes after the Delta commit holding the
//! request's spans; a malformed request gets `INVALID_ARGUMENT` (the request bytes are decoded
//! here, not by tonic's codec, which would answer `INTERNAL`), a full commit queue or a failed
//! commit `UNAVAILABLE` (retryable), a message over the size limit `RESOURCE_EXHAUSTED` or
//! `OUT_OF_RANGE` (tonic's).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tracing::{Instrument, field};

use super::{ExportError, OtlpReceiver};
use crate::observe::names;

/// The gRPC service name.
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The path of the export method.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The `TraceService` over `receiver`.
pub fn service(receiver: Arc<OtlpReceiver>) -> TraceServiceServer {
    TraceServiceServer { receiver }
}

/// A tower service answering `TraceService/Export` (and `UNIMPLEMENTED` for anything else).
#[derive(Debug, Clone)]
pub struct TraceServiceServer {
    receiver: Arc<OtlpReceiver>,
}

impl NamedService for TraceServiceServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// Hands the request's bytes over undecoded; encodes the response with prost.
#[derive(Debug, Default, Clone)]
struct RawRequestCodec;

#[derive(Debug, Default)]
struct RawDecoder;

#[derive(Debug, Default)]
struct ResponseEncoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: ExportTraceServiceResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))?;
        Ok(())
    }
}

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

struct Export(Arc<OtlpReceiver>);

impl UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = futures::future::BoxFuture<'static, Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let receiver = self.0.clone();
        Box::pin(async move {
            let span = tracing::info_span!(
                names::OTLP_EXPORT,
                { names::ATTR_OTLP_PROTOCOL } = "grpc",
                { names::ATTR_OTLP_ENCODING } = "protobuf",
                { names::ATTR_ROWS } = field::Empty,
                { names::ATTR_OTLP_REJECTED } = field::Empty,
                { names::ATTR_ERROR } = field::Empty,
            );
            async move {
                let result = match super::decode::decode_protobuf(request.get_ref()) {
                    Ok(message) => receiver.export(&message, Vec::new(), "grpc").await,
                    Err(e) => Err(ExportError::Malformed(e)),
                };
                match result {
                    Ok(done) => Ok(Response::new(ExportTraceServiceResponse {
                        partial_success: done.partial_success,
                    })),
                    Err(e) => {
                        tracing::Span::current().record(names::ATTR_ERROR, field::display(&e));
                        receiver.metrics.otlp_request("grpc", e.outcome());
                        Err(match e {
                            ExportError::Malformed(m) => Status::invalid_argument(m),
                            ExportError::TooLarge(_) => Status::resource_exhausted(e.to_string()),
                            ExportError::Busy(m) | ExportError::Unavailable(m) => {
                                Status::unavailable(m)
                            }
                            ExportError::Internal(m) => Status::internal(m),
                        })
                    }
                }
            }
            .instrument(span)
            .await
        })
    }
}

impl<B> tower::Service<axum::http::Request<B>> for TraceServiceServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let receiver = self.receiver.clone();
        if request.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                let mut response = axum::http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    axum::http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        Box::pin(async move {
            let limit = receiver.config.max_body_bytes;
            let mut grpc = tonic::server::Grpc::new(RawRequestCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);
            Ok(grpc.unary(Export(receiver), request).await)
        })
    }
}
