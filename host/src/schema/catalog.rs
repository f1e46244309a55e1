//! Declared tables against the live database, read from PostgreSQL's
//! catalog.
//!
//! Every declared column must exist in its table with a type that takes the
//! declared values ([`fits`]), and the table must take a row of only the
//! declared columns (no other column that is `NOT NULL` without a default,
//! no generated or always-identity column among the declared ones). Each
//! [`Problem`] carries the DDL that would fix it: the host never alters an
//! existing table itself, because only the operator knows whether a wider
//! column or a dropped constraint is right for the data already there. A
//! missing table is created from its declaration when the operator allows
//! it (`--create-tables`).

use std::fmt;

use tokio_postgres::{Client, GenericClient};

use super::{Column, ColumnType, Schema, Table};

/// Held while tables are checked and created: two hosts starting at once
/// must not both create a table (`IF NOT EXISTS` is not race-free). The
/// sink's own schema creation holds the same lock.
pub const SCHEMA_LOCK: i64 = 0x6d61_736b_7069_7065; // "maskpipe"

/// Something a declared table lacks in the live database, and the DDL that
/// would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub table: String,
    pub column: Option<String>,
    pub what: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "column `{}.{column}` {}", self.table, self.what)?,
            None => write!(f, "table `{}` {}", self.table, self.what)?,
        }
        write!(f, ": `{}`", self.fix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading or creating the transform's tables failed: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// One line: every problem, each with its fix.
    #[error("the database does not fit the transform's tables: {}", list(.0))]
    Mismatch(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    let each: Vec<String> = problems.iter().map(Problem::to_string).collect();
    each.join("; ")
}

/// A column as the catalog describes it.
#[derive(Debug)]
struct LiveColumn {
    name: String,
    /// The name as DDL must spell it (`quote_ident`).
    quoted: String,
    /// `pg_type.typname` of a built-in type (`varchar`, `int4`, …); empty
    /// for a type outside `pg_catalog`, which no declared type matches.
    type_name: String,
    /// `format_type()`: how the operator reads it (`character varying(32)`).
    shown: String,
    /// The type modifier: `varchar(n)`'s n + 4, `numeric(p, s)`'s
    /// `(p << 16 | s) + 4`; -1 for none.
    modifier: i32,
    not_null: bool,
    /// A default or an identity: an INSERT that leaves it out still works.
    has_default: bool,
    /// `GENERATED ALWAYS AS (…) STORED`: no value can be written to it.
    generated: bool,
    /// An identity column, `ALWAYS` or `BY DEFAULT` (always NOT NULL).
    identity: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: refuses written values.
    identity_always: bool,
}

impl LiveColumn {
    /// `varchar(n)`'s n; `None` for no limit or another type.
    fn max_chars(&self) -> Option<u32> {
        (self.type_name == "varchar" && self.modifier >= 4).then(|| (self.modifier - 4) as u32)
    }

    /// Digits before the decimal point a `numeric` takes; `None` for an
    /// unconstrained one.
    fn integer_digits(&self) -> Option<i32> {
        (self.modifier >= 4).then(|| {
            let packed = self.modifier - 4;
            ((packed >> 16) & 0xffff) - (packed & 0xffff)
        })
    }
}

/// The problems of `table` in the live database (empty: it fits). A missing
/// table is one problem, fixed by its `CREATE TABLE`.
pub async fn check(
    client: &impl GenericClient,
    table: &Table,
) -> Result<Vec<Problem>, CatalogError> {
    let problem = |column: Option<&str>, what: String, fix: String| Problem {
        table: table.name.clone(),
        column: column.map(str::to_owned),
        what,
        fix,
    };
    let Some(kind) = relation_kind(client, &table.name).await? else {
        return Ok(vec![problem(
            None,
            "does not exist".into(),
            table.create_sql(),
        )]);
    };
    if kind != "r" && kind != "p" {
        let what = match kind.as_str() {
            "v" => "VIEW",
            "m" => "MATERIALIZED VIEW",
            "S" => "SEQUENCE",
            "i" | "I" => "INDEX",
            "f" => "FOREIGN TABLE",
            _ => "TABLE",
        };
        return Ok(vec![problem(
            None,
            format!("is a {}, not a table", what.to_lowercase()),
            format!("ALTER {what} {0} RENAME TO {0}_old", table.name),
        )]);
    }
    let live: Vec<LiveColumn> = client
        .query(
            "SELECT a.attname::text, quote_ident(a.attname), \
                    CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace \
                         THEN t.typname::text ELSE '' END, \
                    format_type(a.atttypid, a.atttypmod), a.atttypmod, a.attnotnull, \
                    a.atthasdef OR a.attidentity <> '', a.attgenerated <> '', \
                    a.attidentity <> '', a.attidentity = 'a' \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table.name],
        )
        .await?
        .iter()
        .map(|row| LiveColumn {
            name: row.get(0),
            quoted: row.get(1),
            type_name: row.get(2),
            shown: row.get(3),
            modifier: row.get(4),
            not_null: row.get(5),
            has_default: row.get(6),
            generated: row.get(7),
            identity: row.get(8),
            identity_always: row.get(9),
        })
        .collect();

    let mut problems = Vec::new();
    let alter = |column: &str, change: &str| {
        format!("ALTER TABLE {} ALTER COLUMN {column} {change}", table.name)
    };
    // An identity column keeps NOT NULL until its identity is dropped.
    let drop_not_null = |column: &str, identity: bool| {
        if identity {
            alter(
                column,
                &format!("DROP IDENTITY, ALTER COLUMN {column} DROP NOT NULL"),
            )
        } else {
            alter(column, "DROP NOT NULL")
        }
    };
    for declared in &table.columns {
        let name = declared.name.as_str();
        let Some(found) = live.iter().find(|column| column.name == name) else {
            problems.push(problem(
                Some(name),
                "is missing".into(),
                format!(
                    "ALTER TABLE {} ADD COLUMN {}",
                    table.name,
                    declared.definition()
                ),
            ));
            continue;
        };
        if found.generated || found.identity_always {
            let fix = if found.generated {
                alter(name, "DROP EXPRESSION")
            } else if declared.nullable {
                drop_not_null(name, true)
            } else {
                alter(name, "DROP IDENTITY")
            };
            problems.push(problem(
                Some(name),
                "is generated by the database, so no value can be written to it".into(),
                fix,
            ));
            continue;
        }
        if !fits(declared, found) {
            let ty = declared.kind.sql();
            // Within a family PostgreSQL converts by itself; across, it
            // needs to be told how (and refuses values that do not convert).
            let using = if same_family(declared.kind, &found.type_name) {
                String::new()
            } else {
                format!(" USING {name}::{ty}")
            };
            problems.push(problem(
                Some(name),
                format!("is {}, which cannot take the declared {ty}", found.shown),
                alter(name, &format!("TYPE {ty}{using}")),
            ));
        }
        // A default does not help: the host writes an explicit NULL.
        if declared.nullable && found.not_null {
            problems.push(problem(
                Some(name),
                "is NOT NULL, but the transform may leave it empty".into(),
                drop_not_null(name, found.identity),
            ));
        }
    }
    for other in &live {
        let declared = table.columns.iter().any(|column| column.name == other.name);
        if !declared && other.not_null && !other.has_default && !other.generated {
            problems.push(problem(
                Some(&other.quoted),
                "is NOT NULL without a default, and the transform writes no value to it".into(),
                alter(&other.quoted, "DROP NOT NULL"),
            ));
        }
    }
    Ok(problems)
}

/// `pg_class.relkind` of the relation a name resolves to, if any. The name
/// is a plain identifier (`Schema::new`), resolved through the search path
/// like the host's `INSERT`s.
async fn relation_kind(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<String>, CatalogError> {
    let row = client
        .query_opt(
            "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&name],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Whether a live column takes every value of the declared type: the same
/// type, or a wider one (a longer or unlimited text, a bigger integer).
fn fits(declared: &Column, live: &LiveColumn) -> bool {
    let ty = live.type_name.as_str();
    // A constrained numeric must hold every value of the integer type.
    let numeric_holds =
        |digits| ty == "numeric" && live.integer_digits().is_none_or(|d| d >= digits);
    match declared.kind {
        ColumnType::Text { max_chars } => match ty {
            "varchar" => live.max_chars().is_none_or(|limit| limit >= max_chars),
            "text" => true,
            _ => false,
        },
        ColumnType::Integer => matches!(ty, "int4" | "int8") || numeric_holds(10),
        ColumnType::Bigint => ty == "int8" || numeric_holds(19),
        ColumnType::Boolean => ty == "bool",
        ColumnType::Double => ty == "float8",
        ColumnType::Numeric => ty == "numeric" && live.integer_digits().is_none(),
        ColumnType::Date => ty == "date",
        ColumnType::Timestamptz => ty == "timestamptz",
        ColumnType::Uuid => ty == "uuid",
        ColumnType::Jsonb => ty == "jsonb",
    }
}

/// Whether PostgreSQL converts a live column of `live_type` to `declared`
/// without a `USING` clause.
fn same_family(declared: ColumnType, live_type: &str) -> bool {
    match declared {
        ColumnType::Text { .. } => matches!(live_type, "varchar" | "text" | "bpchar"),
        ColumnType::Integer | ColumnType::Bigint | ColumnType::Numeric | ColumnType::Double => {
            matches!(
                live_type,
                "int2" | "int4" | "int8" | "numeric" | "float4" | "float8"
            )
        }
        _ => false,
    }
}

/// Checks every declared table, creating the missing ones first when
/// `create` allows, under [`SCHEMA_LOCK`]. Existing tables are never
/// altered. Fails with every problem of every table, each with its fix. It
/// has no deadline of its own (the lock may be held by another host's
/// schema creation): the caller bounds it, as the sink bounds its own.
pub async fn prepare(
    client: &mut Client,
    schema: &Schema,
    create: bool,
) -> Result<(), CatalogError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    let mut problems = Vec::new();
    for table in schema.tables() {
        if create && relation_kind(&tx, &table.name).await?.is_none() {
            tx.batch_execute(&table.create_sql()).await?;
        }
        problems.extend(check(&tx, table).await?);
    }
    if !problems.is_empty() {
        // Tables created for a schema that does not fit as a whole are
        // rolled back with the transaction: nothing half-made is left.
        return Err(CatalogError::Mismatch(problems));
    }
    tx.commit().await?;
    Ok(())
}
