//! Counters exist from the first scrape, at 0, as Prometheus users expect:
//! a counter born at its first event hides that event from `rate()` and
//! from alerts on `increase()`.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncBufReadExt;

#[tokio::test(flavor = "multi_thread")]
async fn counters_are_registered_at_zero_before_any_message() {
    let queue = fresh_queue().await;
    let database = fresh_database().await;
    let mut host = maskpipe()
        .args(["run", "--wait-seconds", "1", "--progress-seconds", "0"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--queue", queue.queue_url(), "--database-url", &database])
        .arg("--transform")
        .arg(component_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("maskpipe starts");
    let mut lines = tokio::io::BufReader::new(host.stderr.take().expect("piped")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("on http://").nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("the host said where it serves metrics in time")
    .expect("the host said where it serves metrics");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let output = tokio::process::Command::new("curl")
        .args(["-s", "-m", "10", &format!("http://{addr}/metrics")])
        .output()
        .await
        .expect("curl runs");
    let metrics = String::from_utf8_lossy(&output.stdout).into_owned();
    host.kill().await.expect("the host stops");

    for series in [
        "maskpipe_messages_received_total 0",
        "maskpipe_rows_written_total 0",
        "maskpipe_duplicates_skipped_total 0",
        "maskpipe_messages_without_rows_total 0",
        "maskpipe_deletes_failed_total 0",
        "maskpipe_poller_restarts_total 0",
        "maskpipe_ledger_pruned_total 0",
        "maskpipe_transform_swaps_total{result=\"succeeded\"} 0",
        "maskpipe_transform_swaps_total{result=\"failed\"} 0",
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "missing {series:?} in\n{metrics}"
        );
    }
}
