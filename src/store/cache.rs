//! `ObjectCache`: a byte-bounded cache of immutable objects in front of a store.
//!
//! Cached: parquet data (footers and ranges), checkpoints, and committed `_delta_log` JSON
//! commits, all immutable once written. Never cached: listings, `_last_checkpoint`, heads,
//! and anything else. Concurrent misses on the same object range of `get`/`get_range` make
//! one inner request (moka's `try_get_with`). A put, delete, copy or rename invalidates exactly
//! the paths it writes or removes, and only when they have entries (the cache counts entries
//! per path), so the writes of new data files and log entries cost no scan of the cache.
//! Each lookup records `object_store.cache.hit` on the current request
//! span and counts a hit or a miss in [`TraceLakeMetrics`]. `get_ranges` fetches all the
//! ranges it misses in one inner request, so the inner store can coalesce them.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};

use super::telemetry::path_kind;
use crate::observe::metrics::{CacheLabels, TraceLakeMetrics};
use crate::observe::names;

/// What a cache entry holds: a byte range of an object, or a whole object with its meta.
///
/// A parquet read looks up one key per page it reads (a lookup's `get_ranges` asks for ~140),
/// so keys are cheap to make, hash and compare: the path is shared by every key of one call
/// and hashed once per call.
#[derive(Debug, Clone)]
struct Key {
    path: Arc<str>,
    /// `path`'s hash, by [`path_hash`].
    path_hash: u64,
    /// `None` for the whole object.
    range: Option<Range<u64>>,
}

impl Key {
    fn new(path: Arc<str>, range: Option<Range<u64>>) -> Self {
        Self {
            path_hash: path_hash(&path),
            path,
            range,
        }
    }

    /// The key of another range of the same object.
    fn with_range(&self, range: Range<u64>) -> Self {
        Self {
            path: self.path.clone(),
            path_hash: self.path_hash,
            range: Some(range),
        }
    }
}

fn path_hash(path: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(path)
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.path_hash);
        self.range.hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.path_hash == other.path_hash
            && self.range == other.range
            && (Arc::ptr_eq(&self.path, &other.path) || self.path == other.path)
    }
}

impl Eq for Key {}

#[derive(Debug, Clone)]
struct Entry {
    bytes: Bytes,
    meta: Option<ObjectMeta>,
}

/// A byte-bounded cache of immutable objects. See the module docs.
pub struct ObjectCache {
    inner: Arc<dyn ObjectStore>,
    cache: moka::future::Cache<Key, Entry, foldhash::fast::RandomState>,
    capacity: u64,
    metrics: TraceLakeMetrics,
    /// How many entries each path has in the cache: a write invalidates only paths found
    /// here (new data files and log entries never are), without scanning the cache.
    paths: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, usize>>>,
}

impl fmt::Debug for ObjectCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectCache({} bytes, {:?})", self.capacity, self.inner)
    }
}

impl fmt::Display for ObjectCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectCache({} bytes, {})", self.capacity, self.inner)
    }
}

/// Whether objects at `path` never change once written.
pub fn is_immutable(path: &Path) -> bool {
    match path_kind(path) {
        "parquet_data" | "checkpoint" => true,
        "delta_log" => path.as_ref().ends_with(".json") && !path.as_ref().contains(".tmp"),
        _ => false,
    }
}

impl ObjectCache {
    /// A cache of at most `capacity_bytes` in front of `inner`.
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        capacity_bytes: u64,
        metrics: TraceLakeMetrics,
    ) -> Self {
        let paths: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, usize>>> =
            Arc::default();
        let removed = paths.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity_bytes)
            .eviction_listener(move |key: Arc<Key>, _, _| count_path(&removed, &key.path, 1, false))
            .weigher(|key: &Key, entry: &Entry| {
                let size = entry.bytes.len() + key.path.len() + 64;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures()
            // A parquet read looks up one key per page it reads: a fast hash (keys are
            // object paths and ranges of this table, not attacker-chosen).
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            inner,
            cache,
            capacity: capacity_bytes,
            metrics,
            paths,
        }
    }

    /// Bytes currently held.
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    fn report(&self, path: &Path, hit: bool) {
        self.report_many(path, usize::from(hit), usize::from(!hit));
    }

    /// Records `hits` and `misses` of lookups in `path`: `object_store.cache.hit` on the
    /// current request span (true when every lookup hit) and the counters.
    fn report_many(&self, path: &Path, hits: usize, misses: usize) {
        tracing::Span::current().record(names::ATTR_OS_CACHE_HIT, misses == 0);
        for (result, n) in [("hit", hits), ("miss", misses)] {
            if n > 0 {
                self.metrics
                    .cache
                    .get_or_create(&CacheLabels {
                        path_kind: path_kind(path),
                        result,
                    })
                    .inc_by(n as u64);
            }
        }
    }

    /// The entry for `key`, from the cache or from `load` (once for concurrent misses).
    async fn cached<F>(&self, location: &Path, key: Key, load: F) -> Result<Entry>
    where
        F: std::future::Future<Output = Result<Entry>>,
    {
        let loaded = AtomicBool::new(false);
        let path = key.path.clone();
        let result = self
            .cache
            .try_get_with(key, async {
                loaded.store(true, Ordering::Relaxed);
                // Registered before the entry exists, so a write racing the load still
                // invalidates it.
                count_path(&self.paths, &path, 1, true);
                let entry = load.await;
                if entry.is_err() {
                    count_path(&self.paths, &path, 1, false);
                }
                entry
            })
            .await
            .map_err(|e: Arc<object_store::Error>| match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(shared) => object_store::Error::Generic {
                    store: "ObjectCache",
                    source: shared.to_string().into(),
                },
            });
        self.report(location, !loaded.load(Ordering::Relaxed));
        result
    }

    async fn invalidate(&self, path: &Path) {
        let cached = self
            .paths
            .lock()
            .map_or(true, |paths| paths.contains_key(path.as_ref()));
        if !cached {
            return;
        }
        let path = path.clone();
        // Only fails when invalidation closures are not enabled, which they are.
        let _ = self
            .cache
            .invalidate_entries_if(move |key, _| &*key.path == path.as_ref());
        self.cache.run_pending_tasks().await;
    }
}

/// Counts `n` entries of `path` in (`add`) or out of `paths`.
fn count_path(
    paths: &std::sync::Mutex<std::collections::HashMap<Arc<str>, usize>>,
    path: &Arc<str>,
    n: usize,
    add: bool,
) {
    let Ok(mut paths) = paths.lock() else {
        return;
    };
    if add {
        *paths.entry(path.clone()).or_default() += n;
    } else if let Some(count) = paths.get_mut(&**path) {
        *count = count.saturating_sub(n);
        if *count == 0 {
            paths.remove(&**path);
        }
    }
}

fn payload(bytes: Bytes) -> GetResultPayload {
    GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed())
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for ObjectCache {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await;
        self.invalidate(location).await;
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // The object only exists once the upload completes; drop anything older now.
        self.invalidate(location).await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        if !plain || !is_immutable(location) {
            return self.inner.get_opts(location, options).await;
        }
        // Bounded ranges and whole objects are cached; suffix and offset ranges depend on
        // the object's size: not cached.
        let range = match &options.range {
            Some(GetRange::Bounded(range)) => Some(range.clone()),
            None => None,
            Some(_) => return self.inner.get_opts(location, options).await,
        };
        let key = Key::new(location.as_ref().into(), range.clone());
        let entry = self
            .cached(location, key, async {
                let result = self.inner.get_opts(location, options).await?;
                let meta = result.meta.clone();
                Ok(Entry {
                    bytes: result.bytes().await?,
                    meta: Some(meta),
                })
            })
            .await?;
        let range = range.unwrap_or(0..entry.bytes.len() as u64);
        let meta = entry.meta.clone().unwrap_or(ObjectMeta {
            location: location.clone(),
            last_modified: chrono::Utc::now(),
            size: range.end,
            e_tag: None,
            version: None,
        });
        Ok(GetResult {
            payload: payload(entry.bytes),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if !is_immutable(location) {
            return self.inner.get_ranges(location, ranges).await;
        }
        // Hits from the cache; every miss in one inner request, so the inner store can
        // coalesce nearby ranges (a parquet read asks for many small ranges at once).
        let base = Key::new(location.as_ref().into(), None);
        let key = |range: &Range<u64>| base.with_range(range.clone());
        let mut out: Vec<Option<Bytes>> = Vec::with_capacity(ranges.len());
        let mut missing: Vec<Range<u64>> = Vec::new();
        for range in ranges {
            let hit = self.cache.get(&key(range)).await.map(|e| e.bytes);
            if hit.is_none() {
                missing.push(range.clone());
            }
            out.push(hit);
        }
        self.report_many(location, ranges.len() - missing.len(), missing.len());
        if !missing.is_empty() {
            // Registered before the fetch, so a write racing it still invalidates the entries.
            count_path(&self.paths, &base.path, missing.len(), true);
            let fetched = match self.inner.get_ranges(location, &missing).await {
                Ok(fetched) => fetched,
                Err(e) => {
                    count_path(&self.paths, &base.path, missing.len(), false);
                    return Err(e);
                }
            };
            let mut fetched = missing.iter().zip(fetched);
            for slot in out.iter_mut().filter(|s| s.is_none()) {
                if let Some((range, bytes)) = fetched.next() {
                    self.cache
                        .insert(
                            key(range),
                            Entry {
                                bytes: bytes.clone(),
                                meta: None,
                            },
                        )
                        .await;
                    *slot = Some(bytes);
                }
            }
        }
        out.into_iter()
            .map(|b| {
                b.ok_or_else(|| object_store::Error::Generic {
                    store: "ObjectCache",
                    source: "the inner store returned fewer ranges than asked".into(),
                })
            })
            .collect()
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let cache = self.cache.clone();
        self.inner
            .delete_stream(locations)
            .inspect(move |deleted| {
                if let Ok(path) = deleted {
                    let path = path.clone();
                    let _ = cache.invalidate_entries_if(move |key, _| &*key.path == path.as_ref());
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let result = self.inner.copy_opts(from, to, options).await;
        self.invalidate(to).await;
        result
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let result = self.inner.rename_opts(from, to, options).await;
        self.invalidate(from).await;
        self.invalidate(to).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[test]
    fn only_immutable_objects_are_cacheable() {
        let p = |s: &str| Path::from(s);
        assert!(is_immutable(&p("t/span_date=2024-05-01/part-1.parquet")));
        assert!(is_immutable(&p("t/_delta_log/00000000000000000003.json")));
        assert!(is_immutable(&p(
            "t/_delta_log/00000000000000000010.checkpoint.parquet"
        )));
        assert!(!is_immutable(&p("t/_delta_log/_last_checkpoint")));
        assert!(!is_immutable(&p("t/_delta_log/_commit_x.json.tmp")));
        assert!(!is_immutable(&p("t/notes.txt")));
    }

    #[test]
    fn keys_are_equal_by_path_and_range_not_by_allocation() {
        use std::hash::BuildHasher;
        let hash = |k: &Key| foldhash::fast::FixedState::default().hash_one(k);
        let a = Key::new("t/a.parquet".into(), Some(0..10));
        let same = Key::new(String::from("t/a.parquet").into(), Some(0..10));
        assert!(!Arc::ptr_eq(&a.path, &same.path));
        assert_eq!(a, same);
        assert_eq!(hash(&a), hash(&same));
        assert_eq!(a.with_range(5..7), same.with_range(5..7));
        assert_ne!(a, a.with_range(0..11));
        assert_ne!(a, Key::new("t/a.parquet".into(), None));
        assert_ne!(a, Key::new("t/b.parquet".into(), Some(0..10)));
    }

    #[tokio::test]
    async fn only_paths_with_entries_are_invalidated_and_evictions_unregister() {
        let inner = Arc::new(InMemory::new());
        let cache = ObjectCache::new(inner.clone(), 4096, TraceLakeMetrics::new());
        let registered = |cache: &ObjectCache, p: &Path| {
            cache
                .paths
                .lock()
                .unwrap()
                .get(p.as_ref())
                .copied()
                .unwrap_or(0)
        };
        let a = Path::from("t/a.parquet");
        cache
            .put(&a, Bytes::from(vec![1u8; 1000]).into())
            .await
            .unwrap();
        assert_eq!(registered(&cache, &a), 0, "a write caches nothing");
        cache.get_range(&a, 0..100).await.unwrap();
        cache.get_range(&a, 100..200).await.unwrap();
        assert_eq!(registered(&cache, &a), 2);
        cache.get_ranges(&a, &[200..300, 300..400]).await.unwrap();
        assert_eq!(registered(&cache, &a), 4);
        // A failed read registers nothing.
        let missing = Path::from("t/missing.parquet");
        assert!(cache.get_range(&missing, 0..1).await.is_err());
        assert_eq!(registered(&cache, &missing), 0);
        // Rewriting `a` drops its entries and their registration.
        cache
            .put(&a, Bytes::from(vec![2u8; 1000]).into())
            .await
            .unwrap();
        cache.cache.run_pending_tasks().await;
        assert_eq!(registered(&cache, &a), 0);
        assert_eq!(cache.get_range(&a, 0..1).await.unwrap()[0], 2);
        // Entries evicted for room unregister too: the map stays within the cache.
        for i in 0..20 {
            let p = Path::from(format!("t/{i}.parquet"));
            cache
                .put(&p, Bytes::from(vec![0u8; 1000]).into())
                .await
                .unwrap();
            cache.get_range(&p, 0..1000).await.unwrap();
        }
        cache.cache.run_pending_tasks().await;
        let held: usize = cache.paths.lock().unwrap().values().sum();
        assert_eq!(held as u64, cache.cache.entry_count());
        assert!(held < 20, "{held}");
    }

    #[tokio::test]
    async fn hits_after_a_miss_and_writes_invalidate() {
        let inner = Arc::new(InMemory::new());
        let metrics = TraceLakeMetrics::new();
        let cache = ObjectCache::new(inner.clone(), 1 << 20, metrics.clone());
        let path = Path::from("t/a.parquet");
        cache
            .put(&path, Bytes::from_static(b"hello world").into())
            .await
            .unwrap();
        assert_eq!(cache.get_range(&path, 0..5).await.unwrap(), "hello");
        assert_eq!(cache.get_range(&path, 0..5).await.unwrap(), "hello");
        assert_eq!(
            (metrics.cache_count("miss"), metrics.cache_count("hit")),
            (1, 1)
        );
        // Overwriting the path drops its entries.
        cache
            .put(&path, Bytes::from_static(b"HELLO world").into())
            .await
            .unwrap();
        assert_eq!(cache.get_range(&path, 0..5).await.unwrap(), "HELLO");
        assert_eq!(metrics.cache_count("miss"), 2);
        // Whole-object reads are cached too.
        assert_eq!(
            cache.get(&path).await.unwrap().bytes().await.unwrap().len(),
            11
        );
        assert_eq!(
            cache.get(&path).await.unwrap().bytes().await.unwrap().len(),
            11
        );
        assert_eq!(metrics.cache_count("hit"), 2);
    }

    #[tokio::test]
    async fn get_ranges_fetches_all_misses_in_one_inner_request() {
        let metrics = TraceLakeMetrics::new();
        let counted = Arc::new(super::super::ObjectStoreTelemetry::new(
            Arc::new(InMemory::new()),
            "memory",
            metrics.clone(),
        ));
        let cache = ObjectCache::new(counted.clone(), 1 << 20, TraceLakeMetrics::new());
        let path = Path::from("t/c.parquet");
        counted
            .put(&path, Bytes::from((0..=255u8).collect::<Vec<_>>()).into())
            .await
            .unwrap();
        let first = cache
            .get_ranges(&path, &[0..4, 10..12, 100..101])
            .await
            .unwrap();
        assert_eq!(
            first,
            [
                Bytes::from(vec![0u8, 1, 2, 3]),
                Bytes::from(vec![10u8, 11]),
                Bytes::from(vec![100u8])
            ]
        );
        assert_eq!(metrics.operation_count("memory", "get_range"), 1);
        // Two hits and one new range: one more inner request, for the new range only.
        let second = cache
            .get_ranges(&path, &[0..4, 20..22, 10..12])
            .await
            .unwrap();
        assert_eq!(second[1], Bytes::from(vec![20u8, 21]));
        assert_eq!(metrics.operation_count("memory", "get_range"), 2);
        cache.get_ranges(&path, &[20..22, 100..101]).await.unwrap();
        assert_eq!(metrics.operation_count("memory", "get_range"), 2);
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_inner_request() {
        let metrics = TraceLakeMetrics::new();
        let counted = Arc::new(super::super::ObjectStoreTelemetry::new(
            Arc::new(InMemory::new()),
            "memory",
            metrics.clone(),
        ));
        let cache = Arc::new(ObjectCache::new(
            counted.clone(),
            1 << 20,
            TraceLakeMetrics::new(),
        ));
        let path = Path::from("t/b.parquet");
        counted
            .put(&path, Bytes::from(vec![7u8; 4096]).into())
            .await
            .unwrap();
        let reads = (0..16).map(|_| {
            let cache = cache.clone();
            let path = path.clone();
            tokio::spawn(async move { cache.get_range(&path, 100..200).await.unwrap() })
        });
        for r in futures::future::join_all(reads).await {
            assert_eq!(r.unwrap().len(), 100);
        }
        assert_eq!(metrics.operation_count("memory", "get_range"), 1);
    }
}
