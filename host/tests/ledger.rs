//! The sink's ledger against a real PostgreSQL: redeliveries add nothing.

mod common;

use chrono::NaiveDate;
use common::*;
use maskpipe::record::{Outcome, Rejection, Row};
use maskpipe::sink::{Database, PgSink, Processed};
use maskpipe::source::Received;

fn message(id: &str) -> Received {
    Received {
        receipt_handle: format!("receipt-{id}"),
        ..Received::local(id, format!("{{\"id\": \"{id}\"}}"), 1_670_839_200_000)
    }
}

fn row(user: &str) -> Outcome {
    Outcome::Row(Row {
        user_id: Some(user.into()),
        device_type: Some("ios".into()),
        masked_ip: Some("mp1.x.y".into()),
        masked_device_id: Some("mp1.x.z".into()),
        locale: None,
        app_version: Some(20300),
        create_date: NaiveDate::from_ymd_opt(2022, 12, 12),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_adds_no_second_row_or_dead_letter() {
    let url = fresh_database().await;
    let mut sink = PgSink::connect(&Database::new(&url, None).unwrap())
        .await
        .unwrap();
    sink.ensure_schema().await.unwrap();
    // Creating the schema twice is harmless.
    sink.ensure_schema().await.unwrap();
    let ring = keyring();

    let messages = [message("m1"), message("m2"), message("m3")];
    let outcomes = [
        row("u1"),
        row("u2"),
        Outcome::Rejected(Rejection::new("wrong_schema", "no login fields")),
    ];
    let batch: Vec<Processed<'_>> = messages
        .iter()
        .zip(&outcomes)
        .map(|(message, outcome)| Processed { message, outcome })
        .collect();

    let first = sink.write_batch(&batch, "digest-a", &ring).await.unwrap();
    assert_eq!(first.rows, 2);
    assert_eq!(first.dead_letter_reasons, vec!["wrong_schema".to_owned()]);
    assert_eq!(first.duplicates, 0);

    // SQS redelivers the same message ids (with new receipt handles).
    let again = sink.write_batch(&batch, "digest-a", &ring).await.unwrap();
    assert_eq!(again.rows, 0);
    assert!(again.dead_letter_reasons.is_empty());
    assert_eq!(again.duplicates, 3);

    // A batch mixing old and new ids writes only the new one.
    let mixed_messages = [message("m2"), message("m4")];
    let mixed_outcomes = [row("u2"), row("u4")];
    let mixed: Vec<Processed<'_>> = mixed_messages
        .iter()
        .zip(&mixed_outcomes)
        .map(|(message, outcome)| Processed { message, outcome })
        .collect();
    let report = sink.write_batch(&mixed, "digest-b", &ring).await.unwrap();
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
            "SELECT component_digest FROM maskpipe_processed WHERE message_id = 'm4'",
            &[],
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

fn dead_letter() -> Outcome {
    Outcome::Rejected(Rejection::new("wrong_schema", "no login fields"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_id_twice_in_one_batch_takes_its_first_outcome() {
    let url = fresh_database().await;
    let mut sink = PgSink::connect(&Database::new(&url, None).unwrap())
        .await
        .unwrap();
    sink.ensure_schema().await.unwrap();
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
            let report = sink.write_batch(&batch, "digest", &ring).await.unwrap();
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
