//! Synthetic traces for the demo, tests and benchmarks: a small microservice system (several
//! services calling each other), nested spans of varied depth and fan-out, client/server
//! pairs across services, errors, typed attributes, events and links. Deterministic for a
//! given seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::span::{AttributeValue, Attributes, Event, Link, Span, SpanKind, StatusCode};

/// A service of the synthetic system: its name, its operations and whom it calls.
struct Service {
    name: &'static str,
    operations: &'static [&'static str],
    calls: &'static [usize],
}

const SERVICES: &[Service] = &[
    Service {
        name: "frontend",
        operations: &["GET /", "GET /product", "POST /cart", "POST /checkout"],
        calls: &[1, 2, 3],
    },
    Service {
        name: "catalog",
        operations: &["ListProducts", "GetProduct", "SearchProducts"],
        calls: &[6],
    },
    Service {
        name: "cart",
        operations: &["GetCart", "AddItem", "EmptyCart"],
        calls: &[7],
    },
    Service {
        name: "checkout",
        operations: &["PlaceOrder"],
        calls: &[2, 4, 5, 6],
    },
    Service {
        name: "payments",
        operations: &["Charge", "Refund"],
        calls: &[6],
    },
    Service {
        name: "shipping",
        operations: &["GetQuote", "ShipOrder"],
        calls: &[],
    },
    Service {
        name: "postgres",
        operations: &["SELECT", "INSERT", "UPDATE"],
        calls: &[],
    },
    Service {
        name: "redis",
        operations: &["GET", "SET", "HGETALL"],
        calls: &[],
    },
];

/// The shape of generated traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceShape {
    /// Varied depth and fan-out across services (about 4 to 40 spans a trace).
    Realistic,
    /// Exactly this many spans: a root and a chain/fan of children in one or two services.
    Fixed(usize),
}

/// Generates traces.
pub struct TraceGenerator {
    rng: SmallRng,
    shape: TraceShape,
    next_span: u64,
}

impl TraceGenerator {
    /// A generator with a seed; the same seed gives the same traces.
    pub fn new(seed: u64, shape: TraceShape) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            shape,
            next_span: 1,
        }
    }

    fn span_id(&mut self) -> String {
        // Unique within the generator, random-looking.
        let id = self.next_span.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.rng.random::<u64>();
        self.next_span += 1;
        format!("{:016x}", id | 1)
    }

    /// One trace starting at `start_unix_nano`.
    pub fn trace(&mut self, start_unix_nano: i64) -> Vec<Span> {
        let trace_id = format!("{:032x}", self.rng.random::<u128>() | 1);
        let mut spans = Vec::new();
        match self.shape {
            TraceShape::Realistic => {
                let op = self.rng.random_range(0..SERVICES[0].operations.len());
                let duration = self.rng.random_range(20_000_000..400_000_000);
                self.server_span(
                    &trace_id,
                    None,
                    0,
                    op,
                    start_unix_nano,
                    duration,
                    0,
                    &mut spans,
                );
            }
            TraceShape::Fixed(n) => self.fixed(&trace_id, n, start_unix_nano, &mut spans),
        }
        spans
    }

    fn fixed(&mut self, trace_id: &str, n: usize, start: i64, spans: &mut Vec<Span>) {
        let root_id = self.span_id();
        let total = 10_000_000 * n as i64;
        spans.push(self.make_span(
            trace_id,
            &root_id,
            None,
            0,
            0,
            SpanKind::Server,
            start,
            total,
        ));
        for i in 1..n {
            let id = self.span_id();
            let service = 1 + (i % (SERVICES.len() - 1));
            let child_start = start + 10_000_000 * i as i64 - 5_000_000;
            spans.push(self.make_span(
                trace_id,
                &id,
                Some(root_id.clone()),
                service,
                0,
                SpanKind::Internal,
                child_start,
                4_000_000,
            ));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn make_span(
        &mut self,
        trace_id: &str,
        span_id: &str,
        parent: Option<String>,
        service: usize,
        op: usize,
        kind: SpanKind,
        start: i64,
        duration: i64,
    ) -> Span {
        let svc = &SERVICES[service];
        Span {
            trace_id: trace_id.to_string(),
            span_id: span_id.to_string(),
            parent_span_id: parent,
            trace_state: None,
            flags: Some(1),
            name: svc.operations[op % svc.operations.len()].to_string(),
            kind,
            service_name: svc.name.to_string(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            status_code: StatusCode::Unset,
            status_message: None,
            scope_name: Some(format!("io.opentelemetry.{}", svc.name)),
            scope_version: Some("1.32.0".into()),
            attributes: Vec::new(),
            resource_attributes: vec![
                ("service.name".into(), svc.name.into()),
                ("service.version".into(), "2.4.1".into()),
                (
                    "host.name".into(),
                    format!("{}-{}", svc.name, self.rng.random_range(0..4)).into(),
                ),
            ],
            events: Vec::new(),
            links: Vec::new(),
            dropped_attributes_count: 0,
            dropped_events_count: 0,
            dropped_links_count: 0,
        }
    }

    /// A server span of `service` and, recursively, its downstream calls (client span in this
    /// service, server span in the callee). Depth is bounded by the service graph.
    #[allow(clippy::too_many_arguments)]
    fn server_span(
        &mut self,
        trace_id: &str,
        parent: Option<String>,
        service: usize,
        op: usize,
        start: i64,
        duration: i64,
        depth: usize,
        spans: &mut Vec<Span>,
    ) {
        let id = self.span_id();
        let mut span = self.make_span(
            trace_id,
            &id,
            parent,
            service,
            op,
            SpanKind::Server,
            start,
            duration,
        );
        let svc = &SERVICES[service];
        span.attributes = self.attributes(service, &span.name);
        let failed = self.rng.random_bool(0.04);
        if failed {
            span.status_code = StatusCode::Error;
            span.status_message = Some(format!("{} failed", span.name));
            span.events.push(Event {
                time_unix_nano: start + duration / 2,
                name: "exception".into(),
                attributes: vec![
                    ("exception.type".into(), "TimeoutError".into()),
                    ("exception.message".into(), "upstream timed out".into()),
                ],
                dropped_attributes_count: 0,
            });
        } else if self.rng.random_bool(0.5) {
            span.status_code = StatusCode::Ok;
        }
        if self.rng.random_bool(0.05) {
            span.links.push(Link {
                trace_id: format!("{:032x}", self.rng.random::<u128>() | 1),
                span_id: format!("{:016x}", self.rng.random::<u64>() | 1),
                trace_state: None,
                flags: Some(1),
                attributes: vec![("link.reason".into(), "batch".into())],
                dropped_attributes_count: 0,
            });
        }
        spans.push(span);

        if depth >= 4 || svc.calls.is_empty() {
            return;
        }
        let fan_out = self.rng.random_range(0..=svc.calls.len().min(3));
        let mut cursor = start + duration / 20;
        for _ in 0..fan_out {
            let callee = svc.calls[self.rng.random_range(0..svc.calls.len())];
            let callee_op = self.rng.random_range(0..SERVICES[callee].operations.len());
            let remaining = (start + duration - cursor).max(2_000);
            let call_duration = self.rng.random_range(1_000..=remaining / 2 + 1_000);
            let client_id = self.span_id();
            let mut client = self.make_span(
                trace_id,
                &client_id,
                Some(id.clone()),
                service,
                0,
                SpanKind::Client,
                cursor,
                call_duration,
            );
            client.name = format!(
                "{} {}",
                SERVICES[callee].name, SERVICES[callee].operations[callee_op]
            );
            client.attributes = vec![
                ("peer.service".into(), SERVICES[callee].name.into()),
                ("rpc.system".into(), "grpc".into()),
            ];
            spans.push(client);
            let server_start = cursor + call_duration / 10;
            let server_duration = call_duration * 8 / 10;
            self.server_span(
                trace_id,
                Some(client_id),
                callee,
                callee_op,
                server_start,
                server_duration.max(1),
                depth + 1,
                spans,
            );
            cursor += call_duration + 500;
        }
    }

    fn attributes(&mut self, service: usize, name: &str) -> Attributes {
        let mut attrs: Attributes = Vec::new();
        match SERVICES[service].name {
            "frontend" => {
                let (method, route) = name.split_once(' ').unwrap_or(("GET", name));
                attrs.push(("http.request.method".into(), method.into()));
                attrs.push(("http.route".into(), route.into()));
                let status = if self.rng.random_bool(0.05) { 500 } else { 200 };
                attrs.push((
                    "http.response.status_code".into(),
                    AttributeValue::Int(status),
                ));
                attrs.push(("user.premium".into(), self.rng.random_bool(0.2).into()));
            }
            "postgres" | "redis" => {
                attrs.push(("db.system".into(), SERVICES[service].name.into()));
                attrs.push(("db.operation.name".into(), name.into()));
                attrs.push((
                    "db.rows".into(),
                    AttributeValue::Int(self.rng.random_range(0..500)),
                ));
            }
            "payments" => {
                attrs.push((
                    "payment.amount".into(),
                    AttributeValue::Double((self.rng.random_range(100..50_000) as f64) / 100.0),
                ));
                attrs.push(("payment.currency".into(), "EUR".into()));
            }
            _ => {
                attrs.push((
                    "app.items".into(),
                    AttributeValue::Array(
                        (0..self.rng.random_range(1..4))
                            .map(|i| AttributeValue::String(format!("sku-{}", i * 7 + service)))
                            .collect(),
                    ),
                ));
            }
        }
        attrs
    }
}

/// `count` traces, evenly spread over `[start, start + window)`.
pub fn traces(
    seed: u64,
    shape: TraceShape,
    count: usize,
    start_unix_nano: i64,
    window_nanos: i64,
) -> Vec<Span> {
    let mut generator = TraceGenerator::new(seed, shape);
    let step = if count == 0 {
        0
    } else {
        window_nanos / count as i64
    };
    (0..count)
        .flat_map(|i| generator.trace(start_unix_nano + step * i as i64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn realistic_traces_are_connected_trees_across_services() {
        let spans = traces(7, TraceShape::Realistic, 200, 0, 1_000_000_000);
        let ids: HashSet<_> = spans.iter().map(|s| (&s.trace_id, &s.span_id)).collect();
        assert_eq!(ids.len(), spans.len(), "span ids are unique");
        for s in &spans {
            if let Some(p) = &s.parent_span_id {
                assert!(ids.contains(&(&s.trace_id, p)), "parent present");
            }
            assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        }
        let services: HashSet<_> = spans.iter().map(|s| s.service_name.as_str()).collect();
        assert!(services.len() >= 5);
        assert!(spans.iter().any(|s| s.status_code == StatusCode::Error));
        assert!(spans.iter().any(|s| !s.events.is_empty()));
        let roots = spans.iter().filter(|s| s.parent_span_id.is_none()).count();
        assert_eq!(roots, 200);
    }

    #[test]
    fn fixed_traces_have_exactly_n_spans() {
        let spans = traces(1, TraceShape::Fixed(5), 10, 0, 1_000);
        assert_eq!(spans.len(), 50);
        assert_eq!(traces(1, TraceShape::Fixed(5), 10, 0, 1_000), spans);
    }
}
