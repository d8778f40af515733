//! `SpanAppender`: buffered ingest. Spans are checked when appended (a bad row fails that
//! call, immediately), buffered, and committed by size or by time as one Delta commit. A
//! failed commit is retried with exponential backoff; if it still fails, the spans stay
//! buffered (nothing is dropped), the error is returned by the next `append`/`flush`, and the
//! next flush tries again. The queue is bounded: when commits cannot keep up, `append` waits
//! (backpressure) instead of growing memory. `shutdown` flushes and reports anything it could
//! not commit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{AppendOutcome, TraceTable, ingest};
use crate::error::{Result, TraceLakeError};
use crate::span::{Span, spans_to_batch};

/// When and how the appender commits.
#[derive(Debug, Clone)]
pub struct AppenderConfig {
    /// Commit when this many spans are buffered.
    pub max_rows: usize,
    /// Commit buffered spans at the latest this long after the first of them arrived.
    pub max_delay: Duration,
    /// Batches that may wait in the queue before `append` waits.
    pub queue_batches: usize,
    /// Attempts of one commit before its error is reported.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each next one.
    pub initial_backoff: Duration,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            max_delay: Duration::from_secs(5),
            queue_batches: 64,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
        }
    }
}

enum Message {
    Batch(RecordBatch),
    Flush(oneshot::Sender<Result<AppendOutcome>>),
}

/// Buffered ingest into a [`TraceTable`]. See the module docs.
pub struct SpanAppender {
    tx: mpsc::Sender<Message>,
    worker: JoinHandle<()>,
    /// The error of the last commit that failed after every retry, until a commit succeeds.
    failure: Arc<Mutex<Option<String>>>,
}

fn failed(message: &str) -> TraceLakeError {
    TraceLakeError::InvalidArgument(format!(
        "the appender could not commit buffered spans (they are kept and retried): {message}"
    ))
}

impl SpanAppender {
    /// Starts an appender (a tokio task) writing into `table`.
    pub fn new(table: Arc<TraceTable>, config: AppenderConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_batches.max(1));
        let failure = Arc::new(Mutex::new(None));
        let worker = tokio::spawn(run(table, config, rx, failure.clone()));
        Self {
            tx,
            worker,
            failure,
        }
    }

    fn check(&self) -> Result<()> {
        match self.failure.lock().ok().and_then(|f| f.clone()) {
            Some(message) => Err(failed(&message)),
            None => Ok(()),
        }
    }

    /// Checks `spans` and queues them; waits while the queue is full.
    pub async fn append(&self, spans: &[Span]) -> Result<()> {
        self.append_batch(spans_to_batch(spans)?).await
    }

    /// Checks a batch (columns named as in `spans`) and queues it; waits while the queue is
    /// full. Returns the error of a failed commit, if one is outstanding (the batch is still
    /// queued).
    pub async fn append_batch(&self, batch: RecordBatch) -> Result<()> {
        let storage = ingest::to_storage(&batch, 0)?;
        self.tx
            .send(Message::Batch(storage))
            .await
            .map_err(|_| failed("the appender has stopped"))?;
        self.check()
    }

    /// Commits everything queued so far; returns when it is committed (or the error).
    pub async fn flush(&self) -> Result<AppendOutcome> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Message::Flush(done))
            .await
            .map_err(|_| failed("the appender has stopped"))?;
        result
            .await
            .map_err(|_| failed("the appender has stopped"))?
    }

    /// Flushes, stops the appender, and returns the flush's result: an error means spans
    /// could not be committed.
    pub async fn shutdown(self) -> Result<AppendOutcome> {
        let result = self.flush().await;
        drop(self.tx);
        let _ = self.worker.await;
        result
    }
}

async fn commit_with_retry(
    table: &TraceTable,
    pending: &[RecordBatch],
    config: &AppenderConfig,
) -> Result<AppendOutcome> {
    let rows: usize = pending.iter().map(|b| b.num_rows()).sum();
    let mut backoff = config.initial_backoff;
    let mut attempt = 1;
    loop {
        match table.commit(pending.to_vec(), rows as u64).await {
            Ok(outcome) => return Ok(outcome),
            Err(e) if attempt >= config.max_attempts => return Err(e),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "commit failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
                attempt += 1;
            }
        }
    }
}

async fn run(
    table: Arc<TraceTable>,
    config: AppenderConfig,
    mut rx: mpsc::Receiver<Message>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    let set_failure = |message: Option<String>| {
        if let Ok(mut f) = failure.lock() {
            *f = message;
        }
    };
    loop {
        // Stop taking batches while a full buffer cannot be committed: the queue fills and
        // `append` waits.
        let accepting = pending_rows < config.max_rows.saturating_mul(2).max(1);
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let mut flush_reply = None;
        tokio::select! {
            message = rx.recv(), if accepting => match message {
                Some(Message::Batch(batch)) => {
                    pending_rows += batch.num_rows();
                    pending.push(batch);
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + config.max_delay);
                    if pending_rows < config.max_rows {
                        continue;
                    }
                }
                Some(Message::Flush(reply)) => flush_reply = Some(reply),
                None => {
                    // Every sender is gone: commit what is left.
                    if !pending.is_empty() && let Err(e) = commit_with_retry(&table, &pending, &config).await {
                        tracing::error!(error = %e, spans = pending_rows, "spans not committed at shutdown");
                    }
                    return;
                }
            },
            _ = timer => {}
            _ = tokio::time::sleep(config.initial_backoff), if !accepting => {}
        }
        if pending.is_empty() {
            if let Some(reply) = flush_reply {
                let _ = reply.send(Ok(AppendOutcome {
                    version: table.version(),
                    rows: 0,
                }));
            }
            deadline = None;
            continue;
        }
        match commit_with_retry(&table, &pending, &config).await {
            Ok(outcome) => {
                pending.clear();
                pending_rows = 0;
                deadline = None;
                set_failure(None);
                if let Some(reply) = flush_reply {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let message = e.to_string();
                set_failure(Some(message.clone()));
                deadline = Some(tokio::time::Instant::now() + config.max_delay);
                if let Some(reply) = flush_reply {
                    let _ = reply.send(Err(failed(&message)));
                }
            }
        }
    }
}
