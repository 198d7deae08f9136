//! The recompute of one consistent cut: what `sluice verify` compares a live pipeline's
//! merged view with.
//!
//! The merged view is merge(batch(< C), speed(≥ C)), and the two sides saw different raw
//! records: each bucket of the batch view is what the backfill that last wrote it read (a
//! raw table version, recorded in its commit), and the speed side is the state of the source
//! offsets its watermark records name, less the records it diverted as late. So the
//! recompute takes, below C, each bucket range from the raw version that wrote it, and at or
//! after C, the raw rows of each partition before the speed side's offset that were not late.
//! Any difference left is a real one.

use std::collections::{BTreeMap, HashSet};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use sluice_core::lake::{BackfillSource, TableLocation};
use sluice_core::{Job, Lake, Pipeline};

use crate::backfill::{Fold, RawOrigin};
use crate::error::{BatchError, Result};
use crate::raw_scan::{ScanColumns, scan_raw};

/// What each layer had seen when the merged view was read.
#[derive(Debug, Clone, Default)]
pub struct Cut {
    /// The batch view's cutoff the merge used.
    pub cutoff_us: Option<i64>,
    /// The view table version the batch side was read from (`None`: the newest).
    pub view_version: Option<u64>,
    /// Per source partition, the offset the speed side reflects (every record before it).
    pub speed_offsets: BTreeMap<i32, i64>,
    /// Per source partition, a job's stateful stages' release bound on the speed side: rows
    /// before it were decided, later ones still held (empty for jobs without such stages).
    pub release_bounds: BTreeMap<i32, i64>,
    /// `(partition, offset)` of the records the speed layer diverted as late.
    pub late: HashSet<(i32, i64)>,
}

/// The partial states of the cut, merged per (key, window, bucket).
///
/// A job with stateful stages (dedup, `unique`) is read back by their reach on each side, as a
/// backfill reads: those rows decide which rows of the side are duplicates but are not folded.
/// Each batch piece is folded on its own (its backfill released everything it read); the speed
/// side releases only what the speed layer had released, per partition.
pub async fn recompute_cut(
    job: &Job,
    lake: &Lake,
    pipeline: &Pipeline,
    cut: &Cut,
) -> Result<RecordBatch> {
    let raw = TableLocation::new(lake.raw_table(job));
    let view = TableLocation::new(lake.view_table(job));
    let view = cut
        .view_version
        .map_or_else(|| view.clone(), |v| view.at_version(v));
    let reach = pipeline.stateful().map_or(0, |stages| stages.reach_us());
    let mut partials = Vec::new();
    if let Some(cutoff) = cut.cutoff_us {
        let sources = view.backfill_sources().await?;
        for (from, to, raw_version) in batch_pieces(&sources, cutoff) {
            let table = raw_version.map_or_else(|| raw.clone(), |v| raw.at_version(v));
            let mut fold = Fold::starting_at(pipeline, from);
            scan_raw(
                job,
                &table,
                (Some(from.saturating_sub(reach)), Some(to)),
                (ScanColumns::ReadByPlan, pipeline),
                |rows, origin| fold.add(rows, origin),
            )
            .await?;
            partials.push(fold.partials(job)?);
        }
    }
    if raw.open().await?.version().is_some() {
        let fold = match cut.cutoff_us {
            Some(cutoff) => Fold::starting_at(pipeline, cutoff),
            None => Fold::new(pipeline),
        };
        let mut fold = fold.released_at(cut.release_bounds.clone());
        let scan_from = cut.cutoff_us.map(|cutoff| cutoff.saturating_sub(reach));
        let columns = (ScanColumns::ReadByPlan, pipeline);
        scan_raw(job, &raw, (scan_from, None), columns, |rows, origin| {
            let keep = speed_side_rows(origin, cut);
            if keep.is_empty() {
                return Ok(());
            }
            let indices = UInt32Array::from(keep.clone());
            let part =
                take_record_batch(rows, &indices).map_err(|source| sluice_core::Error::Arrow {
                    during: "selecting the speed side's raw rows",
                    source: Box::new(source),
                })?;
            let origin = origin.take(keep.iter().map(|&i| i as usize));
            fold.add(&part, &origin)
        })
        .await?;
        partials.push(fold.partials(job)?);
    }
    let Some(stage) = pipeline.plan().aggregate() else {
        return Err(BatchError::Stateless {
            job: job.name().to_string(),
            what: "merge",
        });
    };
    Ok(stage.merge(&partials)?)
}

/// The rows the speed side had consumed and counted: before their partition's offset, not
/// late, and from Kafka (rows loaded from files never reach the speed layer).
fn speed_side_rows(origin: &RawOrigin, cut: &Cut) -> Vec<u32> {
    origin
        .partitions
        .iter()
        .zip(&origin.offsets)
        .enumerate()
        .filter_map(|(i, (partition, offset))| {
            let (partition, offset) = ((*partition)?, (*offset)?);
            let consumed = cut
                .speed_offsets
                .get(&partition)
                .is_some_and(|&next| offset < next);
            (consumed && !cut.late.contains(&(partition, offset))).then_some(i as u32)
        })
        .collect()
}

/// The bucket ranges below `cutoff` and the raw version each was last written from: each
/// backfill (newest first) owns the part of its range no newer one replaced.
fn batch_pieces(sources: &[BackfillSource], cutoff: i64) -> Vec<(i64, i64, Option<u64>)> {
    let mut covered: Vec<(i64, i64)> = Vec::new();
    let mut pieces = Vec::new();
    for source in sources {
        let range = (source.from_us, source.to_us.min(cutoff));
        if range.0 >= range.1 {
            continue;
        }
        for (from, to) in subtract(range, &covered) {
            pieces.push((from, to, source.raw_version));
        }
        covered.push(range);
    }
    pieces
}

/// `range` less every interval of `covered` (half-open intervals).
fn subtract((from, to): (i64, i64), covered: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut sorted = covered.to_vec();
    sorted.sort_unstable();
    let mut left = Vec::new();
    let mut start = from;
    for (a, b) in sorted {
        if b <= start || a >= to {
            continue;
        }
        if a > start {
            left.push((start, a));
        }
        start = start.max(b);
    }
    if start < to {
        left.push((start, to));
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(from_us: i64, to_us: i64, raw_version: u64) -> BackfillSource {
        BackfillSource {
            from_us,
            to_us,
            raw_version: Some(raw_version),
        }
    }

    #[test]
    fn each_bucket_range_comes_from_the_newest_backfill_that_wrote_it() {
        // Newest first: [20, 30) at raw v9, then [0, 40) at v5, then [0, 10) at v2.
        let sources = [source(20, 30, 9), source(0, 40, 5), source(0, 10, 2)];
        assert_eq!(
            batch_pieces(&sources, 35),
            vec![(20, 30, Some(9)), (0, 20, Some(5)), (30, 35, Some(5)),]
        );
        assert_eq!(subtract((0, 10), &[(2, 4), (6, 12)]), vec![(0, 2), (4, 6)]);
        assert_eq!(subtract((0, 10), &[]), vec![(0, 10)]);
        assert_eq!(subtract((0, 10), &[(0, 10)]), vec![]);
    }

    #[test]
    fn the_speed_side_is_what_was_consumed_less_late_records_and_file_rows() {
        let origin = RawOrigin {
            partitions: vec![Some(0), Some(0), Some(1), None, Some(1), Some(2)],
            offsets: vec![Some(3), Some(9), Some(4), None, Some(5), Some(0)],
        };
        let cut = Cut {
            speed_offsets: BTreeMap::from([(0, 5), (1, 6)]),
            late: HashSet::from([(1, 5)]),
            ..Cut::default()
        };
        assert_eq!(speed_side_rows(&origin, &cut), vec![0, 2]);
    }
}
