//! What a failed database write means for the batch: wait and retry, or
//! split it to find the rows PostgreSQL refuses.
//!
//! A write fails either because the database could not take it now (the
//! connection dropped, the server is restarting, a serialization conflict,
//! a timeout) or because it will never take these rows (a value out of
//! range, a CHECK or domain, a trigger that raises, a revoked privilege).
//! Retrying the first kind is right; retrying the second stalls the batch
//! for ever, so the pipeline splits it instead and dead-letters only the
//! rows that fail alone. An error the tables below do not name is retried,
//! and split only if it repeats on the same rows.

use tokio_postgres::error::SqlState;

/// How the pipeline treats a failed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFailure {
    /// Retry the same rows after a backoff.
    Transient,
    /// These rows will never be accepted: split the batch now.
    Data { sqlstate: String },
    /// Not known to be either: retry, and split if it repeats.
    Unknown { sqlstate: String },
}

/// SQLSTATE classes of conditions that pass: connection exceptions (08),
/// transaction rollbacks such as serialization failures and deadlocks (40),
/// insufficient resources (53), operator intervention, which includes
/// `statement_timeout` and shutdowns (57), system errors (58), and a
/// read-only standby during a failover (25006).
const TRANSIENT_CLASSES: &[&str] = &["08", "40", "53", "57", "58"];
const TRANSIENT_CODES: &[&str] = &["25006", "55P03", "55006"];

/// Classes that describe the data: data exceptions (22), integrity
/// constraints (23), `RAISE` in PL/pgSQL (P0), triggered actions (09, 27),
/// `WITH CHECK OPTION` (44) and external routines (38, 39).
const DATA_CLASSES: &[&str] = &["22", "23", "P0", "09", "27", "44", "38", "39"];
/// Privileges revoked on a table or column, and invalid text representations.
const DATA_CODES: &[&str] = &["42501"];

/// The PostgreSQL error in an error chain, if there is one.
pub fn postgres_error(error: &anyhow::Error) -> Option<&tokio_postgres::Error> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<tokio_postgres::Error>())
}

/// Classifies a write's error chain.
pub fn classify(error: &anyhow::Error) -> WriteFailure {
    let code = postgres_error(error).and_then(tokio_postgres::Error::code);
    match code {
        // No SQLSTATE: I/O, a closed connection, a timeout of ours.
        None => WriteFailure::Transient,
        Some(code) => classify_sqlstate(code),
    }
}

fn classify_sqlstate(code: &SqlState) -> WriteFailure {
    let code = code.code();
    let class = code.get(..2).unwrap_or("");
    if TRANSIENT_CLASSES.contains(&class) || TRANSIENT_CODES.contains(&code) {
        WriteFailure::Transient
    } else if DATA_CLASSES.contains(&class) || DATA_CODES.contains(&code) {
        WriteFailure::Data {
            sqlstate: code.to_owned(),
        }
    } else {
        WriteFailure::Unknown {
            sqlstate: code.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(code: &str) -> WriteFailure {
        classify_sqlstate(&SqlState::from_code(code))
    }

    #[test]
    fn passing_conditions_are_retried() {
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "57014", "25006", "55P03",
        ] {
            assert_eq!(of(code), WriteFailure::Transient, "{code}");
        }
        assert_eq!(
            classify(&anyhow::anyhow!("connection closed")),
            WriteFailure::Transient
        );
    }

    #[test]
    fn refused_data_is_split_at_once() {
        for code in [
            "22008", "22001", "23514", "23505", "P0001", "42501", "27000",
        ] {
            assert!(matches!(of(code), WriteFailure::Data { .. }), "{code}");
        }
    }

    #[test]
    fn anything_else_is_unknown() {
        assert_eq!(
            of("42P01"),
            WriteFailure::Unknown {
                sqlstate: "42P01".into()
            }
        );
    }
}
