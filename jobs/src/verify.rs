//! `sluice verify`: the parity proof. Recomputes a job's view from the raw table with the batch
//! path and compares it, row by row, with what the serving layer's merge gives.
//!
//! By default it compares one consistent cut ([`sluice_batch::cut`]): the raw rows each layer
//! had actually seen when the merged view was read (below the cutoff, the raw version each
//! backfill read; above it, the offsets the speed state reflects, less late records), so it
//! passes on a healthy live pipeline and any difference it reports is real. A job with stateful
//! stages (dedup, quarantine `unique`) is cut at each partition's release bound too: the rows
//! the speed layer still holds are held in the recompute as well. `--quiescent` compares the
//! whole raw table instead: right once the stream has stopped, the lake has caught up, a
//! backfill has covered late records and the watermark has passed every held row.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use clap::Args;
use serde::Serialize;
use serde_json::{Map, Value};
use sluice_core::rows::to_json_lines;
use sluice_core::time::format_time;
use sluice_core::{Job, Lake, Pipeline};
use sluice_serving::{MergedViewReader, ORIGIN_COLUMN, ServedJob};

use crate::stream_cmd::parse_duration_arg;
use crate::transforms;

/// Exit code when verify could not run (as opposed to finding differences, exit 1).
const EXIT_CANNOT_RUN: u8 = 2;
/// Examples of each kind of difference printed.
const EXAMPLES: usize = 10;
/// Floats match when within this relative distance: the layers add the same values in a
/// different order.
const RELATIVE_TOLERANCE: f64 = 1e-9;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub target: crate::target::KafkaJobArgs,
    /// Keep comparing this long while the layers differ (they may still be catching up).
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub settle: Duration,
    /// Compare with a recompute of the whole raw table instead of the cut each layer had seen
    /// (for a stopped pipeline whose late records a backfill has covered).
    #[arg(long)]
    pub quiescent: bool,
    #[arg(long, value_enum, default_value_t = crate::OutputFormat::Text)]
    pub output: crate::OutputFormat,
}

/// Rows present on one side only, or on both with different values.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Diff {
    pub rows_compared: usize,
    pub only_in_recompute: Vec<Value>,
    pub only_in_merged: Vec<Value>,
    /// `(recomputed, merged)` pairs.
    pub different: Vec<(Value, Value)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.only_in_recompute.is_empty()
            && self.only_in_merged.is_empty()
            && self.different.is_empty()
    }
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    match verify(&args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(EXIT_CANNOT_RUN))
        }
    }
}

async fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let job = Job::from_file(&args.target.job)?;
    let lake = Lake::resolve(args.target.lake.as_deref());
    let mode = if args.quiescent {
        Mode::Quiescent
    } else {
        Mode::Cut
    };
    let (diff, merged) = check(
        &job,
        &lake,
        (&args.target.brokers, &args.target.property),
        mode,
        args.settle,
    )
    .await?;
    report(&job, &diff, &merged, args.output);
    Ok(if diff.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Compares `job`'s merged view with a recompute from the raw table until they agree or
/// `settle` has passed; returns the last comparison (what `sluice switch` checks too).
pub async fn check(
    job: &Job,
    lake: &Lake,
    (brokers, overrides): (&str, &[(String, String)]),
    mode: Mode,
    settle: Duration,
) -> anyhow::Result<(Diff, sluice_serving::MergedView)> {
    let pipeline = Arc::new(Pipeline::compile(
        job,
        transforms::registry().for_job(job)?,
    )?);
    if let Some(join) = pipeline.join() {
        anyhow::bail!(
            "job `{}` joins `{}` FOR SYSTEM_TIME AS OF its event time, which the speed layer does not run yet: there is no speed-layer state to verify",
            job.name(),
            join.table_input()
        );
    }
    let served = ServedJob::new(job.clone(), pipeline.clone());
    let reader = MergedViewReader::start(served, brokers, lake, overrides)?;
    let context = Context {
        job,
        lake,
        pipeline: &pipeline,
        reader: &reader,
        kafka: (brokers, overrides),
        settle,
    };
    let verdict = compare_until_settled(&context, mode).await;
    reader.stop().await;
    verdict
}

/// What verify compares the merged view with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The raw rows each layer had seen when the merged view was read.
    Cut,
    /// The whole raw table.
    Quiescent,
}

/// Everything one comparison reads.
struct Context<'a> {
    job: &'a Job,
    lake: &'a Lake,
    pipeline: &'a Arc<Pipeline>,
    reader: &'a MergedViewReader,
    kafka: (&'a str, &'a [(String, String)]),
    settle: Duration,
}

/// Compares until the layers agree or `settle` has passed.
async fn compare_until_settled(
    context: &Context<'_>,
    mode: Mode,
) -> anyhow::Result<(Diff, sluice_serving::MergedView)> {
    let started = Instant::now();
    let job = context.job;
    loop {
        let (diff, merged) = match mode {
            Mode::Quiescent => compare_once(context).await?,
            Mode::Cut => compare_cut(context).await?,
        };
        if diff.is_empty() || started.elapsed() >= context.settle {
            return Ok((diff, merged));
        }
        tracing::info!(
            job = job.name(),
            differences =
                diff.only_in_recompute.len() + diff.only_in_merged.len() + diff.different.len(),
            "the layers differ; comparing again"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn aggregate<'a>(context: &Context<'a>) -> anyhow::Result<&'a sluice_core::AggregateStage> {
    context.pipeline.plan().aggregate().ok_or_else(|| {
        anyhow::anyhow!(
            "job `{}` is stateless: it has no merged view to verify",
            context.job.name()
        )
    })
}

async fn compare_once(context: &Context<'_>) -> anyhow::Result<(Diff, sluice_serving::MergedView)> {
    let stage = aggregate(context)?;
    let merged = context.reader.read(Duration::from_secs(120)).await?;
    let partials =
        sluice_batch::recompute_partials(context.job, context.lake, context.pipeline).await?;
    let recomputed = stage.finalize(&[partials])?;
    let diff = diff_rows(&recomputed, &merged.rows, stage.result_key_columns())?;
    Ok((diff, merged))
}

/// One comparison of a consistent cut: the merged view read between transactions, the raw
/// table once it holds every offset the speed side reflects, the late records excluded.
async fn compare_cut(context: &Context<'_>) -> anyhow::Result<(Diff, sluice_serving::MergedView)> {
    let (job, lake) = (context.job, context.lake);
    let stage = aggregate(context)?;
    let merged = context
        .reader
        .read_consistent(Duration::from_secs(120))
        .await?;
    let wait = context.settle.max(Duration::from_secs(10));
    if !crate::verify_cut::wait_for_lake(job, lake, &merged.speed_offsets, wait).await? {
        anyhow::bail!(
            "the raw table does not hold the offsets the speed view reflects ({:?}) after {wait:?}: is the raw-lake sink running (`sluice stream` or `sluice ingest`)? `--quiescent` compares the whole raw table instead",
            merged.speed_offsets
        );
    }
    let (brokers, overrides) = context.kafka;
    let late = crate::verify_cut::late_records(job, brokers, overrides)?;
    let cut = sluice_batch::Cut {
        cutoff_us: merged.cutoff_us,
        view_version: merged.batch_version,
        speed_offsets: merged.speed_offsets.clone(),
        release_bounds: merged.speed_release_bounds.clone(),
        late,
    };
    let partials = sluice_batch::recompute_cut(job, lake, context.pipeline, &cut).await?;
    let recomputed = stage.finalize(&[partials])?;
    let diff = diff_rows(&recomputed, &merged.rows, stage.result_key_columns())?;
    Ok((diff, merged))
}

/// Compares result rows by their result key (GROUP BY and window columns).
pub fn diff_rows(
    recomputed: &RecordBatch,
    merged: &RecordBatch,
    key: &[String],
) -> anyhow::Result<Diff> {
    let expected = keyed_rows(recomputed, key)?;
    let mut actual = keyed_rows(merged, key)?;
    let mut diff = Diff {
        rows_compared: expected.len().max(actual.len()),
        ..Diff::default()
    };
    for (k, row) in expected {
        match actual.remove(&k) {
            None => diff.only_in_recompute.push(Value::Object(row)),
            Some(other) if !same_row(&row, &other) => diff
                .different
                .push((Value::Object(row), Value::Object(other))),
            Some(_) => {}
        }
    }
    diff.only_in_merged = actual.into_values().map(Value::Object).collect();
    Ok(diff)
}

fn keyed_rows(
    rows: &RecordBatch,
    key: &[String],
) -> anyhow::Result<BTreeMap<String, Map<String, Value>>> {
    let text = to_json_lines(std::slice::from_ref(rows))?;
    let mut out = BTreeMap::new();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Value::Object(row) = serde_json::from_slice(line)? else {
            anyhow::bail!("a result row is not a JSON object");
        };
        let id: Vec<&Value> = key
            .iter()
            .map(|k| row.get(k).unwrap_or(&Value::Null))
            .collect();
        out.insert(serde_json::to_string(&id)?, row);
    }
    Ok(out)
}

/// Equal column by column; the merged side's origin column is not part of the row.
fn same_row(expected: &Map<String, Value>, merged: &Map<String, Value>) -> bool {
    let columns = merged
        .keys()
        .filter(|k| k.as_str() != ORIGIN_COLUMN)
        .count();
    columns == expected.len()
        && expected
            .iter()
            .all(|(k, v)| merged.get(k).is_some_and(|m| same_value(v, m)))
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x.fract() != 0.0 || y.fract() != 0.0 => {
                (x - y).abs() <= RELATIVE_TOLERANCE * x.abs().max(y.abs())
            }
            _ => x == y,
        },
        _ => a == b,
    }
}

fn report(
    job: &Job,
    diff: &Diff,
    merged: &sluice_serving::MergedView,
    output: crate::OutputFormat,
) {
    let cutoff = merged.cutoff_us.map_or("-".to_string(), format_time);
    if output == crate::OutputFormat::Json {
        let summary = serde_json::json!({
            "job": job.name(), "identical": diff.is_empty(), "cutoff": merged.cutoff_us.map(format_time),
            "rows_compared": diff.rows_compared, "origins": merged.counts,
            "only_in_recompute": diff.only_in_recompute, "only_in_merged": diff.only_in_merged,
            "different": diff.different,
        });
        println!("{summary}");
        return;
    }
    let counts = merged.counts;
    if diff.is_empty() {
        println!(
            "verify {}: OK, {} rows identical (cutoff {cutoff}; {} batch, {} speed, {} merged)",
            job.name(),
            diff.rows_compared,
            counts.batch,
            counts.speed,
            counts.merged
        );
        return;
    }
    println!(
        "verify {}: DIFFERENT (cutoff {cutoff}): {} rows only in the recompute, {} only in the merged view, {} differ",
        job.name(),
        diff.only_in_recompute.len(),
        diff.only_in_merged.len(),
        diff.different.len()
    );
    for row in diff.only_in_recompute.iter().take(EXAMPLES) {
        println!("  only in recompute: {row}");
    }
    for row in diff.only_in_merged.iter().take(EXAMPLES) {
        println!("  only in merged:    {row}");
    }
    for (expected, got) in diff.different.iter().take(EXAMPLES) {
        println!("  recomputed: {expected}\n  merged:     {got}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn rows(regions: &[&str], counts: &[i64], means: &[f64], origin: bool) -> RecordBatch {
        let mut fields = vec![
            Field::new("region", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("mean", DataType::Float64, true),
        ];
        let mut columns: Vec<arrow::array::ArrayRef> = vec![
            Arc::new(StringArray::from(regions.to_vec())),
            Arc::new(Int64Array::from(counts.to_vec())),
            Arc::new(Float64Array::from(means.to_vec())),
        ];
        if origin {
            fields.push(Field::new(ORIGIN_COLUMN, DataType::Utf8, false));
            columns.push(Arc::new(StringArray::from(vec!["merged"; regions.len()])));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    #[test]
    fn identical_rows_in_any_order_and_float_noise_match() {
        let a = rows(&["eu", "us"], &[2, 3], &[0.1 + 0.2, 1.5], false);
        let b = rows(&["us", "eu"], &[3, 2], &[1.5, 0.3], true);
        let diff = diff_rows(&a, &b, &["region".to_string()]).unwrap();
        assert!(diff.is_empty(), "{diff:?}");
        assert_eq!(diff.rows_compared, 2);
    }

    #[test]
    fn missing_extra_and_changed_rows_are_reported() {
        let a = rows(&["eu", "us"], &[2, 3], &[1.0, 1.5], false);
        let b = rows(&["eu", "apac"], &[5, 1], &[1.0, 2.0], true);
        let diff = diff_rows(&a, &b, &["region".to_string()]).unwrap();
        assert_eq!(diff.only_in_recompute.len(), 1);
        assert_eq!(diff.only_in_merged.len(), 1);
        assert_eq!(diff.different.len(), 1);
        assert_eq!(diff.different[0].0["n"], 2);
        assert_eq!(diff.different[0].1["n"], 5);
    }
}
