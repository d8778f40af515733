//! Tier 1 (`make bench.extended`, group `compaction`): tracelake's own compaction of one day
//! of realistic spans appended in 150 commits (the demo's shape: every commit covers the whole
//! trace-id space), at 5.16M spans by default (`TRACELAKE_BENCH_COMPACTION_SPANS`, a comma
//! list, for 10M and more). Per size: the optimize's time, the most heap it held above what the
//! open table held (a counting allocator) and the process's peak resident memory during it
//! (`VmHWM`, reset before it), then a second optimize with nothing new (it must rewrite and
//! commit nothing).

mod support;

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use support::{Artifact, BenchTier, enabled, group_selected, runtime};
use tracelake::TraceLake;
use tracelake::synth::{TraceShape, traces};

#[global_allocator]
static ALLOC: support::CountingAlloc = support::CountingAlloc;

const COMMITS: usize = 150;
const HOUR: i64 = 3_600_000_000_000;

fn sizes() -> Vec<usize> {
    std::env::var("TRACELAKE_BENCH_COMPACTION_SPANS")
        .unwrap_or_else(|_| "5160000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("TRACELAKE_BENCH_COMPACTION_SPANS: span counts")
        })
        .collect()
}

/// The process's peak resident memory since the last [`reset_peak_rss`], bytes (Linux).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn reset_peak_rss() {
    // "5" resets the peak resident set size to the current one (Linux 4.0+).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn compaction(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("compaction") {
        return;
    }
    let rt = runtime();
    for spans in sizes() {
        let label = if spans % 1_000_000 == 0 {
            format!("{}m", spans / 1_000_000)
        } else {
            format!("{:.2}m", spans as f64 / 1e6)
        };
        let dir = tempfile::tempdir_in(support::workspace().join("target")).expect("tempdir");
        let path = dir.path().join("spans");
        let path = path.to_str().expect("utf-8").to_string();
        let written = rt.block_on(async {
            let lake = TraceLake::create(&path).await.expect("create");
            // Realistic traces average about 6.9 spans; each commit covers the whole id space
            // and a slice of the day.
            let per_commit = (spans / COMMITS).max(1);
            let mut written = 0usize;
            for commit in 0..COMMITS {
                let mut batch = Vec::with_capacity(per_commit + 64);
                let mut seed = 0u64;
                while batch.len() < per_commit {
                    batch.extend(traces(
                        (commit as u64) << 20 | seed,
                        TraceShape::Realistic,
                        1_000,
                        support::DAY0 + commit as i64 * (20 * HOUR / COMMITS as i64),
                        20 * HOUR / COMMITS as i64,
                    ));
                    seed += 1;
                }
                batch.truncate(per_commit);
                written += batch.len();
                lake.append_spans(&batch).await.expect("append");
            }
            lake.wait_for_background_work().await;
            written
        });
        // A process that opens the table to optimize it, as `tracelake optimize` does.
        let lake = rt.block_on(TraceLake::open(&path)).expect("open");
        let files_before = lake.table().snapshot().num_files();
        let version_before = lake.version();
        reset_peak_rss();
        support::heap_reset_peak();
        let (heap_before, rss_before) = (support::heap_live(), support::resident_bytes());
        let t = Instant::now();
        let outcome = rt
            .block_on(async { lake.optimize().await })
            .expect("optimize");
        let took = t.elapsed();
        let (heap_peak, rss_peak) = (support::heap_peak(), peak_rss());
        assert_eq!(outcome.files_removed as usize, files_before, "{outcome:?}");
        let count = rt.block_on(async {
            let ctx = lake.session_context().expect("context");
            let batches = ctx
                .sql("SELECT count(*) FROM spans")
                .await
                .expect("plan")
                .collect()
                .await
                .expect("count");
            arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(batches[0].column(0))
                .value(0)
        });
        assert_eq!(
            count as usize, written,
            "compaction lost or duplicated spans"
        );
        let mut run = Artifact::new(
            &format!("compaction_{label}"),
            BenchTier::Extended,
            "TraceTable::optimize (tracelake's compaction, default 256 MiB budget)",
        );
        run.timings = vec![took];
        run.rows = written as u64;
        run.table = json!({"spans": written, "commits": COMMITS, "files": files_before});
        run.extra = json!({
            "peak_heap_bytes_added": heap_peak.saturating_sub(heap_before),
            "peak_rss_bytes": rss_peak,
            "rss_bytes_before": rss_before,
            "files_removed": outcome.files_removed,
            "files_added": outcome.files_added,
            "merge_passes": outcome.merge_passes,
            "peak_merge_memory": outcome.peak_merge_memory,
            "version_before": version_before,
            "version_after": outcome.version,
        });
        run.write();

        let version = lake.version();
        let t = Instant::now();
        let again = rt
            .block_on(async { lake.optimize().await })
            .expect("second optimize");
        let took = t.elapsed();
        assert_eq!(
            again.version, version,
            "a second optimize committed: {again:?}"
        );
        assert_eq!(
            (again.files_removed, again.files_added),
            (0, 0),
            "{again:?}"
        );
        let mut second = Artifact::new(
            &format!("compaction_second_run_{label}"),
            BenchTier::Extended,
            "TraceTable::optimize with nothing new",
        );
        second.timings = vec![took];
        second.table = run.table.clone();
        second.extra = json!({
            "files_rewritten": again.files_removed,
            "committed": again.version != version,
        });
        second.write();
        println!(
            "compaction {label}: {:.2} s, peak heap +{} MB, peak RSS {} MB, {} -> {} files, \
             {} passes; second run {:.1} ms",
            run.timings[0].as_secs_f64(),
            heap_peak.saturating_sub(heap_before) >> 20,
            rss_peak >> 20,
            outcome.files_removed,
            outcome.files_added,
            outcome.merge_passes,
            took.as_secs_f64() * 1e3
        );
    }
}

criterion_group!(benches, compaction);
criterion_main!(benches);
