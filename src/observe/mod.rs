//! Observability: the names contract (span names, attribute keys, metric names), Prometheus
//! metrics, object-store telemetry, and scan metrics. Instrumentation code uses the constants
//! of [`names`] only; it never spells a name inline.

pub mod cache;
pub mod export;
pub mod metrics;
pub mod names;
pub mod planner;
pub mod scan_metrics;
pub mod telemetry;

pub use cache::ObjectCache;
pub use export::JsonLinesExporter;
pub use metrics::TraceLakeMetrics;
pub use planner::{instrument_session_state, instrumented_context, sql};
pub use scan_metrics::ScanMetrics;
pub use telemetry::ObjectStoreTelemetry;
