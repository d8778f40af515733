//! tracelake's SQL functions: table functions and scalar UDFs. [`register`] adds every one of
//! them to a `SessionContext`.

pub mod args;
pub mod summaries;
pub mod trace_tree;
pub mod tree;
pub mod udfs;

use std::sync::Arc;

use datafusion::prelude::SessionContext;

use crate::table::TraceTable;

/// Registers every tracelake function that reads `table` into `ctx`.
pub fn register(ctx: &SessionContext, table: &Arc<TraceTable>) {
    ctx.register_udtf(
        trace_tree::NAME,
        Arc::new(trace_tree::TraceTreeFunction::new(table.clone())),
    );
    ctx.register_udtf(
        summaries::TRACE_SUMMARIES,
        Arc::new(summaries::TraceSummariesFunction::new(table.clone())),
    );
    ctx.register_udtf(
        summaries::SERVICE_GRAPH,
        Arc::new(summaries::ServiceGraphFunction::new(table.clone())),
    );
    for udf in udfs::all() {
        ctx.register_udf(udf);
    }
}
