//! Which component runs: load, validate, and hot-swap on change.
//!
//! A candidate component is compiled off the hot path, checked by the runtime
//! (imports, exports), then *validated*: run through the golden vectors
//! shipped next to it (`NAME.vectors.jsonl` beside `NAME.wasm`) and through a
//! canary set built from the sample data. When the vectors are enough to
//! stand alone (see [`vectors::suffice`]), the canary only checks that no row
//! stores a message's raw `ip` or `device_id` unprotected; when they are too
//! few, or missing, it also expects every valid login to become a row and the
//! malformed message a rejection. Then its declared tables are checked
//! against the live database (created if missing and allowed): a component
//! whose tables do not fit is refused with the DDL that would make them fit.
//! Only a component that passes is published.
//! Pollers pick up the published component between batches, so no batch is
//! split across two components and none is lost or processed twice.
//!
//! The watcher reacts to a change of what the path *resolves to*, whatever
//! event carries it: it watches the component's directory and the real
//! directory of every hop of its symlink chain (re-resolved after each
//! change: a Kubernetes ConfigMap update renames a `..data` symlink and puts
//! the file in a new directory, with no event for `transform.wasm` itself),
//! treats any non-access event there as "maybe changed", debounces, and
//! compares a cheap fingerprint (resolved path, inode, size, times) before
//! the content digest. A slow periodic fingerprint check covers filesystems
//! without events (NFS, some overlays). A half-written file simply fails to
//! compile and keeps the running component until the write completes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use wasmtime::Engine;

use crate::record::{Outcome, Value};
use crate::runtime::{Limits, Transform, short};
use crate::schema::Schema;
use crate::schema::catalog::CatalogError;
use crate::sink::{Database, PgSink};
use crate::source::Received;
use crate::vectors;

/// Quiet time after the last file event before a reload: editors and `cp`
/// write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// A directory that never goes quiet (the component beside a busy log, say)
/// must not postpone the check for ever.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);
/// Default period of the fingerprint check that needs no file events.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// Symlink hops followed when finding the directories to watch (as Linux's
/// own limit): a loop ends here instead of spinning.
const MAX_SYMLINK_HOPS: usize = 40;

/// The sample queue's bodies: the canary set.
const CANARY_BODIES: &str = include_str!("../../data/queue_bodies.jsonl");

/// `transform.wasm` → `transform.vectors.jsonl`.
pub fn vectors_path(component: &Path) -> PathBuf {
    component.with_extension("vectors.jsonl")
}

/// How a candidate was validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// Enough golden vectors; the canary set checked only that no raw PII
    /// is stored.
    Vectors {
        path: PathBuf,
        count: usize,
        pii_checked: usize,
    },
    /// Too few vectors to stand alone, so the full canary ran as well.
    VectorsAndCanary {
        path: PathBuf,
        count: usize,
        canary: usize,
    },
    /// No vectors file: the full canary.
    Canary { count: usize },
}

impl std::fmt::Display for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Validation::Vectors {
                path,
                count,
                pii_checked,
            } => write!(
                f,
                "{count} golden vectors from {} and a raw-PII check of {pii_checked} built-in canary messages",
                path.display()
            ),
            Validation::VectorsAndCanary {
                path,
                count,
                canary,
            } => write!(
                f,
                "{count} golden vectors from {} (too few alone) and {canary} built-in canary messages",
                path.display()
            ),
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

/// Runs the vectors beside `path` and the canary set through `transform`.
pub async fn validate(transform: &Arc<Transform>, path: &Path) -> Result<Validation> {
    let vectors_file = vectors_path(path);
    if !vectors_file.exists() {
        let count = canary(transform, CanaryCheck::Full).await?;
        return Ok(Validation::Canary { count });
    }
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
    let count = vectors.len();
    if vectors::suffice(&vectors) {
        // Vectors written for the component's own policy may expect what the
        // canary would not; but storing raw PII is wrong under any policy.
        let pii_checked = canary(transform, CanaryCheck::PiiOnly).await?;
        return Ok(Validation::Vectors {
            path: vectors_file,
            count,
            pii_checked,
        });
    }
    // An empty or token vectors file must not be a way around the canary.
    let canary = canary(transform, CanaryCheck::Full).await.with_context(|| {
        format!(
            "{count} vectors in {} are too few to stand alone (at least {} with both a row and a rejection expected), so the built-in canary ran too",
            vectors_file.display(),
            vectors::MIN_VECTORS
        )
    })?;
    Ok(Validation::VectorsAndCanary {
        path: vectors_file,
        count,
        canary,
    })
}

/// What the canary set checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CanaryCheck {
    /// Rows and rejections as the sample implies, and no raw PII.
    Full,
    /// No raw PII only.
    PiiOnly,
}

/// Runs the canary set; returns how many messages it holds.
async fn canary(transform: &Arc<Transform>, check: CanaryCheck) -> Result<usize> {
    let messages: Vec<Received> = CANARY_BODIES
        .lines()
        .enumerate()
        .map(|(index, body)| Received::local(format!("canary-{index}"), body, 1_670_839_200_000))
        .collect();
    let mut worker = transform.worker(vectors::test_keyring()).await?;
    let schema = transform.schema();
    for chunk in messages.chunks(crate::source::MAX_BATCH) {
        let outcomes = worker.run(chunk).await?;
        for (message, outcome) in chunk.iter().zip(&outcomes) {
            match check {
                CanaryCheck::Full => check_canary_outcome(schema, message, outcome)?,
                CanaryCheck::PiiOnly => check_no_raw_pii(schema, message, outcome)?,
            }
        }
    }
    Ok(messages.len())
}

/// The full canary's verdict on one outcome: a valid login must become a
/// row, a malformed message a rejection, and no row may hold raw PII.
pub fn check_canary_outcome(schema: &Schema, message: &Received, outcome: &Outcome) -> Result<()> {
    let is_login = message.body.contains("\"user_id\"");
    match (is_login, outcome) {
        (true, Outcome::Rows(rows)) if !rows.is_empty() => {}
        (false, Outcome::Rejected(_)) => {}
        (true, Outcome::Rows(_)) => {
            bail!("canary {} is a valid login but became no row", message.id)
        }
        (true, Outcome::Rejected(rejection)) => bail!(
            "canary {} is a valid login but was rejected as `{}`",
            message.id,
            rejection.code
        ),
        (false, Outcome::Rows(_)) => {
            bail!("canary {} is malformed but was not rejected", message.id)
        }
    }
    check_no_raw_pii(schema, message, outcome)
}

/// Refuses a row that stores the message's raw `ip` or `device_id` (as
/// written, or the ip in canonical form) in any text column: `clear(span)`
/// is for values the component made harmless, and the host cannot tell.
/// The error names the field and column, never the value.
pub fn check_no_raw_pii(schema: &Schema, message: &Received, outcome: &Outcome) -> Result<()> {
    let Outcome::Rows(rows) = outcome else {
        return Ok(());
    };
    let tables = schema.tables();
    for (field, raw) in raw_pii(&message.body) {
        for row in rows {
            let table = &tables[row.table];
            if let Some(column) = column_holding(&row.values, &raw) {
                bail!(
                    "{} stores the message's raw `{field}` unprotected in `{}.{}`: protect it (masked or pseudonymized) or store only a harmless derivative in clear",
                    message.id,
                    table.name,
                    table.columns[column].name
                );
            }
        }
    }
    Ok(())
}

/// The message's `ip` and `device_id` values, lower-cased, plus the ip's
/// canonical form. Empty values are skipped: they would match every row.
fn raw_pii(body: &str) -> Vec<(&'static str, String)> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(body)
    else {
        return Vec::new();
    };
    let mut raw = Vec::new();
    for field in ["ip", "device_id"] {
        let Some(value) = fields.get(field).and_then(|v| v.as_str()) else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if field == "ip"
            && let Ok(ip) = value.parse::<std::net::IpAddr>()
        {
            raw.push((field, ip.to_string().to_lowercase()));
        }
        raw.push((field, value.to_lowercase()));
    }
    raw
}

/// The index of the first text-like value of a row that contains `raw`
/// (lower-cased).
fn column_holding(values: &[Option<Value>], raw: &str) -> Option<usize> {
    values.iter().position(|value| match value {
        Some(Value::Text(text) | Value::Jsonb(text)) => text.to_lowercase().contains(raw),
        _ => false,
    })
}

/// What a path resolves to, cheaply: a change in any part means "read it
/// and compare digests". The resolved path changes when a symlink is
/// retargeted (a ConfigMap update), the inode on write-then-rename, size and
/// times on an in-place write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    target: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    identity: (u64, u64, i64, i64),
}

impl Fingerprint {
    /// `None` when the path does not resolve to a readable file's metadata.
    pub fn of(path: &Path) -> Option<Self> {
        let target = std::fs::canonicalize(path).ok()?;
        let metadata = std::fs::metadata(&target).ok()?;
        Some(Self {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            identity: identity(&metadata),
            target,
        })
    }
}

/// Device, inode and change time: what a rename or an in-place write that
/// keeps size and mtime still changes.
#[cfg(unix)]
fn identity(metadata: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (
        metadata.dev(),
        metadata.ino(),
        metadata.ctime(),
        metadata.ctime_nsec(),
    )
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (0, 0, 0, 0)
}

/// The real directories whose entries decide what `path` resolves to: the
/// one holding each hop of its symlink chain, and the one holding the final
/// file (which a symlinked directory, like a ConfigMap's `..data`, moves).
pub fn watched_dirs(path: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut push = |dir: &Path| {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // Canonical, so one directory is watched once whatever path reaches it.
        if let Ok(real) = std::fs::canonicalize(dir)
            && !dirs.contains(&real)
        {
            dirs.push(real);
        }
    };
    let mut hop = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for _ in 0..MAX_SYMLINK_HOPS {
        let parent = hop.parent().map(Path::to_path_buf).unwrap_or_default();
        push(&parent);
        match std::fs::read_link(&hop) {
            Ok(target) => hop = parent.join(target),
            Err(_) => break,
        }
    }
    if let Some(parent) = std::fs::canonicalize(path)
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf))
    {
        push(&parent);
    }
    dirs
}

/// A directory watcher that follows the component's resolution.
struct DirWatch {
    watcher: notify::RecommendedWatcher,
    watching: Vec<PathBuf>,
    warned: bool,
}

impl DirWatch {
    fn new(changed: mpsc::Sender<()>) -> Result<Self> {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Errors (a queue overflow, say) may hide a change: check anyway.
            if event.is_ok_and(|event| event.kind.is_access()) {
                return;
            }
            // A full channel already holds a pending check: nothing lost.
            let _ = changed.try_send(());
        })?;
        Ok(Self {
            watcher,
            watching: Vec::new(),
            warned: false,
        })
    }

    /// Watches exactly the directories `path` now resolves through; a
    /// directory that cannot be watched yet is retried on the next call.
    fn follow(&mut self, path: &Path) {
        let wanted = watched_dirs(path);
        if wanted == self.watching {
            return;
        }
        for old in &self.watching {
            if !wanted.contains(old) {
                // Fails harmlessly when the directory is already gone.
                let _ = self.watcher.unwatch(old);
            }
        }
        let mut watching = Vec::with_capacity(wanted.len());
        for dir in wanted {
            if self.watching.contains(&dir) {
                watching.push(dir);
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => watching.push(dir),
                // Once, not on every retry: the periodic check still runs
                // (an exhausted inotify limit is the usual cause).
                Err(error) if !self.warned => {
                    self.warned = true;
                    tracing::warn!(
                        "cannot watch {} ({error}); changes there are seen by the periodic check or SIGHUP",
                        dir.display()
                    );
                }
                Err(error) => tracing::debug!("cannot watch {} yet: {error}", dir.display()),
            }
        }
        tracing::debug!(?watching, "watching for transform changes");
        self.watching = watching;
    }
}

/// Swap counters, for the summary and metrics.
#[derive(Debug, Default)]
pub struct SwapStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
}

/// What a reload asks of the watch loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reload {
    Done,
    /// The database could not be asked: check again at the next tick.
    RetryLater,
}

/// Where a candidate's declared tables are checked before it is published.
#[derive(Clone)]
pub struct TableCheck {
    pub database: Database,
    /// Create missing tables from the declaration (`--create-tables`).
    pub create: bool,
}

impl TableCheck {
    /// Checks (and, when allowed, creates) `transform`'s tables.
    pub async fn run(&self, transform: &Transform) -> Result<()> {
        let mut sink = PgSink::connect(&self.database).await?;
        sink.prepare_tables(transform.schema(), self.create).await
    }
}

/// Watches the component file and publishes validated replacements.
pub struct Reloader {
    engine: Engine,
    path: PathBuf,
    limits: Limits,
    current: watch::Sender<Arc<Transform>>,
    stats: Arc<SwapStats>,
    poll: Option<Duration>,
    tables: Option<TableCheck>,
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
            poll: Some(DEFAULT_POLL),
            tables: None,
        }
    }

    /// Checks each candidate's tables against the database before
    /// publishing it. Without it, a candidate is published on validation
    /// alone (for tests that run no database).
    pub fn with_table_check(mut self, tables: TableCheck) -> Self {
        self.tables = Some(tables);
        self
    }

    /// Period of the fingerprint check that needs no file events; `None`
    /// turns it off (events and SIGHUP only).
    pub fn with_poll(mut self, poll: Option<Duration>) -> Self {
        self.poll = poll.filter(|p| !p.is_zero());
        self
    }

    /// Reloads on file changes, periodic checks and SIGHUP until `shutdown`.
    /// Like the pollers, it returns no `Result`: a failed reload keeps the
    /// running component.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (changed_tx, mut changed) = mpsc::channel::<()>(1);
        let mut watcher = match DirWatch::new(changed_tx) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(
                    "cannot watch {} ({error:#}); reload with SIGHUP{}",
                    self.path.display(),
                    self.poll
                        .map(|p| format!(" or wait for the check every {} s", p.as_secs_f64()))
                        .unwrap_or_default()
                );
                None
            }
        };
        if let Some(watcher) = watcher.as_mut() {
            watcher.follow(&self.path);
        }
        let mut poll = self.poll.map(|period| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        let mut hangup = hangup_signal();
        // None: the first check (the poll's immediate tick) compares digests,
        // catching a change between startup's load and the watch.
        let mut last: Option<Fingerprint> = None;
        loop {
            let forced = tokio::select! {
                Some(()) = changed.recv() => {
                    // Debounce: wait until the directories have been quiet
                    // for a while, but not for ever.
                    let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(DEBOUNCE) => break,
                            _ = tokio::time::sleep_until(deadline) => break,
                            Some(()) = changed.recv() => {}
                        }
                    }
                    false
                }
                () = next_tick(&mut poll) => false,
                Some(()) = next_hangup(&mut hangup) => {
                    tracing::info!("SIGHUP: reloading {}", self.path.display());
                    true
                }
                _ = shutdown.changed() => break,
            };
            // The target's directory moves with every ConfigMap update.
            if let Some(watcher) = watcher.as_mut() {
                watcher.follow(&self.path);
            }
            let now = Fingerprint::of(&self.path);
            if !forced && now == last {
                continue;
            }
            // Recorded before reading, so a write during the read shows as a
            // change next time; and recorded whatever the verdict, so a
            // refused component is not retried every period.
            last = now;
            if self.reload().await == Reload::RetryLater {
                // Forget the fingerprint: the next check tries again.
                last = None;
            }
        }
    }

    async fn reload(&self) -> Reload {
        let started = Instant::now();
        let old = Arc::clone(&self.current.borrow());
        match std::fs::read(&self.path) {
            Ok(bytes) if crate::runtime::digest(&bytes) == old.digest() => {
                tracing::debug!("component unchanged (sha256:{})", short(old.digest()));
                return Reload::Done;
            }
            // Unreadable (mid-rename?) or changed: let loading say which.
            _ => {}
        }
        // Compilation runs on a blocking thread inside; validation yields.
        let mut candidate = load_validated(&self.engine, &self.path, self.limits).await;
        let mut outcome = Reload::Done;
        if let (Ok((new, _)), Some(tables)) = (&candidate, &self.tables)
            && new.digest() != old.digest()
            && let Err(error) = tables.run(new).await
        {
            // A database that could not be asked is no verdict on the
            // component: try again at the next check, not only on the next
            // change of the file.
            let mismatch = matches!(
                error.downcast_ref::<CatalogError>(),
                Some(CatalogError::Mismatch(_))
            );
            if !mismatch {
                outcome = Reload::RetryLater;
            }
            candidate = Err(error.context(format!(
                "component sha256:{}'s tables {}",
                short(new.digest()),
                if mismatch {
                    "do not fit the database; fix them, then swap"
                } else {
                    "could not be checked against the database; retrying at the next check"
                }
            )));
        }
        match candidate {
            Ok((new, validation)) => {
                if new.digest() == old.digest() {
                    tracing::debug!("component unchanged (sha256:{})", short(old.digest()));
                    return Reload::Done;
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
        outcome
    }
}

async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
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

    const LOGIN: &str = r#"{"user_id": "u1", "device_type": "ios", "ip": "2001:DB8::0:1", "device_id": "593-47-5928", "locale": "RU", "app_version": "2.3.0"}"#;

    fn schema() -> Schema {
        Schema::new(vec![crate::schema::user_logins()]).unwrap()
    }

    /// A `user_logins` row: user_id, device_type, masked_ip,
    /// masked_device_id, locale.
    fn login_row(texts: [&str; 5]) -> Outcome {
        let mut values: Vec<Option<Value>> = texts
            .iter()
            .map(|text| Some(Value::Text((*text).into())))
            .collect();
        values.push(Some(Value::Integer(20300)));
        values.push(None);
        Outcome::Rows(vec![crate::record::TableRow { table: 0, values }])
    }

    const SAFE: [&str; 5] = ["u1", "ios", "mp1.test.AAAA", "mp1.test.BBBB", "RU"];

    #[test]
    fn the_canary_refuses_raw_pii_in_any_column() {
        let schema = schema();
        let message = Received::local("canary-7", LOGIN, 0);
        check_canary_outcome(&schema, &message, &login_row(SAFE)).unwrap();
        // as written, canonical (lower case, `::` folded), decorated
        let leaks = [
            (2, "2001:DB8::0:1", "user_logins.masked_ip"),
            (4, "2001:db8::1", "user_logins.locale"),
            (3, "device:593-47-5928", "user_logins.masked_device_id"),
            (0, "593-47-5928", "user_logins.user_id"),
        ];
        for (index, leak, column) in leaks {
            let mut texts = SAFE;
            texts[index] = leak;
            let error = check_canary_outcome(&schema, &message, &login_row(texts))
                .expect_err("a raw value must be refused");
            let error = error.to_string();
            assert!(
                error.contains("canary-7 stores the message's raw"),
                "{error}"
            );
            assert!(error.contains(column), "{error}");
            // The error names the field, never the value.
            assert!(
                !error.contains("593-47") && !error.contains("db8"),
                "{error}"
            );
            assert!(check_no_raw_pii(&schema, &message, &login_row(texts)).is_err());
        }
        // A harmless derivative in clear is fine: the analytics /48.
        let mut network = SAFE;
        network[2] = "2001:db8::/48";
        check_canary_outcome(&schema, &message, &login_row(network)).unwrap();
    }

    #[test]
    fn the_full_canary_expects_rows_for_logins_and_rejections_for_the_rest() {
        let schema = schema();
        let login = Received::local("canary-1", LOGIN, 0);
        let malformed = Received::local("canary-12", r#"{"foo": "oops"}"#, 0);
        let rejected = Outcome::Rejected(crate::record::Rejection::new("wrong_schema", "x"));
        let skipped = Outcome::Rows(Vec::new());
        assert!(check_canary_outcome(&schema, &login, &rejected).is_err());
        assert!(check_canary_outcome(&schema, &login, &skipped).is_err());
        assert!(check_canary_outcome(&schema, &malformed, &login_row(SAFE)).is_err());
        assert!(check_canary_outcome(&schema, &malformed, &skipped).is_err());
        check_canary_outcome(&schema, &malformed, &rejected).unwrap();
        // The PII-only check has no such expectations.
        check_no_raw_pii(&schema, &login, &rejected).unwrap();
        check_no_raw_pii(&schema, &malformed, &login_row(SAFE)).unwrap();
    }

    #[test]
    fn validation_says_what_ran() {
        let path = PathBuf::from("t.vectors.jsonl");
        let both = Validation::VectorsAndCanary {
            path: path.clone(),
            count: 0,
            canary: 100,
        };
        assert_eq!(
            both.to_string(),
            "0 golden vectors from t.vectors.jsonl (too few alone) and 100 built-in canary messages"
        );
        let vectors = Validation::Vectors {
            path,
            count: 32,
            pii_checked: 100,
        };
        assert!(vectors.to_string().contains("32 golden vectors"));
        assert!(vectors.to_string().contains("raw-PII check of 100"));
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "maskpipe-swap-unit-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::canonicalize(dir).unwrap()
    }

    /// The kubelet's ConfigMap layout: `name -> ..data/name`,
    /// `..data -> ..<timestamp>`.
    #[cfg(unix)]
    fn kubelet_update(mount: &Path, stamp: &str, content: &[u8]) {
        use std::os::unix::fs::symlink;
        let version = mount.join(stamp);
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("transform.wasm"), content).unwrap();
        symlink(stamp, mount.join("..data_tmp")).unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
        if std::fs::symlink_metadata(mount.join("transform.wasm")).is_err() {
            symlink("..data/transform.wasm", mount.join("transform.wasm")).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_configmap_update_changes_the_fingerprint_and_the_watched_directories() {
        let mount = temp_dir();
        let live = mount.join("transform.wasm");
        kubelet_update(&mount, "..2026_11_26_10_00_00.1", b"same bytes");
        let first = Fingerprint::of(&live).unwrap();
        assert_eq!(Fingerprint::of(&live), Some(first.clone()), "stable");
        assert_eq!(
            watched_dirs(&live),
            vec![mount.clone(), mount.join("..2026_11_26_10_00_00.1")]
        );

        // Same size, same content: only the resolution moved.
        kubelet_update(&mount, "..2026_11_26_10_00_00.2", b"same bytes");
        std::fs::remove_dir_all(mount.join("..2026_11_26_10_00_00.1")).unwrap();
        assert_ne!(Fingerprint::of(&live).unwrap(), first);
        assert_eq!(
            watched_dirs(&live),
            vec![mount.clone(), mount.join("..2026_11_26_10_00_00.2")]
        );
        std::fs::remove_dir_all(&mount).unwrap();
    }

    #[test]
    fn write_then_rename_changes_the_fingerprint() {
        let dir = temp_dir();
        let live = dir.join("transform.wasm");
        std::fs::write(&live, b"same bytes").unwrap();
        let first = Fingerprint::of(&live).unwrap();
        // The new inode tells, even within one timestamp tick.
        std::fs::write(dir.join("staged"), b"same bytes").unwrap();
        std::fs::rename(dir.join("staged"), &live).unwrap();
        assert_ne!(Fingerprint::of(&live).unwrap(), first);
        assert_eq!(watched_dirs(&live), vec![dir.clone()]);
        assert_eq!(Fingerprint::of(&dir.join("missing.wasm")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
