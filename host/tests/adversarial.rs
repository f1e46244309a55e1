//! Hostile input: arbitrary bodies through the built component (a property
//! test) and 10,000 random and adversarial bodies through the real pipeline.
//! The transform never traps, and every message ends as a row or a dead
//! letter.

mod common;

use std::sync::Arc;

use common::*;
use maskpipe::record::Outcome;
use maskpipe::runtime::{self, Limits, Transform};
use maskpipe::source::Received;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A character SQS accepts in a message body.
fn sqs_char(rng: &mut StdRng) -> char {
    match rng.random_range(0..10) {
        0..=5 => rng.random_range(0x20u32..0x7f),
        6 => rng.random_range(0xa0u32..0x800),
        7 => rng.random_range(0x800u32..0xd800),
        8 => rng.random_range(0xe000u32..0xfffe),
        _ => rng.random_range(0x10000u32..0x10ffff),
    }
    .try_into()
    .unwrap_or('?')
}

fn text(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len).map(|_| sqs_char(rng)).collect()
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn ip(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => format!(
            "{}.{}.{}.{}",
            rng.random::<u8>(),
            rng.random::<u8>(),
            rng.random::<u8>(),
            rng.random::<u8>()
        ),
        1 => format!(
            "2001:db8:{:x}::{:x}",
            rng.random::<u16>(),
            rng.random::<u16>()
        ),
        2 => format!("{}.{}.{}.{}", rng.random_range(0..999), 1, 2, 3),
        _ => text(rng, 20),
    }
}

fn version(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => format!(
            "{}.{}.{}",
            rng.random_range(0..10),
            rng.random_range(0..10),
            rng.random_range(0..10)
        ),
        1 => format!(
            "{}.{:02}",
            rng.random_range(0..10),
            rng.random_range(0..100)
        ),
        2 => format!("{}", rng.random_range(0..1000)),
        _ => text(rng, 8),
    }
}

/// One adversarial body; deterministic for a given generator state.
fn adversarial(rng: &mut StdRng, index: usize) -> String {
    match index % 12 {
        // A login with random but plausible values (IPv6, unicode, null locale).
        0..=3 => format!(
            r#"{{"user_id": {}, "app_version": {}, "device_type": {}, "ip": {}, "locale": {}, "device_id": {}}}"#,
            json_string(&text(rng, 60)),
            json_string(&version(rng)),
            json_string(&text(rng, 12)),
            json_string(&ip(rng)),
            if rng.random_bool(0.3) { "null".to_owned() } else { json_string(&text(rng, 4)) },
            json_string(&text(rng, 20)),
        ),
        // Numbers, arrays and objects where strings belong.
        4 => format!(
            r#"{{"user_id": {}, "app_version": 2.3, "device_type": ["ios"], "ip": {{"v4": 1}}, "locale": 7, "device_id": 5932}}"#,
            rng.random::<i64>()
        ),
        // Deep nesting, past serde_json's recursion limit.
        5 => {
            let depth = rng.random_range(100..2_000);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
        // Invalid unicode escapes: lone surrogates.
        6 => r#"{"user_id": "\udc00\ud800x", "app_version": "1.0", "device_type": "ios", "ip": "1.2.3.4", "locale": null, "device_id": "\ud83d"}"#.to_owned(),
        // Duplicated keys: the last one wins.
        7 => r#"{"user_id": "dup", "ip": "1.2.3.4", "ip": 12, "app_version": "1.0", "device_type": "ios", "device_id": "d", "device_id": "e"}"#.to_owned(),
        // Overlong fields.
        8 => format!(
            r#"{{"user_id": {}, "app_version": "1.0", "device_type": "ios", "ip": "::1", "locale": null, "device_id": {}}}"#,
            json_string(&"u".repeat(rng.random_range(100..5_000))),
            json_string(&"9".repeat(rng.random_range(100..5_000))),
        ),
        // Random text that is rarely JSON at all.
        9 => {
            let t = text(rng, 200);
            if t.is_empty() { "x".to_owned() } else { t }
        }
        // Bare JSON values and empty objects.
        10 => ["{}", "null", "true", "123", "\"s\"", "[]", "{\"user_id\": null}"][rng.random_range(0..7)].to_owned(),
        // Truncated JSON.
        _ => {
            let full = sample_bodies()[rng.random_range(0..100)].clone();
            let cut = rng.random_range(1..full.len());
            full[..cut].to_owned()
        }
    }
}

/// Bodies near SQS's 256 KiB limit: a valid login with a huge extra field,
/// and a huge user_id.
fn huge_bodies() -> Vec<String> {
    let login = sample_bodies()[0].clone();
    vec![
        login.replacen(
            '{',
            &format!("{{\"padding\": \"{}\", ", "p".repeat(250_000)),
            1,
        ),
        login.replace("424cdd21-063a-43a7-b91b-7ca1a833afae", &"u".repeat(250_000)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Arbitrary batches through the built component: never a trap.
    #[test]
    fn the_component_never_traps_on_arbitrary_bodies(
        bodies in prop::collection::vec(".{0,200}", 1..10),
        sent in any::<u64>(),
    ) {
        thread_local! {
            static TRANSFORM: Arc<Transform> = Arc::new(
                runtime::block_on(Transform::load(&runtime::engine().unwrap(), &component_path(), Limits::default())).unwrap()
            );
        }
        let transform = TRANSFORM.with(Arc::clone);
        let mut worker = runtime::block_on(transform.worker(keyring())).unwrap();
        let messages: Vec<Received> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| Received::local(format!("p{i}"), body.as_str(), sent))
            .collect();
        let outcomes = runtime::block_on(worker.run(&messages)).unwrap();
        prop_assert_eq!(outcomes.len(), messages.len());
        for outcome in &outcomes {
            if let Outcome::Rejected(rejection) = outcome {
                prop_assert!(
                    !rejection.code.starts_with("transform_"),
                    "the component failed: {:?}", rejection
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_adversarial_bodies_all_end_as_rows_or_dead_letters() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let mut rng = StdRng::seed_from_u64(0x6d61736b);
    let bodies: Vec<String> = (0..9_998).map(|i| adversarial(&mut rng, i)).collect();
    queue.send(&bodies).await.unwrap();
    // One at a time: a batch is limited to 256 KiB in all.
    for huge in huge_bodies() {
        queue.send(&[huge]).await.unwrap();
    }

    let output = drain(&queue, &database, &["--pollers", "4"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");

    let db = query_client(&database).await;
    let rows = count(&db, "SELECT count(*) FROM user_logins").await;
    let dead = count(&db, "SELECT count(*) FROM maskpipe_dead_letters").await;
    assert_eq!(rows + dead, 10_000, "rows {rows} + dead letters {dead}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        10_000
    );
    assert!(
        rows > 1_000,
        "the generator should make valid logins too: {rows}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM maskpipe_dead_letters WHERE reason LIKE 'transform_%'"
        )
        .await,
        0,
        "the transform failed on some input"
    );
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.visible + depth.in_flight, 0);
}
