//! Transforms written in Python (componentize-py, CPython in the
//! component): the Python reference passes the Rust reference's golden
//! vectors through `maskpipe transform test` and gives the Rust reference's
//! outcome for every message of an edge-case corpus; a Python component
//! that tries the filesystem or the network reaches neither and keeps
//! working; the default memory cap holds a Python instance and the costliest
//! batch SQS can deliver; `just new-transform NAME --lang python` writes a
//! transform that passes its own vectors; and hot swaps Rust → Python → Rust under load lose and
//! duplicate nothing, a cold compile never stopping the pollers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use maskpipe::record::{Outcome, Value};
use maskpipe::runtime::{self, Limits, Transform, Worker};
use maskpipe::source::Received;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::Digest;

fn python_reference() -> PathBuf {
    fixture_path("python_reference")
}

async fn worker(component: &Path) -> Worker {
    let engine = runtime::engine().unwrap();
    let transform = Transform::load(&engine, component, Limits::default())
        .await
        .unwrap_or_else(|error| panic!("{}: {error:#}", component.display()));
    Arc::new(transform).worker(keyring()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_reference_passes_the_reference_vectors_in_maskpipe_transform_test() {
    let vectors = repo_root().join("transform-wasm/vectors.jsonl");
    let expected = std::fs::read_to_string(&vectors)
        .unwrap()
        .lines()
        .filter(|line| line.trim_start().starts_with('{'))
        .count();
    assert!(expected >= 30, "{expected} vectors");
    let output = maskpipe()
        .args(["transform", "test"])
        .arg(python_reference())
        .arg(&vectors)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("{expected} passed, 0 failed")),
        "{stdout}"
    );
}

/// Every Python transform under transform-wasm/ (the reference, and any
/// `just new-transform NAME --lang python` made) passes its own vectors.
#[test]
fn every_python_transform_passes_its_own_vectors() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("transform-wasm")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("app.py").exists() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
        maskpipe::vectors::assert_all_pass(&fixture_path(&name), &dir.join("vectors.jsonl"));
        checked.push(name);
    }
    assert!(
        checked.contains(&"python_reference".to_owned()),
        "{checked:?}"
    );
}

// ------------------------------------------------- the same outcomes as Rust

/// JSON texts for each login field, as written in a body (`None`: the key
/// is left out): the edges of every rule the references apply.
fn field_variants() -> Vec<(&'static str, Vec<Option<String>>)> {
    let text = |values: &[&str]| -> Vec<Option<String>> {
        values
            .iter()
            .map(|value| Some(serde_json::to_string(value).unwrap()))
            .collect()
    };
    let raw = |values: &[&str]| -> Vec<Option<String>> {
        values.iter().map(|value| Some(value.to_string())).collect()
    };
    let long = |unit: &str, count: usize| unit.repeat(count);
    let not_strings = raw(&[
        "null",
        "7",
        "2.3",
        "true",
        "[]",
        "{\"a\": 1}",
        "1e400",
        "-1e999",
    ]);
    let mut ips = text(&[
        "199.172.111.135",
        "0.0.0.0",
        "255.255.255.255",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        " 1.2.3.4",
        "1.2.3.4 ",
        "::",
        "::1",
        "0::1",
        "2001:DB8:0:0::1",
        "2001:db8:0:0:1:0:0:1",
        "2001:0:0:1:0:0:0:1",
        "1:0:0:0:0:0:0:0",
        "1::",
        "::ffff:1.2.3.4",
        "::ffff:102:304",
        "::1.2.3.4",
        "1:2:3:4:5:6:1.2.3.4",
        "1:2:3:4:5:6:7:1.2.3.4",
        "1::2:3:4:5:6:7",
        "1:2:3:4:5:6:7::",
        "::1:2:3:4:5:6:7",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8:9",
        "12345::",
        "fe80::1%eth0",
        "1.2.3.4::",
        ":::",
        "1::2::3",
        "::ffff:01.2.3.4",
        "ABCD:EF01::",
        "0:0:0:0:0:ffff:1.2.3.4",
        "0:0:0:0:0:FFFF:0:0",
        "64:ff9b::1.2.3.4",
        "1:2::3:4.5.6.7",
        "1:2:3:4:5::6.7.8.9",
        "a:b:c:d:e:f:1.2.3.4",
        "١.٢.٣.٤",
        "",
        "0x1.2.3.4",
        "1.2.3.04",
        "00ab::1",
        "0:0:1:0:0:1:0:0",
        "1:0:0:2:0:0:0:3",
        "::0:0",
        "2001:db8::",
        ":1::",
        "1:::2",
        "[::1]",
    ]);
    ips.extend(not_strings.clone());
    ips.push(None);
    let mut versions = text(&[
        "2.3.0",
        "2.3",
        "2.30",
        "0.96",
        "9.6",
        "7",
        "0",
        "99.99.99",
        "",
        ".",
        "1.",
        ".1",
        "1..2",
        "1.2.3.4",
        "100",
        "1.100",
        "a.b",
        "1.2a",
        "-1",
        "+1",
        " 1.2",
        "1.2 ",
        "١.٢",
        "2.3.0-beta",
        "00.00.00",
        "1.2.3.",
        "09.9",
    ]);
    versions.extend(not_strings.clone());
    versions.push(None);
    let mut locales = text(&[
        "RU",
        "",
        &long("x", 32),
        &long("x", 33),
        &long("é", 32),
        &long("é", 33),
    ]);
    locales.extend(raw(&["null", "7", "[]", "false"]));
    locales.push(None);
    let mut device_types = text(&[
        "android",
        "ios",
        "",
        &long("x", 32),
        &long("x", 33),
        &long("é", 32),
        &long("é", 33),
        &long("😀", 32),
        &long("😀", 33),
    ]);
    device_types.extend(not_strings.clone());
    device_types.push(None);
    let mut user_ids = text(&[
        "424cdd21-063a-43a7-b91b-7ca1a833afae",
        &long("x", 128),
        &long("x", 129),
        &long("ü", 128),
        &long("ü", 129),
        "tab\there",
    ]);
    // Escapes: a pair, a lone surrogate of each kind, an escaped ASCII letter.
    user_ids.extend(raw(&[
        r#""\ud83d\ude00""#,
        r#""a\ud800""#,
        r#""\udc00b""#,
        r#""\u0041""#,
    ]));
    user_ids.extend(not_strings.clone());
    user_ids.push(None);
    let mut device_ids = text(&[
        "593-47-5928",
        &long("9", 128),
        &long("9", 129),
        &long("é", 64),
        &long("é", 65),
        &long("😀", 32),
        &long("😀", 33),
        "",
    ]);
    device_ids.extend(raw(&[r#""\ud800""#]));
    device_ids.extend(not_strings);
    device_ids.push(None);
    vec![
        ("user_id", user_ids),
        ("app_version", versions),
        ("device_type", device_types),
        ("ip", ips),
        ("locale", locales),
        ("device_id", device_ids),
    ]
}

/// The sample's values, as JSON texts.
fn sample_fields() -> Vec<(&'static str, Option<String>)> {
    [
        ("user_id", r#""424cdd21-063a-43a7-b91b-7ca1a833afae""#),
        ("app_version", r#""2.3.0""#),
        ("device_type", r#""android""#),
        ("ip", r#""199.172.111.135""#),
        ("locale", r#""RU""#),
        ("device_id", r#""593-47-5928""#),
    ]
    .into_iter()
    .map(|(key, value)| (key, Some(value.to_owned())))
    .collect()
}

fn body(fields: &[(&str, Option<String>)]) -> String {
    let members: Vec<String> = fields
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|value| format!("\"{key}\": {value}")))
        .collect();
    format!("{{{}}}", members.join(", "))
}

/// Every edge: each field's variants in the sample, whole bodies that are
/// no login, SentTimestamps at every date boundary, then seeded random
/// combinations of the variants (which finds rules applied in another
/// order).
fn edge_corpus() -> Vec<(String, u64)> {
    const SENT: u64 = 1_670_839_200_000;
    let variants = field_variants();
    let mut corpus = Vec::new();
    for (field, values) in &variants {
        for value in values {
            let mut fields = sample_fields();
            for (key, slot) in &mut fields {
                if key == field {
                    *slot = value.clone();
                }
            }
            corpus.push((body(&fields), SENT));
        }
    }
    let sample = body(&sample_fields());
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    for whole in [
        "",
        "{",
        "}",
        "[1, 2]",
        "\"text\"",
        "\"\\ud800\"",
        "1",
        "1e400",
        "null",
        "true",
        "{}",
        "{\"foo\": \"oops_wrong_msg_type\", \"bar\": \"123\"}",
        "NaN",
        "{\"ip\": NaN}",
        "{\"ip\": Infinity}",
        "\u{feff}{}",
        " {} ",
        "{}{}",
        "{\"a\" 1}",
        "{'a': 1}",
        "{\"ip\": \"1.2.3.4\",}",
        "{\"\\u0069p\": 1}",
        "{\"\\ud800\": 1}",
        "{\"x\": \"\\ud800\"}",
        "{\"x\": 1e400}",
        "{\"ip\": [1e400]}",
        "{\"x\": \"\u{7}\"}",
        // A lone surrogate as a key of a login field's object, and deeper.
        "{\"ip\": {\"\\ud800\": 1}}",
        "{\"ip\": {\"a\": {\"\\ud800\": 1}}}",
        "{\"ip\": [\"\\ud800\"]}",
        "{\"ip\": {\"a\": \"\\ud800\"}}",
    ] {
        corpus.push((whole.to_owned(), SENT));
    }
    // Numbers at a double's limit, where serde_json's arithmetic and
    // CPython's correctly rounded parse could disagree: as the whole body
    // and as a login field (both read them; an ignored field does not).
    let long = |digits: &str, count: usize| digits.repeat(count);
    for number in [
        "1.7976931348623157e308".to_owned(),
        "1.7976931348623158e308".to_owned(),
        "1.7976931348623159e308".to_owned(),
        "-1.7976931348623158e308".to_owned(),
        "179769313486231570000e288".to_owned(),
        format!("17976931348623157{}", "0".repeat(292)),
        format!("17976931348623158{}", "0".repeat(292)),
        long("1", 309),
        long("1", 310),
        long("9", 308),
        long("9", 309),
        format!("1844674407370955161{}.5", long("6", 290)),
        format!("0.{}1e309", long("0", 400)),
        "1e308".to_owned(),
        "10e308".to_owned(),
        "0e99999999999".to_owned(),
        "1e99999999999".to_owned(),
        "1e-99999999999".to_owned(),
        "2.5e-400".to_owned(),
    ] {
        corpus.push((number.clone(), SENT));
        corpus.push((sample.replace("\"199.172.111.135\"", &number), SENT));
    }
    for extra in [
        format!("\"extra\": {}", nested(20)),
        format!("\"ip\": {}", nested(20)),
        "\"extra\": {\"ip\": 1, \"user_id\": null}".to_owned(),
        "\"ip\": \"1.2.3.4\", \"ip\": \"::1\"".to_owned(),
        "\"ip\": 1e400, \"ip\": \"::1\"".to_owned(),
        "\"ip\": \"::1\", \"ip\": null".to_owned(),
        "\"\\u0069p\": \"::2\"".to_owned(),
        "\"IP\": \"::3\"".to_owned(),
    ] {
        corpus.push((sample.replacen('{', &format!("{{{extra}, "), 1), SENT));
    }
    let last_day = chrono::NaiveDate::MAX
        .and_hms_milli_opt(23, 59, 59, 999)
        .unwrap()
        .and_utc()
        .timestamp_millis() as u64;
    for sent in [
        0,
        1,
        1_672_531_199_999,
        1_672_531_200_000,
        951_782_400_000,   // 2000-02-29
        4_107_542_400_000, // 2100-03-01
        253_402_300_799_999,
        253_402_300_800_000, // year 10000
        last_day,
        last_day + 1,
        i64::MAX as u64,
        i64::MAX as u64 + 1,
        u64::MAX,
    ] {
        corpus.push((sample.clone(), sent));
    }
    let mut rng = StdRng::seed_from_u64(17);
    for _ in 0..3000 {
        let fields: Vec<(&str, Option<String>)> = variants
            .iter()
            .map(|(field, values)| {
                // Mostly valid values, so later rules get their turn.
                let value = if rng.random_ratio(2, 3) {
                    sample_fields()
                        .into_iter()
                        .find(|(key, _)| key == field)
                        .unwrap()
                        .1
                } else {
                    values[rng.random_range(0..values.len())].clone()
                };
                (*field, value)
            })
            .collect();
        corpus.push((body(&fields), rng.random_range(0..4_000_000_000_000)));
    }
    corpus
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_reference_gives_the_rust_references_outcome_for_every_edge() {
    let mut rust = worker(&component_path()).await;
    let mut python = worker(&python_reference()).await;
    let corpus = edge_corpus();
    let mut codes = BTreeMap::<String, usize>::new();
    let mut rows = 0;
    for (chunk_index, chunk) in corpus.chunks(100).enumerate() {
        let messages: Vec<Received> = chunk
            .iter()
            .enumerate()
            .map(|(index, (body, sent))| {
                Received::local(format!("m{chunk_index}-{index}"), body.as_str(), *sent)
            })
            .collect();
        let from_rust = rust.run(&messages).await.unwrap();
        let from_python = python.run(&messages).await.unwrap();
        assert_eq!(from_rust.len(), from_python.len());
        for ((body, sent), (expected, got)) in chunk.iter().zip(from_rust.iter().zip(&from_python))
        {
            match (expected, got) {
                (Outcome::Rows(expected), Outcome::Rows(got)) => {
                    assert_eq!(expected, got, "body {body:?} sent {sent}");
                    rows += 1;
                }
                (Outcome::Rejected(expected), Outcome::Rejected(got)) => {
                    assert_eq!(expected.code, got.code, "body {body:?} sent {sent}");
                    *codes.entry(expected.code.clone()).or_default() += 1;
                }
                _ => panic!("body {body:?} sent {sent}: Rust {expected:?}, Python {got:?}"),
            }
        }
    }
    // The corpus reached every rule: rows, and each of the references' codes.
    println!(
        "{} messages: {rows} rows, rejections {codes:?}",
        corpus.len()
    );
    assert!(rows > corpus.len() / 4, "{rows} rows");
    // Every code the Rust reference declares, but the toolkit's for a batch
    // the host packed wrong (which no message can cause).
    let declared = rust.transform().reason_codes().to_vec();
    for code in declared.iter().filter(|code| *code != "malformed_batch") {
        assert!(
            codes.get(code).copied().unwrap_or(0) > 0,
            "no {code}: {codes:?}"
        );
    }
}

/// CPython's JSON parser recurses in C once per level: deep nesting would
/// exhaust the component's stack (a trap). The reference checks first.
#[tokio::test(flavor = "multi_thread")]
async fn deep_nesting_is_invalid_json_not_a_trap() {
    let mut python = worker(&python_reference()).await;
    let sample = &sample_bodies()[0];
    // The body's own object is one level: 499 inside it is 500 in all.
    let bodies: Vec<String> = [499, 500, 2_000, 50_000]
        .into_iter()
        .flat_map(|depth| {
            [
                sample.replacen(
                    '{',
                    &format!("{{\"x\": {}{}, ", "[".repeat(depth), "]".repeat(depth)),
                    1,
                ),
                sample.replacen(
                    '{',
                    &format!(
                        "{{\"x\": {}1{}, ",
                        "{\"a\": ".repeat(depth),
                        "}".repeat(depth)
                    ),
                    1,
                ),
            ]
        })
        .collect();
    // Many brackets, then a string of escaped quotes that never ends: a
    // scan for strings that backtracked would take minutes on it.
    let mut bodies = bodies;
    bodies.push(format!(
        "{}\"{}",
        "[".repeat(501),
        "\\\"".repeat(SQS_MAX_BODY / 2 - 300)
    ));
    let messages: Vec<Received> = bodies
        .iter()
        .enumerate()
        .map(|(index, body)| Received::local(format!("deep{index}"), body.as_str(), 0))
        .collect();
    let outcomes = python.run(&messages).await.unwrap();
    assert_eq!(python.recycles(), 0, "a deep body trapped");
    let codes: Vec<String> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Outcome::Rows(_) => "row".to_owned(),
            Outcome::Rejected(rejection) => rejection.code.clone(),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "row",
            "row",
            "invalid_json",
            "invalid_json",
            "invalid_json",
            "invalid_json",
            "invalid_json",
            "invalid_json",
            "invalid_json"
        ]
    );
}

// ---------------------------------------------------------- the sandbox

/// Each attempt the escape fixture makes, and the row it wrote about it.
async fn attempt(worker: &mut Worker, attempts: &[String]) -> Vec<(String, String)> {
    let messages: Vec<Received> = attempts
        .iter()
        .enumerate()
        .map(|(index, body)| Received::local(format!("a{index}"), body.as_str(), 0))
        .collect();
    let outcomes = worker.run(&messages).await.unwrap();
    attempts
        .iter()
        .zip(outcomes)
        .map(|(attempt, outcome)| {
            let Outcome::Rows(rows) = outcome else {
                panic!("{attempt}: {outcome:?}")
            };
            let [Some(Value::Text(what)), Some(Value::Text(result))] = &rows[0].values[..] else {
                panic!("{attempt}: {rows:?}")
            };
            (what.clone(), result.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_transform_reaches_no_file_and_no_network_and_keeps_working() {
    // Things a component would reach if the sandbox let it: files that
    // exist, a listening TCP socket and a bound UDP socket on loopback,
    // and PostgreSQL itself.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let secret = repo_root().join("demo.env");
    assert!(secret.exists());
    let database_port = std::env::var("MASKPIPE_PG_PORT").unwrap_or_else(|_| "25432".into());
    let attempts: Vec<String> = [
        "open /etc/passwd".to_owned(),
        format!("open {}", secret.display()),
        "open demo.env".to_owned(),
        "listdir /".to_owned(),
        "listdir .".to_owned(),
        "resolve localhost".to_owned(),
        "resolve example.com".to_owned(),
        format!(
            "connect 127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        ),
        format!("connect 127.0.0.1:{database_port}"),
        format!("udp 127.0.0.1:{}", udp.local_addr().unwrap().port()),
        "listen 0".to_owned(),
        "env".to_owned(),
    ]
    .into();

    let mut escape = worker(&fixture_path("fixture_python_escape")).await;
    let results = attempt(&mut escape, &attempts).await;
    // Each refused as a missing file or a denied socket would be, by the
    // WASI call itself (not by something missing in the component first).
    for (attempt, (what, result)) in attempts.iter().zip(&results) {
        assert!(attempt.starts_with(what.as_str()), "{attempt}: {what}");
        let expected = match what.as_str() {
            "open" | "listdir" => "refused: FileNotFoundError",
            "resolve" => "refused: gaierror",
            "connect" | "udp" | "listen" => "refused: PermissionError",
            "env" => "refused: nothing",
            other => panic!("{other}"),
        };
        assert_eq!(result, expected, "{attempt}");
    }
    println!("{results:?}");
    // Nothing arrived on the host's side either.
    assert_eq!(
        listener.accept().err().map(|error| error.kind()),
        Some(std::io::ErrorKind::WouldBlock)
    );
    let mut buffer = [0; 16];
    assert_eq!(
        udp.recv(&mut buffer).err().map(|error| error.kind()),
        Some(std::io::ErrorKind::WouldBlock)
    );
    // The instance that was refused all that keeps working.
    let again = attempt(&mut escape, &["open /etc/passwd".to_owned()]).await;
    assert!(again[0].1.starts_with("refused: "), "{again:?}");

    // And so does the Python reference: the granted imports cost it nothing.
    let mut reference = worker(&python_reference()).await;
    let messages: Vec<Received> = sample_bodies()
        .iter()
        .enumerate()
        .map(|(index, body)| Received::local(format!("s{index}"), body.as_str(), 0))
        .collect();
    let outcomes = reference.run(&messages).await.unwrap();
    let rows = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Outcome::Rows(rows) if rows.len() == 1))
        .count();
    assert_eq!((outcomes.len(), rows), (100, 99));
}

// --------------------------------------------------------- the scaffold

/// `just new-transform NAME --lang python`, in a scratch checkout (the
/// justfile, the scripts, wit/ and the Python kit; the componentize-py
/// install shared):
/// what it writes builds, and passes its own vectors as it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_scaffold_builds_and_passes_its_own_vectors() {
    use std::os::unix::fs::symlink;
    let checkout = temp_dir("maskpipe-scaffold");
    std::fs::create_dir_all(checkout.join("scripts")).unwrap();
    std::fs::create_dir_all(checkout.join("transform-wasm/kit")).unwrap();
    for script in ["new-transform.sh", "build-python.sh"] {
        std::fs::copy(
            repo_root().join("scripts").join(script),
            checkout.join("scripts").join(script),
        )
        .unwrap();
    }
    symlink(repo_root().join("wit"), checkout.join("wit")).unwrap();
    symlink(
        repo_root().join("transform-wasm/kit/python"),
        checkout.join("transform-wasm/kit/python"),
    )
    .unwrap();
    symlink(repo_root().join(".data"), checkout.join(".data")).unwrap();
    std::fs::copy(repo_root().join("justfile"), checkout.join("justfile")).unwrap();
    let run = |program: &str, args: &[&str]| {
        let output = std::process::Command::new(program)
            .args(args)
            .current_dir(&checkout)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // As the README has it: through `just` (which runs the tests).
    let said = run(
        "just",
        &["new-transform", "click-events", "--lang", "python"],
    );
    assert!(
        said.contains("transform-wasm/click-events/app.py"),
        "{said}"
    );
    run("bash", &["scripts/build-python.sh", "transforms"]);
    let component = checkout.join("target/wasm32-wasip2/release/click_events.wasm");
    let vectors = checkout.join("target/wasm32-wasip2/release/click_events.vectors.jsonl");
    let (count, failures) = maskpipe::vectors::check_file(&component, &vectors)
        .await
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(count >= 10, "{count} vectors");
    // A second scaffold of the same name is refused, the first kept.
    let app = checkout.join("transform-wasm/click-events/app.py");
    let written = std::fs::read(&app).unwrap();
    let again = std::process::Command::new("just")
        .args(["new-transform", "click-events", "--lang", "python"])
        .current_dir(&checkout)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read(&app).unwrap(), written);
    std::fs::remove_dir_all(&checkout).ok();
}

/// The README's Python example is transform-wasm/kit/python/examples/signups:
/// it builds, and does what the README says.
#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_python_example_builds_and_writes_its_row() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let example_dir = repo_root().join("transform-wasm/kit/python/examples/signups");
    let example = std::fs::read_to_string(example_dir.join("app.py")).unwrap();
    let start = readme.find("```python\n").expect("a python block") + "```python\n".len();
    let shown = &readme[start..start + readme[start..].find("```").unwrap()];
    assert_eq!(
        shown,
        example,
        "README's Python example differs from {}",
        example_dir.display()
    );

    let out = temp_dir("maskpipe-signups").join("signups.wasm");
    // As `just build-transform` builds Python (installing componentize-py
    // first if this checkout has none yet).
    let built = std::process::Command::new("bash")
        .current_dir(repo_root())
        .arg("scripts/build-python.sh")
        .arg("one")
        .arg(&example_dir)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut signups = worker(&out).await;
    let messages = [
        Received::local(
            "ok",
            r#"{"country": "PT", "email": "ada@example.com"}"#,
            1_670_839_200_000,
        ),
        Received::local("bad", "not json", 1_670_839_200_000),
    ];
    let outcomes = signups.run(&messages).await.unwrap();
    let Outcome::Rows(rows) = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    let [
        Some(Value::Text(country)),
        Some(Value::Text(email)),
        Some(Value::Timestamptz(at)),
    ] = &rows[0].values[..]
    else {
        panic!("{rows:?}")
    };
    assert_eq!(country, "PT");
    assert!(
        email.starts_with("mp2.") && !email.contains("ada"),
        "{email}"
    );
    assert_eq!(at.timestamp_millis(), 1_670_839_200_000);
    let Outcome::Rejected(rejection) = &outcomes[1] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(rejection.code, "invalid_json");
    std::fs::remove_dir_all(out.parent().unwrap()).ok();
}

// ------------------------------------------------------------- the kit

#[tokio::test(flavor = "multi_thread")]
async fn the_python_kit_packs_every_type_and_keeps_each_fault_to_its_message() {
    let cases = [
        "all",
        "non-ascii",
        "row then reject",
        "row then raise",
        "exit",
        "caught",
        "surrogate value",
        "surrogate detail",
        "bad date",
        "string for boolean",
        "unprotected",
        "naive datetime",
        "too few values",
        "nan double",
        "february 30",
        "negative table",
        "nan json",
    ];
    let messages: Vec<Received> = cases
        .iter()
        .map(|case| Received::local(case.replace(' ', "-"), *case, 0))
        .collect();
    let mut probe = worker(&fixture_path("fixture_python_kit_probe")).await;
    let outcomes = probe.run(&messages).await.unwrap();
    // One call held every fault: none trapped (a trap recycles the
    // instance and retries the batch message by message).
    assert_eq!(probe.recycles(), 0);
    let rows = |index: usize| match &outcomes[index] {
        Outcome::Rows(rows) => rows
            .iter()
            .map(|row| row.values.clone())
            .collect::<Vec<_>>(),
        other => panic!("{}: {other:?}", cases[index]),
    };
    let text = |value: &str| Some(Value::Text(value.to_owned()));

    // Every type, as the host decodes it.
    let all = rows(0);
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0][..10],
        [
            text("all"),
            Some(Value::Integer(-7)),
            Some(Value::Bigint(-(1 << 40))),
            Some(Value::Boolean(true)),
            Some(Value::Double(1.5)),
            Some(Value::Numeric("-12.50".into())),
            Some(Value::Date(
                chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()
            )),
            Some(Value::Timestamptz(
                chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap()
            )),
            Some(Value::Uuid("0d4f0a4e-8a3c-4b5e-9f00-1234567890ab".into())),
            Some(Value::Jsonb(r#"{"a": [1, "ü"]}"#.into())),
        ]
    );
    let Some(Value::Text(pseudonym)) = &all[0][10] else {
        panic!("{:?}", all[0])
    };
    assert!(
        pseudonym.starts_with("ps1.") && !pseudonym.contains("s3cret"),
        "{pseudonym}"
    );
    assert_eq!(
        all[1][6],
        Some(Value::Date(
            chrono::NaiveDate::from_ymd_opt(1999, 12, 31).unwrap()
        ))
    );
    assert_eq!(
        all[1][7],
        Some(Value::Timestamptz(
            "2024-01-02T03:04:05.000006Z".parse().unwrap()
        ))
    );
    assert_eq!(all[1][10], text("10.0.0.0/24"));
    assert_eq!(all[2][0], text("nulls"));
    assert!(all[2][1..].iter().all(Option::is_none), "{:?}", all[2]);

    // Spans are byte offsets: non-ASCII text comes back whole.
    let non_ascii = rows(1);
    assert_eq!(non_ascii[0][0], text("é✓😀"));
    assert_eq!(non_ascii[0][9], Some(Value::Jsonb(r#"{"k": "ü"}"#.into())));
    let Some(Value::Text(masked)) = &non_ascii[0][10] else {
        panic!("{non_ascii:?}")
    };
    assert!(masked.starts_with("mp2."), "{masked}");
    assert_eq!(non_ascii[1][0], text("après"));

    // A value that raised took its row's other values back: the caught
    // error leaves only the whole row, aligned.
    let caught = rows(5);
    assert_eq!(caught.len(), 1);
    assert_eq!(
        caught[0][..2],
        [text("whole"), Some(Value::Integer(i32::MAX))]
    );

    // Each fault costs its own message; none cost the batch (which would be
    // `transform_trap` after the host's one-by-one retry).
    let code = |index: usize| match &outcomes[index] {
        Outcome::Rejected(rejection) => rejection.code.as_str(),
        Outcome::Rows(_) => "rows",
    };
    let kept = rows(15);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0][0], text("kept"));
    let faults: Vec<(&str, &str)> = (2..cases.len())
        .filter(|index| ![5, 15].contains(index))
        .map(|index| (cases[index], code(index)))
        .collect();
    assert_eq!(
        faults,
        [
            ("row then reject", "probe_rejected"),
            ("row then raise", "transform_error"),
            ("exit", "transform_error"),
            ("surrogate value", "transform_error"),
            ("surrogate detail", "probe_rejected"),
            ("bad date", "transform_error"),
            ("string for boolean", "transform_error"),
            ("unprotected", "transform_error"),
            ("naive datetime", "transform_error"),
            ("too few values", "transform_error"),
            ("nan double", "transform_error"),
            ("february 30", "transform_error"),
            ("nan json", "probe_rejected"),
        ]
    );

    // For contrast, what `load_json` spares a transform: deep JSON given
    // straight to `json.loads` exhausts the component's stack. The host
    // contains it (a fresh instance, the message a `transform_trap`, the
    // other one through), at the cost of a retry.
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let outcomes = probe
        .run(&[
            Received::local("deep", deep.as_str(), 0),
            Received::local("fine", "all", 0),
        ])
        .await
        .unwrap();
    assert!(probe.recycles() >= 1);
    let Outcome::Rejected(trap) = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(trap.code, "transform_trap");
    assert!(matches!(&outcomes[1], Outcome::Rows(rows) if rows.len() == 3));
}

// ------------------------------------------------------------ memory

/// SQS's largest body: 1 MiB (since August 2025; 256 KiB before).
const SQS_MAX_BODY: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn the_default_limits_hold_a_python_instance_and_its_costliest_batch() {
    // The JSON shapes that cost CPython most per byte, each a full SQS body
    // (a batch of ten holds SQS's largest): many short strings, numbers,
    // small objects, empty objects, empty arrays, nesting, one long string,
    // and logins whose extra field is such a list.
    let fill = |unit: &str, size: usize| {
        let count = (size - 2) / (unit.len() + 1);
        format!("[{}]", vec![unit; count].join(","))
    };
    let login_with = |unit: &str| {
        let sample = &sample_bodies()[0];
        let extra = fill(unit, SQS_MAX_BODY - sample.len() - 16);
        sample.replacen('{', &format!("{{\"extra\": {extra}, "), 1)
    };
    let depth = 400;
    let bodies = vec![
        fill("\"ab\"", SQS_MAX_BODY),
        fill("1", SQS_MAX_BODY),
        fill("{\"a\":1}", SQS_MAX_BODY),
        fill("{}", SQS_MAX_BODY),
        fill("[]", SQS_MAX_BODY),
        format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        format!("\"{}\"", "x".repeat(SQS_MAX_BODY - 2)),
        login_with("\"ab\""),
        login_with("{}"),
        login_with("{\"a\":1}"),
    ];
    assert!(bodies.iter().all(|body| body.len() <= SQS_MAX_BODY));
    let messages: Vec<Received> = bodies
        .iter()
        .enumerate()
        .map(|(index, body)| Received::local(format!("big{index}"), body.as_str(), 0))
        .collect();
    let expected = [
        "not_an_object",
        "not_an_object",
        "not_an_object",
        "not_an_object",
        "not_an_object",
        "not_an_object",
        "not_an_object",
        "row",
        "row",
        "row",
    ];
    let codes = |outcomes: &[Outcome]| -> Vec<String> {
        outcomes
            .iter()
            .map(|outcome| match outcome {
                Outcome::Rejected(rejection) => rejection.code.clone(),
                Outcome::Rows(_) => "row".to_owned(),
            })
            .collect()
    };

    // Under the default limits every message is judged by the transform
    // itself: none hits the memory cap or its deadline (either would be a
    // `transform_trap`). The whole batch takes CPython longer than the
    // default 1 s deadline, so the host retries it message by message; no
    // one message comes near.
    let mut python = worker(&python_reference()).await;
    let at_rest = python.memory_bytes();
    assert_eq!(codes(&python.run(&messages).await.unwrap()), expected);

    // The memory cap holds the whole batch in one call: with a deadline
    // long enough for that, nothing traps and nothing is retried.
    let engine = runtime::engine().unwrap();
    let patient = Limits {
        deadline: Duration::from_secs(30),
        ..Limits::default()
    };
    let transform = Transform::load(&engine, &python_reference(), patient)
        .await
        .unwrap();
    let mut python = Arc::new(transform).worker(keyring()).await.unwrap();
    let started = std::time::Instant::now();
    let outcomes = python.run(&messages).await.unwrap();
    let took = started.elapsed();
    assert_eq!(python.recycles(), 0);
    assert_eq!(codes(&outcomes), expected);
    let peak = python.memory_bytes();
    println!(
        "Python instance: {} KiB at rest, {} KiB after the batch in one call ({took:?})",
        at_rest >> 10,
        peak >> 10
    );
    assert!(peak < Limits::default().memory_bytes, "{peak} bytes");
}

// ------------------------------------------------------------ hot swap

fn sha256(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The documented deployment: vectors, then the component, each written
/// beside and renamed over.
fn deploy(component: &Path, live: &Path) {
    let vectors = repo_root().join("transform-wasm/vectors.jsonl");
    let staged = live.with_extension("vectors.jsonl.tmp");
    std::fs::copy(vectors, &staged).unwrap();
    std::fs::rename(&staged, maskpipe::swap::vectors_path(live)).unwrap();
    let staged = live.with_extension("wasm.tmp");
    std::fs::copy(component, &staged).unwrap();
    std::fs::rename(&staged, live).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn swapping_rust_python_rust_under_load_loses_nothing_and_compiles_off_the_hot_path() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let deploy_dir = temp_dir("maskpipe-python-swap");
    let live = deploy_dir.join("transform.wasm");
    let rust = component_path();
    let python = python_reference();
    let (rust_digest, python_digest) = (sha256(&rust), sha256(&python));
    deploy(&rust, &live);

    // A cache of its own, empty: the swap to Python compiles cold, and the
    // swap back to Rust is served from the cache.
    let mut command = maskpipe();
    command
        .args([
            "run",
            "--pollers",
            "2",
            "--wait-seconds",
            "1",
            "--progress-seconds",
            "0",
        ])
        .args(["--queue", queue.queue_url(), "--database-url", &database])
        .arg("--transform")
        .arg(&live)
        .env("MASKPIPE_CACHE_DIR", deploy_dir.join("cache"))
        .env("MASKPIPE_WATCH_POLL_SECONDS", "0");
    let host = LoggedHost::spawn(command);

    let load = ContinuousLoad::start(&queue, |n| login_numbered("py", n));
    let db = query_client(&database).await;
    let ran_on = async |digest: &str| -> i64 {
        db.query_one(
            "SELECT count(*) FROM maskpipe_processed WHERE component_digest = $1 OR $1 = ''",
            &[&digest],
        )
        .await
        .map(|row| row.get::<_, i64>(0))
        .unwrap_or(0)
    };

    wait_for("rows from Rust", Duration::from_secs(60), async || {
        ran_on(&rust_digest).await >= 100
    })
    .await;
    let deployed_at: chrono::DateTime<chrono::Utc> =
        db.query_one("SELECT now()", &[]).await.unwrap().get(0);
    deploy(&python, &live);
    wait_for("rows from Python", Duration::from_secs(120), async || {
        ran_on(&python_digest).await >= 100
    })
    .await;
    // Compiling Python (seconds, cold) ran beside the pollers: the Rust
    // component kept committing long after the deploy (past the watch's
    // debounce and the batches already in flight), until the swap.
    let compiled_for: f64 = db
        .query_one(
            "SELECT extract(epoch FROM min(processed_at) - $1)::float8 FROM maskpipe_processed \
             WHERE component_digest = $2",
            &[&deployed_at, &python_digest],
        )
        .await
        .unwrap()
        .get(0);
    let late_rust = db
        .query_one(
            "SELECT count(*) FROM maskpipe_processed \
             WHERE component_digest = $1 AND processed_at > $2::timestamptz + interval '2 seconds'",
            &[&rust_digest, &deployed_at],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(
        compiled_for > 3.0 && late_rust >= 200,
        "{late_rust} messages committed by Rust from 2 s after the deploy until the swap {compiled_for:.1} s after it"
    );
    deploy(&rust, &live);
    let back = async || {
        let rows = ledger_digests(&db).await;
        let last_python = rows.iter().rposition(|digest| *digest == python_digest);
        last_python.map_or(0, |last| rows.len() - 1 - last)
    };
    wait_for(
        "rows from Rust again",
        Duration::from_secs(60),
        async || back().await >= 100,
    )
    .await;

    let total = load.stop().await;
    wait_for("the queue to drain", Duration::from_secs(120), async || {
        ran_on("").await >= total
    })
    .await;
    let swaps = host.lines_with("swapped transform");
    host.stop().await;

    // Nothing lost, nothing twice, and the same rows whichever language
    // made them (the Python component is a drop-in replacement).
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, total);
    assert_eq!(
        count(&db, "SELECT count(DISTINCT user_id) FROM user_logins").await,
        total
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        total
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM user_logins WHERE masked_ip LIKE 'mp2.%' \
             AND masked_device_id LIKE 'mp2.%' AND app_version = 20300 AND locale = 'RU'"
        )
        .await,
        total
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT masked_ip) FROM user_logins").await,
        1,
        "Rust and Python must mask the same ip identically"
    );
    // Three phases in the ledger: Rust, then Python, then Rust.
    let phases: Vec<String> =
        ledger_digests(&db)
            .await
            .into_iter()
            .fold(Vec::new(), |mut phases, digest| {
                if phases.last() != Some(&digest) {
                    phases.push(digest);
                }
                phases
            });
    assert!(
        phases.len() >= 3
            && phases.first() == Some(&rust_digest)
            && phases.last() == Some(&rust_digest),
        "{} phases",
        phases.len()
    );
    assert!(phases.contains(&python_digest));
    assert_eq!(swaps.len(), 2, "{swaps:?}");
    println!("{swaps:?}");
    std::fs::remove_dir_all(&deploy_dir).ok();
}
