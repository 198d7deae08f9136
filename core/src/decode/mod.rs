//! Source records → Arrow `RecordBatch` of a job's declared schema, whatever the wire format.
//!
//! Every layer that reads source records (the speed layer, the raw-lake sink, `lake load`,
//! the benches) holds a [`SourceDecoder`] made by [`for_job`] and nothing else, so a format is
//! added once and every layer rejects exactly the same records. The formats:
//!
//! - [`json`]: one JSON object per record (the default);
//! - [`avro`]: Avro binary, framed the Confluent way (schema registry ids) or plain with a
//!   fixed writer schema, resolved column by column to the job's schema ([`avro_columns`]).
//!
//! Whatever the format, the decoded columns then pass the same checks ([`checks`]): required
//! fields present, timestamps and dates within chrono's range, finite floats, and event times
//! not too far ahead of the record's own timestamp. A bad record never fails a micro-batch: it
//! comes back as a [`RecordError`] whose [`DivertReason`] is its DLQ error type.

pub mod avro;
mod avro_columns;
#[cfg(test)]
mod avro_tests;
mod checks;
pub mod json;
mod kafka_time;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::error::Result;
use crate::pii::{PiiProtection, Redacted};
use crate::spec::{Job, SourceFormat};
use crate::topics::DivertReason;

pub use avro::{AvroDecoder, WriterSchemaLookup};
pub use json::JsonDecoder;
pub use json::MAX_NESTING;

/// The default largest record accepted, in bytes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// One bad record: its index in the input, the field at fault when known, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub index: usize,
    pub kind: DivertReason,
    pub field: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record {}: {}", self.index, self.kind.as_str())?;
        if let Some(field) = &self.field {
            write!(f, " (field `{field}`)")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The good rows of a micro-batch, which input record each came from, and the bad records.
#[derive(Debug)]
pub struct Decoded {
    pub batch: RecordBatch,
    /// `rows[i]` is the input index of batch row `i`.
    pub rows: Vec<usize>,
    pub errors: Vec<RecordError>,
}

/// Decodes the records of one job's source into its source schema ([`Job::source_schema`]).
///
/// Rules every implementation keeps:
/// - `decode_stamped` fails only when the decoder itself is broken, never because of a
///   record's content: a bad record is one [`RecordError`] in [`Decoded::errors`], and every
///   input index is either a row (in order) or an error, never both, never neither;
/// - the same records with the same stamps give the same rows and errors, in any micro-batch
///   split (the speed layer and the raw-lake sink batch differently and must agree);
/// - decoders whose records name writer schemas kept elsewhere (a registry) never fetch them:
///   [`SourceDecoder::missing_writer_schemas`] says which are needed and the caller, which
///   owns the network and the retries, hands them over with
///   [`SourceDecoder::add_writer_schema`]. A record whose schema is still missing is an error
///   ([`DivertReason::UnknownSchemaId`]) only once the registry has said, finally, that it
///   does not exist; [`DivertReason::IncompatibleSchema`] once it answered with no Avro schema.
pub trait SourceDecoder: Send + Sync + std::fmt::Debug {
    /// The schema of every decoded batch.
    fn schema(&self) -> &SchemaRef;

    /// Decodes `records`; `stamps_ms[i]` is record `i`'s Kafka timestamp, the time its event
    /// time may be at most `max_future_skew` ahead of (missing or `None`: the wall clock).
    fn decode_stamped(&self, records: &[&[u8]], stamps_ms: &[Option<i64>]) -> Result<Decoded>;

    /// [`SourceDecoder::decode_stamped`] against the wall clock (records from files).
    fn decode_records(&self, records: &[&[u8]]) -> Result<Decoded> {
        self.decode_stamped(records, &[])
    }

    /// The registry ids named by `records` that this decoder has no answer for yet.
    fn missing_writer_schemas(&self, _records: &[&[u8]]) -> Vec<u32> {
        Vec::new()
    }

    /// The registry's final answer for schema `id`: its text, that it does not exist, or
    /// why what it holds is no Avro schema ([`WriterSchemaLookup`]).
    fn add_writer_schema(&self, _id: u32, _answer: WriterSchemaLookup) {}

    /// What may be written out of a record this decoder read, when it is diverted (a dead
    /// letter, a late record, a rejected line): the record itself, or with its PII protected
    /// ([`crate::pii::PiiProtection::redact`]).
    fn redact<'a>(&self, key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> Redacted<'a> {
        Redacted::unchanged(key, payload)
    }
}

/// The decoder of `job`'s `[source] format`, accepting records up to `max_record_bytes`,
/// with the job's PII policies applied to what it decodes ([`protected`]) and its Kafka time
/// column, if any, filled ([`kafka_time`]).
pub fn for_job(job: &Job, max_record_bytes: usize) -> Result<Arc<dyn SourceDecoder>> {
    kafka_time::KafkaTimeColumn::wrap(job, |job| {
        let decoder: Arc<dyn SourceDecoder> = match job.spec.source.format {
            SourceFormat::Json => {
                Arc::new(JsonDecoder::new(job).with_max_record_bytes(max_record_bytes))
            }
            SourceFormat::AvroConfluent => {
                Arc::new(AvroDecoder::confluent(job)?.with_max_record_bytes(max_record_bytes))
            }
            SourceFormat::Avro => Arc::new(
                AvroDecoder::with_schema_file(job)?.with_max_record_bytes(max_record_bytes),
            ),
        };
        protected(job, decoder)
    })
}

/// `decoder` with `job`'s PII policies applied to every batch it decodes and scrubbed from
/// its error messages ([`crate::pii`]); `decoder` itself when no field is tagged. Every
/// decoder a layer reads source records with comes through here.
pub fn protected(job: &Job, decoder: Arc<dyn SourceDecoder>) -> Result<Arc<dyn SourceDecoder>> {
    Ok(protect_with(decoder, PiiProtection::for_job(job)?))
}

/// `decoder` under `protection`, if any.
pub fn protect_with(
    decoder: Arc<dyn SourceDecoder>,
    protection: Option<PiiProtection>,
) -> Arc<dyn SourceDecoder> {
    match protection {
        Some(protection) => Arc::new(ProtectedDecoder {
            inner: decoder,
            protection,
        }),
        None => decoder,
    }
}

/// A decoder whose output never holds a tagged field's value.
#[derive(Debug)]
struct ProtectedDecoder {
    inner: Arc<dyn SourceDecoder>,
    protection: PiiProtection,
}

impl SourceDecoder for ProtectedDecoder {
    fn schema(&self) -> &SchemaRef {
        self.inner.schema()
    }

    fn decode_stamped(&self, records: &[&[u8]], stamps_ms: &[Option<i64>]) -> Result<Decoded> {
        let mut decoded = self.inner.decode_stamped(records, stamps_ms)?;
        decoded.batch = self.protection.protect_batch(&decoded.batch)?;
        for error in &mut decoded.errors {
            if let Some(record) = records.get(error.index) {
                self.protection.scrub_error(error, record);
            }
        }
        Ok(decoded)
    }

    fn missing_writer_schemas(&self, records: &[&[u8]]) -> Vec<u32> {
        self.inner.missing_writer_schemas(records)
    }

    fn add_writer_schema(&self, id: u32, answer: WriterSchemaLookup) {
        self.inner.add_writer_schema(id, answer);
    }

    fn redact<'a>(&self, key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> Redacted<'a> {
        self.protection.redact(key, payload)
    }
}

impl SourceDecoder for JsonDecoder {
    fn schema(&self) -> &SchemaRef {
        JsonDecoder::schema(self)
    }

    fn decode_stamped(&self, records: &[&[u8]], stamps_ms: &[Option<i64>]) -> Result<Decoded> {
        JsonDecoder::decode_stamped(self, records, stamps_ms)
    }
}
