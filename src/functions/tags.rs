//! `attribute_keys(start, end)` and `attribute_values(scope, key, start, end)`: the attribute
//! keys of the spans in a time window and the values of one key, with how many spans carry
//! each, for tag pickers (Grafana's, the trace view's).
//!
//! Both return a [`TagTable`]: a logical plan over `spans` (pruned by the window like any
//! scan), planned when the query is. On a Ballista cluster the table travels as its location
//! and arguments, and the node that plans the query builds the plan (its unnest of the key
//! lists does not survive DataFusion's logical plan serialization).
//! Scopes are `span` (`attributes`) and `resource` (`resource_attributes`).

use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Column, Result, plan_err};
use datafusion::datasource::TableType;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_nested::expr_fn::map_keys;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, col, lit, when};
use datafusion::physical_plan::ExecutionPlan;

use super::args;
use super::summaries::{spans_scan, window_filter};
use super::udfs;
use crate::schema::col as c;
use crate::table::TraceTable;

/// SQL name of the key listing.
pub const ATTRIBUTE_KEYS: &str = "attribute_keys";
/// SQL name of the value listing.
pub const ATTRIBUTE_VALUES: &str = "attribute_values";

/// The attribute scopes and the span column holding each.
pub const SCOPES: [(&str, &str); 2] = [
    ("span", c::ATTRIBUTES),
    ("resource", c::RESOURCE_ATTRIBUTES),
];

fn scope_column(function: &str, scope: &str) -> Result<&'static str> {
    match SCOPES.iter().find(|(name, _)| *name == scope) {
        Some((_, column)) => Ok(column),
        None => plan_err!(
            "{function} expects the scope 'span', 'resource' or NULL (both) for argument 1, got {scope:?}"
        ),
    }
}

/// The spans of the window, from `table`.
fn window_spans(
    table: &Arc<TraceTable>,
    start: Option<i64>,
    end: Option<i64>,
) -> Result<LogicalPlanBuilder> {
    let mut plan = spans_scan(table, "spans")?;
    if let Some(f) = window_filter("spans", start, end) {
        plan = plan.filter(f)?;
    }
    Ok(plan)
}

/// The union of `plans` (at least one).
fn union_all(mut plans: Vec<LogicalPlan>) -> Result<LogicalPlan> {
    let first = plans.remove(0);
    let mut builder = LogicalPlanBuilder::from(first);
    for plan in plans {
        builder = builder.union(plan)?;
    }
    builder.build()
}

/// `attribute_keys(start, end)`: `scope`, `key`, `span_count`, one row per key of each scope.
#[derive(Debug)]
pub struct AttributeKeysFunction {
    table: Arc<TraceTable>,
}

impl AttributeKeysFunction {
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self { table }
    }
}

impl TableFunctionImpl for AttributeKeysFunction {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = call.exprs();
        args::count(ATTRIBUTE_KEYS, exprs, 2, 2, "(start, end)")?;
        let start = args::time_bound(ATTRIBUTE_KEYS, 1, "start", &exprs[0])?;
        let end = args::time_bound(ATTRIBUTE_KEYS, 2, "end", &exprs[1])?;
        Ok(Arc::new(TagTable::try_new(
            self.table.clone(),
            TagQuery::Keys { start, end },
        )?))
    }
}

/// What a [`TagTable`] lists.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "list", rename_all = "snake_case")]
pub enum TagQuery {
    /// `attribute_keys(start, end)`.
    Keys {
        start: Option<i64>,
        end: Option<i64>,
    },
    /// `attribute_values(scope, key, start, end)`; `scope` `None` for both.
    Values {
        scope: Option<String>,
        key: String,
        start: Option<i64>,
        end: Option<i64>,
    },
}

impl TagQuery {
    /// The logical plan of the listing over `table`.
    fn plan(&self, table: &Arc<TraceTable>) -> Result<LogicalPlan> {
        let mut plans = Vec::new();
        match self {
            TagQuery::Keys { start, end } => {
                for (scope, column) in SCOPES {
                    plans.push(
                        window_spans(table, *start, *end)?
                            .project(vec![map_keys(col(column)).alias("key")])?
                            .unnest_column("key")?
                            .filter(col("key").is_not_null())?
                            .project(vec![lit(scope).alias("scope"), col("key")])?
                            .build()?,
                    );
                }
                // One aggregation over the union of the scopes (on Ballista 55, a union of
                // aggregations one of which yields no rows may never finish).
                LogicalPlanBuilder::from(union_all(plans)?)
                    .aggregate(
                        vec![col("scope"), col("key")],
                        vec![count(lit(1i64)).alias("span_count")],
                    )?
                    .build()
            }
            TagQuery::Values {
                scope,
                key,
                start,
                end,
            } => {
                let scopes: Vec<(&str, &str)> = match scope.as_deref() {
                    None => SCOPES.to_vec(),
                    Some(s) => {
                        let column = scope_column(ATTRIBUTE_VALUES, s)?;
                        SCOPES
                            .iter()
                            .copied()
                            .filter(|(_, c)| *c == column)
                            .collect()
                    }
                };
                for (scope, column) in scopes {
                    let (kind, text) = typed_text(column, key)?;
                    plans.push(
                        window_spans(table, *start, *end)?
                            .project(vec![
                                lit(scope).alias("scope"),
                                kind.alias("type"),
                                text.alias("value"),
                            ])?
                            .filter(col("value").is_not_null())?
                            .build()?,
                    );
                }
                LogicalPlanBuilder::from(union_all(plans)?)
                    .aggregate(
                        vec![col("scope"), col("type"), col("value")],
                        vec![count(lit(1i64)).alias("span_count")],
                    )?
                    .build()
            }
        }
    }
}

/// The table `attribute_keys(...)` and `attribute_values(...)` return: [`TagQuery::plan`],
/// planned when the query is (like DataFusion's `ViewTable`).
#[derive(Debug)]
pub struct TagTable {
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) table: Arc<TraceTable>,
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) query: TagQuery,
    plan: LogicalPlan,
}

impl TagTable {
    pub(crate) fn try_new(table: Arc<TraceTable>, query: TagQuery) -> Result<Self> {
        let plan = query.plan(&table)?;
        Ok(Self { table, query, plan })
    }
}

#[async_trait]
impl TableProvider for TagTable {
    fn schema(&self) -> SchemaRef {
        Arc::new(self.plan.schema().as_arrow().clone())
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut plan = LogicalPlanBuilder::from(self.plan.clone());
        if let Some(filter) = filters.iter().cloned().reduce(|a, b| a.and(b)) {
            plan = plan.filter(filter)?;
        }
        if let Some(projection) = projection {
            let schema = self.plan.schema();
            plan = plan.project(
                projection
                    .iter()
                    .map(|&i| Expr::Column(Column::from(schema.qualified_field(i)))),
            )?;
        }
        if let Some(limit) = limit {
            plan = plan.limit(0, Some(limit))?;
        }
        state.create_physical_plan(&plan.build()?).await
    }
}

/// `attribute_values(scope, key, start, end)`: `scope`, `type`, `value` (as text),
/// `span_count`, one row per distinct scalar value of the key (`string`, `int`, `double`,
/// `bool`); `scope` NULL lists both scopes.
#[derive(Debug)]
pub struct AttributeValuesFunction {
    table: Arc<TraceTable>,
}

impl AttributeValuesFunction {
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self { table }
    }
}

/// The type and text of the scalar value of `key` in the map `column` (NULL for arrays,
/// bytes and absent keys).
fn typed_text(column: &str, key: &str) -> Result<(Expr, Expr)> {
    let get = |name: &str| udfs::call(name, vec![col(column), lit(key)]);
    let (s, i, d, b) = (
        get("attr_str")?,
        get("attr_int")?,
        get("attr_double")?,
        get("attr_bool")?,
    );
    let kind = when(s.clone().is_not_null(), lit("string"))
        .when(i.clone().is_not_null(), lit("int"))
        .when(d.clone().is_not_null(), lit("double"))
        .when(b.clone().is_not_null(), lit("bool"))
        .end()?;
    let text = when(s.clone().is_not_null(), s)
        .when(i.clone().is_not_null(), cast(i, DataType::Utf8))
        .when(d.clone().is_not_null(), cast(d, DataType::Utf8))
        .when(b.clone().is_not_null(), cast(b, DataType::Utf8))
        .end()?;
    Ok((kind, text))
}

impl TableFunctionImpl for AttributeValuesFunction {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = call.exprs();
        args::count(ATTRIBUTE_VALUES, exprs, 4, 4, "(scope, key, start, end)")?;
        let scope = args::optional_string(ATTRIBUTE_VALUES, 1, "scope", &exprs[0])?;
        if let Some(s) = &scope {
            scope_column(ATTRIBUTE_VALUES, s)?;
        }
        let Some(key) = args::optional_string(ATTRIBUTE_VALUES, 2, "key", &exprs[1])? else {
            return plan_err!(
                "{ATTRIBUTE_VALUES} expects an attribute key for argument 2 (key), got NULL"
            );
        };
        let start = args::time_bound(ATTRIBUTE_VALUES, 3, "start", &exprs[2])?;
        let end = args::time_bound(ATTRIBUTE_VALUES, 4, "end", &exprs[3])?;
        Ok(Arc::new(TagTable::try_new(
            self.table.clone(),
            TagQuery::Values {
                scope,
                key,
                start,
                end,
            },
        )?))
    }
}
