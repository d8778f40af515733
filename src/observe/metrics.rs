//! Prometheus metrics (prometheus-client), in a set the embedder registers into its own
//! `Registry` and encodes with the rest of its metrics.
//!
//! ```
//! use prometheus_client::registry::Registry;
//! let metrics = tracelake::observe::TraceLakeMetrics::new();
//! let mut registry = Registry::default();
//! metrics.register(&mut registry);
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! ```

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::names;

/// Labels of an object-store request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: &'static str,
    pub path_kind: &'static str,
    pub backend: &'static str,
    pub status: &'static str,
}

/// Labels of a cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub path_kind: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

fn duration_histogram() -> Histogram {
    // 50 µs .. ~100 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 2.0, 22,
    ))
}

/// tracelake's metrics. Clones share the same series.
#[derive(Clone, Debug)]
pub struct TraceLakeMetrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub(crate) bytes: Family<RequestLabels, Counter>,
    pub(crate) list_entries: Family<RequestLabels, Counter>,
    pub(crate) cache: Family<CacheLabels, Counter>,
}

impl Default for TraceLakeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceLakeMetrics {
    /// A fresh set of metrics, not yet registered anywhere.
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            bytes: Family::default(),
            list_entries: Family::default(),
            cache: Family::default(),
        }
    }

    /// Registers every metric into `registry` (names in `observe::names`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            names::METRIC_OBJECT_STORE_REQUESTS,
            "Object-store requests by operation, path kind, backend and status",
            self.requests.clone(),
        );
        registry.register(
            names::METRIC_OBJECT_STORE_REQUEST_DURATION,
            "Object-store request duration in seconds",
            self.duration.clone(),
        );
        registry.register(
            names::METRIC_OBJECT_STORE_BYTES,
            "Bytes read or written by object-store requests",
            self.bytes.clone(),
        );
        registry.register(
            names::METRIC_OBJECT_STORE_LIST_ENTRIES,
            "Entries returned by object-store list requests",
            self.list_entries.clone(),
        );
        registry.register(
            names::METRIC_CACHE_LOOKUPS,
            "Lookups in the object cache by path kind and result (hit or miss)",
            self.cache.clone(),
        );
    }

    /// The Prometheus text exposition of these metrics alone.
    pub fn encode_text(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Requests counted so far on `backend` (`local`, `memory`, ..., `cache`) for
    /// `operation` and `path_kind`, over every status.
    pub fn request_count(&self, backend: &str, operation: &str, path_kind: &str) -> u64 {
        let backend = crate::store::telemetry::BACKENDS
            .iter()
            .copied()
            .find(|b| *b == backend)
            .unwrap_or("local");
        crate::store::telemetry::STATUSES
            .iter()
            .map(|status| {
                let labels = RequestLabels {
                    operation: crate::store::telemetry::operation_name(operation),
                    path_kind: crate::store::telemetry::path_kind_name(path_kind),
                    backend,
                    status,
                };
                self.requests.get(&labels).map(|c| c.get()).unwrap_or(0)
            })
            .sum()
    }

    /// Requests counted so far on `backend` for `operation`, over every path kind.
    pub fn operation_count(&self, backend: &str, operation: &str) -> u64 {
        crate::store::telemetry::PATH_KINDS
            .iter()
            .map(|k| self.request_count(backend, operation, k))
            .sum()
    }

    /// Cache lookups counted so far with `result` (`hit` or `miss`), over every path kind.
    pub fn cache_count(&self, result: &str) -> u64 {
        crate::store::telemetry::PATH_KINDS
            .iter()
            .map(|path_kind| {
                let labels = CacheLabels {
                    path_kind,
                    result: if result == "hit" { "hit" } else { "miss" },
                };
                self.cache.get(&labels).map(|c| c.get()).unwrap_or(0)
            })
            .sum()
    }
}
