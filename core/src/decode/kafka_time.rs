//! A column filled from each record's Kafka timestamp rather than read from the record: the
//! `__valid_from` of a `[[tables]]` entry without `valid_from` (see [`crate::spec_inputs`]).
//!
//! It wraps the input's own decoder (built for the fields alone), so every format gets the
//! column the same way, and appends it last, as [`Job::source_schema`] lists it. The value is
//! written to the raw table, so the batch layer later reads the very time the speed layer
//! used; a record without a timestamp (none of Kafka's are; file lines are refused for such
//! inputs by `lake load`) takes the wall clock.

use std::sync::Arc;

use arrow::array::{RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::SchemaRef;

use super::{Decoded, SourceDecoder, WriterSchemaLookup};
use crate::error::{Result, arrow_err};
use crate::pii::Redacted;
use crate::spec::{Job, UTC};

#[derive(Debug)]
pub(crate) struct KafkaTimeColumn {
    inner: Arc<dyn SourceDecoder>,
    schema: SchemaRef,
}

impl KafkaTimeColumn {
    /// `job`'s decoder when its source has a `kafka_time_field`: `build` makes the decoder of
    /// the fields alone (the job without that column).
    pub(crate) fn wrap(
        job: &Job,
        build: impl FnOnce(&Job) -> Result<Arc<dyn SourceDecoder>>,
    ) -> Result<Arc<dyn SourceDecoder>> {
        if job.spec.source.kafka_time_field.is_none() {
            return build(job);
        }
        let mut fields_only = job.clone();
        fields_only.spec.source.kafka_time_field = None;
        // The column is the record's own timestamp: nothing to be ahead of.
        fields_only.spec.source.max_future_skew = std::time::Duration::ZERO;
        Ok(Arc::new(KafkaTimeColumn {
            inner: build(&fields_only)?,
            schema: job.source_schema(),
        }))
    }
}

impl SourceDecoder for KafkaTimeColumn {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn decode_stamped(&self, records: &[&[u8]], stamps_ms: &[Option<i64>]) -> Result<Decoded> {
        let decoded = self.inner.decode_stamped(records, stamps_ms)?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let micros: Vec<i64> = decoded
            .rows
            .iter()
            .map(|&index| {
                let ms = stamps_ms.get(index).copied().flatten().unwrap_or(now_ms);
                ms.saturating_mul(1000)
            })
            .collect();
        let column = TimestampMicrosecondArray::from(micros).with_timezone(UTC);
        let mut columns = decoded.batch.columns().to_vec();
        columns.push(Arc::new(column));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(arrow_err("adding the Kafka time column"))?;
        Ok(Decoded { batch, ..decoded })
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
