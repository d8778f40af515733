//! `trace_tree(trace_id [, start, end])`: one trace as a span tree.
//!
//! The function validates its arguments and returns a [`TraceTreeTable`]; its scan is a
//! [`TraceTreeExec`] over a lookup on `spans` (`trace_id = id`, plus the optional time bounds,
//! pruned like any `spans` scan). At execution it collects the trace's spans, orders them with
//! [`tree::build`](super::tree::build) and emits them with the tree columns. Only the
//! projected columns are computed: `path`, which grows with depth, costs nothing unless
//! selected.

use std::fmt;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::{and, concat_batches, filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampNanosecondType};
use async_trait::async_trait;
use datafusion::catalog::TableFunctionArgs;
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, col, lit};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, collect,
};
use tracing::field;

use super::args;
use super::tree::{self, TreeRow};
use crate::observe::names;
use crate::provider::TraceTableProvider;
use crate::schema::{col as c, sql_schema};
use crate::table::TraceTable;

/// The SQL name.
pub const NAME: &str = "trace_tree";

/// Columns `trace_tree` adds after the span columns.
pub mod tree_col {
    pub const DEPTH: &str = "depth";
    pub const SPAN_ORDER: &str = "span_order";
    pub const PATH: &str = "path";
    pub const ROOT_SPAN_ID: &str = "root_span_id";
    pub const CHILD_COUNT: &str = "child_count";
    pub const ANOMALY: &str = "anomaly";
}

/// The most span ids the `path` column may hold for one trace (its size is the sum of the
/// depths); beyond it `trace_tree` fails instead of exhausting memory.
pub const MAX_PATH_IDS: usize = 50_000_000;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields: Vec<Field> = sql_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend([
        Field::new(tree_col::DEPTH, DataType::Int32, false),
        Field::new(tree_col::SPAN_ORDER, DataType::Int64, false),
        Field::new(
            tree_col::PATH,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new(tree_col::ROOT_SPAN_ID, DataType::Utf8, false),
        Field::new(tree_col::CHILD_COUNT, DataType::Int64, false),
        Field::new(tree_col::ANOMALY, DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
});

/// The output schema of `trace_tree`: every span column, then the tree columns.
pub fn trace_tree_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// The `trace_tree` table function.
#[derive(Debug)]
pub struct TraceTreeFunction {
    table: Arc<TraceTable>,
}

impl TraceTreeFunction {
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self { table }
    }
}

impl TableFunctionImpl for TraceTreeFunction {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = call.exprs();
        args::count(NAME, exprs, 1, 3, "(trace_id [, start, end])")?;
        let trace_id = args::trace_id(NAME, 1, &exprs[0])?;
        let start = match exprs.get(1) {
            Some(e) => args::time_bound(NAME, 2, "start", e)?,
            None => None,
        };
        let end = match exprs.get(2) {
            Some(e) => args::time_bound(NAME, 3, "end", e)?,
            None => None,
        };
        Ok(Arc::new(TraceTreeTable {
            table: self.table.clone(),
            lookup: TraceLookup {
                trace_id,
                start,
                end,
            },
        }))
    }
}

/// Which spans a tree is built from: one trace id, optionally bounded in `start_time`
/// (inclusive at both ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLookup {
    pub trace_id: String,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl TraceLookup {
    /// The filter on `spans` that selects the lookup's spans.
    pub fn filters(&self) -> Vec<Expr> {
        let ts = |ns: i64| {
            lit(ScalarValue::TimestampNanosecond(
                Some(ns),
                Some(crate::schema::TIME_ZONE.into()),
            ))
        };
        let mut filters = vec![col(c::TRACE_ID).eq(lit(self.trace_id.clone()))];
        if let Some(start) = self.start {
            filters.push(col(c::START_TIME).gt_eq(ts(start)));
        }
        if let Some(end) = self.end {
            filters.push(col(c::START_TIME).lt_eq(ts(end)));
        }
        filters
    }

    /// Keeps the rows of `batch` (with `trace_id` and `start_time`) that match exactly.
    fn keep(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let ids = batch
            .column_by_name(c::TRACE_ID)
            .ok_or_else(|| DataFusionError::Internal("lookup without trace_id".into()))?;
        let mut mask = arrow::compute::kernels::cmp::eq(
            ids,
            &StringArray::new_scalar(self.trace_id.as_str()),
        )?;
        let starts = batch
            .column_by_name(c::START_TIME)
            .ok_or_else(|| DataFusionError::Internal("lookup without start_time".into()))?
            .as_primitive::<TimestampNanosecondType>();
        if self.start.is_some() || self.end.is_some() {
            let (lo, hi) = (self.start.unwrap_or(i64::MIN), self.end.unwrap_or(i64::MAX));
            let in_window: BooleanArray = starts
                .iter()
                .map(|t| t.map(|t| t >= lo && t <= hi))
                .collect();
            mask = and(&mask, &in_window)?;
        }
        // The lookup below usually returns exactly the trace: nothing to copy then.
        if mask.true_count() == batch.num_rows() {
            return Ok(batch.clone());
        }
        Ok(filter_record_batch(batch, &mask)?)
    }
}

/// The table `trace_tree(...)` returns.
#[derive(Debug)]
pub struct TraceTreeTable {
    pub(crate) table: Arc<TraceTable>,
    pub(crate) lookup: TraceLookup,
}

#[async_trait]
impl TableProvider for TraceTreeTable {
    fn schema(&self) -> SchemaRef {
        trace_tree_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = trace_tree_schema();
        let output: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        let spans = sql_schema();
        // The span columns to read: those projected plus what the tree needs.
        let mut read: Vec<usize> = [c::TRACE_ID, c::SPAN_ID, c::PARENT_SPAN_ID, c::START_TIME]
            .iter()
            .map(|n| spans.index_of(n))
            .collect::<Result<_, _>>()?;
        for &i in &output {
            if i < spans.fields().len() && !read.contains(&i) {
                read.push(i);
            }
        }
        let provider = TraceTableProvider::new(self.table.clone());
        let input = provider
            .scan(state, Some(&read), &self.lookup.filters(), None)
            .await?;
        Ok(Arc::new(TraceTreeExec::new(
            input,
            self.lookup.clone(),
            output,
        )?))
    }
}

/// Builds the tree of one trace from the lookup below it.
#[derive(Debug)]
pub struct TraceTreeExec {
    input: Arc<dyn ExecutionPlan>,
    pub(crate) lookup: TraceLookup,
    /// Indices into [`trace_tree_schema`] of the output columns.
    pub(crate) output: Vec<usize>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl TraceTreeExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        lookup: TraceLookup,
        output: Vec<usize>,
    ) -> Result<Self> {
        let schema = Arc::new(trace_tree_schema().project(&output)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            lookup,
            output,
            schema,
            properties,
        })
    }
}

impl DisplayAs for TraceTreeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TraceTreeExec: trace_id={}", self.lookup.trace_id)?;
        if let Some(s) = self.lookup.start {
            write!(f, ", start={s}")?;
        }
        if let Some(e) = self.lookup.end {
            write!(f, ", end={e}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for TraceTreeExec {
    fn name(&self) -> &'static str {
        "TraceTreeExec"
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// One trace is read whole into one batch: splitting the lookup below over partitions
    /// (a round-robin repartition on a multi-core session) would only add tasks.
    fn required_input_distribution(&self) -> Vec<datafusion::physical_plan::Distribution> {
        vec![datafusion::physical_plan::Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(TraceTreeExec::new(
                input,
                self.lookup.clone(),
                self.output.clone(),
            )?)),
            Err(_) => exec_err!("TraceTreeExec takes exactly one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return exec_err!("TraceTreeExec has one partition, asked for {partition}");
        }
        let input = self.input.clone();
        let lookup = self.lookup.clone();
        let output = self.output.clone();
        let schema = self.schema.clone();
        let batch_size = context.session_config().batch_size();
        let stream = futures::stream::once(async move {
            let mut batches = collect(input.clone(), context).await?;
            let spans = if batches.len() == 1 {
                batches.remove(0)
            } else {
                concat_batches(&input.schema(), &batches)?
            };
            let spans = lookup.keep(&spans)?;
            let span = tracing::info_span!(
                names::TRACE_TREE_BUILD,
                { names::ATTR_TRACE_ID } = lookup.trace_id.as_str(),
                { names::ATTR_ROWS } = spans.num_rows(),
                { names::ATTR_ERROR } = field::Empty,
            );
            let result = span.in_scope(|| tree_batch(&spans, &output, &schema));
            if let Err(e) = &result {
                span.record(names::ATTR_ERROR, field::display(e));
            }
            result
        });
        let sliced = futures::StreamExt::flat_map(stream, move |result| {
            let pieces: Vec<Result<RecordBatch>> = match result {
                Ok(batch) => (0..batch.num_rows().max(1))
                    .step_by(batch_size.max(1))
                    .map(
                        |offset| Ok(batch.slice(offset, batch_size.min(batch.num_rows() - offset))),
                    )
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(pieces)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            sliced,
        )))
    }
}

/// Orders `spans` (one trace) as a tree and builds the projected output columns.
fn tree_batch(spans: &RecordBatch, output: &[usize], schema: &SchemaRef) -> Result<RecordBatch> {
    let ids = string_column(spans, c::SPAN_ID)?;
    let parents = string_column(spans, c::PARENT_SPAN_ID)?;
    let starts = spans
        .column_by_name(c::START_TIME)
        .ok_or_else(|| DataFusionError::Internal("trace_tree input without start_time".into()))?
        .as_primitive::<TimestampNanosecondType>();
    let rows = tree::build(
        spans.num_rows(),
        |i| ids.value(i),
        |i| parents.is_valid(i).then(|| parents.value(i)),
        |i| starts.value(i),
    );
    let order = UInt32Array::from_iter_values(rows.iter().map(|r| r.input as u32));
    // Spans are stored by start time, which is often already the tree's order.
    let in_order =
        rows.len() == spans.num_rows() && rows.iter().enumerate().all(|(i, r)| r.input == i);

    let _convert =
        tracing::info_span!(names::ARROW_CONVERT, { names::ATTR_ROWS } = rows.len()).entered();
    let full = trace_tree_schema();
    let span_count = sql_schema().fields().len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(output.len());
    for &i in output {
        let name = full.field(i).name().as_str();
        let column: ArrayRef = if i < span_count {
            let source = spans.column_by_name(name).ok_or_else(|| {
                DataFusionError::Internal(format!("trace_tree input without {name}"))
            })?;
            if in_order {
                source.clone()
            } else {
                take(source.as_ref(), &order, None)?
            }
        } else {
            match name {
                tree_col::DEPTH => Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| r.depth as i32),
                )),
                tree_col::SPAN_ORDER => {
                    Arc::new(Int64Array::from_iter_values(0..rows.len() as i64))
                }
                tree_col::PATH => Arc::new(path_column(&rows, ids)?),
                tree_col::ROOT_SPAN_ID => {
                    let roots = UInt32Array::from_iter_values(
                        rows.iter().map(|r| rows[r.root].input as u32),
                    );
                    take(ids, &roots, None)?
                }
                tree_col::CHILD_COUNT => Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|r| r.child_count as i64),
                )),
                tree_col::ANOMALY => Arc::new(
                    rows.iter()
                        .map(|r| r.anomaly.map(|a| a.as_str()))
                        .collect::<StringArray>(),
                ),
                other => {
                    return Err(DataFusionError::Internal(format!(
                        "unknown trace_tree column {other}"
                    )));
                }
            }
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )?)
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|a| a.as_string_opt::<i32>())
        .ok_or_else(|| DataFusionError::Internal(format!("trace_tree input without {name}")))
}

/// The `path` column: for each row, the span ids from its root to itself.
fn path_column(rows: &[TreeRow], ids: &StringArray) -> Result<ListArray> {
    let total: usize = rows.iter().map(|r| r.depth + 1).sum();
    if total > MAX_PATH_IDS {
        let deepest = rows.iter().map(|r| r.depth).max().unwrap_or(0);
        return Err(DataFusionError::ResourcesExhausted(format!(
            "{NAME}: the path column of this trace would hold {total} span ids (depth up to \
             {deepest}), more than {MAX_PATH_IDS}; select the other columns (depth, \
             root_span_id, parent_span_id) instead of path"
        )));
    }
    // Pre-order puts a parent's path before its children's: copy it and append self.
    let mut values: Vec<u32> = Vec::with_capacity(total);
    let mut offsets: Vec<i32> = Vec::with_capacity(rows.len() + 1);
    offsets.push(0);
    for row in rows {
        let start = values.len();
        if let Some(p) = row.parent {
            let (from, to) = (offsets[p] as usize, offsets[p + 1] as usize);
            values.extend_from_within(from..to);
        }
        values.push(row.input as u32);
        debug_assert_eq!(values.len() - start, row.depth + 1);
        offsets.push(values.len() as i32);
    }
    let ids = take(ids, &UInt32Array::from(values), None)?;
    Ok(ListArray::try_new(
        Arc::new(Field::new("item", DataType::Utf8, true)),
        OffsetBuffer::new(offsets.into()),
        ids,
        None,
    )?)
}
