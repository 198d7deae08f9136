//! Avro records → Arrow `RecordBatch` for a job's declared schema.
//!
//! Two framings (`[source] format`):
//! - `avro-confluent`: magic byte 0, the writer schema's registry id (4 bytes, big-endian),
//!   the Avro binary body; writer schemas come from a registry by id;
//! - `avro`: bare Avro binary bodies, all written with the schema file `[source] schema`.
//!
//! arrow-avro decodes the bodies straight into Arrow columns (no per-record value trees); the
//! columns are then resolved to the job's fields once per writer schema
//! ([`super::avro_columns`]) and pass the checks every format shares.
//!
//! The decoder never does I/O. [`SourceDecoder::missing_writer_schemas`] names the ids it has
//! no answer for; the caller fetches them (with retries while the registry is down) and hands
//! them over with [`SourceDecoder::add_writer_schema`]. Answers are kept for the decoder's
//! life: an id names one schema forever in every registry. So the caller hands over "not
//! found" only once it is final: a registry replica that lags behind the one the producer
//! registered with says "not found" for a moment, and `sluice-stream` asks again for a while
//! (its `schemas` module) before it believes it.
//!
//! A record that breaks its decoder (truncated, corrupt, bytes left over) leaves arrow-avro's
//! builders mid-row, so that decoder is dropped and the good records since the last clean
//! point are decoded again in a fresh one: every good record is decoded at most twice, and a
//! bad one costs one rebuild.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use chrono::Utc;

use super::avro_columns::ColumnPlan;
use super::checks::{ColumnChecks, keep_rows, oversized, to_output};
use super::{DEFAULT_MAX_RECORD_BYTES, Decoded, RecordError, SourceDecoder};
use crate::error::{Error, Result, arrow_err};
use crate::spec::Job;
use crate::topics::DivertReason;

/// The Confluent wire format's header: magic byte 0 and a 4-byte schema id.
const CONFLUENT_HEADER: usize = 5;

/// The id a fixed-schema (`format = "avro"`) decoder files its one writer schema under.
const FIXED_SCHEMA_ID: u32 = 0;

/// Consecutive records written with one schema: (input index, bytes).
type Run<'r> = Vec<(usize, &'r [u8])>;

/// What a registry answered for a schema id, once the answer is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterSchemaLookup {
    /// The schema's JSON text (whether it parses and resolves is decided here).
    Found(String),
    /// The registry does not know the id (HTTP 404, Confluent's error code 40403): its
    /// records are `unknown_schema_id`.
    NotFound,
    /// The registry answered for the id, but not with an Avro schema (another `schemaType`,
    /// a body that is not a schema): why. Its records are `incompatible_schema`.
    Unusable(String),
}

/// One writer schema, ready to decode with or known to be unusable.
#[derive(Debug)]
enum Writer {
    Ready {
        schema: AvroSchema,
        plan: ColumnPlan,
    },
    Unusable {
        kind: DivertReason,
        field: Option<String>,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Confluent,
    Fixed,
}

/// Decodes one job's Avro records. Shared between threads: the writer schemas are behind a
/// lock that decoding only reads.
#[derive(Debug)]
pub struct AvroDecoder {
    job: Job,
    framing: Framing,
    output_schema: SchemaRef,
    checks: ColumnChecks,
    max_record_bytes: usize,
    writers: RwLock<HashMap<u32, Arc<Writer>>>,
}

impl AvroDecoder {
    /// `format = "avro-confluent"`: writer schemas are added as the registry answers.
    pub fn confluent(job: &Job) -> Result<AvroDecoder> {
        Ok(AvroDecoder::new(job, Framing::Confluent))
    }

    /// `format = "avro"`: every record is written with the schema in `[source] schema`. A
    /// file that is missing is an error; one that does not parse or resolve makes every
    /// record `incompatible_schema`, so the job still says why per record (and `sluice
    /// validate`-style checks can say it up front with [`AvroDecoder::writer_problem`]).
    pub fn with_schema_file(job: &Job) -> Result<AvroDecoder> {
        let path = job.schema_file().unwrap_or_else(|| PathBuf::from("?"));
        let text = std::fs::read_to_string(&path).map_err(|source| Error::ReadSchema {
            job: job.name().to_string(),
            file: path.clone(),
            source,
        })?;
        let decoder = AvroDecoder::new(job, Framing::Fixed);
        decoder.add(FIXED_SCHEMA_ID, WriterSchemaLookup::Found(text));
        Ok(decoder)
    }

    fn new(job: &Job, framing: Framing) -> AvroDecoder {
        AvroDecoder {
            job: job.clone(),
            framing,
            output_schema: job.source_schema(),
            checks: ColumnChecks::new(job),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            writers: RwLock::new(HashMap::new()),
        }
    }

    pub fn with_max_record_bytes(mut self, max: usize) -> AvroDecoder {
        self.max_record_bytes = max;
        self
    }

    /// Why the writer schema filed under `id` cannot decode records, if it cannot.
    pub fn writer_problem(&self, id: u32) -> Option<String> {
        match self.writer(id)?.as_ref() {
            Writer::Ready { .. } => None,
            Writer::Unusable { reason, .. } => Some(reason.clone()),
        }
    }

    fn writer(&self, id: u32) -> Option<Arc<Writer>> {
        let writers = self.writers.read().unwrap_or_else(|e| e.into_inner());
        writers.get(&id).cloned()
    }

    fn add(&self, id: u32, answer: WriterSchemaLookup) {
        let writer = match answer {
            WriterSchemaLookup::NotFound => Writer::Unusable {
                kind: DivertReason::UnknownSchemaId,
                field: None,
                reason: format!("schema id {id} is not in the schema registry"),
            },
            WriterSchemaLookup::Unusable(why) => Writer::Unusable {
                kind: DivertReason::IncompatibleSchema,
                field: None,
                reason: format!("{}: {why}", self.describe(id)),
            },
            WriterSchemaLookup::Found(text) => self.prepare(id, text),
        };
        let mut writers = self.writers.write().unwrap_or_else(|e| e.into_inner());
        writers.entry(id).or_insert_with(|| Arc::new(writer));
    }

    /// Parses a writer schema and resolves it to the job's fields, once.
    fn prepare(&self, id: u32, text: String) -> Writer {
        let unusable = |field: Option<String>, reason: String| Writer::Unusable {
            kind: DivertReason::IncompatibleSchema,
            field,
            reason: format!("{}: {reason}", self.describe(id)),
        };
        let schema = AvroSchema::new(text);
        let decoder = match build_decoder(id, &schema, 1) {
            Ok(decoder) => decoder,
            Err(e) => return unusable(None, format!("cannot decode with it: {e}")),
        };
        let writer_columns: Schema = decoder.schema().as_ref().clone();
        match ColumnPlan::resolve(&writer_columns, &self.job) {
            Ok(plan) => Writer::Ready { schema, plan },
            Err(unresolved) => unusable(Some(unresolved.field), unresolved.reason),
        }
    }

    fn describe(&self, id: u32) -> String {
        match self.framing {
            Framing::Confluent => format!("writer schema id {id}"),
            Framing::Fixed => match self.job.schema_file() {
                Some(file) => format!("writer schema {}", file.display()),
                None => "the writer schema".to_string(),
            },
        }
    }

    /// The record's schema id and body start, or why it has neither.
    fn frame(&self, record: &[u8]) -> std::result::Result<u32, String> {
        if self.framing == Framing::Fixed {
            return Ok(FIXED_SCHEMA_ID);
        }
        match record {
            [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            [] => Err("the record is empty; a Confluent-framed record starts with magic byte 0 and a 4-byte schema id".to_string()),
            [first, ..] if *first != 0 => Err(format!(
                "the record starts with byte 0x{first:02x}, not the Confluent magic byte 0 (is the producer using the registry's Avro serializer?)"
            )),
            short => Err(format!(
                "the record is {} bytes, shorter than the 5-byte Confluent header",
                short.len()
            )),
        }
    }

    /// The bytes arrow-avro's decoder reads for `record`: Confluent records as they are; bare
    /// bodies behind a header naming the fixed schema (arrow-avro frames every record).
    fn framed<'r>(&self, record: &'r [u8]) -> std::borrow::Cow<'r, [u8]> {
        match self.framing {
            Framing::Confluent => std::borrow::Cow::Borrowed(record),
            Framing::Fixed => {
                let mut framed = Vec::with_capacity(record.len() + CONFLUENT_HEADER);
                framed.push(0);
                framed.extend_from_slice(&FIXED_SCHEMA_ID.to_be_bytes());
                framed.extend_from_slice(record);
                std::borrow::Cow::Owned(framed)
            }
        }
    }

    /// Decodes one run of records sharing writer schema `id` into job columns.
    fn decode_run(
        &self,
        id: u32,
        schema: &AvroSchema,
        plan: &ColumnPlan,
        run: &[(usize, &[u8])],
        errors: &mut Vec<RecordError>,
        reference_ms: &dyn Fn(usize) -> i64,
    ) -> Result<Option<(RecordBatch, Vec<usize>)>> {
        let (pieces, rows) = self.decode_bodies(id, schema, run, errors)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let writer_schema = pieces[0].schema();
        let batch = concat_batches(&writer_schema, &pieces)
            .map_err(arrow_err("joining Avro record batches"))?;
        let (columns, bad_values) = plan.apply(batch.columns(), batch.num_rows());
        let decode_schema = Arc::new(Schema::new(
            self.output_schema
                .fields()
                .iter()
                .zip(&columns)
                .map(|(f, c)| {
                    f.as_ref()
                        .clone()
                        .with_data_type(c.data_type().clone())
                        .with_nullable(true)
                })
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(decode_schema, columns)
            .map_err(arrow_err("building the resolved Avro batch"))?;
        let (batch, rows) = drop_bad_values(batch, rows, bad_values, &self.checks, errors)?;
        let (batch, rows) = self.checks.validate(batch, rows, errors, reference_ms)?;
        Ok(Some((to_output(&self.output_schema, batch)?, rows)))
    }

    /// The Avro bodies of one run into writer-typed batches, restarting the decoder after
    /// each bad record (see the module docs).
    fn decode_bodies(
        &self,
        id: u32,
        schema: &AvroSchema,
        run: &[(usize, &[u8])],
        errors: &mut Vec<RecordError>,
    ) -> Result<(Vec<RecordBatch>, Vec<usize>)> {
        let mut pieces = Vec::new();
        let mut rows = Vec::with_capacity(run.len());
        let mut start = 0;
        while start < run.len() {
            let rest = &run[start..];
            let mut decoder = self.fresh(id, schema, rest.len())?;
            let mut bad = None;
            for (at, (index, record)) in rest.iter().enumerate() {
                let framed = self.framed(record);
                if let Err(reason) = decode_one(&mut decoder, &framed) {
                    bad = Some((at, *index, reason));
                    break;
                }
            }
            let good = match &bad {
                None => rest,
                Some((at, _, _)) => &rest[..*at],
            };
            if let Some((_, index, reason)) = &bad {
                errors.push(RecordError {
                    index: *index,
                    kind: DivertReason::MalformedAvro,
                    field: None,
                    reason: format!("{}: {reason}", self.describe(id)),
                });
                // The decoder holds a half-decoded row: decode the good ones again, alone.
                if !good.is_empty() {
                    decoder = self.fresh(id, schema, good.len())?;
                    for (_, record) in good {
                        let framed = self.framed(record);
                        decode_one(&mut decoder, &framed).map_err(|reason| Error::Decode {
                            job: self.job.name().to_string(),
                            message: format!(
                                "a record that decoded once failed the second time: {reason}"
                            ),
                        })?;
                    }
                }
            }
            if !good.is_empty() {
                self.flush_segment(id, schema, decoder, good, &mut pieces, &mut rows, errors)?;
            }
            start += match bad {
                None => rest.len(),
                Some((at, _, _)) => at + 1,
            };
        }
        Ok((pieces, rows))
    }

    /// Finishes a segment of records that each decoded. Finishing validates the strings of
    /// the whole segment at once, so when it fails the segment is decoded again record by
    /// record to find the ones at fault (rare: only bad batches pay for it).
    #[allow(clippy::too_many_arguments)]
    fn flush_segment(
        &self,
        id: u32,
        schema: &AvroSchema,
        mut decoder: Decoder,
        segment: &[(usize, &[u8])],
        pieces: &mut Vec<RecordBatch>,
        rows: &mut Vec<usize>,
        errors: &mut Vec<RecordError>,
    ) -> Result<()> {
        if let Ok(batch) = decoder.flush() {
            if let Some(batch) = batch {
                pieces.push(batch);
                rows.extend(segment.iter().map(|(index, _)| *index));
            }
            return Ok(());
        }
        for (index, record) in segment {
            let mut single = self.fresh(id, schema, 1)?;
            let framed = self.framed(record);
            let outcome = decode_one(&mut single, &framed)
                .and_then(|()| single.flush().map_err(|e| e.to_string()));
            match outcome {
                Ok(Some(batch)) => {
                    pieces.push(batch);
                    rows.push(*index);
                }
                Ok(None) => errors.push(RecordError {
                    index: *index,
                    kind: DivertReason::MalformedAvro,
                    field: None,
                    reason: format!("{}: the record decoded to no row", self.describe(id)),
                }),
                Err(reason) => errors.push(RecordError {
                    index: *index,
                    kind: DivertReason::MalformedAvro,
                    field: None,
                    reason: format!("{}: {reason}", self.describe(id)),
                }),
            }
        }
        Ok(())
    }

    fn fresh(&self, id: u32, schema: &AvroSchema, records: usize) -> Result<Decoder> {
        build_decoder(id, schema, records).map_err(|e| Error::Decode {
            job: self.job.name().to_string(),
            message: format!("{} decoded before but not now: {e}", self.describe(id)),
        })
    }
}

/// A decoder for records written with `schema`, filed under `id`, with room for `records`.
fn build_decoder(
    id: u32,
    schema: &AvroSchema,
    records: usize,
) -> std::result::Result<Decoder, arrow::error::ArrowError> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store.set(Fingerprint::Id(id), schema.clone())?;
    ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_batch_size(records.max(1) + 1)
        .build_decoder()
}

/// Feeds one framed record; `Err` when it is not exactly one complete record (the decoder is
/// then unusable).
fn decode_one(decoder: &mut Decoder, framed: &[u8]) -> std::result::Result<(), String> {
    let before = decoder.capacity();
    let consumed = decoder.decode(framed).map_err(|e| e.to_string())?;
    let decoded = before.saturating_sub(decoder.capacity());
    if consumed < framed.len() || decoded == 0 {
        return Err(format!(
            "truncated: the body ends after {} of its bytes without completing the record",
            framed.len().saturating_sub(CONFLUENT_HEADER)
        ));
    }
    if decoded > 1 {
        return Err("bytes are left over after the record".to_string());
    }
    Ok(())
}

/// Drops the rows holding a value the resolution could not convert.
fn drop_bad_values(
    batch: RecordBatch,
    rows: Vec<usize>,
    bad_values: Vec<super::avro_columns::BadValue>,
    checks: &ColumnChecks,
    errors: &mut Vec<RecordError>,
) -> Result<(RecordBatch, Vec<usize>)> {
    if bad_values.is_empty() {
        return Ok((batch, rows));
    }
    let mut keep = vec![true; batch.num_rows()];
    for bad in bad_values {
        if std::mem::replace(&mut keep[bad.row], false) {
            errors.push(RecordError {
                index: rows[bad.row],
                kind: DivertReason::SchemaViolation,
                field: Some(checks.name(bad.column).to_string()),
                reason: bad.reason,
            });
        }
    }
    keep_rows(batch, rows, keep)
}

impl SourceDecoder for AvroDecoder {
    fn schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    fn decode_stamped(&self, records: &[&[u8]], stamps_ms: &[Option<i64>]) -> Result<Decoded> {
        let now_ms = Utc::now().timestamp_millis();
        let reference = |index: usize| stamps_ms.get(index).copied().flatten().unwrap_or(now_ms);
        let mut errors = Vec::new();
        // Consecutive records with the same writer schema decode together.
        let mut runs: Vec<(u32, Run<'_>)> = Vec::new();
        for (index, &record) in records.iter().enumerate() {
            if let Some(error) = oversized(index, record, self.max_record_bytes) {
                errors.push(error);
                continue;
            }
            let id = match self.frame(record) {
                Ok(id) => id,
                Err(reason) => {
                    errors.push(RecordError {
                        index,
                        kind: DivertReason::MissingMagicByte,
                        field: None,
                        reason,
                    });
                    continue;
                }
            };
            match runs.last_mut() {
                Some((last, run)) if *last == id => run.push((index, record)),
                _ => runs.push((id, vec![(index, record)])),
            }
        }
        let mut batches = Vec::with_capacity(runs.len());
        let mut rows = Vec::with_capacity(records.len());
        for (id, run) in runs {
            let Some(writer) = self.writer(id) else {
                return Err(Error::MissingWriterSchema {
                    job: self.job.name().to_string(),
                    id,
                });
            };
            match writer.as_ref() {
                Writer::Unusable {
                    kind,
                    field,
                    reason,
                } => errors.extend(run.iter().map(|(index, _)| RecordError {
                    index: *index,
                    kind: *kind,
                    field: field.clone(),
                    reason: reason.clone(),
                })),
                Writer::Ready { schema, plan } => {
                    if let Some((batch, run_rows)) =
                        self.decode_run(id, schema, plan, &run, &mut errors, &reference)?
                    {
                        batches.push(batch);
                        rows.extend(run_rows);
                    }
                }
            }
        }
        errors.sort_by_key(|e| e.index);
        let batch = concat_batches(&self.output_schema, &batches)
            .map_err(arrow_err("joining decoded Avro batches"))?;
        Ok(Decoded {
            batch,
            rows,
            errors,
        })
    }

    fn missing_writer_schemas(&self, records: &[&[u8]]) -> Vec<u32> {
        if self.framing == Framing::Fixed {
            return Vec::new();
        }
        let writers = self.writers.read().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<u32> = records
            .iter()
            .filter_map(|record| self.frame(record).ok())
            .filter(|id| !writers.contains_key(id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    fn add_writer_schema(&self, id: u32, answer: WriterSchemaLookup) {
        self.add(id, answer);
    }
}
