//! The store stack under a table: where it lives ([`location`]), the telemetry wrapper that
//! reports every backend request ([`ObjectStoreTelemetry`]), and the byte-bounded cache of
//! immutable objects ([`ObjectCache`]). [`stack`] assembles them in that order, so a request
//! served by the cache is reported as backend `cache` and the backend's own requests as the
//! backend's.
//!
//! Nothing here knows about spans or Delta versions: the stack moves bytes and reports them.

pub mod cache;
pub mod location;
pub mod telemetry;

use std::collections::HashMap;
use std::sync::Arc;

pub use cache::ObjectCache;
pub use location::{Backend, TableLocation};
pub use telemetry::ObjectStoreTelemetry;

use crate::error::Result;
use crate::observe::TraceLakeMetrics;

/// Resolves `location` and wraps its store: [`ObjectStoreTelemetry`] around the backend (or
/// around `root_store` when given), then, unless `cache_bytes` is 0, an [`ObjectCache`]
/// reported as backend `cache`. `create` makes a missing local directory.
pub(crate) fn stack(
    location: &str,
    storage_options: &HashMap<String, String>,
    root_store: Option<&Arc<dyn object_store::ObjectStore>>,
    cache_bytes: u64,
    metrics: &TraceLakeMetrics,
    create: bool,
) -> Result<TableLocation> {
    let mut resolved = location::resolve(location, storage_options, create)?;
    if let Some(root) = root_store {
        resolved.root_store = root.clone();
    }
    resolved.root_store = Arc::new(ObjectStoreTelemetry::new(
        resolved.root_store,
        resolved.backend.as_str(),
        metrics.clone(),
    ));
    if cache_bytes > 0 {
        let cache = ObjectCache::new(resolved.root_store, cache_bytes, metrics.clone());
        resolved.root_store = Arc::new(ObjectStoreTelemetry::new(
            Arc::new(cache),
            "cache",
            metrics.clone(),
        ));
    }
    Ok(resolved)
}
