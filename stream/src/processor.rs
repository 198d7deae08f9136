//! One micro-batch through the shared plan: decode, divert bad and late records, fold partial
//! states into keyed state, emit closed windows, purge expired ones.
//!
//! The processor knows nothing of Kafka clients: it takes records and returns everything the
//! micro-batch's transaction must hold ([`Output`]). Every filter, window and aggregate comes
//! from `sluice_core` ([`Pipeline`], [`AggregateStage`]); the processor only decides which rows
//! go where and keeps the state keyed by (source partition, view key, window, bucket).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use sluice_core::rows::to_json_lines;
use sluice_core::speed::{KeyPrefix, PartitionWatermark, SpeedCodec, WATERMARK_KEY};
use sluice_core::{AggregateStage, DivertReason, Job, JsonDecoder, Pipeline};

use crate::error::Result;
use crate::state::{StateStore, StateWrite};
use crate::watermark::Watermarks;

/// One `<job>.speed` record as read back: key and value (`None` = tombstone).
pub(crate) type ChangelogRecord = (Vec<u8>, Option<Vec<u8>>);

/// Expired rows a restore retires in one write.
const RESTORE_DELETE_CHUNK: usize = 10_000;
/// Retired rows one micro-batch tombstones at most (the rest follow in the next ones).
const TOMBSTONES_PER_BATCH: usize = 50_000;

/// A partition whose changelog is being replayed into the store.
pub(crate) struct Restoring {
    partition: i32,
    /// The newest watermark record seen so far.
    watermark: Option<PartitionWatermark>,
}

/// A record as read from the source topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// A record sent to `<job>.dlq` or `<job>.late`, bytes unchanged, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diverted {
    pub record: SourceRecord,
    pub error_type: DivertReason,
    pub message: String,
    pub field: Option<String>,
    /// Late records: the job watermark and the record's event time (µs).
    pub watermark_us: Option<i64>,
    pub event_time_us: Option<i64>,
}

/// One `<job>.speed` record: a state row upsert, a tombstone, or a watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeedRecord {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// What one micro-batch's transaction holds.
#[derive(Debug, Default)]
pub struct Output {
    pub speed: Vec<SpeedRecord>,
    /// `<job>.results`: (key, value) JSON.
    pub results: Vec<(Option<Vec<u8>>, Vec<u8>)>,
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
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.speed.is_empty()
            && self.results.is_empty()
            && self.dlq.is_empty()
            && self.late.is_empty()
            && self.next_offsets.is_empty()
    }
}

pub(crate) struct Processor {
    job: Job,
    pipeline: Arc<Pipeline>,
    decoder: JsonDecoder,
    event_time_index: usize,
    lateness_us: i64,
    codec: Option<SpeedCodec>,
    store: StateStore,
    watermarks: Watermarks,
    /// Window end → (partition, window prefix) of windows still held in the store.
    open_windows: BTreeMap<i64, BTreeSet<(i32, Vec<u8>)>>,
    /// Per partition: its windows that ended by this job watermark have been emitted, and
    /// those that ended `allowed_lateness` before it purged. It only grows, and it is the bound
    /// lateness is judged by: a record of the partition whose windows all ended
    /// `allowed_lateness` before it is late. (The job watermark itself may step back when a
    /// partition with older data is assigned; that pauses emission, it never reopens windows.)
    emitted_us: BTreeMap<i32, i64>,
    /// The job watermark after the last micro-batch, for metrics.
    last_watermark: Option<i64>,
    /// The partitions idle after the last micro-batch (their changes are logged).
    idle: BTreeSet<i32>,
    /// The batch view's cutoff, once it has been visible long enough for the serving layer
    /// to have loaded it: retired rows of buckets before it are tombstoned.
    batch_cutoff: Option<i64>,
}

impl Processor {
    pub(crate) fn new(
        job: Job,
        pipeline: Arc<Pipeline>,
        store: StateStore,
        watermarks: Watermarks,
        max_record_bytes: usize,
    ) -> Processor {
        let source = job.source_schema();
        let event_time_index = source
            .index_of(&job.spec.source.event_time)
            .unwrap_or_default();
        Processor {
            decoder: JsonDecoder::new(&job).with_max_record_bytes(max_record_bytes),
            event_time_index,
            lateness_us: job.spec.source.allowed_lateness.as_micros() as i64,
            codec: pipeline.plan().aggregate().map(SpeedCodec::new),
            job,
            pipeline,
            store,
            watermarks,
            open_windows: BTreeMap::new(),
            emitted_us: BTreeMap::new(),
            last_watermark: None,
            idle: BTreeSet::new(),
            batch_cutoff: None,
        }
    }

    /// The batch cutoff the serving layer has had time to load (see `crate::cutoff`).
    pub(crate) fn set_batch_cutoff(&mut self, cutoff: Option<i64>) {
        self.batch_cutoff = cutoff;
    }

    /// The partitions silent for the idle timeout that the broker must vouch for (read to
    /// their end) before they stop holding the job watermark back.
    pub(crate) fn unconfirmed_idle(&self, now: Instant) -> Vec<i32> {
        self.watermarks.unconfirmed_idle(now)
    }

    /// The broker's answer for `partition`: read to its end, or records left to read.
    pub(crate) fn broker_says(&mut self, partition: i32, read_to_end: bool, now: Instant) {
        if read_to_end {
            self.watermarks.confirm_read_to_end(partition, now);
        } else {
            self.watermarks.touch(partition, now);
        }
    }

    pub(crate) fn job_watermark(&self) -> Option<i64> {
        self.last_watermark
    }

    pub(crate) fn state_keys(&self) -> u64 {
        self.store.estimated_keys()
    }

    /// Starts restoring `partition` from its committed changelog: forgets what the store held
    /// of it. The changelog then arrives in chunks ([`Processor::restore_chunk`]), oldest first,
    /// so a restore holds one chunk in memory whatever the changelog's size.
    pub(crate) fn start_restore(&mut self, partition: i32) -> Result<Restoring> {
        self.store.drop_partition(partition)?;
        Ok(Restoring {
            partition,
            watermark: None,
        })
    }

    /// Starts bringing `partition` up to date from a checkpoint: the store already reflects the
    /// changelog before the checkpoint's offset, so only newer records follow (through
    /// [`Processor::restore_chunk`] and [`Processor::finish_restore`], as in a full restore).
    pub(crate) fn resume(
        &mut self,
        partition: i32,
        watermark: Option<PartitionWatermark>,
    ) -> Restoring {
        Restoring {
            partition,
            watermark,
        }
    }

    /// What a checkpoint records of `partition`: its watermark now (`None` before its first
    /// event).
    pub(crate) fn partition_watermark(&self, partition: i32) -> Option<PartitionWatermark> {
        let delay = self.watermarks.delay_us();
        self.watermarks
            .max_event_us(partition)
            .map(|max_event_us| PartitionWatermark {
                max_event_us,
                watermark_us: max_event_us.saturating_sub(delay),
                emitted_us: self.emitted_us.get(&partition).copied(),
            })
    }

    /// The store, to write a checkpoint into when the daemon stops.
    pub(crate) fn store(&self) -> &StateStore {
        &self.store
    }

    /// Applies the next chunk of the changelog (`(key, value)`; `None` value = tombstone).
    pub(crate) fn restore_chunk(
        &mut self,
        restoring: &mut Restoring,
        chunk: Vec<ChangelogRecord>,
    ) -> Result<()> {
        let partition = restoring.partition;
        let mut writes = Vec::with_capacity(chunk.len());
        for (key, value) in chunk {
            if key == WATERMARK_KEY {
                restoring.watermark = value
                    .as_deref()
                    .map(PartitionWatermark::decode)
                    .transpose()?;
                continue;
            }
            writes.push(match value {
                Some(value) => StateWrite::Put {
                    partition,
                    key,
                    value,
                },
                None => StateWrite::Delete { partition, key },
            });
        }
        self.store.apply(&writes)
    }

    /// The whole changelog has been applied: the partition resumes from its last committed
    /// watermark, and windows that had expired by then are dropped from the store again.
    pub(crate) fn finish_restore(&mut self, restoring: Restoring, now: Instant) -> Result<()> {
        let Restoring {
            partition,
            watermark,
        } = restoring;
        self.watermarks.assign(partition, watermark, now);
        match watermark.and_then(|w| w.emitted_us) {
            Some(emitted) => {
                self.emitted_us.insert(partition, emitted);
            }
            None => {
                self.emitted_us.remove(&partition);
            }
        };
        self.index_restored(partition)
    }

    /// The whole changelog at once.
    #[cfg(test)]
    pub(crate) fn restore(
        &mut self,
        partition: i32,
        changelog: Vec<ChangelogRecord>,
        now: Instant,
    ) -> Result<()> {
        let mut restoring = self.start_restore(partition)?;
        self.restore_chunk(&mut restoring, changelog)?;
        self.finish_restore(restoring, now)
    }

    /// Tracks the restored windows that are still open and retires the expired ones (their
    /// changelog rows stay until the batch view covers them), streaming over the store so
    /// that memory holds only the open windows' index.
    fn index_restored(&mut self, partition: i32) -> Result<()> {
        let Some(codec) = &self.codec else {
            return Ok(());
        };
        let emitted = self.emitted_us.get(&partition).copied();
        let lateness = self.lateness_us;
        let (store, open_windows) = (&self.store, &mut self.open_windows);
        let mut expired = Vec::new();
        store.for_each(partition, b"", |key, _| {
            let (bucket, end) = codec.key_times(key)?;
            if end
                .zip(emitted)
                .is_some_and(|(end, emitted)| window_expired(end, lateness, emitted))
            {
                expired.push(StateWrite::Retire {
                    partition,
                    bucket,
                    key: key.to_vec(),
                });
                if expired.len() >= RESTORE_DELETE_CHUNK {
                    store.apply(&expired)?;
                    expired.clear();
                }
                return Ok(());
            }
            track_window(open_windows, codec, partition, key)
        })?;
        store.apply(&expired)
    }

    /// Forgets which windows were emitted; the restores that follow set it again from the
    /// committed watermark records (after an aborted micro-batch).
    pub(crate) fn forget_emitted(&mut self) {
        self.emitted_us.clear();
    }

    /// Forgets a revoked partition; its new owner restores it from the changelog.
    pub(crate) fn revoke(&mut self, partition: i32) -> Result<()> {
        self.watermarks.revoke(partition);
        self.idle.remove(&partition);
        self.emitted_us.remove(&partition);
        for windows in self.open_windows.values_mut() {
            windows.retain(|(p, _)| *p != partition);
        }
        self.store.drop_partition(partition)
    }

    /// Runs one micro-batch (possibly empty: idle partitions can still close windows).
    pub(crate) fn process(&mut self, records: Vec<SourceRecord>, now: Instant) -> Result<Output> {
        let mut output = Output::default();
        for record in &records {
            output
                .next_offsets
                .insert(record.partition, record.offset + 1);
            *output.consumed.entry(record.partition).or_default() += 1;
        }
        let before = self.watermarks.job_watermark(now);
        let (batch, origin) = self.decode(&records, &mut output)?;
        let times: Vec<i64> = batch
            .column(self.event_time_index)
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec();
        let keep = self.divert_late(&times, &origin, &mut output);
        let mut moved = BTreeSet::new();
        let mut seen = max_event_per_partition(&times, &origin);
        for &partition in output.next_offsets.keys() {
            seen.entry(partition).or_default();
        }
        for (partition, max_event) in seen {
            if self.watermarks.observe(partition, max_event, now).is_some() {
                moved.insert(partition);
            }
        }
        for (partition, rows) in rows_per_partition(&keep, &origin) {
            let part = take_record_batch(&batch, &UInt32Array::from(rows.clone()))
                .map_err(arrow_error("selecting a partition's rows"))?;
            output.rows_in += part.num_rows();
            self.run_plan(partition, &part, &rows, &origin, &mut output)?;
        }
        let after = self.watermarks.job_watermark(now);
        self.last_watermark = after;
        self.log_idleness(now);
        let emitted = self.emit_and_purge(after, &mut output)?;
        self.tombstone_covered(&mut output)?;
        if emitted || !moved.is_empty() || after != before {
            self.watermark_records(&mut output);
        }
        Ok(output)
    }

    fn log_idleness(&mut self, now: Instant) {
        let idle = self.watermarks.idle(now);
        for partition in idle.difference(&self.idle) {
            tracing::info!(
                job = self.job.name(),
                partition,
                "partition idle: read to its end and silent for the idle timeout, it no longer holds the watermark back"
            );
        }
        for partition in self.idle.difference(&idle) {
            tracing::info!(job = self.job.name(), partition, "partition active again");
        }
        self.idle = idle;
    }

    /// Decodes the payloads; undecodable records go to the DLQ. Returns the good rows and,
    /// per row, the record it came from.
    fn decode<'r>(
        &self,
        records: &'r [SourceRecord],
        output: &mut Output,
    ) -> Result<(RecordBatch, Vec<&'r SourceRecord>)> {
        let (with_value, without): (Vec<&SourceRecord>, Vec<&SourceRecord>) =
            records.iter().partition(|r| r.payload.is_some());
        for record in without {
            output.dlq.push(Diverted {
                record: record.clone(),
                error_type: DivertReason::MalformedJson,
                message: "the record has no value (a tombstone)".to_string(),
                field: None,
                watermark_us: None,
                event_time_us: None,
            });
        }
        let payloads: Vec<&[u8]> = with_value
            .iter()
            .map(|r| r.payload.as_deref().unwrap_or_default())
            .collect();
        let stamps: Vec<Option<i64>> = with_value.iter().map(|r| r.timestamp_ms).collect();
        let decoded = self.decoder.decode_stamped(&payloads, &stamps)?;
        for error in decoded.errors {
            output.dlq.push(Diverted {
                record: (*with_value[error.index]).clone(),
                error_type: error.kind,
                message: error.reason,
                field: error.field,
                watermark_us: None,
                event_time_us: None,
            });
        }
        let origin = decoded.rows.iter().map(|&i| with_value[i]).collect();
        Ok((decoded.batch, origin))
    }

    /// Marks which rows go on to the plan; late rows go to `<job>.late`. (The decoder already
    /// dead-lettered records without an event time: it is always a required field.)
    fn divert_late(
        &self,
        times: &[i64],
        origin: &[&SourceRecord],
        output: &mut Output,
    ) -> Vec<bool> {
        let mut keep = vec![true; times.len()];
        for (partition, rows) in rows_per_partition(&keep.clone(), origin) {
            let Some(&bound) = self.emitted_us.get(&partition) else {
                continue;
            };
            let part_times: Vec<i64> = rows.iter().map(|&r| times[r as usize]).collect();
            let late = self
                .pipeline
                .late_rows(&part_times, bound, self.lateness_us);
            for (&row, _) in rows.iter().zip(late).filter(|(_, late)| *late) {
                let row = row as usize;
                keep[row] = false;
                output.late.push(Diverted {
                    record: (*origin[row]).clone(),
                    error_type: DivertReason::Late,
                    message: "every window of the event closed more than the allowed lateness ago"
                        .to_string(),
                    field: None,
                    watermark_us: Some(bound),
                    event_time_us: Some(times[row]),
                });
            }
        }
        keep
    }

    /// Stage 1 and 2 on one partition's rows. Rows the plan fails on (a UDF or transform
    /// error) are isolated by [`Pipeline::evaluate_isolating`] and go to the DLQ; the batch
    /// layer skips exactly the same rows.
    fn run_plan(
        &mut self,
        partition: i32,
        part: &RecordBatch,
        rows: &[u32],
        origin: &[&SourceRecord],
        output: &mut Output,
    ) -> Result<()> {
        let isolated = self.pipeline.evaluate_isolating(part)?;
        if !isolated.failed.is_empty() {
            tracing::debug!(
                job = self.job.name(),
                partition,
                failed = isolated.failed.len(),
                "the plan failed on some rows; they go to the DLQ"
            );
        }
        for failed in isolated.failed {
            output.dlq.push(Diverted {
                record: (*origin[rows[failed.row] as usize]).clone(),
                error_type: DivertReason::TransformError,
                message: failed.error.to_string(),
                field: None,
                watermark_us: None,
                event_time_us: None,
            });
        }
        for piece in isolated.pieces {
            self.absorb(partition, piece.output, output)?;
        }
        Ok(())
    }

    fn absorb(
        &mut self,
        partition: i32,
        evaluated: RecordBatch,
        output: &mut Output,
    ) -> Result<()> {
        match self.pipeline.plan().aggregate() {
            None => {
                let lines = to_json_lines(&[evaluated])?;
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    output.results.push((None, line.to_vec()));
                }
                Ok(())
            }
            Some(_) => {
                let open =
                    self.drop_expired_windows(evaluated, self.emitted_us.get(&partition).copied())?;
                self.fold(partition, open, output)
            }
        }
    }

    /// A HOP event can belong to a window that already expired beside one still open; the
    /// expired window's state is final (and purged), so its partial row is left out.
    fn drop_expired_windows(
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
        let ends = partial
            .column(stage.key_count() + 1)
            .as_primitive::<TimestampMicrosecondType>();
        let keep: Vec<u32> = (0..partial.num_rows() as u32)
            .filter(|&r| !window_expired(ends.value(r as usize), self.lateness_us, watermark))
            .collect();
        if keep.len() == partial.num_rows() {
            return Ok(partial);
        }
        take_record_batch(&partial, &UInt32Array::from(keep))
            .map_err(arrow_error("dropping expired windows"))
    }

    /// Merges `partial` into `partition`'s state; changed rows become speed records.
    fn fold(&mut self, partition: i32, partial: RecordBatch, output: &mut Output) -> Result<()> {
        let (Some(codec), Some(stage)) = (&self.codec, self.pipeline.plan().aggregate()) else {
            return Ok(());
        };
        if partial.num_rows() == 0 {
            return Ok(());
        }
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
            track_window(&mut self.open_windows, codec, partition, &key)?;
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
    fn emit_and_purge(&mut self, after: Option<i64>, output: &mut Output) -> Result<bool> {
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
        let due: BTreeSet<Vec<u8>> = if stage.window().is_none() {
            changed
        } else {
            let Some(after) = after else {
                return Ok(false);
            };
            let mut due = BTreeSet::new();
            for (&end, windows) in self.open_windows.range(..=after) {
                for (partition, prefix) in windows {
                    let emitted = self.emitted_us.get(partition).is_some_and(|&e| end <= e);
                    if !emitted || changed.contains(prefix) {
                        due.insert(prefix.clone());
                    }
                }
            }
            due
        };
        self.emit(&codec, stage, &due, output)?;
        let mut moved = false;
        if stage.window().is_some()
            && let Some(after) = after
        {
            let partitions: Vec<i32> = self.watermarks.partitions().map(|(p, _)| p).collect();
            for partition in partitions {
                let emitted = self.emitted_us.entry(partition).or_insert(i64::MIN);
                if *emitted < after {
                    *emitted = after;
                    moved = true;
                }
            }
            self.purge()?;
        }
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
        for prefix in due {
            for &partition in &partitions {
                rows.extend(self.store.scan(partition, prefix)?);
            }
        }
        let finalized = stage.finalize(&[codec.decode(&rows)?])?;
        let keys = finalized
            .project(
                &stage
                    .result_key_columns()
                    .iter()
                    .filter_map(|k| finalized.schema().index_of(k).ok())
                    .collect::<Vec<_>>(),
            )
            .map_err(arrow_error("selecting the view key of result rows"))?;
        let values = to_json_lines(&[finalized])?;
        let keys = to_json_lines(&[keys])?;
        for (key, value) in keys
            .split(|b| *b == b'\n')
            .zip(values.split(|b| *b == b'\n'))
        {
            if !value.is_empty() {
                output.results.push((Some(key.to_vec()), value.to_vec()));
            }
        }
        Ok(())
    }

    /// Drops windows whose end plus the allowed lateness the watermark has passed. They stay in
    /// `<job>.speed` (the serving layer still needs them until a backfill covers them), so a
    /// restore brings them back until the next purge.
    fn purge(&mut self) -> Result<()> {
        let Some(&highest) = self.emitted_us.values().max() else {
            return Ok(());
        };
        let Some(codec) = self.codec.clone() else {
            return Ok(());
        };
        let candidates: Vec<i64> = self
            .open_windows
            .range(..=highest.saturating_sub(self.lateness_us))
            .map(|(&end, _)| end)
            .collect();
        let mut writes = Vec::new();
        for end in candidates {
            let Some(windows) = self.open_windows.get_mut(&end) else {
                continue;
            };
            let emitted = &self.emitted_us;
            let lateness = self.lateness_us;
            let expired: Vec<(i32, Vec<u8>)> = windows
                .iter()
                .filter(|(p, _)| {
                    emitted
                        .get(p)
                        .is_some_and(|&e| window_expired(end, lateness, e))
                })
                .cloned()
                .collect();
            for window in &expired {
                windows.remove(window);
            }
            if windows.is_empty() {
                self.open_windows.remove(&end);
            }
            for (partition, prefix) in expired {
                for (key, _) in self.store.scan(partition, &prefix)? {
                    let bucket = codec.key_times(&key)?.0;
                    writes.push(StateWrite::Retire {
                        partition,
                        bucket,
                        key,
                    });
                }
            }
        }
        self.store.apply(&writes)
    }

    /// Tombstones, in `<job>.speed`, retired rows whose bucket the batch view now covers: the
    /// serving layer answers those buckets from the batch view, so the changelog (and every
    /// restore and speed view reading it) keeps only what the batch has not yet taken over.
    fn tombstone_covered(&mut self, output: &mut Output) -> Result<()> {
        let Some(cutoff) = self.batch_cutoff else {
            return Ok(());
        };
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
        output.tombstoned += writes.len();
        self.store.apply(&writes)
    }

    /// Every assigned partition's progress, so a restore resumes where this batch ends.
    fn watermark_records(&self, output: &mut Output) {
        for (partition, _) in self.watermarks.partitions() {
            let Some(watermark) = self.partition_watermark(partition) else {
                continue;
            };
            output.speed.push(SpeedRecord {
                partition,
                key: WATERMARK_KEY.to_vec(),
                value: Some(watermark.encode()),
            });
        }
    }
}

/// A window ending at `end_us` is final, and its state purged, once its partition's windows
/// were emitted at least `lateness_us` past its end.
fn window_expired(end_us: i64, lateness_us: i64, emitted_us: i64) -> bool {
    end_us.saturating_add(lateness_us) <= emitted_us
}

/// Indexes the window of a state row key by its end (rows without a group window have none).
fn track_window(
    open_windows: &mut BTreeMap<i64, BTreeSet<(i32, Vec<u8>)>>,
    codec: &SpeedCodec,
    partition: i32,
    key: &[u8],
) -> Result<()> {
    if let (_, Some(end)) = codec.key_times(key)? {
        let prefix = codec.window_prefix_of(key).to_vec();
        open_windows
            .entry(end)
            .or_default()
            .insert((partition, prefix));
    }
    Ok(())
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

fn max_event_per_partition(times: &[i64], origin: &[&SourceRecord]) -> BTreeMap<i32, Option<i64>> {
    let mut out: BTreeMap<i32, Option<i64>> = BTreeMap::new();
    for (&time, record) in times.iter().zip(origin) {
        let slot = out.entry(record.partition).or_default();
        *slot = Some(slot.map_or(time, |t| t.max(time)));
    }
    out
}

fn rows_per_partition(keep: &[bool], origin: &[&SourceRecord]) -> BTreeMap<i32, Vec<u32>> {
    let mut out: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    for (row, record) in origin.iter().enumerate() {
        if keep[row] {
            out.entry(record.partition).or_default().push(row as u32);
        }
    }
    out
}

fn arrow_error(
    during: &'static str,
) -> impl FnOnce(arrow::error::ArrowError) -> crate::error::StreamError {
    move |source| {
        sluice_core::Error::Arrow {
            during,
            source: Box::new(source),
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    const JOB: &str = r#"
name = "opm"
[source]
topic = "orders"
event_time = "ts"
watermark_delay = "0s"
allowed_lateness = "1m"
fields = [
  { name = "region", type = "string" },
  { name = "amount", type = "float64" },
  { name = "status", type = "string" },
  { name = "ts", type = "timestamp" },
]
[transform]
sql = """SELECT region, TUMBLE_START(ts, INTERVAL '1' MINUTE) AS ws,
  COUNT(*) AS n, SUM(amount) AS total, AVG(amount) AS mean
  FROM orders WHERE status = 'completed'
  GROUP BY region, TUMBLE(ts, INTERVAL '1' MINUTE)"""
[view]
key = ["region"]
bucket = "1h"
"#;

    const MINUTE_MS: i64 = 60_000;
    const T0: i64 = 1_714_557_600_000;

    fn processor(dir: &Path) -> Processor {
        let job = Job::from_toml(JOB, Path::new("opm.toml")).unwrap();
        let pipeline = Arc::new(Pipeline::compile(&job, None).unwrap());
        let store = StateStore::open_fresh("opm", dir).unwrap();
        let watermarks = Watermarks::new(Duration::ZERO, Duration::from_secs(3600));
        Processor::new(job, pipeline, store, watermarks, 1 << 20)
    }

    fn record(partition: i32, offset: i64, payload: &str) -> SourceRecord {
        SourceRecord {
            partition,
            offset,
            timestamp_ms: None,
            key: Some(b"k".to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
        }
    }

    fn order(partition: i32, offset: i64, region: &str, amount: f64, at_ms: i64) -> SourceRecord {
        record(
            partition,
            offset,
            &format!(
                r#"{{"region":"{region}","amount":{amount},"status":"completed","ts":{at_ms}}}"#
            ),
        )
    }

    fn results(outputs: &[Output]) -> BTreeMap<String, String> {
        outputs
            .iter()
            .flat_map(|o| o.results.iter())
            .map(|(k, v)| {
                (
                    String::from_utf8(k.clone().unwrap()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect()
    }

    fn batches() -> Vec<Vec<SourceRecord>> {
        vec![
            vec![
                order(0, 0, "eu", 10.0, T0),
                order(1, 0, "eu", 2.0, T0 + 1_000),
                order(0, 1, "us", 4.0, T0 + 30_000),
                record(0, 2, "{not json"),
            ],
            vec![
                order(0, 3, "eu", 6.0, T0 + MINUTE_MS + 5),
                order(1, 1, "eu", 1.0, T0 + MINUTE_MS),
            ],
            // Within lateness: updates and re-emits the first minute.
            vec![
                order(1, 2, "eu", 3.0, T0 + 2_000),
                order(0, 4, "eu", 1.0, T0 + 3 * MINUTE_MS),
            ],
            vec![order(1, 3, "us", 1.0, T0 + 3 * MINUTE_MS)],
            // Beyond lateness: the first minute ended 3 minutes before the watermark.
            vec![order(0, 5, "eu", 100.0, T0 + 10)],
        ]
    }

    #[test]
    fn retired_windows_are_tombstoned_once_the_batch_view_covers_their_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = processor(&dir.path().join("s"));
        let now = Instant::now();
        p.restore(0, Vec::new(), now).unwrap();
        p.restore(1, Vec::new(), now).unwrap();
        let mut written = BTreeMap::new();
        for batch in batches() {
            for r in p.process(batch, now).unwrap().speed {
                written.insert((r.partition, r.key), r.value);
            }
        }
        let codec = p.codec.clone().unwrap();
        assert_eq!(
            p.process(Vec::new(), now).unwrap().tombstoned,
            0,
            "no cutoff yet"
        );
        p.set_batch_cutoff(Some((T0 + 30 * MINUTE_MS) * 1000));
        assert_eq!(
            p.process(Vec::new(), now).unwrap().tombstoned,
            0,
            "the bucket [10:00, 11:00) is not covered by a cutoff at 10:30"
        );
        p.set_batch_cutoff(Some((T0 + 60 * MINUTE_MS) * 1000));
        let out = p.process(Vec::new(), now).unwrap();
        let tombstoned: BTreeSet<(i32, Vec<u8>)> = out
            .speed
            .iter()
            .filter(|r| r.value.is_none())
            .map(|r| (r.partition, r.key.clone()))
            .collect();
        assert_eq!(out.tombstoned, tombstoned.len());
        // Exactly the rows of the windows that expired: ended at least the allowed lateness
        // (1 min) before the emitted watermark (10:03); the 10:03 window stays.
        let emitted_us = (T0 + 3 * MINUTE_MS) * 1000;
        let expected: BTreeSet<(i32, Vec<u8>)> = written
            .iter()
            .filter(|((_, key), value)| value.is_some() && key.as_slice() != WATERMARK_KEY)
            .filter(|((_, key), _)| {
                let end = codec.key_times(key).unwrap().1.unwrap();
                end + 60_000_000 <= emitted_us
            })
            .map(|(k, _)| k.clone())
            .collect();
        assert!(expected.len() >= 3, "{expected:?}");
        assert_eq!(tombstoned, expected);
        assert_eq!(
            p.process(Vec::new(), now).unwrap().tombstoned,
            0,
            "each row once"
        );
    }

    #[test]
    fn windows_emit_when_the_watermark_passes_and_late_records_are_diverted() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = processor(&dir.path().join("s"));
        let now = Instant::now();
        p.restore(0, Vec::new(), now).unwrap();
        p.restore(1, Vec::new(), now).unwrap();
        let outputs: Vec<Output> = batches()
            .into_iter()
            .map(|b| p.process(b, now).unwrap())
            .collect();
        assert_eq!(outputs[0].dlq.len(), 1);
        assert_eq!(outputs[0].dlq[0].error_type, DivertReason::MalformedJson);
        assert_eq!(outputs[0].dlq[0].record.offset, 2);
        assert!(outputs[0].results.is_empty(), "nothing closed yet");
        let first = r#"{"region":"eu","ws":"2024-05-01T10:00:00Z"}"#;
        assert_eq!(
            results(&outputs[1..2]).get(first).map(String::as_str),
            Some(r#"{"region":"eu","ws":"2024-05-01T10:00:00Z","n":2,"total":12.0,"mean":6.0}"#),
            "the watermark passed 10:01 in partition 0 and 1"
        );
        assert_eq!(
            results(&outputs[2..3]).get(first).map(String::as_str),
            Some(r#"{"region":"eu","ws":"2024-05-01T10:00:00Z","n":3,"total":15.0,"mean":5.0}"#),
            "a record within the allowed lateness re-emits its window"
        );
        let late = &outputs[4].late;
        assert_eq!(late.len(), 1);
        assert_eq!(
            late[0].record.payload,
            order(0, 5, "eu", 100.0, T0 + 10).payload
        );
        assert!(!results(&outputs[4..]).contains_key(first));
        assert_eq!(outputs[4].next_offsets.get(&0), Some(&6));
    }

    #[test]
    fn restoring_from_the_changelog_continues_exactly_where_the_state_was() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut straight = processor(&dir.path().join("a"));
        straight.restore(0, Vec::new(), now).unwrap();
        straight.restore(1, Vec::new(), now).unwrap();
        let all = batches();
        let expected: Vec<Output> = all
            .iter()
            .map(|b| straight.process(b.clone(), now).unwrap())
            .collect();

        let mut first = processor(&dir.path().join("b"));
        first.restore(0, Vec::new(), now).unwrap();
        first.restore(1, Vec::new(), now).unwrap();
        let mut changelog: BTreeMap<i32, Vec<ChangelogRecord>> = BTreeMap::new();
        for batch in &all[..2] {
            for r in first.process(batch.clone(), now).unwrap().speed {
                changelog
                    .entry(r.partition)
                    .or_default()
                    .push((r.key, r.value));
            }
        }
        drop(first);
        let mut resumed = processor(&dir.path().join("b"));
        for partition in [0, 1] {
            resumed
                .restore(
                    partition,
                    changelog.remove(&partition).unwrap_or_default(),
                    now,
                )
                .unwrap();
        }
        let rest: Vec<Output> = all[2..]
            .iter()
            .map(|b| resumed.process(b.clone(), now).unwrap())
            .collect();
        assert_eq!(results(&rest), results(&expected[2..]));
        let speed = |o: &[Output]| o.iter().flat_map(|o| o.speed.clone()).collect::<Vec<_>>();
        assert_eq!(speed(&rest), speed(&expected[2..]));
    }
}
