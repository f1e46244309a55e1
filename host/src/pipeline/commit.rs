//! Stage 3, commit: each committer owns one database connection and writes
//! several transformed batches as one transaction.
//!
//! It takes the batches waiting for it, and waits up to the commit window
//! for more, until it holds the commit's message limit (SQS Lambda's
//! batching window, with the same meaning); batches made by different
//! components never share a transaction. Under load, batches queue while a
//! commit runs, so commits grow by themselves and one fsync covers many.
//!
//! A committed batch goes on to be deleted; a write that fails for a
//! transient reason is retried, keeping the batches invisible; one that
//! PostgreSQL refuses for its data is split in halves, each its own
//! transaction claimed in the ledger, down to the single rows it refuses,
//! which become `database_rejected` dead letters (Debezium's JDBC sink does
//! the same).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};

use super::batch::{Batch, Transformed};
use super::supervise::Inbox;
use super::{Backoff, Shared};
use crate::dberror::{self, WriteFailure};
use crate::ops;
use crate::record::{Outcome, Rejection, reason};
use crate::runtime::Transform;
use crate::sink::{PgSink, Processed, WriteReport};

/// After a stop a failing write gets this many more attempts.
const WRITE_ATTEMPTS_AFTER_SHUTDOWN: u32 = 3;
/// A database error of no known kind that repeats this often on the same
/// rows is treated as the rows' fault.
const UNKNOWN_ERROR_REPEATS: u32 = 3;

pub(super) struct Committer {
    shared: Arc<Shared>,
    index: usize,
    sink: Option<PgSink>,
    stop: watch::Receiver<bool>,
    /// A batch taken but left for the next commit: its component differs,
    /// or it would take the commit past its message limit.
    held: Option<Transformed>,
    /// Set when a write was abandoned at shutdown: the rest is left to SQS
    /// rather than wait out the same failure batch after batch.
    abandoning: bool,
}

impl Committer {
    /// `sink`: a connection to start with (the startup check's), if any.
    pub fn new(
        shared: Arc<Shared>,
        index: usize,
        sink: Option<PgSink>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared,
            index,
            sink,
            stop,
            held: None,
            abandoning: false,
        }
    }

    pub async fn run(mut self, input: Inbox<Transformed>, output: mpsc::Sender<Batch>) {
        loop {
            let group = self.take(&input).await;
            if group.is_empty() {
                break;
            }
            if self.abandoning {
                continue;
            }
            let Some(report) = self.commit(&group).await else {
                continue;
            };
            self.shared.stats.record(&report);
            for transformed in group {
                if output.send(transformed.batch).await.is_err() {
                    return;
                }
            }
        }
        tracing::debug!(committer = self.index, "committer stopped");
    }

    /// The next transaction's batches: empty once the input is closed and
    /// drained. Holding the inbox's lock while the window runs lets the
    /// other committers write meanwhile, not split the batches with it.
    async fn take(&mut self, input: &Inbox<Transformed>) -> Vec<Transformed> {
        let settings = &self.shared.settings;
        let mut inbox = input.lock().await;
        let first = match self.held.take() {
            Some(held) => held,
            None => match inbox.recv().await {
                Some(first) => first,
                None => return Vec::new(),
            },
        };
        let deadline = tokio::time::Instant::now() + settings.commit_window;
        let mut messages = first.batch.len();
        let mut group = vec![first];
        while messages < settings.commit_messages {
            let next = match inbox.try_recv() {
                Ok(next) => next,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, inbox.recv()).await {
                        Ok(Some(next)) => next,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if !Arc::ptr_eq(&next.component, &group[0].component)
                || messages + next.batch.len() > settings.commit_messages
            {
                self.held = Some(next);
                break;
            }
            messages += next.batch.len();
            group.push(next);
        }
        group
    }

    /// Writes the group as one transaction; `None` leaves it to SQS.
    async fn commit(&mut self, group: &[Transformed]) -> Option<WriteReport> {
        let component = Arc::clone(&group[0].component);
        let processed: Vec<Processed<'_>> = group
            .iter()
            .flat_map(|t| {
                t.batch
                    .messages
                    .iter()
                    .zip(&t.outcomes)
                    .map(|(message, outcome)| Processed { message, outcome })
            })
            .collect();
        let started = Instant::now();
        let report = self.write_isolating(&processed, &component, true).await;
        if report.is_some() {
            metrics::histogram!(ops::COMMIT_SECONDS).record(started.elapsed());
            metrics::histogram!(ops::COMMIT_MESSAGES).record(processed.len() as f64);
        }
        report
    }

    /// Writes `batch`, retrying what may pass and splitting what will not;
    /// a dead letter PostgreSQL refuses too (`isolate` false) is retried
    /// like a transient failure.
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
                            committer = self.index,
                            messages = batch.len(),
                            sqlstate = %sqlstate,
                            "PostgreSQL refused the transaction's data; splitting it to find the rows"
                        );
                        return self.split(batch, component, &sqlstate).await;
                    }
                    // Even the message's dead letter is refused: the fault is
                    // the database's (a revoked grant, a dropped table), not
                    // the rows'. Wait it out, keeping the batch invisible,
                    // rather than let redeliveries push good messages to the
                    // queue's redrive target.
                    Some(sqlstate) => tracing::error!(
                        committer = self.index,
                        sqlstate = %sqlstate,
                        "PostgreSQL refuses even a dead letter; retrying until it accepts"
                    ),
                    None => tracing::warn!(
                        committer = self.index,
                        messages = batch.len(),
                        "database write failed, will retry: {error:#}"
                    ),
                }
                if *self.stop.borrow() {
                    attempts_left_after_shutdown -= 1;
                    if attempts_left_after_shutdown == 0 {
                        tracing::warn!(
                            committer = self.index,
                            "giving up on a write at shutdown; SQS will redeliver its messages"
                        );
                        self.abandoning = true;
                        return None;
                    }
                }
                // A stop cuts the wait short: the attempts left after it
                // come at once, so the backoff does not hold a shutdown.
                let mut stop = self.stop.clone();
                tokio::select! {
                    () = backoff.sleep() => {}
                    _ = stop.wait_for(|stopped| *stopped) => {}
                }
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
    ) -> anyhow::Result<WriteReport> {
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
}
