//! Observability as a contract: the span chain of a real query and its nesting, Prometheus
//! counters equal to a ground-truth count of the inner store's calls, zero LIST requests on
//! the query path, lifecycle spans.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::common::TestStore;
use tracelake::observe::{TraceLakeMetrics, names};
use tracelake::store::telemetry;
use tracelake::synth::{TraceShape, traces};
use tracelake::{TableOptions, TraceLake};
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A closed span: its name, its parent's name, and its fields.
#[derive(Debug, Clone)]
struct Closed {
    thread: std::thread::ThreadId,
    name: String,
    parent: Option<String>,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct FieldMap(HashMap<String, String>);

impl Visit for FieldMap {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

/// Records every span with its parent and fields when it closes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Closed>>>);

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = FieldMap::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<FieldMap>()
        {
            values.record(fields);
        }
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if !CAPTURING.with(|c| c.get()) {
            return;
        }
        if let Some(span) = ctx.span(&id) {
            let fields = span
                .extensions()
                .get::<FieldMap>()
                .map(|f| f.0.clone())
                .unwrap_or_default();
            self.0.lock().unwrap().push(Closed {
                thread: std::thread::current().id(),
                name: span.name().to_string(),
                parent: span.parent().map(|p| p.name().to_string()),
                fields,
            });
        }
    }
}

thread_local! {
    /// Whether this thread's spans are recorded: only the threads of the tests that asked for
    /// the capture are, so the other tests of the binary leave nothing in its buffer.
    static CAPTURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Capture {
    /// The process-wide capture (installed once as the global subscriber: callsite interest is
    /// global, so a per-thread subscriber would race with the other tests), recording the
    /// spans that close on the calling thread from now on.
    fn global() -> Capture {
        CAPTURING.with(|c| c.set(true));
        static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = Capture::default();
                let subscriber = tracing_subscriber::registry().with(capture.clone());
                tracing::subscriber::set_global_default(subscriber).expect("global subscriber");
                capture
            })
            .clone()
    }

    /// The spans closed on this thread since the last call.
    fn take(&self) -> Vec<Closed> {
        let me = std::thread::current().id();
        let mut all = self.0.lock().unwrap();
        let (mine, others): (Vec<Closed>, Vec<Closed>) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|c| c.thread == me);
        *all = others;
        mine
    }
}

const DAY0: i64 = 1_714_521_600_000_000_000;

async fn table(name: &str, store: Arc<TestStore>, metrics: &TraceLakeMetrics) -> TraceLake {
    let options = TableOptions {
        metrics: metrics.clone(),
        root_store: Some(store),
        ..Default::default()
    };
    let url = format!("memory:///{name}");
    let lake = TraceLake::create_with_options(&url, &options)
        .await
        .unwrap();
    for commit in 0..3 {
        let spans = traces(commit, TraceShape::Fixed(5), 50, DAY0, 1_000_000_000);
        lake.append_spans(&spans).await.unwrap();
    }
    // A fresh open, as a reader process would.
    TraceLake::open_with_options(&url, &options).await.unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_query_emits_the_span_chain_with_object_store_requests_nested() {
    let capture = Capture::global();
    capture.take();

    let metrics = TraceLakeMetrics::new();
    let store = TestStore::new();
    let lake = table("obs-chain", store.clone(), &metrics).await;
    let spans = capture.take();
    for name in [
        names::DELTA_TABLE_LOAD,
        names::DELTA_CATALOG_SWAP,
        names::OBJECT_STORE_REQUEST,
    ] {
        assert!(
            spans.iter().any(|s| s.name == name),
            "{name} emitted: {:?}",
            spans
                .iter()
                .map(|s| s.name.as_str())
                .collect::<std::collections::BTreeSet<_>>()
        );
    }
    let load = spans
        .iter()
        .find(|s| s.name == names::DELTA_TABLE_LOAD)
        .unwrap();
    assert_eq!(
        load.fields
            .get(names::ATTR_VERSION_AFTER)
            .map(String::as_str),
        Some("3")
    );
    // Loading lists the log (deltalake's kernel runs some of it on its own tasks, so these
    // requests are not always nested under delta.table.load).
    assert!(spans.iter().any(|s| s.name == names::OBJECT_STORE_REQUEST
        && s.fields.get(names::ATTR_OS_OPERATION).map(String::as_str) == Some("list")));

    let ctx = lake.session_context().unwrap();
    let root = tracing::info_span!("test.query");
    let rows = async {
        let df =
            tracelake::observe::sql(&ctx, "SELECT service_name, count(*) FROM spans GROUP BY 1")
                .await
                .unwrap();
        df.collect().await.unwrap()
    }
    .instrument(root)
    .await;
    assert!(!rows.is_empty());
    let spans = capture.take();
    let under = |name: &str, parent: &str| {
        spans
            .iter()
            .any(|s| s.name == name && s.parent.as_deref() == Some(parent))
    };
    assert!(under(names::DF_TABLE_RESOLVE, "test.query"), "{spans:#?}");
    assert!(under(names::DF_LOGICAL_BUILD, "test.query"), "{spans:#?}");
    assert!(under(names::DF_PHYSICAL_PLAN, "test.query"), "{spans:#?}");
    assert!(under(names::DF_COLLECT, "test.query"), "{spans:#?}");
    // Footers are read while planning, the first time a query needs a file (under
    // df.physical.plan); data pages while executing (under df.collect). The backend's request
    // (on a miss) nests under the cache's.
    let data_reads = |backend: &str| -> Vec<&Closed> {
        spans
            .iter()
            .filter(|s| {
                s.name == names::OBJECT_STORE_REQUEST
                    && s.fields.get(names::ATTR_OS_PATH_KIND).map(String::as_str)
                        == Some("parquet_data")
                    && s.fields.get(names::ATTR_OS_BACKEND).map(String::as_str) == Some(backend)
            })
            .collect()
    };
    assert!(!data_reads("cache").is_empty());
    for read in data_reads("cache") {
        assert!(
            [Some(names::DF_COLLECT), Some(names::DF_PHYSICAL_PLAN)]
                .contains(&read.parent.as_deref()),
            "{read:?}"
        );
        assert!(
            read.fields.contains_key(names::ATTR_OS_CACHE_HIT),
            "{read:?}"
        );
    }
    let under_parent = |parent: &str| {
        data_reads("cache")
            .iter()
            .filter(|r| r.parent.as_deref() == Some(parent))
            .count()
    };
    assert!(
        under_parent(names::DF_PHYSICAL_PLAN) > 0,
        "footers read while planning"
    );
    assert!(
        under_parent(names::DF_COLLECT) > 0,
        "pages read while executing"
    );
    for read in data_reads("memory") {
        assert_eq!(
            read.parent.as_deref(),
            Some(names::OBJECT_STORE_REQUEST),
            "{read:?}"
        );
    }
    // df.collect reports the rows returned (summed over its partitions).
    let collected: usize = spans
        .iter()
        .filter(|s| s.name == names::DF_COLLECT)
        .map(|s| s.fields[names::ATTR_ROWS].parse::<usize>().unwrap())
        .sum();
    assert_eq!(collected, rows.iter().map(|b| b.num_rows()).sum::<usize>());
    // The query path never lists.
    assert!(
        !spans.iter().any(|s| s.name == names::OBJECT_STORE_REQUEST
            && s.fields.get(names::ATTR_OS_OPERATION).map(String::as_str) == Some("list")),
        "no list on the query path"
    );

    // trace_tree emits trace.tree.build and arrow.convert.
    let id = traces(1, TraceShape::Fixed(5), 50, DAY0, 1_000_000_000)[0]
        .trace_id
        .clone();
    ctx.sql(&format!("SELECT * FROM trace_tree('{id}')"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let spans = capture.take();
    let build = spans
        .iter()
        .find(|s| s.name == names::TRACE_TREE_BUILD)
        .expect("trace.tree.build");
    assert_eq!(build.fields.get(names::ATTR_TRACE_ID), Some(&id));
    assert!(
        spans.iter().any(|s| s.name == names::ARROW_CONVERT
            && s.parent.as_deref() == Some(names::TRACE_TREE_BUILD))
    );
}

#[tokio::test]
async fn prometheus_counters_equal_the_inner_stores_calls() {
    let metrics = TraceLakeMetrics::new();
    let store = TestStore::new();
    let lake = table("obs-counters", store.clone(), &metrics).await;
    let ctx = lake.session_context().unwrap();
    ctx.sql("SELECT * FROM spans WHERE service_name = 'frontend'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    lake.refresh().await.unwrap();

    let truth = store.calls();
    assert!(truth.values().sum::<u64>() > 0);
    for ((op, kind), count) in &truth {
        assert_eq!(
            metrics.request_count("memory", op, kind),
            *count,
            "{op} {kind}: metric vs inner store"
        );
    }
    let total: u64 = telemetry::OPERATIONS
        .iter()
        .map(|op| metrics.operation_count("memory", op))
        .sum();
    assert_eq!(
        total,
        truth.values().sum::<u64>(),
        "no request counted twice or missed"
    );

    // The exposition names every metric family.
    let text = metrics.encode_text();
    assert!(
        text.contains("tracelake_object_store_requests_total{"),
        "{text}"
    );
    assert!(text.contains("operation=\"get_range\""));
    assert!(text.contains("path_kind=\"parquet_data\""));
    assert!(text.contains("backend=\"memory\""));
    assert!(text.contains("tracelake_object_store_request_duration_seconds_bucket"));
    assert!(text.contains("tracelake_object_store_bytes_total"));
}

#[tokio::test]
async fn queries_on_a_loaded_table_issue_no_list_requests() {
    let metrics = TraceLakeMetrics::new();
    let store = TestStore::new();
    let lake = table("obs-no-list", store.clone(), &metrics).await;
    let lists_before = metrics.operation_count("memory", "list");
    assert!(lists_before > 0, "loading lists the log");
    let ctx = lake.session_context().unwrap();
    let id = traces(2, TraceShape::Fixed(5), 50, DAY0, 1_000_000_000)[3]
        .trace_id
        .clone();
    for sql in [
        "SELECT count(*) FROM spans".to_string(),
        format!("SELECT * FROM spans WHERE trace_id = '{id}'"),
        format!("SELECT * FROM trace_tree('{id}')"),
        "SELECT * FROM trace_summaries(NULL, NULL)".to_string(),
        "SELECT * FROM spans WHERE start_time >= '2024-05-01T00:00:00Z'".to_string(),
    ] {
        ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    }
    assert_eq!(metrics.operation_count("memory", "list"), lists_before);
    // After a refresh (which lists), queries again list nothing.
    let writer = TraceLake::open_with_options(
        "memory:///obs-no-list",
        &TableOptions {
            root_store: Some(store.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    writer
        .append_spans(&traces(9, TraceShape::Fixed(5), 10, DAY0, 1_000_000_000))
        .await
        .unwrap();
    lake.refresh().await.unwrap();
    let lists_after_refresh = metrics.operation_count("memory", "list");
    assert!(lists_after_refresh > lists_before);
    let new_id = traces(9, TraceShape::Fixed(5), 10, DAY0, 1_000_000_000)[0]
        .trace_id
        .clone();
    let store_lists = |s: &TestStore| {
        s.calls()
            .iter()
            .filter(|((op, _), _)| op == "list")
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let store_lists_after_refresh = store_lists(&store);
    let rows: usize = ctx
        .sql(&format!("SELECT * FROM trace_tree('{new_id}')"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 5, "the refreshed index finds the new trace");
    assert_eq!(
        metrics.operation_count("memory", "list"),
        lists_after_refresh,
        "trace_tree"
    );
    ctx.sql("SELECT count(*) FROM spans")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        metrics.operation_count("memory", "list"),
        lists_after_refresh
    );
    assert_eq!(
        store_lists(&store),
        store_lists_after_refresh,
        "ground truth"
    );
}

#[tokio::test]
async fn a_repeated_query_is_served_from_the_cache() {
    let metrics = TraceLakeMetrics::new();
    let store = TestStore::new();
    let lake = table("obs-cache", store.clone(), &metrics).await;
    let ctx = lake.session_context().unwrap();
    let data_reads = |m: &TraceLakeMetrics| {
        ["get", "get_range"]
            .iter()
            .map(|op| m.request_count("memory", op, "parquet_data"))
            .sum::<u64>()
    };
    let sql = "SELECT * FROM spans WHERE service_name = 'frontend'";
    ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let after_first = data_reads(&metrics);
    let hits_first = metrics.cache_count("hit");
    let second = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    assert!(!second.is_empty());
    assert_eq!(
        data_reads(&metrics),
        after_first,
        "no data GET reaches the inner store"
    );
    assert!(metrics.cache_count("hit") > hits_first);
    // The cache's own requests are reported as backend `cache`.
    assert!(metrics.operation_count("cache", "get_range") > 0);

    // Turned off, every query reads the inner store.
    let off = TableOptions {
        metrics: TraceLakeMetrics::new(),
        root_store: Some(store.clone()),
        cache_bytes: 0,
        ..Default::default()
    };
    let uncached = TraceLake::open_with_options("memory:///obs-cache", &off)
        .await
        .unwrap();
    let ctx = uncached.session_context().unwrap();
    let opened = data_reads(&off.metrics);
    ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let once = data_reads(&off.metrics) - opened;
    assert!(once > 0);
    ctx.sql(sql).await.unwrap().collect().await.unwrap();
    // (DataFusion keeps parquet footers in its own metadata cache; data pages are read again.)
    assert!(data_reads(&off.metrics) - opened > once);
    assert_eq!(
        off.metrics.cache_count("hit") + off.metrics.cache_count("miss"),
        0
    );
}

/// Counts its calls; changes nothing.
#[derive(Debug, Default)]
struct CountingRule(std::sync::atomic::AtomicUsize);

impl datafusion::optimizer::AnalyzerRule for CountingRule {
    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &datafusion::config::ConfigOptions,
    ) -> datafusion::error::Result<datafusion::logical_expr::LogicalPlan> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(plan)
    }
    fn name(&self) -> &str {
        "embedder_analyzer_rule"
    }
}

#[derive(Debug, Default)]
struct CountingOptimizerRule(std::sync::atomic::AtomicUsize);

impl datafusion::optimizer::OptimizerRule for CountingOptimizerRule {
    fn name(&self) -> &str {
        "embedder_optimizer_rule"
    }
    fn supports_rewrite(&self) -> bool {
        true
    }
    fn rewrite(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &dyn datafusion::optimizer::OptimizerConfig,
    ) -> datafusion::error::Result<
        datafusion::common::tree_node::Transformed<datafusion::logical_expr::LogicalPlan>,
    > {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(datafusion::common::tree_node::Transformed::no(plan))
    }
}

/// The embedder's own planner: counts its calls and delegates to DataFusion's.
#[derive(Debug, Default)]
struct CountingPlanner(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for CountingPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &datafusion::logical_expr::LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::physical_planner::PhysicalPlanner;
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        datafusion::physical_planner::DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

#[tokio::test(flavor = "current_thread")]
async fn instrumentation_wraps_the_embedders_rules_and_planner() {
    use datafusion::execution::session_state::SessionStateBuilder;
    use std::sync::atomic::Ordering::SeqCst;
    let capture = Capture::global();
    let analyzer = Arc::new(CountingRule::default());
    let optimizer = Arc::new(CountingOptimizerRule::default());
    let planner = Arc::new(CountingPlanner::default());
    // The embedder's state: DataFusion's defaults plus its own rule and planner.
    let mut analyzer_rules = datafusion::optimizer::Analyzer::new().rules;
    analyzer_rules.push(analyzer.clone());
    let builder = SessionStateBuilder::new()
        .with_default_features()
        .with_analyzer_rules(analyzer_rules)
        .with_optimizer_rule(optimizer.clone())
        .with_query_planner(planner.clone());
    // Instrumenting twice must not stack the hooks.
    let state = tracelake::observe::instrument_session_state(
        tracelake::observe::instrument_session_state(builder),
    )
    .build();
    let rule_names: Vec<&str> = state.analyzer().rules.iter().map(|r| r.name()).collect();
    assert_eq!(
        rule_names
            .iter()
            .filter(|n| **n == "tracelake_logical_build_start")
            .count(),
        1,
        "{rule_names:?}"
    );
    assert!(
        rule_names.contains(&"embedder_analyzer_rule"),
        "{rule_names:?}"
    );
    // DataFusion's own rules are still there (type coercion among them).
    assert!(rule_names.contains(&"type_coercion"), "{rule_names:?}");
    let ctx = datafusion::prelude::SessionContext::new_with_state(state);
    let lake = TraceLake::create("memory:///instrumented-embedder")
        .await
        .unwrap();
    lake.append_spans(&traces(1, TraceShape::Fixed(5), 4, DAY0, 1_000))
        .await
        .unwrap();
    lake.register(&ctx).unwrap();
    capture.take();
    let batches = ctx
        .sql("SELECT count(*) FROM spans WHERE kind = 'SERVER' OR kind <> 'SERVER'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(batches[0].num_rows(), 1);
    assert!(
        analyzer.0.load(SeqCst) >= 1,
        "the embedder's analyzer rule ran"
    );
    assert!(
        optimizer.0.load(SeqCst) >= 1,
        "the embedder's optimizer rule ran"
    );
    assert_eq!(
        planner.0.load(SeqCst),
        1,
        "the embedder's planner planned the query"
    );
    let names: Vec<String> = capture.take().into_iter().map(|s| s.name).collect();
    for name in [
        names::DF_LOGICAL_BUILD,
        names::DF_PHYSICAL_PLAN,
        names::DF_COLLECT,
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}
