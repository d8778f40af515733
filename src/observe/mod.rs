//! Observability: the names contract (span names and attribute keys). Instrumentation code
//! uses these constants only; it never spells a name inline.

pub mod names;
pub mod scan_metrics;

pub use scan_metrics::ScanMetrics;
