//! Span values: the OpenTelemetry span model as Rust values, and their conversion to Arrow
//! batches of the input schema ([`crate::schema::input_schema`]).
//!
//! Appending spans goes through the same validation as `INSERT INTO spans`: values become a
//! batch here, the batch is checked and converted to storage by [`crate::table::ingest`].

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, ListArray, MapArray,
    RecordBatch, StringBuilder, StructArray, TimestampNanosecondArray,
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

/// A scalar attribute value, borrowed (from a [`Span`] or straight from an OTLP request).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ScalarRef<'a> {
    String(&'a str),
    Int(i64),
    Double(f64),
    Bool(bool),
    Bytes(&'a [u8]),
}

impl<'a> ScalarRef<'a> {
    /// The scalar of `value`; `None` for an array.
    fn of(value: &'a AttributeValue) -> Option<Self> {
        Some(match value {
            AttributeValue::String(s) => ScalarRef::String(s),
            AttributeValue::Int(i) => ScalarRef::Int(*i),
            AttributeValue::Double(d) => ScalarRef::Double(*d),
            AttributeValue::Bool(b) => ScalarRef::Bool(*b),
            AttributeValue::Bytes(b) => ScalarRef::Bytes(b),
            AttributeValue::Array(_) => return None,
        })
    }
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
    /// Appends a scalar value.
    fn append(&mut self, value: ScalarRef<'_>) {
        self.kind.append_value(match value {
            ScalarRef::String(_) => "string",
            ScalarRef::Int(_) => "int",
            ScalarRef::Double(_) => "double",
            ScalarRef::Bool(_) => "bool",
            ScalarRef::Bytes(_) => "bytes",
        });
        self.append_payload(value);
    }

    /// Appends an array value's row: type `array`, every scalar field null.
    fn append_array(&mut self) {
        self.kind.append_value("array");
        self.string.append_null();
        self.int.append_null();
        self.double.append_null();
        self.boolean.append_null();
        self.bytes.append_null();
    }

    fn append_payload(&mut self, value: ScalarRef<'_>) {
        match value {
            ScalarRef::String(s) => self.string.append_value(s),
            _ => self.string.append_null(),
        }
        match value {
            ScalarRef::Int(i) => self.int.append_value(i),
            _ => self.int.append_null(),
        }
        match value {
            ScalarRef::Double(d) => self.double.append_value(d),
            _ => self.double.append_null(),
        }
        match value {
            ScalarRef::Bool(b) => self.boolean.append_value(b),
            _ => self.boolean.append_null(),
        }
        match value {
            ScalarRef::Bytes(b) => self.bytes.append_value(b),
            _ => self.bytes.append_null(),
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

/// Builds a `map<string, attribute value>` column, entry by entry: [`push_scalar`] and
/// [`push_array`] add entries to the current row, [`end_row`] closes it.
///
/// [`push_scalar`]: AttributeMapColumn::push_scalar
/// [`push_array`]: AttributeMapColumn::push_array
/// [`end_row`]: AttributeMapColumn::end_row
#[derive(Default)]
pub(crate) struct AttributeMapColumn {
    offsets: Vec<i32>,
    validity: Vec<bool>,
    entries: i32,
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

    /// Adds `key = value` to the current row.
    pub(crate) fn push_scalar(&mut self, key: &str, value: ScalarRef<'_>) {
        self.keys.append_value(key);
        self.values.append(value);
        let last = *self.array_offsets.last().unwrap_or(&0);
        self.array_offsets.push(last);
        self.array_validity.push(false);
        self.entries += 1;
    }

    /// Adds `key = [items]` to the current row.
    pub(crate) fn push_array<'a>(&mut self, key: &str, items: impl Iterator<Item = ScalarRef<'a>>) {
        self.keys.append_value(key);
        self.values.append_array();
        let mut n = 0;
        for item in items {
            self.elements.append(item);
            n += 1;
        }
        let last = *self.array_offsets.last().unwrap_or(&0);
        self.array_offsets.push(last + n);
        self.array_validity.push(true);
        self.entries += 1;
    }

    /// Closes the current row (`valid`: false for a NULL map).
    pub(crate) fn end_row(&mut self, valid: bool) {
        let last = *self.offsets.last().unwrap_or(&0);
        self.offsets.push(last + self.entries);
        self.entries = 0;
        self.validity.push(valid);
    }

    /// Appends a row of `attributes` (`None`: a NULL map). Fails for an array inside an array.
    pub(crate) fn append(&mut self, attributes: Option<&Attributes>) -> Result<()> {
        for (key, value) in attributes.map(|a| a.as_slice()).unwrap_or_default() {
            match value {
                AttributeValue::Array(items) => {
                    let scalars: Option<Vec<ScalarRef<'_>>> =
                        items.iter().map(ScalarRef::of).collect();
                    let Some(scalars) = scalars else {
                        return Err(TraceLakeError::InvalidArgument(format!(
                            "attribute {key:?}: an array inside an array is not supported; \
                             attribute arrays hold strings, ints, doubles, bools or bytes"
                        )));
                    };
                    self.push_array(key, scalars.into_iter());
                }
                scalar => {
                    if let Some(value) = ScalarRef::of(scalar) {
                        self.push_scalar(key, value);
                    }
                }
            }
        }
        self.end_row(attributes.is_some());
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

/// The scalar fields of one span row, borrowed.
pub(crate) struct SpanRow<'a> {
    pub(crate) trace_id: &'a str,
    pub(crate) span_id: &'a str,
    pub(crate) parent_span_id: Option<&'a str>,
    pub(crate) trace_state: Option<&'a str>,
    pub(crate) flags: Option<i64>,
    pub(crate) name: &'a str,
    pub(crate) kind: SpanKind,
    pub(crate) service_name: &'a str,
    pub(crate) start_time_unix_nano: i64,
    pub(crate) end_time_unix_nano: i64,
    pub(crate) status_code: StatusCode,
    pub(crate) status_message: Option<&'a str>,
    pub(crate) scope_name: Option<&'a str>,
    pub(crate) scope_version: Option<&'a str>,
    pub(crate) dropped_attributes_count: i64,
    pub(crate) dropped_events_count: i64,
    pub(crate) dropped_links_count: i64,
}

/// Builds a batch of the input schema span by span: the scalar fields with
/// [`SpanBatchBuilder::push_row`], the attribute maps, events and links through the builders
/// it exposes, each closed per row.
pub(crate) struct SpanBatchBuilder {
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    start: Vec<i64>,
    end: Vec<i64>,
    duration: Int64Builder,
    service_name: StringBuilder,
    name: StringBuilder,
    kind: StringBuilder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    trace_state: StringBuilder,
    flags: Int64Builder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    dropped_attributes: Int64Builder,
    dropped_events: Int64Builder,
    dropped_links: Int64Builder,
    /// The span's attributes.
    pub(crate) attributes: AttributeMapColumn,
    /// The resource's attributes.
    pub(crate) resource: AttributeMapColumn,
    event_offsets: Vec<i32>,
    event_time: Int64Builder,
    event_name: StringBuilder,
    event_dropped: Int64Builder,
    /// The attributes of the events.
    pub(crate) event_attributes: AttributeMapColumn,
    link_offsets: Vec<i32>,
    link_trace_id: StringBuilder,
    link_span_id: StringBuilder,
    link_trace_state: StringBuilder,
    link_flags: Int64Builder,
    link_dropped: Int64Builder,
    /// The attributes of the links.
    pub(crate) link_attributes: AttributeMapColumn,
    rows: usize,
}

impl SpanBatchBuilder {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        let strings = || StringBuilder::with_capacity(rows, rows * 16);
        Self {
            trace_id: StringBuilder::with_capacity(rows, rows * 32),
            span_id: StringBuilder::with_capacity(rows, rows * 16),
            parent_span_id: StringBuilder::with_capacity(rows, rows * 16),
            start: Vec::with_capacity(rows),
            end: Vec::with_capacity(rows),
            duration: Int64Builder::with_capacity(rows),
            service_name: strings(),
            name: strings(),
            kind: strings(),
            status_code: strings(),
            status_message: strings(),
            trace_state: strings(),
            flags: Int64Builder::with_capacity(rows),
            scope_name: strings(),
            scope_version: strings(),
            dropped_attributes: Int64Builder::with_capacity(rows),
            dropped_events: Int64Builder::with_capacity(rows),
            dropped_links: Int64Builder::with_capacity(rows),
            attributes: AttributeMapColumn::new(),
            resource: AttributeMapColumn::new(),
            event_offsets: vec![0],
            event_time: Int64Builder::new(),
            event_name: StringBuilder::new(),
            event_dropped: Int64Builder::new(),
            event_attributes: AttributeMapColumn::new(),
            link_offsets: vec![0],
            link_trace_id: StringBuilder::new(),
            link_span_id: StringBuilder::new(),
            link_trace_state: StringBuilder::new(),
            link_flags: Int64Builder::new(),
            link_dropped: Int64Builder::new(),
            link_attributes: AttributeMapColumn::new(),
            rows: 0,
        }
    }

    /// Adds the scalar fields of a span. Its attribute maps (through `attributes`,
    /// `resource`), events ([`SpanBatchBuilder::push_event`], then `event_attributes`) and
    /// links likewise are added before [`SpanBatchBuilder::end_span`].
    pub(crate) fn push_row(&mut self, row: &SpanRow<'_>) {
        self.trace_id.append_value(row.trace_id);
        self.span_id.append_value(row.span_id);
        self.parent_span_id.append_option(row.parent_span_id);
        self.start.push(row.start_time_unix_nano);
        self.end.push(row.end_time_unix_nano);
        // NULL when the difference does not fit: the append then names the row.
        self.duration
            .append_option(row.end_time_unix_nano.checked_sub(row.start_time_unix_nano));
        self.service_name.append_value(row.service_name);
        self.name.append_value(row.name);
        self.kind.append_value(row.kind.as_str());
        self.status_code.append_value(row.status_code.as_str());
        self.status_message.append_option(row.status_message);
        self.trace_state.append_option(row.trace_state);
        self.flags.append_option(row.flags);
        self.scope_name.append_option(row.scope_name);
        self.scope_version.append_option(row.scope_version);
        self.dropped_attributes
            .append_value(row.dropped_attributes_count);
        self.dropped_events.append_value(row.dropped_events_count);
        self.dropped_links.append_value(row.dropped_links_count);
    }

    /// Adds an event to the current span (its attributes go to `event_attributes`, one row
    /// per event).
    pub(crate) fn push_event(&mut self, time_unix_nano: i64, name: &str, dropped: i64) {
        self.event_time.append_value(time_unix_nano);
        self.event_name.append_value(name);
        self.event_dropped.append_value(dropped);
    }

    /// Adds a link to the current span (its attributes go to `link_attributes`, one row per
    /// link).
    pub(crate) fn push_link(
        &mut self,
        trace_id: &str,
        span_id: &str,
        trace_state: Option<&str>,
        flags: Option<i64>,
        dropped: i64,
    ) {
        self.link_trace_id.append_value(trace_id);
        self.link_span_id.append_value(span_id);
        self.link_trace_state.append_option(trace_state);
        self.link_flags.append_option(flags);
        self.link_dropped.append_value(dropped);
    }

    /// Closes the current span, with `events` events and `links` links.
    pub(crate) fn end_span(&mut self, events: usize, links: usize) {
        let last = *self.event_offsets.last().unwrap_or(&0);
        self.event_offsets.push(last + events as i32);
        let last = *self.link_offsets.last().unwrap_or(&0);
        self.link_offsets.push(last + links as i32);
        self.rows += 1;
    }

    pub(crate) fn finish(mut self) -> Result<RecordBatch> {
        let schema = input_schema();
        let list = |name: &str, offsets: Vec<i32>, children: Vec<ArrayRef>| -> Result<ListArray> {
            let item = list_item(schema.field_with_name(name)?.data_type());
            let values = StructArray::try_new(struct_fields(item.data_type()), children, None)?;
            Ok(ListArray::try_new(
                item,
                OffsetBuffer::new(offsets.into()),
                Arc::new(values),
                None,
            )?)
        };
        let events = list(
            schema::col::EVENTS,
            std::mem::take(&mut self.event_offsets),
            vec![
                Arc::new(self.event_time.finish()),
                Arc::new(self.event_name.finish()),
                Arc::new(self.event_attributes.finish()?),
                Arc::new(self.event_dropped.finish()),
            ],
        )?;
        let links = list(
            schema::col::LINKS,
            std::mem::take(&mut self.link_offsets),
            vec![
                Arc::new(self.link_trace_id.finish()),
                Arc::new(self.link_span_id.finish()),
                Arc::new(self.link_trace_state.finish()),
                Arc::new(self.link_flags.finish()),
                Arc::new(self.link_attributes.finish()?),
                Arc::new(self.link_dropped.finish()),
            ],
        )?;
        let times = |values: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampNanosecondArray::from(values).with_timezone(schema::TIME_ZONE))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            times(std::mem::take(&mut self.start)),
            times(std::mem::take(&mut self.end)),
            Arc::new(self.duration.finish()),
            Arc::new(self.service_name.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.flags.finish()),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
            Arc::new(self.attributes.finish()?),
            Arc::new(self.resource.finish()?),
            Arc::new(events),
            Arc::new(links),
            Arc::new(self.dropped_attributes.finish()),
            Arc::new(self.dropped_events.finish()),
            Arc::new(self.dropped_links.finish()),
        ];
        debug_assert_eq!(columns.len(), schema.fields().len());
        let batch = RecordBatch::try_new_with_options(
            schema,
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(self.rows)),
        )?;
        Ok(batch)
    }
}

/// Converts spans to one batch of the input schema (SQL-facing types, every column set as
/// given). The batch still has to pass [`crate::table::ingest::to_storage`] to be stored.
pub fn spans_to_batch(spans: &[Span]) -> Result<RecordBatch> {
    let mut builder = SpanBatchBuilder::with_capacity(spans.len());
    for span in spans {
        builder.push_row(&SpanRow {
            trace_id: &span.trace_id,
            span_id: &span.span_id,
            parent_span_id: span.parent_span_id.as_deref(),
            trace_state: span.trace_state.as_deref(),
            flags: span.flags,
            name: &span.name,
            kind: span.kind,
            service_name: &span.service_name,
            start_time_unix_nano: span.start_time_unix_nano,
            end_time_unix_nano: span.end_time_unix_nano,
            status_code: span.status_code,
            status_message: span.status_message.as_deref(),
            scope_name: span.scope_name.as_deref(),
            scope_version: span.scope_version.as_deref(),
            dropped_attributes_count: span.dropped_attributes_count,
            dropped_events_count: span.dropped_events_count,
            dropped_links_count: span.dropped_links_count,
        });
        builder.attributes.append(Some(&span.attributes))?;
        builder.resource.append(Some(&span.resource_attributes))?;
        for e in &span.events {
            builder.push_event(e.time_unix_nano, &e.name, e.dropped_attributes_count);
            builder.event_attributes.append(Some(&e.attributes))?;
        }
        for l in &span.links {
            builder.push_link(
                &l.trace_id,
                &l.span_id,
                l.trace_state.as_deref(),
                l.flags,
                l.dropped_attributes_count,
            );
            builder.link_attributes.append(Some(&l.attributes))?;
        }
        builder.end_span(span.events.len(), span.links.len());
    }
    builder.finish()
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
