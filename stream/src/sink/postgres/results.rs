//! Result rows (from `<job>.results` or an output's topic) into the sink's table: decoded
//! from the JSON rows the speed layer wrote, bulk-loaded with binary COPY.

use std::collections::{BTreeMap, HashMap};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use sluice_core::spec::SinkMode;
use tokio_postgres::Transaction;

use super::copy::RowWriter;
use super::error::PgError;
use super::target::PgRows;
use crate::sink::{Buffered, SinkRecord};

pub(crate) struct ResultRows {
    pub writer: RowWriter,
    /// The job's result schema (the table's columns).
    pub schema: SchemaRef,
    pub mode: SinkMode,
}

impl PgRows for ResultRows {
    async fn prepare(&self, client: &tokio_postgres::Client) -> Result<(), PgError> {
        self.writer.prepare(client).await
    }

    async fn write(
        &self,
        tx: &Transaction<'_>,
        batch: &Buffered,
        skip: &BTreeMap<i32, Option<i64>>,
    ) -> Result<Result<u64, String>, PgError> {
        let rows = match result_rows(&self.schema, self.mode, batch, skip) {
            Ok(rows) => rows,
            Err(message) => return Ok(Err(message)),
        };
        if rows.num_rows() == 0 {
            return Ok(Ok(0));
        }
        Ok(Ok(self.writer.write(tx, &rows, self.mode).await?))
    }
}

/// The rows of `batch` (but the partitions in `skip`) as one Arrow batch of `schema`; for
/// upsert only each result key's last row (a window re-emitted in the same batch), so that
/// `ON CONFLICT` never meets a key twice.
fn result_rows(
    schema: &SchemaRef,
    mode: SinkMode,
    batch: &Buffered,
    skip: &BTreeMap<i32, Option<i64>>,
) -> Result<RecordBatch, String> {
    let records: Vec<&SinkRecord> = batch
        .iter()
        .filter(|(p, _)| !skip.contains_key(*p))
        .flat_map(|(_, records)| records)
        .filter(|r| r.payload.is_some())
        .collect();
    let keep: Vec<&SinkRecord> = match mode {
        SinkMode::Append => records,
        SinkMode::Upsert => {
            let mut last: HashMap<Option<&[u8]>, usize> = HashMap::new();
            for (i, record) in records.iter().enumerate() {
                last.insert(record.key.as_deref(), i);
            }
            let mut indices: Vec<usize> = last.into_values().collect();
            indices.sort_unstable();
            indices.into_iter().map(|i| records[i]).collect()
        }
    };
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(keep.len().max(1))
        .build_decoder()
        .map_err(|e| format!("reading result rows: {e}"))?;
    for record in &keep {
        let payload = record.payload.as_deref().unwrap_or_default();
        let not_a_row = |why: String| {
            format!(
                "the result record at offset {} is not one row of the job's result schema: {why}",
                record.offset
            )
        };
        // A row is one JSON object; the newline keeps two rows from reading as one.
        for bytes in [payload, b"\n".as_slice()] {
            let consumed = decoder
                .decode(bytes)
                .map_err(|e| not_a_row(e.to_string()))?;
            if consumed != bytes.len() {
                return Err(not_a_row("it holds more than one row".into()));
            }
        }
    }
    let rows = decoder
        .flush()
        .map_err(|e| format!("reading result rows: {e}"))?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    if rows.num_rows() != keep.len() {
        return Err(format!(
            "{} result records decoded into {} rows",
            keep.len(),
            rows.num_rows()
        ));
    }
    Ok(rows)
}
