//! Writing Arrow batches into a results table with binary COPY, inside the caller's
//! transaction (the one that also commits the consumed offsets).
//!
//! Append copies straight into the table. Upsert copies into a per-connection temporary
//! staging table and then moves the rows over with one `INSERT … ON CONFLICT DO UPDATE`, since
//! COPY itself cannot replace rows. Either way a batch costs a few statements, not one per row.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::record_batch::RecordBatch;
use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use pgpq::ArrowToPostgresBinaryEncoder;
use pgpq::error::ErrorKind;
use sluice_core::spec::SinkMode;
use tokio_postgres::{Client, CopyInSink, Transaction};

use super::error::PgError;
use super::table::{ResultTable, quote_ident};

/// COPY data goes to the server in pieces of about this size, so a large batch is never
/// encoded into one buffer of its whole size.
const CHUNK_BYTES: usize = 1 << 20;
/// Rows encoded before the first chunk's size tells how many fit in `CHUNK_BYTES`.
const FIRST_SLICE_ROWS: usize = 1024;
const MAX_SLICE_ROWS: usize = 1 << 16;

/// Makes staging table names unique among the writers sharing a connection.
static STAGING_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Writes record batches of one [`ResultTable`]'s schema into it.
#[derive(Debug)]
pub struct RowWriter {
    table: ResultTable,
    target: String,
    /// `pg_temp.sluice_staging_<n>`: lowercase and digits, so it needs no quoting.
    staging: String,
    copy_into_table: String,
    copy_into_staging: String,
    create_staging: String,
    upsert_from_staging: String,
}

impl RowWriter {
    /// Fails with `UnsupportedType` if the encoder cannot write one of the table's columns.
    pub fn new(table: ResultTable) -> Result<RowWriter, PgError> {
        ArrowToPostgresBinaryEncoder::try_new(table.schema().as_ref())
            .map_err(|error| encode_error(&table, error))?;
        let staging_name = format!(
            "sluice_staging_{}",
            STAGING_SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let staging = format!("pg_temp.{staging_name}");
        let columns = table.column_list();
        let copy_into_table = format!(
            "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
            table.qualified()
        );
        let copy_into_staging = format!("COPY {staging} ({columns}) FROM STDIN (FORMAT binary)");
        // The staging table has the result columns only, with the types the table was checked
        // to have: no NOT NULL, default or identity of the target's to trip over, and none of
        // its other columns. ON COMMIT DELETE ROWS keeps a rolled-back or committed
        // transaction from leaving rows behind for the next.
        let definitions: Vec<String> = table
            .columns()
            .map(|(column, pg)| format!("{} {pg}", quote_ident(column)))
            .collect();
        let create_staging = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {staging_name} ({}) ON COMMIT DELETE ROWS",
            definitions.join(", ")
        );
        let key: Vec<String> = table
            .key()
            .iter()
            .map(String::as_str)
            .map(quote_ident)
            .collect();
        let updates: Vec<String> = table
            .columns()
            .filter(|(column, _)| !table.key().iter().any(|k| k == column))
            .map(|(column, _)| {
                let quoted = quote_ident(column);
                format!("{quoted} = EXCLUDED.{quoted}")
            })
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        // The DELETE empties the staging table in the same statement, so several writes in one
        // transaction each move only their own rows.
        let upsert_from_staging = format!(
            "WITH moved AS (DELETE FROM {staging} RETURNING {columns}) \
             INSERT INTO {} ({columns}) SELECT {columns} FROM moved \
             ON CONFLICT ({}) {on_conflict}",
            table.qualified(),
            key.join(", ")
        );
        Ok(RowWriter {
            table,
            target: String::new(),
            staging,
            copy_into_table,
            copy_into_staging,
            create_staging,
            upsert_from_staging,
        })
    }

    /// Names the server (the redacted URL) in this writer's errors.
    pub fn with_target(mut self, target: impl Into<String>) -> RowWriter {
        self.target = target.into();
        self
    }

    pub fn table(&self) -> &ResultTable {
        &self.table
    }

    /// Readies a connection for [`write`](Self::write): creates the session's staging table
    /// for upserts (a no-op for an append table, or when it exists). Run it once per
    /// connection, after [`ResultTable::ensure`].
    pub async fn prepare(&self, client: &Client) -> Result<(), PgError> {
        if self.table.key().is_empty() {
            return Ok(());
        }
        client
            .batch_execute(&self.create_staging)
            .await
            .map_err(PgError::query(
                &self.target,
                format!(
                    "creating the staging table {} for table {}",
                    self.staging,
                    self.table.name()
                ),
            ))
    }

    /// Writes `batch` (whose columns are the table's schema, in order and type) inside `tx`.
    /// Upsert replaces the row of each key already there; the batch must hold each key at most
    /// once. Returns the rows inserted or updated.
    pub async fn write(
        &self,
        tx: &Transaction<'_>,
        batch: &RecordBatch,
        mode: SinkMode,
    ) -> Result<u64, PgError> {
        self.check_batch(batch)?;
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        match mode {
            SinkMode::Append => self.copy(tx, &self.copy_into_table, batch).await,
            SinkMode::Upsert => {
                if self.table.key().is_empty() {
                    return Err(PgError::InvalidTable {
                        table: self.table.name().to_string(),
                        message: "an upsert needs key columns (the view key and window); use mode = \"append\" for a table without one".to_string(),
                    });
                }
                self.copy(tx, &self.copy_into_staging, batch).await?;
                tx.execute(self.upsert_from_staging.as_str(), &[])
                    .await
                    .map_err(PgError::query(
                        &self.target,
                        format!(
                            "upserting {} rows from {} into table {} (was prepare() run on this connection?)",
                            batch.num_rows(),
                            self.staging,
                            self.table.name()
                        ),
                    ))
            }
        }
    }

    fn check_batch(&self, batch: &RecordBatch) -> Result<(), PgError> {
        let expected = self.table.schema().fields();
        let found = batch.schema_ref().fields();
        let same = expected.len() == found.len()
            && expected
                .iter()
                .zip(found.iter())
                .all(|(e, f)| e.name() == f.name() && e.data_type() == f.data_type());
        if same {
            return Ok(());
        }
        let describe = |fields: &arrow::datatypes::Fields| {
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(PgError::Encode {
            table: self.table.name().to_string(),
            message: format!(
                "the batch's columns ({}) are not the table's ({}); cast the batch to ResultTable::schema() first",
                describe(found),
                describe(expected)
            ),
        })
    }

    /// Encodes `batch` slice by slice and streams it through `COPY … FROM STDIN`.
    async fn copy(
        &self,
        tx: &Transaction<'_>,
        statement: &str,
        batch: &RecordBatch,
    ) -> Result<u64, PgError> {
        let what = format!(
            "copying {} rows into table {}",
            batch.num_rows(),
            self.table.name()
        );
        let sink: CopyInSink<Bytes> = tx
            .copy_in(statement)
            .await
            .map_err(PgError::query(&self.target, what.as_str()))?;
        let mut sink = pin!(sink);
        let mut encoder = ArrowToPostgresBinaryEncoder::try_new(self.table.schema().as_ref())
            .map_err(|error| encode_error(&self.table, error))?;
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
        encoder
            .write_header(&mut buf)
            .map_err(|error| encode_error(&self.table, error))?;
        let rows = batch.num_rows();
        let mut offset = 0;
        let mut slice_rows = FIRST_SLICE_ROWS;
        while offset < rows {
            let len = slice_rows.min(rows - offset);
            let before = buf.len();
            encoder
                .write_batch(&batch.slice(offset, len), &mut buf)
                .map_err(|error| encode_error(&self.table, error))?;
            let bytes_per_row = ((buf.len() - before) / len).max(1);
            slice_rows = (CHUNK_BYTES / bytes_per_row).clamp(1, MAX_SLICE_ROWS);
            offset += len;
            if buf.len() >= CHUNK_BYTES {
                sink.send(buf.split().freeze())
                    .await
                    .map_err(PgError::query(&self.target, what.as_str()))?;
            }
        }
        encoder
            .write_footer(&mut buf)
            .map_err(|error| encode_error(&self.table, error))?;
        sink.send(buf.split().freeze())
            .await
            .map_err(PgError::query(&self.target, what.as_str()))?;
        sink.as_mut()
            .finish()
            .await
            .map_err(PgError::query(&self.target, what.as_str()))
    }
}

fn encode_error(table: &ResultTable, error: ErrorKind) -> PgError {
    match error {
        ErrorKind::TypeNotSupported { field, tp, .. }
        | ErrorKind::FieldTypeNotSupported { field, tp, .. } => PgError::UnsupportedType {
            table: table.name().to_string(),
            column: field,
            data_type: tp.to_string(),
        },
        other => PgError::Encode {
            table: table.name().to_string(),
            message: other.to_string(),
        },
    }
}
