//! Whole flows through `TraceTableProvider`: registered once and always fresh, a running
//! query keeping its snapshot, and filters on `trace_id` and `start_time` reaching Delta file
//! skipping and parquet pruning (read from the scan's metrics).

use crate::common::{rows, run};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;
use tracelake::synth::{TraceShape, traces};
use tracelake::{Registration, Span, TraceLake};

const DAY: i64 = 86_400_000_000_000;
/// 2024-05-01T00:00:00Z
const DAY0: i64 = 1_714_521_600_000_000_000;

async fn count(ctx: &SessionContext, sql: &str) -> i64 {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// Spans of `n` five-span traces on day `day`, with trace ids starting with `prefix`.
fn day_of_spans(seed: u64, n: usize, day: i64, prefix: Option<char>) -> Vec<Span> {
    let mut spans = traces(seed, TraceShape::Fixed(5), n, DAY0 + day * DAY, DAY / 2);
    if let Some(p) = prefix {
        for s in &mut spans {
            s.trace_id.replace_range(0..1, &p.to_string());
        }
    }
    spans
}

#[tokio::test]
async fn registered_once_always_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans");
    let lake = TraceLake::create(path.to_str().unwrap()).await.unwrap();
    let ctx = SessionContext::new();
    lake.register(&ctx).unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 0);

    // An append through the API is visible to the next query.
    lake.append_spans(&day_of_spans(1, 10, 0, None))
        .await
        .unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 50);

    // So is an INSERT through SQL, in another context registered on the same lake.
    let other_ctx = lake.session_context().unwrap();
    other_ctx
        .sql(
            "INSERT INTO spans (trace_id, span_id, name, start_time, end_time) VALUES \
             ('4bf92f3577b34da6a3ce929d0e0e4736', '00f067aa0ba902b7', 'x', \
              '2024-05-01T00:00:00Z', '2024-05-01T00:00:01Z')",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 51);

    // Another process's writes appear after refresh().
    let writer = TraceLake::open(path.to_str().unwrap()).await.unwrap();
    writer
        .append_spans(&day_of_spans(2, 4, 1, None))
        .await
        .unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 51);
    assert_eq!(lake.refresh().await.unwrap(), writer.version());
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 71);
}

#[tokio::test]
async fn a_running_query_keeps_its_snapshot() {
    let lake = TraceLake::create("memory:///running-query").await.unwrap();
    lake.append_spans(&day_of_spans(1, 10, 0, None))
        .await
        .unwrap();
    let ctx = lake.session_context().unwrap();
    // Planned (snapshot taken) before the append, executed after it.
    let plan = ctx
        .sql("SELECT count(*) FROM spans")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    lake.append_spans(&day_of_spans(2, 10, 0, None))
        .await
        .unwrap();
    let batches = collect(plan, ctx.task_ctx()).await.unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        50
    );
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 100);
}

#[tokio::test]
async fn trace_id_and_time_filters_prune_files_and_row_groups() {
    let lake = TraceLake::create("memory:///pruning").await.unwrap();
    // Three days, two commits a day: six files of 20,000 spans (two row groups each).
    let mut wanted = String::new();
    for day in 0..3 {
        for commit in 0..2 {
            let spans = day_of_spans(10 * day as u64 + commit, 4_000, day, None);
            if day == 1 && commit == 0 {
                wanted = spans[1234].trace_id.clone();
            }
            lake.append_spans(&spans).await.unwrap();
        }
    }
    let ctx = lake.session_context().unwrap();

    // A full scan opens every file and row group.
    let (_, full) = run(&ctx, "SELECT span_id FROM spans").await;
    assert_eq!(full.rows_scanned, 120_000);

    assert_eq!(full.files_opened, 6);

    // A lookup by trace id, no time bound: the trace-id index (row-group id ranges and bloom
    // filters, in memory) leaves the one row group holding the trace.
    let lookup = format!("SELECT span_id FROM spans WHERE trace_id = '{wanted}'");
    let (batches, m) = run(&ctx, &lookup).await;
    assert_eq!(rows(&batches), 5);
    assert_eq!(m.files_opened, 1, "{m:?}");
    assert_eq!(m.row_groups_read(), 1, "{m:?}");

    // The same lookup with a time bound reads the same row group.
    let bounded = format!(
        "{lookup} AND start_time >= '2024-05-02T00:00:00Z' AND start_time < '2024-05-03T00:00:00Z'"
    );
    let (batches, m) = run(&ctx, &bounded).await;
    assert_eq!(rows(&batches), 5);
    assert_eq!(m.files_opened, 1);
    assert_eq!(m.row_groups_read(), 1, "{m:?}");

    // A bound that excludes the trace: the row group is read, its rows filtered out.
    let (batches, _) = run(
        &ctx,
        &format!("{lookup} AND start_time >= '2024-05-03T00:00:00Z'"),
    )
    .await;
    assert_eq!(rows(&batches), 0);

    // An id that is in no row group: nothing is opened.
    let (batches, m) = run(
        &ctx,
        "SELECT span_id FROM spans WHERE trace_id = '0123456789abcdef0123456789abcdef'",
    )
    .await;
    assert_eq!(rows(&batches), 0);
    assert_eq!(m.files_opened, 0, "{m:?}");

    // A time range alone reads only that day's files.
    let (batches, m) = run(
        &ctx,
        "SELECT span_id FROM spans WHERE start_time >= '2024-05-03T00:00:00Z'",
    )
    .await;
    assert_eq!(rows(&batches), 40_000);
    assert_eq!(m.files_opened, 2);

    // IN on trace_id prunes like equality.
    let in_list = format!(
        "SELECT span_id FROM spans WHERE trace_id IN ('{wanted}', '00000000000000000000000000000001')"
    );
    let (batches, m) = run(&ctx, &in_list).await;
    assert_eq!(rows(&batches), 5);
    assert_eq!(m.row_groups_read(), 1, "{m:?}");

    // Not a lookup (a range on trace_id: only `wanted` is in [wanted, wanted || '0')): the
    // row-group statistics of the footers
    // still prune: statistics leave one row group per file.
    let (batches, m) = run(
        &ctx,
        &format!(
            "SELECT span_id FROM spans WHERE trace_id >= '{wanted}' AND trace_id < '{wanted}0'"
        ),
    )
    .await;
    assert_eq!(rows(&batches), 5);
    assert_eq!(m.files_opened, 6);
    assert_eq!(m.row_groups_pruned_statistics, 6, "{m:?}");
}

#[tokio::test]
async fn trace_id_statistics_skip_whole_files() {
    let lake = TraceLake::create("memory:///file-skipping").await.unwrap();
    // Two files whose trace ids do not overlap: all start with 0, all start with f.
    let low = day_of_spans(1, 200, 0, Some('0'));
    let high = day_of_spans(2, 200, 0, Some('f'));
    let wanted = low[7].trace_id.clone();
    lake.append_spans(&low).await.unwrap();
    lake.append_spans(&high).await.unwrap();
    let ctx = lake.session_context().unwrap();
    let (batches, m) = run(
        &ctx,
        &format!("SELECT * FROM spans WHERE trace_id >= '{wanted}' AND trace_id < '{wanted}0'"),
    )
    .await;
    assert_eq!(rows(&batches), 5);
    assert_eq!(m.files_opened, 1);
}

#[tokio::test]
async fn two_lakes_in_one_context_each_get_their_own_name_and_functions() {
    let ctx = SessionContext::new();
    let us = TraceLake::create("memory:///two-lakes-us").await.unwrap();
    let eu = TraceLake::create("memory:///two-lakes-eu").await.unwrap();
    let us_spans = day_of_spans(1, 3, 0, Some('1'));
    let eu_spans = day_of_spans(2, 2, 0, Some('e'));
    us.append_spans(&us_spans).await.unwrap();
    eu.append_spans(&eu_spans).await.unwrap();
    us.register(&ctx).unwrap();

    // Registering the second lake as `spans` too fails, and rebinds nothing.
    let err = eu.register(&ctx).unwrap_err().to_string();
    assert!(err.contains("already has a table named \"spans\""), "{err}");
    let tree = format!(
        "SELECT count(*) FROM trace_tree('{}')",
        us_spans[0].trace_id
    );
    assert_eq!(
        count(&ctx, &tree).await,
        5,
        "trace_tree still reads the first lake"
    );

    // Under its own name, with its own table functions.
    eu.register_with(&ctx, &Registration::default().table_name("eu_spans"))
        .unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 15);
    assert_eq!(count(&ctx, "SELECT count(*) FROM eu_spans").await, 10);
    let eu_tree = format!(
        "SELECT count(*) FROM eu_spans_trace_tree('{}')",
        eu_spans[0].trace_id
    );
    assert_eq!(count(&ctx, &eu_tree).await, 5);
    let cross = format!(
        "SELECT count(*) FROM eu_spans_trace_tree('{}')",
        us_spans[0].trace_id
    );
    assert_eq!(count(&ctx, &cross).await, 0, "bound to the eu lake");
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) FROM eu_spans_trace_summaries(NULL, NULL)"
        )
        .await,
        2
    );
    // A name that is not a plain identifier, or taken, is refused.
    for (name, expected) in [
        ("EU", "not a plain SQL identifier"),
        ("eu spans", "not a plain SQL identifier"),
        ("", "not a plain SQL identifier"),
        ("eu_spans", "already has a table named"),
    ] {
        let err = eu
            .register_with(&ctx, &Registration::default().table_name(name))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{name:?}: {err}");
    }
}

#[tokio::test]
async fn a_read_only_registration_refuses_insert_and_answers_queries() {
    let lake = TraceLake::create("memory:///read-only").await.unwrap();
    lake.append_spans(&day_of_spans(1, 2, 0, None))
        .await
        .unwrap();
    let ctx = SessionContext::new();
    lake.register_with(&ctx, &Registration::default().read_only(true))
        .unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 10);
    let insert = "INSERT INTO spans (trace_id, span_id, name, start_time, end_time) VALUES \
        ('4bf92f3577b34da6a3ce929d0e0e4736', 'a000000000000001', 'x', \
         '2024-05-01T12:00:00Z', '2024-05-01T12:00:01Z')";
    let err = match ctx.sql(insert).await {
        Ok(df) => df.collect().await.unwrap_err(),
        Err(e) => e,
    }
    .to_string();
    assert!(err.contains("registered read-only"), "{err}");
    assert!(err.contains("INSERT is not allowed"), "{err}");
    assert_eq!(lake.version(), 1);
    // DataFusion's SQLOptions refuse DML before planning, for any table.
    let options = datafusion::execution::context::SQLOptions::new().with_allow_dml(false);
    let err = ctx
        .sql_with_options(insert, options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("DML not supported"), "{err}");
}
