//! Property tests over what users feed tracelake: span rows (ids of any case and shape, any
//! timestamps, attribute maps of every OpenTelemetry type, events, links), and every UDF and
//! table function called with right and wrong argument types, NULLs, empty and huge values.
//! Never a panic; every accepted row reads back equal; every refused append writes nothing.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Once};

use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, Float64Array, Int64Array, MapArray, RecordBatch,
    StringArray, StructArray,
};
use arrow::datatypes::{Int64Type, TimestampNanosecondType};
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use tracelake::{AttributeValue, Event, Link, Span, SpanKind, StatusCode, TraceLake};

/// Panics anywhere in the process (tasks included) since the hook was installed.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
});

fn hex(len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::char::range('0', '9'),
            proptest::char::range('a', 'f'),
            proptest::char::range('A', 'F')
        ],
        len,
    )
    .prop_map(|c| c.into_iter().collect())
}

/// Mostly valid ids (either case), sometimes anything.
fn id(len: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => hex(len),
        1 => ".{0,40}",
        1 => hex(len.saturating_sub(1)),
    ]
}

fn scalar() -> impl Strategy<Value = AttributeValue> {
    prop_oneof![
        ".{0,20}".prop_map(AttributeValue::String),
        any::<i64>().prop_map(AttributeValue::Int),
        prop::num::f64::NORMAL
            .prop_union(prop::num::f64::ZERO)
            .prop_map(AttributeValue::Double),
        any::<bool>().prop_map(AttributeValue::Bool),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(AttributeValue::Bytes),
    ]
}

fn value() -> impl Strategy<Value = AttributeValue> {
    prop_oneof![
        6 => scalar(),
        2 => proptest::collection::vec(scalar(), 0..4).prop_map(AttributeValue::Array),
        // Arrays of arrays are not an OTel attribute type: refused.
        1 => proptest::collection::vec(scalar(), 0..2)
            .prop_map(|v| AttributeValue::Array(vec![AttributeValue::Array(v)])),
    ]
}

fn attributes() -> impl Strategy<Value = Vec<(String, AttributeValue)>> {
    proptest::collection::vec(("[a-z.]{0,12}", value()), 0..4)
}

fn kind() -> impl Strategy<Value = SpanKind> {
    prop_oneof![
        Just(SpanKind::Unspecified),
        Just(SpanKind::Internal),
        Just(SpanKind::Server),
        Just(SpanKind::Client),
        Just(SpanKind::Producer),
        Just(SpanKind::Consumer),
    ]
}

fn status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        Just(StatusCode::Unset),
        Just(StatusCode::Ok),
        Just(StatusCode::Error)
    ]
}

fn time() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 1_500_000_000_000_000_000i64..1_900_000_000_000_000_000,
        1 => any::<i64>(),
        1 => Just(i64::MIN),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (time(), ".{0,10}", attributes(), 0i64..3).prop_map(|(t, name, attributes, dropped)| Event {
        time_unix_nano: t,
        name,
        attributes,
        dropped_attributes_count: dropped,
    })
}

fn link() -> impl Strategy<Value = Link> {
    (
        hex(32),
        hex(16),
        proptest::option::of(".{0,8}"),
        proptest::option::of(any::<i64>()),
        attributes(),
    )
        .prop_map(|(trace_id, span_id, trace_state, flags, attributes)| Link {
            trace_id,
            span_id,
            trace_state,
            flags,
            attributes,
            dropped_attributes_count: 0,
        })
}

/// Scalars and arrays of scalars: every attribute value OpenTelemetry has.
fn valid_value() -> impl Strategy<Value = AttributeValue> {
    prop_oneof![
        4 => scalar(),
        1 => proptest::collection::vec(scalar(), 0..4).prop_map(AttributeValue::Array),
    ]
}

fn valid_attributes() -> impl Strategy<Value = Vec<(String, AttributeValue)>> {
    proptest::collection::vec(("[a-z.]{0,12}", valid_value()), 0..4)
}

prop_compose! {
    /// A span every append must accept (ids in either case, any valid times and attributes).
    fn valid_span()(
        trace_id in hex(32),
        span_id in hex(16),
        parent in proptest::option::of(hex(16)),
        name in ".{0,16}",
        kind in kind(),
        service in ".{0,10}",
        start in -9_000_000_000_000_000_000i64..9_000_000_000_000_000_000,
        length in 0i64..200_000_000_000_000_000,
        status in status(),
        message in proptest::option::of(".{0,10}"),
        attributes in valid_attributes(),
        resource in valid_attributes(),
        events in proptest::collection::vec(
            (any::<i64>(), ".{0,10}", valid_attributes(), 0i64..3),
            0..3,
        ),
        links in proptest::collection::vec(
            (hex(32), hex(16), proptest::option::of(".{0,8}"), proptest::option::of(any::<i64>()), valid_attributes()),
            0..2,
        ),
        dropped in 0i64..1_000,
        flags in proptest::option::of(0i64..512),
    ) -> Span {
        Span {
            trace_id,
            span_id,
            parent_span_id: parent,
            trace_state: Some("k=v".into()),
            flags,
            name,
            kind,
            service_name: service,
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(length),
            status_code: status,
            status_message: message,
            scope_name: None,
            scope_version: Some("1.0".into()),
            attributes,
            resource_attributes: resource,
            events: events
                .into_iter()
                .map(|(t, name, attributes, dropped)| Event {
                    time_unix_nano: t,
                    name,
                    attributes,
                    dropped_attributes_count: dropped,
                })
                .collect(),
            links: links
                .into_iter()
                .map(|(trace_id, span_id, trace_state, flags, attributes)| Link {
                    trace_id,
                    span_id,
                    trace_state,
                    flags,
                    attributes,
                    dropped_attributes_count: 1,
                })
                .collect(),
            dropped_attributes_count: dropped,
            dropped_events_count: dropped / 2,
            dropped_links_count: 0,
        }
    }
}

prop_compose! {
    /// A span as a user might hand one over: sometimes malformed.
    fn span()(
        trace_id in id(32),
        span_id in id(16),
        parent in proptest::option::of(id(16)),
        name in ".{0,16}",
        kind in kind(),
        service in ".{0,10}",
        start in time(),
        length in prop_oneof![8 => 0i64..10_000_000_000, 1 => any::<i64>()],
        status in status(),
        message in proptest::option::of(".{0,10}"),
        attributes in attributes(),
        resource in attributes(),
        events in proptest::collection::vec(event(), 0..2),
        links in proptest::collection::vec(link(), 0..2),
        dropped in prop_oneof![8 => 0i64..5, 1 => any::<i64>()],
        flags in proptest::option::of(0i64..512),
    ) -> Span {
        Span {
            trace_id,
            span_id,
            parent_span_id: parent,
            trace_state: None,
            flags,
            name,
            kind,
            service_name: service,
            start_time_unix_nano: start,
            end_time_unix_nano: start.wrapping_add(length),
            status_code: status,
            status_message: message,
            scope_name: Some("scope".into()),
            scope_version: None,
            attributes,
            resource_attributes: resource,
            events,
            links,
            dropped_attributes_count: dropped,
            dropped_events_count: 0,
            dropped_links_count: 0,
        }
    }
}

/// What the table should hold for an accepted span: ids in lowercase, an empty parent as
/// none.
fn normalized(span: &Span) -> Span {
    let mut s = span.clone();
    s.trace_id = s.trace_id.to_ascii_lowercase();
    s.span_id = s.span_id.to_ascii_lowercase();
    s.parent_span_id = s
        .parent_span_id
        .filter(|p| !p.is_empty())
        .map(|p| p.to_ascii_lowercase());
    s
}

fn string(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

fn scalar_at(values: &StructArray, i: usize) -> AttributeValue {
    let kind = values.column(0).as_string::<i32>().value(i);
    match kind {
        "string" => AttributeValue::String(values.column(1).as_string::<i32>().value(i).into()),
        "int" => AttributeValue::Int(values.column(2).as_primitive::<Int64Type>().value(i)),
        "double" => AttributeValue::Double(
            values
                .column(3)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(i),
        ),
        "bool" => AttributeValue::Bool(
            values
                .column(4)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .unwrap()
                .value(i),
        ),
        "bytes" => AttributeValue::Bytes(
            values
                .column(5)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .unwrap()
                .value(i)
                .to_vec(),
        ),
        other => panic!("unknown attribute type {other}"),
    }
}

fn attributes_at(map: &MapArray, row: usize) -> Vec<(String, AttributeValue)> {
    if map.is_null(row) {
        return Vec::new();
    }
    let offsets = map.value_offsets();
    let keys = map.keys().as_string::<i32>();
    let values = map.values().as_struct();
    let arrays = values.column(6).as_list::<i32>();
    (offsets[row] as usize..offsets[row + 1] as usize)
        .map(|j| {
            let value = if values.column(0).as_string::<i32>().value(j) == "array" {
                let items = arrays.value(j);
                let items = items.as_struct();
                AttributeValue::Array((0..items.len()).map(|k| scalar_at(items, k)).collect())
            } else {
                scalar_at(values, j)
            };
            (keys.value(j).to_string(), value)
        })
        .collect()
}

/// The spans of a `SELECT * FROM spans` batch.
fn read_spans(batch: &RecordBatch) -> Vec<Span> {
    let s = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .clone()
    };
    let i = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone()
    };
    let t = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap()
            .as_primitive::<TimestampNanosecondType>()
            .clone()
    };
    let (trace, span, parent, state, name) = (
        s("trace_id"),
        s("span_id"),
        s("parent_span_id"),
        s("trace_state"),
        s("name"),
    );
    let (kind, service, status, message, scope, scope_version) = (
        s("kind"),
        s("service_name"),
        s("status_code"),
        s("status_message"),
        s("scope_name"),
        s("scope_version"),
    );
    let (flags, dropped_a, dropped_e, dropped_l) = (
        i("flags"),
        i("dropped_attributes_count"),
        i("dropped_events_count"),
        i("dropped_links_count"),
    );
    let (start, end) = (t("start_time"), t("end_time"));
    let attributes = batch.column_by_name("attributes").unwrap().as_map().clone();
    let resource = batch
        .column_by_name("resource_attributes")
        .unwrap()
        .as_map()
        .clone();
    let events = batch
        .column_by_name("events")
        .unwrap()
        .as_list::<i32>()
        .clone();
    let links = batch
        .column_by_name("links")
        .unwrap()
        .as_list::<i32>()
        .clone();
    let kinds = tracelake::schema::SPAN_KINDS;
    let statuses = tracelake::schema::STATUS_CODES;
    (0..batch.num_rows())
        .map(|r| {
            let event_rows = events.value(r);
            let event_rows = event_rows.as_struct();
            let link_rows = links.value(r);
            let link_rows = link_rows.as_struct();
            Span {
                trace_id: trace.value(r).into(),
                span_id: span.value(r).into(),
                parent_span_id: string(&parent, r),
                trace_state: string(&state, r),
                flags: flags.is_valid(r).then(|| flags.value(r)),
                name: name.value(r).into(),
                kind: [
                    SpanKind::Unspecified,
                    SpanKind::Internal,
                    SpanKind::Server,
                    SpanKind::Client,
                    SpanKind::Producer,
                    SpanKind::Consumer,
                ][kinds.iter().position(|k| *k == kind.value(r)).unwrap()],
                service_name: service.value(r).into(),
                start_time_unix_nano: start.value(r),
                end_time_unix_nano: end.value(r),
                status_code: [StatusCode::Unset, StatusCode::Ok, StatusCode::Error]
                    [statuses.iter().position(|k| *k == status.value(r)).unwrap()],
                status_message: string(&message, r),
                scope_name: string(&scope, r),
                scope_version: string(&scope_version, r),
                attributes: attributes_at(&attributes, r),
                resource_attributes: attributes_at(&resource, r),
                events: (0..event_rows.len())
                    .map(|e| Event {
                        time_unix_nano: event_rows.column(0).as_primitive::<Int64Type>().value(e),
                        name: event_rows.column(1).as_string::<i32>().value(e).into(),
                        attributes: attributes_at(event_rows.column(2).as_map(), e),
                        dropped_attributes_count: event_rows
                            .column(3)
                            .as_primitive::<Int64Type>()
                            .value(e),
                    })
                    .collect(),
                links: (0..link_rows.len())
                    .map(|l| {
                        let flags = link_rows
                            .column(3)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap();
                        Link {
                            trace_id: link_rows.column(0).as_string::<i32>().value(l).into(),
                            span_id: link_rows.column(1).as_string::<i32>().value(l).into(),
                            trace_state: string(link_rows.column(2).as_string::<i32>(), l),
                            flags: flags.is_valid(l).then(|| flags.value(l)),
                            attributes: attributes_at(link_rows.column(4).as_map(), l),
                            dropped_attributes_count: link_rows
                                .column(5)
                                .as_primitive::<Int64Type>()
                                .value(l),
                        }
                    })
                    .collect(),
                dropped_attributes_count: dropped_a.value(r),
                dropped_events_count: dropped_e.value(r),
                dropped_links_count: dropped_l.value(r),
            }
        })
        .collect()
}

async fn all_spans(ctx: &SessionContext) -> Vec<Span> {
    let batches = ctx
        .sql("SELECT * FROM spans")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches.iter().flat_map(read_spans).collect()
}

fn sorted(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by(|a, b| {
        (&a.trace_id, &a.span_id, a.start_time_unix_nano).cmp(&(
            &b.trace_id,
            &b.span_id,
            b.start_time_unix_nano,
        ))
    });
    spans
}

static NEXT_TABLE: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn valid_spans_are_accepted_and_read_back_equal(
        spans in proptest::collection::vec(valid_span(), 1..6)
    ) {
        count_panics();
        let before = PANICS.load(Ordering::SeqCst);
        RUNTIME.block_on(async {
            let name = format!("memory:///prop-valid-{}", NEXT_TABLE.fetch_add(1, Ordering::SeqCst));
            let lake = TraceLake::create(&name).await.unwrap();
            let ctx = lake.session_context().unwrap();
            let outcome = lake.append_spans(&spans).await;
            prop_assert!(outcome.is_ok(), "{:?}", outcome);
            let expected = sorted(spans.iter().map(normalized).collect());
            let actual = sorted(all_spans(&ctx).await);
            prop_assert_eq!(actual, expected);
            Ok(())
        })?;
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), before, "a panic happened");
    }

    #[test]
    fn any_spans_are_accepted_whole_or_refused_whole(
        spans in proptest::collection::vec(span(), 1..6)
    ) {
        count_panics();
        let before = PANICS.load(Ordering::SeqCst);
        RUNTIME.block_on(async {
            let name = format!("memory:///prop-spans-{}", NEXT_TABLE.fetch_add(1, Ordering::SeqCst));
            let lake = TraceLake::create(&name).await.unwrap();
            let ctx = lake.session_context().unwrap();
            match lake.append_spans(&spans).await {
                Ok(outcome) => {
                    prop_assert_eq!(outcome.rows, spans.len() as u64);
                    let expected = sorted(spans.iter().map(normalized).collect());
                    let actual = sorted(all_spans(&ctx).await);
                    prop_assert_eq!(actual, expected);
                }
                Err(e) => {
                    // A clear error, and nothing written.
                    let message = e.to_string();
                    prop_assert!(!message.is_empty());
                    prop_assert_eq!(lake.version(), 0);
                    prop_assert_eq!(common::count(&ctx, "SELECT count(*) FROM spans").await, 0);
                }
            }
            Ok(())
        })?;
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), before, "a panic happened");
    }
}

/// SQL literals of many types, for function arguments.
fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        Just("''".to_string()),
        ".{0,40}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
        hex(32).prop_map(|s| format!("'{s}'")),
        hex(16).prop_map(|s| format!("'{s}'")),
        Just(format!("'{}'", "f".repeat(100_000))),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("9223372036854775807".into()),
        Just("true".into()),
        Just("X'00ff'".into()),
        Just("DATE '2024-05-01'".into()),
        Just("TIMESTAMP '2024-05-01T00:00:00'".into()),
        Just("'2024-05-01T00:00:00Z'".into()),
        Just("'9999-12-31T00:00:00Z'".into()),
        Just("[1, 2, 3]".into()),
        Just("['a', NULL]".into()),
        Just("[[1], [2]]".into()),
        Just("map(['k'], ['v'])".into()),
        Just("named_struct('type', 'string', 'string_value', 'x')".into()),
        Just("map(['k'], [named_struct('type', 1, 'string_value', 2, 'int_value', 3, 'double_value', 4.0, 'bool_value', true, 'bytes_value', X'00', 'array_value', 5)])".into()),
        Just("attributes".into()),
        Just("resource_attributes".into()),
        Just("name".into()),
        Just("start_time".into()),
        Just("attrs('a', 1, 'b', 'x', 'c', [1.5, 2.5])".into()),
    ]
}

fn function() -> impl Strategy<Value = (&'static str, bool)> {
    // (name, is a table function)
    prop_oneof![
        Just(("attr_str", false)),
        Just(("attr_int", false)),
        Just(("attr_double", false)),
        Just(("attr_bool", false)),
        Just(("attrs", false)),
        Just(("is_trace_id", false)),
        Just(("is_span_id", false)),
        Just(("trace_tree", true)),
        Just(("trace_summaries", true)),
        Just(("service_graph", true)),
    ]
}

static CALL_TABLE: LazyLock<(TraceLake, SessionContext)> = LazyLock::new(|| {
    RUNTIME.block_on(async {
        let lake = TraceLake::create("memory:///prop-calls").await.unwrap();
        lake.append_spans(&common::spans(3, 4)).await.unwrap();
        let ctx = lake.session_context().unwrap();
        (lake, ctx)
    })
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_function_call_answers_or_fails_cleanly(
        (function, table) in function(),
        args in proptest::collection::vec(literal(), 0..4),
    ) {
        count_panics();
        let before = PANICS.load(Ordering::SeqCst);
        let args = args.join(", ");
        let sql = if table {
            format!("SELECT * FROM {function}({args})")
        } else {
            format!("SELECT {function}({args}) FROM spans")
        };
        let ctx = &CALL_TABLE.1;
        let result = RUNTIME.block_on(async {
            match ctx.sql(&sql).await {
                Ok(df) => df.collect().await.map(|_| ()),
                Err(e) => Err(e),
            }
        });
        if let Err(e) = result {
            let message = e.to_string();
            prop_assert!(!message.contains("panicked"), "{}: {}", sql, message);
        }
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), before, "a panic happened: {}", sql);
    }
}
