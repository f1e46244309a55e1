//! What a transform makes of a message: rows of the tables it declared
//! ([`crate::schema`]), or a rejection.
//!
//! The runtime converts the component's WIT values into these types and
//! checks each against its declared column there, so a component that
//! returns values which do not fit costs one dead letter, never a failed
//! batch transaction.

use chrono::{DateTime, NaiveDate, Utc};

/// One value, of its column's type. Protected PII arrives here already
/// masked or pseudonymized, as `Text`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Integer(i32),
    Bigint(i64),
    Boolean(bool),
    Double(f64),
    /// Checked decimal text (`-12.50`).
    Numeric(String),
    Date(NaiveDate),
    Timestamptz(DateTime<Utc>),
    /// Checked canonical text (`xxxxxxxx-xxxx-…`).
    Uuid(String),
    /// Checked JSON text.
    Jsonb(String),
}

/// One row: its table's index in the declaration, and one value per
/// declared column, in order (`None` is NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub table: usize,
    pub values: Vec<Option<Value>>,
}

/// Why a message became a dead letter.
///
/// `code` and `detail` are stored unsealed and may reach logs and metrics,
/// so only the host writes them: `code` is a host reason or one the
/// component declared at load (before it saw any message), and `detail` is
/// the host's own text. What the component said about the message is kept
/// apart, in `transform_detail`, and is only ever stored sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub detail: String,
    pub transform_detail: Option<String>,
}

impl Rejection {
    /// A rejection the host makes: `detail` must be the host's own text.
    pub fn new(code: &str, detail: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            detail: detail.into(),
            transform_detail: None,
        }
    }

    /// A component's rejection under a code it declared; its detail, which
    /// could quote the message, is bounded and kept for sealing.
    pub fn from_transform(declared_code: &str, detail: String) -> Self {
        let mut detail = detail.replace('\0', "");
        if let Some((cut, _)) = detail.char_indices().nth(DETAIL_MAX_CHARS) {
            detail.truncate(cut);
        }
        Self {
            code: declared_code.to_owned(),
            detail: "rejected by the transform (its detail is sealed with the body)".to_owned(),
            transform_detail: Some(detail),
        }
    }
}

/// The transform's detail stays out of `Debug`: it could quote the message.
impl std::fmt::Debug for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejection")
            .field("code", &self.code)
            .field("detail", &self.detail)
            .field(
                "transform_detail",
                &self.transform_detail.as_ref().map(|_| "<sealed>"),
            )
            .finish()
    }
}

/// What one message became.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Zero or more rows (none: the message is recorded as `skipped`).
    Rows(Vec<TableRow>),
    Rejected(Rejection),
}

impl Outcome {
    /// Roughly what it holds on the heap, for the pipeline's memory budget.
    pub fn heap_bytes(&self) -> usize {
        let text = |value: &Option<Value>| match value {
            Some(
                Value::Text(text) | Value::Numeric(text) | Value::Uuid(text) | Value::Jsonb(text),
            ) => text.len(),
            _ => 0,
        };
        match self {
            Outcome::Rows(rows) => rows
                .iter()
                .map(|row| {
                    std::mem::size_of::<TableRow>()
                        + row.values.len() * std::mem::size_of::<Option<Value>>()
                        + row.values.iter().map(text).sum::<usize>()
                })
                .sum(),
            Outcome::Rejected(rejection) => {
                rejection.code.len()
                    + rejection.detail.len()
                    + rejection.transform_detail.as_ref().map_or(0, String::len)
            }
        }
    }

    /// The ledger's word for it.
    pub fn ledger_outcome(&self) -> &'static str {
        match self {
            Outcome::Rows(rows) if rows.is_empty() => "skipped",
            Outcome::Rows(_) => "row",
            Outcome::Rejected(_) => "dead_letter",
        }
    }
}

/// Host-side reason codes (the component defines its own).
pub mod reason {
    /// The component trapped (panic, deadline, memory cap) on this message alone.
    pub const TRANSFORM_TRAP: &str = "transform_trap";
    /// The component returned a value that does not fit its column.
    pub const COLUMN_OVERFLOW: &str = "column_overflow";
    /// The component broke the contract (wrong number of outcomes, bad date, bad code).
    pub const CONTRACT_VIOLATION: &str = "transform_contract_violation";
    /// PostgreSQL refused the row for its data (a CHECK, a trigger, a
    /// domain, a permission): found by splitting the batch until it is alone.
    pub const DATABASE_REJECTED: &str = "database_rejected";

    /// Codes a component may not declare.
    pub const HOST_CODES: &[&str] = &[
        TRANSFORM_TRAP,
        COLUMN_OVERFLOW,
        CONTRACT_VIOLATION,
        DATABASE_REJECTED,
    ];
}

/// The most of a component's detail kept (sealed).
const DETAIL_MAX_CHARS: usize = 512;

/// The years PostgreSQL's `date` spans: 4713 BC (year -4712) to 5874897 AD.
pub const MIN_DATE_YEAR: i32 = -4712;
pub const MAX_DATE_YEAR: i32 = 5_874_897;

/// The rejection of a value too long for its column.
pub fn overflow(table: &str, column: &str, limit: u32) -> Rejection {
    Rejection::new(
        reason::COLUMN_OVERFLOW,
        format!("column `{table}.{column}` would exceed varchar({limit})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transform_detail_is_bounded_and_kept_out_of_debug() {
        let rejection = Rejection::from_transform("ok_code", "d\0".repeat(10_000));
        assert_eq!(rejection.code, "ok_code");
        assert_eq!(
            rejection.transform_detail.as_deref().map(str::len),
            Some(DETAIL_MAX_CHARS)
        );
        let secret = Rejection::from_transform("c", "ip 199.172.111.135".into());
        assert!(!format!("{secret:?}").contains("199"), "{secret:?}");
        assert!(!secret.detail.contains("199"));
    }
}
