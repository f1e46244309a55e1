//! Properties of the login transform over arbitrary input: it never panics,
//! every message ends as a row or a rejection, and every row fits its table.

use login_core::{MaskBoth, Protected, Row, transform, unpack};
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
        let names = [
            "user_id",
            "app_version",
            "device_type",
            "ip",
            "locale",
            "device_id",
        ];
        let mut object = Map::new();
        for (name, value) in names.iter().zip(values) {
            if let Some(value) = value {
                object.insert((*name).to_owned(), value);
            }
        }
        Value::Object(object)
    })
}

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
    fn login_shaped_objects_give_fitting_rows_or_named_rejections(value in login_like()) {
        match run(&value.to_string(), 1_670_839_200_000) {
            Ok(row) => check_row_fits(&row),
            Err(rejection) => {
                prop_assert!(!rejection.code.is_empty());
                prop_assert!(!rejection.detail.is_empty());
            }
        }
    }

    #[test]
    fn packed_batches_unpack_to_their_messages(
        messages in prop::collection::vec((".{0,60}", any::<u64>()), 0..12)
    ) {
        let mut bodies = String::new();
        let mut ends = Vec::new();
        for (body, _) in &messages {
            bodies.push_str(body);
            ends.push(u32::try_from(bodies.len()).unwrap());
        }
        let sent: Vec<u64> = messages.iter().map(|(_, sent)| *sent).collect();
        let unpacked: Vec<_> = unpack(&bodies, &ends, &sent).collect();
        let expected: Vec<_> = messages.iter().map(|(body, sent)| Ok((body.as_str(), *sent))).collect();
        prop_assert_eq!(unpacked, expected);
    }
}
