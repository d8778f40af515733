//! The observability contract: every span name and attribute key tracelake emits, as
//! constants. `docs/observability.md` documents each; a test fails when the two disagree.

// Span names: the Delta lifecycle.
/// Opening a table: reading the log and checking the schema.
pub const DELTA_TABLE_LOAD: &str = "delta.table.load";
/// Refreshing the current snapshot from storage (background tick or `refresh()`).
pub const DELTA_SNAPSHOT_REFRESH: &str = "delta.snapshot.refresh";
/// deltalake's incremental log replay inside a refresh.
pub const UPDATE_INCREMENTAL: &str = "update_incremental";
/// Installing a new snapshot as the one queries start from.
pub const DELTA_CATALOG_SWAP: &str = "delta.catalog.swap";
/// Incremental optimize: compaction of the partitions whose files overlap in trace id.
pub const DELTA_OPTIMIZE: &str = "delta.optimize";
/// Vacuum: deleting files that left the table before the retention window.
pub const DELTA_VACUUM: &str = "delta.vacuum";
/// Expiry: dropping partitions older than the configured age.
pub const DELTA_EXPIRE: &str = "delta.expire";
/// A checkpoint and log cleanup.
pub const DELTA_CHECKPOINT: &str = "delta.checkpoint";
/// One append committed as a Delta version.
pub const DELTA_APPEND: &str = "delta.append";
/// Inside `delta.append`: writing the data files.
pub const DELTA_APPEND_WRITE: &str = "delta.append.write";
/// Inside `delta.append`: writing the commit to the log (with conflict checks and the
/// post-commit hook).
pub const DELTA_APPEND_COMMIT: &str = "delta.append.commit";
/// Building one trace's tree in `trace_tree`.
pub const TRACE_TREE_BUILD: &str = "trace.tree.build";
/// Finding the candidate traces of `trace_search`: the window read backwards in slices.
pub const TRACE_SEARCH: &str = "trace.search";
/// Converting rows to Arrow columns (the tree's output batch).
pub const ARROW_CONVERT: &str = "arrow.convert";
/// Parsing and table resolution in tracelake's `sql()` entry point.
pub const DF_TABLE_RESOLVE: &str = "df.table.resolve";
/// Analysis and logical optimization of a query.
pub const DF_LOGICAL_BUILD: &str = "df.logical.build";
/// Physical planning (scans) and physical optimization.
pub const DF_PHYSICAL_PLAN: &str = "df.physical.plan";
/// Execution of one output partition of a query.
pub const DF_COLLECT: &str = "df.collect";
/// One object-store request (any operation).
pub const OBJECT_STORE_REQUEST: &str = "object_store.request";
/// One OTLP export request (HTTP or gRPC), from decoding to the answer.
pub const OTLP_EXPORT: &str = "otlp.export";

// Attribute keys.
/// `list`, `get`, `get_range`, `head`, `put`, `delete`, `copy`, `rename`.
pub const ATTR_OS_OPERATION: &str = "object_store.operation";
/// `delta_log`, `checkpoint`, `last_checkpoint`, `parquet_data`, `unknown`.
pub const ATTR_OS_PATH_KIND: &str = "object_store.path_kind";
/// `local`, `memory`, `s3`, `gcs`, `azure`, `cache`.
pub const ATTR_OS_BACKEND: &str = "object_store.backend";
/// `ok`, `not_found`, `error`.
pub const ATTR_OS_STATUS: &str = "object_store.status";
/// Bytes read or written.
pub const ATTR_OS_BYTES: &str = "object_store.bytes";
/// Whether the object cache served the request.
pub const ATTR_OS_CACHE_HIT: &str = "object_store.cache.hit";
/// The object path.
pub const ATTR_OS_PATH: &str = "object_store.path";
/// The trace id a function looked up.
pub const ATTR_TRACE_ID: &str = "trace.id";
/// The table's URL.
pub const ATTR_TABLE_URL: &str = "delta.table.url";
/// Version before an operation.
pub const ATTR_VERSION_BEFORE: &str = "delta.version.before";
/// Version after an operation.
pub const ATTR_VERSION_AFTER: &str = "delta.version.after";
/// Rows (spans) written or returned.
pub const ATTR_ROWS: &str = "rows";
/// Partitions an operation touched.
pub const ATTR_PARTITIONS: &str = "delta.partitions";
/// Data files added by an operation.
pub const ATTR_FILES_ADDED: &str = "delta.files.added";
/// Data files removed by an operation.
pub const ATTR_FILES_REMOVED: &str = "delta.files.removed";
/// The SQL text of a query.
pub const ATTR_QUERY_SQL: &str = "query.sql";
/// The output partition `df.collect` executes.
pub const ATTR_PARTITION: &str = "query.partition";
/// Batches a query returned.
pub const ATTR_BATCHES: &str = "query.batches";
/// Bytes (Arrow memory) a query returned.
pub const ATTR_BYTES: &str = "query.bytes";
/// Time slices `trace_search` read before it had its traces.
pub const ATTR_SEARCH_SLICES: &str = "search.slices";
/// The error, if the operation failed.
pub const ATTR_ERROR: &str = "error";
/// `http` or `grpc`: how an OTLP request arrived.
pub const ATTR_OTLP_PROTOCOL: &str = "otlp.protocol";
/// `protobuf` or `json`: the encoding of an OTLP/HTTP request.
pub const ATTR_OTLP_ENCODING: &str = "otlp.encoding";
/// Spans of an OTLP request rejected as invalid (counted in `partial_success`).
pub const ATTR_OTLP_REJECTED: &str = "otlp.rejected_spans";

/// Every span name, for the contract test.
pub const SPAN_NAMES: &[&str] = &[
    DELTA_TABLE_LOAD,
    DELTA_SNAPSHOT_REFRESH,
    UPDATE_INCREMENTAL,
    DELTA_CATALOG_SWAP,
    DELTA_APPEND,
    DELTA_APPEND_WRITE,
    DELTA_APPEND_COMMIT,
    DELTA_OPTIMIZE,
    DELTA_VACUUM,
    DELTA_EXPIRE,
    DELTA_CHECKPOINT,
    TRACE_TREE_BUILD,
    TRACE_SEARCH,
    ARROW_CONVERT,
    OBJECT_STORE_REQUEST,
    DF_TABLE_RESOLVE,
    DF_LOGICAL_BUILD,
    DF_PHYSICAL_PLAN,
    DF_COLLECT,
    OTLP_EXPORT,
];

/// Every attribute key, for the contract test.
pub const ATTRIBUTE_KEYS: &[&str] = &[
    ATTR_TABLE_URL,
    ATTR_TRACE_ID,
    ATTR_VERSION_BEFORE,
    ATTR_VERSION_AFTER,
    ATTR_ROWS,
    ATTR_PARTITIONS,
    ATTR_FILES_ADDED,
    ATTR_FILES_REMOVED,
    ATTR_ERROR,
    ATTR_OS_OPERATION,
    ATTR_OS_PATH_KIND,
    ATTR_OS_BACKEND,
    ATTR_OS_STATUS,
    ATTR_OS_BYTES,
    ATTR_OS_CACHE_HIT,
    ATTR_OS_PATH,
    ATTR_QUERY_SQL,
    ATTR_PARTITION,
    ATTR_BATCHES,
    ATTR_BYTES,
    ATTR_SEARCH_SLICES,
    ATTR_OTLP_PROTOCOL,
    ATTR_OTLP_ENCODING,
    ATTR_OTLP_REJECTED,
];

// Metric names (Prometheus; counters get `_total` in the exposition).
/// Counter: object-store requests.
pub const METRIC_OBJECT_STORE_REQUESTS: &str = "tracelake_object_store_requests";
/// Histogram: object-store request duration in seconds.
pub const METRIC_OBJECT_STORE_REQUEST_DURATION: &str =
    "tracelake_object_store_request_duration_seconds";
/// Counter: bytes read or written by object-store requests.
pub const METRIC_OBJECT_STORE_BYTES: &str = "tracelake_object_store_bytes";
/// Counter: entries returned by list requests.
pub const METRIC_OBJECT_STORE_LIST_ENTRIES: &str = "tracelake_object_store_list_entries";
/// Counter: object cache lookups (`result` = `hit` or `miss`).
pub const METRIC_CACHE_LOOKUPS: &str = "tracelake_cache_lookups";
/// Counter: lookups in the decoded cache of lookup rows (`result` = `hit` or `miss`).
pub const METRIC_LOOKUP_CACHE_LOOKUPS: &str = "tracelake_lookup_cache_lookups";
/// Counter: Delta commits of appends (`result` = `ok` or `error`).
pub const METRIC_COMMITS: &str = "tracelake_commits";
/// Histogram: duration of an append's commit in seconds (writing files, the log, installing).
pub const METRIC_COMMIT_DURATION: &str = "tracelake_commit_duration_seconds";
/// Counter: spans committed by appends.
pub const METRIC_COMMITTED_SPANS: &str = "tracelake_committed_spans";
/// Gauge: spans buffered in appenders, not committed yet.
pub const METRIC_APPENDER_BUFFERED_SPANS: &str = "tracelake_appender_buffered_spans";
/// Counter: OTLP export requests (`protocol`, `outcome`).
pub const METRIC_OTLP_REQUESTS: &str = "tracelake_otlp_requests";
/// Counter: spans received over OTLP (`result` = `accepted` or `rejected`).
pub const METRIC_OTLP_SPANS: &str = "tracelake_otlp_spans";

/// Every metric name, for the contract test.
pub const METRIC_NAMES: &[&str] = &[
    METRIC_OBJECT_STORE_REQUESTS,
    METRIC_OBJECT_STORE_REQUEST_DURATION,
    METRIC_OBJECT_STORE_BYTES,
    METRIC_OBJECT_STORE_LIST_ENTRIES,
    METRIC_CACHE_LOOKUPS,
    METRIC_LOOKUP_CACHE_LOOKUPS,
    METRIC_COMMITS,
    METRIC_COMMIT_DURATION,
    METRIC_COMMITTED_SPANS,
    METRIC_APPENDER_BUFFERED_SPANS,
    METRIC_OTLP_REQUESTS,
    METRIC_OTLP_SPANS,
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const DOC: &str = include_str!("../../docs/observability.md");
    const SOURCE: &str = include_str!("names.rs");

    /// The names in the contract table of docs/observability.md, by kind.
    fn documented(kind: &str) -> Vec<String> {
        DOC.lines()
            .filter(|l| l.starts_with(&format!("| {kind} |")))
            .filter_map(|l| l.split('`').nth(1).map(str::to_string))
            .collect()
    }

    fn unique(names: &[&str]) -> BTreeSet<String> {
        let set: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
        assert_eq!(set.len(), names.len(), "a name is listed twice: {names:?}");
        set
    }

    #[test]
    fn the_documented_contract_matches_the_constants() {
        for (kind, names) in [
            ("span", SPAN_NAMES),
            ("attribute", ATTRIBUTE_KEYS),
            ("metric", METRIC_NAMES),
        ] {
            let doc = documented(kind);
            let doc_set: BTreeSet<String> = doc.iter().cloned().collect();
            assert_eq!(doc_set.len(), doc.len(), "{kind} documented twice");
            assert_eq!(
                unique(names),
                doc_set,
                "docs/observability.md's {kind} rows and names.rs differ"
            );
        }
    }

    #[test]
    fn every_constant_is_in_a_list() {
        let declared = SOURCE
            .lines()
            .filter(|l| l.starts_with("pub const") && l.contains(": &str"))
            .count();
        assert_eq!(
            declared,
            SPAN_NAMES.len() + ATTRIBUTE_KEYS.len() + METRIC_NAMES.len(),
            "a name constant is missing from SPAN_NAMES, ATTRIBUTE_KEYS or METRIC_NAMES"
        );
        let all: Vec<&str> = SPAN_NAMES
            .iter()
            .chain(ATTRIBUTE_KEYS)
            .chain(METRIC_NAMES)
            .copied()
            .collect();
        unique(&all);
    }
}
