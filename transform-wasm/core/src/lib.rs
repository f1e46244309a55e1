//! Validation and normalization of one Fetch login message, shared by the
//! login transforms.
//!
//! Plain Rust with no wasm in sight, so it is unit-tested and benchmarked
//! natively. [`transform`] turns a body into a normalized [`Row`] or a
//! [`Rejection`]; how the two PII fields are protected is the one thing
//! transforms differ in, so it is a parameter: a [`Protect`] policy, which
//! only names the protection ([`Protected`]); the host, which holds the
//! keys, carries it out. [`user_logins_columns`] declares the table such a
//! row goes to and [`push_user_login`] writes it there, through the guest
//! toolkit ([`maskpipe_guest`]), which owns everything about the contract.

mod parse;
mod policy;
mod table;

use std::net::IpAddr;

use chrono::{DateTime, Datelike};

pub use maskpipe_guest::{Date, Rejection};
pub use policy::{MaskBoth, Protect, canonical_ip};
pub use table::{push_user_login, user_login_values, user_logins_columns};

use parse::{Field, parse};
use table::{DEVICE_TYPE_MAX_CHARS, LOCALE_MAX_CHARS, MASKED_INPUT_MAX_BYTES, USER_ID_MAX_CHARS};

/// A normalized `user_logins` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub user_id: String,
    pub device_type: String,
    pub masked_ip: Protected,
    pub masked_device_id: Protected,
    pub locale: Option<String>,
    pub app_version: i32,
    pub create_date: Date,
}

/// How the host is to store a PII value (WIT `value-kind`'s `masked`,
/// `pseudonymized` and `clear`): the transform decides, the host (which
/// holds the keys) does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protected {
    /// Keyed, deterministic, reversible masking.
    Masked(String),
    /// A keyed, irreversible pseudonym.
    Pseudonymized(String),
    /// As is: the transform already made it harmless.
    Clear(String),
}

/// Every reason code [`transform`] may reject with, and the toolkit's
/// `malformed_batch`: what a login transform declares.
pub const REASON_CODES: &[&str] = &[
    "invalid_json",
    "not_an_object",
    "wrong_schema",
    "missing_field",
    "null_field",
    "wrong_type",
    "invalid_ip",
    "invalid_app_version",
    "value_too_long",
    "invalid_timestamp",
    maskpipe_guest::MALFORMED_BATCH,
];

/// Turns one message body into a row, or says why it cannot.
pub fn transform(
    body: &str,
    sent_timestamp_ms: u64,
    policy: &impl Protect,
) -> Result<Row, Rejection> {
    let login = parse(body)?;
    if [
        &login.user_id,
        &login.device_type,
        &login.ip,
        &login.device_id,
        &login.app_version,
    ]
    .iter()
    .all(|field| field.is_none())
    {
        return Err(Rejection::new(
            "wrong_schema",
            "body has none of the login fields (user_id, device_type, ip, device_id, app_version)",
        ));
    }

    let user_id = required_str(&login.user_id, "user_id")?;
    let device_type = required_str(&login.device_type, "device_type")?;
    let ip = required_str(&login.ip, "ip")?;
    let device_id = required_str(&login.device_id, "device_id")?;
    let app_version = required_str(&login.app_version, "app_version")?;
    let locale = optional_str(&login.locale, "locale")?;

    check_chars("user_id", user_id, USER_ID_MAX_CHARS)?;
    check_chars("device_type", device_type, DEVICE_TYPE_MAX_CHARS)?;
    if let Some(locale) = locale {
        check_chars("locale", locale, LOCALE_MAX_CHARS)?;
    }
    if device_id.len() > MASKED_INPUT_MAX_BYTES {
        return Err(Rejection::new(
            "value_too_long",
            format!("field `device_id` is longer than {MASKED_INPUT_MAX_BYTES} bytes"),
        ));
    }

    let written_ip = ip;
    let ip: IpAddr = written_ip
        .parse()
        .map_err(|_| Rejection::new("invalid_ip", "field `ip` is not an IPv4 or IPv6 address"))?;
    let app_version = parse_app_version(app_version).ok_or_else(|| {
        Rejection::new(
            "invalid_app_version",
            "field `app_version` is not a version x, x.y or x.y.z with parts 0-99",
        )
    })?;
    let create_date = utc_date(sent_timestamp_ms).ok_or_else(|| {
        Rejection::new(
            "invalid_timestamp",
            "SentTimestamp is outside the representable date range",
        )
    })?;

    Ok(Row {
        user_id: user_id.to_owned(),
        device_type: device_type.to_owned(),
        masked_ip: policy.ip(ip, written_ip),
        masked_device_id: policy.device_id(device_id),
        locale: locale.map(str::to_owned),
        app_version,
        create_date,
    })
}

/// `x`, `x.y` or `x.y.z` → `x*10000 + y*100 + z`, each part one or two
/// digits. Unlike dropping the dots, this keeps "2.3.0" apart from "2.30" and
/// "0.96" apart from "9.6".
pub fn parse_app_version(text: &str) -> Option<i32> {
    let mut parts = text.as_bytes().split(|&byte| byte == b'.');
    let mut version = 0;
    for weight in [10_000, 100, 1] {
        let Some(part) = parts.next() else { break };
        version += weight * parse_version_part(part)?;
    }
    parts.next().is_none().then_some(version)
}

fn parse_version_part(part: &[u8]) -> Option<i32> {
    let digit = |byte: &u8| byte.is_ascii_digit().then(|| i32::from(byte - b'0'));
    match part {
        [units] => digit(units),
        [tens, units] => Some(digit(tens)? * 10 + digit(units)?),
        _ => None,
    }
}

/// The UTC calendar date of a millisecond Unix timestamp.
pub fn utc_date(timestamp_ms: u64) -> Option<Date> {
    let date = DateTime::from_timestamp_millis(i64::try_from(timestamp_ms).ok()?)?.date_naive();
    Some(Date {
        year: date.year(),
        month: u8::try_from(date.month()).ok()?,
        day: u8::try_from(date.day()).ok()?,
    })
}

fn required_str<'a>(value: &'a Option<Field<'_>>, field: &str) -> Result<&'a str, Rejection> {
    match value {
        Some(Field::Str(text)) => Ok(text),
        Some(Field::Null) => Err(Rejection::new(
            "null_field",
            format!("required field `{field}` is null"),
        )),
        Some(Field::Other(kind)) => Err(wrong_type(field, kind)),
        None => Err(Rejection::new(
            "missing_field",
            format!("required field `{field}` is missing"),
        )),
    }
}

fn optional_str<'a>(
    value: &'a Option<Field<'_>>,
    field: &str,
) -> Result<Option<&'a str>, Rejection> {
    match value {
        Some(Field::Str(text)) => Ok(Some(text)),
        Some(Field::Null) | None => Ok(None),
        Some(Field::Other(kind)) => Err(wrong_type(field, kind)),
    }
}

fn wrong_type(field: &str, kind: &str) -> Rejection {
    Rejection::new(
        "wrong_type",
        format!("field `{field}` is a JSON {kind}, not a string"),
    )
}

fn check_chars(field: &str, text: &str, max: usize) -> Result<(), Rejection> {
    // A text has no more characters than bytes: count only when it matters.
    if text.len() > max && text.chars().count() > max {
        return Err(Rejection::new(
            "value_too_long",
            format!("field `{field}` is longer than {max} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae", "app_version": "2.3.0", "device_type": "android", "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928"}"#;
    // 2022-12-12T10:00:00Z
    const SENT_MS: u64 = 1_670_839_200_000;

    fn run(body: &str) -> Result<Row, Rejection> {
        transform(body, SENT_MS, &MaskBoth)
    }

    /// The code a body is rejected with, which must be one the component declares.
    fn rejection_code(body: &str) -> &'static str {
        let code = run(body).expect_err("should be rejected").code;
        assert!(REASON_CODES.contains(&code), "`{code}` is not declared");
        code
    }

    #[test]
    fn sample_message_becomes_a_row() {
        let row = run(SAMPLE).expect("valid");
        assert_eq!(
            row,
            Row {
                user_id: "424cdd21-063a-43a7-b91b-7ca1a833afae".into(),
                device_type: "android".into(),
                masked_ip: Protected::Masked("199.172.111.135".into()),
                masked_device_id: Protected::Masked("593-47-5928".into()),
                locale: Some("RU".into()),
                app_version: 20300,
                create_date: Date {
                    year: 2022,
                    month: 12,
                    day: 12
                },
            }
        );
    }

    #[test]
    fn app_versions_keep_distinct_versions_apart() {
        let cases = [
            ("2.3.0", 20300),
            ("2.3", 20300),
            ("2.30", 23000),
            ("0.96", 9600),
            ("9.6", 90600),
            ("0.9.6", 906),
            ("2.0", 20000),
            ("2.00", 20000),
            ("6.02", 60200),
            ("9.10", 91000),
            ("7", 70000),
            ("0", 0),
            ("99.99.99", 999999),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_app_version(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn malformed_app_versions_are_refused() {
        for text in [
            "", ".", "1.", ".1", "1..2", "1.2.3.4", "100", "1.100", "a.b", "1.2a", "-1", "+1",
            " 1.2", "1.2 ", "١.٢",
        ] {
            assert_eq!(parse_app_version(text), None, "{text:?}");
        }
    }

    #[test]
    fn null_locale_stays_null_and_missing_locale_is_null() {
        let row = run(&SAMPLE.replace(r#""RU""#, "null")).expect("valid");
        assert_eq!(row.locale, None);
        let row = run(&SAMPLE.replace(r#", "locale": "RU""#, "")).expect("valid");
        assert_eq!(row.locale, None);
    }

    #[test]
    fn the_sample_malformed_message_is_wrong_schema() {
        assert_eq!(
            rejection_code(r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#),
            "wrong_schema"
        );
    }

    #[test]
    fn each_kind_of_bad_input_has_its_reason() {
        assert_eq!(rejection_code("{"), "invalid_json");
        assert_eq!(rejection_code(""), "invalid_json");
        assert_eq!(rejection_code("[1, 2]"), "not_an_object");
        assert_eq!(rejection_code("\"text\""), "not_an_object");
        assert_eq!(
            rejection_code(&SAMPLE.replace(r#""ip": "199.172.111.135", "#, "")),
            "missing_field"
        );
        assert_eq!(
            rejection_code(&SAMPLE.replace(r#""593-47-5928""#, "null")),
            "null_field"
        );
        assert_eq!(
            rejection_code(&SAMPLE.replace(r#""2.3.0""#, "2.3")),
            "wrong_type"
        );
        assert_eq!(
            rejection_code(&SAMPLE.replace(r#""RU""#, "7")),
            "wrong_type"
        );
        assert_eq!(
            rejection_code(&SAMPLE.replace("199.172.111.135", "199.172.111.256")),
            "invalid_ip"
        );
        assert_eq!(
            rejection_code(&SAMPLE.replace("\"2.3.0\"", "\"2.3.0-beta\"")),
            "invalid_app_version"
        );
        assert_eq!(
            rejection_code(&SAMPLE.replace("android", &"x".repeat(33))),
            "value_too_long"
        );
        assert_eq!(
            rejection_code(&SAMPLE.replace("593-47-5928", &"9".repeat(129))),
            "value_too_long"
        );
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        // 32 three-byte characters fit varchar(32).
        let row = run(&SAMPLE.replace("android", &"é".repeat(32))).expect("valid");
        assert_eq!(row.device_type.chars().count(), 32);
    }

    #[test]
    fn ipv6_is_masked_in_canonical_form() {
        let row = run(&SAMPLE.replace("199.172.111.135", "2001:DB8:0:0::1")).expect("valid");
        assert_eq!(row.masked_ip, Protected::Masked("2001:db8::1".into()));
    }

    #[test]
    fn parsed_ipv4_is_already_canonical() {
        for written in ["199.172.111.135", "0.0.0.0", "255.255.255.255", "10.0.0.1"] {
            let ip: IpAddr = written.parse().unwrap();
            assert_eq!(canonical_ip(ip, written), ip.to_string());
        }
        // What would not be canonical does not parse.
        for written in ["010.0.0.1", "10.1", "10.0.0.01", " 10.0.0.1"] {
            assert!(written.parse::<IpAddr>().is_err(), "{written}");
        }
    }

    #[test]
    fn rejection_details_never_echo_values() {
        let secret_ip = "300.1.2.3";
        let secret_device = "SECRET-DEVICE";
        for body in [
            SAMPLE.replace("199.172.111.135", secret_ip),
            SAMPLE.replace("\"2.3.0\"", &format!("\"{secret_device}\"")),
            format!("{{\"ip\": \"{secret_ip}\""),
        ] {
            let rejection = run(&body).expect_err("rejected");
            assert!(!rejection.detail.contains(secret_ip), "{rejection:?}");
            assert!(!rejection.detail.contains(secret_device), "{rejection:?}");
        }
    }

    #[test]
    fn create_date_is_the_utc_date_of_sent_timestamp() {
        // 2022-12-31T23:59:59.999Z and one millisecond later.
        assert_eq!(
            utc_date(1_672_531_199_999),
            Some(Date {
                year: 2022,
                month: 12,
                day: 31
            })
        );
        assert_eq!(
            utc_date(1_672_531_200_000),
            Some(Date {
                year: 2023,
                month: 1,
                day: 1
            })
        );
        assert_eq!(utc_date(u64::MAX), None);
    }

    #[test]
    fn user_logins_has_the_take_home_columns_in_order() {
        use maskpipe_guest::{ColumnType, Protections};
        let columns = user_logins_columns();
        let shape: Vec<_> = columns
            .iter()
            .map(|column| (column.name.as_str(), column.type_, column.nullable))
            .collect();
        assert_eq!(
            shape,
            [
                ("user_id", ColumnType::Text(128), true),
                ("device_type", ColumnType::Text(32), true),
                ("masked_ip", ColumnType::Text(256), true),
                ("masked_device_id", ColumnType::Text(256), true),
                ("locale", ColumnType::Text(32), true),
                ("app_version", ColumnType::Integer, true),
                ("create_date", ColumnType::Date, true),
            ]
        );
        let any = Protections::MASKED | Protections::PSEUDONYMIZED | Protections::CLEAR;
        let pii: Vec<_> = columns
            .iter()
            .map(|column| {
                column
                    .pii
                    .as_ref()
                    .map(|pii| (pii.field.as_str(), pii.allows))
            })
            .collect();
        assert_eq!(
            pii,
            [
                None,
                None,
                Some(("ip", any)),
                Some(("device_id", any)),
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn a_login_becomes_one_row_of_seven_values() {
        use maskpipe_guest::{Outcome, Rows, Span, Value};
        let mut rows = Rows::new();
        rows.message(|rows| {
            let mut row = run(SAMPLE)?;
            row.masked_device_id = Protected::Pseudonymized(row.user_id.clone());
            row.locale = None;
            push_user_login(rows, 3, &row);
            Ok(())
        });
        assert_eq!(rows.outcomes(), &[Outcome::Rows(1)]);
        assert_eq!(rows.tables(), &[3]);
        let text = |span: &Span| &rows.text()[span.start as usize..span.end as usize];
        let values = rows.values();
        assert_eq!(values.len(), 7);
        let [
            Value::Text(user_id),
            Value::Text(device_type),
            Value::Masked(ip),
            Value::Pseudonymized(device_id),
            Value::Null,
            Value::Integer(20300),
            Value::Date(date),
        ] = values[..]
        else {
            panic!("{values:?}")
        };
        assert_eq!(text(&user_id), "424cdd21-063a-43a7-b91b-7ca1a833afae");
        assert_eq!(text(&device_type), "android");
        assert_eq!(text(&ip), "199.172.111.135");
        assert_eq!(text(&device_id), "424cdd21-063a-43a7-b91b-7ca1a833afae");
        assert_eq!(
            date,
            Date {
                year: 2022,
                month: 12,
                day: 12
            }
        );
    }
}
