//! Grafana Tempo's HTTP query API over a lake, as an axum [`Router`] an embedder mounts (and
//! `tracelake serve --query-http` serves): trace by id (protobuf or JSON), TraceQL search, tag
//! names and values, and TraceQL metrics, so a Grafana Tempo data source pointed at it works.
//! Every answer is computed with the SQL functions of [`crate::functions`] (`traceql`,
//! `traceql_metrics`, `attribute_keys`, `attribute_values`) in a read-only session: nothing on
//! this router writes. docs/grafana.md lists the endpoints and what is supported. The same
//! router serves the trace view ([`ui`]): a search page at `/` and a waterfall at
//! `/trace/<id>` (docs/ui.md).
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let lake = tracelake::TraceLake::open("./tracelake-data").await?;
//! let app = tracelake::tempo::router(&lake, tracelake::tempo::TempoApiConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3200").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod otlp_out;
pub mod ui;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use datafusion::prelude::SessionContext;
use prost::Message;
use serde_json::{Value, json};

use crate::error::{Result, TraceLakeError};
use crate::traceql::compile::sql_string;
use crate::traceql::{Compiled, ShownField, compile_text};
use crate::{Registration, TraceLake};

/// The Tempo version reported by `/api/status/buildinfo`: Grafana enables features by it.
/// tracelake serves the v2 trace-by-id and tag endpoints and TraceQL search and metrics of
/// this Tempo release's API.
pub const TEMPO_API_VERSION: &str = "2.7.0";

/// How the query API treats requests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TempoApiConfig {
    /// The longest `[start, end]` window a request may ask (default 168 h, Tempo's).
    pub max_window: Duration,
    /// The most traces a search may return (default 1,000).
    pub max_limit: usize,
    /// A request still running after this long is cancelled with 504 (default 30 s).
    pub timeout: Duration,
    /// When set, every request must carry `Authorization: Bearer <token>` (else 401).
    pub bearer_token: Option<String>,
}

impl Default for TempoApiConfig {
    fn default() -> Self {
        Self {
            max_window: Duration::from_secs(168 * 3600),
            max_limit: 1_000,
            timeout: Duration::from_secs(30),
            bearer_token: None,
        }
    }
}

impl TempoApiConfig {
    /// Sets [`Self::bearer_token`].
    pub fn with_bearer_token(mut self, token: Option<String>) -> Self {
        self.bearer_token = token;
        self
    }

    /// Sets [`Self::timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`Self::max_window`].
    pub fn with_max_window(mut self, window: Duration) -> Self {
        self.max_window = window;
        self
    }
}

struct Api {
    ctx: SessionContext,
    config: TempoApiConfig,
    /// For tag pickers answered from dictionary pages.
    table: Arc<crate::table::TraceTable>,
}

/// An answer that is not 200.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, message.into())
}

fn failed(e: impl std::fmt::Display) -> Refusal {
    Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

type Answer = std::result::Result<Response, Refusal>;

/// Column `i` of `batch` as strings (an error, not a panic, if it is not).
fn strings(
    batch: &RecordBatch,
    i: usize,
) -> std::result::Result<&arrow::array::StringArray, Refusal> {
    batch.column(i).as_string_opt::<i32>().ok_or_else(|| {
        failed(format!(
            "column {i} came as {}",
            batch.column(i).data_type()
        ))
    })
}

/// Column `i` of `batch` as `T` values (an error, not a panic, if it is not).
fn primitive<T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &RecordBatch,
    i: usize,
) -> std::result::Result<&arrow::array::PrimitiveArray<T>, Refusal> {
    batch.column(i).as_primitive_opt::<T>().ok_or_else(|| {
        failed(format!(
            "column {i} came as {}",
            batch.column(i).data_type()
        ))
    })
}

/// The query API over `lake`, in a read-only session of its own.
pub fn router(lake: &TraceLake, config: TempoApiConfig) -> Result<Router> {
    let ctx = SessionContext::new();
    lake.register_with(&ctx, &Registration::default().read_only(true))?;
    let api = Arc::new(Api {
        ctx,
        config,
        table: lake.table().clone(),
    });
    let routes = Router::new()
        .route("/api/echo", get(|| async { "echo" }))
        .route("/api/status/buildinfo", get(buildinfo))
        .route("/api/traces/{id}", get(trace_v1))
        .route("/api/v2/traces/{id}", get(trace_v2))
        .route("/api/search", get(search))
        .route("/api/search/tags", get(tags_v1))
        .route("/api/v2/search/tags", get(tags_v2))
        .route("/api/search/tag/{tag}/values", get(values_v1))
        .route("/api/v2/search/tag/{tag}/values", get(values_v2))
        .route("/api/metrics/query_range", get(query_range))
        .route("/api/metrics/query", get(query_instant))
        .layer(middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api)
        // The trace view's page holds no data: it is served without the token (its API calls
        // send it).
        .merge(ui::routes());
    Ok(routes)
}

/// The bearer token and the timeout.
async fn guard(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.config.bearer_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return Refusal(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (Authorization: Bearer <token>)".into(),
            )
            .into_response();
        }
    }
    match tokio::time::timeout(api.config.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Refusal(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the query ran longer than {:?} and was cancelled",
                api.config.timeout
            ),
        )
        .into_response(),
    }
}

async fn buildinfo() -> impl IntoResponse {
    axum::Json(json!({
        "version": TEMPO_API_VERSION,
        "revision": concat!("tracelake-", env!("CARGO_PKG_VERSION")),
        "branch": "tracelake",
        "buildUser": "tracelake",
        "buildDate": "",
        "goVersion": "",
    }))
}

/// A time parameter: unix seconds (Tempo's), or milli/micro/nanoseconds told apart by size, or
/// RFC 3339; as unix nanoseconds.
fn time_param(name: &str, value: &str) -> std::result::Result<i64, Refusal> {
    let value = value.trim();
    if let Ok(n) = value.parse::<i64>() {
        let abs = n.unsigned_abs();
        let nanos = if abs < 100_000_000_000 {
            n.checked_mul(1_000_000_000)
        } else if abs < 100_000_000_000_000 {
            n.checked_mul(1_000_000)
        } else if abs < 100_000_000_000_000_000 {
            n.checked_mul(1_000)
        } else {
            Some(n)
        };
        return nanos.ok_or_else(|| bad(format!("{name}={value} is out of range")));
    }
    if let Ok(f) = value.parse::<f64>()
        && f.is_finite()
        && f.abs() < 9.2e9
    {
        return Ok((f * 1e9) as i64);
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| {
            bad(format!(
                "{name}={value:?} is not unix seconds or an RFC 3339 time"
            ))
        })
}

/// The window of `start` and `end` (either may be missing), checked against the maximum.
fn window(
    api: &Api,
    params: &HashMap<String, String>,
) -> std::result::Result<(Option<i64>, Option<i64>), Refusal> {
    let get = |name: &str| -> std::result::Result<Option<i64>, Refusal> {
        match params.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
            Some("0") => Ok(None),
            Some(v) => time_param(name, v).map(Some),
            None => Ok(None),
        }
    };
    let (start, end) = (get("start")?, get("end")?);
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            return Err(bad("end is before start"));
        }
        let max = i64::try_from(api.config.max_window.as_nanos()).unwrap_or(i64::MAX);
        if e - s > max {
            return Err(bad(format!(
                "the window [start, end] is longer than the {} h allowed",
                api.config.max_window.as_secs() / 3600
            )));
        }
    }
    Ok((start, end))
}

fn sql_time(t: Option<i64>) -> String {
    match t {
        Some(ns) => format!("to_timestamp_nanos({ns})"),
        None => "NULL".into(),
    }
}

async fn run_sql(api: &Api, sql: &str) -> std::result::Result<Vec<RecordBatch>, Refusal> {
    let frame = api.ctx.sql(sql).await.map_err(|e| plan_refusal(&e))?;
    frame.collect().await.map_err(|e| plan_refusal(&e))
}

/// A planning error (a refused query or argument) is the client's (400); the rest are ours.
fn plan_refusal(e: &datafusion::error::DataFusionError) -> Refusal {
    let root = e.find_root();
    match root {
        datafusion::error::DataFusionError::Plan(m) => bad(m.clone()),
        other => failed(other.strip_backtrace()),
    }
}

/// A trace id as Tempo accepts it: up to 32 hex digits, left-padded with zeros.
fn trace_id(text: &str) -> std::result::Result<String, Refusal> {
    let t = text.trim();
    if t.is_empty() || t.len() > 32 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "{t:?} is not a trace id (up to 32 hex digits)"
        )));
    }
    Ok(format!("{:0>32}", t.to_ascii_lowercase()))
}

/// Tempo's `Trace` message: `repeated ResourceSpans resource_spans = 1` (OTLP `TracesData`'s
/// wire format).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TempoTrace {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans>,
}

/// Tempo's `TraceByIDResponse`: `Trace trace = 1; TraceByIDMetrics metrics = 2; status = 3;
/// message = 4`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    pub trace: Option<TempoTrace>,
    #[prost(message, optional, tag = "2")]
    pub metrics: Option<TraceByIdMetrics>,
    #[prost(int32, tag = "3")]
    pub status: i32,
    #[prost(string, tag = "4")]
    pub message: String,
}

/// Tempo's `TraceByIDMetrics`: `uint64 inspectedBytes = 1`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdMetrics {
    #[prost(uint64, tag = "1")]
    pub inspected_bytes: u64,
}

fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/protobuf"))
}

async fn read_trace(
    api: &Api,
    id: &str,
    params: &HashMap<String, String>,
) -> std::result::Result<Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans>, Refusal> {
    let id = trace_id(id)?;
    let (start, end) = window(api, params)?;
    // What `SELECT * FROM trace_tree(id, start, end)` returns, planned directly: the table
    // function's scan is the whole plan, so SQL parsing and the optimizer (a third of a
    // fresh lookup's time) are skipped.
    let tree = crate::functions::trace_tree::TraceTreeTable {
        table: api.table.clone(),
        lookup: crate::functions::trace_tree::TraceLookup {
            trace_id: id.clone(),
            start,
            end,
        },
    };
    let state = api.ctx.state();
    let plan = datafusion::catalog::TableProvider::scan(&tree, &state, None, &[], None)
        .await
        .map_err(|e| plan_refusal(&e))?;
    let batches = datafusion::physical_plan::collect(plan, state.task_ctx())
        .await
        .map_err(|e| plan_refusal(&e))?;
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("trace {id} not found"),
        ));
    }
    otlp_out::resource_spans(&batches).map_err(failed)
}

async fn trace_v1(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let resource_spans = read_trace(&api, &id, &params).await?;
    if wants_protobuf(&headers) {
        let body = TempoTrace { resource_spans }.encode_to_vec();
        return Ok(([(header::CONTENT_TYPE, "application/protobuf")], body).into_response());
    }
    Ok(axum::Json(json!({ "batches": resource_spans })).into_response())
}

async fn trace_v2(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let resource_spans = read_trace(&api, &id, &params).await?;
    if wants_protobuf(&headers) {
        let body = TraceByIdResponse {
            trace: Some(TempoTrace { resource_spans }),
            metrics: Some(TraceByIdMetrics::default()),
            status: 0,
            message: String::new(),
        }
        .encode_to_vec();
        return Ok(([(header::CONTENT_TYPE, "application/protobuf")], body).into_response());
    }
    Ok(axum::Json(json!({ "trace": { "resourceSpans": resource_spans } })).into_response())
}

/// A logfmt `tags=` value (`service.name=checkout http.status_code=500 "a b"="c"`) as TraceQL
/// conditions.
fn logfmt_conditions(tags: &str) -> std::result::Result<Vec<String>, Refusal> {
    let mut out = Vec::new();
    let mut rest = tags.trim();
    let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    while !rest.is_empty() {
        let take = |s: &str| -> (String, usize) {
            if let Some(body) = s.strip_prefix('"') {
                let end = body.find('"').unwrap_or(body.len());
                (body[..end].to_string(), (end + 2).min(s.len()))
            } else {
                let end = s
                    .find(|c: char| c == '=' || c.is_whitespace())
                    .unwrap_or(s.len());
                (s[..end].to_string(), end)
            }
        };
        let (key, used) = take(rest);
        rest = &rest[used..];
        let Some(after) = rest.strip_prefix('=') else {
            return Err(bad(format!("tags: expected key=value, found {key:?}")));
        };
        let (value, used) = take(after);
        rest = after[used..].trim_start();
        let field = match key.as_str() {
            "name" => "name".to_string(),
            "status.code" | "status" => {
                out.push(format!("status = {}", value.to_ascii_lowercase()));
                continue;
            }
            "service.name" => "resource.service.name".to_string(),
            k => format!(".{k}"),
        };
        let literal = if value.parse::<i64>().is_ok() && field != "name" {
            value
        } else {
            quoted(&value)
        };
        out.push(format!("{field} = {literal}"));
    }
    Ok(out)
}

fn duration_condition(name: &str, value: &str, op: &str) -> std::result::Result<String, Refusal> {
    crate::traceql::parse::duration_nanos(value.trim())
        .map(|ns| format!("duration {op} {ns}ns"))
        .ok_or_else(|| {
            bad(format!(
                "{name}={value:?} is not a duration (for example 100ms)"
            ))
        })
}

fn limit_param(
    api: &Api,
    params: &HashMap<String, String>,
    name: &str,
    default: usize,
) -> std::result::Result<usize, Refusal> {
    match params.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(0) => Ok(default),
            Ok(n) if n <= api.config.max_limit => Ok(n),
            _ => Err(bad(format!(
                "{name}={v:?}: expected a number from 1 to {}",
                api.config.max_limit
            ))),
        },
    }
}

fn otlp_json_value(kv: &opentelemetry_proto::tonic::common::v1::KeyValue) -> Value {
    serde_json::to_value(kv).unwrap_or(Value::Null)
}

async fn search(
    State(api): State<Arc<Api>>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let (start, end) = window(&api, &params)?;
    let limit = limit_param(&api, &params, "limit", 20)?;
    let spss = limit_param(&api, &params, "spss", 3)?;
    let query = match params.get("q").map(|q| q.trim()).filter(|q| !q.is_empty()) {
        Some(q) => q.to_string(),
        None => {
            let mut conditions = match params.get("tags") {
                Some(tags) => logfmt_conditions(tags)?,
                None => Vec::new(),
            };
            if let Some(v) = params.get("minDuration").filter(|v| !v.is_empty()) {
                conditions.push(duration_condition("minDuration", v, ">=")?);
            }
            if let Some(v) = params.get("maxDuration").filter(|v| !v.is_empty()) {
                conditions.push(duration_condition("maxDuration", v, "<=")?);
            }
            format!("{{ {} }}", conditions.join(" && "))
        }
    };
    let shown = match compile_text(&query) {
        Ok(Compiled::Search(plan)) => plan.shown,
        Ok(Compiled::Metrics(_)) => {
            return Err(bad(format!(
                "{query:?} is a metrics query: ask /api/metrics/query_range"
            )));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let sql = format!(
        "SELECT trace_id, root_service_name, root_span_name, start_time, duration_ns, \
         matched_count, matched_span_ids FROM traceql({}, {}, {}, {limit})",
        sql_string(&query),
        sql_time(start),
        sql_time(end)
    );
    let found = run_sql(&api, &sql).await?;
    let mut traces = Vec::new();
    let mut wanted: Vec<(String, Vec<String>)> = Vec::new();
    for batch in &found {
        let ids = strings(batch, 0)?;
        let root_service = strings(batch, 1)?;
        let root_name = strings(batch, 2)?;
        let starts = primitive::<TimestampNanosecondType>(batch, 3)?;
        let durations = primitive::<Int64Type>(batch, 4)?;
        let matched = primitive::<Int64Type>(batch, 5)?;
        let span_ids = batch
            .column(6)
            .as_list_opt::<i32>()
            .ok_or_else(|| failed("matched_span_ids is not a list"))?;
        for row in 0..batch.num_rows() {
            let first: Vec<String> = if span_ids.is_valid(row) {
                let list = span_ids.value(row);
                let list = list
                    .as_string_opt::<i32>()
                    .ok_or_else(|| failed("matched_span_ids holds no strings"))?;
                (0..list.len().min(spss))
                    .map(|i| list.value(i).to_string())
                    .collect()
            } else {
                Vec::new()
            };
            wanted.push((ids.value(row).to_string(), first));
            traces.push(json!({
                "traceID": ids.value(row),
                "rootServiceName": if root_service.is_valid(row) { root_service.value(row) } else { "" },
                "rootTraceName": if root_name.is_valid(row) { root_name.value(row) } else { "" },
                "startTimeUnixNano": starts.value(row).to_string(),
                "durationMs": durations.value(row) / 1_000_000,
                "matched": matched.value(row),
            }));
        }
    }
    let (spans, stats) = matched_spans(&api, &wanted, &shown).await?;
    for (trace, (id, _)) in traces.iter_mut().zip(&wanted) {
        let matched = trace["matched"].take();
        let list = spans.get(id).cloned().unwrap_or_default();
        let set = json!({ "spans": list, "matched": matched });
        trace["spanSet"] = set.clone();
        trace["spanSets"] = json!([set]);
        let services: serde_json::Map<String, Value> = stats
            .get(id)
            .into_iter()
            .flatten()
            .map(|(service, (spans, errors))| {
                let mut entry = json!({ "spanCount": spans });
                if *errors > 0 {
                    entry["errorCount"] = json!(errors);
                }
                (service.clone(), entry)
            })
            .collect();
        trace["serviceStats"] = Value::Object(services);
        if let Some(object) = trace.as_object_mut() {
            object.remove("matched");
        }
    }
    let inspected = traces.len();
    Ok(axum::Json(json!({
        "traces": traces,
        "metrics": { "inspectedTraces": inspected, "inspectedBytes": "0", "completedJobs": 1, "totalJobs": 1 }
    }))
    .into_response())
}

/// The spans `wanted` (per trace, its first matched span ids) as Tempo's search spans, with the
/// attributes of `shown`.
async fn matched_spans(
    api: &Api,
    wanted: &[(String, Vec<String>)],
    shown: &[ShownField],
) -> std::result::Result<(HashMap<String, Vec<Value>>, HashMap<String, ServiceStats>), Refusal> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    let mut stats: HashMap<String, ServiceStats> = HashMap::new();
    let ids: Vec<String> = wanted.iter().map(|(t, _)| sql_string(t)).collect();
    if ids.is_empty() {
        return Ok((out, stats));
    }
    let sql = format!(
        "SELECT trace_id, span_id, name, start_time, duration_ns, attributes, resource_attributes, \
         service_name, status_code = 'ERROR' FROM spans WHERE trace_id IN ({})",
        ids.join(", ")
    );
    let batches = run_sql(api, &sql).await?;
    let wanted_spans: HashMap<&str, &Vec<String>> =
        wanted.iter().map(|(t, s)| (t.as_str(), s)).collect();
    let mut found: HashMap<(String, String), Value> = HashMap::new();
    for batch in &batches {
        let traces = strings(batch, 0)?;
        let span_ids = strings(batch, 1)?;
        let names = strings(batch, 2)?;
        let starts = primitive::<TimestampNanosecondType>(batch, 3)?;
        let durations = primitive::<Int64Type>(batch, 4)?;
        let span_attrs = batch
            .column(5)
            .as_map_opt()
            .ok_or_else(|| failed("attributes is not a map"))?;
        let resource_attrs = batch
            .column(6)
            .as_map_opt()
            .ok_or_else(|| failed("resource_attributes is not a map"))?;
        let services = strings(batch, 7)?;
        let errors = batch
            .column(8)
            .as_boolean_opt()
            .ok_or_else(|| failed("the error flag is not boolean"))?;
        for row in 0..batch.num_rows() {
            let trace = traces.value(row);
            let span = span_ids.value(row);
            let service = if services.is_valid(row) {
                services.value(row)
            } else {
                ""
            };
            let counts = stats
                .entry(trace.to_string())
                .or_default()
                .entry(service.to_string())
                .or_default();
            counts.0 += 1;
            counts.1 += u64::from(errors.is_valid(row) && errors.value(row));
            if !wanted_spans
                .get(trace)
                .is_some_and(|s| s.iter().any(|x| x == span))
            {
                continue;
            }
            let own = otlp_out::attributes(span_attrs, row);
            let resource = otlp_out::attributes(resource_attrs, row);
            let mut attributes = Vec::new();
            for field in shown {
                let ShownField::Attribute { scope, key } = field else {
                    continue;
                };
                use crate::traceql::parse::AttrScope;
                let from_span = matches!(scope, AttrScope::Span | AttrScope::Any)
                    .then(|| own.iter().find(|kv| &kv.key == key))
                    .flatten();
                let from_resource = matches!(scope, AttrScope::Resource | AttrScope::Any)
                    .then(|| resource.iter().find(|kv| &kv.key == key))
                    .flatten();
                if let Some(kv) = from_span.or(from_resource) {
                    attributes.push(otlp_json_value(kv));
                } else if key == "service.name"
                    && matches!(scope, AttrScope::Resource | AttrScope::Any)
                {
                    attributes.push(json!({"key": "service.name", "value": {"stringValue": services.value(row)}}));
                }
            }
            found.insert(
                (trace.to_string(), span.to_string()),
                json!({
                    "spanID": span,
                    "name": names.value(row),
                    "startTimeUnixNano": starts.value(row).to_string(),
                    "durationNanos": durations.value(row).to_string(),
                    "attributes": attributes,
                }),
            );
        }
    }
    for (trace, spans) in wanted {
        let list = spans
            .iter()
            .filter_map(|s| found.remove(&(trace.clone(), s.clone())))
            .collect();
        out.insert(trace.clone(), list);
    }
    Ok((out, stats))
}

/// Per service of a trace: its spans and error spans.
type ServiceStats = std::collections::BTreeMap<String, (u64, u64)>;

/// TraceQL's intrinsic tag names, as the tag pickers list them.
const INTRINSIC_TAGS: [&str; 8] = [
    "duration",
    "kind",
    "name",
    "status",
    "statusMessage",
    "trace:duration",
    "trace:rootName",
    "trace:rootService",
];

async fn keys(
    api: &Api,
    params: &HashMap<String, String>,
) -> std::result::Result<(Vec<String>, Vec<String>), Refusal> {
    let (start, end) = window(api, params)?;
    let limit = limit_param(api, params, "limit", 5_000).unwrap_or(5_000);
    // The keys in the dictionary pages of the maps' key leaves (no rows decoded), when every
    // file in the window has them.
    let leaf = |column: &'static str| {
        move |_: &crate::read::index::IndexedFile| {
            Some(crate::table::AttributeLeaf::Key.path(column))
        }
    };
    if let (Some(span), Some(resource)) = (
        dictionary_values(api, start, end, leaf(crate::schema::col::ATTRIBUTES), limit).await?,
        dictionary_values(
            api,
            start,
            end,
            leaf(crate::schema::col::RESOURCE_ATTRIBUTES),
            limit,
        )
        .await?,
    ) {
        let mut resource: Vec<String> = resource.into_iter().collect();
        if !resource.iter().any(|k| k == "service.name") {
            resource.insert(0, "service.name".to_string());
        }
        return Ok((span.into_iter().collect(), resource));
    }
    let sql = format!(
        "SELECT scope, key FROM attribute_keys({}, {}) ORDER BY scope, key",
        sql_time(start),
        sql_time(end)
    );
    let batches = run_sql(api, &sql).await?;
    let (mut span, mut resource) = (Vec::new(), vec!["service.name".to_string()]);
    for batch in &batches {
        let scopes = strings(batch, 0)?;
        let keys = strings(batch, 1)?;
        for row in 0..batch.num_rows() {
            let key = keys.value(row).to_string();
            match scopes.value(row) {
                "span" if span.len() < limit => span.push(key),
                "resource" if resource.len() < limit && !resource.contains(&key) => {
                    resource.push(key)
                }
                _ => {}
            }
        }
    }
    Ok((span, resource))
}

/// Which leaf of a file holds a tag's values (`None`: the file does not hold it).
type DictionaryLeaf = dyn Fn(&crate::read::index::IndexedFile) -> Option<parquet::schema::types::ColumnPath>
    + Send
    + Sync;

/// The distinct values of a leaf in the window from dictionary pages (see
/// [`crate::read::dictionary_values`]); `None` when they cannot answer.
async fn dictionary_values(
    api: &Api,
    start: Option<i64>,
    end: Option<i64>,
    leaf: impl Fn(&crate::read::index::IndexedFile) -> Option<parquet::schema::types::ColumnPath>,
    cap: usize,
) -> std::result::Result<Option<std::collections::BTreeSet<String>>, Refusal> {
    let snapshot = api.table.snapshot();
    let Some(index) = snapshot.index() else {
        return Ok(None);
    };
    let bounds = crate::read::filters::StartBounds {
        min: start,
        max: end,
    };
    crate::read::dictionary_values::distinct(
        index,
        &api.table.location().root_store,
        &bounds,
        leaf,
        cap,
    )
    .await
    .map_err(failed)
}

async fn tags_v1(
    State(api): State<Arc<Api>>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let (span, resource) = keys(&api, &params).await?;
    let mut names: Vec<String> = span.into_iter().chain(resource).collect();
    names.sort();
    names.dedup();
    Ok(axum::Json(json!({ "tagNames": names })).into_response())
}

async fn tags_v2(
    State(api): State<Arc<Api>>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let (span, resource) = keys(&api, &params).await?;
    let scope = params.get("scope").map(String::as_str).unwrap_or("");
    let mut scopes = Vec::new();
    if matches!(scope, "" | "all" | "span") {
        scopes.push(json!({"name": "span", "tags": span}));
    }
    if matches!(scope, "" | "all" | "resource") {
        scopes.push(json!({"name": "resource", "tags": resource}));
    }
    if matches!(scope, "" | "all" | "intrinsic") {
        scopes.push(json!({"name": "intrinsic", "tags": INTRINSIC_TAGS}));
    }
    if !matches!(
        scope,
        "" | "all" | "span" | "resource" | "intrinsic" | "event" | "link"
    ) {
        return Err(bad(format!(
            "scope={scope:?}: expected span, resource, intrinsic, event, link or all"
        )));
    }
    Ok(axum::Json(json!({ "scopes": scopes })).into_response())
}

/// The typed values of tag `tag` (`span.x`, `resource.x`, `.x`, an intrinsic, or a bare key).
async fn tag_values(
    api: &Api,
    tag: &str,
    params: &HashMap<String, String>,
) -> std::result::Result<Vec<(String, String)>, Refusal> {
    // Grafana encodes tag names twice; axum decoded once.
    let tag = url::form_urlencoded::parse(format!("t={tag}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| tag.to_string());
    let (start, end) = window(api, params)?;
    let window_sql = format!(
        "{}{}",
        start
            .map(|s| format!(" AND start_time >= to_timestamp_nanos({s})"))
            .unwrap_or_default(),
        end.map(|e| format!(" AND start_time <= to_timestamp_nanos({e})"))
            .unwrap_or_default()
    );
    // From dictionary pages where they list the values: the span name, the service, and
    // dedicated string attribute columns.
    let dedicated = |scope: crate::dedicated::AttributeScope, key: &str| {
        let wanted = crate::dedicated::DedicatedColumn {
            scope,
            key: key.to_string(),
            kind: crate::dedicated::DedicatedType::String,
        };
        api.table
            .dedicated_columns()
            .columns()
            .contains(&wanted)
            .then_some(wanted)
    };
    let from_dictionary: Option<Box<DictionaryLeaf>> = match tag.as_str() {
        "name" | "span:name" | "trace:rootName" | "rootName" => Some(Box::new(|_| {
            Some(parquet::schema::types::ColumnPath::from(
                crate::schema::col::NAME,
            ))
        })),
        "trace:rootService" | "rootServiceName" | "resource.service.name" | "service.name" => {
            Some(Box::new(|_| {
                Some(parquet::schema::types::ColumnPath::from(
                    crate::schema::col::SERVICE_NAME,
                ))
            }))
        }
        other => other
            .strip_prefix("span.")
            .and_then(|k| dedicated(crate::dedicated::AttributeScope::Span, k))
            .or_else(|| {
                other
                    .strip_prefix("resource.")
                    .and_then(|k| dedicated(crate::dedicated::AttributeScope::Resource, k))
            })
            .map(|column| -> Box<DictionaryLeaf> {
                Box::new(move |file| {
                    file.dedicated
                        .contains(&column)
                        .then(|| parquet::schema::types::ColumnPath::from(column.column_name()))
                })
            }),
    };
    if let Some(leaf) = from_dictionary
        && let Some(values) = dictionary_values(api, start, end, leaf, 1_000).await?
    {
        return Ok(values
            .into_iter()
            .map(|v| ("string".to_string(), v))
            .collect());
    }
    let column_values = |column: &str, kind: &str| {
        (
            format!(
                "SELECT DISTINCT {column} FROM spans WHERE {column} IS NOT NULL{window_sql} \
                 ORDER BY 1 LIMIT 1000"
            ),
            kind.to_string(),
        )
    };
    let (sql, kind) = match tag.as_str() {
        "name" | "span:name" => column_values("name", "string"),
        "status" | "span:status" => column_values("lower(status_code)", "keyword"),
        "kind" | "span:kind" => column_values("lower(kind)", "keyword"),
        "statusMessage" | "span:statusMessage" => column_values("status_message", "string"),
        "trace:rootService" | "rootServiceName" | "resource.service.name" | "service.name" => {
            column_values("service_name", "string")
        }
        "trace:rootName" | "rootName" => column_values("name", "string"),
        other => {
            let (scope, key) = if let Some(k) = other.strip_prefix("span.") {
                ("'span'", k)
            } else if let Some(k) = other.strip_prefix("resource.") {
                ("'resource'", k)
            } else if let Some(k) = other.strip_prefix('.') {
                ("NULL", k)
            } else {
                ("NULL", other)
            };
            (
                format!(
                    "SELECT type, value FROM attribute_values({scope}, {}, {}, {}) ORDER BY span_count DESC, value LIMIT 1000",
                    sql_string(key),
                    sql_time(start),
                    sql_time(end)
                ),
                String::new(),
            )
        }
    };
    let batches = run_sql(api, &sql).await?;
    let mut out: Vec<(String, String)> = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let pair = if kind.is_empty() {
                let types = strings(batch, 0)?;
                let values = strings(batch, 1)?;
                (types.value(row).to_string(), values.value(row).to_string())
            } else {
                let values = strings(batch, 0)?;
                (kind.clone(), values.value(row).to_string())
            };
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
    }
    Ok(out)
}

async fn values_v1(
    State(api): State<Arc<Api>>,
    Path(tag): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let values = tag_values(&api, &tag, &params).await?;
    let list: Vec<String> = values.into_iter().map(|(_, v)| v).collect();
    Ok(axum::Json(json!({ "tagValues": list })).into_response())
}

async fn values_v2(
    State(api): State<Arc<Api>>,
    Path(tag): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let values = tag_values(&api, &tag, &params).await?;
    let list: Vec<Value> = values
        .into_iter()
        .map(|(t, v)| json!({"type": t, "value": v}))
        .collect();
    Ok(axum::Json(json!({ "tagValues": list })).into_response())
}

/// A series: its labels and its samples `(ms, value)`.
type Series = (Vec<(String, Value)>, Vec<(i64, f64)>);

/// Runs a metrics query; series keyed by their labels, samples `(ms, value)` in time order.
async fn metrics(
    api: &Api,
    params: &HashMap<String, String>,
    instant: bool,
) -> std::result::Result<Vec<Series>, Refusal> {
    let query = params
        .get("q")
        .or_else(|| params.get("query"))
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty())
        .ok_or_else(|| bad("q (a TraceQL metrics query) is required"))?;
    let (start, end) = window(api, params)?;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let end = end.unwrap_or(now);
    let start = start.unwrap_or(end - 3_600_000_000_000);
    let span = (end - start).max(1_000_000_000);
    let step = if instant {
        span
    } else {
        match params
            .get("step")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            Some(s) => crate::traceql::parse::duration_nanos(s)
                .or_else(|| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite() && *f > 0.0)
                        .map(|f| (f * 1e9) as i64)
                })
                .ok_or_else(|| bad(format!("step={s:?} is not a duration (for example 60s)")))?,
            // Tempo's default: about 100 points over the window.
            None => (span / 100).max(1_000_000_000),
        }
    };
    let plan = match compile_text(&query) {
        Ok(Compiled::Metrics(plan)) => plan,
        Ok(Compiled::Search(_)) => {
            return Err(bad(format!(
                "{query:?} is a search; a metrics query ends in a metrics function such as | rate()"
            )));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let sql = format!(
        "SELECT * FROM traceql_metrics({}, to_timestamp_nanos({start}), to_timestamp_nanos({end}), '{step}ns')",
        sql_string(&query)
    );
    let batches = run_sql(api, &sql).await?;
    let mut series: Vec<Series> = Vec::new();
    for batch in &batches {
        let schema = batch.schema();
        let times = primitive::<TimestampNanosecondType>(batch, 0)?;
        let values = primitive::<Float64Type>(batch, batch.num_columns() - 1)?;
        for row in 0..batch.num_rows() {
            let mut labels = Vec::new();
            for c in 1..batch.num_columns() - 1 {
                let name = schema.field(c).name().clone();
                let column = batch.column(c);
                let value = if column.is_null(row) {
                    json!({"stringValue": "nil"})
                } else if let Some(s) = column.as_string_opt::<i32>() {
                    json!({"stringValue": s.value(row)})
                } else if let Some(f) = column.as_primitive_opt::<Float64Type>() {
                    json!({"doubleValue": f.value(row)})
                } else {
                    json!({"stringValue": ""})
                };
                let label = plan
                    .by
                    .iter()
                    .find(|(l, _)| *l == name)
                    .map(|(l, _)| l.clone())
                    .unwrap_or(name);
                labels.push((label, value));
            }
            let sample = (times.value(row) / 1_000_000, values.value(row));
            match series.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, samples)) => samples.push(sample),
                None => series.push((labels, vec![sample])),
            }
        }
    }
    for (_, samples) in &mut series {
        samples.sort_by_key(|(t, _)| *t);
    }
    Ok(series)
}

fn labels_json(labels: &[(String, Value)]) -> (Value, String) {
    let list: Vec<Value> = labels
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    let prom = labels
        .iter()
        .map(|(k, v)| {
            let text = v
                .get("stringValue")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    v.get("doubleValue")
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                });
            format!("{k}=\"{text}\"")
        })
        .collect::<Vec<_>>()
        .join(", ");
    (Value::Array(list), format!("{{{prom}}}"))
}

async fn query_range(
    State(api): State<Arc<Api>>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let series = metrics(&api, &params, false).await?;
    let list: Vec<Value> = series
        .iter()
        .map(|(labels, samples)| {
            let (labels, prom) = labels_json(labels);
            json!({
                "labels": labels,
                "promLabels": prom,
                "samples": samples.iter().map(|(t, v)| json!({"timestampMs": t.to_string(), "value": v})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(
        axum::Json(json!({ "series": list, "metrics": {"completedJobs": 1, "totalJobs": 1} }))
            .into_response(),
    )
}

async fn query_instant(
    State(api): State<Arc<Api>>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let series = metrics(&api, &params, true).await?;
    let list: Vec<Value> = series
        .iter()
        .map(|(labels, samples)| {
            let (labels, prom) = labels_json(labels);
            let value: f64 = samples.iter().map(|(_, v)| v).sum();
            json!({ "labels": labels, "promLabels": prom, "value": value })
        })
        .collect();
    Ok(axum::Json(json!({ "series": list })).into_response())
}

/// Refuses a configuration that cannot work.
pub fn validate(config: &TempoApiConfig) -> Result<()> {
    if config.max_limit == 0 || config.timeout.is_zero() || config.max_window.is_zero() {
        return Err(TraceLakeError::InvalidArgument(
            "the query API needs a positive max_limit, timeout and max_window".into(),
        ));
    }
    Ok(())
}
