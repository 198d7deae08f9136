//! One micro-batch through the shared plan: decode, divert bad and late records, fold partial
//! states into keyed state, emit closed windows, purge expired ones.
//!
//! The processor knows nothing of Kafka clients: it takes records and returns everything the
//! micro-batch's transaction must hold ([`Output`]). Every filter, window and aggregate comes
//! from `sluice_core` ([`Pipeline`], [`sluice_core::AggregateStage`]); the processor only
//! decides which rows go where and keeps the state keyed by (source partition, view key,
//! window, bucket). Its parts: [`routing`] (decode, divert, run the plan), [`lifecycle`]
//! (fold, emit, retire, tombstone), [`window_index`] (which windows are open, emitted,
//! expired) and [`restore`] (state back from the changelog).

mod dedup;
mod lifecycle;
mod op_state;
mod records;
mod restore;
mod routing;
mod window_index;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use sluice_core::decode::SourceDecoder;
use sluice_core::speed::{PLAN_KEY, PartitionWatermark, SpeedCodec, WATERMARK_KEY};
use sluice_core::{Job, Pipeline};

use crate::error::Result;
use crate::state::StateStore;
use crate::watermark::Watermarks;
use lifecycle::TombstoneScan;
use routing::{max_event_per_partition, rows_per_partition};
use window_index::WindowIndex;

pub use records::{Diverted, Output, RoutedRecord, SourceRecord, SpeedRecord};
pub(crate) use restore::{ChangelogRecord, Restoring};

pub(crate) struct Processor {
    job: Job,
    pipeline: Arc<Pipeline>,
    decoder: Arc<dyn SourceDecoder>,
    event_time_index: usize,
    codec: Option<SpeedCodec>,
    store: StateStore,
    watermarks: Watermarks,
    windows: WindowIndex,
    /// The job watermark after the last micro-batch, for metrics.
    last_watermark: Option<i64>,
    /// The partitions idle after the last micro-batch (their changes are logged).
    idle: BTreeSet<i32>,
    /// The batch view's cutoff, once it has been visible long enough for the serving layer
    /// to have loaded it: retired rows of buckets before it are tombstoned.
    batch_cutoff: Option<i64>,
    tombstones: TombstoneScan,
    /// Restored partitions whose changelog does not name this plan yet: the next micro-batch
    /// writes their plan record.
    plan_pending: BTreeSet<i32>,
    /// Per assigned partition, the source offset after the last record processed: what the
    /// watermark records say the state reflects.
    next_offsets: BTreeMap<i32, i64>,
    /// A deduplicating job's release bound per partition (see [`dedup`]).
    purge_us: BTreeMap<i32, i64>,
}

impl Processor {
    /// The shared plan this processor runs.
    pub(crate) fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub(crate) fn new(
        job: Job,
        pipeline: Arc<Pipeline>,
        store: StateStore,
        watermarks: Watermarks,
        decoder: Arc<dyn SourceDecoder>,
    ) -> Processor {
        let source = job.source_schema();
        let event_time_index = source
            .index_of(&job.spec.source.event_time)
            .unwrap_or_default();
        Processor {
            decoder,
            event_time_index,
            windows: WindowIndex::new(job.spec.source.allowed_lateness.as_micros() as i64),
            codec: pipeline.plan().aggregate().map(SpeedCodec::new),
            job,
            pipeline,
            store,
            watermarks,
            last_watermark: None,
            idle: BTreeSet::new(),
            batch_cutoff: None,
            tombstones: TombstoneScan::default(),
            plan_pending: BTreeSet::new(),
            next_offsets: BTreeMap::new(),
            purge_us: BTreeMap::new(),
        }
    }

    /// The decoder, which `avro-confluent` jobs hand the writer schemas it needs.
    pub(crate) fn decoder(&self) -> &dyn SourceDecoder {
        self.decoder.as_ref()
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

    /// What a checkpoint records of `partition`: its watermark now (`None` before its first
    /// event).
    pub(crate) fn partition_watermark(&self, partition: i32) -> Option<PartitionWatermark> {
        let delay = self.watermarks.delay_us();
        self.watermarks
            .max_event_us(partition)
            .map(|max_event_us| PartitionWatermark {
                max_event_us,
                watermark_us: max_event_us.saturating_sub(delay),
                emitted_us: self.windows.emitted(partition),
                source_next_offset: self.next_offsets.get(&partition).copied(),
                purge_us: self.purge_us.get(&partition).copied(),
            })
    }

    /// The store, to write a checkpoint into when the daemon stops.
    pub(crate) fn store(&self) -> &StateStore {
        &self.store
    }

    /// Forgets which windows were emitted; the restores that follow set it again from the
    /// committed watermark records (after an aborted micro-batch).
    pub(crate) fn forget_emitted(&mut self) {
        self.windows.forget_emitted();
    }

    /// Forgets a revoked partition; its new owner restores it from the changelog.
    pub(crate) fn revoke(&mut self, partition: i32) -> Result<()> {
        self.watermarks.revoke(partition);
        self.idle.remove(&partition);
        self.windows.revoke(partition);
        self.plan_pending.remove(&partition);
        self.next_offsets.remove(&partition);
        self.purge_us.remove(&partition);
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
        self.next_offsets
            .extend(output.next_offsets.iter().map(|(&p, &next)| (p, next)));
        let before = self.watermarks.job_watermark(now);
        let (batch, origin) = self.decode(&records, &mut output)?;
        let times: Vec<i64> = batch
            .column(self.event_time_index)
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec();
        let pipeline = self.pipeline.clone();
        let keep = match pipeline.stateful() {
            Some(stages) if stages.holds_rows() => {
                self.divert_late_dedup(&times, &origin, &mut output)
            }
            _ => self.divert_late(&times, &origin, &mut output),
        };
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
        let mut parts = BTreeMap::new();
        for (partition, rows) in rows_per_partition(&keep, &origin) {
            let part = take_record_batch(&batch, &UInt32Array::from(rows.clone()))
                .map_err(arrow_error("selecting a partition's rows"))?;
            output.rows_in += part.num_rows();
            parts.insert(partition, (part, rows));
        }
        // Every partition has been observed: the plan runs below do not move it.
        let after = self.watermarks.job_watermark(now);
        let mut purged = false;
        if let Some(stages) = pipeline.stateful() {
            purged = self.dedup_all(stages, &parts, &origin, after, &mut output)?;
        } else {
            for (partition, (part, rows)) in parts {
                self.run_plan(partition, &part, &rows, &origin, &mut output)?;
            }
        }
        self.last_watermark = after;
        self.log_idleness(now);
        let emitted = self.emit_and_purge(after, &mut output)?;
        self.tombstone_covered(&mut output)?;
        self.plan_records(&mut output);
        // Last among each partition's records: a reader that applied it holds the state of
        // exactly the offsets before its `source_next_offset`.
        let all = emitted || purged || !moved.is_empty() || after != before;
        self.watermark_records(all, &mut output);
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

    /// The progress of every assigned partition (`all`) or of those this batch consumed or
    /// wrote state for, so a restore resumes where this batch ends and a reader knows which
    /// offsets the state it read reflects.
    fn watermark_records(&self, all: bool, output: &mut Output) {
        let touched: BTreeSet<i32> = output
            .next_offsets
            .keys()
            .copied()
            .chain(output.speed.iter().map(|r| r.partition))
            .collect();
        for (partition, _) in self.watermarks.partitions() {
            if !all && !touched.contains(&partition) {
                continue;
            }
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

impl Processor {
    /// The plan records of partitions restored since the last micro-batch without one (an
    /// aborted batch's are written again: the restores after it find none).
    fn plan_records(&mut self, output: &mut Output) {
        let fingerprint = self.job.plan_fingerprint();
        for partition in std::mem::take(&mut self.plan_pending) {
            output.speed.push(SpeedRecord {
                partition,
                key: PLAN_KEY.to_vec(),
                value: Some(fingerprint.as_bytes().to_vec()),
            });
        }
    }
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
mod dedup_tests;
#[cfg(test)]
mod tests;
