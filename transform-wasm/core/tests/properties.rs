//! Properties of the login transform over arbitrary input: it never panics,
//! every message ends as a row or a rejection, and every row fits its table.

use std::net::{Ipv4Addr, Ipv6Addr};

use login_core::{MaskBoth, Protected, Row, transform};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn run(body: &str, sent_ms: u64) -> Result<Row, login_core::Rejection> {
    transform(body, sent_ms, &MaskBoth)
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like logins whose every field may be anything.
fn login_like() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        4 => ".{0,140}".prop_map(Value::String),
        1 => any_json(),
        1 => Just(Value::Null),
    ];
    prop::collection::vec(prop::option::of(field), 6).prop_map(|values| {
        let mut object = Map::new();
        for (name, value) in LOGIN_FIELDS.iter().zip(values) {
            if let Some(value) = value {
                object.insert((*name).to_owned(), value);
            }
        }
        Value::Object(object)
    })
}

/// An `ip` that parses: IPv4, or IPv6 as formatted, in upper case, or
/// written out in full (all forms the transform must canonicalise).
fn valid_ip() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| ip.to_string().to_uppercase()),
        any::<Ipv6Addr>().prop_map(|ip| {
            let parts: Vec<String> = ip.segments().iter().map(|s| format!("{s:04x}")).collect();
            parts.join(":")
        }),
    ]
}

/// An `app_version` that parses: one to three parts of one or two digits.
fn valid_app_version() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        (0u8..10).prop_map(|n| n.to_string()),
        (0u8..100).prop_map(|n| format!("{n:02}")),
    ];
    prop::collection::vec(part, 1..=3).prop_map(|parts| parts.join("."))
}

/// Non-control Unicode of up to `max` characters (up to 4 bytes each).
fn unicode(max: usize) -> impl Strategy<Value = String> {
    prop::string::string_regex(&format!("\\PC{{0,{max}}}")).expect("a valid regex")
}

/// A login every field of which the table can take, with Unicode ids at
/// their character limits, `device_id` up to its 128-byte limit, and other
/// keys (any JSON) around the login's own.
fn valid_login() -> impl Strategy<Value = Value> {
    (
        unicode(128),
        unicode(32),
        valid_ip(),
        // 32 characters of up to 4 bytes: at most 128 bytes.
        unicode(32),
        valid_app_version(),
        prop::option::of(unicode(32)),
        prop::collection::btree_map("[a-z_]{1,12}", any_json(), 0..4),
    )
        .prop_map(
            |(user_id, device_type, ip, device_id, app_version, locale, extra)| {
                let mut object: Map<String, Value> = extra
                    .into_iter()
                    .filter(|(key, _)| !LOGIN_FIELDS.contains(&key.as_str()))
                    .collect();
                object.insert("user_id".into(), json!(user_id));
                object.insert("device_type".into(), json!(device_type));
                object.insert("ip".into(), json!(ip));
                object.insert("device_id".into(), json!(device_id));
                object.insert("app_version".into(), json!(app_version));
                if let Some(locale) = locale {
                    object.insert("locale".into(), json!(locale));
                }
                Value::Object(object)
            },
        )
}

/// A valid login with one text field replaced by Unicode around its limit
/// (a few characters either side), so both the rows at the limit and the
/// refusals just past it are reached.
fn login_near_the_limits() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just(("user_id", 120usize, 136usize)),
        Just(("device_type", 28, 36)),
        Just(("locale", 28, 36)),
    ];
    let counted_in_chars = (valid_login(), field).prop_flat_map(|(login, (name, low, high))| {
        let text =
            prop::string::string_regex(&format!("\\PC{{{low},{high}}}")).expect("a valid regex");
        (Just(login), Just(name), text)
    });
    let counted_in_bytes = (valid_login(), bytes_around(128))
        .prop_map(|(login, device_id)| (login, "device_id", device_id));
    prop_oneof![counted_in_chars, counted_in_bytes].prop_map(|(mut login, name, text)| {
        login[name] = json!(text);
        login
    })
}

/// Text whose length in bytes straddles `limit` while its length in
/// characters is mostly under it: an ASCII run, then a few characters of 2
/// to 4 bytes. (`\PC` would not do: proptest draws mostly ASCII and Latin-1,
/// so 36 characters of it almost never reach 128 bytes.)
fn bytes_around(limit: usize) -> impl Strategy<Value = String> {
    let wide = prop::collection::vec(prop::sample::select(vec!['é', '漢', '😀']), 1..=8);
    (limit - 28..=limit - 4, wide)
        .prop_map(|(ascii, wide)| "x".repeat(ascii) + &wide.into_iter().collect::<String>())
}

const LOGIN_FIELDS: [&str; 6] = [
    "user_id",
    "app_version",
    "device_type",
    "ip",
    "locale",
    "device_id",
];

/// A timestamp chrono can date (1970 to 2100).
const LATEST_MS: u64 = 4_102_444_800_000;

fn check_row_fits(row: &Row) {
    assert!(row.user_id.chars().count() <= 128);
    assert!(row.device_type.chars().count() <= 32);
    assert!(row.locale.as_ref().is_none_or(|l| l.chars().count() <= 32));
    assert!((0..=999_999).contains(&row.app_version));
    // Masking grows a value; 128 bytes is what still fits varchar(256).
    for protected in [&row.masked_ip, &row.masked_device_id] {
        let Protected::Masked(value) = protected else {
            panic!("the reference policy masks: {protected:?}")
        };
        assert!(value.len() <= 128);
    }
}

/// Values around their limits give rows that fit exactly when every field is
/// within its limit, and `value_too_long` otherwise; both are reached often
/// (counted over 2,000 cases).
#[test]
fn values_around_their_limits_give_fitting_rows_or_value_too_long() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (rows, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(login_near_the_limits(), 0..=LATEST_MS),
            |(value, sent)| {
                // The table's limits: characters, but bytes for device_id
                // (what still fits varchar(256) once masked).
                let over = |field: &str, limit: usize, in_bytes: bool| {
                    value[field].as_str().is_some_and(|text| {
                        let length = if in_bytes {
                            text.len()
                        } else {
                            text.chars().count()
                        };
                        length > limit
                    })
                };
                let too_long = over("user_id", 128, false)
                    || over("device_type", 32, false)
                    || over("locale", 32, false)
                    || over("device_id", 128, true);
                match run(&value.to_string(), sent) {
                    Ok(row) => {
                        prop_assert!(!too_long, "a row from a value over its limit: {}", value);
                        check_row_fits(&row);
                        rows.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(rejection) => {
                        prop_assert_eq!(rejection.code, "value_too_long", "{}", value);
                        prop_assert!(too_long, "refused within every limit: {}", value);
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    let (rows, refused) = (rows.into_inner(), refused.into_inner());
    println!("{rows} rows, {refused} refused as too long");
    // At least a quarter of the 2,000 cases each way.
    assert!(
        rows >= 500 && refused >= 500,
        "{rows} rows, {refused} refused"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_text_never_panics(body in ".{0,300}", sent in any::<u64>()) {
        let _ = run(&body, sent);
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json(), sent in any::<u64>()) {
        if let Ok(row) = run(&value.to_string(), sent) {
            check_row_fits(&row);
        }
    }

    #[test]
    fn valid_logins_always_give_rows_that_fit(value in valid_login(), sent in 0..=LATEST_MS) {
        // Every field is valid, so a rejection is a bug; the row then has to
        // fit the table.
        match run(&value.to_string(), sent) {
            Ok(row) => check_row_fits(&row),
            Err(rejection) => prop_assert!(false, "{value} was refused: {rejection:?}"),
        }
    }

    #[test]
    fn login_shaped_objects_give_fitting_rows_or_named_rejections(value in login_like()) {
        match run(&value.to_string(), 1_670_839_200_000) {
            Ok(row) => check_row_fits(&row),
            Err(rejection) => {
                prop_assert!(!rejection.code.is_empty());
                prop_assert!(!rejection.detail.is_empty());
            }
        }
    }
}
