//! The trace view of `tracelake serve` (`/` and `/trace/<id>`), in a real browser: Debian's
//! Chromium driven by playwright-core (tests/clients/trace_view.js), against a table filled by
//! the OpenTelemetry Python SDK over OTLP and a 1,000-span trace with orphans and two roots.
//! What the page shows is checked against `trace_tree`.
//!
//! Screenshots go to `TRACELAKE_SCREENSHOTS` when set (docs/images/ is made that way), else
//! to the test's scratch directory.

use crate::common;

use std::process::Command;

use serde_json::{Value, json};
use tracelake::{AttributeValue, Span, SpanKind, StatusCode, TraceLake};

const BIG: &str = "b16b16b16b16b16b16b16b16b16b16b1";

/// 1,000 spans: a root with a tree below it (fan-out 4), two orphans (their parent is not in
/// the trace) with children, and a second root, some spans errors.
fn big_trace(t0: i64) -> Vec<Span> {
    let mut spans = Vec::new();
    let id = |i: usize| format!("{:016x}", 0x1000 + i);
    for i in 0..990 {
        let parent = (i > 0).then(|| id((i - 1) / 4));
        let depth = (usize::BITS - (3 * i + 1).leading_zeros()) as i64 / 2;
        spans.push(Span {
            trace_id: BIG.into(),
            span_id: id(i),
            parent_span_id: parent,
            name: format!("op-{}", i % 17),
            kind: SpanKind::Internal,
            service_name: format!("svc-{}", i % 5),
            start_time_unix_nano: t0 + i as i64 * 1_000_000 + depth,
            end_time_unix_nano: t0 + i as i64 * 1_000_000 + 5_000_000,
            status_code: if i % 97 == 5 {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            ..Default::default()
        });
    }
    let extra = [
        ("00000000000fff01", Some("ffffffffffffffff"), 10),
        ("00000000000fff02", Some("00000000000fff01"), 11),
        ("00000000000fff03", Some("eeeeeeeeeeeeeeee"), 12),
        ("00000000000fff04", Some("00000000000fff03"), 13),
        ("00000000000fff05", Some("00000000000fff03"), 14),
        ("00000000000fff06", None, 5),
        ("00000000000fff07", Some("00000000000fff06"), 6),
        ("00000000000fff08", Some("00000000000fff07"), 7),
        ("00000000000fff09", Some("00000000000fff06"), 8),
        ("00000000000fff0a", Some("00000000000fff02"), 12),
    ];
    for (span_id, parent, ms) in extra {
        spans.push(Span {
            trace_id: BIG.into(),
            span_id: span_id.into(),
            parent_span_id: parent.map(str::to_string),
            name: "side".into(),
            service_name: "side".into(),
            start_time_unix_nano: t0 + ms * 1_000_000,
            end_time_unix_nano: t0 + (ms + 1) * 1_000_000,
            attributes: vec![("k".into(), AttributeValue::Int(ms))],
            ..Default::default()
        });
    }
    spans
}

/// `trace_tree(id)`: (span id, depth, anomaly or "") in order, and (span id, start, end) in
/// nanoseconds.
async fn tree(lake: &TraceLake, id: &str) -> (Vec<(String, i64, String)>, Vec<(String, i64, i64)>) {
    let ctx = lake.session_context().unwrap();
    let sql = format!(
        "SELECT span_id, depth, coalesce(anomaly, ''), CAST(start_time AS BIGINT), \
         CAST(end_time AS BIGINT) FROM trace_tree('{id}') ORDER BY span_order"
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let (mut rows, mut times) = (Vec::new(), Vec::new());
    for b in &batches {
        for r in 0..b.num_rows() {
            let text =
                |c: usize| arrow::util::display::array_value_to_string(b.column(c), r).unwrap();
            rows.push((text(0), text(1).parse().unwrap(), text(2)));
            times.push((text(0), text(3).parse().unwrap(), text(4).parse().unwrap()));
        }
    }
    (rows, times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_view_searches_and_draws_traces_in_chromium() {
    let clients = common::clients();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "this test needs Chromium at {chromium} (set CHROMIUM to another path): Debian's \
         `chromium` package, which tests/clients/setup.sh installs when run as root or with sudo"
    );
    let dir = common::scratch("ui");
    let table = dir.join("spans");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    {
        let lake = TraceLake::create(table.to_str().unwrap()).await.unwrap();
        lake.append_spans(&big_trace(now - 600_000_000_000))
            .await
            .unwrap();
    }
    let server = common::ServeProcess::start(&table, &[]);
    let out = Command::new(&clients.python)
        .arg(common::repo().join("tests/clients/otel_python.py"))
        .args(["http", &format!("http://{}/v1/traces", server.http)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk_trace = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    let lake = TraceLake::open(table.to_str().unwrap()).await.unwrap();
    let (sdk_rows, sdk_times) = tree(&lake, &sdk_trace).await;
    let (big_rows, _) = tree(&lake, BIG).await;
    assert_eq!(big_rows.len(), 1000);
    let root = sdk_rows[0].0.clone();
    let charge = sdk_rows[1].0.clone();

    let shots = std::env::var("TRACELAKE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.clone());
    let scenario = json!({
        "service": "py-http",
        "attribute": "http.route=/checkout",
        "trace": sdk_trace,
        "click": [root, charge],
        "big": BIG,
        "screenshots": shots,
    });
    let out = Command::new("node")
        .arg(common::repo().join("tests/clients/trace_view.js"))
        .arg(format!("http://{}", server.query))
        .arg(scenario.to_string())
        .env("NODE_PATH", &clients.node_modules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trace_view.js: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["page_errors"], json!([]), "{page:#}");

    // The pickers list the services; a search by service finds the SDK's trace (and the
    // trace of its linked root span), with the summary columns.
    let services: Vec<&str> = page["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        services.contains(&"py-http") && services.contains(&"svc-0"),
        "{services:?}"
    );
    assert_eq!(
        page["by_service_query"],
        r#"{ resource.service.name = "py-http" }"#
    );
    let by_service = page["by_service"].as_array().unwrap();
    assert_eq!(by_service.len(), 2, "{by_service:?}");
    let row = by_service
        .iter()
        .find(|r| r["trace"] == sdk_trace.as_str())
        .expect("the SDK trace");
    let cells: Vec<&str> = row["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cells[0], "py-http");
    assert_eq!(cells[1], "GET /checkout");
    assert_eq!(
        (cells[4], cells[5]),
        ("3", "1"),
        "spans and errors: {cells:?}"
    );
    assert_eq!(cells[6], sdk_trace);
    // By attribute: only the SDK trace has the route.
    assert_eq!(
        page["by_attribute_query"],
        r#"{ .http.route = "/checkout" }"#
    );
    let by_attribute: Vec<&str> = page["by_attribute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trace"].as_str().unwrap())
        .collect();
    assert_eq!(by_attribute, [sdk_trace.as_str()]);

    // The waterfall: trace_tree's order and depths, indented by depth, bars placed by start
    // and sized by duration on one axis, the error marked.
    assert!(
        page["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/trace/{sdk_trace}"))
    );
    let rows = page["rows"].as_array().unwrap();
    let shown: Vec<(String, i64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["span"].as_str().unwrap().to_string(),
                r["depth"].as_i64().unwrap(),
                r["anomaly"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(shown, sdk_rows);
    let t0 = sdk_times.iter().map(|t| t.1).min().unwrap();
    let t1 = sdk_times.iter().map(|t| t.2).max().unwrap();
    let total = (t1 - t0) as f64;
    for (row, (_, start, end)) in rows.iter().zip(&sdk_times) {
        let left = (start - t0) as f64 / total * 100.0;
        let width = (end - start) as f64 / total * 100.0;
        assert!((row["left"].as_f64().unwrap() - left).abs() < 0.01, "{row}");
        assert!(
            (row["width"].as_f64().unwrap() - width).abs() < 0.01,
            "{row}"
        );
        assert_eq!(
            row["indent"].as_f64().unwrap(),
            8.0 + 14.0 * row["depth"].as_f64().unwrap()
        );
    }
    let errors: Vec<&str> = rows
        .iter()
        .filter(|r| r["error"] == true)
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(errors, ["charge"]);

    // The attributes panel: typed span attributes and the resource of the root; the error,
    // event and link of `charge`.
    let details = page["details"].as_array().unwrap();
    assert_eq!(details[0]["name"], "GET /checkout");
    let attributes = details[0]["attributes"].as_array().unwrap();
    for expected in [
        json!(["http.route", "string", "/checkout"]),
        json!(["http.response.status_code", "int", "200"]),
        json!(["sampling.ratio", "double", "0.25"]),
        json!(["cache.hit", "bool", "true"]),
        json!(["tags", "array<string>", "[a, b]"]),
    ] {
        assert!(
            attributes.contains(&expected),
            "{expected} not in {attributes:?}"
        );
    }
    assert!(
        details[0]["resource"]
            .as_array()
            .unwrap()
            .contains(&json!(["deployment.environment", "test"])),
        "{:?}",
        details[0]["resource"]
    );
    assert_eq!(details[0]["facts"]["kind"], "server");
    assert_eq!(details[1]["name"], "charge");
    assert_eq!(details[1]["facts"]["status"], "error: card declined");
    assert_eq!(details[1]["facts"]["parent id"], root.as_str());
    assert_eq!(details[1]["events"], json!(["retry"]));
    assert_eq!(details[1]["links"].as_array().unwrap().len(), 1);

    // Errors and empty states.
    assert_eq!(page["unknown"]["kind"], "error");
    assert!(
        page["unknown"]["text"]
            .as_str()
            .unwrap()
            .contains("was not found"),
        "{}",
        page["unknown"]
    );
    assert_eq!(page["malformed_id"]["kind"], "error");
    assert!(
        page["malformed_id"]["text"]
            .as_str()
            .unwrap()
            .contains("(400)"),
        "{}",
        page["malformed_id"]
    );
    assert_eq!(page["malformed_query"]["kind"], "error");
    assert!(
        page["malformed_query"]["text"]
            .as_str()
            .unwrap()
            .contains("TraceQL error at position 11"),
        "{}",
        page["malformed_query"]
    );
    assert_eq!(page["no_match"]["kind"], "empty");

    // The 1,000-span trace, orphans and both roots drawn as trace_tree orders them.
    let big: Vec<(String, i64, String)> = page["big_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_i64().unwrap(),
                r[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(big, big_rows);
    assert_eq!(big.iter().filter(|r| r.2 == "orphan").count(), 2);
    assert_eq!(big.iter().filter(|r| r.1 == 0).count(), 4);
    eprintln!(
        "trace view: a trace of {} spans rendered in {} ms in headless Chromium",
        big.len(),
        page["big_render_ms"]
    );
    for shot in ["ui-search.png", "ui-trace.png"] {
        assert!(shots.join(shot).exists(), "{shot} was not written");
    }
}
