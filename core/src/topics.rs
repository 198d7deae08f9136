//! The Kafka topics of a job and the headers Sluice puts on records it diverts.
//!
//! | topic | key | value |
//! | --- | --- | --- |
//! | `source.topic` (and each input's) | anything | one record of the input's `format` |
//! | `<job>.speed` (compacted) | see [`crate::speed`] | encoded partial states, or a tombstone |
//! | `<job>.results` | JSON object of the result key: the view key columns and the window bounds the SELECT keeps | one finalized row as JSON |
//! | `<job>.dlq` | the original key | the original value bytes, unchanged |
//! | `<job>.late` | the original key | the original value bytes, unchanged |
//! | `<job>.control` (compacted, per job) | see [`crate::control`] | JSON |
//!
//! Dead-lettered and late records keep their bytes exactly, so they can be inspected and
//! re-published as they are; everything Sluice knows about them travels in headers
//! (names in [`header`]), the convention Kafka Connect's dead-letter queues use.

use crate::spec::Job;

/// The topic names one job reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The primary stream's topic (the one the SQL reads).
    pub source: String,
    /// Every input as (table name, topic), the primary stream first (see
    /// [`crate::spec_inputs`]); each is landed in its own raw table.
    pub inputs: Vec<(String, String)>,
    pub speed: String,
    pub results: String,
    pub dlq: String,
    pub late: String,
    /// `<job>.state`: the changelog of the stateful plan stages' state (a deduplicating job's;
    /// see [`crate::operator_state`]), compacted, partition `p` for source partition `p`.
    /// Made only for jobs that have such a stage.
    pub state: String,
    /// `<job>.control` (one per job, whatever the version: see [`crate::control`]).
    pub control: String,
    /// `[[outputs]]`: (output name, topic), in the job file's order.
    pub outputs: Vec<(String, String)>,
}

impl Topics {
    /// The topics of `job`'s version (see [`crate::plan_version`]): `<job>.speed` … for
    /// version 1, `<job>.v<N>.speed` … after.
    pub fn for_job(job: &Job) -> Topics {
        let name = job.versioned_name();
        Topics {
            source: job.spec.source.topic.clone(),
            inputs: job.input_names(),
            speed: format!("{name}.speed"),
            results: format!("{name}.results"),
            dlq: format!("{name}.dlq"),
            late: format!("{name}.late"),
            state: format!("{name}.state"),
            control: format!("{}.control", job.name()),
            outputs: job
                .spec
                .outputs
                .iter()
                .map(|o| {
                    let topic = o
                        .topic
                        .clone()
                        .unwrap_or_else(|| format!("{name}.out.{}", o.name));
                    (o.name.clone(), topic)
                })
                .collect(),
        }
    }

    /// The topic a sink reads: its output's, or `<job>.results`.
    pub fn sink_input(&self, sink: &crate::spec::SinkSpec) -> &str {
        sink.output
            .as_deref()
            .and_then(|name| self.outputs.iter().find(|(n, _)| n == name))
            .map_or(self.results.as_str(), |(_, topic)| topic.as_str())
    }
}

/// The consumer group of sink `sink` of the job whose speed-layer group is `group`; its
/// offsets live in the sink's own store (PostgreSQL: `ETLCheckpoint.consumer_group`).
pub fn sink_group(group: &str, sink: &str) -> String {
    format!("{group}.sink.{sink}")
}

/// The consumer group under which a sink mirrors `<job>.dlq` into its store.
pub fn dead_letter_group(group: &str, sink: &str) -> String {
    format!("{group}.sink.{sink}.dlq")
}

/// The consumer group under which `sluice dlq replay` records how far it re-published.
pub fn replay_group(job_name: &str) -> String {
    format!("sluice-{job_name}.dlq-replay")
}

/// Why a record was diverted: the `sluice.error.type` header, the DLQ metric's label, the
/// `error` of a rejects file. One list for every layer, so a record rejected by the speed layer
/// carries the same reason as the line `lake load` or the row `backfill` rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DivertReason {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// Not one JSON object (syntax, trailing bytes, another JSON type, no value at all).
    MalformedJson,
    /// A field's value does not fit its declared type: wrong JSON type, out of the type's
    /// range (including timestamps outside the supported years), or a non-finite number.
    SchemaViolation,
    /// A required field (always the event time) is absent or null.
    MissingField,
    /// Larger than the record limit.
    Oversized,
    /// The event time is more than `max_future_skew` ahead of the record's timestamp.
    ClockSkew,
    /// The record decoded but the job's plan (SQL expressions, UDFs, Polars transform)
    /// failed on it.
    TransformError,
    /// Every window of the event closed more than the allowed lateness ago (`<job>.late`).
    Late,
    /// `avro-confluent`: the record does not start with the magic byte 0 and a 4-byte schema
    /// id (JSON on an Avro topic, a producer without the registry serializer).
    MissingMagicByte,
    /// `avro-confluent`: the registry says the record's schema id does not exist.
    UnknownSchemaId,
    /// The Avro body does not decode with its writer schema: truncated, corrupt, or with
    /// bytes left over.
    MalformedAvro,
    /// The writer schema cannot be resolved to the job's fields (a required field it lacks, a
    /// type that does not promote to the field's type) or does not parse.
    IncompatibleSchema,
    /// The record violates a `quarantine` data-quality check (`[[checks]]`); the
    /// `sluice.check` header names it.
    CheckFailed,
    /// A record in a results or output topic that is not one row of the job's result schema
    /// (another producer wrote it): a PostgreSQL sink keeps it in `ETLDeadLetter` instead of
    /// its table and goes on.
    NotAResultRow,
}

impl DivertReason {
    pub const ALL: [DivertReason; 14] = [
        DivertReason::NotUtf8,
        DivertReason::MalformedJson,
        DivertReason::SchemaViolation,
        DivertReason::MissingField,
        DivertReason::Oversized,
        DivertReason::ClockSkew,
        DivertReason::TransformError,
        DivertReason::Late,
        DivertReason::MissingMagicByte,
        DivertReason::UnknownSchemaId,
        DivertReason::MalformedAvro,
        DivertReason::IncompatibleSchema,
        DivertReason::CheckFailed,
        DivertReason::NotAResultRow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DivertReason::NotUtf8 => "not_utf8",
            DivertReason::MalformedJson => "malformed_json",
            DivertReason::SchemaViolation => "schema_violation",
            DivertReason::MissingField => "missing_field",
            DivertReason::Oversized => "oversized",
            DivertReason::ClockSkew => "clock_skew",
            DivertReason::TransformError => "transform_error",
            DivertReason::Late => "late",
            DivertReason::MissingMagicByte => "missing_magic_byte",
            DivertReason::UnknownSchemaId => "unknown_schema_id",
            DivertReason::MalformedAvro => "malformed_avro",
            DivertReason::IncompatibleSchema => "incompatible_schema",
            DivertReason::CheckFailed => "check_failed",
            DivertReason::NotAResultRow => "not_a_result_row",
        }
    }

    pub fn parse(text: &str) -> Option<DivertReason> {
        DivertReason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl serde::Serialize for DivertReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for DivertReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The speed layer's consumer group for a job version named `job_name`
/// ([`Job::versioned_name`]; the default of `sluice stream --group`); the serving layer reads
/// its committed offsets to report lag.
pub fn stream_group(job_name: &str) -> String {
    format!("sluice-{job_name}")
}

/// The Delta transaction app id under which the raw-lake sink records the last offset of
/// source partition `partition` it committed (the sink resumes after it).
pub fn lake_app_id(job: &Job, partition: i32) -> String {
    format!("{}-p{partition}", job.name())
}

/// The Delta transaction app id every backfill commit of `job`'s view table carries, so that
/// concurrent backfills conflict instead of updating the cutoff from a stale read.
pub fn view_writer_app_id(job: &Job) -> String {
    format!("{}-backfill", job.versioned_name())
}

/// Header names on `<job>.dlq` and `<job>.late` records. Values are UTF-8 text.
pub mod header {
    /// The topic the record was read from.
    pub const SOURCE_TOPIC: &str = "sluice.source.topic";
    pub const SOURCE_PARTITION: &str = "sluice.source.partition";
    pub const SOURCE_OFFSET: &str = "sluice.source.offset";
    /// The record's Kafka timestamp (ms since the epoch), when it had one.
    pub const SOURCE_TIMESTAMP: &str = "sluice.source.timestamp";
    /// A [`super::DivertReason`]: `late` on `<job>.late`, any other on `<job>.dlq`.
    pub const ERROR_TYPE: &str = "sluice.error.type";
    pub const ERROR_MESSAGE: &str = "sluice.error.message";
    /// The field at fault, when known.
    pub const ERROR_FIELD: &str = "sluice.error.field";
    /// `check_failed`: the name of the data-quality check the record violated.
    pub const CHECK: &str = "sluice.check";
    /// On late records: the job watermark (RFC 3339) the record was behind.
    pub const WATERMARK: &str = "sluice.watermark";
    /// On late records: the record's event time (RFC 3339).
    pub const EVENT_TIME: &str = "sluice.event.time";
    /// `true` when the value holds only the first bytes of a record too large to re-publish.
    pub const TRUNCATED: &str = "sluice.payload.truncated";
    /// The original value's size in bytes, on truncated records.
    pub const ORIGINAL_SIZE: &str = "sluice.payload.size";
    /// A job with PII fields: `protected` (tagged values replaced by their protected forms)
    /// or `withheld` (the bytes replaced whole; such a record is also marked truncated, so
    /// `sluice dlq replay` never re-publishes it). See [`crate::pii`].
    pub const PII: &str = "sluice.pii";
}

#[cfg(test)]
mod tests {
    use super::DivertReason;

    #[test]
    fn reasons_round_trip_through_their_names() {
        for reason in DivertReason::ALL {
            assert_eq!(DivertReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(DivertReason::parse("udf_error"), None);
    }
}
