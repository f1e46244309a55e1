//! Validation and normalization of one Fetch login message.
//!
//! Plain Rust with no wasm in sight, so it is unit-tested and benchmarked
//! natively and shared by every transform component. How the two PII fields
//! are protected is the one thing transforms differ in, so it is a
//! parameter: a [`Protect`] policy, which only names the protection
//! ([`Protected`]); the host, which holds the keys, carries it out. Also
//! here: [`unpack`] for the packed batches the contract delivers, [`RowText`]
//! for the packed rows it returns, the macros that export all of it as a
//! component, and [`arena`], the allocator that suits components.

pub mod arena;

use std::net::IpAddr;

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Datelike};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Column limits of `user_logins`, in characters (varchar counts characters).
const USER_ID_MAX_CHARS: usize = 128;
const DEVICE_TYPE_MAX_CHARS: usize = 32;
const LOCALE_MAX_CHARS: usize = 32;
/// Masking grows a value by a fixed overhead and base64's 4/3; 128 bytes of
/// plaintext mask to at most 224 characters, inside `varchar(256)`.
const MASKED_INPUT_MAX_BYTES: usize = 128;

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

/// How the host is to store a PII value (WIT `protected`): the transform
/// decides, the host (which holds the keys) does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protected {
    /// Keyed, deterministic, reversible masking.
    Masked(String),
    /// A keyed, irreversible pseudonym.
    Pseudonymized(String),
    /// As is: the transform already made it harmless.
    Clear(String),
}

/// A UTC calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

/// Every reason code [`transform`] and [`unpack`] may reject with: what a
/// component built on login-core declares through `reason-codes`.
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
    "malformed_batch",
];

/// Why a message was refused. `detail` names fields, never their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

impl Rejection {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// A transform's PII policy: how each PII field of a valid message is to be
/// protected.
pub trait Protect {
    /// The value for `masked_ip`; `written` is the address as the message
    /// wrote it (see [`canonical_ip`]).
    fn ip(&self, ip: IpAddr, written: &str) -> Protected;
    /// The value for `masked_device_id`.
    fn device_id(&self, device_id: &str) -> Protected;
}

/// The reference policy: reversible masking of both fields. The ip is masked
/// in canonical form, so equal addresses mask equally however they were
/// written ("::1" and "0::1").
pub struct MaskBoth;

impl Protect for MaskBoth {
    fn ip(&self, ip: IpAddr, written: &str) -> Protected {
        Protected::Masked(canonical_ip(ip, written))
    }
    fn device_id(&self, device_id: &str) -> Protected {
        Protected::Masked(device_id.to_owned())
    }
}

/// `ip` in canonical form. An IPv4 address that parsed is canonical already
/// (the parser refuses leading zeros and short forms), so `written` is
/// reused without formatting; IPv6 is formatted (lower case, `::` folding).
pub fn canonical_ip(ip: IpAddr, written: &str) -> String {
    match ip {
        IpAddr::V4(_) => written.to_owned(),
        IpAddr::V6(_) => ip.to_string(),
    }
}

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

// --- Parsing -------------------------------------------------------------
//
// A message is parsed straight into the six fields it may carry, borrowing
// from the body wherever JSON needs no unescaping: no tree of values, and
// almost no allocation (which costs most inside wasm). Other keys are skipped;
// a repeated key keeps its last value, as in serde_json's own maps.

/// A login field as sent: a string, null, or some other JSON kind.
enum Field<'a> {
    Str(Cow<'a, str>),
    Null,
    Other(&'static str),
}

#[derive(Default)]
struct Login<'a> {
    user_id: Option<Field<'a>>,
    device_type: Option<Field<'a>>,
    ip: Option<Field<'a>>,
    device_id: Option<Field<'a>>,
    app_version: Option<Field<'a>>,
    locale: Option<Field<'a>>,
}

fn parse(body: &str) -> Result<Login<'_>, Rejection> {
    let invalid = |e: serde_json::Error| {
        // serde_json's syntax errors carry a position, never the input text.
        Rejection::new(
            "invalid_json",
            format!(
                "body is not valid JSON ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    };
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let top = deserializer.deserialize_any(TopVisitor).map_err(invalid)?;
    deserializer.end().map_err(invalid)?;
    match top {
        Top::Object(login) => Ok(login),
        Top::Other(kind) => Err(Rejection::new(
            "not_an_object",
            format!("body is JSON {kind}, not an object"),
        )),
    }
}

enum Top<'a> {
    Object(Login<'a>),
    Other(&'static str),
}

/// Accepts any JSON value: an object is read as a login, the rest is named.
struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut login = Login::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let slot = match &*key.0 {
                "user_id" => &mut login.user_id,
                "device_type" => &mut login.device_type,
                "ip" => &mut login.ip,
                "device_id" => &mut login.device_id,
                "app_version" => &mut login.app_version,
                "locale" => &mut login.locale,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<FieldSeed<'de>>()?.0);
        }
        Ok(Top::Object(login))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::Other("array"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Top::Other("string"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Top::Other("boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Top::Other("null"))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor).map(Key)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(text))
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text.to_owned()))
    }
    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text))
    }
}

/// A field's value: its string, or the kind of whatever else it is.
struct FieldSeed<'a>(Field<'a>);

impl<'de> Deserialize<'de> for FieldSeed<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor).map(FieldSeed)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(text)))
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(text.to_owned())))
    }
    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(text)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::Other("boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Field::Other("number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Field::Other("number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Field::Other("number"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other("array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other("object"))
    }
}

/// The messages of a packed WIT `batch`, in order: each body with its
/// `SentTimestamp`, one item per entry of `body_ends`. Where the host's
/// offsets or timestamps do not fit its bodies, that message is an `Err`
/// (`malformed_batch`) instead of a panic.
pub fn unpack<'a>(
    bodies: &'a str,
    body_ends: &'a [u32],
    sent_timestamps_ms: &'a [u64],
) -> impl Iterator<Item = Result<(&'a str, u64), Rejection>> + 'a {
    let mut start = 0;
    body_ends.iter().enumerate().map(move |(index, &end)| {
        let end = end as usize;
        // `get` is None for an end out of range, before its start or inside
        // a character.
        let body = bodies.get(start..end);
        start = end;
        match (body, sent_timestamps_ms.get(index)) {
            (Some(body), Some(&sent)) => Ok((body, sent)),
            _ => Err(Rejection::new(
                "malformed_batch",
                "the host sent a batch whose offsets or timestamps do not fit its bodies",
            )),
        }
    })
}

/// The text of a batch's rows, as the WIT `outcomes` carries it: every
/// string of every row back to back, each known by its span.
#[derive(Debug, Default)]
pub struct RowText(String);

impl RowText {
    /// Room for a batch of `bodies` bytes: a row's strings are mostly parts
    /// of its body, so that is a good first guess.
    pub fn for_bodies(bodies: &str) -> Self {
        Self(String::with_capacity(bodies.len()))
    }

    /// Appends `value`; its span in the text, `start..end` in bytes. (On
    /// wasm32 a text cannot outgrow `u32`; natively, a span past it
    /// saturates, and the host refuses it as out of range.)
    pub fn push(&mut self, value: &str) -> (u32, u32) {
        let offset = |at: usize| u32::try_from(at).unwrap_or(u32::MAX);
        let start = offset(self.0.len());
        self.0.push_str(value);
        (start, offset(self.0.len()))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Defines `fn to_wit_outcome(Result<Row, Rejection>, &mut RowText) ->
/// Outcome`, the conversion to the WIT types that `wit_bindgen::generate!`
/// made in the calling crate. [`export_transformer!`] uses it; so can a
/// hand-written `Guest` impl.
#[macro_export]
macro_rules! wit_outcome {
    () => {
        fn to_wit_outcome(
            result: Result<$crate::Row, $crate::Rejection>,
            text: &mut $crate::RowText,
        ) -> maskpipe::transform::types::Outcome {
            use maskpipe::transform::types::{Date, LoginRow, Outcome, Protected, Rejection, Span};
            fn span(text: &mut $crate::RowText, value: &str) -> Span {
                let (start, end) = text.push(value);
                Span { start, end }
            }
            fn protected(text: &mut $crate::RowText, value: &$crate::Protected) -> Protected {
                match value {
                    $crate::Protected::Masked(value) => Protected::Masked(span(text, value)),
                    $crate::Protected::Pseudonymized(value) => {
                        Protected::Pseudonymized(span(text, value))
                    }
                    $crate::Protected::Clear(value) => Protected::Clear(span(text, value)),
                }
            }
            match result {
                Ok(row) => Outcome::Row(LoginRow {
                    user_id: Some(span(text, &row.user_id)),
                    device_type: Some(span(text, &row.device_type)),
                    masked_ip: Some(protected(text, &row.masked_ip)),
                    masked_device_id: Some(protected(text, &row.masked_device_id)),
                    locale: row.locale.as_deref().map(|locale| span(text, locale)),
                    app_version: Some(row.app_version),
                    create_date: Some(Date {
                        year: row.create_date.year,
                        month: row.create_date.month,
                        day: row.create_date.day,
                    }),
                }),
                Err(rejection) => Outcome::Rejected(Rejection {
                    code: rejection.code.to_owned(),
                    detail: rejection.detail,
                }),
            }
        }
    };
}

/// Exports [`transform`] with a [`Protect`] policy as the component's
/// `transform-batch`. Call it after `wit_bindgen::generate!` for the
/// `maskpipe:transform/transformer` world, in the component crate:
///
/// ```ignore
/// wit_bindgen::generate!({ path: "../wit", world: "transformer" });
/// login_core::export_transformer!(MyTransform, login_core::MaskBoth);
/// ```
#[macro_export]
macro_rules! export_transformer {
    ($component:ident, $policy:expr) => {
        $crate::wit_outcome!();

        struct $component;

        impl Guest for $component {
            fn reason_codes() -> Vec<String> {
                $crate::REASON_CODES
                    .iter()
                    .map(|code| (*code).to_owned())
                    .collect()
            }

            fn transform_batch(batch: Batch) -> Outcomes {
                let policy = $policy;
                let mut text = $crate::RowText::for_bodies(&batch.bodies);
                let each =
                    $crate::unpack(&batch.bodies, &batch.body_ends, &batch.sent_timestamps_ms)
                        .map(|message| {
                            to_wit_outcome(
                                message.and_then(|(body, sent)| {
                                    $crate::transform(body, sent, &policy)
                                }),
                                &mut text,
                            )
                        })
                        .collect();
                Outcomes {
                    text: text.into_string(),
                    each,
                }
            }
        }

        export!($component);
    };
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
    fn row_text_hands_out_the_span_of_each_string() {
        let mut text = RowText::for_bodies("{}");
        assert_eq!(text.push("ab"), (0, 2));
        assert_eq!(text.push(""), (2, 2));
        assert_eq!(text.push("✓x"), (2, 6));
        assert_eq!(text.into_string(), "ab✓x");
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
    fn a_packed_batch_unpacks_in_order() {
        let bodies = "first✓second";
        let ends = [8, 14];
        let sent = [1, 2];
        let messages: Vec<_> = unpack(bodies, &ends, &sent).collect();
        assert_eq!(messages, vec![Ok(("first✓", 1)), Ok(("second", 2))]);
    }

    #[test]
    fn an_inconsistent_batch_is_refused_message_by_message() {
        let bodies = "first✓second";
        // Inside the check mark, past the end, a missing timestamp.
        for (ends, sent) in [
            (&[6, 14][..], &[1, 2][..]),
            (&[8, 99], &[1, 2]),
            (&[8, 14], &[1]),
        ] {
            let codes: Vec<_> = unpack(bodies, ends, sent)
                .map(|message| message.map(|_| ()).map_err(|rejection| rejection.code))
                .collect();
            assert_eq!(codes.len(), 2);
            assert!(
                codes.contains(&Err("malformed_batch")),
                "{ends:?} {sent:?}: {codes:?}"
            );
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
}
