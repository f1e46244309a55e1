//! What a rekey rewrites ([`Target`]): a table's masked columns, checked
//! against the catalog, or the dead letters; which of their values need
//! rewriting ([`Filter`]); and the counts over a whole table that settle
//! whether a rekey is done. Names reach SQL only after
//! [`super::MaskedColumn`] accepted them as plain identifiers, and are
//! quoted anyway.
//!
//! Counts read a table a slice of pages per statement, so that a table of
//! any size is counted within the statement timeout.

use anyhow::{Result, bail};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

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

impl Target {
    /// The given columns grouped by table, each table checked against the
    /// catalog; a missing table or column is an `Err` naming it.
    pub async fn resolve(
        sink: &PgSink,
        columns: &[MaskedColumn],
        pages_per_step: u32,
    ) -> Result<Vec<Result<Self, String>>> {
        let mut tables: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for column in columns {
            let pair = (column.column.clone(), column.field.clone());
            match tables.iter_mut().find(|(table, _)| *table == column.table) {
                Some((_, pairs)) => match pairs.iter().find(|(name, _)| *name == column.column) {
                    Some((_, field)) if *field != column.field => bail!(
                        "{}.{} is given twice, as field {field:?} and as {:?}: a column's values are masked as one field",
                        column.table,
                        column.column,
                        column.field
                    ),
                    Some(_) => {}
                    None => pairs.push(pair),
                },
                None => tables.push((column.table.clone(), vec![pair])),
            }
        }
        let mut targets = Vec::new();
        for (table, columns) in tables {
            targets.push(Self::check_table(sink, table, columns, pages_per_step).await?);
        }
        Ok(targets)
    }

    async fn check_table(
        sink: &PgSink,
        table: String,
        columns: Vec<(String, String)>,
        pages_per_step: u32,
    ) -> Result<Result<Self, String>> {
        let kind: Option<i8> = sink
            .bounded(sink.client().query_opt(
                "SELECT relkind FROM pg_class WHERE oid = to_regclass(quote_ident($1))",
                &[&table],
            ))
            .await?
            .map(|row| row.get(0));
        match kind.map(|kind| kind as u8) {
            None => return Ok(Err(format!("no table {table}"))),
            Some(b'r') => {}
            // A ctid names a row only within one heap: a partitioned table's
            // rows live in its partitions, a view's elsewhere.
            Some(b'p') => {
                return Ok(Err(format!(
                    "{table} is partitioned: name its partitions' columns with --column"
                )));
            }
            Some(_) => return Ok(Err(format!("{table} is not a table"))),
        }
        let names: Vec<&str> = columns.iter().map(|(column, _)| column.as_str()).collect();
        let found = sink
            .bounded(sink.client().query(
                "SELECT a.attname::text, t.typname::text
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                 WHERE a.attrelid = to_regclass(quote_ident($1))
                   AND a.attname = ANY($2) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&table, &names],
            ))
            .await?;
        for name in &names {
            match found.iter().find(|row| row.get::<_, &str>(0) == *name) {
                None => return Ok(Err(format!("no column {table}.{name}"))),
                Some(row) if !matches!(row.get::<_, &str>(1), "text" | "varchar") => {
                    return Ok(Err(format!(
                        "column {table}.{name} is not text (it is {})",
                        row.get::<_, &str>(1)
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(Ok(Self::Table {
            table,
            columns,
            pages_per_step,
        }))
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
    /// letters to reseal (their ids are walked, not their pages).
    pub async fn size(&self, sink: &PgSink, filter: &Filter) -> Result<u64> {
        match self {
            Self::Table { table, .. } => relation_pages(sink.client(), table).await,
            Self::DeadLetters { .. } => {
                let sql = format!(
                    "SELECT count(*) FROM maskpipe_dead_letters WHERE {} OR {}",
                    filter.sql("body_sealed", 1),
                    filter.sql("detail_sealed", 1)
                );
                let count: i64 = sink
                    .bounded(
                        sink.client()
                            .query_one(&sql, &[&filter.prefix, &filter.skip]),
                    )
                    .await?
                    .get(0);
                Ok(count.max(0) as u64)
            }
        }
    }

    /// Values still under other keys, pseudonyms under other keys, and
    /// values under skipped keys, over the whole table.
    pub async fn count(&self, sink: &PgSink, filter: &Filter, keyring: &Keyring) -> Result<Counts> {
        let columns = self.columns();
        let sum = |each: &dyn Fn(&str) -> String| {
            columns
                .iter()
                .map(|column| format!("count(*) FILTER (WHERE {})", each(column)))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let sql = format!(
            "SELECT ({})::bigint, ({})::bigint, ({})::bigint FROM {} \
             WHERE ctid >= $4::text::tid AND ($5::text IS NULL OR ctid < $5::text::tid)",
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
        let pseudonym_prefix = keyring.current_pseudonym_prefix();
        let pages = relation_pages(sink.client(), self.table()).await?;
        let mut counts = Counts::default();
        let mut page = 0;
        loop {
            let from = format!("({page},0)");
            // The last slice is open-ended: rows written since the size was read.
            let to = (page + COUNT_PAGES < pages).then(|| format!("({},0)", page + COUNT_PAGES));
            let params: [&(dyn ToSql + Sync); 5] =
                [&filter.prefix, &filter.skip, &pseudonym_prefix, &from, &to];
            let row = sink.bounded(sink.client().query_one(&sql, &params)).await?;
            counts.remaining += row.get::<_, i64>(0).max(0) as u64;
            counts.pseudonyms += row.get::<_, i64>(1).max(0) as u64;
            counts.skipped += row.get::<_, i64>(2).max(0) as u64;
            if to.is_none() {
                return Ok(counts);
            }
            page += COUNT_PAGES;
        }
    }

    /// The key of this target's row in `maskpipe_rekey_progress`.
    pub(super) fn progress_key(&self) -> &str {
        self.table()
    }
}

/// A table's size in pages (0 if it was dropped meanwhile).
pub(super) async fn relation_pages(client: &Client, table: &str) -> Result<u64> {
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
