//! One walk over one target: a table's masked columns, a few pages per
//! transaction, or the dead letters, a few rows per transaction.
//!
//! A step selects, locks and updates in one transaction, so the `ctid` it
//! updates by is the one it locked. Which values need a step is decided in
//! SQL first ([`Filter`]), so rows already done cost a filter, not a round
//! trip. A step whose update PostgreSQL refuses for its data (a constraint,
//! a trigger, a value too long for its column) is run again row by row
//! under savepoints, so only the refused rows keep their old values, like
//! the pipeline's split of a refused batch. Errors name a SQLSTATE and the
//! constraint, never the row (PostgreSQL's DETAIL quotes it).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};

use super::progress::Progress;
use super::target::{Filter, Target, quoted, relation_pages};
use super::{Kept, Tally};
use crate::dberror::{WriteFailure, classify, postgres_error};
use crate::masking::{Keyring, RevealError};

/// Times a step is tried when PostgreSQL aborts it for a conflict (a
/// deadlock with another session, a lock it could not get).
const STEP_ATTEMPTS: usize = 3;

/// One pass over a target.
pub struct Walk<'a> {
    target: &'a Target,
    keyring: &'a Keyring,
    filter: &'a Filter,
    /// A step that takes longer is abandoned (a half-open connection).
    step_deadline: Duration,
    resumed: bool,
    tally: Tally,
}

impl<'a> Walk<'a> {
    pub fn new(
        target: &'a Target,
        keyring: &'a Keyring,
        filter: &'a Filter,
        step_deadline: Duration,
    ) -> Self {
        Self {
            target,
            keyring,
            filter,
            step_deadline,
            resumed: false,
            tally: Tally::default(),
        }
    }

    /// Whether the walk resumed past the start, and so did not see every row.
    pub fn resumed_mid_way(&self) -> bool {
        self.resumed
    }

    pub async fn run(
        &mut self,
        client: &mut Client,
        resume: bool,
        progress: &mut Progress,
    ) -> Result<Tally> {
        progress.start(self.target.name());
        match self.target {
            Target::Table {
                table,
                columns,
                pages_per_step,
            } => {
                self.walk_table(client, table, columns, *pages_per_step, resume, progress)
                    .await?
            }
            Target::DeadLetters { per_step } => {
                self.walk_dead_letters(client, *per_step, progress).await?
            }
        }
        Ok(std::mem::take(&mut self.tally))
    }

    async fn walk_table(
        &mut self,
        client: &mut Client,
        table: &str,
        columns: &[(String, String)],
        pages_per_step: u32,
        resume: bool,
        progress: &mut Progress,
    ) -> Result<()> {
        let key = self.target.progress_key();
        let key_id = self.keyring.current_key_id();
        let pages = relation_pages(client, table).await?;
        let mut page: u64 = 0;
        if resume {
            let saved = client
                .query_opt(
                    "SELECT next_page FROM maskpipe_rekey_progress WHERE target = $1 AND key_id = $2",
                    &[&key, &key_id],
                )
                .await?;
            if let Some(row) = saved {
                page = row.get::<_, i64>(0).max(0) as u64;
                self.resumed = page > 0;
                progress.advance(page.min(pages), 0);
            }
        }
        let sql = TableSql::new(table, columns, self.filter);
        while page < pages {
            let end = (page + u64::from(pages_per_step)).min(pages);
            let step = TableStep {
                sql: &sql,
                fields: columns,
                filter: self.filter,
                from: format!("({page},0)"),
                to: format!("({end},0)"),
                key,
                key_id,
                next_page: end as i64,
            };
            let found = self.bounded_step(client, &step).await?;
            progress.advance(end - page, found.values);
            self.absorb(found);
            page = end;
        }
        // Done: the next rekey to this key starts from the first page.
        client
            .execute(
                "DELETE FROM maskpipe_rekey_progress WHERE target = $1 AND key_id = $2",
                &[&key, &key_id],
            )
            .await?;
        Ok(())
    }

    async fn walk_dead_letters(
        &mut self,
        client: &mut Client,
        per_step: u32,
        progress: &mut Progress,
    ) -> Result<()> {
        let select = format!(
            "SELECT id, message_id, body_sealed, detail_sealed FROM maskpipe_dead_letters \
             WHERE id > $1 AND ({} OR {}) ORDER BY id LIMIT $2 FOR UPDATE",
            self.filter.sql("body_sealed", 3),
            self.filter.sql("detail_sealed", 3)
        );
        let mut after = 0_i64;
        loop {
            let step = DeadLetterStep {
                select: &select,
                filter: self.filter,
                after,
                limit: i64::from(per_step),
            };
            let (found, last) = self.bounded_step(client, &step).await?;
            let Some(last) = last else { break };
            progress.advance(found.rows, found.values);
            self.absorb(found);
            after = last;
        }
        Ok(())
    }

    fn absorb(&mut self, found: Tally) {
        self.tally.rows += found.rows;
        self.tally.values += found.values;
        for (why, count) in found.kept {
            *self.tally.kept.entry(why).or_default() += count;
        }
    }

    /// Runs one step in its own transaction, within the deadline: again
    /// when PostgreSQL aborted it for a conflict, and row by row when it
    /// refused its update for the data.
    async fn bounded_step<S: Step>(&self, client: &mut Client, step: &S) -> Result<S::Output> {
        let mut attempt = 0;
        let mut split = false;
        loop {
            attempt += 1;
            let outcome = tokio::time::timeout(self.step_deadline, async {
                let tx = client.transaction().await?;
                let value = step.run(&tx, self.keyring, split).await?;
                tx.commit().await?;
                Ok::<_, anyhow::Error>(value)
            })
            .await
            .map_err(|_| {
                anyhow!(
                    "PostgreSQL did not answer a step in {:?}; run rekey again to resume",
                    self.step_deadline
                )
            })?;
            match outcome {
                Ok(value) => return Ok(value),
                Err(error) if !split && refuses_rows(&error) => split = true,
                Err(error) if attempt < STEP_ATTEMPTS && is_conflict(&error) => {
                    tracing::warn!("a rekey step was aborted by a conflict; trying it again");
                }
                Err(error) => {
                    return Err(anyhow!(
                        "a rekey step failed: {}; run rekey again to resume",
                        without_row_data(&error)
                    ));
                }
            }
        }
    }
}

/// The work of one transaction. `split`: write row by row, keeping the
/// rows PostgreSQL refuses.
trait Step {
    type Output;
    async fn run(
        &self,
        tx: &Transaction<'_>,
        keyring: &Keyring,
        split: bool,
    ) -> Result<Self::Output>;
}

/// A deadlock, a serialization failure or a lock not available: the step
/// did nothing and may simply run again.
fn is_conflict(error: &anyhow::Error) -> bool {
    postgres_error(error)
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|code| {
            [
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::LOCK_NOT_AVAILABLE,
            ]
            .contains(code)
        })
}

/// The SQLSTATE of an error PostgreSQL raised for the data written.
fn refusal(error: &anyhow::Error) -> Option<String> {
    match classify(error) {
        WriteFailure::Data { sqlstate } => Some(sqlstate),
        _ => None,
    }
}

/// An update that changed fewer rows than it locked: a `BEFORE UPDATE`
/// trigger that returned NULL, or a row-level security policy.
#[derive(Debug, thiserror::Error)]
#[error("an update changed {written} of the {locked} rows it locked")]
struct NotUpdated {
    locked: usize,
    written: u64,
}

/// Whether a step failed for some of its rows (so that writing them one by
/// one keeps only those).
fn refuses_rows(error: &anyhow::Error) -> bool {
    refusal(error).is_some() || error.is::<NotUpdated>()
}

/// An error's text without what PostgreSQL quotes from rows: the SQLSTATE,
/// its message's names (constraint, table, column), and no DETAIL.
fn without_row_data(error: &anyhow::Error) -> String {
    let Some(db) = postgres_error(error).and_then(tokio_postgres::Error::as_db_error) else {
        return format!("{error:#}");
    };
    let mut text = format!("PostgreSQL error SQLSTATE {}", db.code().code());
    for (what, name) in [
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
    ] {
        if let Some(name) = name {
            text.push_str(&format!(", {what} {name}"));
        }
    }
    text
}

/// A value re-masked (or resealed), kept, or already current.
fn rewrite(outcome: Result<Option<String>, RevealError>, tally: &mut Tally) -> Option<String> {
    match outcome {
        Ok(Some(new)) => {
            tally.values += 1;
            Some(new)
        }
        Ok(None) => None,
        Err(error) => {
            *tally.kept.entry(Kept::of(error)).or_default() += 1;
            None
        }
    }
}

/// A row to write: its identity and its new values (`None`: unchanged).
struct Change<Id> {
    id: Id,
    values: Vec<Option<String>>,
}

impl<Id> Change<Id> {
    /// The row's change, if any of its values was rewritten (a row rewritten).
    fn of(id: impl FnOnce() -> Id, values: Vec<Option<String>>, tally: &mut Tally) -> Option<Self> {
        values.iter().any(Option::is_some).then(|| {
            tally.rows += 1;
            Self { id: id(), values }
        })
    }

    fn count(&self) -> u64 {
        self.values.iter().filter(|value| value.is_some()).count() as u64
    }
}

/// Writes `changes` with `update` (`$1` the ids, then one array per
/// column), all at once or, when `split`, one by one under savepoints:
/// a row PostgreSQL refuses keeps its old values and is counted as kept.
async fn write<Id: ToSql + Sync + Clone + 'static>(
    tx: &Transaction<'_>,
    update: &str,
    changes: Vec<Change<Id>>,
    split: bool,
    tally: &mut Tally,
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    if !split {
        return write_rows(tx, update, &changes).await;
    }
    for change in changes {
        tx.batch_execute("SAVEPOINT rekey_row").await?;
        match write_rows(tx, update, std::slice::from_ref(&change)).await {
            Ok(()) => tx.batch_execute("RELEASE SAVEPOINT rekey_row").await?,
            Err(error) => {
                let why = match refusal(&error) {
                    Some(sqlstate) => Kept::Refused(sqlstate),
                    None if error.is::<NotUpdated>() => Kept::NotUpdated,
                    None => return Err(error),
                };
                tx.batch_execute("ROLLBACK TO SAVEPOINT rekey_row").await?;
                let count = change.count();
                tally.rows -= 1;
                tally.values -= count;
                *tally.kept.entry(why).or_default() += count;
            }
        }
    }
    Ok(())
}

async fn write_rows<Id: ToSql + Sync + Clone + 'static>(
    tx: &Transaction<'_>,
    update: &str,
    changes: &[Change<Id>],
) -> Result<()> {
    let ids: Vec<Id> = changes.iter().map(|change| change.id.clone()).collect();
    let columns = changes.first().map_or(0, |change| change.values.len());
    let values: Vec<Vec<Option<&str>>> = (0..columns)
        .map(|i| {
            changes
                .iter()
                .map(|change| change.values[i].as_deref())
                .collect()
        })
        .collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids];
    for column in &values {
        params.push(column);
    }
    let written = tx
        .execute(update, &params)
        .await
        .context("writing a step's rows")?;
    // Locked rows cannot go anywhere: what was not updated was skipped by
    // a trigger or a policy, and is split out like a refused row.
    if written != changes.len() as u64 {
        return Err(NotUpdated {
            locked: changes.len(),
            written,
        }
        .into());
    }
    Ok(())
}

/// A table walk's statements, made once per walk.
struct TableSql {
    /// `$1`/`$2` the page range, `$3`/`$4` the filter.
    select: String,
    /// `$1` the ctids, then one text array per column; NULL keeps a value.
    update: String,
}

impl TableSql {
    fn new(table: &str, columns: &[(String, String)], filter: &Filter) -> Self {
        let names: Vec<String> = columns.iter().map(|(column, _)| quoted(column)).collect();
        let t = quoted(table);
        let select = format!(
            "SELECT ctid::text, {} FROM {t} \
             WHERE ctid >= $1::text::tid AND ctid < $2::text::tid AND ({}) FOR UPDATE",
            names.join(", "),
            columns
                .iter()
                .map(|(column, _)| filter.sql(column, 3))
                .collect::<Vec<_>>()
                .join(" OR "),
        );
        let update = format!(
            "UPDATE {t} SET {sets} FROM unnest($1::text[]::tid[], {params}) AS v(id, {vs}) \
             WHERE {t}.ctid = v.id",
            sets = names
                .iter()
                .enumerate()
                .map(|(i, q)| format!("{q} = COALESCE(v.v{i}, {t}.{q})"))
                .collect::<Vec<_>>()
                .join(", "),
            params = (0..names.len())
                .map(|i| format!("${}::text[]", i + 2))
                .collect::<Vec<_>>()
                .join(", "),
            vs = (0..names.len())
                .map(|i| format!("v{i}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        Self { select, update }
    }
}

/// One step of a table walk: the rows of pages [from, to).
struct TableStep<'s> {
    sql: &'s TableSql,
    fields: &'s [(String, String)],
    filter: &'s Filter,
    from: String,
    to: String,
    key: &'s str,
    key_id: &'s str,
    next_page: i64,
}

impl Step for TableStep<'_> {
    type Output = Tally;

    async fn run(&self, tx: &Transaction<'_>, keyring: &Keyring, split: bool) -> Result<Tally> {
        let rows = tx
            .query(
                &self.sql.select,
                &[&self.from, &self.to, &self.filter.prefix, &self.filter.skip],
            )
            .await
            .context("reading a step's rows")?;
        let mut tally = Tally::default();
        let mut changes = Vec::new();
        for row in &rows {
            let values: Vec<Option<String>> = self
                .fields
                .iter()
                .enumerate()
                .map(|(i, (_, field))| {
                    row.get::<_, Option<&str>>(i + 1)
                        .filter(|old| self.filter.needs(old))
                        .and_then(|old| rewrite(keyring.remask(field, old), &mut tally))
                })
                .collect();
            changes.extend(Change::of(|| row.get::<_, String>(0), values, &mut tally));
        }
        write(tx, &self.sql.update, changes, split, &mut tally).await?;
        tx.execute(
            "INSERT INTO maskpipe_rekey_progress (target, key_id, next_page) VALUES ($1, $2, $3)
             ON CONFLICT (target, key_id) DO UPDATE SET next_page = $3, updated_at = now()",
            &[&self.key, &self.key_id, &self.next_page],
        )
        .await
        .context("saving the rekey's progress")?;
        Ok(tally)
    }
}

/// One step of the dead-letter walk: the next `limit` dead letters after
/// `after` that hold a body or detail under another key.
struct DeadLetterStep<'s> {
    select: &'s str,
    filter: &'s Filter,
    after: i64,
    limit: i64,
}

impl Step for DeadLetterStep<'_> {
    type Output = (Tally, Option<i64>);

    async fn run(
        &self,
        tx: &Transaction<'_>,
        keyring: &Keyring,
        split: bool,
    ) -> Result<Self::Output> {
        let rows = tx
            .query(
                self.select,
                &[
                    &self.after,
                    &self.limit,
                    &self.filter.prefix,
                    &self.filter.skip,
                ],
            )
            .await
            .context("reading dead letters")?;
        let mut tally = Tally::default();
        let mut changes = Vec::new();
        for row in &rows {
            let message_id: &str = row.get(1);
            let values: Vec<Option<String>> = [2, 3]
                .into_iter()
                .map(|i| {
                    row.get::<_, Option<&str>>(i)
                        .filter(|old| self.filter.needs(old))
                        .and_then(|old| rewrite(keyring.reseal(message_id, old), &mut tally))
                })
                .collect();
            changes.extend(Change::of(|| row.get::<_, i64>(0), values, &mut tally));
        }
        write(
            tx,
            "UPDATE maskpipe_dead_letters d
             SET body_sealed = COALESCE(v.body, d.body_sealed),
                 detail_sealed = COALESCE(v.detail, d.detail_sealed)
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS v(id, body, detail)
             WHERE d.id = v.id",
            changes,
            split,
            &mut tally,
        )
        .await?;
        Ok((tally, rows.last().map(|row| row.get(0))))
    }
}
