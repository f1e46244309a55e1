//! One batch as one statement: the SQL, generated from the component's
//! declared tables, and the batch as its parameters.
//!
//! Data-modifying CTEs claim the batch's message ids in the ledger, then
//! insert, for the ids just claimed, each declared table's rows and the
//! dead letters. A single statement is its own transaction, so a message's
//! rows (in every table), its ledger entry and its dead letter commit
//! together or not at all, in one round trip whatever the batch's size.
//! Every table's rows travel as column arrays (`UNNEST`), each row tagged
//! with its message's id, and join the ids just claimed.
//!
//! A batch may hold one message id twice (SQS redelivers while the first
//! copy is still in the batch): the first occurrence wins, deterministically
//! (`WITH ORDINALITY` + `ORDER BY` for the ledger and dead letters; only the
//! first occurrence's rows are sent), and the second counts as a duplicate.
//!
//! Table and column names come from a [`Schema`], whose names are plain
//! identifiers ([`Schema::new`]): they are written into the SQL as they are.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::types::ToSql;

use super::Processed;
use crate::masking::Keyring;
use crate::record::{Outcome, Value};
use crate::schema::{ColumnType, Schema};

/// `$1..$7`: the messages; `$8`: the component digest; then, per table,
/// the rows' message ids and one array per column.
const MESSAGE_PARAMS: usize = 8;

/// The statement that writes a batch for components declaring `schema`.
pub(super) fn sql(schema: &Schema) -> String {
    let mut sql = String::from(
        "WITH input AS (
    SELECT DISTINCT ON (message_id) *
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::timestamptz[], $7::text[]) WITH ORDINALITY
         AS i(message_id, outcome, reason, detail, body_sealed, sent_at, detail_sealed, position)
    ORDER BY message_id, position
),
claimed AS (
    INSERT INTO maskpipe_processed (message_id, outcome, component_digest)
    SELECT message_id, outcome, $8 FROM input
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id, outcome
),
",
    );
    let mut param = MESSAGE_PARAMS;
    let mut counts = Vec::new();
    for (t, table) in schema.tables().iter().enumerate() {
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let mut arrays = Vec::new();
        let mut selects = Vec::new();
        param += 1;
        arrays.push(format!("${param}::text[]"));
        for (c, column) in table.columns.iter().enumerate() {
            param += 1;
            let (array, cast) = match column.kind {
                ColumnType::Text { .. } => ("varchar[]", ""),
                ColumnType::Integer => ("int4[]", ""),
                ColumnType::Bigint => ("int8[]", ""),
                ColumnType::Boolean => ("bool[]", ""),
                ColumnType::Double => ("float8[]", ""),
                // Sent as checked text, cast by the server.
                ColumnType::Numeric => ("text[]", "::numeric"),
                ColumnType::Date => ("date[]", ""),
                ColumnType::Timestamptz => ("timestamptz[]", ""),
                ColumnType::Uuid => ("text[]", "::uuid"),
                ColumnType::Jsonb => ("text[]", "::jsonb"),
            };
            arrays.push(format!("${param}::{array}"));
            selects.push(format!("r.c{c}{cast}"));
        }
        let aliases: Vec<String> = (0..table.columns.len()).map(|c| format!("c{c}")).collect();
        let _ = write!(
            sql,
            "rows_{t} AS (
    INSERT INTO {table} ({columns})
    SELECT {selects}
    FROM UNNEST({arrays}) AS r(message_id, {aliases})
    JOIN claimed USING (message_id)
    RETURNING 1
),
",
            table = table.name,
            columns = names.join(", "),
            selects = selects.join(", "),
            arrays = arrays.join(", "),
            aliases = aliases.join(", "),
        );
        counts.push(format!("(SELECT count(*) FROM rows_{t})"));
    }
    sql.push_str(
        "new_dead_letters AS (
    INSERT INTO maskpipe_dead_letters
        (message_id, reason, detail, body_sealed, detail_sealed, sent_at, component_digest)
    SELECT i.message_id, i.reason, i.detail, i.body_sealed, i.detail_sealed, i.sent_at, $8
    FROM input i JOIN claimed USING (message_id)
    WHERE i.outcome = 'dead_letter'
    RETURNING reason
)
SELECT (SELECT count(*) FROM claimed),
       ",
    );
    sql.push_str(&counts.join(" + "));
    sql.push_str(
        ",
       (SELECT coalesce(array_agg(reason), '{}') FROM new_dead_letters),
       (SELECT count(*) FROM claimed WHERE outcome = 'skipped')",
    );
    sql
}

/// One column of one table's rows, typed as its array parameter.
enum ColumnArray<'a> {
    Text(Vec<Option<&'a str>>),
    Integer(Vec<Option<i32>>),
    Bigint(Vec<Option<i64>>),
    Boolean(Vec<Option<bool>>),
    Double(Vec<Option<f64>>),
    Date(Vec<Option<NaiveDate>>),
    Timestamptz(Vec<Option<DateTime<Utc>>>),
}

impl<'a> ColumnArray<'a> {
    fn for_type(kind: ColumnType) -> Self {
        match kind {
            ColumnType::Text { .. }
            | ColumnType::Numeric
            | ColumnType::Uuid
            | ColumnType::Jsonb => Self::Text(Vec::new()),
            ColumnType::Integer => Self::Integer(Vec::new()),
            ColumnType::Bigint => Self::Bigint(Vec::new()),
            ColumnType::Boolean => Self::Boolean(Vec::new()),
            ColumnType::Double => Self::Double(Vec::new()),
            ColumnType::Date => Self::Date(Vec::new()),
            ColumnType::Timestamptz => Self::Timestamptz(Vec::new()),
        }
    }

    /// Appends `value`; false if it is not of this column's type, which
    /// the runtime's checks make unreachable from a component.
    fn push(&mut self, value: Option<&'a Value>) -> bool {
        match (self, value) {
            (Self::Text(v), None) => v.push(None),
            (Self::Integer(v), None) => v.push(None),
            (Self::Bigint(v), None) => v.push(None),
            (Self::Boolean(v), None) => v.push(None),
            (Self::Double(v), None) => v.push(None),
            (Self::Date(v), None) => v.push(None),
            (Self::Timestamptz(v), None) => v.push(None),
            (
                Self::Text(v),
                Some(Value::Text(s) | Value::Numeric(s) | Value::Uuid(s) | Value::Jsonb(s)),
            ) => v.push(Some(s)),
            (Self::Integer(v), Some(Value::Integer(x))) => v.push(Some(*x)),
            (Self::Bigint(v), Some(Value::Bigint(x))) => v.push(Some(*x)),
            (Self::Boolean(v), Some(Value::Boolean(x))) => v.push(Some(*x)),
            (Self::Double(v), Some(Value::Double(x))) => v.push(Some(*x)),
            (Self::Date(v), Some(Value::Date(x))) => v.push(Some(*x)),
            (Self::Timestamptz(v), Some(Value::Timestamptz(x))) => v.push(Some(*x)),
            _ => return false,
        }
        true
    }

    fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Self::Text(v) => v,
            Self::Integer(v) => v,
            Self::Bigint(v) => v,
            Self::Boolean(v) => v,
            Self::Double(v) => v,
            Self::Date(v) => v,
            Self::Timestamptz(v) => v,
        }
    }
}

/// One table's rows: each one's message id and its columns.
struct TableArrays<'a> {
    message_id: Vec<&'a str>,
    columns: Vec<ColumnArray<'a>>,
}

/// A batch as the statement's parameters.
pub(super) struct BatchParams<'a> {
    message_id: Vec<&'a str>,
    outcome: Vec<&'static str>,
    reason: Vec<Option<&'a str>>,
    detail: Vec<Option<&'a str>>,
    body_sealed: Vec<Option<String>>,
    sent_at: Vec<Option<DateTime<Utc>>>,
    detail_sealed: Vec<Option<String>>,
    digest: &'a str,
    tables: Vec<TableArrays<'a>>,
}

impl<'a> BatchParams<'a> {
    pub(super) fn new(
        batch: &[Processed<'a>],
        schema: &Schema,
        digest: &'a str,
        keyring: &Keyring,
    ) -> Result<Self> {
        let n = batch.len();
        let mut params = Self {
            message_id: Vec::with_capacity(n),
            outcome: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
            detail: Vec::with_capacity(n),
            body_sealed: Vec::with_capacity(n),
            sent_at: Vec::with_capacity(n),
            detail_sealed: Vec::with_capacity(n),
            digest,
            tables: schema
                .tables()
                .iter()
                .map(|table| TableArrays {
                    message_id: Vec::new(),
                    columns: table
                        .columns
                        .iter()
                        .map(|column| ColumnArray::for_type(column.kind))
                        .collect(),
                })
                .collect(),
        };
        for (index, processed) in batch.iter().enumerate() {
            let message = processed.message;
            params.message_id.push(&message.id);
            params.outcome.push(processed.outcome.ledger_outcome());
            // A second copy of a message id gets the first one's ledger
            // entry (`DISTINCT ON`), so its rows must not be sent: they
            // would join the first copy's claim. A batch is at most a few
            // dozen messages, so a scan is cheaper than a set.
            let repeated = batch[..index]
                .iter()
                .any(|earlier| earlier.message.id == message.id);
            match processed.outcome {
                Outcome::Rows(rows) => {
                    params.reason.push(None);
                    params.detail.push(None);
                    params.body_sealed.push(None);
                    params.detail_sealed.push(None);
                    params.sent_at.push(None);
                    let sent: &[_] = if repeated { &[] } else { rows };
                    for row in sent {
                        let Some(table) = params.tables.get_mut(row.table) else {
                            bail!("a row names table #{} outside its schema", row.table);
                        };
                        if row.values.len() != table.columns.len() {
                            bail!(
                                "a row has {} values for {} columns",
                                row.values.len(),
                                table.columns.len()
                            );
                        }
                        table.message_id.push(&message.id);
                        for (column, value) in table.columns.iter_mut().zip(&row.values) {
                            if !column.push(value.as_ref()) {
                                bail!("a row's value is not of its column's type");
                            }
                        }
                    }
                }
                Outcome::Rejected(rejection) => {
                    params.reason.push(Some(&rejection.code));
                    params.detail.push(Some(&rejection.detail));
                    // Bound to its message id: swapped onto another dead
                    // letter, it no longer reveals.
                    params
                        .body_sealed
                        .push(Some(keyring.seal(&message.id, message.body.as_bytes())));
                    params.detail_sealed.push(
                        rejection
                            .transform_detail
                            .as_ref()
                            .map(|detail| keyring.seal(&message.id, detail.as_bytes())),
                    );
                    params.sent_at.push(DateTime::<Utc>::from_timestamp_millis(
                        message.sent_timestamp_ms as i64,
                    ));
                }
            }
        }
        Ok(params)
    }

    /// In the order [`sql`] numbers them.
    pub(super) fn as_params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.message_id,
            &self.outcome,
            &self.reason,
            &self.detail,
            &self.body_sealed,
            &self.sent_at,
            &self.detail_sealed,
            &self.digest,
        ];
        for table in &self.tables {
            params.push(&table.message_id);
            params.extend(table.columns.iter().map(ColumnArray::as_param));
        }
        params
    }
}
