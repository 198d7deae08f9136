//! Folding raw rows through the shared plan into view rows: what `sluice backfill`, `sluice
//! verify`'s recompute and the replay seed all run on the batches [`crate::raw_scan::scan_raw`] hands them.
//! Rows the plan fails on or checks quarantine are kept aside with where they came from; a
//! deduplicating job's rows are held first ([`crate::dedup_fold`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{Int32Type, Int64Type, SchemaRef, TimestampMicrosecondType};
use sluice_core::anomaly::RowCounter;
use sluice_core::lake::view_schema;
use sluice_core::operator_state::MemState;
use sluice_core::rows::to_json_lines;
use sluice_core::spec::UTC;
use sluice_core::time::floor_to;
use sluice_core::{CheckViolations, Isolated, Job, JobPlan, Pipeline};

use crate::backfill::RejectedRow;
use crate::dedup_fold::{HeldRows, PartStep, origin_of};
use crate::error::{BatchError, Result};

/// Partial rows held before they are merged down, bounding memory during a backfill.
const MERGE_EVERY_ROWS: usize = 1 << 20;
/// A merge happens once the pending rows are this many times what the last merge left: with
/// more groups than [`MERGE_EVERY_ROWS`] (1M+ keys), merging whenever the pending rows pass
/// that fixed size re-merged every group on every batch, quadratic in the batches.
const MERGE_GROWTH: usize = 2;

/// Where each raw row of a scanned batch came from (its source partition and offset columns).
pub(crate) struct RawOrigin {
    pub(crate) partitions: Vec<Option<i32>>,
    pub(crate) offsets: Vec<Option<i64>>,
}

impl RawOrigin {
    /// The two source columns that follow the job's `width` source columns in a scan.
    pub(crate) fn of(scanned: &RecordBatch, width: usize) -> RawOrigin {
        let int = |i: usize| scanned.columns().get(i).cloned();
        let partitions = int(width)
            .and_then(|c| arrow::compute::cast(&c, &arrow::datatypes::DataType::Int32).ok())
            .map(|c| c.as_primitive::<Int32Type>().iter().collect())
            .unwrap_or_else(|| vec![None; scanned.num_rows()]);
        let offsets = int(width + 1)
            .and_then(|c| arrow::compute::cast(&c, &arrow::datatypes::DataType::Int64).ok())
            .map(|c| c.as_primitive::<Int64Type>().iter().collect())
            .unwrap_or_else(|| vec![None; scanned.num_rows()]);
        RawOrigin {
            partitions,
            offsets,
        }
    }

    /// The origin of `rows` (indices into this one), in that order.
    pub(crate) fn take(&self, rows: impl IntoIterator<Item = usize>) -> RawOrigin {
        let (partitions, offsets) = rows
            .into_iter()
            .map(|row| {
                (
                    self.partitions.get(row).copied().flatten(),
                    self.offsets.get(row).copied().flatten(),
                )
            })
            .unzip();
        RawOrigin {
            partitions,
            offsets,
        }
    }
}

/// Runs the plan over raw batches and accumulates the view rows.
pub(crate) struct Fold<'a> {
    pipeline: &'a Pipeline,
    plan: &'a JobPlan,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// Rows the last merge left (the groups so far); the next merge waits for growth on it.
    merged_rows: usize,
    pub(crate) rows_read: usize,
    pub(crate) rejected: Vec<RejectedRow>,
    /// Check violations summed over every batch added (the same checks, in the same order,
    /// for each).
    pub(crate) violations: Vec<CheckViolations>,
    /// The source rows added, per window of `[anomalies]` (backfills of jobs declaring it).
    pub(crate) window_rows: Option<RowCounter>,
    /// A deduplicating job's checked rows, held until the end of the input.
    held: Option<HeldRows>,
    /// Where the held rows are released at the end: `None`, all of them; else per source
    /// partition before the speed layer's bound (see [`Fold::released_at`]).
    release_bounds: Option<BTreeMap<i32, i64>>,
    /// A joining job's table versions ([`crate::join_fold`]), which every row is joined with
    /// before the plan.
    versions: Option<Arc<MemState>>,
}

impl<'a> Fold<'a> {
    pub(crate) fn new(pipeline: &'a Pipeline) -> Fold<'a> {
        Fold {
            pipeline,
            plan: pipeline.plan(),
            pending: Vec::new(),
            pending_rows: 0,
            merged_rows: 0,
            rows_read: 0,
            rejected: Vec::new(),
            violations: Vec::new(),
            window_rows: None,
            held: pipeline.stateful().map(|_| HeldRows::new(None)),
            release_bounds: None,
            versions: None,
        }
    }

    /// The joined table's versions the rows are joined with (a joining job's folds need them).
    pub(crate) fn with_versions(mut self, versions: Option<Arc<MemState>>) -> Fold<'a> {
        self.versions = versions;
        self
    }

    /// The pipeline the rows are folded through.
    pub(crate) fn pipeline(&self) -> &'a Pipeline {
        self.pipeline
    }

    /// The stateful stages' state per source partition once the fold has finished (after
    /// [`Fold::partials`]): what is still held, for a replay's seed. Empty for other jobs.
    pub(crate) fn take_operator_state(&mut self) -> BTreeMap<Option<i32>, MemState> {
        self.held
            .as_mut()
            .map(HeldRows::take_states)
            .unwrap_or_default()
    }

    /// The fold releases, at the end, only the held rows before each partition's bound (the
    /// speed layer's release bounds at a cut): rows it still holds are not folded.
    pub(crate) fn released_at(mut self, bounds: BTreeMap<i32, i64>) -> Fold<'a> {
        self.release_bounds = Some(bounds);
        self
    }

    /// A fold of the rows from `from` on: a job with stateful stages (dedup, `unique`) also
    /// gets rows before it (read because they decide which later rows are duplicates), which
    /// are stepped but neither folded nor reported.
    pub(crate) fn starting_at(pipeline: &'a Pipeline, from: i64) -> Fold<'a> {
        let mut fold = Fold::new(pipeline);
        if fold.held.is_some() {
            fold.held = Some(HeldRows::new(Some(from)));
        }
        fold
    }

    pub(crate) fn add(&mut self, raw: &RecordBatch, origin: &RawOrigin) -> Result<()> {
        if let (Some(stages), Some(held)) = (self.pipeline.stateful(), &self.held) {
            let in_range = held.in_range(&stages.stages()[0].dedup.event_times(raw)?);
            if in_range.iter().all(|&r| r) {
                return self.add_held(raw, origin, true);
            }
            let (range, reach) = split_rows(raw, origin, &in_range)?;
            self.add_held(&range.0, &range.1, true)?;
            return self.add_held(&reach.0, &reach.1, false);
        }
        if self.pipeline.join().is_some() {
            let (kept, kept_origin) = self.checked(raw, origin, true)?;
            return self.absorb_plan(&kept, &kept_origin, Vec::new());
        }
        self.count_read(raw)?;
        let isolated = self.pipeline.evaluate_isolating(raw)?;
        self.absorb(raw, origin, isolated)
    }

    /// Counts `raw` as rows the fold read (and per `[anomalies]` window).
    fn count_read(&mut self, raw: &RecordBatch) -> Result<()> {
        self.rows_read += raw.num_rows();
        if let Some(counter) = &mut self.window_rows {
            counter.add(raw)?;
        }
        Ok(())
    }

    /// The checks on `raw`: the rows they let through, with their origin. `counted` rows are
    /// the fold's (read, and rejected and violations reported), the others its reach.
    fn checked(
        &mut self,
        raw: &RecordBatch,
        origin: &RawOrigin,
        counted: bool,
    ) -> Result<(RecordBatch, RawOrigin)> {
        let checked = self.pipeline.check(raw)?;
        let kept_origin = origin.take(checked.kept_rows.iter().copied());
        if counted {
            self.count_read(raw)?;
            let rejected = Isolated {
                pieces: Vec::new(),
                failed: checked.failed,
                violations: checked.violations,
            };
            self.absorb(raw, origin, rejected)?;
        }
        Ok((checked.kept, kept_origin))
    }

    /// The plan on rows the checks (and stateful stages) let through, joined first when the
    /// job joins a table; `violations` are the stateful stages' counts to report beside.
    fn absorb_plan(
        &mut self,
        rows: &RecordBatch,
        origin: &RawOrigin,
        violations: Vec<CheckViolations>,
    ) -> Result<()> {
        let Some(join) = self.pipeline.join() else {
            let mut isolated = self.pipeline.evaluate_plan(rows)?;
            isolated.violations = violations;
            return self.absorb(rows, origin, isolated);
        };
        let Some(versions) = &self.versions else {
            return Err(BatchError::Core(sluice_core::Error::OperatorState(
                format!(
                    "the versions of `{}` were not loaded for this fold",
                    join.table_input()
                ),
            )));
        };
        let (joined, inputs, _) = join.join_now(&**versions, rows)?;
        let origin = origin.take(inputs);
        let mut isolated = self.pipeline.evaluate_plan(&joined)?;
        isolated.violations = violations;
        self.absorb(&joined, &origin, isolated)
    }

    /// Checks `raw` and holds what passes for the dedup; `counted` rows are the fold's (read,
    /// checked and rejected in its report), the others its reach.
    fn add_held(&mut self, raw: &RecordBatch, origin: &RawOrigin, counted: bool) -> Result<()> {
        if raw.num_rows() == 0 {
            return Ok(());
        }
        let (kept, kept_origin) = self.checked(raw, origin, counted)?;
        let steps = match (self.pipeline.stateful(), &mut self.held) {
            (Some(stages), Some(held)) => held.add(stages, &kept, &kept_origin)?,
            _ => Vec::new(),
        };
        self.absorb_steps(steps)
    }

    /// Releases the stateful stages' held rows through the plan (at the end of the input).
    fn release_held(&mut self) -> Result<()> {
        let steps = match self.held.as_mut() {
            Some(held) => held.release(self.pipeline, self.release_bounds.as_ref())?,
            None => return Ok(()),
        };
        self.absorb_steps(steps)
    }

    /// What stateful steps gave: `unique` rejections and violations reported, the rows they
    /// let through (those of the fold's range) through the plan.
    fn absorb_steps(&mut self, steps: Vec<PartStep>) -> Result<()> {
        let (Some(stages), Some(held)) = (self.pipeline.stateful(), &self.held) else {
            return Ok(());
        };
        let mut folded = Vec::with_capacity(steps.len());
        for step in &steps {
            folded.push(held.foldable(stages, step)?);
        }
        for (step, (rows, origin)) in steps.into_iter().zip(folded) {
            let violations = self.pipeline.violations_of(&step.stepped.violations);
            self.absorb_plan(&rows, &origin, violations)?;
            for rejected in step.stepped.rejected {
                let failed = self.pipeline.check_failure(rejected.check);
                let origin = origin_of(step.partition, &[&rejected.id]);
                self.absorb(
                    &rejected.row,
                    &origin,
                    Isolated {
                        pieces: Vec::new(),
                        failed: vec![failed],
                        violations: Vec::new(),
                    },
                )?;
            }
        }
        Ok(())
    }

    /// The plan's outcome on `raw`: rejected rows reported, violations summed, pieces folded.
    fn absorb(&mut self, raw: &RecordBatch, origin: &RawOrigin, isolated: Isolated) -> Result<()> {
        for failed in isolated.failed {
            let record = to_json_lines(&[raw.slice(failed.row, 1)])?;
            self.rejected.push(RejectedRow {
                partition: origin.partitions.get(failed.row).copied().flatten(),
                offset: origin.offsets.get(failed.row).copied().flatten(),
                error: failed.reason,
                reason: failed.error.to_string(),
                check: failed.check,
                record: serde_json::from_slice(&record).unwrap_or(serde_json::Value::Null),
            });
        }
        if self.violations.is_empty() {
            self.violations = isolated.violations;
        } else {
            for (sum, more) in self.violations.iter_mut().zip(isolated.violations) {
                sum.rows += more.rows;
            }
        }
        for piece in isolated.pieces {
            let rows = match self.plan.aggregate() {
                Some(_) => piece.output,
                None => stateless_rows(self.plan, &piece)?,
            };
            self.pending_rows += rows.num_rows();
            self.pending.push(rows);
        }
        let merge_at = MERGE_EVERY_ROWS.max(MERGE_GROWTH * self.merged_rows);
        if self.plan.aggregate().is_some() && self.pending_rows > merge_at {
            self.compact()?;
        }
        Ok(())
    }

    /// The partial states folded so far, merged per (key, window, bucket). Aggregate jobs.
    /// Releases a deduplicating fold's held rows first: call it once, after the last row.
    pub(crate) fn partials(&mut self, job: &Job) -> Result<RecordBatch> {
        self.release_held()?;
        let Some(stage) = self.plan.aggregate() else {
            return Err(BatchError::Stateless {
                job: job.name().to_string(),
                what: "merge",
            });
        };
        Ok(stage.merge(&self.pending)?)
    }

    fn compact(&mut self) -> Result<()> {
        if let Some(stage) = self.plan.aggregate() {
            let merged = stage.merge(&self.pending)?;
            self.pending_rows = merged.num_rows();
            self.merged_rows = merged.num_rows();
            self.pending = vec![merged];
        }
        Ok(())
    }

    /// The view rows: finalized columns beside partial states, or a stateless job's rows.
    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        self.release_held()?;
        let schema = view_schema(self.plan);
        let Some(stage) = self.plan.aggregate() else {
            return concat(&schema, &self.pending);
        };
        let merged = stage.merge(&self.pending)?;
        let finalized = stage.finalize_rows(&merged)?;
        let mut columns = finalized.columns().to_vec();
        columns.extend(merged.columns().iter().cloned());
        RecordBatch::try_new(schema, columns).map_err(|source| {
            sluice_core::Error::Arrow {
                during: "building view rows",
                source: Box::new(source),
            }
            .into()
        })
    }
}

/// A stateless job's output rows with the `__bucket` of each row's event time.
fn stateless_rows(plan: &JobPlan, evaluated: &sluice_core::Evaluated) -> Result<RecordBatch> {
    let projected = &evaluated.output;
    let bucket = plan.bucket_micros();
    let times = evaluated
        .filtered
        .column(plan.event_time_index())
        .as_primitive::<TimestampMicrosecondType>();
    let buckets: TimestampMicrosecondArray = times
        .iter()
        .map(|t| t.map(|t| floor_to(t, bucket)))
        .collect();
    let mut columns = projected.columns().to_vec();
    columns.push(Arc::new(buckets.with_timezone(UTC)));
    RecordBatch::try_new(view_schema(plan), columns).map_err(|source| {
        sluice_core::Error::Arrow {
            during: "building stateless view rows",
            source: Box::new(source),
        }
        .into()
    })
}

/// `raw` split by `mask`: the rows where it is true and the others, each with its origin.
fn split_rows(
    raw: &RecordBatch,
    origin: &RawOrigin,
    mask: &[bool],
) -> Result<((RecordBatch, RawOrigin), (RecordBatch, RawOrigin))> {
    let part = |wanted: bool| -> Result<(RecordBatch, RawOrigin)> {
        let select: Vec<bool> = mask.iter().map(|&m| m == wanted).collect();
        let rows = arrow::compute::filter_record_batch(raw, &BooleanArray::from(select.clone()))
            .map_err(|source| sluice_core::Error::Arrow {
                during: "splitting the dedup reach from the range",
                source: Box::new(source),
            })?;
        let picked = select
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .map(|(row, _)| row);
        Ok((rows, origin.take(picked)))
    };
    Ok((part(true)?, part(false)?))
}

fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    arrow::compute::concat_batches(schema, batches).map_err(|source| {
        sluice_core::Error::Arrow {
            during: "concatenating view rows",
            source: Box::new(source),
        }
        .into()
    })
}
