//! The sink's ledger against a real PostgreSQL, fed by a real SQS queue:
//! redeliveries (same message id, new receipt handle) add nothing.

mod common;

use chrono::NaiveDate;
use common::*;
use maskpipe::record::{Outcome, Rejection, TableRow, Value};
use maskpipe::sink::{Database, PgSink, Processed};
use maskpipe::source::{Received, SqsSource};

/// The body of the test message tagged `tag`.
fn body(tag: &str) -> String {
    format!("{{\"id\": \"{tag}\"}}")
}

/// A local message with id `id` (the ledger tests that need no queue).
fn message(id: &str) -> Received {
    Received {
        receipt_handle: format!("receipt-{id}"),
        ..Received::local(id, body(id), 1_670_839_200_000)
    }
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
    let text = |text: &str| Some(Value::Text(text.into()));
    Outcome::Rows(vec![TableRow {
        table: 0,
        values: vec![
            text(user),
            text("ios"),
            text("mp2.x.y"),
            text("mp2.x.z"),
            None,
            Some(Value::Integer(20300)),
            NaiveDate::from_ymd_opt(2022, 12, 12).map(Value::Date),
        ],
    }])
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
    sink.write_batch(&batch, &login_schema(), digest, &keyring())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_adds_no_second_row_or_dead_letter() {
    let url = fresh_database().await;
    let queue = fresh_queue().await;
    let mut sink = PgSink::connect(&Database::new(&url, None).unwrap())
        .await
        .unwrap();
    prepare_sink(&mut sink).await;
    // Creating the schema twice is harmless.
    prepare_sink(&mut sink).await;

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
    prepare_sink(&mut sink).await;
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

fn dead_letter() -> Outcome {
    Outcome::Rejected(Rejection::new("wrong_schema", "no login fields"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_id_twice_in_one_batch_takes_its_first_outcome() {
    let url = fresh_database().await;
    let mut sink = PgSink::connect(&Database::new(&url, None).unwrap())
        .await
        .unwrap();
    prepare_sink(&mut sink).await;
    let ring = keyring();
    let db = query_client(&url).await;
    for round in 0..8 {
        for row_first in [true, false] {
            let id = format!("twice-{round}-{row_first}");
            // Other messages around the pair, so that the pair is not the
            // whole input of the statement's sort.
            let messages = [
                message(&format!("before-{round}-{row_first}")),
                message(&id),
                message(&format!("between-{round}-{row_first}")),
                message(&id),
            ];
            let (first, second) = if row_first {
                (row(&id), dead_letter())
            } else {
                (dead_letter(), row(&id))
            };
            let outcomes = [row("other"), first, dead_letter(), second];
            let batch: Vec<Processed<'_>> = messages
                .iter()
                .zip(&outcomes)
                .map(|(message, outcome)| Processed { message, outcome })
                .collect();
            let report = sink
                .write_batch(&batch, &login_schema(), "digest", &ring)
                .await
                .unwrap();
            assert_eq!(
                report.duplicates, 1,
                "round {round}: the second copy is a duplicate"
            );
            let (rows, dead_letters) = if row_first { (2, 1) } else { (1, 2) };
            assert_eq!(report.rows, rows, "round {round}, row first: {row_first}");
            assert_eq!(report.dead_letter_reasons.len(), dead_letters);
            let outcome: String = db
                .query_one(
                    "SELECT outcome FROM maskpipe_processed WHERE message_id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(outcome, if row_first { "row" } else { "dead_letter" });
            let written = count(
                &db,
                &format!(
                    "SELECT (SELECT count(*) FROM user_logins WHERE user_id = '{id}')
                          + (SELECT count(*) FROM maskpipe_dead_letters WHERE message_id = '{id}')"
                ),
            )
            .await;
            assert_eq!(written, 1, "exactly one outcome for {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_deletes_only_ledger_rows_older_than_the_retention_in_batches() {
    let url = fresh_database().await;
    let mut sink = PgSink::connect(&Database::new(&url, None).unwrap())
        .await
        .unwrap();
    prepare_sink(&mut sink).await;
    let db = query_client(&url).await;
    let insert = |prefix: &str, count: i32, age: &str| {
        format!(
            "INSERT INTO maskpipe_processed (message_id, outcome, component_digest, processed_at)
             SELECT '{prefix}-' || n, 'row', 'd', now() - interval '{age}' FROM generate_series(1, {count}) n"
        )
    };
    // Retention 10 days: 23 rows older, the rest younger, some by a minute only.
    db.batch_execute(&insert("ancient", 3, "400 days"))
        .await
        .unwrap();
    db.batch_execute(&insert("old", 20, "10 days 1 minute"))
        .await
        .unwrap();
    db.batch_execute(&insert("edge", 5, "9 days 23 hours 59 minutes"))
        .await
        .unwrap();
    db.batch_execute(&insert("recent", 7, "1 day"))
        .await
        .unwrap();
    db.batch_execute(&insert("now", 4, "0 seconds"))
        .await
        .unwrap();
    let retention = std::time::Duration::from_secs(10 * 24 * 3600);

    let report = sink.prune_ledger(retention, 5).await.unwrap();
    assert_eq!(report.rows, 23);
    assert_eq!(report.batches, 5, "5 + 5 + 5 + 5 + 3");
    assert!(!report.skipped);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM maskpipe_processed WHERE message_id ~ '^(ancient|old)-'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        16
    );

    // Nothing left to prune: one empty batch.
    let again = sink.prune_ledger(retention, 5).await.unwrap();
    assert_eq!((again.rows, again.batches), (0, 1));

    // While another host prunes (holds the lock), this one does nothing.
    db.batch_execute(&insert("later", 3, "11 days"))
        .await
        .unwrap();
    db.execute(
        "SELECT pg_advisory_lock($1)",
        &[&(0x6d61_736b_7069_7065_i64 + 1)],
    )
    .await
    .unwrap();
    let skipped = sink.prune_ledger(retention, 5).await.unwrap();
    assert!(skipped.skipped);
    assert_eq!(skipped.rows, 0);
    db.execute(
        "SELECT pg_advisory_unlock($1)",
        &[&(0x6d61_736b_7069_7065_i64 + 1)],
    )
    .await
    .unwrap();
    assert_eq!(sink.prune_ledger(retention, 5).await.unwrap().rows, 3);
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        16
    );

    // The pruner's index exists.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'maskpipe_processed_processed_at'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn maskpipe_run_prunes_the_ledger_in_the_background_and_warns_of_a_short_retention() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let mut sink = PgSink::connect(&Database::new(&database, None).unwrap())
        .await
        .unwrap();
    prepare_sink(&mut sink).await;
    let db = query_client(&database).await;
    db.batch_execute(
        "INSERT INTO maskpipe_processed (message_id, outcome, component_digest, processed_at)
         SELECT 'old-' || n, 'row', 'd', now() - interval '2 hours' FROM generate_series(1, 7000) n;
         INSERT INTO maskpipe_processed (message_id, outcome, component_digest, processed_at)
         SELECT 'young-' || n, 'row', 'd', now() - interval '50 minutes' FROM generate_series(1, 5) n",
    )
    .await
    .unwrap();

    let log_path = std::env::temp_dir().join(unique_name("maskpipe-prune.log"));
    let mut host = maskpipe()
        .args(["run", "--wait-seconds", "1", "--progress-seconds", "0"])
        .args([
            "--ledger-retention-hours",
            "1",
            "--ledger-prune-seconds",
            "1",
        ])
        .args(["--queue", queue.queue_url(), "--database-url", &database])
        .arg("--transform")
        .arg(component_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "the old ledger rows pruned",
        std::time::Duration::from_secs(60),
        async || try_count(&database, "SELECT count(*) FROM maskpipe_processed").await == 5,
    )
    .await;
    host.start_kill().unwrap();
    let _ = host.wait().await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM maskpipe_processed WHERE message_id LIKE 'young-%'"
        )
        .await,
        5
    );
    // The queue keeps messages 4 days by default: 1 h is too short.
    assert!(
        log.contains("ledger retention (1 h) is shorter than the queue's"),
        "{log}"
    );
}

/// One message's rows in two tables: `user_logins` and a second table of
/// one NOT NULL text column.
fn fan_out(user: &str) -> Outcome {
    let Outcome::Rows(mut rows) = row(user) else {
        unreachable!("row() makes rows")
    };
    rows.push(TableRow {
        table: 1,
        values: vec![Some(Value::Text(format!("device of {user}")))],
    });
    Outcome::Rows(rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_fan_out_message_adds_rows_to_no_table() {
    use maskpipe::schema::{Column, ColumnType, Schema, Table, user_logins};
    let url = fresh_database().await;
    let mut sink = PgSink::connect(&Database::new(&url, None).unwrap())
        .await
        .unwrap();
    sink.ensure_schema().await.unwrap();
    let schema = std::sync::Arc::new(
        Schema::new(vec![
            user_logins(),
            Table {
                name: "login_devices".into(),
                columns: vec![Column {
                    name: "device".into(),
                    kind: ColumnType::Text { max_chars: 64 },
                    nullable: false,
                    pii: None,
                }],
            },
        ])
        .unwrap(),
    );
    sink.prepare_tables(&schema, true).await.unwrap();
    let write_twice = async |sink: &mut PgSink, receipt: &str| {
        let messages: Vec<Received> = ["f1", "f2"]
            .iter()
            .map(|id| Received {
                receipt_handle: format!("{receipt}-{id}"),
                ..message(id)
            })
            .collect();
        let outcomes: Vec<Outcome> = messages.iter().map(|m| fan_out(&m.id)).collect();
        let batch: Vec<Processed<'_>> = messages
            .iter()
            .zip(&outcomes)
            .map(|(message, outcome)| Processed { message, outcome })
            .collect();
        sink.write_batch(&batch, &schema, "digest", &keyring())
            .await
            .unwrap()
    };
    let first = write_twice(&mut sink, "first").await;
    assert_eq!((first.rows, first.duplicates), (4, 0));
    // The same ids again, as SQS redelivers them: nothing in any table.
    let again = write_twice(&mut sink, "again").await;
    assert_eq!((again.rows, again.duplicates), (0, 2));
    let db = query_client(&url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 2);
    assert_eq!(count(&db, "SELECT count(*) FROM login_devices").await, 2);
}
