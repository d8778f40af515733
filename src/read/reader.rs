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
        let policy = options
            .map(|o| o.column_index_policy())
            .unwrap_or(PageIndexPolicy::Optional);
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(policy)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Reads a data file through the store, counting the bytes, with the footer held by the
/// index when there is one (read from the file otherwise). Used by DataFusion's scan and by
/// [`LookupExec`](super::lookup_exec::LookupExec).
pub(crate) struct IndexedReader {
    pub(crate) inner: StoreReader,
    pub(crate) metadata: Option<Arc<ParquetMetaData>>,
    pub(crate) bytes_scanned: Count,
}

impl AsyncFileReader for IndexedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.bytes_scanned.add((range.end - range.start) as usize);
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
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
        }))
    }
}
