//! `tracelake demo`: realistic synthetic traces written to a table, a few queries, one trace
//! shown as a tree with `trace_tree`, and the commands to try next.

use std::io::Write;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use indicatif::{ProgressBar, ProgressStyle};
use tracelake::observe;
use tracelake::synth::{TraceGenerator, TraceShape};
use tracelake::{TableOptions, TraceLake};

use super::{CliResult, Format, print_batches};

/// Traces generated and appended per commit.
const TRACES_PER_COMMIT: usize = 5_000;

const QUERIES: &[(&str, &str)] = &[
    (
        "Spans and errors per service",
        "SELECT service_name, count(*) AS spans, \
                sum(CASE WHEN status_code = 'ERROR' THEN 1 ELSE 0 END) AS errors, \
                round(avg(duration_ns) / 1e6, 2) AS avg_ms \
         FROM spans GROUP BY service_name ORDER BY spans DESC",
    ),
    (
        "The five slowest requests (root spans)",
        "SELECT trace_id, name, round(duration_ns / 1e6, 1) AS ms, start_time \
         FROM spans WHERE parent_span_id IS NULL ORDER BY duration_ns DESC, trace_id LIMIT 5",
    ),
    (
        "HTTP routes by p95 latency (typed attribute access)",
        "SELECT attr_str(attributes, 'http.route') AS route, count(*) AS requests, \
                round(approx_percentile_cont(duration_ns, 0.95) / 1e6, 1) AS p95_ms \
         FROM spans WHERE service_name = 'frontend' AND kind = 'SERVER' \
         GROUP BY 1 ORDER BY p95_ms DESC",
    ),
    (
        "Exceptions recorded as span events",
        "SELECT service_name, count(*) AS exceptions FROM \
           (SELECT service_name, unnest(events) AS e FROM spans) \
         WHERE e['name'] = 'exception' GROUP BY 1 ORDER BY 2 DESC",
    ),
];

pub(crate) async fn run(
    out: &mut dyn Write,
    table: &str,
    traces: u64,
    options: &TableOptions,
) -> CliResult<()> {
    let traces = traces as usize;
    let lake = TraceLake::open_or_create_with_options(table, options).await?;
    writeln!(
        out,
        "tracelake demo: table {} (version {})",
        lake.table().location().url,
        lake.version()
    )?;
    let bar = ProgressBar::new(traces as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} traces, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let seed = lake.version().max(0) as u64 + 1;
    let mut generator = TraceGenerator::new(seed, TraceShape::Realistic);
    let base = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) - 3_600_000_000_000;
    let step = 3_600_000_000_000 / traces.max(1) as i64;
    let mut written = 0usize;
    let mut spans_total = 0u64;
    let (mut generating, mut appending) = (Duration::ZERO, Duration::ZERO);
    while written < traces {
        let n = TRACES_PER_COMMIT.min(traces - written);
        let t0 = Instant::now();
        let spans: Vec<_> = (written..written + n)
            .flat_map(|i| generator.trace(base + step * i as i64))
            .collect();
        let t1 = Instant::now();
        let outcome = lake.append_spans(&spans).await?;
        appending += t1.elapsed();
        generating += t1 - t0;
        spans_total += outcome.rows;
        written += n;
        bar.set_position(written as u64);
        bar.set_message(format!("{spans_total} spans, version {}", outcome.version));
    }
    bar.finish_and_clear();
    lake.wait_for_background_work().await;
    let rate = |d: Duration| spans_total as f64 / d.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "wrote {traces} traces ({spans_total} spans) in {:.2?}: generating {:.2?}, appending {:.2?} ({:.0} spans/s appended)\n",
        started.elapsed(),
        generating,
        appending,
        rate(appending)
    )?;

    let ctx = lake.session_context()?;
    for (title, sql) in QUERIES {
        writeln!(out, "-- {title}\n{sql}")?;
        let batches = observe::sql(&ctx, sql).await?.collect().await?;
        print_batches(out, &batches, Format::Table)?;
        writeln!(out)?;
    }
    show_a_trace(out, &ctx).await?;
    writeln!(
        out,
        "Next, try:\n  \
         tracelake sql --table {table} \"SELECT * FROM trace_summaries(NULL, NULL) WHERE error_count > 0 LIMIT 5\"\n  \
         tracelake sql --table {table}          # an interactive SQL shell\n  \
         tracelake serve --table {table}        # receive spans over OTLP on 127.0.0.1:4318 (HTTP) and :4317 (gRPC)\n  \
         tracelake stats --table {table}\n  \
         tracelake optimize --table {table}\n\n\
         To see the traces in a browser, run `tracelake serve --table {table}` and open \
         http://127.0.0.1:3200/ (a search page and each trace as a waterfall; Grafana's Tempo \
         data source works on the same address)."
    )?;
    Ok(())
}

/// The slowest trace with an error (or the slowest), as an indented tree.
async fn show_a_trace(
    out: &mut dyn Write,
    ctx: &datafusion::prelude::SessionContext,
) -> CliResult<()> {
    let pick = "SELECT trace_id FROM trace_summaries(NULL, NULL) \
                ORDER BY error_count > 0 DESC, span_count > 3 DESC, duration_ns DESC, trace_id LIMIT 1";
    let batches = observe::sql(ctx, pick).await?.collect().await?;
    let Some(id) = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0).as_string::<i32>().value(0).to_string())
    else {
        return Ok(());
    };
    let tree = format!(
        "SELECT depth, service_name, name, duration_ns, status_code \
         FROM trace_tree('{id}') ORDER BY span_order"
    );
    writeln!(out, "-- One trace as a tree: trace_tree('{id}')")?;
    let batches = observe::sql(ctx, &tree).await?.collect().await?;
    for batch in &batches {
        let depth = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int32Type>();
        let service = batch.column(1).as_string::<i32>();
        let name = batch.column(2).as_string::<i32>();
        let duration = batch.column(3).as_primitive::<Int64Type>();
        let status = batch.column(4).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let indent = "  ".repeat(depth.value(row).max(0) as usize);
            let flag = if status.is_valid(row) && status.value(row) == "ERROR" {
                "  ERROR"
            } else {
                ""
            };
            writeln!(
                out,
                "{indent}{} {}  {:.1} ms{flag}",
                service.value(row),
                name.value(row),
                duration.value(row) as f64 / 1e6
            )?;
        }
    }
    writeln!(out)?;
    Ok(())
}
