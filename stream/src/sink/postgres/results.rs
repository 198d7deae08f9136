//! Result rows (from `<job>.results` or an output's topic) into the sink's table: decoded
//! from the JSON rows the speed layer wrote, bulk-loaded with binary COPY.
//!
//! A record that is not one row of the job's result schema (another producer wrote to the
//! topic) must neither stop the sink nor vanish: it goes to `ETLDeadLetter` as
//! `not_a_result_row`, in the same transaction as the rows and offsets, and the sink goes on.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Utc};
use sluice_core::spec::SinkMode;
use sluice_core::topics::DivertReason;
use tokio_postgres::Transaction;

use super::copy::RowWriter;
use super::error::PgError;
use super::seed_tables::{DeadLetterRow, insert_dead_letters};
use super::target::PgRows;
use crate::sink::{Buffered, SinkRecord};

pub(crate) struct ResultRows {
    pub writer: RowWriter,
    /// The job's result schema (the table's columns).
    pub schema: SchemaRef,
    pub mode: SinkMode,
    /// The topic the sink reads (what a dead-lettered record is attributed to).
    pub topic: String,
    pub job: String,
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
        let decoded = match result_rows(&self.schema, self.mode, batch, skip) {
            Ok(decoded) => decoded,
            Err(message) => return Ok(Err(message)),
        };
        let mut rejected = decoded.rejected;
        for dead in &mut rejected {
            dead.topic.clone_from(&self.topic);
        }
        if let Some(first) = rejected.first() {
            tracing::warn!(
                job = self.job,
                topic = self.topic,
                partition = first.partition,
                offset = first.original_offset,
                count = rejected.len(),
                "records that are not result rows go to ETLDeadLetter as not_a_result_row"
            );
            insert_dead_letters(tx, &rejected).await?;
        }
        if decoded.rows.num_rows() == 0 {
            return Ok(Ok(0));
        }
        Ok(Ok(self.writer.write(tx, &decoded.rows, self.mode).await?))
    }
}

/// What a batch of result records holds.
struct Decoded {
    rows: RecordBatch,
    /// The records that are not one row of the schema, as dead letters (their topic is
    /// left for the caller to fill in).
    rejected: Vec<DeadLetterRow>,
}

/// The rows of `batch` (but the partitions in `skip`) as one Arrow batch of `schema`; for
/// upsert only each result key's last row (a window re-emitted in the same batch), so that
/// `ON CONFLICT` never meets a key twice. `Err` only when the schema itself cannot be read.
fn result_rows(
    schema: &SchemaRef,
    mode: SinkMode,
    batch: &Buffered,
    skip: &BTreeMap<i32, Option<i64>>,
) -> Result<Decoded, String> {
    let records: Vec<(i32, &SinkRecord)> = batch
        .iter()
        .filter(|(p, _)| !skip.contains_key(*p))
        .flat_map(|(p, records)| records.iter().map(move |r| (*p, r)))
        .filter(|(_, r)| r.payload.is_some())
        .collect();
    let payloads: Vec<&[u8]> = records
        .iter()
        .map(|(_, r)| r.payload.as_deref().unwrap_or_default())
        .collect();
    // Every record is one row but for a foreign producer's: decode them all at once, and
    // one by one only when that fails, to find which.
    let (rows, good): (RecordBatch, Vec<usize>) = match decode_rows(schema, &payloads)? {
        Ok(rows) if rows.num_rows() == records.len() => (rows, (0..records.len()).collect()),
        _ => {
            let mut singles = Vec::new();
            let mut good = Vec::new();
            let mut rejected = Vec::new();
            for (i, payload) in payloads.iter().enumerate() {
                match decode_rows(schema, std::slice::from_ref(payload))? {
                    Ok(row) if row.num_rows() == 1 => {
                        singles.push(row);
                        good.push(i);
                    }
                    Ok(row) => rejected.push((i, format!("it holds {} rows", row.num_rows()))),
                    Err(why) => rejected.push((i, why)),
                }
            }
            let rows = arrow::compute::concat_batches(schema, &singles)
                .map_err(|e| format!("joining result rows: {e}"))?;
            let rejected = rejected
                .into_iter()
                .map(|(i, why)| {
                    let (partition, record) = records[i];
                    tracing::debug!(partition, offset = record.offset, %why, "not a result row");
                    dead_letter(partition, record)
                })
                .collect();
            return finish(rows, &good, &records, mode, rejected);
        }
    };
    finish(rows, &good, &records, mode, Vec::new())
}

/// `rows` (row `j` is record `good[j]`), for upsert cut to each key's last row.
fn finish(
    rows: RecordBatch,
    good: &[usize],
    records: &[(i32, &SinkRecord)],
    mode: SinkMode,
    rejected: Vec<DeadLetterRow>,
) -> Result<Decoded, String> {
    let rows = match mode {
        SinkMode::Append => rows,
        SinkMode::Upsert => {
            let mut last: HashMap<Option<&[u8]>, u32> = HashMap::new();
            for (row, &i) in good.iter().enumerate() {
                last.insert(records[i].1.key.as_deref(), row as u32);
            }
            if last.len() == rows.num_rows() {
                rows
            } else {
                let mut keep: Vec<u32> = last.into_values().collect();
                keep.sort_unstable();
                arrow::compute::take_record_batch(&rows, &UInt32Array::from(keep))
                    .map_err(|e| format!("keeping each key's last row: {e}"))?
            }
        }
    };
    Ok(Decoded { rows, rejected })
}

fn dead_letter(partition: i32, record: &SinkRecord) -> DeadLetterRow {
    DeadLetterRow {
        topic: String::new(),
        partition,
        original_offset: record.offset,
        error_type: DivertReason::NotAResultRow.as_str().to_string(),
        raw_message: record.payload.clone().unwrap_or_default(),
        created_at: record
            .timestamp_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis),
    }
}

/// `payloads` as rows of `schema`: `Err` (outer) when the schema cannot be decoded into at
/// all, `Ok(Err(why))` when a payload is not a row.
fn decode_rows(
    schema: &SchemaRef,
    payloads: &[&[u8]],
) -> Result<Result<RecordBatch, String>, String> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(payloads.len().max(1))
        .build_decoder()
        .map_err(|e| format!("reading result rows: {e}"))?;
    for (i, payload) in payloads.iter().enumerate() {
        // A row is one JSON object; the newline keeps two rows from reading as one.
        for bytes in [*payload, b"\n".as_slice()] {
            match decoder.decode(bytes) {
                Ok(consumed) if consumed == bytes.len() => {}
                Ok(_) => return Ok(Err("it holds more than one row".into())),
                Err(e) => return Ok(Err(e.to_string())),
            }
        }
        // Exactly one whole row per record (not half of one that the next record closes).
        if decoder.has_partial_record() {
            return Ok(Err("it is not a whole JSON object".into()));
        }
        if decoder.len() != i + 1 {
            let rows = decoder.len().saturating_sub(i);
            return Ok(Err(format!("it holds {rows} rows")));
        }
    }
    Ok(match decoder.flush() {
        Ok(rows) => Ok(rows.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()))),
        Err(e) => Err(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]))
    }

    fn record(offset: i64, key: &str, payload: &[u8]) -> SinkRecord {
        SinkRecord {
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(key.as_bytes().to_vec()),
            payload: Some(payload.to_vec()),
            headers: Vec::new(),
        }
    }

    fn buffered(records: Vec<(i32, SinkRecord)>) -> Buffered {
        let mut batch = Buffered::new();
        for (p, r) in records {
            batch.entry(p).or_default().push(r);
        }
        batch
    }

    fn ns(rows: &RecordBatch) -> Vec<Option<i64>> {
        let n: &Int64Array = rows.column(1).as_primitive::<Int64Type>();
        n.iter().collect()
    }

    #[test]
    fn good_rows_decode_in_order_with_nothing_rejected() {
        let batch = buffered(vec![
            (0, record(5, "a", br#"{"k":"a","n":1}"#)),
            (0, record(6, "b", br#"{"k":"b","n":2}"#)),
            (1, record(9, "c", br#"{"k":"c","n":null}"#)),
        ]);
        let decoded =
            result_rows(&schema(), SinkMode::Append, &batch, &BTreeMap::new()).expect("decodes");
        assert_eq!(ns(&decoded.rows), vec![Some(1), Some(2), None]);
        assert!(decoded.rejected.is_empty());
    }

    #[test]
    fn records_that_are_not_one_row_are_rejected_with_their_position_and_the_rest_kept() {
        let batch = buffered(vec![
            (0, record(1, "a", br#"{"k":"a","n":1}"#)),
            (0, record(2, "x", b"not json")),
            (0, record(3, "y", br#"{"k":"y","n":1}{"k":"y","n":2}"#)),
            (1, record(4, "z", br#"{"k":"z","n":"#)),
            (1, record(5, "w", br#"7}"#)),
            (1, record(6, "v", b"")),
            (1, record(7, "u", br#"{"k":"u","n":"seven"}"#)),
            (2, record(8, "b", br#"{"k":"b","n":2}"#)),
        ]);
        let decoded =
            result_rows(&schema(), SinkMode::Append, &batch, &BTreeMap::new()).expect("decodes");
        assert_eq!(ns(&decoded.rows), vec![Some(1), Some(2)]);
        let rejected: Vec<(i32, i64)> = decoded
            .rejected
            .iter()
            .map(|d| (d.partition, d.original_offset))
            .collect();
        assert_eq!(
            rejected,
            vec![(0, 2), (0, 3), (1, 4), (1, 5), (1, 6), (1, 7)]
        );
        assert!(
            decoded
                .rejected
                .iter()
                .all(|d| d.error_type == "not_a_result_row")
        );
        assert_eq!(decoded.rejected[0].raw_message, b"not json");
    }

    #[test]
    fn upsert_keeps_each_keys_last_good_row_and_skipped_partitions_are_left_out() {
        let batch = buffered(vec![
            (0, record(1, "a", br#"{"k":"a","n":1}"#)),
            (0, record(2, "b", br#"{"k":"b","n":2}"#)),
            (0, record(3, "a", br#"{"k":"a","n":3}"#)),
            (0, record(4, "a", b"garbage")),
            (1, record(5, "c", br#"{"k":"c","n":5}"#)),
        ]);
        let skip = BTreeMap::from([(1, Some(6))]);
        let decoded = result_rows(&schema(), SinkMode::Upsert, &batch, &skip).expect("decodes");
        // The garbage record does not hide the key's last good row.
        assert_eq!(ns(&decoded.rows), vec![Some(2), Some(3)]);
        assert_eq!(decoded.rejected.len(), 1);
    }
}
