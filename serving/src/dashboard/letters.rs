//! Dead letters (and late records) as the dashboard shows them: counted by error type and by
//! the data-quality check that quarantined them, the newest few kept with their headers, every
//! byte clipped.
//!
//! Anyone may write to `<job>.dlq`, and its records are bad input by definition, so nothing
//! here trusts a byte: values that are not UTF-8 are shown as hex, header names that are not
//! UTF-8 are read lossily, and everything kept has a size bound, so a topic of any size costs
//! at most [`Tally::keep`] clipped records plus [`MAX_ERROR_TYPES`] and [`MAX_CHECKS`] counters.

use std::collections::{BTreeMap, VecDeque};

use rdkafka::message::{BorrowedMessage, Message};
use serde::Serialize;
use sluice_core::topics::header;

/// The error type of a record without a `sluice.error.type` header.
pub(crate) const UNKNOWN: &str = "unknown";
/// Error types counted apart; any further one counts as [`OTHER`] (foreign producers may put
/// anything in the header).
pub(crate) const MAX_ERROR_TYPES: usize = 64;
pub(crate) const OTHER: &str = "other";
/// Checks counted apart (by the `sluice.check` header); any further one counts as [`OTHER`].
pub(crate) const MAX_CHECKS: usize = 64;
/// Bytes of a value kept (and shown).
const MAX_VALUE: usize = 2048;
/// Bytes of a key kept.
const MAX_KEY: usize = 256;
/// Bytes of a header name, a header value and an error type kept.
const MAX_HEADER_NAME: usize = 128;
const MAX_HEADER_VALUE: usize = 256;
const MAX_ERROR_TYPE: usize = 64;
/// Bytes of a check name kept.
const MAX_CHECK: usize = 128;
/// Headers kept per record.
const MAX_HEADERS: usize = 16;

/// Some bytes, clipped: as text when they are UTF-8, else as hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Clipped {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    /// The size of the whole, in bytes.
    pub size: usize,
    /// Only the first bytes are here.
    pub cut: bool,
}

impl Clipped {
    pub fn of(bytes: &[u8], max: usize) -> Clipped {
        let head = &bytes[..bytes.len().min(max)];
        let cut = head.len() < bytes.len();
        let text = match std::str::from_utf8(head) {
            Ok(text) => Some(text),
            // A character the clip split in two: the text before it.
            Err(e) if cut && e.error_len().is_none() => {
                std::str::from_utf8(&head[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        };
        Clipped {
            hex: text.is_none().then(|| hex(head)),
            text: text.map(str::to_string),
            size: bytes.len(),
            cut,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// `bytes` as text (lossily), at most `max` bytes of it, on a character boundary.
fn lossy(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().find(|(at, c)| at + c.len_utf8() > max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.into_owned(),
    }
}

/// A record header, clipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct HeaderText {
    pub name: String,
    /// `None`: a null header.
    pub value: Option<String>,
}

/// One record of `<job>.dlq` or `<job>.late`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp (ms since the epoch).
    pub timestamp_ms: Option<i64>,
    /// `sluice.error.type`, or [`UNKNOWN`].
    pub error_type: String,
    /// `sluice.check`: the data-quality check that quarantined it (`check_failed`).
    pub check: Option<String>,
    pub key: Option<Clipped>,
    pub value: Option<Clipped>,
    pub headers: Vec<HeaderText>,
    /// Headers beyond those kept.
    pub more_headers: usize,
}

/// A record's parts, as read from Kafka.
pub(crate) struct RawRecord<'m> {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'m [u8]>,
    pub value: Option<&'m [u8]>,
    /// (name, value) in order; a `None` value is a null header.
    pub headers: Vec<(&'m [u8], Option<&'m [u8]>)>,
}

impl DeadLetter {
    pub fn of(record: &RawRecord<'_>) -> DeadLetter {
        let value_of = |wanted: &str| {
            record
                .headers
                .iter()
                .find(|(name, _)| *name == wanted.as_bytes())
                .and_then(|(_, value)| *value)
        };
        let error_type = value_of(header::ERROR_TYPE)
            .map_or_else(|| UNKNOWN.to_string(), |v| lossy(v, MAX_ERROR_TYPE));
        DeadLetter {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            error_type,
            check: value_of(header::CHECK).map(|v| lossy(v, MAX_CHECK)),
            key: record.key.map(|k| Clipped::of(k, MAX_KEY)),
            value: record.value.map(|v| Clipped::of(v, MAX_VALUE)),
            headers: record
                .headers
                .iter()
                .take(MAX_HEADERS)
                .map(|(name, value)| HeaderText {
                    name: lossy(name, MAX_HEADER_NAME),
                    value: value.map(|v| lossy(v, MAX_HEADER_VALUE)),
                })
                .collect(),
            more_headers: record.headers.len().saturating_sub(MAX_HEADERS),
        }
    }

    pub fn of_message(message: &BorrowedMessage<'_>) -> DeadLetter {
        DeadLetter::of(&RawRecord {
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key(),
            value: message.payload(),
            headers: raw_headers(message),
        })
    }
}

/// Every header of `message`, in order, read as bytes ([`sluice_kafka::raw_headers`]: a
/// record someone else wrote must never take the server down).
fn raw_headers<'m>(message: &'m BorrowedMessage<'_>) -> Vec<(&'m [u8], Option<&'m [u8]>)> {
    sluice_kafka::raw_headers(message)
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect()
}

/// Counts one record under `name`, or under [`OTHER`] once `counts` has `max` names.
fn count_bounded(counts: &mut BTreeMap<String, u64>, name: &str, max: usize) {
    if let Some(n) = counts.get_mut(name) {
        *n += 1;
    } else if counts.len() < max {
        counts.insert(name.to_string(), 1);
    } else {
        *counts.entry(OTHER.to_string()).or_default() += 1;
    }
}

/// What was read of one topic: records counted by error type and by check, the newest kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    pub records: u64,
    pub by_error_type: BTreeMap<String, u64>,
    /// Records with a `sluice.check` header, by its value.
    pub by_check: BTreeMap<String, u64>,
    newest: VecDeque<DeadLetter>,
    keep: usize,
}

impl Tally {
    /// A tally keeping the newest `keep` records.
    pub fn new(keep: usize) -> Tally {
        Tally {
            records: 0,
            by_error_type: BTreeMap::new(),
            by_check: BTreeMap::new(),
            newest: VecDeque::with_capacity(keep),
            keep,
        }
    }

    /// The number of records kept at most.
    pub fn keep(&self) -> usize {
        self.keep
    }

    pub fn add(&mut self, letter: DeadLetter) {
        self.records += 1;
        count_bounded(&mut self.by_error_type, &letter.error_type, MAX_ERROR_TYPES);
        if let Some(check) = &letter.check {
            count_bounded(&mut self.by_check, check, MAX_CHECKS);
        }
        if self.keep == 0 {
            return;
        }
        if self.newest.len() >= self.keep {
            self.newest.pop_front();
        }
        self.newest.push_back(letter);
    }

    /// The newest `limit` records kept, newest first.
    pub fn newest(&self, limit: usize) -> impl Iterator<Item = &DeadLetter> {
        self.newest.iter().rev().take(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(offset: i64, headers: Vec<(&'a [u8], Option<&'a [u8]>)>) -> RawRecord<'a> {
        RawRecord {
            partition: 1,
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(&b"k"[..]),
            value: Some(&b"{not json"[..]),
            headers,
        }
    }

    fn typed(offset: i64, error_type: &str) -> DeadLetter {
        DeadLetter::of(&record(
            offset,
            vec![(header::ERROR_TYPE.as_bytes(), Some(error_type.as_bytes()))],
        ))
    }

    #[test]
    fn the_error_type_comes_from_sluice_s_header() {
        let letter = DeadLetter::of(&record(
            7,
            vec![
                (header::SOURCE_TOPIC.as_bytes(), Some(&b"orders"[..])),
                (header::ERROR_TYPE.as_bytes(), Some(&b"malformed_json"[..])),
                (&b"null-header"[..], None),
            ],
        ));
        assert_eq!(letter.error_type, "malformed_json");
        assert_eq!((letter.partition, letter.offset), (1, 7));
        assert_eq!(letter.headers.len(), 3);
        assert_eq!(letter.headers[2].value, None);
        assert_eq!(
            letter.value.as_ref().and_then(|v| v.text.as_deref()),
            Some("{not json")
        );
        let foreign = DeadLetter::of(&record(8, vec![(&b"other"[..], Some(&b"x"[..]))]));
        assert_eq!(foreign.error_type, UNKNOWN);
    }

    #[test]
    fn bytes_are_clipped_and_non_utf8_is_hex() {
        // An odd clip splits a two-byte character: the text stops before it.
        let long = "é".repeat(MAX_VALUE);
        let clipped = Clipped::of(long.as_bytes(), MAX_VALUE - 1);
        let text = clipped.text.as_deref().unwrap_or_default();
        assert!(clipped.cut && clipped.size == long.len());
        assert_eq!(clipped.hex, None);
        assert!(!text.is_empty() && text.len() < MAX_VALUE && text.chars().all(|c| c == 'é'));
        let binary = Clipped::of(&[0xff, 0x00, 0x10], MAX_VALUE);
        assert_eq!(binary.text, None);
        assert_eq!(binary.hex.as_deref(), Some("ff0010"));
        assert!(!binary.cut);
        let name = vec![0xffu8; 4 * MAX_HEADER_NAME];
        let value = vec![b'v'; 4 * MAX_HEADER_VALUE];
        let many: Vec<(&[u8], Option<&[u8]>)> = (0..MAX_HEADERS + 5)
            .map(|_| (name.as_slice(), Some(value.as_slice())))
            .collect();
        let letter = DeadLetter::of(&record(0, many));
        assert_eq!(letter.headers.len(), MAX_HEADERS);
        assert_eq!(letter.more_headers, 5);
        let first = &letter.headers[0];
        assert!(first.name.len() <= MAX_HEADER_NAME + '…'.len_utf8());
        assert!(
            first
                .value
                .as_ref()
                .is_some_and(|v| v.len() <= MAX_HEADER_VALUE + 3)
        );
    }

    #[test]
    fn a_tally_counts_every_record_and_keeps_the_newest() {
        let mut tally = Tally::new(3);
        let types = ["malformed_json", "schema_violation", "malformed_json"];
        for offset in 0..10 {
            tally.add(typed(offset, types[offset as usize % types.len()]));
        }
        assert_eq!(tally.records, 10);
        let counted: u64 = tally.by_error_type.values().sum();
        assert_eq!(counted, 10);
        let schema = (0..10).filter(|i| i % 3 == 1).count() as u64;
        assert_eq!(tally.by_error_type.get("schema_violation"), Some(&schema));
        let offsets: Vec<i64> = tally.newest(10).map(|l| l.offset).collect();
        assert_eq!(offsets, vec![9, 8, 7]);
        assert_eq!(tally.newest(1).count(), 1);
    }

    #[test]
    fn quarantined_records_are_counted_by_the_check_their_header_names() {
        let quarantined = |offset: i64, check: &str| {
            DeadLetter::of(&record(
                offset,
                vec![
                    (header::ERROR_TYPE.as_bytes(), Some(&b"check_failed"[..])),
                    (header::CHECK.as_bytes(), Some(check.as_bytes())),
                ],
            ))
        };
        let mut tally = Tally::new(5);
        let checks = ["range_amount", "not_null_order_id", "range_amount"];
        for (offset, check) in checks.iter().enumerate() {
            tally.add(quarantined(offset as i64, check));
        }
        tally.add(typed(3, "malformed_json"));
        assert_eq!(tally.records, 4);
        assert_eq!(tally.by_error_type.get("check_failed"), Some(&3));
        assert_eq!(tally.by_check.get("range_amount"), Some(&2));
        assert_eq!(tally.by_check.get("not_null_order_id"), Some(&1));
        assert_eq!(
            tally.by_check.values().sum::<u64>(),
            3,
            "no check, no count"
        );
        let newest: Vec<Option<&str>> = tally.newest(2).map(|l| l.check.as_deref()).collect();
        assert_eq!(newest, [None, Some("range_amount")]);
        let mut many = Tally::new(0);
        for i in 0..MAX_CHECKS + 2 {
            many.add(quarantined(i as i64, &format!("check_{i}")));
        }
        assert_eq!(many.by_check.len(), MAX_CHECKS + 1);
        assert_eq!(many.by_check.get(OTHER), Some(&2));
    }

    #[test]
    fn error_types_beyond_the_limit_count_as_other() {
        let mut tally = Tally::new(0);
        let extra = 5;
        for i in 0..MAX_ERROR_TYPES + extra {
            tally.add(typed(i as i64, &format!("type_{i}")));
        }
        tally.add(typed(0, "type_0"));
        assert_eq!(tally.by_error_type.len(), MAX_ERROR_TYPES + 1);
        assert_eq!(tally.by_error_type.get(OTHER), Some(&(extra as u64)));
        assert_eq!(tally.by_error_type.get("type_0"), Some(&2));
        assert_eq!(tally.newest(10).count(), 0, "keeps nothing with keep 0");
    }
}
