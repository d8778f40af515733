//! The table lifecycle under load: expiry removes exactly the old partitions, vacuum keeps
//! files a running query may still read, a reader querying during appends and maintenance
//! never errors and sees every committed span exactly once, checkpoints keep opening bounded.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{DAY, DAY0, count_spans, day};
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::protocol::DeltaOperation;
use tracelake::TraceLake;

async fn count(ctx: &SessionContext) -> i64 {
    common::count(ctx, "SELECT count(*) FROM spans").await
}

#[tokio::test]
async fn stats_expiry_and_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    for d in 0..3 {
        lake.append_spans(&day(d as u64, d, 100)).await.unwrap();
    }
    let table = lake.table();
    let stats = table.stats().unwrap();
    assert_eq!(stats.version, 3);
    assert_eq!(stats.files, 3);
    assert_eq!(stats.spans, 1_500);
    assert_eq!(stats.partitions, ["2024-05-01", "2024-05-02", "2024-05-03"]);
    assert_eq!(stats.oldest_start_unix_nano, Some(DAY0));
    assert!(stats.newest_start_unix_nano.unwrap() < DAY0 + 3 * DAY);
    assert!(stats.bytes > 0);

    let ctx = lake.session_context().unwrap();
    // A query planned before expiry and vacuum, executed after both.
    let running = ctx
        .sql("SELECT count(*) FROM spans")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();

    // Now is 2024-05-03T12:00Z; older than one day means before 2024-05-02T12:00Z: only
    // 2024-05-01 is entirely older.
    let outcome = table
        .expire()
        .older_than_days(1)
        .now_unix_nano(DAY0 + 2 * DAY + DAY / 2)
        .await
        .unwrap();
    assert_eq!(outcome.partitions, ["2024-05-01"]);
    assert_eq!(outcome.files_removed, 1);
    assert_eq!(count(&ctx).await, 1_000);
    assert_eq!(
        table.stats().unwrap().partitions,
        ["2024-05-02", "2024-05-03"]
    );
    // Nothing left to expire at the same cutoff.
    let again = table
        .expire()
        .older_than_days(1)
        .now_unix_nano(DAY0 + 2 * DAY + DAY / 2)
        .await
        .unwrap();
    assert!(again.partitions.is_empty());
    assert_eq!(again.version, outcome.version);

    // A retention of 0 would break running queries: refused, with the accepted range.
    let err = table
        .vacuum()
        .retention_hours(0)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("between 1 and 876000 hours"), "{err}");
    // Within the retention window the expired file stays: the running query still reads it.
    let vacuumed = table.vacuum().retention_hours(1).await.unwrap();
    assert_eq!(vacuumed.files_deleted, 0);
    let batches = collect(running, ctx.task_ctx()).await.unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        1_500
    );
}

#[tokio::test]
async fn checkpoints_keep_the_table_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    for d in 0..4 {
        lake.append_spans(&day(10 + d as u64, 0, 20)).await.unwrap();
    }
    let version = lake.table().checkpoint().await.unwrap();
    assert_eq!(version, 4);
    let checkpoints = std::fs::read_dir(path.join("_delta_log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".checkpoint.parquet")
        })
        .count();
    assert_eq!(checkpoints, 1);
    let reopened = TraceLake::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(reopened.version(), 4);
    assert_eq!(count(&reopened.session_context().unwrap()).await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_during_appends_optimize_and_vacuum_sees_each_span_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    let ctx = lake.session_context().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let ctx = ctx.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                seen.push(count(&ctx).await);
            }
            seen
        })
    };
    let mut committed = vec![0i64];
    for round in 0..8u64 {
        lake.append_spans(&day(100 + round, (round % 2) as i64, 40))
            .await
            .unwrap();
        committed.push(committed.last().unwrap() + 200);
        if round == 3 || round == 6 {
            lake.optimize().await.unwrap();
            lake.vacuum().retention_hours(1).await.unwrap();
        }
    }
    done.store(true, Ordering::Relaxed);
    let seen = reader.await.unwrap();
    assert!(!seen.is_empty());
    for (i, n) in seen.iter().enumerate() {
        // Every count is a committed total: never a partial commit, never a span twice
        // (optimize rewrites files but the reader sees old or new, not both).
        assert!(
            committed.contains(n),
            "read {i}: {n} is not one of {committed:?}"
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "counts never go back"
    );
    assert_eq!(count(&ctx).await, 1_600);
}

#[tokio::test]
async fn appends_write_checkpoints_at_the_table_checkpoint_interval() {
    // deltalake's default `delta.checkpointInterval` is 100: the 100th commit (version 99)
    // gets a checkpoint from the append's post-commit hook, so opening the table does not
    // replay every commit.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    for i in 0..100u64 {
        lake.append_spans(&day(1_000 + i, 0, 1)).await.unwrap();
    }
    assert_eq!(lake.version(), 100);
    // Checkpoints are written in the background: wait for it.
    lake.table().wait_for_background_work().await;
    let log: Vec<String> = std::fs::read_dir(path.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        log.iter()
            .any(|f| f == "00000000000000000099.checkpoint.parquet"),
        "{log:?}"
    );
}

/// The data files of a local table, relative to its root.
fn data_files(root: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    for partition in std::fs::read_dir(root).unwrap() {
        let partition = partition.unwrap().path();
        if partition.is_dir() && !partition.ends_with("_delta_log") {
            for file in std::fs::read_dir(&partition).unwrap() {
                let file = file.unwrap().path();
                files.push(
                    file.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn vacuum_deletes_files_removed_before_the_retention_and_keeps_recent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    for d in 0..3 {
        lake.append_spans(&day(20 + d as u64, d, 50)).await.unwrap();
    }
    let files = data_files(&path);
    assert_eq!(files.len(), 3, "{files:?}");
    let old = files
        .iter()
        .find(|f| f.contains("2024-05-01"))
        .unwrap()
        .clone();
    let recent = files
        .iter()
        .find(|f| f.contains("2024-05-02"))
        .unwrap()
        .clone();

    // Another writer removed `old` two hours ago: a remove action with that timestamp.
    let table = lake.table().delta_table().await.unwrap();
    let state = table.snapshot().unwrap();
    let view = state
        .snapshot()
        .try_log_data()
        .unwrap()
        .iter()
        .find(|v| v.path().contains("2024-05-01"))
        .unwrap();
    let mut remove = view.remove_action(true);
    remove.deletion_timestamp = Some(chrono::Utc::now().timestamp_millis() - 2 * 3_600_000);
    CommitBuilder::default()
        .with_actions(vec![Action::Remove(remove)])
        .build(
            Some(state),
            table.log_store(),
            DeltaOperation::Delete { predicate: None },
        )
        .await
        .unwrap();
    lake.refresh().await.unwrap();
    // `recent` leaves the table now.
    let expired = lake
        .expire()
        .older_than_days(0)
        .now_unix_nano(DAY0 + 2 * DAY + DAY / 2)
        .await
        .unwrap();
    assert_eq!(expired.partitions, ["2024-05-02"]);
    assert_eq!(count(&lake.session_context().unwrap()).await, 250);

    // A dry run lists only the file removed more than an hour ago, and deletes nothing.
    let dry = lake
        .vacuum()
        .retention_hours(1)
        .dry_run(true)
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.files_deleted, 1, "{dry:?}");
    assert!(dry.files[0].contains("2024-05-01"), "{dry:?}");
    assert_eq!(data_files(&path).len(), 3);

    let done = lake.vacuum().retention_hours(1).await.unwrap();
    assert_eq!(done.files_deleted, 1, "{done:?}");
    let left = data_files(&path);
    assert!(!left.contains(&old), "{left:?}");
    assert!(
        left.contains(&recent),
        "removed an hour ago at most: kept ({left:?})"
    );
    assert_eq!(left.len(), 2);
    // The table still reads: one day of 50 traces.
    assert_eq!(count_spans(&lake).await, 250);
}

/// Sets the modification time of the table files `files` (relative to `root`) to `age` ago.
fn age(root: &std::path::Path, files: &[String], age: Duration) {
    let when = std::time::SystemTime::now() - age;
    for file in files {
        let handle = std::fs::File::options()
            .write(true)
            .open(root.join(file))
            .unwrap();
        handle.set_modified(when).unwrap();
    }
}

#[tokio::test]
async fn vacuum_with_orphans_reclaims_a_killed_writers_files_and_keeps_what_readers_need() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    for c in 0..3 {
        lake.append_spans(&day(30 + c, 0, 40)).await.unwrap();
    }
    let inputs = data_files(&path);
    assert_eq!(inputs.len(), 3, "{inputs:?}");
    // The table's files were written two days ago; a reader plans over this version.
    age(&path, &inputs, Duration::from_secs(48 * 3_600));
    let ctx = lake.session_context().unwrap();
    let planned = ctx
        .sql("SELECT count(*) FROM spans")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    // Compaction removes the three files (now: within any retention) and adds one.
    let outcome = lake.optimize().await.unwrap();
    assert_eq!(outcome.files_removed, 3, "{outcome:?}");
    // A writer killed before its commit left a file two days ago, another one just now.
    let partition = path.join("span_date=2024-05-01");
    let killed_old = "span_date=2024-05-01/part-00000-killed-old.c000.snappy.parquet".to_string();
    let killed_new = "span_date=2024-05-01/part-00000-killed-new.c000.snappy.parquet".to_string();
    for killed in [&killed_old, &killed_new] {
        std::fs::copy(path.join(&inputs[0]), path.join(killed)).unwrap();
    }
    age(
        &path,
        std::slice::from_ref(&killed_old),
        Duration::from_secs(48 * 3_600),
    );
    assert_eq!(std::fs::read_dir(&partition).unwrap().count(), 6);

    // Without orphans, nothing goes: the log removed the inputs less than a day ago.
    let lite = lake.vacuum().retention_hours(24).await.unwrap();
    assert_eq!(lite.files_deleted, 0, "{lite:?}");
    // The dry run names the old leftover only: not the fresh one (a writer may still be
    // committing it), not the inputs (a reader of a version within the retention reads
    // them), not the table's file.
    let dry = lake
        .vacuum()
        .retention_hours(24)
        .orphans(true)
        .dry_run(true)
        .await
        .unwrap();
    assert_eq!(dry.files, std::slice::from_ref(&killed_old), "{dry:?}");
    assert_eq!(std::fs::read_dir(&partition).unwrap().count(), 6);
    let done = lake
        .vacuum()
        .retention_hours(24)
        .orphans(true)
        .await
        .unwrap();
    assert_eq!(done.files_deleted, 1, "{done:?}");
    let left = data_files(&path);
    assert!(!left.contains(&killed_old), "{left:?}");
    assert!(left.contains(&killed_new), "{left:?}");
    for input in &inputs {
        assert!(left.contains(input), "{left:?}");
    }
    // The reader of the earlier version still reads its files; the table reads too.
    let batches = collect(planned, ctx.task_ctx()).await.unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        600
    );
    assert_eq!(count_spans(&lake).await, 600);
}

#[tokio::test]
async fn maintenance_numbers_out_of_range_are_refused_before_anything_runs() {
    let lake = TraceLake::create("memory:///maintenance-ranges")
        .await
        .unwrap();
    lake.append_spans(&day(1, 0, 10)).await.unwrap();
    // u64::MAX hours once wrapped to a negative retention with the check off.
    let err = lake
        .vacuum()
        .retention_hours(u64::MAX)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("between 1 and 876000 hours"), "{err}");
    let err = lake
        .vacuum()
        .retention(Duration::from_secs(60))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("got 0.017 hours"), "{err}");
    // 213,504 days once overflowed to a cutoff of a few minutes ago.
    let err = lake
        .expire()
        .older_than_days(213_504)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("between 0 and 36500, got 213504"), "{err}");
    let err = lake.expire().await.unwrap_err().to_string();
    assert!(err.contains("older_than_days"), "{err}");
    let schedule = tracelake::table::MaintenanceSchedule::default().with_interval(Duration::ZERO);
    let err = lake.maintain_every(schedule).unwrap_err().to_string();
    assert!(
        err.contains("maintenance interval must be between 1s and 86400s"),
        "{err}"
    );
    assert_eq!(lake.version(), 1, "nothing ran");
    assert_eq!(count_spans(&lake).await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_running_concurrently_with_appends_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let path = path.to_str().unwrap().to_string();
    let writer = TraceLake::create(&path).await.unwrap();
    // Maintenance in its own handle, as another process would run it.
    let maintainer = TraceLake::open(&path).await.unwrap();
    const COMMITS: u64 = 16;
    let appends = {
        let writer = writer.clone();
        tokio::spawn(async move {
            for i in 0..COMMITS {
                writer
                    .append_spans(&day(300 + i, (i % 2) as i64, 40))
                    .await
                    .unwrap();
            }
        })
    };
    let done = Arc::new(AtomicBool::new(false));
    let optimizes = {
        let done = done.clone();
        let maintainer = maintainer.clone();
        tokio::spawn(async move {
            let mut runs = 0;
            let mut rewrote = 0;
            while !done.load(Ordering::Relaxed) || runs == 0 {
                maintainer.refresh().await.unwrap();
                let outcome = maintainer.optimize().await.unwrap();
                rewrote += outcome.files_removed;
                runs += 1;
            }
            (runs, rewrote)
        })
    };
    appends.await.unwrap();
    done.store(true, Ordering::Relaxed);
    let (runs, rewrote) = optimizes.await.unwrap();
    assert!(runs >= 1);
    // Every span exactly once, seen from both handles.
    writer.refresh().await.unwrap();
    maintainer.refresh().await.unwrap();
    assert_eq!(count_spans(&writer).await, (COMMITS * 200) as i64);
    assert_eq!(count_spans(&maintainer).await, (COMMITS * 200) as i64);
    // A last optimize leaves one sorted file per day, with the same spans.
    maintainer.optimize().await.unwrap();
    writer.refresh().await.unwrap();
    assert_eq!(count_spans(&writer).await, (COMMITS * 200) as i64);
    assert_eq!(
        writer.stats().unwrap().files,
        2,
        "rewrote {rewrote} files in {runs} runs"
    );
}

#[tokio::test]
async fn optimize_writes_files_of_the_target_size_and_refuses_sizes_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    for seed in 0..6u64 {
        lake.append_spans(&day(300 + seed, 0, 4_500)).await.unwrap();
    }
    let data_bytes: u64 = walk(&path)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    // Enough data for three files of 1 MiB (the default target, 100 MiB, writes one).
    assert!(data_bytes > 3 << 20, "{data_bytes} bytes of data");
    let version = lake.version();
    for bytes in [0, (1 << 20) - 1, (64u64 << 30) + 1, u64::MAX] {
        let err = lake
            .table()
            .optimize()
            .target_file_size(bytes)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("out of range") && err.to_string().contains("1048576"),
            "{err}"
        );
        assert_eq!(lake.version(), version, "a refused optimize committed");
    }
    let outcome = lake
        .table()
        .optimize()
        .target_file_size(1 << 20)
        .await
        .unwrap();
    assert_eq!(outcome.files_removed, 6);
    assert!(outcome.files_added >= 3, "{outcome:?}");
    assert_eq!(count_spans(&lake).await, 6 * 4_500 * 5);
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `SELECT *` of a table, ordered and rendered as text (NaN is not equal to itself in Arrow).
async fn rendered(lake: &TraceLake) -> String {
    let ctx = lake.session_context().unwrap();
    let batches = ctx
        .sql("SELECT * FROM spans ORDER BY trace_id, span_id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// The parquet leaves of each data file of a local table, and whether any is an
/// `array_value` leaf.
fn leaves(table: &std::path::Path) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    for entry in walk(table) {
        if entry.extension().is_some_and(|e| e == "parquet") {
            let file = std::fs::File::open(&entry).unwrap();
            let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
            use parquet::file::reader::FileReader;
            let descr = reader.metadata().file_metadata().schema_descr_ptr();
            let nested = descr
                .columns()
                .iter()
                .any(|c| c.path().string().contains("array_value"));
            // Leaves of the table's columns (dedicated attribute columns come after them).
            let table_leaves = descr
                .columns()
                .iter()
                .filter(|c| !c.path().string().starts_with("__dedicated_"))
                .count();
            out.push((table_leaves, nested));
        }
    }
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A table written by tracelake 0.1 (attribute maps in the nested layout, 78 leaves a file)
/// reads exactly as the same spans written now (lean, 54 leaves), and stays nested when
/// appended to.
#[tokio::test]
async fn tables_of_the_nested_layout_read_the_same_and_stay_nested() {
    let dir = common::scratch("legacy-layout");
    let legacy = dir.join("legacy");
    copy_dir(
        &common::repo().join("tests/fixtures/legacy-attributes"),
        &legacy,
    );
    assert!(leaves(&legacy).iter().all(|&(n, nested)| n == 78 && nested));
    let old = TraceLake::open(legacy.to_str().unwrap()).await.unwrap();

    let fresh = dir.join("fresh");
    let new = TraceLake::create(fresh.to_str().unwrap()).await.unwrap();
    let (realistic, every_value) = common::legacy_fixture_spans();
    new.append_spans(&realistic).await.unwrap();
    new.append_spans(&every_value).await.unwrap();
    let fresh_leaves = leaves(&fresh);
    assert_eq!(fresh_leaves.len(), 2);
    assert!(fresh_leaves.iter().all(|&(n, nested)| n == 54 && !nested));

    let expected = rendered(&new).await;
    assert!(expected.contains("sku-"), "arrays are in the fixture");
    assert_eq!(rendered(&old).await, expected);
    // Lookups (LookupExec), trace_tree and attribute functions read both alike.
    for sql in [
        "SELECT attributes, events, links FROM spans WHERE trace_id = '0af7651916cd43dd8448eb211c80319c'",
        "SELECT span_id, depth FROM trace_tree('0af7651916cd43dd8448eb211c80319c')",
        "SELECT attr_str(attributes, 's'), attr_int(attributes, 'i'), attributes['mixed'] FROM spans WHERE name = 'every value'",
    ] {
        let render = |lake: TraceLake| async move {
            let ctx = lake.session_context().unwrap();
            let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            render(old.clone()).await,
            render(new.clone()).await,
            "{sql}"
        );
    }

    // Appending to the old table keeps its layout (its Delta schema is the nested one).
    let mut again = every_value.clone();
    again[0].span_id = "b7ad6b7169203332".into();
    old.append_spans(&again).await.unwrap();
    let after = leaves(&legacy);
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|&(n, nested)| n == 78 && nested));
    new.append_spans(&again).await.unwrap();
    assert_eq!(rendered(&old).await, rendered(&new).await);

    // deltalake's optimize rewrites either layout as it is, losing nothing.
    for lake in [&old, &new] {
        let outcome = lake.optimize().await.unwrap();
        assert!(outcome.files_removed >= 3, "{outcome:?}");
    }
    assert!(leaves(&fresh).iter().all(|&(n, nested)| n == 54 && !nested));
    assert_eq!(rendered(&old).await, rendered(&new).await);
    assert_eq!(rendered(&new).await, {
        let ctx_lake = TraceLake::open(fresh.to_str().unwrap()).await.unwrap();
        rendered(&ctx_lake).await
    });
}

/// Another engine reads a lean table's attributes back, arrays included, following
/// docs/architecture.md: Python `deltalake` and a few lines of Python.
#[tokio::test]
async fn python_deltalake_reads_lean_attributes_back() {
    let clients = common::clients();
    let dir = common::scratch("lean-python");
    let (realistic, every_value) = common::legacy_fixture_spans();
    for (name, source) in [
        ("lean", None),
        ("nested", Some("tests/fixtures/legacy-attributes")),
    ] {
        let path = dir.join(name);
        match source {
            Some(fixture) => copy_dir(&common::repo().join(fixture), &path),
            None => {
                // With the realistic spans, the files hold dedicated attribute columns too
                // (outside the Delta schema: deltalake must read past them).
                let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
                let mut spans = realistic.clone();
                spans.extend(every_value.iter().cloned());
                lake.append_spans(&spans).await.unwrap();
                let parquet: Vec<_> = walk(&path)
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                    .collect();
                assert!(!parquet.is_empty());
                for file in parquet {
                    let reader = parquet::file::reader::SerializedFileReader::new(
                        std::fs::File::open(&file).unwrap(),
                    )
                    .unwrap();
                    use parquet::file::reader::FileReader;
                    let descr = reader.metadata().file_metadata().schema_descr_ptr();
                    assert!(
                        descr
                            .columns()
                            .iter()
                            .any(|c| c.path().string() == "__dedicated_span_http_route"),
                        "{}",
                        file.display()
                    );
                }
            }
        }
        let out = std::process::Command::new(&clients.python)
            .arg(common::repo().join("tests/clients/delta_attributes.py"))
            .arg(&path)
            .arg(&every_value[0].span_id)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected: Vec<String> = every_value[0]
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={}", python_text(v)))
            .collect();
        let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(got, expected, "{name}");
    }
}

/// An attribute value as `tests/clients/delta_attributes.py` prints it.
fn python_text(value: &tracelake::AttributeValue) -> String {
    use tracelake::AttributeValue as V;
    match value {
        V::String(s) => format!("string:{s}"),
        V::Int(i) => format!("int:{i}"),
        V::Double(d) if d.is_nan() => "double:nan".into(),
        V::Double(d) if d.is_infinite() => {
            format!("double:{}inf", if *d < 0.0 { "-" } else { "" })
        }
        V::Double(d) => format!("double:{d:?}"),
        V::Bool(b) => format!("bool:{b}"),
        V::Bytes(b) => format!("bytes:{}", hex::encode(b)),
        V::Array(items) => format!(
            "[{}]",
            items.iter().map(python_text).collect::<Vec<_>>().join(",")
        ),
    }
}

/// The nearly unique id and time columns are written with zstd, the others with Snappy (see
/// docs/architecture.md, "Inside a commit").
#[tokio::test]
async fn the_id_and_time_columns_are_written_with_zstd() {
    use parquet::basic::Compression;
    use parquet::file::reader::FileReader;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    lake.append_spans(&day(11, 0, 200)).await.unwrap();
    let mut checked = 0;
    for entry in walk(&path) {
        if entry.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let file = std::fs::File::open(&entry).unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
        for rg in reader.metadata().row_groups() {
            for chunk in rg.columns() {
                let path = chunk.column_path().string();
                let zstd = matches!(chunk.compression(), Compression::ZSTD(_));
                let expected = [
                    "trace_id",
                    "span_id",
                    "parent_span_id",
                    "start_time_unix_nano",
                    "end_time_unix_nano",
                    "duration_ns",
                ]
                .contains(&path.as_str());
                assert_eq!(zstd, expected, "{path}: {:?}", chunk.compression());
                if !expected {
                    assert_eq!(chunk.compression(), Compression::SNAPPY, "{path}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 6, "{checked} column chunks");
}
