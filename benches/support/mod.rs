//! Shared bench support: tiers, cached fixture tables, percentile timing, and the JSON
//! artifacts written to `bench_metrics/`.
//!
//! - `TRACELAKE_BENCH_TIER` (0, 1 or 2; default 0) selects the tier. Each group calls
//!   [`enabled`] at its top: a Tier 0 run executes only Tier 0 groups.
//! - `TRACELAKE_BENCH_METRICS` (default `bench_metrics`) is where artifacts are written.
//! - Fixture tables are built once under `target/bench-fixtures/` and reused (the synthetic
//!   data is deterministic).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracelake::TraceLake;
use tracelake::synth::{TraceShape, traces};

/// The benchmark tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BenchTier {
    /// Pull-request smoke suite.
    Core = 0,
    /// Large tables, concurrency, maintenance.
    Extended = 1,
    /// Real object-store latency.
    Certification = 2,
}

/// The tier of this run (`TRACELAKE_BENCH_TIER`).
pub fn current_tier() -> BenchTier {
    match std::env::var("TRACELAKE_BENCH_TIER").ok().as_deref() {
        Some("2") => BenchTier::Certification,
        Some("1") => BenchTier::Extended,
        _ => BenchTier::Core,
    }
}

/// Whether a group of `tier` runs now: exactly the groups of the selected tier run.
pub fn enabled(tier: BenchTier) -> bool {
    current_tier() == tier
}

/// The Tier 0 hot and cold query: an aggregate over every file.
#[allow(dead_code)]
pub const HOT_SQL: &str = "SELECT service_name, count(*) AS spans, max(duration_ns) AS slowest \
                           FROM spans WHERE kind = 'SERVER' GROUP BY service_name ORDER BY spans DESC";

/// Copies the directory `from` (a fixture table) to `to`, recursively.
#[allow(dead_code)]
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Whether the bench group `name` runs: every group, unless `TRACELAKE_BENCH_GROUP` names
/// the only ones to run (comma-separated), which skips the others' fixtures too.
#[allow(dead_code)]
pub fn group_selected(name: &str) -> bool {
    match std::env::var("TRACELAKE_BENCH_GROUP") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|g| g.trim() == name),
        _ => true,
    }
}

/// A runtime for the benches.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture table: `spans` spans in 5-span traces, written in `commits` commits spread over
/// one day (hourly when 24).
#[derive(Clone)]
pub struct Fixture {
    pub path: PathBuf,
    pub spans: usize,
    pub commits: usize,
    /// Trace ids sampled across the table, for lookups with fresh ids.
    pub sample_ids: Vec<String>,
}

/// 2024-05-01T00:00:00Z.
pub const DAY0: i64 = 1_714_521_600_000_000_000;
const HOUR: i64 = 3_600_000_000_000;

/// Builds (or reuses) the fixture of `spans` spans in `commits` commits.
pub async fn fixture(spans: usize, commits: usize) -> Fixture {
    let path = workspace()
        .join("target")
        .join("bench-fixtures")
        .join(format!("spans-{spans}-c{commits}"));
    let ids_file = path.join("sample_ids.txt");
    if let Ok(text) = std::fs::read_to_string(&ids_file) {
        return Fixture {
            path,
            spans,
            commits,
            sample_ids: text.lines().map(str::to_string).collect(),
        };
    }
    let _ = std::fs::remove_dir_all(&path);
    let lake = TraceLake::create(path.to_str().unwrap())
        .await
        .expect("create fixture");
    let traces_total = spans / 5;
    let per_commit = traces_total / commits;
    let mut sample_ids = Vec::new();
    for commit in 0..commits {
        let start = DAY0 + commit as i64 * (24 * HOUR / commits as i64);
        let batch = traces(
            1_000 + commit as u64,
            TraceShape::Fixed(5),
            per_commit,
            start,
            24 * HOUR / commits as i64,
        );
        let step = (batch.len() / 5 / 40).max(1) * 5;
        sample_ids.extend(batch.iter().step_by(step).map(|s| s.trace_id.clone()));
        lake.append_spans(&batch).await.expect("append fixture");
    }
    lake.wait_for_background_work().await;
    // Spread the sample over the table, deterministically.
    sample_ids.sort_by_key(|id| {
        id.bytes()
            .rev()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
    });
    std::fs::write(&ids_file, sample_ids.join("\n")).expect("write ids");
    Fixture {
        path,
        spans,
        commits,
        sample_ids,
    }
}

/// The ingest workload: 1M spans (200k five-span traces over one day) as 10 Arrow batches of
/// 100k, the same for tracelake and for the `ArrowWriter` reference.
pub fn ingest_batches() -> Vec<arrow::array::RecordBatch> {
    let spans = traces(5, TraceShape::Fixed(5), 200_000, DAY0, 24 * HOUR);
    spans
        .chunks(100_000)
        .map(|c| tracelake::span::spans_to_batch(c).expect("span batch"))
        .collect()
}

/// Runs `f` `n` times and returns the durations, sorted.
pub fn sample(n: usize, mut f: impl FnMut(usize)) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

/// The `p`-th percentile (0..=100) of sorted durations, in nanoseconds.
pub fn percentile(sorted: &[Duration], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_nanos() as u64
}

/// One benchmark's artifact, `bench_metrics/<name>.json`.
pub struct Artifact {
    pub name: String,
    pub tier: BenchTier,
    pub entrypoint: String,
    pub timings: Vec<Duration>,
    pub rows: u64,
    pub requests: BTreeMap<String, u64>,
    pub bytes_read: u64,
    pub table: Value,
    /// Another measurement of the same run this one is compared against (name, p50 ns).
    pub reference: Option<(String, u64)>,
    pub extra: Value,
}

impl Artifact {
    pub fn new(name: &str, tier: BenchTier, entrypoint: &str) -> Self {
        Self {
            name: name.to_string(),
            tier,
            entrypoint: entrypoint.to_string(),
            timings: Vec::new(),
            rows: 0,
            requests: BTreeMap::new(),
            bytes_read: 0,
            table: Value::Null,
            reference: None,
            extra: Value::Null,
        }
    }

    pub fn p50(&self) -> u64 {
        percentile(&self.timings, 50.0)
    }

    /// Writes the artifact as JSON.
    pub fn write(&self) {
        let dir = std::env::var("TRACELAKE_BENCH_METRICS")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace().join("bench_metrics"));
        std::fs::create_dir_all(&dir).expect("bench_metrics dir");
        let p50 = self.p50();
        let value = json!({
            "name": self.name,
            "tier": self.tier as u8,
            "entrypoint": self.entrypoint,
            "samples": self.timings.len(),
            "latency_ns": {
                "p50": p50,
                "p95": percentile(&self.timings, 95.0),
                "p99": percentile(&self.timings, 99.0),
            },
            "reference": self.reference.as_ref().map(|(name, ref_p50)| json!({
                "name": name,
                "p50_ns": ref_p50,
                "ratio": if *ref_p50 == 0 { 0.0 } else { p50 as f64 / *ref_p50 as f64 },
            })),
            "rows": self.rows,
            "object_store_requests": self.requests,
            "bytes_read": self.bytes_read,
            "table": self.table,
            "machine": {
                "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "os": std::env::consts::OS,
                "arch": std::env::consts::ARCH,
                "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            },
            "extra": self.extra,
        });
        let path = dir.join(format!("{}.json", self.name));
        std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap() + "\n")
            .expect("write artifact");
        println!(
            "artifact {}: p50 {:.3} ms, p95 {:.3} ms, rows {}",
            path.display(),
            p50 as f64 / 1e6,
            percentile(&self.timings, 95.0) as f64 / 1e6,
            self.rows
        );
    }
}

/// A global allocator that counts the bytes live on the heap and their peak, for benches
/// that report memory as a figure. A bench opts in with
/// `#[global_allocator] static ALLOC: support::CountingAlloc = support::CountingAlloc;`
/// (the others keep the system allocator untouched).
pub struct CountingAlloc;

static LIVE_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl CountingAlloc {
    fn grew(by: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = LIVE_BYTES.fetch_add(by, Relaxed) + by;
        PEAK_BYTES.fetch_max(now, Relaxed);
    }

    fn shrank(by: usize) {
        LIVE_BYTES.fetch_sub(by, std::sync::atomic::Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are only
// updated around it.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { std::alloc::System.alloc(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let out = unsafe { std::alloc::System.realloc(ptr, layout, new) };
        if !out.is_null() {
            if new >= layout.size() {
                Self::grew(new - layout.size());
            } else {
                Self::shrank(layout.size() - new);
            }
        }
        out
    }
}

/// Bytes live on the heap now (with [`CountingAlloc`] as the global allocator; 0 otherwise).
pub fn heap_live() -> usize {
    LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// The most bytes live on the heap since the last [`heap_reset_peak`].
pub fn heap_peak() -> usize {
    PEAK_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Starts a new peak from the bytes live now.
pub fn heap_reset_peak() {
    PEAK_BYTES.store(heap_live(), std::sync::atomic::Ordering::Relaxed);
}

/// Resident memory of this process, in bytes (Linux; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Copies the table directory `from` into `store` under `prefix` (a fixture moved onto
/// another store, e.g. a latency-injected one).
pub async fn load_into(
    store: &impl object_store::ObjectStore,
    from: &std::path::Path,
    prefix: &str,
) {
    let mut stack = vec![from.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(from).expect("under the fixture");
            let key = format!("{prefix}/{}", relative.to_string_lossy());
            let bytes = std::fs::read(&path).expect("read fixture file");
            object_store::ObjectStoreExt::put(
                store,
                &object_store::path::Path::from(key.as_str()),
                bytes.into(),
            )
            .await
            .expect("put");
        }
    }
}

/// The backend requests counted so far in `metrics` for `backend` (`local`, `memory`, `s3`),
/// by `operation/path_kind`.
pub fn requests(
    metrics: &tracelake::observe::TraceLakeMetrics,
    backend: &str,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for op in tracelake::store::telemetry::OPERATIONS {
        for kind in tracelake::store::telemetry::PATH_KINDS {
            let n = metrics.request_count(backend, op, kind);
            if n > 0 {
                out.insert(format!("{op}/{kind}"), n);
            }
        }
    }
    out
}

/// `SELECT * FROM spans WHERE trace_id = '<id>'`: the rows it returns (at least one, or it
/// panics: every id a bench looks up is in its table).
pub async fn lookup_rows(ctx: &datafusion::prelude::SessionContext, id: &str) -> usize {
    let batches = ctx
        .sql(&format!("SELECT * FROM spans WHERE trace_id = '{id}'"))
        .await
        .expect("plan")
        .collect()
        .await
        .expect("lookup");
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    assert!(rows > 0, "trace {id} not found");
    rows
}
