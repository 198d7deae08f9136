//! `sluice backfill`: recompute the batch view for a bucket range from the raw table.
//!
//! The raw rows of `[from, to)` (rounded outward to bucket boundaries) stream through the job's
//! `JobPlan` exactly as micro-batches do in the speed layer: stage 1, then partial states per
//! (key, window, bucket), merged as they accumulate. The result replaces that bucket range of
//! the view table in one Delta commit, so re-running a range is idempotent. The commit records
//! the new cutoff (the batch view covers every bucket before it) and the ranges landed beyond
//! it ([`ViewCoverage`]): backfills of disjoint ranges may run concurrently, and the cutoff
//! moves only over ranges contiguous with it.
//!
//! Raw rows the plan fails on (they decoded, so they are in the lake, but e.g. a CAST fails on
//! them) are skipped, exactly the rows the speed layer dead-letters: both run
//! [`Pipeline::evaluate_isolating`]. They are counted in the report and the commit metadata
//! and returned with their partition, offset and reason, so one bad record never fails the
//! backfill of its range.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::common::Column;
use datafusion::functions_aggregate::expr_fn::min;
use datafusion::logical_expr::Expr;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sluice_core::anomaly::{self, Anomaly, RowCounter, Rule};
use sluice_core::lake::{CUTOFF_KEY, TableLocation, commit_key};
use sluice_core::lake_progress::{Completeness, raw_completeness};
use sluice_core::time::{ceil_to, floor_to, format_time};
use sluice_core::topics::view_writer_app_id;
use sluice_core::{
    BatchTransform, CheckViolations, DivertReason, Job, Lake, Pipeline, ViewCoverage,
};

use crate::error::{BatchError, Result};
pub(crate) use crate::fold::{Fold, RawOrigin};
use crate::raw_scan::{ScanColumns, scan_error, scan_raw};

/// Which range to recompute. `None` bounds default to the raw table's first bucket and the
/// start of the current (incomplete) bucket.
#[derive(Debug, Clone, Default)]
pub struct BackfillRequest {
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Do not clamp the range to what the raw table holds completely (see
    /// [`sluice_core::lake_progress`]): the cutoff may then pass records still on their way
    /// to the lake, and the merged view misses them until a later backfill.
    pub allow_incomplete: bool,
}

/// What a backfill did; printed by the CLI as text or JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackfillReport {
    pub job: String,
    pub view_table: String,
    pub from: String,
    pub to: String,
    pub rows_read: usize,
    pub view_rows: usize,
    /// Raw rows the plan failed on or a `quarantine` check rejected, skipped (listed in
    /// [`BackfillReport::rejected`]).
    pub rows_rejected: usize,
    /// Rows violating each data-quality check, in the job file's order (empty without
    /// `[[checks]]`).
    pub check_violations: Vec<CheckViolations>,
    /// The range's windows whose count of source rows is anomalous against the windows before
    /// them (`[anomalies]`, see [`sluice_core::anomaly`]; empty without it), oldest first.
    pub row_count_anomalies: Vec<Anomaly>,
    pub cutoff: Option<String>,
    pub cutoff_us: Option<i64>,
    /// The event time before which the raw table holds every source partition's records
    /// (`None`: the raw table holds loaded files only, or a partition is not reported yet).
    pub lake_complete_until: Option<String>,
    pub lake_complete_until_us: Option<i64>,
    /// The range end asked for, when it was clamped to `lake_complete_until`.
    pub clamped_from: Option<String>,
    /// The range reaches past `lake_complete_until` (only with `allow_incomplete`).
    pub incomplete: bool,
    pub table_version: Option<u64>,
    pub seconds: f64,
    /// The skipped rows themselves (not in the JSON report: `--rejects FILE` writes them).
    #[serde(skip)]
    pub rejected: Vec<RejectedRow>,
}

/// A raw row the plan failed on, as `--rejects` writes it (one JSON object per line).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedRow {
    /// Where the record came from: null for rows loaded from files.
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// `transform_error` or `check_failed` (rows that did not decode never reached the lake).
    pub error: DivertReason,
    pub reason: String,
    /// `check_failed`: the check's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// The row's source columns.
    pub record: serde_json::Value,
}

/// The plan a job runs on the batch layer, with its transform's output as the SQL input.
pub fn compile(job: &Job, transform: Option<Arc<dyn BatchTransform>>) -> Result<Pipeline> {
    Ok(Pipeline::compile(job, transform)?)
}

pub async fn backfill(
    job: &Job,
    lake: &Lake,
    transform: Option<Arc<dyn BatchTransform>>,
    request: BackfillRequest,
) -> Result<BackfillReport> {
    let started = Instant::now();
    let pipeline = compile(job, transform)?;
    let raw = TableLocation::new(lake.raw_table(job));
    let view = TableLocation::new(lake.view_table(job));
    view.check_view_plan(job).await?;
    let bucket = job.bucket_micros();
    let (from, requested_to) = resolve_range(job, &raw, &request, bucket).await?;
    let completeness = raw_completeness(&raw, job).await?;
    // A joining job's rows are decided by the table's versions too: the range ends where both
    // raw tables are complete (the speed layer likewise waits for the table's watermark).
    let completeness = match pipeline.join() {
        Some(join) => {
            let table = job.input(join.table_input())?;
            let table_raw = TableLocation::new(lake.raw_table(&table.job));
            completeness.and(raw_completeness(&table_raw, &table.job).await?)
        }
        None => completeness,
    };
    let (to, clamped_from, incomplete) =
        clamp_to_lake(job, (from, requested_to), completeness, &request)?;
    // The rows of one raw version, recorded in the commit (what `sluice verify` cuts at).
    let raw_version = raw.open().await?.version();
    let pinned = raw_version.map_or_else(|| raw.clone(), |v| raw.at_version(v));
    let progress = progress_bar(request.progress);
    let rule = Rule::for_job(job);
    let versions = crate::join_fold::load_versions(job, lake, &pipeline, Some(to)).await?;
    let new_fold = || {
        let mut fold = Fold::starting_at(&pipeline, from).with_versions(versions.clone());
        fold.window_rows = rule.as_ref().map(|rule| RowCounter::new(job, rule));
        fold
    };
    // A job with stateful stages (dedup, `unique`) reads back by their horizons: those rows
    // decide which rows of the range are duplicates.
    let reach = pipeline.stateful().map_or(0, |stages| stages.reach_us());
    let range = (Some(from.saturating_sub(reach)), Some(to));
    let mut fold = new_fold();
    let columns = ScanColumns::ReadByPlan;
    fold_raw(job, &pinned, &mut fold, range, &progress, columns).await?;
    if !fold.rejected.is_empty() && pipeline.source_columns_read().is_some() {
        // Rejected rows are reported with every column, which the scan skipped: the range is
        // read again whole (rows are rarely rejected, and the same rows are, whatever is read).
        tracing::info!(
            job = job.name(),
            rejected = fold.rejected.len(),
            "rows were rejected: reading the range again with every column, to report them whole"
        );
        progress.reset();
        fold = new_fold();
        fold_raw(job, &pinned, &mut fold, range, &progress, ScanColumns::All).await?;
    }
    progress.finish_and_clear();
    let rows = fold.finish()?;
    // Before the commit, so that failing to count the history fails the backfill rather than
    // leave a commit whose report never came.
    let row_count_anomalies = match (&rule, fold.window_rows.take()) {
        (Some(rule), Some(counted)) => {
            anomaly::anomalies_of_range(&pinned, rule, counted, (from, to)).await?
        }
        _ => Vec::new(),
    };
    let view_rows = rows.num_rows();
    let starts_history = match view.coverage().await?.cutoff {
        Some(_) => false,
        None => first_event(job, &raw)
            .await?
            .is_none_or(|first| from <= floor_to(first, bucket)),
    };
    let mut metadata = HashMap::from([
        (commit_key::OPERATION.to_string(), json!("backfill")),
        (commit_key::JOB.to_string(), json!(job.name())),
        (
            commit_key::PLAN_FINGERPRINT.to_string(),
            json!(job.plan_fingerprint()),
        ),
        (commit_key::FROM_US.to_string(), json!(from)),
        (commit_key::TO_US.to_string(), json!(to)),
        (commit_key::ROWS_READ.to_string(), json!(fold.rows_read)),
        (commit_key::VIEW_ROWS.to_string(), json!(view_rows)),
        (
            commit_key::ROWS_REJECTED.to_string(),
            json!(fold.rejected.len()),
        ),
    ]);
    if !fold.violations.is_empty() {
        let counts: serde_json::Map<String, serde_json::Value> = fold
            .violations
            .iter()
            .map(|v| (v.check.clone(), json!(v.rows)))
            .collect();
        metadata.insert(commit_key::CHECK_VIOLATIONS.to_string(), counts.into());
    }
    if let Some(until) = completeness.until_us() {
        metadata.insert(commit_key::LAKE_COMPLETE_UNTIL_US.to_string(), json!(until));
    }
    if let Some(version) = raw_version {
        metadata.insert(commit_key::RAW_VERSION.to_string(), json!(version));
    }
    // The coverage this commit lands on (it may be redone on a newer one after a conflict
    // with a concurrent shard): the last attempt's is the one committed.
    let landed: Mutex<ViewCoverage> = Mutex::default();
    let metadata_for = |coverage: &ViewCoverage| {
        let next = coverage.land(from, to, starts_history);
        let mut metadata = metadata.clone();
        if let Some(cutoff) = next.cutoff {
            metadata.insert(CUTOFF_KEY.to_string(), json!(cutoff));
        }
        metadata.insert(commit_key::LANDED_US.to_string(), next.landed_json());
        *landed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
        metadata
    };
    let written = view
        .replace_buckets(
            vec![rows],
            (from, to),
            &view_writer_app_id(job),
            metadata_for,
        )
        .await?;
    let coverage = landed
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cutoff = coverage.cutoff;
    if !fold.rejected.is_empty() {
        tracing::warn!(
            job = job.name(),
            rows = fold.rejected.len(),
            "backfill skipped raw rows the plan failed on or checks quarantined (the speed layer dead-letters the same records)"
        );
    }
    if !row_count_anomalies.is_empty() {
        tracing::warn!(
            job = job.name(),
            windows = row_count_anomalies.len(),
            "row-count anomalies in the backfilled range (the report's row_count_anomalies)"
        );
    }
    if let Some(&(gap_end, _)) = coverage.landed.first() {
        tracing::warn!(
            job = job.name(),
            cutoff = %cutoff.map_or_else(|| "none".to_string(), format_time),
            gap_until = %format_time(gap_end),
            "the batch view has a gap before the ranges landed beyond the cutoff: the cutoff moves over them once the gap is backfilled"
        );
    }
    Ok(BackfillReport {
        job: job.name().to_string(),
        view_table: view.location.clone(),
        from: format_time(from),
        to: format_time(to),
        rows_read: fold.rows_read,
        view_rows,
        rows_rejected: fold.rejected.len(),
        check_violations: fold.violations.clone(),
        row_count_anomalies,
        cutoff: cutoff.map(format_time),
        cutoff_us: cutoff,
        lake_complete_until: completeness.until_us().map(format_time),
        lake_complete_until_us: completeness.until_us(),
        clamped_from: clamped_from.map(format_time),
        incomplete,
        table_version: written.version(),
        seconds: started.elapsed().as_secs_f64(),
        rejected: fold.rejected,
    })
}

/// Runs the raw rows with event time in `range` through `fold`.
async fn fold_raw(
    job: &Job,
    raw: &TableLocation,
    fold: &mut Fold<'_>,
    range: (Option<i64>, Option<i64>),
    progress: &ProgressBar,
    columns: ScanColumns,
) -> Result<()> {
    let columns = (columns, fold.pipeline());
    scan_raw(job, raw, range, columns, |source, origin| {
        fold.add(source, origin)?;
        progress.inc(source.num_rows() as u64);
        Ok(())
    })
    .await
}

/// The partial states of every raw row, merged per (key, window, bucket): the whole view
/// recomputed with the batch path and written nowhere (`sluice verify`). Aggregate jobs only.
pub async fn recompute_partials(
    job: &Job,
    lake: &Lake,
    pipeline: &Pipeline,
) -> Result<RecordBatch> {
    let raw = TableLocation::new(lake.raw_table(job));
    let versions = crate::join_fold::load_versions(job, lake, pipeline, None).await?;
    let mut fold = Fold::new(pipeline).with_versions(versions);
    let hidden = ProgressBar::hidden();
    let columns = ScanColumns::ReadByPlan;
    fold_raw(job, &raw, &mut fold, (None, None), &hidden, columns).await?;
    fold.partials(job)
}

async fn resolve_range(
    job: &Job,
    raw: &TableLocation,
    request: &BackfillRequest,
    bucket: i64,
) -> Result<(i64, i64)> {
    let from = match request.from {
        Some(from) => from,
        None => earliest_event(job, raw).await?,
    };
    let to = match request.to {
        Some(to) => to,
        None => floor_to(chrono::Utc::now().timestamp_micros(), bucket),
    };
    let (from, to) = (floor_to(from, bucket), ceil_to(to, bucket));
    if from >= to {
        return Err(BatchError::Range {
            job: job.name().to_string(),
            from: format_time(from),
            to: format_time(to),
            why: "the range is empty: --to must be after --from".to_string(),
        });
    }
    Ok((from, to))
}

/// The range end a backfill may use: `to`, or the bucket floor of the raw table's
/// completeness when that is earlier (said loudly, and overridden by `allow_incomplete`).
/// Returns the end, the end asked for when it was clamped, and whether the range is
/// incomplete (allowed).
fn clamp_to_lake(
    job: &Job,
    (from, to): (i64, i64),
    completeness: Completeness,
    request: &BackfillRequest,
) -> Result<(i64, Option<i64>, bool)> {
    let clamped = completeness.clamp(to, job.bucket_micros());
    if clamped >= to {
        return Ok((to, None, false));
    }
    let until = completeness
        .until_us()
        .map_or_else(|| "-".to_string(), format_time);
    if request.allow_incomplete {
        tracing::warn!(
            job = job.name(),
            to = %format_time(to),
            lake_complete_until = %until,
            "--allow-incomplete: the range reaches past what the raw table holds completely; the cutoff may pass records still on their way to the lake, and the merged view misses them until a later backfill"
        );
        return Ok((to, None, true));
    }
    if clamped <= from {
        return Err(BatchError::Incomplete {
            job: job.name().to_string(),
            from: format_time(from),
            to: format_time(to),
            complete_until: until,
        });
    }
    tracing::info!(
        job = job.name(),
        requested = %format_time(to),
        to = %format_time(clamped),
        lake_complete_until = %until,
        "backfill range clamped to what the raw table holds completely"
    );
    Ok((clamped, Some(to), false))
}

async fn earliest_event(job: &Job, raw: &TableLocation) -> Result<i64> {
    first_event(job, raw)
        .await?
        .ok_or_else(|| BatchError::Range {
            job: job.name().to_string(),
            from: "(earliest event)".to_string(),
            to: "-".to_string(),
            why: format!(
                "the raw table {} has no rows; load or ingest events first",
                raw.location
            ),
        })
}

/// The raw table's earliest event time (µs), `None` when it has no rows. Asked as `MIN(…)`
/// so that DataFusion may answer it from the Delta log's file statistics instead of reading the
/// column.
async fn first_event(job: &Job, raw: &TableLocation) -> Result<Option<i64>> {
    if raw.open().await?.version().is_none() {
        return Ok(None);
    }
    let time = Expr::Column(Column::from_name(&job.spec.source.event_time));
    let ctx = raw.session("t").await?;
    let batches = ctx
        .table("t")
        .await
        .and_then(|frame| frame.aggregate(vec![], vec![min(time)]))
        .map_err(scan_error(job, raw))?
        .collect()
        .await
        .map_err(scan_error(job, raw))?;
    let mut earliest: Option<i64> = None;
    for batch in &batches {
        let times = arrow::compute::cast(batch.column(0), &TIMESTAMP_MICROS).map_err(|source| {
            sluice_core::Error::Arrow {
                during: "reading the raw table's earliest event time",
                source: Box::new(source),
            }
        })?;
        let times = times.as_primitive::<TimestampMicrosecondType>();
        if let Some(min) = arrow::compute::min(times) {
            earliest = Some(earliest.map_or(min, |e| e.min(min)));
        }
    }
    Ok(earliest)
}

/// Event times as the cast target of [`first_event`] (the zone does not change the value).
const TIMESTAMP_MICROS: DataType = DataType::Timestamp(TimeUnit::Microsecond, None);

fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} backfill: {human_pos} rows read ({per_sec}, {elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
