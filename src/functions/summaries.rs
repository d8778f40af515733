//! `trace_summaries(start, end)` and `service_graph(start, end)`: aggregate views over the
//! spans whose `start_time` lies in `[start, end]` (either bound may be `NULL`: unbounded).
//!
//! Both return a view (a logical plan over `spans`), so DataFusion plans them like any query:
//! filters on their output that can be pushed below the aggregation are, and the time window
//! prunes partitions.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::functions_aggregate::expr_fn::{
    approx_percentile_cont, array_agg, count, first_value, max, min, sum,
};
use datafusion::functions_nested::expr_fn::array_sort;
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, JoinType, LogicalPlanBuilder, case, cast, col, lit,
};

use super::args;
use crate::provider::TraceTableProvider;
use crate::schema::{TIME_ZONE, col as c};
use crate::table::TraceTable;

/// SQL name of the trace search function.
pub const TRACE_SUMMARIES: &str = "trace_summaries";
/// SQL name of the service dependency function.
pub const SERVICE_GRAPH: &str = "service_graph";

fn window(function: &str, exprs: &[Expr]) -> Result<(Option<i64>, Option<i64>)> {
    args::count(function, exprs, 2, 2, "(start, end)")?;
    Ok((
        args::time_bound(function, 1, "start", &exprs[0])?,
        args::time_bound(function, 2, "end", &exprs[1])?,
    ))
}

/// `start_time` of `qualifier` within the window, if bounded.
pub(crate) fn window_filter(qualifier: &str, start: Option<i64>, end: Option<i64>) -> Option<Expr> {
    let t = || Expr::Column(Column::new(Some(qualifier), c::START_TIME));
    let ts = |ns: i64| {
        lit(ScalarValue::TimestampNanosecond(
            Some(ns),
            Some(TIME_ZONE.into()),
        ))
    };
    let lo = start.map(|s| t().gt_eq(ts(s)));
    let hi = end.map(|e| t().lt_eq(ts(e)));
    match (lo, hi) {
        (Some(a), Some(b)) => Some(a.and(b)),
        (a, b) => a.or(b),
    }
}

pub(crate) fn spans_scan(table: &Arc<TraceTable>, alias: &str) -> Result<LogicalPlanBuilder> {
    LogicalPlanBuilder::scan(
        alias,
        provider_as_source(Arc::new(TraceTableProvider::new(table.clone()))),
        None,
    )
}

fn nanos(e: Expr) -> Expr {
    cast(e, DataType::Int64)
}

/// The aggregates that describe one trace, grouped by `trace_id` over its spans: the root is
/// the earliest span without a parent; a trace without one (its root not among the spans) is
/// described by its earliest span. [`summary_columns`] projects them.
pub(crate) fn summary_aggregates() -> Result<Vec<Expr>> {
    let root_first = vec![
        col(c::PARENT_SPAN_ID).is_null().sort(false, false),
        col(c::START_TIME).sort(true, false),
        col(c::SPAN_ID).sort(true, false),
    ];
    let is_error = case(col(c::STATUS_CODE))
        .when(lit("ERROR"), lit(1i64))
        .otherwise(lit(0i64))?;
    Ok(vec![
        first_value(col(c::SERVICE_NAME), root_first.clone()).alias("root_service_name"),
        first_value(col(c::NAME), root_first).alias("root_span_name"),
        min(col(c::START_TIME)).alias(c::START_TIME),
        max(col(c::END_TIME)).alias(c::END_TIME),
        count(lit(1i64)).alias("span_count"),
        sum(is_error).alias("error_count"),
        array_agg(col(c::SERVICE_NAME))
            .distinct()
            .build()?
            .alias("services"),
    ])
}

/// The summary columns of a trace, over the output of an aggregation by `trace_id` with
/// [`summary_aggregates`].
pub(crate) fn summary_columns() -> Vec<Expr> {
    vec![
        col(c::TRACE_ID),
        col("root_service_name"),
        col("root_span_name"),
        col(c::START_TIME),
        col(c::END_TIME),
        (nanos(col(c::END_TIME)) - nanos(col(c::START_TIME))).alias(c::DURATION_NS),
        col("span_count"),
        col("error_count"),
        array_sort(col("services"), lit("ASC"), lit("NULLS LAST")).alias("services"),
    ]
}

/// `trace_summaries(start, end)`: one row per trace with spans starting in the window.
#[derive(Debug)]
pub struct TraceSummariesFunction {
    table: Arc<TraceTable>,
}

impl TraceSummariesFunction {
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self { table }
    }
}

impl TableFunctionImpl for TraceSummariesFunction {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let (start, end) = window(TRACE_SUMMARIES, call.exprs())?;
        let mut plan = spans_scan(&self.table, "spans")?;
        if let Some(f) = window_filter("spans", start, end) {
            plan = plan.filter(f)?;
        }
        let plan = plan
            .aggregate(vec![col(c::TRACE_ID)], summary_aggregates()?)?
            .project(summary_columns())?
            .build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}

/// `service_graph(start, end)`: caller → callee edges from parent/child spans of different
/// services.
#[derive(Debug)]
pub struct ServiceGraphFunction {
    table: Arc<TraceTable>,
}

impl ServiceGraphFunction {
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self { table }
    }
}

impl TableFunctionImpl for ServiceGraphFunction {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let (start, end) = window(SERVICE_GRAPH, call.exprs())?;
        let side = |alias: &str| -> Result<LogicalPlanBuilder> {
            let mut plan = spans_scan(&self.table, alias)?;
            if let Some(f) = window_filter(alias, start, end) {
                plan = plan.filter(f)?;
            }
            plan.project(vec![
                Expr::Column(Column::new(Some(alias), c::TRACE_ID)),
                Expr::Column(Column::new(Some(alias), c::SPAN_ID)),
                Expr::Column(Column::new(Some(alias), c::PARENT_SPAN_ID)),
                Expr::Column(Column::new(Some(alias), c::SERVICE_NAME)),
                Expr::Column(Column::new(Some(alias), c::STATUS_CODE)),
                Expr::Column(Column::new(Some(alias), c::DURATION_NS)),
            ])
        };
        let q = |alias: &str, name: &str| Expr::Column(Column::new(Some(alias), name));
        let callee_error = case(q("callee", c::STATUS_CODE))
            .when(lit("ERROR"), lit(1i64))
            .otherwise(lit(0i64))?;
        let percentile = |p: f64| {
            cast(
                approx_percentile_cont(q("callee", c::DURATION_NS).sort(true, false), lit(p), None),
                DataType::Int64,
            )
        };
        let plan = side("callee")?
            .join(
                side("caller")?.build()?,
                JoinType::Inner,
                (
                    vec![
                        Column::new(Some("callee"), c::TRACE_ID),
                        Column::new(Some("callee"), c::PARENT_SPAN_ID),
                    ],
                    vec![
                        Column::new(Some("caller"), c::TRACE_ID),
                        Column::new(Some("caller"), c::SPAN_ID),
                    ],
                ),
                None,
            )?
            .filter(q("caller", c::SERVICE_NAME).not_eq(q("callee", c::SERVICE_NAME)))?
            .aggregate(
                vec![
                    q("caller", c::SERVICE_NAME).alias("caller"),
                    q("callee", c::SERVICE_NAME).alias("callee"),
                ],
                vec![
                    count(lit(1i64)).alias("call_count"),
                    sum(callee_error).alias("error_count"),
                    percentile(0.5).alias("p50_ns"),
                    percentile(0.95).alias("p95_ns"),
                    percentile(0.99).alias("p99_ns"),
                ],
            )?
            .build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}
