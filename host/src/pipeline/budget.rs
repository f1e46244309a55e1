//! The memory budget of the messages in flight: what bounds the host when
//! PostgreSQL (or SQS's deletes) falls behind.
//!
//! A batch is admitted when its bytes fit in what is left (or, larger than
//! the whole budget, when nothing else is in flight), and charged the bytes
//! of its rows when it is transformed; each charge is paid back when the
//! batch is dropped. Only the receivers wait, for admission; charging rows
//! never waits, so a stage that must move a batch on to free the budget is
//! never stuck behind it. The host holds at most the budget, plus one
//! received batch per poller waiting for admission, plus the rows of the
//! batches admitted before the rows spent it (the received hand-off and the
//! transforms running: each call's rows are capped by its output budget).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

pub(super) struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    room: Notify,
}

impl MemoryBudget {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            limit: limit_bytes.max(1),
            used: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }

    /// Waits until `bytes` fit in what is left of the budget (or nothing
    /// is in flight), then charges them; paid back on drop.
    pub async fn admit(self: &Arc<Self>, bytes: usize) -> Charge {
        loop {
            // Registered before the check, so a release in between wakes it.
            let released = self.room.notified();
            let used = self.used.load(Ordering::Acquire);
            if used == 0 || used.saturating_add(bytes) <= self.limit {
                // Check and charge as one step, or two receivers could both
                // take the last room.
                if self
                    .used
                    .compare_exchange(used, used + bytes, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Charge {
                        budget: Arc::clone(self),
                        bytes,
                    };
                }
                continue;
            }
            released.await;
        }
    }

    /// Charges `bytes` at once, whatever is spent; paid back on drop.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Charge {
            budget: Arc::clone(self),
            bytes,
        }
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes charged to the budget until dropped.
pub(super) struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn batches_are_admitted_while_they_fit_and_charges_never_wait() {
        let budget = Arc::new(MemoryBudget::new(100));
        let first = budget.admit(60).await;
        // Past the limit: charging still succeeds (a transform's rows).
        let rows = budget.charge(200);
        assert_eq!(budget.used(), 260);
        let waiting = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.admit(30).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a batch was admitted with the budget spent"
        );
        drop(rows);
        // 60 + 30 of 100: it fits now.
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting receiver was never woken")
            .unwrap();
        assert_eq!(budget.used(), 90);
        // 90 + 20 does not fit; alone, a batch larger than the budget does.
        let too_big = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.admit(20).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !too_big.is_finished(),
            "a batch was admitted past the budget"
        );
        drop((first, second));
        drop(too_big.await.unwrap());
        let alone = budget.admit(500).await;
        assert_eq!(budget.used(), 500);
        drop(alone);
        assert_eq!(budget.used(), 0);
    }
}
