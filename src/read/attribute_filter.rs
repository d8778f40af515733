//! Pruning by attributes: the row groups a filter on a span or resource attribute cannot
//! match, found before DataFusion's scan reads anything of them. Two sources tell:
//!
//! - the dictionary page of a dedicated string column (see [`crate::dedicated`]) for a filter
//!   on the string values of its key: a chunk dictionary-encoded throughout holds exactly the
//!   values its dictionary lists, so a row group whose dictionary lists none of the filter's
//!   values is skipped (Tempo's dictionary pruning), and so is one whose chunk holds only
//!   nulls;
//! - otherwise the bloom filters tracelake writes on the keys and the string values of
//!   `attributes` and `resource_attributes` (see `writer_properties`).
//!
//! A condition is taken from a conjunct of the query's filters that only rows holding the
//! attribute satisfy: `attr_str(attributes, 'k') = 'v'`, `attributes['k']['string_value'] =
//! 'v'`, `... IN ('a', 'b')`, an `OR` of those on one key (the string values), and any
//! comparison, `LIKE` or `IS NOT NULL` of an `attr_*(attributes, 'k')` (the key). A row group
//! is skipped when a condition's key, or every one of its values, is absent from it. The
//! filters themselves are still applied to the rows: pruning only drops row groups no row of
//! which could pass. This module reads parts of files the version names and nothing else, at
//! most [`CONCURRENT_FILES`] files at a time, one request a file.

use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};
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

/// Files whose filters and dictionaries are read at the same time (bounds what a query holds
/// of them: a few KB a row group).
pub(crate) const CONCURRENT_FILES: usize = 16;

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
    let checks: Vec<_> = futures::stream::iter(files)
        .map(|(file, row_groups)| {
            let store = store.clone();
            async move {
                let keep = keep_row_groups(&store, &file, &row_groups, conditions, bounds).await?;
                Ok::<_, TraceLakeError>((file, row_groups, keep))
            }
        })
        .buffered(CONCURRENT_FILES)
        .try_collect()
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

/// The dedicated string column of `file` that holds `condition`'s values, if any.
fn dedicated_leaf(file: &IndexedFile, condition: &AttributeCondition) -> Option<usize> {
    condition.values.as_ref()?;
    let column = file.dedicated.iter().find(|d| {
        d.kind == crate::dedicated::DedicatedType::String
            && d.scope.column() == condition.column
            && d.key == condition.key
    })?;
    let path = parquet::schema::types::ColumnPath::from(column.column_name());
    let descr = file.metadata().file_metadata().schema_descr();
    (0..descr.num_columns()).find(|&i| descr.column(i).path() == &path)
}

/// Largest dictionary page read to prune a row group (a bigger one is as costly as the
/// column's pages: the row group is scanned instead).
const MAX_DICTIONARY_PAGE: u64 = 256 * 1024;

/// What one byte range read for pruning holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The bloom filter of an attribute map's leaf.
    Bloom,
    /// The dictionary page of a dedicated string column.
    Dictionary,
}

/// For each of `row_groups` of `file`, whether it may hold a row satisfying `conditions`.
///
/// A condition on the string values of a key the file holds a dedicated column of is checked
/// against that column's dictionary page: a row group whose chunk is dictionary-encoded
/// throughout holds exactly the values its dictionary lists (as Tempo prunes by dictionary),
/// and one whose chunk is all nulls holds none. Every other condition is checked against the
/// bloom filters of the map's key and string-value leaves. All ranges of a file are read in
/// one request.
async fn keep_row_groups(
    store: &Arc<dyn ObjectStore>,
    file: &IndexedFile,
    row_groups: &[usize],
    conditions: &[AttributeCondition],
    bounds: &StartBounds,
) -> Result<Vec<bool>> {
    let descr = file.metadata().file_metadata().schema_descr();
    let leaf = |column: &str, leaf: AttributeLeaf| {
        let path = leaf.path(column);
        (0..descr.num_columns()).find(|&i| descr.column(i).path() == &path)
    };
    // Per condition: the dedicated leaf holding its values, if the file has one.
    let dedicated: Vec<Option<usize>> =
        conditions.iter().map(|c| dedicated_leaf(file, c)).collect();
    // Row groups ruled out without reading anything (a dedicated chunk of nulls only).
    let mut ruled_out = vec![false; row_groups.len()];
    // (row group, leaf, what it is) -> the byte range to read.
    let mut wanted: Vec<(usize, usize, Held)> = Vec::new();
    let mut ranges = Vec::new();
    for (i, &rg) in row_groups.iter().enumerate() {
        if !may_start_within(file, rg, bounds) {
            continue;
        }
        for (condition, dedicated) in conditions.iter().zip(&dedicated) {
            // Whether the range is read (or already was wanted).
            let mut want = |c: usize, held: Held| {
                if wanted.contains(&(rg, c, held)) {
                    return true;
                }
                let chunk = file.metadata().row_group(rg).column(c);
                let range = match held {
                    Held::Bloom => match (chunk.bloom_filter_offset(), chunk.bloom_filter_length())
                    {
                        (Some(offset), Some(length)) if offset >= 0 && length > 0 => {
                            Some(offset as u64..offset as u64 + length as u64)
                        }
                        _ => None,
                    },
                    Held::Dictionary => super::dictionary_values::dictionary_range(chunk)
                        .filter(|r| r.end - r.start <= MAX_DICTIONARY_PAGE),
                };
                match range {
                    Some(range) => {
                        wanted.push((rg, c, held));
                        ranges.push(range);
                        true
                    }
                    None => false,
                }
            };
            if let Some(c) = *dedicated {
                let chunk = file.metadata().row_group(rg).column(c);
                let nulls_only = chunk
                    .statistics()
                    .and_then(|s| s.null_count_opt())
                    .is_some_and(|nulls| nulls as i64 >= chunk.num_values());
                if nulls_only {
                    ruled_out[i] = true;
                    continue;
                }
                if want(c, Held::Dictionary) {
                    continue;
                }
                // Not dictionary-encoded throughout: the maps (which hold the value too).
            }
            let leaves = [
                Some(AttributeLeaf::Key),
                condition
                    .values
                    .as_ref()
                    .map(|_| AttributeLeaf::StringValue),
            ];
            for l in leaves.into_iter().flatten() {
                if let Some(c) = leaf(condition.column, l) {
                    want(c, Held::Bloom);
                }
            }
        }
    }
    enum Read {
        Bloom(Sbbf),
        Dictionary(Vec<String>),
    }
    let mut read: Vec<((usize, usize, Held), Read)> = Vec::with_capacity(wanted.len());
    if !ranges.is_empty() {
        let bytes = store
            .get_ranges(&file.location, &ranges)
            .await
            .map_err(|e| TraceLakeError::data_file(&file.location, e))?;
        for ((owner, range), bytes) in wanted.into_iter().zip(ranges).zip(bytes) {
            let (rg, c, held) = owner;
            let value = match held {
                Held::Bloom => Read::Bloom(
                    Sbbf::from_bytes(&bytes)
                        .map_err(|e| TraceLakeError::data_file(&file.location, e))?,
                ),
                Held::Dictionary => {
                    let chunk = file.metadata().row_group(rg).column(c);
                    Read::Dictionary(
                        super::dictionary_values::dictionary(range.start, bytes, chunk)
                            .map_err(|e| TraceLakeError::data_file(&file.location, e))?,
                    )
                }
            };
            read.push((owner, value));
        }
    }
    let bloom = |rg: usize, column: &str, l: AttributeLeaf| {
        let c = leaf(column, l)?;
        read.iter().find_map(|(owner, r)| match r {
            Read::Bloom(f) if *owner == (rg, c, Held::Bloom) => Some(f),
            _ => None,
        })
    };
    let dictionary = |rg: usize, c: usize| {
        read.iter().find_map(|(owner, r)| match r {
            Read::Dictionary(values) if *owner == (rg, c, Held::Dictionary) => Some(values),
            _ => None,
        })
    };
    Ok(row_groups
        .iter()
        .zip(ruled_out)
        .map(|(&rg, ruled_out)| {
            !ruled_out
                && conditions
                    .iter()
                    .zip(&dedicated)
                    .all(|(condition, dedicated)| {
                        let listed = dedicated.and_then(|c| dictionary(rg, c));
                        match (listed, &condition.values) {
                            (Some(held), Some(values)) => values.iter().any(|v| held.contains(v)),
                            _ => {
                                let key_present = bloom(rg, condition.column, AttributeLeaf::Key)
                                    .is_none_or(|f| f.check(condition.key.as_str()));
                                let value_present = match &condition.values {
                                    None => true,
                                    Some(values) => {
                                        bloom(rg, condition.column, AttributeLeaf::StringValue)
                                            .is_none_or(|f| {
                                                values.iter().any(|v| f.check(v.as_str()))
                                            })
                                    }
                                };
                                key_present && value_present
                            }
                        }
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
