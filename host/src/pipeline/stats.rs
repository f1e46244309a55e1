//! What the stages did, counted as they do it: the run's [`Summary`], the
//! supervisor's measure of progress and the periodic progress line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ops;
use crate::sink::WriteReport;
use crate::usage::BusyCpu;

/// Counters shared by the stages; the summary is a snapshot of them.
#[derive(Default)]
pub struct Stats {
    pub(super) received: AtomicU64,
    rows: AtomicU64,
    dead_letters: AtomicU64,
    duplicates: AtomicU64,
    skipped: AtomicU64,
    pub(super) delete_failures: AtomicU64,
    dead_letters_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Receiver failures injected so far (`Settings::inject_poller_failures`).
    pub(super) injected_failures: AtomicU64,
    /// From the first message received to the last batch deleted: the
    /// window throughput is measured over (startup and idle polls excluded).
    active: Mutex<Option<(Instant, Instant)>>,
    /// CPU used while batches were in flight (the summary's per-message figure).
    pub(super) busy_cpu: Arc<BusyCpu>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub received: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub duplicates: u64,
    /// Messages that made no rows.
    pub skipped: u64,
    pub delete_failures: u64,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Seconds from the first message received to the last batch deleted.
    pub active_seconds: f64,
    /// Process CPU seconds used while at least one batch was in flight.
    pub busy_cpu_seconds: f64,
}

impl Stats {
    pub(super) fn record(&self, report: &WriteReport) {
        metrics::counter!(ops::ROWS).increment(report.rows as u64);
        metrics::counter!(ops::DUPLICATES).increment(report.duplicates as u64);
        metrics::counter!(ops::NO_ROWS).increment(report.skipped as u64);
        for reason in &report.dead_letter_reasons {
            metrics::counter!(ops::DEAD_LETTERS, "reason" => ops::reason_label(reason))
                .increment(1);
        }
        self.rows.fetch_add(report.rows as u64, Ordering::Relaxed);
        self.dead_letters
            .fetch_add(report.dead_letter_reasons.len() as u64, Ordering::Relaxed);
        self.duplicates
            .fetch_add(report.duplicates as u64, Ordering::Relaxed);
        self.skipped
            .fetch_add(report.skipped as u64, Ordering::Relaxed);
        if !report.dead_letter_reasons.is_empty() {
            let mut by_reason = self
                .dead_letters_by_reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for reason in &report.dead_letter_reasons {
                *by_reason.entry(reason.clone()).or_default() += 1;
            }
        }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            received: self.received.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            delete_failures: self.delete_failures.load(Ordering::Relaxed),
            dead_letters_by_reason: self
                .dead_letters_by_reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            active_seconds: self
                .active
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .map_or(0.0, |(first, last)| (last - first).as_secs_f64()),
            busy_cpu_seconds: self.busy_cpu.seconds(),
        }
    }

    /// Messages committed so far, however they ended: the supervisor's
    /// measure of progress.
    pub(super) fn finished(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
            + self.dead_letters.load(Ordering::Relaxed)
            + self.duplicates.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
    }

    /// A batch received at `first` was deleted (or its delete failed).
    pub(super) fn mark_active(&self, first: Instant) {
        let now = Instant::now();
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *active = Some(match *active {
            Some((earliest, _)) => (earliest.min(first), now),
            None => (first, now),
        });
    }
}

/// Logs a progress line every `every` while something changes.
pub(super) async fn report_progress(stats: Arc<Stats>, every: Duration) {
    let started = Instant::now();
    let mut last = Summary::default();
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let now = stats.summary();
        if now == last {
            continue;
        }
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            received = now.received,
            rows = now.rows,
            dead_letters = now.dead_letters,
            duplicates = now.duplicates,
            "progress: {} received, {} rows, {} dead letters, {} duplicates skipped ({:.0} msgs/s)",
            now.received,
            now.rows,
            now.dead_letters,
            now.duplicates,
            now.received as f64 / elapsed
        );
        last = now;
    }
}
