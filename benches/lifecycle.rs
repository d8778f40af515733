//! Tier 1 (`make bench.extended`): table open and refresh time at 10 and 1,000 commits, and
//! ingest of 1M spans against parquet's `ArrowWriter` on the same batches and disk.

mod support;

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use support::{Artifact, BenchTier, enabled, runtime, sample};
use tracelake::TraceLake;
use tracelake::synth::{TraceShape, traces};

fn open_refresh(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) {
        return;
    }
    let rt = runtime();
    for commits in [10usize, 1_000] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans");
        let path = path.to_str().unwrap().to_string();
        let writer = rt.block_on(TraceLake::create(&path)).unwrap();
        for c in 0..commits {
            let spans = traces(
                c as u64,
                TraceShape::Fixed(5),
                20,
                support::DAY0 + c as i64 * 1_000_000_000,
                1_000_000_000,
            );
            rt.block_on(writer.append_spans(&spans)).unwrap();
        }
        let mut open = Artifact::new(
            &format!("open_{commits}_commits"),
            BenchTier::Extended,
            "TraceLake::open",
        );
        open.timings = sample(10, |_| {
            rt.block_on(TraceLake::open(&path)).unwrap();
        });
        open.table = json!({"commits": commits, "spans": commits * 100});
        open.write();
        let reader = rt.block_on(TraceLake::open(&path)).unwrap();
        let mut refresh = Artifact::new(
            &format!("refresh_{commits}_commits"),
            BenchTier::Extended,
            "refresh() after one new commit",
        );
        let mut timings = Vec::new();
        for i in 0..10u64 {
            let spans = traces(
                10_000 + i,
                TraceShape::Fixed(5),
                20,
                support::DAY0,
                1_000_000_000,
            );
            rt.block_on(writer.append_spans(&spans)).unwrap();
            let t = Instant::now();
            rt.block_on(reader.refresh()).unwrap();
            timings.push(t.elapsed());
        }
        timings.sort();
        refresh.timings = timings;
        refresh.table = open.table.clone();
        refresh.write();
    }
}

fn ingest_1m(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) {
        return;
    }
    let rt = runtime();
    let batches = support::ingest_batches();
    let spans: usize = batches.iter().map(|b| b.num_rows()).sum();
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Artifact::new(
        "arrowwriter_1m",
        BenchTier::Extended,
        "ArrowWriter, 1M spans, same batches",
    );
    writer.timings = sample(3, |i| {
        let file = std::fs::File::create(dir.path().join(format!("w{i}.parquet"))).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        writer.rows = spans as u64;
    });
    writer.write();
    let lakes: Vec<TraceLake> = (0..3)
        .map(|i| {
            rt.block_on(TraceLake::create(
                dir.path().join(format!("t{i}")).to_str().unwrap(),
            ))
            .unwrap()
        })
        .collect();
    let mut append = Artifact::new(
        "ingest_1m",
        BenchTier::Extended,
        "append_batches, 1M spans, one commit",
    );
    append.timings = sample(3, |i| {
        append.rows = rt.block_on(lakes[i].append_batches(&batches)).unwrap().rows;
    });
    append.reference = Some((writer.name.clone(), writer.p50()));
    append.extra = json!({"spans_per_second": append.rows as f64 / (append.p50() as f64 / 1e9)});
    append.write();
}

criterion_group!(benches, open_refresh, ingest_1m);
criterion_main!(benches);
