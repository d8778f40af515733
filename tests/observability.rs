//! Observability as a contract: the span chain of a real query and its nesting, Prometheus
//! counters equal to a ground-truth count of the inner store's calls, zero LIST requests on
//! the query path, lifecycle spans.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use tracelake::observe::{TraceLakeMetrics, names};
use tracelake::store::telemetry;
use tracelake::synth::{TraceShape, traces};
use tracelake::{TableOptions, TraceLake};
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Ground truth: every call the telemetry wrapper passes down, by (operation, path kind).
#[derive(Debug, Default)]
struct CountingStore {
    inner: InMemory,
    calls: Mutex<HashMap<(String, String), u64>>,
}

impl CountingStore {
    fn count(&self, op: &str, path: Option<&Path>) {
        let kind = path.map(telemetry::path_kind).unwrap_or("unknown");
        *self
            .calls
            .lock()
            .unwrap()
            .entry((op.to_string(), kind.to_string()))
            .or_default() += 1;
    }

    fn calls(&self) -> HashMap<(String, String), u64> {
        self.calls.lock().unwrap().clone()
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountingStore")
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
        self.count("put", Some(l));
        self.inner.put_opts(l, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
        self.count(telemetry::get_operation(&o), Some(l));
        self.inner.get_opts(l, o).await
    }
    async fn get_ranges(&self, l: &Path, r: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.count("get_range", Some(l));
        self.inner.get_ranges(l, r).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count("list", prefix);
        self.inner.list(prefix)
    }
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count("list", prefix);
        self.inner.list_with_offset(prefix, offset)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.count("list", prefix);
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
        self.count("copy", Some(t));
        self.inner.copy_opts(f, t, o).await
    }
    async fn rename_opts(&self, f: &Path, t: &Path, o: RenameOptions) -> Result<()> {
        self.count("rename", Some(t));
        self.inner.rename_opts(f, t, o).await
    }
}

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

impl Capture {
    /// The process-wide capture (installed once as the global subscriber: callsite interest is
    /// global, so a per-thread subscriber would race with the other tests).
    fn global() -> Capture {
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

async fn table(name: &str, store: Arc<CountingStore>, metrics: &TraceLakeMetrics) -> TraceLake {
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
    let store = Arc::new(CountingStore::default());
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
    // The data files are read while executing: the cache's request under df.collect, the
    // backend's request (on a miss) under the cache's.
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
        assert_eq!(read.parent.as_deref(), Some(names::DF_COLLECT), "{read:?}");
        assert!(
            read.fields.contains_key(names::ATTR_OS_CACHE_HIT),
            "{read:?}"
        );
    }
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
    let store = Arc::new(CountingStore::default());
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
    let store = Arc::new(CountingStore::default());
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
    let store_lists = |s: &CountingStore| {
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
    let store = Arc::new(CountingStore::default());
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
