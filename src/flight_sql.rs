//! Arrow Flight SQL over a `SessionContext`: the lake for every Arrow client over the network
//! (ADBC drivers in Python, Go, Java and C, the Flight SQL JDBC driver, DataFusion's tools).
//!
//! [`service`] turns a context with a lake registered (every tracelake SQL function included)
//! into arrow-flight's gRPC `FlightService`; [`serve`] runs it on a listener, as `tracelake
//! serve --flight-sql ADDR` does. What it answers:
//!
//! - statements (`CommandStatementQuery`) and prepared statements with parameters (`$1`, or
//!   `?` in order), their results streamed as Arrow record batches as DataFusion produces them
//!   (a result is never held whole);
//! - the metadata calls clients make when they connect and browse: `GetSqlInfo`, `GetCatalogs`,
//!   `GetDbSchemas`, `GetTables` (with the tables' schemas), `GetTableTypes`;
//! - `CommandStatementUpdate` and prepared updates, for `INSERT INTO spans` when
//!   [`FlightSqlConfig::allow_insert`] is set.
//!
//! Rules:
//! - Read-only by default: DataFusion's `SQLOptions` refuse DDL, DML and `SET`-style
//!   statements (`PERMISSION_DENIED`); with `allow_insert`, `INSERT` is accepted and the rest
//!   is still refused (`COPY`, which writes files where the server runs, included).
//! - An optional bearer token: every call carries `authorization: Bearer <token>` (or `Basic`
//!   credentials whose password is the token, which the handshake exchanges for the bearer);
//!   other calls get `UNAUTHENTICATED`.
//! - A query runs at most [`FlightSqlConfig::query_timeout`], planning and streaming included
//!   (`DEADLINE_EXCEEDED`), and at most [`FlightSqlConfig::max_concurrent_queries`] run at once
//!   (beyond: `RESOURCE_EXHAUSTED`).
//! - A malformed ticket, handle, plan or parameter is `INVALID_ARGUMENT` (or the planner's
//!   error), never a panic.
//!
//! Handles are stateless: a statement's ticket and a prepared statement's handle carry its
//! SQL, and, once parameters are bound, the parameters (Flight SQL's updated handle). Clients
//! that keep the handle they were first given find the parameters the server kept for it (at
//! most [`BOUND_PARAMETERS`] statements, for [`BOUND_PARAMETERS_TTL`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, SqlSupportedTransaction,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use base64::Engine;
use bytes::Bytes;
use datafusion::common::ParamValues;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNode;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::dml::WriteOp;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Result, TraceLakeError};

/// Statements whose bound parameters the server keeps for clients that reuse their first
/// handle (the oldest are dropped first).
pub const BOUND_PARAMETERS: u64 = 4_096;

/// How long bound parameters are kept after they were last used.
pub const BOUND_PARAMETERS_TTL: Duration = Duration::from_secs(600);

/// Largest parameter batch a client may bind (rows times columns).
const MAX_BOUND_VALUES: usize = 65_536;

/// How a Flight SQL endpoint answers; see the module docs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FlightSqlConfig {
    /// Accept `INSERT` (default: refused, as all DML and DDL). The context decides what an
    /// `INSERT` does: a table registered read-only refuses it too.
    pub allow_insert: bool,
    /// The token every call must carry (default: none, no authentication).
    pub bearer_token: Option<String>,
    /// Longest a query may run, from planning to its last batch (default 300 s).
    pub query_timeout: Duration,
    /// Queries running at once, beyond which new ones are refused (default 16).
    pub max_concurrent_queries: usize,
}

impl Default for FlightSqlConfig {
    fn default() -> Self {
        Self {
            allow_insert: false,
            bearer_token: None,
            query_timeout: Duration::from_secs(300),
            max_concurrent_queries: 16,
        }
    }
}

impl FlightSqlConfig {
    /// Accept `INSERT` statements.
    pub fn with_allow_insert(mut self, allow: bool) -> Self {
        self.allow_insert = allow;
        self
    }

    /// Require this bearer token (`None`: no authentication).
    pub fn with_bearer_token(mut self, token: Option<String>) -> Self {
        self.bearer_token = token;
        self
    }

    /// The longest a query may run.
    pub fn with_query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Queries that may run at once.
    pub fn with_max_concurrent_queries(mut self, queries: usize) -> Self {
        self.max_concurrent_queries = queries;
        self
    }

    /// Checks the settings: a non-empty token, a timeout of at least 1 ms, 1 to 65,536
    /// concurrent queries.
    pub fn validate(&self) -> Result<()> {
        if self
            .bearer_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(TraceLakeError::InvalidArgument(
                "the Flight SQL bearer token is empty".into(),
            ));
        }
        if self.query_timeout < Duration::from_millis(1) {
            return Err(TraceLakeError::InvalidArgument(
                "the Flight SQL query timeout must be at least 1 ms".into(),
            ));
        }
        if !(1..=65_536).contains(&self.max_concurrent_queries) {
            return Err(TraceLakeError::InvalidArgument(format!(
                "the Flight SQL endpoint runs 1 to 65,536 queries at once, not {}",
                self.max_concurrent_queries
            )));
        }
        Ok(())
    }
}

/// The gRPC service [`service`] builds: arrow-flight's server with the token check in front.
pub type FlightSqlServer = InterceptedService<FlightServiceServer<FlightSqlEndpoint>, TokenCheck>;

/// The Flight SQL service answering with `ctx` (see the module docs).
pub fn service(ctx: SessionContext, config: FlightSqlConfig) -> Result<FlightSqlServer> {
    config.validate()?;
    let check = TokenCheck {
        token: config.bearer_token.clone().map(Arc::from),
    };
    let endpoint = FlightSqlEndpoint::new(ctx, config)?;
    Ok(FlightServiceServer::with_interceptor(endpoint, check))
}

/// Serves [`service`] on `listener` until `shutdown` resolves (then waits for the calls in
/// flight).
pub async fn serve(
    ctx: SessionContext,
    config: FlightSqlConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let service = service(ctx, config)?;
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    });
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| TraceLakeError::Server(format!("Flight SQL: {e}")))
}

/// The address a Flight SQL client connects to for `addr` (`grpc://HOST:PORT`).
pub fn client_uri(addr: SocketAddr) -> String {
    format!("grpc://{addr}")
}

/// The token check in front of every call (see the module docs).
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<str>>,
}

impl TokenCheck {
    fn accepts(&self, header: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(header) = header else {
            return false;
        };
        if let Some(bearer) = header.strip_prefix("Bearer ") {
            return same(bearer.trim().as_bytes(), token.as_bytes());
        }
        if let Some(basic) = header.strip_prefix("Basic ") {
            // With or without padding (Go's clients send none).
            let unpadded = basic.trim().trim_end_matches('=');
            let Ok(decoded) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(unpadded)
            else {
                return false;
            };
            let password = match decoded.iter().position(|&b| b == b':') {
                Some(colon) => &decoded[colon + 1..],
                None => &decoded[..],
            };
            return same(password, token.as_bytes());
        }
        false
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.accepts(header) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "this Flight SQL endpoint requires a token: send `authorization: Bearer <token>`",
            ))
        }
    }
}

/// A statement's ticket and a prepared statement's handle (see the module docs).
#[derive(Clone, PartialEq, prost::Message)]
struct Handle {
    #[prost(string, tag = "1")]
    sql: String,
    /// The bound parameters as an Arrow IPC stream (empty: none bound).
    #[prost(bytes = "bytes", tag = "2")]
    parameters: Bytes,
    /// Names the parameters the server keeps for this prepared statement (0: a statement).
    #[prost(uint64, tag = "3")]
    id: u64,
}

impl Handle {
    fn decode_from(bytes: &[u8], what: &str) -> std::result::Result<Self, Status> {
        Handle::decode(bytes).map_err(|e| {
            Status::invalid_argument(format!(
                "malformed {what} (not one this server issued): {e}"
            ))
        })
    }
}

/// The Flight SQL service over one `SessionContext` (see [`service`]).
pub struct FlightSqlEndpoint {
    ctx: SessionContext,
    config: FlightSqlConfig,
    running: Arc<Semaphore>,
    bound: moka::future::Cache<u64, Bytes>,
    sql_info: SqlInfoData,
}

impl FlightSqlEndpoint {
    fn new(ctx: SessionContext, config: FlightSqlConfig) -> Result<Self> {
        let sql_info = sql_info(&ctx, &config)
            .map_err(|e| TraceLakeError::InvalidArgument(format!("Flight SQL info: {e}")))?;
        Ok(Self {
            running: Arc::new(Semaphore::new(config.max_concurrent_queries)),
            bound: moka::future::Cache::builder()
                .max_capacity(BOUND_PARAMETERS)
                .time_to_idle(BOUND_PARAMETERS_TTL)
                .build(),
            ctx,
            config,
            sql_info,
        })
    }

    /// A slot to run a query in, or `RESOURCE_EXHAUSTED`.
    fn slot(&self) -> std::result::Result<OwnedSemaphorePermit, Status> {
        self.running.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} queries are running, the most this endpoint runs at once; retry later",
                self.config.max_concurrent_queries
            ))
        })
    }

    fn timed_out(&self) -> Status {
        Status::deadline_exceeded(format!(
            "the query ran longer than the endpoint's timeout ({:?})",
            self.config.query_timeout
        ))
    }

    /// `sql` planned, checked against what the endpoint accepts, with `parameters` bound.
    async fn plan(
        &self,
        sql: &str,
        parameters: Option<&RecordBatch>,
    ) -> std::result::Result<DataFrame, Status> {
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let dialect = dialect.to_string();
        let sql = positional_placeholders(sql, &dialect)?;
        if let Some(batch) = parameters {
            if batch.num_rows() != 1 {
                return Err(Status::invalid_argument(format!(
                    "bind one row of parameters to a query, not {}",
                    batch.num_rows()
                )));
            }
            if let Some(written) = with_literals(&sql, &dialect, batch)? {
                let plan = state
                    .create_logical_plan(&written)
                    .await
                    .map_err(|e| planning_status(&e))?;
                self.check(&plan)?;
                return Ok(DataFrame::new(state, plan));
            }
        }
        let plan = state
            .create_logical_plan(&sql)
            .await
            .map_err(|e| planning_status(&e))?;
        self.check(&plan)?;
        let plan = match parameters {
            Some(batch) => bind(plan, batch)?,
            None => plan,
        };
        Ok(DataFrame::new(state, plan))
    }

    /// Refuses what the endpoint does not run (see the module docs).
    fn check(&self, plan: &LogicalPlan) -> std::result::Result<(), Status> {
        let options = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(self.config.allow_insert)
            .with_allow_statements(false);
        let read_only = || {
            Status::permission_denied(
                "this Flight SQL endpoint is read-only: only queries run here (INSERT needs \
                 the endpoint started with --flight-sql-allow-insert; DDL, COPY and SET are \
                 never run)",
            )
        };
        if options.verify_plan(plan).is_err() {
            return Err(read_only());
        }
        let mut refused = false;
        let _ = plan.apply(|node| {
            refused |= match node {
                LogicalPlan::Copy(_) => true,
                LogicalPlan::Dml(dml) => !matches!(dml.op, WriteOp::Insert(_)),
                _ => false,
            };
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        if refused {
            return Err(Status::permission_denied(
                "this Flight SQL endpoint accepts INSERT and queries only (not COPY, UPDATE \
                 or DELETE)",
            ));
        }
        Ok(())
    }

    /// The parameters of `handle`: those it carries, else those kept for it.
    async fn parameters(
        &self,
        handle: &Handle,
    ) -> std::result::Result<Option<RecordBatch>, Status> {
        let bytes = if !handle.parameters.is_empty() {
            Some(handle.parameters.clone())
        } else if handle.id != 0 {
            self.bound.get(&handle.id).await
        } else {
            None
        };
        bytes.map(|b| decode_parameters(&b)).transpose()
    }

    /// The rows of `handle` as a Flight data stream.
    async fn rows(
        &self,
        handle: Handle,
    ) -> std::result::Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let permit = self.slot()?;
        let deadline = tokio::time::Instant::now() + self.config.query_timeout;
        let parameters = self.parameters(&handle).await?;
        let started = async {
            let frame = self.plan(&handle.sql, parameters.as_ref()).await?;
            // The schema `GetFlightInfo` announced (the logical plan's); clients check that
            // the batches have it.
            let schema = hydrated(frame.schema().as_arrow());
            let stream = frame
                .execute_stream()
                .await
                .map_err(|e| execution_status(&e))?;
            Ok::<_, Status>((schema, stream))
        };
        let (schema, stream) = tokio::time::timeout_at(deadline, started)
            .await
            .map_err(|_| self.timed_out())??;
        let batches = Deadline {
            schema: schema.clone(),
            inner: stream,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timeout: self.config.query_timeout,
            done: false,
            _permit: permit,
        };
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }

    /// Runs an update (`INSERT`) to its end: the rows it wrote.
    async fn update(
        &self,
        sql: &str,
        parameters: Option<&RecordBatch>,
    ) -> std::result::Result<i64, Status> {
        let _permit = self.slot()?;
        let run = async {
            let rows = match parameters {
                // One execution a row of parameters.
                Some(batch) => {
                    let mut total = 0;
                    for row in 0..batch.num_rows() {
                        let frame = self.plan(sql, Some(&batch.slice(row, 1))).await?;
                        total += written(frame).await?;
                    }
                    total
                }
                None => written(self.plan(sql, None).await?).await?,
            };
            Ok::<_, Status>(rows)
        };
        tokio::time::timeout(self.config.query_timeout, run)
            .await
            .map_err(|_| self.timed_out())?
    }

    /// The catalogs of the session, sorted (only `only` when given).
    fn catalogs(&self, only: Option<&str>) -> Vec<String> {
        let mut names = self.ctx.catalog_names();
        names.retain(|n| only.is_none_or(|o| o == n));
        names.sort();
        names
    }

    /// The schemas of catalog `name`, sorted, with DataFusion's `information_schema` when the
    /// session enables it (DataFusion adds it when a query names it, not to the catalog).
    fn schemas(&self, name: &str) -> Vec<(String, Arc<dyn datafusion::catalog::SchemaProvider>)> {
        let Some(catalog) = self.ctx.catalog(name) else {
            return Vec::new();
        };
        let mut names = catalog.schema_names();
        names.sort();
        let mut out: Vec<(String, Arc<dyn datafusion::catalog::SchemaProvider>)> = names
            .into_iter()
            .filter_map(|n| catalog.schema(&n).map(|s| (n, s)))
            .collect();
        let info = datafusion::catalog::information_schema::INFORMATION_SCHEMA;
        if self.ctx.state().config().information_schema() && !out.iter().any(|(n, _)| n == info) {
            let provider = datafusion::catalog::information_schema::InformationSchemaProvider::new(
                self.ctx.state().catalog_list().clone(),
            );
            out.push((info.to_string(), Arc::new(provider)));
            out.sort_by(|a, b| a.0.cmp(&b.0));
        }
        out
    }

    /// A `FlightInfo` for `schema` whose ticket is `handle`.
    fn info(
        &self,
        schema: &Schema,
        handle: &Handle,
        descriptor: FlightDescriptor,
    ) -> std::result::Result<FlightInfo, Status> {
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode_to_vec().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode the result's schema: {e}")))
            .map(|info| info.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    /// A metadata answer (one batch) as a Flight data stream.
    fn one_batch(
        schema: SchemaRef,
        batch: std::result::Result<RecordBatch, FlightError>,
    ) -> Response<<Self as FlightService>::DoGetStream> {
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async move { batch }))
            .map_err(Status::from);
        Response::new(Box::pin(stream))
    }

    /// A `FlightInfo` whose ticket is the metadata command `command` itself.
    fn metadata_info(
        schema: &Schema,
        command: Any,
        descriptor: FlightDescriptor,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(command.encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode a schema: {e}")))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }
}

/// The rows an `INSERT` plan reports (DataFusion's `count` column).
async fn written(frame: DataFrame) -> std::result::Result<i64, Status> {
    let batches = frame.collect().await.map_err(|e| execution_status(&e))?;
    let mut total = 0u64;
    for batch in &batches {
        if let Some(counts) = batch
            .columns()
            .first()
            .and_then(|c| c.as_primitive_opt::<UInt64Type>())
        {
            total += counts.iter().flatten().sum::<u64>();
        }
    }
    Ok(i64::try_from(total).unwrap_or(i64::MAX))
}

/// `schema` with dictionaries as their values (the encoder sends them so).
fn hydrated(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => f.as_ref().clone().with_data_type(*value.clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A statement's planning error: the client's (`INVALID_ARGUMENT`) unless it is ours.
fn planning_status(e: &DataFusionError) -> Status {
    match e.find_root() {
        DataFusionError::Plan(m) | DataFusionError::SQL(_, Some(m)) => {
            Status::invalid_argument(m.clone())
        }
        DataFusionError::SQL(e, None) => Status::invalid_argument(e.to_string()),
        DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) => {
            Status::invalid_argument(e.strip_backtrace())
        }
        _ => execution_status(e),
    }
}

fn execution_status(e: &DataFusionError) -> Status {
    match e.find_root() {
        DataFusionError::Plan(m) => Status::invalid_argument(m.clone()),
        DataFusionError::ResourcesExhausted(m) => Status::resource_exhausted(m.clone()),
        other => Status::internal(other.strip_backtrace()),
    }
}

/// The placeholders of `sql` (`?`, `$1`, `$name`), as byte ranges of the text and their
/// names, in order; found by DataFusion's SQL tokenizer, so a `?` inside a literal, a quoted
/// identifier or a comment is none.
fn placeholders(
    sql: &str,
    dialect: &str,
) -> std::result::Result<Vec<(std::ops::Range<usize>, String)>, Status> {
    if !sql.contains('?') && !sql.contains('$') {
        return Ok(Vec::new());
    }
    let dialect = datafusion::sql::sqlparser::dialect::dialect_from_str(dialect)
        .unwrap_or_else(|| Box::new(datafusion::sql::sqlparser::dialect::GenericDialect {}));
    let tokens = Tokenizer::new(dialect.as_ref(), sql)
        .tokenize_with_location()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    // Byte offset of each line's start (the tokenizer counts lines at '\n', columns in chars).
    let mut lines = vec![0usize];
    lines.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *lines.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let column = usize::try_from(column).ok()?.checked_sub(1)?;
        let rest = &sql[start..];
        match rest.char_indices().nth(column) {
            Some((i, _)) => Some(start + i),
            None => (rest.chars().count() == column).then_some(sql.len()),
        }
    };
    let mut out = Vec::new();
    for t in tokens {
        if let Token::Placeholder(name) = t.token {
            let at = offset(t.span.start.line, t.span.start.column)
                .filter(|&at| sql.get(at..at + name.len()) == Some(name.as_str()))
                .ok_or_else(|| {
                    Status::invalid_argument(format!("cannot locate the placeholder {name}"))
                })?;
            out.push((at..at + name.len(), name));
        }
    }
    Ok(out)
}

/// `sql` with each placeholder's text replaced by what `by` gives for (its position in
/// order, its name).
fn splice(
    sql: &str,
    found: &[(std::ops::Range<usize>, String)],
    mut by: impl FnMut(usize, &str) -> std::result::Result<String, Status>,
) -> std::result::Result<String, Status> {
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for (i, (range, name)) in found.iter().enumerate() {
        out.push_str(&sql[at..range.start]);
        out.push_str(&by(i, name)?);
        at = range.end;
    }
    out.push_str(&sql[at..]);
    Ok(out)
}

/// `sql` with its `?` placeholders numbered in order (`$1`, `$2`, ...), as DataFusion names
/// positional parameters; unchanged without any.
fn positional_placeholders(sql: &str, dialect: &str) -> std::result::Result<String, Status> {
    let found = placeholders(sql, dialect)?;
    if !found.iter().any(|(_, name)| name == "?") {
        return Ok(sql.to_string());
    }
    let mut n = 0;
    splice(sql, &found, |_, name| {
        Ok(if name == "?" {
            n += 1;
            format!("${n}")
        } else {
            name.to_string()
        })
    })
}

/// `value` as an SQL literal, for the types whose literal means exactly the value (`None`:
/// another type, bound to the plan instead).
fn sql_literal(value: &ScalarValue) -> Option<String> {
    if value.is_null() {
        return Some("NULL".into());
    }
    let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
    Some(match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => quoted(s),
        ScalarValue::Boolean(Some(b)) => if *b { "TRUE" } else { "FALSE" }.into(),
        ScalarValue::Int8(Some(v)) => format!("CAST({v} AS TINYINT)"),
        ScalarValue::Int16(Some(v)) => format!("CAST({v} AS SMALLINT)"),
        ScalarValue::Int32(Some(v)) => format!("CAST({v} AS INT)"),
        ScalarValue::Int64(Some(v)) => format!("CAST({v} AS BIGINT)"),
        ScalarValue::UInt8(Some(v)) => format!("CAST({v} AS TINYINT UNSIGNED)"),
        ScalarValue::UInt16(Some(v)) => format!("CAST({v} AS SMALLINT UNSIGNED)"),
        ScalarValue::UInt32(Some(v)) => format!("CAST({v} AS INT UNSIGNED)"),
        ScalarValue::UInt64(Some(v)) => format!("CAST({v} AS BIGINT UNSIGNED)"),
        ScalarValue::Float32(Some(v)) => format!("CAST({} AS REAL)", quoted(&v.to_string())),
        ScalarValue::Float64(Some(v)) => format!("CAST({} AS DOUBLE)", quoted(&v.to_string())),
        _ => return None,
    })
}

/// `sql` (placeholders `$1`..`$n`) with the one row of `batch` written in as literals, when
/// every parameter has a literal form: table functions take constants only, so a prepared
/// `trace_tree(?)` must be planned with its value. `None`: bind to the plan instead.
fn with_literals(
    sql: &str,
    dialect: &str,
    batch: &RecordBatch,
) -> std::result::Result<Option<String>, Status> {
    let found = placeholders(sql, dialect)?;
    let mut values = Vec::with_capacity(batch.num_columns());
    for (i, column) in batch.columns().iter().enumerate() {
        let value = ScalarValue::try_from_array(column.as_ref(), 0).map_err(|e| {
            Status::invalid_argument(format!("parameter {} cannot be read: {e}", i + 1))
        })?;
        match sql_literal(&value) {
            Some(literal) => values.push(literal),
            None => return Ok(None),
        }
    }
    let mut positions = Vec::with_capacity(found.len());
    for (_, name) in &found {
        match name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n >= 1 => positions.push(n),
            _ => return Ok(None),
        }
    }
    let wanted = positions.iter().copied().max().unwrap_or(0);
    if wanted != values.len() {
        return Err(Status::invalid_argument(format!(
            "the statement has {wanted} parameters, {} were bound",
            values.len()
        )));
    }
    splice(sql, &found, |i, _| Ok(values[positions[i] - 1].clone())).map(Some)
}

/// The `$1`..`$n` placeholders of `sql`: how many (the highest number).
fn placeholder_count(sql: &str, dialect: &str) -> std::result::Result<usize, Status> {
    Ok(placeholders(sql, dialect)?
        .iter()
        .filter_map(|(_, name)| name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()))
        .max()
        .unwrap_or(0))
}

/// The parameters of `plan`, in order (`$1`, `$2`, ...), as a schema (`Null`: a type the
/// planner could not infer).
fn parameter_schema(plan: &LogicalPlan) -> std::result::Result<Schema, Status> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| planning_status(&e))?;
    let mut named: Vec<(usize, String, DataType)> = types
        .into_iter()
        .map(|(name, t)| {
            let position = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            (position, name, t.unwrap_or(DataType::Null))
        })
        .collect();
    named.sort();
    Ok(Schema::new(
        named
            .into_iter()
            .map(|(_, name, t)| Field::new(name, t, true))
            .collect::<Vec<_>>(),
    ))
}

/// `plan` with the one row of `batch` bound to its parameters, each cast to the type the
/// planner inferred for it.
fn bind(plan: LogicalPlan, batch: &RecordBatch) -> std::result::Result<LogicalPlan, Status> {
    let expected = parameter_schema(&plan)?;
    if expected.fields().len() != batch.num_columns() {
        return Err(Status::invalid_argument(format!(
            "the statement has {} parameters, {} were bound",
            expected.fields().len(),
            batch.num_columns()
        )));
    }
    let mut values = Vec::with_capacity(batch.num_columns());
    for (i, (column, field)) in batch.columns().iter().zip(expected.fields()).enumerate() {
        let value = ScalarValue::try_from_array(column.as_ref(), 0).map_err(|e| {
            Status::invalid_argument(format!("parameter {} cannot be read: {e}", i + 1))
        })?;
        let value =
            if field.data_type() == &DataType::Null || &value.data_type() == field.data_type() {
                value
            } else {
                value.cast_to(field.data_type()).map_err(|e| {
                    Status::invalid_argument(format!(
                        "parameter {} ({}) is not a {}: {e}",
                        i + 1,
                        value.data_type(),
                        field.data_type()
                    ))
                })?
            };
        values.push(value);
    }
    plan.with_param_values(ParamValues::from(values))
        .map_err(|e| planning_status(&e))
}

/// The bound parameters of a handle, from their Arrow IPC stream.
fn decode_parameters(bytes: &Bytes) -> std::result::Result<RecordBatch, Status> {
    let bad = |e: &dyn std::fmt::Display| {
        Status::invalid_argument(format!("malformed parameters in the handle: {e}"))
    };
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.clone()), None)
            .map_err(|e| bad(&e))?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&e))?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| bad(&e))
}

fn encode_parameters(batch: &RecordBatch) -> std::result::Result<Bytes, Status> {
    let mut out = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
        .map_err(|e| Status::internal(e.to_string()))?;
    writer
        .write(batch)
        .and_then(|_| writer.finish())
        .map_err(|e| Status::internal(e.to_string()))?;
    drop(writer);
    Ok(out.into())
}

/// The parameter batches a client sends with `DoPut`, as one batch (bounded).
async fn received_parameters(
    request: Request<PeekableFlightDataStream>,
) -> std::result::Result<Option<RecordBatch>, Status> {
    let stream = request.into_inner().map_err(FlightError::from);
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(stream);
    let mut received: Vec<RecordBatch> = Vec::new();
    let mut values = 0usize;
    while let Some(batch) = batches.next().await {
        let batch = batch
            .map_err(|e| Status::invalid_argument(format!("malformed parameter batch: {e}")))?;
        values = values.saturating_add(batch.num_rows().saturating_mul(batch.num_columns()));
        if values > MAX_BOUND_VALUES {
            return Err(Status::invalid_argument(format!(
                "more than {MAX_BOUND_VALUES} parameter values bound at once"
            )));
        }
        received.push(batch);
    }
    let Some(first) = received.first() else {
        return Ok(None);
    };
    let schema = first.schema();
    arrow::compute::concat_batches(&schema, &received)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("parameter batches differ: {e}")))
}

/// The rows of `inner` until the deadline, then `DEADLINE_EXCEEDED`; holds the query's slot.
struct Deadline {
    /// What the batches are sent as.
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl Stream for Deadline {
    type Item = std::result::Result<RecordBatch, FlightError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            let timeout = self.timeout;
            return Poll::Ready(Some(Err(FlightError::Tonic(Box::new(
                Status::deadline_exceeded(format!(
                    "the query ran longer than the endpoint's timeout ({timeout:?})"
                )),
            )))));
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(FlightError::Tonic(Box::new(execution_status(
                    &e,
                ))))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(batch))) => Poll::Ready(Some(conform(batch, &self.schema))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `batch` as `schema`: relabelled when only nullability differs (the physical plan may know
/// a column holds no nulls), cast otherwise (dictionaries to their values).
fn conform(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, FlightError> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    match batch.clone().with_schema(schema.clone()) {
        Ok(relabelled) => Ok(relabelled),
        Err(_) => {
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        }
    }
}

/// What `GetSqlInfo` answers.
fn sql_info(
    ctx: &SessionContext,
    config: &FlightSqlConfig,
) -> std::result::Result<SqlInfoData, FlightError> {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "tracelake");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The Arrow format version (Schema.fbs).
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    builder.append(SqlInfo::FlightSqlServerReadOnly, !config.allow_insert);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(
        SqlInfo::FlightSqlServerStatementTimeout,
        i32::try_from(config.query_timeout.as_millis()).unwrap_or(i32::MAX),
    );
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, false);
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    // Every function of the session: DataFusion's and tracelake's, table functions included.
    let state = ctx.state();
    let mut functions: Vec<String> = state
        .scalar_functions()
        .keys()
        .chain(state.aggregate_functions().keys())
        .chain(state.window_functions().keys())
        .chain(state.table_functions().keys())
        .cloned()
        .collect();
    functions.sort();
    functions.dedup();
    builder.append(SqlInfo::SqlSystemFunctions, functions);
    builder.build()
}

fn table_type_name(t: TableType) -> &'static str {
    match t {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlEndpoint {
    type FlightService = FlightSqlEndpoint;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<
        Response<
            Pin<Box<dyn Stream<Item = std::result::Result<HandshakeResponse, Status>> + Send>>,
        >,
        Status,
    > {
        // The interceptor accepted the credentials; the answer is the bearer to use.
        drop(request);
        let token = self.config.bearer_token.clone().unwrap_or_default();
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response: Response<
            Pin<Box<dyn Stream<Item = std::result::Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::once(async { Ok(answer) })));
        if !token.is_empty()
            && let Ok(value) = MetadataValue::try_from(format!("Bearer {token}"))
        {
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let planned =
            tokio::time::timeout(self.config.query_timeout, self.plan(&query.query, None))
                .await
                .map_err(|_| self.timed_out())??;
        let schema = hydrated(planned.schema().as_arrow());
        let handle = Handle {
            sql: query.query,
            parameters: Bytes::new(),
            id: 0,
        };
        Ok(Response::new(self.info(
            &schema,
            &handle,
            request.into_inner(),
        )?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let mut handle = Handle::decode_from(
            &query.prepared_statement_handle,
            "prepared statement handle",
        )?;
        let parameters = self.parameters(&handle).await?;
        let planned = tokio::time::timeout(
            self.config.query_timeout,
            self.plan(&handle.sql, parameters.as_ref()),
        )
        .await
        .map_err(|_| self.timed_out())??;
        let schema = hydrated(planned.schema().as_arrow());
        // The ticket carries the parameters themselves.
        if let Some(batch) = &parameters {
            handle.parameters = encode_parameters(batch)?;
        }
        Ok(Response::new(self.info(
            &schema,
            &handle,
            request.into_inner(),
        )?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = Handle::decode_from(&ticket.statement_handle, "statement ticket")?;
        self.rows(handle).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = Handle::decode_from(
            &query.prepared_statement_handle,
            "prepared statement handle",
        )?;
        self.rows(handle).await
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> std::result::Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::invalid_argument(format!(
            "not a ticket this server issued (type {:?})",
            message.type_url
        )))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> std::result::Result<ActionCreatePreparedStatementResult, Status> {
        let planned =
            tokio::time::timeout(self.config.query_timeout, self.plan(&query.query, None))
                .await
                .map_err(|_| self.timed_out())?;
        let (schema, parameters) = match planned {
            Ok(planned) => (
                hydrated(planned.schema().as_arrow()),
                parameter_schema(planned.logical_plan())?,
            ),
            Err(e) => {
                // A statement whose parameters are arguments of a table function (constants
                // only) is planned once they are bound; its parameters' types are unknown
                // until then. Other errors are reported now.
                let dialect = self
                    .ctx
                    .state()
                    .config()
                    .options()
                    .sql_parser
                    .dialect
                    .to_string();
                let sql = positional_placeholders(&query.query, &dialect)?;
                let count = placeholder_count(&sql, &dialect)?;
                if count == 0 || e.code() == tonic::Code::PermissionDenied {
                    return Err(e);
                }
                let fields: Vec<Field> = (1..=count)
                    .map(|n| Field::new(format!("${n}"), DataType::Null, true))
                    .collect();
                (Arc::new(Schema::empty()), Schema::new(fields))
            }
        };
        let ipc = |schema: &Schema| -> std::result::Result<Bytes, Status> {
            let message: std::result::Result<IpcMessage, _> =
                SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into();
            message
                .map(|IpcMessage(bytes)| bytes)
                .map_err(|e| Status::internal(format!("cannot encode a schema: {e}")))
        };
        let handle = Handle {
            sql: query.query,
            parameters: Bytes::new(),
            id: rand::random::<u64>() | 1,
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode_to_vec().into(),
            dataset_schema: ipc(&schema)?,
            parameter_schema: if parameters.fields().is_empty() {
                Bytes::new()
            } else {
                ipc(&parameters)?
            },
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> std::result::Result<(), Status> {
        let handle = Handle::decode_from(
            &query.prepared_statement_handle,
            "prepared statement handle",
        )?;
        if handle.id != 0 {
            self.bound.invalidate(&handle.id).await;
        }
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<DoPutPreparedStatementResult, Status> {
        let mut handle = Handle::decode_from(
            &query.prepared_statement_handle,
            "prepared statement handle",
        )?;
        let Some(batch) = received_parameters(request).await? else {
            return Err(Status::invalid_argument("no parameters were sent"));
        };
        // Checked now, so that a wrong binding fails here rather than at the first fetch.
        let planned = self.plan(&handle.sql, Some(&batch)).await?;
        drop(planned);
        let bytes = encode_parameters(&batch)?;
        if handle.id != 0 {
            self.bound.insert(handle.id, bytes.clone()).await;
        }
        handle.parameters = bytes;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode_to_vec().into()),
        })
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        self.update(&command.query, None).await
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        let handle = Handle::decode_from(
            &query.prepared_statement_handle,
            "prepared statement handle",
        )?;
        let sent = received_parameters(request).await?;
        let parameters = match sent {
            Some(batch) => Some(batch),
            None => self.parameters(&handle).await?,
        };
        self.update(&handle.sql, parameters.as_ref()).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        Self::metadata_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&self.sql_info);
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Self::metadata_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for name in self.catalogs(None) {
            builder.append(name);
        }
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Self::metadata_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let catalogs = self.catalogs(query.catalog.as_deref());
        let mut builder = query.into_builder();
        for catalog_name in catalogs {
            for (schema, _) in self.schemas(&catalog_name) {
                builder.append(&catalog_name, schema);
            }
        }
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Self::metadata_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let catalogs = self.catalogs(query.catalog.as_deref());
        let mut builder = query.into_builder();
        for catalog_name in catalogs {
            for (schema_name, schema) in self.schemas(&catalog_name) {
                let mut tables = schema.table_names();
                tables.sort();
                for table_name in tables {
                    let table = schema
                        .table(&table_name)
                        .await
                        .map_err(|e| execution_status(&e))?;
                    let Some(table) = table else {
                        continue;
                    };
                    builder
                        .append(
                            &catalog_name,
                            &schema_name,
                            &table_name,
                            table_type_name(table.table_type()),
                            &hydrated(&table.schema()),
                        )
                        .map_err(|e| Status::internal(format!("GetTables: {e}")))?;
                }
            }
        }
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Self::metadata_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for t in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(t);
        }
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_positional_parameters_outside_literals() {
        assert_eq!(
            positional_placeholders(
                "SELECT * FROM spans WHERE a = ? AND b = '?' AND c > ?",
                "generic"
            )
            .unwrap(),
            "SELECT * FROM spans WHERE a = $1 AND b = '?' AND c > $2"
        );
        assert_eq!(
            positional_placeholders("SELECT 1", "generic").unwrap(),
            "SELECT 1"
        );
    }

    #[test]
    fn parameters_are_written_in_as_escaped_literals() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "a",
                Arc::new(arrow::array::StringArray::from(vec!["it's"])) as arrow::array::ArrayRef,
            ),
            (
                "b",
                Arc::new(arrow::array::Int64Array::from(vec![-3])) as arrow::array::ArrayRef,
            ),
        ])
        .unwrap();
        let sql =
            "SELECT 'é?' AS x, $2 AS n FROM t WHERE a = $1 AND b = 'it''s' -- $1\n AND c = $1";
        assert_eq!(
            with_literals(sql, "generic", &batch).unwrap().unwrap(),
            "SELECT 'é?' AS x, CAST(-3 AS BIGINT) AS n FROM t WHERE a = 'it''s' AND b = 'it''s' -- $1\n AND c = 'it''s'"
        );
        let error = with_literals("SELECT $1", "generic", &batch).unwrap_err();
        assert!(
            error.message().contains("1 parameters, 2 were bound"),
            "{error}"
        );
    }

    #[test]
    fn the_token_is_checked_as_bearer_or_basic_password() {
        let check = TokenCheck {
            token: Some(Arc::from("s3cret")),
        };
        assert!(check.accepts(Some("Bearer s3cret")));
        assert!(!check.accepts(Some("Bearer s3cre")));
        assert!(!check.accepts(None));
        let basic = base64::engine::general_purpose::STANDARD.encode("user:s3cret");
        assert!(check.accepts(Some(&format!("Basic {basic}"))));
        let wrong = base64::engine::general_purpose::STANDARD.encode("s3cret:x");
        assert!(!check.accepts(Some(&format!("Basic {wrong}"))));
        assert!(!check.accepts(Some("Basic !!!")));
        assert!(TokenCheck { token: None }.accepts(None));
    }

    #[test]
    fn malformed_handles_are_invalid_arguments() {
        let status = Handle::decode_from(&[0xff, 0xff, 0xff], "ticket").unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = decode_parameters(&Bytes::from_static(b"not ipc")).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
