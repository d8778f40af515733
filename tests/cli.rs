//! The `tracelake` binary as a user runs it: demo, sql (table, csv, json), maintenance
//! commands, `--export-spans` and `--metrics`, and errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::tracelake;

#[test]
fn demo_then_sql_stats_and_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let table = table.to_str().unwrap();
    let spans_file = dir.path().join("spans.jsonl");
    let metrics_file = dir.path().join("metrics.txt");

    let (ok, out, err) = tracelake(&[
        "demo",
        "--table",
        table,
        "--traces",
        "120",
        "--export-spans",
        spans_file.to_str().unwrap(),
        "--metrics",
        metrics_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote 120 traces"), "{out}");
    assert!(out.contains("Spans and errors per service"), "{out}");
    assert!(out.contains("frontend"), "{out}");

    // Every span as a JSON object per line, with the required keys.
    let spans = std::fs::read_to_string(&spans_file).unwrap();
    let lines: Vec<serde_json::Value> = spans
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        for key in [
            "name",
            "span_id",
            "parent_span_id",
            "start_time",
            "end_time",
            "attributes",
        ] {
            assert!(line.get(key).is_some(), "{key} in {line}");
        }
    }
    let names: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l["name"].as_str()).collect();
    for expected in [
        "delta.append",
        "df.table.resolve",
        "df.logical.build",
        "df.physical.plan",
        "df.collect",
        "object_store.request",
    ] {
        assert!(names.contains(expected), "{expected} in {names:?}");
    }
    let metrics = std::fs::read_to_string(&metrics_file).unwrap();
    assert!(
        metrics.contains("tracelake_object_store_requests_total{"),
        "{metrics}"
    );

    // sql in the three formats.
    let (ok, out, err) = tracelake(&[
        "sql",
        "--table",
        table,
        "SELECT count(*) AS n FROM spans WHERE parent_span_id IS NULL",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("| 120 |"), "{out}");
    let (ok, out, _) = tracelake(&[
        "sql",
        "--table",
        table,
        "--format",
        "csv",
        "SELECT kind, count(*) AS n FROM spans WHERE kind = 'SERVER' AND parent_span_id IS NULL GROUP BY kind",
    ]);
    assert!(ok);
    assert_eq!(out.trim(), "kind,n\nSERVER,120");
    let (ok, out, _) = tracelake(&[
        "sql",
        "--table",
        table,
        "--format",
        "json",
        "SELECT trace_id, attributes FROM spans LIMIT 1",
    ]);
    assert!(ok);
    let row: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(row["trace_id"].as_str().unwrap().len(), 32);
    let (ok, _, err) = tracelake(&[
        "sql",
        "--table",
        table,
        "--format",
        "csv",
        "SELECT attributes FROM spans",
    ]);
    assert!(!ok);
    assert!(
        err.contains("CSV cannot hold the nested column \"attributes\""),
        "{err}"
    );

    // A second demo run appends; stats reports it.
    let (ok, _, err) = tracelake(&["demo", "--table", table, "--traces", "30"]);
    assert!(ok, "{err}");
    let (ok, out, _) = tracelake(&["stats", "--table", table]);
    assert!(ok);
    assert!(out.contains("version     2"), "{out}");
    // One file per commit and day (the demo's last hour may cross midnight UTC).
    let files: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("files"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!((2..=4).contains(&files), "{out}");

    let (ok, out, err) = tracelake(&["optimize", "--table", table]);
    assert!(ok, "{err}");
    assert!(
        out.contains("optimized 1 partition(s)") || out.contains("optimized 2 partition(s)"),
        "{out}"
    );
    let (ok, out, _) = tracelake(&["vacuum", "--table", table, "--retention-hours", "1"]);
    assert!(ok);
    assert!(out.contains("vacuum deleted 0 file(s)"), "{out}");
    let (ok, _, err) = tracelake(&["vacuum", "--table", table, "--retention-hours", "0"]);
    assert!(!ok);
    assert!(err.contains("between 1 and 876000 hours"), "{err}");
    let (ok, out, _) = tracelake(&["expire", "--table", table, "--older-than-days", "3650"]);
    assert!(ok);
    assert!(out.contains("expired 0 partition(s)"), "{out}");
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = tracelake(&["sql", "--table", dir.path().to_str().unwrap(), "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("is not a trace table"), "{err}");
    let table = dir.path().join("t");
    let (ok, _, _) = tracelake(&["demo", "--table", table.to_str().unwrap(), "--traces", "5"]);
    assert!(ok);
    let (ok, _, err) = tracelake(&[
        "sql",
        "--table",
        table.to_str().unwrap(),
        "SELECT * FROM trace_tree('nope')",
    ]);
    assert!(!ok);
    assert!(
        err.contains("trace_tree expects 32 hex characters"),
        "{err}"
    );
}

#[test]
fn two_writer_processes_on_one_table_lose_no_span() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let table = table.to_str().unwrap();
    let run = |traces: &str| {
        Command::new(env!("CARGO_BIN_EXE_tracelake"))
            .args(["demo", "--table", table, "--traces", traces])
            .output()
            .expect("run tracelake")
    };
    let first = run("10");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_tracelake"))
            .args(["demo", "--table", table, "--traces", "1500"])
            .output()
            .expect("run tracelake")
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    let written = |out: &std::process::Output| -> u64 {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("wrote ")).unwrap();
        line.split(['(', ' '])
            .find_map(|w| {
                w.parse::<u64>()
                    .ok()
                    .filter(|_| line.contains(&format!("({w} spans)")))
            })
            .unwrap()
    };
    let (ok, out, _) = tracelake(&[
        "sql",
        "--table",
        table,
        "--format",
        "csv",
        "SELECT count(*) AS n FROM spans",
    ]);
    assert!(ok);
    let total: u64 = out.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(total, written(&first) + written(&a) + written(&b));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `tracelake sql "..." | head -n 1`: the reader goes away after one line.
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let table = table.to_str().unwrap();
    let (ok, _, err) = tracelake(&["demo", "--table", table, "--traces", "300"]);
    assert!(ok, "{err}");
    for format in ["table", "csv", "json"] {
        let mut child = Command::new(common::tracelake_bin())
            .args([
                "sql",
                "--table",
                table,
                "--format",
                format,
                "SELECT trace_id, span_id, name FROM spans LIMIT 2000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        // stdout is closed here: the rest of the output meets a broken pipe.
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
        assert!(out.status.success(), "{format}: {:?} {stderr}", out.status);
    }
}

#[test]
fn numbers_out_of_range_are_refused_with_the_accepted_range() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let table = table.to_str().unwrap();
    let (ok, _, err) = tracelake(&["demo", "--table", table, "--traces", "20"]);
    assert!(ok, "{err}");
    let cases: [(&[&str], &str); 5] = [
        (
            &["expire", "--table", table, "--older-than-days", "213504"],
            "expire older_than_days must be between 0 and 36500, got 213504",
        ),
        (
            &[
                "vacuum",
                "--table",
                table,
                "--retention-hours",
                "18446744073709551615",
            ],
            "vacuum retention must be between 1 and 876000 hours",
        ),
        (
            &["vacuum", "--table", table, "--retention-hours", "0"],
            "vacuum retention must be between 1 and 876000 hours",
        ),
        (&["demo", "--table", table, "--traces", "0"], "1..=10000000"),
        (
            &["expire", "--table", table, "--older-than-days", "-1"],
            "--older-than-days",
        ),
    ];
    for (args, expected) in cases {
        let (ok, _, err) = tracelake(args);
        assert!(!ok, "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Nothing was expired or vacuumed: the table still has its 20 traces' spans.
    let (ok, out, _) = tracelake(&[
        "sql",
        "--table",
        table,
        "--format",
        "csv",
        "SELECT count(DISTINCT trace_id) FROM spans",
    ]);
    assert!(ok);
    assert_eq!(out.lines().nth(1), Some("20"));
}
