//! A fast path for the common case of [`crate::JsonDecoder`]: flat JSON objects whose values
//! are strings, numbers, booleans or null, decoded straight into Arrow builders.
//!
//! It only claims what it can decode exactly as arrow-json would; at the first thing it does
//! not handle (a type mismatch, a nested value in a declared field, a duplicate key, text after
//! the object, a float in an integer field, ...) it gives up on the whole batch and the caller
//! falls back to arrow-json, which then also produces the precise per-record errors.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMillisecondBuilder,
};
use arrow::compute::kernels::cast_utils::string_to_datetime;
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Utf8,
    Int32,
    Int64,
    Float64,
    Boolean,
    TimestampMillis,
}

/// Decodes flat objects into a schema of supported types (see [`FlatDecoder::new`]).
#[derive(Debug, Clone)]
pub(crate) struct FlatDecoder {
    schema: SchemaRef,
    names: Vec<Vec<u8>>,
    kinds: Vec<Kind>,
}

enum Builder {
    Utf8(StringBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    TimestampMillis(TimestampMillisecondBuilder),
}

/// Gives up on the batch.
struct Bail;

impl FlatDecoder {
    /// `None` when the schema has a type the fast path does not decode.
    pub(crate) fn new(schema: SchemaRef) -> Option<FlatDecoder> {
        let kinds = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8 => Some(Kind::Utf8),
                DataType::Int32 => Some(Kind::Int32),
                DataType::Int64 => Some(Kind::Int64),
                DataType::Float64 => Some(Kind::Float64),
                DataType::Boolean => Some(Kind::Boolean),
                DataType::Timestamp(TimeUnit::Millisecond, Some(tz)) if tz.as_ref() == "UTC" => {
                    Some(Kind::TimestampMillis)
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        if kinds.len() > 64 {
            return None;
        }
        let names = schema
            .fields()
            .iter()
            .map(|f| f.name().as_bytes().to_vec())
            .collect();
        Some(FlatDecoder {
            schema,
            names,
            kinds,
        })
    }

    /// The records at `indices`, or `None` if any of them needs the general decoder.
    pub(crate) fn decode<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        indices: &[usize],
    ) -> Option<RecordBatch> {
        let mut builders: Vec<Builder> = self
            .kinds
            .iter()
            .map(|k| new_builder(*k, indices.len()))
            .collect();
        let mut scratch = Vec::new();
        for &i in indices {
            self.decode_record(records[i].as_ref(), &mut builders, &mut scratch)
                .ok()?;
        }
        let columns: Vec<ArrayRef> = builders.into_iter().map(finish).collect();
        RecordBatch::try_new(self.schema.clone(), columns).ok()
    }

    fn decode_record(
        &self,
        bytes: &[u8],
        builders: &mut [Builder],
        scratch: &mut Vec<u8>,
    ) -> Result<(), Bail> {
        let mut p = Parser { bytes, at: 0 };
        let mut seen: u64 = 0;
        let mut next_guess = 0;
        p.skip_ws();
        p.expect(b'{')?;
        p.skip_ws();
        if p.peek() == Some(b'}') {
            p.at += 1;
        } else {
            loop {
                p.skip_ws();
                let key = p.raw_string()?;
                p.skip_ws();
                p.expect(b':')?;
                p.skip_ws();
                // Producers write fields in a fixed order: try the one after the last first.
                let guess = next_guess.min(self.names.len().saturating_sub(1));
                let found = if self.names.get(guess).is_some_and(|n| n.as_slice() == key) {
                    Some(guess)
                } else {
                    self.names.iter().position(|n| n.as_slice() == key)
                };
                next_guess = found.map_or(0, |f| f + 1);
                match found {
                    Some(field) => {
                        if seen & (1 << field) != 0 {
                            return Err(Bail);
                        }
                        seen |= 1 << field;
                        p.value_into(self.kinds[field], &mut builders[field], scratch)?;
                    }
                    None => p.skip_value(0)?,
                }
                p.skip_ws();
                match p.next() {
                    Some(b',') => continue,
                    Some(b'}') => break,
                    _ => return Err(Bail),
                }
            }
        }
        p.skip_ws();
        if p.at != bytes.len() {
            return Err(Bail);
        }
        for (field, builder) in builders.iter_mut().enumerate() {
            if seen & (1 << field) == 0 {
                append_null(builder);
            }
        }
        Ok(())
    }
}

fn new_builder(kind: Kind, capacity: usize) -> Builder {
    match kind {
        Kind::Utf8 => Builder::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
        Kind::Int32 => Builder::Int32(Int32Builder::with_capacity(capacity)),
        Kind::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
        Kind::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
        Kind::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(capacity)),
        Kind::TimestampMillis => Builder::TimestampMillis(
            TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC"),
        ),
    }
}

fn append_null(builder: &mut Builder) {
    match builder {
        Builder::Utf8(b) => b.append_null(),
        Builder::Int32(b) => b.append_null(),
        Builder::Int64(b) => b.append_null(),
        Builder::Float64(b) => b.append_null(),
        Builder::Boolean(b) => b.append_null(),
        Builder::TimestampMillis(b) => b.append_null(),
    }
}

fn finish(builder: Builder) -> ArrayRef {
    match builder {
        Builder::Utf8(mut b) => Arc::new(b.finish()),
        Builder::Int32(mut b) => Arc::new(b.finish()),
        Builder::Int64(mut b) => Arc::new(b.finish()),
        Builder::Float64(mut b) => Arc::new(b.finish()),
        Builder::Boolean(mut b) => Arc::new(b.finish()),
        Builder::TimestampMillis(mut b) => Arc::new(b.finish()),
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, byte: u8) -> Result<(), Bail> {
        if self.next() == Some(byte) {
            Ok(())
        } else {
            Err(Bail)
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    /// A string without escapes, as raw bytes (keys); strings with escapes bail.
    fn raw_string(&mut self) -> Result<&'a [u8], Bail> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match self.next() {
                Some(b'"') => return Ok(&self.bytes[start..self.at - 1]),
                Some(b'\\') | None => return Err(Bail),
                Some(b) if b < 0x20 => return Err(Bail),
                Some(_) => {}
            }
        }
    }

    /// A string value without escapes, borrowed; `None` (position unchanged) if it has any.
    fn plain_string(&mut self) -> Result<Option<&'a [u8]>, Bail> {
        if self.peek() != Some(b'"') {
            return Err(Bail);
        }
        let start = self.at + 1;
        let mut end = start;
        while let Some(&b) = self.bytes.get(end) {
            match b {
                b'"' => {
                    self.at = end + 1;
                    return Ok(Some(&self.bytes[start..end]));
                }
                b'\\' => return Ok(None),
                b if b < 0x20 => return Err(Bail),
                _ => end += 1,
            }
        }
        Err(Bail)
    }

    /// A string value, unescaped into `out`.
    fn string(&mut self, out: &mut Vec<u8>) -> Result<(), Bail> {
        out.clear();
        self.expect(b'"')?;
        loop {
            let start = self.at;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            out.extend_from_slice(&self.bytes[start..self.at]);
            match self.next() {
                Some(b'"') => return Ok(()),
                Some(b'\\') => self.escape(out)?,
                _ => return Err(Bail),
            }
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Bail> {
        let simple = match self.next().ok_or(Bail)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let high = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&high) {
                    if !self.literal(b"\\u") {
                        return Err(Bail);
                    }
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(Bail);
                    }
                    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    high
                };
                let c = char::from_u32(code).ok_or(Bail)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            _ => return Err(Bail),
        };
        out.push(simple);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Bail> {
        let digits = self.bytes.get(self.at..self.at + 4).ok_or(Bail)?;
        // `from_str_radix` would also take a sign (`\u+0e9`), which JSON (and arrow-json) refuse.
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(Bail);
        }
        let text = std::str::from_utf8(digits).map_err(|_| Bail)?;
        self.at += 4;
        u32::from_str_radix(text, 16).map_err(|_| Bail)
    }

    /// The text of a JSON number and whether it is a plain integer.
    fn number(&mut self) -> Result<(&'a str, bool), Bail> {
        let start = self.at;
        let mut integer = true;
        while let Some(b) = self.peek() {
            match b {
                b'0'..=b'9' | b'-' => {}
                b'.' | b'e' | b'E' | b'+' => integer = false,
                _ => break,
            }
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| Bail)?;
        if !is_json_number(text.as_bytes()) {
            return Err(Bail);
        }
        Ok((text, integer))
    }

    fn value_into(
        &mut self,
        kind: Kind,
        builder: &mut Builder,
        scratch: &mut Vec<u8>,
    ) -> Result<(), Bail> {
        if self.literal(b"null") {
            append_null(builder);
            return Ok(());
        }
        match (kind, builder) {
            (Kind::Utf8, Builder::Utf8(b)) => match self.plain_string()? {
                Some(text) => b.append_value(std::str::from_utf8(text).map_err(|_| Bail)?),
                None => {
                    self.string(scratch)?;
                    b.append_value(std::str::from_utf8(scratch).map_err(|_| Bail)?);
                }
            },
            (Kind::Boolean, Builder::Boolean(b)) => {
                if self.literal(b"true") {
                    b.append_value(true)
                } else if self.literal(b"false") {
                    b.append_value(false)
                } else {
                    return Err(Bail);
                }
            }
            (Kind::Float64, Builder::Float64(b)) => {
                let (text, _) = self.number()?;
                b.append_value(text.parse::<f64>().map_err(|_| Bail)?);
            }
            (Kind::Int64, Builder::Int64(b)) => b.append_value(self.integer()?),
            (Kind::Int32, Builder::Int32(b)) => {
                b.append_value(i32::try_from(self.integer()?).map_err(|_| Bail)?)
            }
            (Kind::TimestampMillis, Builder::TimestampMillis(b)) => {
                if self.peek() == Some(b'"') {
                    self.string(scratch)?;
                    let text = std::str::from_utf8(scratch).map_err(|_| Bail)?;
                    let time = string_to_datetime(&chrono::Utc, text).map_err(|_| Bail)?;
                    b.append_value(time.timestamp_millis());
                } else {
                    b.append_value(self.integer()?);
                }
            }
            _ => return Err(Bail),
        }
        Ok(())
    }

    fn integer(&mut self) -> Result<i64, Bail> {
        match self.number()? {
            (text, true) => text.parse::<i64>().map_err(|_| Bail),
            _ => Err(Bail),
        }
    }

    /// Skips any JSON value of an undeclared field.
    fn skip_value(&mut self, depth: usize) -> Result<(), Bail> {
        if depth > 64 {
            return Err(Bail);
        }
        match self.peek().ok_or(Bail)? {
            b'"' => {
                let mut sink = Vec::new();
                self.string(&mut sink)
            }
            b'{' | b'[' => {
                let close = if self.next() == Some(b'{') {
                    b'}'
                } else {
                    b']'
                };
                self.skip_ws();
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    if close == b'}' {
                        self.raw_string()?;
                        self.skip_ws();
                        self.expect(b':')?;
                        self.skip_ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.next() {
                        Some(b',') => continue,
                        Some(c) if c == close => return Ok(()),
                        _ => return Err(Bail),
                    }
                }
            }
            b't' if self.literal(b"true") => Ok(()),
            b'f' if self.literal(b"false") => Ok(()),
            b'n' if self.literal(b"null") => Ok(()),
            _ => self.number().map(|_| ()),
        }
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the JSON number grammar.
fn is_json_number(text: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while text.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if text.first() == Some(&b'-') {
        i += 1;
    }
    match text.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if text.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(text.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == text.len()
}
