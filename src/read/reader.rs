//! Reading data files through the table's store stack: [`StoreReader`] (parquet's
//! `AsyncFileReader` over an object store), [`IndexedReader`] (the same with the footer the
//! index holds, counting bytes), and the factory that hands it to DataFusion's parquet scan.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::Result as DfResult;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    ParquetFileMetrics, ParquetFileReaderFactory,
};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet};
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use super::index::IndexedFile;

/// How many bytes at the end of a data file are read at once for its footer.
const FOOTER_PREFETCH: usize = 64 * 1024;

/// How many bytes at the end of a data file [`TailReader`] reads at once: the footer, the
/// page index and, in files tracelake writes, most bloom filters.
pub(crate) const TAIL_BYTES: u64 = 128 * 1024;

/// Reads a parquet file's footer, page index and bloom filters from one request for its
/// last [`TAIL_BYTES`] when they lie there; ranges outside the tail go to the store.
pub(crate) struct TailReader {
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
    tail_start: u64,
    tail: Bytes,
}

impl TailReader {
    /// Reads the tail of the file.
    pub(crate) async fn new(
        store: Arc<dyn ObjectStore>,
        location: Path,
        size: u64,
    ) -> object_store::Result<Self> {
        let tail_start = size.saturating_sub(TAIL_BYTES);
        let tail = if size == 0 {
            Bytes::new()
        } else {
            store.get_range(&location, tail_start..size).await?
        };
        Ok(Self {
            store,
            location,
            size,
            tail_start,
            tail,
        })
    }

    /// Whether the tail holds every byte from `offset` to the end of the file.
    pub(crate) fn holds_from(&self, offset: u64) -> bool {
        offset >= self.tail_start && self.tail_start + self.tail.len() as u64 == self.size
    }

    /// The bytes of `range` if the tail holds them.
    fn cached(&self, range: &Range<u64>) -> Option<Bytes> {
        let end = self.tail_start + self.tail.len() as u64;
        (range.start >= self.tail_start && range.end <= end && range.start <= range.end).then(
            || {
                self.tail.slice(
                    (range.start - self.tail_start) as usize
                        ..(range.end - self.tail_start) as usize,
                )
            },
        )
    }

    /// The bytes of each range: from the tail where it holds them, the others in one
    /// `get_ranges` request.
    pub(crate) async fn ranges(&self, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        let mut out: Vec<Option<Bytes>> = ranges.iter().map(|r| self.cached(r)).collect();
        let missing: Vec<Range<u64>> = ranges
            .iter()
            .zip(&out)
            .filter(|(_, b)| b.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        if !missing.is_empty() {
            let mut fetched = self
                .store
                .get_ranges(&self.location, &missing)
                .await?
                .into_iter();
            for slot in out.iter_mut().filter(|b| b.is_none()) {
                *slot = fetched.next();
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }
}

impl AsyncFileReader for TailReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            match self.cached(&range) {
                Some(bytes) => Ok(bytes),
                None => self
                    .store
                    .get_range(&self.location, range)
                    .await
                    .map_err(external),
            }
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move { self.ranges(&ranges).await.map_err(external) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let size = self.size;
        load_metadata(self, size, options, None).boxed()
    }
}

/// Reads the footer of a file of `size` bytes through `reader`, with the page index as
/// `options` ask (when present by default), reading the last `prefetch` bytes at once.
async fn load_metadata<R: parquet::arrow::async_reader::MetadataFetch>(
    reader: R,
    size: u64,
    options: Option<&ArrowReaderOptions>,
    prefetch: Option<usize>,
) -> parquet::errors::Result<Arc<ParquetMetaData>> {
    let policy = options
        .map(|o| o.column_index_policy())
        .unwrap_or(PageIndexPolicy::Optional);
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(policy)
        .with_prefetch_hint(prefetch)
        .load_and_finish(reader, size)
        .await?;
    Ok(Arc::new(metadata))
}

/// Reads a parquet file from an object store.
pub(crate) struct StoreReader {
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
}

impl StoreReader {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, location: Path, size: u64) -> Self {
        Self {
            store,
            location,
            size,
        }
    }
}

fn external(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.location, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.location, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        // The footer, the metadata and the page index are at the end of the file: one request
        // for the last FOOTER_PREFETCH bytes usually holds them all.
        let size = self.size;
        load_metadata(self, size, options, Some(FOOTER_PREFETCH)).boxed()
    }
}

/// Reads a data file through the store, counting the bytes, with the footer held by the
/// index when there is one (read from the file otherwise). Used by DataFusion's scan and by
/// [`LookupExec`](super::lookup_exec::LookupExec).
pub(crate) struct IndexedReader {
    pub(crate) inner: StoreReader,
    pub(crate) metadata: Option<Arc<ParquetMetaData>>,
    pub(crate) bytes_scanned: Count,
    /// Ranges read ahead (and counted) by the caller, sorted by start: requests they cover
    /// are answered from memory.
    pub(crate) prefetched: Vec<(Range<u64>, Bytes)>,
}

impl IndexedReader {
    /// The bytes of `range` if a prefetched range covers it.
    fn prefetched(&self, range: &Range<u64>) -> Option<Bytes> {
        let after = self
            .prefetched
            .partition_point(|(r, _)| r.start <= range.start);
        let (covering, bytes) = self.prefetched.get(after.checked_sub(1)?)?;
        if range.end > covering.end {
            return None;
        }
        let start = usize::try_from(range.start.checked_sub(covering.start)?).ok()?;
        let end = usize::try_from(range.end.checked_sub(covering.start)?).ok()?;
        (start <= end && end <= bytes.len()).then(|| bytes.slice(start..end))
    }
}

impl AsyncFileReader for IndexedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        if let Some(bytes) = self.prefetched(&range) {
            return futures::future::ready(Ok(bytes)).boxed();
        }
        self.bytes_scanned.add((range.end - range.start) as usize);
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let held: Option<Vec<Bytes>> = ranges.iter().map(|r| self.prefetched(r)).collect();
        if let Some(held) = held {
            return futures::future::ready(Ok(held)).boxed();
        }
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.bytes_scanned.add(total as usize);
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        match &self.metadata {
            Some(metadata) => futures::future::ready(Ok(metadata.clone())).boxed(),
            None => self.inner.get_metadata(options),
        }
    }
}

/// Hands DataFusion's parquet scan the footers held by the index, so a scan reads only data
/// pages.
#[derive(Debug)]
pub(crate) struct IndexedReaderFactory {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) files: HashMap<Path, Arc<IndexedFile>>,
}

impl ParquetFileReaderFactory for IndexedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let location = partitioned_file.object_meta.location.clone();
        let entry = self.files.get(&location).cloned();
        let file_metrics = ParquetFileMetrics::new(partition_index, location.as_ref(), metrics);
        let size = partitioned_file.object_meta.size;
        Ok(Box::new(IndexedReader {
            inner: StoreReader::new(self.store.clone(), location, size),
            metadata: entry.map(|e| e.metadata().clone()),
            bytes_scanned: file_metrics.bytes_scanned,
            prefetched: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefetched_ranges_answer_the_requests_they_cover_and_others_go_to_the_store() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let path = Path::from("t/f.parquet");
        let data: Vec<u8> = (0..=255u8).collect();
        store
            .put(&path, Bytes::from(data.clone()).into())
            .await
            .unwrap();
        let bytes_scanned = Count::new();
        // Prefetched bytes that differ from the object's: an answer from memory shows.
        let mut reader = IndexedReader {
            inner: StoreReader::new(store, path, 256),
            metadata: None,
            bytes_scanned: bytes_scanned.clone(),
            prefetched: vec![
                (10..20, Bytes::from(vec![1u8; 10])),
                (40..44, Bytes::from(vec![2u8; 4])),
            ],
        };
        assert_eq!(reader.get_bytes(12..15).await.unwrap(), vec![1u8; 3]);
        assert_eq!(
            reader.get_byte_ranges(vec![40..44, 10..20]).await.unwrap(),
            [vec![2u8; 4], vec![1u8; 10]]
        );
        assert_eq!(bytes_scanned.value(), 0);
        // Not covered (across two ranges, past one, before all): read from the store.
        for range in [15..42, 18..22, 0..5] {
            let expected = data[range.start as usize..range.end as usize].to_vec();
            assert_eq!(reader.get_bytes(range).await.unwrap(), expected);
        }
        assert_eq!(
            reader.get_byte_ranges(vec![10..20, 50..52]).await.unwrap(),
            [data[10..20].to_vec(), data[50..52].to_vec()]
        );
        assert_eq!(bytes_scanned.value(), 27 + 4 + 5 + 12);
    }
}
