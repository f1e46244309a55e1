//! One walk over one target: a table's masked columns, a few pages per
//! transaction, or the dead letters, a few rows per transaction.
//!
//! A step selects, locks and updates in one transaction, so the `ctid` it
//! updates by is the one it locked. Which values need a step is decided in
//! SQL (a value that starts like a maskpipe token but not like one under the
//! current key), so rows already done cost a filter, not a round trip.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use super::progress::Progress;
use super::target::{Target, needs, quoted, relation_pages};
use super::{Kept, Tally};
use crate::masking::{Keyring, RevealError};

/// Times a step is tried when PostgreSQL aborts it for a conflict (a
/// deadlock with another session, a lock it could not get).
const STEP_ATTEMPTS: usize = 3;

/// One pass over a target.
pub struct Walk<'a> {
    target: &'a Target,
    keyring: &'a Keyring,
    /// A step that takes longer is abandoned (a half-open connection).
    step_deadline: Duration,
    skipped: bool,
    tally: Tally,
}

impl<'a> Walk<'a> {
    pub fn new(target: &'a Target, keyring: &'a Keyring, statement_deadline: Duration) -> Self {
        Self {
            target,
            keyring,
            step_deadline: statement_deadline * 4,
            skipped: false,
            tally: Tally::default(),
        }
    }

    /// Whether the walk resumed past the start, and so did not see every row.
    pub fn skipped_any(&self) -> bool {
        self.skipped
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
        let key_id = self.keyring.current_key_id().to_owned();
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
                self.skipped = page > 0;
                progress.advance(page.min(pages), 0);
            }
        }
        let names: Vec<&str> = columns.iter().map(|(column, _)| column.as_str()).collect();
        let select = format!(
            "SELECT ctid::text, {} FROM {} \
             WHERE ctid >= $1::text::tid AND ctid < $2::text::tid AND ({}) FOR UPDATE",
            names
                .iter()
                .map(|c| quoted(c))
                .collect::<Vec<_>>()
                .join(", "),
            quoted(table),
            names
                .iter()
                .map(|c| needs(c, 3))
                .collect::<Vec<_>>()
                .join(" OR "),
        );
        // Unchanged values are passed as NULL and kept by COALESCE.
        let update = format!(
            "UPDATE {t} SET {sets} FROM unnest($1::text[]::tid[], {params}) AS v(id, {vs}) \
             WHERE {t}.ctid = v.id",
            t = quoted(table),
            sets = names
                .iter()
                .enumerate()
                .map(|(i, c)| format!(
                    "{q} = COALESCE(v.v{i}, {t}.{q})",
                    q = quoted(c),
                    t = quoted(table)
                ))
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
        let prefix = self.keyring.current_mask_prefix();
        while page < pages {
            let end = (page + u64::from(pages_per_step)).min(pages);
            let step = TableStep {
                select: &select,
                update: &update,
                fields: columns,
                from: format!("({page},0)"),
                to: format!("({end},0)"),
                prefix: &prefix,
                key: &key,
                key_id: &key_id,
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
        let prefix = self.keyring.current_seal_prefix();
        let mut after = 0_i64;
        loop {
            let step = DeadLetterStep {
                after,
                limit: i64::from(per_step),
                prefix: &prefix,
            };
            let (found, last) = self.bounded_step(client, &step).await?;
            let Some(last) = last else { break };
            progress.advance(found.rows + found.kept_total(), found.values);
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

    /// Runs one step in its own transaction, within the deadline, again when
    /// PostgreSQL aborted it for a conflict.
    async fn bounded_step<S: Step>(&self, client: &mut Client, step: &S) -> Result<S::Output> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = tokio::time::timeout(self.step_deadline, async {
                let tx = client.transaction().await?;
                let value = step.run(&tx, self.keyring).await?;
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
                Err(error) if attempt < STEP_ATTEMPTS && is_conflict(&error) => {
                    tracing::warn!("a rekey step was aborted by a conflict; trying it again");
                }
                Err(error) => {
                    return Err(error.context("a rekey step failed; run rekey again to resume"));
                }
            }
        }
    }
}

/// The work of one transaction.
trait Step {
    type Output;
    async fn run(&self, tx: &Transaction<'_>, keyring: &Keyring) -> Result<Self::Output>;
}

/// A deadlock, a serialization failure or a lock not available: the step
/// did nothing and may simply run again.
fn is_conflict(error: &anyhow::Error) -> bool {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<tokio_postgres::Error>())
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

/// One step of a table walk: the rows of pages [from, to).
struct TableStep<'s> {
    select: &'s str,
    update: &'s str,
    fields: &'s [(String, String)],
    from: String,
    to: String,
    prefix: &'s str,
    key: &'s str,
    key_id: &'s str,
    next_page: i64,
}

impl Step for TableStep<'_> {
    type Output = Tally;

    async fn run(&self, tx: &Transaction<'_>, keyring: &Keyring) -> Result<Tally> {
        {
            let rows = tx
                .query(self.select, &[&self.from, &self.to, &self.prefix])
                .await
                .context("reading a step's rows")?;
            let mut tally = Tally::default();
            let mut ids = Vec::new();
            let mut new_values: Vec<Vec<Option<String>>> = vec![Vec::new(); self.fields.len()];
            for row in &rows {
                let mut changed = false;
                let mut values = Vec::with_capacity(self.fields.len());
                for (i, (_, field)) in self.fields.iter().enumerate() {
                    let old: Option<&str> = row.get(i + 1);
                    let new = old
                        .filter(|old| old.starts_with("mp") && !old.starts_with(self.prefix))
                        .and_then(|old| rewrite(keyring.remask(field, old), &mut tally));
                    changed |= new.is_some();
                    values.push(new);
                }
                if changed {
                    tally.rows += 1;
                    ids.push(row.get::<_, String>(0));
                    for (column, value) in new_values.iter_mut().zip(values) {
                        column.push(value);
                    }
                }
            }
            if !ids.is_empty() {
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&ids];
                for column in &new_values {
                    params.push(column);
                }
                tx.execute(self.update, &params)
                    .await
                    .context("writing a step's rows")?;
            }
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
}

/// One step of the dead-letter walk: the next `limit` dead letters after
/// `after` that hold a body or detail under another key.
struct DeadLetterStep<'s> {
    after: i64,
    limit: i64,
    prefix: &'s str,
}

impl Step for DeadLetterStep<'_> {
    type Output = (Tally, Option<i64>);

    async fn run(&self, tx: &Transaction<'_>, keyring: &Keyring) -> Result<Self::Output> {
        {
            let select = format!(
                "SELECT id, message_id, body_sealed, detail_sealed FROM maskpipe_dead_letters \
                 WHERE id > $1 AND ({} OR {}) ORDER BY id LIMIT $2 FOR UPDATE",
                needs("body_sealed", 3),
                needs("detail_sealed", 3)
            );
            let rows = tx
                .query(&select, &[&self.after, &self.limit, &self.prefix])
                .await
                .context("reading dead letters")?;
            let mut tally = Tally::default();
            let (mut ids, mut bodies, mut details) = (Vec::new(), Vec::new(), Vec::new());
            for row in &rows {
                let message_id: &str = row.get(1);
                let reseal = |sealed: Option<&str>, tally: &mut Tally| {
                    sealed
                        .filter(|old| old.starts_with("mp") && !old.starts_with(self.prefix))
                        .and_then(|old| rewrite(keyring.reseal(message_id, old), tally))
                };
                let body = reseal(row.get(2), &mut tally);
                let detail = reseal(row.get(3), &mut tally);
                if body.is_some() || detail.is_some() {
                    tally.rows += 1;
                    ids.push(row.get::<_, i64>(0));
                    bodies.push(body);
                    details.push(detail);
                }
            }
            if !ids.is_empty() {
                tx.execute(
                    "UPDATE maskpipe_dead_letters d
                     SET body_sealed = COALESCE(v.body, d.body_sealed),
                         detail_sealed = COALESCE(v.detail, d.detail_sealed)
                     FROM unnest($1::bigint[], $2::text[], $3::text[]) AS v(id, body, detail)
                     WHERE d.id = v.id",
                    &[&ids, &bodies, &details],
                )
                .await
                .context("writing dead letters")?;
            }
            Ok((tally, rows.last().map(|row| row.get(0))))
        }
    }
}
