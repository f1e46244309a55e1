//! Contract 1.0 end to end: the component declares its tables, the host
//! checks them against the live database (creating missing ones when
//! allowed, never altering), one message may fan out into several tables,
//! and the reference transform still writes the rows contract 0.4 wrote.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn devices_path() -> std::path::PathBuf {
    fixture_path("transform_devices")
}

/// `count` valid logins whose `app_version` is `n` (as `x.y.z`) and whose
/// user id is `tag-n`: every row, in every table, names its message.
fn numbered_logins(tag: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| numbered_login(tag, n)).collect()
}

/// The `n`th of [`numbered_logins`].
fn numbered_login(tag: &str, n: usize) -> String {
    login_numbered(tag, n).replace(
        "\"2.3.0\"",
        &format!("\"{}.{}.{}\"", n / 10_000, (n / 100) % 100, n % 100),
    )
}

/// `maskpipe run` on `transform`, its stderr collected.
fn start_host(queue: &str, database: &str, transform: &Path, extra: &[&str]) -> LoggedHost {
    let mut command = maskpipe();
    command
        .args(["run", "--wait-seconds", "1", "--progress-seconds", "0"])
        .args(["--queue", queue, "--database-url", database])
        .arg("--transform")
        .arg(transform)
        .args(extra);
    LoggedHost::spawn(command)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swap_whose_column_is_missing_is_refused_then_accepted_after_alter_table() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let deploy_dir = temp_dir("maskpipe-contract-swap");
    let live = deploy_dir.join("transform.wasm");
    std::fs::copy(component_path(), &live).unwrap();
    std::fs::copy(
        repo_root().join("transform-wasm/vectors.jsonl"),
        maskpipe::swap::vectors_path(&live),
    )
    .unwrap();
    let host = start_host(queue.queue_url(), &database, &live, &["--pollers", "2"]);

    // Continuous load: unique logins, ten every 20 ms, until told to stop.
    let load = ContinuousLoad::start(&queue, |n| numbered_login("alter", n));
    let processed = || try_count(&database, "SELECT count(*) FROM maskpipe_processed");
    wait_for(
        "rows from the reference",
        Duration::from_secs(60),
        async || processed().await >= 100,
    )
    .await;

    // A component whose user_logins has a column the live table lacks.
    let country = fixture_path("fixture_country");
    std::fs::remove_file(maskpipe::swap::vectors_path(&live)).unwrap();
    std::fs::copy(&country, live.with_extension("wasm.tmp")).unwrap();
    std::fs::rename(live.with_extension("wasm.tmp"), &live).unwrap();
    wait_for(
        "the swap to be refused",
        Duration::from_secs(60),
        async || host.logged("refused the new transform").is_some(),
    )
    .await;
    let refusal = host.logged("refused the new transform").unwrap();
    assert!(
        refusal.contains("column `user_logins.country` is missing")
            && refusal.contains("ALTER TABLE user_logins ADD COLUMN country varchar(2)"),
        "{refusal}"
    );
    // Still running the reference, and never altered the table itself.
    let db = query_client(&database).await;
    let at_refusal = processed().await;
    wait_for(
        "the reference to keep running",
        Duration::from_secs(60),
        async || processed().await >= at_refusal + 100,
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'user_logins' AND column_name = 'country'"
        )
        .await,
        0
    );

    // The operator runs the DDL the refusal named, then asks for the swap.
    db.batch_execute("ALTER TABLE user_logins ADD COLUMN country varchar(2)")
        .await
        .unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &host.child.id().unwrap().to_string()])
        .status()
        .unwrap();
    wait_for("the swap", Duration::from_secs(60), async || {
        host.logged("swapped transform").is_some()
    })
    .await;
    wait_for("rows with a country", Duration::from_secs(60), async || {
        try_count(
            &database,
            "SELECT count(*) FROM user_logins WHERE country = 'RU'",
        )
        .await
            >= 100
    })
    .await;

    let total = load.stop().await;
    wait_for("the queue to drain", Duration::from_secs(120), async || {
        processed().await >= total
    })
    .await;
    host.stop().await;
    assert_exactly_once(&database, total, 0).await;
    // Rows before the swap have no country, rows after have the sample's.
    let without = count(
        &db,
        "SELECT count(*) FROM user_logins WHERE country IS NULL",
    )
    .await;
    let with = count(&db, "SELECT count(*) FROM user_logins WHERE country = 'RU'").await;
    assert_eq!(without + with, total);
    assert!(without >= 200 && with >= 100, "{without} {with}");
    std::fs::remove_dir_all(&deploy_dir).ok();
}

/// `(column, type, max length, nullable)` of a table, in column order.
async fn columns_of(
    db: &tokio_postgres::Client,
    table: &str,
) -> Vec<(String, String, Option<i32>, String)> {
    db.query(
        "SELECT column_name::text, data_type::text, character_maximum_length, is_nullable::text \
         FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_tables_are_created_when_allowed_and_named_with_their_ddl_when_not() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    queue.send(&numbered_logins("create", 20)).await.unwrap();

    // Not allowed: startup stops with the DDL to run, and creates nothing.
    let mut refused = drain_command(queue.queue_url(), &database, &devices_path(), &[]);
    refused.env("MASKPIPE_CREATE_TABLES", "false");
    let output = run_with_limit(refused, Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for ddl in [
        "CREATE TABLE IF NOT EXISTS user_logins (user_id varchar(128), device_type varchar(32), \
         masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), \
         app_version integer, create_date date)",
        "CREATE TABLE IF NOT EXISTS login_devices (device_type varchar(32) NOT NULL, \
         app_version integer, day date NOT NULL)",
    ] {
        assert!(stderr.contains(ddl), "{ddl} not in:\n{stderr}");
    }
    let db = query_client(&database).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_name IN ('user_logins', 'login_devices')"
        )
        .await,
        0
    );
    assert_eq!(
        queue.depth().await.unwrap().visible,
        20,
        "nothing was taken"
    );

    // Allowed: both tables are made from the declaration, then filled.
    let output = run_with_limit(
        drain_command(queue.queue_url(), &database, &devices_path(), &[]),
        Duration::from_secs(120),
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = |name: &str, length: i32| {
        (
            name.to_owned(),
            "character varying".to_owned(),
            Some(length),
            "YES".to_owned(),
        )
    };
    let typed = |name: &str, kind: &str, nullable: &str| {
        (name.to_owned(), kind.to_owned(), None, nullable.to_owned())
    };
    assert_eq!(
        columns_of(&db, "user_logins").await,
        vec![
            text("user_id", 128),
            text("device_type", 32),
            text("masked_ip", 256),
            text("masked_device_id", 256),
            text("locale", 32),
            typed("app_version", "integer", "YES"),
            typed("create_date", "date", "YES"),
        ]
    );
    assert_eq!(
        columns_of(&db, "login_devices").await,
        vec![
            (
                "device_type".to_owned(),
                "character varying".to_owned(),
                Some(32),
                "NO".to_owned()
            ),
            typed("app_version", "integer", "YES"),
            typed("day", "date", "NO"),
        ]
    );
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 20);
    assert_eq!(count(&db, "SELECT count(*) FROM login_devices").await, 20);
    // A second start finds the tables as declared and changes nothing.
    queue.send(&numbered_logins("again", 5)).await.unwrap();
    let mut again = drain_command(queue.queue_url(), &database, &devices_path(), &[]);
    again.env("MASKPIPE_CREATE_TABLES", "false");
    let output = run_with_limit(again, Duration::from_secs(120)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(count(&db, "SELECT count(*) FROM login_devices").await, 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_under_kill_9_is_exactly_once_in_every_table() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let client = maskpipe::source::SqsSource::client().await;
    client
        .set_queue_attributes()
        .queue_url(queue.queue_url())
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "2",
        )
        .send()
        .await
        .unwrap();
    const VALID: i64 = 3_000;
    let mut bodies = numbered_logins("fan", VALID as usize);
    for n in 0..30 {
        bodies.insert(
            n * 97 % bodies.len(),
            format!("{{\"foo\": \"fan-bad-{n}\"}}"),
        );
    }
    queue.send(&bodies).await.unwrap();

    let mut killed_mid_stream = 0;
    for round in 0..4 {
        let before = try_count(&database, "SELECT count(*) FROM maskpipe_processed").await;
        let mut host = maskpipe()
            .args([
                "run",
                "--wait-seconds",
                "1",
                "--progress-seconds",
                "0",
                "--pollers",
                "4",
            ])
            .args(["--queue", queue.queue_url(), "--database-url", &database])
            .arg("--transform")
            .arg(devices_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the host to write", Duration::from_secs(60), async || {
            try_count(&database, "SELECT count(*) FROM maskpipe_processed").await > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50 + 80 * round)).await;
        host.start_kill().unwrap(); // SIGKILL
        host.wait().await.unwrap();
        let written = try_count(&database, "SELECT count(*) FROM maskpipe_processed").await;
        println!("round {round}: killed after {written} of 3030 processed");
        killed_mid_stream += usize::from(written < 3_030);
    }
    assert!(
        killed_mid_stream >= 2,
        "the kills came too late to test anything"
    );
    // What is left, to the end.
    drain_until_empty_with(&queue, &database, None, &devices_path()).await;

    // Each message's rows, in both tables, exactly once.
    assert_exactly_once(&database, VALID, 30).await;
    let db = query_client(&database).await;
    for table in ["user_logins", "login_devices"] {
        assert_eq!(
            count(&db, &format!("SELECT count(*) FROM {table}")).await,
            VALID,
            "{table}"
        );
        assert_eq!(
            count(
                &db,
                &format!("SELECT count(DISTINCT app_version) FROM {table}")
            )
            .await,
            VALID,
            "{table}"
        );
    }
    // And the two rows of a message agree.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM user_logins u JOIN login_devices d USING (app_version) \
             WHERE d.device_type = u.device_type AND d.day = u.create_date"
        )
        .await,
        VALID
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overflow_limits_come_from_the_declaration() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    // `country` is declared varchar(2) and holds the locale upper-cased:
    // "RU" fits; "en-US" fits the declared locale varchar(32) but not it.
    let template = sample_bodies()[0].clone();
    let bodies = vec![
        template.replace("424cdd21-063a-43a7-b91b-7ca1a833afae", "fits"),
        template
            .replace("424cdd21-063a-43a7-b91b-7ca1a833afae", "overflows")
            .replace("\"RU\"", "\"en-US\""),
    ];
    queue.send(&bodies).await.unwrap();
    let output = run_with_limit(
        drain_command(
            queue.queue_url(),
            &database,
            &fixture_path("fixture_country"),
            &[],
        ),
        Duration::from_secs(120),
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let db = query_client(&database).await;
    let rows = db
        .query("SELECT user_id, country FROM user_logins", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, &str>(0), "fits");
    assert_eq!(rows[0].get::<_, &str>(1), "RU");
    let dead = db
        .query_one("SELECT reason, detail FROM maskpipe_dead_letters", &[])
        .await
        .unwrap();
    assert_eq!(dead.get::<_, &str>(0), "column_overflow");
    assert_eq!(
        dead.get::<_, &str>(1),
        "column `user_logins.country` would exceed varchar(2)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_gives_the_rows_contract_0_4_gave() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    queue.send(&sample_bodies()).await.unwrap();
    let output = drain(&queue, &database, &[]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let db = query_client(&database).await;
    // Byte for byte what the 0.4.0 host and reference transform wrote for
    // the sample under this key (host/tests/golden/, made by 38f7f05).
    let rows: Vec<String> = db
        .query(
            "SELECT concat_ws(E'\\t', user_id, device_type, masked_ip, masked_device_id, \
                     coalesce(locale, '\\N'), app_version::text) \
             FROM user_logins ORDER BY user_id, device_type, masked_ip, masked_device_id, \
                     locale, app_version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let golden =
        std::fs::read_to_string(repo_root().join("host/tests/golden/sample_user_logins.tsv"))
            .unwrap();
    let golden: Vec<&str> = golden.lines().collect();
    assert_eq!(golden.len(), 99);
    assert_eq!(rows, golden);
    // create_date is the day SQS stamped the message: today, in UTC.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM user_logins \
             WHERE create_date BETWEEN (now() AT TIME ZONE 'UTC')::date - 1 \
                                   AND (now() AT TIME ZONE 'UTC')::date"
        )
        .await,
        99
    );
    let dead = db
        .query("SELECT reason FROM maskpipe_dead_letters", &[])
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get::<_, &str>(0), "wrong_schema");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_of_no_rows_is_skipped_in_the_ledger_even_one_made_before_1_0() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    // The ledger as contract 0.4's host made it: no `skipped` outcome.
    let db = query_client(&database).await;
    db.batch_execute(
        "CREATE TABLE maskpipe_processed (
             message_id text PRIMARY KEY,
             outcome text NOT NULL CHECK (outcome IN ('row', 'dead_letter')),
             component_digest text NOT NULL,
             processed_at timestamptz NOT NULL DEFAULT now()
         );
         INSERT INTO maskpipe_processed (message_id, outcome, component_digest)
         VALUES ('from-0.4', 'row', 'old')",
    )
    .await
    .unwrap();
    let template = sample_bodies()[0].clone();
    let login = |id: &str| template.replace("424cdd21-063a-43a7-b91b-7ca1a833afae", id);
    queue
        .send(&[login("one"), login("NOROWS"), login("TWOROWS")])
        .await
        .unwrap();
    let output = run_with_limit(
        drain_command(
            queue.queue_url(),
            &database,
            &fixture_path("fixture_hostile"),
            &[],
        ),
        Duration::from_secs(120),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("rows written        3"), "{stdout}");
    assert!(stdout.contains("made no rows        1"), "{stdout}");
    let outcomes: Vec<(String, String)> = db
        .query(
            "SELECT message_id, outcome FROM maskpipe_processed ORDER BY outcome, message_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(outcomes.len(), 4);
    assert_eq!(
        outcomes.iter().filter(|(_, o)| o == "row").count(),
        3,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|(_, o)| o == "skipped").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 3);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM user_logins WHERE user_id = 'TWOROWS'"
        )
        .await,
        2
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_dead_letters").await,
        0
    );
    // The widened check still refuses what no host writes.
    assert!(
        db.execute(
            "INSERT INTO maskpipe_processed (message_id, outcome, component_digest) \
             VALUES ('x', 'bogus', 'd')",
            &[],
        )
        .await
        .is_err()
    );
}
