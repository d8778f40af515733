//! Span rows (the SQL columns of `spans`) back to OTLP: `ResourceSpans` grouped by resource and
//! instrumentation scope, as Tempo's trace-by-id answers carry them. Reads only the batches it
//! is given.

use std::collections::HashMap;

use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, Float64Array, Int64Array, ListArray, MapArray,
    RecordBatch, StringArray, StructArray, TimestampNanosecondArray,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};

use crate::error::{Result, TraceLakeError};
use crate::schema::col;

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            TraceLakeError::SchemaMismatch(format!(
                "the span rows lack column {name} of the expected type"
            ))
        })
}

fn text(array: &StringArray, row: usize) -> String {
    if array.is_valid(row) {
        array.value(row).to_string()
    } else {
        String::new()
    }
}

fn scalar(value: &StructArray, row: usize) -> Option<any_value::Value> {
    let kind = value.column_by_name("type")?.as_string_opt::<i32>()?;
    if !kind.is_valid(row) {
        return None;
    }
    let field = |name: &str| value.column_by_name(name);
    Some(match kind.value(row) {
        "string" => any_value::Value::StringValue(
            field("string_value")?
                .as_string_opt::<i32>()?
                .value(row)
                .to_string(),
        ),
        "int" => any_value::Value::IntValue(
            field("int_value")?
                .as_any()
                .downcast_ref::<Int64Array>()?
                .value(row),
        ),
        "double" => any_value::Value::DoubleValue(
            field("double_value")?
                .as_any()
                .downcast_ref::<Float64Array>()?
                .value(row),
        ),
        "bool" => any_value::Value::BoolValue(
            field("bool_value")?
                .as_any()
                .downcast_ref::<BooleanArray>()?
                .value(row),
        ),
        "bytes" => any_value::Value::BytesValue(
            field("bytes_value")?
                .as_any()
                .downcast_ref::<BinaryArray>()?
                .value(row)
                .to_vec(),
        ),
        "array" => {
            let list = field("array_value")?.as_any().downcast_ref::<ListArray>()?;
            let items = list.value(row);
            let items = items.as_struct_opt()?;
            any_value::Value::ArrayValue(ArrayValue {
                values: (0..items.len())
                    .map(|i| AnyValue {
                        value: scalar(items, i),
                    })
                    .collect(),
            })
        }
        _ => return None,
    })
}

/// The attributes of `row` of a map column, as OTLP key-values.
pub(crate) fn attributes(map: &MapArray, row: usize) -> Vec<KeyValue> {
    if !map.is_valid(row) {
        return Vec::new();
    }
    let entries = map.value(row);
    let Some(keys) = entries.column(0).as_string_opt::<i32>() else {
        return Vec::new();
    };
    let Some(values) = entries.column(1).as_struct_opt() else {
        return Vec::new();
    };
    (0..entries.len())
        .map(|i| KeyValue {
            key: keys.value(i).to_string(),
            value: Some(AnyValue {
                value: scalar(values, i),
            }),
            ..Default::default()
        })
        .collect()
}

fn id_bytes(array: &StringArray, row: usize) -> Vec<u8> {
    if array.is_valid(row) {
        hex::decode(array.value(row)).unwrap_or_default()
    } else {
        Vec::new()
    }
}

fn kind_number(kind: &str) -> i32 {
    crate::schema::SPAN_KINDS
        .iter()
        .position(|k| *k == kind)
        .map(|p| p as i32)
        .unwrap_or(0)
}

fn status_number(status: &str) -> i32 {
    crate::schema::STATUS_CODES
        .iter()
        .position(|k| *k == status)
        .map(|p| p as i32)
        .unwrap_or(0)
}

/// One span row as an OTLP span.
fn span_of(batch: &RecordBatch, row: usize) -> Result<Span> {
    let s = |name| column::<StringArray>(batch, name);
    let i = |name| column::<Int64Array>(batch, name);
    let t = |name| column::<TimestampNanosecondArray>(batch, name);
    let maps = |name| column::<MapArray>(batch, name);
    let mut events = Vec::new();
    let event_list = column::<ListArray>(batch, col::EVENTS)?;
    if event_list.is_valid(row) {
        let items = event_list.value(row);
        if let Some(items) = items.as_struct_opt() {
            let time = items
                .column_by_name("time_unix_nano")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
            let name = items
                .column_by_name("name")
                .and_then(|c| c.as_string_opt::<i32>());
            let attrs = items
                .column_by_name("attributes")
                .and_then(|c| c.as_map_opt());
            let dropped = items
                .column_by_name("dropped_attributes_count")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
            for e in 0..items.len() {
                events.push(span::Event {
                    time_unix_nano: time.map(|t| t.value(e) as u64).unwrap_or(0),
                    name: name
                        .filter(|n| n.is_valid(e))
                        .map(|n| n.value(e).to_string())
                        .unwrap_or_default(),
                    attributes: attrs.map(|a| attributes(a, e)).unwrap_or_default(),
                    dropped_attributes_count: dropped.map(|d| d.value(e) as u32).unwrap_or(0),
                });
            }
        }
    }
    let mut links = Vec::new();
    let link_list = column::<ListArray>(batch, col::LINKS)?;
    if link_list.is_valid(row) {
        let items = link_list.value(row);
        if let Some(items) = items.as_struct_opt() {
            let strings = |n: &str| {
                items
                    .column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            };
            let (trace, span_ids, state) = (
                strings("trace_id"),
                strings("span_id"),
                strings("trace_state"),
            );
            let flags = items
                .column_by_name("flags")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
            let attrs = items
                .column_by_name("attributes")
                .and_then(|c| c.as_map_opt());
            let dropped = items
                .column_by_name("dropped_attributes_count")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
            for l in 0..items.len() {
                links.push(span::Link {
                    trace_id: trace.as_ref().map(|a| id_bytes(a, l)).unwrap_or_default(),
                    span_id: span_ids
                        .as_ref()
                        .map(|a| id_bytes(a, l))
                        .unwrap_or_default(),
                    trace_state: state.as_ref().map(|a| text(a, l)).unwrap_or_default(),
                    attributes: attrs.map(|a| attributes(a, l)).unwrap_or_default(),
                    dropped_attributes_count: dropped.map(|d| d.value(l) as u32).unwrap_or(0),
                    flags: flags
                        .filter(|f| f.is_valid(l))
                        .map(|f| f.value(l) as u32)
                        .unwrap_or(0),
                });
            }
        }
    }
    let flags = i(col::FLAGS)?;
    Ok(Span {
        trace_id: id_bytes(s(col::TRACE_ID)?, row),
        span_id: id_bytes(s(col::SPAN_ID)?, row),
        trace_state: text(s(col::TRACE_STATE)?, row),
        parent_span_id: id_bytes(s(col::PARENT_SPAN_ID)?, row),
        flags: if flags.is_valid(row) {
            flags.value(row) as u32
        } else {
            0
        },
        name: text(s(col::NAME)?, row),
        kind: kind_number(s(col::KIND)?.value(row)),
        start_time_unix_nano: t(col::START_TIME)?.value(row) as u64,
        end_time_unix_nano: t(col::END_TIME)?.value(row) as u64,
        attributes: attributes(maps(col::ATTRIBUTES)?, row),
        dropped_attributes_count: i(col::DROPPED_ATTRIBUTES_COUNT)?.value(row) as u32,
        events,
        dropped_events_count: i(col::DROPPED_EVENTS_COUNT)?.value(row) as u32,
        links,
        dropped_links_count: i(col::DROPPED_LINKS_COUNT)?.value(row) as u32,
        status: Some(Status {
            message: text(s(col::STATUS_MESSAGE)?, row),
            code: status_number(s(col::STATUS_CODE)?.value(row)),
        }),
    })
}

/// The spans of `batches` (every SQL column of `spans`) as OTLP `ResourceSpans`: one per
/// distinct resource (its attributes, `service.name` added from `service_name` when they lack
/// it), one `ScopeSpans` per instrumentation scope within it, spans in row order.
pub fn resource_spans(batches: &[RecordBatch]) -> Result<Vec<ResourceSpans>> {
    let mut out: Vec<ResourceSpans> = Vec::new();
    let mut by_resource: HashMap<String, usize> = HashMap::new();
    for batch in batches {
        let resources = column::<MapArray>(batch, col::RESOURCE_ATTRIBUTES)?;
        let services = column::<StringArray>(batch, col::SERVICE_NAME)?;
        let scope_names = column::<StringArray>(batch, col::SCOPE_NAME)?;
        let scope_versions = column::<StringArray>(batch, col::SCOPE_VERSION)?;
        for row in 0..batch.num_rows() {
            let mut resource = attributes(resources, row);
            if !resource.iter().any(|kv| kv.key == "service.name") {
                resource.insert(
                    0,
                    KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(text(services, row))),
                        }),
                        ..Default::default()
                    },
                );
            }
            let key = format!("{resource:?}");
            let at = *by_resource.entry(key).or_insert_with(|| {
                out.push(ResourceSpans {
                    resource: Some(Resource {
                        attributes: resource,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                out.len() - 1
            });
            let (name, version) = (text(scope_names, row), text(scope_versions, row));
            let scopes = &mut out[at].scope_spans;
            let position = scopes.iter().position(|s| {
                s.scope
                    .as_ref()
                    .is_some_and(|sc| sc.name == name && sc.version == version)
            });
            let position = match position {
                Some(p) => p,
                None => {
                    scopes.push(ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name,
                            version,
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                    scopes.len() - 1
                }
            };
            scopes[position].spans.push(span_of(batch, row)?);
        }
    }
    Ok(out)
}
