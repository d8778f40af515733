//! Planner hooks that make every query of a `SessionContext` visible as spans, nested under
//! the caller's current span:
//!
//! - `df.logical.build`: analysis and logical optimization, bracketed by an analyzer rule
//!   that runs first and an optimizer rule that runs last (both run synchronously on the
//!   planning thread, so a thread-local carries the span between them);
//! - `df.physical.plan`: a `QueryPlanner` wrapper around DataFusion's planner (scans and
//!   physical optimization; object-store requests made while planning nest under it);
//! - `df.collect`: a root node around execution, one span per output partition, with rows,
//!   batches, bytes and error; object-store requests made while polling nest under it.
//!
//! [`sql`] additionally spans parsing and table resolution (`df.table.resolve`).

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::common::config::ConfigOptions;
use datafusion::common::runtime::{JoinSetTracer, set_join_set_tracer};
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{Result, exec_err};
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::analyzer::{Analyzer, AnalyzerRule};
use datafusion::optimizer::optimizer::{Optimizer, OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tracing::{Instrument, field};

use super::names;

thread_local! {
    static LOGICAL_SPAN: RefCell<Option<tracing::Span>> = const { RefCell::new(None) };
}

/// Opens `df.logical.build` (first analyzer rule).
#[derive(Debug, Default)]
struct LogicalBuildStart;

impl AnalyzerRule for LogicalBuildStart {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let span = tracing::info_span!(names::DF_LOGICAL_BUILD);
        LOGICAL_SPAN.with(|slot| *slot.borrow_mut() = Some(span));
        Ok(plan)
    }

    fn name(&self) -> &str {
        "tracelake_logical_build_start"
    }
}

/// Closes `df.logical.build` (last optimizer rule).
#[derive(Debug, Default)]
struct LogicalBuildEnd;

impl OptimizerRule for LogicalBuildEnd {
    fn name(&self) -> &str {
        "tracelake_logical_build_end"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        LOGICAL_SPAN.with(|slot| slot.borrow_mut().take());
        Ok(Transformed::no(plan))
    }
}

/// Wraps the session's query planner (DataFusion's, or the embedder's own):
/// `df.physical.plan`, and a `df.collect` root over the plan.
#[derive(Debug)]
struct InstrumentedQueryPlanner {
    inner: Arc<dyn QueryPlanner + Send + Sync>,
}

#[async_trait]
impl QueryPlanner for InstrumentedQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The logical phase is over even if the optimizer ran no pass.
        LOGICAL_SPAN.with(|slot| slot.borrow_mut().take());
        let span = tracing::info_span!(
            names::DF_PHYSICAL_PLAN,
            { names::ATTR_ERROR } = field::Empty
        );
        let result = self
            .inner
            .create_physical_plan(logical_plan, session_state)
            .instrument(span.clone())
            .await;
        match result {
            Ok(plan) => Ok(Arc::new(CollectExec::new(plan, tracing::Span::current()))),
            Err(e) => {
                span.record(names::ATTR_ERROR, field::display(&e));
                Err(e)
            }
        }
    }
}

/// DataFusion's default query planner (its own type is private): the planner of a state
/// builder that sets none.
#[derive(Debug, Default)]
struct DefaultQueryPlanner;

#[async_trait]
impl QueryPlanner for DefaultQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

/// Carries the current span into the tasks DataFusion spawns (repartitioning, parallel
/// scans), so their object-store requests nest under `df.collect`.
struct SpanPropagation;

impl JoinSetTracer for SpanPropagation {
    fn trace_future(
        &self,
        fut: BoxFuture<'static, Box<dyn Any + Send>>,
    ) -> BoxFuture<'static, Box<dyn Any + Send>> {
        fut.instrument(tracing::Span::current()).boxed()
    }

    fn trace_block(
        &self,
        f: Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>,
    ) -> Box<dyn FnOnce() -> Box<dyn Any + Send> + Send> {
        let span = tracing::Span::current();
        Box::new(move || span.in_scope(f))
    }
}

/// Installs [`SpanPropagation`] as DataFusion's process-wide task tracer, unless the
/// embedder installed one already.
fn propagate_spans_into_tasks() {
    static TRACER: SpanPropagation = SpanPropagation;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = set_join_set_tracer(&TRACER);
    });
}

/// Adds tracelake's planner hooks to a state builder, around what the builder already has:
/// its analyzer rules (DataFusion's defaults when it has none) are bracketed by the rules that
/// open and close `df.logical.build`, its optimizer rules likewise, and its query planner
/// (DataFusion's default when it has none) is wrapped to emit `df.physical.plan` and
/// `df.collect`. The embedder's own rules and planner keep running, in their order. Rules added
/// to the builder afterwards with `with_analyzer_rule` / `with_optimizer_rule` run after the
/// bracket. Instrumenting a builder twice changes nothing the second time.
///
/// It also makes DataFusion's spawned tasks inherit the current span (process-wide, once,
/// unless another task tracer is installed).
pub fn instrument_session_state(mut builder: SessionStateBuilder) -> SessionStateBuilder {
    propagate_spans_into_tasks();
    let mut analyzer_rules = builder
        .analyzer()
        .take()
        .map(|a| a.rules)
        .unwrap_or_else(|| Analyzer::new().rules);
    // Rules queued with `with_analyzer_rule` would be appended after ours at `build`.
    analyzer_rules.extend(builder.analyzer_rules().take().unwrap_or_default());
    if analyzer_rules
        .iter()
        .any(|r| r.name() == LogicalBuildStart.name())
    {
        *builder.analyzer() = Some(Analyzer::with_rules(analyzer_rules));
        return builder;
    }
    let mut analyzer: Vec<Arc<dyn AnalyzerRule + Send + Sync>> = vec![Arc::new(LogicalBuildStart)];
    analyzer.extend(analyzer_rules);
    let mut optimizer = builder
        .optimizer()
        .take()
        .map(|o| o.rules)
        .unwrap_or_else(|| Optimizer::new().rules);
    optimizer.extend(builder.optimizer_rules().take().unwrap_or_default());
    optimizer.push(Arc::new(LogicalBuildEnd));
    let inner = builder
        .query_planner()
        .take()
        .unwrap_or_else(|| Arc::new(DefaultQueryPlanner));
    builder
        .with_analyzer_rules(analyzer)
        .with_optimizer_rules(optimizer)
        .with_query_planner(Arc::new(InstrumentedQueryPlanner { inner }))
}

/// Instruments an existing context: a new context with the same state (catalogs, tables,
/// functions, configuration, rules and planner), instrumented as
/// [`instrument_session_state`] does.
pub fn instrument_context(ctx: &SessionContext) -> SessionContext {
    let builder = SessionStateBuilder::new_from_existing(ctx.state());
    SessionContext::new_with_state(instrument_session_state(builder).build())
}

/// A new instrumented `SessionContext` with DataFusion's default features.
pub fn instrumented_context(config: datafusion::prelude::SessionConfig) -> SessionContext {
    let builder = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    SessionContext::new_with_state(instrument_session_state(builder).build())
}

/// Parses `sql` and resolves its tables under a `df.table.resolve` span, returning the
/// DataFrame (whose planning and execution emit the other spans in an instrumented context).
pub async fn sql(ctx: &SessionContext, sql: &str) -> Result<DataFrame> {
    let span = tracing::info_span!(
        names::DF_TABLE_RESOLVE,
        { names::ATTR_QUERY_SQL } = sql,
        { names::ATTR_ERROR } = field::Empty,
    );
    let result = ctx.sql(sql).instrument(span.clone()).await;
    if let Err(e) = &result {
        span.record(names::ATTR_ERROR, field::display(e));
    }
    result
}

/// The root of an instrumented plan: runs its child under a `df.collect` span per partition.
#[derive(Debug)]
pub(crate) struct CollectExec {
    input: Arc<dyn ExecutionPlan>,
    /// The span current when the query was planned: `df.collect` nests under it.
    parent: tracing::Span,
}

impl CollectExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, parent: tracing::Span) -> Self {
        Self { input, parent }
    }
}

impl DisplayAs for CollectExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TraceLakeCollectExec")
    }
}

impl ExecutionPlan for CollectExec {
    fn name(&self) -> &'static str {
        "TraceLakeCollectExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(CollectExec::new(input, self.parent.clone()))),
            Err(_) => exec_err!("TraceLakeCollectExec takes exactly one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let span = tracing::info_span!(
            parent: &self.parent,
            names::DF_COLLECT,
            { names::ATTR_PARTITION } = partition,
            { names::ATTR_ROWS } = field::Empty,
            { names::ATTR_BATCHES } = field::Empty,
            { names::ATTR_BYTES } = field::Empty,
            { names::ATTR_ERROR } = field::Empty,
        );
        let inner = {
            let _entered = span.enter();
            self.input.execute(partition, context)?
        };
        Ok(Box::pin(CollectStream {
            inner,
            span,
            rows: 0,
            batches: 0,
            bytes: 0,
        }))
    }
}

struct CollectStream {
    inner: SendableRecordBatchStream,
    span: tracing::Span,
    rows: u64,
    batches: u64,
    bytes: u64,
}

impl CollectStream {
    fn record(&self) {
        self.span.record(names::ATTR_ROWS, self.rows);
        self.span.record(names::ATTR_BATCHES, self.batches);
        self.span.record(names::ATTR_BYTES, self.bytes);
    }
}

impl Stream for CollectStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let span = self.span.clone();
        let _entered = span.enter();
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(batch))) => {
                self.rows += batch.num_rows() as u64;
                self.batches += 1;
                self.bytes += batch.get_array_memory_size() as u64;
            }
            Poll::Ready(Some(Err(e))) => {
                self.span.record(names::ATTR_ERROR, field::display(e));
                self.record();
            }
            Poll::Ready(None) => self.record(),
            Poll::Pending => {}
        }
        polled
    }
}

impl RecordBatchStream for CollectStream {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner.schema()
    }
}
