//! A component's outcomes as the host's: every value checked before the
//! host spends anything on it.
//!
//! A row's strings are cut from the batch's `text` only after their length
//! is known to fit the column (so a span over 64 MiB costs O(1), not a
//! copy), a PII value is masked only if its result can fit, a date must be
//! one PostgreSQL can store, and a rejection's code must be one the
//! component declared at load. Whatever fails costs that message alone a
//! dead letter, with a reason and detail written by the host.

use chrono::{Datelike, NaiveDate};

use super::bindings::maskpipe::transform::types as wit;
use crate::masking::{Keyring, masked_len};
use crate::record::{self, Outcome, Rejection, Row, reason};

/// The reason codes a component declared, checked at load.
#[derive(Debug, Clone, Default)]
pub struct ReasonCodes(Box<[String]>);

/// At most this many codes per component: they become metric labels.
const MAX_REASON_CODES: usize = 64;
const MAX_REASON_CODE_LEN: usize = 64;

impl ReasonCodes {
    /// Checks a declaration: bounded, well-formed, unique, none of the host's.
    pub fn new(codes: Vec<String>) -> Result<Self, String> {
        if codes.len() > MAX_REASON_CODES {
            return Err(format!(
                "it declares {} reason codes; at most {MAX_REASON_CODES} are allowed",
                codes.len()
            ));
        }
        for (index, code) in codes.iter().enumerate() {
            let well_formed = code.len() <= MAX_REASON_CODE_LEN
                && code.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !well_formed {
                // Never echo the code: it is the component's text.
                return Err(format!(
                    "its reason code #{} is not lower snake case of at most {MAX_REASON_CODE_LEN} characters",
                    index + 1
                ));
            }
            if reason::HOST_CODES.contains(&code.as_str()) {
                return Err(format!(
                    "it declares `{code}`, which is the host's own reason"
                ));
            }
            if codes[..index].contains(code) {
                return Err(format!("it declares `{code}` twice"));
            }
        }
        Ok(Self(codes.into_boxed_slice()))
    }

    /// The declared code equal to `code`, if any.
    fn find(&self, code: &str) -> Option<&str> {
        self.0.iter().map(String::as_str).find(|c| *c == code)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Converts one outcome; `text` is the batch's row text.
pub(super) fn from_wit(
    outcome: wit::Outcome,
    text: &str,
    keyring: &Keyring,
    codes: &ReasonCodes,
) -> Outcome {
    match outcome {
        wit::Outcome::Rejected(rejection) => Outcome::Rejected(match codes.find(&rejection.code) {
            Some(code) => Rejection::from_transform(code, rejection.detail),
            None => Rejection::new(
                reason::CONTRACT_VIOLATION,
                "the transform rejected the message with a reason code it did not declare",
            ),
        }),
        wit::Outcome::Row(row) => match row_from_wit(row, text, keyring) {
            Ok(row) => match row.check_columns() {
                Ok(()) => Outcome::Row(row),
                Err(rejection) => Outcome::Rejected(rejection),
            },
            Err(rejection) => Outcome::Rejected(rejection),
        },
    }
}

fn row_from_wit(row: wit::LoginRow, text: &str, keyring: &Keyring) -> Result<Row, Rejection> {
    let create_date = match row.create_date {
        None => None,
        Some(date) => Some(checked_date(date)?),
    };
    let string = |span: Option<wit::Span>, column: &'static str| {
        span.map(|span| cut(text, span, column).map(str::to_owned))
            .transpose()
    };
    Ok(Row {
        user_id: string(row.user_id, "user_id")?,
        device_type: string(row.device_type, "device_type")?,
        masked_ip: protect(keyring, "masked_ip", "ip", row.masked_ip, text)?,
        masked_device_id: protect(
            keyring,
            "masked_device_id",
            "device_id",
            row.masked_device_id,
            text,
        )?,
        locale: string(row.locale, "locale")?,
        app_version: row.app_version,
        create_date,
    })
}

/// A calendar date PostgreSQL's `date` can store (4713 BC to 5874897 AD),
/// checked here so it can never fail a batch's transaction.
fn checked_date(date: wit::Date) -> Result<NaiveDate, Rejection> {
    let date = NaiveDate::from_ymd_opt(date.year, date.month.into(), date.day.into()).ok_or_else(
        || {
            Rejection::new(
                reason::CONTRACT_VIOLATION,
                "the transform returned an impossible create_date",
            )
        },
    )?;
    if !(record::MIN_DATE_YEAR..=record::MAX_DATE_YEAR).contains(&date.year()) {
        return Err(Rejection::new(
            reason::COLUMN_OVERFLOW,
            "column `create_date` would be outside the dates PostgreSQL can store",
        ));
    }
    Ok(date)
}

/// The text a span names, refused before any copy if it cannot fit `column`.
fn cut<'t>(text: &'t str, span: wit::Span, column: &'static str) -> Result<&'t str, Rejection> {
    let limit = record::column_limit(column);
    // varchar(n) counts characters, and a character is at most 4 bytes.
    if span.end.saturating_sub(span.start) as usize > 4 * limit {
        return Err(record::overflow(column, limit));
    }
    slice(text, span)
}

/// `get` is None for a span past the end, backwards or inside a character.
fn slice(text: &str, span: wit::Span) -> Result<&str, Rejection> {
    text.get(span.start as usize..span.end as usize)
        .ok_or_else(|| {
            Rejection::new(
                reason::CONTRACT_VIOLATION,
                "the transform returned a span outside its text",
            )
        })
}

/// Pseudonymizes at most this many bytes: the longest value a protected
/// column could hold in clear, so hashing costs no more than storing.
const MAX_PSEUDONYMIZED_BYTES: usize = 4 * record::PROTECTED_COLUMN_CHARS;

fn protect(
    keyring: &Keyring,
    column: &'static str,
    field: &str,
    value: Option<wit::Protected>,
    text: &str,
) -> Result<Option<String>, Rejection> {
    let Some(value) = value else { return Ok(None) };
    let limit = record::PROTECTED_COLUMN_CHARS;
    let too_long =
        |span: &wit::Span, max: usize| span.end.saturating_sub(span.start) as usize > max;
    Ok(Some(match value {
        wit::Protected::Masked(span) => {
            let len = span.end.saturating_sub(span.start) as usize;
            if masked_len(keyring.current_key_id().len(), len) > limit {
                return Err(record::overflow(column, limit));
            }
            keyring.mask(field, slice(text, span)?)
        }
        wit::Protected::Pseudonymized(span) => {
            if too_long(&span, MAX_PSEUDONYMIZED_BYTES) {
                return Err(record::overflow(column, limit));
            }
            keyring.pseudonymize(field, slice(text, span)?)
        }
        wit::Protected::Clear(span) => {
            if too_long(&span, 4 * limit) {
                return Err(record::overflow(column, limit));
            }
            slice(text, span)?.to_owned()
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        Keyring::new("k1", &crate::masking::MasterKey::parse(key).unwrap(), &[]).unwrap()
    }

    fn codes() -> ReasonCodes {
        ReasonCodes::new(vec!["wrong_schema".into()]).unwrap()
    }

    fn span(start: u32, end: u32) -> wit::Span {
        wit::Span { start, end }
    }

    fn row(user_id: wit::Span, ip: wit::Protected) -> wit::Outcome {
        wit::Outcome::Row(wit::LoginRow {
            user_id: Some(user_id),
            device_type: None,
            masked_ip: Some(ip),
            masked_device_id: None,
            locale: None,
            app_version: Some(230),
            create_date: None,
        })
    }

    fn convert(outcome: wit::Outcome, text: &str) -> Outcome {
        from_wit(outcome, text, &keyring(), &codes())
    }

    fn expect_row(outcome: Outcome) -> Row {
        match outcome {
            Outcome::Row(row) => row,
            Outcome::Rejected(rejection) => panic!("expected a row, got {rejection:?}"),
        }
    }

    fn expect_rejection(outcome: Outcome) -> Rejection {
        match outcome {
            Outcome::Rejected(rejection) => rejection,
            Outcome::Row(row) => panic!("expected a rejection, got {row:?}"),
        }
    }

    #[test]
    fn a_row_takes_its_strings_from_the_text_and_masks_what_it_asks() {
        let keyring = keyring();
        let text = "u-1✓10.0.0.1";
        let got = expect_row(convert(
            row(span(0, 6), wit::Protected::Masked(span(6, 14))),
            text,
        ));
        assert_eq!(got.user_id.as_deref(), Some("u-1✓"));
        let masked = got.masked_ip.unwrap();
        assert_eq!(masked, keyring.mask("ip", "10.0.0.1"));
        // Spans may share text.
        let shared = expect_row(convert(
            row(span(0, 3), wit::Protected::Clear(span(0, 3))),
            text,
        ));
        assert_eq!(shared.masked_ip.as_deref(), Some("u-1"));
    }

    #[test]
    fn a_span_outside_the_text_is_a_contract_violation_for_that_message() {
        let text = "u-1✓10.0.0.1";
        for (user_id, ip) in [
            (span(0, 99), span(6, 14)), // past the end
            (span(4, 5), span(6, 14)),  // inside the ✓
            (span(3, 1), span(6, 14)),  // backwards
            (span(0, 3), span(6, 20)),  // the protected value's
        ] {
            let rejection =
                expect_rejection(convert(row(user_id, wit::Protected::Masked(ip)), text));
            assert_eq!(
                rejection.code,
                reason::CONTRACT_VIOLATION,
                "{user_id:?} {ip:?}"
            );
            assert!(rejection.detail.contains("span"), "{rejection:?}");
        }
    }

    #[test]
    fn an_over_long_span_is_refused_by_its_length_alone() {
        // The text is short: had the host cut or masked these spans first,
        // it would have found them outside the text instead.
        let text = "u-1";
        let huge = span(0, 64 << 20);
        for ip in [
            wit::Protected::Masked(huge),
            wit::Protected::Pseudonymized(huge),
            wit::Protected::Clear(huge),
        ] {
            let rejection = expect_rejection(convert(row(span(0, 3), ip), text));
            assert_eq!(rejection.code, reason::COLUMN_OVERFLOW);
            assert!(rejection.detail.contains("masked_ip"), "{rejection:?}");
        }
        let rejection =
            expect_rejection(convert(row(huge, wit::Protected::Clear(span(0, 3))), text));
        assert_eq!(rejection.code, reason::COLUMN_OVERFLOW);
        assert!(rejection.detail.contains("user_id"), "{rejection:?}");
        // The longest value whose mask still fits is masked.
        let longest = (0..=256)
            .rev()
            .find(|len| masked_len(2, *len) <= record::PROTECTED_COLUMN_CHARS)
            .unwrap();
        let value = "v".repeat(longest + 1);
        let fits = expect_row(convert(
            row(span(0, 1), wit::Protected::Masked(span(0, longest as u32))),
            &value,
        ));
        assert!(fits.masked_ip.unwrap().len() <= record::PROTECTED_COLUMN_CHARS);
        let rejection = expect_rejection(convert(
            row(
                span(0, 1),
                wit::Protected::Masked(span(0, longest as u32 + 1)),
            ),
            &value,
        ));
        assert_eq!(rejection.code, reason::COLUMN_OVERFLOW);
    }

    #[test]
    fn a_date_postgresql_cannot_store_is_refused() {
        let dated = |year| {
            wit::Outcome::Row(wit::LoginRow {
                user_id: None,
                device_type: None,
                masked_ip: None,
                masked_device_id: None,
                locale: None,
                app_version: None,
                create_date: Some(wit::Date {
                    year,
                    month: 1,
                    day: 1,
                }),
            })
        };
        for year in [-5000, -4713] {
            let rejection = expect_rejection(convert(dated(year), ""));
            assert_eq!(rejection.code, reason::COLUMN_OVERFLOW, "{year}");
            assert!(rejection.detail.contains("create_date"));
        }
        // Past chrono's range (year 262142) is no calendar date at all.
        let rejection = expect_rejection(convert(dated(5_874_898), ""));
        assert_eq!(rejection.code, reason::CONTRACT_VIOLATION);
        for year in [-4712, 1970, 262_142] {
            expect_row(convert(dated(year), ""));
        }
    }

    #[test]
    fn only_declared_codes_pass_and_details_are_kept_for_sealing() {
        let rejected = |code: &str| {
            wit::Outcome::Rejected(wit::Rejection {
                code: code.into(),
                detail: "field `ip` 199.172.111.135".into(),
            })
        };
        let declared = expect_rejection(convert(rejected("wrong_schema"), ""));
        assert_eq!(declared.code, "wrong_schema");
        assert!(!declared.detail.contains("199"), "{declared:?}");
        assert_eq!(
            declared.transform_detail.as_deref(),
            Some("field `ip` 199.172.111.135")
        );
        let undeclared = expect_rejection(convert(rejected("ip_199_172_111_135"), ""));
        assert_eq!(undeclared.code, reason::CONTRACT_VIOLATION);
        assert!(!format!("{undeclared:?}").contains("199"), "{undeclared:?}");
    }

    #[test]
    fn declarations_are_checked() {
        assert!(ReasonCodes::new(vec!["ok_1".into(), "b".into()]).is_ok());
        for bad in [
            vec!["Bad".to_owned()],
            vec!["".to_owned()],
            vec!["1abc".to_owned()],
            vec!["x".repeat(65)],
            vec!["dup".to_owned(), "dup".to_owned()],
            vec![reason::TRANSFORM_TRAP.to_owned()],
            (0..65).map(|i| format!("c{i}")).collect(),
        ] {
            let error = ReasonCodes::new(bad.clone()).unwrap_err();
            assert!(!error.contains("Bad") && !error.contains("1abc"), "{error}");
        }
    }
}
