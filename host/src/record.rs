//! What a transform makes of a message, and the `user_logins` column contract.
//!
//! The runtime converts the component's WIT values into these types and checks
//! them here, so a component that returns values which do not fit the table
//! costs one dead letter, never a failed batch transaction.

use chrono::NaiveDate;

/// One `user_logins` row. Every column of the table is nullable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Row {
    pub user_id: Option<String>,
    pub device_type: Option<String>,
    pub masked_ip: Option<String>,
    pub masked_device_id: Option<String>,
    pub locale: Option<String>,
    pub app_version: Option<i32>,
    pub create_date: Option<NaiveDate>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Row(Row),
    Rejected(Rejection),
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

/// `masked_ip` and `masked_device_id` are varchar(256).
pub const PROTECTED_COLUMN_CHARS: usize = 256;
/// The years PostgreSQL's `date` spans: 4713 BC (year -4712) to 5874897 AD.
pub const MIN_DATE_YEAR: i32 = -4712;
pub const MAX_DATE_YEAR: i32 = 5_874_897;

/// `(column, varchar limit in characters)` of `user_logins`.
const TEXT_COLUMNS: [(&str, usize); 5] = [
    ("user_id", 128),
    ("device_type", 32),
    ("masked_ip", PROTECTED_COLUMN_CHARS),
    ("masked_device_id", PROTECTED_COLUMN_CHARS),
    ("locale", 32),
];

/// The varchar limit, in characters, of a text column of `user_logins`.
pub fn column_limit(column: &str) -> usize {
    TEXT_COLUMNS
        .iter()
        .find(|(name, _)| *name == column)
        .map_or(0, |(_, limit)| *limit)
}

/// The rejection of a value too long for its column.
pub fn overflow(column: &str, limit: usize) -> Rejection {
    Rejection::new(
        reason::COLUMN_OVERFLOW,
        format!("column `{column}` would exceed varchar({limit})"),
    )
}

impl Row {
    fn text_columns(&self) -> [&Option<String>; 5] {
        [
            &self.user_id,
            &self.device_type,
            &self.masked_ip,
            &self.masked_device_id,
            &self.locale,
        ]
    }

    /// Checks every value fits its column; names the first that does not.
    pub fn check_columns(&self) -> Result<(), Rejection> {
        for ((column, limit), value) in TEXT_COLUMNS.iter().zip(self.text_columns()) {
            let Some(value) = value else { continue };
            // Postgres text cannot hold NUL, and varchar(n) counts characters.
            if value.contains('\0') {
                return Err(Rejection::new(
                    reason::COLUMN_OVERFLOW,
                    format!("column `{column}` would contain a NUL character"),
                ));
            }
            if value.len() > *limit && value.chars().count() > *limit {
                return Err(overflow(column, *limit));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_within_limits_pass() {
        let row = Row {
            user_id: Some("u".repeat(128)),
            device_type: Some("é".repeat(32)),
            locale: None,
            ..Row::default()
        };
        assert_eq!(row.check_columns(), Ok(()));
    }

    #[test]
    fn overflowing_values_are_named() {
        let row = Row {
            locale: Some("x".repeat(33)),
            ..Row::default()
        };
        let rejection = row.check_columns().unwrap_err();
        assert_eq!(rejection.code, reason::COLUMN_OVERFLOW);
        assert!(rejection.detail.contains("locale"));
        let row = Row {
            user_id: Some("a\0b".into()),
            ..Row::default()
        };
        assert!(row.check_columns().is_err());
    }

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

    #[test]
    fn column_limits_are_the_tables() {
        assert_eq!(column_limit("user_id"), 128);
        assert_eq!(column_limit("masked_ip"), 256);
        assert_eq!(column_limit("locale"), 32);
    }
}
