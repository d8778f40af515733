//! `bench_compare BASELINE_DIR CURRENT_DIR [--timing-tolerance F] [--fail-on-timing]`
//!
//! Compares every benchmark artifact (`*.json`, written by the benches) of a baseline with
//! the current run's. Exits non-zero, naming the artifact and the figure, when:
//! - object-store requests exceed the baseline's, per operation and path kind;
//! - rows differ;
//! - an artifact of the baseline is missing from the current run;
//! - with `--fail-on-timing`, end-to-end latency regresses beyond the tolerance (default 0.5,
//!   i.e. 50% slower).
//!
//! Timing is compared as a ratio to a reference measured in the same run (an artifact's own
//! `reference`, else the run's `calibration` artifact), so that a slower or busier machine
//! does not fail it. Timings are always reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

struct Options {
    baseline: PathBuf,
    current: PathBuf,
    tolerance: f64,
    fail_on_timing: bool,
}

fn usage() -> String {
    "usage: bench_compare BASELINE_DIR CURRENT_DIR [--timing-tolerance F] [--fail-on-timing]".into()
}

fn options() -> Result<Options, String> {
    let mut positional = Vec::new();
    let mut tolerance = 0.5;
    let mut fail_on_timing = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fail-on-timing" => fail_on_timing = true,
            "--timing-tolerance" => {
                tolerance = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v: &f64| *v >= 0.0)
                    .ok_or_else(|| {
                        format!("--timing-tolerance needs a number >= 0\n{}", usage())
                    })?;
            }
            "-h" | "--help" => return Err(usage()),
            other => positional.push(PathBuf::from(other)),
        }
    }
    match <[PathBuf; 2]>::try_from(positional) {
        Ok([baseline, current]) => Ok(Options {
            baseline,
            current,
            tolerance,
            fail_on_timing,
        }),
        Err(_) => Err(usage()),
    }
}

fn load(dir: &Path) -> Result<BTreeMap<String, Value>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not an artifact: {e}", path.display()))?;
            let name = value["name"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| {
                    path.file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                });
            out.insert(name, value);
        }
    }
    Ok(out)
}

fn p50(a: &Value) -> Option<f64> {
    a["latency_ns"]["p50"].as_f64().filter(|v| *v > 0.0)
}

/// The artifact's p50 relative to its reference in the same run.
fn relative(a: &Value, run: &BTreeMap<String, Value>) -> Option<(f64, &'static str)> {
    if let Some(ratio) = a["reference"]["ratio"].as_f64().filter(|r| *r > 0.0) {
        return Some((ratio, "reference"));
    }
    let calibration = run.get("calibration").and_then(p50)?;
    Some((p50(a)? / calibration, "calibration"))
}

fn main() -> ExitCode {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (baseline, current) = match (load(&opts.baseline), load(&opts.current)) {
        (Ok(b), Ok(c)) => (b, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("bench_compare: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failures = Vec::new();
    let mut compared = 0;
    for (name, base) in &baseline {
        let Some(cur) = current.get(name) else {
            failures.push(format!("{name}: missing from the current run"));
            continue;
        };
        compared += 1;
        let (base_rows, cur_rows) = (base["rows"].as_u64(), cur["rows"].as_u64());
        if base_rows != cur_rows {
            failures.push(format!(
                "{name}: rows {} differ from the baseline's {}",
                cur_rows.map_or("?".into(), |r| r.to_string()),
                base_rows.map_or("?".into(), |r| r.to_string())
            ));
        }
        let empty = serde_json::Map::new();
        let base_req = base["object_store_requests"].as_object().unwrap_or(&empty);
        let cur_req = cur["object_store_requests"].as_object().unwrap_or(&empty);
        for (key, count) in cur_req {
            let now = count.as_u64().unwrap_or(0);
            let before = base_req.get(key).and_then(Value::as_u64).unwrap_or(0);
            if now > before {
                failures.push(format!(
                    "{name}: object-store requests {key} = {now}, baseline {before}"
                ));
            }
        }
        match (relative(base, &baseline), relative(cur, &current)) {
            (Some((b, how)), Some((c, _))) => {
                let change = c / b - 1.0;
                let line = format!(
                    "{name}: p50 {:.3} ms, {:+.1}% vs baseline (relative to {how})",
                    p50(cur).unwrap_or(0.0) / 1e6,
                    change * 100.0
                );
                if change > opts.tolerance {
                    if opts.fail_on_timing {
                        failures.push(format!(
                            "{line}: beyond the {:.0}% tolerance",
                            opts.tolerance * 100.0
                        ));
                    } else {
                        println!("timing  {line} (beyond tolerance; reported only)");
                    }
                } else {
                    println!("timing  {line}");
                }
            }
            _ => println!(
                "timing  {name}: p50 {:.3} ms (no reference to compare)",
                p50(cur).unwrap_or(0.0) / 1e6
            ),
        }
    }
    for name in current.keys().filter(|n| !baseline.contains_key(*n)) {
        println!("new     {name}: no baseline yet");
    }
    if failures.is_empty() {
        println!("bench_compare: {compared} artifact(s) match the baseline (requests, rows)");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("REGRESSION {f}");
        }
        eprintln!("bench_compare: {} regression(s)", failures.len());
        ExitCode::FAILURE
    }
}
