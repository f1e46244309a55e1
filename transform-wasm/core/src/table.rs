//! The `user_logins` table: its columns, and a login written as one of its
//! rows.

use maskpipe_guest::{Column, Protections, RowBuilder, Rows};

use crate::{Protected, Row};

/// Column limits of `user_logins`, in characters (varchar counts characters).
pub(crate) const USER_ID_MAX_CHARS: usize = 128;
pub(crate) const DEVICE_TYPE_MAX_CHARS: usize = 32;
pub(crate) const LOCALE_MAX_CHARS: usize = 32;
/// The protected columns hold what the host makes of a value: masking
/// grows it (see [`MASKED_INPUT_MAX_BYTES`]).
const PROTECTED_MAX_CHARS: u32 = 256;
/// Masking grows a value by a fixed overhead and base64's 4/3; 128 bytes of
/// plaintext mask to at most 229 characters, inside `varchar(256)`.
pub(crate) const MASKED_INPUT_MAX_BYTES: usize = 128;

/// The columns of the take-home's `user_logins`, in order, all nullable:
/// `user_id varchar(128)`, `device_type varchar(32)`, `masked_ip
/// varchar(256)` (PII field `ip`), `masked_device_id varchar(256)` (PII
/// field `device_id`), `locale varchar(32)`, `app_version integer`,
/// `create_date date`. Both PII columns take any protection, so one table
/// serves every [`Protect`](crate::Protect) policy.
pub fn user_logins_columns() -> Vec<Column> {
    let any = Protections::MASKED | Protections::PSEUDONYMIZED | Protections::CLEAR;
    // The limits are small constants: they fit u32.
    let chars = |max: usize| max as u32;
    vec![
        Column::text("user_id", chars(USER_ID_MAX_CHARS)),
        Column::text("device_type", chars(DEVICE_TYPE_MAX_CHARS)),
        Column::text("masked_ip", PROTECTED_MAX_CHARS).pii("ip", any),
        Column::text("masked_device_id", PROTECTED_MAX_CHARS).pii("device_id", any),
        Column::text("locale", chars(LOCALE_MAX_CHARS)),
        Column::integer("app_version"),
        Column::date("create_date"),
    ]
}

/// Adds `login` as one row of the table at index `table`, which has the
/// [`user_logins_columns`].
#[inline]
pub fn push_user_login(rows: &mut Rows, table: u8, login: &Row) {
    user_login_values(&mut rows.row(table), login);
}

/// Appends the seven [`user_logins_columns`] values of `login` to a row
/// being written, for a table that has those columns first and more after
/// them.
#[inline]
pub fn user_login_values<'a, 'r>(
    row: &'a mut RowBuilder<'r>,
    login: &Row,
) -> &'a mut RowBuilder<'r> {
    row.text(&login.user_id).text(&login.device_type);
    protected(row, &login.masked_ip);
    protected(row, &login.masked_device_id);
    row.opt_text(login.locale.as_deref())
        .integer(login.app_version)
        .date(login.create_date)
}

#[inline]
fn protected<'a, 'r>(row: &'a mut RowBuilder<'r>, value: &Protected) -> &'a mut RowBuilder<'r> {
    match value {
        Protected::Masked(value) => row.masked(value),
        Protected::Pseudonymized(value) => row.pseudonymized(value),
        Protected::Clear(value) => row.clear(value),
    }
}
