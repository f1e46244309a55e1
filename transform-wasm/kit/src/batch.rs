//! The way in: the messages of a packed batch, and why one can be refused.

use crate::wit;

/// The code of a batch entry whose offsets or timestamp do not fit its
/// bodies (see [`unpack`]). The export glue declares it for every transform.
pub const MALFORMED_BATCH: &str = "malformed_batch";

/// Why a message cannot become rows (WIT `rejection`). Its code is
/// `&'static str`: a code is declared before any message is seen, so it can
/// never be made of message content. `detail` names fields, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

impl From<Rejection> for wit::Rejection {
    fn from(rejection: Rejection) -> Self {
        Self {
            code: rejection.code.to_owned(),
            detail: rejection.detail,
        }
    }
}

/// The messages of a packed WIT `batch`, in order: each body with its
/// `SentTimestamp`, one item per entry of `body_ends`. Where the host's
/// offsets or timestamps do not fit its bodies, that message is an `Err`
/// ([`MALFORMED_BATCH`]) instead of a panic.
pub fn unpack<'a>(
    bodies: &'a str,
    body_ends: &'a [u32],
    sent_timestamps_ms: &'a [u64],
) -> impl Iterator<Item = Result<(&'a str, u64), Rejection>> + 'a {
    let mut start = 0;
    body_ends.iter().enumerate().map(move |(index, &end)| {
        let end = end as usize;
        // `get` is None for an end out of range, before its start or inside
        // a character.
        let body = bodies.get(start..end);
        start = end;
        match (body, sent_timestamps_ms.get(index)) {
            (Some(body), Some(&sent)) => Ok((body, sent)),
            _ => Err(Rejection::new(
                MALFORMED_BATCH,
                "the host sent a batch whose offsets or timestamps do not fit its bodies",
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_batch_unpacks_in_order() {
        let bodies = "first✓second";
        let ends = [8, 14];
        let sent = [1, 2];
        let messages: Vec<_> = unpack(bodies, &ends, &sent).collect();
        assert_eq!(messages, vec![Ok(("first✓", 1)), Ok(("second", 2))]);
    }

    #[test]
    fn an_inconsistent_batch_is_refused_message_by_message() {
        let bodies = "first✓second";
        // Inside the check mark, past the end, a missing timestamp.
        for (ends, sent) in [
            (&[6, 14][..], &[1, 2][..]),
            (&[8, 99], &[1, 2]),
            (&[8, 14], &[1]),
        ] {
            let codes: Vec<_> = unpack(bodies, ends, sent)
                .map(|message| message.map(|_| ()).map_err(|rejection| rejection.code))
                .collect();
            assert_eq!(codes.len(), 2);
            assert!(
                codes.contains(&Err(MALFORMED_BATCH)),
                "{ends:?} {sent:?}: {codes:?}"
            );
        }
    }

    #[test]
    fn an_empty_batch_has_no_messages() {
        assert_eq!(unpack("", &[], &[]).count(), 0);
    }

    #[test]
    fn a_rejection_becomes_the_wit_record() {
        let wit: wit::Rejection = Rejection::new("wrong_type", "field `x`").into();
        assert_eq!(wit.code, "wrong_type");
        assert_eq!(wit.detail, "field `x`");
    }
}
