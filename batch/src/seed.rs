//! The seam of a replay: the partial states a new view version's speed layer starts from.
//!
//! `sluice replay` builds a new version's batch view from the raw table up to its cutoff C,
//! then starts that version's speed layer where the lake ends. The raw table also holds rows at
//! or after C (landed, but in buckets the batch view does not cover), and Kafka still holds
//! them too; the speed layer must count each exactly once. So for every source partition the
//! rows at or after C with offsets up to the partition's last landed offset (the raw table's
//! Delta transaction version for it) are folded here into partial states, and the speed layer
//! continues from the offset after it. Rows that land while this runs are past that offset:
//! they are skipped here and read from Kafka. Rows loaded from files (no partition) are not in
//! Kafka at all: they reach the view with the next backfill whose range covers them.

use std::collections::BTreeMap;

use arrow::array::{AsArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use sluice_core::lake::TableLocation;
use sluice_core::lake_progress::raw_completeness;
use sluice_core::operator_state::MemState;
use sluice_core::speed::SpeedSeed;
use sluice_core::time::floor_to;
use sluice_core::topics::lake_app_id;
use sluice_core::{Job, Lake, Pipeline};

use crate::backfill::{Fold, RawOrigin};
use crate::error::Result;
use crate::raw_scan::{ScanColumns, scan_raw};

/// Where a source partition's records continue after what the raw table holds: after its
/// last landed offset, or (nothing landed) where the lake sink found it read to its end.
async fn continue_offsets(
    job: &Job,
    raw: &TableLocation,
    partitions: i32,
) -> Result<BTreeMap<i32, (Option<i64>, i64)>> {
    let progress = raw.lake_progress().await?.unwrap_or_default();
    let mut offsets = BTreeMap::new();
    for partition in 0..partitions {
        let last = raw
            .transaction_version(&lake_app_id(job, partition))
            .await?;
        let next = match last {
            Some(last) => last + 1,
            None => progress
                .by_partition
                .get(&partition)
                .map_or(0, |p| p.next_offset),
        };
        offsets.insert(partition, (last, next));
    }
    Ok(offsets)
}

/// The seed of each of the source topic's `partitions`: partial states of its landed rows with
/// event time at or after `from_us` (the new batch view's cutoff).
///
/// A job with stateful stages (dedup, `unique`) also reads the stages' reach before `from_us`
/// (those rows decide duplicates, as in a backfill) and decides its rows at one release bound
/// for every partition: what the speed layer would have reached after these rows (the slowest
/// seeded partition's watermark less the allowed lateness), and at least `from_us`, so that
/// every reach row is decided. Rows before it are folded; later ones stay held, and go with the
/// keys still remembered into the seed's operator state.
pub async fn speed_seeds(
    job: &Job,
    lake: &Lake,
    pipeline: &Pipeline,
    partitions: i32,
    from_us: i64,
) -> Result<Vec<SpeedSeed>> {
    let raw = TableLocation::new(lake.raw_table(job));
    // Read before the scan: rows landing after it have larger offsets and are skipped.
    let offsets = continue_offsets(job, &raw, partitions).await?;
    let mut folds: BTreeMap<i32, (Fold<'_>, Option<i64>)> = offsets
        .keys()
        .map(|&p| (p, (Fold::starting_at(pipeline, from_us), None)))
        .collect();
    let time_index = job
        .source_schema()
        .index_of(&job.spec.source.event_time)
        .unwrap_or_default();
    let reach = pipeline.stateful().map_or(0, |stages| stages.reach_us());
    if raw.open().await?.version().is_some() {
        let scan_from = from_us.saturating_sub(reach);
        let columns = (ScanColumns::All, pipeline);
        scan_raw(
            job,
            &raw,
            (Some(scan_from), None),
            columns,
            |source, origin| {
                for (partition, rows) in rows_landed_before(origin, &offsets) {
                    let Some((fold, max_event)) = folds.get_mut(&partition) else {
                        continue;
                    };
                    let indices = UInt32Array::from(rows.clone());
                    let part = take_record_batch(source, &indices).map_err(|source| {
                        sluice_core::Error::Arrow {
                            during: "selecting a partition's raw rows",
                            source: Box::new(source),
                        }
                    })?;
                    let times = part
                        .column(time_index)
                        .as_primitive::<TimestampMicrosecondType>();
                    if let Some(max) = arrow::compute::max(times) {
                        *max_event = Some(max_event.map_or(max, |m: i64| m.max(max)));
                    }
                    let sub_origin = origin.take(rows.iter().map(|&i| i as usize));
                    fold.add(&part, &sub_origin)?;
                }
                Ok(())
            },
        )
        .await?;
    }
    let purge_us = pipeline
        .stateful()
        .map(|_| release_bound(job, folds.values().filter_map(|(_, max)| *max), from_us));
    let mut seeds = Vec::with_capacity(folds.len());
    for (partition, (fold, max_event_us)) in folds {
        // Partitions that seed nothing keep no bound, as a partition the daemon never read.
        let purge_us = purge_us.filter(|_| max_event_us.is_some());
        let mut fold = match purge_us {
            Some(bound) => fold.released_at(BTreeMap::from([(partition, bound)])),
            None => fold,
        };
        let partials = fold.partials(job)?;
        let operator_state = fold
            .take_operator_state()
            .remove(&Some(partition))
            .map(MemState::into_tagged)
            .unwrap_or_default();
        seeds.push(SpeedSeed {
            partition,
            partials,
            max_event_us,
            next_offset: offsets.get(&partition).map_or(0, |&(_, next)| next),
            purge_us,
            operator_state,
        });
    }
    Ok(seeds)
}

/// The latest `--to` a replay's backfill of a job with stateful stages (dedup, `unique`) may
/// use: the raw table's completeness less the allowed lateness, floored to a bucket. Then the
/// cutoff is never after the release bound the seed decides at (the slowest partition's
/// watermark less the lateness), so no record the old version accepts is late for the new
/// one. `None` for other jobs (and while nothing is complete), which the backfill clamps alone.
pub async fn replay_backfill_limit(
    job: &Job,
    lake: &Lake,
    pipeline: &Pipeline,
) -> Result<Option<i64>> {
    if pipeline.stateful().is_none() {
        return Ok(None);
    }
    let raw = TableLocation::new(lake.raw_table(job));
    let lateness = job.spec.source.allowed_lateness.as_micros() as i64;
    Ok(raw_completeness(&raw, job)
        .await?
        .until_us()
        .map(|until| floor_to(until.saturating_sub(lateness), job.bucket_micros())))
}

/// The release bound of a seed whose partitions' largest event times are `max_events`: the
/// slowest one's watermark less the allowed lateness (the speed layer's rule), not below
/// `from_us`.
fn release_bound(job: &Job, max_events: impl Iterator<Item = i64>, from_us: i64) -> i64 {
    let source = &job.spec.source;
    let behind = (source.watermark_delay + source.allowed_lateness).as_micros() as i64;
    max_events.min().map_or(from_us, |slowest| {
        slowest.saturating_sub(behind).max(from_us)
    })
}

/// Row indices per source partition of the rows at or before the partition's last landed
/// offset; file rows (no partition) and rows of unknown partitions are left out.
fn rows_landed_before(
    origin: &RawOrigin,
    offsets: &BTreeMap<i32, (Option<i64>, i64)>,
) -> BTreeMap<i32, Vec<u32>> {
    let mut rows: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    for (i, (partition, offset)) in origin.partitions.iter().zip(&origin.offsets).enumerate() {
        let (Some(partition), Some(offset)) = (partition, offset) else {
            continue;
        };
        let Some(&(Some(last), _)) = offsets.get(partition) else {
            continue;
        };
        if *offset <= last {
            rows.entry(*partition).or_default().push(i as u32);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rows_up_to_each_partitions_last_landed_offset_seed() {
        let origin = RawOrigin {
            partitions: vec![Some(0), Some(0), Some(1), None, Some(2), Some(1)],
            offsets: vec![Some(5), Some(6), Some(3), None, Some(0), Some(9)],
        };
        let offsets = BTreeMap::from([(0, (Some(5), 6)), (1, (Some(9), 10)), (2, (None, 0))]);
        let rows = rows_landed_before(&origin, &offsets);
        assert_eq!(
            rows,
            BTreeMap::from([(0, vec![0]), (1, vec![2, 5])]),
            "offset 6 of partition 0 landed after the offsets were read; file rows and a partition with nothing landed are not seeded"
        );
    }
}
