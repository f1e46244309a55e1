//! The way out: a batch's rows, packed as the WIT `outcomes` carries them.

use crate::batch::Rejection;
use crate::value::{Date, Span, Value};
use crate::wit::{Batch, Outcome, Outcomes};

/// The text of a batch's rows, as the WIT `outcomes` carries it: every
/// string of every row back to back, each known by its span.
#[derive(Debug, Default)]
pub struct RowText(String);

impl RowText {
    /// Room for a batch of `bodies` bytes: a row's strings are mostly parts
    /// of its body, so that is a good first guess.
    pub fn for_bodies(bodies: &str) -> Self {
        Self::with_capacity(bodies.len())
    }

    pub fn with_capacity(bytes: usize) -> Self {
        Self(String::with_capacity(bytes))
    }

    /// Appends `value`; its span in the text, `start..end` in bytes. (On
    /// wasm32 a text cannot outgrow `u32`; natively, a span past it
    /// saturates, and the host refuses it as out of range.)
    #[inline]
    pub fn push(&mut self, value: &str) -> (u32, u32) {
        let offset = |at: usize| u32::try_from(at).unwrap_or(u32::MAX);
        let start = offset(self.0.len());
        self.0.push_str(value);
        (start, offset(self.0.len()))
    }

    /// [`push`](Self::push), as a WIT `span`.
    #[inline]
    pub fn span(&mut self, value: &str) -> Span {
        let (start, end) = self.push(value);
        Span { start, end }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops what was pushed after byte `len` (a length this text had, so a
    /// character boundary).
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A batch's outcomes as they are built: the rows of every message (their
/// tables, their values and the text their strings live in) and one
/// outcome per message.
///
/// [`message`](Self::message) runs one message's transform and records what
/// it became: `rows(n)` for the `n` rows it added, or, if it failed, its
/// rejection, after taking back every row, value and string it had added.
/// [`export_transform!`](crate::export_transform) calls it for each message.
#[derive(Debug, Default)]
pub struct Rows {
    text: RowText,
    tables: Vec<u8>,
    /// Each value's kind and word (see [`Value::encode`]).
    kinds: Vec<u8>,
    words: Vec<u64>,
    each: Vec<Outcome>,
}

impl Rows {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `messages` messages of about `values_per_message` values,
    /// with `text_bytes` of strings, so that a typical batch never grows a
    /// buffer.
    pub fn with_capacity(text_bytes: usize, messages: usize, values_per_message: usize) -> Self {
        Self {
            text: RowText::with_capacity(text_bytes),
            tables: Vec::with_capacity(messages),
            kinds: Vec::with_capacity(messages.saturating_mul(values_per_message)),
            words: Vec::with_capacity(messages.saturating_mul(values_per_message)),
            each: Vec::with_capacity(messages),
        }
    }

    /// Room for `batch`, one row per message of `values_per_message` values
    /// (a row's strings are mostly parts of its body).
    pub fn for_batch(batch: &Batch, values_per_message: usize) -> Self {
        Self::with_capacity(
            batch.bodies.len(),
            batch.body_ends.len(),
            values_per_message,
        )
    }

    /// Starts a row of the declared table at index `table`; its values
    /// follow, one per column, in declared order.
    #[inline]
    pub fn row(&mut self, table: u8) -> RowBuilder<'_> {
        self.tables.push(table);
        RowBuilder { rows: self }
    }

    /// Appends `value` to the text and returns its span, for a value built
    /// by hand ([`RowBuilder::value`]) or a string several values share.
    #[inline]
    pub fn span(&mut self, value: &str) -> Span {
        self.text.span(value)
    }

    /// Runs one message's `transform` and records its outcome: `rows(n)`
    /// for the `n` rows it added; if it fails, its rejection, with every
    /// row, value and string it added taken back, so a rejected message
    /// leaves nothing behind. (A transform must not call `message` itself.)
    #[inline]
    pub fn message(&mut self, transform: impl FnOnce(&mut Self) -> Result<(), Rejection>) {
        let (text, tables, values) = (self.text.len(), self.tables.len(), self.kinds.len());
        match transform(self) {
            Ok(()) => {
                // A count past u32 cannot happen: a batch is far smaller.
                let added = u32::try_from(self.tables.len() - tables).unwrap_or(u32::MAX);
                self.each.push(Outcome::Rows(added));
            }
            Err(rejection) => {
                self.text.truncate(text);
                self.tables.truncate(tables);
                self.kinds.truncate(values);
                self.words.truncate(values);
                self.each.push(Outcome::Rejected(rejection.into()));
            }
        }
    }

    /// Records a message that was refused before any transform ran (a
    /// malformed batch entry, say).
    pub fn reject(&mut self, rejection: Rejection) {
        self.each.push(Outcome::Rejected(rejection.into()));
    }

    /// Records `outcome` as is, with no check that it matches the rows: the
    /// raw form of [`message`](Self::message), for what it cannot express
    /// (a reason code built at run time, or a test fixture that breaks the
    /// contract on purpose).
    pub fn push_outcome(&mut self, outcome: Outcome) {
        self.each.push(outcome);
    }

    pub fn text(&self) -> &str {
        self.text.as_str()
    }

    /// Each row's table index, row after row.
    pub fn tables(&self) -> &[u8] {
        &self.tables
    }

    /// Every row's values, row after row, decoded (for tests: the
    /// component sends them packed).
    pub fn values(&self) -> Vec<Value> {
        self.kinds
            .iter()
            .zip(&self.words)
            .filter_map(|(&kind, &word)| Value::decode(kind, word))
            .collect()
    }

    /// One outcome per message recorded so far.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.each
    }

    pub fn into_outcomes(self) -> Outcomes {
        Outcomes {
            text: self.text.into_string(),
            tables: self.tables,
            kinds: self.kinds,
            words: self.words,
            each: self.each,
        }
    }
}

/// One row being written: each call appends the value of the next column.
/// Strings are appended to the batch's text and carried as spans, so no
/// value allocates.
pub struct RowBuilder<'r> {
    rows: &'r mut Rows,
}

/// `opt_*` twins of value methods: `None` is SQL NULL.
macro_rules! optional {
    ($($(#[$doc:meta])* $opt:ident => $method:ident($type:ty);)*) => {
        $(
            $(#[$doc])*
            #[inline]
            pub fn $opt(&mut self, value: Option<$type>) -> &mut Self {
                match value {
                    Some(value) => self.$method(value),
                    None => self.null(),
                }
            }
        )*
    };
}

impl RowBuilder<'_> {
    /// Appends a value built by hand.
    #[inline]
    pub fn value(&mut self, value: Value) -> &mut Self {
        let (kind, word) = value.encode();
        self.rows.kinds.push(kind);
        self.rows.words.push(word);
        self
    }

    /// Appends `value` to the batch's text without adding a value: its span,
    /// for [`value`](Self::value) or for several values to share.
    #[inline]
    pub fn span(&mut self, value: &str) -> Span {
        self.rows.text.span(value)
    }

    /// SQL NULL.
    #[inline]
    pub fn null(&mut self) -> &mut Self {
        self.value(Value::Null)
    }

    /// A `varchar` value (of a column that is not PII).
    #[inline]
    pub fn text(&mut self, value: &str) -> &mut Self {
        let span = self.span(value);
        self.value(Value::Text(span))
    }

    #[inline]
    pub fn integer(&mut self, value: i32) -> &mut Self {
        self.value(Value::Integer(value))
    }

    #[inline]
    pub fn bigint(&mut self, value: i64) -> &mut Self {
        self.value(Value::Bigint(value))
    }

    #[inline]
    pub fn boolean(&mut self, value: bool) -> &mut Self {
        self.value(Value::Boolean(value))
    }

    /// A `double precision` value; the host refuses NaN and the infinities.
    #[inline]
    pub fn double(&mut self, value: f64) -> &mut Self {
        self.value(Value::Double(value))
    }

    /// A `numeric` value, as decimal digits with an optional sign and
    /// fraction (`-12.50`).
    #[inline]
    pub fn numeric(&mut self, value: &str) -> &mut Self {
        let span = self.span(value);
        self.value(Value::Numeric(span))
    }

    #[inline]
    pub fn date(&mut self, value: Date) -> &mut Self {
        self.value(Value::Date(value))
    }

    /// A `timestamp with time zone`, in microseconds since the Unix epoch.
    #[inline]
    pub fn timestamptz(&mut self, micros: i64) -> &mut Self {
        self.value(Value::Timestamptz(micros))
    }

    /// A `uuid`, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hexadecimal.
    #[inline]
    pub fn uuid(&mut self, value: &str) -> &mut Self {
        let span = self.span(value);
        self.value(Value::Uuid(span))
    }

    /// A `jsonb` value: a JSON document.
    #[inline]
    pub fn jsonb(&mut self, json: &str) -> &mut Self {
        let span = self.span(json);
        self.value(Value::Jsonb(span))
    }

    /// A PII value the host is to mask (keyed, reversible).
    #[inline]
    pub fn masked(&mut self, value: &str) -> &mut Self {
        let span = self.span(value);
        self.value(Value::Masked(span))
    }

    /// A PII value the host is to pseudonymize (keyed, irreversible).
    #[inline]
    pub fn pseudonymized(&mut self, value: &str) -> &mut Self {
        let span = self.span(value);
        self.value(Value::Pseudonymized(span))
    }

    /// A PII value stored as is: the transform already made it harmless.
    #[inline]
    pub fn clear(&mut self, value: &str) -> &mut Self {
        let span = self.span(value);
        self.value(Value::Clear(span))
    }

    optional! {
        opt_text => text(&str);
        opt_integer => integer(i32);
        opt_bigint => bigint(i64);
        opt_boolean => boolean(bool);
        opt_double => double(f64);
        opt_numeric => numeric(&str);
        opt_date => date(Date);
        opt_timestamptz => timestamptz(i64);
        opt_uuid => uuid(&str);
        opt_jsonb => jsonb(&str);
        opt_masked => masked(&str);
        opt_pseudonymized => pseudonymized(&str);
        opt_clear => clear(&str);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit;

    fn text_of(rows: &Rows, value: &Value) -> String {
        let span = match value {
            Value::Text(span)
            | Value::Numeric(span)
            | Value::Uuid(span)
            | Value::Jsonb(span)
            | Value::Masked(span)
            | Value::Pseudonymized(span)
            | Value::Clear(span) => span,
            other => panic!("not a string value: {other:?}"),
        };
        rows.text()[span.start as usize..span.end as usize].to_owned()
    }

    #[test]
    fn row_text_hands_out_the_span_of_each_string() {
        let mut text = RowText::for_bodies("{}");
        assert_eq!(text.push("ab"), (0, 2));
        assert_eq!(text.push(""), (2, 2));
        assert_eq!(text.push("✓x"), (2, 6));
        assert_eq!(text.span("y"), Span { start: 6, end: 7 });
        assert_eq!(text.into_string(), "ab✓xy");
    }

    #[test]
    fn every_value_case_lands_in_order_with_its_strings_packed() {
        let mut rows = Rows::new();
        let day = Date {
            year: 2022,
            month: 12,
            day: 12,
        };
        rows.message(|rows| {
            rows.row(1)
                .text("ab")
                .integer(-7)
                .bigint(1 << 40)
                .boolean(true)
                .double(0.5)
                .numeric("-12.50")
                .date(day)
                .timestamptz(1_670_839_200_000_000)
                .uuid("424cdd21-063a-43a7-b91b-7ca1a833afae")
                .jsonb("{\"a\": 1}")
                .masked("1.2.3.4")
                .pseudonymized("dev")
                .clear("10.0.0.0/24")
                .null();
            Ok(())
        });
        assert_eq!(rows.tables(), &[1]);
        assert_eq!(rows.outcomes(), &[Outcome::Rows(1)]);
        let values = rows.values();
        assert_eq!(values.len(), 14);
        assert_eq!(values[0], Value::Text(Span { start: 0, end: 2 }));
        assert_eq!(values[1], Value::Integer(-7));
        assert_eq!(values[2], Value::Bigint(1 << 40));
        assert_eq!(values[3], Value::Boolean(true));
        assert_eq!(values[4], Value::Double(0.5));
        assert_eq!(values[6], Value::Date(day));
        assert_eq!(values[7], Value::Timestamptz(1_670_839_200_000_000));
        assert_eq!(values[13], Value::Null);
        let strings: Vec<String> = [0, 5, 8, 9, 10, 11, 12]
            .iter()
            .map(|&at| text_of(&rows, &values[at]))
            .collect();
        assert_eq!(
            strings,
            [
                "ab",
                "-12.50",
                "424cdd21-063a-43a7-b91b-7ca1a833afae",
                "{\"a\": 1}",
                "1.2.3.4",
                "dev",
                "10.0.0.0/24"
            ]
        );
        assert!(matches!(values[11], Value::Pseudonymized(_)));
        // The strings, back to back, and nothing else.
        assert_eq!(
            rows.text(),
            "ab-12.50424cdd21-063a-43a7-b91b-7ca1a833afae{\"a\": 1}1.2.3.4dev10.0.0.0/24"
        );
    }

    #[test]
    fn optional_values_are_null_when_absent() {
        let mut rows = Rows::new();
        rows.row(0)
            .opt_text(None)
            .opt_text(Some("x"))
            .opt_integer(None)
            .opt_integer(Some(3))
            .opt_date(None)
            .opt_masked(None)
            .opt_masked(Some("m"));
        assert_eq!(
            rows.values(),
            &[
                Value::Null,
                Value::Text(Span { start: 0, end: 1 }),
                Value::Null,
                Value::Integer(3),
                Value::Null,
                Value::Null,
                Value::Masked(Span { start: 1, end: 2 }),
            ]
        );
    }

    #[test]
    fn each_message_counts_its_own_rows() {
        let mut rows = Rows::new();
        rows.message(|rows| {
            rows.row(0).text("a");
            rows.row(1).integer(1);
            Ok(())
        });
        rows.message(|_| Ok(()));
        rows.message(|rows| {
            rows.row(1).integer(2);
            Ok(())
        });
        assert_eq!(
            rows.outcomes(),
            &[Outcome::Rows(2), Outcome::Rows(0), Outcome::Rows(1)]
        );
        assert_eq!(rows.tables(), &[0, 1, 1]);
        assert_eq!(rows.values().len(), 3);
    }

    #[test]
    fn a_rejected_message_leaves_no_rows_values_or_text() {
        let mut rows = Rows::new();
        rows.message(|rows| {
            rows.row(0).text("kept").integer(1);
            Ok(())
        });
        rows.message(|rows| {
            rows.row(0).text("dropped").integer(2);
            rows.row(1).text("also dropped");
            Err(Rejection::new("wrong_type", "field `x` is a number"))
        });
        rows.message(|rows| {
            rows.row(0).text("next").integer(3);
            Ok(())
        });
        assert_eq!(rows.tables(), &[0, 0]);
        assert_eq!(rows.text(), "keptnext");
        assert_eq!(
            rows.values(),
            &[
                Value::Text(Span { start: 0, end: 4 }),
                Value::Integer(1),
                Value::Text(Span { start: 4, end: 8 }),
                Value::Integer(3),
            ]
        );
        assert_eq!(
            rows.outcomes(),
            &[
                Outcome::Rows(1),
                Outcome::Rejected(wit::Rejection {
                    code: "wrong_type".into(),
                    detail: "field `x` is a number".into(),
                }),
                Outcome::Rows(1),
            ]
        );
    }

    #[test]
    fn a_span_can_be_shared_and_outcomes_pushed_raw() {
        let mut rows = Rows::new();
        let shared = rows.span("android");
        rows.row(0)
            .value(Value::Text(shared))
            .value(Value::Text(shared));
        rows.push_outcome(Outcome::Rows(1));
        rows.reject(Rejection::new("malformed_batch", "offsets"));
        let outcomes = rows.into_outcomes();
        assert_eq!(outcomes.text, "android");
        assert_eq!(outcomes.tables, vec![0]);
        assert_eq!((outcomes.kinds.len(), outcomes.words.len()), (2, 2));
        assert_eq!(outcomes.each.len(), 2);
    }
}
