//! Faults with real processes and real kills: the host is killed -9 at
//! random moments, PostgreSQL is stopped and started, the SQS server is
//! paused and restarted, and SIGTERM asks for a clean stop. Every run ends
//! with each valid message in `user_logins` exactly once and each malformed
//! one in the dead letters.
//!
//! Tests that stop a server run their own private instance (same scripts as
//! `just up`, another port and directory), so they never disturb the shared
//! stack that other tests use in parallel.

mod common;

use std::time::{Duration, Instant};

use common::*;
use maskpipe::source::SqsSource;

/// A private LocalStack with one queue: for tests that stop the server.
async fn private_sqs(slot: u16, queue: &str) -> (PrivateStack, String, SqsSource) {
    let private = PrivateStack::new(slot);
    private.stack("sqs-up");
    let endpoint = private.sqs_endpoint();
    let (queue, _) = SqsSource::create_with(SqsSource::client_at(&endpoint).await, queue)
        .await
        .unwrap();
    (private, endpoint, queue)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_then_restart_loses_and_doubles_nothing() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    // A short visibility timeout, so what a killed host held comes back soon.
    set_visibility_timeout(&queue, None, 2).await;
    let bodies = unique_logins("kill9", 5_000, 50);
    queue.send(&bodies).await.unwrap();

    // Each round kills the host at a random moment after it has started
    // writing, so kills land mid-batch, mid-commit and mid-delete.
    let killed_mid_stream = kill_9_rounds(
        &queue,
        &database,
        &["--pollers", "4"],
        5,
        400,
        5_050,
        0x6b696c6c,
    )
    .await;
    assert!(
        killed_mid_stream >= 3,
        "the kills came too late to test anything"
    );
    drain_until_empty(&queue, &database, None).await;
    assert_exactly_once(&database, 5_000, 50).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_mid_run_is_waited_out() {
    let private = PrivateStack::new(0);
    private.stack("postgres-up");
    let database = private.database_url();
    let queue = fresh_queue().await;
    let bodies = unique_logins("pgdown", 4_000, 40);
    queue.send(&bodies).await.unwrap();

    let mut command = drain_command(
        queue.queue_url(),
        &database,
        &component_path(),
        &["--pollers", "4"],
    );
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut host = command.spawn().expect("maskpipe could not be started");
    // Read as it comes, so a full pipe never stalls the host.
    let mut stderr_pipe = host.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stderr_pipe, &mut text)
            .await
            .unwrap();
        String::from_utf8_lossy(&text).into_owned()
    });
    wait_until_processed(&database, 200, Duration::from_secs(60)).await;
    // A real count (an error fails the test): the outage must start mid-run.
    let at_outage = count(
        &query_client(&database).await,
        "SELECT count(*) FROM maskpipe_processed",
    )
    .await;
    private.stack("postgres-down");
    assert!(
        at_outage < 4_040,
        "the database stopped after the work was done"
    );
    println!("{at_outage} of 4040 processed when PostgreSQL stopped");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        host.try_wait().unwrap().is_none(),
        "the host exited while the database was down"
    );
    private.stack("postgres-up");

    // The same host finishes everything: no second host drains after it.
    let output = tokio::time::timeout(Duration::from_secs(120), host.wait_with_output())
        .await
        .expect("the host never finished after the database came back")
        .unwrap();
    assert!(output.status.success(), "{}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    // The host met the outage: a write failed and was retried.
    let stderr = stderr.await.unwrap();
    assert!(
        stderr.contains("database write failed, will retry"),
        "the host never met the outage:\n{stderr}"
    );
    // Each message received once: no batch was abandoned to SQS and
    // redelivered while the database was down.
    assert!(
        stdout.contains("queue drained") && stdout.contains("messages received   4040\n"),
        "{stdout}"
    );
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.visible + depth.in_flight, 0, "{depth:?}");
    assert_exactly_once(&database, 4_000, 40).await;
}

/// Whether an HTTP server at `endpoint` answers within `limit` (a frozen
/// process accepts connections in the kernel's backlog but never answers).
async fn answers_within(endpoint: &str, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = endpoint.trim_start_matches("http://");
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /_localstack/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut first = [0u8; 12];
        let read = stream.read(&mut first).await.ok()?;
        Some(first[..read].starts_with(b"HTTP/"))
    };
    matches!(tokio::time::timeout(limit, probe).await, Ok(Some(true)))
}

fn signal_pid(pid: &str, name: &str) {
    let status = std::process::Command::new("kill")
        .args([name, pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {name} {pid}: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_paused_mid_run_is_waited_out() {
    let (private, endpoint, queue) = private_sqs(1, "paused").await;
    let database = fresh_database().await;
    let bodies = unique_logins("sqspause", 4_000, 40);
    queue.send(&bodies).await.unwrap();

    let mut host = spawn_host_at(
        Some(&endpoint),
        queue.queue_url(),
        &database,
        &["--pollers", "4"],
    );
    wait_until_processed(&database, 200, Duration::from_secs(60)).await;
    assert!(answers_within(&endpoint, Duration::from_secs(5)).await);
    // Freeze the server: requests hang, then time out, as in a network fault.
    let pid = private.localstack_pid();
    signal_pid(&pid, "-STOP");
    let at_pause = count(
        &query_client(&database).await,
        "SELECT count(*) FROM maskpipe_processed",
    )
    .await;
    assert!(at_pause < 4_040, "SQS paused after the work was done");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The pause is real: the server does not answer.
    let answered = answers_within(&endpoint, Duration::from_secs(1)).await;
    signal_pid(&pid, "-CONT");
    assert!(!answered, "SQS still answered while stopped");
    assert!(
        host.try_wait().unwrap().is_none(),
        "the host exited while SQS was paused"
    );

    wait_until_processed(&database, 4_040, Duration::from_secs(120)).await;
    signal(&host, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), host.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    // The paused host wrote everything exactly once; what is left in the
    // queue can only be committed messages whose delete failed in the pause,
    // which a later run skips.
    assert_exactly_once(&database, 4_000, 40).await;
    drain_until_empty(&queue, &database, Some(&endpoint)).await;
    assert_exactly_once(&database, 4_000, 40).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_restarted_mid_run_is_reconnected() {
    let (private, endpoint, queue) = private_sqs(2, "restarted").await;
    let database = fresh_database().await;
    queue.send(&unique_logins("before", 300, 3)).await.unwrap();

    let mut host = spawn_host_at(
        Some(&endpoint),
        queue.queue_url(),
        &database,
        &["--pollers", "2"],
    );
    wait_until_processed(&database, 303, Duration::from_secs(60)).await;

    // LocalStack's community edition keeps no state across a restart: the
    // queue comes back empty and is created again under the same URL.
    private.stack("sqs-down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    private.stack("sqs-up");
    let (queue, existed) =
        SqsSource::create_with(SqsSource::client_at(&endpoint).await, "restarted")
            .await
            .unwrap();
    assert!(!existed);
    queue.send(&unique_logins("after", 300, 3)).await.unwrap();
    assert!(
        host.try_wait().unwrap().is_none(),
        "the host exited while SQS was down"
    );

    wait_until_processed(&database, 606, Duration::from_secs(120)).await;
    signal(&host, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), host.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert_exactly_once(&database, 600, 6).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_batches_and_exits_0_promptly() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    queue.send(&unique_logins("term", 2_000, 20)).await.unwrap();

    // Draining, so the summary must say the signal, not "queue drained".
    let mut command = drain_command(
        queue.queue_url(),
        &database,
        &component_path(),
        &["--pollers", "4"],
    );
    command.stdout(std::process::Stdio::piped());
    let host = command.spawn().expect("maskpipe could not be started");
    wait_until_processed(&database, 200, Duration::from_secs(60)).await;
    let db = query_client(&database).await;
    let before_signal = count(&db, "SELECT count(*) FROM maskpipe_processed").await;
    let in_flight_at_signal = queue.depth().await.unwrap().in_flight as i64;
    let asked = Instant::now();
    signal(&host, "-TERM");
    let output = tokio::time::timeout(Duration::from_secs(30), host.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let took = asked.elapsed();
    assert!(output.status.success(), "{}", output.status);
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    println!("stopped {took:?} after SIGTERM");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("stopped by a signal"), "{stdout}");
    assert!(!stdout.contains("drained"), "{stdout}");
    // Right after exit, before SQS could return anything abandoned: nothing
    // is in flight, and every message that left the queue is in the ledger.
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.in_flight, 0, "{depth:?}");
    let processed = count(&db, "SELECT count(*) FROM maskpipe_processed").await;
    assert_eq!(processed, 2_020 - depth.visible as i64, "{depth:?}");
    // Polling stopped: once they see the signal, the host finishes what it
    // holds (in flight at the signal) and what the 4 pollers are receiving
    // (40 messages); the bound leaves room for what it takes in between the
    // count and the signal's arrival on a loaded machine. Pollers that kept
    // receiving would drain the remaining ~1,800.
    let after_signal = processed - before_signal;
    assert!(
        in_flight_at_signal + 400 < 2_020 - before_signal,
        "too much in flight at the signal ({in_flight_at_signal}) for the bound to tell a host \
         that stops polling from one that drains the queue"
    );
    println!("{after_signal} processed after SIGTERM, {in_flight_at_signal} in flight at it");
    assert!(
        after_signal < in_flight_at_signal + 400,
        "{after_signal} messages processed after SIGTERM ({in_flight_at_signal} in flight at it)"
    );

    // Whatever it had not finished is still in the queue; a later run
    // completes the work exactly once.
    drain_until_empty(&queue, &database, None).await;
    assert_exactly_once(&database, 2_000, 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_slower_than_the_visibility_timeout_is_kept_invisible() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    set_visibility_timeout(&queue, None, 2).await;
    // Create the tables, then hold a lock that blocks inserts into user_logins:
    // the batch's transaction waits on it for 6 s after it is received,
    // three timeouts.
    let target = maskpipe::sink::Database::new(&database, None).unwrap();
    let mut sink = maskpipe::sink::PgSink::connect(&target).await.unwrap();
    prepare_sink(&mut sink).await;
    let mut blocker = query_client(&database).await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE user_logins IN EXCLUSIVE MODE")
        .await
        .unwrap();
    queue.send(&unique_logins("slow", 10, 0)).await.unwrap();

    // One poller. It keeps polling while the batch waits on the lock, so a
    // message whose visibility lapsed would be received again: the summary
    // would count more than 10 received (and the depth could show it
    // visible in between).
    let command = drain_command(
        queue.queue_url(),
        &database,
        &component_path(),
        &["--pollers", "1"],
    );
    let host = tokio::spawn(run_with_limit(command, Duration::from_secs(60)));
    // The clock starts once the batch is received, not when the host is
    // spawned: a slow start on a loaded machine must not shorten the hold.
    wait_for(
        "the batch to be received",
        Duration::from_secs(60),
        async || queue.depth().await.unwrap().in_flight == 10,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let depth = queue.depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 10),
        "the slow batch became visible again: {depth:?}"
    );
    lock.rollback().await.unwrap();

    let output = host.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Received once each: never redelivered.
    assert!(stdout.contains("messages received   10\n"), "{stdout}");
    assert!(stdout.contains("duplicates skipped  0"), "{stdout}");
    assert_eq!(queue.depth().await.unwrap().in_flight, 0);
    assert_exactly_once(&database, 10, 0).await;
}
