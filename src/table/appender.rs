//! `SpanAppender`: buffered ingest. Spans are checked when appended (a bad row fails that
//! call, immediately), buffered, and committed by size or by time as one Delta commit.
//!
//! Every commit carries a Delta application transaction (`txn`: the appender's own id and a
//! number per commit), so a commit is written at most once: when an attempt fails with a
//! transient error (which may have landed, for example if the answer of the store was lost),
//! the retry reads the log first and writes nothing if the attempt did land. Errors that are
//! not transient are not retried. If a commit still fails, its spans stay buffered (nothing is
//! dropped), the error is returned by the next `append`/`flush`, and the next flush tries the
//! same commit again. The queue is bounded: when commits cannot keep up, `append` waits
//! (backpressure) instead of growing memory. `shutdown` flushes and reports anything it could
//! not commit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{AppTransaction, AppendOutcome, TraceTable, ingest};
use crate::error::{Result, TraceLakeError};
use crate::span::{Span, spans_to_batch};

/// When and how the appender commits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AppenderConfig {
    /// Commit when this many spans are buffered (1 to 100,000,000).
    pub max_rows: usize,
    /// Commit buffered spans at the latest this long after the first of them arrived
    /// (1 ms to 1 day).
    pub max_delay: Duration,
    /// Batches that may wait in the queue before `append` waits (1 to 1,000,000).
    pub queue_batches: usize,
    /// Attempts of one commit before its error is reported (1 to 100).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each next one (at most 1 minute).
    pub initial_backoff: Duration,
    /// How long spans whose callers wait for their commit
    /// ([`SpanAppender::append_committed`]) wait for more to share the commit (0 to
    /// `max_delay`; default 0: they are committed as soon as the appender is free, and those
    /// arriving during a commit share the next one).
    pub linger: Duration,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            max_delay: Duration::from_secs(5),
            queue_batches: 64,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            linger: Duration::ZERO,
        }
    }
}

impl AppenderConfig {
    /// Commit when this many spans are buffered.
    pub fn with_max_rows(mut self, max_rows: usize) -> Self {
        self.max_rows = max_rows;
        self
    }

    /// Commit buffered spans at the latest this long after the first of them arrived.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Batches that may wait in the queue before `append` waits.
    pub fn with_queue_batches(mut self, queue_batches: usize) -> Self {
        self.queue_batches = queue_batches;
        self
    }

    /// Attempts of one commit before its error is reported.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Wait before the first retry; doubled for each next one.
    pub fn with_initial_backoff(mut self, initial_backoff: Duration) -> Self {
        self.initial_backoff = initial_backoff;
        self
    }

    /// How long spans whose callers wait for their commit wait for more to share it.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Checks every setting against its accepted range.
    pub fn validate(&self) -> Result<()> {
        check_duration(
            "appender linger",
            self.linger,
            Duration::ZERO,
            self.max_delay,
        )?;
        check_range("appender max_rows", self.max_rows as u128, 1, 100_000_000)?;
        check_duration(
            "appender max_delay",
            self.max_delay,
            Duration::from_millis(1),
            Duration::from_secs(86_400),
        )?;
        check_range(
            "appender queue_batches",
            self.queue_batches as u128,
            1,
            1_000_000,
        )?;
        check_range("appender max_attempts", self.max_attempts as u128, 1, 100)?;
        check_duration(
            "appender initial_backoff",
            self.initial_backoff,
            Duration::ZERO,
            Duration::from_secs(60),
        )
    }
}

/// Fails with the accepted range unless `min <= value <= max`.
pub(crate) fn check_range(what: &str, value: u128, min: u128, max: u128) -> Result<()> {
    if value < min || value > max {
        return Err(TraceLakeError::out_of_range(
            what,
            format!("between {min} and {max}"),
            value,
        ));
    }
    Ok(())
}

/// Fails with the accepted range unless `min <= value <= max`.
pub(crate) fn check_duration(
    what: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<()> {
    if value < min || value > max {
        return Err(TraceLakeError::out_of_range(
            what,
            format!("between {min:?} and {max:?}"),
            format!("{value:?}"),
        ));
    }
    Ok(())
}

type Ack = oneshot::Sender<Result<AppendOutcome>>;

enum Message {
    Batch {
        batch: RecordBatch,
        ack: Option<Ack>,
    },
    Flush(Ack),
}

/// The last commit failure, until a commit succeeds.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    transient: bool,
}

/// Buffered ingest into a [`TraceTable`]. See the module docs.
pub struct SpanAppender {
    table: Arc<TraceTable>,
    tx: mpsc::Sender<Message>,
    worker: JoinHandle<()>,
    failure: Arc<Mutex<Option<Failure>>>,
    queue_batches: usize,
}

impl std::fmt::Debug for SpanAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanAppender").finish_non_exhaustive()
    }
}

fn failed(failure: &Failure) -> TraceLakeError {
    TraceLakeError::AppendFailed {
        message: failure.message.clone(),
        transient: failure.transient,
    }
}

impl SpanAppender {
    /// Starts an appender (a tokio task) writing into `table`. Fails if a setting is out of
    /// range or if called outside a tokio runtime.
    pub fn new(table: Arc<TraceTable>, config: AppenderConfig) -> Result<Self> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| TraceLakeError::NoRuntime("SpanAppender::new"))?;
        let (tx, rx) = mpsc::channel(config.queue_batches);
        let failure = Arc::new(Mutex::new(None));
        let queue_batches = config.queue_batches;
        let worker = Worker {
            table: table.clone(),
            app_id: format!("tracelake-appender-{}", uuid::Uuid::new_v4()).into(),
            next_txn: 1,
            config,
            failure: failure.clone(),
            pending: Vec::new(),
            pending_rows: 0,
            inflight: None,
        };
        let worker = runtime.spawn(worker.run(rx));
        Ok(Self {
            table,
            tx,
            worker,
            failure,
            queue_batches,
        })
    }

    fn check(&self) -> Result<()> {
        match self.failure.lock().ok().and_then(|f| f.clone()) {
            Some(failure) => Err(failed(&failure)),
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
        let batch = ingest::to_storage(&batch, 0)?;
        self.tx
            .send(Message::Batch { batch, ack: None })
            .await
            .map_err(|_| TraceLakeError::AppenderStopped)?;
        self.check()
    }

    /// Checks a batch, queues it (waiting while the queue is full) and waits for the commit
    /// that holds it: `Ok` means the spans are committed. Concurrent calls share commits (by
    /// the size and time limits of the configuration). If the commit fails and the spans were
    /// not written, the error is [`TraceLakeError::NotCommitted`]: sending them again is safe.
    pub async fn append_committed(&self, batch: RecordBatch) -> Result<AppendOutcome> {
        let batch = ingest::to_storage(&batch, 0)?;
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Message::Batch {
                batch,
                ack: Some(ack),
            })
            .await
            .map_err(|_| TraceLakeError::AppenderStopped)?;
        done.await.map_err(|_| TraceLakeError::AppenderStopped)?
    }

    /// Like [`SpanAppender::append_committed`], but fails at once with
    /// [`TraceLakeError::Busy`] when the queue is full (backpressure for servers: answer
    /// "retry later" instead of holding the request).
    pub async fn try_append_committed(&self, batch: RecordBatch) -> Result<AppendOutcome> {
        let batch = ingest::to_storage(&batch, 0)?;
        let (ack, done) = oneshot::channel();
        self.tx
            .try_send(Message::Batch {
                batch,
                ack: Some(ack),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => TraceLakeError::Busy(self.queue_batches),
                mpsc::error::TrySendError::Closed(_) => TraceLakeError::AppenderStopped,
            })?;
        done.await.map_err(|_| TraceLakeError::AppenderStopped)?
    }

    /// The version of the table the appender writes to.
    pub fn table_version(&self) -> i64 {
        self.table.version()
    }

    /// Batches waiting in the queue (not yet taken by the appender's task).
    pub fn queued_batches(&self) -> usize {
        self.queue_batches - self.tx.capacity()
    }

    /// Commits everything queued so far; returns when it is committed (or the error).
    pub async fn flush(&self) -> Result<AppendOutcome> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Message::Flush(done))
            .await
            .map_err(|_| TraceLakeError::AppenderStopped)?;
        result.await.map_err(|_| TraceLakeError::AppenderStopped)?
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

/// A queued batch, with the caller waiting for its commit, if any.
struct Entry {
    batch: RecordBatch,
    ack: Option<Ack>,
}

/// Spans being committed: fixed once numbered, so a retry writes exactly what the first
/// attempt did (or nothing, if that attempt landed).
struct Inflight {
    txn: AppTransaction,
    entries: Vec<Entry>,
    rows: usize,
    /// Whether an attempt was made (a next one checks the log first).
    attempted: bool,
}

struct Worker {
    table: Arc<TraceTable>,
    app_id: Arc<str>,
    next_txn: i64,
    config: AppenderConfig,
    failure: Arc<Mutex<Option<Failure>>>,
    pending: Vec<Entry>,
    pending_rows: usize,
    inflight: Option<Inflight>,
}

impl Worker {
    fn set_failure(&self, failure: Option<Failure>) {
        if let Ok(mut f) = self.failure.lock() {
            *f = failure;
        }
    }

    fn buffered_rows(&self) -> usize {
        self.pending_rows + self.inflight.as_ref().map_or(0, |i| i.rows)
    }

    fn gauge(&self) -> &prometheus_client::metrics::gauge::Gauge {
        &self.table.metrics().buffered_spans
    }

    /// The in-flight spans are committed: they leave the buffer and their callers are
    /// answered with `outcome`.
    fn acknowledge(&mut self, outcome: AppendOutcome) {
        if let Some(done) = self.inflight.take() {
            self.gauge().dec_by(done.rows as i64);
            for entry in done.entries {
                if let Some(ack) = entry.ack {
                    let _ = ack.send(Ok(outcome));
                }
            }
        }
    }

    /// Commits the in-flight spans (numbering the pending ones first if none are in flight),
    /// retrying transient errors with backoff. On success the callers waiting for these spans
    /// are answered; on failure, those whose spans are known not to be written are answered
    /// with [`TraceLakeError::NotCommitted`] and their spans leave the buffer (the others stay
    /// in flight, for the next attempt).
    async fn commit(&mut self) -> Result<AppendOutcome> {
        if self.inflight.is_none() {
            let txn = AppTransaction {
                app_id: self.app_id.clone(),
                version: self.next_txn,
            };
            self.next_txn += 1;
            self.inflight = Some(Inflight {
                txn,
                entries: std::mem::take(&mut self.pending),
                rows: std::mem::take(&mut self.pending_rows),
                attempted: false,
            });
        }
        let Some(inflight) = self.inflight.as_mut() else {
            return Err(TraceLakeError::AppenderStopped);
        };
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 1;
        let error = loop {
            let batches: Vec<RecordBatch> =
                inflight.entries.iter().map(|e| e.batch.clone()).collect();
            let result = self
                .table
                .commit(
                    batches,
                    inflight.rows as u64,
                    Some(&inflight.txn),
                    inflight.attempted,
                )
                .await;
            inflight.attempted = true;
            match result {
                Ok(outcome) => {
                    self.acknowledge(outcome);
                    return Ok(outcome);
                }
                Err(e) if !e.is_transient() || attempt >= self.config.max_attempts => break e,
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "commit failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
            }
        };
        // Callers are waiting: find out whether the commit landed after all, and if it did
        // not, give them their answer (their spans leave the buffer: they will send again).
        if inflight.entries.iter().any(|e| e.ack.is_some()) {
            match self.table.transaction_committed(&inflight.txn).await {
                Ok(true) => {
                    let outcome = AppendOutcome {
                        version: self.table.version(),
                        rows: inflight.rows as u64,
                    };
                    self.acknowledge(outcome);
                    return Ok(outcome);
                }
                Ok(false) => {
                    let entries = std::mem::take(&mut inflight.entries);
                    let message = error.to_string();
                    let mut dropped = 0;
                    for entry in entries {
                        match entry.ack {
                            Some(ack) => {
                                dropped += entry.batch.num_rows();
                                let _ =
                                    ack.send(Err(TraceLakeError::NotCommitted(message.clone())));
                            }
                            None => inflight.entries.push(Entry {
                                batch: entry.batch,
                                ack: None,
                            }),
                        }
                    }
                    inflight.rows -= dropped;
                    let empty = inflight.entries.is_empty();
                    self.gauge().dec_by(dropped as i64);
                    if empty {
                        self.inflight = None;
                    }
                }
                Err(check) => {
                    tracing::warn!(error = %check, "cannot tell whether a failed commit landed; its callers keep waiting");
                }
            }
        }
        Err(error)
    }

    /// Takes one message into the buffer.
    fn take(
        &mut self,
        message: Message,
        flush_reply: &mut Option<Ack>,
        deadline: &mut Option<tokio::time::Instant>,
        acks_due: &mut Option<tokio::time::Instant>,
    ) {
        let now = tokio::time::Instant::now();
        match message {
            Message::Batch { batch, ack } => {
                self.pending_rows += batch.num_rows();
                self.gauge().inc_by(batch.num_rows() as i64);
                if ack.is_some() {
                    acks_due.get_or_insert(now + self.config.linger);
                }
                self.pending.push(Entry { batch, ack });
                deadline.get_or_insert(now + self.config.max_delay);
            }
            Message::Flush(reply) => {
                if let Some(earlier) = flush_reply.replace(reply) {
                    // Two flushes at once: the later one answers for both.
                    let _ = earlier.send(Ok(AppendOutcome {
                        version: self.table.version(),
                        rows: 0,
                    }));
                }
            }
        }
    }

    /// Commits (up to two commits: what was in flight, then what is pending) and answers a
    /// flush; returns the result.
    async fn commit_round(&mut self, flush: bool) -> Result<AppendOutcome> {
        // A commit left in flight by an earlier failure goes first; a flush then commits
        // what arrived since, too.
        let mut result = self.commit().await;
        if (flush || self.pending.iter().any(|e| e.ack.is_some()))
            && let Ok(first) = &result
            && self.pending_rows > 0
        {
            let first = *first;
            result = self.commit().await.map(|second| AppendOutcome {
                version: second.version,
                rows: first.rows + second.rows,
            });
        }
        result
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        // When the pending spans are due by the time limit, and when the spans callers wait
        // for are due (at once, or after the linger).
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut acks_due: Option<tokio::time::Instant> = None;
        let mut closed = false;
        loop {
            // Stop taking batches while a full buffer cannot be committed: the queue fills and
            // `append` waits.
            let limit = self.config.max_rows.saturating_mul(2);
            let accepting = !closed && self.buffered_rows() < limit;
            let wake = match (deadline, acks_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timer = async {
                match wake {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let mut flush_reply = None;
            tokio::select! {
                message = rx.recv(), if accepting => match message {
                    Some(m) => self.take(m, &mut flush_reply, &mut deadline, &mut acks_due),
                    None => closed = true,
                },
                _ = timer => {}
                _ = tokio::time::sleep(self.config.initial_backoff.max(Duration::from_millis(1))), if !accepting && !closed => {}
            }
            // Whatever else is queued already joins this round (group commit), up to the
            // size of a commit.
            while !closed && self.buffered_rows() < self.config.max_rows {
                match rx.try_recv() {
                    Ok(m) => self.take(m, &mut flush_reply, &mut deadline, &mut acks_due),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                }
            }
            if closed {
                // Every sender is gone: commit what is left.
                let mut result = Ok(AppendOutcome {
                    version: self.table.version(),
                    rows: 0,
                });
                while self.buffered_rows() > 0 {
                    result = self.commit().await;
                    if let Err(e) = &result {
                        tracing::error!(error = %e, spans = self.buffered_rows(), "spans not committed at shutdown");
                        break;
                    }
                }
                if let Some(reply) = flush_reply {
                    let _ = reply.send(result);
                }
                return;
            }
            let now = tokio::time::Instant::now();
            let due = flush_reply.is_some()
                || self.buffered_rows() >= self.config.max_rows
                || deadline.is_some_and(|d| now >= d)
                || acks_due.is_some_and(|d| now >= d);
            if !due {
                continue;
            }
            if self.buffered_rows() == 0 {
                if let Some(reply) = flush_reply {
                    let _ = reply.send(Ok(AppendOutcome {
                        version: self.table.version(),
                        rows: 0,
                    }));
                }
                deadline = None;
                acks_due = None;
                continue;
            }
            let result = self.commit_round(flush_reply.is_some()).await;
            let now = tokio::time::Instant::now();
            match result {
                Ok(outcome) => {
                    deadline = (self.buffered_rows() > 0).then(|| now + self.config.max_delay);
                    // Callers who arrived during the commit are due now: their spans go in
                    // the next commit at once.
                    acks_due = self.pending.iter().any(|e| e.ack.is_some()).then_some(now);
                    self.set_failure(None);
                    if let Some(reply) = flush_reply {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    let failure = Failure {
                        message: e.to_string(),
                        transient: e.is_transient(),
                    };
                    self.set_failure(Some(failure.clone()));
                    deadline = Some(now + self.config.max_delay);
                    acks_due = deadline;
                    if let Some(reply) = flush_reply {
                        let _ = reply.send(Err(failed(&failure)));
                    }
                }
            }
        }
    }
}
