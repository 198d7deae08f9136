//! A job's stateful stages, in pipeline order: each `unique` check, then the SQL's first-row
//! dedup. All are [`DedupStage`]s over one [`OperatorState`] (each with key spaces of its own),
//! with different actions on what a release finds: the SQL's drops the duplicates, a
//! quarantine `unique` rejects them as `check_failed`, a warn `unique` only counts them (its
//! rows go on at once; it holds copies). The speed and the batch layer both call
//! [`StatefulStages::step`] per task, so a duplicate is the same row in both.
//!
//! Every stage releases at the same bound in one step, so rows that one stage releases are
//! held and decided by the next in the same step: chaining stages adds no latency.

use arrow::array::RecordBatch;

use crate::dedup::{DedupStage, RowId, select_rows};
use crate::error::{Error, Result};
use crate::operator_state::OperatorState;
use crate::spec::{CheckKind, Job, Severity};

/// What a stage does with the duplicates a release finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageAction {
    /// The SQL's dedup: dropped.
    Drop,
    /// A warn `unique` check (its index among the job's checks): counted; rows are not held
    /// back.
    Count { check: usize },
    /// A quarantine `unique` check: rejected as `check_failed`.
    Quarantine { check: usize },
}

#[derive(Debug, Clone)]
pub struct StatefulStage {
    pub dedup: DedupStage,
    pub action: StageAction,
}

/// A row a quarantine `unique` check rejected.
#[derive(Debug)]
pub struct UniqueRejected {
    /// The row, in the source schema.
    pub row: RecordBatch,
    pub id: RowId,
    /// The check's index among the job's checks.
    pub check: usize,
}

/// What one step of one task gave.
#[derive(Debug)]
pub struct Stepped {
    /// The rows that go on to the plan now, in the source schema, with their ids.
    pub rows: RecordBatch,
    pub ids: Vec<RowId>,
    /// Rows a quarantine `unique` check rejected (reported ones only, see `report_from`).
    pub rejected: Vec<UniqueRejected>,
    /// Per check of the job (in the job file's order), the `unique` violations this step
    /// found (0 for the other checks); empty when the job has no checks.
    pub violations: Vec<usize>,
    /// Rows the SQL's dedup dropped.
    pub dropped: usize,
}

/// The stateful stages of a job (see the module docs).
#[derive(Debug, Clone)]
pub struct StatefulStages {
    stages: Vec<StatefulStage>,
    checks: usize,
}

impl StatefulStages {
    /// The `unique` checks of `job` (in order) and the SQL's dedup, when any. `sql_dedup` is
    /// the plan's stage; `unique` stages are built over `job`'s source schema.
    pub fn compile(job: &Job, sql_dedup: Option<DedupStage>) -> Result<Option<StatefulStages>> {
        let schema = job.source_schema();
        let event_time = schema
            .index_of(&job.spec.source.event_time)
            .map_err(|e| Error::OperatorState(format!("the event time column: {e}")))?;
        let mut stages = Vec::new();
        for (index, check) in job.spec.checks.iter().enumerate() {
            if check.check != CheckKind::Unique {
                continue;
            }
            let keys = check
                .key_columns()
                .iter()
                .map(|c| {
                    schema.index_of(c).map_err(|_| {
                        Error::OperatorState(format!(
                            "checks[{index}]: `{c}` is not a source field"
                        ))
                    })
                })
                .collect::<Result<Vec<usize>>>()?;
            let within = check
                .within
                .unwrap_or_else(|| job.spec.transform.dedup_within());
            let action = match check.severity {
                Severity::Warn => StageAction::Count { check: index },
                Severity::Quarantine => StageAction::Quarantine { check: index },
            };
            stages.push((
                DedupStage::new(schema.clone(), event_time, keys, within),
                action,
            ));
        }
        if let Some(dedup) = sql_dedup {
            stages.push((dedup, StageAction::Drop));
        }
        if stages.len() > 80 {
            return Err(Error::OperatorState(format!(
                "{} deduplicating stages: at most 80 (`unique` checks and the SQL's dedup)",
                stages.len()
            )));
        }
        if stages.is_empty() {
            return Ok(None);
        }
        let stages = stages
            .into_iter()
            .enumerate()
            .map(|(number, (dedup, action))| StatefulStage {
                dedup: dedup.numbered(number as u8),
                action,
            })
            .collect();
        Ok(Some(StatefulStages {
            stages,
            checks: job.spec.checks.len(),
        }))
    }

    pub fn stages(&self) -> &[StatefulStage] {
        &self.stages
    }

    /// The SQL's dedup, when the SQL deduplicates.
    pub fn sql_dedup(&self) -> Option<&DedupStage> {
        self.stages
            .iter()
            .find(|s| s.action == StageAction::Drop)
            .map(|s| &s.dedup)
    }

    /// Whether rows wait for a release before the plan (the SQL's dedup or a quarantine
    /// `unique`); with warn `unique` checks alone they go on at once.
    pub fn holds_rows(&self) -> bool {
        self.stages
            .iter()
            .any(|s| !matches!(s.action, StageAction::Count { .. }))
    }

    /// How far before a row the batch layer must read for every stage's decision on it: the
    /// sum of the horizons (a row's predecessor in one stage depends on its own in the one
    /// before).
    pub fn reach_us(&self) -> i64 {
        self.stages
            .iter()
            .fold(0i64, |sum, s| sum.saturating_add(s.dedup.within_us()))
    }

    /// One step of one task: `arriving` rows (checked, with their ids) enter the first stage;
    /// with a `bound`, every stage then releases what is before it, in order. Arriving rows
    /// before `late_before` (the previous bound) are late: with [`StatefulStages::holds_rows`]
    /// the caller diverts them beforehand; with warn checks alone they go on to the plan but
    /// are not counted (a backfill of their range counts them). Violations and rejections of
    /// rows before `report_from` (the batch layer's reach rows) are decided but not reported.
    pub fn step(
        &self,
        state: &mut dyn OperatorState,
        arriving: &RecordBatch,
        ids: &[RowId],
        (late_before, bound): (Option<i64>, Option<i64>),
        report_from: Option<i64>,
    ) -> Result<Stepped> {
        let mut violations = vec![0; self.checks];
        let mut rejected = Vec::new();
        let mut dropped = 0;
        let mut current = Some((arriving.clone(), ids.to_vec()));
        for stage in &self.stages {
            let reported = |rows: &RecordBatch| -> Result<Vec<bool>> {
                Ok(stage
                    .dedup
                    .event_times(rows)?
                    .into_iter()
                    .map(|t| report_from.is_none_or(|from| t >= from))
                    .collect())
            };
            if let StageAction::Count { check } = stage.action {
                if let Some((rows, ids)) = &current
                    && rows.num_rows() > 0
                {
                    match late_before {
                        Some(before) => {
                            let on_time: Vec<bool> = stage
                                .dedup
                                .event_times(rows)?
                                .into_iter()
                                .map(|t| t >= before)
                                .collect();
                            let (rows, ids) = select_rows(rows, ids, &on_time)?;
                            stage.dedup.hold(state, &rows, &ids)?;
                        }
                        None => stage.dedup.hold(state, rows, ids)?,
                    }
                }
                if let Some(bound) = bound {
                    let released = stage.dedup.release_duplicates(state, bound)?;
                    if let Some((duplicates, _)) = &released.duplicates {
                        violations[check] +=
                            reported(duplicates)?.into_iter().filter(|r| *r).count();
                    }
                }
                continue;
            }
            if let Some((rows, ids)) = current.take()
                && rows.num_rows() > 0
            {
                stage.dedup.hold(state, &rows, &ids)?;
            }
            let Some(bound) = bound else {
                continue;
            };
            let released = match stage.action {
                StageAction::Quarantine { check } => {
                    let released = stage.dedup.release_all_rows(state, bound)?;
                    if let Some((duplicates, duplicate_ids)) = &released.duplicates {
                        let keep = reported(duplicates)?;
                        for (row, id) in duplicate_ids.iter().enumerate() {
                            if keep[row] {
                                violations[check] += 1;
                                rejected.push(UniqueRejected {
                                    row: duplicates.slice(row, 1),
                                    id: id.clone(),
                                    check,
                                });
                            }
                        }
                    }
                    released
                }
                _ => {
                    let released = stage.dedup.release(state, bound)?;
                    dropped += released.dropped;
                    released
                }
            };
            current = Some((released.kept, released.ids));
        }
        let (rows, ids) =
            current.unwrap_or_else(|| (RecordBatch::new_empty(arriving.schema()), Vec::new()));
        Ok(Stepped {
            rows,
            ids,
            rejected,
            violations,
            dropped,
        })
    }
}

#[cfg(test)]
mod tests;
