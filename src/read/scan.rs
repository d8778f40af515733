//! The scan behind `spans`: from one version to an `ExecutionPlan` producing the SQL columns.
//!
//! With the trace-id index (every version without deletion vectors) the scan is tracelake's
//! own: a lookup by trace id reads only the row groups the index points at (through
//! [`LookupExec`] when every file has the storage layout), any other scan covers every file of
//! the snapshot, pruned by the translated filters against the row-group statistics and page
//! indexes of the footers the index holds. Versions with deletion vectors use deltalake's
//! scan. Either way the query path reads only files the snapshot names, and never the log.

use std::sync::Arc;

use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetAccessPlan;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column as PhysicalColumn};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use object_store::ObjectStore;

use super::attribute_filter::{AttributePrunedExec, AttributePruning, attribute_conditions, prune};
use super::attributes::NestedAttributes;
use super::dedicated_filter::{is_attribute_filter, reads_maps, substitute};
use super::file_schema;
use super::filters::{exact_ids, lookup_ids, start_bounds, translate_filter};
use super::index::{IndexedFile, TraceIdIndex};
use super::lookup_exec::LookupExec;
use super::reader::IndexedReaderFactory;
use crate::dedicated::DedicatedColumn;
use crate::schema::{AttributeLayout, col as c, sql_schema, storage_name};

/// The SQL columns a scan produces: indices into the SQL schema.
fn wanted(projection: Option<&Vec<usize>>) -> Vec<usize> {
    match projection {
        Some(p) => p.clone(),
        None => (0..sql_schema().fields().len()).collect(),
    }
}

/// Plans a scan of one version through its trace-id `index`, the table's files read through
/// `store` (registered under `store_url`), with the SQL `projection` and `filters` (which
/// DataFusion re-applies above: they only prune here).
pub(crate) async fn scan_index(
    index: &TraceIdIndex,
    store: &Arc<dyn ObjectStore>,
    store_url: &ObjectStoreUrl,
    state: &dyn Session,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let sql = sql_schema();
    let wanted = wanted(projection);
    let ids = lookup_ids(filters);
    let storage_filters: Vec<Expr> = filters.iter().filter_map(translate_filter).collect();
    // Filters on typed attribute values, applied here (reported exact; see
    // `dedicated_filter`).
    let exact_attributes: Vec<Expr> = filters
        .iter()
        .filter(|f| is_attribute_filter(f))
        .cloned()
        .collect();
    state
        .runtime_env()
        .register_object_store(store_url.as_ref(), store.clone());
    let bounds = start_bounds(filters);
    let mut scan_plan = match &ids {
        Some(ids) => index.plan(store, ids, &bounds).await?,
        None => index.plan_all(store, &bounds).await?,
    };
    // Row groups whose attribute bloom filters rule out a filter on attributes (a lookup by
    // id reads one or two row groups already).
    let pruned = match ids {
        Some(_) => AttributePruning::default(),
        None => {
            let conditions = attribute_conditions(filters);
            prune(store, &mut scan_plan, &conditions, &bounds).await?
        }
    };
    let with_pruned = |plan: Arc<dyn ExecutionPlan>| -> Arc<dyn ExecutionPlan> {
        if pruned.row_groups == 0 {
            plan
        } else {
            Arc::new(AttributePrunedExec::new(plan, pruned))
        }
    };
    // Both layouts have the same columns in the same order: one projection serves either.
    let file_schema = file_schema(AttributeLayout::Lean);
    let file_projection = |wanted: &[usize]| {
        wanted
            .iter()
            .map(|&i| file_schema.index_of(storage_name(sql.field(i).name())))
            .collect::<Result<Vec<_>, _>>()
    };
    if let Some(ids) = &ids
        && scan_plan.files.iter().all(|(file, _)| file.native)
    {
        // Already in the SQL names and types, and exactly the rows of `ids`; the attribute
        // filters read the maps (a lookup decodes a row group or two).
        let generic: Vec<Expr> = exact_attributes
            .iter()
            .map(|f| substitute(f, &[]))
            .collect();
        let read = with_columns_of(&wanted, &generic, &[]).0;
        let lookup = Arc::new(LookupExec::new(
            store.clone(),
            store_url.clone(),
            scan_plan.files,
            ids.clone(),
            file_projection(&read)?,
            Arc::new(sql.project(&read)?),
            index.decoded().cloned(),
        ));
        return filter_then_project(state, lookup, &generic, wanted.len());
    }
    let build = |wanted: &[usize]| {
        let projection = file_projection(wanted)?;
        if scan_plan.files.is_empty() {
            let empty = Arc::new(EmptyExec::new(Arc::new(file_schema.project(&projection)?)));
            return to_sql(empty, wanted);
        }
        // One parquet scan for each group of files of one attribute layout (a table created
        // before the lean layout has nested files only) and one set of dedicated columns
        // (the table's list when they were written), each in the SQL types.
        let mut groups: Vec<FileGroupKey> = Vec::new();
        for entry in &scan_plan.files {
            let (file, _) = entry;
            match groups
                .iter_mut()
                .find(|g| g.layout == file.layout && *g.dedicated == *file.dedicated)
            {
                Some(group) => group.files.push(entry.clone()),
                None => groups.push(FileGroupKey {
                    layout: file.layout,
                    dedicated: file.dedicated.clone(),
                    files: vec![entry.clone()],
                }),
            }
        }
        let mut plans = Vec::new();
        for group in groups {
            plans.push(group_scan(
                state,
                store,
                store_url,
                &group,
                ids.as_deref(),
                &storage_filters,
                wanted,
                &exact_attributes,
            )?);
        }
        UnionExec::try_new(plans)
    };
    let plan = match exact_ids(filters) {
        Some(ids) => only_ids(&wanted, &ids, build)?,
        None => build(&wanted)?,
    };
    Ok(with_pruned(plan))
}

/// Files of one attribute layout holding the same dedicated columns, with the row groups to
/// read.
struct FileGroupKey {
    layout: AttributeLayout,
    dedicated: Arc<[DedicatedColumn]>,
    files: Vec<(Arc<IndexedFile>, Vec<usize>)>,
}

/// `wanted` (indices into the SQL schema) followed by the other SQL columns `exprs` read, and
/// the positions in `held` of the dedicated columns they read.
fn with_columns_of(
    wanted: &[usize],
    exprs: &[Expr],
    held: &[DedicatedColumn],
) -> (Vec<usize>, Vec<usize>) {
    let sql = sql_schema();
    let mut read = wanted.to_vec();
    let mut used = Vec::new();
    for expr in exprs {
        for column in expr.column_refs() {
            if let Ok(i) = sql.index_of(&column.name) {
                if !read.contains(&i) {
                    read.push(i);
                }
            } else if let Some(p) = held.iter().position(|d| d.column_name() == column.name)
                && !used.contains(&p)
            {
                used.push(p);
            }
        }
    }
    (read, used)
}

/// The rows of `plan` that satisfy every one of `exprs` (on `plan`'s columns), as its first
/// `keep` columns.
fn filter_then_project(
    state: &dyn Session,
    plan: Arc<dyn ExecutionPlan>,
    exprs: &[Expr],
    keep: usize,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let Some(predicate) = datafusion::logical_expr::utils::conjunction(exprs.to_vec()) else {
        return Ok(plan);
    };
    let schema = plan.schema();
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let predicate = state.create_physical_expr(predicate, &df_schema)?;
    let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, plan)?);
    if schema.fields().len() == keep {
        return Ok(filtered);
    }
    first_columns(filtered, keep)
}

/// The first `keep` columns of `plan`.
fn first_columns(plan: Arc<dyn ExecutionPlan>, keep: usize) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema = plan.schema();
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = (0..keep)
        .map(|i| {
            let field = schema.field(i);
            (
                Arc::new(PhysicalColumn::new(field.name(), i)) as Arc<dyn PhysicalExpr>,
                field.name().clone(),
            )
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// Whether the parquet decoder's row filter evaluates `expr` (on the file columns `schema`)
/// itself: every column it reads is in `schema` and of a type the decoder filters by. Such a
/// filter, in the scan's predicate, drops exactly the rows it rejects before they are
/// decoded.
fn row_filter_applies(state: &dyn Session, expr: &Expr, schema: &arrow::datatypes::Schema) -> bool {
    let Ok(df_schema) = DFSchema::try_from(schema.clone()) else {
        return false;
    };
    if !expr
        .column_refs()
        .iter()
        .all(|c| df_schema.has_column_with_unqualified_name(&c.name))
    {
        return false;
    }
    state
        .create_physical_expr(expr.clone(), &df_schema)
        .is_ok_and(|physical| {
            datafusion::datasource::physical_plan::parquet::can_expr_be_pushed_down_with_schemas(
                &physical, schema,
            )
        })
}

/// The scan of one group of files as the SQL columns `wanted`, the attribute filters `exact`
/// applied (through the group's dedicated columns where it holds them).
#[allow(clippy::too_many_arguments)]
fn group_scan(
    state: &dyn Session,
    store: &Arc<dyn ObjectStore>,
    store_url: &ObjectStoreUrl,
    group: &FileGroupKey,
    ids: Option<&[String]>,
    storage_filters: &[Expr],
    wanted: &[usize],
    exact: &[Expr],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let sql = sql_schema();
    let held = &group.dedicated;
    let exprs: Vec<Expr> = exact.iter().map(|f| substitute(f, held)).collect();
    // Filters that read no time column are applied to the columns as stored, before the
    // conversion to the SQL types (typed accesses read a lean map as they read the SQL one):
    // the maps of rows they drop, and maps only they read, are never converted.
    let (early, late): (Vec<Expr>, Vec<Expr>) = exprs.iter().cloned().partition(|e| {
        !e.column_refs()
            .iter()
            .any(|col| col.name == c::START_TIME || col.name == c::END_TIME)
    });
    let base = file_schema(group.layout);
    let schema = if held.is_empty() {
        base.clone()
    } else {
        crate::dedicated::with_read_columns(&base, held)
    };
    // Of those, the ones that read no map and only columns the parquet decoder filters rows
    // by (primitive and dictionary columns): the scan's row filter applies them exactly
    // (`with_pushdown_filters`), so their columns are not produced for a filter above it
    // (a `count(*)` of a dedicated value decodes the column once).
    let (pushed, early): (Vec<Expr>, Vec<Expr>) = early
        .into_iter()
        .partition(|e| !reads_maps(e) && row_filter_applies(state, e, &schema));
    let (read_late, used_late) = with_columns_of(wanted, &late, held);
    let (read, mut used) = with_columns_of(&read_late, &early, held);
    for p in &used_late {
        if !used.contains(p) {
            used.push(*p);
        }
    }
    let mut projection = read
        .iter()
        .map(|&i| base.index_of(storage_name(sql.field(i).name())))
        .collect::<Result<Vec<_>, _>>()?;
    projection.extend(used.iter().map(|&p| base.fields().len() + p));
    // The other filters that read dedicated columns and no map prune row groups and pages
    // too (the pushed ones do as part of the scan's predicate).
    let mut pruning = storage_filters.to_vec();
    pruning.extend(
        exprs
            .iter()
            .filter(|e| !reads_maps(e) && !pushed.contains(e))
            .filter_map(translate_filter),
    );
    let plan = parquet_scan(
        state,
        store,
        store_url,
        &group.files,
        schema,
        ids,
        &pruning,
        &pushed,
        projection,
    )?;
    let width = plan.schema().fields().len();
    let plan = filter_then_project(state, plan, &early, width)?;
    let extras: Vec<String> = used_late.iter().map(|&p| held[p].column_name()).collect();
    let plan = to_sql_with(plan, &read_late, &extras)?;
    filter_then_project(state, plan, &late, wanted.len())
}

/// `trace_id IN (ids)`, `trace_id` being column `index` of `schema`.
fn id_in_list(
    index: usize,
    ids: &[String],
    schema: &arrow::datatypes::Schema,
) -> DfResult<Arc<dyn PhysicalExpr>> {
    datafusion::physical_expr::expressions::in_list(
        Arc::new(PhysicalColumn::new(c::TRACE_ID, index)),
        ids.iter()
            .map(|id| datafusion::physical_expr::expressions::lit(id.as_str()))
            .collect(),
        &false,
        schema,
    )
}

/// The rows of `ids` of the plan `build` makes for some SQL columns (indices into the SQL
/// schema), as the SQL columns `wanted`: the scan side of a trace-id filter DataFusion was
/// told is applied exactly. `trace_id` is read for the filter when `wanted` lacks it.
fn only_ids(
    wanted: &[usize],
    ids: &[String],
    build: impl FnOnce(&[usize]) -> DfResult<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let trace_id = sql_schema().index_of(c::TRACE_ID)?;
    let mut read = wanted.to_vec();
    let position = match wanted.iter().position(|&i| i == trace_id) {
        Some(p) => p,
        None => {
            read.push(trace_id);
            wanted.len()
        }
    };
    let plan = build(&read)?;
    let schema = plan.schema();
    let predicate = id_in_list(position, ids, &schema)?;
    let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, plan)?);
    if read.len() == wanted.len() {
        return Ok(filtered);
    }
    first_columns(filtered, wanted.len())
}

/// Plans a scan through deltalake's provider `delta` (storage schema), for versions the index
/// cannot serve (files with deletion vectors).
pub(crate) async fn scan_delta(
    delta: &Arc<dyn TableProvider>,
    state: &dyn Session,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let sql = sql_schema();
    let wanted = wanted(projection);
    let storage_filters: Vec<Expr> = filters.iter().filter_map(translate_filter).collect();
    let delta_schema = delta.schema();
    let exact = exact_ids(filters);
    let mut read = wanted.clone();
    let trace_id = sql.index_of(c::TRACE_ID)?;
    if exact.is_some() && !read.contains(&trace_id) {
        read.push(trace_id);
    }
    // Filters on typed attribute values are applied here, from the maps.
    let attributes: Vec<Expr> = filters
        .iter()
        .filter(|f| is_attribute_filter(f))
        .map(|f| substitute(f, &[]))
        .collect();
    let full = with_columns_of(&read, &attributes, &[]).0;
    let storage_projection = full
        .iter()
        .map(|&i| delta_schema.index_of(storage_name(sql.field(i).name())))
        .collect::<Result<Vec<_>, _>>()?;
    // With a filter applied here, the limit applies after it (above this scan).
    let limit = if exact.is_some() || !attributes.is_empty() {
        None
    } else {
        limit
    };
    let plan = delta
        .scan(state, Some(&storage_projection), &storage_filters, limit)
        .await?;
    let filtered =
        |read: &[usize]| filter_then_project(state, to_sql(plan, &full)?, &attributes, read.len());
    match exact {
        Some(ids) => only_ids(&wanted, &ids, filtered),
        None => filtered(&wanted),
    }
}

/// Storage names and types to the SQL ones.
fn to_sql(plan: Arc<dyn ExecutionPlan>, wanted: &[usize]) -> DfResult<Arc<dyn ExecutionPlan>> {
    to_sql_with(plan, wanted, &[])
}

/// Storage names and types to the SQL ones, followed by the columns `extras` of `plan` as
/// they are.
fn to_sql_with(
    plan: Arc<dyn ExecutionPlan>,
    wanted: &[usize],
    extras: &[String],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let sql = sql_schema();
    let input = plan.schema();
    let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(wanted.len());
    for &i in wanted {
        let field = sql.field(i);
        let index = input.index_of(storage_name(field.name()))?;
        let column: Arc<dyn PhysicalExpr> =
            Arc::new(PhysicalColumn::new(input.field(index).name(), index));
        let stored = input.field(index).data_type();
        let expr: Arc<dyn PhysicalExpr> = if stored == field.data_type() {
            column
        } else if crate::layout::holds_lean(stored) {
            Arc::new(NestedAttributes::try_new(column, field.name())?)
        } else {
            Arc::new(CastExpr::new(column, field.data_type().clone(), None))
        };
        exprs.push((expr, field.name().clone()));
    }
    for name in extras {
        let index = input.index_of(name)?;
        exprs.push((Arc::new(PhysicalColumn::new(name, index)), name.clone()));
    }
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// DataFusion's parquet scan of the row groups of `scanned` (files of `file_schema`), with the storage columns
/// `projection` (indices into the file schema), filtering rows to `ids` when given and pruning
/// with `filters` (on the storage schema; conjuncts on `span_date`, which files do not hold,
/// are left out: `start_time_unix_nano` carries the same bound), and applying `exact` (filters
/// [`row_filter_applies`] accepted) as the row filter. The footers come from the index.
#[allow(clippy::too_many_arguments)]
fn parquet_scan(
    state: &dyn Session,
    store: &Arc<dyn ObjectStore>,
    store_url: &ObjectStoreUrl,
    scanned: &[(Arc<IndexedFile>, Vec<usize>)],
    file_schema: arrow::datatypes::SchemaRef,
    ids: Option<&[String]>,
    filters: &[Expr],
    exact: &[Expr],
    projection: Vec<usize>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let mut files = Vec::with_capacity(scanned.len());
    for (entry, row_groups) in scanned {
        let mut access = ParquetAccessPlan::new_none(entry.row_groups.len());
        for &rg in row_groups {
            access.scan(rg);
        }
        let mut file = PartitionedFile::new(entry.location.to_string(), entry.size);
        file.extensions.insert(access);
        // A file tracelake wrote is read with the scan's types (dedicated strings as
        // dictionaries, see `dedicated::with_read_columns`) by the parquet reader itself;
        // another writer's file is read with its own and cast.
        if entry.native {
            file = file.with_arrow_schema(file_schema.clone());
        }
        files.push(file);
    }
    let df_schema = DFSchema::try_from(file_schema.as_ref().clone())?;
    let mut conjuncts: Vec<Expr> = filters
        .iter()
        .flat_map(|f| datafusion::logical_expr::utils::split_conjunction_owned(f.clone()))
        .filter(|e| {
            e.column_refs()
                .iter()
                .all(|col| df_schema.has_column_with_unqualified_name(&col.name))
        })
        .collect();
    if let Some(ids) = ids {
        conjuncts
            .push(col(c::TRACE_ID).in_list(ids.iter().map(|id| lit(id.as_str())).collect(), false));
    }
    // Pruning only: a predicate DataFusion cannot build here is left out (the filters are
    // re-applied above the scan).
    let pruning = datafusion::logical_expr::utils::conjunction(conjuncts)
        .and_then(|expr| state.create_physical_expr(expr, &df_schema).ok());
    // The filters the row filter applies exactly: an error here is the query's.
    let mut predicates = exact
        .iter()
        .map(|e| state.create_physical_expr(e.clone(), &df_schema))
        .collect::<DfResult<Vec<_>>>()?;
    predicates.extend(pruning);
    let predicate = datafusion::physical_expr::utils::conjunction_opt(predicates);
    let factory = IndexedReaderFactory {
        store: store.clone(),
        files: scanned
            .iter()
            .map(|(f, _)| (f.location.clone(), f.clone()))
            .collect(),
    };
    let mut source = ParquetSource::new(file_schema)
        .with_parquet_file_reader_factory(Arc::new(factory))
        .with_pushdown_filters(true)
        .with_enable_page_index(true)
        .with_bloom_filter_on_read(false);
    if let Some(predicate) = predicate {
        source = source.with_predicate(predicate);
    }
    // Files spread over the session's target partitions, so full scans run in parallel.
    let partitions = state
        .config()
        .target_partitions()
        .clamp(1, files.len().max(1));
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
    for (i, file) in files.into_iter().enumerate() {
        groups[i % partitions].push(file);
    }
    let config = FileScanConfigBuilder::new(store_url.clone(), Arc::new(source))
        .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
        .with_projection_indices(Some(projection))?
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

/// One file of a lookup shipped to another node: its path in the root store, its size, how
/// many row groups it has and which of them to read.
#[cfg(feature = "cluster")]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ShippedFile {
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) row_groups: usize,
    pub(crate) read: Vec<usize>,
    /// How the file holds attribute maps.
    pub(crate) layout: AttributeLayout,
}

/// A lookup planned elsewhere ([`LookupExec`], whose footers stay with the node that planned
/// it), read with DataFusion's standard parquet scan: the same files and row groups, the rows
/// of `ids`, the file columns `projection` produced as the SQL columns `wanted`, in one
/// partition. The files are read through the store registered under `store_url`.
#[cfg(feature = "cluster")]
pub(crate) fn shipped_lookup_scan(
    store_url: &ObjectStoreUrl,
    files: &[ShippedFile],
    ids: &[String],
    projection: Vec<usize>,
    wanted: &[usize],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    // Both layouts have the same columns in the same order.
    let columns = file_schema(AttributeLayout::Lean);
    let sql_columns = sql_schema().fields().len();
    if let Some(bad) = wanted.iter().find(|&&i| i >= sql_columns) {
        return datafusion::common::plan_err!(
            "shipped lookup names column {bad} of spans, which has {sql_columns}"
        );
    }
    if let Some(bad) = projection.iter().find(|&&i| i >= columns.fields().len()) {
        return datafusion::common::plan_err!(
            "shipped lookup names file column {bad}, files have {}",
            columns.fields().len()
        );
    }
    let id_column = columns.index_of(c::TRACE_ID)?;
    // Exactly the rows of `ids` (the trace-id filter is not applied again above the scan).
    only_ids(wanted, ids, |read| {
        let mut projection = projection;
        if read.len() > wanted.len() {
            projection.push(id_column);
        }
        if files.is_empty() {
            let empty = Arc::new(EmptyExec::new(Arc::new(columns.project(&projection)?)));
            return to_sql(empty, read);
        }
        // One parquet scan for each attribute layout among the files.
        let mut plans = Vec::new();
        for layout in [AttributeLayout::Lean, AttributeLayout::Nested] {
            let file_schema = file_schema(layout);
            let mut group = Vec::new();
            for shipped in files.iter().filter(|f| f.layout == layout) {
                let mut access = ParquetAccessPlan::new_none(shipped.row_groups);
                for &rg in &shipped.read {
                    if rg >= shipped.row_groups {
                        return datafusion::common::plan_err!(
                            "shipped lookup names row group {rg} of {}, which has {}",
                            shipped.path,
                            shipped.row_groups
                        );
                    }
                    access.scan(rg);
                }
                let mut file = PartitionedFile::new(shipped.path.clone(), shipped.size);
                file.extensions.insert(access);
                group.push(file);
            }
            if group.is_empty() {
                continue;
            }
            let predicate = id_in_list(id_column, ids, &file_schema)?;
            let source = ParquetSource::new(file_schema.clone())
                .with_pushdown_filters(true)
                .with_enable_page_index(true)
                .with_bloom_filter_on_read(false)
                .with_predicate(predicate);
            let config = FileScanConfigBuilder::new(store_url.clone(), Arc::new(source))
                .with_file_groups(vec![FileGroup::new(group)])
                .with_projection_indices(Some(projection.clone()))?
                .build();
            plans.push(to_sql(DataSourceExec::from_data_source(config), read)?);
        }
        UnionExec::try_new(plans)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, RecordBatch};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::prelude::SessionContext;

    /// `only_ids` keeps exactly the rows of the ids, as the wanted columns, whether or not
    /// they include `trace_id`: the guarantee behind reporting the trace-id filter as exact on
    /// the paths that are not `LookupExec` (other files, deletion vectors, shipped lookups).
    #[tokio::test]
    async fn only_ids_keeps_exactly_the_rows_of_the_ids() {
        let spans = crate::synth::traces(
            3,
            crate::synth::TraceShape::Fixed(4),
            6,
            1_700_000_000_000_000_000,
            1_000_000_000,
        );
        let batch = crate::span::spans_to_batch(&spans).unwrap();
        let sql = sql_schema();
        let ids = vec![spans[0].trace_id.clone(), spans[9].trace_id.clone()];
        let ctx = SessionContext::new();
        // The spans' SQL columns `read`, in memory.
        let in_memory = |read: &[usize]| -> DfResult<Arc<dyn ExecutionPlan>> {
            let columns = read
                .iter()
                .map(|&i| batch.column_by_name(sql.field(i).name()).unwrap().clone())
                .collect();
            let projected = RecordBatch::try_new(Arc::new(sql.project(read)?), columns)?;
            let schema = projected.schema();
            Ok(MemorySourceConfig::try_new_exec(&[vec![projected]], schema, None)? as _)
        };
        let name = sql.index_of(c::NAME).unwrap();
        let span_id = sql.index_of(c::SPAN_ID).unwrap();
        let trace_id = sql.index_of(c::TRACE_ID).unwrap();
        for wanted in [vec![name, span_id], vec![span_id, trace_id, name]] {
            let plan = only_ids(&wanted, &ids, in_memory).unwrap();
            let out = datafusion::physical_plan::collect(plan, ctx.task_ctx())
                .await
                .unwrap();
            let out = arrow::compute::concat_batches(&out[0].schema(), &out).unwrap();
            assert_eq!(out.schema().as_ref(), &sql.project(&wanted).unwrap());
            let mut got: Vec<&str> = out
                .column_by_name(c::SPAN_ID)
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(Option::unwrap)
                .collect();
            got.sort();
            let mut expected: Vec<&str> = spans
                .iter()
                .filter(|s| ids.contains(&s.trace_id))
                .map(|s| s.span_id.as_str())
                .collect();
            expected.sort();
            assert_eq!(expected.len(), 8);
            assert_eq!(got, expected);
        }
        // No ids (a malformed shipped lookup could name none): no rows, no panic.
        let plan = only_ids(&[span_id], &[], in_memory);
        if let Ok(plan) = plan {
            let out = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await;
            assert_eq!(
                out.map(|b| b.iter().map(|b| b.num_rows()).sum::<usize>())
                    .ok(),
                Some(0)
            );
        }
    }
}
