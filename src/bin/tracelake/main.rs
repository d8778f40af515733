//! The `tracelake` binary: a demo on a local table, SQL against any trace table (one
//! statement, a file, stdin, or an interactive shell), an OTLP server, and maintenance.
//!
//! ```text
//! tracelake create   [--table PATH] [--dedicated-columns LIST]
//! tracelake dedicated [--table PATH] [--set LIST]
//! tracelake demo     [--table PATH] [--traces N]
//! tracelake sql      [--table PATH] [--format table|csv|json] ["SQL" | -f FILE]
//! tracelake serve    [--table PATH] [--otlp-http ADDR] [--otlp-grpc ADDR] ...
//! tracelake optimize [--table PATH] [--target-file-size BYTES] [--memory-budget BYTES]
//! tracelake vacuum   [--table PATH] [--retention-hours N] [--dry-run] [--orphans]
//! tracelake expire   [--table PATH] --older-than-days N
//! tracelake stats    [--table PATH]
//! tracelake scheduler --bind ADDR
//! tracelake executor  --scheduler HOST:PORT --bind ADDR [--slots N] [--work-dir DIR]
//! tracelake sql --cluster df://HOST:PORT [--table PATH] ...
//! ```
//!
//! Every command accepts `--export-spans PATH` (every span as a JSON line), `--metrics PATH`
//! (the Prometheus text exposition at the end of the run) and `--storage-option KEY=VALUE`
//! (object-store settings such as `aws_region`; object_store's environment variables work too).

mod demo;
#[cfg(feature = "cluster")]
mod node;
mod serve;
mod shell;

/// mimalloc: `serve` decodes, converts and writes many small objects per request from several
/// threads at once, where glibc's allocator spends a third of the time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::process::ExitCode;

use arrow::record_batch::RecordBatch;
use clap::{Parser, Subcommand, ValueEnum};
use tracelake::observe::JsonLinesExporter;
use tracelake::{TableOptions, TraceLake, TraceLakeError};
use tracing_subscriber::layer::SubscriberExt;

pub(crate) const DEFAULT_TABLE: &str = "./tracelake-data";

#[derive(Parser)]
#[command(
    name = "tracelake",
    version,
    about = "OpenTelemetry traces in Delta Lake, queried with DataFusion SQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Write every span of the run to PATH, one JSON object per line.
    #[arg(long, global = true, value_name = "PATH")]
    export_spans: Option<std::path::PathBuf>,
    /// Write the Prometheus text exposition to PATH at the end of the run.
    #[arg(long, global = true, value_name = "PATH")]
    metrics: Option<std::path::PathBuf>,
    /// An object-store setting (repeatable), for example `aws_region=eu-west-1` or
    /// `aws_endpoint=http://localhost:9000`; the AWS_*, GOOGLE_* and AZURE_* environment
    /// variables are read too.
    #[arg(long = "storage-option", global = true, value_name = "KEY=VALUE", value_parser = parse_storage_option)]
    storage_options: Vec<(String, String)>,
}

fn parse_storage_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create an empty trace table (fails if a Delta table is already there).
    Create {
        /// The table location.
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// The attributes stored in dedicated columns, as `scope.key:type` entries separated
        /// by commas (`span.http.route:string,resource.host.name:string`; type string, int,
        /// double or bool); an empty list for none. Default: the OpenTelemetry semantic
        /// conventions' list (see docs/sql.md, "Dedicated attribute columns").
        #[arg(long, value_name = "LIST")]
        dedicated_columns: Option<String>,
    },
    /// Show a table's dedicated attribute columns, or set them (`--set LIST`, the format of
    /// `create --dedicated-columns`): files written afterwards hold the new list.
    Dedicated {
        /// The table location.
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// The new list (an empty string for none).
        #[arg(long, value_name = "LIST")]
        set: Option<String>,
    },
    /// Create (or reuse) a local table, write synthetic traces, and run a few queries.
    Demo {
        /// The table location.
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// How many traces to write (1 to 10,000,000).
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        traces: u64,
    },
    /// Run SQL against a trace table and print the results: the statement given, the
    /// statements of a file (`-f`), those read from stdin, or an interactive shell when
    /// stdin is a terminal.
    Sql {
        /// The table location.
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Run the statements of FILE, one after another (`-` for stdin).
        #[arg(
            short = 'f',
            long = "file",
            value_name = "FILE",
            conflicts_with = "sql"
        )]
        file: Option<std::path::PathBuf>,
        /// Run the statements on the Ballista cluster whose scheduler is at
        /// `df://HOST:PORT` (started with `tracelake scheduler`) instead of in this process.
        #[arg(long, value_name = "df://HOST:PORT")]
        cluster: Option<String>,
        /// The statement(s), separated by `;`.
        sql: Option<String>,
    },
    /// Run a Ballista scheduler that plans tracelake queries (see docs/distributed.md).
    Scheduler {
        /// The address of its gRPC service.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
        /// Serve the node's Prometheus metrics at `http://ADDR/metrics`.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Run a Ballista executor that runs tracelake query stages for a scheduler.
    Executor {
        /// The scheduler's HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// The address of its Arrow Flight service (its gRPC service takes the next port).
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: std::net::SocketAddr,
        /// Concurrent tasks (default: the machine's cores).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
        slots: Option<u64>,
        /// Where shuffle files are written (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<String>,
        /// Serve the node's Prometheus metrics at `http://ADDR/metrics`.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Receive spans over OTLP (HTTP and gRPC) into a table; answer after each commit.
    Serve(serve::ServeArgs),
    /// Compact the partitions whose files overlap in trace id (incremental).
    Optimize {
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// Size in bytes of the files written (1 MiB to 64 GiB; default: the table's
        /// `delta.targetFileSize`, else 100 MiB).
        #[arg(long)]
        target_file_size: Option<u64>,
        /// Memory the compaction may hold, in bytes (at least 16 MiB; default 256 MiB). A day
        /// with more files than one merge can read within it is merged in several passes.
        #[arg(long)]
        memory_budget: Option<u64>,
    },
    /// Delete files removed from the table more than the retention ago.
    Vacuum {
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// Keep files removed less than this many hours ago (1 to 876,000).
        #[arg(long, default_value_t = 168)]
        retention_hours: u64,
        /// List the files that would be deleted without deleting them.
        #[arg(long)]
        dry_run: bool,
        /// Also delete orphans: files in the table's directory that no version names (a
        /// killed writer's), older than the retention.
        #[arg(long)]
        orphans: bool,
    },
    /// Drop the partitions (days) older than N days.
    Expire {
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// Drop the days older than this many days (0 to 36,500).
        #[arg(long)]
        older_than_days: u64,
    },
    /// Version, files, spans, bytes, partitions, oldest and newest span.
    Stats {
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Table,
    Csv,
    Json,
}

pub(crate) type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The error of a command or flag whose part of tracelake this build left out.
#[cfg(not(all(feature = "cluster", feature = "flight-sql")))]
pub(crate) fn not_built(what: &str, feature: &str) -> Box<dyn std::error::Error> {
    format!(
        "{what} needs tracelake built with the cargo feature `{feature}` \
         (build it with `--features {feature}`, or with the default features)"
    )
    .into()
}

pub(crate) fn print_batches(
    out: &mut dyn Write,
    batches: &[RecordBatch],
    format: Format,
) -> CliResult<()> {
    match format {
        Format::Table => writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(batches)?
        )?,
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
            // Each batch is encoded to memory, then written: the CSV writer would turn an I/O
            // error (a closed pipe) into a string.
            for (i, batch) in batches.iter().enumerate() {
                let mut buffer = Vec::new();
                arrow::csv::WriterBuilder::new()
                    .with_header(i == 0)
                    .build(&mut buffer)
                    .write(batch)?;
                out.write_all(&buffer)?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}

fn nanos_to_string(ns: Option<i64>) -> String {
    ns.and_then(|ns| {
        chrono::DateTime::from_timestamp(
            ns.div_euclid(1_000_000_000),
            ns.rem_euclid(1_000_000_000) as u32,
        )
    })
    .map(|t| t.to_rfc3339())
    .unwrap_or_else(|| "-".into())
}

async fn run(out: &mut dyn Write, command: Command, options: &TableOptions) -> CliResult<()> {
    match command {
        Command::Demo { table, traces } => demo::run(out, &table, traces, options).await?,
        Command::Sql {
            table,
            format,
            file,
            cluster,
            sql,
        } => shell::run(out, &table, sql, file, format, cluster, options).await?,
        #[cfg(not(feature = "cluster"))]
        Command::Scheduler { .. } | Command::Executor { .. } => {
            return Err(not_built("tracelake scheduler and executor", "cluster"));
        }
        #[cfg(feature = "cluster")]
        Command::Scheduler { bind, metrics_addr } => {
            node::scheduler(out, bind, metrics_addr, options).await?
        }
        #[cfg(feature = "cluster")]
        Command::Executor {
            scheduler,
            bind,
            slots,
            work_dir,
            metrics_addr,
        } => {
            let (host, port) = scheduler
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| format!("--scheduler must be HOST:PORT, got {scheduler:?}"))?;
            let mut executor = tracelake::distributed::ExecutorOptions::new(host, port, bind);
            executor.slots = slots.map(|s| s as usize);
            executor.work_dir = work_dir;
            node::executor(out, &scheduler, executor, metrics_addr, options).await?
        }
        Command::Serve(args) => serve::run(out, args, options).await?,
        Command::Create {
            table,
            dedicated_columns,
        } => {
            let mut options = options.clone();
            if let Some(list) = dedicated_columns {
                options.dedicated_columns = list.parse()?;
            }
            let lake = TraceLake::create_with_options(&table, &options).await?;
            writeln!(
                out,
                "created an empty trace table at {} (version {})",
                lake.table().location().url,
                lake.version()
            )?;
        }
        Command::Dedicated { table, set } => {
            let lake = TraceLake::open_with_options(&table, options).await?;
            if let Some(list) = set {
                let list: tracelake::dedicated::DedicatedColumns = list.parse()?;
                let version = lake.table().set_dedicated_columns(&list).await?;
                writeln!(
                    out,
                    "{} dedicated attribute column(s) set (version {version}); files written \
                     from now on hold them",
                    list.columns().len()
                )?;
            }
            let list = lake.table().dedicated_columns();
            if list.is_empty() {
                writeln!(out, "no dedicated attribute columns")?;
            }
            for column in list.columns() {
                writeln!(out, "{column}")?;
            }
        }
        Command::Optimize {
            table,
            target_file_size,
            memory_budget,
        } => {
            let lake = TraceLake::open_with_options(&table, options).await?;
            let mut optimize = lake.table().optimize();
            if let Some(bytes) = target_file_size {
                optimize = optimize.target_file_size(bytes);
            }
            if let Some(bytes) = memory_budget {
                optimize = optimize.memory_budget(bytes);
            }
            let out_ = optimize.await?;
            writeln!(
                out,
                "optimized {} partition(s) {:?}: {} file(s) removed, {} added; version {}",
                out_.partitions.len(),
                out_.partitions,
                out_.files_removed,
                out_.files_added,
                out_.version
            )?;
        }
        Command::Vacuum {
            table,
            retention_hours,
            dry_run,
            orphans,
        } => {
            let lake = TraceLake::open_with_options(&table, options).await?;
            let done = lake
                .table()
                .vacuum()
                .retention_hours(retention_hours)
                .dry_run(dry_run)
                .orphans(orphans)
                .await?;
            if dry_run {
                writeln!(out, "vacuum would delete {} file(s):", done.files_deleted)?;
                for file in &done.files {
                    writeln!(out, "  {file}")?;
                }
            } else {
                writeln!(
                    out,
                    "vacuum deleted {} file(s); version {}",
                    done.files_deleted, done.version
                )?;
            }
        }
        Command::Expire {
            table,
            older_than_days,
        } => {
            let lake = TraceLake::open_with_options(&table, options).await?;
            let done = lake
                .table()
                .expire()
                .older_than_days(older_than_days)
                .await?;
            writeln!(
                out,
                "expired {} partition(s) {:?}: {} file(s) removed; version {}",
                done.partitions.len(),
                done.partitions,
                done.files_removed,
                done.version
            )?;
        }
        Command::Stats { table } => {
            let lake = TraceLake::open_with_options(&table, options).await?;
            let s = lake.table().stats()?;
            writeln!(out, "table       {}", lake.table().location().url)?;
            writeln!(out, "version     {}", s.version)?;
            writeln!(out, "files       {}", s.files)?;
            writeln!(out, "spans       {}", s.spans)?;
            writeln!(out, "bytes       {}", s.bytes)?;
            writeln!(
                out,
                "partitions  {} ({})",
                s.partitions.len(),
                s.partitions.join(", ")
            )?;
            writeln!(
                out,
                "oldest span {}",
                nanos_to_string(s.oldest_start_unix_nano)
            )?;
            writeln!(
                out,
                "newest span {}",
                nanos_to_string(s.newest_start_unix_nano)
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Whether `e` (or one of its sources) is a write to a closed pipe (`tracelake sql ... | head`).
fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return true;
        }
        if let Some(arrow::error::ArrowError::IoError(_, io)) =
            e.downcast_ref::<arrow::error::ArrowError>()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// Installs the `--export-spans` layer as the global subscriber.
fn span_exporter(path: &std::path::Path) -> CliResult<JsonLinesExporter> {
    let file = std::fs::File::create(path)
        .map_err(|e| format!("cannot write spans to {}: {e}", path.display()))?;
    let exporter = JsonLinesExporter::new(std::io::BufWriter::new(file));
    let subscriber = tracing_subscriber::registry().with(exporter.clone());
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| format!("cannot install the span exporter: {e}"))?;
    Ok(exporter)
}

fn report(e: &(dyn std::error::Error + 'static)) {
    match e.downcast_ref::<TraceLakeError>() {
        Some(TraceLakeError::NotATraceTable { .. }) => {
            eprintln!(
                "error: {e}\nhint: `tracelake create --table PATH` creates an empty table, `tracelake demo --table PATH` one with synthetic traces"
            )
        }
        _ => eprintln!("error: {e}"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let exporter = match cli.export_spans.as_deref().map(span_exporter).transpose() {
        Ok(exporter) => exporter,
        Err(e) => {
            report(e.as_ref());
            return ExitCode::FAILURE;
        }
    };
    let options = TableOptions {
        storage_options: cli.storage_options.iter().cloned().collect(),
        ..Default::default()
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut status = match run(&mut out, cli.command, &options).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): not an error of ours.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            report(e.as_ref());
            ExitCode::FAILURE
        }
    };
    // Whatever is left in the buffer goes to a reader that may be gone: ignore the error.
    if let Err(e) = out.flush()
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: writing output: {e}");
        status = ExitCode::FAILURE;
    }
    if let Some(exporter) = exporter
        && let Err(e) = exporter.flush()
    {
        eprintln!("error: writing spans: {e}");
        status = ExitCode::FAILURE;
    }
    if let Some(path) = &cli.metrics
        && let Err(e) = std::fs::write(path, options.metrics.encode_text())
    {
        eprintln!("error: cannot write metrics to {}: {e}", path.display());
        status = ExitCode::FAILURE;
    }
    status
}
