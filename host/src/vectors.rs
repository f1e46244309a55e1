//! Golden vectors: proving a transform component correct in wasm isolation.
//!
//! A vectors file has one JSON object per line:
//!
//! ```json
//! {"name": "sample", "body": "{\"user_id\": …}", "sent_timestamp_ms": 1670839200000,
//!  "expect": {"row": {"user_id": "…", "masked_ip": {"mask": ["ip", "1.2.3.4"]}, "app_version": 20300,
//!                     "create_date": "2022-12-12", …}}}
//! {"name": "wrong schema", "body": "{\"foo\": 1}", "expect": {"rejected": "wrong_schema"}}
//! ```
//!
//! Vectors run under a fixed, public test key, so `{"mask": [field, value]}`
//! (or `{"pseudonymize": [field, value]}`) stands for the exact text the host
//! function returns, and expectations stay readable. A column
//! left out of an expected row must be NULL. `sent_timestamp_ms` defaults to
//! 2022-12-12T10:00:00Z.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use serde_json::Value;

use crate::masking::{Keyring, MasterKey};
use crate::record::{Outcome, Row};
use crate::runtime::{self, Limits, Transform};
use crate::source::{MAX_BATCH, Received};

/// The public key vectors are written against. Never a real key.
pub const TEST_KEY_HEX: &str = "7465737420766563746f7273206f6e6c79202d206e6f7420612072656b6579ff";
pub const TEST_KEY_ID: &str = "test";
const DEFAULT_SENT_MS: u64 = 1_670_839_200_000;

pub fn test_keyring() -> Arc<Keyring> {
    let key = MasterKey::parse(TEST_KEY_HEX).expect("the test key is valid");
    Arc::new(Keyring::new(TEST_KEY_ID, &key, &[]).expect("the test key id is valid"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Row(Row),
    Rejected(String),
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
    let value: Value = serde_json::from_str(line).context("not a JSON object")?;
    let body = value["body"].as_str().context("`body` must be a string")?;
    let sent_timestamp_ms = match &value["sent_timestamp_ms"] {
        Value::Null => DEFAULT_SENT_MS,
        other => other
            .as_u64()
            .context("`sent_timestamp_ms` must be an unsigned integer")?,
    };
    let expect = match (&value["expect"]["row"], &value["expect"]["rejected"]) {
        (Value::Object(row), Value::Null) => Expected::Row(parse_row(row, keyring)?),
        (Value::Null, Value::String(code)) => Expected::Rejected(code.clone()),
        _ => bail!("`expect` must be {{\"row\": {{…}}}} or {{\"rejected\": \"code\"}}"),
    };
    Ok(Vector {
        line: line_no,
        name: value["name"].as_str().unwrap_or("").to_owned(),
        message: Received::local(format!("vector-{line_no}"), body, sent_timestamp_ms),
        expect,
    })
}

fn parse_row(row: &serde_json::Map<String, Value>, keyring: &Keyring) -> Result<Row> {
    const COLUMNS: [&str; 7] = [
        "user_id",
        "device_type",
        "masked_ip",
        "masked_device_id",
        "locale",
        "app_version",
        "create_date",
    ];
    if let Some(unknown) = row.keys().find(|k| !COLUMNS.contains(&k.as_str())) {
        bail!("unknown column `{unknown}` in expected row");
    }
    let text = |column: &str| -> Result<Option<String>> {
        match row.get(column) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(Value::Object(spec)) => {
                let (function, args) = spec
                    .iter()
                    .next()
                    .filter(|_| spec.len() == 1)
                    .with_context(|| {
                        format!(
                            "`{column}`: expected {{\"mask\" or \"pseudonymize\": [field, value]}}"
                        )
                    })?;
                let (Some(field), Some(plain)) = (
                    args.get(0).and_then(Value::as_str),
                    args.get(1).and_then(Value::as_str),
                ) else {
                    bail!("`{column}`: {function} takes [field, value], both strings");
                };
                match function.as_str() {
                    "mask" => Ok(Some(keyring.mask(field, plain))),
                    "pseudonymize" => Ok(Some(keyring.pseudonymize(field, plain))),
                    other => bail!("`{column}`: unknown function `{other}`"),
                }
            }
            Some(_) => bail!("`{column}` must be a string, null or {{\"mask\": …}}"),
        }
    };
    let app_version = match row.get("app_version") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .context("`app_version` must be a 32-bit integer")?,
        ),
    };
    let create_date = match row.get("create_date") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_str()
                .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
                .context("`create_date` must be YYYY-MM-DD")?,
        ),
    };
    Ok(Row {
        user_id: text("user_id")?,
        device_type: text("device_type")?,
        masked_ip: text("masked_ip")?,
        masked_device_id: text("masked_device_id")?,
        locale: text("locale")?,
        app_version,
        create_date,
    })
}

/// Golden vectors stand in for the built-in canary only with at least this
/// many, among them at least one expected row and one expected rejection:
/// an empty or token file must not be a way around validation.
pub const MIN_VECTORS: usize = 5;

/// Whether `vectors` are enough to validate a component without the full
/// canary (see [`MIN_VECTORS`]).
pub fn suffice(vectors: &[Vector]) -> bool {
    vectors.len() >= MIN_VECTORS
        && vectors.iter().any(|v| matches!(v.expect, Expected::Row(_)))
        && vectors
            .iter()
            .any(|v| matches!(v.expect, Expected::Rejected(_)))
}

/// Runs every vector through `transform` in batches, as the pipeline would,
/// and returns the ones that failed.
pub async fn check(transform: &Arc<Transform>, vectors: &[Vector]) -> Result<Vec<Failure>> {
    let mut worker = transform.worker(test_keyring()).await?;
    let mut failures = Vec::new();
    for chunk in vectors.chunks(MAX_BATCH) {
        let messages: Vec<Received> = chunk.iter().map(|v| v.message.clone()).collect();
        let outcomes = worker.run(&messages).await?;
        for (vector, outcome) in chunk.iter().zip(outcomes) {
            if let Some(diff) = compare(&vector.expect, &outcome) {
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
    let text = std::fs::read_to_string(vectors_file)
        .with_context(|| format!("cannot read vectors {}", vectors_file.display()))?;
    let vectors = parse(&text, &test_keyring())?;
    if vectors.is_empty() {
        bail!(
            "no vectors in {}: an empty vectors file proves nothing",
            vectors_file.display()
        );
    }
    let engine = runtime::engine()?;
    let transform = Arc::new(Transform::load(&engine, component, Limits::default()).await?);
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
fn compare(expected: &Expected, actual: &Outcome) -> Option<String> {
    match (expected, actual) {
        (Expected::Rejected(code), Outcome::Rejected(rejection)) if *code == rejection.code => None,
        (Expected::Row(row), Outcome::Row(actual)) if row == actual => None,
        (Expected::Row(row), Outcome::Row(actual)) => {
            let mut diff = String::new();
            for (column, want, got) in row_cells(row)
                .into_iter()
                .zip(row_cells(actual))
                .map(|((column, want), (_, got))| (column, want, got))
            {
                if want != got {
                    let _ = writeln!(diff, "  {column}: expected {want}, got {got}");
                }
            }
            Some(diff)
        }
        (expected, actual) => Some(format!(
            "  expected {}, got {}\n",
            describe_expected(expected),
            describe_outcome(actual)
        )),
    }
}

fn row_cells(row: &Row) -> [(&'static str, String); 7] {
    let text = |v: &Option<String>| v.as_ref().map_or("NULL".into(), |t| format!("{t:?}"));
    [
        ("user_id", text(&row.user_id)),
        ("device_type", text(&row.device_type)),
        ("masked_ip", text(&row.masked_ip)),
        ("masked_device_id", text(&row.masked_device_id)),
        ("locale", text(&row.locale)),
        (
            "app_version",
            row.app_version.map_or("NULL".into(), |v| v.to_string()),
        ),
        (
            "create_date",
            row.create_date.map_or("NULL".into(), |d| d.to_string()),
        ),
    ]
}

fn describe_expected(expected: &Expected) -> String {
    match expected {
        Expected::Row(_) => "a row".into(),
        Expected::Rejected(code) => format!("rejection `{code}`"),
    }
}

fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Row(_) => "a row".into(),
        Outcome::Rejected(rejection) => {
            format!("rejection `{}` ({})", rejection.code, rejection.detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Rejection;

    #[test]
    fn parses_rows_with_mask_specs_and_rejections() {
        let keyring = test_keyring();
        let text = r#"
{"name": "row", "body": "{}", "expect": {"row": {"user_id": "u", "masked_ip": {"mask": ["ip", "1.2.3.4"]}, "masked_device_id": {"pseudonymize": ["device_id", "d"]}, "app_version": 20300, "create_date": "2022-12-12"}}}
// comments and blank lines are skipped
{"name": "bad", "body": "x", "sent_timestamp_ms": 5, "expect": {"rejected": "invalid_json"}}
"#;
        let vectors = parse(text, &keyring).unwrap();
        assert_eq!(vectors.len(), 2);
        let Expected::Row(row) = &vectors[0].expect else {
            panic!("row expected")
        };
        assert_eq!(
            row.masked_ip.as_deref(),
            Some(keyring.mask("ip", "1.2.3.4").as_str())
        );
        assert_eq!(row.locale, None);
        assert_eq!(vectors[1].message.sent_timestamp_ms, 5);
        assert_eq!(vectors[1].line, 4);
    }

    #[test]
    fn malformed_vectors_name_their_line() {
        let keyring = test_keyring();
        let error = parse("{\"body\": \"x\", \"expect\": {}}", &keyring).unwrap_err();
        assert!(format!("{error:#}").contains("line 1"));
        assert!(
            parse(
                r#"{"body": "x", "expect": {"row": {"colour": "red"}}}"#,
                &keyring
            )
            .is_err()
        );
    }

    #[test]
    fn few_or_one_sided_vectors_do_not_suffice() {
        let keyring = test_keyring();
        let row = r#"{"body": "{}", "expect": {"row": {"user_id": "u"}}}"#;
        let rejected = r#"{"body": "x", "expect": {"rejected": "invalid_json"}}"#;
        let file = |rows: usize, rejections: usize| {
            let lines: Vec<&str> = std::iter::repeat_n(row, rows)
                .chain(std::iter::repeat_n(rejected, rejections))
                .collect();
            parse(&lines.join("\n"), &keyring).unwrap()
        };
        assert!(!suffice(&file(0, 0)));
        assert!(!suffice(&file(3, 1)));
        assert!(!suffice(&file(5, 0)));
        assert!(!suffice(&file(0, 5)));
        assert!(suffice(&file(4, 1)));
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

    #[test]
    fn comparison_reports_differing_columns() {
        let want = Row {
            user_id: Some("a".into()),
            ..Row::default()
        };
        let got = Row {
            user_id: Some("b".into()),
            ..Row::default()
        };
        let diff = compare(&Expected::Row(want.clone()), &Outcome::Row(got)).unwrap();
        assert!(
            diff.contains("user_id: expected \"a\", got \"b\""),
            "{diff}"
        );
        assert!(compare(&Expected::Row(want.clone()), &Outcome::Row(want)).is_none());
        let rejected = Outcome::Rejected(Rejection::new("invalid_ip", "detail"));
        assert!(compare(&Expected::Rejected("invalid_ip".into()), &rejected).is_none());
        assert!(compare(&Expected::Rejected("wrong_schema".into()), &rejected).is_some());
    }
}
