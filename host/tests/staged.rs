//! The staged pipeline's promises, with real processes: commits coalesce
//! several receive batches into one transaction, and still land exactly once
//! through `kill -9`; a row PostgreSQL refuses inside a coalesced commit
//! costs only its own message; SIGTERM with every stage busy (receives and
//! deletes waiting on a slow SQS, transforms spinning, commits sleeping in
//! PostgreSQL) finishes what was received and exits 0.
//!
//! A transaction's ledger rows share their `xmin` (the id of the
//! transaction that inserted them), so the ledger shows how many messages
//! each commit held.

mod common;

use std::time::{Duration, Instant};

use common::*;
use delay_proxy::{DelayProxy, upstream_of};

/// The largest number of ledger rows one transaction wrote.
const LARGEST_COMMIT: &str = "SELECT coalesce(max(n), 0) FROM (
    SELECT count(*) n FROM maskpipe_processed GROUP BY xmin::text) commits";

#[tokio::test(flavor = "multi_thread")]
async fn coalesced_commits_killed_9_mid_stream_land_exactly_once() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    // A short visibility timeout, so what a killed host held comes back soon.
    set_visibility_timeout(&queue, None, 2).await;
    let bodies = unique_logins("coalesce", 6_000, 60);
    queue.send(&bodies).await.unwrap();

    // A window long enough that every commit gathers many receive batches,
    // so each kill lands among coalesced transactions.
    let settings = ["--pollers", "4", "--commit-window-ms", "200"];
    let killed_mid_stream =
        kill_9_rounds(&queue, &database, &settings, 4, 300, 6_060, 0xc0a1e5ce).await;
    assert!(
        killed_mid_stream >= 3,
        "the kills came too late to test anything"
    );
    // Two full receives at least: one receive, however short, plus another
    // of at most 10 makes no more than 19.
    let largest = try_count(&database, LARGEST_COMMIT).await;
    println!("the largest commit held {largest} messages");
    assert!(
        largest >= 20,
        "no commit held several receive batches (largest: {largest})"
    );
    drain_until_empty(&queue, &database, None).await;
    assert_exactly_once(&database, 6_000, 60).await;
}

/// Slows every statement that inserts into `user_logins`, so commits take
/// at least `seconds`.
async fn slow_commits(database: &str, seconds: f64) {
    let db = query_client(database).await;
    db.batch_execute(&format!(
        "CREATE TABLE user_logins (
             user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
             masked_device_id varchar(256), locale varchar(32), app_version integer,
             create_date date);
         CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
         CREATE TRIGGER slow_insert AFTER INSERT ON user_logins
             FOR EACH STATEMENT EXECUTE FUNCTION slow_insert();"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_every_stage_busy_finishes_what_was_received_and_exits_0() {
    let database = fresh_database().await;
    slow_commits(&database, 0.3).await;
    let queue = fresh_queue().await;
    // Every 7th message spins in the transform for tenths of a second.
    let bodies: Vec<String> = (0..3_000)
        .map(|n| {
            let body = login_numbered("busy", n);
            if n % 7 == 0 {
                body.replace("android", "SLOW")
            } else {
                body
            }
        })
        .collect();
    queue.send(&bodies).await.unwrap();
    // Every SQS request (receives, deletes, visibility changes) waits 150 ms
    // on the way in, so they are in flight most of the time.
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or("http://127.0.0.1:4566".into());
    let proxy = DelayProxy::start(
        upstream_of(&endpoint).await.unwrap(),
        Duration::from_millis(150),
    )
    .await
    .unwrap();

    let mut command = drain_command(
        queue.queue_url(),
        &database,
        &fixture_path("fixture_hostile"),
        &["--pollers", "4", "--transformers", "2"],
    );
    command
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let host = command.spawn().expect("maskpipe could not be started");
    let db = query_client(&database).await;
    // Deletes begin after the first commit; wait for a later commit to be
    // sleeping in PostgreSQL, so each stage holds work at the signal.
    wait_until_processed(&database, 100, Duration::from_secs(60)).await;
    wait_for(
        "a commit in progress",
        Duration::from_secs(30),
        async || {
            count(
                &db,
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event = 'PgSleep'",
            )
            .await
                > 0
        },
    )
    .await;
    let in_flight_at_signal = queue.depth().await.unwrap().in_flight;
    let asked = Instant::now();
    signal(&host, "-TERM");
    let output = tokio::time::timeout(Duration::from_secs(60), host.wait_with_output())
        .await
        .expect("the host did not stop within 60 s of SIGTERM")
        .unwrap();
    let took = asked.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{stderr}", output.status);
    assert!(stdout.contains("stopped by a signal"), "{stdout}");
    println!("stopped {took:?} after SIGTERM with {in_flight_at_signal} messages in flight");
    assert!(
        in_flight_at_signal > 40,
        "too little in flight at the signal to keep every stage busy: {in_flight_at_signal}"
    );

    // Every stage drained: right after exit, before SQS could return an
    // abandoned batch, nothing is in flight, and every message the host
    // received is in the ledger.
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.in_flight, 0, "{depth:?}");
    let processed = count(&db, "SELECT count(*) FROM maskpipe_processed").await;
    assert_eq!(processed, 3_000 - depth.visible as i64, "{depth:?}");
    let received = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("messages received"))
        .and_then(|rest| rest.trim().parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no received count in {stdout}"));
    assert_eq!(received, processed, "{stdout}");
    assert!(
        depth.visible > 0,
        "the host drained the whole queue: no stop was tested"
    );

    // A later run completes the work, exactly once.
    drop(proxy);
    db.batch_execute("DROP TRIGGER slow_insert ON user_logins")
        .await
        .unwrap();
    drain_until_empty(&queue, &database, None).await;
    assert_exactly_once(&database, 3_000, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_in_flight_stay_within_the_memory_budget_under_back_pressure() {
    let database = fresh_database().await;
    let target = maskpipe::sink::Database::new(&database, None).unwrap();
    let mut sink = maskpipe::sink::PgSink::connect(&target).await.unwrap();
    prepare_sink(&mut sink).await;
    // Commits wait on this lock: everything received piles up in the host.
    let mut blocker = query_client(&database).await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE user_logins IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let queue = fresh_queue().await;
    // 300 messages of 200 KiB (60 MiB in all), the padding in a field the
    // transform ignores.
    let padding = "p".repeat(200 * 1024);
    let bodies: Vec<String> = (0..300)
        .map(|n| {
            login_numbered("budget", n)
                .replace("\"locale\"", &format!("\"pad\": \"{padding}\", \"locale\""))
        })
        .collect();
    queue.send(&bodies).await.unwrap();

    // A 4 MiB budget holds one batch of 10 such messages at a time (2 MiB
    // each, so two fit); each of the 4 pollers may hold one more waiting for
    // room: at most 6 batches, 60 messages, in flight.
    let command = drain_command(
        queue.queue_url(),
        &database,
        &component_path(),
        &["--pollers", "4", "--max-in-flight-mib", "4"],
    );
    let host = tokio::spawn(run_with_limit(command, Duration::from_secs(120)));
    wait_for("the host to fill up", Duration::from_secs(60), async || {
        queue.depth().await.unwrap().in_flight >= 40
    })
    .await;
    // Long enough for unbounded hand-offs to take in far more.
    let mut most = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        most = most.max(queue.depth().await.unwrap().in_flight);
    }
    println!("at most {most} messages in flight under back-pressure");
    assert!(most <= 60, "{most} messages in flight with a 4 MiB budget");
    lock.rollback().await.unwrap();

    let output = host.await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_exactly_once(&database, 300, 0).await;
}
