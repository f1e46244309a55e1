//! Declared tables against a real PostgreSQL: created when allowed, never
//! altered, and every mismatch named with the DDL that fixes it.

mod common;

use common::*;
use maskpipe::schema::catalog::{self, CatalogError, Problem};
use maskpipe::schema::{Column, ColumnType, Schema, Table};

fn column(name: &str, kind: ColumnType, nullable: bool) -> Column {
    Column {
        name: name.into(),
        kind,
        nullable,
        pii: None,
    }
}

fn text(name: &str, max_chars: u32) -> Column {
    column(name, ColumnType::Text { max_chars }, true)
}

/// `user_logins` as the take-home declares it.
fn user_logins() -> Table {
    Table {
        name: "user_logins".into(),
        columns: vec![
            text("user_id", 128),
            text("device_type", 32),
            text("masked_ip", 256),
            text("masked_device_id", 256),
            text("locale", 32),
            column("app_version", ColumnType::Integer, true),
            column("create_date", ColumnType::Date, true),
        ],
    }
}

fn login_devices() -> Table {
    Table {
        name: "login_devices".into(),
        columns: vec![
            column("device_type", ColumnType::Text { max_chars: 32 }, false),
            column("app_version", ColumnType::Integer, true),
            column("day", ColumnType::Date, false),
        ],
    }
}

const TAKE_HOME_DDL: &str = "CREATE TABLE user_logins(
    user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
    masked_device_id varchar(256), locale varchar(32), app_version integer,
    create_date date)";

/// Each column as the catalog spells it: name, type, NOT NULL.
async fn columns_of(db: &tokio_postgres::Client, table: &str) -> Vec<(String, String, bool)> {
    db.query(
        "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
         WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

fn problems(result: Result<(), CatalogError>) -> Vec<Problem> {
    match result {
        Err(CatalogError::Mismatch(problems)) => problems,
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_table_is_created_from_its_declaration_only_when_allowed() {
    let database = fresh_database().await;
    let mut db = query_client(&database).await;
    let schema = Schema::new(vec![login_devices()]).unwrap();

    let refused = problems(catalog::prepare(&mut db, &schema, false).await);
    assert_eq!(refused.len(), 1, "{refused:?}");
    let message = CatalogError::Mismatch(refused).to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(
        message.contains("table `login_devices` does not exist")
            && message.contains("CREATE TABLE IF NOT EXISTS login_devices ("),
        "{message}"
    );
    assert!(columns_of(&db, "login_devices").await.is_empty());

    catalog::prepare(&mut db, &schema, true).await.unwrap();
    let created = columns_of(&db, "login_devices").await;
    let expected = [
        ("device_type", "character varying(32)", true),
        ("app_version", "integer", false),
        ("day", "date", true),
    ];
    assert_eq!(
        created,
        expected.map(|(n, t, nn)| (n.to_owned(), t.to_owned(), nn))
    );
    // Again: it exists and fits, nothing to do.
    catalog::prepare(&mut db, &schema, true).await.unwrap();
}

#[tokio::test]
async fn hosts_starting_together_create_a_table_once() {
    let database = fresh_database().await;
    let schema = Schema::new(vec![login_devices(), user_logins()]).unwrap();
    let mut hosts = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut client = query_client(&database).await;
        let schema = schema.clone();
        hosts.spawn(async move { catalog::prepare(&mut client, &schema, true).await });
    }
    while let Some(prepared) = hosts.join_next().await {
        prepared.unwrap().unwrap();
    }
    let db = query_client(&database).await;
    assert_eq!(columns_of(&db, "user_logins").await.len(), 7);
}

#[tokio::test]
async fn the_take_home_table_fits_and_a_new_column_names_the_ddl_to_add_it() {
    let database = fresh_database().await;
    let mut db = query_client(&database).await;
    db.batch_execute(TAKE_HOME_DDL).await.unwrap();
    let before = columns_of(&db, "user_logins").await;

    // The declaration creates exactly the take-home table.
    let declared = Schema::new(vec![user_logins()]).unwrap();
    catalog::prepare(&mut db, &declared, true).await.unwrap();
    let other = fresh_database().await;
    let mut created_db = query_client(&other).await;
    catalog::prepare(&mut created_db, &declared, true)
        .await
        .unwrap();
    assert_eq!(columns_of(&created_db, "user_logins").await, before);

    // A transform that adds a column is refused with the DDL that fits;
    // even with creation allowed the host alters nothing.
    let mut wider = user_logins();
    wider.columns.push(text("country", 2));
    let wider = Schema::new(vec![wider]).unwrap();
    let found = problems(catalog::prepare(&mut db, &wider, true).await);
    assert_eq!(
        found.iter().map(Problem::to_string).collect::<Vec<_>>(),
        ["column `user_logins.country` is missing: \
          `ALTER TABLE user_logins ADD COLUMN country varchar(2)`"]
    );
    assert_eq!(columns_of(&db, "user_logins").await, before);

    // The operator runs it; then the transform fits.
    db.batch_execute(&found[0].fix).await.unwrap();
    catalog::prepare(&mut db, &wider, false).await.unwrap();
}

#[tokio::test]
async fn every_incompatible_column_is_named_and_its_fix_makes_it_fit() {
    let database = fresh_database().await;
    let mut db = query_client(&database).await;
    db.batch_execute(
        "CREATE TABLE events (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            short varchar(10),
            required text NOT NULL,
            small integer,
            wide bigint,
            flag text,
            extra integer NOT NULL,
            extra_with_default integer NOT NULL DEFAULT 0,
            defaulted integer NOT NULL DEFAULT 0,
            amount numeric(5, 2),
            \"Mixed Case\" text NOT NULL
        )",
    )
    .await
    .unwrap();
    let events = Table {
        name: "events".into(),
        columns: vec![
            text("short", 20),
            text("required", 5),
            column("small", ColumnType::Bigint, true),
            column("wide", ColumnType::Integer, true),
            column("flag", ColumnType::Boolean, true),
            // NOT NULL DEFAULT 0 does not take the host's explicit NULL.
            column("defaulted", ColumnType::Integer, true),
            // numeric(5, 2) holds 999.99 at most.
            column("amount", ColumnType::Integer, true),
        ],
    };
    // A second table that does not exist: creating it is allowed, but the
    // schema as a whole does not fit, so nothing is left half-made.
    let schema = Schema::new(vec![events, login_devices()]).unwrap();
    let found = problems(catalog::prepare(&mut db, &schema, true).await);
    let described: Vec<String> = found.iter().map(Problem::to_string).collect();
    assert_eq!(
        described,
        [
            "column `events.short` is character varying(10), which cannot take the declared \
             varchar(20): `ALTER TABLE events ALTER COLUMN short TYPE varchar(20)`",
            "column `events.required` is NOT NULL, but the transform may leave it empty: \
             `ALTER TABLE events ALTER COLUMN required DROP NOT NULL`",
            "column `events.small` is integer, which cannot take the declared bigint: \
             `ALTER TABLE events ALTER COLUMN small TYPE bigint`",
            "column `events.flag` is text, which cannot take the declared boolean: \
             `ALTER TABLE events ALTER COLUMN flag TYPE boolean USING flag::boolean`",
            "column `events.defaulted` is NOT NULL, but the transform may leave it empty: \
             `ALTER TABLE events ALTER COLUMN defaulted DROP NOT NULL`",
            "column `events.amount` is numeric(5,2), which cannot take the declared integer: \
             `ALTER TABLE events ALTER COLUMN amount TYPE integer`",
            "column `events.extra` is NOT NULL without a default, and the transform writes no \
             value to it: `ALTER TABLE events ALTER COLUMN extra DROP NOT NULL`",
            "column `events.\"Mixed Case\"` is NOT NULL without a default, and the transform \
             writes no value to it: \
             `ALTER TABLE events ALTER COLUMN \"Mixed Case\" DROP NOT NULL`",
        ],
        "{described:#?}"
    );
    assert!(columns_of(&db, "login_devices").await.is_empty());

    for problem in &found {
        db.batch_execute(&problem.fix).await.unwrap();
    }
    catalog::prepare(&mut db, &schema, true).await.unwrap();
    assert_eq!(columns_of(&db, "login_devices").await.len(), 3);
}

#[tokio::test]
async fn a_view_or_generated_column_is_not_a_place_to_write_and_the_fixes_work() {
    let database = fresh_database().await;
    let mut db = query_client(&database).await;
    db.batch_execute(
        "CREATE VIEW login_devices AS SELECT 'x'::varchar(32) AS device_type;
         CREATE TABLE counted (
             n integer GENERATED ALWAYS AS IDENTITY,
             label text,
             doubled integer GENERATED ALWAYS AS (length(label) * 2) STORED
         )",
    )
    .await
    .unwrap();
    let counted = Table {
        name: "counted".into(),
        columns: vec![
            column("n", ColumnType::Integer, true),
            text("label", 5),
            column("doubled", ColumnType::Integer, true),
        ],
    };
    let schema = Schema::new(vec![login_devices(), counted]).unwrap();
    let found = problems(catalog::prepare(&mut db, &schema, true).await);
    let described: Vec<String> = found.iter().map(Problem::to_string).collect();
    assert_eq!(
        described,
        [
            "table `login_devices` is a view, not a table: \
             `ALTER VIEW login_devices RENAME TO login_devices_old`",
            "column `counted.n` is generated by the database, so no value can be written to \
             it: `ALTER TABLE counted ALTER COLUMN n DROP IDENTITY, ALTER COLUMN n DROP NOT NULL`",
            "column `counted.doubled` is generated by the database, so no value can be written \
             to it: `ALTER TABLE counted ALTER COLUMN doubled DROP EXPRESSION`",
        ],
        "{described:#?}"
    );
    for problem in &found {
        db.batch_execute(&problem.fix).await.unwrap();
    }
    catalog::prepare(&mut db, &schema, true).await.unwrap();
    assert_eq!(columns_of(&db, "login_devices").await.len(), 3);
}
