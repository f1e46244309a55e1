//! The guest toolkit: what every maskpipe transform component needs, and
//! nothing about any feed's messages.
//!
//! A transform is a type that implements [`Transform`]: `describe` declares
//! the tables it writes and its reason codes, `transform` turns one message
//! body into rows (or a [`Rejection`]). [`export_transform!`] does the rest:
//!
//! ```
//! use maskpipe_guest::{Column, Declaration, Protections, Rejection, Rows, Table, Transform};
//!
//! struct Emails;
//!
//! impl Transform for Emails {
//!     fn describe() -> Declaration {
//!         Declaration::new(
//!             vec![Table::new("emails", vec![
//!                 Column::text("masked_email", 256).pii("email", Protections::MASKED),
//!             ])],
//!             &["empty_body"],
//!         )
//!     }
//!     fn transform(body: &str, _sent_ms: u64, rows: &mut Rows) -> Result<(), Rejection> {
//!         if body.is_empty() {
//!             return Err(Rejection::new("empty_body", "the body is empty"));
//!         }
//!         rows.row(0).masked(body); // table 0, its one column
//!         Ok(())
//!     }
//! }
//!
//! maskpipe_guest::export_transform!(Emails);
//! # let batch = maskpipe_guest::Batch {
//! #     bodies: "ada@example.com".into(), body_ends: vec![15], sent_timestamps_ms: vec![0],
//! # };
//! # let outcomes = maskpipe_guest::transform_batch::<Emails>(&batch);
//! # assert_eq!(outcomes.each, [maskpipe_guest::Outcome::Rows(1)]);
//! # assert_eq!(outcomes.text, "ada@example.com");
//! ```
//!
//! **The design.** The WIT contract (`wit/transform.wit`, generated once
//! here as [`bindings`]) moves data packed, because inside wasm every
//! string is an allocation and at the boundary a copy and a check. So:
//!
//! * a batch comes in as one string of bodies plus offsets; [`unpack`]
//!   borrows each body from it, and turns offsets that do not fit into a
//!   `malformed_batch` rejection instead of a panic;
//! * rows go out the same way: [`Rows`] holds one text for every string of
//!   the batch (values are [`Span`]s into it, see [`RowText`]), each row's
//!   table index, and every value of every row in one list, one per declared
//!   column in declared order. [`Rows::row`] starts a row and its
//!   [`RowBuilder`] appends values: no value allocates;
//! * [`Rows::message`] counts the rows each message added (`rows(n)`), and
//!   if the message fails, takes them back before recording the rejection,
//!   so a rejection never leaves stray rows;
//! * everything a call allocates is gone when it returns, so the
//!   [`arena::BatchArena`] (a bump allocator that starts over between calls)
//!   serves the component; [`export_transform!`] installs it.
//!
//! The kit checks nothing the host checks: the host validates every row
//! against the declaration (tables, column count, types, PII protection,
//! sizes) and dead-letters a message whose rows break it. Lower-level
//! pieces ([`Rows::push_outcome`], [`RowBuilder::value`], the raw
//! [`bindings`]) are public for what the high-level path cannot express.

pub mod arena;
mod batch;
mod declare;
mod export;
mod rows;
mod value;

/// The bindings of the `maskpipe:transform/transformer` world, generated
/// once for every transform. [`bindings::export_guest!`] exports a type that
/// implements the raw [`bindings::Guest`] (what [`export_transform!`] does
/// for a [`Transform`]).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transformer",
        // Exported to the crates that implement a transform, which call it
        // through `maskpipe_guest::bindings`.
        pub_export_macro: true,
        export_macro_name: "export_guest",
        default_bindings_module: "maskpipe_guest::bindings",
        // For tests and for `Eq` rows in the crates built on the kit.
        additional_derives: [PartialEq],
    });
}

/// The contract's types, as generated (WIT `rejection` is
/// `wit::Rejection`; the kit's [`Rejection`] converts to it).
pub use bindings::maskpipe::transform::types as wit;

pub use batch::{MALFORMED_BATCH, Rejection, unpack};
pub use export::{Transform, describe, transform_batch};
pub use rows::{RowBuilder, RowText, Rows};
pub use value::{Date, Span, Value};
pub use wit::{
    Batch, Column, ColumnType, Declaration, Outcome, Outcomes, Pii, Protections, Table, ValueKind,
};

/// What [`export_transform!`] expands to; not an API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::Component;
}
