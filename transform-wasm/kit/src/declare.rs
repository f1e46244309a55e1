//! Shorthands for a component's declaration: its tables and reason codes.
//!
//! ```
//! use maskpipe_guest::{Column, Declaration, Protections, Table};
//!
//! let declaration = Declaration::new(
//!     vec![Table::new(
//!         "events",
//!         vec![
//!             Column::uuid("event_id").not_null(),
//!             Column::text("masked_email", 256).pii("email", Protections::MASKED),
//!         ],
//!     )],
//!     &["invalid_json"],
//! );
//! assert_eq!(declaration.tables[0].columns.len(), 2);
//! ```

use crate::wit::{Column, ColumnType, Declaration, Pii, Protections, Table};

impl Declaration {
    /// `tables` (in the order rows name them by index) and every code a
    /// rejection may carry.
    pub fn new(tables: Vec<Table>, reason_codes: &[&str]) -> Self {
        Self {
            tables,
            reason_codes: reason_codes.iter().map(|&code| code.to_owned()).collect(),
        }
    }
}

impl Table {
    pub fn new(name: &str, columns: Vec<Column>) -> Self {
        Self {
            name: name.to_owned(),
            columns,
        }
    }
}

impl Column {
    /// A nullable column that holds no PII.
    pub fn new(name: &str, column_type: ColumnType) -> Self {
        Self {
            name: name.to_owned(),
            type_: column_type,
            nullable: true,
            pii: None,
        }
    }

    /// `varchar(max_chars)`.
    pub fn text(name: &str, max_chars: u32) -> Self {
        Self::new(name, ColumnType::Text(max_chars))
    }

    pub fn integer(name: &str) -> Self {
        Self::new(name, ColumnType::Integer)
    }

    pub fn bigint(name: &str) -> Self {
        Self::new(name, ColumnType::Bigint)
    }

    pub fn boolean(name: &str) -> Self {
        Self::new(name, ColumnType::Boolean)
    }

    /// `double precision`.
    pub fn double(name: &str) -> Self {
        Self::new(name, ColumnType::Double)
    }

    pub fn numeric(name: &str) -> Self {
        Self::new(name, ColumnType::Numeric)
    }

    pub fn date(name: &str) -> Self {
        Self::new(name, ColumnType::Date)
    }

    /// `timestamp with time zone`.
    pub fn timestamptz(name: &str) -> Self {
        Self::new(name, ColumnType::Timestamptz)
    }

    pub fn uuid(name: &str) -> Self {
        Self::new(name, ColumnType::Uuid)
    }

    pub fn jsonb(name: &str) -> Self {
        Self::new(name, ColumnType::Jsonb)
    }

    /// `NOT NULL`.
    pub fn not_null(mut self) -> Self {
        self.nullable = false;
        self
    }

    /// Marks the column PII: its values come from message field `field`
    /// and must be protected in one of the ways `allows` lists.
    pub fn pii(mut self, field: &str, allows: Protections) -> Self {
        self.pii = Some(Pii {
            field: field.to_owned(),
            allows,
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_start_nullable_without_pii() {
        let column = Column::text("user_id", 128);
        assert_eq!(column.name, "user_id");
        assert_eq!(column.type_, ColumnType::Text(128));
        assert!(column.nullable);
        assert_eq!(column.pii, None);
        assert!(!Column::date("day").not_null().nullable);
        let pii = Column::text("masked_ip", 256)
            .pii("ip", Protections::MASKED | Protections::CLEAR)
            .pii;
        assert_eq!(
            pii,
            Some(Pii {
                field: "ip".into(),
                allows: Protections::MASKED | Protections::CLEAR,
            })
        );
    }

    #[test]
    fn a_declaration_owns_its_codes() {
        let declaration = Declaration::new(
            vec![Table::new("t", vec![Column::integer("n")])],
            &["a", "b"],
        );
        assert_eq!(declaration.reason_codes, ["a", "b"]);
        assert_eq!(declaration.tables[0].name, "t");
    }
}
