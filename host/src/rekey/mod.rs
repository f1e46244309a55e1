//! `maskpipe rekey`: history re-masked under the current key, online.
//!
//! After a rotation, values masked under a retired key stay under it: the
//! same value masks differently under two keys, and the retired key cannot
//! be dropped. `rekey` rewrites them in place under the current key (the
//! masked columns it is given, by default `user_logins.masked_ip` and
//! `masked_device_id`, and the sealed bodies and details of
//! `maskpipe_dead_letters`) while hosts keep writing.
//!
//! * **Small transactions.** A table is walked a few pages at a time with a
//!   TID range scan ([`walk`]). Each step locks the rows of those pages that
//!   hold a value under another key (`FOR UPDATE`), re-masks them in memory,
//!   updates them by `ctid` and commits. Hosts only insert, so they never
//!   wait for it, and a row stays locked for one step.
//! * **Row identity.** `user_logins` has no key. A `ctid` names a row only
//!   within the transaction that locked it: a locked row cannot be updated,
//!   deleted or moved (VACUUM FULL and CLUSTER need a lock that conflicts with
//!   ours) until the step commits. No `ctid` outlives its step; only a page
//!   number does.
//! * **Exactly once, resumable.** A value already under the current key is
//!   never touched, so a step redone after `kill -9` (its transaction rolled
//!   back) rewrites only what it had not committed. Each step saves the page
//!   to resume at in its own transaction (`maskpipe_rekey_progress`). A final
//!   count over the whole table catches what a walk can miss (a row written
//!   behind it by a host still on a retired key, pages rewritten by VACUUM
//!   FULL between runs) and walks again.
//! * **What is left as it is.** Pseudonyms (`ps1.…`) are one-way: without the
//!   value they cannot be made under another key, so they stay, counted in the
//!   summary. A value whose key is not configured, or that does not open, is
//!   kept as it was and makes the exit status 1. Nothing is ever logged but
//!   counts and key ids.
//!
//! One rekey runs at a time per database (an advisory lock).

mod progress;
mod target;
mod walk;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::config::KeyArgs;
use crate::dead_letters::DatabaseArgs;
use crate::masking::{Keyring, RevealError, is_valid_key_id};
use crate::schema::catalog::SCHEMA_LOCK;
use crate::schema::is_plain_name;
use crate::sink::PgSink;

use progress::Progress;
use target::{Counts, Target};
use walk::Walk;

/// Held for the whole of a rekey. ("maskpipe" + 3: the sink uses + 0 and + 1,
/// dead-letter replay + 2.)
const REKEY_LOCK: i64 = SCHEMA_LOCK + 3;
/// Walks of one table before giving up on values that keep appearing under
/// a retired key (a host still masking with it).
const MAX_WALKS: usize = 3;
/// How long a rekey waits for the lock: a killed rekey's session may hold
/// it until its server process notices the closed connection.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Masked values a column's field is checked against before any is rewritten.
const FIELD_SAMPLE: usize = 50;
/// Where a walk resumes after `kill -9`. Made by the first rekey.
const PROGRESS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS maskpipe_rekey_progress (
    target text NOT NULL,
    key_id text NOT NULL,
    next_page bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, key_id)
)";

#[derive(Args, Debug)]
pub struct RekeyArgs {
    /// Another column of masked values and the field its values were masked
    /// as (`reveal --field`), as TABLE.COLUMN=FIELD; repeatable. Always
    /// walked as well: user_logins.masked_ip=ip and
    /// user_logins.masked_device_id=device_id (when that table exists).
    #[arg(long = "column", value_name = "TABLE.COLUMN=FIELD", value_parser = MaskedColumn::parse)]
    pub columns: Vec<MaskedColumn>,

    /// Leave values under this key id as they are, and do not count them as
    /// left over: data kept under its own key to be crypto-shredded later.
    /// Repeatable.
    #[arg(long = "skip-key", value_name = "ID")]
    pub skip_keys: Vec<String>,

    /// Table pages (8 KiB) read per transaction: the rows of that many pages
    /// stay locked for one step.
    #[arg(long, default_value_t = 16, value_name = "PAGES",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pages_per_step: u32,

    /// Dead letters per transaction.
    #[arg(long, default_value_t = 200, value_name = "ROWS",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub dead_letters_per_step: u32,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub keys: KeyArgs,
}

/// `TABLE.COLUMN=FIELD`: a column of masked values, and the field they were
/// masked as (their AEAD is bound to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedColumn {
    pub table: String,
    pub column: String,
    pub field: String,
}

impl MaskedColumn {
    fn parse(text: &str) -> Result<Self, String> {
        let usage = || format!("expected TABLE.COLUMN=FIELD, got {text:?}");
        let (place, field) = text.split_once('=').ok_or_else(usage)?;
        let (table, column) = place.split_once('.').ok_or_else(usage)?;
        for name in [table, column] {
            // Statements quote them too (a reserved word still works).
            if !is_plain_name(name) {
                return Err(format!(
                    "{name:?} is not a plain SQL name (lower case letters, digits and '_')"
                ));
            }
        }
        if field.is_empty() {
            return Err(usage());
        }
        Ok(Self {
            table: table.to_owned(),
            column: column.to_owned(),
            field: field.to_owned(),
        })
    }

    fn defaults() -> Vec<Self> {
        [("masked_ip", "ip"), ("masked_device_id", "device_id")]
            .into_iter()
            .map(|(column, field)| Self {
                table: "user_logins".into(),
                column: column.into(),
                field: field.into(),
            })
            .collect()
    }
}

/// What one target's walks did and found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Rows updated, and the values in them re-masked or resealed.
    pub rows: u64,
    pub values: u64,
    /// Values kept as they were, by why (from the last walk only: a redone
    /// walk meets them again).
    pub kept: BTreeMap<Kept, u64>,
}

/// Why a value under another key was kept as it was.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kept {
    /// Masked under a key id that is not configured.
    UnknownKey(String),
    /// Did not open: altered, or masked as another field than the one given.
    Authentication,
    /// PostgreSQL refused the row's update (this SQLSTATE): a constraint,
    /// a trigger, a value too long for its column.
    Refused(String),
    /// The update changed nothing: a trigger skipped it, or a row-level
    /// security policy hid it.
    NotUpdated,
    /// Not a value maskpipe makes (starts like one).
    NotAToken,
}

impl Kept {
    fn of(error: RevealError) -> Self {
        match error {
            RevealError::UnknownKey(id) => Self::UnknownKey(id),
            // Never without context here: the field or message id is always given.
            RevealError::Authentication | RevealError::MissingContext(_) => Self::Authentication,
            RevealError::Format => Self::NotAToken,
        }
    }
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey(id) => write!(f, "key id {id:?} is not configured"),
            Self::Authentication => f.write_str("did not open (altered, or another field)"),
            Self::NotAToken => f.write_str("not a maskpipe value"),
            Self::NotUpdated => {
                f.write_str("the update changed no row (a trigger or row-level policy)")
            }
            Self::Refused(sqlstate) => {
                write!(f, "PostgreSQL refused the update (SQLSTATE {sqlstate})")
            }
        }
    }
}

impl Tally {
    fn kept_total(&self) -> u64 {
        self.kept.values().sum()
    }
}

/// One target's outcome, for the summary.
struct Report {
    name: String,
    tally: Tally,
    /// After the last walk: values still under another key (the kept ones,
    /// or more if a host keeps writing under a retired key), pseudonyms
    /// under other keys, values under skipped keys.
    counts: Counts,
}

pub async fn run(args: RekeyArgs) -> Result<ExitCode> {
    let started = Instant::now();
    // Everything local first: a bad key must not cost a connection.
    let keys = args.keys.checked_to_open()?;
    let database = args.database.database()?;
    // Named by position: what was typed might be key material.
    if let Some(n) = args.skip_keys.iter().position(|id| !is_valid_key_id(id)) {
        bail!(
            "--skip-key number {} is not a key id (1-16 of A-Z, a-z, 0-9, '_', '-')",
            n + 1
        );
    }
    let keyring = keys.keyring().await?;
    if args
        .skip_keys
        .iter()
        .any(|id| id == keyring.current_key_id())
    {
        bail!("--skip-key names the current key: its values need no rekey");
    }
    let mut sink = PgSink::connect(&database).await?;
    // A killed rekey's session holds the lock until its statement ends.
    lock(
        &sink,
        LOCK_WAIT.max(database.timeout() + Duration::from_secs(5)),
    )
    .await?;
    sink.bounded(sink.client().batch_execute(PROGRESS_TABLE))
        .await
        .context("cannot create maskpipe_rekey_progress")?;

    let mut notes = Vec::new();
    let columns: Vec<(MaskedColumn, bool)> = MaskedColumn::defaults()
        .into_iter()
        .map(|column| (column, false))
        .chain(args.columns.iter().map(|column| (column.clone(), true)))
        .collect();
    let mut targets = Target::resolve(&sink, &columns, args.pages_per_step, &mut notes).await?;
    if targets.is_empty() {
        bail!(
            "no masked column to re-key: {} (name them with --column TABLE.COLUMN=FIELD)",
            notes.join("; ").replace(": skipped", "")
        );
    }
    let deadline = database.timeout() + Duration::from_secs(5);
    for target in &targets {
        notes.extend(check_fields(&sink, deadline, target, &keyring).await?);
    }
    match Target::dead_letters(&sink, args.dead_letters_per_step).await? {
        Some(target) => targets.push(target),
        None => notes.push("no maskpipe_dead_letters table: skipped".into()),
    }

    let mut progress = Progress::new(keyring.current_key_id());
    for target in &targets {
        let filter = target.filter(&keyring, &args.skip_keys);
        progress.add_total(
            target
                .size(sink.client_mut(), deadline, &filter, &keyring)
                .await?,
        );
    }
    let step_deadline = deadline * 4;
    let mut reports = Vec::new();
    for target in &targets {
        let filter = target.filter(&keyring, &args.skip_keys);
        let mut tally = Tally::default();
        let mut counts = Counts::default();
        for attempt in 0..MAX_WALKS {
            let mut walk = Walk::new(target, &keyring, &filter, step_deadline);
            // Only the first walk resumes; a later one reads the table whole.
            let found = walk
                .run(sink.client_mut(), attempt == 0, &mut progress)
                .await?;
            tally.rows += found.rows;
            tally.values += found.values;
            tally.kept = found.kept.clone();
            counts = target
                .count(sink.client_mut(), deadline, &filter, &keyring)
                .await?;
            // Done when nothing is left, or when a whole walk rewrote nothing
            // (what is left is what it kept). A walk that rewrote something
            // may have missed values written behind it: walk again.
            let whole = !walk.resumed_mid_way();
            if counts.remaining == 0 || (whole && found.values == 0) {
                break;
            }
        }
        reports.push(Report {
            name: target.name(),
            tally,
            counts,
        });
    }
    progress.finish();
    print_summary(
        &reports,
        &notes,
        keyring.current_key_id(),
        started.elapsed(),
    );
    let clean = reports.iter().all(|report| report.counts.remaining == 0);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Takes the one-rekey-per-database lock, waiting a little for a killed
/// rekey's session to end.
async fn lock(sink: &PgSink, wait: Duration) -> Result<()> {
    let waited = Instant::now();
    loop {
        let locked: bool = sink
            .bounded(
                sink.client()
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&REKEY_LOCK]),
            )
            .await?
            .get(0);
        if locked {
            return Ok(());
        }
        if waited.elapsed() >= wait {
            bail!("another rekey is running against this database");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Checks each column's field against a sample of its `mp2` values under
/// configured keys before anything is rewritten: a wrong field would bind
/// its `mp1` values (which carry no field) to it, and they would no longer
/// open as the right one. A column with no such value gets a note.
async fn check_fields(
    sink: &PgSink,
    deadline: Duration,
    target: &Target,
    keyring: &Keyring,
) -> Result<Vec<String>> {
    let Target::Table { table, columns, .. } = target else {
        return Ok(Vec::new());
    };
    let key_ids = keyring.key_ids();
    let mut notes = Vec::new();
    for (column, field) in columns {
        let sample = Target::sample(
            sink.client(),
            deadline,
            table,
            column,
            &key_ids,
            FIELD_SAMPLE,
        )
        .await?;
        let outcomes: Vec<_> = sample
            .iter()
            .map(|value| keyring.reveal(value, Some(field)).map(drop))
            .collect();
        let opened = outcomes.iter().any(Result::is_ok);
        let refused = outcomes.contains(&Err(RevealError::Authentication));
        if !opened && refused {
            bail!(
                "{table}.{column}: none of its values opens as field {field:?}: give the field they were masked as (--column {table}.{column}=FIELD)"
            );
        }
        if !opened {
            notes.push(format!(
                "{table}.{column}: no mp2 value under a configured key to check field {field:?} against; \
                 its mp1 values are re-masked as {field:?} unchecked"
            ));
        }
    }
    Ok(notes)
}

fn print_summary(reports: &[Report], notes: &[String], key_id: &str, elapsed: Duration) {
    let mut out = std::io::stdout().lock();
    let left: u64 = reports.iter().map(|report| report.counts.remaining).sum();
    let seconds = elapsed.as_secs_f64();
    let _ = if left == 0 {
        writeln!(
            out,
            "maskpipe rekey: every masked value and sealed body is under key {key_id} ({seconds:.1} s)"
        )
    } else {
        writeln!(
            out,
            "maskpipe rekey: {left} values are not under key {key_id} and were kept as they were ({seconds:.1} s)"
        )
    };
    for report in reports {
        let _ = writeln!(
            out,
            "  {}: {} rows rewritten ({} values)",
            report.name, report.tally.rows, report.tally.values
        );
        for (why, count) in &report.tally.kept {
            let _ = writeln!(out, "    {count} kept: {why}");
        }
        let unexplained = report
            .counts
            .remaining
            .saturating_sub(report.tally.kept_total());
        if unexplained > 0 {
            let _ = writeln!(
                out,
                "    {unexplained} still appearing under a retired key: is a host still masking with one?"
            );
        }
        if report.counts.pseudonyms > 0 {
            let _ = writeln!(
                out,
                "    {} pseudonyms (ps1) under other keys left as they are: one-way, they cannot be re-keyed",
                report.counts.pseudonyms
            );
        }
        if report.counts.skipped > 0 {
            let _ = writeln!(
                out,
                "    {} values under skipped keys (--skip-key) left as they are",
                report.counts.skipped
            );
        }
    }
    for note in notes {
        let _ = writeln!(out, "  {note}");
    }
    if left > 0 {
        let _ = writeln!(
            out,
            "  configure the missing keys (MASKPIPE_RETIRED_KEYS or MASKPIPE_RETIRED_KEY_CIPHERTEXTS), skip them (--skip-key), \
             or fix the rows PostgreSQL refused, then run rekey again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_is_table_dot_column_equals_field() {
        assert_eq!(
            MaskedColumn::parse("login_devices.masked_ip=ip").unwrap(),
            MaskedColumn {
                table: "login_devices".into(),
                column: "masked_ip".into(),
                field: "ip".into()
            }
        );
        for bad in [
            "user_logins.masked_ip",
            "masked_ip=ip",
            "user_logins.masked_ip=",
            "User.x=ip",
            "t.\"x\"=ip",
            "t.x;drop=ip",
            "1t.x=ip",
        ] {
            assert!(MaskedColumn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kept_values_are_named_by_key_id_and_reason_only() {
        assert_eq!(
            Kept::of(RevealError::UnknownKey("old".into())).to_string(),
            "key id \"old\" is not configured"
        );
        assert_eq!(Kept::of(RevealError::Format), Kept::NotAToken);
    }
}
