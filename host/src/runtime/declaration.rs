//! A component's `describe()`: the tables it writes and its reason codes,
//! taken as hostile input and checked ([`Schema::new`], [`ReasonCodes::new`])
//! before the component sees any message.

use anyhow::{Result, anyhow};

use super::bindings::maskpipe::transform::types as wit;
use super::outcome::ReasonCodes;
use crate::schema::{Allows, Column, ColumnType, Pii, Schema, Table};

/// The declaration as the host's checked types, or why it is unusable.
pub(super) fn check(declared: wit::Declaration) -> Result<(Schema, ReasonCodes)> {
    let tables = declared
        .tables
        .into_iter()
        .map(|table| Table {
            name: table.name,
            columns: table.columns.into_iter().map(column).collect(),
        })
        .collect();
    let schema =
        Schema::new(tables).map_err(|problem| anyhow!("it declares unusable tables: {problem}"))?;
    let codes = ReasonCodes::new(declared.reason_codes)
        .map_err(|problem| anyhow!("it declares unusable reason codes: {problem}"))?;
    Ok((schema, codes))
}

fn column(column: wit::Column) -> Column {
    Column {
        name: column.name,
        kind: match column.type_ {
            wit::ColumnType::Text(max_chars) => ColumnType::Text { max_chars },
            wit::ColumnType::Integer => ColumnType::Integer,
            wit::ColumnType::Bigint => ColumnType::Bigint,
            wit::ColumnType::Boolean => ColumnType::Boolean,
            wit::ColumnType::Double => ColumnType::Double,
            wit::ColumnType::Numeric => ColumnType::Numeric,
            wit::ColumnType::Date => ColumnType::Date,
            wit::ColumnType::Timestamptz => ColumnType::Timestamptz,
            wit::ColumnType::Uuid => ColumnType::Uuid,
            wit::ColumnType::Jsonb => ColumnType::Jsonb,
        },
        nullable: column.nullable,
        pii: column.pii.map(|pii| Pii {
            field: pii.field,
            allows: Allows {
                masked: pii.allows.contains(wit::Protections::MASKED),
                pseudonymized: pii.allows.contains(wit::Protections::PSEUDONYMIZED),
                clear: pii.allows.contains(wit::Protections::CLEAR),
            },
        }),
    }
}
