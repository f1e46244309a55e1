//! The WIT glue: exports `login::transform` with reversible masking as the
//! `transformer` world.

use login_core::MaskBoth;

wit_bindgen::generate!({
    path: "../wit",
    world: "transformer",
});

use maskpipe::transform::masking::mask;
use maskpipe::transform::types::{Date, LoginRow, Rejection};

struct LoginTransform;

impl Guest for LoginTransform {
    fn transform_batch(messages: Vec<Message>) -> Vec<Outcome> {
        let mut policy = MaskBoth(|field: &str, value: &str| mask(field, value));
        messages
            .iter()
            .map(|m| {
                to_wit(login_core::transform(
                    &m.body,
                    m.sent_timestamp_ms,
                    &mut policy,
                ))
            })
            .collect()
    }
}

fn to_wit(result: Result<login_core::Row, login_core::Rejection>) -> Outcome {
    match result {
        Ok(row) => Outcome::Row(LoginRow {
            user_id: Some(row.user_id),
            device_type: Some(row.device_type),
            masked_ip: Some(row.masked_ip),
            masked_device_id: Some(row.masked_device_id),
            locale: row.locale,
            app_version: Some(row.app_version),
            create_date: Some(Date {
                year: row.create_date.year,
                month: row.create_date.month,
                day: row.create_date.day,
            }),
        }),
        Err(rejection) => Outcome::Rejected(Rejection {
            code: rejection.code.to_owned(),
            detail: rejection.detail,
        }),
    }
}

export!(LoginTransform);
