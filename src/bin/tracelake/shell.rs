//! `tracelake sql`: statements given on the command line, in a file, on stdin, or typed into
//! an interactive shell (line editing and history by rustyline; a statement ends with `;`).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use datafusion::prelude::SessionContext;
use rustyline::error::ReadlineError;
use tracelake::observe;
use tracelake::{TableOptions, TraceLake};

use super::{CliResult, Format, print_batches};

/// Splits `text` into statements at the `;` that end them (SQL's tokenizer: semicolons in
/// quotes and comments do not count). Each statement is the original text, so what the
/// parser would print differently (a `COPY ... TO 'path'`) runs as typed.
fn statements(text: &str) -> CliResult<Vec<String>> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};
    let tokens = Tokenizer::new(&GenericDialect {}, text)
        .tokenize_with_location()
        .map_err(|e| format!("SQL error: {e}"))?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    // The byte offset of a (1-based) line and column.
    let offset = |at: Location| -> usize {
        let Some(&start) = line_starts.get((at.line as usize).saturating_sub(1)) else {
            return text.len();
        };
        text[start..]
            .char_indices()
            .nth((at.column as usize).saturating_sub(1))
            .map(|(i, _)| start + i)
            .unwrap_or(text.len())
    };
    let mut out = Vec::new();
    let mut begin = 0;
    let mut meaningful = false;
    for token in tokens {
        match token.token {
            Token::SemiColon => {
                let end = offset(token.span.start);
                if meaningful {
                    out.push(text[begin..end].trim().to_string());
                }
                begin = (end + 1).min(text.len());
                meaningful = false;
            }
            Token::Whitespace(_) => {}
            _ => meaningful = true,
        }
    }
    if meaningful {
        out.push(text[begin..].trim().to_string());
    }
    Ok(out)
}

async fn execute(
    out: &mut dyn Write,
    ctx: &SessionContext,
    statement: &str,
    format: Format,
) -> CliResult<()> {
    let batches = observe::sql(ctx, statement).await?.collect().await?;
    print_batches(out, &batches, format)
}

pub(crate) async fn run(
    out: &mut dyn Write,
    table: &str,
    sql: Option<String>,
    file: Option<PathBuf>,
    format: Format,
    cluster: Option<String>,
    options: &TableOptions,
) -> CliResult<()> {
    let lake = TraceLake::open_with_options(table, options).await?;
    let ctx = match cluster {
        #[cfg(feature = "cluster")]
        Some(url) => {
            tracelake::distributed::remote_context(
                &lake,
                &url,
                datafusion::prelude::SessionConfig::new(),
            )
            .await?
        }
        #[cfg(not(feature = "cluster"))]
        Some(_) => return Err(crate::not_built("--cluster", "cluster")),
        None => lake.session_context()?,
    };
    let text = match (sql, file) {
        (Some(sql), _) => sql,
        (None, Some(path)) if path.as_os_str() == "-" => read_stdin()?,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        (None, None) if std::io::stdin().is_terminal() => {
            return interactive(out, &ctx, format).await;
        }
        (None, None) => read_stdin()?,
    };
    for statement in statements(&text)? {
        execute(out, &ctx, &statement, format).await?;
    }
    Ok(())
}

fn read_stdin() -> CliResult<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    Ok(text)
}

/// The history file of the interactive shell: `$HOME/.tracelake_history`.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".tracelake_history"))
}

async fn interactive(out: &mut dyn Write, ctx: &SessionContext, format: Format) -> CliResult<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = history_file();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    writeln!(
        out,
        "tracelake SQL shell: statements end with `;`, \\q or Ctrl-D quits. Tables: spans; \
         functions: trace_tree, trace_summaries, service_graph, attr_*."
    )?;
    out.flush()?;
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "tracelake> "
        } else {
            "      ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() && (trimmed == "\\q" || trimmed == "quit" || trimmed == "exit")
                {
                    break;
                }
                if trimmed.is_empty() && buffer.is_empty() {
                    continue;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if !trimmed.ends_with(';') {
                    continue;
                }
                let _ = editor.add_history_entry(buffer.trim_end());
                let text = std::mem::take(&mut buffer);
                // An error is shown and the shell goes on.
                let result = match statements(&text) {
                    Ok(list) => {
                        let mut result = Ok(());
                        for statement in list {
                            result = execute(out, ctx, &statement, format).await;
                            if result.is_err() {
                                break;
                            }
                        }
                        result
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    writeln!(out, "error: {e}")?;
                }
                out.flush()?;
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_split_where_sql_ends_them() {
        let list = statements(
            "SELECT 'a;b' AS x; -- a comment; with a semicolon\nSELECT count(*) FROM spans;",
        )
        .unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(list[0].contains("'a;b'"), "{list:?}");
        assert_eq!(
            list[1],
            "-- a comment; with a semicolon\nSELECT count(*) FROM spans"
        );
    }

    #[test]
    fn statements_run_as_typed() {
        // The parser prints `COPY ... TO 'path'` without the quotes: the text is kept instead.
        let list = statements(
            "COPY (SELECT 1 AS a) TO '/tmp/x.parquet';\n SELECT 'é;' AS \"ü\"\n  ;  ; -- end",
        )
        .unwrap();
        assert_eq!(
            list,
            [
                "COPY (SELECT 1 AS a) TO '/tmp/x.parquet'",
                "SELECT 'é;' AS \"ü\""
            ]
        );
        assert!(statements("SELECT 'unterminated").is_err());
    }
}
