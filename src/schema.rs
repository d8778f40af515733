//! The span schema: the OpenTelemetry span model as SQL sees it, and as the Delta table
//! stores it.
//!
//! SQL sees `start_time` / `end_time` as `Timestamp(ns, "UTC")`. The Delta table stores them
//! as `start_time_unix_nano` / `end_time_unix_nano` (`Int64`, a standard Delta `long` with
//! min/max statistics), plus a hidden partition column `span_date` (`YYYY-MM-DD` of the start
//! time, UTC), and holds attribute maps in the lean layout of [`AttributeLayout::Lean`]
//! (tables created before it keep [`AttributeLayout::Nested`], the SQL types). Every other
//! column has the same name and type in both schemas. This module owns the schemas and the
//! names; it never touches storage.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// The name the span table is registered under.
pub const SPANS_TABLE: &str = "spans";

/// Column names of the SQL-facing schema (and of the storage schema where they coincide).
pub mod col {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    pub const TRACE_STATE: &str = "trace_state";
    pub const FLAGS: &str = "flags";
    pub const NAME: &str = "name";
    pub const KIND: &str = "kind";
    pub const SERVICE_NAME: &str = "service_name";
    pub const START_TIME: &str = "start_time";
    pub const END_TIME: &str = "end_time";
    pub const DURATION_NS: &str = "duration_ns";
    pub const STATUS_CODE: &str = "status_code";
    pub const STATUS_MESSAGE: &str = "status_message";
    pub const SCOPE_NAME: &str = "scope_name";
    pub const SCOPE_VERSION: &str = "scope_version";
    pub const ATTRIBUTES: &str = "attributes";
    pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
    pub const EVENTS: &str = "events";
    pub const LINKS: &str = "links";
    pub const DROPPED_ATTRIBUTES_COUNT: &str = "dropped_attributes_count";
    pub const DROPPED_EVENTS_COUNT: &str = "dropped_events_count";
    pub const DROPPED_LINKS_COUNT: &str = "dropped_links_count";

    /// Storage-only: start time as unix nanoseconds (`Int64`).
    pub const START_TIME_UNIX_NANO: &str = "start_time_unix_nano";
    /// Storage-only: end time as unix nanoseconds (`Int64`).
    pub const END_TIME_UNIX_NANO: &str = "end_time_unix_nano";
    /// Storage-only partition column: `YYYY-MM-DD` of `start_time` in UTC.
    pub const SPAN_DATE: &str = "span_date";
}

/// Span kinds, as SQL sees them (`kind` column).
pub const SPAN_KINDS: [&str; 6] = [
    "UNSPECIFIED",
    "INTERNAL",
    "SERVER",
    "CLIENT",
    "PRODUCER",
    "CONSUMER",
];

/// Status codes, as SQL sees them (`status_code` column).
pub const STATUS_CODES: [&str; 3] = ["UNSET", "OK", "ERROR"];

/// The time zone of `start_time` and `end_time`.
pub const TIME_ZONE: &str = "UTC";

/// `Timestamp(ns, "UTC")`, the SQL type of `start_time` and `end_time`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(TIME_ZONE.into()))
}

/// The fields of one scalar attribute value: exactly one `*_value` is set, named by `type`
/// (`'string'`, `'int'`, `'double'`, `'bool'`, `'bytes'`).
fn scalar_value_fields() -> Vec<Field> {
    vec![
        Field::new("type", DataType::Utf8, true),
        Field::new("string_value", DataType::Utf8, true),
        Field::new("int_value", DataType::Int64, true),
        Field::new("double_value", DataType::Float64, true),
        Field::new("bool_value", DataType::Boolean, true),
        Field::new("bytes_value", DataType::Binary, true),
    ]
}

/// The struct type of an array element (a scalar attribute value).
pub fn scalar_value_type() -> DataType {
    DataType::Struct(Fields::from(scalar_value_fields()))
}

/// The struct type of an attribute value: a scalar, or (`type = 'array'`) a list of scalars in
/// `array_value`.
pub fn attribute_value_type() -> DataType {
    let mut fields = scalar_value_fields();
    fields.push(Field::new(
        "array_value",
        DataType::List(Arc::new(Field::new("element", scalar_value_type(), true))),
        true,
    ));
    DataType::Struct(Fields::from(fields))
}

/// The map field names Delta uses for `map<string, ...>` columns.
pub const MAP_ENTRIES: &str = "key_value";

/// The entries field of an attribute map.
pub fn attribute_entries_field() -> Arc<Field> {
    Arc::new(Field::new(
        MAP_ENTRIES,
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", attribute_value_type(), true),
        ])),
        false,
    ))
}

/// `map<string, attribute value>`: the type of `attributes`, `resource_attributes` and the
/// attributes of events and links.
pub fn attribute_map_type() -> DataType {
    attribute_map_type_of(AttributeLayout::Nested)
}

/// The type of an attribute map as `layout` stores it: [`attribute_map_type`] when nested;
/// lean, `map<string, struct<type, string_value, int_value, double_value, bool_value,
/// bytes_value>>`, an array held as JSON in `bytes_value` (see [`AttributeLayout::Lean`]).
pub fn attribute_map_type_of(layout: AttributeLayout) -> DataType {
    match layout {
        AttributeLayout::Nested => DataType::Map(attribute_entries_field(), false),
        AttributeLayout::Lean => DataType::Map(
            Arc::new(Field::new(
                MAP_ENTRIES,
                DataType::Struct(Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", scalar_value_type(), true),
                ])),
                false,
            )),
            false,
        ),
    }
}

/// How a data file holds attribute maps (of spans, resources, events and links).
///
/// The SQL view is the same for both: `attributes` is a `map<string, struct<type,
/// string_value, int_value, double_value, bool_value, bytes_value, array_value>>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttributeLayout {
    /// The SQL type as it is: each value a struct of every scalar type plus `array_value`, a
    /// list of such structs (13 parquet leaves a map). Tables created before tracelake 0.2.
    Nested,
    /// The SQL type without `array_value` (7 leaves a map): an array is stored with
    /// `type = 'array'` and its elements as a JSON array in `bytes_value`, each element an
    /// object of the element struct's set fields (`{"type":"int","int_value":7}`; doubles as
    /// strings, the shortest decimal that reads back exactly, or `"NaN"`, `"Infinity"`,
    /// `"-Infinity"`; bytes as standard base64). Tables created since tracelake 0.2.
    Lean,
}

/// The struct type of one span event.
pub fn event_type() -> DataType {
    event_type_of(AttributeLayout::Nested)
}

/// The struct type of one span event, its attributes as `layout` stores them.
pub fn event_type_of(layout: AttributeLayout) -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("time_unix_nano", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("attributes", attribute_map_type_of(layout), true),
        Field::new("dropped_attributes_count", DataType::Int64, true),
    ]))
}

/// The struct type of one span link.
pub fn link_type() -> DataType {
    link_type_of(AttributeLayout::Nested)
}

/// The struct type of one span link, its attributes as `layout` stores them.
pub fn link_type_of(layout: AttributeLayout) -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("trace_id", DataType::Utf8, true),
        Field::new("span_id", DataType::Utf8, true),
        Field::new("trace_state", DataType::Utf8, true),
        Field::new("flags", DataType::Int64, true),
        Field::new("attributes", attribute_map_type_of(layout), true),
        Field::new("dropped_attributes_count", DataType::Int64, true),
    ]))
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("element", item, true)))
}

/// One column of the span model: its SQL name and type, whether it is always set once
/// stored, and how storage holds it.
struct ColumnDef {
    name: &'static str,
    data_type: DataType,
    required: bool,
    storage_name: &'static str,
    storage_type: DataType,
}

fn same(name: &'static str, data_type: DataType, required: bool) -> ColumnDef {
    ColumnDef {
        name,
        storage_type: data_type.clone(),
        data_type,
        required,
        storage_name: name,
    }
}

/// The column order is the storage order: the columns that lookups filter on come first, so
/// they are the ones Delta keeps statistics for.
fn columns(layout: AttributeLayout) -> Vec<ColumnDef> {
    use col::*;
    let stored = |name, sql: DataType, storage: DataType| ColumnDef {
        name,
        data_type: sql,
        required: false,
        storage_name: name,
        storage_type: storage,
    };
    vec![
        same(TRACE_ID, DataType::Utf8, true),
        same(SPAN_ID, DataType::Utf8, true),
        same(PARENT_SPAN_ID, DataType::Utf8, false),
        ColumnDef {
            name: START_TIME,
            data_type: timestamp_type(),
            required: true,
            storage_name: START_TIME_UNIX_NANO,
            storage_type: DataType::Int64,
        },
        ColumnDef {
            name: END_TIME,
            data_type: timestamp_type(),
            required: true,
            storage_name: END_TIME_UNIX_NANO,
            storage_type: DataType::Int64,
        },
        same(DURATION_NS, DataType::Int64, true),
        same(SERVICE_NAME, DataType::Utf8, true),
        same(NAME, DataType::Utf8, true),
        same(KIND, DataType::Utf8, true),
        same(STATUS_CODE, DataType::Utf8, true),
        same(STATUS_MESSAGE, DataType::Utf8, false),
        same(TRACE_STATE, DataType::Utf8, false),
        same(FLAGS, DataType::Int64, false),
        same(SCOPE_NAME, DataType::Utf8, false),
        same(SCOPE_VERSION, DataType::Utf8, false),
        stored(
            ATTRIBUTES,
            attribute_map_type(),
            attribute_map_type_of(layout),
        ),
        stored(
            RESOURCE_ATTRIBUTES,
            attribute_map_type(),
            attribute_map_type_of(layout),
        ),
        stored(
            EVENTS,
            list_of(event_type()),
            list_of(event_type_of(layout)),
        ),
        stored(LINKS, list_of(link_type()), list_of(link_type_of(layout))),
        same(DROPPED_ATTRIBUTES_COUNT, DataType::Int64, true),
        same(DROPPED_EVENTS_COUNT, DataType::Int64, true),
        same(DROPPED_LINKS_COUNT, DataType::Int64, true),
    ]
}

static SQL_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(
        columns(AttributeLayout::Nested)
            .into_iter()
            .map(|c| Field::new(c.name, c.data_type, true))
            .collect::<Vec<_>>(),
    ))
});

fn storage_schema_for(layout: AttributeLayout) -> SchemaRef {
    let mut fields: Vec<Field> = columns(layout)
        .into_iter()
        .map(|c| Field::new(c.storage_name, c.storage_type, !c.required))
        .collect();
    fields.push(Field::new(col::SPAN_DATE, DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

static STORAGE_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| storage_schema_for(AttributeLayout::Lean));
static NESTED_STORAGE_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| storage_schema_for(AttributeLayout::Nested));

/// The schema SQL sees for `spans`: every column of the OpenTelemetry span model.
///
/// Every column is declared nullable, so that `INSERT` statements reach tracelake's own
/// checks: a missing required value fails with an error naming the column and row, and
/// optional columns get their defaults. Stored spans always have the required columns
/// (everything but `parent_span_id`, `status_message`, `trace_state`, `flags`, scope,
/// attributes, events and links); the storage schema enforces it.
pub fn sql_schema() -> SchemaRef {
    SQL_SCHEMA.clone()
}

/// The schema accepted for appends: the same as [`sql_schema`]; optional columns may be
/// absent from a batch.
pub fn input_schema() -> SchemaRef {
    SQL_SCHEMA.clone()
}

/// The schema of the Delta table: the SQL columns in the same order, times as `Int64` unix
/// nanoseconds, attribute maps in the lean layout ([`AttributeLayout::Lean`]), plus the
/// `span_date` partition column last. Tables created before the lean layout have
/// [`storage_schema_of`]`(AttributeLayout::Nested)`.
pub fn storage_schema() -> SchemaRef {
    STORAGE_SCHEMA.clone()
}

/// The schema of a Delta table whose files hold attribute maps in `layout`.
pub fn storage_schema_of(layout: AttributeLayout) -> SchemaRef {
    match layout {
        AttributeLayout::Lean => STORAGE_SCHEMA.clone(),
        AttributeLayout::Nested => NESTED_STORAGE_SCHEMA.clone(),
    }
}

/// The attribute layout of a table or file of `schema` (its `attributes` column), if it is
/// one of them.
pub fn layout_of(schema: &Schema) -> Option<AttributeLayout> {
    let attributes = schema.field_with_name(col::ATTRIBUTES).ok()?;
    let DataType::Map(entries, _) = attributes.data_type() else {
        return None;
    };
    let DataType::Struct(fields) = entries.data_type() else {
        return None;
    };
    let DataType::Struct(value) = fields.get(1)?.data_type() else {
        return None;
    };
    Some(if value.find("array_value").is_some() {
        AttributeLayout::Nested
    } else {
        AttributeLayout::Lean
    })
}

/// The storage column that holds a SQL column.
pub fn storage_name(sql_name: &str) -> &str {
    match sql_name {
        col::START_TIME => col::START_TIME_UNIX_NANO,
        col::END_TIME => col::END_TIME_UNIX_NANO,
        other => other,
    }
}

/// The columns Delta keeps min/max statistics for (`delta.dataSkippingStatsColumns`).
pub const STATS_COLUMNS: [&str; 9] = [
    col::TRACE_ID,
    col::SPAN_ID,
    col::START_TIME_UNIX_NANO,
    col::END_TIME_UNIX_NANO,
    col::DURATION_NS,
    col::SERVICE_NAME,
    col::NAME,
    col::KIND,
    col::STATUS_CODE,
];

/// Whether `s` is `len` hexadecimal characters (either case).
pub fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The partition value (`span_date`) of a start time in unix nanoseconds.
pub fn span_date(start_unix_nano: i64) -> String {
    let secs = start_unix_nano.div_euclid(1_000_000_000);
    let nanos = start_unix_nano.rem_euclid(1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_and_storage_schemas_line_up() {
        let sql = sql_schema();
        let storage = storage_schema();
        assert_eq!(storage.fields().len(), sql.fields().len() + 1);
        for (s, t) in sql.fields().iter().zip(storage.fields().iter()) {
            assert_eq!(storage_name(s.name()), t.name());
            assert!(s.is_nullable());
        }
        assert_eq!(
            sql.field_with_name(col::START_TIME).unwrap().data_type(),
            &timestamp_type()
        );
        for c in STATS_COLUMNS {
            assert!(storage.field_with_name(c).is_ok(), "{c}");
        }
    }

    #[test]
    fn span_date_is_the_utc_day() {
        assert_eq!(span_date(0), "1970-01-01");
        assert_eq!(span_date(1_700_000_000_000_000_000), "2023-11-14");
        assert_eq!(span_date(-1), "1969-12-31");
    }
}
