//! A received batch on its way through the stages, and what it holds while
//! it is in flight: its messages' invisibility, its charges to the memory
//! budget and the busy-CPU meter.
//!
//! Everything is released when the batch is dropped, wherever that is: after
//! its delete, or when a stage gives up on it (a failed transform runtime, a
//! write abandoned at shutdown, a stage that panicked). A dropped batch's
//! messages are simply no longer kept invisible: SQS redelivers them, and the
//! ledger makes the retry exact. No stage has to remember to clean up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::budget::{Charge, MemoryBudget};
use crate::record::Outcome;
use crate::runtime::Transform;
use crate::source::{Received, SqsSource};
use crate::usage::{BusyBatch, BusyCpu};

/// What a message costs the memory budget beyond its body, ids and rows.
const OVERHEAD_PER_MESSAGE: usize = 1024;

/// Messages received together, from their receive to their delete.
pub(super) struct Batch {
    pub messages: Vec<Received>,
    pub received_at: Instant,
    _heartbeat: Heartbeat,
    _busy: BusyBatch,
    /// Its bytes, then its rows' bytes.
    charges: Vec<Charge>,
}

/// A batch and what the transform made of it.
pub(super) struct Transformed {
    pub batch: Batch,
    pub outcomes: Vec<Outcome>,
    /// The component that made the outcomes: its declaration and digest go
    /// with the rows.
    pub component: Arc<Transform>,
}

impl Batch {
    /// Starts keeping `messages` invisible (every half `visibility_timeout`)
    /// and counts the batch as busy.
    pub fn new(
        messages: Vec<Received>,
        source: &SqsSource,
        visibility_timeout: Duration,
        busy: &Arc<BusyCpu>,
    ) -> Self {
        let receipts = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        Self {
            messages,
            received_at: Instant::now(),
            _heartbeat: Heartbeat(tokio::spawn(keep_invisible(
                source.clone(),
                receipts,
                visibility_timeout,
            ))),
            _busy: busy.batch(),
            charges: Vec::new(),
        }
    }

    /// Waits until the batch fits in `budget`, then charges it until
    /// dropped: the back-pressure that bounds memory.
    pub async fn admit(mut self, budget: &Arc<MemoryBudget>) -> Self {
        let bytes: usize = self
            .messages
            .iter()
            .map(|m| m.body.len() + m.receipt_handle.len() + m.id.len() + OVERHEAD_PER_MESSAGE)
            .sum();
        self.charges.push(budget.admit(bytes).await);
        self
    }

    /// Charges what the transform made of the batch (never waits: see
    /// [`MemoryBudget`]).
    pub fn charge_rows(&mut self, budget: &Arc<MemoryBudget>, outcomes: &[Outcome]) {
        let bytes = outcomes.iter().map(Outcome::heap_bytes).sum();
        self.charges.push(budget.charge(bytes));
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }
}

/// Aborts the batch's visibility heartbeat when the batch is dropped.
struct Heartbeat(JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pushes the batch's visibility timeout out every half timeout, so SQS
/// does not hand it to another consumer while it is in flight here.
async fn keep_invisible(source: SqsSource, receipts: Vec<String>, timeout: Duration) {
    let seconds = timeout.as_secs().clamp(1, 43_200) as i32;
    let mut ticker = tokio::time::interval(timeout / 2);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match source.extend_visibility(&receipts, seconds).await {
            Ok(0) => tracing::debug!(batch = receipts.len(), "extended visibility by {seconds} s"),
            Ok(failed) => {
                tracing::warn!(failed, "SQS refused to extend visibility of some messages")
            }
            Err(error) => tracing::warn!("cannot extend visibility: {error:#}"),
        }
    }
}
