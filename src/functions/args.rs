//! Argument checking shared by the table functions: every error names the function and the
//! argument.

use datafusion::common::{DataFusionError, ScalarValue, plan_err};
use datafusion::logical_expr::Expr;

use crate::schema::timestamp_type;
use crate::table::ingest::normalize_trace_id;

/// The constant value of argument `position` (1-based), or an error saying it must be one.
fn literal<'a>(
    function: &str,
    position: usize,
    name: &str,
    expr: &'a Expr,
) -> Result<&'a ScalarValue, DataFusionError> {
    match expr {
        Expr::Literal(value, _) => Ok(value),
        other => plan_err!(
            "{function} expects a constant for argument {position} ({name}), got the expression {other}"
        ),
    }
}

/// A trace id argument: a string of 32 hex characters, either case; returned lowercase.
pub fn trace_id(function: &str, position: usize, expr: &Expr) -> Result<String, DataFusionError> {
    let value = literal(function, position, "trace_id", expr)?;
    if value.is_null() {
        return plan_err!(
            "{function} expects a trace id (32 hex characters) for argument {position} (trace_id), got NULL"
        );
    }
    let text = match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s,
        other => {
            return plan_err!(
                "{function} expects a string for argument {position} (trace_id), got {} {other}",
                other.data_type()
            );
        }
    };
    normalize_trace_id(text).ok_or_else(|| {
        DataFusionError::Plan(format!(
            "{function} expects 32 hex characters for argument {position} (trace_id), got {text:?}"
        ))
    })
}

/// A time bound argument: a timestamp or an ISO-8601 string, `NULL` meaning unbounded.
/// Returns unix nanoseconds.
pub fn time_bound(
    function: &str,
    position: usize,
    name: &str,
    expr: &Expr,
) -> Result<Option<i64>, DataFusionError> {
    let value = literal(function, position, name, expr)?;
    if value.is_null() {
        return Ok(None);
    }
    let accepted = matches!(
        value,
        ScalarValue::Utf8(_)
            | ScalarValue::LargeUtf8(_)
            | ScalarValue::Utf8View(_)
            | ScalarValue::TimestampSecond(..)
            | ScalarValue::TimestampMillisecond(..)
            | ScalarValue::TimestampMicrosecond(..)
            | ScalarValue::TimestampNanosecond(..)
            | ScalarValue::Date32(_)
            | ScalarValue::Date64(_)
    );
    let cast = accepted
        .then(|| value.cast_to(&timestamp_type()).ok())
        .flatten();
    match cast {
        Some(ScalarValue::TimestampNanosecond(Some(ns), _)) => Ok(Some(ns)),
        _ => plan_err!(
            "{function} expects a timestamp or an ISO-8601 string for argument {position} ({name}), got {} {value}",
            value.data_type()
        ),
    }
}

/// Checks the argument count.
pub fn count(
    function: &str,
    args: &[Expr],
    min: usize,
    max: usize,
    signature: &str,
) -> Result<(), DataFusionError> {
    if args.len() < min || args.len() > max {
        return plan_err!(
            "{function} expects {signature}, got {} argument{}",
            args.len(),
            if args.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// An optional string argument: a string constant, or `NULL` (`None`).
pub fn optional_string(
    function: &str,
    position: usize,
    name: &str,
    expr: &Expr,
) -> Result<Option<String>, DataFusionError> {
    match literal(function, position, name, expr)? {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
            Ok(s.clone())
        }
        ScalarValue::Null => Ok(None),
        other => plan_err!(
            "{function} expects a string for argument {position} ({name}), got {} {other}",
            other.data_type()
        ),
    }
}

/// A count argument: an integer constant from 1 to `max`; `NULL` means `default`.
pub fn bounded_count(
    function: &str,
    position: usize,
    name: &str,
    expr: &Expr,
    default: usize,
    max: usize,
) -> Result<usize, DataFusionError> {
    let value = literal(function, position, name, expr)?;
    if value.is_null() {
        return Ok(default);
    }
    let number = match value {
        ScalarValue::Int8(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int16(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int32(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int64(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt8(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt16(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt64(Some(v)) => Some(i128::from(*v)),
        _ => None,
    };
    match number {
        Some(n) if n >= 1 && n <= max as i128 => Ok(n as usize),
        Some(n) => {
            plan_err!("{function} expects {name} (argument {position}) from 1 to {max}, got {n}")
        }
        None => plan_err!(
            "{function} expects an integer for argument {position} ({name}), got {} {value}",
            value.data_type()
        ),
    }
}
