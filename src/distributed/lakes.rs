//! The lakes a Ballista node serves: opened on first use by location, refreshed before each
//! plan, and the object stores their files are read through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use url::Url;

use crate::store::location::location_of_store_url;
use crate::table::{TableOptions, TraceTable};

/// The trace tables one Ballista node (scheduler or executor) has opened, by location, with
/// the [`TableOptions`] (object-store credentials, caches, metrics) it opens them with.
///
/// A plan names its tables by location; the node opens each once, on first use, and refreshes
/// it to the newest committed version before planning a scan of it or writing to it, so a
/// query sees every commit made before it started, wherever it was made.
#[derive(Debug)]
pub struct Lakes {
    options: TableOptions,
    tables: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<TraceTable>>>>>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

fn df_error(e: crate::TraceLakeError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl Lakes {
    /// A node's lakes, opened with `options`.
    pub fn new(options: TableOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            tables: Mutex::new(HashMap::new()),
            stores: Mutex::new(HashMap::new()),
        })
    }

    /// The options tables are opened with.
    pub fn options(&self) -> &TableOptions {
        &self.options
    }

    /// The table at `location`, opened once and refreshed to the newest committed version.
    pub async fn current(&self, location: &str) -> DfResult<Arc<TraceTable>> {
        let cell = {
            let mut tables = self
                .tables
                .lock()
                .map_err(|_| DataFusionError::Internal("lake registry lock poisoned".into()))?;
            tables.entry(location.to_string()).or_default().clone()
        };
        let opened_before = cell.initialized();
        let table = cell
            .get_or_try_init(|| async {
                TraceTable::open(location, &self.options)
                    .await
                    .map(Arc::new)
                    .map_err(df_error)
            })
            .await?
            .clone();
        if opened_before {
            table.refresh().await.map_err(df_error)?;
        }
        Ok(table)
    }

    /// The root object store of `location` (with tracelake's request telemetry and object
    /// cache), built once.
    pub(crate) fn store(&self, location: &str) -> DfResult<Arc<dyn ObjectStore>> {
        let mut stores = self
            .stores
            .lock()
            .map_err(|_| DataFusionError::Internal("lake registry lock poisoned".into()))?;
        if let Some(store) = stores.get(location) {
            return Ok(store.clone());
        }
        let o = &self.options;
        let resolved = crate::store::stack(
            location,
            &o.storage_options,
            o.root_store.as_ref(),
            o.cache_bytes,
            &o.metrics,
            false,
        )
        .map_err(df_error)?;
        stores.insert(location.to_string(), resolved.root_store.clone());
        Ok(resolved.root_store)
    }
}

/// A node's object-store registry: DataFusion's, plus the stores of trace tables, which it
/// builds from the location their [`store_url`] names when no scan registered them in this
/// process (an executor reading files a scheduler planned).
#[derive(Debug)]
pub(crate) struct LakeStores {
    inner: DefaultObjectStoreRegistry,
    lakes: Arc<Lakes>,
}

impl LakeStores {
    pub(crate) fn new(lakes: Arc<Lakes>) -> Self {
        Self {
            inner: DefaultObjectStoreRegistry::new(),
            lakes,
        }
    }
}

impl ObjectStoreRegistry for LakeStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        match self.inner.get_store(url) {
            Ok(store) => Ok(store),
            Err(e) => match location_of_store_url(url) {
                Some(location) => {
                    let store = self.lakes.store(&location)?;
                    self.inner.register_store(url, store.clone());
                    Ok(store)
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::location::store_url;

    #[test]
    fn store_urls_name_their_location() {
        let location = Url::parse("s3://bucket/traces/spans/").unwrap();
        let url = Url::parse(&store_url(7, &location)).unwrap();
        assert_eq!(
            location_of_store_url(&url).as_deref(),
            Some("s3://bucket/traces/spans/")
        );
        let other = Url::parse("tracelake://table-7-zz/").unwrap();
        assert_eq!(location_of_store_url(&other), None);
        let file = Url::parse("file:///tmp/").unwrap();
        assert_eq!(location_of_store_url(&file), None);
    }
}
