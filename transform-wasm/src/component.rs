//! The WIT glue: exports `login::transform` as the `transformer` world.

use crate::login;

wit_bindgen::generate!({
    path: "../wit",
    world: "transformer",
});

use maskpipe::transform::masking::mask;
use maskpipe::transform::types::{Date, LoginRow, Rejection};

struct LoginTransform;

impl Guest for LoginTransform {
    fn transform_batch(messages: Vec<Message>) -> Vec<Outcome> {
        messages
            .iter()
            .map(|message| {
                match login::transform(
                    &message.body,
                    message.sent_timestamp_ms,
                    &mut |field, value| mask(field, value),
                ) {
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
            })
            .collect()
    }
}

export!(LoginTransform);
