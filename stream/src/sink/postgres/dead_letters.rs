//! `<job>.dlq` mirrored into the seed 003 `ETLDeadLetter` table, exactly once: each DLQ
//! record's headers say where it came from and why (see `sluice_core::topics::header`), its
//! value is the original bytes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sluice_core::topics::header;
use tokio_postgres::Transaction;

use super::error::PgError;
use super::seed_tables::{DeadLetterRow, insert_dead_letters};
use super::target::PgRows;
use crate::sink::{Buffered, SinkRecord};

pub(crate) struct DeadLetterRows {
    /// The job's source topic: what a DLQ record without Sluice's headers is attributed to.
    pub source_topic: String,
}

fn text<'a>(record: &'a SinkRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

impl DeadLetterRows {
    /// A record another producer wrote to the DLQ (no headers) still lands, as `unknown`
    /// with its DLQ position: nothing dead-lettered is lost on the way to the table.
    fn row(&self, partition: i32, record: &SinkRecord) -> DeadLetterRow {
        let source_partition = text(record, header::SOURCE_PARTITION).and_then(|p| p.parse().ok());
        let source_offset = text(record, header::SOURCE_OFFSET).and_then(|o| o.parse().ok());
        DeadLetterRow {
            topic: text(record, header::SOURCE_TOPIC)
                .unwrap_or(&self.source_topic)
                .to_string(),
            partition: source_partition.unwrap_or(partition),
            original_offset: source_offset.unwrap_or(record.offset),
            error_type: text(record, header::ERROR_TYPE)
                .unwrap_or("unknown")
                .to_string(),
            raw_message: record.payload.clone().unwrap_or_default(),
            created_at: record
                .timestamp_ms
                .and_then(DateTime::<Utc>::from_timestamp_millis),
        }
    }
}

impl PgRows for DeadLetterRows {
    async fn prepare(&self, _client: &tokio_postgres::Client) -> Result<(), PgError> {
        Ok(())
    }

    async fn write(
        &self,
        tx: &Transaction<'_>,
        batch: &Buffered,
        skip: &BTreeMap<i32, Option<i64>>,
    ) -> Result<Result<u64, String>, PgError> {
        let rows: Vec<DeadLetterRow> = batch
            .iter()
            .filter(|(p, _)| !skip.contains_key(*p))
            .flat_map(|(p, records)| records.iter().map(|r| self.row(*p, r)))
            .collect();
        if rows.is_empty() {
            return Ok(Ok(0));
        }
        Ok(Ok(insert_dead_letters(tx, &rows).await?))
    }
}
