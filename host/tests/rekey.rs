//! `maskpipe rekey` against a real PostgreSQL, with a real host writing
//! through real SQS while it runs: history moves to the current key once,
//! survives `kill -9`, and loses, doubles or alters nothing.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use maskpipe::masking::{Keyring, MasterKey};
use maskpipe::sink::{Database, PgSink};

/// The retired key (k1) and the current one (k2): public test keys.
const OLD_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const NEW_HEX: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const SEEDED: usize = 100_000;
/// `maskpipe rekey`'s advisory lock ("maskpipe" + 3).
const REKEY_LOCK: i64 = 0x6d61_736b_7069_7065 + 3;

fn old_keyring() -> Keyring {
    Keyring::new("k1", &MasterKey::parse(OLD_HEX).unwrap(), &[]).unwrap()
}

/// The current key alone: what opens history after the rekey.
fn new_keyring() -> Keyring {
    Keyring::new("k2", &MasterKey::parse(NEW_HEX).unwrap(), &[]).unwrap()
}

/// Settings of every host and rekey after the rotation.
fn rotated_keys() -> Vec<String> {
    [
        "--master-key",
        NEW_HEX,
        "--key-id",
        "k2",
        "--retired-keys",
        &format!("k1={OLD_HEX}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn rekey_command(database_url: &str, extra: &[&str]) -> tokio::process::Command {
    let mut command = maskpipe();
    command
        .args(["rekey", "--database-url", database_url])
        .args(rotated_keys())
        .args(extra);
    command
}

fn seeded_ip(n: usize) -> String {
    format!("10.{}.{}.{}", n / 65_536, (n / 256) % 256, n % 256)
}

fn seeded_device(n: usize) -> String {
    format!("{:03}-{:02}-{:04}", n % 1000, n % 97, n % 10_000)
}

/// Every 50th seeded row holds a pseudonym, every 97th no device id.
fn seeded_device_value(old: &Keyring, n: usize) -> Option<String> {
    if n.is_multiple_of(97) {
        None
    } else if n.is_multiple_of(50) {
        Some(old.pseudonymize("device_id", &seeded_device(n)))
    } else {
        Some(old.mask("device_id", &seeded_device(n)))
    }
}

/// A fresh database with maskpipe's tables and `user_logins`, as a host's
/// startup makes them, and a client of it.
async fn database_with_tables() -> (String, tokio_postgres::Client) {
    let database_url = fresh_database().await;
    let mut sink = PgSink::connect(&Database::new(&database_url, None).unwrap())
        .await
        .unwrap();
    prepare_sink(&mut sink).await;
    let db = query_client(&database_url).await;
    (database_url, db)
}

/// `SEEDED` rows masked under k1, and 300 dead letters sealed under it:
/// history as a host on the old key left it.
async fn seed_history(database_url: &str) {
    let db = query_client(database_url).await;
    let old = old_keyring();
    for chunk in (0..SEEDED).collect::<Vec<_>>().chunks(10_000) {
        let ids: Vec<String> = chunk.iter().map(|n| format!("seed-{n:06}")).collect();
        let ips: Vec<String> = chunk
            .iter()
            .map(|&n| old.mask("ip", &seeded_ip(n)))
            .collect();
        let devices: Vec<Option<String>> = chunk
            .iter()
            .map(|&n| seeded_device_value(&old, n))
            .collect();
        db.execute(
            "INSERT INTO user_logins
               (user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date)
             SELECT u, 'android', i, d, 'RU', 230, current_date
             FROM unnest($1::text[], $2::text[], $3::text[]) AS s(u, i, d)",
            &[&ids, &ips, &devices],
        )
        .await
        .unwrap();
    }
    for n in 0..300 {
        let message_id = format!("dead-{n}");
        let body = old.seal(
            &message_id,
            format!("{{\"ip\": \"{}\"}}", seeded_ip(n)).as_bytes(),
        );
        let detail = (n % 2 == 0).then(|| old.seal(&message_id, b"quoted: 10.1.2.3"));
        db.execute(
            "INSERT INTO maskpipe_dead_letters
               (message_id, reason, detail, body_sealed, detail_sealed, component_digest)
             VALUES ($1, 'invalid_ip', 'sealed', $2, $3, 'seed')",
            &[&message_id, &body, &detail],
        )
        .await
        .unwrap();
    }
}

/// Where a resumed rekey would start (0 before the first one made its table).
async fn next_page(db: &tokio_postgres::Client) -> i64 {
    db.query_opt(
        "SELECT next_page FROM maskpipe_rekey_progress WHERE target = 'user_logins' AND key_id = 'k2'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .map(|row| row.get(0))
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rekey_moves_100k_rows_to_the_new_key_while_a_host_writes_and_resumes_after_kill_9() {
    let (database_url, db) = database_with_tables().await;
    seed_history(&database_url).await;
    let pages: i64 = count(
        &db,
        "SELECT pg_relation_size('user_logins') / current_setting('block_size')::bigint",
    )
    .await;

    // A host on the new key (the old one retired) writes all along.
    let queue = fresh_queue().await;
    let load = ContinuousLoad::start(&queue, |n| login_numbered("live", n));
    let keys = rotated_keys();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let host = spawn_host(queue.queue_url(), &database_url, &keys);
    wait_until_processed(&database_url, 20, Duration::from_secs(60)).await;

    // The first rekey, stopped a third of the way through the table: the
    // test holds a row there (FOR SHARE), so the step that must lock it
    // waits, and is killed with -9 while it does.
    let mut holder = query_client(&database_url).await;
    let hold = holder.transaction().await.unwrap();
    let held_page = pages / 3;
    let held: String = hold
        .query_one(
            "SELECT ctid::text AS held FROM user_logins
             WHERE ctid >= $1::text::tid AND user_id LIKE 'seed-%'
             ORDER BY user_logins.ctid LIMIT 1 FOR SHARE",
            &[&format!("({held_page},0)")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(held.starts_with(&format!("({held_page},")), "{held}");
    let mut first = rekey_command(&database_url, &["--pages-per-step", "8"]);
    let mut first = first
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let blocked_at = held_page / 8 * 8;
    wait_for(
        "the rekey to reach the held row",
        Duration::from_secs(120),
        async || next_page(&db).await >= blocked_at,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    hold.rollback().await.unwrap();
    let killed_at = next_page(&db).await;
    assert_eq!(killed_at, blocked_at, "the walk passed the held row");

    // What the killed run committed: these rows must not be written again.
    let done_before: HashSet<(String, String)> = db
        .query(
            "SELECT ctid::text, xmin::text FROM user_logins
             WHERE user_id LIKE 'seed-%' AND masked_ip LIKE 'mp2.k2.%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(
        done_before.len() as i64 >= (SEEDED as i64) / 4,
        "{}",
        done_before.len()
    );
    assert!(done_before.len() < SEEDED);

    // While one rekey holds the database (here: the test, holding its
    // lock), another is refused.
    db.execute("SELECT pg_advisory_lock($1)", &[&REKEY_LOCK])
        .await
        .unwrap();
    // (A short statement bound: the second one waits that long plus 5 s.)
    let second = run_with_limit(
        rekey_command(&database_url, &["--database-timeout-seconds", "5"]),
        Duration::from_secs(60),
    )
    .await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(stderr.contains("another rekey is running"), "{stderr}");
    db.execute("SELECT pg_advisory_unlock($1)", &[&REKEY_LOCK])
        .await
        .unwrap();

    // The resumed run starts where the killed one stopped: its saved page
    // never goes back below that (0 again once the table is done).
    let mut resumed = rekey_command(&database_url, &["--pages-per-step", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lowest = i64::MAX;
    while resumed.try_wait().unwrap().is_none() {
        let page = next_page(&db).await;
        if page > 0 {
            lowest = lowest.min(page);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        lowest >= killed_at,
        "resumed at page {lowest}, not {killed_at}"
    );
    let resumed = tokio::time::timeout(Duration::from_secs(300), resumed.wait_with_output())
        .await
        .expect("the resumed rekey did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stdout}\n{stderr}");
    println!("killed at page {killed_at} of {pages}; the resumed run:\n{stdout}{stderr}");
    assert!(
        stdout.contains("every masked value and sealed body is under key k2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pseudonyms (ps1) under other keys left as they are"),
        "{stdout}"
    );
    assert!(
        stderr.contains("rekey to k2 ["),
        "no progress shown: {stderr}"
    );
    for secret in [OLD_HEX, NEW_HEX, "10.0.0.1", "seed-000001"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} shown"
        );
    }

    // The host goes on until everything sent is in.
    let sent = load.stop().await;
    wait_until_processed(&database_url, sent, Duration::from_secs(120)).await;
    drop(host);

    // Nothing lost or doubled.
    let rows = count(&db, "SELECT count(*) FROM user_logins").await;
    assert_eq!(rows, SEEDED as i64 + sent);
    assert_eq!(
        count(&db, "SELECT count(DISTINCT user_id) FROM user_logins").await,
        rows
    );

    // The killed run's rows were left alone by the resumed one.
    let still: HashSet<(String, String)> = db
        .query("SELECT ctid::text, xmin::text FROM user_logins", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let rewritten_again = done_before.difference(&still).count();
    assert_eq!(rewritten_again, 0, "rows under the new key were rewritten");

    // Every value is under k2 and opens, with k2 alone, to what it was.
    let new = new_keyring();
    let old = old_keyring();
    for row in db
        .query(
            "SELECT user_id, masked_ip, masked_device_id FROM user_logins",
            &[],
        )
        .await
        .unwrap()
    {
        let user_id: &str = row.get(0);
        let ip: &str = row.get(1);
        let device: Option<&str> = row.get(2);
        assert!(ip.starts_with("mp2.k2."), "{user_id}: {ip}");
        if let Some(n) = user_id.strip_prefix("seed-") {
            let n: usize = n.parse().unwrap();
            assert_eq!(new.reveal(ip, Some("ip")).unwrap(), seeded_ip(n).as_bytes());
            assert_eq!(ip, new.mask("ip", &seeded_ip(n)));
            match (n.is_multiple_of(97), n.is_multiple_of(50)) {
                (true, _) => assert_eq!(device, None),
                // Pseudonyms are one-way: kept exactly as they were.
                (false, true) => assert_eq!(device, seeded_device_value(&old, n).as_deref()),
                (false, false) => {
                    assert_eq!(
                        device,
                        Some(new.mask("device_id", &seeded_device(n)).as_str())
                    )
                }
            }
        } else {
            // The host's own rows: masked under k2 from the start.
            assert!(device.unwrap().starts_with("mp2.k2."), "{user_id}");
        }
    }

    // Dead letters: resealed under k2, bound to their message, same bodies.
    for row in db
        .query(
            "SELECT message_id, body_sealed, detail_sealed FROM maskpipe_dead_letters
             WHERE component_digest = 'seed'",
            &[],
        )
        .await
        .unwrap()
    {
        let message_id: &str = row.get(0);
        let n: usize = message_id.strip_prefix("dead-").unwrap().parse().unwrap();
        let body: &str = row.get(1);
        assert!(body.starts_with("mp2s.k2."), "{body}");
        assert_eq!(
            new.reveal(body, Some(message_id)).unwrap(),
            format!("{{\"ip\": \"{}\"}}", seeded_ip(n)).as_bytes()
        );
        let detail: Option<&str> = row.get(2);
        match detail {
            Some(detail) => {
                assert_eq!(n % 2, 0);
                assert_eq!(
                    new.reveal(detail, Some(message_id)).unwrap(),
                    b"quoted: 10.1.2.3"
                );
            }
            None => assert_eq!(n % 2, 1),
        }
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM maskpipe_dead_letters WHERE component_digest = 'seed'"
        )
        .await,
        300
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_rekey_progress").await,
        0
    );

    // Once more: nothing left to do.
    let again = run_with_limit(rekey_command(&database_url, &[]), Duration::from_secs(120)).await;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    let targets: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("rows rewritten"))
        .collect();
    assert_eq!(targets.len(), 2, "{stdout}");
    assert!(
        targets
            .iter()
            .all(|l| l.ends_with(" 0 rows rewritten (0 values)")),
        "{stdout}"
    );
}

#[tokio::test]
async fn rekey_keeps_what_it_cannot_open_and_exits_1() {
    let (database_url, db) = database_with_tables().await;
    let old = old_keyring();
    let gone = Keyring::new("gone", &MasterKey::parse(NEW_HEX).unwrap(), &[]).unwrap();
    // Under a key nobody configured; masked as another field; a clear value
    // that merely starts like a token; and one that re-keys.
    let cases = [
        (
            "unknown",
            gone.mask("ip", "10.99.88.77"),
            old.mask("device_id", "111-22-3333"),
        ),
        (
            "swapped",
            old.mask("ip", "10.99.88.78"),
            old.mask("ip", "10.99.88.79"),
        ),
        (
            "fine",
            old.mask("ip", "10.99.88.80"),
            old.mask("device_id", "222-33-4444"),
        ),
    ];
    for (user_id, ip, device) in &cases {
        db.execute(
            "INSERT INTO user_logins (user_id, masked_ip, masked_device_id) VALUES ($1, $2, $3)",
            &[user_id, ip, device],
        )
        .await
        .unwrap();
    }
    db.execute(
        "INSERT INTO user_logins (user_id, masked_ip) VALUES ('clear', 'mpls-router-1')",
        &[],
    )
    .await
    .unwrap();
    // A row PostgreSQL refuses to take under the new key (a CHECK), on the
    // same page as the others: only it keeps its old values.
    db.execute(
        "INSERT INTO user_logins (user_id, masked_ip, masked_device_id) VALUES ('refused', $1, $2)",
        &[
            &old.mask("ip", "10.99.88.81"),
            &old.mask("device_id", "333-44-5555"),
        ],
    )
    .await
    .unwrap();
    db.batch_execute(
        "ALTER TABLE user_logins ADD CONSTRAINT no_new_key_for_refused
         CHECK (user_id IS DISTINCT FROM 'refused' OR masked_ip NOT LIKE 'mp2.k2.%')",
    )
    .await
    .unwrap();
    // And one whose update a trigger skips (returns NULL).
    db.execute(
        "INSERT INTO user_logins (user_id, masked_ip, masked_device_id) VALUES ('hidden', $1, $2)",
        &[
            &old.mask("ip", "10.99.88.82"),
            &old.mask("device_id", "444-55-6666"),
        ],
    )
    .await
    .unwrap();
    db.batch_execute(
        "CREATE FUNCTION skip_hidden() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RETURN NULL; END $$;
         CREATE TRIGGER skip_hidden BEFORE UPDATE ON user_logins
             FOR EACH ROW WHEN (OLD.user_id = 'hidden') EXECUTE FUNCTION skip_hidden();",
    )
    .await
    .unwrap();

    let output = run_with_limit(rekey_command(&database_url, &[]), Duration::from_secs(60)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("7 values are not under key k2"), "{stdout}");
    assert!(
        stdout.contains("2 kept: the update changed no row (a trigger or row-level policy)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 kept: PostgreSQL refused the update (SQLSTATE 23514)"),
        "{stdout}"
    );
    assert!(!stdout.contains("still appearing"), "{stdout}");
    assert!(
        !format!("{stdout}{stderr}").contains("Failing row")
            && !format!("{stdout}{stderr}").contains("(refused"),
        "a row was quoted"
    );
    assert!(
        stdout.contains("1 kept: key id \"gone\" is not configured"),
        "{stdout}"
    );
    assert!(stdout.contains("1 kept: did not open"), "{stdout}");
    assert!(stdout.contains("1 kept: not a maskpipe value"), "{stdout}");
    assert!(stdout.contains("3 rows rewritten (4 values)"), "{stdout}");
    for plain in [
        "444-55-6666",
        "10.99.88",
        "111-22-3333",
        "333-44-5555",
        "mpls-router-1",
        OLD_HEX,
        NEW_HEX,
    ] {
        assert!(
            !stdout.contains(plain) && !stderr.contains(plain),
            "{plain} shown"
        );
    }

    // Kept values are exactly as they were; the rest moved.
    let new = new_keyring();
    let row = db
        .query_one(
            "SELECT masked_ip, masked_device_id FROM user_logins WHERE user_id = 'unknown'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), cases[0].1);
    assert_eq!(row.get::<_, &str>(1), new.mask("device_id", "111-22-3333"));
    let row = db
        .query_one(
            "SELECT masked_ip, masked_device_id FROM user_logins WHERE user_id = 'swapped'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), new.mask("ip", "10.99.88.78"));
    assert_eq!(row.get::<_, &str>(1), cases[1].2);
    let row = db
        .query_one(
            "SELECT masked_ip FROM user_logins WHERE user_id = 'clear'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "mpls-router-1");
    let row = db
        .query_one(
            "SELECT masked_ip FROM user_logins WHERE user_id = 'refused'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, &str>(0).starts_with("mp2.k1."));

    // Told to leave the unknown key's values (data to be shredded with that
    // key), and with the rest fixed, the rekey is clean.
    db.batch_execute(
        "DELETE FROM user_logins WHERE user_id IN ('swapped', 'clear');
         ALTER TABLE user_logins DROP CONSTRAINT no_new_key_for_refused;
         DROP TRIGGER skip_hidden ON user_logins",
    )
    .await
    .unwrap();
    let output = run_with_limit(
        rekey_command(&database_url, &["--skip-key", "gone"]),
        Duration::from_secs(60),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("1 values under skipped keys (--skip-key) left as they are"),
        "{stdout}"
    );
    let kept: i64 = db
        .query_one(
            "SELECT count(*) FROM user_logins WHERE masked_ip = $1",
            &[&cases[0].1],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the skipped key's value was rewritten");

    // A field that none of a column's values opens as is refused before
    // anything is rewritten: its mp1 values would be bound to it for good.
    db.batch_execute("CREATE TABLE other_logins (masked_x varchar(256))")
        .await
        .unwrap();
    let masked_as_ip = old.mask("ip", "10.1.1.1");
    // Made by the version 1 code under this key (k1) for "199.172.111.135":
    // bound to no field, so only the check can tell a wrong one.
    let legacy = "mp1.k1.yesJdrGIoffmj4Ke7Aqpln0LsStzIGqSjfmGm6zHzGJCAPnGiVGf4m1pWw";
    db.execute(
        "INSERT INTO other_logins VALUES ($1), ($2)",
        &[&masked_as_ip, &legacy],
    )
    .await
    .unwrap();
    let output = run_with_limit(
        rekey_command(
            &database_url,
            &["--column", "other_logins.masked_x=device_id"],
        ),
        Duration::from_secs(60),
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("none of its values opens as field \"device_id\""),
        "{stderr}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM other_logins WHERE masked_x LIKE 'mp2.k1.%' OR masked_x LIKE 'mp1.k1.%'"
        )
        .await,
        2
    );

    // With the right field, the column is walked beside the defaults, and
    // its version 1 value becomes the version 2 value of the same field.
    let output = run_with_limit(
        rekey_command(
            &database_url,
            &["--column", "other_logins.masked_x=ip", "--skip-key", "gone"],
        ),
        Duration::from_secs(60),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("other_logins (masked_x): 2 rows rewritten (2 values)"),
        "{stdout}"
    );
    let mut values: Vec<String> = db
        .query("SELECT masked_x FROM other_logins", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    values.sort();
    let mut expected = vec![
        new.mask("ip", "10.1.1.1"),
        new.mask("ip", "199.172.111.135"),
    ];
    expected.sort();
    assert_eq!(values, expected);

    // A column that does not exist, named explicitly, is an error.
    let output = run_with_limit(
        rekey_command(&database_url, &["--column", "login_devices.masked_ip=ip"]),
        Duration::from_secs(60),
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("no table login_devices"), "{stderr}");
}

/// `keygen --kms-key-id`'s lines, as an operator's env file holds them.
async fn kms_keygen(kms_key: &str, key_id: &str) -> Vec<(String, String)> {
    let mut command = maskpipe();
    command.args(["keygen", "--kms-key-id", kms_key, "--key-id", key_id]);
    let output = run_with_limit(command, Duration::from_secs(60)).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}");
    stdout
        .lines()
        .map(|line| {
            let (name, value) = line.split_once('=').expect("NAME=value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// maskpipe with a deployment's key settings: env lines, no plaintext key.
fn with_env(
    mut command: tokio::process::Command,
    env: &[(String, String)],
) -> tokio::process::Command {
    command
        .env_remove("MASKPIPE_MASTER_KEY")
        .env_remove("MASKPIPE_KEY_ID");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// The README's three commands, with keys held by (LocalStack's) KMS: keygen
/// under a KMS key, hosts restarted with the new key and the old one retired
/// as a ciphertext, then `rekey` with the same settings; afterwards the new
/// key alone opens all history.
#[tokio::test(flavor = "multi_thread")]
async fn the_three_rotation_commands_with_kms_held_keys() {
    let kms = aws_sdk_kms::Client::new(
        &aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
    );
    let kms_key = kms
        .create_key()
        .description("maskpipe rotation test")
        .send()
        .await
        .expect("LocalStack's KMS is not reachable: run `just up`")
        .key_metadata
        .and_then(|metadata| metadata.arn)
        .unwrap();
    let database_url = fresh_database().await;
    let queue = fresh_queue().await;
    let k1 = kms_keygen(&kms_key, "k1").await;
    let ciphertext = |env: &[(String, String)]| {
        env.iter()
            .find(|(name, _)| name == "MASKPIPE_MASTER_KEY_CIPHERTEXT")
            .map(|(_, value)| value.clone())
            .unwrap()
    };

    // History under k1.
    queue.send(&unique_logins("before", 30, 0)).await.unwrap();
    let before = with_env(
        drain_command(queue.queue_url(), &database_url, &component_path(), &[]),
        &k1,
    );
    let output = run_with_limit(before, Duration::from_secs(120)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // 1. keygen; 2. hosts on k2 with k1 retired; 3. rekey.
    let mut k2 = kms_keygen(&kms_key, "k2").await;
    k2.push((
        "MASKPIPE_RETIRED_KEY_CIPHERTEXTS".into(),
        format!("k1={}", ciphertext(&k1)),
    ));
    queue.send(&unique_logins("after", 30, 0)).await.unwrap();
    let after = with_env(
        drain_command(queue.queue_url(), &database_url, &component_path(), &[]),
        &k2,
    );
    let output = run_with_limit(after, Duration::from_secs(120)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let db = query_client(&database_url).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM user_logins WHERE masked_ip LIKE 'mp2.k1.%'"
        )
        .await,
        30
    );
    let mut rekey = maskpipe();
    rekey.args(["rekey", "--database-url", &database_url]);
    let output = run_with_limit(with_env(rekey, &k2), Duration::from_secs(120)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("30 rows rewritten (60 values)"), "{stdout}");

    // k1 dropped: the new key alone opens every row, old and new.
    let only_k2: Vec<(String, String)> = k2
        .into_iter()
        .filter(|(name, _)| name != "MASKPIPE_RETIRED_KEY_CIPHERTEXTS")
        .collect();
    let ips: Vec<String> = db
        .query("SELECT masked_ip FROM user_logins", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ips.len(), 60);
    assert!(ips.iter().all(|ip| ip.starts_with("mp2.k2.")), "{ips:?}");
    // Every login here has the sample's first ip: one masked value for all.
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 1);
    let mut reveal = maskpipe();
    reveal.args(["reveal", "--field", "ip", &ips[0]]);
    let output = run_with_limit(with_env(reveal, &only_k2), Duration::from_secs(60)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "199.172.111.135"
    );
}

/// A row written under a retired key behind the walk is caught by the final
/// count and walked again; rows that keep coming under a retired key (a host
/// never restarted) are reported, exit 1. A trigger plays the host.
#[tokio::test]
async fn values_written_behind_the_walk_are_walked_again_or_reported() {
    let (database_url, db) = database_with_tables().await;
    let old_ip = old_keyring().mask("ip", "10.7.7.7");
    db.batch_execute(&format!(
        "CREATE FUNCTION old_host() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF OLD.user_id = 'once' THEN
                 INSERT INTO user_logins (user_id, masked_ip) VALUES ('once-more', '{old_ip}');
             ELSIF OLD.user_id = 'always' THEN
                 INSERT INTO user_logins (user_id, masked_ip) VALUES ('always', '{old_ip}');
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER old_host AFTER UPDATE ON user_logins
             FOR EACH ROW EXECUTE FUNCTION old_host();
         INSERT INTO user_logins (user_id, masked_ip) VALUES ('once', '{old_ip}');"
    ))
    .await
    .unwrap();

    let output = run_with_limit(rekey_command(&database_url, &[]), Duration::from_secs(60)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("2 rows rewritten (2 values)"), "{stdout}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM user_logins WHERE masked_ip NOT LIKE 'mp2.k2.%'"
        )
        .await,
        0
    );

    db.execute(
        "INSERT INTO user_logins (user_id, masked_ip) VALUES ('always', $1)",
        &[&old_ip],
    )
    .await
    .unwrap();
    let output = run_with_limit(rekey_command(&database_url, &[]), Duration::from_secs(60)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("1 still appearing under a retired key: is a host still masking with one?"),
        "{stdout}"
    );
}
