//! The tables a transform writes, as it declares them, checked before the
//! host trusts them.
//!
//! A declaration is hostile input like any other value a component returns:
//! [`Schema::new`] accepts only tables and columns whose names are plain SQL
//! identifiers (lower case, not reserved, not the host's own `maskpipe_`
//! tables), within counts that keep statements small, with text limits
//! PostgreSQL can store. What passes can be spliced into DDL and DML
//! unquoted, so the host generates its statements from it and nothing else.
//!
//! [`catalog`] compares a schema with the live database: every declared table
//! and column must exist with a compatible type, or the host says which DDL
//! would make it fit. The host creates a missing table from its declaration
//! when allowed, and never alters an existing one.

pub mod catalog;

use std::collections::HashSet;
use std::fmt;

/// At most this many tables per component, and columns per table: enough for
/// any feed, small enough that a hostile declaration costs nothing.
pub const MAX_TABLES: usize = 16;
pub const MAX_COLUMNS: usize = 64;
/// PostgreSQL's longest identifier (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;
/// PostgreSQL's longest `varchar(n)`.
pub const MAX_TEXT_CHARS: u32 = 10_485_760;
/// Names the host keeps for its own tables (ledger, dead letters).
const HOST_PREFIX: &str = "maskpipe_";
/// PostgreSQL's own catalogs: `pg_catalog` comes first in every search path,
/// so an unqualified `pg_description` would resolve to the system's table.
const SYSTEM_PREFIX: &str = "pg_";
/// System columns every table has: no column may take these names.
const SYSTEM_COLUMNS: &[&str] = &["cmax", "cmin", "ctid", "tableoid", "xmax", "xmin"];

/// A column's type: a fixed set, each with one PostgreSQL spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `varchar(max_chars)`: PostgreSQL counts characters.
    Text {
        max_chars: u32,
    },
    Integer,
    Bigint,
    Boolean,
    Double,
    Numeric,
    Date,
    Timestamptz,
    Uuid,
    Jsonb,
}

impl ColumnType {
    /// The type as `CREATE TABLE` spells it.
    pub fn sql(self) -> String {
        match self {
            Self::Text { max_chars } => format!("varchar({max_chars})"),
            Self::Integer => "integer".into(),
            Self::Bigint => "bigint".into(),
            Self::Boolean => "boolean".into(),
            Self::Double => "double precision".into(),
            Self::Numeric => "numeric".into(),
            Self::Date => "date".into(),
            Self::Timestamptz => "timestamp with time zone".into(),
            Self::Uuid => "uuid".into(),
            Self::Jsonb => "jsonb".into(),
        }
    }
}

/// How a PII column may be protected. The host enforces it on every row: a
/// value in clear in a column that allows only masking is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allows {
    pub masked: bool,
    pub pseudonymized: bool,
    pub clear: bool,
}

/// A column that holds a message field's PII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pii {
    /// The message field it comes from (e.g. `ip`): what masking binds a
    /// value to, and what the canary looks for in clear.
    pub field: String,
    pub allows: Allows,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnType,
    pub nullable: bool,
    pub pii: Option<Pii>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
}

/// Tables whose declaration passed [`Schema::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    tables: Vec<Table>,
}

/// Why a declaration was refused. Names are quoted only once they are known
/// to be plain identifiers; anything else is described, never echoed, since a
/// hostile component could put a message's PII in a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("the transform declares no table")]
    NoTables,
    #[error("the transform declares {0} tables (at most {MAX_TABLES})")]
    TooManyTables(usize),
    #[error("table {0} of the declaration has no columns")]
    NoColumns(String),
    #[error("table {0} declares {1} columns (at most {MAX_COLUMNS})")]
    TooManyColumns(String, usize),
    #[error(
        "{what} {position} is not a plain SQL identifier (lower-case letters, digits and _, \
         not starting with a digit, at most {MAX_IDENTIFIER_BYTES} bytes)"
    )]
    BadName {
        what: &'static str,
        position: String,
    },
    #[error("{what} {name} is an SQL reserved word")]
    Reserved { what: &'static str, name: String },
    #[error(
        "table {0} uses the host's prefix {HOST_PREFIX} (kept for its ledger and dead letters)"
    )]
    HostTable(String),
    #[error("table {0} uses PostgreSQL's prefix {SYSTEM_PREFIX} (kept for its catalogs)")]
    SystemTable(String),
    #[error("column {0}.{1} has the name of a PostgreSQL system column")]
    SystemColumn(String, String),
    #[error("table {0} is declared twice")]
    DuplicateTable(String),
    #[error("column {0}.{1} is declared twice")]
    DuplicateColumn(String, String),
    #[error("column {0}.{1} is text of length {2} (1 to {MAX_TEXT_CHARS})")]
    BadTextLimit(String, String, u32),
    #[error(
        "PII column {0}.{1} names no valid message field, allows no protection, or is not text"
    )]
    BadPii(String, String),
}

impl Schema {
    pub fn new(tables: Vec<Table>) -> Result<Self, SchemaError> {
        if tables.is_empty() {
            return Err(SchemaError::NoTables);
        }
        if tables.len() > MAX_TABLES {
            return Err(SchemaError::TooManyTables(tables.len()));
        }
        let mut table_names = HashSet::new();
        for (t, table) in tables.iter().enumerate() {
            identifier("table", &table.name, || format!("{}", t + 1))?;
            if table.name.starts_with(HOST_PREFIX) {
                return Err(SchemaError::HostTable(table.name.clone()));
            }
            if table.name.starts_with(SYSTEM_PREFIX) {
                return Err(SchemaError::SystemTable(table.name.clone()));
            }
            if !table_names.insert(table.name.as_str()) {
                return Err(SchemaError::DuplicateTable(table.name.clone()));
            }
            if table.columns.is_empty() {
                return Err(SchemaError::NoColumns(table.name.clone()));
            }
            if table.columns.len() > MAX_COLUMNS {
                return Err(SchemaError::TooManyColumns(
                    table.name.clone(),
                    table.columns.len(),
                ));
            }
            let mut column_names = HashSet::new();
            for (c, column) in table.columns.iter().enumerate() {
                identifier("column", &column.name, || {
                    format!("{} of table {}", c + 1, table.name)
                })?;
                let qualified = || (table.name.clone(), column.name.clone());
                if SYSTEM_COLUMNS.contains(&column.name.as_str()) {
                    let (t, c) = qualified();
                    return Err(SchemaError::SystemColumn(t, c));
                }
                if !column_names.insert(column.name.as_str()) {
                    let (t, c) = qualified();
                    return Err(SchemaError::DuplicateColumn(t, c));
                }
                if let ColumnType::Text { max_chars } = column.kind
                    && !(1..=MAX_TEXT_CHARS).contains(&max_chars)
                {
                    let (t, c) = qualified();
                    return Err(SchemaError::BadTextLimit(t, c, max_chars));
                }
                if let Some(pii) = &column.pii {
                    let allows = pii.allows;
                    let protected = allows.masked || allows.pseudonymized || allows.clear;
                    // Protection turns a value into text: only text holds it.
                    let text = matches!(column.kind, ColumnType::Text { .. });
                    if !protected || !text || !is_field_name(&pii.field) {
                        let (t, c) = qualified();
                        return Err(SchemaError::BadPii(t, c));
                    }
                }
            }
        }
        Ok(Self { tables })
    }

    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|table| table.name == name)
    }
}

impl Table {
    /// `CREATE TABLE IF NOT EXISTS`, columns in declared order. Names are
    /// plain identifiers ([`Schema::new`]), so they need no quoting.
    pub fn create_sql(&self) -> String {
        let columns: Vec<String> = self.columns.iter().map(Column::definition).collect();
        // One line: it is quoted in one-line errors as the fix to run.
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.name,
            columns.join(", ")
        )
    }
}

impl Column {
    /// `name type [NOT NULL]`, as in `CREATE TABLE` and `ADD COLUMN`.
    pub fn definition(&self) -> String {
        let not_null = if self.nullable { "" } else { " NOT NULL" };
        format!("{} {}{not_null}", self.name, self.kind.sql())
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.create_sql())
    }
}

/// The take-home's `user_logins`, as the reference transform declares it:
/// for tests and the benchmark's native baseline, which run no component.
pub fn user_logins() -> Table {
    let text = |name: &str, max_chars| Column {
        name: name.into(),
        kind: ColumnType::Text { max_chars },
        nullable: true,
        pii: None,
    };
    let pii = |name: &str, field: &str| Column {
        pii: Some(Pii {
            field: field.into(),
            allows: Allows {
                masked: true,
                pseudonymized: true,
                clear: true,
            },
        }),
        ..text(name, 256)
    };
    let typed = |name: &str, kind| Column {
        name: name.into(),
        kind,
        nullable: true,
        pii: None,
    };
    Table {
        name: "user_logins".into(),
        columns: vec![
            text("user_id", 128),
            text("device_type", 32),
            pii("masked_ip", "ip"),
            pii("masked_device_id", "device_id"),
            text("locale", 32),
            typed("app_version", ColumnType::Integer),
            typed("create_date", ColumnType::Date),
        ],
    }
}

/// `[a-z_][a-z0-9_]*`, at most 63 bytes: a name that means the same quoted
/// or not (reserved words aside).
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTIFIER_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// A plain SQL identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes, not
/// reserved. Such a name means the same quoted or not, so the host can write
/// it into statements as it is. `position` says which one it was without
/// echoing a name that failed.
fn identifier(
    what: &'static str,
    name: &str,
    position: impl FnOnce() -> String,
) -> Result<(), SchemaError> {
    if !is_plain_name(name) {
        return Err(SchemaError::BadName {
            what,
            position: position(),
        });
    }
    if RESERVED.binary_search(&name).is_ok() {
        return Err(SchemaError::Reserved {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A message field a PII column names: a JSON key, printable and short (it is
/// logged when validation refuses a component).
fn is_field_name(field: &str) -> bool {
    !field.is_empty()
        && field.len() <= MAX_IDENTIFIER_BYTES
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// PostgreSQL's reserved key words (those that cannot be a column or table
/// name unquoted), sorted for binary search.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str, max_chars: u32) -> Column {
        Column {
            name: name.into(),
            kind: ColumnType::Text { max_chars },
            nullable: true,
            pii: None,
        }
    }

    fn table(name: &str, columns: Vec<Column>) -> Table {
        Table {
            name: name.into(),
            columns,
        }
    }

    #[test]
    fn the_reserved_words_are_sorted() {
        assert!(RESERVED.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn a_declaration_becomes_ddl_with_its_limits() {
        let mut day = text("day", 1);
        day.kind = ColumnType::Date;
        day.nullable = false;
        let schema = Schema::new(vec![table(
            "login_devices",
            vec![text("device_type", 32), day],
        )])
        .unwrap();
        assert_eq!(
            schema.tables()[0].create_sql(),
            "CREATE TABLE IF NOT EXISTS login_devices (device_type varchar(32), day date NOT NULL)"
        );
    }

    #[test]
    fn hostile_declarations_are_refused_without_echoing_bad_names() {
        let pii_name = "x\"; DROP TABLE user_logins; -- 199.172.111.135";
        let cases = [
            (vec![], SchemaError::NoTables),
            (
                vec![table(pii_name, vec![text("a", 1)])],
                SchemaError::BadName {
                    what: "table",
                    position: "1".into(),
                },
            ),
            (
                vec![table("t", vec![text("a", 1), text("Upper", 1)])],
                SchemaError::BadName {
                    what: "column",
                    position: "2 of table t".into(),
                },
            ),
            (
                vec![table("select", vec![text("a", 1)])],
                SchemaError::Reserved {
                    what: "table",
                    name: "select".into(),
                },
            ),
            (
                vec![table("maskpipe_processed", vec![text("a", 1)])],
                SchemaError::HostTable("maskpipe_processed".into()),
            ),
            (
                vec![table("pg_description", vec![text("description", 1)])],
                SchemaError::SystemTable("pg_description".into()),
            ),
            (
                vec![table("t", vec![text("ctid", 1)])],
                SchemaError::SystemColumn("t".into(), "ctid".into()),
            ),
            (
                vec![
                    table("t", vec![text("a", 1)]),
                    table("t", vec![text("a", 1)]),
                ],
                SchemaError::DuplicateTable("t".into()),
            ),
            (
                vec![table("t", vec![text("a", 1), text("a", 2)])],
                SchemaError::DuplicateColumn("t".into(), "a".into()),
            ),
            (
                vec![table("t", vec![text("a", 0)])],
                SchemaError::BadTextLimit("t".into(), "a".into(), 0),
            ),
            (vec![table("t", vec![])], SchemaError::NoColumns("t".into())),
            (
                vec![table("t", vec![text("a", 1); MAX_COLUMNS + 1])],
                SchemaError::TooManyColumns("t".into(), MAX_COLUMNS + 1),
            ),
            (
                vec![table("t", vec![text("a", 1)]); MAX_TABLES + 1],
                SchemaError::TooManyTables(MAX_TABLES + 1),
            ),
            (
                vec![table(&"a".repeat(64), vec![text("a", 1)])],
                SchemaError::BadName {
                    what: "table",
                    position: "1".into(),
                },
            ),
            (
                vec![table("9lives", vec![text("a", 1)])],
                SchemaError::BadName {
                    what: "table",
                    position: "1".into(),
                },
            ),
        ];
        for (tables, expected) in cases {
            let error = Schema::new(tables).unwrap_err();
            assert!(!error.to_string().contains("199.172"), "{error}");
            assert_eq!(error, expected);
        }
    }

    #[test]
    fn a_pii_column_names_a_field_and_allows_some_protection() {
        let mut ip = text("masked_ip", 256);
        ip.pii = Some(Pii {
            field: "ip".into(),
            allows: Allows::default(),
        });
        assert_eq!(
            Schema::new(vec![table("t", vec![ip.clone()])]),
            Err(SchemaError::BadPii("t".into(), "masked_ip".into()))
        );
        ip.pii = Some(Pii {
            field: "1.2.3.4 secret\n".into(),
            allows: Allows {
                masked: true,
                ..Allows::default()
            },
        });
        assert!(Schema::new(vec![table("t", vec![ip.clone()])]).is_err());
        ip.pii = Some(Pii {
            field: "ip".into(),
            allows: Allows {
                masked: true,
                ..Allows::default()
            },
        });
        assert!(Schema::new(vec![table("t", vec![ip.clone()])]).is_ok());
        // Protection makes text: an integer column cannot hold it.
        ip.kind = ColumnType::Integer;
        assert_eq!(
            Schema::new(vec![table("t", vec![ip])]),
            Err(SchemaError::BadPii("t".into(), "masked_ip".into()))
        );
    }
}
