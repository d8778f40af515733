//! The Grafana Tempo HTTP API (`tracelake::tempo::router`), driven as Grafana drives it:
//! Accept headers, v2 then v1 on 404, doubly encoded tag names, unix seconds.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use prost::Message;
use serde_json::Value;
use tower::ServiceExt;
use tracelake::tempo::{TempoApiConfig, TraceByIdResponse, router};
use tracelake::{AttributeValue, Span, SpanKind, StatusCode as SpanStatus, TraceLake};

const T0: i64 = 1_714_564_800_000_000_000; // 2024-05-01T12:00:00Z
const SECOND: i64 = 1_000_000_000;

fn span(
    trace: &str,
    id: &str,
    parent: Option<&str>,
    name: &str,
    service: &str,
    start: i64,
    millis: i64,
) -> Span {
    Span {
        trace_id: trace.repeat(32),
        span_id: id.repeat(16),
        parent_span_id: parent.map(|p| p.repeat(16)),
        name: name.into(),
        kind: if parent.is_none() {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        service_name: service.into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + millis * 1_000_000,
        scope_name: Some("tests".into()),
        ..Default::default()
    }
}

async fn lake() -> (tempfile::TempDir, TraceLake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = TraceLake::create(dir.path().to_str().unwrap())
        .await
        .unwrap();
    let mut pay = span("a", "1", None, "POST /pay", "checkout", T0, 250);
    pay.attributes = vec![
        ("http.route".into(), AttributeValue::String("/pay".into())),
        ("http.response.status_code".into(), AttributeValue::Int(500)),
    ];
    pay.resource_attributes = vec![(
        "service.name".into(),
        AttributeValue::String("checkout".into()),
    )];
    pay.status_code = SpanStatus::Error;
    let mut charge = span(
        "a",
        "2",
        Some("1"),
        "charge",
        "payments",
        T0 + SECOND / 10,
        100,
    );
    charge.attributes = vec![("retry".into(), AttributeValue::Bool(true))];
    let mut home = span("b", "3", None, "GET /", "frontend", T0 + 60 * SECOND, 20);
    home.attributes = vec![("http.route".into(), AttributeValue::String("/".into()))];
    lake.append_spans(&[pay, charge, home]).await.unwrap();
    (dir, lake)
}

async fn get(app: &axum::Router, uri: &str, accept: Option<&str>) -> (StatusCode, Vec<u8>) {
    let mut request = Request::get(uri);
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .unwrap();
    (status, body.to_vec())
}

async fn json(app: &axum::Router, uri: &str) -> Value {
    let (status, body) = get(app, uri, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{uri}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn echo_buildinfo_and_a_trace_by_id_in_protobuf_and_json() {
    let (_dir, lake) = lake().await;
    let app = router(&lake, TempoApiConfig::default()).unwrap();
    assert_eq!(
        get(&app, "/api/echo", None).await,
        (StatusCode::OK, b"echo".to_vec())
    );
    let info = json(&app, "/api/status/buildinfo").await;
    assert!(
        info["version"].as_str().unwrap().starts_with("2."),
        "{info}"
    );

    let start = T0 / SECOND - 10;
    let uri = format!(
        "/api/v2/traces/{}?start={start}&end={}",
        "a".repeat(32),
        start + 3600
    );
    let (status, body) = get(&app, &uri, Some("application/protobuf")).await;
    assert_eq!(status, StatusCode::OK);
    let answer = TraceByIdResponse::decode(body.as_slice()).unwrap();
    let trace = answer.trace.unwrap();
    let mut names: Vec<(String, String)> = trace
        .resource_spans
        .iter()
        .flat_map(|rs| {
            let service = rs
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .unwrap()
                .value
                .clone()
                .unwrap();
            let service = format!("{:?}", service.value.unwrap());
            rs.scope_spans.iter().flat_map(move |ss| {
                let service = service.clone();
                ss.spans
                    .iter()
                    .map(move |s| (service.clone(), s.name.clone()))
            })
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].0.contains("checkout") && names[0].1 == "POST /pay",
        "{names:?}"
    );
    assert!(
        names[1].0.contains("payments") && names[1].1 == "charge",
        "{names:?}"
    );
    let root = trace
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .find(|s| s.name == "POST /pay")
        .unwrap();
    assert_eq!(root.trace_id, vec![0xaa; 16]);
    assert_eq!(
        root.end_time_unix_nano - root.start_time_unix_nano,
        250_000_000
    );
    assert_eq!(root.status.as_ref().unwrap().code, 2);
    assert!(
        root.attributes
            .iter()
            .any(|kv| kv.key == "http.response.status_code")
    );

    // v1 and JSON: `batches`, and `trace.resourceSpans` for v2.
    let v1 = json(&app, &format!("/api/traces/{}", "a".repeat(32))).await;
    assert_eq!(v1["batches"].as_array().unwrap().len(), 2, "{v1}");
    let v2 = json(&app, &format!("/api/v2/traces/{}", "b".repeat(32))).await;
    assert_eq!(
        v2["trace"]["resourceSpans"].as_array().unwrap().len(),
        1,
        "{v2}"
    );

    // Unknown ids are 404 (Grafana then tries v1), malformed ones 400.
    let (status, _) = get(
        &app,
        &format!("/api/v2/traces/{}", "c".repeat(32)),
        Some("application/protobuf"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&app, &format!("/api/traces/{}", "c".repeat(32)), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(&app, "/api/v2/traces/not-hex", None).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn search_by_traceql_and_by_tags_returns_tempo_search_results() {
    let (_dir, lake) = lake().await;
    let app = router(&lake, TempoApiConfig::default()).unwrap();
    let (start, end) = (T0 / SECOND - 60, T0 / SECOND + 3600);
    let q = "%7B%20span.http.route%20%3D%20%22%2Fpay%22%20%26%26%20duration%20%3E%20100ms%20%7D";
    let found = json(
        &app,
        &format!("/api/search?q={q}&start={start}&end={end}&limit=20&spss=3"),
    )
    .await;
    let traces = found["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 1, "{found}");
    let trace = &traces[0];
    assert_eq!(trace["traceID"], "a".repeat(32));
    assert_eq!(trace["rootServiceName"], "checkout");
    assert_eq!(trace["rootTraceName"], "POST /pay");
    assert_eq!(trace["startTimeUnixNano"], T0.to_string());
    assert_eq!(trace["durationMs"], 250);
    let set = &trace["spanSets"][0];
    assert_eq!(set["matched"], 1);
    assert_eq!(set["spans"][0]["spanID"], "1".repeat(16));
    assert_eq!(set["spans"][0]["durationNanos"], "250000000");
    assert_eq!(set["spans"][0]["attributes"][0]["key"], "http.route");
    assert_eq!(
        set["spans"][0]["attributes"][0]["value"]["stringValue"],
        "/pay"
    );

    // The older form: logfmt tags and durations.
    let found = json(
        &app,
        "/api/search?tags=service.name%3Dfrontend&minDuration=10ms",
    )
    .await;
    assert_eq!(found["traces"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["traces"][0]["traceID"], "b".repeat(32));

    // A malformed query is a 400 naming the position; the server keeps serving.
    let (status, body) = get(&app, "/api/search?q=%7B%20span.a%20%3D%20%7D", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("position 11"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = get(
        &app,
        &format!(
            "/api/search?q=%7B%7D&start={start}&end={}",
            start + 200 * 3600
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a window over 168 h");
    let (status, _) = get(&app, "/api/search?q=%7B%7D&limit=1000000", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a limit over the maximum");
    assert_eq!(
        json(&app, "/api/search?q=%7B%7D").await["traces"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn tags_values_and_metrics() {
    let (_dir, lake) = lake().await;
    let app = router(&lake, TempoApiConfig::default()).unwrap();
    let tags = json(&app, "/api/v2/search/tags").await;
    let scope = |name: &str| -> Vec<String> {
        tags["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        scope("span"),
        ["http.response.status_code", "http.route", "retry"]
    );
    assert!(scope("resource").contains(&"service.name".to_string()));
    assert!(scope("intrinsic").contains(&"duration".to_string()));
    let v1 = json(&app, "/api/search/tags").await;
    assert!(
        v1["tagNames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "http.route"),
        "{v1}"
    );

    // Tag names arrive URL-encoded twice.
    let values = json(&app, "/api/v2/search/tag/span.http%252Eroute/values").await;
    let mut got: Vec<(String, String)> = values["tagValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["type"].as_str().unwrap().into(),
                v["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("string".into(), "/".into()),
            ("string".into(), "/pay".into())
        ]
    );
    let services = json(&app, "/api/v2/search/tag/resource.service.name/values").await;
    assert_eq!(
        services["tagValues"].as_array().unwrap().len(),
        3,
        "{services}"
    );
    let v1 = json(&app, "/api/search/tag/http.route/values").await;
    assert_eq!(v1["tagValues"].as_array().unwrap().len(), 2, "{v1}");

    // Metrics: spans per minute by service over 10 minutes from T0.
    let (start, end) = (T0 / SECOND, T0 / SECOND + 600);
    let q = "%7B%7D%20%7C%20count_over_time()%20by%20(resource.service.name)";
    let range = json(
        &app,
        &format!("/api/metrics/query_range?q={q}&start={start}&end={end}&step=60s"),
    )
    .await;
    let series = range["series"].as_array().unwrap();
    assert_eq!(series.len(), 3, "{range}");
    let frontend = series
        .iter()
        .find(|s| s["labels"][0]["value"]["stringValue"] == "frontend")
        .unwrap();
    assert_eq!(frontend["labels"][0]["key"], "resource.service.name");
    assert_eq!(
        frontend["samples"][0]["timestampMs"],
        ((T0 + 60 * SECOND) / 1_000_000).to_string()
    );
    assert_eq!(frontend["samples"][0]["value"], 1.0);
    let instant = json(
        &app,
        &format!("/api/metrics/query?q={q}&start={start}&end={end}"),
    )
    .await;
    assert_eq!(instant["series"].as_array().unwrap().len(), 3, "{instant}");
    let (status, _) = get(&app, "/api/metrics/query_range?q=%7B%7D", None).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a search is not a metrics query"
    );
}

#[tokio::test]
async fn a_bearer_token_is_required_when_configured() {
    let (_dir, lake) = lake().await;
    let app = router(
        &lake,
        TempoApiConfig::default().with_bearer_token(Some("s3cret".into())),
    )
    .unwrap();
    assert_eq!(
        get(&app, "/api/echo", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let response = app
        .clone()
        .oneshot(
            Request::get("/api/echo")
                .header("Authorization", "Bearer s3cret")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The trace view's page holds no data and loads without the token (its API calls send
    // the one the user enters).
    for page in [
        "/",
        "/trace/0af7651916cd43dd8448eb211c80319c",
        "/ui/app.js",
        "/ui/style.css",
    ] {
        let (status, body) = get(&app, page, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(!body.is_empty(), "{page}");
    }
    assert_eq!(
        get(&app, "/api/search?q=%7B%7D", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}
