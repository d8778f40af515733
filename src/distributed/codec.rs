//! The codecs that ship tracelake's plan pieces between Ballista's client, scheduler and
//! executors, each wrapping Ballista's own codec (which keeps handling everything else).
//!
//! - [`TraceLogicalCodec`]: the `spans` provider and the provider `trace_tree(...)` returns
//!   travel as the table location (and the lookup); the node that decodes them opens the lake
//!   there ([`Lakes`]). `trace_search(...)` travels as its location and query, and searches
//!   on the node that plans it. `attribute_keys(...)` and `attribute_values(...)` travel
//!   the same way (their unnest does not survive DataFusion's plan serialization).
//!   `trace_summaries` and `service_graph` are views over `spans`, which DataFusion ships as
//!   their plans.
//! - [`TracePhysicalCodec`]: [`LookupExec`] travels as its files, row groups and ids and is read
//!   on the executor by DataFusion's standard parquet scan (footers stay on the scheduler);
//!   `TraceTreeExec` as its lookup and columns; the instrumented collect node as nothing (it
//!   opens its `df.collect` span on the executor); an `INSERT`'s sink as the table location
//!   (the executor that runs it commits). tracelake's general scan is DataFusion's parquet scan
//!   already: its reader factory (footers from the index) cannot travel, so DataFusion ships it
//!   without, and the executor reads the footers itself, through the store the scan's URL names
//!   ([`super::lakes::LakeStores`]).
//!
//! Payloads are JSON behind a `tracelake:` prefix; anything else goes to Ballista's codec.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult, TableReference};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx;
use datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use super::lakes::Lakes;
use crate::functions::search::{SearchQuery, TraceSearchTable, trace_search_schema};
use crate::functions::tags::{TagQuery, TagTable};
use crate::functions::trace_tree::{TraceLookup, TraceTreeExec, TraceTreeTable, trace_tree_schema};
use crate::functions::traceql::TraceQlTable;
use crate::observe::planner::CollectExec;
use crate::provider::{SinkTable, SpanSink, TraceTableProvider};
use crate::read::attribute_filter::{AttributePrunedExec, AttributePruning};
use crate::read::attributes::NestedAttributes;
use crate::read::lookup_exec::LookupExec;
use crate::read::scan::{ShippedFile, shipped_lookup_scan};
use crate::schema::sql_schema;

/// What tracelake's payloads start with.
const PREFIX: &[u8] = b"tracelake:";

fn encode_payload<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> DfResult<()> {
    buf.extend_from_slice(PREFIX);
    serde_json::to_writer(&mut *buf, value)
        .map_err(|e| DataFusionError::Internal(format!("cannot encode a tracelake node: {e}")))
}

/// The payload in `buf` if it is tracelake's (`None`: it is Ballista's).
fn decode_payload<T: for<'a> Deserialize<'a>>(buf: &[u8]) -> DfResult<Option<T>> {
    match buf.strip_prefix(PREFIX) {
        Some(json) => serde_json::from_slice(json).map(Some).map_err(|e| {
            DataFusionError::Plan(format!(
                "cannot decode a tracelake plan node (is every node of the cluster running \
                 the same tracelake version?): {e}"
            ))
        }),
        None => Ok(None),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case")]
enum ProviderPayload {
    Spans {
        location: String,
        read_only: bool,
    },
    TraceTree {
        location: String,
        trace_id: String,
        start: Option<i64>,
        end: Option<i64>,
    },
    TraceSearch {
        location: String,
        query: SearchQuery,
    },
    Tags {
        location: String,
        query: TagQuery,
    },
    TraceQl {
        location: String,
        /// The TraceQL text (compiled again where the plan is decoded).
        text: String,
        query: SearchQuery,
    },
}

/// The logical codec: see the [module](self) documentation.
#[derive(Debug)]
pub struct TraceLogicalCodec {
    inner: Arc<dyn LogicalExtensionCodec>,
    lakes: Arc<Lakes>,
}

impl TraceLogicalCodec {
    /// Wraps `inner` (Ballista's codec); decoded tables are opened from `lakes`.
    pub fn new(inner: Arc<dyn LogicalExtensionCodec>, lakes: Arc<Lakes>) -> Self {
        Self { inner, lakes }
    }
}

impl LogicalExtensionCodec for TraceLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DfResult<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let lakes = self.lakes.clone();
        match decode_payload::<ProviderPayload>(buf)? {
            Some(ProviderPayload::Spans {
                location,
                read_only,
            }) => Ok(Arc::new(ShippedSpans {
                location,
                read_only,
                lakes,
            })),
            Some(function) => {
                let schema = match &function {
                    ProviderPayload::TraceTree { .. } => trace_tree_schema(),
                    ProviderPayload::TraceSearch { .. } | ProviderPayload::TraceQl { .. } => {
                        trace_search_schema()?
                    }
                    _ => schema,
                };
                Ok(Arc::new(ShippedFunction {
                    function,
                    schema,
                    lakes,
                }))
            }
            None => self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        let any = node.as_ref();
        let payload = if let Some(p) = any.downcast_ref::<TraceTableProvider>() {
            ProviderPayload::Spans {
                location: p.table().location().url.to_string(),
                read_only: p.is_read_only(),
            }
        } else if let Some(p) = any.downcast_ref::<ShippedSpans>() {
            ProviderPayload::Spans {
                location: p.location.clone(),
                read_only: p.read_only,
            }
        } else if let Some(t) = any.downcast_ref::<TraceTreeTable>() {
            ProviderPayload::TraceTree {
                location: t.table.location().url.to_string(),
                trace_id: t.lookup.trace_id.clone(),
                start: t.lookup.start,
                end: t.lookup.end,
            }
        } else if let Some(t) = any.downcast_ref::<TraceSearchTable>() {
            ProviderPayload::TraceSearch {
                location: t.table.location().url.to_string(),
                query: t.query.clone(),
            }
        } else if let Some(t) = any.downcast_ref::<TraceQlTable>() {
            ProviderPayload::TraceQl {
                location: t.table.location().url.to_string(),
                text: t.text.clone(),
                query: t.query.clone(),
            }
        } else if let Some(t) = any.downcast_ref::<TagTable>() {
            ProviderPayload::Tags {
                location: t.table.location().url.to_string(),
                query: t.query.clone(),
            }
        } else if let Some(t) = any.downcast_ref::<ShippedFunction>() {
            t.function.clone()
        } else {
            return self.inner.try_encode_table_provider(table_ref, node, buf);
        };
        encode_payload(&payload, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> DfResult<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

/// `spans` as decoded on a scheduler: the lake at `location`, opened (and refreshed to its
/// newest version) when a scan or an `INSERT` is planned.
#[derive(Debug)]
pub(crate) struct ShippedSpans {
    location: String,
    read_only: bool,
    lakes: Arc<Lakes>,
}

impl ShippedSpans {
    async fn provider(&self) -> DfResult<TraceTableProvider> {
        let table = self.lakes.current(&self.location).await?;
        Ok(if self.read_only {
            TraceTableProvider::read_only(table)
        } else {
            TraceTableProvider::new(table)
        })
    }
}

#[async_trait::async_trait]
impl TableProvider for ShippedSpans {
    fn schema(&self) -> SchemaRef {
        sql_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(crate::read::filters::pushdown(filters))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.provider()
            .await?
            .scan(state, projection, filters, limit)
            .await
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.provider()
            .await?
            .insert_into(state, input, insert_op)
            .await
    }
}

/// A table function's provider (`trace_tree(...)`, `trace_search(...)`, `attribute_keys(...)`,
/// `attribute_values(...)`) as decoded on a scheduler: built there, when the query is
/// planned, against the lake opened at the payload's location.
#[derive(Debug)]
pub(crate) struct ShippedFunction {
    function: ProviderPayload,
    schema: SchemaRef,
    lakes: Arc<Lakes>,
}

impl ShippedFunction {
    /// The provider the function's arguments make on the lake opened now.
    async fn provider(&self) -> DfResult<Arc<dyn TableProvider>> {
        Ok(match &self.function {
            ProviderPayload::TraceTree {
                location,
                trace_id,
                start,
                end,
            } => Arc::new(TraceTreeTable {
                table: self.lakes.current(location).await?,
                lookup: TraceLookup {
                    trace_id: trace_id.clone(),
                    start: *start,
                    end: *end,
                },
            }),
            ProviderPayload::TraceSearch { location, query } => Arc::new(
                TraceSearchTable::try_new(self.lakes.current(location).await?, query.clone())?,
            ),
            ProviderPayload::TraceQl {
                location,
                text,
                query,
            } => Arc::new(TraceQlTable::try_new(
                self.lakes.current(location).await?,
                text.clone(),
                query.clone(),
            )?),
            ProviderPayload::Tags { location, query } => Arc::new(TagTable::try_new(
                self.lakes.current(location).await?,
                query.clone(),
            )?),
            ProviderPayload::Spans { .. } => {
                return Err(DataFusionError::Internal(
                    "spans is shipped as a table, not a function".into(),
                ));
            }
        })
    }
}

#[async_trait::async_trait]
impl TableProvider for ShippedFunction {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        match self.function {
            ProviderPayload::Tags { .. } => TableType::View,
            _ => TableType::Temporary,
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.provider()
            .await?
            .scan(state, projection, filters, limit)
            .await
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "node", rename_all = "snake_case")]
enum NodePayload {
    Lookup {
        store_url: String,
        files: Vec<ShippedFile>,
        ids: Vec<String>,
        /// Indices into the file schema, in output order.
        projection: Vec<usize>,
        /// Indices into the SQL schema of `spans`, in output order.
        columns: Vec<usize>,
    },
    TraceTree {
        trace_id: String,
        start: Option<i64>,
        end: Option<i64>,
        output: Vec<usize>,
    },
    Collect,
    SpanSink {
        location: String,
    },
    AttributePruned {
        row_groups: usize,
        bytes: usize,
    },
}

/// The physical codec: see the [module](self) documentation.
#[derive(Debug)]
pub struct TracePhysicalCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
    lakes: Arc<Lakes>,
}

impl TracePhysicalCodec {
    /// Wraps `inner` (Ballista's codec); `INSERT`s are committed to tables opened from `lakes`.
    pub fn new(inner: Arc<dyn PhysicalExtensionCodec>, lakes: Arc<Lakes>) -> Self {
        Self { inner, lakes }
    }
}

fn one_input(inputs: &[Arc<dyn ExecutionPlan>], node: &str) -> DfResult<Arc<dyn ExecutionPlan>> {
    match inputs {
        [input] => Ok(input.clone()),
        _ => Err(DataFusionError::Plan(format!(
            "a shipped {node} has {} inputs, expected 1",
            inputs.len()
        ))),
    }
}

impl PhysicalExtensionCodec for TracePhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(payload) = decode_payload::<NodePayload>(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        match payload {
            NodePayload::Lookup {
                store_url,
                files,
                ids,
                projection,
                columns,
            } => {
                let store_url = ObjectStoreUrl::parse(store_url)?;
                // Resolve the store now, so that a node that cannot reach it fails here with
                // the reason.
                ctx.runtime_env().object_store(&store_url)?;
                shipped_lookup_scan(&store_url, &files, &ids, projection, &columns)
            }
            NodePayload::TraceTree {
                trace_id,
                start,
                end,
                output,
            } => {
                let lookup = TraceLookup {
                    trace_id,
                    start,
                    end,
                };
                let input = one_input(inputs, "TraceTreeExec")?;
                Ok(Arc::new(TraceTreeExec::new(input, lookup, output)?))
            }
            NodePayload::AttributePruned { row_groups, bytes } => {
                Ok(Arc::new(AttributePrunedExec::new(
                    one_input(inputs, "AttributePrunedExec")?,
                    AttributePruning { row_groups, bytes },
                )))
            }
            NodePayload::Collect => Ok(Arc::new(CollectExec::new(
                one_input(inputs, "TraceLakeCollectExec")?,
                tracing::Span::current(),
            ))),
            NodePayload::SpanSink { location } => {
                let sink = SpanSink::new(SinkTable::Remote {
                    location,
                    lakes: self.lakes.clone(),
                });
                Ok(Arc::new(DataSinkExec::new(
                    one_input(inputs, "SpanSink")?,
                    Arc::new(sink),
                    None,
                )))
            }
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let any = node.as_ref();
        let payload = if let Some(lookup) = any.downcast_ref::<LookupExec>() {
            let sql = sql_schema();
            let columns = lookup
                .schema()
                .fields()
                .iter()
                .map(|f| sql.index_of(f.name()))
                .collect::<Result<Vec<_>, _>>()?;
            NodePayload::Lookup {
                store_url: lookup.store_url().to_string(),
                files: lookup
                    .files
                    .iter()
                    .map(|(file, read)| ShippedFile {
                        path: file.location.to_string(),
                        size: file.size,
                        row_groups: file.row_groups.len(),
                        read: read.clone(),
                        layout: file.layout,
                    })
                    .collect(),
                ids: lookup.ids.to_vec(),
                projection: lookup.projection.clone(),
                columns,
            }
        } else if let Some(tree) = any.downcast_ref::<TraceTreeExec>() {
            NodePayload::TraceTree {
                trace_id: tree.lookup.trace_id.clone(),
                start: tree.lookup.start,
                end: tree.lookup.end,
                output: tree.output.clone(),
            }
        } else if let Some(pruned) = any.downcast_ref::<AttributePrunedExec>() {
            NodePayload::AttributePruned {
                row_groups: pruned.pruned.row_groups,
                bytes: pruned.pruned.bytes,
            }
        } else if any.downcast_ref::<CollectExec>().is_some() {
            NodePayload::Collect
        } else if let Some(sink) = any
            .downcast_ref::<DataSinkExec>()
            .and_then(|exec| exec.sink().downcast_ref::<SpanSink>())
        {
            NodePayload::SpanSink {
                location: sink.table.location(),
            }
        } else {
            return self.inner.try_encode(node, buf, proto_converter);
        };
        encode_payload(&payload, buf)
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        ctx: &PhysicalExprDecodeCtx<'_>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let Some(payload) = decode_payload::<ExprPayload>(buf)? else {
            return self.inner.try_decode_expr(buf, inputs, ctx);
        };
        match (payload, inputs) {
            (ExprPayload::NestedAttributes { column }, [input]) => {
                Ok(Arc::new(NestedAttributes::try_new(input.clone(), &column)?))
            }
            (_, inputs) => Err(DataFusionError::Plan(format!(
                "a shipped nested_attributes expression has {} inputs, expected 1",
                inputs.len()
            ))),
        }
    }

    fn try_encode_expr(
        &self,
        node: &Arc<dyn PhysicalExpr>,
        buf: &mut Vec<u8>,
        ctx: &PhysicalExprEncodeCtx<'_>,
    ) -> DfResult<()> {
        match node.as_ref().downcast_ref::<NestedAttributes>() {
            Some(expr) => encode_payload(
                &ExprPayload::NestedAttributes {
                    column: expr.column().to_string(),
                },
                buf,
            ),
            None => self.inner.try_encode_expr(node, buf, ctx),
        }
    }
}

/// tracelake's physical expressions, shipped as what rebuilds them (their inputs travel as
/// DataFusion's own expressions).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "expr", rename_all = "snake_case")]
enum ExprPayload {
    NestedAttributes { column: String },
}
