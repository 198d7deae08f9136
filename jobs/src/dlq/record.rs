//! One dead letter as the `dlq` commands see it: its headers read without trusting them, the
//! facts Sluice put there (error type, source topic, partition, offset, truncation), and its
//! raw bytes made safe to print.
//!
//! The records of a DLQ are bad input by definition, and anyone may write to the topic, so
//! nothing here assumes a byte is printable, a header is present or its value parses.

use std::borrow::Cow;

use serde_json::{Value, json};
use sluice_core::topics::header;

/// The error type of a record without a `sluice.error.type` header.
pub(crate) const UNKNOWN: &str = "unknown";
/// Keys and values print at most this many bytes; the full size is said.
pub(crate) const MAX_SHOWN: usize = 512;

pub(crate) use sluice_kafka::{RawHeader, header_text, raw_headers as headers};

/// What Sluice's headers say about a dead letter.
pub(crate) struct Origin<'m> {
    /// `sluice.error.type`, or [`UNKNOWN`].
    pub error_type: &'m str,
    pub source_topic: Option<&'m str>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    /// The value holds only the first bytes of the original record.
    pub truncated: bool,
}

impl<'m> Origin<'m> {
    pub fn of(headers: &[RawHeader<'m>]) -> Origin<'m> {
        let text = |name: &str| header_text(headers, name);
        Origin {
            error_type: text(header::ERROR_TYPE).unwrap_or(UNKNOWN),
            source_topic: text(header::SOURCE_TOPIC),
            source_partition: text(header::SOURCE_PARTITION).and_then(|p| p.trim().parse().ok()),
            source_offset: text(header::SOURCE_OFFSET).and_then(|o| o.trim().parse().ok()),
            truncated: text(header::TRUNCATED).is_some_and(|t| t.trim() == "true"),
        }
    }

    /// Whether Sluice wrote the record: it names the topic and partition it came from.
    pub fn is_sluices(&self) -> bool {
        self.source_topic.is_some() && self.source_partition.is_some()
    }
}

/// Whether `c` must not reach a terminal as it is: control characters (C0, DEL, C1) and the
/// bidirectional overrides that reorder what is shown.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` as a JSON string literal with every character a terminal could act on escaped: valid
/// JSON, and safe to print.
pub(crate) fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `text` as it is when nothing in it needs escaping (a header name, an error type), else
/// [`quoted`].
pub(crate) fn plain(text: &str) -> Cow<'_, str> {
    if text.is_empty()
        || text
            .chars()
            .any(|c| needs_escape(c) || c == '"' || c == '\\')
    {
        Cow::Owned(quoted(text))
    } else {
        Cow::Borrowed(text)
    }
}

/// Lower-case hex of `bytes`, without a prefix.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn head(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A key or value for `--output json`: `{"size", "truncated", "text"}` when it is UTF-8,
/// `{"size", "truncated", "hex": "0x…", "preview"}` otherwise; at most [`MAX_SHOWN`] bytes of
/// it. `null` when the record has none.
pub(crate) fn bytes_json(bytes: Option<&[u8]>) -> Value {
    let Some(bytes) = bytes else {
        return Value::Null;
    };
    let size = bytes.len();
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let shown = head(text, MAX_SHOWN);
            json!({"size": size, "truncated": shown.len() < size, "text": shown})
        }
        Err(_) => {
            let shown = &bytes[..size.min(MAX_SHOWN)];
            json!({
                "size": size,
                "truncated": shown.len() < size,
                "hex": format!("0x{}", hex(shown)),
                "preview": String::from_utf8_lossy(shown),
            })
        }
    }
}

/// A key or value for text output: a [`quoted`] string when it is UTF-8, else `0x…` hex and a
/// lossy preview; at most [`MAX_SHOWN`] bytes of it, saying the full size when cut.
pub(crate) fn bytes_text(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return "(none)".to_string();
    };
    let size = bytes.len();
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let shown = head(text, MAX_SHOWN);
            if shown.len() < size {
                format!(
                    "{}… (the first {} of {size} bytes)",
                    quoted(shown),
                    shown.len()
                )
            } else {
                quoted(shown)
            }
        }
        Err(e) => {
            let shown = &bytes[..size.min(MAX_SHOWN)];
            let cut = if shown.len() < size {
                format!("… (the first {} of {size} bytes)", shown.len())
            } else {
                String::new()
            };
            format!(
                "0x{}{cut}, not UTF-8 from byte {}; preview {}",
                hex(shown),
                e.valid_up_to(),
                quoted(&String::from_utf8_lossy(shown))
            )
        }
    }
}

/// A header value: its text when UTF-8, `0x…` hex otherwise, `null` for a null header.
pub(crate) fn header_value_json(value: Option<&[u8]>) -> Value {
    match value {
        None => Value::Null,
        Some(v) => match std::str::from_utf8(v) {
            Ok(text) => Value::String(text.to_string()),
            Err(_) => Value::String(format!("0x{}", hex(v))),
        },
    }
}

/// A header value for text output.
pub(crate) fn header_value_text(value: Option<&[u8]>) -> String {
    match value {
        None => "(null)".to_string(),
        Some(v) => match std::str::from_utf8(v) {
            Ok(text) => quoted(text),
            Err(_) => format!("0x{} (not UTF-8)", hex(v)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_text_is_json_and_carries_no_terminal_controls() {
        let text = "a\"b\\c\nd\u{1b}[2J\u{7f}\u{9b}\u{202e}é";
        let shown = quoted(text);
        assert!(!shown.chars().any(needs_escape), "{shown:?}");
        let back: String = serde_json::from_str(&shown).expect("valid JSON");
        assert_eq!(back, text);
        assert_eq!(plain("schema_violation"), "schema_violation");
        assert_eq!(plain("bad\u{1b}"), "\"bad\\u001b\"");
    }

    #[test]
    fn bytes_print_as_text_or_hex_and_are_cut_at_the_limit() {
        assert_eq!(
            bytes_json(Some(b"{\"a\":1}")),
            json!({"size": 7, "truncated": false, "text": "{\"a\":1}"})
        );
        let binary = [0xffu8, 0x00, 0x41];
        assert_eq!(
            bytes_json(Some(&binary)),
            json!({"size": 3, "truncated": false, "hex": "0xff0041", "preview": "\u{fffd}\u{0}A"})
        );
        assert!(bytes_text(Some(&binary)).starts_with("0xff0041, not UTF-8 from byte 0"));
        let long = "é".repeat(400);
        let shown = bytes_json(Some(long.as_bytes()));
        assert_eq!(shown["size"], 800);
        assert_eq!(shown["truncated"], true);
        assert_eq!(shown["text"].as_str().map(str::len), Some(512));
        assert!(bytes_text(Some(long.as_bytes())).ends_with("(the first 512 of 800 bytes)"));
        assert_eq!(bytes_json(None), Value::Null);
    }
}
