//! Stage 1, receive: each receiver long-polls SQS and hands the batch on at
//! once, so the next receive is in flight while earlier batches are
//! transformed, written and deleted. A full hand-off, or the memory budget,
//! holds a receiver back (with its batch kept invisible) until the stages
//! after it catch up.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};

use super::batch::Batch;
use super::{Backoff, Shared};
use crate::ops;
use crate::source::SqsSource;

/// In drain mode an empty receive may end a receiver, so wait briefly.
const DRAIN_WAIT_SECONDS: i32 = 2;

/// One receiver. Returns no `Result` on purpose: every error is handled
/// where it happens, so no `?` can quietly end it.
pub(super) async fn run(
    shared: Arc<Shared>,
    index: usize,
    output: mpsc::Sender<Batch>,
    mut stop: watch::Receiver<bool>,
) {
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
    while !*stop.borrow() {
        // Never cancelled, not even by a stop: a receive dropped mid-flight
        // may already have made messages invisible, and they would sit in
        // flight until their timeout. It ends within the long-poll wait, and
        // what it brings is processed like any batch.
        let messages = match shared
            .source
            .receive(settings.batch_size, wait, visibility)
            .await
        {
            Ok(messages) => {
                backoff.reset();
                messages
            }
            Err(error) => {
                tracing::warn!(receiver = index, "receive failed, backing off: {error:#}");
                if !backoff.wait(&mut stop).await {
                    break;
                }
                continue;
            }
        };
        if messages.is_empty() {
            if settings.drain && queue_is_empty(&shared.source, index).await {
                break;
            }
            continue;
        }
        shared
            .stats
            .received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        metrics::counter!(ops::RECEIVED).increment(messages.len() as u64);
        let batch = Batch::new(
            messages,
            &shared.source,
            shared.visibility_timeout,
            &shared.stats.busy_cpu,
        );
        inject_failure(&shared);
        let batch = batch.admit(&shared.budget).await;
        // A closed hand-off means the stages after this one are gone: the
        // batch is dropped and SQS redelivers it.
        if output.send(batch).await.is_err() {
            break;
        }
    }
    tracing::debug!(receiver = index, "receiver stopped");
}

/// Fault injection for the supervisor's tests; off (0) in normal runs.
fn inject_failure(shared: &Shared) {
    let wanted = shared.settings.inject_poller_failures;
    if wanted > 0
        && shared
            .stats
            .injected_failures
            .fetch_add(1, Ordering::Relaxed)
            < wanted
    {
        panic!("injected poller failure");
    }
}

/// Draining ends only when nothing is left, not even in flight: this host's
/// own batches still on their way, or messages another consumer abandoned,
/// which come back after their visibility timeout.
async fn queue_is_empty(source: &SqsSource, receiver: usize) -> bool {
    match source.depth().await {
        Ok(depth) => depth.visible + depth.in_flight == 0,
        Err(error) => {
            tracing::warn!(receiver, "cannot read the queue depth: {error:#}");
            false
        }
    }
}
