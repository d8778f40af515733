//! Tables of many files (issue 13): what opening, refreshing and looking up read, asserted as
//! object-store request counts, and the footer budget that bounds the memory lookups hold.

use crate::common::{TestStore, count, rows, run};
use tracelake::synth::{TraceShape, traces};
use tracelake::{TableOptions, TraceLake};

const DAY0: i64 = 1_714_521_600_000_000_000;

/// Writes `commits` commits of `traces_per_commit` five-span traces, one file each; returns
/// one trace id per commit.
async fn write(lake: &TraceLake, commits: u64, traces_per_commit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for c in 0..commits {
        let spans = traces(
            c,
            TraceShape::Fixed(5),
            traces_per_commit,
            DAY0 + c as i64 * 1_000_000_000,
            1_000_000,
        );
        ids.push(spans[0].trace_id.clone());
        lake.append_spans(&spans).await.unwrap();
    }
    ids
}

#[tokio::test]
async fn opening_reads_no_data_file_and_a_refresh_reads_only_the_new_commit() {
    let mut opened = Vec::new();
    for commits in [10u64, 120] {
        let store = TestStore::new();
        let options = TableOptions {
            root_store: Some(store.clone()),
            cache_bytes: 0,
            ..Default::default()
        };
        let location = format!("memory:///scale-open-{commits}");
        let writer = TraceLake::create_with_options(&location, &options)
            .await
            .unwrap();
        write(&writer, commits, 4).await;
        writer.wait_for_background_work().await;

        store.reset_calls();
        let reader = TraceLake::open_with_options(&location, &options)
            .await
            .unwrap();
        assert_eq!(reader.version(), commits as i64);
        let calls = store.calls();
        let data: u64 = calls
            .iter()
            .filter(|((_, kind), _)| kind == "parquet_data")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(data, 0, "open read data files: {calls:?}");
        let total: u64 = calls.values().sum();
        opened.push(total);
        assert_eq!(reader.table().footer_memory(), 0);

        // One more commit by the writer: the reader's refresh lists the log after its
        // version and reads that commit, nothing about the old files.
        write(&writer, 1, 4).await;
        store.reset_calls();
        assert_eq!(reader.table().refresh().await.unwrap(), commits as i64 + 1);
        let calls = store.calls();
        assert_eq!(store.count("list", "delta_log"), 1, "{calls:?}");
        assert_eq!(store.count("get", "delta_log"), 1, "{calls:?}");
        let others: u64 = calls
            .iter()
            .filter(|((op, kind), _)| !(kind == "delta_log" && (op == "list" || op == "get")))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            others, 0,
            "a refresh read more than the new commit: {calls:?}"
        );
    }
    // Opening reads the last checkpoint and the commits after it, never one request per
    // file or per commit: 120 commits (a checkpoint at version 99, 21 commits after it) cost
    // at most two requests per commit after the checkpoint more than 10 commits do.
    assert!(
        opened[1] <= opened[0] + 2 * 21,
        "open requests grow with the commits: {opened:?}"
    );
}

#[tokio::test]
async fn a_small_footer_budget_bounds_the_memory_and_lookups_stay_correct() {
    let store = TestStore::new();
    let budget = 64 * 1024;
    let options = TableOptions {
        root_store: Some(store.clone()),
        cache_bytes: 0,
        footer_cache_bytes: budget,
        ..Default::default()
    };
    let lake = TraceLake::create_with_options("memory:///scale-budget", &options)
        .await
        .unwrap();
    let ids = write(&lake, 30, 20).await;
    let ctx = lake.session_context().unwrap();
    let mut largest_footer = 0;
    for id in &ids {
        let before = lake.table().footer_memory();
        let (batches, m) = run(
            &ctx,
            &format!("SELECT * FROM spans WHERE trace_id = '{id}'"),
        )
        .await;
        assert_eq!(rows(&batches), 5);
        assert_eq!(m.files_opened, 1, "{m:?}");
        largest_footer = largest_footer.max(lake.table().footer_memory().saturating_sub(before));
        assert!(
            lake.table().footer_memory() <= budget + largest_footer,
            "footers held: {} over a budget of {budget}",
            lake.table().footer_memory()
        );
    }
    // A full scan reads every footer; the budget still holds, and every span is there.
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 30 * 20 * 5);
    assert!(lake.table().footer_memory() <= budget + largest_footer);
    // Evicted footers are read again: the first ids still look up.
    store.reset_calls();
    let (batches, _) = run(&ctx, &format!("SELECT * FROM trace_tree('{}')", ids[0])).await;
    assert_eq!(rows(&batches), 5);

    // The default budget keeps every footer of this table: a second pass of lookups reads
    // only data pages (the decoded cache off, so that the second pass reads them).
    let lake = TraceLake::open_with_options(
        "memory:///scale-budget",
        &TableOptions {
            root_store: Some(store.clone()),
            cache_bytes: 0,
            lookup_cache_bytes: 0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ctx = lake.session_context().unwrap();
    for id in &ids {
        run(
            &ctx,
            &format!("SELECT * FROM spans WHERE trace_id = '{id}'"),
        )
        .await;
    }
    let held = lake.table().footer_memory();
    assert!(held > budget, "{held}");
    store.reset_calls();
    run(
        &ctx,
        &format!("SELECT * FROM spans WHERE trace_id = '{}'", ids[3]),
    )
    .await;
    // Data pages only, in one request (no footer is read again; reading them took one
    // request per file): the trace's pages of every column at once.
    let data = store.count("get_range", "parquet_data") + store.count("get", "parquet_data");
    assert_eq!(data, 1, "{:?}", store.calls());
}

#[tokio::test]
async fn a_cold_lookup_reads_the_footer_of_the_file_that_holds_the_trace_only() {
    // Each commit's log entry carries a filter of its file's trace ids: a lookup rules out the
    // other files without reading their footers, though every file covers the whole id space.
    let store = TestStore::new();
    let options = TableOptions {
        root_store: Some(store.clone()),
        cache_bytes: 0,
        ..Default::default()
    };
    let writer = TraceLake::create_with_options("memory:///scale-cold", &options)
        .await
        .unwrap();
    let ids = write(&writer, 120, 20).await;
    writer.wait_for_background_work().await;
    // A process that opens the table (from the checkpoint at version 99 and the commits
    // after it: the filters come through both).
    let lake = TraceLake::open_with_options("memory:///scale-cold", &options)
        .await
        .unwrap();
    let ctx = lake.session_context().unwrap();
    for id in [&ids[3], &ids[17], &ids[39]] {
        store.reset_calls();
        let (batches, m) = run(
            &ctx,
            &format!("SELECT * FROM spans WHERE trace_id = '{id}'"),
        )
        .await;
        assert_eq!(rows(&batches), 5);
        assert_eq!(m.files_opened, 1);
        // One request for the footer of the one file, one for its pages.
        let data = store.count("get_range", "parquet_data") + store.count("get", "parquet_data");
        assert_eq!(data, 2, "{:?}", store.calls());
    }
    // An id in no file reads nothing at all (a 0.1% false positive per file at most).
    store.reset_calls();
    let (batches, _) = run(
        &ctx,
        "SELECT * FROM spans WHERE trace_id = '0123456789abcdef0123456789abcdef'",
    )
    .await;
    assert_eq!(rows(&batches), 0);
    assert!(
        store.count("get_range", "parquet_data") <= 1,
        "{:?}",
        store.calls()
    );
    // Still a plain Delta table: the filters are `add` tags that other readers ignore.
    assert_eq!(
        count(&ctx, "SELECT count(*) FROM spans").await,
        120 * 20 * 5
    );
}

#[tokio::test]
async fn a_lookup_of_many_ids_fetches_a_large_file_row_group_by_row_group() {
    // One file of 600,000 spans. A lookup of 800 ids spread over it has candidate pages in
    // every row group, more bytes than a read fetches ahead of decoding (LOOKUP_PREFETCH_BYTES): they
    // come one row group at a time, as parquet asks for them, with the same rows. A lookup of
    // a few ids still fetches its pages in one request.
    let store = TestStore::new();
    let options = TableOptions {
        root_store: Some(store.clone()),
        cache_bytes: 0,
        ..Default::default()
    };
    let lake = TraceLake::create_with_options("memory:///scale-many-ids", &options)
        .await
        .unwrap();
    let spans = traces(7, TraceShape::Fixed(5), 120_000, DAY0, 1_000_000);
    lake.append_spans(&spans).await.unwrap();
    let ids: Vec<String> = spans
        .iter()
        .step_by(750)
        .map(|s| s.trace_id.clone())
        .collect();
    assert_eq!(ids.len(), 800);
    let list = |ids: &[String]| {
        ids.iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ctx = lake.session_context().unwrap();
    // The footer is read once, by the first lookup.
    run(
        &ctx,
        &format!("SELECT span_id FROM spans WHERE trace_id = '{}'", ids[0]),
    )
    .await;

    // Stopped early by a LIMIT: the decoded cache keeps nothing of a read not finished.
    let all = format!("SELECT * FROM spans WHERE trace_id IN ({})", list(&ids));
    let (batches, _) = run(&ctx, &format!("{all} LIMIT 3")).await;
    assert_eq!(rows(&batches), 3);

    store.reset_calls();
    let (batches, m) = run(&ctx, &all).await;
    assert_eq!(rows(&batches), 4_000);
    assert_eq!((m.files_opened, m.decoded_cache_hits), (1, 0));
    let data = store.count("get_range", "parquet_data") + store.count("get", "parquet_data");
    assert!(data > 1, "{:?}", store.calls());
    assert!(
        m.bytes_scanned as u64 > tracelake::LOOKUP_PREFETCH_BYTES,
        "{} bytes read: the pages read are candidates, so the candidates must be over the bound",
        m.bytes_scanned
    );

    let few = [ids[1].clone(), ids[150].clone(), ids[399].clone()];
    store.reset_calls();
    let (batches, m) = run(
        &ctx,
        &format!("SELECT * FROM spans WHERE trace_id IN ({})", list(&few)),
    )
    .await;
    assert_eq!(rows(&batches), 15);
    assert!(m.row_groups_matched >= 2, "{m:?}");
    let data = store.count("get_range", "parquet_data") + store.count("get", "parquet_data");
    assert_eq!(data, 1, "{:?}", store.calls());
}
