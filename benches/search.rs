//! Search by what a trace contains (Tier 1 group `search`, `make bench.extended` or
//! `TRACELAKE_BENCH_TIER=1 TRACELAKE_BENCH_GROUP=search cargo bench --profile bench --bench
//! search`): the demo's generator (realistic traces over one hour, `http.route` and friends),
//! 1M spans in 24 commits (the default dedicated attribute columns), the same spans after
//! `optimize`, and (with
//! `TRACELAKE_BENCH_SEARCH_10M=1`) 10M spans. One span of the table holds a unique
//! `enduser.id` (the needle).
//!
//! Each figure is the p50 of 30 runs (the lookups: 200 fresh ids), with the scan metrics of
//! one run in the artifact's `extra`: row groups read and pruned (by attributes), bytes.
//!
//! Group `tempo_api` (`TRACELAKE_BENCH_GROUP=tempo_api`): the Tempo HTTP API of
//! [`tracelake::tempo::router`] served by axum on loopback over the same 1M-span table, driven
//! by a keep-alive HTTP/1.1 client as Grafana drives it (unix-second windows of the fixture's
//! hour; none for trace by id, as Grafana by default): trace by id as protobuf (200 fresh
//! ids), search, tags, tag values and a metrics
//! `query_range`. Each figure is the p50 of 30 requests (trace by id: 200), answer bytes in
//! `extra`.

mod support;

use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::SessionContext;
use serde_json::json;
use support::{Artifact, BenchTier, DAY0, enabled, group_selected, percentile, runtime, sample};
use tracelake::synth::{TraceGenerator, TraceShape};
use tracelake::{AttributeValue, TraceLake};

const COMMITS: usize = 24;
const HOUR: i64 = 3_600_000_000_000;
const NEEDLE: &str = "needle-user-42";
/// The 10-minute window of the windowed figures: 00:30 to 00:40 of the fixture's hour.
const WINDOW: (&str, &str) = ("2024-05-01T00:30:00Z", "2024-05-01T00:40:00Z");

/// The fixture: about `spans` spans of the demo's generator over one hour from `DAY0`, in
/// [`COMMITS`] commits; reused when built already. Returns the path and sample trace ids.
async fn fixture(spans: usize) -> (PathBuf, Vec<String>) {
    let path = support::workspace()
        .join("target/bench-fixtures")
        .join(format!("demo-{spans}-c{COMMITS}"));
    let ids_file = path.join("sample_ids.txt");
    if let Ok(text) = std::fs::read_to_string(&ids_file) {
        return (path, text.lines().map(str::to_string).collect());
    }
    let _ = std::fs::remove_dir_all(&path);
    let lake = TraceLake::create(path.to_str().unwrap())
        .await
        .expect("create fixture");
    let mut generator = TraceGenerator::new(7, TraceShape::Realistic);
    let per_commit = spans / COMMITS;
    // Traces start evenly over the hour: about 7 spans a trace.
    let step = HOUR / (spans as i64 / 7).max(1);
    let mut next_start = DAY0;
    let mut ids = Vec::new();
    for commit in 0..COMMITS {
        let mut batch = Vec::with_capacity(per_commit + 64);
        while batch.len() < per_commit {
            batch.extend(generator.trace(next_start));
            next_start += step;
        }
        if commit == COMMITS / 2 {
            batch[per_commit / 2]
                .attributes
                .push(("enduser.id".into(), AttributeValue::String(NEEDLE.into())));
        }
        ids.extend(
            batch
                .iter()
                .step_by(per_commit / 10)
                .map(|s| s.trace_id.clone()),
        );
        lake.append_spans(&batch).await.expect("append fixture");
    }
    ids.sort_by_key(|id| {
        id.bytes()
            .rev()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64)
    });
    ids.dedup();
    std::fs::write(&ids_file, ids.join("\n")).expect("write ids");
    (path, ids)
}

async fn open(path: &Path) -> (TraceLake, SessionContext) {
    let options = tracelake::TableOptions {
        lookup_cache_bytes: 0,
        ..Default::default()
    };
    let lake = TraceLake::open_with_options(path.to_str().unwrap(), &options)
        .await
        .expect("open fixture");
    let ctx = lake.session_context().expect("context");
    (lake, ctx)
}

/// Runs `sql`: rows and scan metrics.
async fn run(ctx: &SessionContext, sql: &str) -> (usize, tracelake::observe::ScanMetrics) {
    let plan = ctx
        .sql(sql)
        .await
        .expect("plan")
        .create_physical_plan()
        .await
        .expect("physical plan");
    let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
        .await
        .expect("execute");
    (
        batches.iter().map(|b| b.num_rows()).sum(),
        tracelake::observe::ScanMetrics::from_plan(&plan),
    )
}

/// The queries of the group: (name, SQL).
fn queries() -> Vec<(&'static str, String)> {
    // `http.route` is a dedicated column of the default list; `payment.currency` is not.
    let route = "attr_str(attributes, 'http.route') = '/checkout'";
    let currency = "attr_str(attributes, 'payment.currency') = 'EUR'";
    let window = format!(
        "start_time >= '{}' AND start_time < '{}'",
        WINDOW.0, WINDOW.1
    );
    vec![
        ("dedicated_count", format!("SELECT count(*) FROM spans WHERE {route}")),
        (
            "dedicated_trace_ids",
            format!("SELECT DISTINCT trace_id FROM spans WHERE {route} LIMIT 20"),
        ),
        (
            "dedicated_trace_ids_window",
            format!("SELECT DISTINCT trace_id FROM spans WHERE {route} AND {window} LIMIT 20"),
        ),
        (
            "dedicated_field_access",
            "SELECT count(*) FROM spans WHERE attributes['http.route']['string_value'] = '/checkout'".into(),
        ),
        ("generic_count", format!("SELECT count(*) FROM spans WHERE {currency}")),
        (
            "generic_trace_ids_window",
            format!("SELECT DISTINCT trace_id FROM spans WHERE {currency} AND {window} LIMIT 20"),
        ),
        (
            "needle",
            format!("SELECT * FROM spans WHERE attr_str(attributes, 'enduser.id') = '{NEEDLE}'"),
        ),
        (
            "in_list",
            "SELECT count(*) FROM spans WHERE attr_str(attributes, 'http.route') IN ('/checkout', '/cart')".into(),
        ),
        (
            "like_prefix",
            "SELECT count(*) FROM spans WHERE attr_str(attributes, 'http.route') LIKE '/check%'".into(),
        ),
        (
            "int_range_and_service",
            "SELECT count(*) FROM spans WHERE attr_int(attributes, 'http.response.status_code') >= 500 AND service_name = 'frontend'".into(),
        ),
        (
            "is_not_null_and_name",
            "SELECT count(*) FROM spans WHERE attr_str(attributes, 'db.system') IS NOT NULL AND name = 'postgres SELECT'".into(),
        ),
        (
            "resource_and_status",
            "SELECT count(*) FROM spans WHERE attr_str(resource_attributes, 'service.name') = 'payments' AND status_code = 'ERROR'".into(),
        ),
        (
            "trace_search_window",
            format!(
                "SELECT * FROM trace_search('attr_str(attributes, ''http.route'') = ''/checkout''', '{}', '{}', 20)",
                WINDOW.0, WINDOW.1
            ),
        ),
    ]
}

/// Measures every query and the lookups on the table at `path`, naming artifacts with
/// `label`.
fn measure(rt: &tokio::runtime::Runtime, path: &Path, ids: &[String], label: &str) {
    let (lake, ctx) = rt.block_on(open(path));
    let stats = lake.stats().expect("stats");
    // The table's files (the log's sizes): an optimized copy still holds the removed ones.
    let bytes = stats.bytes;
    let table = json!({"spans": stats.spans, "files": stats.files, "commits": COMMITS});
    let mut disk = Artifact::new(
        &format!("search_bytes_per_span_{label}"),
        BenchTier::Extended,
        "data files",
    );
    disk.rows = stats.spans;
    disk.table = table.clone();
    disk.extra = json!({
        "bytes": bytes,
        "bytes_per_span": bytes as f64 / stats.spans.max(1) as f64,
    });
    disk.timings = vec![std::time::Duration::ZERO];
    disk.write();
    // `TRACELAKE_BENCH_QUERY=dedicated_count` measures that query alone, on the 1M table only,
    // `TRACELAKE_BENCH_RUNS` times (default 30): for `perf record`.
    let only = std::env::var("TRACELAKE_BENCH_QUERY").ok();
    let runs: usize = std::env::var("TRACELAKE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    for (name, sql) in queries() {
        if only.as_deref().is_some_and(|q| q != name) {
            continue;
        }
        let (rows, metrics) = rt.block_on(run(&ctx, &sql));
        let timings = sample(runs, |_| {
            rt.block_on(run(&ctx, &sql));
        });
        let mut artifact =
            Artifact::new(&format!("search_{name}_{label}"), BenchTier::Extended, &sql);
        artifact.timings = timings;
        artifact.rows = rows as u64;
        artifact.bytes_read = metrics.bytes_scanned as u64;
        artifact.table = table.clone();
        artifact.extra = json!({
            "files_opened": metrics.files_opened,
            "row_groups_matched": metrics.row_groups_matched,
            "row_groups_pruned_statistics": metrics.row_groups_pruned_statistics,
            "row_groups_pruned_attributes": metrics.row_groups_pruned_attributes,
            "bytes_pruned_attributes": metrics.bytes_pruned_attributes,
        });
        artifact.write();
    }
    if only.is_some() {
        return;
    }
    for (name, template) in [
        (
            "lookup_select_star",
            "SELECT * FROM spans WHERE trace_id = '{id}'",
        ),
        ("lookup_trace_tree", "SELECT * FROM trace_tree('{id}')"),
    ] {
        rt.block_on(run(&ctx, &template.replace("{id}", &ids[0])));
        let mut rows = 0;
        let timings = sample(200.min(ids.len()), |i| {
            rows = rt
                .block_on(run(&ctx, &template.replace("{id}", &ids[i % ids.len()])))
                .0;
        });
        let mut artifact = Artifact::new(
            &format!("search_{name}_{label}"),
            BenchTier::Extended,
            template,
        );
        artifact.timings = timings;
        artifact.rows = rows as u64;
        artifact.table = table.clone();
        artifact.write();
    }
}

fn search(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("search") {
        return;
    }
    let rt = runtime();
    let (path, ids) = rt.block_on(fixture(1_000_000));
    measure(&rt, &path, &ids, "1m");
    if std::env::var("TRACELAKE_BENCH_QUERY").is_ok() {
        return;
    }
    // The same spans compacted: a copy, optimized.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("spans");
    support::copy_dir(&path, &copy);
    rt.block_on(async {
        let lake = TraceLake::open(copy.to_str().unwrap())
            .await
            .expect("open copy");
        lake.optimize().await.expect("optimize");
    });
    measure(&rt, &copy, &ids, "1m_optimized");
    if std::env::var("TRACELAKE_BENCH_SEARCH_10M").is_ok_and(|v| v == "1") {
        let (path, ids) = rt.block_on(fixture(10_000_000));
        measure(&rt, &path, &ids, "10m");
    }
}

/// A keep-alive HTTP/1.1 client: enough of the protocol for the answers axum sends
/// (`content-length` or chunked bodies).
struct HttpClient {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl HttpClient {
    async fn connect(address: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream: tokio::io::BufReader::new(stream),
        }
    }

    /// `GET path` with `accept`: the status and the body.
    async fn get(&mut self, path: &str, accept: &str) -> (u16, Vec<u8>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: {accept}\r\n\r\n");
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("send");
        let mut line = String::new();
        self.stream.read_line(&mut line).await.expect("status");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.expect("header");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').expect("header line");
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await.expect("chunk size");
                let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await.expect("chunk");
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length.expect("content-length"), 0);
            self.stream.read_exact(&mut body).await.expect("body");
        }
        (status, body)
    }
}

fn encoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// One Flight SQL statement through the Rust client: its rows, read batch by batch.
async fn flight_rows(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> usize {
    use futures::StreamExt;
    let info = client
        .execute(sql.to_string(), None)
        .await
        .expect("execute");
    let mut rows = 0;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let mut stream = client.do_get(ticket).await.expect("do_get");
        while let Some(batch) = stream.next().await {
            rows += batch.expect("batch").num_rows();
        }
    }
    rows
}

/// Tier 1 group `flight_sql` (issue 26): the endpoint of `tracelake serve --flight-sql` on
/// loopback, driven by arrow-flight's Flight SQL client, against the same statements in
/// process.
fn flight_sql(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("flight_sql") {
        return;
    }
    let rt = runtime();
    let (path, ids) = rt.block_on(fixture(1_000_000));
    let (lake, ctx) = rt.block_on(open(&path));
    let stats = lake.stats().expect("stats");
    let table = json!({"spans": stats.spans, "files": stats.files, "commits": COMMITS});
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let address = listener.local_addr().expect("address");
    rt.spawn(tracelake::flight_sql::serve(
        ctx.clone(),
        tracelake::flight_sql::FlightSqlConfig::default(),
        listener,
        std::future::pending(),
    ));
    let channel = rt
        .block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .expect("endpoint")
                .tcp_nodelay(true)
                .connect(),
        )
        .expect("connect");
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    let tree = |i: usize| format!("SELECT * FROM trace_tree('{}')", ids[(i + 7) % ids.len()]);
    // Fresh ids, in process and over Flight SQL (other ids than each other's).
    rt.block_on(run(&ctx, &tree(0)));
    let local = sample(200.min(ids.len() / 2), |i| {
        rt.block_on(run(&ctx, &tree(2 * i)));
    });
    let mut rows = 0;
    let remote = sample(200.min(ids.len() / 2), |i| {
        rows = rt.block_on(flight_rows(&mut client, &tree(2 * i + 1)));
    });
    let (local_p50, remote_p50) = (percentile(&local, 50.0), percentile(&remote, 50.0));
    let mut artifact = Artifact::new(
        "flight_sql_trace_tree",
        BenchTier::Extended,
        "SELECT * FROM trace_tree('<fresh id>') over Flight SQL (loopback)",
    );
    artifact.timings = remote;
    artifact.rows = rows as u64;
    artifact.table = table.clone();
    artifact.extra = json!({
        "in_process_p50_ns": local_p50,
        "above_in_process_ns": remote_p50.saturating_sub(local_p50),
    });
    artifact.write();
    eprintln!(
        "flight_sql trace_tree: in process {:.3} ms, over Flight SQL {:.3} ms",
        local_p50 as f64 / 1e6,
        remote_p50 as f64 / 1e6
    );
    let mut rows = 0;
    let scans = sample(3, |_| {
        rows = rt.block_on(flight_rows(&mut client, "SELECT * FROM spans"));
    });
    let p50 = percentile(&scans, 50.0);
    let mut artifact = Artifact::new(
        "flight_sql_select_star",
        BenchTier::Extended,
        "SELECT * FROM spans over Flight SQL (loopback), every batch read by the client",
    );
    artifact.timings = scans;
    artifact.rows = rows as u64;
    artifact.table = table;
    artifact.extra = json!({ "rows_per_second": rows as f64 / (p50 as f64 / 1e9) });
    artifact.write();
    eprintln!(
        "flight_sql select *: {rows} rows in {:.3} s, {:.0} rows/s",
        p50 as f64 / 1e9,
        rows as f64 / (p50 as f64 / 1e9)
    );
}

fn tempo_api(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("tempo_api") {
        return;
    }
    let rt = runtime();
    let (path, ids) = rt.block_on(fixture(1_000_000));
    let (lake, _) = rt.block_on(open(&path));
    let stats = lake.stats().expect("stats");
    let table = json!({"spans": stats.spans, "files": stats.files, "commits": COMMITS});
    let router = tracelake::tempo::router(&lake, tracelake::tempo::TempoApiConfig::default())
        .expect("router");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let address = listener.local_addr().expect("address");
    rt.spawn(async move { axum::serve(listener, router).await });
    let mut client = rt.block_on(HttpClient::connect(address));
    let (start, end) = (DAY0 / 1_000_000_000, (DAY0 + HOUR) / 1_000_000_000);
    let window = format!("start={start}&end={end}");
    // As in the `search` group: `TRACELAKE_BENCH_QUERY=trace_v2_protobuf` measures that
    // request alone, `TRACELAKE_BENCH_RUNS` times, for `perf record`.
    let only = std::env::var("TRACELAKE_BENCH_QUERY").ok();
    let forced_runs: Option<usize> = std::env::var("TRACELAKE_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok());
    let mut record = |name: &str,
                      entrypoint: &str,
                      runs: usize,
                      path: &dyn Fn(usize) -> String,
                      accept: &str| {
        if only.as_deref().is_some_and(|o| o != name) {
            return;
        }
        let runs = forced_runs.unwrap_or(runs);
        let (status, body) = rt.block_on(client.get(&path(0), accept));
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        let mut bytes = 0;
        let timings = sample(runs, |i| {
            let (status, body) = rt.block_on(client.get(&path(i), accept));
            assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
            bytes = body.len();
        });
        let mut artifact = Artifact::new(
            &format!("tempo_api_{name}"),
            BenchTier::Extended,
            entrypoint,
        );
        artifact.timings = timings;
        artifact.table = table.clone();
        artifact.extra = json!({ "answer_bytes": bytes, "example": path(0) });
        artifact.write();
    };
    record(
        "trace_v2_protobuf",
        "GET /api/v2/traces/<id> (Accept: application/protobuf; no window, Grafana's default), fresh ids",
        200.min(ids.len()),
        &|i| format!("/api/v2/traces/{}", ids[(i + 1) % ids.len()]),
        "application/protobuf",
    );
    for (name, query) in [
        // The issue's query (no checkout span of the demo has http.route: nothing matches, so
        // the whole hour is searched), and the demo's own route.
        (
            "search_checkout_pay",
            r#"{resource.service.name="checkout" && span.http.route="/pay" && duration > 100ms}"#,
        ),
        (
            "search_frontend_checkout",
            r#"{resource.service.name="frontend" && span.http.route="/checkout" && duration > 100ms}"#,
        ),
    ] {
        let path = format!("/api/search?q={}&limit=20&spss=3&{window}", encoded(query));
        record(
            name,
            &format!("GET /api/search?q={query}&limit=20 (1 hour)"),
            30,
            &|_| path.clone(),
            "application/json",
        );
    }
    let tags = format!("/api/v2/search/tags?{window}");
    record(
        "tags_v2",
        "GET /api/v2/search/tags (1 hour)",
        30,
        &|_| tags.clone(),
        "application/json",
    );
    let values = format!(
        "/api/v2/search/tag/{}/values?{window}",
        encoded(&encoded("span.http.route"))
    );
    record(
        "tag_values_v2",
        "GET /api/v2/search/tag/span.http.route/values (1 hour)",
        30,
        &|_| values.clone(),
        "application/json",
    );
    let rate = "{} | rate() by (resource.service.name)";
    let range = format!(
        "/api/metrics/query_range?q={}&step=60&{window}",
        encoded(rate)
    );
    record(
        "query_range_rate_by_service",
        &format!("GET /api/metrics/query_range?q={rate}&step=60 (1 hour)"),
        30,
        &|_| range.clone(),
        "application/json",
    );
}

criterion_group!(benches, search, tempo_api, flight_sql);
criterion_main!(benches);
