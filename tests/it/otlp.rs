//! OTLP in: the library's receivers mounted in a server of the test's own (partial success,
//! malformed bodies, size limits, backpressure, gzip, gRPC status codes), and `tracelake
//! serve` driven by real OpenTelemetry SDKs (Python over OTLP/HTTP protobuf with gzip and over
//! gRPC, JavaScript over OTLP/HTTP JSON), shut down with SIGTERM and killed with SIGKILL.

use crate::common;

use std::io::Write;
use std::net::SocketAddr;
#[cfg(feature = "cli")]
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{TestStore, http_request};
#[cfg(feature = "cli")]
use arrow::array::Array;
use arrow::array::AsArray;
#[cfg(feature = "cli")]
use arrow::datatypes::Int32Type;
use arrow::datatypes::Int64Type;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tracelake::otlp::{OtlpConfig, OtlpReceiver};
use tracelake::table::AppenderConfig;
use tracelake::{TableOptions, TraceLake};

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A request of `n` spans of one trace (`seed` picks the ids); `bad` of them have an invalid
/// span id.
fn request(seed: u8, n: usize, bad: usize) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![seed; 16],
            span_id: if i < bad {
                vec![0; 8]
            } else {
                let mut id = [seed; 8];
                id[7] = i as u8;
                id[6] = (i >> 8) as u8;
                id.to_vec()
            },
            name: format!("op-{i}"),
            kind: 2,
            start_time_unix_nano: 1_714_564_800_000_000_000 + i as u64,
            end_time_unix_nano: 1_714_564_800_000_100_000 + i as u64,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The receivers of `lake` served on loopback by the test itself (as an embedder would).
struct Embedded {
    lake: TraceLake,
    http: SocketAddr,
    grpc: SocketAddr,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn embedded(
    name: &str,
    store: Option<Arc<TestStore>>,
    appender: AppenderConfig,
    config: OtlpConfig,
) -> Embedded {
    let options = TableOptions {
        root_store: store.map(|s| s as Arc<dyn object_store::ObjectStore>),
        ..Default::default()
    };
    let lake = TraceLake::create_with_options(&format!("memory:///{name}"), &options)
        .await
        .unwrap();
    let appender = Arc::new(lake.appender(appender).unwrap());
    let receiver = Arc::new(OtlpReceiver::new(appender, lake.metrics().clone(), config));
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http, grpc) = (
        http_listener.local_addr().unwrap(),
        grpc_listener.local_addr().unwrap(),
    );
    let app = tracelake::otlp::http::router(receiver.clone());
    let service = tracelake::otlp::grpc::service(receiver);
    let tasks = vec![
        tokio::spawn(async move {
            axum::serve(http_listener, app).await.unwrap();
        }),
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream(grpc_listener))
                .await
                .unwrap();
        }),
    ];
    Embedded {
        lake,
        http,
        grpc,
        _tasks: tasks,
    }
}

fn tokio_stream(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    })
}

const PROTOBUF: (&str, &str) = ("Content-Type", "application/x-protobuf");
const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let (status, _, body) = http_request(addr, "POST", "/v1/traces", headers, body).await;
    (status, body)
}

async fn spans_in(lake: &TraceLake) -> i64 {
    common::count(
        &lake.session_context().unwrap(),
        "SELECT count(*) FROM spans",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_spans_are_committed_before_the_answer_and_invalid_ones_counted() {
    let server = embedded(
        "otlp-partial",
        None,
        AppenderConfig::default(),
        OtlpConfig::default(),
    )
    .await;
    let (status, body) = post(server.http, &[PROTOBUF], &request(1, 10, 3).encode_to_vec()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer = ExportTraceServiceResponse::decode(body.as_slice()).unwrap();
    let partial = answer.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 3);
    assert!(
        partial.error_message.contains("span id is not 8 bytes"),
        "{}",
        partial.error_message
    );
    // Answered after the commit: the 7 valid spans are there, the 3 invalid ones are not.
    assert_eq!(spans_in(&server.lake).await, 7);

    // All valid: no partial_success. JSON in, JSON out.
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
        "scopeSpans":[{"scope":{"name":"s","version":"1"},"spans":[{"traceId":"0AF7651916CD43DD8448EB211C80319C",
        "spanId":"b7ad6b7169203331","name":"GET","kind":2,"startTimeUnixNano":"1714564800000000000",
        "endTimeUnixNano":1714564800250000000,"attributes":[{"key":"n","value":{"intValue":"5"}}],
        "status":{"code":2,"message":"boom"}}]}]}]}"#;
    let (status, body) = post(server.http, &[JSON], json.as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body), "{}");
    let ctx = server.lake.session_context().unwrap();
    let batches = ctx
        .sql("SELECT service_name, attr_int(attributes, 'n'), status_code, status_message, scope_name FROM spans WHERE trace_id = '0af7651916cd43dd8448eb211c80319c'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let row = &batches[0];
    assert_eq!(row.column(0).as_string::<i32>().value(0), "cart");
    assert_eq!(row.column(1).as_primitive::<Int64Type>().value(0), 5);
    assert_eq!(row.column(2).as_string::<i32>().value(0), "ERROR");
    assert_eq!(row.column(3).as_string::<i32>().value(0), "boom");
    assert_eq!(row.column(4).as_string::<i32>().value(0), "s");

    // Unknown JSON fields are reported, not dropped silently.
    let unknown = json
        .replace("\"name\":\"GET\"", "\"name\":\"GET\",\"colour\":\"red\"")
        .replace("b7ad6b7169203331", "b7ad6b7169203332");
    let (status, body) = post(server.http, &[JSON], unknown.as_bytes()).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("ignored unknown fields: spans[].colour"),
        "{text}"
    );
    assert!(text.contains("\"rejectedSpans\":\"0\""), "{text}");
    let metrics = server.lake.metrics();
    assert_eq!(metrics.otlp_span_count("rejected"), 3);
    assert_eq!(metrics.otlp_span_count("accepted"), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_the_server_keeps_serving() {
    let server = embedded(
        "otlp-bad",
        None,
        AppenderConfig::default(),
        OtlpConfig::default().with_max_body_bytes(64 * 1024),
    )
    .await;
    // Malformed protobuf and JSON: 400 with a google.rpc.Status body (code 3).
    let (status, body) = post(server.http, &[PROTOBUF], b"\xff\xff\xff not protobuf").await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not OTLP protobuf"));
    let (status, body) = post(server.http, &[JSON], b"{\"resourceSpans\": 7}").await;
    assert_eq!(status, 400);
    let status_json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status_json["code"], 3);
    assert!(
        status_json["message"]
            .as_str()
            .unwrap()
            .contains("must be an array")
    );
    // Another content type or encoding: 415.
    let (status, _) = post(server.http, &[("Content-Type", "text/plain")], b"x").await;
    assert_eq!(status, 415);
    let (status, _) = post(server.http, &[PROTOBUF, ("Content-Encoding", "br")], b"x").await;
    assert_eq!(status, 415);
    // Over the limit, plain or once decompressed (a small gzip of a large body): 413.
    let (status, _) = post(server.http, &[PROTOBUF], &vec![0u8; 100 * 1024]).await;
    assert_eq!(status, 413);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 10 * 1024 * 1024]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 64 * 1024);
    let (status, _) = post(
        server.http,
        &[PROTOBUF, ("Content-Encoding", "gzip")],
        &bomb,
    )
    .await;
    assert_eq!(status, 413);
    // Not gzip although it says so: 400.
    let (status, _) = post(
        server.http,
        &[PROTOBUF, ("Content-Encoding", "gzip")],
        b"plain",
    )
    .await;
    assert_eq!(status, 400);
    // The server still serves, gzip included.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&request(2, 4, 0).encode_to_vec()).unwrap();
    let (status, _) = post(
        server.http,
        &[PROTOBUF, ("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(spans_in(&server.lake).await, 4);
    let metrics = server.lake.metrics();
    assert_eq!(metrics.otlp_request_count("http", "malformed"), 3);
    assert_eq!(metrics.otlp_request_count("http", "too_large"), 2);
    assert_eq!(metrics.otlp_request_count("http", "unsupported"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_commit_queue_answers_retry_later_at_once() {
    let store = TestStore::new();
    let server = embedded(
        "otlp-backpressure",
        Some(store.clone()),
        AppenderConfig::default().with_queue_batches(1),
        OtlpConfig::default().with_retry_after_seconds(2),
    )
    .await;
    store.pause_commits();
    // The first request is being committed (held by the store), the second waits in the
    // queue: the third finds the queue full.
    let addr = server.http;
    let first_body = request(1, 5, 0).encode_to_vec();
    let first = tokio::spawn(async move { post(addr, &[PROTOBUF], &first_body).await });
    common::wait_until("the first commit to start", Duration::from_secs(30), || {
        store.count("put", "parquet_data") >= 1
    })
    .await;
    let second_body = request(2, 5, 0).encode_to_vec();
    let second = tokio::spawn(async move { post(addr, &[PROTOBUF], &second_body).await });
    // Requests accepted into the queue wait (their commit is held); once it is full, the next
    // one is answered 429 at once, with Retry-After.
    let mut waiting = vec![];
    let mut busy = false;
    for seed in 3..60u8 {
        let body = request(seed, 5, 0).encode_to_vec();
        let mut next = tokio::spawn(async move {
            http_request(addr, "POST", "/v1/traces", &[PROTOBUF], &body).await
        });
        tokio::select! {
            answered = &mut next => {
                let (status, headers, _) = answered.unwrap();
                assert_eq!(status, 429, "nothing is answered 200 while commits are held");
                assert_eq!(headers.get("retry-after").map(String::as_str), Some("2"));
                busy = true;
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => waiting.push(next),
        }
    }
    assert!(busy, "a 429 once the queue is full");
    // gRPC says UNAVAILABLE (retryable) for the same reason.
    let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
        format!("http://{}", server.grpc),
    )
    .await
    .unwrap();
    let status = client.export(request(99, 5, 0)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // Released: the accepted requests are answered, and their spans committed once (a slow
    // request among those not answered in time may have found the queue full too).
    store.resume_commits();
    assert_eq!(first.await.unwrap().0, 200);
    let mut accepted = 1;
    let mut statuses = vec![second.await.unwrap().0];
    for request in waiting {
        statuses.push(request.await.unwrap().0);
    }
    for status in statuses {
        match status {
            200 => accepted += 1,
            status => assert_eq!(status, 429),
        }
    }
    assert_eq!(common::count_spans(&server.lake).await, 5 * accepted);
    assert!(server.lake.metrics().otlp_request_count("http", "busy") >= 1);
}

/// Sends `body` to the export method as it is, with no protobuf encoding on the client.
async fn grpc_raw(addr: SocketAddr, body: bytes::Bytes) -> tonic::Status {
    #[derive(Clone, Default)]
    struct Raw;
    struct RawEncoder;
    struct NoDecoder;
    impl tonic::codec::Encoder for RawEncoder {
        type Item = bytes::Bytes;
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: bytes::Bytes,
            dst: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), tonic::Status> {
            use bytes::BufMut;
            dst.put(item);
            Ok(())
        }
    }
    impl tonic::codec::Decoder for NoDecoder {
        type Item = ();
        type Error = tonic::Status;
        fn decode(
            &mut self,
            _src: &mut tonic::codec::DecodeBuf<'_>,
        ) -> Result<Option<()>, tonic::Status> {
            Ok(Some(()))
        }
    }
    impl tonic::codec::Codec for Raw {
        type Encode = bytes::Bytes;
        type Decode = ();
        type Encoder = RawEncoder;
        type Decoder = NoDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> NoDecoder {
            NoDecoder
        }
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        tracelake::otlp::grpc::EXPORT_PATH.parse().unwrap(),
        Raw,
    )
    .await
    .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_after_commit_and_malformed_requests_are_invalid_argument() {
    let server = embedded(
        "otlp-grpc",
        None,
        AppenderConfig::default(),
        OtlpConfig::default(),
    )
    .await;
    let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
        format!("http://{}", server.grpc),
    )
    .await
    .unwrap()
    .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let answer = client.export(request(7, 6, 2)).await.unwrap().into_inner();
    assert_eq!(answer.partial_success.unwrap().rejected_spans, 2);
    assert_eq!(spans_in(&server.lake).await, 4);
    let status = grpc_raw(
        server.grpc,
        bytes::Bytes::from_static(b"\xff\xff\xff garbage"),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Still serving.
    client.export(request(8, 3, 0)).await.unwrap();
    assert_eq!(spans_in(&server.lake).await, 7);
}

/// `trace_tree` of `trace_id`: (depth, name) in tree order.
#[cfg(feature = "cli")]
async fn tree(lake: &TraceLake, trace_id: &str) -> Vec<(i32, String)> {
    let ctx = lake.session_context().unwrap();
    let batches = ctx
        .sql(&format!(
            "SELECT depth, name FROM trace_tree('{trace_id}') ORDER BY span_order"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let depth = b.column(0).as_primitive::<Int32Type>().clone();
            let name = b.column(1).as_string::<i32>().clone();
            (0..b.num_rows())
                .map(|i| (depth.value(i), name.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One row of `sql` as strings (NULL as "NULL").
#[cfg(feature = "cli")]
async fn row(lake: &TraceLake, sql: &str) -> Vec<String> {
    let ctx = lake.session_context().unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let batch = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    (0..batch.num_columns())
        .map(|c| {
            let column = batch.column(c);
            if column.is_null(0) {
                "NULL".to_string()
            } else {
                arrow::util::display::array_value_to_string(column, 0).unwrap()
            }
        })
        .collect()
}

// `tracelake serve`: the binary.
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sdks_write_nested_typed_traces_through_tracelake_serve() {
    let clients = common::clients();
    let dir = common::scratch("otlp-sdks");
    let table = dir.join("spans");
    let server = common::ServeProcess::start(&table, &[]);

    // Python over OTLP/HTTP (protobuf, gzip) and over gRPC (gzip).
    let python = |protocol: &str, endpoint: String| {
        let out = Command::new(&clients.python)
            .arg(common::repo().join("tests/clients/otel_python.py"))
            .args([protocol, &endpoint])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python {protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut ids = text.split_whitespace().map(str::to_string);
        (ids.next().unwrap(), ids.next().unwrap())
    };
    let (http_trace, http_linked) = python("http", format!("http://{}/v1/traces", server.http));
    let (grpc_trace, _) = python("grpc", server.grpc.to_string());
    // Read back through the Tempo API as Grafana does, decoded by the Python protobuf runtime.
    let tempo = |args: &[&str]| -> Vec<String> {
        let out = Command::new(&clients.python)
            .arg(common::repo().join("tests/clients/tempo_client.py"))
            .arg(server.query.to_string())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tempo_client.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    let read_back: Vec<String> = tempo(&["trace", &http_trace])
        .iter()
        .map(|l| l.split('\t').collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        read_back,
        [
            "py-http GET /checkout 0",
            "py-http charge 1",
            "py-http db.query 1"
        ]
    );
    // Search: a filter on a resource and a span attribute, and a structural query (the error
    // span below the root, in both SDK traces).
    assert_eq!(
        tempo(&[
            "search",
            r#"{ resource.service.name = "py-http" && span.http.route = "/checkout" }"#
        ]),
        [format!(
            "{http_trace}\tpy-http\tGET /checkout\tGET /checkout"
        )]
    );
    let mut both = vec![
        format!("{http_trace}\tpy-http\tGET /checkout\tcharge"),
        format!("{grpc_trace}\tpy-grpc\tGET /checkout\tcharge"),
    ];
    both.sort();
    assert_eq!(
        tempo(&[
            "search",
            r#"{ name = "GET /checkout" } >> { status = error }"#
        ]),
        both
    );
    // Tags and their typed values.
    let tags = tempo(&["tags"]);
    for tag in [
        "span\thttp.route",
        "span\tdb.rows",
        "resource\tdeployment.environment",
        "intrinsic\tduration",
    ] {
        assert!(tags.iter().any(|t| t == tag), "{tag:?} not in {tags:?}");
    }
    assert_eq!(tempo(&["values", "span.http.route"]), ["string\t/checkout"]);
    assert_eq!(
        tempo(&["values", "span.http.response.status_code"]),
        ["int\t200"]
    );
    assert_eq!(
        tempo(&["values", "resource.service.name"]),
        ["string\tpy-grpc", "string\tpy-http"]
    );
    // Metrics: each SDK process sent four spans (the linked root and the three of the trace),
    // one of them an error.
    assert_eq!(
        tempo(&[
            "metrics",
            "{ } | count_over_time() by (resource.service.name)"
        ]),
        [
            "resource.service.name=py-grpc\t4",
            "resource.service.name=py-http\t4"
        ]
    );
    assert_eq!(
        tempo(&["metrics", "{ status = error } | count_over_time()"]),
        ["\t2"]
    );
    // JavaScript over OTLP/HTTP JSON.
    let out = Command::new("node")
        .arg(common::repo().join("tests/clients/otel_node.js"))
        .arg(format!("http://{}/v1/traces", server.http))
        .env("NODE_PATH", &clients.node_modules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node_trace = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // Every export was answered after its commit: another process reads them at once.
    let lake = TraceLake::open(table.to_str().unwrap()).await.unwrap();
    for trace in [&http_trace, &grpc_trace] {
        assert_eq!(
            tree(&lake, trace).await,
            [
                (0, "GET /checkout".to_string()),
                (1, "charge".to_string()),
                (2, "db.query".to_string())
            ]
        );
    }
    assert_eq!(
        tree(&lake, &node_trace).await,
        [(0, "GET /cart".to_string()), (1, "load cart".to_string())]
    );
    // Typed attributes, resource, scope, status.
    assert_eq!(
        row(&lake, &format!(
            "SELECT service_name, kind, attr_str(attributes, 'http.route'), \
                    attr_int(attributes, 'http.response.status_code'), attr_double(attributes, 'sampling.ratio'), \
                    attr_bool(attributes, 'cache.hit'), attributes['tags']['array_value'][2]['string_value'], \
                    attr_str(resource_attributes, 'deployment.environment'), scope_name, scope_version \
             FROM spans WHERE trace_id = '{http_trace}' AND name = 'GET /checkout'"
        ))
        .await,
        ["py-http", "SERVER", "/checkout", "200", "0.25", "true", "b", "test", "tracelake.tests", "1.2.3"]
    );
    // Events, links, status.
    assert_eq!(
        row(&lake, &format!(
            "SELECT status_code, status_message, events[1]['name'], attr_int(events[1]['attributes'], 'attempt'), \
                    links[1]['trace_id'], attr_str(links[1]['attributes'], 'link.kind') \
             FROM spans WHERE trace_id = '{http_trace}' AND name = 'charge'"
        ))
        .await,
        ["ERROR", "card declined", "retry", "2", http_linked.as_str(), "retry-of"]
    );
    assert_eq!(
        row(&lake, &format!(
            "SELECT service_name, attr_int(attributes, 'http.response.status_code'), attr_double(attributes, 'ratio'), \
                    attr_bool(attributes, 'retry'), attributes['ids']['array_value'][3]['int_value'], \
                    attr_str(resource_attributes, 'service.version'), scope_name \
             FROM spans WHERE trace_id = '{node_trace}' AND name = 'GET /cart'"
        ))
        .await,
        ["node-json", "201", "0.5", "false", "3", "4.5.6", "tracelake.tests.node"]
    );
    assert_eq!(
        row(&lake, &format!(
            "SELECT status_code, status_message, events[1]['name'] FROM spans WHERE trace_id = '{node_trace}' AND name = 'load cart'"
        ))
        .await,
        ["ERROR", "timeout", "cache.miss"]
    );
    // /healthz and /metrics.
    let (status, _, body) = http_request(server.http, "GET", "/healthz", &[], b"").await;
    assert_eq!((status, String::from_utf8_lossy(&body).trim()), (200, "ok"));
    let (_, _, body) = http_request(server.http, "GET", "/metrics", &[], b"").await;
    let metrics = String::from_utf8_lossy(&body);
    assert!(
        metrics.contains("tracelake_otlp_requests_total{protocol=\"grpc\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tracelake_commit_duration_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tracelake_object_store_requests_total"),
        "{metrics}"
    );
    assert!(server.terminate().success());
}

// `tracelake serve`: the binary.
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_what_was_accepted_and_sigkill_loses_nothing_acknowledged() {
    let dir = common::scratch("otlp-signals");
    let table = dir.join("spans");
    // Requests in flight when SIGTERM arrives are committed and answered; exit 0.
    let server = common::ServeProcess::start(&table, &["--commit-linger-ms", "300"]);
    let addr = server.http;
    let senders: Vec<_> = (0..8u8)
        .map(|seed| {
            tokio::spawn(async move {
                let (status, _) =
                    post(addr, &[PROTOBUF], &request(seed + 1, 50, 0).encode_to_vec()).await;
                status
            })
        })
        .collect();
    // The requests are waiting for the lingering commit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let exit = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    let mut acknowledged = 0;
    for sender in senders {
        match sender.await.unwrap() {
            200 => acknowledged += 1,
            status => assert_eq!(status, 503, "answered, with a retryable status"),
        }
    }
    assert!(exit.success(), "{exit:?}");
    let lake = TraceLake::open(table.to_str().unwrap()).await.unwrap();
    assert_eq!(common::count_spans(&lake).await, acknowledged * 50);
    assert!(acknowledged > 0);

    // SIGKILL right after an answer: what was acknowledged is in the table.
    let server = common::ServeProcess::start(&table, &[]);
    let (status, _) = post(
        server.http,
        &[PROTOBUF],
        &request(77, 40, 0).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    drop(server); // SIGKILL
    let lake = TraceLake::open(table.to_str().unwrap()).await.unwrap();
    assert_eq!(common::count_spans(&lake).await, acknowledged * 50 + 40);
}
