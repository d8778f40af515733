//! Trace lookups on a table written in many commits, before and after compaction: the
//! number of data files and row groups a lookup opens is asserted (deterministic figures).

use crate::common;

use crate::common::{rows, run};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;
use tracelake::TraceLake;
use tracelake::synth::{TraceShape, traces};

const DAY: i64 = 86_400_000_000_000;
const DAY0: i64 = 1_714_521_600_000_000_000;
const COMMITS: usize = 60;

#[tokio::test]
async fn lookups_open_one_file_and_row_group_before_and_after_compaction() {
    let lake = TraceLake::create("memory:///lookup-60-commits")
        .await
        .unwrap();
    let mut wanted = Vec::new();
    // 60 commits over two days, 1,000 spans each (200 five-span traces).
    for commit in 0..COMMITS {
        let day = (commit / 30) as i64;
        let start = DAY0 + day * DAY + (commit % 30) as i64 * 3_600_000_000_000 / 2;
        let spans = traces(
            commit as u64,
            TraceShape::Fixed(5),
            200,
            start,
            1_000_000_000,
        );
        if commit % 20 == 7 {
            wanted.push(spans[42].trace_id.clone());
        }
        lake.append_spans(&spans).await.unwrap();
    }
    assert_eq!(lake.version(), COMMITS as i64);
    let ctx = lake.session_context().unwrap();

    for id in &wanted {
        // trace_tree and a plain lookup: one file, one row group, no time bound.
        let (batches, m) = run(&ctx, &format!("SELECT * FROM trace_tree('{id}')")).await;
        assert_eq!(rows(&batches), 5);
        assert_eq!((m.files_opened, m.row_groups_read()), (1, 1), "{m:?}");
        let (batches, m) = run(
            &ctx,
            &format!("SELECT span_id FROM spans WHERE trace_id = '{id}'"),
        )
        .await;
        assert_eq!(rows(&batches), 5);
        assert_eq!((m.files_opened, m.row_groups_read()), (1, 1), "{m:?}");
    }
    // What the same lookup costs without the index (row-group statistics only): every file
    // is read, because every commit covers the whole id space.
    let id = &wanted[0];
    let (_, m) = run(
        &ctx,
        &format!("SELECT span_id FROM spans WHERE trace_id >= '{id}' AND trace_id < '{id}0'"),
    )
    .await;
    assert_eq!(m.files_opened, COMMITS);
    let row_groups_before = m.row_groups_read();

    // Compaction: both partitions overlap, both are rewritten sorted by trace id.
    let table = lake.table();
    assert_eq!(
        table.partitions_to_optimize().unwrap(),
        ["2024-05-01", "2024-05-02"]
    );
    let outcome = table.optimize().await.unwrap();
    assert_eq!(outcome.partitions.len(), 2);
    assert_eq!(outcome.files_removed, COMMITS as u64);
    // One commit per day.
    assert_eq!(outcome.version, COMMITS as i64 + 2);
    let files_after = outcome.files_added as usize;
    assert!(files_after <= 4, "{outcome:?}");

    for id in &wanted {
        let (batches, m) = run(&ctx, &format!("SELECT * FROM trace_tree('{id}')")).await;
        assert_eq!(rows(&batches), 5);
        assert_eq!((m.files_opened, m.row_groups_read()), (1, 1), "{m:?}");
    }
    // The compacted files are read by the lookup's own reader, as appended files are
    // (deltalake's optimize records strings as Utf8View: read with tracelake's types).
    let plan = ctx
        .sql(&format!(
            "EXPLAIN SELECT * FROM spans WHERE trace_id = '{}'",
            wanted[0]
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let plan = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    assert!(plan.contains("LookupExec"), "{plan}");
    // After compaction, statistics alone skip all but one file per day.
    let (_, m) = run(
        &ctx,
        &format!("SELECT span_id FROM spans WHERE trace_id >= '{id}' AND trace_id < '{id}0'"),
    )
    .await;
    assert!(m.files_opened <= 2, "{m:?}");
    assert!(
        m.row_groups_read() < row_groups_before,
        "after optimize the lookup reads fewer row groups: {} then {}",
        row_groups_before,
        m.row_groups_read()
    );

    // Nothing is lost, and a second run has nothing to do (incremental).
    let batches = ctx
        .sql("SELECT count(*) FROM spans")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        (COMMITS * 1_000) as i64
    );
    assert!(table.partitions_to_optimize().unwrap().is_empty());
    let again = table.optimize().await.unwrap();
    assert_eq!(again.version, outcome.version);
    assert!(again.partitions.is_empty());
}

/// The rows of `sql`, formatted and sorted (order-insensitive comparison, nested columns
/// included).
/// The text of `EXPLAIN sql`.
async fn explain(ctx: &SessionContext, sql: &str) -> String {
    let plan = ctx
        .sql(&format!("EXPLAIN {sql}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string()
}

async fn sorted_rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn lookups_return_exactly_what_a_full_scan_returns() {
    let lake = TraceLake::create("memory:///lookup-exact").await.unwrap();
    let mut ids = Vec::new();
    for commit in 0..3u64 {
        let spans = traces(
            100 + commit,
            TraceShape::Realistic,
            400,
            DAY0 + commit as i64 * 3_600_000_000_000,
            3_000_000_000,
        );
        ids.extend(spans.iter().step_by(97).map(|s| s.trace_id.clone()));
        lake.append_spans(&spans).await.unwrap();
    }
    ids.dedup();
    assert!(ids.len() > 12, "{}", ids.len());
    let ctx = lake.session_context().unwrap();
    let list = |ids: &[String]| {
        ids.iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // One id, a few ids, and more ids than the short-list path takes.
    for wanted in [&ids[..1], &ids[..3], &ids[..12]] {
        for columns in ["*", "name, start_time, attributes, trace_id", "count(*)"] {
            let lookup = format!(
                "SELECT {columns} FROM spans WHERE trace_id IN ({})",
                list(wanted)
            );
            // `concat` hides the id from the lookup path: a full scan with the same filter.
            let scan = format!(
                "SELECT {columns} FROM spans WHERE concat(trace_id, '') IN ({})",
                list(wanted)
            );
            let expected = sorted_rows(&ctx, &scan).await;
            assert!(!expected.is_empty());
            assert_eq!(sorted_rows(&ctx, &lookup).await, expected, "{lookup}");
        }
    }
    // The lookup is the direct read, and reads only the matching rows.
    let id = &ids[0];
    let sql = format!("SELECT * FROM spans WHERE trace_id = '{id}'");
    let explained = explain(&ctx, &sql).await;
    assert!(explained.contains("LookupExec"), "{explained}");
    // The lookup keeps exactly the rows of its ids: no filter (and no repartition feeding
    // one) runs above it.
    assert!(
        !explained.contains("FilterExec") && !explained.contains("RepartitionExec"),
        "{explained}"
    );
    // Filters next to the trace-id one still apply, two trace-id filters are both honoured,
    // and a limit applies to the trace's rows.
    let (a, b) = (&ids[0], &ids[1]);
    for filter in [
        format!("trace_id = '{a}' AND parent_span_id IS NOT NULL"),
        format!("trace_id = '{a}' AND trace_id = '{b}'"),
        format!("trace_id = '{a}' AND trace_id IN ('{a}', '{b}')"),
        format!("trace_id IN ('{a}', '{b}') AND (trace_id = '{b}' OR name = 'none')"),
        format!("(trace_id = '{a}' OR trace_id = '{b}') AND duration_ns >= 0"),
    ] {
        let lookup = format!("SELECT span_id, trace_id FROM spans WHERE {filter}");
        let scan = format!(
            "SELECT span_id, trace_id FROM spans WHERE {}",
            filter.replace("trace_id", "concat(trace_id, '')")
        );
        assert_eq!(
            sorted_rows(&ctx, &lookup).await,
            sorted_rows(&ctx, &scan).await,
            "{lookup}"
        );
    }
    // trace_tree reads its trace in one partition: nothing between the tree and the lookup.
    let tree = explain(&ctx, &format!("SELECT * FROM trace_tree('{a}')")).await;
    assert!(
        tree.contains("TraceTreeExec")
            && tree.contains("LookupExec")
            && !tree.contains("RepartitionExec"),
        "{tree}"
    );
    let limited = format!(
        "SELECT count(*) AS n FROM (SELECT span_id FROM spans WHERE trace_id = '{a}' LIMIT 2)"
    );
    assert_eq!(sorted_rows(&ctx, &limited).await, ["| 2 |"]);
    let (batches, m) = run(&ctx, &sql).await;
    assert!(rows(&batches) > 0);
    assert_eq!(m.rows_scanned, rows(&batches), "{m:?}");
    // One file and one row group: asked before, so its rows come from the decoded cache.
    assert_eq!(
        (m.files_opened, m.decoded_cache_hits, m.row_groups_read()),
        (0, 1, 1),
        "{m:?}"
    );
    // A literal DataFusion folds (here `lower(...)`) is a lookup too.
    let folded = format!(
        "SELECT * FROM spans WHERE trace_id = lower('{}')",
        id.to_uppercase()
    );
    let explained = explain(&ctx, &folded).await;
    assert!(explained.contains("LookupExec"), "{explained}");
    assert_eq!(
        sorted_rows(&ctx, &folded).await,
        sorted_rows(&ctx, &sql).await
    );
    // Unknown and upper-case ids (stored lowercase) match nothing and read nothing.
    for other in [
        "0123456789abcdef0123456789abcdef".to_string(),
        id.to_uppercase(),
    ] {
        let (batches, m) = run(
            &ctx,
            &format!("SELECT * FROM spans WHERE trace_id = '{other}'"),
        )
        .await;
        assert_eq!(rows(&batches), 0);
        assert_eq!(m.bytes_scanned, 0, "{m:?}");
    }
}

/// A lookup asked again is served from the decoded cache of lookup rows: same rows, nothing
/// read or decoded; any change to the ids or the columns is a read of its own; the budget is
/// configurable and 0 turns the cache off.
#[tokio::test]
async fn a_repeated_lookup_is_served_from_the_decoded_cache_keyed_by_ids_and_columns() {
    use tracelake::TableOptions;
    for (budget, cached) in [(tracelake::DEFAULT_LOOKUP_CACHE_BYTES, true), (0, false)] {
        let options = TableOptions {
            lookup_cache_bytes: budget,
            ..TableOptions::default()
        };
        let metrics = options.metrics.clone();
        let lake = TraceLake::create_with_options(&format!("memory:///decoded-{budget}"), &options)
            .await
            .unwrap();
        let mut ids = Vec::new();
        for commit in 0..3u64 {
            let spans = traces(commit, TraceShape::Fixed(5), 200, DAY0, 1_000_000_000);
            ids.push(spans[17].trace_id.clone());
            lake.append_spans(&spans).await.unwrap();
        }
        let ctx = lake.session_context().unwrap();
        let (a, b) = (&ids[0], &ids[1]);
        let star = format!("SELECT * FROM spans WHERE trace_id = '{a}'");
        let (first, m) = run(&ctx, &star).await;
        assert_eq!(rows(&first), 5);
        assert_eq!((m.files_opened, m.decoded_cache_hits), (1, 0), "{m:?}");
        let (again, m) = run(&ctx, &star).await;
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&again)
                .unwrap()
                .to_string(),
            arrow::util::pretty::pretty_format_batches(&first)
                .unwrap()
                .to_string()
        );
        if cached {
            assert_eq!((m.files_opened, m.decoded_cache_hits), (0, 1), "{m:?}");
            assert_eq!(m.bytes_scanned, 0, "{m:?}");
        } else {
            assert_eq!((m.files_opened, m.decoded_cache_hits), (1, 0), "{m:?}");
        }
        // Other columns, other ids, a filter above the lookup: each its own entry, with its
        // own rows (never the cached rows of another shape).
        for (sql, expected) in [
            (
                format!("SELECT span_id FROM spans WHERE trace_id = '{a}'"),
                5,
            ),
            (
                format!("SELECT * FROM spans WHERE trace_id IN ('{a}', '{b}')"),
                10,
            ),
            (format!("SELECT * FROM spans WHERE trace_id = '{b}'"), 5),
        ] {
            let (batches, m) = run(&ctx, &sql).await;
            assert_eq!(rows(&batches), expected, "{sql}");
            assert_eq!(m.decoded_cache_hits, 0, "{sql}: {m:?}");
            assert!(m.files_opened >= 1, "{sql}: {m:?}");
        }
        let root = format!("SELECT * FROM spans WHERE trace_id = '{a}' AND parent_span_id IS NULL");
        let (batches, m) = run(&ctx, &root).await;
        assert_eq!(rows(&batches), 1);
        assert_eq!(m.decoded_cache_hits, usize::from(cached), "{m:?}");
        assert_eq!(metrics.lookup_cache_count("hit") > 0, cached);
        // A hit hands its rows over in batches of at most the session's batch size.
        let small = lake
            .session_context_with_config(
                datafusion::prelude::SessionConfig::new().with_batch_size(2),
            )
            .unwrap();
        let (batches, m) = run(&small, &star).await;
        assert_eq!(m.decoded_cache_hits, usize::from(cached), "{m:?}");
        assert_eq!(rows(&batches), 5);
        assert!(batches.iter().all(|b| b.num_rows() <= 2), "{batches:?}");
        if cached {
            assert!(lake.table().lookup_cache_memory() <= budget);
        } else {
            assert_eq!(lake.table().lookup_cache_memory(), 0);
        }
    }
}

/// Filters on attributes skip the row groups whose attribute bloom filters rule them out,
/// whichever way users write them: four files (one row group each), one of which holds a
/// needle span with a unique user id, a rare key and a rare resource value.
#[tokio::test]
async fn attribute_filters_skip_row_groups_by_their_bloom_filters() {
    let lake = TraceLake::create("memory:///attribute-pruning")
        .await
        .unwrap();
    for commit in 0..4u64 {
        let mut spans = common::spans(100 + commit, 150);
        if commit == 2 {
            let needle = &mut spans[17];
            needle.attributes.push((
                "user.id".into(),
                tracelake::AttributeValue::String("u-needle".into()),
            ));
            needle
                .attributes
                .push(("rare.key".into(), tracelake::AttributeValue::Int(7)));
            needle.resource_attributes.push((
                "needle.resource".into(),
                tracelake::AttributeValue::String("needle-host".into()),
            ));
        }
        lake.append_spans(&spans).await.unwrap();
    }
    let ctx = lake.session_context().unwrap();
    let one_file = |m: &tracelake::observe::ScanMetrics| m.row_groups_pruned_attributes == 3;
    for (filter, expected_rows, pruned) in [
        ("attr_str(attributes, 'user.id') = 'u-needle'", 1, 3),
        ("'u-needle' = attr_str(attributes, 'user.id')", 1, 3),
        (
            "attr_str(attributes, 'user.id') IN ('u-needle', 'u-absent')",
            1,
            3,
        ),
        ("attributes['user.id']['string_value'] = 'u-needle'", 1, 3),
        (
            "attr_str(attributes, 'user.id') = 'u-needle' OR attr_str(attributes, 'user.id') = 'x'",
            1,
            3,
        ),
        (
            "attr_str(attributes, 'user.id') = 'u-needle' AND name <> 'x'",
            1,
            3,
        ),
        ("attr_int(attributes, 'rare.key') >= 0", 1, 3),
        ("attr_int(attributes, 'rare.key') IS NOT NULL", 1, 3),
        ("attr_str(attributes, 'user.id') LIKE 'u-%'", 1, 3),
        (
            "attr_str(resource_attributes, 'needle.resource') = 'needle-host'",
            1,
            3,
        ),
        ("attr_str(attributes, 'user.id') = 'nobody'", 0, 4),
        // Nothing to prune by: every row group is read.
        ("attr_str(attributes, 'user.id') IS NULL", 0, 0),
        (
            "attr_str(attributes, 'user.id') = 'u-needle' OR name = 'x'",
            1,
            0,
        ),
    ] {
        let sql = format!("SELECT count(*) FROM spans WHERE {filter}");
        let (batches, metrics) = run(&ctx, &sql).await;
        let count = batches[0].column(0).as_primitive::<Int64Type>().value(0);
        if filter.ends_with("IS NULL") {
            assert!(count > 500, "{filter}: {count}");
        } else {
            assert_eq!(count, expected_rows, "{filter}");
        }
        assert_eq!(
            metrics.row_groups_pruned_attributes, pruned,
            "{filter}: {metrics:?}"
        );
        assert_eq!(metrics.bytes_pruned_attributes > 0, pruned > 0, "{filter}");
        if pruned == 3 {
            assert!(one_file(&metrics));
            assert_eq!(metrics.files_opened, 1, "{filter}: {metrics:?}");
        }
    }
}

/// Filters on the string values of a dedicated column skip the row groups whose dictionary
/// page lists none of the filter's values (and those whose chunk holds only nulls), values
/// that min/max statistics cannot rule out: five files, four with routes of their own
/// between `/a` and `/z`, one without the attribute.
#[tokio::test]
async fn dedicated_string_filters_skip_row_groups_by_their_dictionaries() {
    let lake = TraceLake::create("memory:///dictionary-pruning")
        .await
        .unwrap();
    assert!(
        lake.table()
            .dedicated_columns()
            .columns()
            .iter()
            .any(|d| d.key == "http.route"),
        "http.route is a default dedicated column"
    );
    let routes = [["/a", "/m1"], ["/m2", "/z"], ["/a", "/z"], ["/m3", "/z"]];
    for (commit, pair) in routes.iter().enumerate() {
        let mut spans = common::spans(200 + commit as u64, 100);
        for (i, span) in spans.iter_mut().enumerate() {
            span.attributes.retain(|(k, _)| k != "http.route");
            span.attributes.push((
                "http.route".into(),
                tracelake::AttributeValue::String(pair[i % 2].into()),
            ));
        }
        lake.append_spans(&spans).await.unwrap();
    }
    let mut bare = common::spans(300, 100);
    for span in &mut bare {
        span.attributes.retain(|(k, _)| k != "http.route");
    }
    lake.append_spans(&bare).await.unwrap();
    let ctx = lake.session_context().unwrap();
    for (filter, expected_rows, pruned) in [
        // Inside every file's min/max (`/a`..`/z`), in one dictionary.
        ("attr_str(attributes, 'http.route') = '/m2'", 250, 4),
        ("attributes['http.route']['string_value'] = '/m2'", 250, 4),
        (
            "attr_str(attributes, 'http.route') IN ('/m1', '/m3')",
            500,
            3,
        ),
        (
            "attr_str(attributes, 'http.route') = '/m1' OR attr_str(attributes, 'http.route') = '/m2'",
            500,
            3,
        ),
        ("attr_str(attributes, 'http.route') = '/m'", 0, 5),
        ("attr_str(attributes, 'http.route') = '/a'", 500, 3),
        // Not a value condition: only the file without the attribute is skipped (its key
        // bloom), the rows decide the rest.
        ("attr_str(attributes, 'http.route') LIKE '/m%'", 750, 1),
    ] {
        let sql = format!("SELECT count(*) FROM spans WHERE {filter}");
        let (batches, metrics) = run(&ctx, &sql).await;
        let count = batches[0].column(0).as_primitive::<Int64Type>().value(0);
        assert_eq!(count, expected_rows, "{filter}");
        assert_eq!(
            metrics.row_groups_pruned_attributes, pruned,
            "{filter}: {metrics:?}"
        );
        assert_eq!(metrics.files_opened, 5 - pruned, "{filter}: {metrics:?}");
    }
}

/// The footer of a small file (one commit of 500 spans, one row group), as held for lookups
/// (decoded, with its page index and `trace_id` bloom filter): ~118 KB with the nested
/// attribute layout (78 leaves, statistics on every leaf), 66 KB with the lean one (54
/// leaves, no statistics on attribute leaves), 39 KB with the schema descriptor shared
/// between files and what nothing reads dropped (key-value metadata, single-page column
/// indexes, size statistics): the search issue's goal is 40 KB.
#[tokio::test]
async fn a_small_files_footer_stays_lean() {
    let lake = TraceLake::create("memory:///small-footer").await.unwrap();
    let spans = traces(5, TraceShape::Fixed(5), 100, DAY0, 1_000_000_000);
    lake.append_spans(&spans).await.unwrap();
    let ctx = lake.session_context().unwrap();
    common::count(&ctx, "SELECT count(*) FROM spans WHERE duration_ns >= 0").await;
    let held = lake.table().footer_memory();
    eprintln!("footer of a 500-span file: {held} bytes");
    assert!(held > 0 && held <= 40 * 1024, "{held} bytes");
}

/// The span ids a query's rows name, sorted.
async fn span_ids(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut ids: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let column =
                arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            column
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    ids
}

/// The physical plan of `sql`, indented.
async fn plan_text(ctx: &SessionContext, sql: &str) -> String {
    let plan = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string()
}

/// Filters on dedicated attributes give the answers the attribute maps give, in files
/// written with the default list, with another list and with none (the list changed between
/// commits), including a value of another type under a dedicated key; a query reads the
/// dedicated column where a file holds it, and fewer bytes than from the maps.
#[tokio::test]
async fn dedicated_columns_answer_as_the_maps_do_whatever_list_wrote_the_files() {
    use tracelake::dedicated::DedicatedColumns;
    let lake = TraceLake::create("memory:///dedicated-columns")
        .await
        .unwrap();
    assert_eq!(
        lake.table().dedicated_columns(),
        DedicatedColumns::defaults()
    );
    let mut all = Vec::new();
    for commit in 0..3u64 {
        let mut spans = traces(
            400 + commit,
            TraceShape::Realistic,
            60,
            common::DAY0 + commit as i64 * 60_000_000_000,
            50_000_000_000,
        );
        // A value of another type under a dedicated key, first in its map.
        let odd = spans
            .iter_mut()
            .find(|s| s.attributes.iter().all(|(k, _)| k != "http.route"))
            .unwrap();
        odd.attributes
            .insert(0, ("http.route".into(), tracelake::AttributeValue::Int(5)));
        match commit {
            1 => {
                let list = DedicatedColumns::parse("span.http.route,span.db.system").unwrap();
                lake.table().set_dedicated_columns(&list).await.unwrap();
                assert_eq!(lake.table().dedicated_columns(), list);
            }
            2 => {
                lake.table()
                    .set_dedicated_columns(&DedicatedColumns::none())
                    .await
                    .unwrap();
            }
            _ => {}
        }
        lake.append_spans(&spans).await.unwrap();
        all.extend(spans);
    }
    // The same spans in memory, in the SQL types, read by DataFusion alone.
    let reference = SessionContext::new();
    for udf in tracelake::functions::udfs::all() {
        reference.register_udf(udf);
    }
    let batch = tracelake::span::spans_to_batch(&all).unwrap();
    let memory =
        datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
    reference
        .register_table("spans", std::sync::Arc::new(memory))
        .unwrap();
    let route: String = {
        let batches = reference
            .sql(
                "SELECT attr_str(attributes, 'http.route') FROM spans \
                 WHERE attr_str(attributes, 'http.route') IS NOT NULL LIMIT 1",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches[0].column(0).as_string::<i32>().value(0).to_string()
    };
    let ctx = lake.session_context().unwrap();
    let frontend = all
        .iter()
        .find(|s| s.attributes.iter().any(|(k, _)| k == "http.route"))
        .unwrap();
    let (trace, other_trace) = (&frontend.trace_id, &all[0].trace_id);
    for filter in [
        // A lookup by id with an attribute filter (read from the maps).
        format!("trace_id = '{trace}' AND attr_str(attributes, 'http.route') IS NOT NULL"),
        format!(
            "trace_id IN ('{trace}', '{other_trace}') AND attr_int(attributes, 'http.response.status_code') > 0"
        ),
        format!("attr_str(attributes, 'http.route') = '{route}'"),
        format!("attributes['http.route']['string_value'] = '{route}'"),
        "attr_int(attributes, 'http.response.status_code') >= 500".to_string(),
        format!("attr_str(attributes, 'http.route') IN ('{route}', '/nowhere')"),
        "attr_str(attributes, 'http.route') LIKE '/%'".to_string(),
        "attr_str(attributes, 'http.route') IS NOT NULL AND service_name = 'frontend'".into(),
        format!("attr_str(attributes, 'http.route') = '{route}' OR name = 'redis GET'"),
        "attr_str(resource_attributes, 'host.name') IS NOT NULL".into(),
        "attr_str(attributes, 'db.system') = 'postgres' AND start_time >= '2024-05-01T00:01:30Z'"
            .into(),
        "attr_int(attributes, 'http.route') = 5".into(),
        "attr_str(attributes, 'http.route') IS NULL".into(),
        format!("NOT (attr_str(attributes, 'http.route') = '{route}')"),
        "attr_double(attributes, 'http.response.status_code') > 499.5".into(),
    ] {
        let sql = format!("SELECT span_id FROM spans WHERE {filter}");
        let expected = span_ids(&reference, &sql).await;
        assert!(!expected.is_empty(), "{filter}: no rows to compare");
        assert_eq!(span_ids(&ctx, &sql).await, expected, "{filter}");
        let count = format!("SELECT count(*) FROM spans WHERE {filter}");
        assert_eq!(
            common::count(&ctx, &count).await as usize,
            expected.len(),
            "{filter}"
        );
    }
    // The first two commits' files read the dedicated column, the last one's the map.
    let plan = plan_text(
        &ctx,
        &format!("SELECT count(*) FROM spans WHERE attr_str(attributes, 'http.route') = '{route}'"),
    )
    .await;
    assert!(plan.contains("__dedicated_span_http_route"), "{plan}");
    assert!(plan.contains("attr_str(attributes"), "{plan}");
    // The dedicated column's filter is applied once, by the parquet row filter: no filter
    // above the scan evaluates it again (pushed into the scan, it would be a second conjunct
    // of the row filter).
    for line in plan.lines() {
        if line.contains("__dedicated_span_http_route") {
            assert!(line.contains("DataSourceExec"), "{line}\n{plan}");
            let predicate = line.split("pruning_predicate=").next().unwrap();
            assert_eq!(
                predicate.matches("__dedicated_span_http_route@").count(),
                1,
                "{line}"
            );
        }
    }

    // Fewer bytes read than from the maps: the same spans in a table without dedicated
    // columns.
    let options = tracelake::TableOptions {
        dedicated_columns: DedicatedColumns::none(),
        ..Default::default()
    };
    let plain = TraceLake::create_with_options("memory:///dedicated-columns-none", &options)
        .await
        .unwrap();
    let dedicated = TraceLake::create("memory:///dedicated-columns-all")
        .await
        .unwrap();
    plain.append_spans(&all).await.unwrap();
    dedicated.append_spans(&all).await.unwrap();
    let sql =
        format!("SELECT count(*) FROM spans WHERE attr_str(attributes, 'http.route') = '{route}'");
    let (a, from_maps) = run(&plain.session_context().unwrap(), &sql).await;
    let (b, from_column) = run(&dedicated.session_context().unwrap(), &sql).await;
    assert_eq!(
        a[0].column(0).as_primitive::<Int64Type>().value(0),
        b[0].column(0).as_primitive::<Int64Type>().value(0)
    );
    eprintln!(
        "bytes scanned: {} from the dedicated column, {} from the maps",
        from_column.bytes_scanned, from_maps.bytes_scanned
    );
    assert!(
        from_column.bytes_scanned * 4 < from_maps.bytes_scanned,
        "{} bytes from the dedicated column, {} from the maps",
        from_column.bytes_scanned,
        from_maps.bytes_scanned
    );
}
