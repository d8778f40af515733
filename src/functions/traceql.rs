//! TraceQL in SQL: `traceql(query, start, end [, limit])`, the newest traces matching a TraceQL
//! search in a window with their summaries (the columns of `trace_search`), and
//! `traceql_metrics(query, start, end, step)`, a TraceQL metrics query as rows of
//! `time`, one column per `by(...)` label, and `value`.
//!
//! A search runs on `trace_search`'s path (newest first, early stop, lookups by id) with the
//! span predicate [`crate::traceql`] compiles. When the query also has trace-level conditions
//! (spanset `&&`, `trace:duration`, `| count() > 2`, ...), the traces found are checked
//! against them and the search reads further back (4x as many candidates each round, at most
//! `MAX_SEARCH_LIMIT`) until `limit` traces qualify or the window is exhausted: what is held
//! is bounded by the candidates of one round.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, ListBuilder, RecordBatch, StringBuilder,
    TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Column, DFSchema, DataFusionError, Result, ScalarValue, plan_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableType, ViewTable};
use datafusion::functions_aggregate::expr_fn::{
    approx_percentile_cont, avg, bool_or, count, max, min, sum,
};
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown, cast, col,
    lit,
};
use datafusion::physical_plan::ExecutionPlan;

use super::args;
use super::search::{
    DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT, SearchQuery, TraceSearchTable, candidates, in_window,
    parse_sql_expr, run, summaries_plan_with, trace_search_schema,
};
use super::summaries::spans_scan;
use crate::schema::{col as c, sql_schema};
use crate::table::TraceTable;
use crate::traceql::structure::TraceSpans;
use crate::traceql::{Compiled, MetricsKind, MetricsPlan, SearchPlan, SpansetTree, TraceQlError};

/// The SQL name of the search function.
pub const TRACEQL: &str = "traceql";
/// The SQL name of the metrics function.
pub const TRACEQL_METRICS: &str = "traceql_metrics";

/// The most steps one metrics query may have.
pub const MAX_METRICS_STEPS: i64 = 11_000;

fn traceql_error(function: &str, query: &str, e: &TraceQlError) -> DataFusionError {
    DataFusionError::Plan(format!("{function}: {e} in {query:?}"))
}

/// Compiles the TraceQL of argument 1.
fn compiled(function: &str, exprs: &[Expr]) -> Result<(String, Compiled)> {
    let Some(text) = args::optional_string(function, 1, "query", &exprs[0])? else {
        return plan_err!("{function} expects a TraceQL query for argument 1 (query), got NULL");
    };
    let compiled =
        crate::traceql::compile_text(&text).map_err(|e| traceql_error(function, &text, &e))?;
    Ok((text, compiled))
}

/// The `traceql` table function.
#[derive(Debug)]
pub struct TraceQlFunction {
    table: Arc<TraceTable>,
}

impl TraceQlFunction {
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self { table }
    }
}

impl TableFunctionImpl for TraceQlFunction {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = call.exprs();
        args::count(TRACEQL, exprs, 3, 4, "(query, start, end [, limit])")?;
        let (text, compiled) = compiled(TRACEQL, exprs)?;
        let Compiled::Search(plan) = compiled else {
            return plan_err!(
                "{TRACEQL} runs searches; {text:?} is a metrics query (use {TRACEQL_METRICS})"
            );
        };
        let query = SearchQuery {
            predicate: Some(plan.span_predicate.clone()),
            start: args::time_bound(TRACEQL, 2, "start", &exprs[1])?,
            end: args::time_bound(TRACEQL, 3, "end", &exprs[2])?,
            limit: match exprs.get(3) {
                Some(e) => args::bounded_count(
                    TRACEQL,
                    4,
                    "limit",
                    e,
                    DEFAULT_SEARCH_LIMIT,
                    MAX_SEARCH_LIMIT,
                )?,
                None => DEFAULT_SEARCH_LIMIT,
            },
        };
        query.predicate_expr(call.session())?;
        Ok(Arc::new(TraceQlTable {
            table: self.table.clone(),
            text,
            query,
            plan,
            schema: trace_search_schema()?,
        }))
    }
}

/// The table `traceql(...)` returns.
#[derive(Debug)]
pub struct TraceQlTable {
    pub(crate) table: Arc<TraceTable>,
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) text: String,
    pub(crate) query: SearchQuery,
    plan: SearchPlan,
    schema: SchemaRef,
}

impl TraceQlTable {
    /// The table of search `text` (TraceQL) with `query`'s window and limit; the span
    /// predicate is compiled from `text`.
    #[cfg(feature = "cluster")]
    pub(crate) fn try_new(
        table: Arc<TraceTable>,
        text: String,
        query: SearchQuery,
    ) -> Result<Self> {
        let plan = match crate::traceql::compile_text(&text) {
            Ok(Compiled::Search(plan)) => plan,
            Ok(Compiled::Metrics(_)) => {
                return plan_err!("{TRACEQL} runs searches; {text:?} is a metrics query");
            }
            Err(e) => return Err(traceql_error(TRACEQL, &text, &e)),
        };
        Ok(Self {
            table,
            text,
            query: SearchQuery {
                predicate: Some(plan.span_predicate.clone()),
                ..query
            },
            plan,
            schema: trace_search_schema()?,
        })
    }

    /// The traces that qualify, newest first (at most `limit`).
    async fn qualifying(&self, state: &dyn Session, filter: &str) -> Result<Vec<RecordBatch>> {
        let spans_schema = DFSchema::try_from_qualified_schema("spans", &sql_schema())?;
        let predicate = self.query.predicate_expr(state)?;
        let leaves = self
            .plan
            .leaves
            .iter()
            .map(|l| parse_sql_expr(state, l, &spans_schema))
            .collect::<Result<Vec<_>>>()?;
        let aggregates = self
            .plan
            .aggregates
            .iter()
            .map(|(f, a)| Ok((f.clone(), parse_sql_expr(state, a, &spans_schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let window = in_window(self.query.start, self.query.end);
        let (predicate, leaves, aggregates, window) = (&predicate, &leaves, &aggregates, &window);
        self.in_rounds(state, predicate, move |ids: Vec<String>| async move {
            let plan = summaries_plan_with(
                spans_scan(&self.table, "spans")?,
                &ids,
                predicate.clone(),
                self.query.start,
                self.query.end,
                |matched| {
                    let mut extra = Vec::new();
                    for (i, leaf) in leaves.iter().enumerate() {
                        extra.push((
                            bool_or(leaf.clone().and(window.clone())),
                            format!("__leaf_{i}"),
                        ));
                    }
                    for (j, (function, argument)) in aggregates.iter().enumerate() {
                        let value = cast(argument.clone(), DataType::Float64);
                        let aggregate = match function.as_str() {
                            "avg" => avg(value),
                            "min" => min(value),
                            "max" => max(value),
                            _ => sum(value),
                        };
                        extra.push((
                            aggregate.filter(matched.clone()).build()?,
                            format!("__agg_{j}"),
                        ));
                    }
                    Ok(extra)
                },
            )?;
            let plan_schema = plan.schema().clone();
            let condition = parse_sql_expr(state, filter, &plan_schema)?;
            let output: Vec<Expr> = self
                .schema
                .fields()
                .iter()
                .map(|f| Expr::Column(Column::from_name(f.name())))
                .collect();
            let plan = LogicalPlanBuilder::from(plan)
                .filter(condition)?
                .project(output)?
                .limit(0, Some(self.query.limit))?
                .build()?;
            run(state, plan).await
        })
        .await
    }

    /// Reads candidates (traces with a span matching `predicate`, newest first) in rounds:
    /// `limit` of them, then 4x as many each round up to `MAX_SEARCH_LIMIT`, until `qualify`
    /// (the rows of the traces among a round's ids that qualify) returns `limit` rows or the
    /// window holds no more.
    async fn in_rounds<F>(
        &self,
        state: &dyn Session,
        predicate: &Expr,
        qualify: impl Fn(Vec<String>) -> F,
    ) -> Result<Vec<RecordBatch>>
    where
        F: std::future::Future<Output = Result<Vec<RecordBatch>>>,
    {
        let mut fetch = self.query.limit;
        loop {
            let round = SearchQuery {
                limit: fetch,
                ..self.query.clone()
            };
            let ids = candidates(&self.table, &round, predicate, state).await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let found = ids.len();
            let batches = qualify(ids).await?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            if rows >= self.query.limit || found < fetch || fetch >= MAX_SEARCH_LIMIT {
                return Ok(batches);
            }
            fetch = fetch.saturating_mul(4).min(MAX_SEARCH_LIMIT);
        }
    }
}

impl TraceQlTable {
    /// A query with structural operators: the candidates' span trees evaluated against
    /// `tree`; the traces whose spanset is not empty, newest match first (at most `limit`),
    /// with that spanset as their matched spans. What is held is the id, parent, start time
    /// and leaf flags of the candidates' spans (at most `MAX_SEARCH_LIMIT` traces a round).
    async fn structural(
        &self,
        state: &dyn Session,
        tree: &SpansetTree,
    ) -> Result<Vec<RecordBatch>> {
        let spans_schema = DFSchema::try_from_qualified_schema("spans", &sql_schema())?;
        let predicate = self.query.predicate_expr(state)?;
        let window = in_window(self.query.start, self.query.end);
        let mut columns = vec![
            col(c::TRACE_ID),
            col(c::SPAN_ID),
            col(c::PARENT_SPAN_ID),
            cast(col(c::START_TIME), DataType::Int64).alias("__start"),
        ];
        for (i, leaf) in self.plan.leaves.iter().enumerate() {
            let leaf = parse_sql_expr(state, leaf, &spans_schema)?;
            columns.push(
                leaf.and(window.clone())
                    .is_true()
                    .alias(format!("__leaf_{i}")),
            );
        }
        let (predicate, columns) = (&predicate, &columns);
        self.in_rounds(state, predicate, move |ids: Vec<String>| async move {
            let plan = spans_scan(&self.table, "spans")?
                .filter(
                    col(c::TRACE_ID)
                        .in_list(ids.iter().map(|id| lit(id.as_str())).collect(), false),
                )?
                .project(columns.clone())?
                .build()?;
            let matched = matched_spansets(&run(state, plan).await?, self.plan.leaves.len(), tree)?;
            let mut found = Vec::new();
            if !matched.is_empty() {
                let qualifying: Vec<String> = matched.keys().cloned().collect();
                let plan = summaries_plan_with(
                    spans_scan(&self.table, "spans")?,
                    &qualifying,
                    predicate.clone(),
                    self.query.start,
                    self.query.end,
                    |_| Ok(Vec::new()),
                )?;
                let summaries = run(state, plan).await?;
                found = with_matches(&self.schema, &summaries, &matched, self.query.limit)?;
            }
            Ok(found)
        })
        .await
    }
}

/// The spans a structural query selects in one trace: `(start, span id)` of each, by start
/// time.
struct Matched {
    spans: Vec<(i64, String)>,
}

/// Groups `batches` (trace id, span id, parent id, start, one flag per leaf) by trace and
/// evaluates `tree` on each: the traces whose spanset is not empty.
fn matched_spansets(
    batches: &[RecordBatch],
    leaves: usize,
    tree: &SpansetTree,
) -> Result<HashMap<String, Matched>> {
    #[derive(Default)]
    struct Rows {
        ids: Vec<String>,
        parents: Vec<Option<String>>,
        starts: Vec<i64>,
        flags: Vec<Vec<bool>>,
    }
    let mut traces: HashMap<String, Rows> = HashMap::new();
    for batch in batches {
        let text = |i: usize| -> Result<ArrayRef> {
            Ok(arrow::compute::cast(batch.column(i), &DataType::Utf8)?)
        };
        let (trace_ids, span_ids, parents) = (text(0)?, text(1)?, text(2)?);
        let (trace_ids, span_ids, parents) = (
            trace_ids.as_string::<i32>(),
            span_ids.as_string::<i32>(),
            parents.as_string::<i32>(),
        );
        let starts = batch
            .column(3)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| DataFusionError::Internal("span start is not Int64".into()))?;
        let flags = (0..leaves)
            .map(|i| {
                batch
                    .column(4 + i)
                    .as_boolean_opt()
                    .ok_or_else(|| DataFusionError::Internal("a leaf flag is not boolean".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            if trace_ids.is_null(row) || span_ids.is_null(row) {
                continue;
            }
            let rows = traces
                .entry(trace_ids.value(row).to_string())
                .or_insert_with(|| Rows {
                    flags: vec![Vec::new(); leaves],
                    ..Default::default()
                });
            rows.ids.push(span_ids.value(row).to_string());
            rows.parents.push(
                parents
                    .is_valid(row)
                    .then(|| parents.value(row).to_string()),
            );
            rows.starts.push(starts.value(row));
            for (i, f) in flags.iter().enumerate() {
                rows.flags[i].push(f.is_valid(row) && f.value(row));
            }
        }
    }
    let mut out = HashMap::new();
    for (trace, rows) in traces {
        let spans = TraceSpans::from_ids(
            rows.ids
                .iter()
                .map(String::as_str)
                .zip(rows.parents.iter().map(Option::as_deref)),
            rows.flags,
        );
        let selected = spans.evaluate(tree);
        let mut matched: Vec<(i64, String)> = selected
            .iter()
            .zip(rows.starts.iter().zip(rows.ids))
            .filter(|(s, _)| **s)
            .map(|(_, (start, id))| (*start, id))
            .collect();
        if matched.is_empty() {
            continue;
        }
        matched.sort();
        out.insert(trace, Matched { spans: matched });
    }
    Ok(out)
}

/// `summaries` (in the schema of `trace_search`) with their matched columns replaced by the
/// spansets of `matched`, newest match first, at most `limit` rows.
fn with_matches(
    schema: &SchemaRef,
    summaries: &[RecordBatch],
    matched: &HashMap<String, Matched>,
    limit: usize,
) -> Result<Vec<RecordBatch>> {
    use super::search::search_col;
    if summaries.is_empty() {
        return Ok(Vec::new());
    }
    let batch = arrow::compute::concat_batches(schema, summaries)?;
    let index = |name: &str| schema.index_of(name);
    let trace_ids = arrow::compute::cast(batch.column(index(c::TRACE_ID)?), &DataType::Utf8)?;
    let trace_ids = trace_ids.as_string::<i32>();
    let mut counts = Vec::with_capacity(batch.num_rows());
    let mut last = Vec::with_capacity(batch.num_rows());
    let mut lists = ListBuilder::new(StringBuilder::new());
    for row in 0..batch.num_rows() {
        let spans = matched
            .get(trace_ids.value(row))
            .map(|m| m.spans.as_slice())
            .unwrap_or_default();
        counts.push(spans.len() as i64);
        last.push(spans.iter().map(|(start, _)| *start).max());
        for (_, id) in spans {
            lists.values().append_value(id);
        }
        lists.append(true);
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let replace = |name: &str, array: ArrayRef, columns: &mut Vec<ArrayRef>| -> Result<()> {
        let i = index(name)?;
        columns[i] = arrow::compute::cast(&array, schema.field(i).data_type())?;
        Ok(())
    };
    replace(
        search_col::MATCHED_COUNT,
        Arc::new(Int64Array::from(counts)),
        &mut columns,
    )?;
    replace(
        search_col::LAST_MATCH_TIME,
        Arc::new(TimestampNanosecondArray::from(last)),
        &mut columns,
    )?;
    replace(
        search_col::MATCHED_SPAN_IDS,
        Arc::new(lists.finish()),
        &mut columns,
    )?;
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let order = arrow::compute::lexsort_to_indices(
        &[
            arrow::compute::SortColumn {
                values: batch.column(index(search_col::LAST_MATCH_TIME)?).clone(),
                options: Some(arrow::compute::SortOptions {
                    descending: true,
                    nulls_first: false,
                }),
            },
            arrow::compute::SortColumn {
                values: batch.column(index(c::TRACE_ID)?).clone(),
                options: None,
            },
        ],
        Some(limit),
    )?;
    Ok(vec![arrow::compute::take_record_batch(&batch, &order)?])
}

#[async_trait]
impl TableProvider for TraceQlTable {
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
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(tree) = &self.plan.structure {
            let batches = self.structural(state, tree).await?;
            return Ok(MemorySourceConfig::try_new_exec(
                &[batches],
                self.schema.clone(),
                projection.cloned(),
            )?);
        }
        let Some(filter) = &self.plan.trace_filter else {
            let search = TraceSearchTable::try_new(self.table.clone(), self.query.clone())?;
            return search.scan(state, projection, filters, limit).await;
        };
        let batches = self.qualifying(state, filter).await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// The `traceql_metrics` table function.
#[derive(Debug)]
pub struct TraceQlMetricsFunction {
    table: Arc<TraceTable>,
}

impl TraceQlMetricsFunction {
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self { table }
    }
}

/// A step: a duration string (`'1m'`, `'15s'`) or a number of seconds.
fn step_nanos(function: &str, expr: &Expr) -> Result<i64> {
    let bad = |got: String| {
        plan_err!(
            "{function} expects a step for argument 4 (step): a duration such as '1m' or '15s', \
             or a number of seconds; got {got}"
        )
    };
    let Expr::Literal(value, _) = expr else {
        return bad(format!("{expr}"));
    };
    let nanos = match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => match crate::traceql::parse::duration_nanos(s.trim()) {
            Some(n) => n,
            None => match s.trim().parse::<f64>() {
                Ok(secs) if secs.is_finite() && secs.abs() < 9.2e9 => (secs * 1e9) as i64,
                _ => return bad(format!("{s:?}")),
            },
        },
        ScalarValue::Int64(Some(v)) => v.saturating_mul(1_000_000_000),
        ScalarValue::Int32(Some(v)) => i64::from(*v).saturating_mul(1_000_000_000),
        ScalarValue::Float64(Some(v)) if v.is_finite() && v.abs() < 9.2e9 => (v * 1e9) as i64,
        other => return bad(format!("{} {other}", other.data_type())),
    };
    if nanos < 1_000_000 {
        return plan_err!("{function} expects a step of at least 1ms (argument 4), got {nanos} ns");
    }
    Ok(nanos)
}

impl TableFunctionImpl for TraceQlMetricsFunction {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = call.exprs();
        args::count(TRACEQL_METRICS, exprs, 4, 4, "(query, start, end, step)")?;
        let (text, compiled) = compiled(TRACEQL_METRICS, exprs)?;
        let Compiled::Metrics(plan) = compiled else {
            return plan_err!(
                "{TRACEQL_METRICS} runs metrics queries ({{...}} | rate(), ...); {text:?} is a \
                 search (use {TRACEQL})"
            );
        };
        let start = args::time_bound(TRACEQL_METRICS, 2, "start", &exprs[1])?;
        let end = args::time_bound(TRACEQL_METRICS, 3, "end", &exprs[2])?;
        let (Some(start), Some(end)) = (start, end) else {
            return plan_err!(
                "{TRACEQL_METRICS} needs a bounded window: start and end may not be NULL"
            );
        };
        if end < start {
            return plan_err!("{TRACEQL_METRICS}: end is before start");
        }
        let step = step_nanos(TRACEQL_METRICS, &exprs[3])?;
        let steps = (i128::from(end) - i128::from(start)) / i128::from(step);
        if steps > i128::from(MAX_METRICS_STEPS) {
            return plan_err!(
                "{TRACEQL_METRICS}: the window holds {steps} steps, more than the \
                 {MAX_METRICS_STEPS} allowed; use a larger step"
            );
        }
        let logical = metrics_plan(&self.table, call.session(), &plan, start, end, step)?;
        Ok(Arc::new(ViewTable::new(logical, None)))
    }
}

/// The plan of a metrics query: one row per (step, labels[, p | __bucket]).
pub(crate) fn metrics_plan(
    table: &Arc<TraceTable>,
    session: &dyn Session,
    plan: &MetricsPlan,
    start: i64,
    end: i64,
    step: i64,
) -> Result<LogicalPlan> {
    let spans_schema = DFSchema::try_from_qualified_schema("spans", &sql_schema())?;
    let predicate = parse_sql_expr(session, &plan.span_predicate, &spans_schema)?;
    let stride = lit(ScalarValue::new_interval_mdn(0, 0, step));
    let origin = lit(ScalarValue::TimestampNanosecond(
        Some(start),
        Some(crate::schema::TIME_ZONE.into()),
    ));
    let time =
        datafusion::functions::expr_fn::date_bin(stride, col(c::START_TIME), origin).alias("time");
    let mut group = vec![time];
    let mut labels = Vec::new();
    for (label, sql) in &plan.by {
        let name = label.clone();
        group.push(parse_sql_expr(session, sql, &spans_schema)?.alias(&name));
        labels.push(name);
    }
    let spans =
        spans_scan(table, "spans")?.filter(predicate.and(in_window(Some(start), Some(end))))?;
    let label_columns = |labels: &[String]| -> Vec<Expr> {
        std::iter::once(col("time"))
            .chain(labels.iter().map(|l| Expr::Column(Column::from_name(l))))
            .collect()
    };
    let seconds = step as f64 / 1e9;
    let counted = cast(count(lit(1i64)), DataType::Float64);
    let builder = match &plan.kind {
        MetricsKind::Rate => {
            spans.aggregate(group, vec![(counted / lit(seconds)).alias("value")])?
        }
        MetricsKind::CountOverTime => spans.aggregate(group, vec![counted.alias("value")])?,
        MetricsKind::Histogram { value } => {
            let v = cast(
                parse_sql_expr(session, value, &spans_schema)?,
                DataType::Float64,
            );
            // The upper bound of the value's power-of-two bucket (durations in seconds).
            let bucket = datafusion::functions::expr_fn::power(
                lit(2.0f64),
                datafusion::functions::expr_fn::ceil(datafusion::functions::expr_fn::log2(
                    datafusion::functions::expr_fn::greatest(vec![v, lit(1.0f64)]),
                )),
            );
            let bucket = if plan.value_is_duration {
                bucket / lit(1e9)
            } else {
                bucket
            };
            group.push(bucket.alias("__bucket"));
            labels.push("__bucket".into());
            spans.aggregate(group, vec![counted.alias("value")])?
        }
        MetricsKind::Quantile { value, quantiles } => {
            let v = cast(
                parse_sql_expr(session, value, &spans_schema)?,
                DataType::Float64,
            );
            let scale = if plan.value_is_duration { 1e9 } else { 1.0 };
            let aggregates: Vec<Expr> = quantiles
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    (approx_percentile_cont(v.clone().sort(true, false), lit(*q), None)
                        / lit(scale))
                    .alias(format!("__q{i}"))
                })
                .collect();
            let aggregated = spans.aggregate(group, aggregates)?.build()?;
            // One row per quantile, labelled `p`.
            let mut union: Option<LogicalPlanBuilder> = None;
            for (i, q) in quantiles.iter().enumerate() {
                let mut columns = label_columns(&labels);
                columns.push(lit(*q).alias("p"));
                columns.push(col(format!("__q{i}")).alias("value"));
                let part = LogicalPlanBuilder::from(aggregated.clone()).project(columns)?;
                union = Some(match union {
                    None => part,
                    Some(u) => u.union(part.build()?)?,
                });
            }
            let Some(union) = union else {
                return plan_err!("{TRACEQL_METRICS}: quantile_over_time() without quantiles");
            };
            let mut order: Vec<_> = labels
                .iter()
                .map(|l| Expr::Column(Column::from_name(l)).sort(true, false))
                .collect();
            order.push(col("p").sort(true, false));
            order.push(col("time").sort(true, false));
            return union.sort(order)?.build();
        }
    };
    let mut columns = label_columns(&labels);
    columns.push(col("value"));
    let mut order: Vec<_> = labels
        .iter()
        .map(|l| Expr::Column(Column::from_name(l)).sort(true, false))
        .collect();
    order.push(col("time").sort(true, false));
    builder.project(columns)?.sort(order)?.build()
}
