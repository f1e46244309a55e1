//! `maskpipe dead-letters list|replay` against the real stack: bad messages
//! go through the pipeline into the dead letters, are listed, and replay
//! sends exactly the selected bodies back, byte-identical, deleting a dead
//! letter only once SQS has accepted its message.

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use common::*;
use maskpipe::source::SqsSource;

/// Bodies the transform rejects as `invalid_app_version`: PII-bearing, one
/// pretty-printed over several lines, one with non-ASCII text.
fn bad_versions() -> Vec<String> {
    let sample = sample_bodies()[0].clone();
    let beta = sample.replace("\"2.3.0\"", "\"2.3.0-beta\"");
    vec![
        beta.replace("424cdd21", "dl000001"),
        beta.replace("424cdd21", "dl000002")
            .replace(", ", ",\n  ")
            .replace('{', "{\n  ")
            .replace('}', "\n}"),
        beta.replace("424cdd21", "dl000003")
            .replace("\"RU\"", "\"ру́сский ✓\""),
    ]
}

/// Bodies rejected for other reasons; replaying `invalid_app_version` must
/// leave them alone.
fn other_bad() -> Vec<String> {
    vec![
        r#"{"foo": "dl-other-1"}"#.to_owned(),
        "{\"foo\":\n \"dl-other-2\"}".to_owned(),
        "{\"user_id\": \"dl-other-3\"".to_owned(),
    ]
}

fn dead_letters(args: &[&str], database: &str) -> tokio::process::Command {
    let mut command = maskpipe();
    command
        .arg("dead-letters")
        .args(args)
        .args(["--database-url", database]);
    command
}

async fn run(command: tokio::process::Command) -> Output {
    run_with_limit(command, Duration::from_secs(60)).await
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn reasons(database: &str) -> BTreeMap<String, i64> {
    let db = query_client(database).await;
    db.query(
        "SELECT reason, count(*) FROM maskpipe_dead_letters GROUP BY reason",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// Receives until `expected` messages came (or 30 s passed); deletes them.
async fn receive_all(queue: &SqsSource, expected: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    let started = std::time::Instant::now();
    while bodies.len() < expected && started.elapsed() < Duration::from_secs(30) {
        let batch = queue.receive(10, 1, None).await.unwrap();
        queue.delete(&batch).await.unwrap();
        bodies.extend(batch.into_iter().map(|m| m.body));
    }
    // Nothing more than expected arrives.
    assert!(queue.receive(10, 1, None).await.unwrap().is_empty());
    bodies
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_and_replayed_byte_identical_deleting_only_what_sqs_took() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let mut bodies = unique_logins("dl", 20, 0);
    bodies.extend(bad_versions());
    bodies.extend(other_bad());
    queue.send(&bodies).await.unwrap();
    let drained = drain(&queue, &database, &[]).await;
    assert!(drained.status.success(), "{}", text(&drained));
    let before = reasons(&database).await;
    assert_eq!(before.get("invalid_app_version"), Some(&3), "{before:?}");
    assert_eq!(before.values().sum::<i64>(), 6, "{before:?}");

    // list: counts by day, reason and component.
    let listed = run(dead_letters(&["list"], &database)).await;
    assert!(listed.status.success(), "{}", text(&listed));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let line = stdout
        .lines()
        .find(|line| line.contains("invalid_app_version"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[0], today, "{stdout}");
    assert_eq!(fields[2].len(), 12, "short component digest: {stdout}");
    assert_eq!(fields[3], "3", "{stdout}");
    assert!(stdout.contains("total 6"), "{stdout}");

    // A replay to a queue that does not exist deletes nothing and exits 1.
    let missing = run(dead_letters(
        &[
            "replay",
            "--reason",
            "invalid_app_version",
            "--queue",
            &unique_name("mp-missing").replace('_', "-"),
        ],
        &database,
    ))
    .await;
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert_eq!(reasons(&database).await, before);

    // No selector: refused, nothing done.
    let target = fresh_queue().await;
    let unselected = run(dead_letters(
        &["replay", "--queue", target.queue_url()],
        &database,
    ))
    .await;
    assert_eq!(unselected.status.code(), Some(1), "{}", text(&unselected));

    // A dry run sends and deletes nothing.
    let dry = run(dead_letters(
        &[
            "replay",
            "--reason",
            "invalid_app_version",
            "--dry-run",
            "--queue",
            target.queue_url(),
        ],
        &database,
    ))
    .await;
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would replay 3 dead letters"),
        "{}",
        text(&dry)
    );
    assert_eq!(reasons(&database).await, before);
    assert_eq!(target.depth().await.unwrap().visible, 0);

    // The replay sends exactly those bodies, byte for byte (newlines
    // included), and deletes exactly those dead letters.
    let replayed = run(dead_letters(
        &[
            "replay",
            "--reason",
            "invalid_app_version",
            "--queue",
            target.queue_url(),
        ],
        &database,
    ))
    .await;
    assert!(replayed.status.success(), "{}", text(&replayed));
    assert!(
        String::from_utf8_lossy(&replayed.stdout)
            .contains("replayed 3 dead letters (invalid_app_version: 3)"),
        "{}",
        text(&replayed)
    );
    let mut received = receive_all(&target, 3).await;
    let mut expected = bad_versions();
    received.sort();
    expected.sort();
    assert_eq!(received, expected);
    let mut after = before.clone();
    after.remove("invalid_app_version");
    assert_eq!(reasons(&database).await, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_sqs_refuses_keeps_its_dead_letter_and_exits_1() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    // An empty run creates the schema.
    let drained = drain(&queue, &database, &[]).await;
    assert!(drained.status.success(), "{}", text(&drained));
    // SQS refuses a body with a control character; such a body cannot come
    // from SQS, so it is planted here.
    let ring = keyring();
    let db = query_client(&database).await;
    for (message_id, body) in [
        ("good", "{\"foo\": 1}"),
        ("refused", "{\"foo\": \"\u{1}\"}"),
    ] {
        db.execute(
            "INSERT INTO maskpipe_dead_letters (message_id, reason, detail, body_sealed, component_digest)
             VALUES ($1, 'wrong_schema', '', $2, 'd')",
            &[&message_id, &ring.seal(message_id, body.as_bytes())],
        )
        .await
        .unwrap();
    }
    let target = fresh_queue().await;
    let replayed = run(dead_letters(
        &["replay", "--all", "--queue", target.queue_url()],
        &database,
    ))
    .await;
    assert_eq!(replayed.status.code(), Some(1), "{}", text(&replayed));
    let left: Vec<String> = db
        .query("SELECT message_id FROM maskpipe_dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, ["refused"], "{}", text(&replayed));
    assert_eq!(receive_all(&target, 1).await, ["{\"foo\": 1}"]);
}
