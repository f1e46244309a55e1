//! A transform as the contract wants it: [`Transform`], its batch loop
//! ([`transform_batch`]) and [`export_transform!`](crate::export_transform).

use std::marker::PhantomData;

use crate::batch::{MALFORMED_BATCH, Rejection, unpack};
use crate::bindings::Guest;
use crate::rows::Rows;
use crate::wit::{Batch, Declaration, Outcomes};

/// A transform, one message at a time. Export it with
/// [`export_transform!`](crate::export_transform).
pub trait Transform {
    /// About how many values a message's rows hold (over all its tables):
    /// the first guess at the batch's value buffer, so that it rarely grows.
    const VALUES_PER_MESSAGE: usize = 8;

    /// The tables this transform writes (rows name them by index, in this
    /// order) and every reason code its rejections may carry.
    /// `malformed_batch` is declared for it (see [`describe`]).
    fn describe() -> Declaration;

    /// Turns one message into rows, added to `rows` with
    /// [`Rows::row`], or says why it cannot. The rows a message added before
    /// it failed are taken back.
    fn transform(body: &str, sent_timestamp_ms: u64, rows: &mut Rows) -> Result<(), Rejection>;
}

/// `T`'s declaration, with [`MALFORMED_BATCH`] among its reason codes: the
/// code [`transform_batch`] gives a malformed batch entry, whichever the
/// transform.
pub fn describe<T: Transform>() -> Declaration {
    let mut declaration = T::describe();
    if !declaration
        .reason_codes
        .iter()
        .any(|code| code == MALFORMED_BATCH)
    {
        declaration.reason_codes.push(MALFORMED_BATCH.to_owned());
    }
    declaration
}

/// A whole batch through `T`: each message is transformed into rows or
/// rejected, and a batch entry whose offsets or timestamp do not fit is a
/// `malformed_batch` rejection. Exactly one outcome per message.
pub fn transform_batch<T: Transform>(batch: &Batch) -> Outcomes {
    let mut rows = Rows::for_batch(batch, T::VALUES_PER_MESSAGE);
    for message in unpack(&batch.bodies, &batch.body_ends, &batch.sent_timestamps_ms) {
        match message {
            Ok((body, sent_timestamp_ms)) => {
                rows.message(|rows| T::transform(body, sent_timestamp_ms, rows));
            }
            Err(rejection) => rows.reject(rejection),
        }
    }
    rows.into_outcomes()
}

/// The WIT `Guest` of a [`Transform`], which
/// [`export_transform!`](crate::export_transform) exports.
#[doc(hidden)]
pub struct Component<T>(PhantomData<T>);

impl<T: Transform> Guest for Component<T> {
    fn describe() -> Declaration {
        describe::<T>()
    }

    fn transform_batch(batch: Batch) -> Outcomes {
        transform_batch::<T>(&batch)
    }
}

/// Exports a [`Transform`] as the component's `describe` and
/// `transform-batch`, and makes the [`BatchArena`](crate::arena::BatchArena)
/// its global allocator:
///
/// ```ignore
/// struct MyTransform;
/// impl maskpipe_guest::Transform for MyTransform { /* ... */ }
/// maskpipe_guest::export_transform!(MyTransform);
/// ```
///
/// `export_transform!(MyTransform, without_arena)` leaves the allocator
/// alone (for a crate that sets its own). Both only take effect on wasm: a
/// native build (unit tests, benches) sees nothing.
#[macro_export]
macro_rules! export_transform {
    ($transform:ty) => {
        $crate::export_transform!($transform, without_arena);

        // A transform's allocations live one call at most: the bump arena
        // serves them faster than the default allocator.
        #[cfg(target_family = "wasm")]
        #[global_allocator]
        static __MASKPIPE_GUEST_ALLOCATOR: $crate::arena::BatchArena =
            $crate::arena::BatchArena::new();
    };
    ($transform:ty, without_arena) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            // wit-bindgen's export macro takes a type name, not a path.
            type MaskpipeGuestComponent = $crate::__private::Component<$transform>;
    $crate::bindings::export_guest!(MaskpipeGuestComponent with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::{self, Column, Outcome, Table};
    use crate::{Span, Value};

    /// Each body is a count of rows; "bad" is rejected after adding one.
    struct Counting;

    impl Transform for Counting {
        fn describe() -> Declaration {
            Declaration::new(
                vec![Table::new("t", vec![Column::text("body", 8)])],
                &["bad_body"],
            )
        }

        fn transform(body: &str, _sent: u64, rows: &mut Rows) -> Result<(), Rejection> {
            if body == "bad" {
                rows.row(0).text(body);
                return Err(Rejection::new("bad_body", "the body is bad"));
            }
            let count: usize = body
                .parse()
                .map_err(|_| Rejection::new("bad_body", "not a count"))?;
            for _ in 0..count {
                rows.row(0).text(body);
            }
            Ok(())
        }
    }

    #[test]
    fn describe_declares_malformed_batch_once() {
        let declaration = describe::<Counting>();
        assert_eq!(declaration.reason_codes, ["bad_body", MALFORMED_BATCH]);
        struct Declares;
        impl Transform for Declares {
            fn describe() -> Declaration {
                Declaration::new(vec![], &[MALFORMED_BATCH, "x"])
            }
            fn transform(_: &str, _: u64, _: &mut Rows) -> Result<(), Rejection> {
                Ok(())
            }
        }
        assert_eq!(describe::<Declares>().reason_codes, [MALFORMED_BATCH, "x"]);
    }

    #[test]
    fn a_batch_gives_one_outcome_per_message() {
        let bodies = "2bad0✓1";
        let batch = Batch {
            bodies: bodies.into(),
            // "2", "bad", "0", an end inside the check mark, then "✓1"
            // (which starts inside it too, so is malformed as well), with
            // one timestamp missing.
            body_ends: vec![1, 4, 5, 6, 9],
            sent_timestamps_ms: vec![0; 4],
        };
        let outcomes = transform_batch::<Counting>(&batch);
        let malformed = Outcome::Rejected(wit::Rejection {
            code: MALFORMED_BATCH.into(),
            detail: "the host sent a batch whose offsets or timestamps do not fit its bodies"
                .into(),
        });
        assert_eq!(
            outcomes.each,
            [
                Outcome::Rows(2),
                Outcome::Rejected(wit::Rejection {
                    code: "bad_body".into(),
                    detail: "the body is bad".into(),
                }),
                Outcome::Rows(0),
                malformed.clone(),
                malformed,
            ]
        );
        assert_eq!(outcomes.tables, [0, 0]);
        assert_eq!(outcomes.text, "22");
        assert_eq!(
            (outcomes.kinds, outcomes.words),
            [
                Value::Text(Span { start: 0, end: 1 }),
                Value::Text(Span { start: 1, end: 2 }),
            ]
            .into_iter()
            .map(Value::encode)
            .unzip()
        );
    }
}
