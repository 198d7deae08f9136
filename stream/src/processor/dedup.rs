//! A deduplicating job's micro-batch (see [`sluice_core::dedup`] for the rule): records before
//! their partition's release bound are late, the others are checked and held in the operator
//! state, and the rows a release decides go through the plan like any other rows.
//!
//! A partition's release bound is the job watermark net of the allowed lateness, and it only
//! grows (it is kept in the partition's watermark record, so a restart resumes it). Windows
//! expire by the same watermark and lateness, so a released row never meets an expired window:
//! `sluice_core`'s dedup holds rows, the window index closes windows, and neither knows the
//! other.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use sluice_core::FailedRow;
use sluice_core::dedup::RowId;
use sluice_core::rows::to_json_lines;
use sluice_core::stateful::{StatefulStages, Stepped};

use super::Processor;
use super::op_state::StoreState;
use super::records::{Diverted, Output, SourceRecord, SpeedRecord};
use crate::error::Result;

impl Processor {
    /// Marks which rows go on (to be held); rows before their partition's release bound go to
    /// `<job>.late`.
    pub(super) fn divert_late_dedup(
        &self,
        times: &[i64],
        origin: &[&SourceRecord],
        output: &mut Output,
    ) -> Vec<bool> {
        let mut keep = vec![true; times.len()];
        for (row, (&time, record)) in times.iter().zip(origin).enumerate() {
            let Some(&bound) = self.purge_us.get(&record.partition) else {
                continue;
            };
            if time >= bound {
                continue;
            }
            keep[row] = false;
            output.late.push(self.late_record(
                record,
                (bound, time),
                "the deduplication already decided every row before this one's event time (its watermark net of the allowed lateness passed it)",
            ));
        }
        keep
    }

    /// One step of `partition`'s stateful stages: checks `part` (its arriving rows;
    /// quarantined ones go to the DLQ), steps the rest through the stages at the partition's
    /// new bound, and runs the plan on what they let through. Returns whether the bound moved.
    pub(super) fn dedup_step(
        &mut self,
        stages: &StatefulStages,
        partition: i32,
        part: Option<(&RecordBatch, &[u32])>,
        origin: &[&SourceRecord],
        job_watermark: Option<i64>,
        output: &mut Output,
    ) -> Result<bool> {
        let (arriving, ids) = match part {
            Some((part, rows)) => {
                let checked = self.pipeline.check(part)?;
                output.violations.extend(checked.violations);
                for failed in checked.failed {
                    let record = origin[rows[failed.row] as usize];
                    output.dlq.push(self.failed_row(record, failed));
                }
                let ids: Vec<RowId> = checked
                    .kept_rows
                    .iter()
                    .map(|&r| RowId::offset(origin[rows[r] as usize].offset))
                    .collect();
                (checked.kept, ids)
            }
            None => (RecordBatch::new_empty(self.job.source_schema()), Vec::new()),
        };
        let lateness = self.windows.lateness_us();
        let previous = self.purge_us.get(&partition).copied();
        // Monotone: `None` orders below every bound, so the larger of the two is kept.
        let bound = job_watermark
            .map(|w| w.saturating_sub(lateness))
            .max(previous);
        let mut state = StoreState::new(&self.store, partition);
        let stepped = stages.step(&mut state, &arriving, &ids, (previous, bound), None)?;
        let writes = state.finish()?;
        output
            .state
            .extend(writes.into_iter().map(|(key, value)| SpeedRecord {
                partition,
                key,
                value,
            }));
        if let Some(bound) = bound {
            self.purge_us.insert(partition, bound);
        }
        self.run_stepped(partition, stepped, output)?;
        Ok(bound != previous)
    }

    /// The `unique` rejections and violations of a step, and the plan on the rows it let
    /// through. A held row is dead-lettered as its decoded row in JSON (its record's bytes are
    /// not kept while it is held), with its partition and offset.
    fn run_stepped(&mut self, partition: i32, stepped: Stepped, output: &mut Output) -> Result<()> {
        output.deduplicated += stepped.dropped;
        output
            .violations
            .extend(self.pipeline.violations_of(&stepped.violations));
        for rejected in stepped.rejected {
            let failed = self.pipeline.check_failure(rejected.check);
            output.dlq.push(held_row_dead_letter(
                partition,
                &rejected.row,
                &rejected.id,
                failed,
            )?);
        }
        if stepped.rows.num_rows() == 0 {
            return Ok(());
        }
        let isolated = self.pipeline.evaluate_plan(&stepped.rows)?;
        for failed in isolated.failed {
            let row = stepped.rows.slice(failed.row, 1);
            let id = &stepped.ids[failed.row];
            output
                .dlq
                .push(held_row_dead_letter(partition, &row, id, failed)?);
        }
        for piece in isolated.pieces {
            self.absorb(partition, piece.output, output)?;
        }
        Ok(())
    }

    /// Every assigned partition's rows of this micro-batch (`parts`: its arriving rows and
    /// their indices in the batch; possibly none) through its dedup step. Returns whether any
    /// release bound moved.
    pub(super) fn dedup_all(
        &mut self,
        stages: &StatefulStages,
        parts: &BTreeMap<i32, (RecordBatch, Vec<u32>)>,
        origin: &[&SourceRecord],
        job_watermark: Option<i64>,
        output: &mut Output,
    ) -> Result<bool> {
        let mut partitions: Vec<i32> = self.watermarks.partitions().map(|(p, _)| p).collect();
        partitions.extend(parts.keys().copied());
        partitions.sort_unstable();
        partitions.dedup();
        let mut moved = false;
        for partition in partitions {
            let part = parts
                .get(&partition)
                .map(|(rows, indices)| (rows, indices.as_slice()));
            moved |= self.dedup_step(stages, partition, part, origin, job_watermark, output)?;
        }
        Ok(moved)
    }
}

/// A held row's dead letter: the row as JSON (PII already protected at decode), with its
/// partition and offset.
fn held_row_dead_letter(
    partition: i32,
    row: &RecordBatch,
    id: &RowId,
    failed: FailedRow,
) -> Result<Diverted> {
    let payload = to_json_lines(std::slice::from_ref(row))?
        .strip_suffix(b"\n")
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok(Diverted {
        record: SourceRecord {
            partition,
            offset: id.as_offset().unwrap_or(-1),
            timestamp_ms: None,
            key: None,
            payload: Some(payload),
        },
        error_type: failed.reason,
        message: failed.error.to_string(),
        field: failed.field,
        check: failed.check,
        watermark_us: None,
        event_time_us: None,
        pii: None,
    })
}
