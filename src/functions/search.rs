//! `trace_search(predicate, start, end [, limit])`: the newest traces with a span matching a
//! predicate in a time window, each with its summary (Tempo's and Jaeger's search result).
//!
//! The search never summarises the whole window. It runs in two steps when the query is
//! planned:
//!
//! 1. **Candidates, newest first, with an early stop.** The window is walked backwards in
//!    slices (the newest 1/64 of it first, each next slice twice as wide). Each slice is one
//!    aggregation over the spans that match in it (`trace_id`, newest matching `start_time`),
//!    pruned like any `spans` scan and cut to `limit` rows (a top-k). A trace's key is the start
//!    time of its newest matching span; every span of a slice is newer than every span of the
//!    slices after it, so once the slices read hold `limit` distinct traces, no span left
//!    unread can place a trace among the first `limit`: the search stops there.
//! 2. **Summaries from lookups.** The traces found are read by id (`trace_id IN (...)`, the
//!    trace-id index: one row group per trace) and summarised over all their spans, with the
//!    spans that match counted and listed.
//!
//! The rows come ordered by `last_match_time` (descending), then `trace_id`. What is held in
//! memory is bounded by `limit` (at most [`MAX_SEARCH_LIMIT`]) traces per slice and the spans
//! of the traces returned.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, SchemaRef, TimestampNanosecondType};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, DFSchema, DataFusionError, Result, ScalarValue, plan_err};
use datafusion::datasource::TableType;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::functions_aggregate::expr_fn::{array_agg, max, min, sum};
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, ExprSchemable, LogicalPlan, LogicalPlanBuilder,
    TableProviderFilterPushDown, col, lit, when,
};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{ExecutionPlan, collect};
use tracing::field;

use super::args;
use super::summaries::{spans_scan, summary_aggregates, summary_columns};
use crate::observe::names;
use crate::schema::{TIME_ZONE, col as c, sql_schema};
use crate::table::TraceTable;

/// The SQL name.
pub const TRACE_SEARCH: &str = "trace_search";

/// The number of traces `trace_search` returns when `limit` is omitted or `NULL`.
pub const DEFAULT_SEARCH_LIMIT: usize = 20;

/// The most traces one `trace_search` may return (its memory is bounded by this many traces).
pub const MAX_SEARCH_LIMIT: usize = 10_000;

/// The first slice of the window is this fraction of it; each next slice is twice as wide.
const FIRST_SLICE_DIVISOR: i128 = 64;

/// The narrowest first slice: one second.
const MIN_SLICE_NANOS: i128 = 1_000_000_000;

/// Columns `trace_search` adds after the summary columns.
pub mod search_col {
    /// How many spans of the trace match the predicate in the window.
    pub const MATCHED_COUNT: &str = "matched_count";
    /// The start time of the newest matching span: the order of the results.
    pub const LAST_MATCH_TIME: &str = "last_match_time";
    /// The ids of the matching spans, by start time.
    pub const MATCHED_SPAN_IDS: &str = "matched_span_ids";
}

/// What one `trace_search` call asks: the predicate's SQL text (`None`: every span), the
/// window in unix nanoseconds (inclusive at both ends, `None`: unbounded) and the limit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SearchQuery {
    pub predicate: Option<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub limit: usize,
}

impl SearchQuery {
    /// The predicate as an expression over `spans` (qualified `spans`), parsed and checked in
    /// `session`: a boolean expression of one span's columns, with no aggregate, window
    /// function or subquery.
    pub(crate) fn predicate_expr(&self, session: &dyn Session) -> Result<Expr> {
        let text = match self.predicate.as_deref().map(str::trim) {
            None | Some("") => return Ok(lit(true)),
            Some(text) => text,
        };
        let schema = DFSchema::try_from_qualified_schema("spans", &sql_schema())?;
        let expr = parse_sql_expr(session, text, &schema).map_err(|e| {
            DataFusionError::Plan(format!(
                "{TRACE_SEARCH} cannot read its predicate (argument 1) {text:?}: {}",
                e.strip_backtrace()
            ))
        })?;
        let unsupported = expr.exists(|e| {
            Ok(matches!(
                e,
                Expr::AggregateFunction(_)
                    | Expr::WindowFunction(_)
                    | Expr::Exists(_)
                    | Expr::InSubquery(_)
                    | Expr::ScalarSubquery(_)
                    | Expr::SetComparison(_)
                    | Expr::OuterReferenceColumn(..)
                    | Expr::Placeholder(_)
                    | Expr::Unnest(_)
                    | Expr::GroupingSet(_)
            ))
        })?;
        if unsupported {
            return plan_err!(
                "{TRACE_SEARCH} expects a predicate over one span's columns (argument 1), \
                 without aggregates, window functions or subqueries; got {text:?}"
            );
        }
        match expr.get_type(&schema)? {
            DataType::Boolean | DataType::Null => Ok(expr),
            other => plan_err!(
                "{TRACE_SEARCH} expects a boolean predicate (argument 1), got {text:?} of type {other}"
            ),
        }
    }
}

/// SQL expression `text` over `schema`, parsed in `session` (with tracelake's scalar
/// functions when `session` is not a `SessionState`).
pub(crate) fn parse_sql_expr(session: &dyn Session, text: &str, schema: &DFSchema) -> Result<Expr> {
    let parse = |state: &SessionState| state.create_logical_expr(text, schema);
    match session.as_any().downcast_ref::<SessionState>() {
        Some(state) => parse(state),
        None => {
            let state = SessionStateBuilder::new()
                .with_config(session.config().clone())
                .with_default_features()
                .with_scalar_functions(super::udfs::all().into_iter().map(Arc::new).collect())
                .build();
            parse(&state)
        }
    }
}

/// The `trace_search` table function.
#[derive(Debug)]
pub struct TraceSearchFunction {
    table: Arc<TraceTable>,
}

impl TraceSearchFunction {
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self { table }
    }
}

impl TableFunctionImpl for TraceSearchFunction {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = call.exprs();
        args::count(
            TRACE_SEARCH,
            exprs,
            3,
            4,
            "(predicate, start, end [, limit])",
        )?;
        let query = SearchQuery {
            predicate: args::optional_string(TRACE_SEARCH, 1, "predicate", &exprs[0])?,
            start: args::time_bound(TRACE_SEARCH, 2, "start", &exprs[1])?,
            end: args::time_bound(TRACE_SEARCH, 3, "end", &exprs[2])?,
            limit: match exprs.get(3) {
                Some(e) => args::bounded_count(
                    TRACE_SEARCH,
                    4,
                    "limit",
                    e,
                    DEFAULT_SEARCH_LIMIT,
                    MAX_SEARCH_LIMIT,
                )?,
                None => DEFAULT_SEARCH_LIMIT,
            },
        };
        // Checked now, so that a bad predicate fails when the statement is planned.
        query.predicate_expr(call.session())?;
        Ok(Arc::new(TraceSearchTable::try_new(
            self.table.clone(),
            query,
        )?))
    }
}

/// The table `trace_search(...)` returns.
#[derive(Debug)]
pub struct TraceSearchTable {
    pub(crate) table: Arc<TraceTable>,
    pub(crate) query: SearchQuery,
    schema: SchemaRef,
}

impl TraceSearchTable {
    pub(crate) fn try_new(table: Arc<TraceTable>, query: SearchQuery) -> Result<Self> {
        Ok(Self {
            table,
            query,
            schema: trace_search_schema()?,
        })
    }
}

/// The output schema of `trace_search`: the columns of `trace_summaries`, then
/// `matched_count`, `last_match_time` and `matched_span_ids`.
pub fn trace_search_schema() -> Result<SchemaRef> {
    // The schema of the summaries plan itself (its shape does not depend on the ids).
    let table = Arc::new(crate::schema::sql_schema());
    let plan = summaries_plan(
        LogicalPlanBuilder::scan(
            "spans",
            datafusion::datasource::provider_as_source(Arc::new(
                datafusion::datasource::empty::EmptyTable::new(table.as_ref().clone()),
            )),
            None,
        )?,
        &["0".repeat(32)],
        lit(true),
        None,
        None,
    )?;
    Ok(Arc::new(plan.schema().as_arrow().clone()))
}

#[async_trait]
impl TableProvider for TraceSearchTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let predicate = self.query.predicate_expr(state)?;
        let ids = candidates(&self.table, &self.query, &predicate, state).await?;
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        if ids.is_empty() {
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let plan = summaries_plan(
            spans_scan(&self.table, "spans")?,
            &ids,
            predicate,
            self.query.start,
            self.query.end,
        )?;
        let mut builder = LogicalPlanBuilder::from(plan);
        if let Some(projection) = projection {
            let schema = builder.schema().clone();
            builder = builder.project(
                projection
                    .iter()
                    .map(|&i| Expr::Column(Column::from(schema.qualified_field(i)))),
            )?;
        }
        state.create_physical_plan(&builder.build()?).await
    }
}

fn timestamp(ns: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(
        Some(ns),
        Some(TIME_ZONE.into()),
    ))
}

/// `start_time` within `[start, end]` (either side unbounded when `None`).
pub(crate) fn in_window(start: Option<i64>, end: Option<i64>) -> Expr {
    let mut filter = lit(true);
    if let Some(s) = start {
        filter = filter.and(col(c::START_TIME).gt_eq(timestamp(s)));
    }
    if let Some(e) = end {
        filter = filter.and(col(c::START_TIME).lt_eq(timestamp(e)));
    }
    filter
}

/// The summaries of the traces `ids` (read by id from `spans`), with the spans that match
/// `predicate` in the window counted and listed, newest match first.
fn summaries_plan(
    spans: LogicalPlanBuilder,
    ids: &[String],
    predicate: Expr,
    start: Option<i64>,
    end: Option<i64>,
) -> Result<LogicalPlan> {
    summaries_plan_with(spans, ids, predicate, start, end, |_| Ok(Vec::new()))
}

/// [`summaries_plan`] with more aggregates per trace after its columns: `extra` makes them
/// (aliased) from the condition "a span that matches, in the window".
pub(crate) fn summaries_plan_with(
    spans: LogicalPlanBuilder,
    ids: &[String],
    predicate: Expr,
    start: Option<i64>,
    end: Option<i64>,
    extra: impl FnOnce(&Expr) -> Result<Vec<(Expr, String)>>,
) -> Result<LogicalPlan> {
    let matched = predicate.and(in_window(start, end));
    let extra = extra(&matched)?;
    let mut aggregates = summary_aggregates()?;
    aggregates.push(
        sum(when(matched.clone(), lit(1i64)).otherwise(lit(0i64))?)
            .alias(search_col::MATCHED_COUNT),
    );
    aggregates.push(
        max(when(matched.clone(), col(c::START_TIME)).end()?).alias(search_col::LAST_MATCH_TIME),
    );
    aggregates.push(
        array_agg(col(c::SPAN_ID))
            .filter(matched)
            .order_by(vec![
                col(c::START_TIME).sort(true, false),
                col(c::SPAN_ID).sort(true, false),
            ])
            .build()?
            .alias(search_col::MATCHED_SPAN_IDS),
    );
    let mut columns = summary_columns();
    columns.extend([
        col(search_col::MATCHED_COUNT),
        col(search_col::LAST_MATCH_TIME),
        col(search_col::MATCHED_SPAN_IDS),
    ]);
    for (aggregate, name) in extra {
        aggregates.push(aggregate.alias(&name));
        columns.push(Expr::Column(Column::from_name(name)));
    }
    spans
        .filter(col(c::TRACE_ID).in_list(ids.iter().map(|id| lit(id.as_str())).collect(), false))?
        .aggregate(vec![col(c::TRACE_ID)], aggregates)?
        .project(columns)?
        .sort(vec![
            col(search_col::LAST_MATCH_TIME).sort(false, false),
            col(c::TRACE_ID).sort(true, false),
        ])?
        .build()
}

/// Runs `plan` in `state` and returns its batches.
pub(crate) async fn run(
    state: &dyn Session,
    plan: LogicalPlan,
) -> Result<Vec<arrow::array::RecordBatch>> {
    let physical = state.create_physical_plan(&plan).await?;
    collect(physical, state.task_ctx()).await
}

/// The window with its unbounded sides closed by the table's extent: from the files' log
/// statistics, or (when a file has none) from the spans themselves. `None` when the table holds
/// no span there.
async fn extent(
    table: &Arc<TraceTable>,
    query: &SearchQuery,
    state: &dyn Session,
) -> Result<Option<(i64, i64)>> {
    if let (Some(s), Some(e)) = (query.start, query.end) {
        return Ok(Some((s, e)));
    }
    let snapshot = table.snapshot();
    if snapshot.num_files() == 0 {
        return Ok(None);
    }
    if let Some((lo, hi)) = snapshot.start_extent() {
        return Ok(Some((query.start.unwrap_or(lo), query.end.unwrap_or(hi))));
    }
    let plan = spans_scan(table, "spans")?
        .filter(in_window(query.start, query.end))?
        .aggregate(
            Vec::<Expr>::new(),
            vec![
                min(col(c::START_TIME)).alias("lo"),
                max(col(c::START_TIME)).alias("hi"),
            ],
        )?
        .build()?;
    let batches = run(state, plan).await?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let lo = batch.column(0).as_primitive::<TimestampNanosecondType>();
    let hi = batch.column(1).as_primitive::<TimestampNanosecondType>();
    if lo.is_null(0) || hi.is_null(0) {
        return Ok(None);
    }
    Ok(Some((
        query.start.unwrap_or(lo.value(0)),
        query.end.unwrap_or(hi.value(0)),
    )))
}

/// Step 1 of the search (see the [module](self) documentation): the ids of the `limit`
/// traces whose newest span matching `predicate` in the window is the most recent, newest
/// first (ties by trace id).
pub(crate) async fn candidates(
    table: &Arc<TraceTable>,
    query: &SearchQuery,
    predicate: &Expr,
    state: &dyn Session,
) -> Result<Vec<String>> {
    let span = tracing::info_span!(
        names::TRACE_SEARCH,
        { names::ATTR_SEARCH_SLICES } = field::Empty,
        { names::ATTR_ROWS } = field::Empty,
        { names::ATTR_ERROR } = field::Empty,
    );
    let result = tracing::Instrument::instrument(
        candidates_inner(table, query, predicate, state, span.clone()),
        span.clone(),
    )
    .await;
    match &result {
        Ok(ids) => {
            span.record(names::ATTR_ROWS, ids.len());
        }
        Err(e) => {
            span.record(names::ATTR_ERROR, field::display(e));
        }
    }
    result
}

async fn candidates_inner(
    table: &Arc<TraceTable>,
    query: &SearchQuery,
    predicate: &Expr,
    state: &dyn Session,
    span: tracing::Span,
) -> Result<Vec<String>> {
    let Some((lo, hi)) = extent(table, query, state).await? else {
        return Ok(Vec::new());
    };
    if lo > hi {
        return Ok(Vec::new());
    }
    let total = i128::from(hi) - i128::from(lo);
    let mut width = (total / FIRST_SLICE_DIVISOR).max(MIN_SLICE_NANOS);
    // The newest matching start time of each trace found; slices are read newest first, so
    // the first slice a trace appears in gives its key.
    let mut found: HashMap<String, i64> = HashMap::new();
    let mut upper = hi;
    let mut upper_inclusive = true;
    let mut slices = 0u64;
    let snapshot = table.snapshot();
    loop {
        // No slice over a stretch no file holds: the slice starts at the latest span start a
        // file may hold (per the log statistics).
        match snapshot.latest_start_until(upper) {
            Ok(None) => break,
            Ok(Some(latest)) if latest < lo => break,
            Ok(Some(latest)) if latest < upper => {
                upper = latest;
                upper_inclusive = true;
            }
            _ => {}
        }
        let lower = i64::try_from((i128::from(upper) - width).max(i128::from(lo))).unwrap_or(lo);
        slices += 1;
        let time = col(c::START_TIME);
        let below = if upper_inclusive {
            time.clone().lt_eq(timestamp(upper))
        } else {
            time.clone().lt(timestamp(upper))
        };
        let plan = spans_scan(table, "spans")?
            .filter(
                predicate
                    .clone()
                    .and(time.gt_eq(timestamp(lower)))
                    .and(below),
            )?
            .aggregate(
                vec![col(c::TRACE_ID)],
                vec![max(col(c::START_TIME)).alias("t")],
            )?
            .sort(vec![
                col("t").sort(false, false),
                col(c::TRACE_ID).sort(true, false),
            ])?
            .limit(0, Some(query.limit))?
            .build()?;
        for batch in run(state, plan).await? {
            let ids = batch.column(0).as_string_opt::<i32>().ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "{TRACE_SEARCH}: trace_id came as {}",
                    batch.column(0).data_type()
                ))
            })?;
            let times = batch.column(1).as_primitive::<TimestampNanosecondType>();
            for row in 0..batch.num_rows() {
                if ids.is_valid(row) && times.is_valid(row) {
                    found
                        .entry(ids.value(row).to_string())
                        .or_insert(times.value(row));
                }
            }
        }
        if found.len() >= query.limit || lower <= lo {
            break;
        }
        upper = lower;
        upper_inclusive = false;
        width = width.saturating_mul(2);
    }
    span.record(names::ATTR_SEARCH_SLICES, slices);
    let mut ranked: Vec<(String, i64)> = found.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(query.limit);
    Ok(ranked.into_iter().map(|(id, _)| id).collect())
}
