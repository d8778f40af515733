//! Faults that must degrade, not break: a data file that cannot be read fails only the
//! queries that need it (naming it); a writer killed with SIGKILL in the middle of a large
//! append leaves a table that tracelake and Python `deltalake` read the same, and that the
//! next append extends.

#[cfg(feature = "cli")]
use crate::common;

#[cfg(feature = "cli")]
use std::process::{Command, Stdio};
#[cfg(feature = "cli")]
use std::time::{Duration, Instant};

#[cfg(feature = "cli")]
use crate::common::count_spans;
use crate::common::{TestStore, count, day, rows, run};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use tracelake::{TableOptions, TraceLake};

#[tokio::test]
async fn an_unreadable_data_file_fails_only_the_queries_that_need_it() {
    let store = TestStore::new();
    let options = TableOptions {
        root_store: Some(store.clone()),
        cache_bytes: 0,
        ..Default::default()
    };
    let location = "memory:///unreadable-file";
    let writer = TraceLake::create_with_options(location, &options)
        .await
        .unwrap();
    // Day 1's trace ids start with 0, day 2's with f: the log statistics tell the files apart.
    let with_prefix = |mut spans: Vec<tracelake::Span>, p: &str| {
        for s in &mut spans {
            s.trace_id.replace_range(0..1, p);
        }
        spans
    };
    let first = with_prefix(day(1, 0, 40), "0");
    let second = with_prefix(day(2, 1, 40), "f");
    writer.append_spans(&first).await.unwrap();
    writer.append_spans(&second).await.unwrap();

    // The day-2 file disappears (removed out of band, or corrupt beyond reading).
    let files: Vec<_> = store.list(None).try_collect().await.unwrap();
    let lost = files
        .iter()
        .find(|m| m.location.as_ref().contains("span_date=2024-05-02"))
        .unwrap()
        .location
        .clone();
    store.delete(&lost).await.unwrap();

    // Opening the table does not fail, and neither does a refresh.
    let lake = TraceLake::open_with_options(location, &options)
        .await
        .unwrap();
    lake.refresh().await.unwrap();
    let ctx = lake.session_context().unwrap();

    // A lookup of a trace in the readable file, and a query on its day, answer.
    let (batches, _) = run(
        &ctx,
        &format!(
            "SELECT span_id FROM spans WHERE trace_id = '{}'",
            first[0].trace_id
        ),
    )
    .await;
    assert_eq!(rows(&batches), 5);
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) FROM spans WHERE start_time < '2024-05-02T00:00:00Z'"
        )
        .await,
        200
    );
    // A query that needs the lost file fails, naming it.
    for sql in [
        "SELECT count(*) FROM spans".to_string(),
        format!("SELECT * FROM trace_tree('{}')", second[0].trace_id),
        format!(
            "SELECT count(*) FROM spans WHERE start_time >= '{}'",
            "2024-05-02T00:00:00Z"
        ),
    ] {
        let err = match ctx.sql(&sql).await {
            Ok(df) => df.collect().await.unwrap_err(),
            Err(e) => e,
        }
        .to_string();
        assert!(err.contains(lost.as_ref()), "{sql}: {err}");
        assert!(err.contains("cannot be read"), "{sql}: {err}");
    }
}

/// Spans in `path` as (tracelake's count, Python deltalake's count, Python's distinct ids).
#[cfg(feature = "cli")]
async fn counts(path: &str, python: &std::path::Path) -> (i64, i64, i64) {
    let lake = TraceLake::open(path).await.unwrap();
    let ours = count_spans(&lake).await;
    let out = Command::new(python)
        .arg(common::repo().join("tests/clients/delta_count.py"))
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python deltalake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().map(|n| n.parse::<i64>().unwrap());
    (ours, numbers.next().unwrap(), numbers.next().unwrap())
}

/// Committed versions (`_delta_log/*.json`) of a local table.
#[cfg(feature = "cli")]
fn commits(path: &std::path::Path) -> usize {
    std::fs::read_dir(path.join("_delta_log"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_append_leaves_a_table_every_reader_agrees_on() {
    let clients = common::clients();
    let dir = common::scratch("sigkill");
    let table = dir.join("spans");
    let table_str = table.to_str().unwrap().to_string();
    // A large append in a child process: 200,000 traces, 500 per commit.
    let mut child = Command::new(common::tracelake_bin())
        .args(["demo", "--table", &table_str, "--traces", "200000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it with SIGKILL once a few commits are in, while it writes the next ones.
    let started = Instant::now();
    while commits(&table) < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the writer made no commits"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the writer exited early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (ours, theirs, distinct) = counts(&table_str, &clients.python).await;
    assert!(ours > 0);
    assert_eq!(
        ours, theirs,
        "tracelake and Python deltalake count the same spans"
    );
    assert_eq!(theirs, distinct, "no span twice");

    // The next append succeeds and both readers see it.
    let lake = TraceLake::open(&table_str).await.unwrap();
    let more = day(9, 0, 100);
    lake.append_spans(&more).await.unwrap();
    let (after, theirs_after, _) = counts(&table_str, &clients.python).await;
    assert_eq!(after, ours + more.len() as i64);
    assert_eq!(theirs_after, after);
}
