//! A row's values as the contract carries them: a kind byte and a 64-bit
//! word each (WIT `value-kind`), two lists of numbers that cross the
//! boundary as copies. [`Value`] is the typed form authors and tests read;
//! [`Value::encode`] and [`Value::decode`] are the one place that knows
//! the packing.

use crate::wit::ValueKind;

/// Bytes `start..end` of the batch's row text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

/// A calendar date (proleptic Gregorian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

/// One value of a row: its column's type, NULL, or how a PII value is to
/// be protected by the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Null,
    Text(Span),
    Integer(i32),
    Bigint(i64),
    Boolean(bool),
    Double(f64),
    Numeric(Span),
    Date(Date),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamptz(i64),
    Uuid(Span),
    Jsonb(Span),
    Masked(Span),
    Pseudonymized(Span),
    Clear(Span),
}

fn span_word(span: Span) -> u64 {
    u64::from(span.start) | u64::from(span.end) << 32
}

fn word_span(word: u64) -> Span {
    Span {
        start: word as u32,
        end: (word >> 32) as u32,
    }
}

impl Value {
    /// The kind byte (the `value-kind` case's index) and word.
    #[inline]
    pub fn encode(self) -> (u8, u64) {
        let (kind, word) = match self {
            Self::Null => (ValueKind::Null, 0),
            Self::Text(span) => (ValueKind::Text, span_word(span)),
            Self::Integer(v) => (ValueKind::Integer, u64::from(v as u32)),
            Self::Bigint(v) => (ValueKind::Bigint, v as u64),
            Self::Boolean(v) => (ValueKind::Boolean, u64::from(v)),
            Self::Double(v) => (ValueKind::Double, v.to_bits()),
            Self::Numeric(span) => (ValueKind::Numeric, span_word(span)),
            Self::Date(date) => (
                ValueKind::Date,
                u64::from(date.year as u32)
                    | u64::from(date.month) << 32
                    | u64::from(date.day) << 40,
            ),
            Self::Timestamptz(v) => (ValueKind::Timestamptz, v as u64),
            Self::Uuid(span) => (ValueKind::Uuid, span_word(span)),
            Self::Jsonb(span) => (ValueKind::Jsonb, span_word(span)),
            Self::Masked(span) => (ValueKind::Masked, span_word(span)),
            Self::Pseudonymized(span) => (ValueKind::Pseudonymized, span_word(span)),
            Self::Clear(span) => (ValueKind::Clear, span_word(span)),
        };
        (kind as u8, word)
    }

    /// The value a kind byte and word stand for; `None` for an unknown
    /// kind or a boolean other than 0 or 1.
    pub fn decode(kind: u8, word: u64) -> Option<Self> {
        Some(match kind {
            k if k == ValueKind::Null as u8 => Self::Null,
            k if k == ValueKind::Text as u8 => Self::Text(word_span(word)),
            k if k == ValueKind::Integer as u8 => Self::Integer(word as u32 as i32),
            k if k == ValueKind::Bigint as u8 => Self::Bigint(word as i64),
            k if k == ValueKind::Boolean as u8 => match word {
                0 => Self::Boolean(false),
                1 => Self::Boolean(true),
                _ => return None,
            },
            k if k == ValueKind::Double as u8 => Self::Double(f64::from_bits(word)),
            k if k == ValueKind::Numeric as u8 => Self::Numeric(word_span(word)),
            k if k == ValueKind::Date as u8 => Self::Date(Date {
                year: word as u32 as i32,
                month: (word >> 32) as u8,
                day: (word >> 40) as u8,
            }),
            k if k == ValueKind::Timestamptz as u8 => Self::Timestamptz(word as i64),
            k if k == ValueKind::Uuid as u8 => Self::Uuid(word_span(word)),
            k if k == ValueKind::Jsonb as u8 => Self::Jsonb(word_span(word)),
            k if k == ValueKind::Masked as u8 => Self::Masked(word_span(word)),
            k if k == ValueKind::Pseudonymized as u8 => Self::Pseudonymized(word_span(word)),
            k if k == ValueKind::Clear as u8 => Self::Clear(word_span(word)),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_and_unknown_kinds_do_not_decode() {
        let span = Span {
            start: 3,
            end: u32::MAX,
        };
        let date = Date {
            year: -4712,
            month: 12,
            day: 31,
        };
        for value in [
            Value::Null,
            Value::Text(span),
            Value::Integer(i32::MIN),
            Value::Bigint(-1),
            Value::Boolean(true),
            Value::Double(-0.5),
            Value::Numeric(span),
            Value::Date(date),
            Value::Timestamptz(i64::MIN),
            Value::Uuid(span),
            Value::Jsonb(span),
            Value::Masked(span),
            Value::Pseudonymized(span),
            Value::Clear(span),
        ] {
            let (kind, word) = value.encode();
            assert_eq!(Value::decode(kind, word), Some(value));
        }
        // The kinds are the WIT enum's case indexes, in order.
        assert_eq!(Value::Null.encode().0, 0);
        assert_eq!(Value::Clear(span).encode().0, 13);
        assert_eq!(Value::decode(14, 0), None);
        assert_eq!(Value::decode(4, 2), None);
    }
}
