//! `maskpipe dead-letters list|replay`: what is in `maskpipe_dead_letters`,
//! and sending it back to the queue once the transform is fixed.
//!
//! Replay unseals each body in memory only (no plaintext file, no shell
//! pipeline that splits multi-line bodies), sends it with SendMessageBatch
//! and deletes a dead letter only after SQS accepted its message. A refused
//! or failed send keeps the dead letter and makes the exit status 1, so a
//! replay can be re-run until it exits 0. The replayed messages get new SQS
//! message ids, so the ledger lets them through.
//!
//! The one window left: SQS accepted a message but the delete of its dead
//! letter failed. That is reported (ids, exit 1); re-running before deleting
//! those by hand would send them twice. Sending first and deleting second is
//! deliberate: the other order could lose a message.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clap::{Args, Subcommand};
use zeroize::{Zeroize, Zeroizing};

use crate::config::KeyArgs;
use crate::masking::Keyring;
use crate::sink::{Database, PgSink};
use crate::source::{MAX_BATCH, SqsSource};

/// Held for the whole of a replay, so two replays never send the same dead
/// letter twice. ("maskpipe" + 2; the sink uses + 0 and + 1.)
const REPLAY_LOCK: i64 = 0x6d61_736b_7069_7065 + 2;
/// Dead letters read per query (their sealed bodies are held in memory).
const PAGE: i64 = 500;

#[derive(Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// Count dead letters by day, reason and component digest (a plain table).
    List(ListArgs),
    /// Send the selected dead letters' bodies back to the queue, unsealed in
    /// memory, and delete each dead letter once SQS has accepted its message.
    /// Selectors combine: a dead letter is replayed when it matches all given.
    // Boxed: its settings (the keys' included) are most of the enum's size.
    Replay(Box<ReplayArgs>),
}

/// Where the dead letters are: the same settings as `maskpipe run`'s.
#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string (URL or key=value form).
    #[arg(
        long,
        env = "MASKPIPE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: crate::config::Secret,

    /// PEM file of the CA that PostgreSQL's certificate must chain to.
    #[arg(long, env = "MASKPIPE_DATABASE_CA", value_name = "PEM")]
    pub database_ca: Option<PathBuf>,

    /// Seconds one statement may run; any wait on the database is abandoned
    /// a little after it.
    #[arg(long, env = "MASKPIPE_DATABASE_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub database_timeout_seconds: u32,
}

impl DatabaseArgs {
    pub(crate) fn database(&self) -> Result<Database> {
        if self.database_url.expose().trim().is_empty() {
            bail!("MASKPIPE_DATABASE_URL is empty");
        }
        Ok(
            Database::new(self.database_url.expose(), self.database_ca.as_deref())?
                .with_timeout(Duration::from_secs(self.database_timeout_seconds.into())),
        )
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// SQS queue to send to: a queue URL, or a queue name to look up.
    #[arg(long, env = "MASKPIPE_QUEUE", value_name = "URL|NAME")]
    pub queue: String,

    /// Replay dead letters with this reason code (repeatable).
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,

    /// Replay the dead letter with this id (repeatable).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<i64>,

    /// Only dead letters written at or after this time (RFC 3339, or a UTC
    /// date YYYY-MM-DD).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub since: Option<DateTime<Utc>>,

    /// Only dead letters written before this time (RFC 3339, or a UTC date).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub until: Option<DateTime<Utc>>,

    /// Replay every dead letter (required when no other selector is given).
    #[arg(long)]
    pub all: bool,

    /// Unseal and list what would be replayed; send and delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub keys: KeyArgs,
}

impl ReplayArgs {
    fn selects_anything(&self) -> bool {
        self.all
            || !self.reasons.is_empty()
            || !self.ids.is_empty()
            || self.since.is_some()
            || self.until.is_some()
    }
}

pub async fn dispatch(command: DeadLettersCommand) -> Result<ExitCode> {
    match command {
        DeadLettersCommand::List(args) => list(&args).await,
        DeadLettersCommand::Replay(args) => replay(&args).await,
    }
}

/// A UTC instant: RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC) or `YYYY-MM-DD`.
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(time) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Ok(time.and_utc());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc())
        .ok_or_else(|| format!("{text:?} is not an RFC 3339 time or a YYYY-MM-DD date"))
}

async fn list(args: &ListArgs) -> Result<ExitCode> {
    let sink = PgSink::connect(&args.database.database()?).await?;
    let rows = sink
        .bounded(sink.client().query(
            "SELECT to_char(dead_lettered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), reason,
                    left(component_digest, 12), count(*)
             FROM maskpipe_dead_letters
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            &[],
        ))
        .await
        .context("cannot count the dead letters")?;
    let table: Vec<(String, String, String, i64)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    print!("{}", format_counts(&table));
    Ok(ExitCode::SUCCESS)
}

/// A plain table: day (UTC), reason, component digest (short), count.
fn format_counts(rows: &[(String, String, String, i64)]) -> String {
    let reason_width = rows
        .iter()
        .map(|(_, reason, _, _)| reason.len())
        .chain(["reason".len()])
        .max()
        .unwrap_or(6);
    let mut out = format!(
        "{:<10}  {:<reason_width$}  {:<12}  {:>7}\n",
        "day", "reason", "component", "count"
    );
    for (day, reason, digest, count) in rows {
        out.push_str(&format!(
            "{day:<10}  {reason:<reason_width$}  {digest:<12}  {count:>7}\n"
        ));
    }
    let total: i64 = rows.iter().map(|row| row.3).sum();
    out.push_str(&format!("total {total}\n"));
    out
}

/// One selected dead letter.
struct DeadLetter {
    id: i64,
    message_id: String,
    reason: String,
    body_sealed: String,
}

/// The one place a sealed body is opened: bound to its message id, so a
/// body moved to another dead letter does not open. The plaintext is wiped
/// when dropped.
fn unseal(keyring: &Keyring, dead_letter: &DeadLetter) -> Result<Zeroizing<String>> {
    let plain = keyring
        .reveal(&dead_letter.body_sealed, Some(&dead_letter.message_id))
        .map_err(|error| anyhow!("cannot unseal: {error}"))?;
    String::from_utf8(plain)
        .map(Zeroizing::new)
        .map_err(|error| {
            error.into_bytes().zeroize();
            anyhow!("the unsealed body is not UTF-8")
        })
}

/// What a replay did.
#[derive(Default)]
struct Tally {
    replayed: BTreeMap<String, u64>,
    /// Kept: not unsealed, refused by SQS, or not sent.
    kept: u64,
    /// Sent, but the dead letter could not be deleted.
    sent_not_deleted: Vec<i64>,
}

async fn replay(args: &ReplayArgs) -> Result<ExitCode> {
    if !args.selects_anything() {
        bail!("say what to replay: --reason, --id, --since, --until, or --all");
    }
    // Everything local first: a bad key must not cost a connection.
    let keys = args.keys.checked_to_open()?;
    let database = args.database.database()?;
    let keyring = keys.keyring().await?;
    let source = SqsSource::connect(&args.queue).await?;
    let mut sink = PgSink::connect(&database).await?;
    let locked: bool = sink
        .bounded(
            sink.client()
                .query_one("SELECT pg_try_advisory_lock($1)", &[&REPLAY_LOCK]),
        )
        .await?
        .get(0);
    if !locked {
        bail!("another dead-letter replay is running against this database");
    }

    let mut out = std::io::stdout().lock();
    let mut tally = Tally::default();
    let mut after = 0_i64;
    'pages: loop {
        let page = select_page(&sink, args, after).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for chunk in page.chunks(MAX_BATCH) {
            let mut ready: Vec<(&DeadLetter, Zeroizing<String>)> = Vec::with_capacity(chunk.len());
            for dead_letter in chunk {
                match unseal(&keyring, dead_letter) {
                    Ok(body) => ready.push((dead_letter, body)),
                    Err(error) => {
                        tally.kept += 1;
                        eprintln!("maskpipe: dead letter {}: {error:#}; kept", dead_letter.id);
                    }
                }
            }
            if args.dry_run {
                for (dead_letter, body) in &ready {
                    writeln!(
                        out,
                        "would replay {} ({}, message {}, {} bytes)",
                        dead_letter.id,
                        dead_letter.reason,
                        dead_letter.message_id,
                        body.len()
                    )?;
                    *tally
                        .replayed
                        .entry(dead_letter.reason.clone())
                        .or_default() += 1;
                }
                continue;
            }
            if ready.is_empty() {
                continue;
            }
            let bodies: Vec<&str> = ready.iter().map(|(_, body)| body.as_str()).collect();
            // In runs SQS takes whole (ten bodies, 256 KiB): one oversized
            // run must not stop every replay at the same page.
            let mut results = Vec::with_capacity(bodies.len());
            let mut unreachable = None;
            for run in crate::source::send_runs(&bodies) {
                match source.send_each(run).await {
                    Ok(sent) => results.extend(sent),
                    Err(error) => {
                        unreachable = Some(error);
                        break;
                    }
                }
            }
            // Entries after a failed call have no result: nothing is known
            // to be sent, so they are kept.
            tally.kept += (ready.len() - results.len()) as u64;
            let mut accepted = Vec::with_capacity(ready.len());
            for ((dead_letter, _), result) in ready.iter().zip(results) {
                match result {
                    Ok(_) => accepted.push(*dead_letter),
                    Err(why) => {
                        tally.kept += 1;
                        eprintln!(
                            "maskpipe: SQS refused dead letter {} ({why}); kept",
                            dead_letter.id
                        );
                    }
                }
            }
            if accepted.is_empty() {
                if let Some(error) = unreachable {
                    eprintln!("maskpipe: {error:#}; stopping, the unsent dead letters are kept");
                    break 'pages;
                }
                continue;
            }
            let ids: Vec<i64> = accepted.iter().map(|d| d.id).collect();
            match delete(&sink, &ids).await {
                Ok(()) => {
                    for dead_letter in accepted {
                        *tally
                            .replayed
                            .entry(dead_letter.reason.clone())
                            .or_default() += 1;
                    }
                }
                Err(error) => {
                    eprintln!(
                        "maskpipe: sent but NOT deleted: dead letters {ids:?} ({error:#}); \
                         delete them by hand before replaying again, or they are sent twice"
                    );
                    tally.sent_not_deleted.extend(ids);
                    // The connection may be gone; later chunks need one.
                    if sink.is_closed() {
                        sink = PgSink::connect(&database).await?;
                    }
                }
            }
            if let Some(error) = unreachable {
                // The queue is likely gone or unreachable: stop here.
                eprintln!("maskpipe: {error:#}; stopping, the unsent dead letters are kept");
                break 'pages;
            }
        }
    }

    let replayed: u64 = tally.replayed.values().sum();
    let reasons = tally
        .replayed
        .iter()
        .map(|(reason, count)| format!("{reason}: {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(
        out,
        "{} {replayed} dead letters{} to {}",
        if args.dry_run {
            "would replay"
        } else {
            "replayed"
        },
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({reasons})")
        },
        source.queue_url()
    )?;
    if tally.kept > 0 {
        writeln!(
            out,
            "kept {} dead letters that were not replayed",
            tally.kept
        )?;
    }
    if !tally.sent_not_deleted.is_empty() {
        writeln!(out, "sent but not deleted: {:?}", tally.sent_not_deleted)?;
    }
    Ok(if tally.kept == 0 && tally.sent_not_deleted.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The next page of selected dead letters, by id.
async fn select_page(sink: &PgSink, args: &ReplayArgs, after: i64) -> Result<Vec<DeadLetter>> {
    let rows = sink
        .bounded(sink.client().query(
            "SELECT id, message_id, reason, body_sealed FROM maskpipe_dead_letters
             WHERE id > $1
               AND (cardinality($2::text[]) = 0 OR reason = ANY($2))
               AND (cardinality($3::int8[]) = 0 OR id = ANY($3))
               AND ($4::timestamptz IS NULL OR dead_lettered_at >= $4)
               AND ($5::timestamptz IS NULL OR dead_lettered_at < $5)
             ORDER BY id LIMIT $6",
            &[
                &after,
                &args.reasons,
                &args.ids,
                &args.since,
                &args.until,
                &PAGE,
            ],
        ))
        .await
        .context("cannot read the dead letters")?;
    Ok(rows
        .iter()
        .map(|row| DeadLetter {
            id: row.get(0),
            message_id: row.get(1),
            reason: row.get(2),
            body_sealed: row.get(3),
        })
        .collect())
}

async fn delete(sink: &PgSink, ids: &[i64]) -> Result<()> {
    sink.bounded(sink.client().execute(
        "DELETE FROM maskpipe_dead_letters WHERE id = ANY($1)",
        &[&ids],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_utc_dates() {
        let midnight = parse_time("2026-11-26").unwrap();
        assert_eq!(midnight.to_rfc3339(), "2026-11-26T00:00:00+00:00");
        let zoned = parse_time("2026-11-26T10:30:00+01:00").unwrap();
        assert_eq!(zoned.to_rfc3339(), "2026-11-26T09:30:00+00:00");
        assert!(parse_time("2026-11-26 09:30:00").is_ok());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn the_list_is_a_plain_aligned_table() {
        let table = format_counts(&[
            (
                "2026-11-25".into(),
                "wrong_schema".into(),
                "0123456789ab".into(),
                3,
            ),
            (
                "2026-11-26".into(),
                "invalid_json".into(),
                "0123456789ab".into(),
                12,
            ),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["day", "reason", "component", "count"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["2026-11-26", "invalid_json", "0123456789ab", "12"]
        );
        assert_eq!(lines[3], "total 15");
    }
}
