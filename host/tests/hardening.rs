//! What the database refuses and what breaks a poller cost no more than
//! their own messages: a batch PostgreSQL refuses is split until only the
//! refused rows are left (they become `database_rejected` dead letters), a
//! poller that fails is restarted, and a host whose pollers keep failing
//! exits non-zero instead of reporting success.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_poller_is_restarted_and_nothing_is_lost() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    queue.send(&sample_bodies()).await.unwrap();
    let output = drain(
        &queue,
        &database,
        // One poller, so nothing is processed unless it is restarted.
        &[
            "--pollers",
            "1",
            "--visibility-timeout-seconds",
            "2",
            "--inject-poller-failures",
            "3",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("restarting it").count(), 3, "{stderr}");
    // A panic's own message (it could quote a body) is never printed.
    assert!(!stderr.contains("injected poller failure"), "{stderr}");
    // The panicked batches came back and were processed: all 100 messages.
    let db = query_client(&database).await;
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 99);
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_dead_letters").await,
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        100
    );
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.visible + depth.in_flight, 0);
    assert!(String::from_utf8_lossy(&output.stdout).contains("queue drained"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_whose_pollers_cannot_run_exits_non_zero() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    queue.send(&sample_bodies()).await.unwrap();
    let command = drain_command(
        queue.queue_url(),
        &database,
        &component_path(),
        &[
            "--visibility-timeout-seconds",
            "1",
            "--inject-poller-failures",
            "1000000",
        ],
    );
    let output = run_with_limit(command, Duration::from_secs(90)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("keep failing"), "{stderr}");
    assert!(!stdout.contains("drained"), "{stdout}");
}
