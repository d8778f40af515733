//! [`DecodedCache`]: the decoded rows of recent lookups, per data file.
//!
//! A trace is usually looked up again soon after its first lookup: a trace view opens it,
//! then its spans, then `trace_tree` over it. The object cache already keeps the pages those
//! lookups read, but decoding them (one page of each of the ~80 parquet leaves the spans
//! schema has) is most of a repeated lookup's time. This cache keeps what
//! [`LookupExec`](super::lookup_exec::LookupExec) produced from one file: the rows of the
//! wanted ids, in the SQL types, after decoding.
//!
//! **The key is everything that shapes those rows**: the file (path and size: data files are
//! immutable, and every file tracelake writes has a name of its own), the row groups read, the
//! ids in the order asked, and the projected columns. Nothing else narrows a lookup's output
//! (other filters of the query run above the node), so a hit returns exactly what the read
//! would have. A file removed from the table (by `optimize`) is no longer planned, and its
//! entries age out.
//!
//! **Bounded in bytes** ([`TableOptions::lookup_cache_bytes`](crate::TableOptions), 64 MiB
//! by default, 0 turns it off), weighed as the Arrow memory of the batches; an output larger
//! than an eighth of the budget is not kept, so one wide lookup cannot flush the others.
//! Lookups are counted in `tracelake_lookup_cache_lookups` (`result` = `hit` or `miss`) and
//! in the node's `decoded_cache_hits` metric.

use std::sync::Arc;

use arrow::array::RecordBatch;
use object_store::path::Path;

use crate::observe::metrics::TraceLakeMetrics;

/// The default budget of the decoded cache: 64 MiB.
pub const DEFAULT_LOOKUP_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// What one file's part of a lookup produced depends on, and only on: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DecodedKey {
    pub(crate) location: Path,
    pub(crate) size: u64,
    pub(crate) row_groups: Vec<usize>,
    pub(crate) ids: Arc<[String]>,
    pub(crate) projection: Vec<usize>,
}

impl DecodedKey {
    /// Bytes the key holds, charged with its entry.
    fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.location.as_ref().len()
            + self.row_groups.len() * std::mem::size_of::<usize>()
            + self.ids.iter().map(|id| id.len() + 24).sum::<usize>()
            + self.projection.len() * std::mem::size_of::<usize>()
    }
}

/// The decoded rows of recent lookups, bounded in bytes. Shared by every version of a table.
pub(crate) struct DecodedCache {
    cache: moka::future::Cache<DecodedKey, Arc<[RecordBatch]>, foldhash::fast::RandomState>,
    /// The largest entry kept.
    largest: u64,
    metrics: TraceLakeMetrics,
}

impl std::fmt::Debug for DecodedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedCache")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

/// The weight of an entry: its key and batches, in bytes (saturating at `u32::MAX`).
fn weight(key: &DecodedKey, batches: &Arc<[RecordBatch]>) -> u32 {
    let bytes = key.memory_size()
        + batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>();
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl DecodedCache {
    /// A cache of at most `bytes`; `None` when `bytes` is 0 (off).
    pub(crate) fn new(bytes: u64, metrics: TraceLakeMetrics) -> Option<Arc<Self>> {
        if bytes == 0 {
            return None;
        }
        let cache = moka::future::Cache::builder()
            .max_capacity(bytes)
            .weigher(weight)
            // The lookups asked most recently are the ones asked again.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build_with_hasher(foldhash::fast::RandomState::default());
        Some(Arc::new(Self {
            cache,
            largest: bytes / 8,
            metrics,
        }))
    }

    /// The most decoded bytes a read stages (holds, as decoded) for one entry while its rows
    /// stream out: four times the largest entry (a quarter of the budget). Decoded batches
    /// hold more than their rows (page-sized buffers for a few rows), so staged batches are
    /// copied compact before they are kept; batches over this bound are not kept (and no
    /// longer held).
    pub(crate) fn staging_limit(&self) -> usize {
        usize::try_from(self.largest.saturating_mul(4)).unwrap_or(usize::MAX)
    }

    /// The rows kept for `key`, counting a hit or a miss.
    pub(crate) async fn get(&self, key: &DecodedKey) -> Option<Arc<[RecordBatch]>> {
        let found = self.cache.get(key).await;
        self.metrics.count_lookup_cache(found.is_some());
        found
    }

    /// Keeps a copy of `batches` for `key`, unless it weighs more than an eighth of the
    /// budget. The copy is one batch in buffers of its own size: parquet's decoder leaves the
    /// few rows of a lookup in buffers sized for a whole batch (~110 KB for the 5 rows of a
    /// `SELECT *`), which a cache must not hold.
    pub(crate) async fn insert(&self, key: DecodedKey, batches: &[RecordBatch]) {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let Some(first) = batches.first().filter(|_| rows > 0) else {
            // The file holds none of the ids (a bloom-filter false positive): kept too.
            self.cache.insert(key, Arc::from([])).await;
            return;
        };
        // A bound checked before copying (see `staging_limit`).
        let estimate: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        if estimate > self.staging_limit() {
            return;
        }
        let indices: Vec<(usize, usize)> = batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |row| (b, row)))
            .collect();
        let sources: Vec<&RecordBatch> = batches.iter().collect();
        let Ok(compact) = arrow::compute::interleave_record_batch(&sources, &indices) else {
            // Not kept: the next lookup reads the file again.
            return;
        };
        debug_assert_eq!(compact.schema(), first.schema());
        let entry: Arc<[RecordBatch]> = Arc::from([compact]);
        if u64::from(weight(&key, &entry)) <= self.largest {
            self.cache.insert(key, entry).await;
        }
    }

    /// Bytes held now (as of the cache's last housekeeping).
    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};

    fn key(ids: &[&str], projection: Vec<usize>) -> DecodedKey {
        DecodedKey {
            location: Path::from("t/part-1.parquet"),
            size: 100,
            row_groups: vec![0],
            ids: ids.iter().map(|s| s.to_string()).collect(),
            projection,
        }
    }

    fn rows(n: usize) -> Arc<[RecordBatch]> {
        let values: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n as i64));
        vec![RecordBatch::try_from_iter([("v", values)]).expect("batch")].into()
    }

    #[tokio::test]
    async fn entries_are_found_only_under_their_whole_key_and_counted() {
        let metrics = TraceLakeMetrics::new();
        let cache = DecodedCache::new(1 << 20, metrics.clone()).expect("on");
        cache.insert(key(&["a"], vec![0, 1]), &rows(10)).await;
        assert_eq!(
            cache
                .get(&key(&["a"], vec![0, 1]))
                .await
                .map(|b| b[0].num_rows()),
            Some(10)
        );
        // Another projection, other ids, another file: not the same rows.
        assert!(cache.get(&key(&["a"], vec![0])).await.is_none());
        assert!(cache.get(&key(&["a", "b"], vec![0, 1])).await.is_none());
        let mut other_file = key(&["a"], vec![0, 1]);
        other_file.size = 101;
        assert!(cache.get(&other_file).await.is_none());
        assert_eq!(metrics.lookup_cache_count("hit"), 1);
        assert_eq!(metrics.lookup_cache_count("miss"), 3);
        // A file without the ids: an empty entry, found (nothing to read next time).
        cache.insert(key(&["none"], vec![0]), &[]).await;
        assert_eq!(
            cache.get(&key(&["none"], vec![0])).await.map(|b| b.len()),
            Some(0)
        );
        // What is kept is one batch of exactly the rows, in buffers of their own size.
        let two = [rows(3)[0].clone(), rows(2)[0].clone()];
        cache.insert(key(&["two"], vec![0]), &two).await;
        let kept = cache.get(&key(&["two"], vec![0])).await.expect("kept");
        assert_eq!((kept.len(), kept[0].num_rows()), (1, 5));
        let wide = rows(8_192)[0].slice(0, 4);
        cache.insert(key(&["sliced"], vec![0]), &[wide]).await;
        let kept = cache.get(&key(&["sliced"], vec![0])).await.expect("kept");
        assert!(kept[0].get_array_memory_size() < 1_024, "{kept:?}");
    }

    #[tokio::test]
    async fn the_budget_bounds_what_is_held_and_zero_turns_it_off() {
        assert!(DecodedCache::new(0, TraceLakeMetrics::new()).is_none());
        let budget = 256 * 1024;
        let cache = DecodedCache::new(budget, TraceLakeMetrics::new()).expect("on");
        // 5,000 rows of Int64 (40 KB) is more than an eighth of the budget: not kept.
        cache.insert(key(&["big"], vec![0]), &rows(5_000)).await;
        assert!(cache.get(&key(&["big"], vec![0])).await.is_none());
        for i in 0..200 {
            cache
                .insert(key(&[&format!("{i}")], vec![0]), &rows(500))
                .await;
        }
        cache.cache.run_pending_tasks().await;
        assert!(cache.weighted_size() > 0);
        assert!(cache.weighted_size() <= budget);
    }
}
