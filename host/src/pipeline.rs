//! The pipeline: SQS → batch → wasm → PostgreSQL → delete, on N pollers.
//!
//! Each poller owns one wasm [`Worker`] and one database connection and runs
//! the whole cycle for one batch at a time, so concurrency is bounded by the
//! poller count and a batch is deleted from SQS only after its transaction
//! committed. Every failure is either a message's (it becomes a dead letter)
//! or transient (the poller backs off and retries; the batch, never deleted,
//! comes back after the visibility timeout and the ledger skips what was
//! already written). Nothing here ends the process but a shutdown signal or,
//! in drain mode, an empty queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;

use anyhow::{Result, bail};
use tokio::sync::watch;

use crate::dberror::{self, WriteFailure};
use crate::masking::Keyring;
use crate::ops;
use crate::record::{Outcome, Rejection, reason};
use crate::runtime::{Transform, Worker};
use crate::sink::{Database, PgSink, Processed, WriteReport};
use crate::source::{Received, SqsSource};
use crate::usage::BusyCpu;

/// How a pipeline runs (see `config` for the settings behind these).
#[derive(Debug, Clone)]
pub struct Settings {
    pub pollers: usize,
    pub batch_size: usize,
    pub wait_seconds: i32,
    pub database: Database,
    /// Exit once the queue is empty instead of polling forever.
    pub drain: bool,
    /// How often to log progress; `None` logs none.
    pub progress_every: Option<Duration>,
    /// The visibility timeout to keep in-flight batches under; `None` reads
    /// the queue's own at startup.
    pub visibility_timeout: Option<Duration>,
    /// For the supervisor's tests: the first this many batches received
    /// make their poller panic instead of being processed.
    pub inject_poller_failures: u64,
    /// Create the component's declared tables when they are missing.
    pub create_tables: bool,
}

/// In drain mode an empty receive ends a poller, so wait briefly.
const DRAIN_WAIT_SECONDS: i32 = 2;
/// After a shutdown signal a failing write gets this many more attempts.
const WRITE_ATTEMPTS_AFTER_SHUTDOWN: u32 = 3;
const DELETE_ATTEMPTS: u32 = 3;
/// A database error of no known kind that repeats this often on the same
/// rows is treated as the rows' fault.
const UNKNOWN_ERROR_REPEATS: u32 = 3;

/// Counters shared by the pollers; the summary is a snapshot of them.
#[derive(Default)]
pub struct Stats {
    received: AtomicU64,
    rows: AtomicU64,
    dead_letters: AtomicU64,
    duplicates: AtomicU64,
    skipped: AtomicU64,
    delete_failures: AtomicU64,
    dead_letters_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Poller failures injected so far (`Settings::inject_poller_failures`).
    injected_failures: AtomicU64,
    /// From the first message received to the last batch finished: the
    /// window throughput is measured over (startup and idle polls excluded).
    active: Mutex<Option<(Instant, Instant)>>,
    /// CPU used while batches were in flight (the summary's per-message figure).
    busy_cpu: BusyCpu,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub received: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub duplicates: u64,
    /// Messages that made no rows.
    pub skipped: u64,
    pub delete_failures: u64,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Seconds from the first message received to the last batch finished.
    pub active_seconds: f64,
    /// Process CPU seconds used while at least one batch was in flight.
    pub busy_cpu_seconds: f64,
}

impl Stats {
    fn record(&self, report: &WriteReport) {
        metrics::counter!(ops::ROWS).increment(report.rows as u64);
        metrics::counter!(ops::DUPLICATES).increment(report.duplicates as u64);
        metrics::counter!(ops::NO_ROWS).increment(report.skipped as u64);
        for reason in &report.dead_letter_reasons {
            metrics::counter!(ops::DEAD_LETTERS, "reason" => ops::reason_label(reason))
                .increment(1);
        }
        self.rows.fetch_add(report.rows as u64, Ordering::Relaxed);
        self.dead_letters
            .fetch_add(report.dead_letter_reasons.len() as u64, Ordering::Relaxed);
        self.duplicates
            .fetch_add(report.duplicates as u64, Ordering::Relaxed);
        self.skipped
            .fetch_add(report.skipped as u64, Ordering::Relaxed);
        if !report.dead_letter_reasons.is_empty() {
            let mut by_reason = self
                .dead_letters_by_reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for reason in &report.dead_letter_reasons {
                *by_reason.entry(reason.clone()).or_default() += 1;
            }
        }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            received: self.received.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            delete_failures: self.delete_failures.load(Ordering::Relaxed),
            dead_letters_by_reason: self
                .dead_letters_by_reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            active_seconds: self
                .active
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .map_or(0.0, |(first, last)| (last - first).as_secs_f64()),
            busy_cpu_seconds: self.busy_cpu.seconds(),
        }
    }

    /// Messages finished so far, however they ended: the supervisor's
    /// measure of progress.
    fn finished(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
            + self.dead_letters.load(Ordering::Relaxed)
            + self.duplicates.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
    }

    fn mark_active(&self, first: Instant) {
        let now = Instant::now();
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *active = Some(match *active {
            Some((earliest, _)) => (earliest.min(first), now),
            None => (first, now),
        });
    }
}

pub struct Pipeline {
    source: SqsSource,
    /// A batch still in progress after half of this is kept invisible.
    visibility_timeout: Duration,
    /// The published component; pollers switch to a new one between batches.
    transform: watch::Receiver<Arc<Transform>>,
    keyring: Arc<Keyring>,
    settings: Settings,
    stats: Arc<Stats>,
}

/// A poller that fails this many times in a row, with no batch finished by
/// any poller in between, means the host cannot run: it stops and fails.
const MAX_FAILURES_WITHOUT_PROGRESS: u32 = 5;

impl Pipeline {
    pub fn new(
        source: SqsSource,
        transform: watch::Receiver<Arc<Transform>>,
        keyring: Arc<Keyring>,
        settings: Settings,
    ) -> Self {
        Self {
            source,
            visibility_timeout: Duration::from_secs(30),
            transform,
            keyring,
            settings,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` turns true (or, draining, the queue is empty).
    ///
    /// Supervises the pollers: one that fails (a panic, whatever its cause)
    /// is logged and restarted after a backoff; its batch, never deleted,
    /// comes back from SQS. Fails at startup (database unreachable, schema
    /// not creatable, component not instantiable) and when pollers keep
    /// failing with no progress, never with a summary that hides it.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) -> Result<Summary> {
        self.visibility_timeout = match self.settings.visibility_timeout {
            Some(timeout) => timeout,
            None => Duration::from_secs(self.source.visibility_timeout().await?.max(1) as u64),
        };
        let mut first_sink = PgSink::connect(&self.settings.database).await?;
        first_sink.ensure_schema().await?;
        // The running component's tables must fit before any batch: a swap
        // checks its own before it is published.
        first_sink
            .prepare_tables(
                self.current_transform().schema(),
                self.settings.create_tables,
            )
            .await?;
        // Fail now, not in every poller, if the component cannot run at all.
        let first_worker = self
            .current_transform()
            .worker(Arc::clone(&self.keyring))
            .await?;

        // The pollers stop on the caller's signal, or when the supervisor
        // gives up on them.
        let (stop, stopped) = watch::channel(false);
        let forward = tokio::spawn(forward_shutdown(shutdown, stop.clone()));
        let shared = Arc::new(self);
        let mut pollers = tokio::task::JoinSet::new();
        let mut index_of = std::collections::HashMap::new();
        let mut first = Some((first_sink, first_worker));
        for index in 0..shared.settings.pollers.max(1) {
            let (sink, worker) = first
                .take()
                .map_or((None, None), |(s, w)| (Some(s), Some(w)));
            let poller = Poller::new(index, &shared, stopped.clone(), sink, worker);
            index_of.insert(pollers.spawn(poller.run(Duration::ZERO)).id(), index);
        }
        let progress = shared
            .settings
            .progress_every
            .map(|every| tokio::spawn(report_progress(Arc::clone(&shared.stats), every)));

        let mut failures_without_progress = 0u32;
        let mut progress_at_last_failure = shared.stats.finished();
        let mut gave_up = None;
        while let Some(joined) = pollers.join_next_with_id().await {
            let Err(error) = joined else { continue };
            let index = index_of.remove(&error.id()).unwrap_or(usize::MAX);
            let finished = shared.stats.finished();
            if finished != progress_at_last_failure {
                failures_without_progress = 0;
                progress_at_last_failure = finished;
            }
            failures_without_progress += 1;
            metrics::counter!(ops::POLLER_RESTARTS).increment(1);
            // A panic's payload could quote a message: log only that it was one.
            let what = if error.is_panic() {
                "panicked"
            } else {
                "was cancelled"
            };
            if *stopped.borrow() {
                tracing::warn!(poller = index, "a poller {what} while stopping");
                continue;
            }
            if failures_without_progress > MAX_FAILURES_WITHOUT_PROGRESS {
                tracing::error!(
                    poller = index,
                    "a poller {what}: {failures_without_progress} failures in a row with no \
                     batch finished; stopping"
                );
                gave_up = Some(failures_without_progress);
                let _ = stop.send(true);
                continue;
            }
            let delay = Backoff::FIRST.saturating_mul(1 << failures_without_progress.min(6));
            tracing::error!(
                poller = index,
                "a poller {what}; restarting it in {} ms (its batch will be redelivered)",
                delay.as_millis()
            );
            let poller = Poller::new(index, &shared, stopped.clone(), None, None);
            index_of.insert(pollers.spawn(poller.run(delay)).id(), index);
        }
        forward.abort();
        if let Some(progress) = progress {
            progress.abort();
        }
        if let Some(failures) = gave_up {
            bail!("the pollers keep failing ({failures} times in a row with no progress)");
        }
        Ok(shared.stats.summary())
    }

    fn current_transform(&self) -> Arc<Transform> {
        Arc::clone(&self.transform.borrow())
    }
}

/// Passes the caller's shutdown on to the pollers' own stop channel.
async fn forward_shutdown(mut shutdown: watch::Receiver<bool>, stop: watch::Sender<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
    let _ = stop.send(true);
}

struct Poller {
    index: usize,
    shared: Arc<Pipeline>,
    worker: Option<Worker>,
    sink: Option<PgSink>,
    shutdown: watch::Receiver<bool>,
}

impl Poller {
    fn new(
        index: usize,
        shared: &Arc<Pipeline>,
        shutdown: watch::Receiver<bool>,
        sink: Option<PgSink>,
        worker: Option<Worker>,
    ) -> Self {
        Self {
            index,
            shared: Arc::clone(shared),
            worker,
            sink,
            shutdown,
        }
    }

    /// The receive loop returns no `Result` on purpose: every error is handled
    /// where it happens, so no `?` can quietly end a poller.
    async fn run(mut self, delay: Duration) {
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = self.shutdown.changed() => return,
            }
        }
        let shared = Arc::clone(&self.shared);
        let settings = &shared.settings;
        let wait = if settings.drain {
            DRAIN_WAIT_SECONDS.min(settings.wait_seconds)
        } else {
            settings.wait_seconds
        };
        let visibility = settings
            .visibility_timeout
            .map(|timeout| timeout.as_secs() as i32);
        let mut backoff = Backoff::default();
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            // Before receiving: a batch received without a worker to run it
            // would only wait out its visibility timeout and count towards
            // the redrive limit.
            if let Err(error) = self.ensure_worker().await {
                tracing::error!(
                    poller = self.index,
                    "cannot instantiate the transform, backing off: {error:#}"
                );
                if !backoff.wait(&mut self.shutdown).await {
                    break;
                }
                continue;
            }
            // Never cancelled, not even by a shutdown: a receive dropped
            // mid-flight may already have made messages invisible, and they
            // would sit in flight until their timeout. It ends within the
            // long-poll wait, and what it brings is processed like any batch.
            let received = shared
                .source
                .receive(settings.batch_size, wait, visibility)
                .await;
            let messages = match received {
                Ok(messages) => {
                    backoff.reset();
                    messages
                }
                Err(error) => {
                    tracing::warn!(
                        poller = self.index,
                        "receive failed, backing off: {error:#}"
                    );
                    if !backoff.wait(&mut self.shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            if messages.is_empty() {
                if settings.drain && queue_is_empty(&shared.source, self.index).await {
                    break;
                }
                continue;
            }
            self.shared
                .stats
                .received
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            metrics::counter!(ops::RECEIVED).increment(messages.len() as u64);
            // From here to its delete, the batch's CPU is the summary's.
            let busy = shared.stats.busy_cpu.batch();
            self.inject_failure();
            let received_at = Instant::now();
            self.process(messages).await;
            drop(busy);
            self.shared.stats.mark_active(received_at);
        }
        tracing::debug!(poller = self.index, "poller stopped");
    }

    /// Fault injection for the supervisor's tests; off (0) in normal runs.
    fn inject_failure(&self) {
        let wanted = self.shared.settings.inject_poller_failures;
        if wanted > 0
            && self
                .shared
                .stats
                .injected_failures
                .fetch_add(1, Ordering::Relaxed)
                < wanted
        {
            panic!("injected poller failure");
        }
    }

    /// A worker of the published component. Switching here, between
    /// batches, is what makes a swap atomic: a batch runs start to finish
    /// on one component.
    async fn ensure_worker(&mut self) -> Result<()> {
        let current = self.shared.current_transform();
        if let Some(worker) = &self.worker
            && Arc::ptr_eq(worker.transform(), &current)
        {
            return Ok(());
        }
        self.worker = None;
        self.worker = Some(current.worker(Arc::clone(&self.shared.keyring)).await?);
        Ok(())
    }

    /// Transform, commit, delete. On any transient failure the batch is left
    /// undeleted: SQS redelivers it and the ledger makes the retry exact.
    async fn process(&mut self, messages: Vec<Received>) {
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        let heartbeat = keep_invisible(
            self.shared.source.clone(),
            receipts,
            self.shared.visibility_timeout,
            self.index,
        );
        tokio::select! {
            () = self.transform_write_delete(messages) => {}
            // Never completes: it only runs for as long as the batch does.
            () = heartbeat => {}
        }
    }

    async fn transform_write_delete(&mut self, messages: Vec<Received>) {
        let Some((outcomes, component)) = self.transform(&messages).await else {
            return;
        };
        let batch: Vec<Processed<'_>> = messages
            .iter()
            .zip(&outcomes)
            .map(|(message, outcome)| Processed { message, outcome })
            .collect();
        let Some(report) = self.write(&batch, &component).await else {
            return;
        };
        self.shared.stats.record(&report);
        self.delete(&messages).await;
    }

    /// The outcomes, and the component that made them (whose declaration
    /// and digest the write needs).
    async fn transform(&mut self, messages: &[Received]) -> Option<(Vec<Outcome>, Arc<Transform>)> {
        // Again after receiving: a swap published during the receive applies
        // to this batch. Failing here leaves the batch to SQS; the next loop
        // backs off before receiving again.
        if let Err(error) = self.ensure_worker().await {
            tracing::error!(
                poller = self.index,
                "cannot instantiate the transform: {error:#}"
            );
            return None;
        }
        let worker = self.worker.as_mut()?;
        let started = Instant::now();
        match worker.run(messages).await {
            Ok(outcomes) => {
                metrics::histogram!(ops::TRANSFORM_SECONDS).record(started.elapsed());
                Some((outcomes, Arc::clone(worker.transform())))
            }
            Err(error) => {
                // The next loop makes a new worker, backing off if it must.
                tracing::error!(
                    poller = self.index,
                    "the transform runtime failed: {error:#}"
                );
                self.worker = None;
                None
            }
        }
    }

    /// Commits a batch; `None` leaves it to SQS to redeliver.
    async fn write(
        &mut self,
        batch: &[Processed<'_>],
        component: &Transform,
    ) -> Option<WriteReport> {
        let started = Instant::now();
        let report = self.write_isolating(batch, component, true).await?;
        metrics::histogram!(ops::COMMIT_SECONDS).record(started.elapsed());
        Some(report)
    }

    /// Writes `batch`, retrying what may pass and splitting what will not:
    /// when PostgreSQL refuses the data, each half is written on its own
    /// (each its own transaction, claimed in the ledger), down to the single
    /// rows it refuses, which become `database_rejected` dead letters. A
    /// dead letter it refuses too (`isolate` false) is retried like a
    /// transient failure.
    fn write_isolating<'w>(
        &'w mut self,
        batch: &'w [Processed<'w>],
        component: &'w Transform,
        isolate: bool,
    ) -> Pin<Box<dyn Future<Output = Option<WriteReport>> + Send + 'w>> {
        Box::pin(async move {
            let mut backoff = Backoff::default();
            let mut attempts_left_after_shutdown = WRITE_ATTEMPTS_AFTER_SHUTDOWN;
            let mut repeats = 0;
            loop {
                let error = match self.try_write(batch, component).await {
                    Ok(report) => return Some(report),
                    Err(error) => error,
                };
                // A failed connection is replaced; a failed statement on a
                // live one is retried as is.
                self.sink.take_if(|sink| sink.is_closed());
                let refused = match dberror::classify(&error) {
                    WriteFailure::Transient => None,
                    WriteFailure::Data { sqlstate } => Some(sqlstate),
                    WriteFailure::Unknown { sqlstate } => {
                        repeats += 1;
                        (repeats >= UNKNOWN_ERROR_REPEATS).then_some(sqlstate)
                    }
                };
                match refused {
                    Some(sqlstate) if isolate => {
                        tracing::warn!(
                            poller = self.index,
                            batch = batch.len(),
                            sqlstate = %sqlstate,
                            "PostgreSQL refused the batch's data; splitting it to find the rows"
                        );
                        return self.split(batch, component, &sqlstate).await;
                    }
                    // Even the message's dead letter is refused: the fault is
                    // the database's (a revoked grant, a dropped table), not
                    // the rows'. Wait it out, keeping the batch invisible,
                    // rather than let redeliveries push good messages to the
                    // queue's redrive target.
                    Some(sqlstate) => tracing::error!(
                        poller = self.index,
                        sqlstate = %sqlstate,
                        "PostgreSQL refuses even a dead letter; retrying until it accepts"
                    ),
                    None => tracing::warn!(
                        poller = self.index,
                        batch = batch.len(),
                        "database write failed, will retry: {error:#}"
                    ),
                }
                if *self.shutdown.borrow() {
                    attempts_left_after_shutdown -= 1;
                    if attempts_left_after_shutdown == 0 {
                        tracing::warn!(
                            poller = self.index,
                            "giving up on a batch at shutdown; SQS will redeliver it"
                        );
                        return None;
                    }
                }
                backoff.sleep().await;
            }
        })
    }

    async fn split(
        &mut self,
        batch: &[Processed<'_>],
        component: &Transform,
        sqlstate: &str,
    ) -> Option<WriteReport> {
        if let [one] = batch {
            let refused = Outcome::Rejected(Rejection::new(
                reason::DATABASE_REJECTED,
                format!("PostgreSQL refused the row (SQLSTATE {sqlstate})"),
            ));
            let dead_letter = [Processed {
                message: one.message,
                outcome: &refused,
            }];
            return self.write_isolating(&dead_letter, component, false).await;
        }
        let (left, right) = batch.split_at(batch.len() / 2);
        let mut report = self.write_isolating(left, component, true).await?;
        let right = self.write_isolating(right, component, true).await?;
        report.rows += right.rows;
        report.duplicates += right.duplicates;
        report.skipped += right.skipped;
        report.dead_letter_reasons.extend(right.dead_letter_reasons);
        Some(report)
    }

    async fn try_write(
        &mut self,
        batch: &[Processed<'_>],
        component: &Transform,
    ) -> Result<WriteReport> {
        let sink = match &mut self.sink {
            Some(sink) => sink,
            None => self
                .sink
                .insert(PgSink::connect(&self.shared.settings.database).await?),
        };
        sink.write_batch(
            batch,
            component.schema(),
            component.digest(),
            &self.shared.keyring,
        )
        .await
    }

    async fn delete(&mut self, messages: &[Received]) {
        for attempt in 1..=DELETE_ATTEMPTS {
            match self.shared.source.delete(messages).await {
                Ok(failed) => {
                    self.shared
                        .stats
                        .delete_failures
                        .fetch_add(failed as u64, Ordering::Relaxed);
                    metrics::counter!(ops::DELETES_FAILED).increment(failed as u64);
                    return;
                }
                Err(error) if attempt < DELETE_ATTEMPTS => {
                    tracing::warn!(poller = self.index, "delete failed, retrying: {error:#}");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(error) => {
                    // Committed but not deleted: SQS redelivers, the ledger skips.
                    tracing::warn!(
                        poller = self.index,
                        "delete failed; the batch will be redelivered and skipped: {error:#}"
                    );
                    self.shared
                        .stats
                        .delete_failures
                        .fetch_add(messages.len() as u64, Ordering::Relaxed);
                    metrics::counter!(ops::DELETES_FAILED).increment(messages.len() as u64);
                }
            }
        }
    }
}

/// Draining ends only when nothing is left, not even in flight: messages
/// another poller abandoned come back after their visibility timeout.
async fn queue_is_empty(source: &SqsSource, poller: usize) -> bool {
    match source.depth().await {
        Ok(depth) => depth.visible + depth.in_flight == 0,
        Err(error) => {
            tracing::warn!(poller, "cannot read the queue depth: {error:#}");
            false
        }
    }
}

/// While a batch is in progress, pushes its visibility timeout out every half
/// timeout, so SQS does not hand it to another consumer mid-way.
async fn keep_invisible(
    source: SqsSource,
    receipts: Vec<String>,
    timeout: Duration,
    poller: usize,
) {
    let seconds = timeout.as_secs().clamp(1, 43_200) as i32;
    let mut ticker = tokio::time::interval(timeout / 2);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match source.extend_visibility(&receipts, seconds).await {
            Ok(0) => tracing::debug!(
                poller,
                batch = receipts.len(),
                "extended visibility by {seconds} s"
            ),
            Ok(failed) => tracing::warn!(
                poller,
                failed,
                "SQS refused to extend visibility of some messages"
            ),
            Err(error) => tracing::warn!(poller, "cannot extend visibility: {error:#}"),
        }
    }
}

async fn report_progress(stats: Arc<Stats>, every: Duration) {
    let started = Instant::now();
    let mut last = Summary::default();
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let now = stats.summary();
        if now == last {
            continue;
        }
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            received = now.received,
            rows = now.rows,
            dead_letters = now.dead_letters,
            duplicates = now.duplicates,
            "progress: {} received, {} rows, {} dead letters, {} duplicates skipped ({:.0} msgs/s)",
            now.received,
            now.rows,
            now.dead_letters,
            now.duplicates,
            now.received as f64 / elapsed
        );
        last = now;
    }
}

/// Exponential backoff from 100 ms to 10 s.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = Self::FIRST.saturating_mul(1 << self.failures.min(10));
        self.failures += 1;
        delay.min(Self::MAX)
    }

    async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps unless shutdown comes first; returns false on shutdown.
    async fn wait(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.changed() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[9], Duration::from_secs(10));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
