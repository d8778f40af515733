//! From an OTLP `ExportTraceServiceRequest` to span rows: every span checked, the valid ones
//! converted (ids to lowercase hex, the resource's `service.name` to `service_name`, every
//! attribute value kept typed), the invalid ones counted and described for
//! `partial_success`, never stored.

use arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

use opentelemetry_proto::tonic::trace::v1::Span;

use crate::error::Result;
use crate::span::{AttributeMapColumn, ScalarRef, SpanBatchBuilder, SpanKind, SpanRow, StatusCode};

/// The resource attribute that names the service.
const SERVICE_NAME: &str = "service.name";
/// The service name of spans whose resource has none (as the OpenTelemetry resource
/// specification says).
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// Reasons kept for the `partial_success` message.
const MAX_REASONS: usize = 5;

/// A request's spans, checked: the valid ones as rows, the others counted with reasons.
#[derive(Debug)]
pub struct DecodedSpans {
    /// The valid spans, in the columns of `spans` (the input schema).
    pub batch: RecordBatch,
    /// Spans in `batch`.
    pub accepted: usize,
    /// Spans rejected as invalid.
    pub rejected: usize,
    /// Why spans were rejected (the first few), and fields that were ignored.
    pub notes: Vec<String>,
}

impl DecodedSpans {
    /// The `partial_success` of the answer: `None` when every span was accepted and nothing
    /// was ignored.
    pub fn partial_success(&self) -> Option<ExportTracePartialSuccess> {
        if self.rejected == 0 && self.notes.is_empty() {
            return None;
        }
        Some(ExportTracePartialSuccess {
            rejected_spans: self.rejected as i64,
            error_message: self.notes.join("; "),
        })
    }
}

/// Decodes a protobuf `ExportTraceServiceRequest`.
pub fn decode_protobuf(body: &[u8]) -> std::result::Result<ExportTraceServiceRequest, String> {
    ExportTraceServiceRequest::decode(body)
        .map_err(|e| format!("the body is not OTLP protobuf: {e}"))
}

/// Whether `bytes` is a valid id of `len` bytes (not all zero).
fn valid_id(bytes: &[u8], len: usize) -> bool {
    bytes.len() == len && bytes.iter().any(|b| *b != 0)
}

/// Lowercase hex of `bytes` (at most 32), in `buf`.
fn hex_in<'a>(bytes: &[u8], buf: &'a mut [u8; 64]) -> &'a str {
    let n = bytes.len().min(32);
    let out = &mut buf[..n * 2];
    // Cannot fail: the output is exactly twice the input.
    let _ = hex::encode_to_slice(&bytes[..n], out);
    std::str::from_utf8(out).unwrap_or_default()
}

fn kind(kind: i32) -> SpanKind {
    match kind {
        1 => SpanKind::Internal,
        2 => SpanKind::Server,
        3 => SpanKind::Client,
        4 => SpanKind::Producer,
        5 => SpanKind::Consumer,
        _ => SpanKind::Unspecified,
    }
}

fn status(code: i32) -> StatusCode {
    match code {
        1 => StatusCode::Ok,
        2 => StatusCode::Error,
        _ => StatusCode::Unset,
    }
}

/// A scalar `AnyValue`; `None` for arrays, key-value lists and empty values.
fn scalar(value: &any_value::Value) -> Option<ScalarRef<'_>> {
    Some(match value {
        any_value::Value::StringValue(s) => ScalarRef::String(s),
        any_value::Value::BoolValue(b) => ScalarRef::Bool(*b),
        any_value::Value::IntValue(i) => ScalarRef::Int(*i),
        any_value::Value::DoubleValue(d) => ScalarRef::Double(*d),
        any_value::Value::BytesValue(b) => ScalarRef::Bytes(b),
        _ => return None,
    })
}

/// Adds `key = value` to the current row of `map`, keeping the value's type. Arrays of scalars
/// stay arrays; key-value lists, and arrays holding lists or arrays, are flattened into dotted
/// keys (`key.member`, `key.0`), each member keeping its type. An empty value is no value.
fn push(map: &mut AttributeMapColumn, key: &str, value: Option<&AnyValue>) {
    let Some(value) = value.and_then(|v| v.value.as_ref()) else {
        return;
    };
    if let Some(s) = scalar(value) {
        map.push_scalar(key, s);
        return;
    }
    match value {
        any_value::Value::ArrayValue(array) => {
            let all_scalars = array
                .values
                .iter()
                .filter_map(|v| v.value.as_ref())
                .all(|v| scalar(v).is_some());
            if all_scalars {
                map.push_array(
                    key,
                    array
                        .values
                        .iter()
                        .filter_map(|v| v.value.as_ref())
                        .filter_map(scalar),
                );
            } else {
                for (i, item) in array.values.iter().enumerate() {
                    push(map, &format!("{key}.{i}"), Some(item));
                }
            }
        }
        any_value::Value::KvlistValue(list) => {
            for kv in &list.values {
                push(map, &format!("{key}.{}", kv.key), kv.value.as_ref());
            }
        }
        _ => {}
    }
}

/// Adds a row of `key_values` to `map`.
fn push_row(map: &mut AttributeMapColumn, key_values: &[KeyValue]) {
    for kv in key_values {
        push(map, &kv.key, kv.value.as_ref());
    }
    map.end_row(true);
}

/// A time in unix nanoseconds, if it fits the table's signed 64-bit nanoseconds.
fn time(value: u64) -> Option<i64> {
    i64::try_from(value).ok()
}

/// Why a span is rejected, if it is.
fn invalid(span: &Span) -> Option<String> {
    let mut buf = [0u8; 64];
    if !valid_id(&span.trace_id, 16) {
        return Some(format!(
            "span {:?}: trace id is not 16 bytes, or all zero ({} bytes)",
            span.name,
            span.trace_id.len()
        ));
    }
    let trace = hex_in(&span.trace_id, &mut buf).to_string();
    if !valid_id(&span.span_id, 8) {
        return Some(format!(
            "span {:?} of trace {trace}: span id is not 8 bytes, or all zero ({} bytes)",
            span.name,
            span.span_id.len()
        ));
    }
    let id = hex_in(&span.span_id, &mut buf).to_string();
    let n = span.parent_span_id.len();
    if n != 0 && n != 8 {
        return Some(format!(
            "span {id} of trace {trace}: parent span id is {n} bytes, not 8"
        ));
    }
    let (Some(start), Some(end)) = (
        time(span.start_time_unix_nano),
        time(span.end_time_unix_nano),
    ) else {
        return Some(format!(
            "span {id} of trace {trace}: a time is after the year 2262"
        ));
    };
    if start == 0 {
        return Some(format!(
            "span {id} of trace {trace}: start_time_unix_nano is required"
        ));
    }
    if end < start {
        return Some(format!(
            "span {id} of trace {trace}: end time {end} is before start time {start}"
        ));
    }
    if span.events.iter().any(|e| time(e.time_unix_nano).is_none()) {
        return Some(format!(
            "span {id} of trace {trace}: an event time is after the year 2262"
        ));
    }
    None
}

/// Checks and converts every span of `request`.
pub fn spans(request: &ExportTraceServiceRequest) -> Result<DecodedSpans> {
    let total: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let mut out = SpanBatchBuilder::with_capacity(total);
    let mut accepted = 0usize;
    let mut rejected = 0usize;
    let mut notes: Vec<String> = Vec::new();
    let (mut trace_buf, mut span_buf, mut parent_buf) = ([0u8; 64], [0u8; 64], [0u8; 64]);
    let (mut link_trace_buf, mut link_span_buf) = ([0u8; 64], [0u8; 64]);
    for resource_spans in &request.resource_spans {
        let resource: &[KeyValue] = resource_spans
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let service = resource
            .iter()
            .find_map(
                |kv| match (kv.key.as_str(), kv.value.as_ref()?.value.as_ref()?) {
                    (SERVICE_NAME, any_value::Value::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                },
            )
            .unwrap_or(UNKNOWN_SERVICE);
        for scope_spans in &resource_spans.scope_spans {
            let (scope_name, scope_version) = match &scope_spans.scope {
                Some(scope) => (
                    (!scope.name.is_empty()).then_some(scope.name.as_str()),
                    (!scope.version.is_empty()).then_some(scope.version.as_str()),
                ),
                None => (None, None),
            };
            for span in &scope_spans.spans {
                if let Some(reason) = invalid(span) {
                    rejected += 1;
                    if notes.len() < MAX_REASONS {
                        notes.push(reason);
                    }
                    continue;
                }
                let parent = valid_id(&span.parent_span_id, 8)
                    .then(|| hex_in(&span.parent_span_id, &mut parent_buf) as &str);
                let (status_code, status_message) = match &span.status {
                    Some(s) => (
                        status(s.code),
                        (!s.message.is_empty()).then_some(s.message.as_str()),
                    ),
                    None => (StatusCode::Unset, None),
                };
                out.push_row(&SpanRow {
                    trace_id: hex_in(&span.trace_id, &mut trace_buf),
                    span_id: hex_in(&span.span_id, &mut span_buf),
                    parent_span_id: parent,
                    trace_state: (!span.trace_state.is_empty())
                        .then_some(span.trace_state.as_str()),
                    flags: Some(span.flags as i64),
                    name: &span.name,
                    kind: kind(span.kind),
                    service_name: service,
                    // Checked by `invalid`.
                    start_time_unix_nano: time(span.start_time_unix_nano).unwrap_or_default(),
                    end_time_unix_nano: time(span.end_time_unix_nano).unwrap_or_default(),
                    status_code,
                    status_message,
                    scope_name,
                    scope_version,
                    dropped_attributes_count: span.dropped_attributes_count as i64,
                    dropped_events_count: span.dropped_events_count as i64,
                    dropped_links_count: span.dropped_links_count as i64,
                });
                push_row(&mut out.attributes, &span.attributes);
                push_row(&mut out.resource, resource);
                for e in &span.events {
                    out.push_event(
                        time(e.time_unix_nano).unwrap_or_default(),
                        &e.name,
                        e.dropped_attributes_count as i64,
                    );
                    push_row(&mut out.event_attributes, &e.attributes);
                }
                for l in &span.links {
                    out.push_link(
                        hex_in(&l.trace_id, &mut link_trace_buf),
                        hex_in(&l.span_id, &mut link_span_buf),
                        (!l.trace_state.is_empty()).then_some(l.trace_state.as_str()),
                        (l.flags != 0).then_some(l.flags as i64),
                        l.dropped_attributes_count as i64,
                    );
                    push_row(&mut out.link_attributes, &l.attributes);
                }
                out.end_span(span.events.len(), span.links.len());
                accepted += 1;
            }
        }
    }
    if rejected > notes.len() {
        notes.push(format!("{} more spans rejected", rejected - notes.len()));
    }
    Ok(DecodedSpans {
        accepted,
        batch: out.finish()?,
        rejected,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request(
        spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv(
                        "service.name",
                        any_value::Value::StringValue("cart".into()),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn span(trace: &[u8], id: &[u8]) -> Span {
        Span {
            trace_id: trace.to_vec(),
            span_id: id.to_vec(),
            name: "op".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            ..Default::default()
        }
    }

    #[test]
    fn invalid_spans_are_counted_and_described_never_stored() {
        let good = span(&[1; 16], &[2; 8]);
        let mut late = span(&[1; 16], &[3; 8]);
        late.end_time_unix_nano = u64::MAX;
        let decoded = spans(&request(vec![
            good,
            span(&[0; 16], &[2; 8]),
            span(&[1; 15], &[2; 8]),
            span(&[1; 16], &[0; 8]),
            late,
        ]))
        .unwrap();
        assert_eq!((decoded.accepted, decoded.rejected), (1, 4));
        assert_eq!(decoded.batch.num_rows(), 1);
        let partial = decoded.partial_success().unwrap();
        assert_eq!(partial.rejected_spans, 4);
        assert!(
            partial.error_message.contains("trace id is not 16 bytes"),
            "{}",
            partial.error_message
        );
        assert!(
            partial.error_message.contains("after the year 2262"),
            "{}",
            partial.error_message
        );
    }

    #[test]
    fn every_any_value_type_is_kept_typed() {
        let mut s = span(&[1; 16], &[2; 8]);
        s.attributes = vec![
            kv("s", any_value::Value::StringValue("x".into())),
            kv("i", any_value::Value::IntValue(-3)),
            kv("d", any_value::Value::DoubleValue(1.5)),
            kv("b", any_value::Value::BoolValue(true)),
            kv("y", any_value::Value::BytesValue(vec![0, 255])),
            kv(
                "a",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::IntValue(7)),
                    }],
                }),
            ),
            kv(
                "m",
                any_value::Value::KvlistValue(KeyValueList {
                    values: vec![
                        kv("k", any_value::Value::BoolValue(false)),
                        kv(
                            "n",
                            any_value::Value::KvlistValue(KeyValueList {
                                values: vec![kv("deep", any_value::Value::DoubleValue(2.0))],
                            }),
                        ),
                    ],
                }),
            ),
        ];
        let decoded = spans(&request(vec![s])).unwrap();
        assert_eq!(decoded.accepted, 1);
        assert!(decoded.partial_success().is_none());
        // Read back through the same conversion the table uses.
        let map = decoded
            .batch
            .column_by_name("attributes")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::MapArray>()
            .unwrap()
            .clone();
        let keys: Vec<String> = {
            use arrow::array::AsArray;
            map.keys()
                .as_string::<i32>()
                .iter()
                .map(|k| k.unwrap().to_string())
                .collect()
        };
        assert_eq!(keys, ["s", "i", "d", "b", "y", "a", "m.k", "m.n.deep"]);
        let types: Vec<String> = {
            use arrow::array::AsArray;
            map.values()
                .as_struct()
                .column(0)
                .as_string::<i32>()
                .iter()
                .map(|k| k.unwrap().to_string())
                .collect()
        };
        assert_eq!(
            types,
            [
                "string", "int", "double", "bool", "bytes", "array", "bool", "double"
            ]
        );
    }

    #[test]
    fn a_resource_without_service_name_is_unknown_service() {
        let mut r = request(vec![span(&[1; 16], &[2; 8])]);
        r.resource_spans[0].resource = None;
        let decoded = spans(&r).unwrap();
        let service = decoded
            .batch
            .column_by_name("service_name")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .value(0)
            .to_string();
        assert_eq!(service, UNKNOWN_SERVICE);
    }
}
