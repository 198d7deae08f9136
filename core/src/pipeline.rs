//! A job's plan together with its Rust transform: what the batch and speed layers both run on
//! each batch of source rows, so neither composes the steps on its own.
//!
//! [`Pipeline::evaluate_isolating`] is the one entry point both layers call. A row that decodes
//! can still fail inside the plan (`CAST('abc' AS BIGINT)`, a UDF's error, a transform's); such
//! a row must not fail its batch, or one record would stop the speed layer or make every
//! backfill of its range fail, and the two layers would disagree about it. The plan is
//! evaluated on the whole batch; when it fails the batch is halved and each half evaluated, down
//! to the failing rows, so k bad rows among n cost about 2·k·log₂(n) plan runs, not n. The
//! speed layer dead-letters exactly the failed rows and the batch layer skips exactly the
//! same ones.
//!
//! The job's data-quality checks ([`crate::checks`]) run first, on the source rows: the rows a
//! `quarantine` check rejects are failed rows too (as `check_failed`), and the plan runs on
//! the others; every check's violations are counted for both layers to report.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;

use crate::checks::QualityChecks;
use crate::dedup::DedupStage;
use crate::error::{Error, Result, arrow_err};
use crate::join::temporal::TemporalJoin;
use crate::outputs::OutputRouter;
use crate::plan::JobPlan;
use crate::spec::{Job, Severity};
use crate::stateful::StatefulStages;
use crate::topics::DivertReason;
use crate::transform::BatchTransform;

/// What the plan made of some source rows.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The rows that passed the transform and WHERE, all input columns kept.
    pub filtered: RecordBatch,
    /// An aggregate job's partial states (one row per key, window and bucket), or a stateless
    /// job's output rows (one per filtered row, in the same order).
    pub output: RecordBatch,
}

/// One source row the plan failed on, or a `quarantine` check rejected.
#[derive(Debug)]
pub struct FailedRow {
    /// The row's index in the evaluated batch.
    pub row: usize,
    pub error: Error,
    /// `transform_error` or `check_failed`.
    pub reason: DivertReason,
    /// `check_failed`: the check's name.
    pub check: Option<String>,
    /// The field at fault, when known (a check's column).
    pub field: Option<String>,
}

impl FailedRow {
    fn plan(row: usize, error: Error) -> FailedRow {
        FailedRow {
            row,
            error,
            reason: DivertReason::TransformError,
            check: None,
            field: None,
        }
    }
}

/// How many rows of a batch violated one data-quality check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckViolations {
    pub check: String,
    pub severity: Severity,
    pub rows: usize,
}

/// The plan's results over the rows it accepted (in row order, possibly in several pieces that
/// merge or concatenate to the whole), the rows it failed on or checks rejected, in row
/// order, and every check's violations (in the job file's order; empty without checks).
#[derive(Debug, Default)]
pub struct Isolated {
    pub pieces: Vec<Evaluated>,
    pub failed: Vec<FailedRow>,
    pub violations: Vec<CheckViolations>,
}

/// The source rows no `quarantine` check rejected, the rejected ones and every check's
/// violations ([`Pipeline::check`]).
#[derive(Debug)]
pub struct Checked {
    /// The rows that go on, in row order.
    pub kept: RecordBatch,
    /// Each kept row's index in the checked batch.
    pub kept_rows: Vec<usize>,
    /// The quarantined rows (`check_failed`), in row order.
    pub failed: Vec<FailedRow>,
    pub violations: Vec<CheckViolations>,
}

/// The transform (if any) followed by the compiled plan, and the job's `[[outputs]]`
/// compiled against the plan's result rows. A deduplicating job runs its [`DedupStage`]
/// between the checks and the plan: `checks → dedup → transform → WHERE → aggregate`.
#[derive(Debug)]
pub struct Pipeline {
    plan: JobPlan,
    transform: Option<Arc<dyn BatchTransform>>,
    outputs: Option<OutputRouter>,
    checks: Option<QualityChecks>,
    stateful: Option<StatefulStages>,
}

impl Pipeline {
    /// Compiles `job`'s SQL against its transform's output schema (or the source schema), and
    /// its `[[outputs]]` predicates against the SQL's result rows, so that a bad predicate
    /// fails here, when the job starts.
    pub fn compile(job: &Job, transform: Option<Arc<dyn BatchTransform>>) -> Result<Pipeline> {
        let source = job.source_schema();
        let checks = QualityChecks::compile(job, &source)?;
        let input = match &transform {
            Some(t) => t.output_schema(&source)?,
            None => source,
        };
        let plan = JobPlan::compile(job, input)?;
        if plan.join().is_some() && transform.is_some() {
            return Err(Error::UnsupportedSql {
                job: job.name().to_string(),
                what: "a join with `[transform] polars`".to_string(),
                why: "the Polars transform runs on one input's rows; join without it".to_string(),
            });
        }
        let outputs = OutputRouter::compile(job, &plan.output_schema())?;
        let dedup = match plan.dedup_keys() {
            Some(keys) => Some(dedup_stage(job, &plan, keys, transform.is_some())?),
            None => None,
        };
        let stateful = StatefulStages::compile(job, dedup)?;
        Ok(Pipeline {
            plan,
            transform,
            outputs,
            checks,
            stateful,
        })
    }

    /// The job's stateful stages (its `unique` checks and the SQL's dedup), when it has any:
    /// the caller runs the checks, steps these per task, and runs [`Pipeline::evaluate_plan`]
    /// on the rows a step lets through.
    pub fn stateful(&self) -> Option<&StatefulStages> {
        self.stateful.as_ref()
    }

    /// The source columns (indices into the job's source schema) whose values decide what
    /// [`Pipeline::evaluate_isolating`] gives, when that is fewer than all of them; `None`
    /// when every column matters. A batch whose other columns hold placeholders then gives
    /// the same pieces, violations and failed rows, so a scan may skip reading them; only a
    /// failed row's record (which shows every column) needs them read. A transform sees whole
    /// rows, and a stateful stage's row ids of file rows encode whole rows, so neither
    /// allows it.
    pub fn source_columns_read(&self) -> Option<BTreeSet<usize>> {
        if self.transform.is_some() || self.stateful.is_some() || self.plan.join().is_some() {
            return None;
        }
        let mut columns = self.plan.input_columns();
        if let Some(checks) = &self.checks {
            columns.extend(checks.input_columns());
        }
        (columns.len() < self.plan.input_schema().fields().len()).then_some(columns)
    }

    /// The temporal join, when the SQL joins a table: the caller joins the rows the checks
    /// and stateful stages let through ([`TemporalJoin::join_now`] in the batch layer) and
    /// runs [`Pipeline::evaluate_plan`] on the joined rows.
    pub fn join(&self) -> Option<&TemporalJoin> {
        self.plan.join()
    }

    /// The SQL's first-row dedup, when the SQL deduplicates.
    pub fn dedup(&self) -> Option<&DedupStage> {
        self.stateful.as_ref().and_then(StatefulStages::sql_dedup)
    }

    /// Per-check counts of a stateful step ([`crate::stateful::Stepped::violations`]) as
    /// [`CheckViolations`], like [`Isolated::violations`].
    pub fn violations_of(&self, counts: &[usize]) -> Vec<CheckViolations> {
        let Some(checks) = &self.checks else {
            return Vec::new();
        };
        checks
            .checks()
            .iter()
            .zip(counts)
            .map(|(check, rows)| CheckViolations {
                check: check.name.clone(),
                severity: check.severity,
                rows: *rows,
            })
            .collect()
    }

    /// The failed row (index 0) of a record check `check` (a quarantine `unique`) rejected.
    pub fn check_failure(&self, check: usize) -> FailedRow {
        let compiled = self.checks.as_ref().and_then(|c| c.checks().get(check));
        FailedRow {
            row: 0,
            error: match &self.checks {
                Some(checks) => checks.failure(check),
                None => Error::OperatorState(format!("check {check} of a job without checks")),
            },
            reason: DivertReason::CheckFailed,
            check: compiled.map(|c| c.name.clone()),
            field: compiled.and_then(|c| c.column.clone()),
        }
    }

    /// Why the speed layer holds rows back before the plan, for messages ("deduplicates by
    /// (order_id)"); `None` when it holds none (no stateful stage, or warn `unique` checks
    /// alone).
    pub fn holding(&self) -> Option<String> {
        let stages = self.stateful.as_ref().filter(|s| s.holds_rows())?;
        if let Some(dedup) = stages.sql_dedup() {
            return Some(format!(
                "deduplicates by ({})",
                dedup.key_names().join(", ")
            ));
        }
        let names: Vec<String> = stages
            .stages()
            .iter()
            .filter_map(|s| match s.action {
                crate::stateful::StageAction::Quarantine { check } => self
                    .checks
                    .as_ref()
                    .and_then(|c| c.checks().get(check))
                    .map(|c| format!("`{}`", c.name)),
                _ => None,
            })
            .collect();
        Some(format!(
            "holds rows for its quarantine `unique` check(s) {}",
            names.join(", ")
        ))
    }

    /// The job's data-quality checks, when it has any.
    pub fn checks(&self) -> Option<&QualityChecks> {
        self.checks.as_ref()
    }

    pub fn plan(&self) -> &JobPlan {
        &self.plan
    }

    /// The job's `[[outputs]]`, when it has any: which result rows go to which output topic.
    pub fn outputs(&self) -> Option<&OutputRouter> {
        self.outputs.as_ref()
    }

    /// Source rows → the transform → stage 1's filter.
    pub fn filtered(&self, source: &RecordBatch) -> Result<RecordBatch> {
        match &self.transform {
            Some(t) => self.plan.filter(&t.apply(source)?),
            None => self.plan.filter(source),
        }
    }

    /// Stage 1 and the rest of the plan on `source` rows: the partial states of an aggregate
    /// job, or the output rows of a stateless one, beside the rows that passed the filter.
    pub fn evaluate(&self, source: &RecordBatch) -> Result<Evaluated> {
        let filtered = self.filtered(source)?;
        let output = match self.plan.aggregate() {
            Some(stage) => stage.partial(&filtered)?,
            None => self.plan.project(&filtered)?,
        };
        Ok(Evaluated { filtered, output })
    }

    /// The checks, then [`Pipeline::evaluate`] on the rows no `quarantine` check rejected,
    /// isolating the rows the plan fails on (see the module docs). `Err` only when the plan
    /// fails whatever the rows (it fails on no rows at all): an error of the plan, not of the
    /// data.
    pub fn evaluate_isolating(&self, source: &RecordBatch) -> Result<Isolated> {
        if self.checks.is_none() {
            return self.isolate_plan(source);
        }
        let checked = self.check(source)?;
        if checked.failed.is_empty() {
            let mut isolated = self.isolate_plan(source)?;
            isolated.violations = checked.violations;
            return Ok(isolated);
        }
        let mut isolated = self.isolate_plan(&checked.kept)?;
        for failed in &mut isolated.failed {
            failed.row = checked.kept_rows[failed.row];
        }
        isolated.failed.extend(checked.failed);
        isolated.failed.sort_by_key(|f| f.row);
        isolated.violations = checked.violations;
        Ok(isolated)
    }

    /// The plan alone on rows already checked (a dedup's released rows), the rows it fails on
    /// isolated as in [`Pipeline::evaluate_isolating`].
    pub fn evaluate_plan(&self, rows: &RecordBatch) -> Result<Isolated> {
        self.isolate_plan(rows)
    }

    /// The job's data-quality checks alone: which rows go on, which a `quarantine` check
    /// rejects, and every check's violations. Without checks every row goes on.
    pub fn check(&self, source: &RecordBatch) -> Result<Checked> {
        let Some(checks) = &self.checks else {
            return Ok(Checked {
                kept: source.clone(),
                kept_rows: (0..source.num_rows()).collect(),
                failed: Vec::new(),
                violations: Vec::new(),
            });
        };
        let outcome = checks.apply(source)?;
        let violations = checks
            .checks()
            .iter()
            .zip(&outcome.violations)
            .map(|(check, rows)| CheckViolations {
                check: check.name.clone(),
                severity: check.severity,
                rows: *rows,
            })
            .collect();
        if outcome.quarantined.is_empty() {
            return Ok(Checked {
                kept: source.clone(),
                kept_rows: (0..source.num_rows()).collect(),
                failed: Vec::new(),
                violations,
            });
        }
        let mut keep = vec![true; source.num_rows()];
        for (row, _) in &outcome.quarantined {
            keep[*row] = false;
        }
        let kept_rows: Vec<usize> = (0..source.num_rows()).filter(|r| keep[*r]).collect();
        let kept = filter_record_batch(source, &BooleanArray::from(keep))
            .map_err(arrow_err("setting quarantined rows aside"))?;
        let mut failed: Vec<FailedRow> = outcome
            .quarantined
            .iter()
            .map(|&(row, index)| {
                let check = &checks.checks()[index];
                FailedRow {
                    row,
                    error: checks.failure(index),
                    reason: DivertReason::CheckFailed,
                    check: Some(check.name.clone()),
                    field: check.column.clone(),
                }
            })
            .collect();
        failed.sort_by_key(|f| f.row);
        Ok(Checked {
            kept,
            kept_rows,
            failed,
            violations,
        })
    }

    /// The plan on `source`, the rows it fails on isolated.
    fn isolate_plan(&self, source: &RecordBatch) -> Result<Isolated> {
        let mut isolated = Isolated::default();
        let whole = match self.evaluate(source) {
            Ok(evaluated) => {
                isolated.pieces.push(evaluated);
                return Ok(isolated);
            }
            Err(e) => e,
        };
        if source.num_rows() <= 1 {
            if source.num_rows() == 1 {
                isolated.failed.push(FailedRow::plan(0, whole));
                return Ok(isolated);
            }
            return Err(whole);
        }
        self.evaluate(&source.slice(0, 0)).map_err(|_| whole)?;
        let half = source.num_rows() / 2;
        self.bisect(source, 0, half, &mut isolated);
        self.bisect(source, half, source.num_rows() - half, &mut isolated);
        Ok(isolated)
    }

    /// Evaluates `source[offset..offset + len]`; on failure, its halves, down to single rows.
    fn bisect(&self, source: &RecordBatch, offset: usize, len: usize, out: &mut Isolated) {
        if len == 0 {
            return;
        }
        match self.evaluate(&source.slice(offset, len)) {
            Ok(evaluated) => out.pieces.push(evaluated),
            Err(error) if len == 1 => out.failed.push(FailedRow::plan(offset, error)),
            Err(_) => {
                let half = len / 2;
                self.bisect(source, offset, half, out);
                self.bisect(source, offset + half, len - half, out);
            }
        }
    }

    /// Which events are too late for the speed layer: every window they belong to ended at
    /// least `allowed_lateness` before `watermark` (all µs). Without a group window nothing
    /// ever closes, so nothing is late.
    pub fn late_rows(
        &self,
        event_times: &[i64],
        watermark: i64,
        allowed_lateness: i64,
    ) -> Vec<bool> {
        let Some(window) = self.plan.aggregate().and_then(|stage| stage.window()) else {
            return vec![false; event_times.len()];
        };
        let assignment = window.assign(event_times);
        let mut latest_end = vec![i64::MIN; event_times.len()];
        for (&row, &end) in assignment.rows.iter().zip(&assignment.ends) {
            let slot = &mut latest_end[row as usize];
            *slot = (*slot).max(end);
        }
        latest_end
            .into_iter()
            .map(|end| end.saturating_add(allowed_lateness) <= watermark)
            .collect()
    }
}

/// The dedup stage of a plan whose SQL deduplicates by `keys` (source columns).
fn dedup_stage(
    job: &Job,
    plan: &JobPlan,
    keys: &[String],
    transformed: bool,
) -> Result<DedupStage> {
    let refuse = |what: String, why: &str| Error::UnsupportedSql {
        job: job.name().to_string(),
        what,
        why: why.to_string(),
    };
    if transformed {
        return Err(refuse(
            "ROW_NUMBER() deduplication with a `[transform] polars` transform".into(),
            "deduplication runs on the source rows before the transform; deduplicate in the transform, or drop it",
        ));
    }
    let schema = job.source_schema();
    let indices = keys
        .iter()
        .map(|key| {
            schema.index_of(key).map_err(|_| {
                refuse(
                    format!("PARTITION BY `{key}`"),
                    "not a column of the source: deduplicate by source columns",
                )
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    Ok(DedupStage::new(
        schema,
        plan.event_time_index(),
        indices,
        job.spec.transform.dedup_within(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn pipeline(window: &str) -> Pipeline {
        let toml = format!(
            r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [{{ name = "ts", type = "timestamp" }}]
[transform]
sql = "SELECT COUNT(*) AS n FROM t GROUP BY {window}"
"#
        );
        let job = Job::from_toml(&toml, Path::new("t.toml")).expect("job");
        Pipeline::compile(&job, None).expect("plan")
    }

    #[test]
    fn a_row_the_plan_fails_on_is_isolated_and_the_rest_evaluated() {
        let toml = r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [{ name = "ts", type = "timestamp" }, { name = "qty", type = "string" }]
[transform]
sql = "SELECT SUM(CAST(qty AS BIGINT)) AS units, COUNT(*) AS n FROM t GROUP BY TUMBLE(ts, INTERVAL '1' HOUR)"
"#;
        let job = Job::from_toml(toml, Path::new("t.toml")).expect("job");
        let pipeline = Pipeline::compile(&job, None).expect("plan");
        let decoder = crate::JsonDecoder::new(&job);
        let bad = [3usize, 150, 151, 299];
        let records: Vec<String> = (0..300)
            .map(|i| {
                let qty = if bad.contains(&i) {
                    "\"abc\"".to_string()
                } else {
                    format!("\"{i}\"")
                };
                format!(r#"{{"ts":{},"qty":{qty}}}"#, i * 1000)
            })
            .collect();
        let decoded = decoder.decode(&records).expect("decode");
        assert!(pipeline.evaluate(&decoded.batch).is_err());
        let isolated = pipeline
            .evaluate_isolating(&decoded.batch)
            .expect("isolate");
        let failed: Vec<usize> = isolated.failed.iter().map(|f| f.row).collect();
        assert_eq!(failed, bad);
        let stage = pipeline.plan().aggregate().expect("aggregate");
        let partials: Vec<RecordBatch> = isolated.pieces.into_iter().map(|p| p.output).collect();
        let rows = crate::rows::to_json_lines(&[stage.finalize(&partials).expect("finalize")])
            .expect("json");
        let sum: usize = (0..300usize).filter(|i| !bad.contains(i)).sum();
        let expected = format!(r#"{{"units":{sum},"n":296}}"#);
        assert_eq!(String::from_utf8_lossy(&rows).trim(), expected);
        // A clean batch is one plan run and one piece.
        let clean = decoded.batch.slice(4, 100);
        let isolated = pipeline.evaluate_isolating(&clean).expect("clean");
        assert_eq!((isolated.pieces.len(), isolated.failed.len()), (1, 0));
    }

    #[test]
    fn the_plan_reads_only_the_columns_it_names_and_placeholders_elsewhere_change_nothing() {
        use crate::fixture::{OrderGenerator, OrderShape, OrdersJob, REGION_PER_MINUTE_SQL};
        let orders = OrdersJob::default();
        let names = |pipeline: &Pipeline, job: &Job| -> Option<Vec<String>> {
            let schema = job.source_schema();
            pipeline.source_columns_read().map(|read| {
                read.iter()
                    .map(|&i| schema.field(i).name().clone())
                    .collect()
            })
        };
        let job = orders.job(REGION_PER_MINUTE_SQL);
        let pipeline = Pipeline::compile(&job, None).expect("plan");
        let read = names(&pipeline, &job).expect("fewer than all columns");
        for name in ["region", "amount", "status", "event_time"] {
            assert!(read.contains(&name.to_string()), "{name} in {read:?}");
        }
        for name in ["order_id", "customer_id"] {
            assert!(!read.contains(&name.to_string()), "{name} in {read:?}");
        }
        // Filling the other columns with placeholders gives the same partial states.
        let records = OrderGenerator::new(3, OrderShape::default()).records(500);
        let decoded = crate::JsonDecoder::new(&job)
            .decode(&records)
            .expect("decode")
            .batch;
        let indices = pipeline.source_columns_read().expect("read");
        let columns = decoded
            .columns()
            .iter()
            .enumerate()
            .map(|(i, column)| match indices.contains(&i) {
                true => column.clone(),
                false => arrow::array::new_null_array(column.data_type(), column.len()),
            })
            .collect();
        let nullable = arrow::datatypes::Schema::new(
            decoded
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        );
        let placeholders =
            RecordBatch::try_new(Arc::new(nullable), columns).expect("placeholder batch");
        let partial = |batch: &RecordBatch| pipeline.evaluate(batch).expect("evaluate").output;
        assert_eq!(partial(&decoded), partial(&placeholders));
        // A check reads its column too.
        let checked = format!(
            "{}\n[[checks]]\ncheck = \"not_null\"\ncolumn = \"customer_id\"\n",
            orders.toml(REGION_PER_MINUTE_SQL)
        );
        let job = Job::from_toml(&checked, Path::new("t.toml")).expect("job");
        let pipeline = Pipeline::compile(&job, None).expect("plan");
        let read = names(&pipeline, &job).expect("fewer than all columns");
        assert!(read.contains(&"customer_id".to_string()), "{read:?}");
        // A job reading every column scans them all.
        let stateless = OrdersJob {
            key: "[]",
            ..OrdersJob::default()
        };
        let all = stateless
            .job("SELECT order_id, customer_id, region, amount, status, event_time FROM orders");
        let pipeline = Pipeline::compile(&all, None).expect("plan");
        assert_eq!(names(&pipeline, &all), None);
    }

    #[test]
    fn late_means_every_window_closed_more_than_the_lateness_ago() {
        let tumble = pipeline("TUMBLE(ts, INTERVAL '10' SECOND)");
        // Window [0, 10s) closes at 10s; with 5s lateness it takes updates until 15s.
        assert_eq!(
            tumble.late_rows(&[1_000_000, 12_000_000], 15_000_000, 5_000_000),
            vec![true, false]
        );
        assert_eq!(
            tumble.late_rows(&[1_000_000], 14_999_999, 5_000_000),
            vec![false]
        );
        // HOP: the event also belongs to a later window that is still open.
        let hop = pipeline("HOP(ts, INTERVAL '10' SECOND, INTERVAL '20' SECOND)");
        assert_eq!(hop.late_rows(&[1_000_000], 15_000_000, 0), vec![false]);
        assert_eq!(hop.late_rows(&[1_000_000], 20_000_000, 0), vec![true]);
    }
}
