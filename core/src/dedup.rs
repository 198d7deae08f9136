//! First-row deduplication (`ROW_NUMBER() OVER (PARTITION BY k ORDER BY event_time) … WHERE
//! rn = 1`): the one implementation both layers run, over [`OperatorState`].
//!
//! The rule both layers meet: a row is dropped exactly when another row of the same task
//! (source partition) with the same key came **at most `dedup_within` before it** in
//! (event time, row id) order. Only the immediate predecessor matters, so the state is the last
//! (time, id) per key, and it can be forgotten once no row that is still to come can be within
//! the horizon of it. Duplicates more than the horizon apart are both kept, by both layers.
//! Flink's first-row dedup forgets keys after a processing-time TTL instead, which no batch
//! recompute can reproduce.
//!
//! Rows arrive in any order, so a row is only decided once nothing before it can still come:
//! rows wait in the state ([`SpaceKind::DedupHeld`](crate::operator_state::SpaceKind)) until the caller's *bound* passes them (the
//! speed layer's watermark net of the allowed lateness; the batch layer's end of input), then
//! are released in (time, id) order. A row with a time below a bound already released is late:
//! the caller diverts it before [`DedupStage::hold`] (the speed layer to `<job>.late`, as for
//! late window updates), and the next backfill of its range counts it.
//!
//! Row ids order rows with equal event times alike in both layers: a Kafka record's offset
//! ([`RowId::offset`]), or for rows loaded from files, which have no offset, the encoded row
//! followed by an occurrence number, so identical rows stay distinct ([`RowId::content`]).

use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{FieldRef, SchemaRef, TimestampMicrosecondType};

use crate::error::{Error, Result, arrow_err};
use crate::operator_state::{
    OperatorState, Space, SpaceKind, keyed_value, split_keyed, time_key, time_of_key, time_prefixed,
};
use crate::state_codec::StateCodec;

/// The rows of `rows` (with their `ids`) where `keep` is true.
pub fn select_rows(
    rows: &RecordBatch,
    ids: &[RowId],
    keep: &[bool],
) -> Result<(RecordBatch, Vec<RowId>)> {
    let kept_ids: Vec<RowId> = ids
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(id, _)| id.clone())
        .collect();
    if kept_ids.len() == rows.num_rows() {
        return Ok((rows.clone(), kept_ids));
    }
    let kept =
        arrow::compute::filter_record_batch(rows, &arrow::array::BooleanArray::from(keep.to_vec()))
            .map_err(arrow_err("selecting rows to deduplicate"))?;
    Ok((kept, kept_ids))
}

/// What orders rows with equal event times within one task (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowId(Vec<u8>);

impl RowId {
    /// A Kafka record's id: its offset (non-negative, so big-endian bytes sort as offsets).
    pub fn offset(offset: i64) -> RowId {
        RowId(offset.to_be_bytes().to_vec())
    }

    /// A file row's id: its encoding, then a number telling identical rows apart (they are
    /// interchangeable, so which is first does not matter).
    pub fn content(encoded: Vec<u8>) -> RowId {
        RowId(encoded)
    }

    /// A Kafka record's id when records of several partitions meet (a table's versions):
    /// its partition, then its offset.
    pub fn at(partition: i32, offset: i64) -> RowId {
        let mut bytes = Vec::with_capacity(12);
        bytes.extend_from_slice(&partition.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        RowId(bytes)
    }

    /// An id as stored: the bytes [`RowId::as_bytes`] gave.
    pub fn from_bytes(bytes: Vec<u8>) -> RowId {
        RowId(bytes)
    }

    /// The offset of an [`RowId::offset`] id.
    pub fn as_offset(&self) -> Option<i64> {
        let bytes: [u8; 8] = self.0.as_slice().try_into().ok()?;
        Some(i64::from_be_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The rows a release decided, in (time, id) order.
#[derive(Debug)]
pub struct Released {
    /// The first rows of their keys, in the source schema.
    pub kept: RecordBatch,
    /// The id of each kept row.
    pub ids: Vec<RowId>,
    /// How many duplicates were dropped.
    pub dropped: usize,
    /// The dropped rows and their ids, when asked for ([`DedupStage::release_all_rows`]).
    pub duplicates: Option<(RecordBatch, Vec<RowId>)>,
}

/// A compiled first-row dedup over a source schema.
#[derive(Debug, Clone)]
pub struct DedupStage {
    schema: SchemaRef,
    event_time: usize,
    keys: Vec<usize>,
    key_codec: StateCodec,
    row_codec: StateCodec,
    within_us: i64,
    /// The stage's number: its key spaces are its own ([`Space`]).
    stage: u8,
}

impl DedupStage {
    /// Dedup of rows of `schema` by the columns `keys` (indices), ordered by the timestamp
    /// column `event_time`, with the horizon `within`.
    pub fn new(
        schema: SchemaRef,
        event_time: usize,
        keys: Vec<usize>,
        within: Duration,
    ) -> DedupStage {
        let fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
        let key_fields = keys.iter().map(|&k| fields[k].clone()).collect();
        DedupStage {
            key_codec: StateCodec::new(key_fields),
            row_codec: StateCodec::new(fields),
            schema,
            event_time,
            keys,
            within_us: i64::try_from(within.as_micros()).unwrap_or(i64::MAX),
            stage: 0,
        }
    }

    /// The same stage numbered `stage` in its job's pipeline (0 unless told otherwise).
    pub fn numbered(mut self, stage: u8) -> DedupStage {
        self.stage = stage;
        self
    }

    fn space(&self, kind: SpaceKind) -> Space {
        Space::new(self.stage, kind)
    }

    /// The schema of the rows it holds (the job's source schema).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The horizon (µs): how far back of a row the batch layer must read for its decision.
    pub fn within_us(&self) -> i64 {
        self.within_us
    }

    /// The names of the dedup key columns.
    pub fn key_names(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|&k| self.schema.field(k).name().as_str())
            .collect()
    }

    /// The encoding of `rows`' row `row`, for [`RowId::content`].
    pub fn encode_row(&self, rows: &RecordBatch, row: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.row_codec.encode_row(rows.columns(), row, &mut out)?;
        Ok(out)
    }

    /// The event times of `rows` (µs); an error names the first null one (decoders never let
    /// one through: a record without its event time is dead-lettered).
    pub fn event_times(&self, rows: &RecordBatch) -> Result<Vec<i64>> {
        let times = rows
            .column(self.event_time)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| {
                Error::OperatorState("the dedup event time is not a microsecond timestamp".into())
            })?;
        if let Some(row) = (0..times.len()).find(|&r| times.is_null(r)) {
            return Err(Error::OperatorState(format!(
                "row {row} has no event time to deduplicate by"
            )));
        }
        Ok(times.values().to_vec())
    }

    /// Puts `rows` (one task's, with their ids, none late) in the state until a release
    /// decides them.
    pub fn hold(
        &self,
        state: &mut dyn OperatorState,
        rows: &RecordBatch,
        ids: &[RowId],
    ) -> Result<()> {
        if !crate::plan::same_fields(&self.schema, rows.schema_ref()) {
            return Err(Error::OperatorState(format!(
                "rows to deduplicate have the schema {:?}, not the source's",
                rows.schema_ref().fields()
            )));
        }
        if ids.len() != rows.num_rows() {
            return Err(Error::OperatorState(format!(
                "{} row ids for {} rows",
                ids.len(),
                rows.num_rows()
            )));
        }
        let times = self.event_times(rows)?;
        let key_columns: Vec<ArrayRef> =
            self.keys.iter().map(|&k| rows.column(k).clone()).collect();
        for (row, (time, id)) in times.iter().zip(ids).enumerate() {
            let held_key = time_prefixed(*time, id.as_bytes());
            let mut dedup_key = Vec::new();
            self.key_codec
                .encode_row(&key_columns, row, &mut dedup_key)?;
            let mut value = keyed_value(Some(&dedup_key), 64);
            self.row_codec.encode_row(rows.columns(), row, &mut value)?;
            state.put(self.space(SpaceKind::DedupHeld), held_key, value);
        }
        Ok(())
    }

    /// Decides every held row with event time `< bound` (µs), in (time, id) order: kept when
    /// its key's previous row is absent or more than the horizon before it, dropped otherwise.
    /// Then forgets the keys no row at or after `bound` can be a duplicate of.
    pub fn release(&self, state: &mut dyn OperatorState, bound: i64) -> Result<Released> {
        self.release_with(state, bound, (true, false))
    }

    /// [`DedupStage::release`], with the dropped rows too (a `unique` check's violations).
    pub fn release_all_rows(&self, state: &mut dyn OperatorState, bound: i64) -> Result<Released> {
        self.release_with(state, bound, (true, true))
    }

    /// [`DedupStage::release`] for a stage that only counts: the dropped rows, and no kept
    /// rows (`kept` empty, `ids` empty), so the kept ones are never decoded.
    pub fn release_duplicates(
        &self,
        state: &mut dyn OperatorState,
        bound: i64,
    ) -> Result<Released> {
        self.release_with(state, bound, (false, true))
    }

    /// Decides the held rows before `bound`; `(with_kept, with_duplicates)` says which rows
    /// to return.
    fn release_with(
        &self,
        state: &mut dyn OperatorState,
        bound: i64,
        (with_kept, with_duplicates): (bool, bool),
    ) -> Result<Released> {
        let mut duplicate_rows = Vec::new();
        let mut duplicate_ids = Vec::new();
        let held = state.range(
            self.space(SpaceKind::DedupHeld),
            &time_key(i64::MIN),
            &time_key(bound),
        )?;
        let mut kept_rows = Vec::new();
        let mut ids = Vec::new();
        let mut dropped = 0;
        for (held_key, value) in held {
            let time = time_of_key(&held_key).ok_or_else(|| corrupt("held row key"))?;
            let id = RowId(held_key[8..].to_vec());
            let (dedup_key, row) = split_held(&value)?;
            let previous = state.get(self.space(SpaceKind::DedupSeen), dedup_key)?;
            let duplicate = match &previous {
                Some(seen) => {
                    let seen_time = time_of_key(seen).ok_or_else(|| corrupt("seen entry"))?;
                    state.delete(
                        self.space(SpaceKind::DedupSeenByTime),
                        time_prefixed(seen_time, dedup_key),
                    );
                    time.saturating_sub(seen_time) <= self.within_us
                }
                None => false,
            };
            state.put(
                self.space(SpaceKind::DedupSeen),
                dedup_key.to_vec(),
                time_prefixed(time, id.as_bytes()),
            );
            state.put(
                self.space(SpaceKind::DedupSeenByTime),
                time_prefixed(time, dedup_key),
                Vec::new(),
            );
            state.delete(self.space(SpaceKind::DedupHeld), held_key);
            if duplicate {
                dropped += 1;
                if with_duplicates {
                    duplicate_rows.push(row.to_vec());
                    duplicate_ids.push(id);
                }
            } else if with_kept {
                kept_rows.push(row.to_vec());
                ids.push(id);
            }
        }
        self.forget_before(state, bound.saturating_sub(self.within_us))?;
        let kept = self.rows(&kept_rows)?;
        let duplicates = if with_duplicates {
            Some((self.rows(&duplicate_rows)?, duplicate_ids))
        } else {
            None
        };
        Ok(Released {
            kept,
            ids,
            dropped,
            duplicates,
        })
    }

    /// Encoded rows back as a batch of the source schema.
    fn rows(&self, encoded: &[Vec<u8>]) -> Result<RecordBatch> {
        if encoded.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let columns = self.row_codec.decode_rows(encoded)?;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(arrow_err("rebuilding released rows"))
    }

    /// Forgets the keys whose last row is before `before`: any row still to come is at or
    /// after the release bound, more than the horizon after them.
    fn forget_before(&self, state: &mut dyn OperatorState, before: i64) -> Result<()> {
        let expired = state.range(
            self.space(SpaceKind::DedupSeenByTime),
            &time_key(i64::MIN),
            &time_key(before),
        )?;
        for (by_time, _) in expired {
            let dedup_key = by_time
                .get(8..)
                .ok_or_else(|| corrupt("seen-by-time key"))?;
            state.delete(self.space(SpaceKind::DedupSeen), dedup_key.to_vec());
            state.delete(self.space(SpaceKind::DedupSeenByTime), by_time);
        }
        Ok(())
    }
}

fn corrupt(what: &str) -> Error {
    Error::OperatorState(format!("corrupt dedup state: bad {what}"))
}

/// A held value: the dedup key and the encoded row ([`keyed_value`]).
fn split_held(value: &[u8]) -> Result<(&[u8], &[u8])> {
    match split_keyed(value) {
        Some((Some(key), row)) => Ok((key, row)),
        _ => Err(corrupt("held row")),
    }
}

#[cfg(test)]
mod tests;
