//! The README's "write a transform for your own table" example, built by
//! the tests (and checked to be the README's text by `tests/readme.rs`).
//! `cargo run --example signups` runs one batch through it natively.

use maskpipe_guest::{Column, Declaration, Protections, Rejection, Rows, Table, Transform};

struct Signups;

impl Transform for Signups {
    fn describe() -> Declaration {
        Declaration::new(
            vec![Table::new(
                "signups",
                vec![
                    Column::text("country", 2).not_null(),
                    Column::text("masked_email", 256).pii("email", Protections::MASKED),
                    Column::timestamptz("signed_up_at"),
                ],
            )],
            &["invalid_json"],
        )
    }

    fn transform(body: &str, sent_ms: u64, rows: &mut Rows) -> Result<(), Rejection> {
        let signup: serde_json::Value = serde_json::from_str(body)
            .map_err(|_| Rejection::new("invalid_json", "the body is not JSON"))?;
        rows.row(0) // table 0 of the declaration; one value per column, in order
            .text(signup["country"].as_str().unwrap_or("??"))
            .masked(signup["email"].as_str().unwrap_or(""))
            .timestamptz(sent_ms as i64 * 1000);
        Ok(())
    }
}

maskpipe_guest::export_transform!(Signups);

fn main() {
    let bodies = r#"{"country": "PT", "email": "ada@example.com"}not json"#;
    let batch = maskpipe_guest::Batch {
        body_ends: vec![45, bodies.len() as u32],
        bodies: bodies.into(),
        sent_timestamps_ms: vec![1_670_839_200_000; 2],
    };
    let outcomes = maskpipe_guest::transform_batch::<Signups>(&batch);
    println!("{:?}", outcomes.each);
}
