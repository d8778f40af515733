//! Dedicated attribute columns: span and resource attributes that a table stores a second
//! time, in typed columns of their own, so that a filter on them reads one small,
//! dictionary-encoded column with statistics and a page index instead of decoding attribute
//! maps.
//!
//! The list is a property of the table ([`DEDICATED_COLUMNS_PROPERTY`] in the Delta metadata's
//! configuration), set at create ([`TableOptions::dedicated_columns`], the
//! [OpenTelemetry semantic conventions](DedicatedColumns::defaults) by default) and changed
//! with [`TraceTable::set_dedicated_columns`] or `tracelake dedicated`. A change affects the
//! files written after it; each file records, in its parquet footer, the dedicated columns it
//! holds ([`FILE_METADATA_KEY`]), and a file that does not hold one answers from the
//! attribute maps. SQL does not see these columns: `attributes` and `resource_attributes`
//! hold every value as before, and the filters of `spans` use a file's dedicated column where
//! it has one (see docs/architecture.md, "Dedicated attribute columns").
//!
//! A column holds what the typed accessor returns for its key: `attr_str` for `string`,
//! `attr_int` for `int`, `attr_double` for `double` (int values widened), `attr_bool` for
//! `bool`. The columns live in the data files only, after the table's columns: the table's
//! Delta schema does not name them, so other Delta readers ignore them.
//!
//! [`TableOptions::dedicated_columns`]: crate::table::TableOptions::dedicated_columns
//! [`TraceTable::set_dedicated_columns`]: crate::table::TraceTable::set_dedicated_columns

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, MapArray,
    StringBuilder, StructArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::{Result, TraceLakeError};
use crate::schema::col;

/// The Delta table property holding a table's dedicated columns, as
/// [`DedicatedColumns`]'s text form (`span.http.route:string,resource.host.name:string`).
pub const DEDICATED_COLUMNS_PROPERTY: &str = "tracelake.dedicatedColumns";

/// The parquet footer key under which a data file lists the dedicated columns it holds (JSON).
pub const FILE_METADATA_KEY: &str = "tracelake.dedicated_columns";

/// Most dedicated columns a table can have (Tempo allows 20 string and 5 int a scope).
pub const MAX_DEDICATED_COLUMNS: usize = 64;

/// Which attribute map a dedicated column copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributeScope {
    /// `attributes` (the span's own).
    Span,
    /// `resource_attributes`.
    Resource,
}

impl AttributeScope {
    /// The SQL column of the map.
    pub fn column(self) -> &'static str {
        match self {
            AttributeScope::Span => col::ATTRIBUTES,
            AttributeScope::Resource => col::RESOURCE_ATTRIBUTES,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AttributeScope::Span => "span",
            AttributeScope::Resource => "resource",
        }
    }

    /// The scope of the map column `column`.
    pub(crate) fn of_column(column: &str) -> Option<Self> {
        match column {
            col::ATTRIBUTES => Some(AttributeScope::Span),
            col::RESOURCE_ATTRIBUTES => Some(AttributeScope::Resource),
            _ => None,
        }
    }
}

/// The type of a dedicated column, and which values of its key it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DedicatedType {
    /// String values (`attr_str`), as `Utf8`.
    String,
    /// Int values (`attr_int`), as `Int64`.
    Int,
    /// Double values and int values widened (`attr_double`), as `Float64`.
    Double,
    /// Bool values (`attr_bool`), as `Boolean`.
    Bool,
}

impl DedicatedType {
    fn name(self) -> &'static str {
        match self {
            DedicatedType::String => "string",
            DedicatedType::Int => "int",
            DedicatedType::Double => "double",
            DedicatedType::Bool => "bool",
        }
    }

    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            DedicatedType::String => DataType::Utf8,
            DedicatedType::Int => DataType::Int64,
            DedicatedType::Double => DataType::Float64,
            DedicatedType::Bool => DataType::Boolean,
        }
    }

    /// The typed accessor whose values the column holds.
    pub fn accessor(self) -> &'static str {
        match self {
            DedicatedType::String => "attr_str",
            DedicatedType::Int => "attr_int",
            DedicatedType::Double => "attr_double",
            DedicatedType::Bool => "attr_bool",
        }
    }

    /// The field of an attribute value that `attributes['k'][field]` reads and that equals
    /// the column's value (values are stored with only their type's field set), if any
    /// (`double` has none: the column also holds int values).
    pub(crate) fn value_field(self) -> Option<&'static str> {
        match self {
            DedicatedType::String => Some("string_value"),
            DedicatedType::Int => Some("int_value"),
            DedicatedType::Bool => Some("bool_value"),
            DedicatedType::Double => None,
        }
    }
}

/// One dedicated column: the attribute `key` of `scope`, of type `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DedicatedColumn {
    pub scope: AttributeScope,
    pub key: String,
    #[serde(rename = "type")]
    pub kind: DedicatedType,
}

impl DedicatedColumn {
    /// A dedicated column of `key` in `scope`.
    pub fn new(scope: AttributeScope, key: impl Into<String>, kind: DedicatedType) -> Self {
        Self {
            scope,
            key: key.into(),
            kind,
        }
    }

    /// The column's name in the data files: `__dedicated_<scope>_<key>`, every character of
    /// the key other than an ASCII letter or digit written as `_`.
    pub fn column_name(&self) -> String {
        let key: String = self
            .key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("__dedicated_{}_{key}", self.scope.name())
    }

    /// The column's Arrow field.
    pub fn field(&self) -> Field {
        Field::new(self.column_name(), self.kind.data_type(), true)
    }
}

impl fmt::Display for DedicatedColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}:{}", self.scope.name(), self.key, self.kind.name())
    }
}

/// For each of `keys`, the entry index of its first entry in each row of `map`, found in one
/// pass over the entries.
fn first_entries(map: &MapArray, keys: &[&str]) -> Result<Vec<Vec<Option<u32>>>> {
    let names = map.keys().as_string_opt::<i32>().ok_or_else(|| {
        TraceLakeError::SchemaMismatch("attribute map keys are not strings".into())
    })?;
    let lookup: std::collections::HashMap<&str, usize> =
        keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    // A key whose length no dedicated key has is skipped without hashing.
    let mut lengths = [false; 129];
    for key in keys {
        lengths[key.len().min(128)] = true;
    }
    let mut found = vec![vec![None; map.len()]; keys.len()];
    let offsets = map.value_offsets();
    for row in 0..map.len() {
        if map.is_null(row) {
            continue;
        }
        for j in offsets[row] as usize..offsets[row + 1] as usize {
            if names.is_null(j) {
                continue;
            }
            let name = names.value(j);
            if !lengths[name.len().min(128)] {
                continue;
            }
            if let Some(&c) = lookup.get(name) {
                let slot = &mut found[c][row];
                if slot.is_none() {
                    *slot = Some(j as u32);
                }
            }
        }
    }
    Ok(found)
}

/// The typed values of the entries `found` (one a row) of `map`.
fn values_of(map: &MapArray, found: &[Option<u32>], kind: DedicatedType) -> Result<ArrayRef> {
    let values: &StructArray = map.values().as_struct();
    let field = |name: &str| {
        values.column_by_name(name).cloned().ok_or_else(|| {
            TraceLakeError::SchemaMismatch(format!("an attribute value has no field {name}"))
        })
    };
    let types = field("type")?;
    let types = types.as_string_opt::<i32>().ok_or_else(|| {
        TraceLakeError::SchemaMismatch("attribute value types are not strings".into())
    })?;
    let type_is =
        |j: usize, t: &str| values.is_valid(j) && types.is_valid(j) && types.value(j) == t;
    let found = found.iter().map(|j| j.map(|j| j as usize));
    Ok(match kind {
        DedicatedType::String => {
            let strings = field("string_value")?;
            let strings = strings.as_string::<i32>();
            let mut b = StringBuilder::with_capacity(map.len(), 0);
            for j in found {
                b.append_option(
                    j.filter(|&j| type_is(j, "string") && strings.is_valid(j))
                        .map(|j| strings.value(j)),
                );
            }
            Arc::new(b.finish())
        }
        DedicatedType::Int => {
            let ints = field("int_value")?;
            let ints = ints.as_primitive::<Int64Type>();
            let mut b = Int64Builder::with_capacity(map.len());
            for j in found {
                b.append_option(
                    j.filter(|&j| type_is(j, "int") && ints.is_valid(j))
                        .map(|j| ints.value(j)),
                );
            }
            Arc::new(b.finish())
        }
        DedicatedType::Double => {
            let ints = field("int_value")?;
            let ints = ints.as_primitive::<Int64Type>();
            let doubles = field("double_value")?;
            let doubles = doubles.as_primitive::<Float64Type>();
            let mut b = Float64Builder::with_capacity(map.len());
            for j in found {
                b.append_option(j.and_then(|j| {
                    if type_is(j, "double") && doubles.is_valid(j) {
                        Some(doubles.value(j))
                    } else if type_is(j, "int") && ints.is_valid(j) {
                        Some(ints.value(j) as f64)
                    } else {
                        None
                    }
                }));
            }
            Arc::new(b.finish())
        }
        DedicatedType::Bool => {
            let bools = field("bool_value")?;
            let bools = bools.as_boolean();
            let mut b = BooleanBuilder::with_capacity(map.len());
            for j in found {
                b.append_option(
                    j.filter(|&j| type_is(j, "bool") && bools.is_valid(j))
                        .map(|j| bools.value(j)),
                );
            }
            Arc::new(b.finish())
        }
    })
}

/// The values of `columns` for the rows of `batch` (which holds the map columns of their
/// scopes), in order: one pass over each map's entries.
pub(crate) fn values_in(batch: &RecordBatch, columns: &[DedicatedColumn]) -> Result<Vec<ArrayRef>> {
    let mut out: Vec<Option<ArrayRef>> = vec![None; columns.len()];
    for scope in [AttributeScope::Span, AttributeScope::Resource] {
        let wanted: Vec<usize> = (0..columns.len())
            .filter(|&i| columns[i].scope == scope)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let map = batch
            .column_by_name(scope.column())
            .and_then(|c| c.as_map_opt())
            .ok_or_else(|| {
                TraceLakeError::SchemaMismatch(format!(
                    "dedicated columns: no map column {}",
                    scope.column()
                ))
            })?;
        let keys: Vec<&str> = wanted.iter().map(|&i| columns[i].key.as_str()).collect();
        let found = first_entries(map, &keys)?;
        for (&i, found) in wanted.iter().zip(found) {
            out[i] = Some(values_of(map, &found, columns[i].kind)?);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// A table's dedicated columns: at most [`MAX_DEDICATED_COLUMNS`], each key at most once a
/// scope, no two with the same column name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DedicatedColumns(Vec<DedicatedColumn>);

/// The span attributes [`DedicatedColumns::defaults`] dedicates (OpenTelemetry semantic
/// conventions: HTTP, database, RPC, messaging, errors).
pub const DEFAULT_SPAN_COLUMNS: [(&str, DedicatedType); 10] = [
    ("http.route", DedicatedType::String),
    ("http.request.method", DedicatedType::String),
    ("http.response.status_code", DedicatedType::Int),
    ("url.path", DedicatedType::String),
    ("db.system", DedicatedType::String),
    ("db.operation.name", DedicatedType::String),
    ("rpc.service", DedicatedType::String),
    ("rpc.method", DedicatedType::String),
    ("messaging.destination.name", DedicatedType::String),
    ("error.type", DedicatedType::String),
];

/// The resource attributes [`DedicatedColumns::defaults`] dedicates.
pub const DEFAULT_RESOURCE_COLUMNS: [&str; 8] = [
    "service.name",
    "service.namespace",
    "service.version",
    "deployment.environment.name",
    "k8s.namespace.name",
    "k8s.pod.name",
    "host.name",
    "cloud.region",
];

impl DedicatedColumns {
    /// No dedicated columns.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// The columns new tables get: [`DEFAULT_SPAN_COLUMNS`] and [`DEFAULT_RESOURCE_COLUMNS`]
    /// (strings).
    pub fn defaults() -> Self {
        let mut columns: Vec<DedicatedColumn> = DEFAULT_SPAN_COLUMNS
            .iter()
            .map(|(key, kind)| DedicatedColumn::new(AttributeScope::Span, *key, *kind))
            .collect();
        columns.extend(DEFAULT_RESOURCE_COLUMNS.iter().map(|key| {
            DedicatedColumn::new(AttributeScope::Resource, *key, DedicatedType::String)
        }));
        Self(columns)
    }

    /// Checks `columns` (see [`DedicatedColumns`]).
    pub fn new(columns: Vec<DedicatedColumn>) -> Result<Self> {
        if columns.len() > MAX_DEDICATED_COLUMNS {
            return Err(invalid(format!(
                "{} dedicated columns; at most {MAX_DEDICATED_COLUMNS}",
                columns.len()
            )));
        }
        for (i, column) in columns.iter().enumerate() {
            if column.key.is_empty() {
                return Err(invalid("a dedicated column needs a key".into()));
            }
            if column.key.contains(',') || column.key.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "dedicated column key {:?} has a comma or a control character",
                    column.key
                )));
            }
            for earlier in &columns[..i] {
                if earlier.scope == column.scope && earlier.key == column.key {
                    return Err(invalid(format!(
                        "{}.{} is dedicated twice",
                        column.scope.name(),
                        column.key
                    )));
                }
                if earlier.column_name() == column.column_name() {
                    return Err(invalid(format!(
                        "{earlier} and {column} would share the column {}",
                        column.column_name()
                    )));
                }
            }
        }
        Ok(Self(columns))
    }

    /// The text form: `scope.key:type` entries separated by commas (`scope` is `span` or
    /// `resource`, `type` is `string`, `int`, `double` or `bool`; `:string` may be left out),
    /// for example `span.http.route:string,span.http.response.status_code:int`. An empty
    /// text is no columns.
    pub fn parse(text: &str) -> Result<Self> {
        let mut columns = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, kind) = match entry.rsplit_once(':') {
                Some((name, kind)) => (name, kind.trim()),
                None => (entry, "string"),
            };
            let kind = match kind {
                "string" => DedicatedType::String,
                "int" => DedicatedType::Int,
                "double" => DedicatedType::Double,
                "bool" => DedicatedType::Bool,
                other => {
                    return Err(invalid(format!(
                        "dedicated column {entry:?}: type {other:?} is not one of string, int, \
                         double, bool"
                    )));
                }
            };
            let (scope, key) = if let Some(key) = name.strip_prefix("span.") {
                (AttributeScope::Span, key)
            } else if let Some(key) = name.strip_prefix("resource.") {
                (AttributeScope::Resource, key)
            } else {
                return Err(invalid(format!(
                    "dedicated column {entry:?} must start with span. or resource."
                )));
            };
            columns.push(DedicatedColumn::new(scope, key.trim(), kind));
        }
        Self::new(columns)
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[DedicatedColumn] {
        &self.0
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The columns of a table's Delta configuration: none when the property is absent
    /// (tables created before dedicated columns).
    pub(crate) fn of_configuration(value: Option<&str>) -> Result<Self> {
        match value {
            None => Ok(Self::none()),
            Some(text) => Self::parse(text),
        }
    }
}

impl fmt::Display for DedicatedColumns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, column) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{column}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for DedicatedColumns {
    type Err = TraceLakeError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

fn invalid(message: String) -> TraceLakeError {
    TraceLakeError::InvalidArgument(message)
}

/// What a data file's footer says about its dedicated columns.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FileColumns {
    /// The format of this record (1).
    version: u32,
    columns: Vec<DedicatedColumn>,
}

/// The footer value recording `columns` (see [`FILE_METADATA_KEY`]).
pub(crate) fn file_metadata_value(columns: &[DedicatedColumn]) -> String {
    serde_json::to_string(&FileColumns {
        version: 1,
        columns: columns.to_vec(),
    })
    .unwrap_or_default()
}

/// The dedicated columns a data file holds: those its footer lists that its schema has, with
/// their type, after the table's columns (`base` of them). Anything else (another writer's
/// metadata, a damaged value) is no dedicated column: the file answers from the maps.
pub(crate) fn of_file(
    key_value: Option<&Vec<parquet::file::metadata::KeyValue>>,
    schema: &Schema,
    base: usize,
) -> Vec<DedicatedColumn> {
    let Some(value) = key_value
        .into_iter()
        .flatten()
        .find(|kv| kv.key == FILE_METADATA_KEY)
        .and_then(|kv| kv.value.as_deref())
    else {
        return Vec::new();
    };
    let Ok(record) = serde_json::from_str::<FileColumns>(value) else {
        return Vec::new();
    };
    if record.version != 1 {
        return Vec::new();
    }
    record
        .columns
        .into_iter()
        .filter(|c| {
            schema
                .index_of(&c.column_name())
                .is_ok_and(|i| i >= base && schema.field(i).data_type() == &c.kind.data_type())
        })
        .collect()
}

/// The columns of `dedicated` that hold a value in `batch`.
pub(crate) fn held_in(
    dedicated: &DedicatedColumns,
    batch: &RecordBatch,
) -> Result<Vec<DedicatedColumn>> {
    let values = values_in(batch, dedicated.columns())?;
    Ok(dedicated
        .columns()
        .iter()
        .zip(values)
        .filter(|(_, v)| v.null_count() < v.len())
        .map(|(c, _)| c.clone())
        .collect())
}

/// `schema` with the fields of `columns` after its own.
pub(crate) fn with_columns(schema: &Schema, columns: &[DedicatedColumn]) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.extend(columns.iter().map(|c| Arc::new(c.field())));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `schema` with the fields of `columns` after its own, as the scan reads them: string
/// columns as `Dictionary(Int32, Utf8)`, so that the parquet reader hands over a chunk's
/// dictionary and its keys instead of decoding every value (a filter compares the few
/// dictionary values, then selects keys; most rows of a dedicated column are null).
pub(crate) fn with_read_columns(schema: &Schema, columns: &[DedicatedColumn]) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.extend(columns.iter().map(|c| {
        Arc::new(match c.kind {
            DedicatedType::String => Field::new(
                c.column_name(),
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            _ => c.field(),
        })
    }));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` with the values of `columns` after its own columns.
pub(crate) fn add_columns(batch: RecordBatch, columns: &[DedicatedColumn]) -> Result<RecordBatch> {
    if columns.is_empty() {
        return Ok(batch);
    }
    let schema = with_columns(batch.schema().as_ref(), columns);
    let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
    arrays.extend(values_in(&batch, columns)?);
    Ok(RecordBatch::try_new(schema, arrays)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_round_trips_and_bad_lists_are_refused() {
        let defaults = DedicatedColumns::defaults();
        assert_eq!(defaults.columns().len(), 18);
        assert_eq!(
            DedicatedColumns::parse(&defaults.to_string()).unwrap(),
            defaults
        );
        let parsed =
            DedicatedColumns::parse(" span.http.route , resource.host.name:string,span.x:int")
                .unwrap();
        assert_eq!(
            parsed.to_string(),
            "span.http.route:string,resource.host.name:string,span.x:int"
        );
        assert_eq!(
            parsed.columns()[0].column_name(),
            "__dedicated_span_http_route"
        );
        assert!(DedicatedColumns::parse("").unwrap().is_empty());
        for bad in [
            "http.route",
            "span.http.route:float",
            "span.a,span.a:int",
            "span.a.b,span.a_b",
            "span.",
        ] {
            let err = DedicatedColumns::parse(bad).unwrap_err();
            assert!(
                matches!(err, TraceLakeError::InvalidArgument(_)),
                "{bad}: {err}"
            );
        }
    }
}
