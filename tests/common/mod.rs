//! Helpers shared by the integration tests: fixtures, query helpers, a store that counts and
//! fails requests on demand, the `tracelake` binary, and the real clients (Python packages in
//! a virtualenv under `target/`, npm packages under `target/`).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use tracelake::observe::ScanMetrics;
use tracelake::store::telemetry;
use tracelake::synth::{TraceShape, traces};
use tracelake::{Span, TraceLake};

pub const DAY: i64 = 86_400_000_000_000;
/// 2024-05-01T00:00:00Z
pub const DAY0: i64 = 1_714_521_600_000_000_000;

/// `n` five-span traces starting on `DAY0`, one second apart.
pub fn spans(seed: u64, n_traces: usize) -> Vec<Span> {
    traces(seed, TraceShape::Fixed(5), n_traces, DAY0, 1_000_000_000)
}

/// `n` five-span traces on day `d` (after `DAY0`), spread over half a day.
pub fn day(seed: u64, d: i64, n: usize) -> Vec<Span> {
    traces(seed, TraceShape::Fixed(5), n, DAY0 + d * DAY, DAY / 2)
}

/// The single `Int64` a query returns.
pub async fn count(ctx: &SessionContext, sql: &str) -> i64 {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// The spans of `lake`, asserting that no (trace id, span id) is stored twice.
pub async fn count_spans(lake: &TraceLake) -> i64 {
    let ctx = lake.session_context().unwrap();
    let batches = ctx
        .sql("SELECT count(*), count(DISTINCT trace_id || span_id) FROM spans")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let total = batches[0].column(0).as_primitive::<Int64Type>().value(0);
    let distinct = batches[0].column(1).as_primitive::<Int64Type>().value(0);
    assert_eq!(total, distinct, "no span twice");
    total
}

/// Runs `sql`, returning its batches and the scan metrics of its plan.
pub async fn run(ctx: &SessionContext, sql: &str) -> (Vec<RecordBatch>, ScanMetrics) {
    let plan: Arc<dyn ExecutionPlan> = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let batches = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    (batches, ScanMetrics::from_plan(&plan))
}

pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// Polls `condition` every 5 ms until it holds; fails after `timeout` (a bound for a broken
/// build, not a timing assumption: the condition is what the test waits for).
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Which requests a [`TestStore`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Puts under `_delta_log/` (commits), with a transient error.
    LogWrites,
    /// Puts of commit files that are applied, then answered with a transient error (an
    /// answer lost on the way back).
    LogWritesAppliedButFailed,
    /// Puts of commit files, refused with a permission error (not transient).
    LogWritesDenied,
    /// The first read (GET, range GET) of each data file written after the fault was set.
    FirstReadOfNewDataFiles,
    /// Every read of data files (`.parquet` outside `_delta_log`).
    DataFileReads,
}

/// An in-memory store that counts every call by (operation, path kind) and fails requests on
/// demand (a transient `Generic` error, as a network error would be).
#[derive(Debug, Default)]
pub struct TestStore {
    inner: InMemory,
    calls: Mutex<HashMap<(String, String), u64>>,
    faults: Mutex<HashMap<FaultKey, usize>>,
    written: Mutex<HashSet<Path>>,
    failed_once: Mutex<HashSet<Path>>,
}

type FaultKey = u8;

fn key(fault: Fault) -> FaultKey {
    fault as u8
}

impl TestStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Fails the next `times` requests matching `fault` (`usize::MAX`: until cleared).
    pub fn fail(&self, fault: Fault, times: usize) {
        self.faults.lock().unwrap().insert(key(fault), times);
        if fault == Fault::FirstReadOfNewDataFiles {
            self.written.lock().unwrap().clear();
        }
    }

    pub fn clear(&self) {
        self.faults.lock().unwrap().clear();
    }

    pub fn calls(&self) -> HashMap<(String, String), u64> {
        self.calls.lock().unwrap().clone()
    }

    pub fn reset_calls(&self) {
        self.calls.lock().unwrap().clear();
    }

    /// Calls of `op` on paths of kind `kind`.
    pub fn count(&self, op: &str, kind: &str) -> u64 {
        self.calls()
            .get(&(op.to_string(), kind.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn record(&self, op: &str, path: Option<&Path>) {
        let kind = path.map(telemetry::path_kind).unwrap_or("unknown");
        *self
            .calls
            .lock()
            .unwrap()
            .entry((op.to_string(), kind.to_string()))
            .or_default() += 1;
    }

    fn take(&self, fault: Fault) -> bool {
        let mut faults = self.faults.lock().unwrap();
        match faults.get_mut(&key(fault)) {
            Some(n) if *n > 0 => {
                if *n != usize::MAX {
                    *n -= 1;
                }
                true
            }
            _ => false,
        }
    }

    fn injected() -> object_store::Error {
        object_store::Error::Generic {
            store: "TestStore",
            source: "injected failure".into(),
        }
    }

    fn is_commit(path: &Path) -> bool {
        path.as_ref().contains("_delta_log/") && path.as_ref().ends_with(".json")
    }

    fn on_write(&self, path: &Path) -> Result<()> {
        if path.as_ref().contains("_delta_log/") && self.take(Fault::LogWrites) {
            return Err(Self::injected());
        }
        if Self::is_commit(path) && self.take(Fault::LogWritesDenied) {
            return Err(object_store::Error::PermissionDenied {
                path: path.to_string(),
                source: "injected: access denied".into(),
            });
        }
        if telemetry::path_kind(path) == "parquet_data" {
            self.written.lock().unwrap().insert(path.clone());
        }
        Ok(())
    }

    fn on_read(&self, path: &Path) -> Result<()> {
        if telemetry::path_kind(path) != "parquet_data" {
            return Ok(());
        }
        if self.take(Fault::DataFileReads) {
            return Err(Self::injected());
        }
        let armed = self
            .faults
            .lock()
            .unwrap()
            .get(&key(Fault::FirstReadOfNewDataFiles))
            .is_some_and(|n| *n > 0);
        if armed
            && self.written.lock().unwrap().contains(path)
            && self.failed_once.lock().unwrap().insert(path.clone())
        {
            self.take(Fault::FirstReadOfNewDataFiles);
            return Err(Self::injected());
        }
        Ok(())
    }
}

impl fmt::Display for TestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TestStore")
    }
}

#[async_trait]
impl ObjectStore for TestStore {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
        self.record("put", Some(l));
        self.on_write(l)?;
        let result = self.inner.put_opts(l, p, o).await?;
        if Self::is_commit(l) && self.take(Fault::LogWritesAppliedButFailed) {
            return Err(Self::injected());
        }
        Ok(result)
    }
    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.record("put", Some(l));
        self.on_write(l)?;
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
        self.record(telemetry::get_operation(&o), Some(l));
        self.on_read(l)?;
        self.inner.get_opts(l, o).await
    }
    async fn get_ranges(&self, l: &Path, r: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.record("get_range", Some(l));
        self.on_read(l)?;
        self.inner.get_ranges(l, r).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.record("list", prefix);
        self.inner.list(prefix)
    }
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.record("list", prefix);
        self.inner.list_with_offset(prefix, offset)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.record("list", prefix);
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
        self.record("copy", Some(t));
        self.inner.copy_opts(f, t, o).await
    }
    async fn rename_opts(&self, f: &Path, t: &Path, o: RenameOptions) -> Result<()> {
        self.record("rename", Some(t));
        self.inner.rename_opts(f, t, o).await
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `tracelake` binary built for these tests.
pub fn tracelake_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tracelake"))
}

/// Runs `tracelake args...`; returns (success, stdout, stderr).
pub fn tracelake(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(tracelake_bin())
        .args(args)
        .output()
        .expect("run tracelake");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real clients the tests drive, installed once per checkout by `tests/clients/setup.sh`
/// (Python packages into a virtualenv under `target/`, npm packages under `target/`). The
/// first test that needs them runs the script; it needs `python3` and `npm`, and the package
/// registries.
pub struct Clients {
    pub python: PathBuf,
    pub node_modules: PathBuf,
}

pub fn clients() -> Clients {
    static READY: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    let root = repo();
    let ready = READY.get_or_init(|| {
        let status = std::process::Command::new("bash")
            .arg(root.join("tests/clients/setup.sh"))
            .status()
            .map_err(|e| format!("cannot run tests/clients/setup.sh: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("tests/clients/setup.sh failed: {status}"))
        }
    });
    if let Err(e) = ready {
        panic!("{e} (it installs the Python and npm clients the tests drive)");
    }
    Clients {
        python: root.join("target/clients/venv/bin/python"),
        node_modules: root.join("target/clients/node/node_modules"),
    }
}

/// A scratch directory under `target/` (kept until the next run), for files a child process
/// writes.
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Whether `path` exists and is a directory.
pub fn is_dir(path: &FsPath) -> bool {
    path.is_dir()
}
