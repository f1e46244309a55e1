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

/// Why a message became a dead letter: a stable code and a PII-free detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: &str, detail: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            detail: detail.into(),
        }
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
}

const REASON_CODE_MAX_LEN: usize = 64;
const DETAIL_MAX_CHARS: usize = 512;

/// `(column, varchar limit in characters)` of `user_logins`.
const TEXT_COLUMNS: [(&str, usize); 5] = [
    ("user_id", 128),
    ("device_type", 32),
    ("masked_ip", 256),
    ("masked_device_id", 256),
    ("locale", 32),
];

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
                return Err(Rejection::new(
                    reason::COLUMN_OVERFLOW,
                    format!("column `{column}` would exceed varchar({limit})"),
                ));
            }
        }
        Ok(())
    }
}

impl Rejection {
    /// Keeps a component's rejection within the dead-letter table's shape: a
    /// well-formed code, and a bounded detail.
    pub fn sanitized(self) -> Rejection {
        let code_ok = !self.code.is_empty()
            && self.code.len() <= REASON_CODE_MAX_LEN
            && self
                .code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !code_ok {
            return Rejection::new(
                reason::CONTRACT_VIOLATION,
                "the transform rejected the message with a malformed reason code",
            );
        }
        let detail = if self.detail.chars().count() > DETAIL_MAX_CHARS {
            self.detail.chars().take(DETAIL_MAX_CHARS).collect()
        } else {
            self.detail
        };
        Rejection {
            code: self.code,
            detail: detail.replace('\0', ""),
        }
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
    fn malformed_reason_codes_become_contract_violations() {
        assert_eq!(
            Rejection::new("Bad Code!", "x").sanitized().code,
            reason::CONTRACT_VIOLATION
        );
        assert_eq!(
            Rejection::new("", "x").sanitized().code,
            reason::CONTRACT_VIOLATION
        );
        let long = Rejection::new("ok_code", "d".repeat(10_000)).sanitized();
        assert_eq!(long.code, "ok_code");
        assert_eq!(long.detail.len(), DETAIL_MAX_CHARS);
    }
}
