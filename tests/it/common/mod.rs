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
#[derive(Debug)]
pub struct TestStore {
    inner: InMemory,
    /// Commit files are written only while this is open.
    commits_open: tokio::sync::watch::Sender<bool>,
    calls: Mutex<HashMap<(String, String), u64>>,
    faults: Mutex<HashMap<FaultKey, usize>>,
    written: Mutex<HashSet<Path>>,
    failed_once: Mutex<HashSet<Path>>,
}

type FaultKey = u8;

fn key(fault: Fault) -> FaultKey {
    fault as u8
}

impl Default for TestStore {
    fn default() -> Self {
        Self {
            inner: InMemory::new(),
            commits_open: tokio::sync::watch::Sender::new(true),
            calls: Default::default(),
            faults: Default::default(),
            written: Default::default(),
            failed_once: Default::default(),
        }
    }
}

impl TestStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Holds every commit-file write until [`TestStore::resume_commits`].
    pub fn pause_commits(&self) {
        self.commits_open.send_replace(false);
    }

    pub fn resume_commits(&self) {
        self.commits_open.send_replace(true);
    }

    /// Commit writes waiting at the gate.
    pub fn commits_waiting(&self) -> usize {
        self.commits_open.receiver_count()
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
        if Self::is_commit(l) {
            let mut gate = self.commits_open.subscribe();
            let _ = gate.wait_for(|open| *open).await;
        }
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
#[cfg(feature = "cli")]
pub fn tracelake_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tracelake"))
}

/// Runs `tracelake args...`; returns (success, stdout, stderr).
#[cfg(feature = "cli")]
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

/// A minimal HTTP/1.1 request (one per connection) for the receivers' tests: returns the
/// status, the headers (lowercase names) and the body.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let mut found = HashMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            found.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut payload = response[split + 4..].to_vec();
    if found
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        payload = dechunk(&payload);
    }
    (status, found, payload)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// A `tracelake serve` process on loopback ports chosen by the system, killed when dropped.
#[cfg(feature = "cli")]
pub struct ServeProcess {
    pub child: std::process::Child,
    pub http: std::net::SocketAddr,
    pub grpc: std::net::SocketAddr,
    /// The query API (Grafana Tempo's HTTP API).
    pub query: std::net::SocketAddr,
    pub output: Arc<Mutex<Vec<String>>>,
}

#[cfg(feature = "cli")]
impl ServeProcess {
    pub fn start(table: &FsPath, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(tracelake_bin())
            .args(["serve", "--table", table.to_str().unwrap()])
            .args(["--otlp-http", "127.0.0.1:0", "--otlp-grpc", "127.0.0.1:0"])
            .args(["--query-http", "127.0.0.1:0"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tracelake serve");
        let stdout = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(|l| l.ok())
                {
                    output.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let (mut http, mut grpc, mut query) = (None, None, None);
        while http.is_none() || grpc.is_none() || query.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("tracelake serve printed its addresses");
            if let Some(rest) = line.strip_prefix("listening otlp-http http://") {
                http = rest.split('/').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("listening otlp-grpc ") {
                grpc = rest.trim().parse().ok();
            }
            if let Some(rest) = line.strip_prefix("listening query-http http://") {
                query = rest.split(' ').next().and_then(|a| a.parse().ok());
            }
        }
        Self {
            child,
            http: http.unwrap(),
            grpc: grpc.unwrap(),
            query: query.unwrap(),
            output,
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait")
    }
}

#[cfg(feature = "cli")]
impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The spans of the legacy-layout fixture (`tests/fixtures/legacy-attributes`, written by
/// tracelake 0.1 before the lean attribute layout): realistic traces (array attributes
/// among them) and one span with every kind of attribute value, events and links. Two
/// commits: the realistic traces, then the hand-made span.
pub fn legacy_fixture_spans() -> (Vec<Span>, Vec<Span>) {
    use tracelake::{AttributeValue as V, Event, Link, SpanKind, StatusCode};
    let realistic = traces(
        23,
        TraceShape::Realistic,
        12,
        1_714_564_800_000_000_000,
        60_000_000_000,
    );
    let every_value = vec![
        ("s".to_string(), V::String("text".into())),
        ("i".to_string(), V::Int(i64::MIN)),
        ("d".to_string(), V::Double(f64::NAN)),
        ("inf".to_string(), V::Double(f64::NEG_INFINITY)),
        ("pi".to_string(), V::Double(std::f64::consts::PI)),
        ("b".to_string(), V::Bool(false)),
        ("bytes".to_string(), V::Bytes(vec![0, 159, 255])),
        (
            "mixed".to_string(),
            V::Array(vec![
                V::String("a\"b".into()),
                V::Int(7),
                V::Double(0.1),
                V::Bool(true),
                V::Bytes(vec![1, 2]),
            ]),
        ),
        ("empty".to_string(), V::Array(vec![])),
    ];
    let span = Span {
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        span_id: "b7ad6b7169203331".into(),
        parent_span_id: None,
        trace_state: Some("k=v".into()),
        flags: Some(1),
        name: "every value".into(),
        kind: SpanKind::Server,
        service_name: "fixture".into(),
        start_time_unix_nano: 1_714_564_830_000_000_000,
        end_time_unix_nano: 1_714_564_830_250_000_000,
        status_code: StatusCode::Error,
        status_message: Some("boom".into()),
        scope_name: Some("scope".into()),
        scope_version: Some("1.0".into()),
        attributes: every_value.clone(),
        resource_attributes: vec![
            ("service.name".to_string(), V::String("fixture".into())),
            ("tags".to_string(), V::Array(vec![V::String("x".into())])),
        ],
        events: vec![Event {
            time_unix_nano: 1_714_564_830_100_000_000,
            name: "exception".into(),
            attributes: every_value.clone(),
            dropped_attributes_count: 2,
        }],
        links: vec![Link {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            trace_state: None,
            flags: Some(0),
            attributes: every_value,
            dropped_attributes_count: 0,
        }],
        dropped_attributes_count: 1,
        dropped_events_count: 0,
        dropped_links_count: 3,
    };
    (realistic, vec![span])
}
