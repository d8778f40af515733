//! Observability: the names contract (span names, attribute keys, metric names), Prometheus
//! metrics, planner hooks and scan metrics. Instrumentation code uses the constants of
//! [`names`] only; it never spells a name inline. The object-store telemetry and cache
//! wrappers live with the rest of the store stack in [`crate::store`].

pub mod export;
pub mod metrics;
pub mod names;
pub mod planner;
pub mod scan_metrics;

pub use export::JsonLinesExporter;
pub use metrics::TraceLakeMetrics;
pub use planner::{instrument_context, instrument_session_state, instrumented_context, sql};
pub use scan_metrics::ScanMetrics;
