//! The built reference component, loaded in real wasmtime: the sample data,
//! its digest, the sandbox's refusal of ungranted imports, and what
//! validation demands of a candidate. (Its golden vectors run in
//! transform-wasm's own tests.)

mod common;

use std::sync::Arc;

use common::*;
use maskpipe::record::Outcome;
use maskpipe::runtime::{self, Limits, Transform};
use maskpipe::source::Received;
use maskpipe::swap::{self, Validation};

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
            // app_version is user_logins' sixth column.
            Outcome::Rows(rows) => match rows[..] {
                [ref row] => match row.values[5] {
                    Some(maskpipe::record::Value::Integer(version)) => Some(version),
                    _ => None,
                },
                _ => None,
            },
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
    // HTTP: the network, asked for by name rather than through sockets.
    let message = refusal(r#"(component (import "wasi:http/outgoing-handler@0.2.6" (instance)))"#);
    assert!(
        message.contains("wasi:http/outgoing-handler@0.2.6"),
        "{message}"
    );
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
    let text = format!("{error:#}");
    assert!(text.contains("not a valid WebAssembly component"), "{text}");
    // wasmparser's bad-magic error holds byte arrays that `{:#}` would print
    // one byte per line: a refused swap must log one line.
    assert!(!text.contains('\n'), "{text}");
}

/// `transform test` and `inspect` keep what they compile in
/// `MASKPIPE_CACHE_DIR`, the cache `run` loads from.
#[tokio::test(flavor = "multi_thread")]
async fn the_authors_tools_compile_into_the_hosts_cache() {
    for command in ["test", "inspect"] {
        let cache = temp_dir("maskpipe-author-cache");
        let run = async || {
            let output = maskpipe()
                .args(["transform", command])
                .arg(component_path())
                .env("MASKPIPE_CACHE_DIR", &cache)
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "{command}: {output:?}");
        };
        run().await;
        let cached = walk(&cache);
        assert!(
            !cached.is_empty(),
            "{command} left {} empty",
            cache.display()
        );
        // Run again, it finds what it compiled: nothing new is written.
        run().await;
        let mut cached = cached;
        let mut after = walk(&cache);
        cached.sort();
        after.sort();
        assert_eq!(after, cached, "{command} compiled again");
        std::fs::remove_dir_all(&cache).ok();
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn inspect_says_the_maskpipe_import_is_types_only() {
    let text = runtime::block_on(maskpipe::author::inspect(&component_path(), None)).unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|line| line.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} import in\n{text}"))
            .to_owned()
    };
    let types = line("maskpipe:transform/types@");
    assert!(
        types.ends_with("(instance: type definitions only, no functions)"),
        "{types}"
    );
    // An interface with functions is not described so.
    let environment = line("wasi:cli/environment@");
    assert!(environment.ends_with("(instance)"), "{environment}");
}

/// `component` deployed as `transform.wasm` in a fresh directory, with
/// `vectors` (if any) as its `transform.vectors.jsonl`; validated.
fn validate_deployed(
    component: &std::path::Path,
    vectors: Option<&str>,
) -> anyhow::Result<Validation> {
    let dir = temp_dir("maskpipe-validate");
    let live = dir.join("transform.wasm");
    std::fs::copy(component, &live).unwrap();
    if let Some(vectors) = vectors {
        std::fs::write(swap::vectors_path(&live), vectors).unwrap();
    }
    let engine = runtime::engine().unwrap();
    let result =
        runtime::block_on(swap::load_validated(&engine, &live, Limits::default())).map(|(_, v)| v);
    std::fs::remove_dir_all(&dir).ok();
    result
}

#[test]
fn an_empty_vectors_file_no_longer_validates_a_component_that_fails_the_canary() {
    // The leaky fixture passes zero vectors; the canary, which now runs
    // beside too few vectors, refuses it.
    let leaky = fixture_path("fixture_leaky");
    for vectors in [Some(""), Some("// nothing yet\n"), None] {
        let error = validate_deployed(&leaky, vectors).expect_err("the canary must refuse it");
        let error = format!("{error:#}");
        assert!(
            error.contains("failed validation")
                && error.contains(
                    "stores the message's raw `ip` unprotected in `user_logins.masked_ip`"
                ),
            "{error}"
        );
        if vectors.is_some() {
            assert!(error.contains("0 vectors in"), "{error}");
            assert!(error.contains("too few to stand alone"), "{error}");
        }
    }
    // The reference with an empty file: the full canary ran, and says so.
    let validation = validate_deployed(&component_path(), Some("")).unwrap();
    assert!(
        matches!(
            validation,
            Validation::VectorsAndCanary {
                count: 0,
                canary: 100,
                ..
            }
        ),
        "{validation:?}"
    );
    assert!(
        validation
            .to_string()
            .contains("and 100 built-in canary messages")
    );
}

#[test]
fn too_few_vectors_bring_in_the_canary_and_enough_still_check_raw_pii() {
    let reference_vectors =
        std::fs::read_to_string(repo_root().join("transform-wasm/vectors.jsonl")).unwrap();
    let rows: Vec<&str> = reference_vectors
        .lines()
        .filter(|l| l.contains("\"row\""))
        .collect();
    // Four passing vectors, all rows: too few, so the canary ran too.
    let validation = validate_deployed(&component_path(), Some(&rows[..4].join("\n"))).unwrap();
    assert!(
        matches!(validation, Validation::VectorsAndCanary { count: 4, .. }),
        "{validation:?}"
    );
    // The full file stands alone; the canary checked raw PII only.
    let validation = validate_deployed(&component_path(), Some(&reference_vectors)).unwrap();
    assert!(
        matches!(
            validation,
            Validation::Vectors {
                pii_checked: 100,
                ..
            }
        ),
        "{validation:?}"
    );
    // The leaky component with enough vectors written for its leak (the
    // reference's, expecting the IPv4 address in clear): all of them pass,
    // and still the canary refuses it.
    let leaky_vectors: Vec<String> = reference_vectors
        .lines()
        .filter_map(|line| {
            let mut vector: serde_json::Value = serde_json::from_str(line).ok()?;
            if let Some(masked_ip) = vector.pointer_mut("/expect/row/masked_ip") {
                let ip = masked_ip.pointer("/mask/1")?.as_str()?.to_owned();
                if ip.contains(':') {
                    return None; // IPv6: written and canonical forms differ
                }
                *masked_ip = serde_json::Value::String(ip);
            }
            Some(vector.to_string())
        })
        .collect();
    let vectors_text = leaky_vectors.join("\n");
    let leaky = fixture_path("fixture_leaky");
    let dir = temp_dir("maskpipe-leaky-vectors");
    let file = dir.join("leaky.vectors.jsonl");
    std::fs::write(&file, &vectors_text).unwrap();
    let (count, failures) =
        runtime::block_on(maskpipe::vectors::check_file(&leaky, &file)).unwrap();
    assert!(
        count >= 10 && failures.is_empty(),
        "{count} vectors, {failures:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
    let error = validate_deployed(&leaky, Some(&vectors_text))
        .expect_err("raw PII is refused whatever the vectors say");
    assert!(format!("{error:#}").contains("raw `ip`"), "{error:#}");
}

#[test]
#[should_panic(expected = "no vectors in")]
fn assert_all_pass_fails_on_an_empty_vectors_file() {
    let dir = temp_dir("maskpipe-empty-vectors");
    let file = dir.join("empty.vectors.jsonl");
    std::fs::write(&file, "").unwrap();
    maskpipe::vectors::assert_all_pass(&component_path(), &file);
}
