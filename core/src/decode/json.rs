//! JSON records → Arrow `RecordBatch` for a job's declared schema (`format = "json"`).
//!
//! The fast path hands the whole micro-batch to arrow-json's tape decoder (vectorised, no
//! `serde_json::Value` trees). Only when that fails does the decoder fall back to decoding
//! record by record, to say exactly which records are bad and why; the good ones still decode
//! together. Required (non-nullable) fields are checked on the decoded columns, not per record.
//!
//! What decodes then passes the column checks every format shares ([`super::checks`]). Fields
//! are matched by their source names (`from`) and come out under the job's names.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_json::ReaderBuilder;
use chrono::Utc;

use super::checks::{ColumnChecks, oversized, to_output};
use super::{DEFAULT_MAX_RECORD_BYTES, Decoded, RecordError};
use crate::error::{Result, arrow_err};
use crate::flat_json::FlatDecoder;
use crate::json_escapes::decode_surrogate_pairs;
use crate::spec::Job;
use crate::topics::DivertReason;

/// Decodes JSON records of one job. Cheap to share; decoding allocates per call.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    /// Every field nullable, timestamps in milliseconds: what arrow-json fills.
    lenient_schema: SchemaRef,
    output_schema: SchemaRef,
    checks: ColumnChecks,
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
        let lenient = Arc::new(lenient);
        JsonDecoder {
            fast: FlatDecoder::new(lenient.clone()),
            lenient_schema: lenient,
            output_schema: job.source_schema(),
            checks: ColumnChecks::new(job),
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

    /// Decodes `records` (one JSON object each), judging clock skew against the wall clock
    /// (records from files). Never fails because of a record's content: bad records are
    /// reported in [`Decoded::errors`].
    pub fn decode<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Decoded> {
        self.decode_stamped(records, &[])
    }

    /// [`JsonDecoder::decode`] for records that carry a timestamp (Kafka's, ms since the
    /// epoch): `stamps_ms[i]` is record `i`'s, the time its event time may be at most
    /// `max_future_skew` ahead of. A missing or `None` stamp means the wall clock. The speed
    /// layer and the raw-lake sink pass the same stamps, so they reject the same records.
    pub fn decode_stamped<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        stamps_ms: &[Option<i64>],
    ) -> Result<Decoded> {
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
        let (batch, rows) = match fast {
            Some(batch) => (batch, candidates),
            None => {
                let candidates = self.strict(records, candidates, &mut errors);
                match self.decode_together(records, &candidates) {
                    Some(batch) => (batch, candidates),
                    None => self.decode_one_by_one(records, &candidates, &mut errors)?,
                }
            }
        };
        let now_ms = Utc::now().timestamp_millis();
        let reference = |index: usize| stamps_ms.get(index).copied().flatten().unwrap_or(now_ms);
        let (batch, rows) = self.checks.validate(batch, rows, &mut errors, reference)?;
        errors.sort_by_key(|e| e.index);
        Ok(Decoded {
            batch: to_output(&self.output_schema, batch)?,
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
        if let Some(error) = oversized(index, record, self.max_record_bytes) {
            return Err(error);
        }
        if let Err(e) = std::str::from_utf8(record) {
            return Err(fail(
                DivertReason::NotUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            ));
        }
        Ok(())
    }

    /// What arrow-json lets through (or cannot survive) but the fast path (strict by
    /// construction) refuses, so a record is judged the same whichever path its micro-batch
    /// takes: nesting deeper than [`MAX_NESTING`], JSON syntax by the
    /// RFC (arrow-json skips stray commas and takes raw control characters in strings), and
    /// integer fields holding integers that fit (arrow-json truncates `1.5` and rounds
    /// `-9223372036854775809` through a float). Only batches the fast path gave up on pay
    /// for it.
    fn strict<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        candidates: Vec<usize>,
        errors: &mut Vec<RecordError>,
    ) -> Vec<usize> {
        let mut good = Vec::with_capacity(candidates.len());
        for index in candidates {
            match self.strict_record(records[index].as_ref()) {
                Ok(()) => good.push(index),
                Err((kind, field, reason)) => errors.push(RecordError {
                    index,
                    kind,
                    field,
                    reason,
                }),
            }
        }
        good
    }

    fn strict_record(&self, record: &[u8]) -> Result<(), (DivertReason, Option<String>, String)> {
        // arrow-json formats its errors recursively: a deep record would overflow the stack.
        // (The fast path refuses nesting beyond 64 levels without recursing that deep.)
        if let Some(at) = nesting_beyond(record, MAX_NESTING) {
            return Err((
                DivertReason::MalformedJson,
                None,
                format!("nested more than {MAX_NESTING} levels deep at byte {at}"),
            ));
        }
        let value: serde_json::Value = match serde_json::from_slice(record) {
            Ok(value) => value,
            // `1e999` is valid JSON that serde_json will not hold; the column checks judge it.
            Err(e) if e.to_string().starts_with("number out of range") => return Ok(()),
            Err(e) => return Err((DivertReason::MalformedJson, None, e.to_string())),
        };
        let Some(object) = value.as_object() else {
            return Ok(());
        };
        for field in self.lenient_schema.fields() {
            let Some(serde_json::Value::Number(number)) = object.get(field.name()) else {
                continue;
            };
            // An integer written as a float (`1e3`, `-0`) is taken when its value is exact: below
            // 2^53 no float rounding can have changed it.
            let exact = number.as_i64().or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
                    .map(|f| f as i64)
            });
            let fits = match field.data_type() {
                DataType::Int64 => exact.is_some(),
                DataType::Int32 => exact.is_some_and(|n| i32::try_from(n).is_ok()),
                _ => true,
            };
            if !fits {
                return Err((
                    DivertReason::SchemaViolation,
                    Some(field.name().clone()),
                    format!("{number} is not an integer that fits {}", field.data_type()),
                ));
            }
        }
        Ok(())
    }

    /// The fast path: all candidates through one decoder. `None` if any of them is bad, or if
    /// any record is not exactly one complete JSON value of its own (`""` beside `{..} {..}`
    /// would otherwise give the right row count with rows shifted between records).
    fn decode_together<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        candidates: &[usize],
    ) -> Option<RecordBatch> {
        let mut decoder = ReaderBuilder::new(self.lenient_schema.clone())
            .with_batch_size(candidates.len().max(1) + 1)
            .build_decoder()
            .ok()?;
        for (done, &i) in candidates.iter().enumerate() {
            let record = decode_surrogate_pairs(records[i].as_ref());
            let mut offset = 0;
            while offset < record.len() {
                let read = decoder.decode(&record[offset..]).ok()?;
                if read == 0 {
                    return None;
                }
                offset += read;
            }
            // The newline ends a value at the record's end (a bare number, say).
            if decoder.decode(b"\n").ok()? != 1 || decoder.has_partial_record() {
                return None;
            }
            if decoder.len() != done + 1 {
                return None;
            }
        }
        let batch = decoder
            .flush()
            .ok()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.lenient_schema.clone()));
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
        let mut singles = Vec::with_capacity(candidates.len());
        for &index in candidates {
            match self.decode_buffer(&decode_surrogate_pairs(records[index].as_ref()), 1) {
                Ok(batch) if batch.num_rows() == 1 => {
                    good.push(index);
                    singles.push(batch);
                }
                Ok(batch) => errors.push(RecordError {
                    index,
                    kind: DivertReason::MalformedJson,
                    field: None,
                    reason: format!(
                        "expected one JSON object, found {} values",
                        batch.num_rows()
                    ),
                }),
                Err(e) => errors.push(classify(index, &e)),
            }
        }
        if let Some(batch) = self.decode_together(records, &good) {
            return Ok((batch, good));
        }
        // Records that decode alone but not together (never seen, but no record may stop the
        // pipeline): the rows decoded one by one, concatenated.
        let batch = arrow::compute::concat_batches(&self.lenient_schema, &singles)
            .map_err(arrow_err("joining records decoded one by one"))?;
        Ok((batch, good))
    }
}

/// How deep arrays and objects may nest in a record. arrow-json formats some errors with one
/// stack frame per level, so a 1 MiB record of `[` could overflow a thread's stack.
pub const MAX_NESTING: usize = 100;

/// The byte offset where `record` first nests deeper than `limit`, if it does (brackets
/// inside strings do not count).
fn nesting_beyond(record: &[u8], limit: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (at, &b) in record.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(at);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
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
        DivertReason::SchemaViolation
    } else {
        DivertReason::MalformedJson
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
    use arrow::array::{Array, Float64Array, TimestampMicrosecondArray};
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
                (1, DivertReason::MalformedJson, None),
                (2, DivertReason::SchemaViolation, Some("amount".to_string())),
                (3, DivertReason::MissingField, Some("id".to_string())),
                (4, DivertReason::MissingField, Some("ts".to_string())),
                (5, DivertReason::NotUtf8, None),
                (6, DivertReason::Oversized, None),
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

    fn kinds(out: &Decoded) -> Vec<(usize, DivertReason, Option<String>)> {
        out.errors
            .iter()
            .map(|e| (e.index, e.kind, e.field.clone()))
            .collect()
    }

    #[test]
    fn values_outside_their_types_range_are_schema_violations_naming_the_field() {
        let mut unguarded = job();
        unguarded.spec.source.max_future_skew = std::time::Duration::ZERO;
        let decoder = JsonDecoder::new(&unguarded);
        let records = [
            r#"{"id":"max","ts":9223372036854775807}"#,
            r#"{"id":"huge","ts":99999999999999999999}"#,
            r#"{"id":"min","ts":-9223372036854775808}"#,
            r#"{"id":"inf","amount":1e999,"ts":1}"#,
            r#"{"id":"-inf","amount":-1e999,"ts":1}"#,
            r#"{"id":"edge","amount":1.7976931348623157e308,"ts":8210266876799999}"#,
        ];
        let out = decoder.decode(&records).unwrap();
        let violations: Vec<_> = kinds(&out)
            .into_iter()
            .filter(|(_, kind, _)| *kind == DivertReason::SchemaViolation)
            .map(|(index, _, field)| (index, field))
            .collect();
        let field = |f: &str| Some(f.to_string());
        for expected in [
            (0, field("ts")),
            (1, field("ts")),
            (2, field("ts")),
            (3, field("amount")),
            (4, field("amount")),
        ] {
            assert!(
                violations.contains(&expected),
                "{expected:?} in {:?}",
                out.errors
            );
        }
        // The largest representable values still decode (and the batch builds: no null in
        // the non-null event time, which is what stopped the daemon before).
        assert!(out.rows.contains(&5), "{:?}", out.errors);
        assert!(out.errors.iter().all(|e| e.index != 5));
    }

    #[test]
    fn event_times_too_far_ahead_of_their_record_are_clock_skew() {
        let decoder = JsonDecoder::new(&job());
        let stamp = 1_714_557_600_000;
        let at = |ms: i64| format!(r#"{{"id":"x","ts":{ms}}}"#);
        let records = [
            at(stamp),
            at(stamp + 3_600_000),
            at(stamp + 3_600_001),
            at(stamp + 2 * 3_600_000),
            at(55_000_000_000_000),
        ];
        let stamps = vec![Some(stamp); records.len()];
        let out = decoder.decode_stamped(&records, &stamps).unwrap();
        assert_eq!(out.rows, vec![0, 1]);
        let ts = Some("ts".to_string());
        assert_eq!(
            kinds(&out),
            vec![
                (2, DivertReason::ClockSkew, ts.clone()),
                (3, DivertReason::ClockSkew, ts.clone()),
                (4, DivertReason::ClockSkew, ts),
            ]
        );
        assert!(
            out.errors[1].reason.contains("2h ahead"),
            "{}",
            out.errors[1].reason
        );
        // Without stamps (files), the wall clock is the reference: 2024 is in the past.
        assert!(decoder.decode(&records[..4]).unwrap().errors.is_empty());
        // `0s` turns the guard off.
        let mut off = job();
        off.spec.source.max_future_skew = std::time::Duration::ZERO;
        let out = JsonDecoder::new(&off)
            .decode_stamped(&records, &stamps)
            .unwrap();
        assert_eq!(out.rows, vec![0, 1, 2, 3, 4]);
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

    #[test]
    fn fields_read_their_source_names_and_come_out_under_the_job_names() {
        let job = Job::from_toml(
            r#"
name = "t"
[source]
topic = "t"
event_time = "event_time"
max_future_skew = "0s"
fields = [
  { name = "id", type = "string", nullable = false, from = "order_id" },
  { name = "event_time", type = "timestamp", from = "timestamp" },
]
[transform]
sql = "SELECT id FROM t"
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        let decoder = JsonDecoder::new(&job);
        // All good (the fast path), then with a bad record among them (the slow paths).
        for records in [
            vec![
                r#"{"order_id":"a","timestamp":1000}"#,
                r#"{"order_id":"b","timestamp":2000}"#,
            ],
            vec![
                r#"{"order_id":"a","timestamp":1000}"#,
                r#"{"order_id":"b","timestamp":2000}"#,
                r#"{"order_id":"c","event_time":3000}"#,
                r#"{"order_id":"d","timestamp":"x"}"#,
            ],
        ] {
            let out = decoder.decode(&records).unwrap();
            assert_eq!(out.rows, vec![0, 1]);
            assert_eq!(out.batch.schema().field(1).name(), "event_time");
            let ts = out
                .batch
                .column(1)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            assert_eq!(ts.values(), &[1_000_000, 2_000_000]);
            let fields: Vec<_> = out
                .errors
                .iter()
                .map(|e| (e.index, e.field.clone()))
                .collect();
            let expected = if records.len() > 2 {
                vec![
                    (2, Some("timestamp".to_string())),
                    (3, Some("timestamp".to_string())),
                ]
            } else {
                vec![]
            };
            assert_eq!(fields, expected);
        }
    }
}
