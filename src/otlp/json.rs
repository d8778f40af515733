//! OTLP/JSON, as the OTLP specification has it: lowerCamelCase keys (snake_case keys accepted
//! too, as the Collector does), trace and span ids as hex strings (either case), 64-bit
//! integers as strings or numbers, enums as integers (or their names), bytes as base64.
//!
//! Decoding is lenient where the protobuf encoding is: an id that is not valid hex becomes an
//! empty id, which the span check then rejects (counted in `partial_success`) instead of
//! failing the whole request. Keys that are not fields of the message are reported, not
//! dropped silently: they come back as notes the receiver puts in `partial_success`.

use crate::schema::{SPAN_KINDS, STATUS_CODES};
use base64::Engine;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Map, Value};

/// A body that is not OTLP/JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(pub String);

type Result<T> = std::result::Result<T, JsonError>;

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`; returns it with notes on keys that were
/// not fields of their message (ignored).
pub fn decode(body: &[u8]) -> Result<(ExportTraceServiceRequest, Vec<String>)> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| JsonError(format!("the body is not JSON: {e}")))?;
    let mut decoder = Decoder::default();
    let request = decoder.request(&value)?;
    Ok((request, decoder.unknown))
}

#[derive(Default)]
struct Decoder {
    unknown: Vec<String>,
}

/// The lowerCamelCase form of a snake_case key (keys already in camelCase are unchanged).
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The fields of one JSON object, by their lowerCamelCase names.
struct Fields<'a> {
    path: String,
    entries: Vec<(String, &'a Value)>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.entries
            .iter()
            .find(|(k, v)| k == name && !v.is_null())
            .map(|(_, v)| *v)
    }
}

impl Decoder {
    /// The object at `path`, checking its keys against `known` (lowerCamelCase).
    fn object<'a>(&mut self, value: &'a Value, path: &str, known: &[&str]) -> Result<Fields<'a>> {
        let map: &'a Map<String, Value> = value
            .as_object()
            .ok_or_else(|| JsonError(format!("{path} must be a JSON object, got {value}")))?;
        let mut entries = Vec::with_capacity(map.len());
        for (key, v) in map {
            let name = camel(key);
            if !known.contains(&name.as_str()) {
                let note = format!("{path}.{key}");
                if self.unknown.len() < 10 && !self.unknown.contains(&note) {
                    self.unknown.push(note);
                }
                continue;
            }
            entries.push((name, v));
        }
        Ok(Fields {
            path: path.to_string(),
            entries,
        })
    }

    fn array<'a>(&self, fields: &Fields<'a>, name: &str) -> Result<&'a [Value]> {
        match fields.get(name) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(JsonError(format!(
                "{}.{name} must be an array, got {other}",
                fields.path
            ))),
        }
    }

    fn request(&mut self, value: &Value) -> Result<ExportTraceServiceRequest> {
        let fields = self.object(value, "request", &["resourceSpans"])?;
        let resource_spans = self
            .array(&fields, "resourceSpans")?
            .iter()
            .map(|v| self.resource_spans(v))
            .collect::<Result<_>>()?;
        Ok(ExportTraceServiceRequest { resource_spans })
    }

    fn resource_spans(&mut self, value: &Value) -> Result<ResourceSpans> {
        let path = "resourceSpans[]";
        let fields = self.object(value, path, &["resource", "scopeSpans", "schemaUrl"])?;
        let resource = match fields.get("resource") {
            Some(r) => {
                let r = self.object(
                    r,
                    "resourceSpans[].resource",
                    &["attributes", "droppedAttributesCount", "entityRefs"],
                )?;
                Some(Resource {
                    attributes: self.key_values(&r, "attributes")?,
                    dropped_attributes_count: uint(&r, "droppedAttributesCount")? as u32,
                    entity_refs: Vec::new(),
                })
            }
            None => None,
        };
        let scope_spans = self
            .array(&fields, "scopeSpans")?
            .iter()
            .map(|v| self.scope_spans(v))
            .collect::<Result<_>>()?;
        Ok(ResourceSpans {
            resource,
            scope_spans,
            schema_url: string(&fields, "schemaUrl")?,
        })
    }

    fn scope_spans(&mut self, value: &Value) -> Result<ScopeSpans> {
        let path = "resourceSpans[].scopeSpans[]";
        let fields = self.object(value, path, &["scope", "spans", "schemaUrl"])?;
        let scope = match fields.get("scope") {
            Some(s) => {
                let s = self.object(
                    s,
                    "scopeSpans[].scope",
                    &["name", "version", "attributes", "droppedAttributesCount"],
                )?;
                Some(InstrumentationScope {
                    name: string(&s, "name")?,
                    version: string(&s, "version")?,
                    attributes: self.key_values(&s, "attributes")?,
                    dropped_attributes_count: uint(&s, "droppedAttributesCount")? as u32,
                })
            }
            None => None,
        };
        let spans = self
            .array(&fields, "spans")?
            .iter()
            .map(|v| self.span(v))
            .collect::<Result<_>>()?;
        Ok(ScopeSpans {
            scope,
            spans,
            schema_url: string(&fields, "schemaUrl")?,
        })
    }

    fn span(&mut self, value: &Value) -> Result<Span> {
        let fields = self.object(
            value,
            "spans[]",
            &[
                "traceId",
                "spanId",
                "traceState",
                "parentSpanId",
                "flags",
                "name",
                "kind",
                "startTimeUnixNano",
                "endTimeUnixNano",
                "attributes",
                "droppedAttributesCount",
                "events",
                "droppedEventsCount",
                "links",
                "droppedLinksCount",
                "status",
            ],
        )?;
        let events = self
            .array(&fields, "events")?
            .iter()
            .map(|v| {
                let e = self.object(
                    v,
                    "spans[].events[]",
                    &[
                        "timeUnixNano",
                        "name",
                        "attributes",
                        "droppedAttributesCount",
                    ],
                )?;
                Ok(Event {
                    time_unix_nano: uint(&e, "timeUnixNano")?,
                    name: string(&e, "name")?,
                    attributes: self.key_values(&e, "attributes")?,
                    dropped_attributes_count: uint(&e, "droppedAttributesCount")? as u32,
                })
            })
            .collect::<Result<_>>()?;
        let links = self
            .array(&fields, "links")?
            .iter()
            .map(|v| {
                let l = self.object(
                    v,
                    "spans[].links[]",
                    &[
                        "traceId",
                        "spanId",
                        "traceState",
                        "attributes",
                        "droppedAttributesCount",
                        "flags",
                    ],
                )?;
                Ok(Link {
                    trace_id: hex_id(&l, "traceId")?,
                    span_id: hex_id(&l, "spanId")?,
                    trace_state: string(&l, "traceState")?,
                    attributes: self.key_values(&l, "attributes")?,
                    dropped_attributes_count: uint(&l, "droppedAttributesCount")? as u32,
                    flags: uint(&l, "flags")? as u32,
                })
            })
            .collect::<Result<_>>()?;
        let status = match fields.get("status") {
            Some(s) => {
                let s = self.object(s, "spans[].status", &["message", "code"])?;
                Some(Status {
                    message: string(&s, "message")?,
                    code: enumeration(&s, "code", "STATUS_CODE_", &STATUS_CODES)?,
                })
            }
            None => None,
        };
        Ok(Span {
            trace_id: hex_id(&fields, "traceId")?,
            span_id: hex_id(&fields, "spanId")?,
            trace_state: string(&fields, "traceState")?,
            parent_span_id: hex_id(&fields, "parentSpanId")?,
            flags: uint(&fields, "flags")? as u32,
            name: string(&fields, "name")?,
            // Both lists are in the order of the OTLP enums' numbers.
            kind: enumeration(&fields, "kind", "SPAN_KIND_", &SPAN_KINDS)?,
            start_time_unix_nano: uint(&fields, "startTimeUnixNano")?,
            end_time_unix_nano: uint(&fields, "endTimeUnixNano")?,
            attributes: self.key_values(&fields, "attributes")?,
            dropped_attributes_count: uint(&fields, "droppedAttributesCount")? as u32,
            events,
            dropped_events_count: uint(&fields, "droppedEventsCount")? as u32,
            links,
            dropped_links_count: uint(&fields, "droppedLinksCount")? as u32,
            status,
        })
    }

    fn key_values(&mut self, fields: &Fields<'_>, name: &str) -> Result<Vec<KeyValue>> {
        self.array(fields, name)?
            .iter()
            .map(|v| self.key_value(v))
            .collect()
    }

    fn key_value(&mut self, value: &Value) -> Result<KeyValue> {
        let fields = self.object(value, "attributes[]", &["key", "value"])?;
        Ok(KeyValue {
            key: string(&fields, "key")?,
            value: match fields.get("value") {
                Some(v) => Some(self.any_value(v)?),
                None => None,
            },
            ..Default::default()
        })
    }

    fn any_value(&mut self, value: &Value) -> Result<AnyValue> {
        let fields = self.object(
            value,
            "AnyValue",
            &[
                "stringValue",
                "boolValue",
                "intValue",
                "doubleValue",
                "arrayValue",
                "kvlistValue",
                "bytesValue",
            ],
        )?;
        let value = if let Some(v) = fields.get("stringValue") {
            Some(any_value::Value::StringValue(
                v.as_str()
                    .ok_or_else(|| JsonError(format!("stringValue must be a string, got {v}")))?
                    .to_string(),
            ))
        } else if let Some(v) = fields.get("boolValue") {
            Some(any_value::Value::BoolValue(v.as_bool().ok_or_else(
                || JsonError(format!("boolValue must be true or false, got {v}")),
            )?))
        } else if fields.get("intValue").is_some() {
            Some(any_value::Value::IntValue(int(&fields, "intValue")?))
        } else if let Some(v) = fields.get("doubleValue") {
            Some(any_value::Value::DoubleValue(double(v)?))
        } else if let Some(v) = fields.get("arrayValue") {
            let a = self.object(v, "arrayValue", &["values"])?;
            let values = self
                .array(&a, "values")?
                .iter()
                .map(|v| self.any_value(v))
                .collect::<Result<_>>()?;
            Some(any_value::Value::ArrayValue(ArrayValue { values }))
        } else if let Some(v) = fields.get("kvlistValue") {
            let k = self.object(v, "kvlistValue", &["values"])?;
            let values = self.key_values(&k, "values")?;
            Some(any_value::Value::KvlistValue(KeyValueList { values }))
        } else if let Some(v) = fields.get("bytesValue") {
            let text = v
                .as_str()
                .ok_or_else(|| JsonError(format!("bytesValue must be a base64 string, got {v}")))?;
            Some(any_value::Value::BytesValue(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| JsonError(format!("bytesValue is not base64: {e}")))?,
            ))
        } else {
            None
        };
        Ok(AnyValue { value })
    }
}

fn string(fields: &Fields<'_>, name: &str) -> Result<String> {
    match fields.get(name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(JsonError(format!(
            "{}.{name} must be a string, got {other}",
            fields.path
        ))),
    }
}

/// An id as hex (either case); not hex: an empty id (the span check rejects it).
fn hex_id(fields: &Fields<'_>, name: &str) -> Result<Vec<u8>> {
    match fields.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(hex::decode(s).unwrap_or_default()),
        Some(other) => Err(JsonError(format!(
            "{}.{name} must be a hex string, got {other}",
            fields.path
        ))),
    }
}

/// An unsigned integer (a JSON number or a decimal string; 0 when absent).
fn uint(fields: &Fields<'_>, name: &str) -> Result<u64> {
    let bad = |v: &Value| {
        JsonError(format!(
            "{}.{name} must be an unsigned integer (number or string), got {v}",
            fields.path
        ))
    };
    match fields.get(name) {
        None => Ok(0),
        Some(v @ Value::Number(n)) => n.as_u64().ok_or_else(|| bad(v)),
        Some(v @ Value::String(s)) => s.parse().map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

/// A signed integer (a JSON number or a decimal string).
fn int(fields: &Fields<'_>, name: &str) -> Result<i64> {
    let bad = |v: &Value| {
        JsonError(format!(
            "{}.{name} must be an integer (number or string), got {v}",
            fields.path
        ))
    };
    match fields.get(name) {
        None => Ok(0),
        Some(v @ Value::Number(n)) => n.as_i64().ok_or_else(|| bad(v)),
        Some(v @ Value::String(s)) => s.parse().map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

fn double(value: &Value) -> Result<f64> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| JsonError(format!("doubleValue {n} is not a number"))),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => other
                .parse()
                .map_err(|_| JsonError(format!("doubleValue {other:?} is not a number"))),
        },
        other => Err(JsonError(format!(
            "doubleValue must be a number, got {other}"
        ))),
    }
}

/// An enum: its number, or its name with or without `prefix`.
fn enumeration(fields: &Fields<'_>, name: &str, prefix: &str, names: &[&str]) -> Result<i32> {
    match fields.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| JsonError(format!("{}.{name} {n} is not an enum value", fields.path))),
        Some(Value::String(s)) => {
            let bare = s.strip_prefix(prefix).unwrap_or(s);
            names
                .iter()
                .position(|n| *n == bare)
                .map(|i| i as i32)
                .ok_or_else(|| {
                    JsonError(format!(
                        "{}.{name} {s:?} is not one of {prefix}{}",
                        fields.path,
                        names.join(&format!(", {prefix}"))
                    ))
                })
        }
        Some(other) => Err(JsonError(format!(
            "{}.{name} must be a number or a name, got {other}",
            fields.path
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_keys_are_accepted_and_unknown_keys_reported() {
        let body = br#"{"resource_spans":[{"scope_spans":[{"spans":[{
            "trace_id":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
            "name":"x","kind":2,"startTimeUnixNano":"1544712660000000000",
            "end_time_unix_nano":1544712661000000000,"color":"blue",
            "attributes":[{"key":"n","value":{"intValue":"42"}},
                          {"key":"d","value":{"doubleValue":"NaN"}},
                          {"key":"b","value":{"bytesValue":"AAE="}}],
            "status":{"code":"STATUS_CODE_ERROR"}}]}]}]}"#;
        let (request, unknown) = decode(body).unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            hex::encode(&span.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        assert_eq!(
            span.attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(42))
        );
        assert_eq!(
            span.attributes[2].value.as_ref().unwrap().value,
            Some(any_value::Value::BytesValue(vec![0, 1]))
        );
        assert_eq!(unknown, ["spans[].color"]);
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        for (body, expected) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"resourceSpans": 5}"#, "must be an array"),
            (
                br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"soon"}]}]}]}"#,
                "startTimeUnixNano must be an unsigned integer",
            ),
            (
                br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"SIDEWAYS"}]}]}]}"#,
                "kind \"SIDEWAYS\" is not one of",
            ),
        ] {
            let err = decode(body).unwrap_err().0;
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn an_id_that_is_not_hex_becomes_empty_for_the_span_check() {
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz","spanId":"0102030405060708"}]}]}]}"#;
        let (request, _) = decode(body).unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert!(span.trace_id.is_empty());
        assert_eq!(span.span_id.len(), 8);
    }
}
