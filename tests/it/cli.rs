//! The `tracelake` binary as a user runs it: demo, sql (table, csv, json), maintenance
//! commands, `--export-spans` and `--metrics`, and errors.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::tracelake;

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
    // The demo ends by pointing at the trace view.
    assert!(
        out.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.contains("open http://127.0.0.1:3200/")),
        "{out}"
    );

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
    assert!(err.contains("tracelake create --table PATH"), "{err}");
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

/// `tracelake create` makes an empty table that `sql` then reads (no spans), and refuses a
/// location that holds a table already.
#[test]
fn create_makes_an_empty_table() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("empty");
    let table = table.to_str().unwrap();
    let (ok, out, err) = tracelake(&["create", "--table", table]);
    assert!(ok, "{err}");
    assert!(out.contains("created an empty trace table"), "{out}");
    let (ok, out, err) = tracelake(&[
        "sql",
        "--table",
        table,
        "--format",
        "csv",
        "SELECT count(*) AS n FROM spans",
    ]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.trim() == "0"), "{out}");
    let (ok, _, err) = tracelake(&["create", "--table", table]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
}

/// `create --dedicated-columns` and `dedicated [--set]`: the table's list, shown and
/// changed; a malformed list is refused with the reason.
#[test]
fn dedicated_columns_are_set_at_create_and_changed_later() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("dedicated");
    let table = table.to_str().unwrap();
    let (ok, _, err) = tracelake(&[
        "create",
        "--table",
        table,
        "--dedicated-columns",
        "span.x:float",
    ]);
    assert!(!ok);
    assert!(err.contains("float"), "{err}");
    let (ok, _, err) = tracelake(&[
        "create",
        "--table",
        table,
        "--dedicated-columns",
        "span.http.route,resource.host.name:string",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = tracelake(&["dedicated", "--table", table]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["span.http.route:string", "resource.host.name:string"]
    );
    let (ok, out, err) = tracelake(&[
        "dedicated",
        "--table",
        table,
        "--set",
        "span.http.response.status_code:int",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("1 dedicated attribute column(s) set"), "{out}");
    assert!(
        out.ends_with("span.http.response.status_code:int\n"),
        "{out}"
    );
    let (ok, out, err) = tracelake(&["dedicated", "--table", table, "--set", ""]);
    assert!(ok, "{err}");
    assert!(out.contains("no dedicated attribute columns"), "{out}");
    // The default list of a table created without the option.
    let other = dir.path().join("defaults");
    let (ok, _, err) = tracelake(&["create", "--table", other.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (_, out, _) = tracelake(&["dedicated", "--table", other.to_str().unwrap()]);
    assert!(out.lines().any(|l| l == "span.http.route:string"), "{out}");
    assert_eq!(out.lines().count(), 18, "{out}");
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

#[test]
fn sql_runs_several_statements_from_an_argument_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let table = table.to_str().unwrap();
    let (ok, _, err) = tracelake(&["demo", "--table", table, "--traces", "10"]);
    assert!(ok, "{err}");
    let statements = "INSERT INTO spans (trace_id, span_id, name, start_time, end_time) VALUES \
        ('4bf92f3577b34da6a3ce929d0e0e4736', 'a000000000000001', 'x;y', '2024-05-01T12:00:00Z', '2024-05-01T12:00:01Z'); \
        SELECT name FROM spans WHERE trace_id = '4bf92f3577b34da6a3ce929d0e0e4736';";
    let (ok, out, err) = tracelake(&["sql", "--table", table, "--format", "csv", statements]);
    assert!(ok, "{err}");
    assert!(out.contains("count\n1\n"), "{out}");
    assert!(out.contains("name\nx;y\n"), "{out}");

    let file = dir.path().join("queries.sql");
    std::fs::write(
        &file,
        "-- a comment; with a semicolon\nSELECT count(DISTINCT trace_id) AS traces FROM spans;\n\
         SELECT 'done' AS status;\n",
    )
    .unwrap();
    let (ok, out, err) = tracelake(&[
        "sql",
        "--table",
        table,
        "--format",
        "csv",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("traces\n11\n"), "{out}");
    assert!(out.contains("status\ndone\n"), "{out}");

    let mut child = Command::new(common::tracelake_bin())
        .args(["sql", "--table", table, "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT 1 AS one; SELECT 2 AS two;")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("one\n1\n") && out.contains("two\n2\n"),
        "{out}"
    );

    // A statement that fails stops the run with its error.
    let (ok, _, err) = tracelake(&["sql", "--table", table, "SELECT 1; SELECT nope FROM spans"]);
    assert!(!ok);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn the_interactive_shell_reads_statements_across_lines() {
    // `script` gives the shell a terminal, as a user's.
    if Command::new("script").arg("--version").output().is_err() {
        panic!("the `script` command (util-linux) is needed to give the shell a terminal");
    }
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let table = table.to_str().unwrap();
    let (ok, _, err) = tracelake(&["demo", "--table", table, "--traces", "5"]);
    assert!(ok, "{err}");
    let command = format!(
        "{} sql --table {table} --format csv",
        common::tracelake_bin().display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the shell's output as it comes; type each line once the shell prompts for it (a
    // line typed ahead would be flushed when the line editor takes the terminal).
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let output = output.clone();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let prompts = || {
        let text = output.lock().unwrap();
        text.matches("tracelake> ").count() + text.matches("...> ").count()
    };
    let mut stdin = child.stdin.take().unwrap();
    for (i, line) in [
        "SELECT count(DISTINCT trace_id)",
        "  AS traces FROM spans;",
        "SELECT nope;",
        "SELECT 'still here' AS s;",
        "\\q",
    ]
    .iter()
    .enumerate()
    {
        let started = std::time::Instant::now();
        while prompts() <= i {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "no prompt: {}",
                output.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        use std::io::Write;
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    drop(stdin);
    child.wait().unwrap();
    reader.join().unwrap();
    let out = output.lock().unwrap().replace('\r', "");
    assert!(out.contains("tracelake SQL shell"), "{out}");
    assert!(out.contains("traces\n5\n"), "{out}");
    assert!(
        out.contains("error:"),
        "an error is shown and the shell goes on: {out}"
    );
    assert!(out.contains("still here"), "{out}");
    // The history is kept for the next session.
    let history = std::fs::read_to_string(dir.path().join(".tracelake_history")).unwrap();
    assert!(history.contains("AS traces FROM spans;"), "{history}");
}

#[test]
fn the_demo_shows_a_trace_tree_and_what_to_try_next() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let (ok, out, err) = tracelake(&["demo", "--table", table.to_str().unwrap(), "--traces", "50"]);
    assert!(ok, "{err}");
    assert!(out.contains("One trace as a tree: trace_tree('"), "{out}");
    // Children are indented under their parents.
    assert!(
        out.lines()
            .any(|l| l.starts_with("  ") && l.contains(" ms")),
        "{out}"
    );
    assert!(out.contains("appending"), "{out}");
    assert!(out.contains("tracelake serve --table"), "{out}");
    // Options of object stores are accepted on every command (and checked).
    let (ok, _, err) = tracelake(&[
        "stats",
        "--table",
        table.to_str().unwrap(),
        "--storage-option",
        "no-equals-sign",
    ]);
    assert!(!ok);
    assert!(err.contains("expected KEY=VALUE"), "{err}");
    let (ok, out, err) = tracelake(&[
        "stats",
        "--table",
        table.to_str().unwrap(),
        "--storage-option",
        "aws_region=eu-west-1",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("version"), "{out}");
}
