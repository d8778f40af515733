//! tracelake's SQL functions: table functions and scalar UDFs. [`register`] adds every one of
//! them to a `SessionContext`.

use std::sync::Arc;

use datafusion::prelude::SessionContext;

use crate::table::TraceTable;

/// Registers every tracelake function that reads `table` into `ctx`.
pub fn register(ctx: &SessionContext, table: &Arc<TraceTable>) {
    let _ = (ctx, table);
}
