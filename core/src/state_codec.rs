//! The stable binary encoding of partial aggregate states.
//!
//! Partial states travel through Kafka (the `<job>.speed` changelog) and may be read by a
//! different Sluice version than the one that wrote them, so the encoding is explicit and
//! versioned rather than an in-memory layout:
//!
//! ```text
//! row     := VERSION(u8 = 1) value*          one value per state field, in field order
//! value   := 0x00                            null
//!          | 0x01 payload
//! payload := bool: u8 | intN/uintN/floatN/date/timestamp: little-endian fixed width
//!          | decimal128: 16 bytes LE
//!          | utf8/binary (any offset size or view): len u32 LE, bytes
//!          | list/large list: count u32 LE, value* (element type from the field)
//! ```
//! The field types come from the plan (the accumulators' state fields), not from the bytes.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use datafusion::common::ScalarValue;

use crate::error::{Error, Result};

/// The format byte every encoded row starts with; part of every plan fingerprint.
pub(crate) const VERSION: u8 = 1;

/// Encodes and decodes rows of partial-state columns.
#[derive(Debug, Clone)]
pub struct StateCodec {
    fields: Vec<FieldRef>,
}

impl StateCodec {
    pub fn new(fields: Vec<FieldRef>) -> StateCodec {
        StateCodec { fields }
    }

    pub fn fields(&self) -> &[FieldRef] {
        &self.fields
    }

    /// The encoded width of a present (non-null) value of a fixed-width type: the presence
    /// byte and the payload. `None` for variable-width types (strings, binaries, lists).
    pub fn present_width(data_type: &DataType) -> Option<usize> {
        let payload = match data_type {
            DataType::Boolean | DataType::Int8 | DataType::UInt8 => 1,
            DataType::Int16 | DataType::UInt16 => 2,
            DataType::Int32 | DataType::UInt32 | DataType::Float32 | DataType::Date32 => 4,
            DataType::Int64
            | DataType::UInt64
            | DataType::Float64
            | DataType::Date64
            | DataType::Timestamp(_, _) => 8,
            DataType::Decimal128(_, _) => 16,
            _ => return None,
        };
        Some(1 + payload)
    }

    /// Appends the encoding of `row` of `columns` (one column per state field) to `out`.
    pub fn encode_row(&self, columns: &[ArrayRef], row: usize, out: &mut Vec<u8>) -> Result<()> {
        out.push(VERSION);
        for column in columns {
            let value = ScalarValue::try_from_array(column, row)
                .map_err(|e| Error::StateCodec(format!("reading state value: {e}")))?;
            encode_value(&value, out)?;
        }
        Ok(())
    }

    /// Decodes encoded rows back into one column per state field.
    pub fn decode_rows<B: AsRef<[u8]>>(&self, rows: &[B]) -> Result<Vec<ArrayRef>> {
        let mut per_field: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(rows.len()); self.fields.len()];
        for row in rows {
            let mut reader = Reader {
                bytes: row.as_ref(),
            };
            let version = reader.take(1)?[0];
            if version != VERSION {
                return Err(Error::StateCodec(format!(
                    "unknown partial-state encoding version {version} (this build reads {VERSION})"
                )));
            }
            for (field, values) in self.fields.iter().zip(per_field.iter_mut()) {
                values.push(reader.value(field.data_type())?);
            }
            if !reader.bytes.is_empty() {
                return Err(Error::StateCodec(format!(
                    "{} trailing bytes after the last state value",
                    reader.bytes.len()
                )));
            }
        }
        per_field
            .into_iter()
            .zip(&self.fields)
            .map(|(values, field)| {
                if values.is_empty() {
                    return Ok(arrow::array::new_empty_array(field.data_type()));
                }
                ScalarValue::iter_to_array(values).map_err(|e| {
                    Error::StateCodec(format!("building state column `{}`: {e}", field.name()))
                })
            })
            .collect()
    }
}

fn encode_value(value: &ScalarValue, out: &mut Vec<u8>) -> Result<()> {
    if value.is_null() {
        out.push(0);
        return Ok(());
    }
    out.push(1);
    match value {
        ScalarValue::Boolean(Some(v)) => out.push(*v as u8),
        ScalarValue::Int8(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Int16(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Int32(Some(v)) | ScalarValue::Date32(Some(v)) => {
            out.extend_from_slice(&v.to_le_bytes())
        }
        ScalarValue::Int64(Some(v))
        | ScalarValue::Date64(Some(v))
        | ScalarValue::TimestampSecond(Some(v), _)
        | ScalarValue::TimestampMillisecond(Some(v), _)
        | ScalarValue::TimestampMicrosecond(Some(v), _)
        | ScalarValue::TimestampNanosecond(Some(v), _) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::UInt8(Some(v)) => out.push(*v),
        ScalarValue::UInt16(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::UInt32(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::UInt64(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Float32(Some(v)) => out.extend_from_slice(&v.to_bits().to_le_bytes()),
        ScalarValue::Float64(Some(v)) => out.extend_from_slice(&v.to_bits().to_le_bytes()),
        ScalarValue::Decimal128(Some(v), _, _) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => encode_bytes(s.as_bytes(), out),
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b)) => encode_bytes(b, out),
        ScalarValue::List(list) => encode_list(list.value(0), out)?,
        ScalarValue::LargeList(list) => encode_list(list.value(0), out)?,
        other => {
            return Err(Error::StateCodec(format!(
                "no stable encoding for partial-state type {}",
                other.data_type()
            )));
        }
    }
    Ok(())
}

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode_list(elements: ArrayRef, out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&(elements.len() as u32).to_le_bytes());
    for i in 0..elements.len() {
        let value = ScalarValue::try_from_array(&elements, i)
            .map_err(|e| Error::StateCodec(format!("reading list element: {e}")))?;
        encode_value(&value, out)?;
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::StateCodec(format!(
                "truncated partial state: needed {n} more bytes, {} left",
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn length(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn value(&mut self, data_type: &DataType) -> Result<ScalarValue> {
        match self.take(1)?[0] {
            0 => {
                return ScalarValue::try_from(data_type)
                    .map_err(|e| Error::StateCodec(e.to_string()));
            }
            1 => {}
            flag => return Err(Error::StateCodec(format!("bad null flag {flag}"))),
        }
        Ok(match data_type {
            DataType::Boolean => ScalarValue::Boolean(Some(self.take(1)?[0] != 0)),
            DataType::Int8 => ScalarValue::Int8(Some(i8::from_le_bytes(self.array()?))),
            DataType::Int16 => ScalarValue::Int16(Some(i16::from_le_bytes(self.array()?))),
            DataType::Int32 => ScalarValue::Int32(Some(i32::from_le_bytes(self.array()?))),
            DataType::Int64 => ScalarValue::Int64(Some(i64::from_le_bytes(self.array()?))),
            DataType::UInt8 => ScalarValue::UInt8(Some(self.take(1)?[0])),
            DataType::UInt16 => ScalarValue::UInt16(Some(u16::from_le_bytes(self.array()?))),
            DataType::UInt32 => ScalarValue::UInt32(Some(u32::from_le_bytes(self.array()?))),
            DataType::UInt64 => ScalarValue::UInt64(Some(u64::from_le_bytes(self.array()?))),
            DataType::Float32 => {
                ScalarValue::Float32(Some(f32::from_bits(u32::from_le_bytes(self.array()?))))
            }
            DataType::Float64 => {
                ScalarValue::Float64(Some(f64::from_bits(u64::from_le_bytes(self.array()?))))
            }
            DataType::Date32 => ScalarValue::Date32(Some(i32::from_le_bytes(self.array()?))),
            DataType::Date64 => ScalarValue::Date64(Some(i64::from_le_bytes(self.array()?))),
            DataType::Decimal128(p, s) => {
                ScalarValue::Decimal128(Some(i128::from_le_bytes(self.array()?)), *p, *s)
            }
            DataType::Timestamp(unit, tz) => {
                let v = Some(i64::from_le_bytes(self.array()?));
                let tz = tz.clone();
                match unit {
                    TimeUnit::Second => ScalarValue::TimestampSecond(v, tz),
                    TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(v, tz),
                    TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(v, tz),
                    TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(v, tz),
                }
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let len = self.length()?;
                let text = std::str::from_utf8(self.take(len)?)
                    .map_err(|e| Error::StateCodec(format!("state text is not UTF-8: {e}")))?
                    .to_string();
                match data_type {
                    DataType::Utf8 => ScalarValue::Utf8(Some(text)),
                    DataType::LargeUtf8 => ScalarValue::LargeUtf8(Some(text)),
                    _ => ScalarValue::Utf8View(Some(text)),
                }
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                let len = self.length()?;
                let bytes = self.take(len)?.to_vec();
                match data_type {
                    DataType::Binary => ScalarValue::Binary(Some(bytes)),
                    DataType::LargeBinary => ScalarValue::LargeBinary(Some(bytes)),
                    _ => ScalarValue::BinaryView(Some(bytes)),
                }
            }
            DataType::List(element) | DataType::LargeList(element) => {
                let count = self.length()?;
                let values = (0..count)
                    .map(|_| self.value(element.data_type()))
                    .collect::<Result<Vec<_>>>()?;
                match data_type {
                    DataType::List(_) => ScalarValue::List(ScalarValue::new_list(
                        &values,
                        element.data_type(),
                        element.is_nullable(),
                    )),
                    _ => ScalarValue::LargeList(ScalarValue::new_large_list(
                        &values,
                        element.data_type(),
                    )),
                }
            }
            other => {
                return Err(Error::StateCodec(format!(
                    "no stable encoding for partial-state type {other}"
                )));
            }
        })
    }
}

/// Makes `Arc<Field>`s for tests and callers that build codecs by hand.
pub fn field(name: &str, data_type: DataType) -> FieldRef {
    Arc::new(arrow::datatypes::Field::new(name, data_type, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, Int64Array, ListArray, StringArray};
    use arrow::datatypes::Int64Type;

    #[test]
    fn present_width_is_what_a_present_value_encodes_to() {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![7])),
            Arc::new(Float64Array::from(vec![1.5])),
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from(vec![3_600_000_000])
                    .with_timezone("UTC"),
            ),
        ];
        for column in columns {
            let field = Arc::new(arrow::datatypes::Field::new(
                "v",
                column.data_type().clone(),
                false,
            ));
            let codec = StateCodec::new(vec![field]);
            let mut out = Vec::new();
            codec
                .encode_row(std::slice::from_ref(&column), 0, &mut out)
                .unwrap();
            assert_eq!(
                StateCodec::present_width(column.data_type()),
                Some(out.len() - 1),
                "{}",
                column.data_type()
            );
        }
        assert_eq!(StateCodec::present_width(&DataType::Utf8), None);
    }

    #[test]
    fn round_trips_every_kind_of_state_column() {
        let list = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            Some(vec![]),
            None,
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(3), None, Some(-7)])),
            Arc::new(Float64Array::from(vec![Some(0.1), Some(-0.0), None])),
            Arc::new(StringArray::from(vec![Some("é"), None, Some("")])),
            Arc::new(list),
        ];
        let fields = columns
            .iter()
            .enumerate()
            .map(|(i, c)| field(&format!("f{i}"), c.data_type().clone()))
            .collect();
        let codec = StateCodec::new(fields);
        let rows: Vec<Vec<u8>> = (0..3)
            .map(|row| {
                let mut out = Vec::new();
                codec.encode_row(&columns, row, &mut out).unwrap();
                out
            })
            .collect();
        let decoded = codec.decode_rows(&rows).unwrap();
        for (a, b) in columns.iter().zip(&decoded) {
            assert_eq!(a.to_data(), b.to_data());
        }
        assert!(codec.decode_rows(&[&rows[0][..rows[0].len() - 1]]).is_err());
        assert!(codec.decode_rows(&[[9u8]]).is_err());
    }
}
