//! The master key as a KMS data key, against LocalStack's KMS over HTTP:
//! `keygen --kms-key-id`, startup from a ciphertext (the same key as its
//! plaintext), and each way KMS can refuse or fail: one error line, exit 1,
//! no ciphertext and no key byte in any output.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::Blob;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use maskpipe::masking::{Keyring, MasterKey};

/// LocalStack's KMS, as the test itself talks to it (demo.env's settings).
async fn kms() -> Client {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run the tests with `just test` (it starts the local stack and loads demo.env)"
    );
    Client::new(&aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
}

/// A new symmetric encryption key: its ARN.
async fn new_kms_key(kms: &Client) -> String {
    kms.create_key()
        .description("maskpipe test key")
        .send()
        .await
        .expect("LocalStack's KMS is not reachable: run `just up`")
        .key_metadata
        .and_then(|metadata| metadata.arn)
        .expect("CreateKey names its key")
}

/// What `maskpipe keygen --kms-key-id` printed, line by line.
struct Generated {
    ciphertext: String,
    kms_key_arn: String,
    key_id: String,
    /// stdout and stderr together, to search for key material.
    output: String,
}

/// `maskpipe keygen --kms-key-id KEY [--key-id ID]`: exactly three lines,
/// in this order, nothing else on stdout.
async fn keygen(kms_key: &str, key_id: Option<&str>) -> Generated {
    let mut command = maskpipe();
    command.args(["keygen", "--kms-key-id", kms_key]);
    if let Some(id) = key_id {
        command.args(["--key-id", id]);
    }
    let output = run_with_limit(command, Duration::from_secs(60)).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "not three lines:\n{stdout}");
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let value = |line: usize, name: &str| {
        lines[line]
            .strip_prefix(&format!("{name}="))
            .unwrap_or_else(|| panic!("line {} is not {name}=…:\n{stdout}", line + 1))
            .to_owned()
    };
    Generated {
        ciphertext: value(0, "MASKPIPE_MASTER_KEY_CIPHERTEXT"),
        kms_key_arn: value(1, "MASKPIPE_KMS_KEY_ID"),
        key_id: value(2, "MASKPIPE_KEY_ID"),
        output: format!("{stdout}{stderr}"),
    }
}

/// The data key's plaintext, as the test itself gets it from KMS.
async fn plaintext_of(kms: &Client, ciphertext: &str) -> Vec<u8> {
    let blob = STANDARD.decode(ciphertext).expect("keygen prints base64");
    kms.decrypt()
        .ciphertext_blob(Blob::new(blob))
        .send()
        .await
        .expect("KMS decrypts the ciphertext keygen printed")
        .plaintext
        .expect("Decrypt returns the plaintext")
        .into_inner()
}

/// Asserts that `text` holds no part of any secret: no 16 characters in a
/// row of the ciphertexts, the plaintexts' hex or base64.
fn assert_no_key_material(text: &str, ciphertexts: &[&str], plaintexts: &[&[u8]]) {
    let mut secrets: Vec<String> = ciphertexts.iter().map(|c| c.to_string()).collect();
    for plain in plaintexts {
        secrets.push(hex::encode(plain));
        secrets.push(STANDARD.encode(plain));
    }
    for secret in &secrets {
        for window in secret.as_bytes().windows(16) {
            let window = std::str::from_utf8(window).unwrap();
            assert!(
                !text.contains(window),
                "key material ({window}) in:\n{text}"
            );
        }
    }
}

/// `maskpipe run --drain` of a queue and database that are never reached
/// when startup fails first, with the current key given as `ciphertext`.
fn run_with_ciphertext(ciphertext: &str) -> tokio::process::Command {
    run_with_ciphertext_and_database(ciphertext, "postgres://127.0.0.1:9/never_reached")
}

fn run_with_ciphertext_and_database(ciphertext: &str, database: &str) -> tokio::process::Command {
    let mut command = drain_command(
        "mp-kms-never-reached",
        database,
        &component_path(),
        &["--log", "trace"],
    );
    command
        .env_remove("MASKPIPE_MASTER_KEY")
        .env("MASKPIPE_MASTER_KEY_CIPHERTEXT", ciphertext);
    command
}

/// Runs `command`, which must fail: exit 1, one `maskpipe: error:` line.
/// Gives that line, everything printed, and how long it took.
async fn expect_one_error_line(mut command: tokio::process::Command) -> (String, String, Duration) {
    command.kill_on_drop(true);
    let started = Instant::now();
    let output = run_with_limit(command, Duration::from_secs(120)).await;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("maskpipe: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    (errors[0].to_owned(), format!("{stdout}{stderr}"), took)
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_prints_three_env_lines_and_never_the_plaintext() {
    let kms = kms().await;
    let key = new_kms_key(&kms).await;
    let generated = keygen(&key, None).await;
    assert_eq!(generated.kms_key_arn, key);
    let id = generated.key_id.strip_prefix('k').unwrap_or("");
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        generated.key_id
    );
    let plaintext = plaintext_of(&kms, &generated.ciphertext).await;
    assert_eq!(plaintext.len(), 32);
    assert_no_key_material(&generated.output, &[], &[&plaintext]);

    // A chosen id; the demo's alias (made by `just up` with unsigned calls:
    // the same account and region as the SDK's), named by its key's ARN.
    let named = keygen("alias/maskpipe-demo", Some("prod_2-b")).await;
    assert_eq!(named.key_id, "prod_2-b");
    assert!(
        named.kms_key_arn.starts_with("arn:aws:kms:") && named.kms_key_arn.contains(":key/"),
        "{}",
        named.kms_key_arn
    );
    assert_ne!(named.ciphertext, generated.ciphertext);
    assert_eq!(plaintext_of(&kms, &named.ciphertext).await.len(), 32);

    // Plain keygen is as it was: 64 hex digits, one line.
    let mut plain = maskpipe();
    plain.arg("keygen");
    let output = run_with_limit(plain, Duration::from_secs(30)).await;
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.len(), 65, "{stdout:?}");
    assert!(stdout.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));

    // A bad id is refused before KMS is asked; --key-id needs --kms-key-id.
    let mut bad_id = maskpipe();
    bad_id.args(["keygen", "--kms-key-id", &key, "--key-id", "no.dots"]);
    let (line, everything, _) = expect_one_error_line(bad_id).await;
    assert!(line.contains("--key-id is invalid"), "{line}");
    assert!(
        !everything.contains("MASKPIPE_MASTER_KEY_CIPHERTEXT="),
        "{everything}"
    );
    let mut alone = maskpipe();
    alone.args(["keygen", "--key-id", "k9"]);
    let (line, _, _) = expect_one_error_line(alone).await;
    assert!(line.contains("--kms-key-id"), "{line}");

    // KMS's refusals are one line too, naming the key.
    let mut missing = maskpipe();
    missing.args(["keygen", "--kms-key-id", "alias/maskpipe-no-such-key"]);
    let (line, everything, _) = expect_one_error_line(missing).await;
    assert!(
        line.contains("alias/maskpipe-no-such-key") && line.contains("NotFoundException"),
        "{line}"
    );
    assert!(
        !everything.contains("MASKPIPE_MASTER_KEY_CIPHERTEXT="),
        "{everything}"
    );
    kms.disable_key().key_id(&key).send().await.unwrap();
    let mut disabled = maskpipe();
    disabled.args(["keygen", "--kms-key-id", &key]);
    let (line, _, _) = expect_one_error_line(disabled).await;
    assert!(
        line.contains(&format!(
            "the KMS key {key} is disabled (DisabledException)"
        )),
        "{line}"
    );
}

/// The promise of envelope encryption: the key the host masks with is the
/// plaintext of the ciphertext it was given, nothing else. The test gets
/// that plaintext from KMS itself and opens the rows with it; `reveal`
/// opens them with either form; a retired key given as a ciphertext opens
/// the values made under it.
#[tokio::test(flavor = "multi_thread")]
async fn a_master_key_from_kms_masks_as_its_plaintext_and_both_forms_reveal() {
    let kms = kms().await;
    let key = new_kms_key(&kms).await;
    let current = keygen(&key, None).await;
    let old = keygen(&key, Some("old1")).await;
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let bodies: Vec<String> = sample_bodies().into_iter().take(10).collect();
    queue.send(&bodies).await.unwrap();

    let mut command = drain_command(queue.queue_url(), &database, &component_path(), &[]);
    command
        .env_remove("MASKPIPE_MASTER_KEY")
        .env("MASKPIPE_MASTER_KEY_CIPHERTEXT", &current.ciphertext)
        .env("MASKPIPE_KMS_KEY_ID", &current.kms_key_arn)
        .env("MASKPIPE_KEY_ID", &current.key_id);
    let output = run_with_limit(command, Duration::from_secs(120)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("rows written        10"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "decrypted the current key with KMS key {}",
            current.kms_key_arn
        )),
        "{stderr}"
    );

    // The plaintext, from KMS: the rows open with it, in process.
    let plaintext = plaintext_of(&kms, &current.ciphertext).await;
    let old_plaintext = plaintext_of(&kms, &old.ciphertext).await;
    assert_ne!(plaintext, old_plaintext);
    let secrets = [plaintext.as_slice(), old_plaintext.as_slice()];
    assert_no_key_material(
        &format!("{stdout}{stderr}{}{}", current.output, old.output),
        &[],
        &secrets,
    );
    let ring = Keyring::new(
        &current.key_id,
        &MasterKey::parse(&hex::encode(&plaintext)).unwrap(),
        &[],
    )
    .unwrap();
    let expected: HashMap<String, (String, String)> = bodies
        .iter()
        .map(|body| {
            let login: serde_json::Value = serde_json::from_str(body).unwrap();
            let text = |name: &str| login[name].as_str().unwrap().to_owned();
            (text("user_id"), (text("ip"), text("device_id")))
        })
        .collect();
    let db = query_client(&database).await;
    let rows = db
        .query(
            "SELECT user_id, masked_ip, masked_device_id FROM user_logins ORDER BY user_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 10);
    let mut masked_ips = Vec::new();
    let mut plain_ips = Vec::new();
    for row in &rows {
        let (user, ip, device): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let (want_ip, want_device) = &expected[&user];
        assert!(ip.starts_with(&format!("mp2.{}.", current.key_id)), "{ip}");
        assert_eq!(ring.reveal(&ip, Some("ip")).unwrap(), want_ip.as_bytes());
        assert_eq!(
            ring.reveal(&device, Some("device_id")).unwrap(),
            want_device.as_bytes()
        );
        masked_ips.push(ip);
        plain_ips.push(want_ip.clone());
    }

    // `reveal` with the plaintext form, then with the ciphertext form.
    let reveal = |env: Vec<(&'static str, String)>| {
        let mut command = maskpipe();
        command
            .env_remove("MASKPIPE_MASTER_KEY")
            .env("MASKPIPE_KEY_ID", &current.key_id)
            .args(["reveal", "--field", "ip"])
            .args(&masked_ips);
        for (name, value) in env {
            command.env(name, value);
        }
        run_with_limit(command, Duration::from_secs(60))
    };
    let from_plaintext = reveal(vec![("MASKPIPE_MASTER_KEY", hex::encode(&plaintext))]).await;
    let from_ciphertext = reveal(vec![
        ("MASKPIPE_MASTER_KEY_CIPHERTEXT", current.ciphertext.clone()),
        ("MASKPIPE_KMS_KEY_ID", key.clone()),
    ])
    .await;
    for output in [&from_plaintext, &from_ciphertext] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(stdout.lines().collect::<Vec<_>>(), plain_ips, "{stderr}");
        assert_no_key_material(&stderr, &[&current.ciphertext, &old.ciphertext], &secrets);
    }

    // A value masked under the old key (its plaintext from KMS) opens only
    // once that key is given, as a retired ciphertext.
    let old_ring = Keyring::new(
        "old1",
        &MasterKey::parse(&hex::encode(&old_plaintext)).unwrap(),
        &[],
    )
    .unwrap();
    let old_value = old_ring.mask("ip", "10.9.8.7");
    let reveal_old = |retired: Option<String>| {
        let mut command = maskpipe();
        command
            .env_remove("MASKPIPE_MASTER_KEY")
            .env("MASKPIPE_MASTER_KEY_CIPHERTEXT", &current.ciphertext)
            .env("MASKPIPE_KEY_ID", &current.key_id)
            .env("MASKPIPE_KMS_KEY_ID", &key)
            .args(["reveal", "--field", "ip"])
            .arg(&old_value)
            .arg(&masked_ips[0]);
        if let Some(retired) = retired {
            command.env("MASKPIPE_RETIRED_KEY_CIPHERTEXTS", retired);
        }
        run_with_limit(command, Duration::from_secs(60))
    };
    let output = reveal_old(Some(format!("old1={}", old.ciphertext))).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("decrypted retired key 1 with KMS key"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("10.9.8.7\n{}\n", plain_ips[0])
    );
    let output = reveal_old(None).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no key with id \"old1\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ciphertext_of_another_kms_key_is_refused_in_one_line_without_key_material() {
    let kms = kms().await;
    let pinned = new_kms_key(&kms).await;
    let other = new_kms_key(&kms).await;
    let generated = keygen(&other, None).await;
    let plaintext = plaintext_of(&kms, &generated.ciphertext).await;

    let mut command = run_with_ciphertext(&generated.ciphertext);
    command.env("MASKPIPE_KMS_KEY_ID", &pinned);
    let (line, everything, _) = expect_one_error_line(command).await;
    assert!(
        line.contains(&format!(
            "cannot decrypt MASKPIPE_MASTER_KEY_CIPHERTEXT: the current key was not encrypted \
             under MASKPIPE_KMS_KEY_ID ({pinned}) (IncorrectKeyException)"
        )),
        "{line}"
    );
    assert_no_key_material(&everything, &[&generated.ciphertext], &[&plaintext]);
}

/// LocalStack enforces no key policy or IAM, so KMS's refusal here is a
/// disabled key, then one pending deletion (AccessDeniedException's line
/// is `kms::tests::access_denied_names_the_key_and_where_to_look`).
#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_or_deleted_kms_key_stops_startup_in_one_line() {
    let kms = kms().await;
    let key = new_kms_key(&kms).await;
    let generated = keygen(&key, None).await;
    let plaintext = plaintext_of(&kms, &generated.ciphertext).await;

    kms.disable_key().key_id(&key).send().await.unwrap();
    let (line, everything, _) =
        expect_one_error_line(run_with_ciphertext(&generated.ciphertext)).await;
    assert!(
        line.contains(
            "cannot decrypt MASKPIPE_MASTER_KEY_CIPHERTEXT: KMS Decrypt of the current key: the \
             KMS key it was encrypted under is disabled (DisabledException)"
        ),
        "{line}"
    );
    assert_no_key_material(&everything, &[&generated.ciphertext], &[&plaintext]);

    // A retired key's ciphertext is named by its position in its list.
    let healthy = keygen(&new_kms_key(&kms).await, None).await;
    let mut reveal = maskpipe();
    reveal
        .env_remove("MASKPIPE_MASTER_KEY")
        .env("MASKPIPE_MASTER_KEY_CIPHERTEXT", &healthy.ciphertext)
        .env(
            "MASKPIPE_RETIRED_KEY_CIPHERTEXTS",
            format!("old1={},old2={}", healthy.ciphertext, generated.ciphertext),
        )
        .args(["reveal", "--field", "ip", "mp2.old2.AAAA"]);
    let (line, everything, _) = expect_one_error_line(reveal).await;
    assert!(
        line.contains(
            "cannot decrypt MASKPIPE_RETIRED_KEY_CIPHERTEXTS: KMS Decrypt of retired key 2: the \
             KMS key it was encrypted under is disabled"
        ),
        "{line}"
    );
    assert_no_key_material(
        &everything,
        &[&generated.ciphertext, &healthy.ciphertext],
        &[&plaintext],
    );

    kms.enable_key().key_id(&key).send().await.unwrap();
    kms.schedule_key_deletion()
        .key_id(&key)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    let mut command = run_with_ciphertext(&generated.ciphertext);
    command.env("MASKPIPE_KMS_KEY_ID", &key);
    let (line, everything, _) = expect_one_error_line(command).await;
    assert!(
        line.contains(&format!(
            "KMS Decrypt of the current key: the KMS key {key} (MASKPIPE_KMS_KEY_ID) cannot be \
             used in its state (KMSInvalidStateException): it is pending deletion"
        )),
        "{line}"
    );
    assert_no_key_material(&everything, &[&generated.ciphertext], &[&plaintext]);
}

/// KMS refused (a closed port) or silent (a server that accepts and never
/// answers): startup ends in one line, exit 1, in bounded time. A
/// plaintext key needs no KMS: the same settings reveal with it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_kms_stops_startup_in_one_line_in_bounded_time() {
    let kms = kms().await;
    let generated = keygen(&new_kms_key(&kms).await, None).await;

    let closed = format!("http://127.0.0.1:{}", closed_port());
    let silent_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = format!("http://{}", silent_server.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent_server.accept().await {
            connections.push(connection);
        }
    });
    for endpoint in [&closed, &silent] {
        let mut command = run_with_ciphertext(&generated.ciphertext);
        command.env("AWS_ENDPOINT_URL", endpoint);
        let (line, everything, took) = expect_one_error_line(command).await;
        assert!(
            line.contains(&format!(
                "cannot decrypt MASKPIPE_MASTER_KEY_CIPHERTEXT: KMS Decrypt of the current key: \
                 cannot reach KMS at {endpoint}"
            )),
            "{line}"
        );
        // The client's operation timeout is 30 s, retries included.
        assert!(took < Duration::from_secs(60), "{endpoint}: took {took:?}");
        assert!(!everything.contains(&generated.ciphertext), "{everything}");
    }
    held.abort();

    let mut plain = maskpipe();
    plain.env("AWS_ENDPOINT_URL", &closed).args([
        "reveal",
        "--field",
        "ip",
        &keyring().mask("ip", "10.1.2.3"),
    ]);
    let output = run_with_limit(plain, Duration::from_secs(30)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "10.1.2.3\n");
}

/// Ciphertexts that are no ciphertexts, and settings that contradict each
/// other: local errors come before any call to KMS; KMS's own refusal of a
/// blob it did not make is one line naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn bad_ciphertexts_and_contradicting_settings_are_one_line_each() {
    // Valid base64, not a KMS blob.
    let garbage = STANDARD.encode((0..96).map(|n| (n * 37 + 11) as u8).collect::<Vec<u8>>());
    let (line, everything, _) = expect_one_error_line(run_with_ciphertext(&garbage)).await;
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    assert!(
        line.contains(&format!(
            "cannot decrypt MASKPIPE_MASTER_KEY_CIPHERTEXT: KMS at {endpoint} cannot decrypt the \
             current key (InvalidCiphertextException): it is not a KMS ciphertext"
        )),
        "{line}"
    );
    assert_no_key_material(&everything, &[&garbage], &[]);

    // The rest is local: KMS is unreachable, and never asked.
    let unreachable = format!("http://127.0.0.1:{}", closed_port());
    let real = keygen(&new_kms_key(&kms().await).await, None).await;
    let not_base64 = "c2VjcmV0!!c2VjcmV0c2VjcmV0";
    let mut cases: Vec<(Vec<(&str, String)>, String)> = vec![
        (
            vec![("MASKPIPE_MASTER_KEY_CIPHERTEXT", not_base64.into())],
            "MASKPIPE_MASTER_KEY_CIPHERTEXT is unusable: the ciphertext is not base64".into(),
        ),
        (
            vec![("MASKPIPE_MASTER_KEY", KEY_HEX.into())],
            "MASKPIPE_MASTER_KEY and MASKPIPE_MASTER_KEY_CIPHERTEXT are both set".into(),
        ),
        (
            // Pasted without its `ID=`: split at its padding, never echoed.
            vec![(
                "MASKPIPE_RETIRED_KEY_CIPHERTEXTS",
                format!("old1={},{}", real.ciphertext, real.ciphertext),
            )],
            "MASKPIPE_RETIRED_KEY_CIPHERTEXTS is unusable: retired key 2 is not of the form \
             ID=CIPHERTEXT"
                .into(),
        ),
        (
            vec![
                ("MASKPIPE_RETIRED_KEYS", format!("old1={}", "ab".repeat(32))),
                (
                    "MASKPIPE_RETIRED_KEY_CIPHERTEXTS",
                    format!("old0={0},old1={0}", real.ciphertext),
                ),
            ],
            "the keyring is unusable: retired key 2 of MASKPIPE_RETIRED_KEY_CIPHERTEXTS has the \
             same id as retired key 1 of MASKPIPE_RETIRED_KEYS"
                .into(),
        ),
        (
            vec![("MASKPIPE_KMS_KEY_ID", " ".into())],
            "MASKPIPE_KMS_KEY_ID is empty".into(),
        ),
    ];
    // A bad local setting of `run` (an empty database URL) is reported
    // before KMS is called.
    cases.push((vec![], "MASKPIPE_DATABASE_URL is empty".into()));
    let last = cases.len() - 1;
    for (n, (env, expected)) in cases.into_iter().enumerate() {
        let database = if n == last {
            " "
        } else {
            "postgres://127.0.0.1:9/x"
        };
        let mut command = run_with_ciphertext_and_database(&real.ciphertext, database);
        command.env("AWS_ENDPOINT_URL", &unreachable);
        for (name, value) in env {
            command.env(name, value);
        }
        let (line, everything, _) = expect_one_error_line(command).await;
        assert!(
            line.contains(&expected),
            "expected {expected:?} in:\n{line}"
        );
        assert!(!line.contains("KMS Decrypt"), "KMS was called: {line}");
        assert_no_key_material(&everything, &[&real.ciphertext, not_base64], &[]);
    }
}
