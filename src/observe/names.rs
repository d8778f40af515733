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
/// One append committed as a Delta version.
pub const DELTA_APPEND: &str = "delta.append";
/// Building one trace's tree in `trace_tree`.
pub const TRACE_TREE_BUILD: &str = "trace.tree.build";
/// Converting rows to Arrow columns (the tree's output batch).
pub const ARROW_CONVERT: &str = "arrow.convert";

// Attribute keys.
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
/// The error, if the operation failed.
pub const ATTR_ERROR: &str = "error";

/// Every span name, for the contract test.
pub const SPAN_NAMES: &[&str] = &[
    DELTA_TABLE_LOAD,
    DELTA_SNAPSHOT_REFRESH,
    UPDATE_INCREMENTAL,
    DELTA_CATALOG_SWAP,
    DELTA_APPEND,
    DELTA_OPTIMIZE,
    TRACE_TREE_BUILD,
    ARROW_CONVERT,
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
];
