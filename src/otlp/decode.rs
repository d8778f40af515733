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

use crate::error::Result;
use crate::span::{AttributeValue, Attributes, Event, Link, Span, SpanKind, StatusCode};

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

fn hex_id(bytes: &[u8], len: usize) -> Option<String> {
    (bytes.len() == len && bytes.iter().any(|b| *b != 0)).then(|| hex::encode(bytes))
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
fn scalar(value: &any_value::Value) -> Option<AttributeValue> {
    Some(match value {
        any_value::Value::StringValue(s) => AttributeValue::String(s.clone()),
        any_value::Value::BoolValue(b) => AttributeValue::Bool(*b),
        any_value::Value::IntValue(i) => AttributeValue::Int(*i),
        any_value::Value::DoubleValue(d) => AttributeValue::Double(*d),
        any_value::Value::BytesValue(b) => AttributeValue::Bytes(b.clone()),
        _ => return None,
    })
}

/// Appends `key = value` to `out`, keeping the value's type. Arrays of scalars stay arrays;
/// key-value lists, and arrays holding lists or arrays, are flattened into dotted keys
/// (`key.member`, `key.0`), each member keeping its type. An empty value is no value.
fn flatten(key: &str, value: Option<&AnyValue>, out: &mut Attributes) {
    let Some(value) = value.and_then(|v| v.value.as_ref()) else {
        return;
    };
    if let Some(s) = scalar(value) {
        out.push((key.to_string(), s));
        return;
    }
    match value {
        any_value::Value::ArrayValue(array) => {
            let items: Option<Vec<AttributeValue>> = array
                .values
                .iter()
                .filter_map(|v| v.value.as_ref())
                .map(scalar)
                .collect();
            match items {
                Some(items) => out.push((key.to_string(), AttributeValue::Array(items))),
                None => {
                    for (i, item) in array.values.iter().enumerate() {
                        flatten(&format!("{key}.{i}"), Some(item), out);
                    }
                }
            }
        }
        any_value::Value::KvlistValue(list) => {
            for kv in &list.values {
                flatten(&format!("{key}.{}", kv.key), kv.value.as_ref(), out);
            }
        }
        _ => {}
    }
}

fn attributes(key_values: &[KeyValue]) -> Attributes {
    let mut out = Vec::with_capacity(key_values.len());
    for kv in key_values {
        flatten(&kv.key, kv.value.as_ref(), &mut out);
    }
    out
}

/// A time in unix nanoseconds, if it fits the table's signed 64-bit nanoseconds.
fn time(value: u64) -> Option<i64> {
    i64::try_from(value).ok()
}

/// Checks and converts every span of `request`.
pub fn spans(request: &ExportTraceServiceRequest) -> Result<DecodedSpans> {
    let mut out: Vec<Span> = Vec::new();
    let mut rejected = 0usize;
    let mut notes: Vec<String> = Vec::new();
    let mut reject = |notes: &mut Vec<String>, reason: String| {
        rejected += 1;
        if notes.len() < MAX_REASONS {
            notes.push(reason);
        }
    };
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                (SERVICE_NAME, AttributeValue::String(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
        for scope_spans in &resource_spans.scope_spans {
            let (scope_name, scope_version) = match &scope_spans.scope {
                Some(scope) => (
                    (!scope.name.is_empty()).then(|| scope.name.clone()),
                    (!scope.version.is_empty()).then(|| scope.version.clone()),
                ),
                None => (None, None),
            };
            for span in &scope_spans.spans {
                let Some(trace_id) = hex_id(&span.trace_id, 16) else {
                    reject(
                        &mut notes,
                        format!(
                            "span {:?}: trace id is not 16 bytes, or all zero ({} bytes)",
                            span.name,
                            span.trace_id.len()
                        ),
                    );
                    continue;
                };
                let Some(span_id) = hex_id(&span.span_id, 8) else {
                    reject(
                        &mut notes,
                        format!(
                            "span {:?} of trace {trace_id}: span id is not 8 bytes, or all zero ({} bytes)",
                            span.name,
                            span.span_id.len()
                        ),
                    );
                    continue;
                };
                let parent_span_id = match span.parent_span_id.len() {
                    0 => None,
                    8 => hex_id(&span.parent_span_id, 8),
                    n => {
                        reject(
                            &mut notes,
                            format!(
                                "span {span_id} of trace {trace_id}: parent span id is {n} bytes, not 8"
                            ),
                        );
                        continue;
                    }
                };
                let (Some(start), Some(end)) = (
                    time(span.start_time_unix_nano),
                    time(span.end_time_unix_nano),
                ) else {
                    reject(
                        &mut notes,
                        format!(
                            "span {span_id} of trace {trace_id}: a time is after the year 2262"
                        ),
                    );
                    continue;
                };
                if start == 0 {
                    reject(
                        &mut notes,
                        format!(
                            "span {span_id} of trace {trace_id}: start_time_unix_nano is required"
                        ),
                    );
                    continue;
                }
                if end < start {
                    reject(
                        &mut notes,
                        format!(
                            "span {span_id} of trace {trace_id}: end time {end} is before start time {start}"
                        ),
                    );
                    continue;
                }
                let events: Option<Vec<Event>> = span
                    .events
                    .iter()
                    .map(|e| {
                        Some(Event {
                            time_unix_nano: time(e.time_unix_nano)?,
                            name: e.name.clone(),
                            attributes: attributes(&e.attributes),
                            dropped_attributes_count: e.dropped_attributes_count as i64,
                        })
                    })
                    .collect();
                let Some(events) = events else {
                    reject(
                        &mut notes,
                        format!(
                            "span {span_id} of trace {trace_id}: an event time is after the year 2262"
                        ),
                    );
                    continue;
                };
                let links = span
                    .links
                    .iter()
                    .map(|l| Link {
                        trace_id: hex::encode(&l.trace_id),
                        span_id: hex::encode(&l.span_id),
                        trace_state: (!l.trace_state.is_empty()).then(|| l.trace_state.clone()),
                        flags: (l.flags != 0).then_some(l.flags as i64),
                        attributes: attributes(&l.attributes),
                        dropped_attributes_count: l.dropped_attributes_count as i64,
                    })
                    .collect();
                let (status_code, status_message) = match &span.status {
                    Some(s) => (
                        status(s.code),
                        (!s.message.is_empty()).then(|| s.message.clone()),
                    ),
                    None => (StatusCode::Unset, None),
                };
                out.push(Span {
                    trace_id,
                    span_id,
                    parent_span_id,
                    trace_state: (!span.trace_state.is_empty()).then(|| span.trace_state.clone()),
                    flags: Some(span.flags as i64),
                    name: span.name.clone(),
                    kind: kind(span.kind),
                    service_name: service.clone(),
                    start_time_unix_nano: start,
                    end_time_unix_nano: end,
                    status_code,
                    status_message,
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    attributes: attributes(&span.attributes),
                    resource_attributes: resource.clone(),
                    events,
                    links,
                    dropped_attributes_count: span.dropped_attributes_count as i64,
                    dropped_events_count: span.dropped_events_count as i64,
                    dropped_links_count: span.dropped_links_count as i64,
                });
            }
        }
    }
    if rejected > notes.len() {
        notes.push(format!("{} more spans rejected", rejected - notes.len()));
    }
    Ok(DecodedSpans {
        accepted: out.len(),
        batch: crate::span::spans_to_batch(&out)?,
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

    fn span(trace: &[u8], id: &[u8]) -> opentelemetry_proto::tonic::trace::v1::Span {
        opentelemetry_proto::tonic::trace::v1::Span {
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
        let mut out = Vec::new();
        for kv in &s.attributes {
            flatten(&kv.key, kv.value.as_ref(), &mut out);
        }
        assert_eq!(
            out,
            vec![
                ("s".to_string(), AttributeValue::String("x".into())),
                ("i".to_string(), AttributeValue::Int(-3)),
                ("d".to_string(), AttributeValue::Double(1.5)),
                ("b".to_string(), AttributeValue::Bool(true)),
                ("y".to_string(), AttributeValue::Bytes(vec![0, 255])),
                (
                    "a".to_string(),
                    AttributeValue::Array(vec![AttributeValue::Int(7)])
                ),
                ("m.k".to_string(), AttributeValue::Bool(false)),
                ("m.n.deep".to_string(), AttributeValue::Double(2.0)),
            ]
        );
        let decoded = spans(&request(vec![s])).unwrap();
        assert_eq!(decoded.accepted, 1);
        assert!(decoded.partial_success().is_none());
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
