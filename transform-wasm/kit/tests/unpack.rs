//! Properties of `unpack` over arbitrary batches: a well-formed batch gives
//! back its messages, and any offsets and timestamps give exactly one result
//! per entry, never a panic.

use maskpipe_guest::{MALFORMED_BATCH, unpack};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn packed_batches_unpack_to_their_messages(
        messages in prop::collection::vec((".{0,60}", any::<u64>()), 0..12)
    ) {
        let mut bodies = String::new();
        let mut ends = Vec::new();
        for (body, _) in &messages {
            bodies.push_str(body);
            ends.push(u32::try_from(bodies.len()).unwrap());
        }
        let sent: Vec<u64> = messages.iter().map(|(_, sent)| *sent).collect();
        let unpacked: Vec<_> = unpack(&bodies, &ends, &sent).collect();
        let expected: Vec<_> = messages.iter().map(|(body, sent)| Ok((body.as_str(), *sent))).collect();
        prop_assert_eq!(unpacked, expected);
    }

    #[test]
    fn arbitrary_offsets_and_timestamps_give_one_result_per_entry(
        bodies in ".{0,80}",
        // Small ends land inside the text, often inside a character, in any
        // order; large ones lie past it. Their count need not match the
        // timestamps'.
        ends in prop::collection::vec(prop_oneof![3 => 0u32..90, 1 => any::<u32>()], 0..12),
        sent in prop::collection::vec(any::<u64>(), 0..12),
    ) {
        let unpacked: Vec<_> = unpack(&bodies, &ends, &sent).collect();
        prop_assert_eq!(unpacked.len(), ends.len());
        // Entry i is the text from the previous end to its own, with its
        // timestamp, or `malformed_batch` where either does not exist.
        let mut start = 0usize;
        for (index, (&end, result)) in ends.iter().zip(&unpacked).enumerate() {
            let end = end as usize;
            let expected = bodies.get(start..end).zip(sent.get(index).copied());
            start = end;
            match (result, expected) {
                (Ok(got), Some(expected)) => prop_assert_eq!(*got, expected),
                (Err(rejection), None) => prop_assert_eq!(rejection.code, MALFORMED_BATCH),
                (got, expected) => prop_assert!(false, "entry {index}: {got:?}, expected {expected:?}"),
            }
        }
    }
}
