//! A component's outcomes as the host's: every value checked against its
//! declared column before the host spends anything on it.
//!
//! The batch's shape is checked first (one outcome per message, as many rows
//! as the outcomes claim, as many values as those rows' tables have
//! columns, at most 2^20 values): a batch that breaks it fails whole, and
//! the worker retries it message by message, so the shape pins the fault on
//! one message. Then each value, decoded from its kind and word ([`Sent`]):
//! its kind must be its column's type (a PII column takes only a
//! protection, one it allows), a string is cut from the batch's `text` only
//! after its length is known to fit (so a span over 64 MiB costs O(1), not
//! a copy), a PII value is masked only if its result can fit, and dates,
//! times, numbers, uuids and JSON must be ones PostgreSQL stores. Every
//! copy, mask and parse is charged to the call's output budget first
//! ([`Budget`]: spans may share text). A rejection's code must be one the
//! component declared. Whatever fails costs that message alone a dead
//! letter, with a reason and detail written by the host.

use std::cell::Cell;

use chrono::{DateTime, Datelike, NaiveDate};

use super::bindings::maskpipe::transform::types as wit;
use crate::masking::{Keyring, masked_len};
use crate::record::{self, Outcome, Rejection, TableRow, Value, reason};
use crate::schema::{Column, ColumnType, Schema, Table};

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

/// Bytes `start..end` of the batch's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn of(word: u64) -> Self {
        Self {
            start: word as u32,
            end: (word >> 32) as u32,
        }
    }
}

/// One value as the component sent it, decoded from its kind and word
/// (WIT `value-kind`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Sent {
    Null,
    Text(Span),
    Integer(i32),
    Bigint(i64),
    Boolean(bool),
    Double(f64),
    Numeric(Span),
    Date(i32, u8, u8),
    Timestamptz(i64),
    Uuid(Span),
    Jsonb(Span),
    Masked(Span),
    Pseudonymized(Span),
    Clear(Span),
}

impl Sent {
    /// `None` for a kind past the enum or a boolean other than 0 or 1.
    fn decode(kind: u8, word: u64) -> Option<Self> {
        use wit::ValueKind as K;
        // The enum's cases in WIT order: their index is the kind byte.
        const KINDS: [K; 14] = [
            K::Null,
            K::Text,
            K::Integer,
            K::Bigint,
            K::Boolean,
            K::Double,
            K::Numeric,
            K::Date,
            K::Timestamptz,
            K::Uuid,
            K::Jsonb,
            K::Masked,
            K::Pseudonymized,
            K::Clear,
        ];
        Some(match KINDS.get(usize::from(kind))? {
            K::Null => Self::Null,
            K::Text => Self::Text(Span::of(word)),
            K::Integer => Self::Integer(word as u32 as i32),
            K::Bigint => Self::Bigint(word as i64),
            K::Boolean => Self::Boolean(match word {
                0 => false,
                1 => true,
                _ => return None,
            }),
            K::Double => Self::Double(f64::from_bits(word)),
            K::Numeric => Self::Numeric(Span::of(word)),
            K::Date => Self::Date(word as u32 as i32, (word >> 32) as u8, (word >> 40) as u8),
            K::Timestamptz => Self::Timestamptz(word as i64),
            K::Uuid => Self::Uuid(Span::of(word)),
            K::Jsonb => Self::Jsonb(Span::of(word)),
            K::Masked => Self::Masked(Span::of(word)),
            K::Pseudonymized => Self::Pseudonymized(Span::of(word)),
            K::Clear => Self::Clear(Span::of(word)),
        })
    }

    /// The kind byte and word that decode to this value (for tests).
    #[cfg(test)]
    pub(super) fn encode(self) -> (u8, u64) {
        let span = |span: Span| u64::from(span.start) | u64::from(span.end) << 32;
        match self {
            Self::Null => (0, 0),
            Self::Text(s) => (1, span(s)),
            Self::Integer(v) => (2, u64::from(v as u32)),
            Self::Bigint(v) => (3, v as u64),
            Self::Boolean(v) => (4, u64::from(v)),
            Self::Double(v) => (5, v.to_bits()),
            Self::Numeric(s) => (6, span(s)),
            Self::Date(year, month, day) => (
                7,
                u64::from(year as u32) | u64::from(month) << 32 | u64::from(day) << 40,
            ),
            Self::Timestamptz(v) => (8, v as u64),
            Self::Uuid(s) => (9, span(s)),
            Self::Jsonb(s) => (10, span(s)),
            Self::Masked(s) => (11, span(s)),
            Self::Pseudonymized(s) => (12, span(s)),
            Self::Clear(s) => (13, span(s)),
        }
    }
}

/// What the host knows of a component from its declaration.
pub(super) struct Declared<'a> {
    pub schema: &'a Schema,
    pub codes: &'a ReasonCodes,
    /// What converting one call's rows may cost (see [`Budget`]).
    pub output_bytes: usize,
}

/// The most values one call may return: far past any real batch (ten
/// messages of 16 tables of 64 columns is 10,240), small enough to walk.
const MAX_VALUES: usize = 1 << 20;

/// What converting one call's rows may cost the host, in bytes copied,
/// masked, hashed or parsed. Spans may share text, so without it a
/// component could ask for one 10 MiB span a million times over. Charged
/// before the work; once spent, the call fails whole, and retried message
/// by message it costs only the message that spends it.
struct Budget {
    left: Cell<usize>,
    spent: Cell<bool>,
}

impl Budget {
    fn new(bytes: usize) -> Self {
        Self {
            left: Cell::new(bytes),
            spent: Cell::new(false),
        }
    }

    fn charge(&self, bytes: usize) -> Result<(), Rejection> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.spent.set(true);
                Err(Rejection::new(
                    reason::CONTRACT_VIOLATION,
                    "the transform's rows would cost the host more than its output budget",
                ))
            }
        }
    }
}

/// Converts a batch's outcomes, one per message, or refuses the batch's
/// shape (see the module docs).
pub(super) fn from_wit(
    outcomes: wit::Outcomes,
    messages: usize,
    declared: &Declared<'_>,
    keyring: &Keyring,
) -> Result<Vec<Outcome>, Rejection> {
    let shape = |detail: String| Rejection::new(reason::CONTRACT_VIOLATION, detail);
    if outcomes.each.len() != messages {
        return Err(shape(format!(
            "the transform returned {} outcomes for {messages} messages",
            outcomes.each.len()
        )));
    }
    let tables = declared.schema.tables();
    let claimed: u64 = outcomes
        .each
        .iter()
        .map(|outcome| match outcome {
            wit::Outcome::Rows(n) => u64::from(*n),
            wit::Outcome::Rejected(_) => 0,
        })
        .sum();
    if claimed != outcomes.tables.len() as u64 {
        return Err(shape(format!(
            "the transform's outcomes claim {claimed} rows but it returned {}",
            outcomes.tables.len()
        )));
    }
    if outcomes.kinds.len() > MAX_VALUES {
        return Err(shape(format!(
            "the transform returned {} values (at most {MAX_VALUES})",
            outcomes.kinds.len()
        )));
    }
    if outcomes.kinds.len() != outcomes.words.len() {
        return Err(shape(format!(
            "the transform returned {} value kinds but {} value words",
            outcomes.kinds.len(),
            outcomes.words.len()
        )));
    }
    let mut values_needed = 0usize;
    for &table in &outcomes.tables {
        let Some(table) = tables.get(usize::from(table)) else {
            return Err(shape(format!(
                "the transform returned a row for table #{table}; it declared {}",
                tables.len()
            )));
        };
        values_needed += table.columns.len();
    }
    if values_needed != outcomes.kinds.len() {
        return Err(shape(format!(
            "the transform's rows need {values_needed} values but it returned {}",
            outcomes.kinds.len()
        )));
    }

    let text = outcomes.text.as_str();
    let budget = Budget::new(declared.output_bytes);
    let mut row_tables = outcomes.tables.iter();
    let mut values = outcomes.kinds.iter().zip(&outcomes.words);
    let mut converted = Vec::with_capacity(messages);
    for outcome in outcomes.each {
        converted.push(match outcome {
            wit::Outcome::Rejected(rejection) => {
                Outcome::Rejected(rejected(rejection, declared.codes))
            }
            wit::Outcome::Rows(n) => {
                // Every row is consumed, even after one fails, so the next
                // message's rows start where they should.
                let mut rows = Ok(Vec::with_capacity(n as usize));
                for &table in row_tables.by_ref().take(n as usize) {
                    let index = usize::from(table);
                    let table = &tables[index];
                    let mut row_values = values.by_ref().take(table.columns.len());
                    if let Ok(done) = &mut rows {
                        match row_from_wit(table, row_values.by_ref(), text, keyring, &budget) {
                            Ok(values) => done.push(TableRow {
                                table: index,
                                values,
                            }),
                            Err(rejection) => rows = Err(rejection),
                        }
                    }
                    // A failed row stops at its first bad value: skip the rest.
                    row_values.for_each(drop);
                }
                match rows {
                    Ok(rows) => Outcome::Rows(rows),
                    Err(rejection) => Outcome::Rejected(rejection),
                }
            }
        });
    }
    if budget.spent.get() {
        return Err(shape(format!(
            "the transform's rows would cost the host more than {} MiB",
            declared.output_bytes >> 20
        )));
    }
    Ok(converted)
}

fn rejected(rejection: wit::Rejection, codes: &ReasonCodes) -> Rejection {
    match codes.find(&rejection.code) {
        Some(code) => Rejection::from_transform(code, rejection.detail),
        None => Rejection::new(
            reason::CONTRACT_VIOLATION,
            "the transform rejected the message with a reason code it did not declare",
        ),
    }
}

fn row_from_wit<'v>(
    table: &Table,
    values: impl Iterator<Item = (&'v u8, &'v u64)>,
    text: &str,
    keyring: &Keyring,
    budget: &Budget,
) -> Result<Vec<Option<Value>>, Rejection> {
    // A plain loop, not `collect::<Result<_>>()`: this runs for every value
    // of every row, and the adapter chain cost a tenth of the host's time.
    let mut row = Vec::with_capacity(table.columns.len());
    for (column, (&kind, &word)) in table.columns.iter().zip(values) {
        let Some(value) = Sent::decode(kind, word) else {
            return Err(violation(
                table,
                column,
                &format!("has a value of unknown kind {kind} or a malformed word"),
            ));
        };
        row.push(match value {
            Sent::Null if column.nullable => None,
            Sent::Null => {
                return Err(violation(
                    table,
                    column,
                    "is NOT NULL but the transform gave no value",
                ));
            }
            value => {
                Some(value_from_wit(table, column, value, text, keyring, budget).map_err(|e| *e)?)
            }
        });
    }
    Ok(row)
}

/// A contract violation about one column, named (declared names are plain
/// identifiers, never message content).
fn violation(table: &Table, column: &Column, what: &str) -> Rejection {
    Rejection::new(
        reason::CONTRACT_VIOLATION,
        format!("column `{}.{}` {what}", table.name, column.name),
    )
}

fn overflow(table: &Table, column: &Column, what: &str) -> Rejection {
    Rejection::new(
        reason::COLUMN_OVERFLOW,
        format!("column `{}.{}` would {what}", table.name, column.name),
    )
}

/// The longest `numeric` and `jsonb` text taken: far beyond any real value,
/// small enough that one cannot cost the host more than a bounded copy.
const MAX_NUMERIC_BYTES: usize = 1_000;
const MAX_JSONB_BYTES: usize = 1 << 20;
/// The years PostgreSQL's `timestamptz` spans: 4713 BC to 294276 AD.
const MIN_TIMESTAMP_YEAR: i32 = -4712;
const MAX_TIMESTAMP_YEAR: i32 = 294_276;

#[inline]
fn value_from_wit(
    table: &Table,
    column: &Column,
    value: Sent,
    text: &str,
    keyring: &Keyring,
    budget: &Budget,
) -> Result<Value, Box<Rejection>> {
    // The rare rejection is boxed: a `Result` the size of a `Value` moves
    // in registers, where one the size of a `Rejection` went through the
    // stack for every value (a fifth of the conversion's time).
    if let Some(pii) = &column.pii {
        let protected = match value {
            Sent::Masked(span) => Protection::Masked(span),
            Sent::Pseudonymized(span) => Protection::Pseudonymized(span),
            Sent::Clear(span) => Protection::Clear(span),
            _ => {
                return Err(violation(
                    table,
                    column,
                    &format!(
                        "holds PII (field `{}`) but the transform gave an unprotected value",
                        pii.field
                    ),
                )
                .into());
            }
        };
        return Ok(Value::Text(protect(
            table, column, keyring, protected, text, budget,
        )?));
    }
    Ok(match (column.kind, value) {
        (ColumnType::Text { max_chars }, Sent::Text(span)) => {
            Value::Text(checked_text(table, column, max_chars, span, text, budget)?.to_owned())
        }
        (ColumnType::Integer, Sent::Integer(v)) => Value::Integer(v),
        (ColumnType::Bigint, Sent::Bigint(v)) => Value::Bigint(v),
        (ColumnType::Boolean, Sent::Boolean(v)) => Value::Boolean(v),
        (ColumnType::Double, Sent::Double(v)) => {
            if !v.is_finite() {
                return Err(violation(table, column, "would hold NaN or an infinity").into());
            }
            Value::Double(v)
        }
        (ColumnType::Numeric, Sent::Numeric(span)) => {
            if span_len(span) > MAX_NUMERIC_BYTES {
                return Err(
                    overflow(table, column, &format!("exceed {MAX_NUMERIC_BYTES} digits")).into(),
                );
            }
            budget.charge(span_len(span))?;
            let digits = slice(text, span)?;
            if !is_decimal(digits) {
                return Err(violation(table, column, "would hold a malformed number").into());
            }
            Value::Numeric(digits.to_owned())
        }
        (ColumnType::Date, Sent::Date(year, month, day)) => {
            Value::Date(checked_date(table, column, year, month, day)?)
        }
        (ColumnType::Timestamptz, Sent::Timestamptz(micros)) => {
            let time = DateTime::from_timestamp_micros(micros)
                .filter(|time| (MIN_TIMESTAMP_YEAR..=MAX_TIMESTAMP_YEAR).contains(&time.year()))
                .ok_or_else(|| {
                    overflow(table, column, "be outside the times PostgreSQL can store")
                })?;
            Value::Timestamptz(time)
        }
        (ColumnType::Uuid, Sent::Uuid(span)) => {
            let uuid = if span_len(span) == 36 {
                slice(text, span)?
            } else {
                ""
            };
            if !is_uuid(uuid) {
                return Err(violation(table, column, "would hold a malformed uuid").into());
            }
            Value::Uuid(uuid.to_owned())
        }
        (ColumnType::Jsonb, Sent::Jsonb(span)) => {
            if span_len(span) > MAX_JSONB_BYTES {
                return Err(overflow(
                    table,
                    column,
                    &format!("exceed {} MiB of JSON", MAX_JSONB_BYTES >> 20),
                )
                .into());
            }
            let json = slice(text, span)?;
            budget.charge(json.len())?;
            // Parsed in full, as PostgreSQL will: `IgnoredAny` lets a lone
            // surrogate or an out-of-range number through. And jsonb cannot
            // hold U+0000, even escaped.
            if serde_json::from_str::<serde_json::Value>(json).is_err() || json.contains("\\u0000")
            {
                return Err(violation(table, column, "would hold malformed JSON").into());
            }
            Value::Jsonb(json.to_owned())
        }
        (kind, value) => {
            return Err(violation(
                table,
                column,
                &format!(
                    "is {} but the transform gave {}",
                    kind.sql(),
                    value_kind(&value)
                ),
            )
            .into());
        }
    })
}

fn value_kind(value: &Sent) -> &'static str {
    match value {
        Sent::Text(_) => "text",
        Sent::Integer(_) => "an integer",
        Sent::Bigint(_) => "a bigint",
        Sent::Boolean(_) => "a boolean",
        Sent::Double(_) => "a double",
        Sent::Numeric(_) => "a numeric",
        Sent::Date(..) => "a date",
        Sent::Timestamptz(_) => "a timestamptz",
        Sent::Uuid(_) => "a uuid",
        Sent::Jsonb(_) => "jsonb",
        Sent::Null => "NULL",
        Sent::Masked(_) | Sent::Pseudonymized(_) | Sent::Clear(_) => "a protected value",
    }
}

fn span_len(span: Span) -> usize {
    span.end.saturating_sub(span.start) as usize
}

/// A text value that fits `varchar(max_chars)`, cut from `text` only once
/// its byte length cannot be too long (a character is at most 4 bytes).
fn checked_text<'t>(
    table: &Table,
    column: &Column,
    max_chars: u32,
    span: Span,
    text: &'t str,
    budget: &Budget,
) -> Result<&'t str, Rejection> {
    let limit = max_chars as usize;
    let too_long = || record::overflow(&table.name, &column.name, max_chars);
    if span_len(span) > 4 * limit {
        return Err(too_long());
    }
    budget.charge(span_len(span))?;
    let value = slice(text, span)?;
    // PostgreSQL text cannot hold NUL, and varchar(n) counts characters.
    if value.contains('\0') {
        return Err(overflow(table, column, "contain a NUL character"));
    }
    if value.len() > limit && value.chars().count() > limit {
        return Err(too_long());
    }
    Ok(value)
}

/// `-12.50`: an optional sign, digits, an optional fraction.
fn is_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    !whole.is_empty() && digits(whole) && digits(fraction) && !unsigned.ends_with('.')
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A calendar date PostgreSQL's `date` can store (4713 BC to 5874897 AD),
/// checked here so it can never fail a batch's transaction.
fn checked_date(
    table: &Table,
    column: &Column,
    year: i32,
    month: u8,
    day: u8,
) -> Result<NaiveDate, Rejection> {
    let date = NaiveDate::from_ymd_opt(year, month.into(), day.into())
        .ok_or_else(|| violation(table, column, "would hold an impossible date"))?;
    if !(record::MIN_DATE_YEAR..=record::MAX_DATE_YEAR).contains(&date.year()) {
        return Err(overflow(
            table,
            column,
            "be outside the dates PostgreSQL can store",
        ));
    }
    Ok(date)
}

/// `get` is None for a span past the end, backwards or inside a character.
fn slice(text: &str, span: Span) -> Result<&str, Rejection> {
    text.get(span.start as usize..span.end as usize)
        .ok_or_else(|| {
            Rejection::new(
                reason::CONTRACT_VIOLATION,
                "the transform returned a span outside its text",
            )
        })
}

/// Pseudonymizes at most this many bytes per character the column holds:
/// the longest value it could hold in clear, so hashing costs no more than
/// storing.
const PSEUDONYMIZED_BYTES_PER_CHAR: usize = 4;
/// The longest pseudonym (`ps1.<key id>.…`), as the budget counts it.
const PSEUDONYM_BYTES: usize = 44;

/// How a PII value asks to be stored.
#[derive(Clone, Copy)]
enum Protection {
    Masked(Span),
    Pseudonymized(Span),
    Clear(Span),
}

/// Protects a PII value as its column allows, if the result fits.
fn protect(
    table: &Table,
    column: &Column,
    keyring: &Keyring,
    value: Protection,
    text: &str,
    budget: &Budget,
) -> Result<String, Rejection> {
    let (ColumnType::Text { max_chars }, Some(pii)) = (column.kind, &column.pii) else {
        // Schema::new allows PII only on text columns.
        return Err(violation(table, column, "cannot hold protected values"));
    };
    let limit = max_chars as usize;
    let too_long = || record::overflow(&table.name, &column.name, max_chars);
    let allows = pii.allows;
    let (allowed, how) = match &value {
        Protection::Masked(_) => (allows.masked, "masked"),
        Protection::Pseudonymized(_) => (allows.pseudonymized, "pseudonymized"),
        Protection::Clear(_) => (allows.clear, "in clear"),
    };
    if !allowed {
        return Err(violation(
            table,
            column,
            &format!("does not allow its values {how}"),
        ));
    }
    Ok(match value {
        Protection::Masked(span) => {
            let masked = masked_len(keyring.current_key_id().len(), span_len(span));
            if masked > limit {
                return Err(too_long());
            }
            budget.charge(masked)?;
            keyring.mask(&pii.field, slice(text, span)?)
        }
        Protection::Pseudonymized(span) => {
            if span_len(span) > PSEUDONYMIZED_BYTES_PER_CHAR * limit {
                return Err(too_long());
            }
            budget.charge(span_len(span) + PSEUDONYM_BYTES)?;
            let pseudonym = keyring.pseudonymize(&pii.field, slice(text, span)?);
            if pseudonym.len() > limit {
                return Err(too_long());
            }
            pseudonym
        }
        Protection::Clear(span) => {
            checked_text(table, column, max_chars, span, text, budget)?.to_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Allows, Pii};

    fn keyring() -> Keyring {
        let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        Keyring::new("k1", &crate::masking::MasterKey::parse(key).unwrap(), &[]).unwrap()
    }

    fn codes() -> ReasonCodes {
        ReasonCodes::new(vec!["wrong_schema".into()]).unwrap()
    }

    fn column(name: &str, kind: ColumnType) -> Column {
        Column {
            name: name.into(),
            kind,
            nullable: true,
            pii: None,
        }
    }

    /// `logins(user_id varchar(128), masked_ip varchar(256) PII ip masked
    /// or clear, app_version integer, day date NOT NULL)` and a table of
    /// every other type.
    fn schema() -> Schema {
        let mut ip = column("masked_ip", ColumnType::Text { max_chars: 256 });
        ip.pii = Some(Pii {
            field: "ip".into(),
            allows: Allows {
                masked: true,
                clear: true,
                ..Allows::default()
            },
        });
        let mut day = column("day", ColumnType::Date);
        day.nullable = false;
        Schema::new(vec![
            Table {
                name: "logins".into(),
                columns: vec![
                    column("user_id", ColumnType::Text { max_chars: 128 }),
                    ip,
                    column("app_version", ColumnType::Integer),
                    day,
                ],
            },
            Table {
                name: "kinds".into(),
                columns: vec![
                    column("b", ColumnType::Bigint),
                    column("f", ColumnType::Boolean),
                    column("d", ColumnType::Double),
                    column("n", ColumnType::Numeric),
                    column("t", ColumnType::Timestamptz),
                    column("u", ColumnType::Uuid),
                    column("j", ColumnType::Jsonb),
                ],
            },
        ])
        .unwrap()
    }

    /// Outcomes with these values packed, and nothing else.
    fn packed(values: Vec<Sent>) -> wit::Outcomes {
        let (kinds, words) = values.into_iter().map(Sent::encode).unzip();
        wit::Outcomes {
            text: String::new(),
            tables: Vec::new(),
            kinds,
            words,
            each: Vec::new(),
        }
    }

    #[test]
    fn every_kind_decodes_what_it_encodes_and_nothing_else_decodes() {
        let span = Span {
            start: 7,
            end: u32::MAX,
        };
        for value in [
            Sent::Null,
            Sent::Text(span),
            Sent::Integer(-5),
            Sent::Bigint(i64::MIN),
            Sent::Boolean(true),
            Sent::Double(-0.25),
            Sent::Numeric(span),
            Sent::Date(-4712, 12, 31),
            Sent::Timestamptz(-1),
            Sent::Uuid(span),
            Sent::Jsonb(span),
            Sent::Masked(span),
            Sent::Pseudonymized(span),
            Sent::Clear(span),
        ] {
            let (kind, word) = value.encode();
            assert_eq!(Sent::decode(kind, word), Some(value), "{value:?}");
        }
        assert_eq!(Sent::decode(14, 0), None);
        assert_eq!(Sent::decode(u8::MAX, 0), None);
        assert_eq!(Sent::decode(4, 2), None, "a boolean is 0 or 1");
    }

    fn span(start: u32, end: u32) -> Span {
        Span { start, end }
    }

    fn day() -> Sent {
        Sent::Date(2022, 12, 12)
    }

    fn login(user_id: Span, ip: Sent) -> Vec<Sent> {
        vec![Sent::Text(user_id), ip, Sent::Integer(230), day()]
    }

    /// One message with these rows of `logins`, converted.
    fn convert_rows(rows: Vec<Vec<Sent>>, text: &str) -> Outcome {
        let outcomes = wit::Outcomes {
            text: text.into(),
            tables: vec![0; rows.len()],
            each: vec![wit::Outcome::Rows(rows.len() as u32)],
            ..packed(rows.into_iter().flatten().collect())
        };
        convert(outcomes, 1).unwrap().remove(0)
    }

    fn convert(outcomes: wit::Outcomes, messages: usize) -> Result<Vec<Outcome>, Rejection> {
        let schema = schema();
        let codes = codes();
        let declared = Declared {
            schema: &schema,
            codes: &codes,
            output_bytes: 64 << 20,
        };
        from_wit(outcomes, messages, &declared, &keyring())
    }

    fn expect_rows(outcome: Outcome) -> Vec<TableRow> {
        match outcome {
            Outcome::Rows(rows) => rows,
            Outcome::Rejected(rejection) => panic!("expected rows, got {rejection:?}"),
        }
    }

    fn expect_rejection(outcome: Outcome) -> Rejection {
        match outcome {
            Outcome::Rejected(rejection) => rejection,
            Outcome::Rows(rows) => panic!("expected a rejection, got {rows:?}"),
        }
    }

    fn text_of(value: &Option<Value>) -> &str {
        match value {
            Some(Value::Text(text)) => text,
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn a_row_takes_its_strings_from_the_text_and_masks_what_it_asks() {
        let keyring = keyring();
        let text = "u-1✓10.0.0.1";
        let rows = expect_rows(convert_rows(
            vec![login(span(0, 6), Sent::Masked(span(6, 14)))],
            text,
        ));
        assert_eq!(rows.len(), 1);
        assert_eq!(text_of(&rows[0].values[0]), "u-1✓");
        assert_eq!(text_of(&rows[0].values[1]), keyring.mask("ip", "10.0.0.1"));
        assert_eq!(rows[0].values[2], Some(Value::Integer(230)));
        // Spans may share text.
        let shared = expect_rows(convert_rows(
            vec![login(span(0, 3), Sent::Clear(span(0, 3)))],
            text,
        ));
        assert_eq!(text_of(&shared[0].values[1]), "u-1");
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
                expect_rejection(convert_rows(vec![login(user_id, Sent::Masked(ip))], text));
            assert_eq!(
                rejection.code,
                reason::CONTRACT_VIOLATION,
                "{user_id:?} {ip:?}"
            );
            assert!(rejection.detail.contains("span"), "{rejection:?}");
        }
    }

    #[test]
    fn an_over_long_span_is_refused_by_its_length_alone_with_the_declared_limit() {
        // The text is short: had the host cut or masked these spans first,
        // it would have found them outside the text instead.
        let text = "u-1";
        let huge = span(0, 64 << 20);
        for ip in [Sent::Masked(huge), Sent::Clear(huge)] {
            let rejection = expect_rejection(convert_rows(vec![login(span(0, 3), ip)], text));
            assert_eq!(rejection.code, reason::COLUMN_OVERFLOW);
            assert!(
                rejection.detail.contains("logins.masked_ip"),
                "{rejection:?}"
            );
        }
        let rejection = expect_rejection(convert_rows(
            vec![login(huge, Sent::Clear(span(0, 3)))],
            text,
        ));
        assert_eq!(rejection.code, reason::COLUMN_OVERFLOW);
        assert!(rejection.detail.contains("varchar(128)"), "{rejection:?}");
        // The declared limit, in characters: 128 multi-byte ones fit, 129 do not.
        for (chars, fits) in [(128, true), (129, false)] {
            let value = "é".repeat(chars);
            let end = value.len() as u32;
            let outcome = convert_rows(vec![login(span(0, end), Sent::Clear(span(0, 2)))], &value);
            assert_eq!(matches!(outcome, Outcome::Rows(_)), fits, "{chars}");
        }
        // The longest value whose mask still fits is masked.
        let longest = (0..=256)
            .rev()
            .find(|len| masked_len(2, *len) <= 256)
            .unwrap();
        let value = "v".repeat(longest + 1);
        let fits = expect_rows(convert_rows(
            vec![login(span(0, 1), Sent::Masked(span(0, longest as u32)))],
            &value,
        ));
        assert!(text_of(&fits[0].values[1]).len() <= 256);
        let rejection = expect_rejection(convert_rows(
            vec![login(span(0, 1), Sent::Masked(span(0, longest as u32 + 1)))],
            &value,
        ));
        assert_eq!(rejection.code, reason::COLUMN_OVERFLOW);
    }

    #[test]
    fn values_must_be_their_columns_types_and_protections() {
        let text = "u-1";
        let mut wrong_type = login(span(0, 3), Sent::Masked(span(0, 3)));
        wrong_type[0] = Sent::Integer(1);
        let mut unprotected = login(span(0, 3), Sent::Masked(span(0, 3)));
        unprotected[1] = Sent::Text(span(0, 3));
        let not_allowed = login(span(0, 3), Sent::Pseudonymized(span(0, 3)));
        let mut null_in_not_null = login(span(0, 3), Sent::Masked(span(0, 3)));
        null_in_not_null[3] = Sent::Null;
        for (row, column) in [
            (wrong_type, "logins.user_id"),
            (unprotected, "logins.masked_ip"),
            (not_allowed, "logins.masked_ip"),
            (null_in_not_null, "logins.day"),
        ] {
            let rejection = expect_rejection(convert_rows(vec![row], text));
            assert_eq!(rejection.code, reason::CONTRACT_VIOLATION, "{rejection:?}");
            assert!(rejection.detail.contains(column), "{rejection:?}");
        }
        // NULL where the column allows it.
        let mut nulls = login(span(0, 3), Sent::Masked(span(0, 3)));
        nulls[0] = Sent::Null;
        nulls[1] = Sent::Null;
        let rows = expect_rows(convert_rows(vec![nulls], text));
        assert_eq!(rows[0].values[0], None);
    }

    #[test]
    fn every_type_is_checked_before_postgresql_sees_it() {
        let text = "-12.50|0d4f0a4e-8a3c-4b5e-9f00-1234567890ab|{\"a\": [1]}|1e5|xyz|{\"a\": \"\\u0000\"}|\"\\ud800\"|1e1000000";
        let at = |needle: &str| {
            let start = text.find(needle).unwrap() as u32;
            span(start, start + needle.len() as u32)
        };
        let kinds = |values: Vec<Sent>| wit::Outcomes {
            text: text.into(),
            tables: vec![1],
            each: vec![wit::Outcome::Rows(1)],
            ..packed(values)
        };
        let good = vec![
            Sent::Bigint(i64::MAX),
            Sent::Boolean(true),
            Sent::Double(1.5),
            Sent::Numeric(at("-12.50")),
            Sent::Timestamptz(1_670_839_200_000_000),
            Sent::Uuid(at("0d4f0a4e-8a3c-4b5e-9f00-1234567890ab")),
            Sent::Jsonb(at("{\"a\": [1]}")),
        ];
        let rows = expect_rows(convert(kinds(good.clone()), 1).unwrap().remove(0));
        assert_eq!(rows[0].table, 1);
        assert_eq!(rows[0].values[3], Some(Value::Numeric("-12.50".into())));
        assert_eq!(
            rows[0].values[4],
            Some(Value::Timestamptz(
                DateTime::from_timestamp(1_670_839_200, 0).unwrap()
            ))
        );
        for (index, bad, code) in [
            (2, Sent::Double(f64::NAN), reason::CONTRACT_VIOLATION),
            (2, Sent::Double(f64::INFINITY), reason::CONTRACT_VIOLATION),
            (3, Sent::Numeric(at("1e5")), reason::CONTRACT_VIOLATION),
            (3, Sent::Numeric(at("xyz")), reason::CONTRACT_VIOLATION),
            (4, Sent::Timestamptz(i64::MIN), reason::COLUMN_OVERFLOW),
            (5, Sent::Uuid(at("xyz")), reason::CONTRACT_VIOLATION),
            (6, Sent::Jsonb(at("xyz")), reason::CONTRACT_VIOLATION),
            (
                6,
                Sent::Jsonb(at("{\"a\": \"\\u0000\"}")),
                reason::CONTRACT_VIOLATION,
            ),
            (
                6,
                Sent::Jsonb(at("\"\\ud800\"")),
                reason::CONTRACT_VIOLATION,
            ),
            (6, Sent::Jsonb(at("1e1000000")), reason::CONTRACT_VIOLATION),
        ] {
            let mut values = good.clone();
            values[index] = bad;
            let rejection = expect_rejection(convert(kinds(values), 1).unwrap().remove(0));
            assert_eq!(rejection.code, code, "{rejection:?}");
        }
    }

    #[test]
    fn rows_sharing_one_span_cannot_spend_more_than_the_output_budget() {
        // Spans may share text: 1,000 rows whose user_id is the same 100
        // bytes ask the host for 100,000 bytes of copies.
        let text = "u".repeat(100);
        let row = || login(span(0, 100), Sent::Clear(span(0, 1)));
        let many = |rows: usize| wit::Outcomes {
            text: text.clone(),
            tables: vec![0; rows],
            each: vec![wit::Outcome::Rows(rows as u32)],
            ..packed((0..rows).flat_map(|_| row()).collect())
        };
        let schema = schema();
        let codes = codes();
        let declared = |output_bytes| Declared {
            schema: &schema,
            codes: &codes,
            output_bytes,
        };
        let keyring = keyring();
        let rejection = from_wit(many(1_000), 1, &declared(50_000), &keyring).unwrap_err();
        assert_eq!(rejection.code, reason::CONTRACT_VIOLATION);
        assert!(
            rejection.detail.contains("cost the host more than"),
            "{rejection:?}"
        );
        // Within the budget, the same rows pass.
        let fine = from_wit(many(1_000), 1, &declared(200_000), &keyring).unwrap();
        assert_eq!(expect_rows(fine[0].clone()).len(), 1_000);
        // And no call may return more than MAX_VALUES values at all.
        let too_many = wit::Outcomes {
            text: String::new(),
            tables: Vec::new(),
            each: vec![wit::Outcome::Rows(0)],
            kinds: vec![0; MAX_VALUES + 1],
            words: vec![0; MAX_VALUES + 1],
        };
        let rejection = from_wit(too_many, 1, &declared(64 << 20), &keyring).unwrap_err();
        assert!(
            rejection.detail.contains("values (at most"),
            "{rejection:?}"
        );
    }

    #[test]
    fn a_batch_of_the_wrong_shape_fails_whole() {
        let text = "u-1";
        let row = || login(span(0, 3), Sent::Masked(span(0, 3)));
        let shaped = |tables: Vec<u8>, each: Vec<wit::Outcome>, values| wit::Outcomes {
            text: text.into(),
            tables,
            each,
            ..packed(values)
        };
        // Fan-out and skip: two rows for the first message, none for the second.
        let fine = convert(
            shaped(
                vec![0, 0],
                vec![wit::Outcome::Rows(2), wit::Outcome::Rows(0)],
                [row(), row()].concat(),
            ),
            2,
        )
        .unwrap();
        assert_eq!(expect_rows(fine[0].clone()).len(), 2);
        assert_eq!(fine[1], Outcome::Rows(Vec::new()));
        assert_eq!(fine[1].ledger_outcome(), "skipped");
        let mut few_values = row();
        few_values.pop();
        for (outcomes, messages) in [
            // one outcome too few
            (shaped(vec![0], vec![wit::Outcome::Rows(1)], row()), 2),
            // claims two rows, returns one
            (shaped(vec![0], vec![wit::Outcome::Rows(2)], row()), 1),
            // a table it never declared
            (shaped(vec![7], vec![wit::Outcome::Rows(1)], row()), 1),
            // a value short
            (shaped(vec![0], vec![wit::Outcome::Rows(1)], few_values), 1),
            // u32::MAX rows claimed
            (
                shaped(vec![0], vec![wit::Outcome::Rows(u32::MAX)], row()),
                1,
            ),
        ] {
            let rejection = convert(outcomes, messages).unwrap_err();
            assert_eq!(rejection.code, reason::CONTRACT_VIOLATION, "{rejection:?}");
        }
    }

    #[test]
    fn a_bad_row_rejects_its_message_and_leaves_the_next_ones_rows_in_place() {
        let text = "u-1";
        let good = login(span(0, 3), Sent::Masked(span(0, 3)));
        let mut bad = good.clone();
        bad[0] = Sent::Integer(1);
        let outcomes = wit::Outcomes {
            text: text.into(),
            tables: vec![0, 0, 0],
            each: vec![wit::Outcome::Rows(2), wit::Outcome::Rows(1)],
            ..packed([bad, good.clone(), good].concat())
        };
        let converted = convert(outcomes, 2).unwrap();
        expect_rejection(converted[0].clone());
        let rows = expect_rows(converted[1].clone());
        assert_eq!(text_of(&rows[0].values[0]), "u-1");
    }

    #[test]
    fn a_date_postgresql_cannot_store_is_refused() {
        let dated = |year| {
            let mut row = login(span(0, 0), Sent::Clear(span(0, 0)));
            row[3] = Sent::Date(year, 1, 1);
            row
        };
        for year in [-5000, -4713] {
            let rejection = expect_rejection(convert_rows(vec![dated(year)], ""));
            assert_eq!(rejection.code, reason::COLUMN_OVERFLOW, "{year}");
            assert!(rejection.detail.contains("logins.day"));
        }
        // Past chrono's range (year 262142) is no calendar date at all.
        let rejection = expect_rejection(convert_rows(vec![dated(5_874_898)], ""));
        assert_eq!(rejection.code, reason::CONTRACT_VIOLATION);
        for year in [-4712, 1970, 262_142] {
            expect_rows(convert_rows(vec![dated(year)], ""));
        }
    }

    #[test]
    fn only_declared_codes_pass_and_details_are_kept_for_sealing() {
        let rejected = |code: &str| wit::Outcomes {
            text: String::new(),
            tables: Vec::new(),
            kinds: Vec::new(),
            words: Vec::new(),
            each: vec![wit::Outcome::Rejected(wit::Rejection {
                code: code.into(),
                detail: "field `ip` 199.172.111.135".into(),
            })],
        };
        let declared = expect_rejection(convert(rejected("wrong_schema"), 1).unwrap().remove(0));
        assert_eq!(declared.code, "wrong_schema");
        assert!(!declared.detail.contains("199"), "{declared:?}");
        assert_eq!(
            declared.transform_detail.as_deref(),
            Some("field `ip` 199.172.111.135")
        );
        let undeclared = expect_rejection(
            convert(rejected("ip_199_172_111_135"), 1)
                .unwrap()
                .remove(0),
        );
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
