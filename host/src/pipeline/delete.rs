//! Stage 4, delete: committed batches are deleted from SQS by several
//! deleters at once, off the path of the receives and commits. Only a
//! committed batch ever gets here. A delete that fails loses nothing: the
//! message comes back and the ledger recognises it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::Shared;
use super::batch::Batch;
use super::supervise::{Inbox, next};
use crate::ops;

const DELETE_ATTEMPTS: u32 = 3;

pub(super) async fn run(
    shared: Arc<Shared>,
    index: usize,
    input: Inbox<Batch>,
    stop: watch::Receiver<bool>,
) {
    while let Some(batch) = next(&input).await {
        delete(&shared, index, &batch, &stop).await;
        shared.stats.mark_active(batch.received_at);
    }
    tracing::debug!(deleter = index, "deleter stopped");
}

async fn delete(shared: &Shared, index: usize, batch: &Batch, stop: &watch::Receiver<bool>) {
    let failed = |count: usize| {
        shared
            .stats
            .delete_failures
            .fetch_add(count as u64, Ordering::Relaxed);
        metrics::counter!(ops::DELETES_FAILED).increment(count as u64);
    };
    // Once SQS failed a delete after a stop, the rest are left to come back
    // (and be skipped by the ledger) rather than each wait out the SDK's
    // timeouts and hold the shutdown.
    if *stop.borrow() && shared.deletes_failed_at_stop.load(Ordering::Relaxed) {
        return failed(batch.len());
    }
    for attempt in 1..=DELETE_ATTEMPTS {
        match shared.source.delete(&batch.messages).await {
            Ok(refused) => return failed(refused),
            Err(error) if attempt < DELETE_ATTEMPTS && !*stop.borrow() => {
                tracing::warn!(deleter = index, "delete failed, retrying: {error:#}");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(error) => {
                // Committed but not deleted: SQS redelivers, the ledger skips.
                tracing::warn!(
                    deleter = index,
                    "delete failed; the batch will be redelivered and skipped: {error:#}"
                );
                if *stop.borrow() {
                    shared.deletes_failed_at_stop.store(true, Ordering::Relaxed);
                }
                return failed(batch.len());
            }
        }
    }
}
