//! `JsonLinesExporter`: a `tracing-subscriber` layer that writes every closed span as one JSON
//! object per line (`name`, `span_id`, `parent_span_id`, `start_time`, `end_time` as RFC 3339,
//! `duration_ns`, `attributes`). The `tracelake` binary's `--export-spans PATH` uses it; for
//! Jaeger or Tempo use `tracing-opentelemetry` instead (see docs/observability.md).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

#[derive(Default)]
struct Fields(BTreeMap<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
}

struct Started(SystemTime);

/// A process-unique span id (tracing reuses the ids of closed spans).
struct UniqueId(u64);

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Writes closed spans as JSON lines to a writer.
#[derive(Clone)]
pub struct JsonLinesExporter {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl JsonLinesExporter {
    /// Writes to `out` (for example a `BufWriter<File>`).
    pub fn new(out: impl Write + Send + 'static) -> Self {
        Self {
            out: Arc::new(Mutex::new(Box::new(out))),
        }
    }

    /// Flushes the writer.
    pub fn flush(&self) -> std::io::Result<()> {
        match self.out.lock() {
            Ok(mut out) => out.flush(),
            Err(_) => Ok(()),
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl<S> tracing_subscriber::Layer<S> for JsonLinesExporter
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            ext.insert(fields);
            ext.insert(Started(SystemTime::now()));
            ext.insert(UniqueId(next_id()));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        // `id` is only valid until this span closes; the exported id is `UniqueId`.
        let Some(span) = ctx.span(&id) else { return };
        let end = SystemTime::now();
        let ext = span.extensions();
        let start = ext.get::<Started>().map(|s| s.0).unwrap_or(end);
        let attributes = ext.get::<Fields>().map(|f| f.0.clone()).unwrap_or_default();
        let line = json!({
            "name": span.name(),
            "span_id": format!("{:016x}", ext.get::<UniqueId>().map(|u| u.0).unwrap_or(0)),
            "parent_span_id": span.parent().and_then(|p| {
                p.extensions().get::<UniqueId>().map(|u| format!("{:016x}", u.0))
            }),
            "start_time": rfc3339(start),
            "end_time": rfc3339(end),
            "duration_ns": end.duration_since(start).map(|d| d.as_nanos() as u64).unwrap_or(0),
            "attributes": attributes,
        });
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
        }
    }
}
