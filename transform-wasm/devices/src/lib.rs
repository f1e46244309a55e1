//! A fan-out transform: one message, rows in two tables. Each valid login
//! becomes
//!
//! * a row of `user_logins`, exactly as the reference writes it (both PII
//!   fields masked, [`login_core::MaskBoth`]), and
//! * a row of `login_devices(device_type varchar(32) NOT NULL, app_version
//!   integer, day date NOT NULL)`: which device and app version logged in on
//!   which day (the login's `create_date`), with nothing that points at a
//!   person, for counting without any key.
//!
//! A rejected message gets neither row: the toolkit takes back the rows of a
//! message that fails ([`maskpipe_guest::Rows::message`]).

use login_core::MaskBoth;
use maskpipe_guest::{Column, Declaration, Rejection, Rows, Table, Transform};

/// Table indexes, in declared order.
pub const USER_LOGINS: u8 = 0;
pub const LOGIN_DEVICES: u8 = 1;

/// The fan-out transform.
pub struct DevicesTransform;

/// The columns of `login_devices`.
pub fn login_devices_columns() -> Vec<Column> {
    vec![
        Column::text("device_type", 32).not_null(),
        Column::integer("app_version"),
        Column::date("day").not_null(),
    ]
}

impl Transform for DevicesTransform {
    // Seven values in user_logins, three in login_devices.
    const VALUES_PER_MESSAGE: usize = 10;

    fn describe() -> Declaration {
        Declaration::new(
            vec![
                Table::new("user_logins", login_core::user_logins_columns()),
                Table::new("login_devices", login_devices_columns()),
            ],
            login_core::REASON_CODES,
        )
    }

    fn transform(body: &str, sent_timestamp_ms: u64, rows: &mut Rows) -> Result<(), Rejection> {
        let login = login_core::transform(body, sent_timestamp_ms, &MaskBoth)?;
        login_core::push_user_login(rows, USER_LOGINS, &login);
        rows.row(LOGIN_DEVICES)
            .text(&login.device_type)
            .integer(login.app_version)
            .date(login.create_date);
        Ok(())
    }
}

maskpipe_guest::export_transform!(DevicesTransform);

#[cfg(test)]
mod tests {
    use super::*;
    use maskpipe_guest::{Batch, Outcome, Value};

    const SAMPLE: &str = r#"{"user_id": "u-1", "app_version": "2.3.0", "device_type": "android", "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928"}"#;

    #[test]
    fn a_valid_login_fans_out_and_a_rejected_one_adds_nothing() {
        let bodies = format!("{SAMPLE}{{}}");
        let batch = Batch {
            body_ends: vec![SAMPLE.len() as u32, bodies.len() as u32],
            bodies,
            sent_timestamps_ms: vec![1_670_839_200_000; 2],
        };
        let outcomes = maskpipe_guest::transform_batch::<DevicesTransform>(&batch);
        assert_eq!(outcomes.each[0], Outcome::Rows(2));
        assert!(matches!(outcomes.each[1], Outcome::Rejected(_)));
        assert_eq!(outcomes.tables, [USER_LOGINS, LOGIN_DEVICES]);
        assert_eq!(outcomes.kinds.len(), 7 + 3);
        assert_eq!(
            Value::decode(outcomes.kinds[8], outcomes.words[8]),
            Some(Value::Integer(20300))
        );
    }

    #[test]
    fn it_declares_both_tables() {
        let declaration = maskpipe_guest::describe::<DevicesTransform>();
        let names: Vec<_> = declaration.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["user_logins", "login_devices"]);
        assert!(
            declaration
                .reason_codes
                .iter()
                .any(|c| c == "malformed_batch")
        );
    }
}
