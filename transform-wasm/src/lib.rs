//! maskpipe's reference transform for Fetch login messages.
//!
//! Validation and normalization are [`login_core`]'s; this transform's policy
//! is to have `ip` and `device_id` masked reversibly by the host
//! ([`login_core::MaskBoth`]). Each valid message becomes one row of
//! `user_logins` ([`login_core::user_logins_columns`]). Built for
//! `wasm32-wasip2`, it exports the `maskpipe:transform/transformer` world
//! through the guest toolkit ([`maskpipe_guest`]).

pub use login_core as login;

use login_core::MaskBoth;
use maskpipe_guest::{Declaration, Rejection, Rows, Table, Transform};

/// The table rows go to: the only one, index 0.
pub const USER_LOGINS: u8 = 0;

/// The reference transform: `user_logins`, both PII fields masked.
pub struct LoginTransform;

impl Transform for LoginTransform {
    const VALUES_PER_MESSAGE: usize = 7;

    fn describe() -> Declaration {
        Declaration::new(
            vec![Table::new("user_logins", login_core::user_logins_columns())],
            login_core::REASON_CODES,
        )
    }

    fn transform(body: &str, sent_timestamp_ms: u64, rows: &mut Rows) -> Result<(), Rejection> {
        let login = login_core::transform(body, sent_timestamp_ms, &MaskBoth)?;
        login_core::push_user_login(rows, USER_LOGINS, &login);
        Ok(())
    }
}

maskpipe_guest::export_transform!(LoginTransform);
