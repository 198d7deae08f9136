//! JSON records → Arrow `RecordBatch` for a job's declared schema.
//!
//! The fast path hands the whole micro-batch to arrow-json's tape decoder (vectorised, no
//! `serde_json::Value` trees). Only when that fails does the decoder fall back to decoding
//! record by record, to say exactly which records are bad and why; the good ones still decode
//! together. Required (non-nullable) fields are checked on the decoded columns, not per record.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow_json::ReaderBuilder;

use crate::error::{Result, arrow_err};
use crate::flat_json::FlatDecoder;
use crate::spec::Job;

/// The default largest record accepted, in bytes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// Why one record could not become a row. The names are what the DLQ reports as `error type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordErrorKind {
    NotUtf8,
    MalformedJson,
    SchemaViolation,
    MissingField,
    Oversized,
}

impl RecordErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordErrorKind::NotUtf8 => "not_utf8",
            RecordErrorKind::MalformedJson => "malformed_json",
            RecordErrorKind::SchemaViolation => "schema_violation",
            RecordErrorKind::MissingField => "missing_field",
            RecordErrorKind::Oversized => "oversized",
        }
    }
}

/// One bad record: its index in the input, the field at fault when known, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub index: usize,
    pub kind: RecordErrorKind,
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

/// Decodes JSON records of one job. Cheap to share; decoding allocates per call.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    /// Every field nullable, timestamps in milliseconds: what arrow-json fills.
    lenient_schema: SchemaRef,
    output_schema: SchemaRef,
    required: Vec<usize>,
    max_record_bytes: usize,
    fast: Option<FlatDecoder>,
}

impl JsonDecoder {
    pub fn new(job: &Job) -> JsonDecoder {
        let decode_schema = job.decode_schema();
        let lenient = Schema::new(
            decode_schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        let output_schema = job.source_schema();
        let required = (0..output_schema.fields().len())
            .filter(|&i| !output_schema.field(i).is_nullable())
            .collect();
        let lenient = Arc::new(lenient);
        JsonDecoder {
            fast: FlatDecoder::new(lenient.clone()),
            lenient_schema: lenient,
            output_schema,
            required,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    pub fn with_max_record_bytes(mut self, max: usize) -> JsonDecoder {
        self.max_record_bytes = max;
        self
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// Decodes `records` (one JSON object each). Never fails because of a record's content:
    /// bad records are reported in [`Decoded::errors`].
    pub fn decode<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Decoded> {
        let mut errors = Vec::new();
        let mut candidates: Vec<usize> = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            match self.precheck(index, record.as_ref()) {
                Ok(()) => candidates.push(index),
                Err(e) => errors.push(e),
            }
        }
        let fast = self
            .fast
            .as_ref()
            .and_then(|f| f.decode(records, &candidates));
        let (batch, rows) = match fast.or_else(|| self.decode_together(records, &candidates)) {
            Some(batch) => (batch, candidates),
            None => self.decode_one_by_one(records, &candidates, &mut errors)?,
        };
        let (batch, rows) = self.drop_missing_required(batch, rows, &mut errors)?;
        errors.sort_by_key(|e| e.index);
        Ok(Decoded {
            batch: self.to_output(batch)?,
            rows,
            errors,
        })
    }

    fn precheck(&self, index: usize, record: &[u8]) -> Result<(), RecordError> {
        let fail = |kind, reason: String| RecordError {
            index,
            kind,
            field: None,
            reason,
        };
        if record.len() > self.max_record_bytes {
            return Err(fail(
                RecordErrorKind::Oversized,
                format!(
                    "{} bytes, the limit is {}",
                    record.len(),
                    self.max_record_bytes
                ),
            ));
        }
        if let Err(e) = std::str::from_utf8(record) {
            return Err(fail(
                RecordErrorKind::NotUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            ));
        }
        Ok(())
    }

    /// The fast path: all candidates through one decoder. `None` if any of them is bad.
    fn decode_together<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        candidates: &[usize],
    ) -> Option<RecordBatch> {
        let total: usize = candidates
            .iter()
            .map(|&i| records[i].as_ref().len() + 1)
            .sum();
        let mut buffer = Vec::with_capacity(total);
        for &i in candidates {
            buffer.extend_from_slice(records[i].as_ref());
            buffer.push(b'\n');
        }
        let batch = self.decode_buffer(&buffer, candidates.len().max(1)).ok()?;
        (batch.num_rows() == candidates.len()).then_some(batch)
    }

    fn decode_buffer(
        &self,
        buffer: &[u8],
        batch_size: usize,
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut decoder = ReaderBuilder::new(self.lenient_schema.clone())
            .with_batch_size(batch_size + 1)
            .build_decoder()?;
        let mut offset = 0;
        while offset < buffer.len() {
            let read = decoder.decode(&buffer[offset..])?;
            if read == 0 {
                break;
            }
            offset += read;
        }
        Ok(decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.lenient_schema.clone())))
    }

    fn decode_one_by_one<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        candidates: &[usize],
        errors: &mut Vec<RecordError>,
    ) -> Result<(RecordBatch, Vec<usize>)> {
        let mut good = Vec::with_capacity(candidates.len());
        for &index in candidates {
            match self.decode_buffer(records[index].as_ref(), 1) {
                Ok(batch) if batch.num_rows() == 1 => good.push(index),
                Ok(batch) => errors.push(RecordError {
                    index,
                    kind: RecordErrorKind::MalformedJson,
                    field: None,
                    reason: format!(
                        "expected one JSON object, found {} values",
                        batch.num_rows()
                    ),
                }),
                Err(e) => errors.push(classify(index, &e)),
            }
        }
        match self.decode_together(records, &good) {
            Some(batch) => Ok((batch, good)),
            None => Err(crate::Error::Arrow {
                during: "decoding records that decoded one by one",
                source: Box::new(arrow::error::ArrowError::JsonError(
                    "records decode alone but not together".to_string(),
                )),
            }),
        }
    }

    fn drop_missing_required(
        &self,
        batch: RecordBatch,
        rows: Vec<usize>,
        errors: &mut Vec<RecordError>,
    ) -> Result<(RecordBatch, Vec<usize>)> {
        let mut keep = vec![true; batch.num_rows()];
        for &col in &self.required {
            let column = batch.column(col);
            if column.null_count() == 0 {
                continue;
            }
            for (row, keep_row) in keep.iter_mut().enumerate() {
                if *keep_row && column.is_null(row) {
                    *keep_row = false;
                    let name = self.output_schema.field(col).name().clone();
                    errors.push(RecordError {
                        index: rows[row],
                        kind: RecordErrorKind::MissingField,
                        reason: format!("required field `{name}` is missing or null"),
                        field: Some(name),
                    });
                }
            }
        }
        if keep.iter().all(|k| *k) {
            return Ok((batch, rows));
        }
        let mask = BooleanArray::from(keep.clone());
        let batch =
            filter_record_batch(&batch, &mask).map_err(arrow_err("dropping bad records"))?;
        let rows = rows
            .into_iter()
            .zip(keep)
            .filter_map(|(r, k)| k.then_some(r))
            .collect();
        Ok((batch, rows))
    }

    /// Casts to the output types (timestamps to microseconds) and applies non-nullability.
    fn to_output(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let columns = batch
            .columns()
            .iter()
            .zip(self.output_schema.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    cast(column, field.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(arrow_err("casting decoded columns"))?;
        RecordBatch::try_new(self.output_schema.clone(), columns)
            .map_err(arrow_err("building the decoded batch"))
    }
}

fn classify(index: usize, error: &arrow::error::ArrowError) -> RecordError {
    let message = match error {
        arrow::error::ArrowError::JsonError(m) => m.clone(),
        other => other.to_string(),
    };
    let marker = "whilst decoding field '";
    let field = message.find(marker).and_then(|start| {
        let rest = &message[start + marker.len()..];
        rest.find('\'').map(|end| rest[..end].to_string())
    });
    let kind = if field.is_some() {
        RecordErrorKind::SchemaViolation
    } else {
        RecordErrorKind::MalformedJson
    };
    let reason = message.rsplit(": ").next().unwrap_or(&message).to_string();
    RecordError {
        index,
        kind,
        field,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, TimestampMicrosecondArray};
    use std::path::Path;

    fn job() -> Job {
        Job::from_toml(
            r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [
  { name = "id", type = "string", nullable = false },
  { name = "amount", type = "float64" },
  { name = "ts", type = "timestamp" },
]
[transform]
sql = "SELECT id FROM t"
"#,
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn decodes_epoch_millis_and_rfc3339() {
        let decoder = JsonDecoder::new(&job());
        let out = decoder
            .decode(&[
                r#"{"id":"a","amount":1.5,"ts":1000}"#,
                r#"{"id":"b","ts":"1970-01-01T00:00:02Z","extra":true}"#,
            ])
            .unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let ts = out
            .batch
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[1_000_000, 2_000_000]);
        let amount = out
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert!(amount.is_null(1));
        assert_eq!(out.rows, vec![0, 1]);
    }

    #[test]
    fn bad_records_are_reported_and_the_rest_proceed() {
        let decoder = JsonDecoder::new(&job()).with_max_record_bytes(200);
        let big = format!(r#"{{"id":"{}","ts":1}}"#, "x".repeat(300));
        let records: Vec<Vec<u8>> = vec![
            br#"{"id":"ok1","ts":1}"#.to_vec(),
            br#"{"id":"bad","ts":1"#.to_vec(),
            br#"{"id":"wrong","amount":"lots","ts":1}"#.to_vec(),
            br#"{"amount":1.0,"ts":1}"#.to_vec(),
            br#"{"id":"no time"}"#.to_vec(),
            vec![b'{', 0xff, b'}'],
            big.into_bytes(),
            br#"{"id":"ok2","ts":2}"#.to_vec(),
        ];
        let out = decoder.decode(&records).unwrap();
        assert_eq!(out.rows, vec![0, 7]);
        assert_eq!(out.batch.num_rows(), 2);
        let kinds: Vec<_> = out
            .errors
            .iter()
            .map(|e| (e.index, e.kind, e.field.clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (1, RecordErrorKind::MalformedJson, None),
                (
                    2,
                    RecordErrorKind::SchemaViolation,
                    Some("amount".to_string())
                ),
                (3, RecordErrorKind::MissingField, Some("id".to_string())),
                (4, RecordErrorKind::MissingField, Some("ts".to_string())),
                (5, RecordErrorKind::NotUtf8, None),
                (6, RecordErrorKind::Oversized, None),
            ]
        );
    }

    #[test]
    fn fast_path_decodes_exactly_like_arrow_json() {
        let decoder = JsonDecoder::new(&job());
        let records = [
            r#"{"id":"a\"b\\c\u00e9\ud83d\ude00\n","amount":-0.0,"ts":1000}"#,
            r#" { "id" : "plain" , "amount" : 1e3 , "ts" : "2024-05-01T10:00:00.123Z", "nested": {"x": [1, {"y": null}], "z": "}"} } "#,
            r#"{"id":"n","amount":null,"ts":"2024-05-01 10:00:00","flag":true}"#,
            r#"{"ts":5,"id":"reordered","amount":12.345678901234567}"#,
            r#"{"id":"", "ts": -1500}"#,
        ];
        let all: Vec<usize> = (0..records.len()).collect();
        let fast = decoder
            .fast
            .as_ref()
            .unwrap()
            .decode(&records, &all)
            .expect("fast path handles these");
        let general = decoder.decode_together(&records, &all).unwrap();
        assert_eq!(fast, general);
        for bail in [
            r#"{"id":1,"ts":1}"#,
            r#"{"id":"a","ts":1.5}"#,
            r#"{"id":"a","ts":1,"id":"b"}"#,
            r#"{"id":"a","ts":01}"#,
            r#"{"id":"a","ts":1} x"#,
        ] {
            assert!(
                decoder
                    .fast
                    .as_ref()
                    .unwrap()
                    .decode(&[bail], &[0])
                    .is_none(),
                "{bail}"
            );
        }
    }

    #[test]
    fn two_objects_in_one_record_is_an_error() {
        let decoder = JsonDecoder::new(&job());
        let out = decoder
            .decode(&[
                r#"{"id":"a","ts":1} {"id":"b","ts":2}"#,
                r#"{"id":"c","ts":3}"#,
            ])
            .unwrap();
        assert_eq!(out.rows, vec![1]);
        assert_eq!(out.errors[0].index, 0);
    }
}
