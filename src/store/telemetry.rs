//! `ObjectStoreTelemetry`: a wrapper store that emits one `object_store.request` span per
//! call and counts it in Prometheus (requests, duration, bytes), labelled by operation, path
//! kind, backend and status. Every store tracelake opens is wrapped in it (log, checkpoints
//! and data; reads and writes).
//!
//! In object_store 0.13 `get`, `get_range` and `head` all reach `get_opts`; the operation is
//! classified from the options. List streams count one request when the stream starts and
//! each entry as it arrives.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};
use tracing::{Instrument, field};

use crate::observe::metrics::{RequestLabels, TraceLakeMetrics};
use crate::observe::names;

/// Operations, as reported in `object_store.operation`.
pub const OPERATIONS: [&str; 8] = [
    "list",
    "get",
    "get_range",
    "head",
    "put",
    "delete",
    "copy",
    "rename",
];
/// Path kinds, as reported in `object_store.path_kind`.
pub const PATH_KINDS: [&str; 5] = [
    "delta_log",
    "checkpoint",
    "last_checkpoint",
    "parquet_data",
    "unknown",
];
/// Backends, as reported in `object_store.backend`.
pub const BACKENDS: [&str; 6] = ["local", "memory", "s3", "gcs", "azure", "cache"];
/// Statuses, as reported in `object_store.status`.
pub const STATUSES: [&str; 3] = ["ok", "not_found", "error"];

fn intern(options: &[&'static str], value: &str, fallback: &'static str) -> &'static str {
    options
        .iter()
        .copied()
        .find(|o| *o == value)
        .unwrap_or(fallback)
}

pub(crate) fn operation_name(op: &str) -> &'static str {
    intern(&OPERATIONS, op, "get")
}

pub(crate) fn path_kind_name(kind: &str) -> &'static str {
    intern(&PATH_KINDS, kind, "unknown")
}

/// The kind of object a path names in a Delta table.
pub fn path_kind(path: &Path) -> &'static str {
    let p = path.as_ref();
    if p.contains("_delta_log/") || p.starts_with("_delta_log") || p.ends_with("_delta_log") {
        if p.ends_with("_last_checkpoint") {
            "last_checkpoint"
        } else if p.contains(".checkpoint") {
            "checkpoint"
        } else {
            "delta_log"
        }
    } else if p.ends_with(".parquet") {
        "parquet_data"
    } else {
        "unknown"
    }
}

fn status_of<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(object_store::Error::NotFound { .. }) => "not_found",
        Err(_) => "error",
    }
}

/// Classifies a `get_opts` call: `head`, `get_range` or `get`.
pub fn get_operation(options: &GetOptions) -> &'static str {
    if options.head {
        "head"
    } else if options.range.is_some() {
        "get_range"
    } else {
        "get"
    }
}

/// One request being measured.
struct Request {
    span: tracing::Span,
    labels: RequestLabels,
    started: Instant,
}

/// A store that reports every request. See the module docs.
#[derive(Debug)]
pub struct ObjectStoreTelemetry {
    inner: Arc<dyn ObjectStore>,
    backend: &'static str,
    metrics: TraceLakeMetrics,
}

impl ObjectStoreTelemetry {
    /// Wraps `inner`, reporting requests as `backend` (`local`, `memory`, `s3`, `gcs`,
    /// `azure`, `cache`) into `metrics`.
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        backend: &'static str,
        metrics: TraceLakeMetrics,
    ) -> Self {
        Self {
            inner,
            backend: intern(&BACKENDS, backend, "local"),
            metrics,
        }
    }

    fn start(&self, operation: &'static str, path: Option<&Path>) -> Request {
        let path_kind = path.map(path_kind).unwrap_or("unknown");
        let span = tracing::info_span!(
            names::OBJECT_STORE_REQUEST,
            { names::ATTR_OS_OPERATION } = operation,
            { names::ATTR_OS_PATH_KIND } = path_kind,
            { names::ATTR_OS_BACKEND } = self.backend,
            { names::ATTR_OS_PATH } = path.map(|p| p.as_ref()).unwrap_or(""),
            { names::ATTR_OS_STATUS } = field::Empty,
            { names::ATTR_OS_BYTES } = field::Empty,
            { names::ATTR_OS_CACHE_HIT } = field::Empty,
        );
        Request {
            span,
            labels: RequestLabels {
                operation,
                path_kind,
                backend: self.backend,
                status: "ok",
            },
            started: Instant::now(),
        }
    }

    fn finish(&self, mut request: Request, status: &'static str, bytes: u64) {
        request.labels.status = status;
        request.span.record(names::ATTR_OS_STATUS, status);
        request.span.record(names::ATTR_OS_BYTES, bytes);
        self.metrics.requests.get_or_create(&request.labels).inc();
        self.metrics
            .duration
            .get_or_create(&request.labels)
            .observe(request.started.elapsed().as_secs_f64());
        if bytes > 0 {
            self.metrics
                .bytes
                .get_or_create(&request.labels)
                .inc_by(bytes);
        }
    }

    fn list_stream(
        &self,
        stream: BoxStream<'static, Result<ObjectMeta>>,
        request: Request,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        // The request counts when the listing starts; entries count as they arrive.
        let entries = self
            .metrics
            .list_entries
            .get_or_create(&request.labels)
            .clone();
        self.finish(request, "ok", 0);
        stream
            .inspect(move |item| {
                if item.is_ok() {
                    entries.inc();
                }
            })
            .boxed()
    }
}

impl fmt::Display for ObjectStoreTelemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStoreTelemetry({}, {})", self.backend, self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for ObjectStoreTelemetry {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let request = self.start("put", Some(location));
        let bytes = payload.content_length() as u64;
        let span = request.span.clone();
        let result = self
            .inner
            .put_opts(location, payload, opts)
            .instrument(span)
            .await;
        self.finish(
            request,
            status_of(&result),
            if result.is_ok() { bytes } else { 0 },
        );
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(TelemetryUpload {
            upload,
            store: ObjectStoreTelemetry {
                inner: self.inner.clone(),
                backend: self.backend,
                metrics: self.metrics.clone(),
            },
            location: location.clone(),
            bytes: Arc::new(AtomicU64::new(0)),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let request = self.start(get_operation(&options), Some(location));
        let span = request.span.clone();
        let result = self
            .inner
            .get_opts(location, options)
            .instrument(span)
            .await;
        let bytes = match &result {
            Ok(r) if request.labels.operation != "head" => r.range.end - r.range.start,
            _ => 0,
        };
        self.finish(request, status_of(&result), bytes);
        result
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let request = self.start("get_range", Some(location));
        let span = request.span.clone();
        let result = self
            .inner
            .get_ranges(location, ranges)
            .instrument(span)
            .await;
        let bytes = match &result {
            Ok(parts) => parts.iter().map(|b| b.len() as u64).sum(),
            Err(_) => 0,
        };
        self.finish(request, status_of(&result), bytes);
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = ObjectStoreTelemetry {
            inner: self.inner.clone(),
            backend: self.backend,
            metrics: self.metrics.clone(),
        };
        self.inner
            .delete_stream(locations)
            .inspect(move |result| {
                let path = result.as_ref().ok();
                let request = this.start("delete", path);
                this.finish(request, status_of(result), 0);
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let request = self.start("list", prefix);
        let stream = self.inner.list(prefix);
        self.list_stream(stream, request)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let request = self.start("list", prefix);
        let stream = self.inner.list_with_offset(prefix, offset);
        self.list_stream(stream, request)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let request = self.start("list", prefix);
        let span = request.span.clone();
        let result = self
            .inner
            .list_with_delimiter(prefix)
            .instrument(span)
            .await;
        if let Ok(list) = &result {
            self.metrics
                .list_entries
                .get_or_create(&request.labels)
                .inc_by((list.objects.len() + list.common_prefixes.len()) as u64);
        }
        self.finish(request, status_of(&result), 0);
        result
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let request = self.start("copy", Some(to));
        let span = request.span.clone();
        let result = self
            .inner
            .copy_opts(from, to, options)
            .instrument(span)
            .await;
        self.finish(request, status_of(&result), 0);
        result
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let request = self.start("rename", Some(to));
        let span = request.span.clone();
        let result = self
            .inner
            .rename_opts(from, to, options)
            .instrument(span)
            .await;
        self.finish(request, status_of(&result), 0);
        result
    }
}

/// A multipart upload counted as one `put` when it completes (or fails), with its bytes.
#[derive(Debug)]
struct TelemetryUpload {
    upload: Box<dyn MultipartUpload>,
    store: ObjectStoreTelemetry,
    location: Path,
    bytes: Arc<AtomicU64>,
}

#[async_trait]
impl MultipartUpload for TelemetryUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.bytes
            .fetch_add(data.content_length() as u64, Ordering::Relaxed);
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let request = self.store.start("put", Some(&self.location));
        let span = request.span.clone();
        let result = self.upload.complete().instrument(span).await;
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.store.finish(
            request,
            status_of(&result),
            if result.is_ok() { bytes } else { 0 },
        );
        result
    }

    async fn abort(&mut self) -> Result<()> {
        let request = self.store.start("put", Some(&self.location));
        let result = self.upload.abort().await;
        self.store.finish(request, "error", 0);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified() {
        let k = |s: &str| path_kind(&Path::from(s));
        assert_eq!(k("t/_delta_log/00000000000000000001.json"), "delta_log");
        assert_eq!(k("t/_delta_log/_last_checkpoint"), "last_checkpoint");
        assert_eq!(
            k("t/_delta_log/00000000000000000010.checkpoint.parquet"),
            "checkpoint"
        );
        assert_eq!(k("t/span_date=2024-05-01/part-0.parquet"), "parquet_data");
        assert_eq!(k("t/other.txt"), "unknown");
        assert_eq!(k("t/_delta_log"), "delta_log", "a listing of the log");
    }

    #[test]
    fn get_options_classify_the_operation() {
        assert_eq!(get_operation(&GetOptions::default()), "get");
        let head = GetOptions {
            head: true,
            ..Default::default()
        };
        assert_eq!(get_operation(&head), "head");
        let range = GetOptions {
            range: Some((0..10).into()),
            ..Default::default()
        };
        assert_eq!(get_operation(&range), "get_range");
    }
}
