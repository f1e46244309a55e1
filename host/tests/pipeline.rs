//! End to end: real SQS (LocalStack), real PostgreSQL, the real binary and
//! the built component.

mod common;

use std::collections::HashSet;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn sample_queue_drains_into_99_rows_and_one_dead_letter() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let mut bodies = sample_bodies();
    // Bad logins that carry real PII: their dead letters must not show it.
    let bad_pii = [
        ("203.0.113.77", "777-66-5555"),
        ("198.51.100.9", "123-45-6789"),
    ];
    for (ip, device) in bad_pii {
        bodies.push(
            bodies[0]
                .replace("199.172.111.135", ip)
                .replace("593-47-5928", device)
                .replace("\"2.3.0\"", "\"2.3.0-beta\""),
        );
    }
    assert_eq!(queue.send(&bodies).await.unwrap(), 102);

    // The most verbose logging there is: still no plaintext PII.
    let output = drain(&queue, &database, &["--log", "trace"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("rows written        99"), "{stdout}");
    assert!(
        stdout.contains("(invalid_app_version: 2, wrong_schema: 1)"),
        "{stdout}"
    );

    let db = query_client(&database).await;
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 99);
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        102
    );
    let dead = db
        .query(
            "SELECT reason, body_sealed, message_id FROM maskpipe_dead_letters \
             WHERE reason = 'wrong_schema'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get::<_, &str>(0), "wrong_schema");
    // The dead letter's body is sealed at rest, bound to its message id, and
    // the key holder opens it with that id.
    let sealed: &str = dead[0].get(1);
    let message_id: &str = dead[0].get(2);
    assert!(sealed.starts_with("mp2s.it1."), "{sealed}");
    assert_eq!(
        keyring().reveal(sealed, Some(message_id)).unwrap(),
        br#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#
    );

    let depth = queue.depth().await.unwrap();
    assert_eq!(
        depth.visible + depth.in_flight,
        0,
        "queue not empty: {depth:?}"
    );

    // Every ip and device_id is masked, fits its column, and reveals to a sent value.
    let sent: Vec<serde_json::Value> = bodies
        .iter()
        .take(100)
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let sent_ips: HashSet<&str> = sent.iter().filter_map(|v| v["ip"].as_str()).collect();
    let sent_devices: HashSet<&str> = sent
        .iter()
        .filter_map(|v| v["device_id"].as_str())
        .collect();
    let rows = db
        .query(
            "SELECT masked_ip, masked_device_id, locale FROM user_logins",
            &[],
        )
        .await
        .unwrap();
    let ring = keyring();
    let mut null_locales = 0;
    for row in &rows {
        let ip: &str = row.get(0);
        let device: &str = row.get(1);
        assert!(ip.len() <= 256 && device.len() <= 256);
        assert!(ip.starts_with("mp2.it1.") && device.starts_with("mp2.it1."));
        let ip = String::from_utf8(ring.reveal(ip, Some("ip")).unwrap()).unwrap();
        let device = String::from_utf8(ring.reveal(device, Some("device_id")).unwrap()).unwrap();
        assert!(sent_ips.contains(ip.as_str()));
        assert!(sent_devices.contains(device.as_str()));
        null_locales += usize::from(row.get::<_, Option<&str>>(2).is_none());
    }
    assert_eq!(null_locales, 29);

    // No plaintext PII in the logs (run at trace level) or in any column of
    // the dead letters, read as text: the bad logins' own PII included.
    let dead_text: Vec<String> = db
        .query("SELECT d::text FROM maskpipe_dead_letters d", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(dead_text.len(), 3);
    let bad_values = bad_pii.iter().flat_map(|(ip, device)| [*ip, *device]);
    for secret in sent_ips
        .iter()
        .copied()
        .chain(sent_devices.iter().copied())
        .chain(bad_values)
    {
        assert!(!stderr.contains(secret), "plaintext PII in logs");
        assert!(!stdout.contains(secret), "plaintext PII in output");
        assert!(
            dead_text.iter().all(|row| !row.contains(secret)),
            "plaintext PII in dead letters"
        );
    }
    // They are there, sealed: the key holder opens each bad login's body.
    let sealed = db
        .query(
            "SELECT message_id, body_sealed FROM maskpipe_dead_letters \
             WHERE reason = 'invalid_app_version'",
            &[],
        )
        .await
        .unwrap();
    let opened: Vec<String> = sealed
        .iter()
        .map(|row| {
            let plain = ring.reveal(row.get(1), Some(row.get(0))).unwrap();
            String::from_utf8(plain).unwrap()
        })
        .collect();
    for (ip, _) in bad_pii {
        assert!(opened.iter().any(|body| body.contains(ip)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn equal_plaintexts_mask_equally_so_duplicates_stay_visible() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let first = sample_bodies()[0].clone();
    // The same login sent twice is two messages: two rows, equal masks.
    // A third login's device_id is its ip: the same value in two fields.
    let same = first
        .replace("424cdd21-063a-43a7-b91b-7ca1a833afae", "same-value")
        .replace("593-47-5928", "199.172.111.135");
    queue.send(&[first.clone(), first, same]).await.unwrap();

    let output = drain(&queue, &database, &[]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let db = query_client(&database).await;
    let rows = db
        .query(
            "SELECT masked_ip, masked_device_id FROM user_logins \
             WHERE user_id <> 'same-value'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, &str>(0), rows[1].get::<_, &str>(0));
    assert_eq!(rows[0].get::<_, &str>(1), rows[1].get::<_, &str>(1));
    // The same value in two different fields masks differently.
    let same = db
        .query_one(
            "SELECT masked_ip, masked_device_id FROM user_logins WHERE user_id = 'same-value'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(same.get::<_, &str>(0), rows[0].get::<_, &str>(0));
    assert_ne!(same.get::<_, &str>(0), same.get::<_, &str>(1));
}

/// `maskpipe reveal ARGS…`: (success, stdout, stderr).
async fn reveal(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = maskpipe();
    command.arg("reveal").args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reveal_prints_the_plaintext_for_the_key_holder() {
    let ring = keyring();
    let masked = ring.mask("ip", "199.172.111.135");
    let (ok, stdout, stderr) = reveal(&["--field", "ip", &masked], &[]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "199.172.111.135");

    // Without the right key it refuses, and says why.
    let (ok, _, stderr) = reveal(
        &["--field", "ip", &masked],
        &[("MASKPIPE_MASTER_KEY", &"11".repeat(32))],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("authentication failed"), "{stderr}");

    // A masked value is bound to its column: without --field, one line
    // naming the option; as another column, it does not open.
    let (ok, stdout, stderr) = reveal(&[&masked], &[]).await;
    assert!(!ok && stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("pass --field"), "{stderr}");
    let (ok, _, stderr) = reveal(&["--field", "device_id", &masked], &[]).await;
    assert!(!ok);
    assert!(stderr.contains("authentication failed"), "{stderr}");

    // A sealed body is bound to its dead letter's message id.
    let sealed = ring.seal("msg-7", b"{\"x\": 1}");
    let (ok, stdout, stderr) = reveal(&["--message-id", "msg-7", &sealed], &[]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "{\"x\": 1}");
    let (ok, _, stderr) = reveal(&[&sealed], &[]).await;
    assert!(!ok && stderr.contains("pass --message-id"), "{stderr}");
    let (ok, _, stderr) = reveal(&["--message-id", "msg-8", &sealed], &[]).await;
    assert!(!ok && stderr.contains("authentication failed"), "{stderr}");

    // Version 1 values (made by the code before field binding, under this
    // test key) still reveal, with or without the new options.
    let legacy_masked = "mp1.it1.hxz6D4zd4Ur5dIWe7G1FEj5HnBQqFhS_9La51w3sLjkd2Hn2tF_OW0SHSw";
    let legacy_sealed = "mp1s.it1.vDk9s-sRtzif4RfGfp-aUHUaJ18p0VrsQ-ygHpsiXFYUsa7YqXNJCa3AAYg";
    let (ok, stdout, stderr) = reveal(&[legacy_masked, legacy_sealed], &[]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "199.172.111.135\n{\"legacy\": true}");
    let (ok, stdout, _) = reveal(&["--field", "device_id", legacy_masked], &[]).await;
    assert!(ok);
    assert_eq!(stdout, "199.172.111.135");

    // Missing keys are named by the id the value carries.
    let mut command = maskpipe();
    command.env_remove("MASKPIPE_MASTER_KEY");
    let output = command
        .args(["reveal", "--field", "ip", &masked])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("MASKPIPE_MASTER_KEY") && stderr.contains("id it1"),
        "{stderr}"
    );
    let (ok, _, stderr) = reveal(&["--field", "ip", &masked], &[("MASKPIPE_KEY_ID", "k2")]).await;
    assert!(!ok);
    assert!(
        stderr.contains("no key with id \"it1\"") && stderr.contains("it1=KEY"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_key_rotation_new_rows_carry_the_new_key_and_reveal_opens_both() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let bodies = sample_bodies();
    queue.send(&bodies[..50]).await.unwrap();
    let output = drain(&queue, &database, &[]).await;
    assert!(output.status.success());

    // Rotate: a new current key k2, the old one retired but still known.
    let new_key = "22".repeat(32);
    let retired = format!("{KEY_ID}={KEY_HEX}");
    queue.send(&bodies[50..]).await.unwrap();
    let output = drain(
        &queue,
        &database,
        &[
            "--master-key",
            &new_key,
            "--key-id",
            "k2",
            "--retired-keys",
            &retired,
        ],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let db = query_client(&database).await;
    let old_rows = count(
        &db,
        "SELECT count(*) FROM user_logins WHERE masked_ip LIKE 'mp2.it1.%'",
    )
    .await;
    let new_rows = count(
        &db,
        "SELECT count(*) FROM user_logins WHERE masked_ip LIKE 'mp2.k2.%'",
    )
    .await;
    assert_eq!(
        (old_rows, new_rows),
        (49, 50),
        "the 13th sample message is malformed"
    );

    let masked: Vec<String> = db
        .query("SELECT masked_ip FROM user_logins ORDER BY masked_ip", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let output = maskpipe()
        .env("MASKPIPE_MASTER_KEY", &new_key)
        .env("MASKPIPE_KEY_ID", "k2")
        .env("MASKPIPE_RETIRED_KEYS", &retired)
        .args(["reveal", "--field", "ip"])
        .args(&masked)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let revealed: std::collections::HashSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let sent: std::collections::HashSet<String> = bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .filter_map(|v| v["ip"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(revealed, sent);
}
