//! The built reference component, loaded in real wasmtime: the sample data,
//! its digest, and the sandbox's refusal of ungranted imports. (Its golden
//! vectors run in transform-wasm's own tests.)

mod common;

use std::sync::Arc;

use common::*;
use maskpipe::record::Outcome;
use maskpipe::runtime::{self, Limits, Transform};
use maskpipe::source::Received;

fn load() -> Arc<Transform> {
    let engine = runtime::engine().unwrap();
    Arc::new(
        runtime::block_on(Transform::load(
            &engine,
            &component_path(),
            Limits::default(),
        ))
        .unwrap(),
    )
}

#[test]
fn the_sample_data_gives_99_rows_and_rejects_the_13th_message() {
    let transform = load();
    let mut worker = runtime::block_on(transform.worker(keyring())).unwrap();
    let messages: Vec<Received> = sample_bodies()
        .into_iter()
        .enumerate()
        .map(|(index, body)| Received::local(format!("m{index}"), body, 1_670_839_200_000))
        .collect();
    let mut outcomes = Vec::new();
    for batch in messages.chunks(10) {
        outcomes.extend(runtime::block_on(worker.run(batch)).unwrap());
    }
    let rejected: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Outcome::Rejected(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(rejected, vec![12]);
    let Outcome::Rejected(rejection) = &outcomes[12] else {
        unreachable!()
    };
    assert_eq!(rejection.code, "wrong_schema");
    // app_version keeps the 96 distinct version strings as 94 distinct
    // versions: only {"2.3","2.3.0"} and {"2.0","2.00"} are the same version.
    let versions: std::collections::HashSet<i32> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Row(row) => row.app_version,
            Outcome::Rejected(_) => None,
        })
        .collect();
    assert_eq!(versions.len(), 94);
}

#[test]
fn the_digest_is_the_sha256_of_the_file() {
    use sha2::Digest;
    let bytes = std::fs::read(component_path()).unwrap();
    let transform = load();
    assert_eq!(
        transform.digest(),
        hex::encode(sha2::Sha256::digest(&bytes))
    );
}

/// Loads a hand-written component that must be refused; returns why.
fn refusal(wat: &str) -> String {
    let engine = runtime::engine().unwrap();
    let bytes = wat::parse_str(wat).unwrap();
    let error = runtime::block_on(Transform::from_bytes(&engine, bytes, Limits::default()))
        .err()
        .expect("must be refused");
    format!("{error:#}")
}

#[test]
fn a_component_importing_an_ungranted_capability_is_refused() {
    let message = refusal(r#"(component (import "wasi:sockets/tcp@0.2.6" (instance)))"#);
    assert!(message.contains("wasi:sockets/tcp@0.2.6"), "{message}");
    assert!(message.contains("does not grant"), "{message}");
}

#[test]
fn a_component_built_against_another_contract_is_told_to_rebuild() {
    let message = refusal(r#"(component (import "maskpipe:transform/masking@0.1.0" (instance)))"#);
    assert!(message.contains("maskpipe:transform@0.1.0"), "{message}");
    assert!(message.contains("rebuild"), "{message}");
}

#[test]
fn a_component_without_the_world_is_refused() {
    let message = refusal("(component)");
    assert!(message.contains("does not export"), "{message}");
}

#[test]
fn garbage_is_not_a_component() {
    let engine = runtime::engine().unwrap();
    let error = runtime::block_on(Transform::from_bytes(
        &engine,
        b"not wasm".to_vec(),
        Limits::default(),
    ))
    .err()
    .expect("must be refused");
    assert!(format!("{error:#}").contains("not a valid WebAssembly component"));
}
