//! A column filled from each record's Kafka timestamp rather than read from the record: the
//! `__valid_from` of a `[[tables]]` entry without `valid_from` (see [`crate::spec_inputs`]).
//!
//! It wraps the input's own decoder (built for the fields alone), so every format gets the
//! column the same way, and appends it last, as [`Job::source_schema`] lists it. The value is
//! written to the raw table, so the batch layer later reads the very time the speed layer
//! used; a record without a timestamp (none of Kafka's are; file lines are refused for such
//! inputs by `lake load`) takes the wall clock. A producer sets its records' timestamps, so one
//! outside the supported time range is a bad record (`schema_violation` on the column), as an
//! out-of-range event time is.

use std::sync::Arc;

use arrow::array::{RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::SchemaRef;

use super::checks::{keep_rows, out_of_range, timestamp_in_range_ms};
use super::{Decoded, RecordError, SourceDecoder, WriterSchemaLookup};
use crate::error::{Result, arrow_err};
use crate::pii::Redacted;
use crate::spec::{Job, UTC};
use crate::topics::DivertReason;

#[derive(Debug)]
pub(crate) struct KafkaTimeColumn {
    inner: Arc<dyn SourceDecoder>,
    schema: SchemaRef,
    /// The column's name, for errors.
    field: String,
}

impl KafkaTimeColumn {
    /// `job`'s decoder when its source has a `kafka_time_field`: `build` makes the decoder of
    /// the fields alone (the job without that column).
    pub(crate) fn wrap(
        job: &Job,
        build: impl FnOnce(&Job) -> Result<Arc<dyn SourceDecoder>>,
    ) -> Result<Arc<dyn SourceDecoder>> {
        let Some(field) = job.spec.source.kafka_time_field.clone() else {
            return build(job);
        };
        let mut fields_only = job.clone();
        fields_only.spec.source.kafka_time_field = None;
        // The column is the record's own timestamp: nothing to be ahead of.
        fields_only.spec.source.max_future_skew = std::time::Duration::ZERO;
        Ok(Arc::new(KafkaTimeColumn {
            inner: build(&fields_only)?,
            schema: job.source_schema(),
            field,
        }))
    }
}

impl SourceDecoder for KafkaTimeColumn {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn decode_stamped(&self, records: &[&[u8]], stamps_ms: &[Option<i64>]) -> Result<Decoded> {
        let Decoded {
            batch,
            rows,
            mut errors,
        } = self.inner.decode_stamped(records, stamps_ms)?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let stamp = |index: usize| stamps_ms.get(index).copied().flatten().unwrap_or(now_ms);
        let keep: Vec<bool> = rows
            .iter()
            .map(|&index| timestamp_in_range_ms(stamp(index)))
            .collect();
        let (batch, rows) = if keep.contains(&false) {
            for (&index, _) in rows.iter().zip(&keep).filter(|(_, kept)| !**kept) {
                errors.push(RecordError {
                    index,
                    kind: DivertReason::SchemaViolation,
                    field: Some(self.field.clone()),
                    reason: format!(
                        "the record's timestamp: {}",
                        out_of_range(stamp(index), "ms")
                    ),
                });
            }
            errors.sort_by_key(|e| e.index);
            keep_rows(batch, rows, keep)?
        } else {
            (batch, rows)
        };
        let micros: Vec<i64> = rows.iter().map(|&index| stamp(index) * 1000).collect();
        let column = TimestampMicrosecondArray::from(micros).with_timezone(UTC);
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(column));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(arrow_err("adding the Kafka time column"))?;
        Ok(Decoded {
            batch,
            rows,
            errors,
        })
    }

    fn missing_writer_schemas(&self, records: &[&[u8]]) -> Vec<u32> {
        self.inner.missing_writer_schemas(records)
    }

    fn add_writer_schema(&self, id: u32, answer: WriterSchemaLookup) {
        self.inner.add_writer_schema(id, answer);
    }

    fn redact<'a>(&self, key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> Redacted<'a> {
        self.inner.redact(key, payload)
    }
}
