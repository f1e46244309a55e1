//! Observability: Prometheus metrics, liveness and readiness over HTTP.
//!
//! Metrics are recorded through the `metrics` facade where things happen
//! (the pipeline, the swapper) and rendered here. Their labels are reason
//! codes, states and component digests: never message content.
//!
//! * `GET /metrics`: Prometheus text format.
//! * `GET /healthz`: 200 while the process serves requests.
//! * `GET /readyz`: 200 when SQS and PostgreSQL answer now and a component
//!   is loaded; 503 with the failing check otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::runtime::Transform;
use crate::source::SqsSource;

pub const RECEIVED: &str = "maskpipe_messages_received_total";
pub const ROWS: &str = "maskpipe_rows_written_total";
pub const DUPLICATES: &str = "maskpipe_duplicates_skipped_total";
pub const NO_ROWS: &str = "maskpipe_messages_without_rows_total";
pub const DEAD_LETTERS: &str = "maskpipe_dead_letters_total";
pub const DELETES_FAILED: &str = "maskpipe_deletes_failed_total";
pub const TRANSFORM_SECONDS: &str = "maskpipe_transform_seconds";
pub const COMMIT_SECONDS: &str = "maskpipe_batch_commit_seconds";
pub const COMMIT_MESSAGES: &str = "maskpipe_commit_messages";
pub const QUEUE_MESSAGES: &str = "maskpipe_queue_messages";
pub const TRANSFORM_INFO: &str = "maskpipe_transform_info";
pub const SWAPS: &str = "maskpipe_transform_swaps_total";
pub const POLLER_RESTARTS: &str = "maskpipe_poller_restarts_total";
pub const LEDGER_PRUNED: &str = "maskpipe_ledger_pruned_total";

/// Distinct `reason` label values kept: codes are declared by components
/// (at most 64 each), but swaps can bring new ones for ever.
const MAX_REASON_LABELS: usize = 128;
/// The label of every reason code past [`MAX_REASON_LABELS`].
pub const OTHER_REASON: &str = "other";

/// Seconds, from 100 µs to 10 s: a batch's transform and commit times.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// How often the queue depth is sampled (each sample is one SQS request).
const DEPTH_SAMPLE_EVERY: Duration = Duration::from_secs(15);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Installs the process-wide metrics recorder and describes every metric.
pub fn install_recorder() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    metrics::describe_counter!(RECEIVED, "Messages received from SQS");
    metrics::describe_counter!(ROWS, "Rows written to the transform's tables");
    metrics::describe_counter!(
        NO_ROWS,
        "Messages the transform made no rows of (ledger: skipped)"
    );
    metrics::describe_counter!(DUPLICATES, "Redelivered messages skipped by the ledger");
    metrics::describe_counter!(
        DEAD_LETTERS,
        "Messages written to maskpipe_dead_letters, by reason"
    );
    metrics::describe_counter!(
        DELETES_FAILED,
        "Messages committed but not deleted from SQS (redelivered, then skipped)"
    );
    metrics::describe_histogram!(
        TRANSFORM_SECONDS,
        metrics::Unit::Seconds,
        "Transform time of one batch"
    );
    metrics::describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Write-and-commit time of one transaction (several receive batches, coalesced)"
    );
    metrics::describe_histogram!(
        COMMIT_MESSAGES,
        "Messages written by one transaction (receive batches coalesced)"
    );
    metrics::describe_gauge!(
        QUEUE_MESSAGES,
        "Approximate messages in the queue, by state (sampled)"
    );
    metrics::describe_gauge!(
        TRANSFORM_INFO,
        "1 for the running transform component, by sha256 digest"
    );
    metrics::describe_counter!(SWAPS, "Transform hot swaps, by result");
    metrics::describe_counter!(
        POLLER_RESTARTS,
        "Pipeline tasks (receivers, transformers, committers, deleters) that failed and were restarted by the supervisor"
    );
    metrics::describe_counter!(
        LEDGER_PRUNED,
        "Ledger rows deleted because they outlived the retention"
    );
    // Present at 0 from the first scrape, as Prometheus expects (a counter
    // born at its first event hides that event from rate() and alerts).
    // Dead letters are labelled by reason codes a component declares at
    // load, so they appear with their first occurrence.
    for counter in [
        RECEIVED,
        ROWS,
        DUPLICATES,
        NO_ROWS,
        DELETES_FAILED,
        POLLER_RESTARTS,
        LEDGER_PRUNED,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for result in ["succeeded", "failed"] {
        metrics::counter!(SWAPS, "result" => result).increment(0);
    }
    Ok(handle)
}

/// The `reason` label for a dead letter's code: the code itself while fewer
/// than [`MAX_REASON_LABELS`] distinct ones were seen, `other` after.
pub fn reason_label(code: &str) -> String {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if seen.iter().any(|known| known == code) {
        return code.to_owned();
    }
    if seen.len() < MAX_REASON_LABELS {
        seen.push(code.to_owned());
        return code.to_owned();
    }
    OTHER_REASON.to_owned()
}

/// Marks `transform` as the running component (and `previous` as not).
pub fn set_running_transform(transform: &Transform, previous: Option<&Transform>) {
    if let Some(previous) = previous {
        metrics::gauge!(TRANSFORM_INFO, "digest" => previous.digest().to_owned()).set(0.0);
    }
    metrics::gauge!(TRANSFORM_INFO, "digest" => transform.digest().to_owned()).set(1.0);
}

/// Samples the queue depth into the gauge until the process ends.
pub async fn sample_queue_depth(source: SqsSource) {
    let mut ticker = tokio::time::interval(DEPTH_SAMPLE_EVERY);
    loop {
        ticker.tick().await;
        if let Ok(depth) = source.depth().await {
            metrics::gauge!(QUEUE_MESSAGES, "state" => "visible").set(depth.visible as f64);
            metrics::gauge!(QUEUE_MESSAGES, "state" => "in_flight").set(depth.in_flight as f64);
        }
    }
}

/// What the HTTP endpoints need.
#[derive(Clone)]
pub struct OpsState {
    pub metrics: PrometheusHandle,
    pub source: SqsSource,
    pub database: crate::sink::Database,
    pub transform: watch::Receiver<Arc<Transform>>,
}

/// Binds `addr` now (so a bad address is a startup error) and serves the
/// endpoints on a background task.
pub async fn serve(addr: SocketAddr, state: OpsState) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!("the metrics server stopped: {error}");
        }
    });
    Ok(bound)
}

async fn render_metrics(State(state): State<OpsState>) -> String {
    state.metrics.render()
}

async fn readiness(State(state): State<OpsState>) -> (StatusCode, String) {
    let sqs = tokio::time::timeout(CHECK_TIMEOUT, state.source.depth()).await;
    let postgres = tokio::time::timeout(CHECK_TIMEOUT, check_postgres(&state.database)).await;
    let digest = state.transform.borrow().digest().to_owned();
    let mut report = String::new();
    let sqs_ok = check_line(&mut report, "sqs", sqs.map(|result| result.map(drop)));
    let postgres_ok = check_line(&mut report, "postgres", postgres);
    let ready = sqs_ok && postgres_ok;
    report.push_str(&format!("transform: sha256:{digest}\n"));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report)
}

/// Appends `NAME: ok` or why not to a readiness report; true when ok.
fn check_line(
    report: &mut String,
    name: &str,
    outcome: Result<Result<()>, tokio::time::error::Elapsed>,
) -> bool {
    let (ok, line) = match outcome {
        Ok(Ok(())) => (true, "ok".to_owned()),
        Ok(Err(error)) => (false, format!("{error:#}")),
        Err(_) => (false, "timed out".to_owned()),
    };
    report.push_str(&format!("{name}: {line}\n"));
    ok
}

async fn check_postgres(database: &crate::sink::Database) -> Result<()> {
    let sink = crate::sink::PgSink::connect(database).await?;
    sink.ping().await
}
