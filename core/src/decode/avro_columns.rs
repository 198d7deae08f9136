//! Schema resolution, column by column: the Arrow columns arrow-avro decodes with a writer
//! schema → the job's fields.
//!
//! The job is the reader. Its fields are flat and typed ([`FieldType`]), so resolution is
//! decided once per writer schema ([`ColumnPlan::resolve`]) and then applied to whole columns
//! with Arrow kernels, never per record. The rules are Avro's, read for the job's types:
//!
//! - a field is found by its source name (`from`, else its name); writer fields the job does
//!   not name are ignored (removed fields, or fields the job never read);
//! - a job field the writer lacks is null when the field is nullable; when it is required the
//!   writer schema cannot be resolved (every record written with it is `incompatible_schema`);
//! - promotions: int → long → float → double, bytes → string (bytes must be UTF-8, row by
//!   row; jobs have no bytes type, so string → bytes never arises), enum → string, uuid → its
//!   text, decimal (any precision and scale, bytes or fixed) → float64 only;
//! - unions with null are nullable columns: a null in a required field is `missing_field`, as
//!   in JSON;
//! - times: timestamp-millis, timestamp-micros (and -nanos, local-timestamp-*) keep their
//!   instant; a plain long is epoch milliseconds, as a JSON number is (the seed's `timestamp`
//!   is a long whose `logicalType` sits on the field, where Avro ignores it); an RFC 3339
//!   string is parsed, as in JSON; `date` and `YYYY-MM-DD` strings feed date fields.
//!
//! What resolution leaves to the shared column checks: ranges, finiteness, required nulls,
//! clock skew.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeBinaryArray, StringBuilder, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Schema, TimeUnit};

use crate::spec::{FieldType, Job, UTC};

/// How one job field is filled from a writer schema's columns.
#[derive(Debug, Clone)]
enum Source {
    /// The writer's column `index`, converted to `target`.
    Column {
        index: usize,
        conversion: Conversion,
    },
    /// The writer lacks the (nullable) field.
    Null,
}

#[derive(Debug, Clone)]
enum Conversion {
    /// An Arrow cast to this type; a non-null value that casts to null is a bad record.
    Cast(DataType),
    /// 16 bytes → `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    UuidText,
}

/// The conversions of one writer schema to the job's fields, decided once.
#[derive(Debug, Clone)]
pub(crate) struct ColumnPlan {
    sources: Vec<Source>,
    /// The decode types (timestamps in milliseconds or microseconds, as the writer has them).
    types: Vec<DataType>,
}

/// Why a writer schema does not resolve: the job field (its source name) and the reason.
pub(crate) struct Unresolved {
    pub field: String,
    pub reason: String,
}

/// A value the conversion could not carry: its row, job column and why.
pub(crate) struct BadValue {
    pub row: usize,
    pub column: usize,
    pub reason: String,
}

impl ColumnPlan {
    /// The plan from `writer` (what arrow-avro decodes the writer schema into) to `job`'s
    /// fields, or the field there is none for and why.
    pub(crate) fn resolve(writer: &Schema, job: &Job) -> Result<ColumnPlan, Unresolved> {
        let source = &job.spec.source;
        let mut sources = Vec::with_capacity(source.fields.len());
        let mut types = Vec::with_capacity(source.fields.len());
        for field in &source.fields {
            let name = field.source_name();
            let required = !field.nullable || field.name == source.event_time;
            let Ok(index) = writer.index_of(name) else {
                if required {
                    return Err(Unresolved {
                        field: name.to_string(),
                        reason: format!(
                            "the writer schema has no field `{name}`, which the job requires (it has {})",
                            field_list(writer)
                        ),
                    });
                }
                sources.push(Source::Null);
                types.push(decode_type(field.data_type, None));
                continue;
            };
            let from = writer.field(index).data_type();
            let Some(conversion) = conversion(from, field.data_type) else {
                return Err(Unresolved {
                    field: name.to_string(),
                    reason: format!(
                        "field `{name}` is {} in the writer schema, which does not resolve to the job's {}",
                        avro_name(from),
                        field_type_name(field.data_type)
                    ),
                });
            };
            types.push(match &conversion {
                Conversion::Cast(t) => t.clone(),
                Conversion::UuidText => DataType::Utf8,
            });
            sources.push(Source::Column { index, conversion });
        }
        Ok(ColumnPlan { sources, types })
    }

    /// The job's columns (decode types) for `columns` decoded with the writer schema, and
    /// the values that did not convert.
    pub(crate) fn apply(
        &self,
        columns: &[ArrayRef],
        rows: usize,
    ) -> (Vec<ArrayRef>, Vec<BadValue>) {
        let mut out = Vec::with_capacity(self.sources.len());
        let mut bad = Vec::new();
        for (column, (source, target)) in self.sources.iter().zip(&self.types).enumerate() {
            let converted = match source {
                Source::Null => new_null_array(target, rows),
                Source::Column { index, conversion } => {
                    let input = &columns[*index];
                    match convert(input, conversion) {
                        Ok(array) => {
                            for row in 0..rows {
                                if array.is_null(row) && !input.is_null(row) {
                                    bad.push(BadValue {
                                        row,
                                        column,
                                        reason: format!(
                                            "the {} value does not convert to {}",
                                            avro_name(input.data_type()),
                                            target
                                        ),
                                    });
                                }
                            }
                            array
                        }
                        Err(reason) => {
                            for row in (0..rows).filter(|&r| !input.is_null(r)) {
                                bad.push(BadValue {
                                    row,
                                    column,
                                    reason: reason.clone(),
                                });
                            }
                            new_null_array(target, rows)
                        }
                    }
                }
            };
            out.push(converted);
        }
        (out, bad)
    }
}

fn convert(input: &ArrayRef, conversion: &Conversion) -> Result<ArrayRef, String> {
    match conversion {
        Conversion::Cast(target) if input.data_type() == target => Ok(input.clone()),
        Conversion::Cast(target) => {
            let options = CastOptions {
                safe: true,
                ..Default::default()
            };
            cast_with_options(input, target, &options).map_err(|e| e.to_string())
        }
        Conversion::UuidText => {
            let bytes: &FixedSizeBinaryArray = input
                .as_fixed_size_binary_opt()
                .ok_or_else(|| format!("{} is not 16 bytes", input.data_type()))?;
            let mut text = StringBuilder::with_capacity(bytes.len(), bytes.len() * 36);
            for value in bytes.iter() {
                text.append_option(value.map(uuid_text));
            }
            Ok(Arc::new(text.finish()))
        }
    }
}

fn uuid_text(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if hex.len() != 32 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn utc_timestamp(unit: TimeUnit) -> DataType {
    DataType::Timestamp(unit, Some(UTC.into()))
}

/// The type a job field is decoded into before the checks: `unit` keeps a writer timestamp's
/// precision (milliseconds or microseconds); the output is microseconds either way.
fn decode_type(field: FieldType, unit: Option<TimeUnit>) -> DataType {
    match field {
        FieldType::Timestamp => utc_timestamp(unit.unwrap_or(TimeUnit::Millisecond)),
        other => other.arrow_type(),
    }
}

/// How a writer column of type `from` feeds a job field of type `to`, if it can.
fn conversion(from: &DataType, to: FieldType) -> Option<Conversion> {
    use DataType as D;
    let cast = |t: DataType| Some(Conversion::Cast(t));
    let string_like = |t: &DataType| match t {
        D::Utf8 | D::LargeUtf8 | D::Utf8View | D::Binary | D::LargeBinary | D::BinaryView => true,
        D::Dictionary(_, values) => matches!(values.as_ref(), D::Utf8 | D::LargeUtf8),
        _ => false,
    };
    match to {
        FieldType::String => match from {
            D::FixedSizeBinary(16) => Some(Conversion::UuidText),
            t if string_like(t) => cast(D::Utf8),
            _ => None,
        },
        FieldType::Boolean => matches!(from, D::Boolean).then_some(Conversion::Cast(D::Boolean)),
        FieldType::Int32 => matches!(from, D::Int32).then_some(Conversion::Cast(D::Int32)),
        FieldType::Int64 => {
            matches!(from, D::Int32 | D::Int64).then_some(Conversion::Cast(D::Int64))
        }
        FieldType::Float32 => {
            matches!(from, D::Int32 | D::Int64 | D::Float32).then_some(Conversion::Cast(D::Float32))
        }
        FieldType::Float64 => match from {
            D::Int32
            | D::Int64
            | D::Float32
            | D::Float64
            | D::Decimal32(..)
            | D::Decimal64(..)
            | D::Decimal128(..)
            | D::Decimal256(..) => cast(D::Float64),
            _ => None,
        },
        FieldType::Timestamp => match from {
            D::Timestamp(TimeUnit::Microsecond | TimeUnit::Nanosecond, _) => {
                cast(utc_timestamp(TimeUnit::Microsecond))
            }
            D::Timestamp(TimeUnit::Millisecond | TimeUnit::Second, _) | D::Int64 => {
                cast(utc_timestamp(TimeUnit::Millisecond))
            }
            D::Utf8 | D::LargeUtf8 | D::Utf8View => cast(utc_timestamp(TimeUnit::Millisecond)),
            _ => None,
        },
        FieldType::Date => match from {
            D::Date32 | D::Utf8 | D::LargeUtf8 | D::Utf8View => cast(D::Date32),
            _ => None,
        },
    }
}

/// The Avro name of what arrow-avro decodes into `t`, for messages.
fn avro_name(t: &DataType) -> String {
    use DataType as D;
    match t {
        D::Null => "null".into(),
        D::Boolean => "boolean".into(),
        D::Int32 => "int".into(),
        D::Int64 => "long".into(),
        D::Float32 => "float".into(),
        D::Float64 => "double".into(),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => "string".into(),
        D::Binary | D::LargeBinary | D::BinaryView => "bytes".into(),
        D::FixedSizeBinary(n) => format!("fixed({n})"),
        D::Dictionary(..) => "enum".into(),
        D::Date32 => "date".into(),
        D::Time32(_) => "time-millis".into(),
        D::Time64(_) => "time-micros".into(),
        D::Timestamp(TimeUnit::Millisecond, _) => "timestamp-millis".into(),
        D::Timestamp(TimeUnit::Microsecond, _) => "timestamp-micros".into(),
        D::Timestamp(TimeUnit::Nanosecond, _) => "timestamp-nanos".into(),
        D::Decimal32(p, s) | D::Decimal64(p, s) => format!("decimal({p},{s})"),
        D::Decimal128(p, s) | D::Decimal256(p, s) => format!("decimal({p},{s})"),
        D::Struct(_) => "a record".into(),
        D::List(_) | D::LargeList(_) => "an array".into(),
        D::Map(..) => "a map".into(),
        D::Union(..) => "a union of several types".into(),
        D::Interval(_) | D::Duration(_) => "duration".into(),
        other => other.to_string(),
    }
}

fn field_type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "string",
        FieldType::Boolean => "boolean",
        FieldType::Int32 => "int32",
        FieldType::Int64 => "int64",
        FieldType::Float32 => "float32",
        FieldType::Float64 => "float64",
        FieldType::Timestamp => "timestamp",
        FieldType::Date => "date",
    }
}

fn field_list(schema: &Schema) -> String {
    if schema.fields().is_empty() {
        return "no fields".to_string();
    }
    schema
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}
