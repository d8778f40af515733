//! Where the time of a lookup and of an append goes, phase by phase (the figures quoted in
//! docs/architecture.md and docs/benchmarks.md).
//!
//! ```text
//! cargo run --profile bench --example phases -- lookup [SPANS] [optimized]   # default 1,000,000
//! cargo run --profile bench --example phases -- ingest
//! cargo run --profile bench --example phases -- commits [N] [SPANS]   # default 300 x 800
//! cargo run --profile bench --example phases -- scale [SPANS] [COMMITS]   # default 1M in 24
//! cargo run --profile bench --example phases -- hot   # the Tier 0 hot query, planning and execution
//! cargo run --profile bench --example phases -- layout   # the leaner attribute layout, measured
//! cargo run --profile bench --example phases -- open [SPANS] [COMMITS] [N]   # N opens (default 50)
//! ```
//!
//! `lookup` opens the bench fixture of SPANS spans in 24 commits (built under
//! target/bench-fixtures/ if missing) and prints, for four lookups, the p50 of
//! SQL planning, physical planning and execution. `ingest` appends 1M spans in 10 batches and
//! prints the p50 of validation, of the commit-wide sort, of parquet's `ArrowWriter` with
//! tracelake's writer properties on the sorted batches, and of the whole `append_batches`.

#[path = "../benches/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use tracelake::__internals::{self as ingest, writer_properties};
use tracelake::TraceLake;

const SAMPLES: usize = 300;

/// A labelled query over one trace id.
type Lookup = (&'static str, fn(&str) -> String);

fn p50_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn lookup(spans: usize, optimized: bool) {
    let rt = support::runtime();
    rt.block_on(async {
        let fixture = support::fixture(spans, 24).await;
        // `optimized`: a copy of the fixture, compacted by `optimize`.
        let copy = tempfile::tempdir().expect("temp dir");
        let path = if optimized {
            let path = copy.path().join("spans");
            support::copy_dir(&fixture.path, &path);
            let lake = TraceLake::open(path.to_str().expect("utf-8 path"))
                .await
                .expect("open copy");
            let outcome = lake.table().optimize().await.expect("optimize");
            println!(
                "optimized: {} files removed, {} added",
                outcome.files_removed, outcome.files_added
            );
            path
        } else {
            fixture.path.clone()
        };
        let lake = TraceLake::open(path.to_str().expect("utf-8 path"))
            .await
            .expect("open fixture");
        let ctx = lake.session_context().expect("context");
        let queries: [Lookup; 4] = [
            ("trace_tree *", |id| {
                format!("SELECT * FROM trace_tree('{id}')")
            }),
            ("spans *", |id| {
                format!("SELECT * FROM spans WHERE trace_id = '{id}'")
            }),
            ("spans span_id", |id| {
                format!("SELECT span_id FROM spans WHERE trace_id = '{id}'")
            }),
            ("trace_tree 3 cols", |id| {
                format!("SELECT span_id, depth, name FROM trace_tree('{id}')")
            }),
        ];
        println!(
            "{spans} spans, 24 commits, p50 of up to {SAMPLES} lookups with fresh ids, then of \
             the same ids again (from the decoded cache of lookup rows) (ms):"
        );
        // Each query gets its own ids, so that its first pass finds none of their pages in
        // the object cache.
        let per_query = SAMPLES.min(fixture.sample_ids.len() / queries.len());
        for (q, ((label, sql), pass)) in queries
            .iter()
            .flat_map(|q| [(q, "fresh"), (q, "repeated")])
            .enumerate()
        {
            let label = format!("{label} ({pass})");
            let ids = &fixture.sample_ids[q / 2 * per_query..(q / 2 + 1) * per_query];
            let (mut logical, mut physical, mut execution) = (vec![], vec![], vec![]);
            for id in ids {
                let sql = sql(id);
                let t0 = Instant::now();
                let df = ctx.sql(&sql).await.expect("plan");
                let t1 = Instant::now();
                let plan = df.create_physical_plan().await.expect("physical plan");
                let t2 = Instant::now();
                let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
                    .await
                    .expect("execute");
                let t3 = Instant::now();
                assert!(batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
                logical.push(t1 - t0);
                physical.push(t2 - t1);
                execution.push(t3 - t2);
            }
            let total: Vec<Duration> = logical
                .iter()
                .zip(&physical)
                .zip(&execution)
                .map(|((l, p), e)| *l + *p + *e)
                .collect();
            println!(
                "  {label:29} sql {:.3}  physical {:.3}  execution {:.3}  total {:.3}",
                p50_ms(logical),
                p50_ms(physical),
                p50_ms(execution),
                p50_ms(total)
            );
        }
    });
}

/// The time of `SELECT * ... WHERE trace_id = X` for each of `ids` (each must find spans).
async fn timed_lookups<'a>(
    ctx: &datafusion::prelude::SessionContext,
    ids: impl Iterator<Item = &'a String>,
) -> Vec<Duration> {
    let mut timings = Vec::new();
    for id in ids {
        let t = Instant::now();
        support::lookup_rows(ctx, id).await;
        timings.push(t.elapsed());
    }
    timings
}

/// Opening and looking up a table of SPANS spans written in COMMITS commits (one file each):
/// open time, memory added by the open, the first lookups (footers not read yet) and warm
/// lookups with fresh ids.
fn scale(spans: usize, commits: usize) {
    let rt = support::runtime();
    rt.block_on(async {
        let fixture = support::fixture(spans, commits).await;
        let path = fixture.path.to_str().expect("utf-8 path").to_string();
        let mut opens = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let lake = TraceLake::open(&path).await.expect("open");
            opens.push(t.elapsed());
            drop(lake);
        }
        let before = support::resident_bytes();
        let lake = TraceLake::open(&path).await.expect("open");
        let after_open = support::resident_bytes();
        let ctx = lake.session_context().expect("context");
        let ids = &fixture.sample_ids;
        let first = timed_lookups(&ctx, ids.iter().take(5)).await;
        let warm = timed_lookups(&ctx, ids.iter().skip(5).take(SAMPLES)).await;
        let after_lookups = support::resident_bytes();
        println!(
            "{spans} spans in {commits} commits: open p50 {:.1} ms, +{:.1} MB at open; first lookups p50 {:.2} ms (max {:.1}); fresh-id lookups p50 {:.3} ms; +{:.1} MB after lookups, footers held {:.1} MB",
            p50_ms(opens),
            (after_open.saturating_sub(before)) as f64 / 1e6,
            p50_ms(first.clone()),
            first.iter().max().map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
            p50_ms(warm),
            (after_lookups.saturating_sub(before)) as f64 / 1e6,
            lake.table().footer_memory() as f64 / 1e6,
        );
    });
}

/// The Tier 0 hot query (an aggregate over every file of the 100k fixture), p50 of 200 runs.
fn hot() {
    let rt = support::runtime();
    rt.block_on(async {
        let fixture = support::fixture(100_000, 24).await;
        let lake = TraceLake::open(fixture.path.to_str().expect("utf-8 path"))
            .await
            .expect("open");
        let ctx = lake.session_context().expect("context");
        let sql = support::HOT_SQL;
        let (mut planning, mut execution) = (vec![], vec![]);
        for _ in 0..200 {
            let t0 = Instant::now();
            let plan = ctx
                .sql(sql)
                .await
                .expect("plan")
                .create_physical_plan()
                .await
                .expect("physical");
            let t1 = Instant::now();
            datafusion::physical_plan::collect(plan, ctx.task_ctx())
                .await
                .expect("run");
            planning.push(t1 - t0);
            execution.push(t1.elapsed());
        }
        println!(
            "hot query: planning p50 {:.3} ms, execution p50 {:.3} ms",
            p50_ms(planning),
            p50_ms(execution)
        );
    });
}

fn ingest_phases() {
    let rt = support::runtime();
    let batches = support::ingest_batches();
    let (mut validate, mut sort, mut write, mut append) = (vec![], vec![], vec![], vec![]);
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("temp dir");
        let t0 = Instant::now();
        let mut storage = Vec::new();
        let mut rows = 0;
        for batch in &batches {
            storage.push(ingest::to_storage(batch, rows).expect("valid"));
            rows += batch.num_rows();
        }
        let t1 = Instant::now();
        let sorted = ingest::sort_for_storage(&storage).expect("sort");
        let t2 = Instant::now();
        let file = std::fs::File::create(dir.path().join("direct.parquet")).expect("file");
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            file,
            sorted[0].schema(),
            Some(writer_properties()),
        )
        .expect("writer");
        for batch in &sorted {
            writer.write(batch).expect("write");
        }
        writer.close().expect("close");
        let t3 = Instant::now();
        let lake = rt
            .block_on(TraceLake::create(
                dir.path().join("t").to_str().expect("utf-8"),
            ))
            .expect("create");
        let t4 = Instant::now();
        rt.block_on(lake.append_batches(&batches)).expect("append");
        append.push(t4.elapsed());
        validate.push(t1 - t0);
        sort.push(t2 - t1);
        write.push(t3 - t2);
    }
    println!("1M spans in 10 batches, p50 of 3 (ms):");
    println!("  validation and conversion        {:.0}", p50_ms(validate));
    println!("  commit-wide sort                 {:.0}", p50_ms(sort));
    println!("  ArrowWriter, tracelake props     {:.0}", p50_ms(write));
    println!("  append_batches (all of it)       {:.0}", p50_ms(append));
}

/// Wall time of each named span (summed by name), from creation to close.
#[derive(Clone, Default)]
struct SpanTimes(
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, (Duration, u64)>>>,
);

struct Started(Instant);

impl<S> tracing_subscriber::Layer<S> for SpanTimes
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Started(Instant::now()));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(started) = span.extensions().get::<Started>()
        {
            let mut times = self.0.lock().expect("span times");
            let entry = times.entry(span.name().to_string()).or_default();
            entry.0 += started.0.elapsed();
            entry.1 += 1;
        }
    }
}

/// `n` commits of `spans` realistic spans each, one after another, on a local table: the mean
/// time of a commit and of each span inside it.
fn commit_phases(n: usize, spans: usize) {
    use tracing_subscriber::layer::SubscriberExt;
    let times = SpanTimes::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(times.clone()))
        .expect("subscriber");
    let rt = support::runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut generator =
        tracelake::synth::TraceGenerator::new(7, tracelake::synth::TraceShape::Realistic);
    let mut t = support::DAY0;
    let batches: Vec<_> = (0..n)
        .map(|_| {
            let mut chunk = Vec::new();
            while chunk.len() < spans {
                chunk.extend(generator.trace(t));
                t += 1_000_000;
            }
            chunk.truncate(spans);
            tracelake::span::spans_to_batch(&chunk).expect("batch")
        })
        .collect();
    let lake = rt
        .block_on(TraceLake::create(
            dir.path().join("t").to_str().expect("utf-8"),
        ))
        .expect("create");
    times.0.lock().expect("times").clear();
    let started = Instant::now();
    let mut each = Vec::new();
    for batch in &batches {
        let t0 = Instant::now();
        rt.block_on(lake.append_batches(std::slice::from_ref(batch)))
            .expect("append");
        each.push(t0.elapsed());
    }
    let total = started.elapsed();
    rt.block_on(lake.wait_for_background_work());
    let mut sorted = each.clone();
    sorted.sort();
    println!(
        "{n} commits of {spans} spans: {:.0} spans/s; per commit p50 {:.2} ms, first 10 {:.2} ms, last 10 {:.2} ms",
        (n * spans) as f64 / total.as_secs_f64(),
        sorted[n / 2].as_secs_f64() * 1e3,
        each[..10.min(n)].iter().sum::<Duration>().as_secs_f64() * 1e3 / 10f64.min(n as f64),
        each[n.saturating_sub(10)..]
            .iter()
            .sum::<Duration>()
            .as_secs_f64()
            * 1e3
            / 10f64.min(n as f64),
    );
    println!("mean wall time per span, over the commits (ms):");
    for (name, (time, count)) in times.0.lock().expect("times").iter() {
        if name.starts_with("delta.") || name == "update_incremental" {
            println!(
                "  {name:28} {:8.3}  ({count} spans)",
                time.as_secs_f64() * 1e3 / n as f64
            );
        }
    }
}

/// Opens the fixture of SPANS spans in COMMITS commits `n` times: the p50 of the whole open
/// and of its `delta.table.load` span (deltalake's load of the log; the rest builds
/// tracelake's file slots).
fn open_phases(spans: usize, commits: usize, n: usize) {
    use tracing_subscriber::layer::SubscriberExt;
    let times = SpanTimes::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(times.clone()))
        .expect("subscriber");
    let rt = support::runtime();
    let fixture = rt.block_on(support::fixture(spans, commits));
    let path = fixture.path.to_str().expect("utf-8 path").to_string();
    times.0.lock().expect("times").clear();
    let mut opens = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let lake = rt.block_on(TraceLake::open(&path)).expect("open");
        opens.push(t.elapsed());
        drop(lake);
    }
    let load = times
        .0
        .lock()
        .expect("times")
        .get(tracelake::observe::names::DELTA_TABLE_LOAD)
        .map(|(time, count)| time.as_secs_f64() * 1e3 / (*count).max(1) as f64)
        .unwrap_or_default();
    println!(
        "{spans} spans in {commits} commits: open p50 {:.1} ms; delta.table.load mean {load:.1} ms",
        p50_ms(opens)
    );
}

/// The next argument as a number, or `default`.
fn number(args: &mut impl Iterator<Item = String>, name: &str, default: usize) -> usize {
    args.next()
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or(default)
}

/// An attribute map as `map<key, struct<type, value>>`, `value` the text of the typed value
/// (arrays and bytes rendered as text): the leaner layout `layout` measures.
fn lean_map(map: &arrow::array::MapArray) -> arrow::array::MapArray {
    use arrow::array::{Array, AsArray, StringBuilder, StructArray};
    use arrow::datatypes::{DataType, Field, Fields, Float64Type, Int64Type};
    use std::sync::Arc;
    let entries = map.entries();
    let values = entries.column(1).as_struct();
    let types = values.column(0).as_string::<i32>();
    let strings = values.column(1).as_string::<i32>();
    let ints = values.column(2).as_primitive::<Int64Type>();
    let doubles = values.column(3).as_primitive::<Float64Type>();
    let bools = values.column(4).as_boolean();
    let bytes = values.column(5).as_binary::<i32>();
    let arrays = values.column(6);
    let mut text = StringBuilder::new();
    for i in 0..values.len() {
        if values.is_null(i) {
            text.append_null();
        } else if strings.is_valid(i) {
            text.append_value(strings.value(i));
        } else if ints.is_valid(i) {
            text.append_value(ints.value(i).to_string());
        } else if doubles.is_valid(i) {
            text.append_value(doubles.value(i).to_string());
        } else if bools.is_valid(i) {
            text.append_value(bools.value(i).to_string());
        } else if bytes.is_valid(i) {
            text.append_value(format!("{:02x?}", bytes.value(i)));
        } else if arrays.is_valid(i) {
            text.append_value(format!("{:?}", arrays.as_list::<i32>().value(i)));
        } else {
            text.append_null();
        }
    }
    let value_fields = Fields::from(vec![
        Field::new("type", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
    ]);
    let value = StructArray::new(
        value_fields.clone(),
        vec![Arc::new(types.clone()), Arc::new(text.finish())],
        values.nulls().cloned(),
    );
    let entry_fields = Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Struct(value_fields), true),
    ]);
    let entries = StructArray::new(
        entry_fields.clone(),
        vec![entries.column(0).clone(), Arc::new(value)],
        None,
    );
    arrow::array::MapArray::new(
        Arc::new(Field::new(
            "key_value",
            DataType::Struct(entry_fields),
            false,
        )),
        map.offsets().clone(),
        entries,
        map.nulls().cloned(),
        false,
    )
}

/// `batch` with every attribute map (top level, and inside events and links) in the lean
/// layout of [`lean_map`].
fn lean_batch(batch: &arrow::array::RecordBatch) -> arrow::array::RecordBatch {
    use arrow::array::{Array, ArrayRef, AsArray, ListArray, StructArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    fn lean(column: &ArrayRef) -> ArrayRef {
        match column.data_type() {
            DataType::Map(..) => Arc::new(lean_map(column.as_map())),
            DataType::List(_) => {
                let list = column.as_list::<i32>();
                let items = lean(list.values());
                let field = Arc::new(Field::new("element", items.data_type().clone(), true));
                Arc::new(ListArray::new(
                    field,
                    list.offsets().clone(),
                    items,
                    list.nulls().cloned(),
                ))
            }
            DataType::Struct(fields) => {
                let s = column.as_struct();
                let children: Vec<ArrayRef> = s.columns().iter().map(lean).collect();
                let fields: Vec<Field> = fields
                    .iter()
                    .zip(&children)
                    .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
                    .collect();
                Arc::new(StructArray::new(
                    fields.into(),
                    children,
                    s.nulls().cloned(),
                ))
            }
            _ => column.clone(),
        }
    }
    let columns: Vec<ArrayRef> = batch.columns().iter().map(lean).collect();
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
        .collect();
    arrow::array::RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("lean batch")
}

/// The leaner attribute layout, measured before building it. The 1M spans of `ingest`,
/// sorted as one commit, are written with tracelake's writer properties to memory as they
/// are stored now and with every attribute map as [`lean_map`]; then the rows of 240 traces
/// are read from each file as `LookupExec` reads them (the trace's row group, the pages of its
/// rows from the page index, a row filter on `trace_id`, every column).
fn layout() {
    use arrow::array::AsArray;
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::{
        ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
        RowFilter, RowSelection, RowSelector,
    };
    let batches = support::ingest_batches();
    let mut storage = Vec::new();
    let mut rows = 0;
    for batch in &batches {
        storage.push(ingest::to_storage(batch, rows).expect("valid"));
        rows += batch.num_rows();
    }
    let sorted = ingest::sort_for_storage(&storage).expect("sort");
    drop(storage);
    let t = Instant::now();
    let lean: Vec<_> = sorted.iter().map(lean_batch).collect();
    let conversion = t.elapsed();
    let all = arrow::compute::concat_batches(&sorted[0].schema(), &sorted).expect("concat");
    let trace_ids = all
        .column_by_name("trace_id")
        .expect("trace_id")
        .as_string::<i32>()
        .clone();
    let rows_total = all.num_rows();
    drop(all);
    println!(
        "1M spans, one sorted commit; lean conversion {:.0} ms",
        conversion.as_secs_f64() * 1e3
    );
    let no_dictionary = writer_properties()
        .into_builder()
        .set_dictionary_enabled(false)
        .build();
    let small_dictionary = writer_properties()
        .into_builder()
        .set_dictionary_page_size_limit(16 * 1024)
        .build();
    for (label, data, properties) in [
        ("stored now", &sorted, writer_properties()),
        ("no dictionary", &sorted, no_dictionary),
        ("dict <= 16 KiB", &sorted, small_dictionary),
        ("lean attributes", &lean, writer_properties()),
    ] {
        let mut writes = Vec::new();
        let mut file = Vec::new();
        for _ in 0..3 {
            file = Vec::new();
            let t = Instant::now();
            let mut writer = parquet::arrow::ArrowWriter::try_new(
                &mut file,
                data[0].schema(),
                Some(properties.clone()),
            )
            .expect("writer");
            for batch in data.iter() {
                writer.write(batch).expect("write");
            }
            writer.close().expect("close");
            writes.push(t.elapsed());
        }
        let file = bytes::Bytes::from(file);
        let metadata = ArrowReaderMetadata::load(
            &file,
            ArrowReaderOptions::new()
                .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
        )
        .expect("metadata");
        let parquet = metadata.metadata().clone();
        let leaves = parquet.file_metadata().schema_descr().num_columns();
        let trace_leaf = (0..leaves)
            .find(|&i| parquet.file_metadata().schema_descr().column(i).name() == "trace_id")
            .expect("trace_id leaf");
        let trace_root = parquet
            .file_metadata()
            .schema_descr()
            .get_column_root_idx(trace_leaf);
        let mut reads = Vec::new();
        for k in 0..240 {
            let row = (k * 4_099 + 17) % rows_total;
            let id = trace_ids.value(row).to_string();
            // The row group holding `row`, and the pages of that group holding the id's rows.
            let (mut rg, mut first) = (0, 0usize);
            while first + parquet.row_group(rg).num_rows() as usize <= row {
                first += parquet.row_group(rg).num_rows() as usize;
                rg += 1;
            }
            let group_rows = parquet.row_group(rg).num_rows() as usize;
            let pages =
                &parquet.offset_index().expect("offset index")[rg][trace_leaf].page_locations;
            // The id's rows in the group (sorted by trace id: one range).
            let lo = (0..group_rows)
                .find(|&r| trace_ids.value(first + r) == id)
                .unwrap_or(0);
            let hi = (lo..group_rows)
                .take_while(|&r| trace_ids.value(first + r) == id)
                .last()
                .unwrap_or(lo);
            let mut selectors = Vec::new();
            for (p, page) in pages.iter().enumerate() {
                let start = page.first_row_index as usize;
                let end = pages
                    .get(p + 1)
                    .map_or(group_rows, |n| n.first_row_index as usize);
                selectors.push(if start <= hi && lo < end {
                    RowSelector::select(end - start)
                } else {
                    RowSelector::skip(end - start)
                });
            }
            let descr = parquet.file_metadata().schema_descr_ptr();
            let wanted = id.clone();
            let t = Instant::now();
            let predicate = ArrowPredicateFn::new(
                ProjectionMask::roots(&descr, [trace_root]),
                move |batch: arrow::array::RecordBatch| {
                    let ids = batch.column(0).as_string::<i32>();
                    Ok(ids
                        .iter()
                        .map(|v| Some(v == Some(wanted.as_str())))
                        .collect())
                },
            );
            let reader =
                ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), metadata.clone())
                    .with_row_groups(vec![rg])
                    .with_row_selection(RowSelection::from(selectors))
                    .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
                    .build()
                    .expect("reader");
            let mut n = 0;
            for batch in reader {
                n += batch.expect("batch").num_rows();
            }
            reads.push(t.elapsed());
            assert!(n > 0, "trace {id} not found");
        }
        println!(
            "  {label:16} {leaves} leaves, {:.1} MB, write p50 {:.0} ms, read of one trace p50 {:.3} ms",
            file.len() as f64 / 1e6,
            p50_ms(writes),
            p50_ms(reads)
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("ingest") => ingest_phases(),
        Some("hot") => hot(),
        Some("layout") => layout(),
        Some("open") => {
            let spans = number(&mut args, "SPANS", 1_000_000);
            let commits = number(&mut args, "COMMITS", 24);
            let n = number(&mut args, "N", 50);
            open_phases(spans, commits, n)
        }
        Some("scale") => {
            let spans = number(&mut args, "SPANS", 1_000_000);
            let commits = number(&mut args, "COMMITS", 24);
            scale(spans, commits)
        }
        Some("commits") => {
            let n = number(&mut args, "N", 300);
            let spans = number(&mut args, "SPANS", 800);
            commit_phases(n, spans)
        }
        Some("lookup") | None => {
            let spans = number(&mut args, "SPANS", 1_000_000);
            lookup(spans, args.next().as_deref() == Some("optimized"))
        }
        Some(other) => {
            eprintln!(
                "unknown mode {other:?}: use `lookup [SPANS]`, `ingest` or `commits [N] [SPANS]`"
            );
            std::process::exit(2);
        }
    }
}
