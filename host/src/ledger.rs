//! Ledger retention: `maskpipe_processed` would otherwise keep a row per
//! message forever. SQS delivers a message at most its queue's retention
//! period (14 days at most) plus one visibility timeout after it was sent, so
//! a ledger row older than that can never stop a redelivery again.
//!
//! `maskpipe run` prunes in the background, off the hot path: every few
//! minutes, small batches, one host at a time (an advisory lock), never
//! anything younger than the retention.

use std::time::Duration;

use crate::ops;
use crate::sink::{Database, PgSink};

/// Ledger rows one DELETE removes: short transactions, short row locks.
pub const PRUNE_BATCH_ROWS: i64 = 5_000;

/// The warning to log at startup when the ledger would forget a message id
/// while SQS can still redeliver it; `None` when the retention is enough.
pub fn retention_warning(retention: Duration, redelivery_window: Duration) -> Option<String> {
    (retention < redelivery_window).then(|| {
        format!(
            "ledger retention ({} h) is shorter than the queue's retention period plus visibility timeout ({:.1} h): \
             a message redelivered after its ledger row was pruned would be written twice; \
             raise MASKPIPE_LEDGER_RETENTION_HOURS",
            retention.as_secs() / 3600,
            redelivery_window.as_secs_f64() / 3600.0
        )
    })
}

/// Prunes the ledger every `every` until the task is dropped. Failures are
/// logged and retried next time: pruning late costs only disk.
pub async fn prune_periodically(database: Database, retention: Duration, every: Duration) {
    let mut sink: Option<PgSink> = None;
    let mut ticker = tokio::time::interval(every);
    // The first tick is immediate: skip it, so startup (schema creation) is
    // not slowed by a prune.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let connected = match sink.take() {
            Some(live) if !live.is_closed() => live,
            _ => match PgSink::connect(&database).await {
                Ok(fresh) => fresh,
                Err(error) => {
                    tracing::warn!("cannot prune the ledger: {error:#}");
                    continue;
                }
            },
        };
        let live = sink.insert(connected);
        match live.prune_ledger(retention, PRUNE_BATCH_ROWS).await {
            Ok(report) if report.skipped => {
                tracing::debug!("ledger prune skipped: another host is pruning")
            }
            Ok(report) => {
                metrics::counter!(ops::LEDGER_PRUNED).increment(report.rows);
                tracing::debug!(
                    rows = report.rows,
                    batches = report.batches,
                    "pruned {} ledger rows older than {} h",
                    report.rows,
                    retention.as_secs() / 3600
                );
            }
            Err(error) => tracing::warn!("cannot prune the ledger: {error:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_shorter_than_the_redelivery_window_is_warned_about() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        // SQS's longest: 14 days plus a 12-hour visibility timeout.
        let window = hours(14 * 24 + 12);
        assert!(retention_warning(hours(360), window).is_none());
        let warning = retention_warning(hours(24), window).expect("a warning");
        assert!(warning.contains("24 h"), "{warning}");
        assert!(warning.contains("MASKPIPE_LEDGER_RETENTION_HOURS"));
    }
}
