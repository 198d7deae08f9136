//! What goes into and comes out of one micro-batch: source records in; speed records,
//! results, routed results, diverted records and offsets out, all bound for one Kafka
//! transaction.

use std::collections::BTreeMap;

use sluice_core::DivertReason;

/// A record as read from the source topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// A record sent to `<job>.dlq` or `<job>.late` with why: its own bytes, or with its PII
/// protected (see [`sluice_core::pii`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diverted {
    pub record: SourceRecord,
    pub error_type: DivertReason,
    pub message: String,
    pub field: Option<String>,
    /// `check_failed`: the data-quality check the record violated.
    pub check: Option<String>,
    /// Late records: the job watermark and the record's event time (µs).
    pub watermark_us: Option<i64>,
    pub event_time_us: Option<i64>,
    /// A job with PII fields: how the record's bytes were changed (the `sluice.pii` header).
    pub pii: Option<sluice_core::pii::PiiMark>,
}

/// One `<job>.speed` record: a state row upsert, a tombstone, or a watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeedRecord {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// One result row routed to an `[[outputs]]` entry (see [`sluice_core::outputs`]): encoded as
/// on `<job>.results`, and sent beside it in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedRecord {
    /// The output's index in the job file's `[[outputs]]` (and in `Topics::outputs`).
    pub output: usize,
    /// An aggregate's result key (the same JSON as on `<job>.results`); none for a stateless
    /// job's rows.
    pub key: Option<Vec<u8>>,
    /// The row as JSON.
    pub value: Vec<u8>,
}

/// What one micro-batch's transaction holds.
#[derive(Debug, Default)]
pub struct Output {
    pub speed: Vec<SpeedRecord>,
    /// `<job>.state`: operator-state changes (same shape as `<job>.speed` records).
    pub state: Vec<SpeedRecord>,
    /// Rows a first-row dedup dropped as duplicates.
    pub deduplicated: usize,
    /// `<job>.results`: (key, value) JSON.
    pub results: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    /// Result rows again, for each `[[outputs]]` entry whose predicate they match.
    pub routed: Vec<RoutedRecord>,
    pub dlq: Vec<Diverted>,
    pub late: Vec<Diverted>,
    /// The next offset to consume per source partition.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Records that reached the plan.
    pub rows_in: usize,
    /// Records consumed per source partition.
    pub consumed: BTreeMap<i32, u64>,
    /// Retired rows tombstoned in `<job>.speed` because the batch view covers them.
    pub tombstoned: usize,
    /// Data-quality check violations of the micro-batch's rows, per plan run.
    pub violations: Vec<sluice_core::CheckViolations>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.speed.is_empty()
            && self.state.is_empty()
            && self.results.is_empty()
            && self.routed.is_empty()
            && self.dlq.is_empty()
            && self.late.is_empty()
            && self.next_offsets.is_empty()
    }
}
