//! Runs the stages' tasks, restarts the ones that panic, and closes each
//! stage's output when its last task is done, so a stop flows downstream.
//!
//! A panic (a host bug, whatever its cause) loses no message: the batches the
//! task held are dropped, their heartbeats stop, and SQS redelivers them. A
//! stage's tasks share its input and output channels through its
//! [`Spawner`], which the supervisor drops when the stage's last task ended
//! (normally, or by a panic it will not restart): the next stage then sees
//! its input close once drained. Restarts stop at shutdown, and when tasks
//! keep failing with nothing committed in between the host gives up.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

use super::stats::Stats;
use crate::ops;

/// Makes a stage's task number `index`, started after `delay`.
pub(super) type Spawner = Box<dyn Fn(usize, Duration) -> StageTask + Send + Sync>;
pub(super) type StageTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Tasks that fail this many times in a row, with no message committed in
/// between, mean the host cannot run: it stops and fails.
const MAX_FAILURES_WITHOUT_PROGRESS: u32 = 5;

pub(super) struct Stage {
    pub name: &'static str,
    pub tasks: usize,
    pub spawn: Spawner,
}

struct Running {
    name: &'static str,
    live: usize,
    /// Dropped (closing the stage's output) when `live` reaches zero.
    spawn: Option<Spawner>,
}

/// Runs `stages` until every task has ended. `stop` is the pipeline's own
/// stop signal: sent here when the host gives up.
pub(super) async fn supervise(
    stages: Vec<Stage>,
    stop: &watch::Sender<bool>,
    stats: &Stats,
) -> Result<()> {
    let mut tasks = JoinSet::new();
    let mut owner: HashMap<Id, (usize, usize)> = HashMap::new();
    let mut running = Vec::new();
    for (s, stage) in stages.into_iter().enumerate() {
        for index in 0..stage.tasks.max(1) {
            owner.insert(
                tasks.spawn((stage.spawn)(index, Duration::ZERO)).id(),
                (s, index),
            );
        }
        running.push(Running {
            name: stage.name,
            live: stage.tasks.max(1),
            spawn: Some(stage.spawn),
        });
    }

    let mut failures_without_progress = 0u32;
    let mut progress_at_last_failure = stats.finished();
    let mut gave_up = None;
    while let Some(joined) = tasks.join_next_with_id().await {
        let (id, error) = match joined {
            Ok((id, ())) => (id, None),
            Err(error) => (error.id(), Some(error)),
        };
        let Some((s, index)) = owner.remove(&id) else {
            continue;
        };
        let stage = &mut running[s];
        let name = stage.name;
        if let Some(error) = error {
            let finished = stats.finished();
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
            if failures_without_progress > MAX_FAILURES_WITHOUT_PROGRESS && gave_up.is_none() {
                tracing::error!(
                    stage = name,
                    task = index,
                    "a {name} task {what}: {failures_without_progress} failures in a row with \
                     nothing committed; stopping"
                );
                gave_up = Some(failures_without_progress);
                let _ = stop.send(true);
            } else if *stop.borrow() {
                tracing::warn!(
                    stage = name,
                    task = index,
                    "a {name} task {what} while stopping"
                );
            } else if let Some(spawn) = &stage.spawn {
                let delay =
                    super::Backoff::FIRST.saturating_mul(1 << failures_without_progress.min(6));
                tracing::error!(
                    stage = name,
                    task = index,
                    "a {name} task {what}; restarting it in {} ms (its batches will be redelivered)",
                    delay.as_millis()
                );
                owner.insert(tasks.spawn(spawn(index, delay)).id(), (s, index));
                continue;
            }
        }
        stage.live -= 1;
        if stage.live == 0 {
            tracing::debug!(stage = name, "stage finished");
            stage.spawn = None;
        }
    }
    if let Some(failures) = gave_up {
        bail!("the pipeline's tasks keep failing ({failures} times in a row with no progress)");
    }
    Ok(())
}

/// Shares one channel receiver among a stage's tasks.
pub(super) type Inbox<T> = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>;

pub(super) fn inbox<T>(receiver: tokio::sync::mpsc::Receiver<T>) -> Inbox<T> {
    Arc::new(tokio::sync::Mutex::new(receiver))
}

/// The next item, or `None` once the channel is closed and drained.
pub(super) async fn next<T>(inbox: &Inbox<T>) -> Option<T> {
    inbox.lock().await.recv().await
}
