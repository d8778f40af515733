//! Pruning by attributes: the row groups a filter on a span or resource attribute cannot
//! match, found from the bloom filters tracelake writes on the keys and the string values of
//! `attributes` and `resource_attributes` (see `writer_properties`), before DataFusion's scan
//! reads anything of them.
//!
//! A condition is taken from a conjunct of the query's filters that only rows holding the
//! attribute satisfy: `attr_str(attributes, 'k') = 'v'`, `attributes['k']['string_value'] =
//! 'v'`, `... IN ('a', 'b')`, an `OR` of those on one key (the string values), and any
//! comparison, `LIKE` or `IS NOT NULL` of an `attr_*(attributes, 'k')` (the key). A row group
//! is skipped when a condition's key, or every one of its values, is absent from its
//! filter. The filters themselves are applied above the scan as always: pruning only drops
//! row groups no row of which could pass. This module reads bloom filters of files the
//! version names and nothing else.

use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use object_store::ObjectStore;
use parquet::bloom_filter::Sbbf;
use parquet::file::statistics::Statistics;

use super::filters::StartBounds;
use super::index::{IndexedFile, ScanPlan};
use crate::error::{Result, TraceLakeError};
use crate::schema::col;
use crate::table::AttributeLeaf;

/// What every row a query keeps holds in one attribute map column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttributeCondition {
    /// `attributes` or `resource_attributes`.
    pub(crate) column: &'static str,
    pub(crate) key: String,
    /// The attribute's string value is one of these (`None`: any value, of any type).
    pub(crate) values: Option<Vec<String>>,
}

/// What pruning by attributes skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AttributePruning {
    /// Row groups skipped.
    pub(crate) row_groups: usize,
    /// Compressed bytes of the skipped row groups.
    pub(crate) bytes: usize,
}

/// The attribute conditions of `filters` (conjuncts that imply one).
pub(crate) fn attribute_conditions(filters: &[Expr]) -> Vec<AttributeCondition> {
    let mut out = Vec::new();
    for filter in filters {
        for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
            if let Some(condition) = condition(conjunct)
                && !out.contains(&condition)
            {
                out.push(condition);
            }
        }
    }
    out
}

/// The map column and key of `attr_*(column, 'key')` or `get_field(column, 'key', ...)`,
/// and whether it is the attribute's string value (`attr_str`, or `['string_value']`).
fn attribute_access(e: &Expr) -> Option<(&'static str, String, bool)> {
    let Expr::ScalarFunction(function) = e else {
        return None;
    };
    let name = function.func.name();
    let (column, key, rest) = match function.args.as_slice() {
        [Expr::Column(c), Expr::Literal(key, _), rest @ ..] => (c, key.try_as_str()??, rest),
        // get_field(get_field(column, 'key'), 'field')
        [inner @ Expr::ScalarFunction(_), Expr::Literal(field, _)] if name == "get_field" => {
            let (column, key, _) = attribute_access(inner)?;
            return Some((column, key, field.try_as_str()?? == "string_value"));
        }
        _ => return None,
    };
    let column = match column.name.as_str() {
        col::ATTRIBUTES => col::ATTRIBUTES,
        col::RESOURCE_ATTRIBUTES => col::RESOURCE_ATTRIBUTES,
        _ => return None,
    };
    let string_value = match (name, rest) {
        ("attr_str", []) => true,
        ("attr_int" | "attr_double" | "attr_bool", []) => false,
        ("get_field", []) => false,
        ("get_field", [Expr::Literal(field, _)]) => field.try_as_str()?? == "string_value",
        _ => return None,
    };
    Some((column, key.to_string(), string_value))
}

fn string_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(v, _) => v.try_as_str().flatten().map(str::to_string),
        Expr::Cast(cast) => string_literal(&cast.expr),
        _ => None,
    }
}

fn is_literal(e: &Expr) -> bool {
    match e {
        Expr::Literal(v, _) => !v.is_null(),
        Expr::Cast(cast) => is_literal(&cast.expr),
        _ => false,
    }
}

/// The attribute access under casts DataFusion adds for comparisons.
fn access_under_casts(e: &Expr) -> Option<(&'static str, String, bool)> {
    match e {
        Expr::Cast(cast) => access_under_casts(&cast.expr),
        Expr::TryCast(cast) => access_under_casts(&cast.expr),
        other => attribute_access(other),
    }
}

fn condition(e: &Expr) -> Option<AttributeCondition> {
    let key_only = |(column, key, _): (&'static str, String, bool)| AttributeCondition {
        column,
        key,
        values: None,
    };
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Or => {
                let (l, r) = (condition(left)?, condition(right)?);
                if l.column != r.column || l.key != r.key {
                    return None;
                }
                let values = match (l.values, r.values) {
                    (Some(mut a), Some(b)) => {
                        for v in b {
                            if !a.contains(&v) {
                                a.push(v);
                            }
                        }
                        Some(a)
                    }
                    _ => None,
                };
                Some(AttributeCondition {
                    column: l.column,
                    key: l.key,
                    values,
                })
            }
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::LikeMatch
            | Operator::ILikeMatch
            | Operator::RegexMatch
            | Operator::RegexIMatch => {
                let (access, other) = match (access_under_casts(left), access_under_casts(right)) {
                    (Some(a), None) => (a, right.as_ref()),
                    (None, Some(a)) => (a, left.as_ref()),
                    _ => return None,
                };
                if !is_literal(other) {
                    return None;
                }
                match (op, access.2, string_literal(other)) {
                    (Operator::Eq, true, Some(v)) => Some(AttributeCondition {
                        column: access.0,
                        key: access.1,
                        values: Some(vec![v]),
                    }),
                    _ => Some(key_only(access)),
                }
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated && !list.list.is_empty() => {
            let access = access_under_casts(&list.expr)?;
            let values: Option<Vec<String>> = list.list.iter().map(string_literal).collect();
            match (access.2, values) {
                (true, Some(values)) => Some(AttributeCondition {
                    column: access.0,
                    key: access.1,
                    values: Some(values),
                }),
                _ if list.list.iter().all(is_literal) => Some(key_only(access)),
                _ => None,
            }
        }
        Expr::Like(like) if !like.negated && is_literal(&like.pattern) => {
            access_under_casts(&like.expr).map(key_only)
        }
        Expr::IsNotNull(inner) => access_under_casts(inner).map(key_only),
        _ => None,
    }
}

/// Whether row group `rg` of `file` may hold spans starting within `bounds` (its start-time
/// statistics), so that its bloom filters are worth reading.
pub(crate) fn may_start_within(file: &IndexedFile, rg: usize, bounds: &StartBounds) -> bool {
    let descr = file.metadata().file_metadata().schema_descr();
    let Some(leaf) = (0..descr.num_columns())
        .find(|&i| descr.column(i).path().string() == col::START_TIME_UNIX_NANO)
    else {
        return true;
    };
    match file.metadata().row_group(rg).column(leaf).statistics() {
        Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
            (Some(&min), Some(&max)) => {
                bounds.min.is_none_or(|lo| max >= lo) && bounds.max.is_none_or(|hi| min <= hi)
            }
            _ => true,
        },
        _ => true,
    }
}

/// Drops from `plan` the row groups that no row satisfying `conditions` can be in, reading
/// the bloom filters they need (one request a file); row groups outside `bounds` are left
/// for DataFusion's statistics pruning without reading their filters.
pub(crate) async fn prune(
    store: &Arc<dyn ObjectStore>,
    plan: &mut ScanPlan,
    conditions: &[AttributeCondition],
    bounds: &StartBounds,
) -> Result<AttributePruning> {
    let mut pruned = AttributePruning::default();
    if conditions.is_empty() {
        return Ok(pruned);
    }
    let files = std::mem::take(&mut plan.files);
    let checks = futures::future::try_join_all(files.into_iter().map(|(file, row_groups)| {
        let store = store.clone();
        async move {
            let keep = keep_row_groups(&store, &file, &row_groups, conditions, bounds).await?;
            Ok::<_, TraceLakeError>((file, row_groups, keep))
        }
    }))
    .await?;
    for (file, row_groups, keep) in checks {
        let mut kept = Vec::with_capacity(row_groups.len());
        for (rg, keep) in row_groups.into_iter().zip(keep) {
            if keep {
                kept.push(rg);
            } else {
                pruned.row_groups += 1;
                pruned.bytes += file.metadata().row_group(rg).compressed_size().max(0) as usize;
            }
        }
        if !kept.is_empty() {
            plan.files.push((file, kept));
        }
    }
    Ok(pruned)
}

/// For each of `row_groups` of `file`, whether it may hold a row satisfying `conditions`.
async fn keep_row_groups(
    store: &Arc<dyn ObjectStore>,
    file: &IndexedFile,
    row_groups: &[usize],
    conditions: &[AttributeCondition],
    bounds: &StartBounds,
) -> Result<Vec<bool>> {
    // A string value of a key the file holds a dedicated column of is found through that
    // column's statistics and page index (see `super::dedicated_filter`): its blooms are not
    // read.
    let conditions: Vec<&AttributeCondition> = conditions
        .iter()
        .filter(|c| {
            c.values.is_none()
                || !file.dedicated.iter().any(|d| {
                    d.kind == crate::dedicated::DedicatedType::String
                        && d.scope.column() == c.column
                        && d.key == c.key
                })
        })
        .collect();
    if conditions.is_empty() {
        return Ok(vec![true; row_groups.len()]);
    }
    let descr = file.metadata().file_metadata().schema_descr();
    let leaf = |column: &str, leaf: AttributeLeaf| {
        let path = leaf.path(column);
        (0..descr.num_columns()).find(|&i| descr.column(i).path() == &path)
    };
    // (row group, leaf) -> the filter's byte range, for the leaves the conditions check.
    let mut wanted: Vec<(usize, usize)> = Vec::new();
    for &rg in row_groups {
        if !may_start_within(file, rg, bounds) {
            continue;
        }
        for condition in &conditions {
            let leaves = [
                Some(AttributeLeaf::Key),
                condition
                    .values
                    .as_ref()
                    .map(|_| AttributeLeaf::StringValue),
            ];
            for l in leaves.into_iter().flatten() {
                if let Some(c) = leaf(condition.column, l)
                    && !wanted.contains(&(rg, c))
                {
                    wanted.push((rg, c));
                }
            }
        }
    }
    let mut ranges = Vec::new();
    let mut owners = Vec::new();
    for &(rg, c) in &wanted {
        let chunk = file.metadata().row_group(rg).column(c);
        if let (Some(offset), Some(length)) =
            (chunk.bloom_filter_offset(), chunk.bloom_filter_length())
            && offset >= 0
            && length > 0
        {
            ranges.push(offset as u64..offset as u64 + length as u64);
            owners.push((rg, c));
        }
    }
    let mut filters: Vec<((usize, usize), Sbbf)> = Vec::with_capacity(owners.len());
    if !ranges.is_empty() {
        let bytes = store
            .get_ranges(&file.location, &ranges)
            .await
            .map_err(|e| TraceLakeError::data_file(&file.location, e))?;
        for (owner, bytes) in owners.into_iter().zip(bytes) {
            let filter = Sbbf::from_bytes(&bytes)
                .map_err(|e| TraceLakeError::data_file(&file.location, e))?;
            filters.push((owner, filter));
        }
    }
    let filter = |rg: usize, column: &str, l: AttributeLeaf| {
        let c = leaf(column, l)?;
        filters
            .iter()
            .find(|(owner, _)| *owner == (rg, c))
            .map(|(_, f)| f)
    };
    Ok(row_groups
        .iter()
        .map(|&rg| {
            conditions.iter().all(|condition| {
                let key_present = filter(rg, condition.column, AttributeLeaf::Key)
                    .is_none_or(|f| f.check(condition.key.as_str()));
                let value_present = match &condition.values {
                    None => true,
                    Some(values) => filter(rg, condition.column, AttributeLeaf::StringValue)
                        .is_none_or(|f| values.iter().any(|v| f.check(v.as_str()))),
                };
                key_present && value_present
            })
        })
        .collect())
}

/// The scan below it, unchanged, with what pruning by attributes skipped before it was
/// planned as its metrics (`row_groups_pruned_attributes`, `bytes_pruned_attributes`, read by
/// [`ScanMetrics`](crate::observe::ScanMetrics)). Planned only when something was skipped.
#[derive(Debug)]
pub(crate) struct AttributePrunedExec {
    input: Arc<dyn ExecutionPlan>,
    pub(crate) pruned: AttributePruning,
    metrics: ExecutionPlanMetricsSet,
}

impl AttributePrunedExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, pruned: AttributePruning) -> Self {
        let metrics = ExecutionPlanMetricsSet::new();
        MetricBuilder::new(&metrics)
            .global_counter("row_groups_pruned_attributes")
            .add(pruned.row_groups);
        MetricBuilder::new(&metrics)
            .global_counter("bytes_pruned_attributes")
            .add(pruned.bytes);
        Self {
            input,
            pruned,
            metrics,
        }
    }
}

impl DisplayAs for AttributePrunedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "AttributePrunedExec: row_groups_pruned={}, bytes_pruned={}",
            self.pruned.row_groups, self.pruned.bytes
        )
    }
}

impl ExecutionPlan for AttributePrunedExec {
    fn name(&self) -> &'static str {
        "AttributePrunedExec"
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

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.as_slice() {
            [input] => Ok(Arc::new(Self::new(input.clone(), self.pruned))),
            _ => exec_err!("AttributePrunedExec has one child"),
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// The conditions of the SQL filter `sql` on `spans`, as written.
    fn conditions(sql: &str) -> Vec<AttributeCondition> {
        let ctx = SessionContext::new();
        for udf in crate::functions::udfs::all() {
            ctx.register_udf(udf);
        }
        let schema =
            datafusion::common::DFSchema::try_from(crate::schema::sql_schema().as_ref().clone())
                .unwrap();
        let expr = ctx.parse_sql_expr(sql, &schema).unwrap();
        attribute_conditions(&[expr])
    }

    fn c(column: &'static str, key: &str, values: Option<&[&str]>) -> AttributeCondition {
        AttributeCondition {
            column,
            key: key.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// The filter shapes users write give the conditions they imply, and shapes that imply
    /// nothing (`IS NULL`, `NOT IN`, an OR across keys) give none.
    #[test]
    fn filter_shapes_give_the_conditions_they_imply() {
        let a = col::ATTRIBUTES;
        let r = col::RESOURCE_ATTRIBUTES;
        for (filter, expected) in [
            (
                "attr_str(attributes, 'http.route') = '/pay'",
                vec![c(a, "http.route", Some(&["/pay"]))],
            ),
            (
                "'/pay' = attr_str(attributes, 'http.route')",
                vec![c(a, "http.route", Some(&["/pay"]))],
            ),
            (
                "attributes['http.route']['string_value'] = '/pay'",
                vec![c(a, "http.route", Some(&["/pay"]))],
            ),
            (
                "attr_str(resource_attributes, 'host.name') IN ('a', 'b')",
                vec![c(r, "host.name", Some(&["a", "b"]))],
            ),
            (
                "attr_str(attributes, 'k') = 'a' OR attr_str(attributes, 'k') = 'b'",
                vec![c(a, "k", Some(&["a", "b"]))],
            ),
            (
                "attr_int(attributes, 'http.response.status_code') >= 500",
                vec![c(a, "http.response.status_code", None)],
            ),
            (
                "attr_str(attributes, 'url.path') LIKE '/api/%'",
                vec![c(a, "url.path", None)],
            ),
            (
                "attr_str(attributes, 'error.type') IS NOT NULL",
                vec![c(a, "error.type", None)],
            ),
            (
                "attr_str(attributes, 'k') = 'v' AND name = 'x' AND attr_int(resource_attributes, 'n') = 3",
                vec![c(a, "k", Some(&["v"])), c(r, "n", None)],
            ),
            ("attr_str(attributes, 'k') IS NULL", vec![]),
            ("attr_str(attributes, 'k') NOT IN ('a')", vec![]),
            (
                "attr_str(attributes, 'k') = 'a' OR attr_str(attributes, 'j') = 'b'",
                vec![],
            ),
            ("attr_str(attributes, 'k') = 'a' OR name = 'b'", vec![]),
            ("attr_str(events[1]['attributes'], 'k') = 'a'", vec![]),
        ] {
            assert_eq!(conditions(filter), expected, "{filter}");
        }
    }
}
