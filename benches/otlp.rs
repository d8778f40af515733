//! Tier 1 (`make bench.extended`): OTLP/HTTP ingest on loopback. 8 concurrent exporters, each
//! on its own keep-alive connection, send 100-span protobuf requests (realistic spans) to the
//! receiver serving a local table, each waiting for the answer (which comes after the Delta
//! commit holding its spans) before sending the next. Reports spans/s and the answer latency
//! (p50, p99) in `otlp_http_ingest.json`. The process uses the allocator of `tracelake serve`
//! (mimalloc).

mod support;

/// The allocator of `tracelake serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
use prost::Message;
use serde_json::json;
use support::{Artifact, BenchTier, enabled, percentile, runtime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracelake::TraceLake;
use tracelake::otlp::{OtlpConfig, OtlpReceiver};
use tracelake::span::{AttributeValue, Span};
use tracelake::synth::{TraceGenerator, TraceShape};
use tracelake::table::AppenderConfig;

const EXPORTERS: usize = 8;
const SPANS_PER_REQUEST: usize = 100;
const REQUESTS_PER_EXPORTER: usize = 500;
/// The appender's linger (`tracelake serve --commit-linger-ms`, default 0).
const LINGER_MS: u64 = 0;

fn any(value: &AttributeValue) -> AnyValue {
    let value = match value {
        AttributeValue::String(s) => any_value::Value::StringValue(s.clone()),
        AttributeValue::Int(i) => any_value::Value::IntValue(*i),
        AttributeValue::Double(d) => any_value::Value::DoubleValue(*d),
        AttributeValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttributeValue::Bytes(b) => any_value::Value::BytesValue(b.clone()),
        AttributeValue::Array(items) => {
            any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: items.iter().map(any).collect(),
            })
        }
    };
    AnyValue { value: Some(value) }
}

fn key_values(attributes: &[(String, AttributeValue)]) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(any(v)),
            ..Default::default()
        })
        .collect()
}

/// A request of `spans` (one resource per span, as the synthetic services differ).
fn request(spans: &[Span]) -> Vec<u8> {
    let resource_spans = spans
        .iter()
        .map(|s| ResourceSpans {
            resource: Some(Resource {
                attributes: key_values(&s.resource_attributes),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![opentelemetry_proto::tonic::trace::v1::Span {
                    trace_id: hex::decode(&s.trace_id).unwrap(),
                    span_id: hex::decode(&s.span_id).unwrap(),
                    parent_span_id: s
                        .parent_span_id
                        .as_deref()
                        .map(|p| hex::decode(p).unwrap())
                        .unwrap_or_default(),
                    name: s.name.clone(),
                    kind: s.kind as i32,
                    start_time_unix_nano: s.start_time_unix_nano as u64,
                    end_time_unix_nano: s.end_time_unix_nano as u64,
                    attributes: key_values(&s.attributes),
                    status: Some(Status {
                        code: s.status_code as i32,
                        message: s.status_message.clone().unwrap_or_default(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }.encode_to_vec()
}

/// One exporter: a keep-alive HTTP/1.1 connection sending `bodies` one after another.
async fn exporter(addr: SocketAddr, bodies: Vec<Vec<u8>>) -> Vec<Duration> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut stream = BufReader::new(stream);
    let mut latencies = Vec::with_capacity(bodies.len());
    for body in bodies {
        let started = Instant::now();
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.get_mut().write_all(head.as_bytes()).await.unwrap();
        stream.get_mut().write_all(&body).await.unwrap();
        let mut status = String::new();
        stream.read_line(&mut status).await.unwrap();
        assert!(status.contains(" 200 "), "{status}");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut payload = vec![0; length];
        stream.read_exact(&mut payload).await.unwrap();
        latencies.push(started.elapsed());
    }
    latencies
}

fn otlp_ingest(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let (lake, addr) = rt.block_on(async {
        let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
        let linger = std::env::var("TRACELAKE_BENCH_LINGER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(LINGER_MS);
        let appender = Arc::new(
            lake.appender(AppenderConfig::default().with_linger(Duration::from_millis(linger)))
                .unwrap(),
        );
        let receiver = Arc::new(OtlpReceiver::new(
            appender,
            lake.metrics().clone(),
            OtlpConfig::default(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, tracelake::otlp::http::router(receiver))
                .await
                .unwrap();
        });
        (lake, addr)
    });
    // The requests, encoded ahead (the clients' cost is not the server's).
    let mut generator = TraceGenerator::new(42, TraceShape::Realistic);
    let mut pool: Vec<Span> = Vec::new();
    let mut t = support::DAY0;
    let mut bodies: Vec<Vec<Vec<u8>>> = vec![Vec::new(); EXPORTERS];
    for (i, body) in (0..EXPORTERS * REQUESTS_PER_EXPORTER).map(|i| {
        while pool.len() < SPANS_PER_REQUEST {
            pool.extend(generator.trace(t));
            t += 1_000_000;
        }
        let chunk: Vec<Span> = pool.drain(..SPANS_PER_REQUEST).collect();
        (i, request(&chunk))
    }) {
        bodies[i % EXPORTERS].push(body);
    }
    let request_bytes: usize = bodies.iter().flatten().map(|b| b.len()).sum();
    let started = Instant::now();
    let mut latencies: Vec<Duration> = rt.block_on(async {
        let tasks: Vec<_> = bodies
            .into_iter()
            .map(|b| tokio::spawn(exporter(addr, b)))
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed();
    latencies.sort();
    let spans = (EXPORTERS * REQUESTS_PER_EXPORTER * SPANS_PER_REQUEST) as u64;
    let spans_per_second = spans as f64 / elapsed.as_secs_f64();
    let metrics = lake.metrics().clone();
    let commits = metrics.committed_span_count();
    assert_eq!(commits, spans, "every acknowledged span is committed");
    let mut artifact = Artifact::new(
        "otlp_http_ingest",
        BenchTier::Extended,
        "POST /v1/traces (OTLP/HTTP protobuf), 8 exporters x 100-span requests, answer after commit",
    );
    artifact.timings = latencies;
    artifact.rows = spans;
    artifact.extra = json!({
        "spans_per_second": spans_per_second.round(),
        "elapsed_ms": elapsed.as_millis() as u64,
        "exporters": EXPORTERS,
        "spans_per_request": SPANS_PER_REQUEST,
        "requests": EXPORTERS * REQUESTS_PER_EXPORTER,
        "request_bytes": request_bytes,
        "table_version_after": lake.version(),
    });
    artifact.write();
    println!(
        "otlp_http_ingest: {spans_per_second:.0} spans/s, answer p50 {:.2} ms, p99 {:.2} ms, {} commits",
        percentile(&artifact.timings, 50.0) as f64 / 1e6,
        percentile(&artifact.timings, 99.0) as f64 / 1e6,
        lake.version()
    );
}

criterion_group!(benches, otlp_ingest);
criterion_main!(benches);
