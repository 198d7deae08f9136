//! The window lifecycle in the store: fold partial states in, emit windows the watermark
//! closed, retire windows past their lateness, and tombstone retired rows the batch view
//! covers. [`WindowIndex`](super::window_index::WindowIndex) decides which windows; this
//! module reads and writes their rows.

use std::collections::{BTreeSet, HashMap};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use sluice_core::AggregateStage;
use sluice_core::rows::to_json_lines;
use sluice_core::speed::{KeyPrefix, SpeedCodec};

use super::records::{Output, RoutedRecord, SpeedRecord};
use super::window_index::window_expired;
use super::{Processor, arrow_error};
use crate::error::Result;
use crate::state::{StateStore, StateWrite};

/// Retired rows one micro-batch tombstones at most (the rest follow in the next ones).
const TOMBSTONES_PER_BATCH: usize = 50_000;

/// Whether retired rows may be waiting for tombstones, so that a micro-batch scans the
/// retired key space only when the cutoff moved or rows were retired since the last scan.
#[derive(Debug, Default)]
pub(crate) struct TombstoneScan {
    /// The cutoff of the last scan that found everything below it (`None`: none yet).
    done_below: Option<i64>,
    /// Rows were retired (or restored) since that scan.
    dirty: bool,
}

impl TombstoneScan {
    pub(crate) fn recheck(&mut self) {
        self.dirty = true;
    }

    fn needed(&self, cutoff: i64) -> bool {
        self.dirty || self.done_below != Some(cutoff)
    }

    fn scanned(&mut self, cutoff: i64, exhausted: bool) {
        self.done_below = Some(cutoff);
        self.dirty = !exhausted;
    }
}

impl Processor {
    /// A HOP event can belong to a window that already expired beside one still open; the
    /// expired window's state is final (and purged), so its partial row is left out.
    pub(super) fn drop_expired_windows(
        &self,
        partial: RecordBatch,
        bound: Option<i64>,
    ) -> Result<RecordBatch> {
        let (Some(watermark), Some(stage)) = (bound, self.pipeline.plan().aggregate()) else {
            return Ok(partial);
        };
        if stage.window().is_none() {
            return Ok(partial);
        }
        let ends = stage.layout().window_ends(&partial);
        let keep: Vec<u32> = (0..partial.num_rows() as u32)
            .filter(|&r| {
                !window_expired(
                    ends.value(r as usize),
                    self.windows.lateness_us(),
                    watermark,
                )
            })
            .collect();
        if keep.len() == partial.num_rows() {
            return Ok(partial);
        }
        take_record_batch(&partial, &UInt32Array::from(keep))
            .map_err(arrow_error("dropping expired windows"))
    }

    /// Merges `partial` into `partition`'s state; changed rows become speed records.
    pub(super) fn fold(
        &mut self,
        partition: i32,
        partial: RecordBatch,
        output: &mut Output,
    ) -> Result<()> {
        let (Some(codec), Some(stage)) = (&self.codec, self.pipeline.plan().aggregate()) else {
            return Ok(());
        };
        if partial.num_rows() == 0 {
            return Ok(());
        }
        // Rows without a group window have no end to index; finding that out decodes the key.
        let windowed = stage.window().is_some();
        let existing = existing_rows(&self.store, codec, stage, partition, &partial)?;
        let merged = stage.merge(&[codec.decode(&existing)?, partial])?;
        let old: HashMap<Vec<u8>, Vec<u8>> = existing.into_iter().collect();
        let mut writes = Vec::new();
        let mut kept = BTreeSet::new();
        for row in 0..merged.num_rows() {
            let key = codec.key(&merged, row)?;
            let value = codec.value(&merged, row)?;
            kept.insert(key.clone());
            if old.get(&key) == Some(&value) {
                continue;
            }
            if windowed {
                self.windows.track(codec, partition, &key)?;
            }
            output.speed.push(SpeedRecord {
                partition,
                key: key.clone(),
                value: Some(value.clone()),
            });
            writes.push(StateWrite::Put {
                partition,
                key,
                value,
            });
        }
        for key in old.into_keys().filter(|k| !kept.contains(k)) {
            output.speed.push(SpeedRecord {
                partition,
                key: key.clone(),
                value: None,
            });
            writes.push(StateWrite::Delete { partition, key });
        }
        self.store.apply(&writes)
    }

    /// Emits the rows of windows that closed (or changed after closing) and forgets windows
    /// past their lateness. A job without a group window emits every changed key.
    /// Returns whether any partition's emitted bound moved (it must then be recorded).
    pub(super) fn emit_and_purge(
        &mut self,
        after: Option<i64>,
        output: &mut Output,
    ) -> Result<bool> {
        let (Some(codec), Some(stage)) = (self.codec.clone(), self.pipeline.plan().aggregate())
        else {
            return Ok(false);
        };
        let changed: BTreeSet<Vec<u8>> = output
            .speed
            .iter()
            .filter(|r| r.value.is_some())
            .map(|r| codec.window_prefix_of(&r.key).to_vec())
            .collect();
        let due = match (stage.window(), after) {
            (None, _) => changed,
            (Some(_), None) => return Ok(false),
            (Some(_), Some(after)) => self.windows.due(after, &changed),
        };
        self.emit(&codec, stage, &due, output)?;
        let (Some(_), Some(after)) = (stage.window(), after) else {
            return Ok(false);
        };
        let partitions: Vec<i32> = self.watermarks.partitions().map(|(p, _)| p).collect();
        let moved = self.windows.advance(partitions, after);
        self.purge(&codec)?;
        Ok(moved)
    }

    fn emit(
        &self,
        codec: &SpeedCodec,
        stage: &AggregateStage,
        due: &BTreeSet<Vec<u8>>,
        output: &mut Output,
    ) -> Result<()> {
        if due.is_empty() {
            return Ok(());
        }
        let partitions: Vec<i32> = self.watermarks.partitions().map(|(p, _)| p).collect();
        let mut rows = Vec::new();
        for &partition in &partitions {
            let prefixes = due.iter().map(Vec::as_slice);
            self.store.scan_prefixes(partition, prefixes, &mut rows)?;
        }
        let finalized = stage.finalize(&[codec.decode(&rows)?])?;
        if let Some(router) = self.pipeline.outputs() {
            for (index, rows) in router.route(&finalized)? {
                for (key, value) in keyed_json(stage, &rows)? {
                    output.routed.push(RoutedRecord {
                        output: index,
                        key: Some(key),
                        value,
                    });
                }
            }
        }
        for (key, value) in keyed_json(stage, &finalized)? {
            output.results.push((Some(key), value));
        }
        Ok(())
    }

    /// Retires windows whose end plus the allowed lateness the watermark has passed. Their
    /// rows stay in `<job>.speed` (the serving layer still needs them until a backfill covers
    /// them), so a restore brings them back until the next purge.
    fn purge(&mut self, codec: &SpeedCodec) -> Result<()> {
        let mut writes = Vec::new();
        for (partition, prefix) in self.windows.take_expired() {
            for (key, _) in self.store.scan(partition, &prefix)? {
                let bucket = codec.key_times(&key)?.0;
                writes.push(StateWrite::Retire {
                    partition,
                    bucket,
                    key,
                });
            }
        }
        if !writes.is_empty() {
            self.tombstones.recheck();
        }
        self.store.apply(&writes)
    }

    /// Tombstones, in `<job>.speed`, retired rows whose bucket the batch view now covers: the
    /// serving layer answers those buckets from the batch view, so the changelog (and every
    /// restore and speed view reading it) keeps only what the batch has not yet taken over.
    pub(super) fn tombstone_covered(&mut self, output: &mut Output) -> Result<()> {
        let Some(cutoff) = self.batch_cutoff else {
            return Ok(());
        };
        if !self.tombstones.needed(cutoff) {
            return Ok(());
        }
        let bucket = self.pipeline.plan().bucket_micros();
        // A bucket is covered when it ends at or before the cutoff.
        let before = cutoff.saturating_sub(bucket).saturating_add(1);
        let partitions: Vec<i32> = self.watermarks.partitions().map(|(p, _)| p).collect();
        let mut writes = Vec::new();
        for partition in partitions {
            let room = TOMBSTONES_PER_BATCH.saturating_sub(writes.len());
            for (partition, bucket, key) in self.store.retired_before(partition, before, room)? {
                output.speed.push(SpeedRecord {
                    partition,
                    key: key.clone(),
                    value: None,
                });
                writes.push(StateWrite::Forget {
                    partition,
                    bucket,
                    key,
                });
            }
        }
        self.tombstones
            .scanned(cutoff, writes.len() < TOMBSTONES_PER_BATCH);
        output.tombstoned += writes.len();
        self.store.apply(&writes)
    }
}

/// Finalized rows as (result key, row) JSON, as `<job>.results` carries them.
fn keyed_json(stage: &AggregateStage, finalized: &RecordBatch) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let keys = finalized
        .project(
            &stage
                .result_key_columns()
                .iter()
                .filter_map(|k| finalized.schema().index_of(k).ok())
                .collect::<Vec<_>>(),
        )
        .map_err(arrow_error("selecting the view key of result rows"))?;
    let values = to_json_lines(std::slice::from_ref(finalized))?;
    let keys = to_json_lines(&[keys])?;
    Ok(keys
        .split(|b| *b == b'\n')
        .zip(values.split(|b| *b == b'\n'))
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| (key.to_vec(), value.to_vec()))
        .collect())
}

/// The stored rows `partial`'s rows merge with: the same (key, window, bucket), or for
/// session windows every session of the same view key (a new event may bridge two).
fn existing_rows(
    store: &StateStore,
    codec: &SpeedCodec,
    stage: &AggregateStage,
    partition: i32,
    partial: &RecordBatch,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let sessions = stage.window().is_some_and(|w| w.is_session());
    if sessions {
        let prefixes: BTreeSet<Vec<u8>> = (0..partial.num_rows())
            .map(|r| codec.prefix(partial, r, KeyPrefix::ViewKey))
            .collect::<sluice_core::Result<_>>()?;
        let mut rows = Vec::new();
        for prefix in prefixes {
            rows.extend(store.scan(partition, &prefix)?);
        }
        return Ok(rows);
    }
    let keys: Vec<Vec<u8>> = (0..partial.num_rows())
        .map(|r| codec.key(partial, r))
        .collect::<sluice_core::Result<_>>()?;
    let values = store.get_many(partition, &keys)?;
    Ok(keys
        .into_iter()
        .zip(values)
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}
