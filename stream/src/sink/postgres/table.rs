//! The table a sink writes a job's results to: its PostgreSQL column types derived from the
//! Arrow schema, created when missing, and checked when present.
//!
//! Binary COPY sends each value in its column type's wire format and PostgreSQL decodes it with
//! the column's own type, so a table whose column has another type either rejects the COPY or,
//! worse, reads the bytes as something else (`timestamp` and `timestamptz` share a format).
//! Hence the exact check at start: a mismatching column is an error naming it, never a cast.

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, Row, SimpleQueryMessage};

use super::error::PgError;

/// The advisory lock Sluice's DDL runs under (`b"sluiceDL"`), so two daemons starting at once
/// do not race on the same `CREATE`.
pub const DDL_LOCK_KEY: i64 = 0x736c_7569_6365_444c;

/// PostgreSQL truncates longer identifiers, after which the names no longer match.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// `ident` as a double-quoted SQL identifier (embedded quotes doubled), case kept.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `text` as an SQL string literal (standard_conforming_strings, the default since 9.1).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The PostgreSQL type a result column of `data_type` is written as, spelled as
/// `format_type()` prints it; `None` when the binary COPY encoder cannot write the type.
pub fn pg_type(data_type: &DataType) -> Option<&'static str> {
    let name = match data_type {
        DataType::Boolean => "boolean",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 => "bigint",
        DataType::UInt64
        | DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _) => "numeric",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => "bytea",
        DataType::Date32 => "date",
        // PostgreSQL keeps microseconds; nanoseconds would be truncated, so they are refused.
        DataType::Timestamp(TimeUnit::Nanosecond, _) => return None,
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone",
        DataType::Timestamp(_, None) => "timestamp without time zone",
        DataType::Time32(TimeUnit::Second | TimeUnit::Millisecond)
        | DataType::Time64(TimeUnit::Microsecond) => "time without time zone",
        DataType::Duration(TimeUnit::Second | TimeUnit::Millisecond | TimeUnit::Microsecond) => {
            "interval"
        }
        _ => return None,
    };
    Some(name)
}

/// Whether an existing column of type `found` holds a result column of `data_type` exactly.
/// Besides `pg_type`'s spelling, a decimal may sit in a `numeric(p,s)` of its own precision
/// and scale: the values fit unchanged.
fn type_matches(data_type: &DataType, expected: &str, found: &str) -> bool {
    if found == expected {
        return true;
    }
    match data_type {
        DataType::Decimal32(precision, scale)
        | DataType::Decimal64(precision, scale)
        | DataType::Decimal128(precision, scale) => {
            found == format!("numeric({precision},{scale})")
        }
        _ => false,
    }
}

/// A results table: where it is, the Arrow schema of the rows written to it, and its key.
#[derive(Debug, Clone)]
pub struct ResultTable {
    /// As the job named it, for messages.
    given: String,
    namespace: Option<String>,
    relation: String,
    schema: SchemaRef,
    key: Vec<String>,
    /// `pg_type` of each field, in schema order.
    types: Vec<&'static str>,
}

impl ResultTable {
    /// `table` is `name` or `schema.name`, both taken literally (quoted, case kept); `key` is
    /// the upsert key (the view key and window columns), empty for an append table.
    pub fn new(table: &str, schema: SchemaRef, key: &[String]) -> Result<ResultTable, PgError> {
        let invalid = |message: String| PgError::InvalidTable {
            table: table.to_string(),
            message,
        };
        let (namespace, name) = match table.split_once('.') {
            Some((namespace, name)) => (Some(namespace), name),
            None => (None, table),
        };
        for part in namespace.iter().copied().chain([name]) {
            if part.is_empty() || part.contains('.') {
                return Err(invalid(
                    "a table is `name` or `schema.name`, each part non-empty".to_string(),
                ));
            }
            if part.len() > MAX_IDENTIFIER_BYTES {
                return Err(invalid(format!(
                    "`{part}` is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte identifier limit"
                )));
            }
        }
        let mut types = Vec::with_capacity(schema.fields().len());
        for (index, field) in schema.fields().iter().enumerate() {
            let column = field.name();
            if column.is_empty() || column.len() > MAX_IDENTIFIER_BYTES {
                return Err(invalid(format!(
                    "column `{column}` needs a name of 1 to {MAX_IDENTIFIER_BYTES} bytes"
                )));
            }
            if schema.fields()[..index]
                .iter()
                .any(|earlier| earlier.name() == column)
            {
                return Err(invalid(format!("column `{column}` appears twice")));
            }
            let Some(pg) = pg_type(field.data_type()) else {
                return Err(PgError::UnsupportedType {
                    table: table.to_string(),
                    column: column.clone(),
                    data_type: field.data_type().to_string(),
                });
            };
            types.push(pg);
        }
        if types.is_empty() {
            return Err(invalid("the results have no columns".to_string()));
        }
        for (index, column) in key.iter().enumerate() {
            if schema.index_of(column).is_err() {
                return Err(invalid(format!(
                    "key column `{column}` is not among the result columns"
                )));
            }
            if key[..index].contains(column) {
                return Err(invalid(format!("key column `{column}` appears twice")));
            }
        }
        Ok(ResultTable {
            given: table.to_string(),
            namespace: namespace.map(str::to_string),
            relation: name.to_string(),
            schema,
            key: key.to_vec(),
            types,
        })
    }

    /// The table as the job named it (for messages).
    pub fn name(&self) -> &str {
        &self.given
    }

    /// `"schema"."name"` or `"name"`, ready for SQL.
    pub fn qualified(&self) -> String {
        match &self.namespace {
            Some(namespace) => {
                format!("{}.{}", quote_ident(namespace), quote_ident(&self.relation))
            }
            None => quote_ident(&self.relation),
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// Each result column's name and PostgreSQL type, in schema order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &'static str)> + '_ {
        self.schema
            .fields()
            .iter()
            .zip(&self.types)
            .map(|(field, pg)| (field.name().as_str(), *pg))
    }

    /// `"a", "b", …`: the result columns, quoted, in schema order.
    pub fn column_list(&self) -> String {
        self.columns()
            .map(|(column, _)| quote_ident(column))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The `CREATE TABLE IF NOT EXISTS` for this table. A non-empty key becomes a
    /// `UNIQUE NULLS NOT DISTINCT` constraint rather than a primary key: a view key column may
    /// be NULL (one group for all NULLs), which a primary key forbids.
    pub fn create_sql(&self) -> String {
        let mut parts: Vec<String> = self
            .schema
            .fields()
            .iter()
            .zip(&self.types)
            .map(|(field, pg)| {
                let not_null = if field.is_nullable() { "" } else { " NOT NULL" };
                format!("{} {pg}{not_null}", quote_ident(field.name()))
            })
            .collect();
        if !self.key.is_empty() {
            let key: Vec<String> = self
                .key
                .iter()
                .map(String::as_str)
                .map(quote_ident)
                .collect();
            parts.push(format!("UNIQUE NULLS NOT DISTINCT ({})", key.join(", ")));
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.qualified(),
            parts.join(", ")
        )
    }

    /// Creates the table if it is missing (returning true), then [`check`](Self::check)s it.
    /// `target` is the redacted URL, for messages.
    pub async fn ensure(&self, client: &Client, target: &str) -> Result<bool, PgError> {
        let found = self.look_up(client, target).await?;
        let created = match found.oid {
            Some(_) => false,
            None => {
                self.create(client, target, &found.role, found.current_schema.as_deref())
                    .await?
            }
        };
        self.check(client, target).await?;
        Ok(created)
    }

    /// Checks that the existing table can take the results: the connected role may insert
    /// (and, for a key, update and select), every result column exists with exactly its type,
    /// no other column is NOT NULL without a default, and a key has a unique index on exactly
    /// its columns (NULLS NOT DISTINCT unless they are all NOT NULL).
    pub async fn check(&self, client: &Client, target: &str) -> Result<(), PgError> {
        let found = self.look_up(client, target).await?;
        let Some(oid) = found.oid else {
            return Err(PgError::InvalidTable {
                table: self.given.clone(),
                message:
                    "it does not exist (create it; `sluice postgres init` creates the seed tables)"
                        .to_string(),
            });
        };
        self.check_privileges(client, target, oid, &found.role)
            .await?;
        self.check_columns(client, target, oid).await?;
        if !self.key.is_empty() {
            self.check_unique_key(client, target, oid).await?;
        }
        Ok(())
    }

    /// Who is connected, to which server version, and the table's oid if it exists. A key
    /// needs PostgreSQL 15 (`NULLS NOT DISTINCT`), so an older server is refused here.
    async fn look_up(&self, client: &Client, target: &str) -> Result<LookUp, PgError> {
        let what = format!("looking up table {}", self.given);
        let row = client
            .query_one(
                "SELECT current_user::text, current_schema()::text, \
                 current_setting('server_version_num')::int4, to_regclass($1)::oid",
                &[&self.qualified()],
            )
            .await
            .map_err(PgError::query(target, what.as_str()))?;
        let found = LookUp {
            role: column(&row, 0, target, &what)?,
            current_schema: column(&row, 1, target, &what)?,
            oid: column(&row, 3, target, &what)?,
        };
        let version: i32 = column(&row, 2, target, &what)?;
        if !self.key.is_empty() && version < 150_000 {
            return Err(PgError::ServerVersion {
                target: target.to_string(),
                found: version,
                needed: format!(
                    "the upsert key of table `{}` (UNIQUE NULLS NOT DISTINCT)",
                    self.given
                ),
            });
        }
        Ok(found)
    }

    /// Runs the `CREATE` under the DDL lock, in one implicit transaction (one simple query), so
    /// a concurrent creator either finished first or waits; true if this call created it.
    async fn create(
        &self,
        client: &Client,
        target: &str,
        role: &str,
        current_schema: Option<&str>,
    ) -> Result<bool, PgError> {
        let sql = format!(
            "SELECT pg_advisory_xact_lock({DDL_LOCK_KEY}); \
             SELECT to_regclass({}) IS NULL AS sluice_table_missing; {}",
            quote_literal(&self.qualified()),
            self.create_sql()
        );
        let messages = client.simple_query(&sql).await.map_err(|source| {
            if source.code().is_some_and(|code| code.code() == "42501") {
                let schema = self
                    .namespace
                    .as_deref()
                    .or(current_schema)
                    .unwrap_or("public");
                PgError::MissingPrivilege {
                    table: self.given.clone(),
                    role: role.to_string(),
                    privilege: "CREATE".to_string(),
                    on: format!("SCHEMA {}", quote_ident(schema)),
                }
            } else {
                PgError::Query {
                    target: target.to_string(),
                    what: format!("creating table {}", self.given),
                    source,
                }
            }
        })?;
        Ok(missing_flag(&messages, "sluice_table_missing"))
    }

    async fn check_privileges(
        &self,
        client: &Client,
        target: &str,
        oid: u32,
        role: &str,
    ) -> Result<(), PgError> {
        let what = format!("checking privileges on table {}", self.given);
        let row = client
            .query_one(
                "SELECT c.relkind::text, has_table_privilege(c.oid, 'INSERT'), \
                 has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'SELECT') \
                 FROM pg_class c WHERE c.oid = $1",
                &[&oid],
            )
            .await
            .map_err(PgError::query(target, what.as_str()))?;
        let kind: String = column(&row, 0, target, &what)?;
        if kind != "r" && kind != "p" {
            return Err(PgError::InvalidTable {
                table: self.given.clone(),
                message: format!(
                    "it is not a table (pg_class.relkind `{kind}`: a view, sequence or foreign table?); point the sink at a table"
                ),
            });
        }
        let mut needed = vec![("INSERT", column::<bool>(&row, 1, target, &what)?)];
        if !self.key.is_empty() {
            // ON CONFLICT … DO UPDATE needs UPDATE, and SELECT on the conflict columns.
            needed.push(("UPDATE", column::<bool>(&row, 2, target, &what)?));
            needed.push(("SELECT", column::<bool>(&row, 3, target, &what)?));
        }
        if let Some((privilege, _)) = needed.iter().find(|(_, granted)| !granted) {
            return Err(PgError::MissingPrivilege {
                table: self.given.clone(),
                role: role.to_string(),
                privilege: (*privilege).to_string(),
                on: format!("TABLE {}", self.qualified()),
            });
        }
        // A serial column Sluice leaves to its default draws from a sequence, which needs its
        // own grant (identity columns do not).
        let written: Vec<String> = self.columns().map(|(c, _)| c.to_string()).collect();
        let sequences = client
            .query(
                "SELECT s.seq FROM (SELECT a.attname::text AS column_name, \
                 pg_get_serial_sequence(a.attrelid::regclass::text, a.attname) AS seq \
                 FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 \
                 AND NOT a.attisdropped AND a.atthasdef AND a.attidentity = '') s \
                 WHERE s.seq IS NOT NULL AND NOT (s.column_name = ANY($2)) \
                 AND NOT (has_sequence_privilege(s.seq, 'USAGE') \
                 OR has_sequence_privilege(s.seq, 'UPDATE'))",
                &[&oid, &written],
            )
            .await
            .map_err(PgError::query(target, what.as_str()))?;
        if let Some(row) = sequences.first() {
            let sequence: String = column(row, 0, target, &what)?;
            return Err(PgError::MissingPrivilege {
                table: self.given.clone(),
                role: role.to_string(),
                privilege: "USAGE".to_string(),
                on: format!("SEQUENCE {sequence}"),
            });
        }
        Ok(())
    }

    async fn check_columns(&self, client: &Client, target: &str, oid: u32) -> Result<(), PgError> {
        let what = format!("reading the columns of table {}", self.given);
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                 a.atthasdef OR a.attidentity <> '', a.attgenerated <> '' \
                 FROM pg_attribute a \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(PgError::query(target, what.as_str()))?;
        let mut existing = Vec::with_capacity(rows.len());
        for row in &rows {
            existing.push(ExistingColumn {
                name: column(row, 0, target, &what)?,
                data_type: column(row, 1, target, &what)?,
                not_null: column(row, 2, target, &what)?,
                has_default: column(row, 3, target, &what)?,
                generated: column(row, 4, target, &what)?,
            });
        }
        for (field, expected) in self.schema.fields().iter().zip(&self.types) {
            let Some(found) = existing.iter().find(|c| &c.name == field.name()) else {
                return Err(PgError::MissingColumn {
                    table: self.given.clone(),
                    column: field.name().clone(),
                });
            };
            if found.generated {
                return Err(PgError::ColumnMismatch {
                    table: self.given.clone(),
                    column: field.name().clone(),
                    expected: (*expected).to_string(),
                    found: format!("{} GENERATED (not writable)", found.data_type),
                });
            }
            if !type_matches(field.data_type(), expected, &found.data_type) {
                return Err(PgError::ColumnMismatch {
                    table: self.given.clone(),
                    column: field.name().clone(),
                    expected: (*expected).to_string(),
                    found: found.data_type.clone(),
                });
            }
        }
        if let Some(required) = existing
            .iter()
            .find(|c| c.not_null && !c.has_default && self.schema.index_of(&c.name).is_err())
        {
            return Err(PgError::RequiredColumn {
                table: self.given.clone(),
                column: required.name.clone(),
            });
        }
        Ok(())
    }

    async fn check_unique_key(
        &self,
        client: &Client,
        target: &str,
        oid: u32,
    ) -> Result<(), PgError> {
        let what = format!("reading the unique indexes of table {}", self.given);
        // Only indexes ON CONFLICT can infer: unique, valid, immediate (not deferrable), over
        // plain columns, without a predicate; INCLUDE columns are not part of the key.
        let rows = client
            .query(
                "SELECT i.indnullsnotdistinct, \
                 ARRAY(SELECT a.attname::text \
                       FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                       WHERE k.n <= i.indnkeyatts), \
                 ARRAY(SELECT a.attname::text FROM pg_attribute a \
                       WHERE a.attrelid = i.indrelid AND a.attnum > 0 AND a.attnotnull) \
                 FROM pg_index i \
                 WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indimmediate \
                 AND i.indpred IS NULL AND i.indexprs IS NULL",
                &[&oid],
            )
            .await
            .map_err(PgError::query(target, what.as_str()))?;
        let mut wanted: Vec<&str> = self.key.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        for row in &rows {
            let nulls_not_distinct: bool = column(row, 0, target, &what)?;
            let mut columns: Vec<String> = column(row, 1, target, &what)?;
            let not_null: Vec<String> = column(row, 2, target, &what)?;
            columns.sort_unstable();
            if columns
                .iter()
                .map(String::as_str)
                .ne(wanted.iter().copied())
            {
                continue;
            }
            // With NULLs distinct, rows with a NULL key column never conflict, so a re-emitted
            // window of a NULL group would be inserted again instead of replacing its row.
            if nulls_not_distinct || columns.iter().all(|c| not_null.contains(c)) {
                return Ok(());
            }
        }
        Err(PgError::MissingUniqueKey {
            table: self.given.clone(),
            columns: self.key.clone(),
        })
    }
}

struct LookUp {
    role: String,
    current_schema: Option<String>,
    oid: Option<u32>,
}

struct ExistingColumn {
    name: String,
    data_type: String,
    not_null: bool,
    has_default: bool,
    generated: bool,
}

/// Column `index` of `row`, a wrong type being a `Query` error rather than a panic.
pub(crate) fn column<'a, T: FromSql<'a>>(
    row: &'a Row,
    index: usize,
    target: &str,
    what: &str,
) -> Result<T, PgError> {
    row.try_get(index).map_err(PgError::query(target, what))
}

/// The value of the single-column boolean row named `name` in a simple query's answer.
pub(crate) fn missing_flag(messages: &[SimpleQueryMessage], name: &str) -> bool {
    messages.iter().any(|message| match message {
        SimpleQueryMessage::Row(row) => {
            row.columns().first().is_some_and(|c| c.name() == name)
                && matches!(row.try_get(0), Ok(Some("t")))
        }
        _ => false,
    })
}

#[cfg(test)]
mod unit {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::{ResultTable, pg_type, quote_ident, type_matches};

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        let table = ResultTable::new("Sales.Per Minute", schema, &["k".to_string()])
            .expect("a valid table");
        assert_eq!(table.qualified(), "\"Sales\".\"Per Minute\"");
        assert!(
            table
                .create_sql()
                .ends_with("(\"k\" text, UNIQUE NULLS NOT DISTINCT (\"k\"))"),
            "{}",
            table.create_sql()
        );
    }

    #[test]
    fn unsupported_types_and_bad_keys_are_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        )]));
        assert!(ResultTable::new("t", schema, &[]).is_err());
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        assert!(ResultTable::new("t", schema.clone(), &["b".to_string()]).is_err());
        assert!(ResultTable::new("a.b.c", schema, &[]).is_err());
    }

    #[test]
    fn decimals_fit_their_own_precision() {
        let decimal = DataType::Decimal128(12, 2);
        assert_eq!(pg_type(&decimal), Some("numeric"));
        assert!(type_matches(&decimal, "numeric", "numeric(12,2)"));
        assert!(!type_matches(&decimal, "numeric", "numeric(12,3)"));
        assert!(!type_matches(&DataType::Int64, "bigint", "integer"));
    }
}
