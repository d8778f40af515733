//! `bench_compare` fails on regressed artifacts (requests, rows, missing artifacts, timing
//! when asked) and passes on matching ones.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

fn artifact(
    name: &str,
    p50: u64,
    rows: u64,
    requests: Value,
    reference: Option<(u64, f64)>,
) -> Value {
    json!({
        "name": name,
        "tier": 0,
        "latency_ns": {"p50": p50, "p95": p50 * 2, "p99": p50 * 3},
        "rows": rows,
        "object_store_requests": requests,
        "reference": reference.map(|(p, r)| json!({"name": "ref", "p50_ns": p, "ratio": r})),
    })
}

fn write(dir: &Path, artifacts: &[Value]) {
    for a in artifacts {
        std::fs::write(
            dir.join(format!("{}.json", a["name"].as_str().unwrap())),
            serde_json::to_string_pretty(a).unwrap(),
        )
        .unwrap();
    }
}

fn compare(base: &Path, cur: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bench_compare"))
        .arg(base)
        .arg(cur)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn baseline() -> Vec<Value> {
    vec![
        artifact("calibration", 1_000_000, 1, json!({}), None),
        artifact(
            "lookup",
            500_000,
            5,
            json!({"get_range/parquet_data": 2}),
            None,
        ),
        artifact("vs", 400_000, 5, json!({}), Some((40_000_000, 0.01))),
    ]
}

#[test]
fn a_matching_run_passes() {
    let (b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(b.path(), &baseline());
    // A machine twice as slow: every timing doubles, calibration too.
    let mut slower = baseline();
    slower[0]["latency_ns"]["p50"] = json!(2_000_000);
    slower[1]["latency_ns"]["p50"] = json!(1_000_000);
    // Fewer requests is fine.
    slower[1]["object_store_requests"] = json!({"get_range/parquet_data": 1});
    write(c.path(), &slower);
    let (ok, out) = compare(b.path(), c.path(), &["--fail-on-timing"]);
    assert!(ok, "{out}");
    assert!(out.contains("3 artifact(s) match"), "{out}");
}

#[test]
fn more_requests_fail_naming_artifact_and_figure() {
    let (b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(b.path(), &baseline());
    let mut regressed = baseline();
    regressed[1]["object_store_requests"] =
        json!({"get_range/parquet_data": 3, "list/delta_log": 1});
    write(c.path(), &regressed);
    let (ok, out) = compare(b.path(), c.path(), &[]);
    assert!(!ok);
    assert!(
        out.contains("lookup: object-store requests get_range/parquet_data = 3, baseline 2"),
        "{out}"
    );
    assert!(
        out.contains("lookup: object-store requests list/delta_log = 1, baseline 0"),
        "{out}"
    );
}

#[test]
fn different_rows_and_missing_artifacts_fail() {
    let (b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(b.path(), &baseline());
    let mut regressed = baseline();
    regressed[1]["rows"] = json!(4);
    regressed.pop();
    write(c.path(), &regressed);
    let (ok, out) = compare(b.path(), c.path(), &[]);
    assert!(!ok);
    assert!(
        out.contains("lookup: rows 4 differ from the baseline's 5"),
        "{out}"
    );
    assert!(out.contains("vs: missing from the current run"), "{out}");
}

#[test]
fn timing_regressions_are_reported_and_fail_only_when_asked() {
    let (b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(b.path(), &baseline());
    let mut slow = baseline();
    slow[2]["reference"]["ratio"] = json!(0.03); // three times slower than its reference
    write(c.path(), &slow);
    let (ok, out) = compare(b.path(), c.path(), &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("vs: p50 0.400 ms, +200.0% vs baseline"),
        "{out}"
    );
    let (ok, out) = compare(b.path(), c.path(), &["--fail-on-timing"]);
    assert!(!ok);
    assert!(out.contains("REGRESSION vs: p50"), "{out}");
}
