//! The checks every decoded column passes, whatever the wire format, so nothing that would
//! break a later stage gets through:
//!
//! - required (non-nullable) fields are present: the event time always is required;
//! - timestamps lie within chrono's years, so microseconds, window bounds and RFC 3339 output
//!   never overflow (arrow's cast would otherwise turn an overflow into a null in a non-null
//!   column and fail the whole micro-batch); dates likewise;
//! - floats are finite (an infinity turns SUM and AVG into null for its whole window);
//! - the event time is not more than `max_future_skew` ahead of the record's own timestamp
//!   (one record from a broken clock would otherwise move the watermark into the future and
//!   make every later record late).
//!
//! Each bad record gets one [`RecordError`] naming its field, for the first rule it breaks.

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType,
};
use chrono::{DateTime, NaiveDate, Utc};

use super::RecordError;
use crate::error::{Result, arrow_err};
use crate::spec::Job;
use crate::time::format_time;
use crate::topics::DivertReason;

/// What the checks need to know of a job's source schema.
#[derive(Debug, Clone)]
pub(crate) struct ColumnChecks {
    /// Per column, the name errors give: the field's name in the source record.
    names: Vec<String>,
    required: Vec<usize>,
    event_time_index: usize,
    /// `None`: the clock-skew guard is off.
    max_future_skew_ms: Option<i64>,
}

impl ColumnChecks {
    pub(crate) fn new(job: &Job) -> ColumnChecks {
        let source = &job.spec.source;
        let output = job.source_schema();
        let skew = source.max_future_skew.as_millis();
        ColumnChecks {
            names: source
                .fields
                .iter()
                .map(|f| f.source_name().to_string())
                .collect(),
            required: (0..output.fields().len())
                .filter(|&i| !output.field(i).is_nullable())
                .collect(),
            event_time_index: output.index_of(&source.event_time).unwrap_or(0),
            max_future_skew_ms: (skew > 0).then(|| i64::try_from(skew).unwrap_or(i64::MAX)),
        }
    }

    /// The name errors give column `col`.
    pub(crate) fn name(&self, col: usize) -> &str {
        self.names.get(col).map(String::as_str).unwrap_or("?")
    }

    /// Drops the rows of `batch` (columns in the job's field order; timestamps in
    /// milliseconds or microseconds) that break a rule, adding one error each. `rows[i]` is
    /// batch row `i`'s input index; `reference_ms(input index)` its record's timestamp.
    pub(crate) fn validate(
        &self,
        batch: RecordBatch,
        rows: Vec<usize>,
        errors: &mut Vec<RecordError>,
        reference_ms: impl Fn(usize) -> i64,
    ) -> Result<(RecordBatch, Vec<usize>)> {
        let mut bad: Vec<Option<RecordError>> = vec![None; batch.num_rows()];
        let mut flag = |row: usize, kind, col: usize, reason: String| {
            if bad[row].is_none() {
                bad[row] = Some(RecordError {
                    index: rows[row],
                    kind,
                    field: Some(self.name(col).to_string()),
                    reason,
                });
            }
        };
        for &col in &self.required {
            let column = batch.column(col);
            for row in (0..column.len()).filter(|&r| column.is_null(r)) {
                let reason = format!("required field `{}` is missing or null", self.name(col));
                flag(row, DivertReason::MissingField, col, reason);
            }
        }
        for (col, column) in batch.columns().iter().enumerate() {
            match column.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, _) => {
                    let times = column.as_primitive::<TimestampMillisecondType>();
                    for (row, ms) in times.iter().enumerate() {
                        if let Some(ms) = ms.filter(|&ms| !timestamp_in_range_ms(ms)) {
                            flag(
                                row,
                                DivertReason::SchemaViolation,
                                col,
                                out_of_range(ms, "ms"),
                            );
                        }
                    }
                }
                DataType::Timestamp(TimeUnit::Microsecond, _) => {
                    let times = column.as_primitive::<TimestampMicrosecondType>();
                    for (row, us) in times.iter().enumerate() {
                        if let Some(us) =
                            us.filter(|&us| !timestamp_in_range_ms(us.div_euclid(1000)))
                        {
                            flag(
                                row,
                                DivertReason::SchemaViolation,
                                col,
                                out_of_range(us, "µs"),
                            );
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
            let column = batch.column(col);
            let event_ms = |row: usize| -> Option<i64> {
                if column.is_null(row) {
                    return None;
                }
                match column.data_type() {
                    DataType::Timestamp(TimeUnit::Millisecond, _) => {
                        Some(column.as_primitive::<TimestampMillisecondType>().value(row))
                    }
                    DataType::Timestamp(TimeUnit::Microsecond, _) => Some(
                        column
                            .as_primitive::<TimestampMicrosecondType>()
                            .value(row)
                            .div_euclid(1000),
                    ),
                    _ => None,
                }
            };
            for (row, &index) in rows.iter().enumerate() {
                let stamp = reference_ms(index);
                if let Some(ms) = event_ms(row).filter(|&ms| ms > stamp.saturating_add(skew)) {
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
        keep_rows(batch, rows, keep)
    }
}

/// Record `index` is larger than `max` bytes, whatever its format: `oversized`.
pub(crate) fn oversized(index: usize, record: &[u8], max: usize) -> Option<RecordError> {
    (record.len() > max).then(|| RecordError {
        index,
        kind: DivertReason::Oversized,
        field: None,
        reason: format!("{} bytes, the limit is {max}", record.len()),
    })
}

/// The rows of `batch` (and their input indices) whose `keep` is true.
pub(crate) fn keep_rows(
    batch: RecordBatch,
    rows: Vec<usize>,
    keep: Vec<bool>,
) -> Result<(RecordBatch, Vec<usize>)> {
    let mask = BooleanArray::from(keep.clone());
    let batch = filter_record_batch(&batch, &mask).map_err(arrow_err("dropping bad records"))?;
    let rows = rows
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect();
    Ok((batch, rows))
}

/// Casts checked columns to `output`'s types (timestamps to microseconds) and names, and
/// applies its non-nullability.
pub(crate) fn to_output(output: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(output.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                cast(column, field.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(arrow_err("casting decoded columns"))?;
    RecordBatch::try_new(output.clone(), columns).map_err(arrow_err("building the decoded batch"))
}

pub(crate) fn out_of_range(value: i64, unit: &str) -> String {
    let range = timestamp_range_ms();
    format!(
        "{value} {unit} since the epoch is outside the supported time range ({} .. {})",
        format_time(range.start() * 1000),
        format_time(range.end() * 1000)
    )
}

/// The epoch milliseconds a timestamp may take: chrono's years (about ±262,000), so every
/// accepted time converts to microseconds, formats as RFC 3339, and leaves room for window
/// and bucket arithmetic.
pub(crate) fn timestamp_range_ms() -> std::ops::RangeInclusive<i64> {
    DateTime::<Utc>::MIN_UTC.timestamp_millis()..=DateTime::<Utc>::MAX_UTC.timestamp_millis()
}

pub(crate) fn timestamp_in_range_ms(ms: i64) -> bool {
    timestamp_range_ms().contains(&ms)
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
