//! What a rekey rewrites ([`Target`]): a table's masked columns, checked
//! against the catalog, or the dead letters; which of their values need
//! rewriting ([`Filter`]); and the counts over a whole table that settle
//! whether a rekey is done. Names reach SQL only after
//! [`super::MaskedColumn`] accepted them as plain identifiers, and are
//! quoted anyway.
//!
//! Counts and samples read a table a slice of pages per statement, so that
//! a table of any size is read within the statement timeout.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, IsolationLevel};

use super::MaskedColumn;
use crate::masking::Keyring;
use crate::sink::PgSink;

/// Pages a count reads per statement (80 MiB): well within any statement
/// timeout, few enough round trips.
const COUNT_PAGES: u64 = 10_240;

/// What a rekey rewrites.
pub enum Target {
    /// Masked columns of one table, each with the field it was masked as.
    Table {
        table: String,
        columns: Vec<(String, String)>,
        pages_per_step: u32,
    },
    /// `maskpipe_dead_letters`' sealed bodies and details.
    DeadLetters { per_step: u32 },
}

/// `"name"`: names are plain identifiers already; quoting keeps reserved words working.
pub(super) fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// Which values need rewriting: those that start like a maskpipe token
/// (`mp…`) but not like one under the current key, and whose key id is not
/// one the operator asked to leave (`--skip-key`).
pub struct Filter {
    /// `mp2.<current id>.` (masked values) or `mp2s.<current id>.` (sealed bodies).
    pub prefix: String,
    pub skip: Vec<String>,
}

impl Filter {
    pub fn masked(keyring: &Keyring, skip: &[String]) -> Self {
        Self {
            prefix: keyring.current_mask_prefix(),
            skip: skip.to_vec(),
        }
    }

    pub fn sealed(keyring: &Keyring, skip: &[String]) -> Self {
        Self {
            prefix: keyring.current_seal_prefix(),
            skip: skip.to_vec(),
        }
    }

    /// The SQL condition on `column`, with the prefix as `$first` and the
    /// skipped key ids as `$first + 1`.
    pub fn sql(&self, column: &str, first: usize) -> String {
        format!(
            "(left({c}, 2) = 'mp' AND NOT starts_with({c}, ${first}) \
             AND split_part({c}, '.', 2) <> ALL(${skip}::text[]))",
            c = quoted(column),
            skip = first + 1
        )
    }

    /// The same condition in Rust, for a value the SQL selected.
    pub fn needs(&self, value: &str) -> bool {
        value.starts_with("mp")
            && !value.starts_with(&self.prefix)
            && !value
                .split('.')
                .nth(1)
                .is_some_and(|id| self.skip.iter().any(|skip| skip == id))
    }
}

/// A target's values after a walk, over the whole table.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Still under another key (and not skipped).
    pub remaining: u64,
    /// `ps1` pseudonyms under other keys than the current one.
    pub pseudonyms: u64,
    /// Under a key id given to `--skip-key`.
    pub skipped: u64,
}

/// A column to walk as `resolve` gathers them: its name, its field, and
/// whether the operator named it (`--column`) or it is a default.
type Place = (String, String, bool);

impl Target {
    /// The columns grouped by table, each checked against the catalog. A
    /// default column (`explicit` false) that does not fit is dropped with
    /// a note; an explicit one is an error naming it. An explicit column
    /// replaces a default of the same place (its field).
    pub async fn resolve(
        sink: &PgSink,
        columns: &[(MaskedColumn, bool)],
        pages_per_step: u32,
        notes: &mut Vec<String>,
    ) -> Result<Vec<Self>> {
        let mut tables: Vec<(String, Vec<Place>)> = Vec::new();
        for (column, explicit) in columns {
            let entry = (column.column.clone(), column.field.clone(), *explicit);
            let Some((_, entries)) = tables.iter_mut().find(|(table, _)| *table == column.table)
            else {
                tables.push((column.table.clone(), vec![entry]));
                continue;
            };
            match entries.iter_mut().find(|(name, ..)| *name == column.column) {
                None => entries.push(entry),
                Some(seen) if !seen.2 => *seen = entry,
                Some((_, field, _)) if *field != column.field => bail!(
                    "{}.{} is given twice, as field {field:?} and as {:?}: a column's values are masked as one field",
                    column.table,
                    column.column,
                    column.field
                ),
                Some(_) => {}
            }
        }
        let mut targets = Vec::new();
        for (table, entries) in tables {
            let mut problem = |explicit: bool, what: String| {
                if explicit {
                    Err(anyhow::anyhow!("{what}"))
                } else {
                    notes.push(format!("{what}: skipped"));
                    Ok(())
                }
            };
            let any_explicit = entries.iter().any(|(.., explicit)| *explicit);
            if let Some(what) = table_problem(sink, &table).await? {
                problem(any_explicit, what)?;
                continue;
            }
            let types = column_types(sink, &table).await?;
            let mut columns = Vec::new();
            for (column, field, explicit) in entries {
                match types.iter().find(|(name, _)| *name == column) {
                    None => problem(explicit, format!("no column {table}.{column}"))?,
                    Some((_, kind)) if !matches!(kind.as_str(), "text" | "varchar") => problem(
                        explicit,
                        format!("column {table}.{column} is not text (it is {kind})"),
                    )?,
                    Some(_) => columns.push((column, field)),
                }
            }
            if !columns.is_empty() {
                targets.push(Self::Table {
                    table,
                    columns,
                    pages_per_step,
                });
            }
        }
        Ok(targets)
    }

    /// The dead letters, if their table exists.
    pub async fn dead_letters(sink: &PgSink, per_step: u32) -> Result<Option<Self>> {
        let exists: bool = sink
            .bounded(sink.client().query_one(
                "SELECT to_regclass('maskpipe_dead_letters') IS NOT NULL",
                &[],
            ))
            .await?
            .get(0);
        Ok(exists.then_some(Self::DeadLetters { per_step }))
    }

    pub fn name(&self) -> String {
        match self {
            Self::Table { table, columns, .. } => {
                let names: Vec<&str> = columns.iter().map(|(column, _)| column.as_str()).collect();
                format!("{table} ({})", names.join(", "))
            }
            Self::DeadLetters { .. } => "maskpipe_dead_letters (sealed bodies)".into(),
        }
    }

    fn table(&self) -> &str {
        match self {
            Self::Table { table, .. } => table,
            Self::DeadLetters { .. } => "maskpipe_dead_letters",
        }
    }

    fn columns(&self) -> Vec<&str> {
        match self {
            Self::Table { columns, .. } => columns.iter().map(|(c, _)| c.as_str()).collect(),
            Self::DeadLetters { .. } => vec!["body_sealed", "detail_sealed"],
        }
    }

    /// Which of this target's values need rewriting.
    pub fn filter(&self, keyring: &Keyring, skip: &[String]) -> Filter {
        match self {
            Self::Table { .. } => Filter::masked(keyring, skip),
            Self::DeadLetters { .. } => Filter::sealed(keyring, skip),
        }
    }

    /// The walk's length for the progress bar: a table's pages, or the dead
    /// letters' values to reseal (their ids are walked, not their pages).
    pub async fn size(
        &self,
        client: &mut Client,
        deadline: Duration,
        filter: &Filter,
        keyring: &Keyring,
    ) -> Result<u64> {
        match self {
            Self::Table { table, .. } => relation_pages(client, table).await,
            Self::DeadLetters { .. } => Ok(self
                .count(client, deadline, filter, keyring)
                .await?
                .remaining),
        }
    }

    /// Values still under other keys, pseudonyms under other keys, and
    /// values under skipped keys, over the whole table: a slice of pages per
    /// statement, all in one snapshot (a row moved between slices counts once).
    pub async fn count(
        &self,
        client: &mut Client,
        deadline: Duration,
        filter: &Filter,
        keyring: &Keyring,
    ) -> Result<Counts> {
        let columns = self.columns();
        let sum = |each: &dyn Fn(&str) -> String| {
            columns
                .iter()
                .map(|column| format!("count(*) FILTER (WHERE {})", each(column)))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let open_ended = format!(
            "SELECT ({})::bigint, ({})::bigint, ({})::bigint FROM {} WHERE ctid >= $4::text::tid",
            sum(&|c| filter.sql(c, 1)),
            sum(&|c| format!(
                "starts_with({q}, 'ps1.') AND NOT starts_with({q}, $3)",
                q = quoted(c)
            )),
            sum(&|c| format!(
                "left({q}, 2) = 'mp' AND split_part({q}, '.', 2) = ANY($2::text[])",
                q = quoted(c)
            )),
            quoted(self.table()),
        );
        let sliced = format!("{open_ended} AND ctid < $5::text::tid");
        let pseudonym_prefix = keyring.current_pseudonym_prefix();
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let pages = relation_pages(&tx, self.table()).await?;
        let mut counts = Counts::default();
        let mut page = 0;
        loop {
            let from = format!("({page},0)");
            let to = format!("({},0)", page + COUNT_PAGES);
            // The last slice is open-ended: rows written since the size was read.
            let last = page + COUNT_PAGES >= pages;
            let params: [&(dyn ToSql + Sync); 5] =
                [&filter.prefix, &filter.skip, &pseudonym_prefix, &from, &to];
            let query = if last {
                tx.query_one(&open_ended, &params[..4])
            } else {
                tx.query_one(&sliced, &params)
            };
            let row = tokio::time::timeout(deadline, query)
                .await
                .map_err(|_| anyhow!("PostgreSQL did not answer a count in {deadline:?}"))??;
            counts.remaining += row.get::<_, i64>(0).max(0) as u64;
            counts.pseudonyms += row.get::<_, i64>(1).max(0) as u64;
            counts.skipped += row.get::<_, i64>(2).max(0) as u64;
            if last {
                tx.commit().await?;
                return Ok(counts);
            }
            page += COUNT_PAGES;
        }
    }

    /// Up to `limit` values of `column` masked (`mp2`) under the given key
    /// ids, read a slice of pages per statement.
    pub async fn sample(
        client: &Client,
        deadline: Duration,
        table: &str,
        column: &str,
        key_ids: &[String],
        limit: usize,
    ) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT {c} FROM {t} WHERE ctid >= $1::text::tid AND ctid < $2::text::tid \
             AND left({c}, 4) = 'mp2.' AND split_part({c}, '.', 2) = ANY($3::text[]) LIMIT $4",
            c = quoted(column),
            t = quoted(table)
        );
        let pages = relation_pages(client, table).await?;
        let mut found = Vec::new();
        let mut page = 0;
        while page < pages && found.len() < limit {
            let from = format!("({page},0)");
            let to = format!("({},0)", page + COUNT_PAGES);
            let wanted = (limit - found.len()) as i64;
            let rows = tokio::time::timeout(
                deadline,
                client.query(&sql, &[&from, &to, &key_ids, &wanted]),
            )
            .await
            .map_err(|_| anyhow!("PostgreSQL did not answer in {deadline:?}"))??;
            found.extend(rows.iter().map(|row| row.get::<_, String>(0)));
            page += COUNT_PAGES;
        }
        Ok(found)
    }

    /// The key of this target's row in `maskpipe_rekey_progress`.
    pub(super) fn progress_key(&self) -> &str {
        self.table()
    }
}

/// Why `table` cannot be walked, if it cannot: missing, partitioned, or
/// not a table. A ctid names a row only within one heap: a partitioned
/// table's rows live in its partitions, a view's elsewhere.
async fn table_problem(sink: &PgSink, table: &str) -> Result<Option<String>> {
    let kind: Option<i8> = sink
        .bounded(sink.client().query_opt(
            "SELECT relkind FROM pg_class WHERE oid = to_regclass(quote_ident($1))",
            &[&table],
        ))
        .await?
        .map(|row| row.get(0));
    Ok(match kind.map(|kind| kind as u8) {
        None => Some(format!("no table {table}")),
        Some(b'r') => None,
        Some(b'p') => Some(format!(
            "{table} is partitioned: name its partitions' columns with --column"
        )),
        Some(_) => Some(format!("{table} is not a table")),
    })
}

/// A table's columns and their types' names.
async fn column_types(sink: &PgSink, table: &str) -> Result<Vec<(String, String)>> {
    let rows = sink
        .bounded(sink.client().query(
            "SELECT a.attname::text, t.typname::text
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0
               AND NOT a.attisdropped",
            &[&table],
        ))
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// A table's size in pages (0 if it was dropped meanwhile).
pub(super) async fn relation_pages(client: &impl GenericClient, table: &str) -> Result<u64> {
    let pages: i64 = client
        .query_one(
            "SELECT COALESCE(pg_relation_size(to_regclass(quote_ident($1))), 0)
                    / current_setting('block_size')::bigint",
            &[&table],
        )
        .await?
        .get(0);
    Ok(pages.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_takes_tokens_under_other_keys_but_skipped_ones() {
        let filter = Filter {
            prefix: "mp2.k2.".into(),
            skip: vec!["old".into()],
        };
        assert!(filter.needs("mp2.k1.abc"));
        assert!(filter.needs("mp1.k2.abc"), "version 1 under the current id");
        assert!(!filter.needs("mp2.k2.abc"));
        assert!(!filter.needs("mp2.old.abc"));
        assert!(!filter.needs("ps1.k1.abc"));
        assert!(
            filter.needs("mpls-router"),
            "starts like a token: looked at, then kept"
        );
    }
}
