//! tracelake's SQL functions: table functions and scalar UDFs. [`register`] adds every one of
//! them to a `SessionContext`.

pub mod args;
pub mod search;
pub mod summaries;
pub mod tags;
pub mod trace_tree;
pub mod traceql;
pub mod tree;
pub mod udfs;

use std::sync::Arc;

use datafusion::prelude::SessionContext;

use crate::table::TraceTable;

/// The table functions that read one trace table: their base names.
pub const TABLE_FUNCTIONS: [&str; 8] = [
    trace_tree::NAME,
    summaries::TRACE_SUMMARIES,
    summaries::SERVICE_GRAPH,
    search::TRACE_SEARCH,
    tags::ATTRIBUTE_KEYS,
    tags::ATTRIBUTE_VALUES,
    traceql::TRACEQL,
    traceql::TRACEQL_METRICS,
];

/// The SQL name of table function `base` for a table registered as `table_name`: the bare
/// name for `spans`, `<table_name>_<base>` otherwise (`eu_spans_trace_tree`).
pub fn table_function_name(table_name: &str, base: &str) -> String {
    if table_name == crate::schema::SPANS_TABLE {
        base.to_string()
    } else {
        format!("{table_name}_{base}")
    }
}

/// Registers the table functions that read `table` (named for `table_name`, see
/// [`table_function_name`]) and every scalar UDF into `ctx`.
pub fn register(ctx: &SessionContext, table: &Arc<TraceTable>, table_name: &str) {
    ctx.register_udtf(
        &table_function_name(table_name, trace_tree::NAME),
        Arc::new(trace_tree::TraceTreeFunction::new(table.clone())),
    );
    ctx.register_udtf(
        &table_function_name(table_name, summaries::TRACE_SUMMARIES),
        Arc::new(summaries::TraceSummariesFunction::new(table.clone())),
    );
    ctx.register_udtf(
        &table_function_name(table_name, summaries::SERVICE_GRAPH),
        Arc::new(summaries::ServiceGraphFunction::new(table.clone())),
    );
    ctx.register_udtf(
        &table_function_name(table_name, search::TRACE_SEARCH),
        Arc::new(search::TraceSearchFunction::new(table.clone())),
    );
    ctx.register_udtf(
        &table_function_name(table_name, tags::ATTRIBUTE_KEYS),
        Arc::new(tags::AttributeKeysFunction::new(table.clone())),
    );
    ctx.register_udtf(
        &table_function_name(table_name, tags::ATTRIBUTE_VALUES),
        Arc::new(tags::AttributeValuesFunction::new(table.clone())),
    );
    ctx.register_udtf(
        &table_function_name(table_name, traceql::TRACEQL),
        Arc::new(traceql::TraceQlFunction::new(table.clone())),
    );
    ctx.register_udtf(
        &table_function_name(table_name, traceql::TRACEQL_METRICS),
        Arc::new(traceql::TraceQlMetricsFunction::new(table.clone())),
    );
    for udf in udfs::all() {
        ctx.register_udf(udf);
    }
}
