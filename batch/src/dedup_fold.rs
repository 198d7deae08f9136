//! The batch layer's side of the stateful stages (first-row dedup, `unique` checks): raw rows
//! stepped per source partition through [`MemState`]s and the same
//! [`sluice_core::stateful::StatefulStages`] the speed layer runs, so both layers drop and
//! reject the same rows (the rule is in [`sluice_core::dedup`]).
//!
//! A backfill of `[from, to)` reads the raw table from `from` minus the stages' reach: those
//! earlier rows only decide whether rows of the range are duplicates, and are neither folded
//! nor reported. Rows are stepped without a bound while the table is scanned (held, or passed
//! on at once by warn checks), then everything is released at the end of the input (the batch
//! layer's watermark is the end of its input, so nothing is late) — or, for `sluice verify`'s
//! cut and a replay's seed, only what is before a per-partition bound (`Fold::released_at`). Memory is therefore the
//! checked rows of the range and its reach, encoded; backfill long ranges of a deduplicating
//! job in several runs.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;
use sluice_core::Pipeline;
use sluice_core::dedup::{RowId, select_rows};
use sluice_core::operator_state::MemState;
use sluice_core::stateful::{StatefulStages, Stepped};

use crate::backfill::RawOrigin;
use crate::error::Result;

/// The stages' state for a fold.
pub(crate) struct HeldRows {
    /// Per source partition (`None`: rows loaded from files, which have no partition).
    states: BTreeMap<Option<i32>, MemState>,
    /// The first event time (µs) of the rows the fold is for; earlier rows are reach.
    fold_from: Option<i64>,
    /// File rows seen so far: appended to their ids so identical rows stay two rows.
    file_rows: u64,
}

/// What a step gave for one partition's rows.
pub(crate) struct PartStep {
    pub(crate) partition: Option<i32>,
    pub(crate) stepped: Stepped,
}

impl HeldRows {
    pub(crate) fn new(fold_from: Option<i64>) -> HeldRows {
        HeldRows {
            states: BTreeMap::new(),
            fold_from,
            file_rows: 0,
        }
    }

    /// Which of `times` belong to the fold rather than its reach.
    pub(crate) fn in_range(&self, times: &[i64]) -> Vec<bool> {
        times
            .iter()
            .map(|&t| self.fold_from.is_none_or(|from| t >= from))
            .collect()
    }

    /// Steps `rows` (already checked) of `origin` without a bound, each in its partition's
    /// state: what comes out goes on at once (rows no stage holds).
    pub(crate) fn add(
        &mut self,
        stages: &StatefulStages,
        rows: &RecordBatch,
        origin: &RawOrigin,
    ) -> Result<Vec<PartStep>> {
        let stage = &stages.stages()[0].dedup;
        let mut ids = Vec::with_capacity(rows.num_rows());
        let mut partitions = BTreeSet::new();
        for row in 0..rows.num_rows() {
            let partition = origin.partitions.get(row).copied().flatten();
            partitions.insert(partition);
            ids.push(
                match (partition, origin.offsets.get(row).copied().flatten()) {
                    (Some(_), Some(offset)) => RowId::offset(offset),
                    _ => {
                        // The encoding orders distinct rows alike in every run (encodings of one
                        // schema are prefix-free); the count only tells identical ones apart.
                        let mut id = stage.encode_row(rows, row)?;
                        id.extend_from_slice(&self.file_rows.to_be_bytes());
                        self.file_rows += 1;
                        RowId::content(id)
                    }
                },
            );
        }
        let mut steps = Vec::new();
        for partition in partitions {
            let mask: Vec<bool> = (0..rows.num_rows())
                .map(|row| origin.partitions.get(row).copied().flatten() == partition)
                .collect();
            let (part, ids) = select_rows(rows, &ids, &mask)?;
            let state = self.states.entry(partition).or_default();
            let stepped = stages.step(state, &part, &ids, (None, None), self.fold_from)?;
            steps.push(PartStep { partition, stepped });
        }
        Ok(steps)
    }

    /// Releases the held rows at the end of the input, per partition: every one (`bounds`
    /// `None`: the batch layer's watermark is the end of its input), or those before the
    /// release bound the speed layer had reached in their partition (`sluice verify`'s cut;
    /// a partition without a bound had released nothing). The rest stay held, as there.
    pub(crate) fn release(
        &mut self,
        pipeline: &Pipeline,
        bounds: Option<&BTreeMap<i32, i64>>,
    ) -> Result<Vec<PartStep>> {
        let Some(stages) = pipeline.stateful() else {
            return Ok(Vec::new());
        };
        let empty = RecordBatch::new_empty(stages.stages()[0].dedup.schema().clone());
        let mut steps = Vec::new();
        // The states stay: a replay seeds the speed layer with what is left in them.
        for (&partition, state) in self.states.iter_mut() {
            // File rows have no partition and never reach the speed layer: all released.
            let bound = match (bounds, partition) {
                (Some(bounds), Some(partition)) => match bounds.get(&partition) {
                    Some(&bound) => bound,
                    None => continue,
                },
                _ => i64::MAX,
            };
            let stepped = stages.step(state, &empty, &[], (None, Some(bound)), self.fold_from)?;
            steps.push(PartStep { partition, stepped });
        }
        Ok(steps)
    }

    /// Each partition's state, after [`HeldRows::release`]: the rows still held, the keys
    /// still remembered.
    pub(crate) fn take_states(&mut self) -> BTreeMap<Option<i32>, MemState> {
        std::mem::take(&mut self.states)
    }

    /// The rows of `step` that belong to the fold (not its reach), with their origin.
    pub(crate) fn foldable(
        &self,
        stages: &StatefulStages,
        step: &PartStep,
    ) -> Result<(RecordBatch, RawOrigin)> {
        let stage = &stages.stages()[0].dedup;
        let rows = &step.stepped.rows;
        let keep = self.in_range(&stage.event_times(rows)?);
        let (rows, ids) = select_rows(rows, &step.stepped.ids, &keep)?;
        let ids: Vec<&RowId> = ids.iter().collect();
        Ok((rows, origin_of(step.partition, &ids)))
    }
}

/// Where rows of `partition` with `ids` came from.
pub(crate) fn origin_of(partition: Option<i32>, ids: &[&RowId]) -> RawOrigin {
    RawOrigin {
        partitions: vec![partition; ids.len()],
        offsets: ids.iter().map(|id| partition.and(id.as_offset())).collect(),
    }
}
