//! Operating maskpipe: metrics and probes over HTTP, and scale-out with
//! several hosts competing on one queue.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncBufReadExt;

/// Starts a host with `--metrics-addr 127.0.0.1:0` at `--log trace` and
/// returns it with the address it bound (read from its log) and its whole
/// stderr, complete once it exits.
async fn host_with_metrics(
    queue_url: &str,
    database: &str,
) -> (
    tokio::process::Child,
    String,
    tokio::task::JoinHandle<String>,
) {
    let mut host = maskpipe()
        .args([
            "run",
            "--wait-seconds",
            "1",
            "--progress-seconds",
            "0",
            "--log",
            "trace",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--queue", queue_url, "--database-url", database])
        .arg("--transform")
        .arg(component_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(host.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("on http://").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("the host never said where it serves metrics");
    })
    .await
    .unwrap();
    // Keep reading its log, so it never blocks on a full pipe, and keep it.
    let log = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    (host, addr, log)
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    let output = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_probes_report_the_run_without_pii() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let bodies = sample_bodies();
    queue.send(&bodies).await.unwrap();
    let (mut host, addr, log) = host_with_metrics(queue.queue_url(), &database).await;

    wait_until_processed(&database, 100, Duration::from_secs(60)).await;
    assert_eq!(get(&addr, "/healthz").await, (200, "ok\n".to_owned()));
    let (status, readiness) = get(&addr, "/readyz").await;
    assert_eq!(status, 200, "{readiness}");
    assert!(
        readiness.contains("sqs: ok") && readiness.contains("postgres: ok"),
        "{readiness}"
    );

    let (status, metrics) = get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "maskpipe_messages_received_total 100",
        "maskpipe_rows_written_total 99",
        "maskpipe_duplicates_skipped_total 0",
        "maskpipe_dead_letters_total{reason=\"wrong_schema\"} 1",
        "maskpipe_transform_seconds_count",
        "maskpipe_batch_commit_seconds_count",
        "maskpipe_deletes_failed_total 0",
        "maskpipe_queue_messages{state=\"visible\"}",
        "maskpipe_transform_info{digest=\"",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in\n{metrics}"
        );
    }
    host.start_kill().unwrap();
    host.wait().await.unwrap();
    // Its whole stderr at `--log trace`, complete now that it has exited.
    let log = log.await.unwrap();
    println!("{} lines of log", log.lines().count());
    assert!(log.contains("DEBUG"), "not a verbose log:\n{log}");
    let mut secrets = 0;
    for body in &bodies {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
            continue;
        };
        for field in ["ip", "device_id"] {
            if let Some(secret) = value[field].as_str() {
                secrets += 1;
                assert!(!metrics.contains(secret), "plaintext PII in metrics");
                let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
                assert!(leaks.is_empty(), "plaintext {field} in the log: {leaks:#?}");
            }
        }
    }
    assert!(secrets >= 198, "only {secrets} values searched for");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_database() {
    let private = PrivateStack::new(3);
    private.stack("postgres-up");
    let queue = fresh_queue().await;
    let (mut host, addr, log) = host_with_metrics(queue.queue_url(), &private.database_url()).await;
    assert_eq!(get(&addr, "/readyz").await.0, 200);
    // The probes answer from before the pipeline's startup ends: stopping
    // PostgreSQL before it has made the tables would fail the startup, as
    // it should, instead of testing readiness.
    wait_for("the host's startup", Duration::from_secs(60), async || {
        try_count(
            &private.database_url(),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'user_logins'",
        )
        .await
            == 1
    })
    .await;

    private.stack("postgres-down");
    // On a loaded machine one probe can outlast curl's 10 s (its SQS check
    // alone may take its 3 s): ask until an answer comes.
    let mut answer = (0, String::new());
    let mut exited = None;
    wait_for(
        "an answer from /readyz",
        Duration::from_secs(60),
        async || {
            answer = get(&addr, "/readyz").await;
            exited = host.try_wait().unwrap();
            answer.0 != 0 || exited.is_some()
        },
    )
    .await;
    if let Some(status) = exited {
        let log = log.await.unwrap();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!("the host exited ({status}) while PostgreSQL was down: {tail:#?}");
    }
    let (status, readiness) = answer;
    assert_eq!(status, 503, "{readiness}");
    assert!(
        readiness.contains("postgres: cannot connect"),
        "{readiness}"
    );
    assert_eq!(get(&addr, "/healthz").await.0, 200, "alive while not ready");

    private.stack("postgres-up");
    wait_for("readiness to return", Duration::from_secs(30), async || {
        get(&addr, "/readyz").await.0 == 200
    })
    .await;
    host.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_share_a_queue_exactly_once_even_when_one_is_killed() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let bodies = unique_logins("scale", 6_000, 60);
    queue.send(&bodies).await.unwrap();

    // A short visibility timeout: what the killed replica held comes back soon.
    let extra = ["--pollers", "2", "--visibility-timeout-seconds", "3"];
    let mut hosts: Vec<_> = (0..3)
        .map(|_| spawn_host(queue.queue_url(), &database, &extra))
        .collect();
    wait_until_processed(&database, 2_000, Duration::from_secs(120)).await;
    // One replica dies mid-batch; its in-flight messages come back to the
    // others after the visibility timeout.
    hosts[0].start_kill().unwrap();
    hosts[0].wait().await.unwrap();
    let at_kill = try_count(&database, "SELECT count(*) FROM maskpipe_processed").await;
    assert!(at_kill < 6_060, "the kill came after the work was done");

    wait_until_processed(&database, 6_060, Duration::from_secs(180)).await;
    for host in &mut hosts[1..] {
        let pid = host.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), host.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
    drain_until_empty(&queue, &database, None).await;
    assert_exactly_once(&database, 6_000, 60).await;
}
