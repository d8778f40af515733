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
use prometheus_client::metrics::gauge::Gauge;
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

/// Labels of a result (`ok`/`error`, `accepted`/`rejected`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The `protocol` label values of OTLP requests.
pub const OTLP_PROTOCOLS: [&str; 2] = ["http", "grpc"];
/// The `outcome` label values of OTLP requests.
pub const OTLP_OUTCOMES: [&str; 7] = [
    "ok",
    "partial",
    "malformed",
    "too_large",
    "unsupported",
    "busy",
    "unavailable",
];

/// Labels of an OTLP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OtlpLabels {
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// `ok`, `partial`, `malformed`, `too_large`, `unsupported`, `busy`, `unavailable`.
    pub outcome: &'static str,
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
    pub(crate) lookup_cache: Family<ResultLabels, Counter>,
    pub(crate) commits: Family<ResultLabels, Counter>,
    pub(crate) commit_duration: Histogram,
    pub(crate) committed_spans: Counter,
    pub(crate) buffered_spans: Gauge,
    pub(crate) otlp_requests: Family<OtlpLabels, Counter>,
    pub(crate) otlp_spans: Family<ResultLabels, Counter>,
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
            lookup_cache: Family::default(),
            commits: Family::default(),
            commit_duration: duration_histogram(),
            committed_spans: Counter::default(),
            buffered_spans: Gauge::default(),
            otlp_requests: Family::default(),
            otlp_spans: Family::default(),
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
        registry.register(
            names::METRIC_LOOKUP_CACHE_LOOKUPS,
            "Lookups in the decoded cache of lookup rows by result (hit or miss)",
            self.lookup_cache.clone(),
        );
        registry.register(
            names::METRIC_COMMITS,
            "Delta commits of appends by result (ok or error)",
            self.commits.clone(),
        );
        registry.register(
            names::METRIC_COMMIT_DURATION,
            "Duration of an append's commit in seconds",
            self.commit_duration.clone(),
        );
        registry.register(
            names::METRIC_COMMITTED_SPANS,
            "Spans committed by appends",
            self.committed_spans.clone(),
        );
        registry.register(
            names::METRIC_APPENDER_BUFFERED_SPANS,
            "Spans buffered in appenders, not committed yet",
            self.buffered_spans.clone(),
        );
        registry.register(
            names::METRIC_OTLP_REQUESTS,
            "OTLP export requests by protocol and outcome",
            self.otlp_requests.clone(),
        );
        registry.register(
            names::METRIC_OTLP_SPANS,
            "Spans received over OTLP by result (accepted or rejected)",
            self.otlp_spans.clone(),
        );
    }

    /// Counts a commit of an append of `rows` spans that took `seconds`.
    pub(crate) fn record_commit(&self, ok: bool, rows: u64, seconds: f64) {
        self.commits
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
        if ok {
            self.committed_spans.inc_by(rows);
            self.commit_duration.observe(seconds);
        }
    }

    #[cfg(feature = "otlp")]
    /// Counts an OTLP request of `protocol` (`http`, `grpc`) with `outcome`.
    pub(crate) fn otlp_request(&self, protocol: &'static str, outcome: &'static str) {
        self.otlp_requests
            .get_or_create(&OtlpLabels { protocol, outcome })
            .inc();
    }

    /// Counts spans received over OTLP.
    #[cfg(feature = "otlp")]
    pub(crate) fn otlp_spans(&self, accepted: u64, rejected: u64) {
        self.otlp_spans
            .get_or_create(&ResultLabels { result: "accepted" })
            .inc_by(accepted);
        self.otlp_spans
            .get_or_create(&ResultLabels { result: "rejected" })
            .inc_by(rejected);
    }

    /// OTLP requests counted so far with `protocol` and `outcome`.
    pub fn otlp_request_count(&self, protocol: &str, outcome: &str) -> u64 {
        let find =
            |options: &[&'static str], value: &str| options.iter().copied().find(|o| *o == value);
        let (Some(protocol), Some(outcome)) = (
            find(&OTLP_PROTOCOLS, protocol),
            find(&OTLP_OUTCOMES, outcome),
        ) else {
            return 0;
        };
        self.otlp_requests
            .get(&OtlpLabels { protocol, outcome })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Spans received over OTLP so far with `result` (`accepted` or `rejected`).
    pub fn otlp_span_count(&self, result: &str) -> u64 {
        let result = if result == "accepted" {
            "accepted"
        } else {
            "rejected"
        };
        self.otlp_spans
            .get(&ResultLabels { result })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Spans buffered in appenders now.
    pub fn buffered_span_count(&self) -> i64 {
        self.buffered_spans.get()
    }

    /// Spans committed by appends so far.
    pub fn committed_span_count(&self) -> u64 {
        self.committed_spans.get()
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

    /// Counts a lookup in the decoded cache of lookup rows.
    pub(crate) fn count_lookup_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.lookup_cache
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Lookups in the decoded cache of lookup rows counted so far with `result` (`hit` or
    /// `miss`).
    pub fn lookup_cache_count(&self, result: &str) -> u64 {
        let result = if result == "hit" { "hit" } else { "miss" };
        self.lookup_cache
            .get(&ResultLabels { result })
            .map(|c| c.get())
            .unwrap_or(0)
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
