//! Stage 2, transform: each task owns one wasm [`Worker`] and runs one
//! received batch per call.
//!
//! The worker is switched to the published component before each call, and
//! only then: a batch runs start to finish on one component, which is what
//! makes a hot swap atomic. A worker that cannot be made keeps its batch
//! (still invisible) and retries with backoff, so a broken runtime holds the
//! receivers back instead of cycling messages through SQS towards its
//! redrive limit.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::batch::{Batch, Transformed};
use super::supervise::{Inbox, next};
use super::{Backoff, Shared};
use crate::ops;
use crate::runtime::Worker;

pub(super) struct Transformer {
    pub shared: Arc<Shared>,
    pub index: usize,
    pub worker: Option<Worker>,
    pub stop: watch::Receiver<bool>,
}

impl Transformer {
    pub async fn run(mut self, input: Inbox<Batch>, output: mpsc::Sender<Transformed>) {
        while let Some(batch) = next(&input).await {
            let Some(transformed) = self.transform(batch).await else {
                continue;
            };
            if output.send(transformed).await.is_err() {
                break;
            }
        }
        tracing::debug!(transformer = self.index, "transformer stopped");
    }

    /// The batch's outcomes; `None` leaves it to SQS to redeliver.
    async fn transform(&mut self, mut batch: Batch) -> Option<Transformed> {
        self.ensure_worker().await?;
        let worker = self.worker.as_mut()?;
        let started = Instant::now();
        match worker.run(&batch.messages).await {
            Ok(outcomes) => {
                metrics::histogram!(ops::TRANSFORM_SECONDS).record(started.elapsed());
                batch.charge_rows(&self.shared.budget, &outcomes);
                Some(Transformed {
                    component: Arc::clone(worker.transform()),
                    batch,
                    outcomes,
                })
            }
            Err(error) => {
                // The next batch makes a new worker.
                tracing::error!(
                    transformer = self.index,
                    "the transform runtime failed: {error:#}"
                );
                self.worker = None;
                None
            }
        }
    }

    /// A worker of the published component, retried with backoff until one
    /// can be made; `None` when the pipeline stops first.
    async fn ensure_worker(&mut self) -> Option<()> {
        let mut backoff = Backoff::default();
        loop {
            let current = Arc::clone(&self.shared.transform.borrow());
            if let Some(worker) = &self.worker
                && Arc::ptr_eq(worker.transform(), &current)
            {
                return Some(());
            }
            self.worker = None;
            match current.worker(Arc::clone(&self.shared.keyring)).await {
                Ok(worker) => self.worker = Some(worker),
                Err(error) => {
                    tracing::error!(
                        transformer = self.index,
                        "cannot instantiate the transform, backing off: {error:#}"
                    );
                    if !backoff.wait(&mut self.stop).await {
                        return None;
                    }
                }
            }
        }
    }
}
