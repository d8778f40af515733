//! The `tracelake` binary: a demo on a local table, and SQL against any trace table.
//!
//! ```text
//! tracelake demo [--table PATH] [--traces N]
//! tracelake sql  [--table PATH] [--format table|csv|json] "SQL"
//! ```

use std::process::ExitCode;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tracelake::synth::{TraceGenerator, TraceShape};
use tracelake::{TraceLake, TraceLakeError};

const DEFAULT_TABLE: &str = "./tracelake-data";

#[derive(Parser)]
#[command(
    name = "tracelake",
    version,
    about = "OpenTelemetry traces in Delta Lake, queried with DataFusion SQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create (or reuse) a local table, write synthetic traces, and run a few queries.
    Demo {
        /// The table location.
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// How many traces to write.
        #[arg(long, default_value_t = 2_000)]
        traces: usize,
    },
    /// Run one SQL statement against a trace table and print the result.
    Sql {
        /// The table location.
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The statement.
        sql: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

fn print_batches(batches: &[RecordBatch], format: Format) -> CliResult<()> {
    match format {
        Format::Table => println!("{}", arrow::util::pretty::pretty_format_batches(batches)?),
        Format::Csv => {
            if let Some(batch) = batches.first()
                && let Some(field) = batch
                    .schema()
                    .fields()
                    .iter()
                    .find(|f| f.data_type().is_nested())
            {
                return Err(format!(
                    "CSV cannot hold the nested column {:?}; select scalar columns or use --format json",
                    field.name()
                )
                .into());
            }
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(std::io::stdout());
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(std::io::stdout());
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}

const DEMO_QUERIES: &[(&str, &str)] = &[
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
         FROM spans WHERE parent_span_id IS NULL ORDER BY duration_ns DESC LIMIT 5",
    ),
    (
        "HTTP routes by p95 latency (typed attribute access)",
        "SELECT attributes['http.route']['string_value'] AS route, count(*) AS requests, \
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

async fn demo(table: &str, traces: usize) -> CliResult<()> {
    let lake = TraceLake::open_or_create(table).await?;
    println!(
        "tracelake demo: table {} (version {})",
        lake.table().location().url,
        lake.version()
    );
    let per_commit = 500usize;
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
    while written < traces {
        let n = per_commit.min(traces - written);
        let spans: Vec<_> = (written..written + n)
            .flat_map(|i| generator.trace(base + step * i as i64))
            .collect();
        let outcome = lake.append_spans(&spans).await?;
        spans_total += outcome.rows;
        written += n;
        bar.set_position(written as u64);
        bar.set_message(format!("{spans_total} spans, version {}", outcome.version));
    }
    bar.finish();
    println!(
        "wrote {traces} traces ({spans_total} spans) in {:.2?}\n",
        started.elapsed()
    );

    let ctx = lake.session_context()?;
    for (title, sql) in DEMO_QUERIES {
        println!("-- {title}\n{sql}");
        let batches = ctx.sql(sql).await?.collect().await?;
        print_batches(&batches, Format::Table)?;
        println!();
    }
    Ok(())
}

async fn sql(table: &str, statement: &str, format: Format) -> CliResult<()> {
    let lake = TraceLake::open(table).await?;
    let ctx = lake.session_context()?;
    let batches = ctx.sql(statement).await?.collect().await?;
    print_batches(&batches, format)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { table, traces } => demo(&table, traces).await,
        Command::Sql {
            table,
            format,
            sql: statement,
        } => sql(&table, &statement, format).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<TraceLakeError>() {
                Some(TraceLakeError::NotATraceTable { .. }) => {
                    eprintln!("error: {e}\nhint: `tracelake demo --table PATH` creates a table")
                }
                _ => eprintln!("error: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}
