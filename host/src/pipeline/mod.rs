//! The pipeline: SQS → batch → wasm → PostgreSQL → delete, as four stages
//! joined by bounded hand-offs, so no stage waits on another's round trip:
//!
//! ```text
//!  receive ×pollers ─► transform ×transformers ─► commit ×writers ─► delete ×pollers
//!  (long polls;        (one wasm worker each;      (one connection each;     (DeleteMessageBatch,
//!   next one always     swaps between calls)        batches coalesced into    after commit only)
//!   in flight)                                      one transaction)
//! ```
//!
//! * [`receive`]: each receiver hands its batch on and polls again at once.
//! * [`transform`]: each task owns a wasm worker, switched between calls.
//! * [`commit`]: each task owns a connection, coalesces batches up to a
//!   message limit or a time window, and splits a refused transaction
//!   down to the rows PostgreSQL refuses.
//! * [`delete`]: deletes committed batches, several at a time.
//! * [`batch`]: a batch in flight keeps its messages invisible and holds its
//!   charges to the memory budget ([`budget`]) until it is dropped, wherever
//!   that happens.
//! * [`supervise`]: restarts a task that panics, and closes each stage's
//!   output when its last task ends, so a stop drains stage by stage.
//!
//! Every failure is either a message's (it becomes a dead letter) or
//! transient (the stage retries; a batch it gives up on is dropped, never
//! deleted, and comes back from SQS, where the ledger makes the retry exact).
//! Nothing here ends the process but a stop or, in drain mode, an empty
//! queue.

mod batch;
mod budget;
mod commit;
mod delete;
mod receive;
mod stats;
mod supervise;
mod transform;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{mpsc, watch};

pub use stats::{Stats, Summary};

use crate::masking::Keyring;
use crate::runtime::Transform;
use crate::sink::{Database, PgSink};
use crate::source::SqsSource;
use budget::MemoryBudget;
use supervise::{Stage, inbox, supervise};

/// Messages one transaction may hold, by default.
pub const DEFAULT_COMMIT_MESSAGES: usize = 500;
/// How long a commit waits for more batches, by default.
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_millis(10);
/// Database connections committing at once, by default.
pub const DEFAULT_WRITERS: usize = 2;
/// Memory the batches in flight may hold, by default (MiB).
pub const DEFAULT_MAX_IN_FLIGHT_MIB: u32 = 32;

/// How a pipeline runs (see `config` for the settings behind these).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Receives kept in flight at once.
    pub pollers: usize,
    /// Wasm workers running batches at once.
    pub transformers: usize,
    /// Database connections committing at once.
    pub writers: usize,
    pub batch_size: usize,
    pub wait_seconds: i32,
    /// Most messages one transaction holds.
    pub commit_messages: usize,
    /// How long a commit waits for more batches before it writes.
    pub commit_window: Duration,
    /// Memory the batches in flight may hold; a receiver waits for room.
    pub max_in_flight_mib: u32,
    pub database: Database,
    /// Exit once the queue is empty instead of polling forever.
    pub drain: bool,
    /// How often to log progress; `None` logs none.
    pub progress_every: Option<Duration>,
    /// The visibility timeout to keep in-flight batches under; `None` reads
    /// the queue's own at startup.
    pub visibility_timeout: Option<Duration>,
    /// For the supervisor's tests: the first this many batches received
    /// make their receiver panic.
    pub inject_poller_failures: u64,
    /// Create the component's declared tables when they are missing.
    pub create_tables: bool,
}

impl Settings {
    fn budget_bytes(&self) -> usize {
        (self.max_in_flight_mib as usize).saturating_mul(1 << 20)
    }

    /// Bounds of the hand-offs, in batches: enough for a full commit per
    /// writer to wait while one runs; the memory budget bounds their bytes.
    fn hand_offs(&self) -> HandOffs {
        let per_commit = self.commit_messages.div_ceil(self.batch_size.max(1)).max(1);
        HandOffs {
            received: 2 * self.transformers.max(1),
            transformed: per_commit * self.writers.max(1),
            committed: per_commit,
        }
    }

    fn deleters(&self) -> usize {
        self.pollers.max(2)
    }
}

/// How many batches each hand-off holds.
struct HandOffs {
    received: usize,
    transformed: usize,
    committed: usize,
}

/// What every stage reads: the run's fixed parts.
struct Shared {
    source: SqsSource,
    /// A batch in flight after half of this is kept invisible.
    visibility_timeout: Duration,
    /// The published component; transformers switch to a new one between calls.
    transform: watch::Receiver<Arc<Transform>>,
    keyring: Arc<Keyring>,
    settings: Settings,
    stats: Arc<Stats>,
    /// What the messages in flight may hold.
    budget: Arc<MemoryBudget>,
    /// A delete failed after the stop: the deleters leave the rest to SQS.
    deletes_failed_at_stop: AtomicBool,
}

pub struct Pipeline {
    source: SqsSource,
    transform: watch::Receiver<Arc<Transform>>,
    keyring: Arc<Keyring>,
    settings: Settings,
    stats: Arc<Stats>,
}

impl Pipeline {
    pub fn new(
        source: SqsSource,
        transform: watch::Receiver<Arc<Transform>>,
        keyring: Arc<Keyring>,
        settings: Settings,
    ) -> Self {
        Self {
            source,
            transform,
            keyring,
            settings,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` turns true (or, draining, the queue is empty),
    /// then drains every stage: receivers stop polling, and what they
    /// received is transformed, committed and deleted before this returns.
    ///
    /// Fails at startup (database unreachable, schema not creatable,
    /// component not instantiable) and when tasks keep failing with no
    /// progress, never with a summary that hides it.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<Summary> {
        let visibility_timeout = match self.settings.visibility_timeout {
            Some(timeout) => timeout,
            None => Duration::from_secs(self.source.visibility_timeout().await?.max(1) as u64),
        };
        let mut first_sink = PgSink::connect(&self.settings.database).await?;
        first_sink.ensure_schema().await?;
        let current = Arc::clone(&self.transform.borrow());
        // The running component's tables must fit before any batch: a swap
        // checks its own before it is published.
        first_sink
            .prepare_tables(current.schema(), self.settings.create_tables)
            .await?;
        // Fail now, not in every transformer, if the component cannot run.
        let first_worker = current.worker(Arc::clone(&self.keyring)).await?;

        let (stop, stopped) = watch::channel(false);
        let forward = tokio::spawn(forward_shutdown(shutdown, stop.clone()));
        let shared = Arc::new(Shared {
            source: self.source,
            visibility_timeout,
            transform: self.transform,
            keyring: self.keyring,
            budget: Arc::new(MemoryBudget::new(self.settings.budget_bytes())),
            deletes_failed_at_stop: AtomicBool::new(false),
            settings: self.settings,
            stats: self.stats,
        });
        let progress = shared
            .settings
            .progress_every
            .map(|every| tokio::spawn(stats::report_progress(Arc::clone(&shared.stats), every)));
        let stages = stages(&shared, &stopped, first_worker, first_sink);
        let outcome = supervise(stages, &stop, &shared.stats).await;
        forward.abort();
        if let Some(progress) = progress {
            progress.abort();
        }
        outcome.map(|()| shared.stats.summary())
    }
}

/// The four stages and the hand-offs between them. Each stage's spawner
/// owns its input's receiving end and its output's sending end: when the
/// supervisor drops it, after the stage's last task, the next stage's input
/// closes.
fn stages(
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    first_worker: crate::runtime::Worker,
    first_sink: PgSink,
) -> Vec<Stage> {
    let settings = &shared.settings;
    let capacity = settings.hand_offs();
    let (to_transform, received) = mpsc::channel(capacity.received);
    let (to_commit, transformed) = mpsc::channel(capacity.transformed);
    let (to_delete, committed) = mpsc::channel(capacity.committed);
    let (received, transformed, committed) =
        (inbox(received), inbox(transformed), inbox(committed));
    // The checks made at startup are the first tasks' to use.
    let first_worker = Mutex::new(Some(first_worker));
    let first_sink = Mutex::new(Some(first_sink));

    let receive = {
        let (shared, stop) = (Arc::clone(shared), stop.clone());
        Stage {
            name: "receive",
            tasks: settings.pollers,
            spawn: Box::new(move |index, delay| {
                let task = receive::run(
                    Arc::clone(&shared),
                    index,
                    to_transform.clone(),
                    stop.clone(),
                );
                Box::pin(after_backoff_unless_stopped(delay, stop.clone(), task))
            }),
        }
    };
    let transform = {
        let (shared, stop) = (Arc::clone(shared), stop.clone());
        Stage {
            name: "transform",
            tasks: settings.transformers,
            spawn: Box::new(move |index, delay| {
                let transformer = transform::Transformer {
                    shared: Arc::clone(&shared),
                    index,
                    worker: take_first(&first_worker),
                    stop: stop.clone(),
                };
                Box::pin(after_backoff(
                    delay,
                    transformer.run(Arc::clone(&received), to_commit.clone()),
                ))
            }),
        }
    };
    let commit = {
        let (shared, stop) = (Arc::clone(shared), stop.clone());
        Stage {
            name: "commit",
            tasks: settings.writers,
            spawn: Box::new(move |index, delay| {
                let committer = commit::Committer::new(
                    Arc::clone(&shared),
                    index,
                    take_first(&first_sink),
                    stop.clone(),
                );
                Box::pin(after_backoff(
                    delay,
                    committer.run(Arc::clone(&transformed), to_delete.clone()),
                ))
            }),
        }
    };
    let delete = {
        let (shared, stop) = (Arc::clone(shared), stop.clone());
        Stage {
            name: "delete",
            tasks: settings.deleters(),
            spawn: Box::new(move |index, delay| {
                Box::pin(after_backoff(
                    delay,
                    delete::run(
                        Arc::clone(&shared),
                        index,
                        Arc::clone(&committed),
                        stop.clone(),
                    ),
                ))
            }),
        }
    };
    vec![receive, transform, commit, delete]
}

/// The value set aside for the first task to ask.
fn take_first<T>(first: &Mutex<Option<T>>) -> Option<T> {
    first.lock().map_or(None, |mut first| first.take())
}

/// A restarted receiver waits out its backoff, unless the pipeline stops.
async fn after_backoff_unless_stopped(
    delay: Duration,
    mut stop: watch::Receiver<bool>,
    task: impl Future<Output = ()>,
) {
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
    task.await;
}

/// A restarted downstream task waits out its backoff even when stopping:
/// its input must still be drained.
async fn after_backoff(delay: Duration, task: impl Future<Output = ()>) {
    tokio::time::sleep(delay).await;
    task.await;
}

/// Passes the caller's shutdown on to the stages' own stop channel.
async fn forward_shutdown(mut shutdown: watch::Receiver<bool>, stop: watch::Sender<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
    let _ = stop.send(true);
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

    /// Sleeps unless the pipeline stops first; returns false when it stops.
    async fn wait(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        if *stop.borrow() {
            return false;
        }
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.changed() => false,
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
