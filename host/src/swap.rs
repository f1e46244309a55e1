//! Which component runs: load, validate, and hot-swap on change.
//!
//! A candidate component is compiled off the hot path, checked by the runtime
//! (imports, exports), then *validated*: run through the golden vectors
//! shipped next to it (`NAME.vectors.jsonl` beside `NAME.wasm`), or, when it
//! ships none, through a canary set built from the sample data (every valid
//! login becomes a row, the malformed message a rejection, nothing traps).
//! Only a component that passes is published. Pollers pick up the published
//! component between batches, so no batch is split across two components and
//! none is lost or processed twice.
//!
//! The watcher follows the component's directory, not its inode, so both
//! in-place writes and the recommended write-then-rename are seen; events are
//! debounced, and a half-written file simply fails to compile and keeps the
//! running component until the write completes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use wasmtime::Engine;

use crate::record::Outcome;
use crate::runtime::{Limits, Transform, short};
use crate::source::Received;
use crate::vectors;

/// Quiet time after the last file event before a reload: editors and `cp`
/// write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// The sample queue's bodies: the canary set for components without vectors.
const CANARY_BODIES: &str = include_str!("../../data/queue_bodies.jsonl");

/// `transform.wasm` → `transform.vectors.jsonl`.
pub fn vectors_path(component: &Path) -> PathBuf {
    component.with_extension("vectors.jsonl")
}

/// How a candidate was validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    Vectors { path: PathBuf, count: usize },
    Canary { count: usize },
}

impl std::fmt::Display for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Validation::Vectors { path, count } => {
                write!(f, "{count} golden vectors from {}", path.display())
            }
            Validation::Canary { count } => write!(f, "{count} built-in canary messages"),
        }
    }
}

/// Loads and validates the component at `path`.
pub async fn load_validated(
    engine: &Engine,
    path: &Path,
    limits: Limits,
) -> Result<(Arc<Transform>, Validation)> {
    let transform = Arc::new(Transform::load(engine, path, limits).await?);
    let validation = validate(&transform, path).await.with_context(|| {
        format!(
            "component sha256:{} failed validation",
            short(transform.digest())
        )
    })?;
    Ok((transform, validation))
}

/// Runs the vectors beside `path`, or the canary set, through `transform`.
pub async fn validate(transform: &Arc<Transform>, path: &Path) -> Result<Validation> {
    let vectors_file = vectors_path(path);
    if vectors_file.exists() {
        let text = std::fs::read_to_string(&vectors_file)
            .with_context(|| format!("cannot read {}", vectors_file.display()))?;
        let vectors = vectors::parse(&text, &vectors::test_keyring())?;
        let failures = vectors::check(transform, &vectors).await?;
        if let Some(first) = failures.first() {
            bail!(
                "{} of {} vectors in {} failed; first, line {} ({}):\n{}",
                failures.len(),
                vectors.len(),
                vectors_file.display(),
                first.line,
                first.name,
                first.diff.trim_end()
            );
        }
        return Ok(Validation::Vectors {
            path: vectors_file,
            count: vectors.len(),
        });
    }
    canary(transform).await
}

async fn canary(transform: &Arc<Transform>) -> Result<Validation> {
    let messages: Vec<Received> = CANARY_BODIES
        .lines()
        .enumerate()
        .map(|(index, body)| Received::local(format!("canary-{index}"), body, 1_670_839_200_000))
        .collect();
    let mut worker = transform.worker(vectors::test_keyring()).await?;
    for chunk in messages.chunks(crate::source::MAX_BATCH) {
        for (message, outcome) in chunk.iter().zip(worker.run(chunk).await?) {
            let is_login = message.body.contains("\"user_id\"");
            match (is_login, &outcome) {
                (true, Outcome::Row(_)) | (false, Outcome::Rejected(_)) => {}
                (true, Outcome::Rejected(rejection)) => bail!(
                    "canary {} is a valid login but was rejected as `{}`",
                    message.id,
                    rejection.code
                ),
                (false, Outcome::Row(_)) => {
                    bail!("canary {} is malformed but became a row", message.id)
                }
            }
        }
    }
    Ok(Validation::Canary {
        count: messages.len(),
    })
}

/// Swap counters, for the summary and metrics.
#[derive(Debug, Default)]
pub struct SwapStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
}

/// Watches the component file and publishes validated replacements.
pub struct Reloader {
    engine: Engine,
    path: PathBuf,
    limits: Limits,
    current: watch::Sender<Arc<Transform>>,
    stats: Arc<SwapStats>,
}

impl Reloader {
    pub fn new(
        engine: Engine,
        path: PathBuf,
        limits: Limits,
        current: watch::Sender<Arc<Transform>>,
        stats: Arc<SwapStats>,
    ) -> Self {
        Self {
            engine,
            path,
            limits,
            current,
            stats,
        }
    }

    /// Reloads on file changes and SIGHUP until `shutdown`. Like the pollers,
    /// it returns no `Result`: a failed reload keeps the running component.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (changed_tx, mut changed) = mpsc::channel::<()>(1);
        let _watcher = match self.watch_file(changed_tx) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(
                    "cannot watch {} ({error:#}); reload with SIGHUP",
                    self.path.display()
                );
                None
            }
        };
        let mut hangup = hangup_signal();
        loop {
            tokio::select! {
                Some(()) = changed.recv() => {
                    // Debounce: wait until the file has been quiet for a while.
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(DEBOUNCE) => break,
                            Some(()) = changed.recv() => {}
                        }
                    }
                }
                Some(()) = next_hangup(&mut hangup) => {
                    tracing::info!("SIGHUP: reloading {}", self.path.display());
                }
                _ = shutdown.changed() => break,
            }
            self.reload().await;
        }
    }

    fn watch_file(&self, changed: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher> {
        let directory = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self.path.file_name().map(|n| n.to_os_string());
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                if event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
                {
                    // A full channel already holds a pending reload: nothing lost.
                    let _ = changed.try_send(());
                }
            })?;
        watcher.watch(&directory, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }

    async fn reload(&self) {
        let started = Instant::now();
        let old = Arc::clone(&self.current.borrow());
        match std::fs::read(&self.path) {
            Ok(bytes) if crate::runtime::digest(&bytes) == old.digest() => {
                tracing::debug!("component unchanged (sha256:{})", short(old.digest()));
                return;
            }
            // Unreadable (mid-rename?) or changed: let loading say which.
            _ => {}
        }
        let (engine, path, limits) = (&self.engine, &self.path, self.limits);
        // Compilation runs on a blocking thread inside; validation yields.
        let candidate = load_validated(engine, path, limits).await;
        match candidate {
            Ok((new, validation)) => {
                if new.digest() == old.digest() {
                    tracing::debug!("component unchanged (sha256:{})", short(old.digest()));
                    return;
                }
                let took = started.elapsed();
                tracing::info!(
                    old = %short(old.digest()),
                    new = %short(new.digest()),
                    "swapped transform sha256:{} -> sha256:{} after {validation}, compiled and validated in {} ms",
                    short(old.digest()),
                    short(new.digest()),
                    took.as_millis()
                );
                crate::ops::set_running_transform(&new, Some(&old));
                self.current.send_replace(new);
                self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::ops::SWAPS, "result" => "succeeded").increment(1);
            }
            Err(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::ops::SWAPS, "result" => "failed").increment(1);
                tracing::warn!(
                    running = %short(old.digest()),
                    "refused the new transform, keeping sha256:{}: {error:#}",
                    short(old.digest())
                );
            }
        }
    }
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(unix)]
async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_sit_beside_the_component() {
        assert_eq!(
            vectors_path(Path::new("/opt/t/transform.wasm")),
            PathBuf::from("/opt/t/transform.vectors.jsonl")
        );
    }

    #[test]
    fn the_canary_set_is_the_sample() {
        assert_eq!(CANARY_BODIES.lines().count(), 100);
    }
}
