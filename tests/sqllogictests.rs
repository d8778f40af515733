//! Runs the `.slt` suites in `sqllogictests/` with DataFusion's own sqllogictest engine
//! (`datafusion-sqllogictest`: value normalization, column types, `target_partitions` 4),
//! plus a handful of DataFusion's upstream `.slt` files, read from the
//! `datafusion-sqllogictest` crate in the cargo registry, to show that registering tracelake
//! does not change DataFusion's behaviour.
//!
//! Each file gets a fresh context with an empty `spans` table in its own temporary directory
//! and every tracelake function registered. Every file runs twice: in that context, and in the
//! same context instrumented by tracelake's planner hooks
//! ([`tracelake::observe::instrument_context`]), which must not change any result.
//!
//! ```text
//! cargo test --test sqllogictests                 # every file
//! cargo test --test sqllogictests -- insert       # files whose path contains "insert"
//! cargo test --test sqllogictests -- --complete   # rewrite expected output
//! cargo test --test sqllogictests -- --distributed [NAME]  # on an in-process Ballista cluster
//! ```
//!
//! tracelake's files also run a third time, on a Ballista standalone cluster (below); with
//! `--distributed`, each selected file runs only there: on a Ballista standalone cluster (a
//! scheduler and an executor in this process, on loopback) with tracelake registered
//! ([`tracelake::distributed::standalone_context`]): the same statements and the same expected
//! results as in one process. tracelake's own files run there, and the upstream files in
//! [`UPSTREAM_DISTRIBUTED`] (those whose tables Ballista can ship; see docs/distributed.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_sqllogictest::{DataFusion, TestContext, df_value_validator, value_normalizer};
use indicatif::ProgressBar;
use sqllogictest::strict_column_validator;

/// Upstream DataFusion files that need no external data and write no scratch files.
const UPSTREAM_FILES: &[&str] = &[
    "arrow_typeof.slt",
    "case.slt",
    "coalesce.slt",
    "cse.slt",
    "in_list.slt",
    "nullif.slt",
    "strings.slt",
    "struct.slt",
    "table_functions.slt",
    "type_coercion.slt",
];

/// Upstream files that also run with `--distributed`: none of [`UPSTREAM_FILES`] do. Each
/// builds its tables with `CREATE TABLE ... AS VALUES` (in-memory tables of the client), which
/// Ballista 55 neither plans (`Mismatch between schema and batches`) nor ships to its scheduler
/// (`LogicalExtensionCodec is not provided` for `MemTable`), whatever tracelake does.
const UPSTREAM_DISTRIBUTED: &[&str] = &[];

struct Options {
    filters: Vec<String>,
    complete: bool,
    distributed: bool,
}

fn options() -> Options {
    let mut filters = Vec::new();
    let mut complete = false;
    let mut distributed = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--complete" => complete = true,
            "--distributed" => distributed = true,
            // Flags cargo's test harness would take (`--nocapture`, `--test-threads=N`...).
            a if a.starts_with('-') => {}
            a => filters.push(a.to_string()),
        }
    }
    Options {
        filters,
        complete,
        distributed,
    }
}

/// The `test_files` folder of the `datafusion-sqllogictest` crate this test was built with.
fn upstream_dir() -> Result<PathBuf, String> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let version = datafusion::DATAFUSION_VERSION;
    let wanted = format!("datafusion-sqllogictest-{version}");
    let registry = cargo_home.join("registry").join("src");
    let entries = std::fs::read_dir(&registry)
        .map_err(|e| format!("cannot read {}: {e}", registry.display()))?;
    for index in entries.flatten() {
        let candidate = index.path().join(&wanted).join("test_files");
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "{wanted} not found under {}; run `cargo fetch` first",
        registry.display()
    ))
}

struct SltFile {
    path: PathBuf,
    /// The name shown and matched by filters.
    display: String,
    upstream: bool,
}

fn collect_files(opts: &Options) -> Result<Vec<SltFile>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("sqllogictests");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "slt") {
                let display = format!(
                    "sqllogictests/{}",
                    path.strip_prefix(&root).unwrap_or(&path).display()
                );
                files.push(SltFile {
                    path,
                    display,
                    upstream: false,
                });
            }
        }
    }
    let upstream = upstream_dir()?;
    for name in UPSTREAM_FILES {
        files.push(SltFile {
            path: upstream.join(name),
            display: format!("datafusion-upstream/{name}"),
            upstream: true,
        });
    }
    files.sort_by(|a, b| a.display.cmp(&b.display));
    files.retain(|f| opts.filters.is_empty() || opts.filters.iter().any(|p| f.display.contains(p)));
    if opts.distributed {
        files.retain(runs_distributed);
    }
    Ok(files)
}

/// The context a file runs in: DataFusion's own for upstream files, a fresh one with the same
/// settings (`target_partitions` 4) for ours; both with tracelake registered on an empty table.
async fn context_for(
    file: &SltFile,
    table_dir: &Path,
    mode: Mode,
) -> Result<SessionContext, String> {
    if mode == Mode::Distributed {
        let lake =
            tracelake::TraceLake::create(table_dir.join("spans").to_str().unwrap_or_default())
                .await
                .map_err(|e| e.to_string())?;
        return tracelake::distributed::standalone_context(
            &lake,
            SessionConfig::new().with_target_partitions(4),
            tracelake::distributed::StandaloneOptions::default(),
        )
        .await
        .map_err(|e| e.to_string());
    }
    let instrumented = mode == Mode::Instrumented;
    let ctx = if file.upstream {
        let relative = PathBuf::from(file.path.file_name().unwrap_or_default());
        TestContext::try_new_for_test_file(&relative)
            .await
            .ok_or_else(|| format!("DataFusion skips {}", file.display))?
            .session_ctx()
            .clone()
    } else {
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4))
    };
    let lake = tracelake::TraceLake::create(table_dir.join("spans").to_str().unwrap_or_default())
        .await
        .map_err(|e| e.to_string())?;
    lake.register(&ctx).map_err(|e| e.to_string())?;
    Ok(if instrumented {
        tracelake::observe::instrument_context(&ctx)
    } else {
        ctx
    })
}

/// Whether `file` runs on the Ballista cluster too: tracelake's files, and the upstream files
/// of [`UPSTREAM_DISTRIBUTED`].
fn runs_distributed(file: &SltFile) -> bool {
    !file.upstream
        || UPSTREAM_DISTRIBUTED
            .iter()
            .any(|name| file.path.file_name().is_some_and(|n| n == *name))
}

/// The context a file runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Instrumented,
    Distributed,
}

async fn run_file(file: &SltFile, complete: bool, mode: Mode) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ctx = context_for(file, dir.path(), mode).await?;
    let relative = PathBuf::from(&file.display);
    let mut runner = sqllogictest::Runner::new(|| {
        let ctx = ctx.clone();
        let relative = relative.clone();
        async move { Ok(DataFusion::new(ctx, relative, ProgressBar::hidden())) }
    });
    runner.add_label("Datafusion");
    runner.with_column_validator(strict_column_validator);
    runner.with_normalizer(value_normalizer);
    runner.with_validator(df_value_validator);
    if complete {
        if file.upstream {
            return Ok(());
        }
        runner
            .update_test_file(
                &file.path,
                " ",
                df_value_validator,
                value_normalizer,
                strict_column_validator,
            )
            .await
            .map_err(|e| e.to_string())
    } else {
        runner
            .run_file_async(&file.path)
            .await
            .map_err(|e| e.display(false).to_string())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = options();
    let files = match collect_files(&opts) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("sqllogictests: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    let modes: &[Mode] = if opts.distributed {
        &[Mode::Distributed]
    } else if opts.complete {
        &[Mode::Plain]
    } else {
        &[Mode::Plain, Mode::Instrumented, Mode::Distributed]
    };
    for file in &files {
        for &mode in modes {
            if mode == Mode::Distributed && !runs_distributed(file) {
                continue;
            }
            let label = match mode {
                Mode::Plain => "",
                Mode::Instrumented => " [instrumented]",
                Mode::Distributed => " [distributed]",
            };
            match run_file(file, opts.complete && mode == Mode::Plain, mode).await {
                Ok(()) => {
                    passed += 1;
                    println!("test {}{label} ... ok", file.display);
                }
                Err(e) => {
                    failed += 1;
                    println!("test {}{label} ... FAILED\n{e}\n", file.display);
                }
            }
        }
    }
    println!();
    println!("sqllogictests: {passed} passed, {failed} failed");
    if failed > 0 || files.is_empty() {
        if files.is_empty() {
            eprintln!("no .slt file matched {:?}", opts.filters);
        }
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
