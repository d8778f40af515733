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
use datafusion::common::{DataFusionError, not_impl_err, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::schema::{self, sql_schema};
use crate::table::{TraceTable, ingest};

/// The `spans` table over a [`TraceTable`]'s current snapshot.
#[derive(Debug, Clone)]
pub struct TraceTableProvider {
    table: Arc<TraceTable>,
    /// Refuse `INSERT` (for contexts that run SQL their users type).
    read_only: bool,
}

impl TraceTableProvider {
    /// A provider over `table`; it follows every new version the table installs.
    pub fn new(table: Arc<TraceTable>) -> Self {
        Self {
            table,
            read_only: false,
        }
    }

    /// A provider that refuses `INSERT INTO` with a clear error; queries are unchanged.
    pub fn read_only(table: Arc<TraceTable>) -> Self {
        Self {
            table,
            read_only: true,
        }
    }

    /// Whether `INSERT INTO` is refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The table this provider reads.
    pub fn table(&self) -> &Arc<TraceTable> {
        &self.table
    }
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
        Ok(crate::read::filters::pushdown(filters))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self.table.snapshot();
        match snapshot.index() {
            Some(index) => {
                let table = &self.table;
                crate::read::scan::scan_index(
                    index,
                    &table.location().root_store,
                    table.store_url(),
                    state,
                    projection,
                    filters,
                )
                .await
            }
            None => {
                let delta = snapshot
                    .delta_scan(self.table.log_store())
                    .await
                    .map_err(DataFusionError::from)?;
                crate::read::scan::scan_delta(delta, state, projection, filters, limit).await
            }
        }
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if self.read_only {
            return plan_err!(
                "this trace table is registered read-only ({}): INSERT is not allowed",
                self.table.location().url
            );
        }
        if insert_op != InsertOp::Append {
            return not_impl_err!(
                "spans only supports INSERT INTO (append); {insert_op} is not supported"
            );
        }
        let sink = SpanSink::new(SinkTable::Open(self.table.clone()));
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// The table an `INSERT` writes to: the one the provider holds, or (in a plan shipped to a
/// Ballista executor) the one at a location, opened by the node that runs the write.
#[derive(Debug)]
pub(crate) enum SinkTable {
    Open(Arc<TraceTable>),
    #[cfg(feature = "cluster")]
    Remote {
        location: String,
        lakes: Arc<crate::distributed::Lakes>,
    },
}

impl SinkTable {
    /// The table's location URL.
    pub(crate) fn location(&self) -> String {
        match self {
            SinkTable::Open(table) => table.location().url.to_string(),
            #[cfg(feature = "cluster")]
            SinkTable::Remote { location, .. } => location.clone(),
        }
    }
}

/// Writes an `INSERT INTO spans` as one Delta commit, all rows checked before anything is
/// written.
#[derive(Debug)]
pub(crate) struct SpanSink {
    pub(crate) table: SinkTable,
    schema: SchemaRef,
}

impl SpanSink {
    pub(crate) fn new(table: SinkTable) -> Self {
        Self {
            table,
            schema: schema::input_schema(),
        }
    }
}

impl DisplayAs for SpanSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SpanSink({})", self.table.location())
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
        // Rows are converted and checked as they arrive, and written in bounded runs: the
        // statement's memory does not grow with its rows (see `TableOptions::insert_run_rows`).
        let mut offset = 0usize;
        let storage = ingest::coalesce_small(data).map(move |batch| {
            let batch = batch?;
            let converted = ingest::to_storage(&batch, offset);
            offset += batch.num_rows();
            converted
        });
        let table = match &self.table {
            SinkTable::Open(table) => table.clone(),
            #[cfg(feature = "cluster")]
            SinkTable::Remote { location, lakes } => lakes.current(location).await?,
        };
        let outcome = table
            .append_stream(Box::pin(storage))
            .await
            .map_err(DataFusionError::from)?;
        Ok(outcome.rows)
    }
}
