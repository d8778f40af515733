//! `TraceTableProvider`: the `spans` table. Every scan starts from the table's current
//! snapshot (loaded once, atomically, so a running query keeps the version it started with),
//! translates the SQL-facing filters to the storage schema so that Delta file skipping and
//! parquet pruning see them, and converts storage columns back to the SQL types.
//!
//! The query path never lists: it reads only the files the snapshot names.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DataFusionError, ScalarValue, not_impl_err};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column as PhysicalColumn};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, SendableRecordBatchStream,
};
use futures::TryStreamExt;

use crate::schema::{self, col, sql_schema, storage_name};
use crate::table::{TraceTable, ingest, lookup};

/// The `spans` table over a [`TraceTable`]'s current snapshot.
#[derive(Debug, Clone)]
pub struct TraceTableProvider {
    table: Arc<TraceTable>,
}

impl TraceTableProvider {
    /// A provider over `table`; it follows every new version the table installs.
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self { table }
    }

    /// The table this provider reads.
    pub fn table(&self) -> &Arc<TraceTable> {
        &self.table
    }
}

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

/// Rewrites a filter on the SQL schema to one on the storage schema that every matching row
/// also satisfies (it may be weaker: the filter is re-applied above the scan). `None` when
/// nothing of it can be expressed on storage.
pub(crate) fn translate_filter(expr: &Expr) -> Option<Expr> {
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

/// The trace ids a scan is restricted to: a conjunct `trace_id = 'literal'` or
/// `trace_id IN ('literal', ...)` of the pushed filters.
pub(crate) fn lookup_ids(filters: &[Expr]) -> Option<Vec<String>> {
    fn string(e: &Expr) -> Option<String> {
        match e {
            Expr::Literal(v, _) => v.try_as_str().flatten().map(str::to_string),
            _ => None,
        }
    }
    fn is_trace_id(e: &Expr) -> bool {
        matches!(e, Expr::Column(c) if c.name == col::TRACE_ID)
    }
    /// The ids of `e` if it is `trace_id = 'x'`, `trace_id IN (...)`, or an OR of those
    /// (DataFusion rewrites short IN lists to ORs).
    fn ids(e: &Expr) -> Option<Vec<String>> {
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
                let mut all = ids(left)?;
                all.extend(ids(right)?);
                Some(all)
            }
            Expr::InList(list) if !list.negated && is_trace_id(&list.expr) => {
                list.list.iter().map(string).collect()
            }
            _ => None,
        }
    }
    filters
        .iter()
        .flat_map(|f| split_conjunction(f))
        .find_map(ids)
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

#[async_trait]
impl TableProvider for TraceTableProvider {
    fn schema(&self) -> SchemaRef {
        sql_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Filters prune files and row groups below; DataFusion re-applies them exactly.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self.table.snapshot();
        let delta = snapshot.delta_scan();
        let delta_schema = delta.schema();
        let sql = sql_schema();
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..sql.fields().len()).collect(),
        };
        let storage_projection = wanted
            .iter()
            .map(|&i| delta_schema.index_of(storage_name(sql.field(i).name())))
            .collect::<Result<Vec<_>, _>>()?;
        // With the index (every version without deletion vectors), the scan is tracelake's
        // own: a lookup by trace id reads only the row groups the index points at; any other
        // scan covers every file of the snapshot, pruned by the translated filters against
        // the row-group statistics and page indexes of the footers the index holds. Either
        // way the query path reads only files the snapshot names, and never the log.
        let ids = lookup_ids(filters);
        let storage_filters: Vec<Expr> = filters.iter().filter_map(translate_filter).collect();
        let plan = match snapshot.index() {
            Some(index) => {
                let table = &self.table;
                let store = &table.location().root_store;
                state
                    .runtime_env()
                    .register_object_store(table.store_url().as_ref(), store.clone());
                let lookup = match &ids {
                    Some(ids) => index.plan(ids),
                    None => index.plan_all(),
                };
                let file_schema = lookup::file_schema();
                let projection = wanted
                    .iter()
                    .map(|&i| file_schema.index_of(storage_name(sql.field(i).name())))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(ids) = &ids
                    && let Some(exec) = index.lookup_exec(
                        store,
                        &lookup,
                        ids,
                        projection.clone(),
                        Arc::new(sql.project(&wanted)?),
                    )
                {
                    // Already in the SQL names and types.
                    return Ok(Arc::new(exec));
                }
                if lookup.files.is_empty() {
                    Arc::new(EmptyExec::new(Arc::new(file_schema.project(&projection)?)))
                } else {
                    index.scan(
                        state,
                        store,
                        table.store_url(),
                        &lookup,
                        ids.as_deref(),
                        &storage_filters,
                        projection,
                    )?
                }
            }
            None => {
                delta
                    .scan(state, Some(&storage_projection), &storage_filters, limit)
                    .await?
            }
        };

        let input = plan.schema();
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            let field = sql.field(i);
            let index = input.index_of(storage_name(field.name()))?;
            let column: Arc<dyn PhysicalExpr> =
                Arc::new(PhysicalColumn::new(input.field(index).name(), index));
            let expr: Arc<dyn PhysicalExpr> = if input.field(index).data_type() == field.data_type()
            {
                column
            } else {
                Arc::new(CastExpr::new(column, field.data_type().clone(), None))
            };
            exprs.push((expr, field.name().clone()));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return not_impl_err!(
                "spans only supports INSERT INTO (append); {insert_op} is not supported"
            );
        }
        let sink = SpanSink {
            table: self.table.clone(),
            schema: schema::input_schema(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// Writes an `INSERT INTO spans` as one Delta commit, all rows checked before anything is
/// written.
#[derive(Debug)]
struct SpanSink {
    table: Arc<TraceTable>,
    schema: SchemaRef,
}

impl DisplayAs for SpanSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SpanSink({})", self.table.location().url)
    }
}

#[async_trait]
impl DataSink for SpanSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> datafusion::error::Result<u64> {
        let batches: Vec<_> = data.try_collect().await?;
        let mut rows = 0usize;
        let mut storage = Vec::with_capacity(batches.len());
        for batch in &batches {
            storage.push(ingest::to_storage(batch, rows).map_err(DataFusionError::from)?);
            rows += batch.num_rows();
        }
        let outcome = self
            .table
            .commit(storage, rows as u64)
            .await
            .map_err(DataFusionError::from)?;
        Ok(outcome.rows)
    }
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
    fn untranslatable_parts_are_dropped_not_guessed() {
        let f = c("trace_id")
            .eq(lit("a"))
            .and(c("start_time").is_not_null());
        assert_eq!(translate_filter(&f).unwrap(), c("trace_id").eq(lit("a")));
        let f = c("trace_id").eq(lit("a")).or(c("start_time").is_not_null());
        assert!(translate_filter(&f).is_none());
    }
}
