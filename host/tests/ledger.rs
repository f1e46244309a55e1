//! The sink's ledger against a real PostgreSQL, fed by a real SQS queue:
//! redeliveries (same message id, new receipt handle) add nothing.

mod common;

use chrono::NaiveDate;
use common::*;
use maskpipe::record::{Outcome, Rejection, Row};
use maskpipe::sink::{Database, PgSink, Processed};
use maskpipe::source::{Received, SqsSource};

/// The body of the test message tagged `tag`.
fn body(tag: &str) -> String {
    format!("{{\"id\": \"{tag}\"}}")
}

/// What the transform would make of each tagged body: rows, and a rejection
/// for `m3`.
fn outcome_of(message: &Received) -> Outcome {
    let tag = message.body.split('"').nth(3).unwrap_or("");
    match tag {
        "m3" => Outcome::Rejected(Rejection::new("wrong_schema", "no login fields")),
        tag => row(&format!("u{}", tag.trim_start_matches('m'))),
    }
}

/// Receives until exactly `count` messages are in hand, sorted by body.
async fn receive_exactly(queue: &SqsSource, count: usize) -> Vec<Received> {
    let mut received: Vec<Received> = Vec::new();
    let started = std::time::Instant::now();
    while received.len() < count {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "received {} of {count}",
            received.len()
        );
        received.extend(queue.receive(10, 1, Some(60)).await.unwrap());
    }
    assert_eq!(received.len(), count, "more messages than expected");
    received.sort_by(|a, b| a.body.cmp(&b.body));
    received
}

/// Makes received messages visible at once, as an expired visibility
/// timeout (a crashed consumer) would.
async fn make_visible_again(queue: &SqsSource, messages: &[Received]) {
    let handles: Vec<String> = messages.iter().map(|m| m.receipt_handle.clone()).collect();
    assert_eq!(queue.extend_visibility(&handles, 0).await.unwrap(), 0);
}

fn row(user: &str) -> Outcome {
    Outcome::Row(Row {
        user_id: Some(user.into()),
        device_type: Some("ios".into()),
        masked_ip: Some("mp2.x.y".into()),
        masked_device_id: Some("mp2.x.z".into()),
        locale: None,
        app_version: Some(20300),
        create_date: NaiveDate::from_ymd_opt(2022, 12, 12),
    })
}

async fn write(
    sink: &mut PgSink,
    messages: &[Received],
    digest: &str,
) -> maskpipe::sink::WriteReport {
    let outcomes: Vec<Outcome> = messages.iter().map(outcome_of).collect();
    let batch: Vec<Processed<'_>> = messages
        .iter()
        .zip(&outcomes)
        .map(|(message, outcome)| Processed { message, outcome })
        .collect();
    sink.write_batch(&batch, digest, &keyring()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_adds_no_second_row_or_dead_letter() {
    let url = fresh_database().await;
    let queue = fresh_queue().await;
    let mut sink = PgSink::connect(&Database::new(&url, None).unwrap())
        .await
        .unwrap();
    sink.ensure_schema().await.unwrap();
    // Creating the schema twice is harmless.
    sink.ensure_schema().await.unwrap();

    queue
        .send(&[body("m1"), body("m2"), body("m3")])
        .await
        .unwrap();
    let first_delivery = receive_exactly(&queue, 3).await;
    let first = write(&mut sink, &first_delivery, "digest-a").await;
    assert_eq!(first.rows, 2);
    assert_eq!(first.dead_letter_reasons, vec!["wrong_schema".to_owned()]);
    assert_eq!(first.duplicates, 0);

    // SQS redelivers the same message ids with new receipt handles (as
    // when the first consumer died before deleting them).
    make_visible_again(&queue, &first_delivery).await;
    let redelivery = receive_exactly(&queue, 3).await;
    for (before, again) in first_delivery.iter().zip(&redelivery) {
        assert_eq!(again.id, before.id);
        assert_ne!(again.receipt_handle, before.receipt_handle);
    }
    let again = write(&mut sink, &redelivery, "digest-a").await;
    assert_eq!(again.rows, 0);
    assert!(again.dead_letter_reasons.is_empty());
    assert_eq!(again.duplicates, 3);

    // A batch mixing an old id (m2, delivered a third time) and a new one
    // (m4) writes only the new one.
    let m2 = redelivery
        .iter()
        .find(|m| m.body == body("m2"))
        .unwrap()
        .clone();
    make_visible_again(&queue, std::slice::from_ref(&m2)).await;
    queue.send(&[body("m4")]).await.unwrap();
    let mixed = receive_exactly(&queue, 2).await;
    assert_eq!(mixed[0].id, m2.id);
    let report = write(&mut sink, &mixed, "digest-b").await;
    assert_eq!((report.rows, report.duplicates), (1, 1));

    let db = query_client(&url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 3);
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_dead_letters").await,
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        4
    );
    let digest: String = db
        .query_one(
            "SELECT component_digest FROM maskpipe_processed WHERE message_id = $1",
            &[&mixed[1].id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(digest, "digest-b");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_logins_keeps_the_exact_take_home_ddl() {
    let url = fresh_database().await;
    let mut sink = PgSink::connect(&Database::new(&url, None).unwrap())
        .await
        .unwrap();
    sink.ensure_schema().await.unwrap();
    let db = query_client(&url).await;
    let columns: Vec<(String, String, Option<i32>, String)> = db
        .query(
            "SELECT column_name::text, data_type::text, character_maximum_length, is_nullable::text
             FROM information_schema.columns WHERE table_name = 'user_logins' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected = [
        ("user_id", "character varying", Some(128)),
        ("device_type", "character varying", Some(32)),
        ("masked_ip", "character varying", Some(256)),
        ("masked_device_id", "character varying", Some(256)),
        ("locale", "character varying", Some(32)),
        ("app_version", "integer", None),
        ("create_date", "date", None),
    ];
    assert_eq!(columns.len(), expected.len());
    for ((name, kind, len, nullable), (want_name, want_kind, want_len)) in
        columns.iter().zip(expected)
    {
        assert_eq!(
            (name.as_str(), kind.as_str(), *len),
            (want_name, want_kind, want_len)
        );
        assert_eq!(nullable, "YES");
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM information_schema.table_constraints WHERE table_name = 'user_logins'").await,
        0,
        "user_logins must have no primary key or other constraint"
    );
}
