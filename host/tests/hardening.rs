//! What the database refuses and what breaks a poller cost no more than
//! their own messages: a batch PostgreSQL refuses is split until only the
//! refused rows are left (they become `database_rejected` dead letters), a
//! poller that fails is restarted, and a host whose pollers keep failing
//! exits non-zero instead of reporting success.

mod common;

use std::time::Duration;

use common::*;

/// A login whose fields the test controls.
fn login(user_id: &str, device_type: &str, locale: &str) -> String {
    format!(
        r#"{{"user_id": "{user_id}", "app_version": "2.3.0", "device_type": "{device_type}", "ip": "10.1.2.3", "locale": "{locale}", "device_id": "593-47-5928"}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_the_database_refuses_become_dead_letters_and_the_rest_land() {
    let database = fresh_database().await;
    // An operator's constraint and trigger on the take-home's table.
    let db = query_client(&database).await;
    db.batch_execute(
        "CREATE TABLE user_logins (
             user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
             masked_device_id varchar(256), locale varchar(32), app_version integer,
             create_date date);
         ALTER TABLE user_logins ADD CONSTRAINT no_poison CHECK (device_type <> 'poison');
         CREATE FUNCTION refuse_xx() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.locale = 'XX' THEN RAISE EXCEPTION 'locale XX is banned'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_xx BEFORE INSERT ON user_logins
             FOR EACH ROW EXECUTE FUNCTION refuse_xx();",
    )
    .await
    .unwrap();
    let queue = fresh_queue().await;
    let mut bodies: Vec<String> = (0..28)
        .map(|n| login(&format!("good-{n:02}"), "android", "RU"))
        .collect();
    // Spread through the batches, so good rows share a batch with each.
    bodies.insert(3, login("bad-check", "poison", "RU"));
    bodies.insert(17, login("bad-trigger", "ios", "XX"));
    queue.send(&bodies).await.unwrap();

    let output = drain(&queue, &database, &["--pollers", "1"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 28);
    let dead: Vec<(String, String)> = db
        .query(
            "SELECT reason, detail FROM maskpipe_dead_letters ORDER BY detail",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().all(|(reason, _)| reason == "database_rejected"));
    assert!(dead[0].1.contains("SQLSTATE 23514"), "{dead:?}");
    assert!(dead[1].1.contains("SQLSTATE P0001"), "{dead:?}");
    // The database's own message (which can quote values) is not kept.
    assert!(dead.iter().all(|(_, detail)| !detail.contains("XX")));
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        30
    );
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.visible + depth.in_flight, 0);
}

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
