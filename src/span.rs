//! Span values: the OpenTelemetry span model as Rust values, and their conversion to Arrow
//! batches of the input schema ([`crate::schema::input_schema`]).
//!
//! Appending spans goes through the same validation as `INSERT INTO spans`: values become a
//! batch here, the batch is checked and converted to storage by [`crate::table::ingest`].

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, ListArray, MapArray,
    RecordBatch, StringArray, StringBuilder, StructArray, TimestampNanosecondArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Fields};

use crate::error::{Result, TraceLakeError};
use crate::schema::{self, input_schema};

/// The kind of a span (`kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// The SQL value of the kind (`'SERVER'`, ...).
    pub fn as_str(self) -> &'static str {
        schema::SPAN_KINDS[self as usize]
    }
}

/// The status code of a span (`status_code` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    /// The SQL value of the status code (`'UNSET'`, `'OK'`, `'ERROR'`).
    pub fn as_str(self) -> &'static str {
        schema::STATUS_CODES[self as usize]
    }
}

/// An OpenTelemetry attribute value, keeping its type. Arrays hold scalars (an array inside
/// an array is rejected when the span is appended).
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    String(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    Array(Vec<AttributeValue>),
}

impl From<&str> for AttributeValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_string())
    }
}
impl From<String> for AttributeValue {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}
impl From<i64> for AttributeValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<f64> for AttributeValue {
    fn from(v: f64) -> Self {
        Self::Double(v)
    }
}
impl From<bool> for AttributeValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// Attributes as key/value pairs, in the order given.
pub type Attributes = Vec<(String, AttributeValue)>;

/// A span event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    pub time_unix_nano: i64,
    pub name: String,
    pub attributes: Attributes,
    pub dropped_attributes_count: i64,
}

/// A link to another span.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Link {
    pub trace_id: String,
    pub span_id: String,
    pub trace_state: Option<String>,
    pub flags: Option<i64>,
    pub attributes: Attributes,
    pub dropped_attributes_count: i64,
}

/// One OpenTelemetry span with its resource's service name and instrumentation scope.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Span {
    /// 32 hex characters.
    pub trace_id: String,
    /// 16 hex characters.
    pub span_id: String,
    /// 16 hex characters; `None` for a root span.
    pub parent_span_id: Option<String>,
    pub trace_state: Option<String>,
    pub flags: Option<i64>,
    pub name: String,
    pub kind: SpanKind,
    pub service_name: String,
    pub start_time_unix_nano: i64,
    pub end_time_unix_nano: i64,
    pub status_code: StatusCode,
    pub status_message: Option<String>,
    pub scope_name: Option<String>,
    pub scope_version: Option<String>,
    pub attributes: Attributes,
    pub resource_attributes: Attributes,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    pub dropped_attributes_count: i64,
    pub dropped_events_count: i64,
    pub dropped_links_count: i64,
}

/// Builds the scalar-value children shared by attribute values and array elements.
#[derive(Default)]
struct ScalarColumns {
    kind: StringBuilder,
    string: StringBuilder,
    int: Int64Builder,
    double: Float64Builder,
    boolean: BooleanBuilder,
    bytes: BinaryBuilder,
}

impl ScalarColumns {
    /// Appends a scalar; an array is reported as `Err(())` for the caller to handle.
    fn append(&mut self, value: &AttributeValue) -> std::result::Result<(), ()> {
        let kind = match value {
            AttributeValue::String(_) => "string",
            AttributeValue::Int(_) => "int",
            AttributeValue::Double(_) => "double",
            AttributeValue::Bool(_) => "bool",
            AttributeValue::Bytes(_) => "bytes",
            AttributeValue::Array(_) => "array",
        };
        self.kind.append_value(kind);
        match value {
            AttributeValue::String(s) => self.string.append_value(s),
            _ => self.string.append_null(),
        }
        match value {
            AttributeValue::Int(i) => self.int.append_value(*i),
            _ => self.int.append_null(),
        }
        match value {
            AttributeValue::Double(d) => self.double.append_value(*d),
            _ => self.double.append_null(),
        }
        match value {
            AttributeValue::Bool(b) => self.boolean.append_value(*b),
            _ => self.boolean.append_null(),
        }
        match value {
            AttributeValue::Bytes(b) => self.bytes.append_value(b),
            _ => self.bytes.append_null(),
        }
        match value {
            AttributeValue::Array(_) => Err(()),
            _ => Ok(()),
        }
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.kind.finish()),
            Arc::new(self.string.finish()),
            Arc::new(self.int.finish()),
            Arc::new(self.double.finish()),
            Arc::new(self.boolean.finish()),
            Arc::new(self.bytes.finish()),
        ]
    }
}

fn struct_fields(data_type: &DataType) -> Fields {
    match data_type {
        DataType::Struct(fields) => fields.clone(),
        other => unreachable!("schema type {other} is a struct"),
    }
}

fn list_item(data_type: &DataType) -> Arc<arrow::datatypes::Field> {
    match data_type {
        DataType::List(field) => field.clone(),
        other => unreachable!("schema type {other} is a list"),
    }
}

/// Builds a `map<string, attribute value>` column.
#[derive(Default)]
pub(crate) struct AttributeMapColumn {
    offsets: Vec<i32>,
    validity: Vec<bool>,
    keys: StringBuilder,
    values: ScalarColumns,
    array_offsets: Vec<i32>,
    array_validity: Vec<bool>,
    elements: ScalarColumns,
}

impl AttributeMapColumn {
    pub(crate) fn new() -> Self {
        Self {
            offsets: vec![0],
            array_offsets: vec![0],
            ..Default::default()
        }
    }

    pub(crate) fn append(&mut self, attributes: Option<&Attributes>) -> Result<()> {
        let entries = attributes.map(|a| a.as_slice()).unwrap_or_default();
        for (key, value) in entries {
            self.keys.append_value(key);
            let last = *self.array_offsets.last().unwrap_or(&0);
            if let AttributeValue::Array(items) = value {
                let _ = self.values.append(value);
                for item in items {
                    if self.elements.append(item).is_err() {
                        return Err(TraceLakeError::InvalidArgument(format!(
                            "attribute {key:?}: an array inside an array is not supported; \
                             attribute arrays hold strings, ints, doubles, bools or bytes"
                        )));
                    }
                }
                self.array_offsets.push(last + items.len() as i32);
                self.array_validity.push(true);
            } else {
                let _ = self.values.append(value);
                self.array_offsets.push(last);
                self.array_validity.push(false);
            }
        }
        let last = *self.offsets.last().unwrap_or(&0);
        self.offsets.push(last + entries.len() as i32);
        self.validity.push(attributes.is_some());
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<MapArray> {
        let map_type = schema::attribute_map_type();
        let DataType::Map(entries_field, _) = &map_type else {
            unreachable!("attribute_map_type is a map")
        };
        let entry_fields = struct_fields(entries_field.data_type());
        let value_fields = struct_fields(entry_fields[1].data_type());
        let element_field = list_item(value_fields[6].data_type());
        let elements = StructArray::try_new(
            struct_fields(element_field.data_type()),
            self.elements.finish(),
            None,
        )?;
        let array_value = ListArray::try_new(
            element_field,
            OffsetBuffer::new(self.array_offsets.into()),
            Arc::new(elements),
            Some(NullBuffer::from(self.array_validity)),
        )?;
        let mut value_columns = self.values.finish();
        value_columns.push(Arc::new(array_value));
        let values = StructArray::try_new(value_fields, value_columns, None)?;
        let entries = StructArray::try_new(
            entry_fields,
            vec![Arc::new(self.keys.finish()), Arc::new(values)],
            None,
        )?;
        Ok(MapArray::try_new(
            entries_field.clone(),
            OffsetBuffer::new(self.offsets.into()),
            entries,
            Some(NullBuffer::from(self.validity)),
            false,
        )?)
    }
}

/// Builds a list-of-struct column (events or links) from per-item column builders.
struct ListColumn<T> {
    offsets: Vec<i32>,
    items: T,
}

impl<T> ListColumn<T> {
    fn new(items: T) -> Self {
        Self {
            offsets: vec![0],
            items,
        }
    }

    fn close_row(&mut self, len: usize) {
        let last = *self.offsets.last().unwrap_or(&0);
        self.offsets.push(last + len as i32);
    }

    fn finish(self, list_type: &DataType, children: Vec<ArrayRef>) -> Result<ListArray> {
        let item = list_item(list_type);
        let values = StructArray::try_new(struct_fields(item.data_type()), children, None)?;
        Ok(ListArray::try_new(
            item,
            OffsetBuffer::new(self.offsets.into()),
            Arc::new(values),
            None,
        )?)
    }
}

#[derive(Default)]
struct EventColumns {
    time: Int64Builder,
    name: StringBuilder,
    dropped: Int64Builder,
}

#[derive(Default)]
struct LinkColumns {
    trace_id: StringBuilder,
    span_id: StringBuilder,
    trace_state: StringBuilder,
    flags: Int64Builder,
    dropped: Int64Builder,
}

/// Converts spans to one batch of the input schema (SQL-facing types, every column set as
/// given). The batch still has to pass [`crate::table::ingest::to_storage`] to be stored.
pub fn spans_to_batch(spans: &[Span]) -> Result<RecordBatch> {
    let n = spans.len();
    let strings = |f: &dyn Fn(&Span) -> Option<&str>| -> ArrayRef {
        Arc::new(spans.iter().map(f).collect::<StringArray>())
    };
    let ints = |f: &dyn Fn(&Span) -> Option<i64>| -> ArrayRef {
        Arc::new(spans.iter().map(f).collect::<arrow::array::Int64Array>())
    };
    let times = |f: &dyn Fn(&Span) -> i64| -> ArrayRef {
        Arc::new(
            spans
                .iter()
                .map(|s| Some(f(s)))
                .collect::<TimestampNanosecondArray>()
                .with_timezone(schema::TIME_ZONE),
        )
    };

    let mut attributes = AttributeMapColumn::new();
    let mut resource = AttributeMapColumn::new();
    let mut events = ListColumn::new(EventColumns::default());
    let mut event_attributes = AttributeMapColumn::new();
    let mut links = ListColumn::new(LinkColumns::default());
    let mut link_attributes = AttributeMapColumn::new();
    for span in spans {
        attributes.append(Some(&span.attributes))?;
        resource.append(Some(&span.resource_attributes))?;
        for e in &span.events {
            events.items.time.append_value(e.time_unix_nano);
            events.items.name.append_value(&e.name);
            events
                .items
                .dropped
                .append_value(e.dropped_attributes_count);
            event_attributes.append(Some(&e.attributes))?;
        }
        events.close_row(span.events.len());
        for l in &span.links {
            links.items.trace_id.append_value(&l.trace_id);
            links.items.span_id.append_value(&l.span_id);
            links
                .items
                .trace_state
                .append_option(l.trace_state.as_deref());
            links.items.flags.append_option(l.flags);
            links.items.dropped.append_value(l.dropped_attributes_count);
            link_attributes.append(Some(&l.attributes))?;
        }
        links.close_row(span.links.len());
    }

    let schema = input_schema();
    let event_children: Vec<ArrayRef> = vec![
        Arc::new(events.items.time.finish()),
        Arc::new(events.items.name.finish()),
        Arc::new(event_attributes.finish()?),
        Arc::new(events.items.dropped.finish()),
    ];
    let events_type = schema.field_with_name(schema::col::EVENTS)?.data_type();
    let events = events.finish(events_type, event_children)?;
    let link_children: Vec<ArrayRef> = vec![
        Arc::new(links.items.trace_id.finish()),
        Arc::new(links.items.span_id.finish()),
        Arc::new(links.items.trace_state.finish()),
        Arc::new(links.items.flags.finish()),
        Arc::new(link_attributes.finish()?),
        Arc::new(links.items.dropped.finish()),
    ];
    let links_type = schema.field_with_name(schema::col::LINKS)?.data_type();
    let links = links.finish(links_type, link_children)?;

    let columns: Vec<ArrayRef> = vec![
        strings(&|s| Some(&s.trace_id)),
        strings(&|s| Some(&s.span_id)),
        strings(&|s| s.parent_span_id.as_deref()),
        times(&|s| s.start_time_unix_nano),
        times(&|s| s.end_time_unix_nano),
        // NULL when the difference does not fit: the append then names the row.
        ints(&|s| s.end_time_unix_nano.checked_sub(s.start_time_unix_nano)),
        strings(&|s| Some(&s.service_name)),
        strings(&|s| Some(&s.name)),
        strings(&|s| Some(s.kind.as_str())),
        strings(&|s| Some(s.status_code.as_str())),
        strings(&|s| s.status_message.as_deref()),
        strings(&|s| s.trace_state.as_deref()),
        ints(&|s| s.flags),
        strings(&|s| s.scope_name.as_deref()),
        strings(&|s| s.scope_version.as_deref()),
        Arc::new(attributes.finish()?),
        Arc::new(resource.finish()?),
        Arc::new(events),
        Arc::new(links),
        ints(&|s| Some(s.dropped_attributes_count)),
        ints(&|s| Some(s.dropped_events_count)),
        ints(&|s| Some(s.dropped_links_count)),
    ];
    debug_assert_eq!(columns.len(), schema.fields().len());
    let batch = RecordBatch::try_new(schema, columns)?;
    debug_assert_eq!(batch.num_rows(), n);
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    fn span() -> Span {
        Span {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            name: "GET /".into(),
            kind: SpanKind::Server,
            service_name: "frontend".into(),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 5_000,
            attributes: vec![
                ("http.status_code".into(), 200i64.into()),
                (
                    "tags".into(),
                    AttributeValue::Array(vec!["a".into(), "b".into()]),
                ),
            ],
            events: vec![Event {
                time_unix_nano: 2_000,
                name: "exception".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn spans_become_one_batch_of_the_input_schema() {
        let batch = spans_to_batch(&[span(), span()]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), input_schema());
        let attrs = batch.column_by_name("attributes").unwrap().as_map();
        assert_eq!(attrs.value_length(0), 2);
        let values = attrs.values().as_struct();
        assert_eq!(values.column(0).as_string::<i32>().value(0), "int");
        assert_eq!(
            values
                .column(2)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            200
        );
        let arrays = values.column(6).as_list::<i32>();
        assert!(arrays.is_null(0));
        assert_eq!(arrays.value_length(1), 2);
        let events = batch.column_by_name("events").unwrap().as_list::<i32>();
        assert_eq!(events.value_length(1), 1);
    }

    #[test]
    fn nested_arrays_are_rejected() {
        let mut s = span();
        s.attributes = vec![(
            "x".into(),
            AttributeValue::Array(vec![AttributeValue::Array(vec![])]),
        )];
        let err = spans_to_batch(&[s]).unwrap_err().to_string();
        assert!(err.contains("array inside an array"), "{err}");
    }
}
