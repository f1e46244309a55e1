//! Hostile and broken transforms are contained: the deadline and memory cap
//! stop them, the poison message is dead-lettered with a reason, the rest of
//! the batch goes through, the host stays up; a component that imports a
//! capability maskpipe does not grant is refused at load.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use maskpipe::record::Outcome;
use maskpipe::runtime::{self, Limits, Transform};
use maskpipe::source::Received;

fn fixture(name: &str) -> std::path::PathBuf {
    let path = component_path().with_file_name(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} missing: run `just build-fixtures`",
        path.display()
    );
    path
}

const TIGHT: Limits = Limits {
    deadline: Duration::from_millis(300),
    memory_bytes: 16 << 20,
};

/// A valid login whose user_id carries a marker.
fn login(marker: &str) -> String {
    sample_bodies()[0].replace("424cdd21-063a-43a7-b91b-7ca1a833afae", marker)
}

fn received(bodies: &[String]) -> Vec<Received> {
    bodies
        .iter()
        .enumerate()
        .map(|(index, body)| Received::local(format!("m{index}"), body.as_str(), 1_670_839_200_000))
        .collect()
}

fn codes(outcomes: &[Outcome]) -> Vec<&str> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Row(_) => "row",
            Outcome::Rejected(r) => r.code.as_str(),
        })
        .collect()
}

#[test]
fn each_kind_of_misbehaviour_costs_only_its_own_message() {
    let engine = runtime::engine().unwrap();
    let transform = Arc::new(Transform::load(&engine, &fixture("fixture_hostile"), TIGHT).unwrap());
    let mut worker = transform.worker(keyring()).unwrap();
    let bodies = [
        login("ok-1"),
        login("LOOP"),
        login("ok-2"),
        login("BOMB"),
        login("PANIC-with-secret-199.172.111.135"),
        login("OVERFLOW"),
        login("SKIP"),
        login("SPAN"),
        login("ok-3"),
    ];
    let started = std::time::Instant::now();
    let outcomes = worker.run(&received(&bodies)).unwrap();
    assert_eq!(
        codes(&outcomes),
        [
            "row",
            "transform_trap",
            "row",
            "transform_trap",
            "transform_trap",
            "column_overflow",
            "transform_contract_violation",
            "transform_contract_violation",
            "row"
        ]
    );
    // The deadline stopped the loop: twice (batch, then alone) within bounds.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for outcome in &outcomes {
        if let Outcome::Rejected(rejection) = outcome {
            // The guest's panic message quoted the body; the host never does.
            assert!(
                !rejection.detail.contains("199.172.111.135"),
                "{rejection:?}"
            );
            assert!(!rejection.detail.contains("secret"), "{rejection:?}");
        }
    }
    let Outcome::Rejected(looped) = &outcomes[1] else {
        unreachable!()
    };
    assert!(looped.detail.contains("deadline"), "{looped:?}");

    // The worker is still usable afterwards.
    let again = worker.run(&received(&[login("ok-4")])).unwrap();
    assert_eq!(codes(&again), ["row"]);
}

#[test]
fn a_slow_batch_is_handed_from_the_brief_run_to_the_full_deadline() {
    let engine = runtime::engine().unwrap();
    // SLOW spins for about 0.25 s here: a generous deadline keeps a loaded
    // machine from turning it into a trap.
    let limits = Limits {
        deadline: Duration::from_secs(10),
        ..Limits::default()
    };
    let transform =
        Arc::new(Transform::load(&engine, &fixture("fixture_hostile"), limits).unwrap());
    let mut worker = transform.worker(keyring()).unwrap();
    let fast = received(&[login("ok-1"), login("ok-2")]);
    let slow = received(&[login("ok-1"), login("SLOW"), login("ok-2")]);

    let outcomes = worker
        .run_briefly(&fast)
        .unwrap()
        .expect("a fast batch runs briefly");
    assert_eq!(codes(&outcomes), ["row", "row"]);

    let started = std::time::Instant::now();
    assert!(worker.run_briefly(&slow).unwrap().is_none());
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "the brief run held the thread for {:?}",
        started.elapsed()
    );
    // Handed back, the batch completes under the full deadline, and the
    // recycled instance serves brief runs again.
    assert_eq!(codes(&worker.run(&slow).unwrap()), ["row", "row", "row"]);
    assert!(worker.run_briefly(&fast).unwrap().is_some());
    // A loop is handed back too, never run to the end here.
    assert!(
        worker
            .run_briefly(&received(&[login("LOOP")]))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_component_that_reads_files_is_refused_at_load() {
    let engine = runtime::engine().unwrap();
    let error = Transform::load(&engine, &fixture("fixture_fs_reader"), Limits::default())
        .err()
        .expect("must be refused");
    let message = format!("{error:#}");
    assert!(message.contains("wasi:filesystem"), "{message}");
    assert!(message.contains("does not grant"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_stays_up_and_dead_letters_only_the_poison() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let mut bodies: Vec<String> = (0..20).map(|n| login(&format!("fine-{n:02}"))).collect();
    for marker in ["LOOP", "BOMB", "PANIC", "OVERFLOW", "SKIP", "SPAN"] {
        bodies.push(login(marker));
    }
    queue.send(&bodies).await.unwrap();

    let command = drain_command(
        queue.queue_url(),
        &database,
        &fixture("fixture_hostile"),
        &[
            "--pollers",
            "2",
            "--transform-timeout-ms",
            "300",
            "--transform-memory-mib",
            "16",
        ],
    );
    let output = run_with_limit(command, Duration::from_secs(120)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let db = query_client(&database).await;
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 20);
    let reasons: Vec<(String, i64)> = db
        .query(
            "SELECT reason, count(*) FROM maskpipe_dead_letters GROUP BY reason ORDER BY reason",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        reasons,
        [
            ("column_overflow".to_owned(), 1),
            ("transform_contract_violation".to_owned(), 2),
            ("transform_trap".to_owned(), 3)
        ]
    );
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.visible + depth.in_flight, 0);
}
