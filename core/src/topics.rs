//! The Kafka topics of a job and the headers Sluice puts on records it diverts.
//!
//! | topic | key | value |
//! | --- | --- | --- |
//! | `source.topic` | anything | one JSON object |
//! | `<job>.speed` (compacted) | see [`crate::speed`] | encoded partial states, or a tombstone |
//! | `<job>.results` | JSON object of the view key columns | one finalized row as JSON |
//! | `<job>.dlq` | the original key | the original value bytes, unchanged |
//! | `<job>.late` | the original key | the original value bytes, unchanged |
//!
//! Dead-lettered and late records keep their bytes exactly, so they can be inspected and
//! re-published as they are; everything Sluice knows about them travels in headers
//! (names in [`header`]), the convention Kafka Connect's dead-letter queues use.

use crate::spec::Job;

/// The topic names one job reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub source: String,
    pub speed: String,
    pub results: String,
    pub dlq: String,
    pub late: String,
}

impl Topics {
    pub fn for_job(job: &Job) -> Topics {
        let name = job.name();
        Topics {
            source: job.spec.source.topic.clone(),
            speed: format!("{name}.speed"),
            results: format!("{name}.results"),
            dlq: format!("{name}.dlq"),
            late: format!("{name}.late"),
        }
    }
}

/// Header names on `<job>.dlq` and `<job>.late` records. Values are UTF-8 text.
pub mod header {
    /// The topic the record was read from.
    pub const SOURCE_TOPIC: &str = "sluice.source.topic";
    pub const SOURCE_PARTITION: &str = "sluice.source.partition";
    pub const SOURCE_OFFSET: &str = "sluice.source.offset";
    /// The record's Kafka timestamp (ms since the epoch), when it had one.
    pub const SOURCE_TIMESTAMP: &str = "sluice.source.timestamp";
    /// `not_utf8`, `malformed_json`, `schema_violation`, `missing_field`, `oversized`,
    /// `transform_error`; or `late` on `<job>.late`.
    pub const ERROR_TYPE: &str = "sluice.error.type";
    pub const ERROR_MESSAGE: &str = "sluice.error.message";
    /// The field at fault, when known.
    pub const ERROR_FIELD: &str = "sluice.error.field";
    /// On late records: the job watermark (RFC 3339) the record was behind.
    pub const WATERMARK: &str = "sluice.watermark";
    /// On late records: the record's event time (RFC 3339).
    pub const EVENT_TIME: &str = "sluice.event.time";
    /// `true` when the value holds only the first bytes of a record too large to re-publish.
    pub const TRUNCATED: &str = "sluice.payload.truncated";
    /// The original value's size in bytes, on truncated records.
    pub const ORIGINAL_SIZE: &str = "sluice.payload.size";
}
