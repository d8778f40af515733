//! `INSERT INTO spans (...) SELECT ...` against DataFusion's `COPY (same SELECT) TO
//! 'x.parquet'`, Tier 1 (`make bench.extended`, group `insert_vs_copy`): 5-span traces with
//! ids from `md5`, 208,335 and 2,083,350 rows, in three plan shapes (one series; a cross join
//! whose output is one batch of five rows per trace; a union of two series), time p50 of
//! three statements each and the peak
//! heap of each statement (a counting allocator: the most bytes live during the statement,
//! less those live before it). The INSERT streams (runs of `TableOptions::insert_run_rows`),
//! so its peak must not grow with the rows of the statement.
//!
//! Artifacts `insert_select_<shape><rows>` (reference: `copy_select_<shape><rows>`, same run)
//! and `copy_select_<shape><rows>`, the shape `` (one series), `cross_join_` or `union_`;
//! `extra` has both peaks and their ratio.

mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::SessionContext;
use serde_json::json;
use support::{Artifact, BenchTier, enabled, group_selected, runtime};
use tracelake::TraceLake;

#[global_allocator]
static ALLOC: support::CountingAlloc = support::CountingAlloc;

const SAMPLES: usize = 3;

/// The SELECT both statements run: `rows` spans, 5 to a trace, from `v` of `source` (0 to
/// `rows - 1`, in any order).
fn select(source: &str) -> String {
    format!(
        "SELECT md5(CAST(v / 5 AS VARCHAR)) AS trace_id, \
                substr(md5(CAST(v AS VARCHAR)), 1, 16) AS span_id, \
                CASE WHEN v % 5 = 0 THEN NULL \
                     ELSE substr(md5(CAST(v - v % 5 AS VARCHAR)), 1, 16) END AS parent_span_id, \
                concat('op-', CAST(v % 5 AS VARCHAR)) AS name, \
                concat('svc-', CAST(v % 7 AS VARCHAR)) AS service_name, \
                to_timestamp_nanos(1714521600000000000 + v * 1000000) AS start_time, \
                to_timestamp_nanos(1714521600000000000 + v * 1000000 + 500000) AS end_time \
         FROM {source}"
    )
}

/// The plan shapes measured, as (label, the source of `v` for `rows` rows): one series; a
/// cross join of a series of traces with one of the five spans (its output is one batch of
/// five rows per trace); a union of two series (two partitions).
fn shapes(rows: u64) -> Vec<(&'static str, String)> {
    let half = rows / 2;
    vec![
        ("", format!("generate_series(0, {}) AS t(v)", rows - 1)),
        (
            "cross_join_",
            format!(
                "(SELECT t * 5 + s AS v FROM generate_series(0, {}) AS a(t) \
                 CROSS JOIN generate_series(0, 4) AS b(s)) AS j",
                rows / 5 - 1
            ),
        ),
        (
            "union_",
            format!(
                "(SELECT value AS v FROM generate_series(0, {}) \
                 UNION ALL SELECT value AS v FROM generate_series({half}, {})) AS u",
                half - 1,
                rows - 1
            ),
        ),
    ]
}

/// Runs `sql` in `ctx`; returns (time, peak heap above what was live before, rows reported).
async fn measure(ctx: &SessionContext, sql: &str) -> (Duration, usize, u64) {
    let before = support::heap_live();
    support::heap_reset_peak();
    let started = Instant::now();
    let batches = ctx
        .sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("statement");
    let elapsed = started.elapsed();
    let peak = support::heap_peak().saturating_sub(before);
    let count = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or_default();
    (elapsed, peak, count)
}

fn insert_vs_copy(_c: &mut Criterion) {
    if !enabled(BenchTier::Extended) || !group_selected("insert_vs_copy") {
        return;
    }
    let rt = runtime();
    let sizes = [(208_335u64, "208k"), (2_083_350, "2m")];
    let cases = sizes.iter().flat_map(|&(rows, size)| {
        shapes(rows)
            .into_iter()
            .map(move |(shape, source)| (rows, format!("{shape}{size}"), select(&source)))
    });
    for (rows, label, sql) in cases {
        let (mut insert_times, mut insert_peaks) = (Vec::new(), Vec::new());
        let (mut copy_times, mut copy_peaks) = (Vec::new(), Vec::new());
        for _ in 0..SAMPLES {
            let dir = tempfile::tempdir().expect("temp dir");
            let (time, peak, count) = rt.block_on(async {
                let lake = TraceLake::create(dir.path().join("spans").to_str().unwrap())
                    .await
                    .expect("create");
                let ctx = SessionContext::new();
                lake.register(&ctx).expect("register");
                measure(
                    &ctx,
                    &format!(
                        "INSERT INTO spans (trace_id, span_id, parent_span_id, name, \
                         service_name, start_time, end_time) {sql}"
                    ),
                )
                .await
            });
            assert_eq!(count, rows, "INSERT reported {count} rows");
            insert_times.push(time);
            insert_peaks.push(peak);

            let target = dir.path().join("copy.parquet");
            let (time, peak, count) = rt.block_on(async {
                let ctx = SessionContext::new();
                measure(
                    &ctx,
                    &format!("COPY ({sql}) TO '{}' STORED AS PARQUET", target.display()),
                )
                .await
            });
            assert_eq!(count, rows, "COPY reported {count} rows");
            copy_times.push(time);
            copy_peaks.push(peak);
        }
        insert_times.sort();
        copy_times.sort();
        let insert_peak = *insert_peaks.iter().max().unwrap_or(&0);
        let copy_peak = *copy_peaks.iter().max().unwrap_or(&0);
        let table = json!({"rows": rows, "spans_per_trace": 5, "select": sql});
        let mut copy = Artifact::new(
            &format!("copy_select_{label}"),
            BenchTier::Extended,
            "COPY (SELECT ...) TO 'x.parquet' STORED AS PARQUET",
        );
        copy.timings = copy_times;
        copy.rows = rows;
        copy.table = table.clone();
        copy.extra = json!({"peak_heap_bytes": copy_peak});
        let mut insert = Artifact::new(
            &format!("insert_select_{label}"),
            BenchTier::Extended,
            "INSERT INTO spans (...) SELECT ...",
        );
        insert.timings = insert_times;
        insert.rows = rows;
        insert.table = table;
        insert.reference = Some((format!("copy_select_{label}"), copy.p50()));
        insert.extra = json!({
            "peak_heap_bytes": insert_peak,
            "copy_peak_heap_bytes": copy_peak,
            "peak_heap_ratio": insert_peak as f64 / copy_peak.max(1) as f64,
            "insert_run_rows": tracelake::TableOptions::default().insert_run_rows,
        });
        copy.write();
        insert.write();
    }
}

criterion_group!(benches, insert_vs_copy);
criterion_main!(benches);
