//! Filters on the SQL schema of `spans`, as the read path needs them: translated to the
//! storage schema (times as unix nanoseconds, with the `span_date` partition bound that prunes
//! partitions), and the trace ids a scan is restricted to.

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, lit};

use crate::schema::{self, col, storage_name};

/// The nanoseconds since the epoch of a timestamp literal, whatever its unit.
fn timestamp_nanos(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

fn is_time_column(name: &str) -> bool {
    name == col::START_TIME || name == col::END_TIME
}

/// The operator with its operands swapped (`a < b` is `b > a`); `None` if not a comparison.
fn mirrored(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Eq => Operator::Eq,
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        _ => return None,
    })
}

/// `time_column op literal` on the storage schema, plus the implied `span_date` bound for
/// `start_time` (which is what prunes partitions).
fn translate_time_comparison(column: &str, op: Operator, nanos: i64) -> Option<Expr> {
    mirrored(op)?;
    let storage = Expr::Column(Column::new_unqualified(storage_name(column)));
    let comparison = Expr::BinaryExpr(BinaryExpr::new(Box::new(storage), op, Box::new(lit(nanos))));
    if column != col::START_TIME {
        return Some(comparison);
    }
    let date = Expr::Column(Column::new_unqualified(col::SPAN_DATE));
    let day = lit(schema::span_date(nanos));
    let partition = match op {
        Operator::Eq => date.eq(day),
        Operator::Gt | Operator::GtEq => date.gt_eq(day),
        _ => date.lt_eq(day),
    };
    Some(comparison.and(partition))
}

/// Whether `name` is a column whose stored type differs from its SQL type by layout.
fn is_attribute_column(name: &str) -> bool {
    matches!(
        name,
        col::ATTRIBUTES | col::RESOURCE_ATTRIBUTES | col::EVENTS | col::LINKS
    )
}

/// Rewrites a filter on the SQL schema to one on the storage schema that every matching row
/// also satisfies (it may be weaker: the filter is re-applied above the scan). `None` when
/// nothing of it can be expressed on storage.
pub(crate) fn translate_filter(expr: &Expr) -> Option<Expr> {
    if let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::And,
        right,
    }) = expr
    {
        return match (translate_filter(left), translate_filter(right)) {
            (Some(l), Some(r)) => Some(l.and(r)),
            (one, other) => one.or(other),
        };
    }
    // Attribute maps, events and links are stored in another type than SQL's (see
    // `crate::layout`): a filter on them stays above the scan (nothing prunes by them here).
    if expr
        .column_refs()
        .iter()
        .any(|c| is_attribute_column(&c.name))
    {
        return None;
    }
    let refs_time = expr.column_refs().iter().any(|c| is_time_column(&c.name));
    if !refs_time {
        return unqualify(expr.clone());
    }
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => match (translate_filter(left), translate_filter(right)) {
                (Some(l), Some(r)) => Some(l.and(r)),
                (one, other) => one.or(other),
            },
            Operator::Or => Some(translate_filter(left)?.or(translate_filter(right)?)),
            op => match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) if is_time_column(&c.name) => {
                    translate_time_comparison(&c.name, *op, timestamp_nanos(v)?)
                }
                (Expr::Literal(v, _), Expr::Column(c)) if is_time_column(&c.name) => {
                    translate_time_comparison(&c.name, mirrored(*op)?, timestamp_nanos(v)?)
                }
                _ => None,
            },
        },
        Expr::Between(between) if !between.negated => {
            let Expr::Column(c) = between.expr.as_ref() else {
                return None;
            };
            let (Expr::Literal(low, _), Expr::Literal(high, _)) =
                (between.low.as_ref(), between.high.as_ref())
            else {
                return None;
            };
            let low = translate_time_comparison(&c.name, Operator::GtEq, timestamp_nanos(low)?)?;
            let high = translate_time_comparison(&c.name, Operator::LtEq, timestamp_nanos(high)?)?;
            Some(low.and(high))
        }
        _ => None,
    }
}

/// The ids of `e` if it is `trace_id = 'x'`, `trace_id IN (...)`, or an OR of those
/// (DataFusion rewrites short IN lists to ORs): `e` holds exactly for the rows whose trace id
/// is one of them.
fn id_list(e: &Expr) -> Option<Vec<String>> {
    fn string(e: &Expr) -> Option<String> {
        match e {
            Expr::Literal(v, _) => v.try_as_str().flatten().map(str::to_string),
            _ => None,
        }
    }
    fn is_trace_id(e: &Expr) -> bool {
        matches!(e, Expr::Column(c) if c.name == col::TRACE_ID)
    }
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            if is_trace_id(left) {
                string(right).map(|s| vec![s])
            } else if is_trace_id(right) {
                string(left).map(|s| vec![s])
            } else {
                None
            }
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut all = id_list(left)?;
            all.extend(id_list(right)?);
            Some(all)
        }
        Expr::InList(list) if !list.negated && is_trace_id(&list.expr) => {
            list.list.iter().map(string).collect()
        }
        _ => None,
    }
}

/// The trace ids a scan is restricted to: a conjunct `trace_id = 'literal'` or
/// `trace_id IN ('literal', ...)` of the pushed filters.
pub(crate) fn lookup_ids(filters: &[Expr]) -> Option<Vec<String>> {
    filters
        .iter()
        .flat_map(|f| split_conjunction(f))
        .find_map(id_list)
}

/// Whether `filter` is the one trace-id filter of `filters` (no other conjunct of them
/// restricts trace ids): then the scan keeps exactly its rows, whatever path it takes (the
/// ids of [`lookup_ids`] are its ids), and DataFusion need not apply it again.
pub(crate) fn is_exact_id_filter(filter: &Expr, filters: &[&Expr]) -> bool {
    id_list(filter).is_some()
        && filters
            .iter()
            .flat_map(|f| split_conjunction(f))
            .filter(|c| id_list(c).is_some())
            .count()
            == 1
}

/// How `spans` takes each of `filters`: the one trace-id filter exactly (the scan keeps
/// exactly its rows, so no filter runs above a lookup), every other one inexactly (it prunes
/// files, row groups and pages below; DataFusion applies it again above).
pub(crate) fn pushdown(filters: &[&Expr]) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(|f| {
            if is_exact_id_filter(f, filters) || super::dedicated_filter::is_attribute_filter(f) {
                TableProviderFilterPushDown::Exact
            } else {
                TableProviderFilterPushDown::Inexact
            }
        })
        .collect()
}

/// The ids of the one trace-id filter of `filters` that the scan must apply exactly (see
/// [`is_exact_id_filter`]).
pub(crate) fn exact_ids(filters: &[Expr]) -> Option<Vec<String>> {
    let refs: Vec<&Expr> = filters.iter().collect();
    filters
        .iter()
        .find(|f| is_exact_id_filter(f, &refs))
        .and_then(id_list)
}

/// Bounds on `start_time` (unix ns, inclusive) that every row of a scan satisfies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StartBounds {
    pub(crate) min: Option<i64>,
    pub(crate) max: Option<i64>,
}

impl StartBounds {
    fn at_least(&mut self, v: i64) {
        self.min = Some(self.min.map_or(v, |m| m.max(v)));
    }

    fn at_most(&mut self, v: i64) {
        self.max = Some(self.max.map_or(v, |m| m.min(v)));
    }
}

/// The bounds on `start_time` implied by the conjuncts of `filters` that compare it with a
/// literal (`>`, `>=`, `<`, `<=`, `=`, `BETWEEN`).
pub(crate) fn start_bounds(filters: &[Expr]) -> StartBounds {
    let mut bounds = StartBounds::default();
    let is_start = |e: &Expr| matches!(e, Expr::Column(c) if c.name == col::START_TIME);
    for conjunct in filters.iter().flat_map(|f| split_conjunction(f)) {
        match conjunct {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, value) = match (left.as_ref(), right.as_ref()) {
                    (l, Expr::Literal(v, _)) if is_start(l) => (*op, v),
                    (Expr::Literal(v, _), r) if is_start(r) => match mirrored(*op) {
                        Some(op) => (op, v),
                        None => continue,
                    },
                    _ => continue,
                };
                let Some(ns) = timestamp_nanos(value) else {
                    continue;
                };
                match op {
                    Operator::Eq => {
                        bounds.at_least(ns);
                        bounds.at_most(ns);
                    }
                    Operator::GtEq => bounds.at_least(ns),
                    Operator::Gt => bounds.at_least(ns.saturating_add(1)),
                    Operator::LtEq => bounds.at_most(ns),
                    Operator::Lt => bounds.at_most(ns.saturating_sub(1)),
                    _ => {}
                }
            }
            Expr::Between(between) if !between.negated && is_start(&between.expr) => {
                if let (Expr::Literal(lo, _), Expr::Literal(hi, _)) =
                    (between.low.as_ref(), between.high.as_ref())
                    && let (Some(lo), Some(hi)) = (timestamp_nanos(lo), timestamp_nanos(hi))
                {
                    bounds.at_least(lo);
                    bounds.at_most(hi);
                }
            }
            _ => {}
        }
    }
    bounds
}

/// Drops table qualifiers: the storage scan knows its columns by name only.
fn unqualify(expr: Expr) -> Option<Expr> {
    expr.transform_up(|e| {
        Ok(match e {
            Expr::Column(c) if c.relation.is_some() => {
                Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
            }
            other => Transformed::no(other),
        })
    })
    .ok()
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::col as c;

    fn ts(nanos: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(nanos),
            Some("UTC".into()),
        ))
    }

    const DAY: i64 = 86_400_000_000_000;

    #[test]
    fn time_filters_become_storage_filters_with_partition_bounds() {
        let t = translate_filter(&c("start_time").gt_eq(ts(DAY))).unwrap();
        assert_eq!(
            t,
            c("start_time_unix_nano")
                .gt_eq(lit(DAY))
                .and(c("span_date").gt_eq(lit("1970-01-02")))
        );
        // literal on the left flips the operator
        let t = translate_filter(&ts(DAY).gt(c("end_time"))).unwrap();
        assert_eq!(t, c("end_time_unix_nano").lt(lit(DAY)));
    }

    #[test]
    fn start_bounds_come_from_comparisons_with_literals() {
        let filters = [
            c("start_time").gt_eq(ts(DAY)),
            ts(3 * DAY).gt(c("start_time")),
            c("end_time").lt(ts(DAY)),
        ];
        assert_eq!(
            start_bounds(&filters),
            StartBounds {
                min: Some(DAY),
                max: Some(3 * DAY - 1)
            }
        );
        assert_eq!(start_bounds(&[]), StartBounds::default());
        // An OR bounds nothing on its own.
        let either = c("start_time")
            .lt(ts(DAY))
            .or(c("start_time").gt(ts(2 * DAY)));
        assert_eq!(start_bounds(&[either]), StartBounds::default());
    }

    #[test]
    fn untranslatable_parts_are_dropped_not_guessed() {
        let f = c("trace_id")
            .eq(lit("a"))
            .and(c("start_time").is_not_null());
        assert_eq!(translate_filter(&f).unwrap(), c("trace_id").eq(lit("a")));
        let f = c("trace_id").eq(lit("a")).or(c("start_time").is_not_null());
        assert!(translate_filter(&f).is_none());
    }
}
