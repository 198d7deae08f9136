//! JSON records → Arrow `RecordBatch` for a job's declared schema.
//!
//! The fast path hands the whole micro-batch to arrow-json's tape decoder (vectorised, no
//! `serde_json::Value` trees). Only when that fails does the decoder fall back to decoding
//! record by record, to say exactly which records are bad and why; the good ones still decode
//! together. Required (non-nullable) fields are checked on the decoded columns, not per record.
//!
//! What decodes is then validated on the columns, so nothing that would break a later stage
//! gets through: timestamps must lie within chrono's years (so microseconds, window bounds and
//! RFC 3339 output never overflow; arrow's cast would otherwise turn an overflow into a null
//! in a non-null column and fail the whole micro-batch), floats must be finite (an infinity
//! turns SUM and AVG into null for its whole window), and the event time must not be more
//! than `max_future_skew` ahead of the record's own timestamp (one record from a broken clock
//! would otherwise move the watermark into the future and make every later record late).
//! Each bad record gets one [`RecordError`] naming its field.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{
    DataType, Date32Type, Field, Float32Type, Float64Type, Schema, SchemaRef, TimeUnit,
    TimestampMillisecondType,
};
use arrow_json::ReaderBuilder;
use chrono::{DateTime, NaiveDate, Utc};

use crate::error::{Result, arrow_err};
use crate::flat_json::FlatDecoder;
use crate::json_escapes::decode_surrogate_pairs;
use crate::spec::Job;
use crate::time::format_time;
use crate::topics::DivertReason;

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

/// Decodes JSON records of one job. Cheap to share; decoding allocates per call.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    /// Every field nullable, timestamps in milliseconds: what arrow-json fills.
    lenient_schema: SchemaRef,
    output_schema: SchemaRef,
    required: Vec<usize>,
    max_record_bytes: usize,
    fast: Option<FlatDecoder>,
    event_time_index: usize,
    /// `None`: the clock-skew guard is off.
    max_future_skew_ms: Option<i64>,
}

/// The epoch milliseconds a timestamp may take: chrono's years (about ±262,000), so every
/// accepted time converts to microseconds, formats as RFC 3339, and leaves room for window
/// and bucket arithmetic.
fn timestamp_range_ms() -> std::ops::RangeInclusive<i64> {
    DateTime::<Utc>::MIN_UTC.timestamp_millis()..=DateTime::<Utc>::MAX_UTC.timestamp_millis()
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
        let source = &job.spec.source;
        let skew = source.max_future_skew.as_millis();
        JsonDecoder {
            fast: FlatDecoder::new(lenient.clone()),
            event_time_index: output_schema.index_of(&source.event_time).unwrap_or(0),
            lenient_schema: lenient,
            output_schema,
            required,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_future_skew_ms: (skew > 0).then(|| i64::try_from(skew).unwrap_or(i64::MAX)),
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
        let (batch, rows) = self.validate(batch, rows, &mut errors, reference)?;
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
                DivertReason::Oversized,
                format!(
                    "{} bytes, the limit is {}",
                    record.len(),
                    self.max_record_bytes
                ),
            ));
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

    /// Drops the rows that decoded but break the schema's rules (see the module docs), each
    /// with the first rule it breaks: a missing required field, then a value out of its type's
    /// range, then clock skew.
    fn validate(
        &self,
        batch: RecordBatch,
        rows: Vec<usize>,
        errors: &mut Vec<RecordError>,
        reference_ms: impl Fn(usize) -> i64,
    ) -> Result<(RecordBatch, Vec<usize>)> {
        let mut bad: Vec<Option<RecordError>> = vec![None; batch.num_rows()];
        let name = |col: usize| self.output_schema.field(col).name().clone();
        let mut flag = |row: usize, kind, col: usize, reason: String| {
            if bad[row].is_none() {
                bad[row] = Some(RecordError {
                    index: rows[row],
                    kind,
                    field: Some(name(col)),
                    reason,
                });
            }
        };
        for &col in &self.required {
            let column = batch.column(col);
            for row in (0..column.len()).filter(|&r| column.is_null(r)) {
                let reason = format!("required field `{}` is missing or null", name(col));
                flag(row, DivertReason::MissingField, col, reason);
            }
        }
        let range = timestamp_range_ms();
        for (col, column) in batch.columns().iter().enumerate() {
            match column.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, _) => {
                    let times = column.as_primitive::<TimestampMillisecondType>();
                    for (row, ms) in times.iter().enumerate() {
                        if let Some(ms) = ms.filter(|ms| !range.contains(ms)) {
                            let reason = format!(
                                "{ms} ms since the epoch is outside the supported time range ({} .. {})",
                                format_time(range.start() * 1000),
                                format_time(range.end() * 1000)
                            );
                            flag(row, DivertReason::SchemaViolation, col, reason);
                        }
                    }
                }
                DataType::Date32 => {
                    let days = date_range_days();
                    for (row, d) in column.as_primitive::<Date32Type>().iter().enumerate() {
                        if let Some(d) = d.filter(|d| !days.contains(d)) {
                            let reason = format!(
                                "{d} days since the epoch is outside the supported dates ({} .. {})",
                                NaiveDate::MIN,
                                NaiveDate::MAX
                            );
                            flag(row, DivertReason::SchemaViolation, col, reason);
                        }
                    }
                }
                DataType::Float64 => {
                    for (row, v) in column.as_primitive::<Float64Type>().iter().enumerate() {
                        if let Some(v) = v.filter(|v| !v.is_finite()) {
                            let reason = format!("{v} is not a finite number");
                            flag(row, DivertReason::SchemaViolation, col, reason);
                        }
                    }
                }
                DataType::Float32 => {
                    for (row, v) in column.as_primitive::<Float32Type>().iter().enumerate() {
                        if let Some(v) = v.filter(|v| !v.is_finite()) {
                            let reason = format!("{v} is not a finite number");
                            flag(row, DivertReason::SchemaViolation, col, reason);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(skew) = self.max_future_skew_ms {
            let col = self.event_time_index;
            let times = batch.column(col).as_primitive::<TimestampMillisecondType>();
            for (row, ms) in times.iter().enumerate() {
                let stamp = reference_ms(rows[row]);
                if let Some(ms) = ms.filter(|&ms| ms > stamp.saturating_add(skew)) {
                    let reason = format!(
                        "event time {} is {} ahead of the record's timestamp {}; max_future_skew is {}",
                        format_time(ms.saturating_mul(1000)),
                        human_millis(ms.saturating_sub(stamp)),
                        format_time(stamp.saturating_mul(1000)),
                        human_millis(skew)
                    );
                    flag(row, DivertReason::ClockSkew, col, reason);
                }
            }
        }
        if bad.iter().all(Option::is_none) {
            return Ok((batch, rows));
        }
        let keep: Vec<bool> = bad.iter().map(Option::is_none).collect();
        errors.extend(bad.into_iter().flatten());
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

/// The days since the epoch a date may take: chrono's, as for timestamps.
fn date_range_days() -> std::ops::RangeInclusive<i32> {
    let epoch = DateTime::UNIX_EPOCH.date_naive();
    let days = |d: NaiveDate| i32::try_from((d - epoch).num_days()).unwrap_or(0);
    days(NaiveDate::MIN)..=days(NaiveDate::MAX)
}

/// `90061000` → `1d 1h 1m 1s`: how far ahead a skewed event is, readable in a DLQ header.
fn human_millis(ms: i64) -> String {
    let mut rest = ms.max(0) / 1000;
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if parts.is_empty() {
        format!("{}ms", ms.max(0))
    } else {
        parts.join(" ")
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
}
