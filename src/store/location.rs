//! Table locations: turning what a user gives (a local path, `file://`, `memory://`, and with
//! cargo features `s3://`, `gs://`, `az://`) into the root object store and URL Delta uses.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use url::Url;

use crate::error::{Result, TraceLakeError};

/// The kind of storage behind a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Local,
    Memory,
    S3,
    Gcs,
    Azure,
}

impl Backend {
    /// The backend's name as used in telemetry (`local`, `memory`, `s3`, `gcs`, `azure`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Memory => "memory",
            Backend::S3 => "s3",
            Backend::Gcs => "gcs",
            Backend::Azure => "azure",
        }
    }
}

/// Where a table lives: its URL (always ending in `/`), the store rooted where Delta expects
/// it, and the kind of storage.
#[derive(Debug, Clone)]
pub struct TableLocation {
    pub url: Url,
    pub root_store: Arc<dyn ObjectStore>,
    pub backend: Backend,
}

/// `memory://` stores live for the process: opening the same `memory://name` twice gives the
/// same table.
static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> =
    LazyLock::new(Default::default);

fn invalid(location: &str, reason: impl Into<String>) -> TraceLakeError {
    TraceLakeError::InvalidLocation {
        location: location.to_string(),
        reason: reason.into(),
    }
}

fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

fn local(location: &str, path: &std::path::Path, create: bool) -> Result<TableLocation> {
    if create {
        std::fs::create_dir_all(path)
            .map_err(|e| invalid(location, format!("cannot create directory: {e}")))?;
    }
    let absolute = std::path::absolute(path)
        .map_err(|e| invalid(location, format!("cannot resolve path: {e}")))?;
    let url = Url::from_directory_path(&absolute)
        .map_err(|_| invalid(location, "not an absolute directory path"))?;
    Ok(TableLocation {
        url,
        root_store: Arc::new(LocalFileSystem::new()),
        backend: Backend::Local,
    })
}

/// Resolves a table location. `create` makes a missing local directory.
/// `options` are passed to cloud stores (credentials, region, endpoint).
pub fn resolve(
    location: &str,
    options: &HashMap<String, String>,
    create: bool,
) -> Result<TableLocation> {
    if location.trim().is_empty() {
        return Err(invalid(location, "empty location"));
    }
    let Ok(url) = Url::parse(location) else {
        return local(location, std::path::Path::new(location), create);
    };
    match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|_| invalid(location, "not a local file URL"))?;
            local(location, &path, create)
        }
        "memory" => {
            let key = format!("{}{}", url.host_str().unwrap_or(""), url.path());
            let store = MEMORY_STORES
                .lock()
                .map_err(|_| invalid(location, "memory store registry poisoned"))?
                .entry(key)
                .or_insert_with(|| Arc::new(InMemory::new()))
                .clone();
            Ok(TableLocation {
                url: with_trailing_slash(url),
                root_store: store,
                backend: Backend::Memory,
            })
        }
        scheme @ ("s3" | "s3a" | "gs" | "az" | "abfs" | "abfss") => {
            cloud(location, url.clone(), scheme, options)
        }
        // A one-letter scheme is a Windows drive letter, not a URL.
        s if s.len() == 1 => local(location, std::path::Path::new(location), create),
        other => Err(invalid(
            location,
            format!(
                "unsupported scheme {other:?}; use a local path, file://, memory://, s3://, gs:// or az://"
            ),
        )),
    }
}

#[allow(unused_variables)]
fn cloud(
    location: &str,
    url: Url,
    scheme: &str,
    options: &HashMap<String, String>,
) -> Result<TableLocation> {
    let (backend, feature) = match scheme {
        "s3" | "s3a" => (Backend::S3, "s3"),
        "gs" => (Backend::Gcs, "gcs"),
        _ => (Backend::Azure, "azure"),
    };
    let enabled = match backend {
        Backend::S3 => cfg!(feature = "s3"),
        Backend::Gcs => cfg!(feature = "gcs"),
        _ => cfg!(feature = "azure"),
    };
    if !enabled {
        return Err(invalid(
            location,
            format!("{scheme}:// needs tracelake built with the `{feature}` cargo feature"),
        ));
    }
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    {
        register_delta_handlers();
        let (store, _) = object_store::parse_url_opts(&url, options)
            .map_err(|e| invalid(location, e.to_string()))?;
        // `parse_url_opts` roots the store at the bucket; Delta adds the path itself.
        return Ok(TableLocation {
            url: with_trailing_slash(url),
            root_store: Arc::from(store),
            backend,
        });
    }
    #[allow(unreachable_code)]
    Err(invalid(location, "no cloud backend compiled in"))
}

/// Delta's log store for cloud tables: deltalake's default one, which commits with a
/// conditional put (`PutMode::Create`: S3's `If-None-Match`, GCS and Azure preconditions), so
/// concurrent writers never overwrite a commit. tracelake builds the object store itself (with
/// object_store's own S3, GCS and Azure clients), so deltalake's cloud crates are not needed.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn register_delta_handlers() {
    use deltalake::logstore::{
        LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
        logstore_factories,
    };

    struct ConditionalPutLogStore;

    impl LogStoreFactory for ConditionalPutLogStore {
        fn with_options(
            &self,
            prefixed_store: ObjectStoreRef,
            root_store: ObjectStoreRef,
            location: &Url,
            options: &StorageConfig,
        ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
            Ok(default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }

    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let factory: Arc<dyn LogStoreFactory> = Arc::new(ConditionalPutLogStore);
        for scheme in ["s3", "s3a", "gs", "az", "abfs", "abfss"] {
            if let Ok(url) = Url::parse(&format!("{scheme}://")) {
                logstore_factories()
                    .entry(url)
                    .or_insert_with(|| factory.clone());
            }
        }
    });
}

/// The scheme of the URLs tables register their stores under in the sessions that scan them.
const SCHEME: &str = "tracelake";

/// The URL table instance `id` at `location` registers its root store under:
/// `tracelake://table-<id>-<hex of the location URL>/`. The instance id keeps two instances
/// (with their own caches and metrics) apart in one session; the location lets a node that
/// never opened the table (a Ballista executor) build the store the URL names.
pub(crate) fn store_url(id: u64, location: &Url) -> String {
    format!(
        "{SCHEME}://table-{id}-{}/",
        hex::encode(location.as_str().as_bytes())
    )
}

/// The table location a [`store_url`] names, if it is one.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) fn location_of_store_url(url: &Url) -> Option<String> {
    if url.scheme() != SCHEME {
        return None;
    }
    let host = url.host_str()?.strip_prefix("table-")?;
    let (_, encoded) = host.split_once('-')?;
    String::from_utf8(hex::decode(encoded).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_directory_urls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let loc = resolve(path.to_str().unwrap(), &HashMap::new(), true).unwrap();
        assert_eq!(loc.backend, Backend::Local);
        assert!(loc.url.as_str().starts_with("file:///"));
        assert!(loc.url.as_str().ends_with("/t/"));
        assert!(path.is_dir());
    }

    #[test]
    fn memory_locations_share_one_store() {
        let a = resolve("memory:///shared-test", &HashMap::new(), true).unwrap();
        let b = resolve("memory:///shared-test", &HashMap::new(), false).unwrap();
        assert!(Arc::ptr_eq(&a.root_store, &b.root_store));
        assert_eq!(a.url.as_str(), "memory:///shared-test/");
    }

    #[test]
    fn unsupported_locations_say_why() {
        let err = resolve("ftp://x/y", &HashMap::new(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported scheme"), "{err}");
        if !cfg!(feature = "s3") {
            let err = resolve("s3://bucket/t", &HashMap::new(), false)
                .unwrap_err()
                .to_string();
            assert!(err.contains("`s3` cargo feature"), "{err}");
        }
    }
}
