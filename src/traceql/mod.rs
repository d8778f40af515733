//! TraceQL, Grafana Tempo's query language, compiled to SQL over `spans`: the
//! `traceql(query, start, end [, limit])` and `traceql_metrics(query, start, end, step)` table
//! functions ([`crate::functions::traceql`]) and the Tempo HTTP API of `tracelake serve` run
//! it through the same search path as `trace_search`.
//!
//! [`parse`] reads the text into a syntax tree; [`compile`] turns the tree into SQL (a span
//! predicate, a trace-level filter, or a metrics grouping). What tracelake cannot run exactly
//! is refused with a [`TraceQlError`] naming the construct and its position; nothing is
//! ignored. This module never touches a table. docs/grafana.md lists what is supported.
//!
//! ```
//! use tracelake::traceql::{Compiled, compile, parse};
//!
//! let query = parse(r#"{ span.http.route = "/pay" && duration > 100ms }"#).unwrap();
//! let Compiled::Search(search) = compile(&query).unwrap() else { unreachable!() };
//! assert_eq!(
//!     search.span_predicate,
//!     "(attr_str(attributes, 'http.route') = '/pay') AND (duration_ns > 100000000)"
//! );
//! ```

pub mod compile;
pub mod parse;
pub mod structure;

pub use compile::{
    Compiled, Form, MetricsKind, MetricsPlan, Relation, SearchPlan, ShownField, SpansetTree,
    compile,
};
pub use parse::{Query, parse};

/// A query TraceQL cannot read or tracelake cannot run: what and where (a byte offset into
/// the query text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TraceQL error at position {position}: {message}")]
pub struct TraceQlError {
    pub position: usize,
    pub message: String,
}

impl TraceQlError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

/// Parses and compiles `text`.
pub fn compile_text(text: &str) -> Result<Compiled, TraceQlError> {
    compile(&parse(text)?)
}
