//! What a rekey rewrites ([`Target`]): a table's masked columns, checked
//! against the catalog, or the dead letters; and the SQL that finds their
//! values under another key than the current one. Names reach SQL only
//! after [`super::MaskedColumn`] accepted them as plain identifiers, and are
//! quoted anyway.

use anyhow::Result;
use tokio_postgres::Client;

use super::MaskedColumn;
use crate::masking::Keyring;
use crate::sink::PgSink;

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

/// A value of `column` that needs rewriting: it starts like a maskpipe token
/// (`mp…`) but not like one under the current key (`$n`).
pub(super) fn needs(column: &str, prefix_param: usize) -> String {
    format!(
        "(left({c}, 2) = 'mp' AND NOT starts_with({c}, ${prefix_param}))",
        c = quoted(column)
    )
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
                Some((_, pairs)) if !pairs.contains(&pair) => pairs.push(pair),
                Some(_) => {}
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
        let exists: bool = sink
            .bounded(
                sink.client()
                    .query_one("SELECT to_regclass(quote_ident($1)) IS NOT NULL", &[&table]),
            )
            .await?
            .get(0);
        if !exists {
            return Ok(Err(format!("no table {table}")));
        }
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

    /// The walk's length for the progress bar: a table's pages, or the dead
    /// letters that need resealing.
    pub async fn size(&self, sink: &PgSink, keyring: &Keyring) -> Result<u64> {
        match self {
            Self::Table { table, .. } => relation_pages(sink.client(), table).await,
            Self::DeadLetters { .. } => {
                let sql = format!(
                    "SELECT count(*) FROM maskpipe_dead_letters WHERE {} OR {}",
                    needs("body_sealed", 1),
                    needs("detail_sealed", 1)
                );
                let count: i64 = sink
                    .bounded(
                        sink.client()
                            .query_one(&sql, &[&keyring.current_seal_prefix()]),
                    )
                    .await?
                    .get(0);
                Ok(count.max(0) as u64)
            }
        }
    }

    /// Values under another key than the current one, over the whole target.
    pub async fn remaining(&self, sink: &PgSink, keyring: &Keyring) -> Result<u64> {
        let (sql, prefix) = match self {
            Self::Table { table, columns, .. } => (
                count_sql(table, columns.iter().map(|(column, _)| column.as_str())),
                keyring.current_mask_prefix(),
            ),
            Self::DeadLetters { .. } => (
                count_sql("maskpipe_dead_letters", ["body_sealed", "detail_sealed"]),
                keyring.current_seal_prefix(),
            ),
        };
        let count: i64 = sink
            .bounded(sink.client().query_one(&sql, &[&prefix]))
            .await?
            .get(0);
        Ok(count.max(0) as u64)
    }

    /// Pseudonyms made under other keys: counted, never rewritten.
    pub async fn old_pseudonyms(&self, sink: &PgSink, keyring: &Keyring) -> Result<u64> {
        let Self::Table { table, columns, .. } = self else {
            return Ok(0);
        };
        let each: Vec<String> = columns
            .iter()
            .map(|(column, _)| {
                format!(
                    "count(*) FILTER (WHERE starts_with({c}, 'ps1.') AND NOT starts_with({c}, $1))",
                    c = quoted(column)
                )
            })
            .collect();
        let sql = format!(
            "SELECT ({})::bigint FROM {}",
            each.join(" + "),
            quoted(table)
        );
        let prefix = keyring.current_pseudonym_prefix();
        let count: i64 = sink
            .bounded(sink.client().query_one(&sql, &[&prefix]))
            .await?
            .get(0);
        Ok(count.max(0) as u64)
    }

    /// The key of this target's row in `maskpipe_rekey_progress`.
    pub(super) fn progress_key(&self) -> String {
        match self {
            Self::Table { table, .. } => table.clone(),
            Self::DeadLetters { .. } => "maskpipe_dead_letters".into(),
        }
    }
}

/// `SELECT count of values needing a rewrite` over `columns` of `table`.
fn count_sql<'a>(table: &str, columns: impl IntoIterator<Item = &'a str>) -> String {
    let each: Vec<String> = columns
        .into_iter()
        .map(|column| format!("count(*) FILTER (WHERE {})", needs(column, 1)))
        .collect();
    format!(
        "SELECT ({})::bigint FROM {}",
        each.join(" + "),
        quoted(table)
    )
}

pub(super) async fn relation_pages(client: &Client, table: &str) -> Result<u64> {
    let pages: i64 = client
        .query_one(
            "SELECT pg_relation_size(to_regclass(quote_ident($1)))
                    / current_setting('block_size')::bigint",
            &[&table],
        )
        .await?
        .get(0);
    Ok(pages.max(0) as u64)
}
