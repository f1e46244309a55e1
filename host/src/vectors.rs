//! Golden vectors: proving a transform component correct in wasm isolation.
//!
//! A vectors file has one JSON object per line:
//!
//! ```json
//! {"name": "sample", "body": "{\"user_id\": …}", "sent_timestamp_ms": 1670839200000,
//!  "expect": {"row": {"user_id": "…", "masked_ip": {"mask": ["ip", "1.2.3.4"]}, "app_version": 20300,
//!                     "create_date": "2022-12-12", …}}}
//! {"name": "fan-out", "body": "…", "expect": {"rows": {"user_logins": [{…}], "login_devices": [{…}]}}}
//! {"name": "wrong schema", "body": "{\"foo\": 1}", "expect": {"rejected": "wrong_schema"}}
//! ```
//!
//! `{"row": {…}}` is exactly one row, in the component's first declared
//! table; `{"rows": {table: [{…}, …]}}` is exactly these rows in each table
//! named, in order, and none in any other (`{"rows": {}}`: the message is
//! skipped). A declared column left out of an expected row must be NULL.
//!
//! Vectors run under a fixed, public test key, so `{"mask": [field, value]}`
//! (or `{"pseudonymize": [field, value]}`) stands for the exact text the host
//! stores, and expectations stay readable. Other values are written as JSON
//! spells them: text, numeric and uuid as strings, integers and doubles as
//! numbers, dates as `YYYY-MM-DD`, timestamps in RFC 3339, jsonb as the JSON
//! itself. `sent_timestamp_ms` defaults to 2022-12-12T10:00:00Z.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{Map, Value as Json};

use crate::masking::{Keyring, MasterKey};
use crate::record::{Outcome, TableRow, Value};
use crate::runtime::{self, Limits, Transform};
use crate::schema::{ColumnType, Schema, Table};
use crate::source::{MAX_BATCH, Received};

/// The public key vectors are written against. Never a real key.
pub const TEST_KEY_HEX: &str = "7465737420766563746f7273206f6e6c79202d206e6f7420612072656b6579ff";
pub const TEST_KEY_ID: &str = "test";
const DEFAULT_SENT_MS: u64 = 1_670_839_200_000;

pub fn test_keyring() -> Arc<Keyring> {
    let key = MasterKey::parse(TEST_KEY_HEX).expect("the test key is valid");
    Arc::new(Keyring::new(TEST_KEY_ID, &key, &[]).expect("the test key id is valid"))
}

/// An expected row: column name to value, protections already resolved.
pub type Cells = Map<String, Json>;

#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// Exactly one row, in the first declared table.
    Row(Cells),
    /// Exactly these rows per table (tables not named: none).
    Rows(BTreeMap<String, Vec<Cells>>),
    Rejected(String),
}

impl Expected {
    fn expects_rows(&self) -> bool {
        match self {
            Expected::Row(_) => true,
            Expected::Rows(tables) => tables.values().any(|rows| !rows.is_empty()),
            Expected::Rejected(_) => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Vector {
    pub line: usize,
    pub name: String,
    pub message: Received,
    pub expect: Expected,
}

/// A vector whose outcome differed from its expectation.
#[derive(Debug, Clone)]
pub struct Failure {
    pub line: usize,
    pub name: String,
    pub diff: String,
}

/// Parses a vectors file; `keyring` resolves `{"mask": …}` expectations.
pub fn parse(text: &str, keyring: &Keyring) -> Result<Vec<Vector>> {
    let mut vectors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() || line.trim_start().starts_with("//") {
            continue;
        }
        let vector = parse_line(line, line_no, keyring)
            .with_context(|| format!("vectors line {line_no}"))?;
        vectors.push(vector);
    }
    Ok(vectors)
}

fn parse_line(line: &str, line_no: usize, keyring: &Keyring) -> Result<Vector> {
    let value: Json = serde_json::from_str(line).context("not a JSON object")?;
    let body = value["body"].as_str().context("`body` must be a string")?;
    let sent_timestamp_ms = match &value["sent_timestamp_ms"] {
        Json::Null => DEFAULT_SENT_MS,
        other => other
            .as_u64()
            .context("`sent_timestamp_ms` must be an unsigned integer")?,
    };
    let expect = &value["expect"];
    let expect = match (&expect["row"], &expect["rows"], &expect["rejected"]) {
        (Json::Object(row), Json::Null, Json::Null) => Expected::Row(parse_row(row, keyring)?),
        (Json::Null, Json::Object(tables), Json::Null) => {
            let mut expected = BTreeMap::new();
            for (table, rows) in tables {
                let rows = rows
                    .as_array()
                    .with_context(|| format!("`rows.{table}` must be an array of rows"))?;
                let rows = rows
                    .iter()
                    .map(|row| match row {
                        Json::Object(row) => parse_row(row, keyring),
                        _ => bail!("`rows.{table}` must hold objects"),
                    })
                    .collect::<Result<_>>()?;
                expected.insert(table.clone(), rows);
            }
            Expected::Rows(expected)
        }
        (Json::Null, Json::Null, Json::String(code)) => Expected::Rejected(code.clone()),
        _ => bail!(
            "`expect` must be {{\"row\": {{…}}}}, {{\"rows\": {{\"table\": [{{…}}]}}}} or {{\"rejected\": \"code\"}}"
        ),
    };
    Ok(Vector {
        line: line_no,
        name: value["name"].as_str().unwrap_or("").to_owned(),
        message: Received::local(format!("vector-{line_no}"), body, sent_timestamp_ms),
        expect,
    })
}

/// Resolves `{"mask": [field, value]}` and `{"pseudonymize": …}` to the
/// text the host would store; every other value is kept as written.
fn parse_row(row: &Cells, keyring: &Keyring) -> Result<Cells> {
    let mut cells = Cells::new();
    for (column, value) in row {
        let resolved = match value {
            Json::Object(spec) if spec.len() == 1 => {
                let (function, args) = spec.iter().next().expect("one entry");
                let protect = match function.as_str() {
                    "mask" => Some(Keyring::mask as fn(&Keyring, &str, &str) -> String),
                    "pseudonymize" => {
                        Some(Keyring::pseudonymize as fn(&Keyring, &str, &str) -> String)
                    }
                    _ => None,
                };
                match protect {
                    Some(protect) => {
                        let (Some(field), Some(plain)) = (
                            args.get(0).and_then(Json::as_str),
                            args.get(1).and_then(Json::as_str),
                        ) else {
                            bail!("`{column}`: {function} takes [field, value], both strings");
                        };
                        Json::String(protect(keyring, field, plain))
                    }
                    // A jsonb value that happens to have one key.
                    None => value.clone(),
                }
            }
            other => other.clone(),
        };
        cells.insert(column.clone(), resolved);
    }
    Ok(cells)
}

/// Golden vectors stand in for the built-in canary only with at least this
/// many, among them at least one expected row and one expected rejection:
/// an empty or token file must not be a way around validation.
pub const MIN_VECTORS: usize = 5;

/// Whether `vectors` are enough to validate a component without the full
/// canary (see [`MIN_VECTORS`]).
pub fn suffice(vectors: &[Vector]) -> bool {
    vectors.len() >= MIN_VECTORS
        && vectors.iter().any(|v| v.expect.expects_rows())
        && vectors
            .iter()
            .any(|v| matches!(v.expect, Expected::Rejected(_)))
}

/// Runs every vector through `transform` in batches, as the pipeline would,
/// and returns the ones that failed.
pub async fn check(transform: &Arc<Transform>, vectors: &[Vector]) -> Result<Vec<Failure>> {
    let mut worker = transform.worker(test_keyring()).await?;
    let schema = transform.schema();
    let mut failures = Vec::new();
    for chunk in vectors.chunks(MAX_BATCH) {
        let messages: Vec<Received> = chunk.iter().map(|v| v.message.clone()).collect();
        let outcomes = worker.run(&messages).await?;
        for (vector, outcome) in chunk.iter().zip(outcomes) {
            if let Some(diff) = compare(schema, &vector.expect, &outcome) {
                failures.push(Failure {
                    line: vector.line,
                    name: vector.name.clone(),
                    diff,
                });
            }
        }
    }
    Ok(failures)
}

/// Loads `component` and runs the vectors file through it: how many vectors
/// there were, and which failed. A file with no vectors is an error: it
/// would pass any component.
pub async fn check_file(component: &Path, vectors_file: &Path) -> Result<(usize, Vec<Failure>)> {
    check_file_with(&runtime::engine()?, component, vectors_file).await
}

/// [`check_file`] on `engine` (one with a compile cache, say).
pub async fn check_file_with(
    engine: &wasmtime::Engine,
    component: &Path,
    vectors_file: &Path,
) -> Result<(usize, Vec<Failure>)> {
    let text = std::fs::read_to_string(vectors_file)
        .with_context(|| format!("cannot read vectors {}", vectors_file.display()))?;
    let vectors = parse(&text, &test_keyring())?;
    if vectors.is_empty() {
        bail!(
            "no vectors in {}: an empty vectors file proves nothing",
            vectors_file.display()
        );
    }
    let transform = Arc::new(Transform::load(engine, component, Limits::default()).await?);
    let failures = check(&transform, &vectors).await?;
    Ok((vectors.len(), failures))
}

/// For a transform crate's own tests: panics with every diff unless all
/// vectors pass, and when there are none.
pub fn assert_all_pass(component: &Path, vectors_file: &Path) {
    assert!(
        component.exists(),
        "{} is missing: build it first (`just build-transform`, which `just test` runs)",
        component.display()
    );
    let (count, failures) = runtime::block_on(check_file(component, vectors_file))
        .unwrap_or_else(|error| panic!("cannot run vectors: {error:#}"));
    let report: String = failures
        .iter()
        .map(|f| format!("line {} ({}):\n{}", f.line, f.name, f.diff))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {count} vectors failed:\n{report}",
        failures.len()
    );
}

/// `None` when the outcome is what was expected, else a readable diff.
fn compare(schema: &Schema, expected: &Expected, actual: &Outcome) -> Option<String> {
    let rows = match (expected, actual) {
        (Expected::Rejected(code), Outcome::Rejected(rejection)) if *code == rejection.code => {
            return None;
        }
        (Expected::Row(row), Outcome::Rows(rows)) => {
            let first = &schema.tables()[0].name;
            compare_tables(
                schema,
                &BTreeMap::from([(first.clone(), vec![row.clone()])]),
                rows,
            )
        }
        (Expected::Rows(tables), Outcome::Rows(rows)) => compare_tables(schema, tables, rows),
        (expected, actual) => {
            return Some(format!(
                "  expected {}, got {}\n",
                describe_expected(expected),
                describe_outcome(actual)
            ));
        }
    };
    (!rows.is_empty()).then_some(rows)
}

/// Every difference between expected and actual rows, table by table.
fn compare_tables(
    schema: &Schema,
    expected: &BTreeMap<String, Vec<Cells>>,
    actual: &[TableRow],
) -> String {
    let mut diff = String::new();
    for name in expected.keys() {
        if schema.table(name).is_none() {
            let _ = writeln!(diff, "  table `{name}` is not one the component declares");
        }
    }
    for (index, table) in schema.tables().iter().enumerate() {
        let want = expected.get(&table.name).map_or(&[][..], Vec::as_slice);
        let got: Vec<&TableRow> = actual.iter().filter(|row| row.table == index).collect();
        if want.len() != got.len() {
            let _ = writeln!(
                diff,
                "  {}: expected {} rows, got {}",
                table.name,
                want.len(),
                got.len()
            );
            continue;
        }
        for (number, (want, got)) in want.iter().zip(got).enumerate() {
            compare_row(table, number, want, got, &mut diff);
        }
    }
    diff
}

fn compare_row(table: &Table, number: usize, want: &Cells, got: &TableRow, diff: &mut String) {
    // `user_logins.user_id`, or `login_devices[1].day` past a table's first row.
    let at = |column: &str| match number {
        0 => format!("{}.{column}", table.name),
        n => format!("{}[{n}].{column}", table.name),
    };
    for column in want.keys() {
        if !table.columns.iter().any(|c| c.name == *column) {
            let _ = writeln!(diff, "  {}: no such column", at(column));
        }
    }
    for (column, got) in table.columns.iter().zip(&got.values) {
        let want = want.get(&column.name).unwrap_or(&Json::Null);
        if !matches(column.kind, want, got.as_ref()) {
            let _ = writeln!(
                diff,
                "  {}: expected {}, got {}",
                at(&column.name),
                if want.is_null() {
                    "NULL".into()
                } else {
                    want.to_string()
                },
                show(got.as_ref())
            );
        }
    }
}

/// Whether a stored value is the one a vector wrote, as its column's type
/// reads it (a timestamp in any RFC 3339 offset, a double as any number).
fn matches(kind: ColumnType, want: &Json, got: Option<&Value>) -> bool {
    let Some(got) = got else {
        return want.is_null();
    };
    match got {
        Value::Text(text) | Value::Numeric(text) | Value::Uuid(text) => {
            want.as_str() == Some(text.as_str())
        }
        Value::Integer(v) => want.as_i64() == Some(i64::from(*v)),
        Value::Bigint(v) => want.as_i64() == Some(*v),
        Value::Boolean(v) => want.as_bool() == Some(*v),
        Value::Double(v) => want.as_f64() == Some(*v),
        Value::Date(date) => {
            want.as_str()
                .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
                == Some(*date)
        }
        Value::Timestamptz(time) => {
            want.as_str()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|t| t.with_timezone(&Utc))
                == Some(*time)
        }
        Value::Jsonb(json) => {
            matches!(kind, ColumnType::Jsonb)
                && serde_json::from_str::<Json>(json).ok().as_ref() == Some(want)
        }
    }
}

fn show(value: Option<&Value>) -> String {
    match value {
        None => "NULL".into(),
        Some(Value::Text(text) | Value::Numeric(text) | Value::Uuid(text)) => format!("{text:?}"),
        Some(Value::Jsonb(json)) => json.clone(),
        Some(Value::Integer(v)) => v.to_string(),
        Some(Value::Bigint(v)) => v.to_string(),
        Some(Value::Boolean(v)) => v.to_string(),
        Some(Value::Double(v)) => v.to_string(),
        Some(Value::Date(date)) => format!("\"{date}\""),
        Some(Value::Timestamptz(time)) => {
            format!("\"{}\"", time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        }
    }
}

fn describe_expected(expected: &Expected) -> String {
    match expected {
        Expected::Row(_) => "a row".into(),
        Expected::Rows(_) if !expected.expects_rows() => "no rows (skipped)".into(),
        Expected::Rows(_) => "rows".into(),
        Expected::Rejected(code) => format!("rejection `{code}`"),
    }
}

fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Rows(rows) => format!("{} rows", rows.len()),
        Outcome::Rejected(rejection) => {
            format!("rejection `{}` ({})", rejection.code, rejection.detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Rejection;

    fn schema() -> Schema {
        Schema::new(vec![crate::schema::user_logins()]).unwrap()
    }

    #[test]
    fn parses_rows_with_mask_specs_and_rejections() {
        let keyring = test_keyring();
        let text = r#"
{"name": "row", "body": "{}", "expect": {"row": {"user_id": "u", "masked_ip": {"mask": ["ip", "1.2.3.4"]}, "masked_device_id": {"pseudonymize": ["device_id", "d"]}, "app_version": 20300, "create_date": "2022-12-12"}}}
// comments and blank lines are skipped
{"name": "bad", "body": "x", "sent_timestamp_ms": 5, "expect": {"rejected": "invalid_json"}}
{"name": "fan", "body": "{}", "expect": {"rows": {"a": [{"x": 1}, {"x": 2}], "b": []}}}
"#;
        let vectors = parse(text, &keyring).unwrap();
        assert_eq!(vectors.len(), 3);
        let Expected::Row(row) = &vectors[0].expect else {
            panic!("row expected")
        };
        assert_eq!(
            row["masked_ip"].as_str(),
            Some(keyring.mask("ip", "1.2.3.4").as_str())
        );
        assert_eq!(
            row["masked_device_id"].as_str(),
            Some(keyring.pseudonymize("device_id", "d").as_str())
        );
        assert_eq!(vectors[1].message.sent_timestamp_ms, 5);
        assert_eq!(vectors[1].line, 4);
        let Expected::Rows(tables) = &vectors[2].expect else {
            panic!("rows expected")
        };
        assert_eq!(tables["a"].len(), 2);
        assert!(tables["b"].is_empty());
    }

    #[test]
    fn malformed_vectors_name_their_line() {
        let keyring = test_keyring();
        let error = parse("{\"body\": \"x\", \"expect\": {}}", &keyring).unwrap_err();
        assert!(format!("{error:#}").contains("line 1"));
        for bad in [
            r#"{"body": "x", "expect": {"row": {"masked_ip": {"mask": ["ip"]}}}}"#,
            r#"{"body": "x", "expect": {"rows": {"t": {"x": 1}}}}"#,
            r#"{"body": "x", "expect": {"rows": {"t": [1]}}}"#,
        ] {
            assert!(parse(bad, &keyring).is_err(), "{bad}");
        }
    }

    #[test]
    fn few_or_one_sided_vectors_do_not_suffice() {
        let keyring = test_keyring();
        let row = r#"{"body": "{}", "expect": {"row": {"user_id": "u"}}}"#;
        let rejected = r#"{"body": "x", "expect": {"rejected": "invalid_json"}}"#;
        let skipped = r#"{"body": "x", "expect": {"rows": {}}}"#;
        let file = |rows: usize, rejections: usize, skips: usize| {
            let lines: Vec<&str> = std::iter::repeat_n(row, rows)
                .chain(std::iter::repeat_n(rejected, rejections))
                .chain(std::iter::repeat_n(skipped, skips))
                .collect();
            parse(&lines.join("\n"), &keyring).unwrap()
        };
        assert!(!suffice(&file(0, 0, 0)));
        assert!(!suffice(&file(3, 1, 0)));
        assert!(!suffice(&file(5, 0, 0)));
        assert!(!suffice(&file(0, 5, 0)));
        // Skips are no rows.
        assert!(!suffice(&file(0, 1, 4)));
        assert!(suffice(&file(4, 1, 0)));
    }

    #[test]
    fn an_empty_vectors_file_is_an_error() {
        let path = std::env::temp_dir().join(format!(
            "maskpipe-empty-{}-{:08x}.vectors.jsonl",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&path, "// only a comment\n\n").unwrap();
        // Refused before the component is even looked at.
        let error =
            runtime::block_on(check_file(Path::new("/nonexistent.wasm"), &path)).unwrap_err();
        assert!(format!("{error:#}").contains("no vectors in"), "{error:#}");
        std::fs::remove_file(&path).unwrap();
    }

    fn login(user_id: &str) -> Outcome {
        let mut values = vec![None; 7];
        values[0] = Some(Value::Text(user_id.into()));
        values[5] = Some(Value::Integer(20300));
        Outcome::Rows(vec![TableRow { table: 0, values }])
    }

    fn cells(json: &str) -> Cells {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn comparison_reports_differing_columns() {
        let schema = schema();
        let want = Expected::Row(cells(r#"{"user_id": "a", "app_version": 20300}"#));
        let diff = compare(&schema, &want, &login("b")).unwrap();
        assert!(
            diff.contains("user_id: expected \"a\", got \"b\""),
            "{diff}"
        );
        assert!(compare(&schema, &want, &login("a")).is_none());
        // A column left out must be NULL.
        let no_version = Expected::Row(cells(r#"{"user_id": "a"}"#));
        let diff = compare(&schema, &no_version, &login("a")).unwrap();
        assert!(
            diff.contains("app_version: expected NULL, got 20300"),
            "{diff}"
        );
        // An unknown column or table is a difference, not a pass.
        let colour = Expected::Row(cells(
            r#"{"user_id": "a", "app_version": 20300, "colour": "red"}"#,
        ));
        assert!(
            compare(&schema, &colour, &login("a"))
                .unwrap()
                .contains("colour")
        );
        let elsewhere = Expected::Rows(BTreeMap::from([
            (
                "user_logins".to_owned(),
                vec![cells(r#"{"user_id": "a", "app_version": 20300}"#)],
            ),
            ("other".to_owned(), Vec::new()),
        ]));
        assert!(
            compare(&schema, &elsewhere, &login("a"))
                .unwrap()
                .contains("other")
        );
        // Row counts per table.
        let two = Expected::Rows(BTreeMap::from([(
            "user_logins".to_owned(),
            vec![cells(r#"{"user_id": "a"}"#); 2],
        )]));
        assert!(
            compare(&schema, &two, &login("a"))
                .unwrap()
                .contains("expected 2 rows, got 1")
        );
        let skipped = Expected::Rows(BTreeMap::new());
        assert!(compare(&schema, &skipped, &Outcome::Rows(Vec::new())).is_none());
        assert!(compare(&schema, &skipped, &login("a")).is_some());
        let rejected = Outcome::Rejected(Rejection::new("invalid_ip", "detail"));
        assert!(compare(&schema, &Expected::Rejected("invalid_ip".into()), &rejected).is_none());
        assert!(
            compare(
                &schema,
                &Expected::Rejected("wrong_schema".into()),
                &rejected
            )
            .is_some()
        );
        assert!(compare(&schema, &want, &rejected).is_some());
    }

    #[test]
    fn values_compare_as_their_types_read_them() {
        let time = DateTime::from_timestamp(1_670_839_200, 0).unwrap();
        let cases = [
            (
                ColumnType::Timestamptz,
                r#""2022-12-12T10:00:00Z""#,
                Value::Timestamptz(time),
                true,
            ),
            (
                ColumnType::Timestamptz,
                r#""2022-12-12T11:00:00+01:00""#,
                Value::Timestamptz(time),
                true,
            ),
            (
                ColumnType::Timestamptz,
                r#""2022-12-12T10:00:01Z""#,
                Value::Timestamptz(time),
                false,
            ),
            (
                ColumnType::Jsonb,
                r#"{"b": [1, 2], "a": null}"#,
                Value::Jsonb(r#"{"a":null,"b":[1,2]}"#.into()),
                true,
            ),
            (
                ColumnType::Jsonb,
                r#"{"a": 1}"#,
                Value::Jsonb(r#"{"a":2}"#.into()),
                false,
            ),
            (ColumnType::Double, "1.5", Value::Double(1.5), true),
            (
                ColumnType::Bigint,
                "9007199254740993",
                Value::Bigint(9_007_199_254_740_993),
                true,
            ),
            (ColumnType::Boolean, "true", Value::Boolean(false), false),
            (
                ColumnType::Numeric,
                r#""1.50""#,
                Value::Numeric("1.5".into()),
                false,
            ),
            (
                ColumnType::Date,
                r#""2022-12-12""#,
                Value::Date(time.date_naive()),
                true,
            ),
        ];
        for (kind, want, got, expected) in cases {
            let want: Json = serde_json::from_str(want).unwrap();
            assert_eq!(matches(kind, &want, Some(&got)), expected, "{want} {got:?}");
        }
        assert!(matches(ColumnType::Integer, &Json::Null, None));
        assert!(!matches(ColumnType::Integer, &Json::from(0), None));
    }
}
