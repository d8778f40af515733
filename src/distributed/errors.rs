//! Errors of queries that ran on a cluster, made readable again.
//!
//! Ballista reports a task's error to the client as the `Debug` form of the executor's
//! `DataFusionError`, wrapped in its job and stage: `Job J failed: Job failed due to stage 0
//! failed: Task failed due to runtime execution error: DataFusionError(Shared(External(
//! DataFusionError(Execution("invalid span in row 1: trace_id \"0af7\" is not ...")))))`.
//! [`ClusterErrorsExec`] sits on top of the client's plan and turns that back into the message
//! the same statement gives in one process, after the job it came from: `cluster job J: invalid
//! span in row 1: trace_id "0af7" is not ...`.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult, exec_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// What Ballista puts before the executor's error.
const TASK_FAILED: &str = "Task failed due to runtime execution error: ";

/// The message inside a `Debug`-formatted `DataFusionError` chain: the innermost string
/// literal, unescaped (`None` when `debug` has no such shape).
fn innermost_message(debug: &str) -> Option<String> {
    let mut rest = debug.trim();
    // Peel `Name(` ... `)` wrappers: `DataFusionError(`, `Shared(`, `External(`, ...
    loop {
        let open = rest.find('(')?;
        let name = &rest[..open];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            break;
        }
        let inner = rest[open + 1..].strip_suffix(')')?;
        rest = inner.trim();
        if rest.starts_with('"') {
            break;
        }
    }
    // A Rust string literal in Debug form; a message with a `, source` (like
    // `Context("..", ..)`) keeps only its first literal.
    let literal_end = string_literal_end(rest)?;
    serde_json::from_str::<String>(&rest[..literal_end]).ok()
}

/// The byte length of the string literal `text` starts with (quotes included).
fn string_literal_end(text: &str) -> Option<usize> {
    let mut chars = text.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    let mut escaped = false;
    for (i, c) in chars {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// `error` with a task's `Debug`-formatted error replaced by its message.
pub(crate) fn readable(error: DataFusionError) -> DataFusionError {
    let text = error.to_string();
    let Some(at) = text.find(TASK_FAILED) else {
        return error;
    };
    let task_error = text[at + TASK_FAILED.len()..].trim();
    let Some(message) = innermost_message(task_error) else {
        return error;
    };
    let job = text
        .split_whitespace()
        .skip_while(|w| *w != "Job")
        .nth(1)
        .unwrap_or("?");
    DataFusionError::Execution(format!("cluster job {job}: {message}"))
}

/// The root of a plan that runs on a cluster: passes its rows through and makes its errors
/// readable ([`readable`]).
#[derive(Debug)]
pub(crate) struct ClusterErrorsExec {
    input: Arc<dyn ExecutionPlan>,
}

impl ClusterErrorsExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for ClusterErrorsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ClusterErrorsExec")
    }
}

impl ExecutionPlan for ClusterErrorsExec {
    fn name(&self) -> &'static str {
        "ClusterErrorsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(ClusterErrorsExec::new(input))),
            Err(_) => exec_err!("ClusterErrorsExec takes exactly one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let inner = self.input.execute(partition, context).map_err(readable)?;
        let schema = inner.schema();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            inner.map(|item| item.map_err(readable)),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_errors_read_as_in_one_process() {
        let ballista = "Execution error: Job 038GW3RR8T000 failed: Job failed due to stage 0 \
            failed: Task failed due to runtime execution error: DataFusionError(Shared(External(\
            DataFusionError(Execution(\"invalid span in row 1: trace_id \\\"0af7\\\" is not 32 \
            hexadecimal characters\")))))\n";
        let error = readable(DataFusionError::Execution(ballista.into()));
        assert_eq!(
            error.to_string(),
            "Execution error: cluster job 038GW3RR8T000: invalid span in row 1: trace_id \
             \"0af7\" is not 32 hexadecimal characters"
        );
        // Anything else is left as it is.
        let other = readable(DataFusionError::Plan("no such table".into()));
        assert_eq!(other.to_string(), "Error during planning: no such table");
        let odd = "Job 1 failed: Task failed due to runtime execution error: something else";
        let kept = readable(DataFusionError::Execution(odd.into()));
        assert!(kept.to_string().contains("something else"), "{kept}");
    }
}
