//! `sluice replay`: build a job's new view version from history while the current one serves.
//!
//! The job file names the version (`[view] version = N`); everything the version writes lives
//! under its own names ([`sluice_core::plan_version`]), so the serving version is never
//! touched. Two ways to the present:
//!
//! - `--from lake` (default, Lambda): a backfill recomputes the version's batch view from the
//!   raw table up to `lake_complete_until`; the rows the raw table holds past that cutoff seed
//!   the version's speed state, and its speed layer continues from the offsets after them
//!   ([`sluice_batch::seed`], [`sluice_stream::seed_speed_layer`]), so nothing is counted
//!   twice or missed at the seam.
//! - `--from earliest` (Kappa): no batch view; the version's speed layer reads the source
//!   topic from the start of its retention.
//!
//! Then the version's speed layer runs here (never the raw-lake sink: the master dataset
//! already has one) until its consumer lag is under `--caught-up`, and stops cleanly:
//! `sluice stream` on the same file carries the version on from there (same group, same state
//! directory).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;
use sluice_batch::{BackfillReport, BackfillRequest, BatchError};
use sluice_core::lake::TableLocation;
use sluice_core::time::format_time;
use sluice_core::topics::Topics;
use sluice_core::{Job, Lake, Pipeline};
use sluice_stream::{BatchCutoff, SeedOutcome, StreamConfig, StreamDaemon, StreamMetrics};

use crate::OutputFormat;
use crate::signals::StopSignals;
use crate::stream_cmd::parse_duration_arg;
use crate::transforms;

/// Exit code when the lake holds nothing complete yet (as `sluice backfill`).
const EXIT_INCOMPLETE: u8 = 4;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayFrom {
    /// History from the raw table, the tail from Kafka at the matching offsets.
    Lake,
    /// Everything from Kafka, from the start of the source topic's retention.
    Earliest,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sluice replay --job jobs/orders_v2.toml --brokers 127.0.0.1:9092\n  sluice replay --job jobs/orders_v2.toml --brokers 127.0.0.1:9092 --from earliest --output json\n\nExit 0 once the version has caught up, 4 when the raw table holds nothing complete yet, 1 on errors."
)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub target: crate::target::KafkaJobArgs,
    /// Where history comes from.
    #[arg(long, value_enum, default_value_t = ReplayFrom::Lake)]
    pub from: ReplayFrom,
    /// Caught up once the version's consumer lag is under this many records.
    #[arg(long, default_value_t = 1_000)]
    pub caught_up: i64,
    /// RocksDB state directory [default: ./state/<job version>, as `sluice stream`]
    #[arg(long, env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Records per micro-batch at most.
    #[arg(long, default_value_t = 100_000)]
    pub batch_size: usize,
    /// Give up when not caught up after this long.
    #[arg(long, default_value = "1h", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// What a replay did (`--output json`).
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub job: String,
    pub version: u32,
    pub fingerprint: String,
    pub from: ReplayFrom,
    /// The version's backfill (`--from lake`, unless the version had started before).
    pub backfill: Option<BackfillReport>,
    pub seed: Option<SeedOutcome>,
    pub group: String,
    pub records_in: u64,
    /// The version's consumer lag when replay stopped.
    pub lag: i64,
    pub caught_up: bool,
    pub seconds: f64,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let job = Job::from_file(&args.target.job)?;
    let job_toml = std::fs::read_to_string(&args.target.job)?;
    let transform = transforms::registry().for_job(&job)?;
    let pipeline = Arc::new(Pipeline::compile(&job, transform.clone())?);
    if pipeline.plan().aggregate().is_none() {
        anyhow::bail!(
            "job `{}` is stateless: it has no view state to replay; run `sluice stream` on the new version",
            job.name()
        );
    }
    if let Some(join) = pipeline.join() {
        anyhow::bail!(
            "job `{}` joins `{}` FOR SYSTEM_TIME AS OF its event time, which the speed layer does not run yet: backfill the new version with `sluice backfill` instead",
            job.name(),
            join.table_input()
        );
    }
    let lake = Lake::resolve(args.target.lake.as_deref());
    crate::versions_cmd::register(&job, &job_toml, &args.target.brokers, &args.target.property)?;
    let config = stream_config(&args, &job);
    let partitions = source_partitions(&job, &args)?;
    let started_before = version_started(&job, &config, partitions)?;
    let (backfill, seed) = match (args.from, started_before) {
        (_, true) => {
            eprintln!(
                "replay {}: version {} has started before (group `{}` has offsets); continuing it",
                job.name(),
                job.version(),
                config.group_id
            );
            (None, None)
        }
        (ReplayFrom::Earliest, false) => (None, None),
        (ReplayFrom::Lake, false) => {
            let limit = sluice_batch::replay_backfill_limit(&job, &lake, &pipeline).await?;
            let request = BackfillRequest {
                progress: args.output == OutputFormat::Text,
                to: limit,
                ..BackfillRequest::default()
            };
            let report = match sluice_batch::backfill(&job, &lake, transform, request).await {
                Ok(report) => report,
                // A deduplicating job's range ends the lateness before the lake's completeness:
                // with less than that landed, the range is empty, which is as incomplete.
                Err(error @ BatchError::Range { .. }) if limit.is_some() => {
                    return incomplete(&job, &error, args.output);
                }
                Err(error @ BatchError::Incomplete { .. }) => {
                    return incomplete(&job, &error, args.output);
                }
                Err(error) => return Err(error.into()),
            };
            let cutoff = report.cutoff_us.ok_or_else(|| {
                anyhow::anyhow!(
                    "the version's backfill set no cutoff (its view has a gap before {}); backfill the version from the raw table's first event, or replay --from earliest",
                    report.from
                )
            })?;
            let seeds =
                sluice_batch::speed_seeds(&job, &lake, &pipeline, partitions, cutoff).await?;
            let (seed_job, seed_pipeline, seed_config) =
                (job.clone(), pipeline.clone(), config.clone());
            let seed = tokio::task::spawn_blocking(move || {
                sluice_stream::seed_speed_layer(&seed_job, &seed_pipeline, &seed_config, &seeds)
            })
            .await??;
            (Some(report), Some(seed))
        }
    };
    let outcome =
        run_until_caught_up(&args, &job, &lake, pipeline, config.clone(), partitions).await?;
    let report = ReplayReport {
        job: job.name().to_string(),
        version: job.version(),
        fingerprint: job.plan_fingerprint(),
        from: args.from,
        backfill,
        seed,
        group: config.group_id,
        records_in: outcome.records_in,
        lag: outcome.lag,
        caught_up: outcome.caught_up,
        seconds: started.elapsed().as_secs_f64(),
    };
    print_report(&report, args.output)?;
    Ok(if report.caught_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Exit 4: the raw table holds too little completely for the version's backfill.
fn incomplete(job: &Job, error: &BatchError, output: OutputFormat) -> anyhow::Result<ExitCode> {
    if output == OutputFormat::Json {
        let body = serde_json::json!({
            "job": job.name(), "version": job.version(), "status": "incomplete",
            "message": error.to_string(),
        });
        println!("{body}");
    }
    eprintln!("error: {error}; replay --from earliest reads Kafka instead");
    Ok(ExitCode::from(EXIT_INCOMPLETE))
}

/// The speed layer's settings: the defaults `sluice stream` has for the same job file, so that
/// it continues the version (same group, same state directory, same transactional id).
fn stream_config(args: &ReplayArgs, job: &Job) -> StreamConfig {
    let name = job.versioned_name();
    let mut config = StreamConfig::new(&name, &args.target.brokers);
    if let Some(dir) = &args.state_dir {
        config = config.with_state_dir(&name, dir.clone());
    }
    config.batch_max_records = args.batch_size.max(1);
    config.client_overrides = args.target.property.clone();
    // A one-shot run leaves the group when it stops, so the `sluice stream` that carries the
    // version on takes the partitions at once.
    config.static_membership = false;
    config
}

fn lag_reader(config: &StreamConfig) -> anyhow::Result<BaseConsumer> {
    Ok(
        sluice_kafka::client_config(&config.brokers, &config.client_overrides, |client| {
            client.set("group.id", &config.group_id);
        })
        .create()?,
    )
}

/// Whether the version's group has committed offsets (it was seeded or streamed before).
fn version_started(job: &Job, config: &StreamConfig, partitions: i32) -> anyhow::Result<bool> {
    let reader = lag_reader(config)?;
    let topic = &job.spec.source.topic;
    let committed = sluice_kafka::committed(&reader, topic, partitions, Duration::from_secs(30))?;
    Ok(committed.iter().any(Option::is_some))
}

fn source_partitions(job: &Job, args: &ReplayArgs) -> anyhow::Result<i32> {
    let reader: BaseConsumer =
        sluice_kafka::client_config(&args.target.brokers, &args.target.property, |_| {})
            .create()?;
    let topic = &job.spec.source.topic;
    let partitions = sluice_kafka::partition_count(&reader, topic, Duration::from_secs(30))?;
    if partitions == 0 {
        anyhow::bail!("source topic `{topic}` does not exist (or has no partitions)");
    }
    Ok(partitions as i32)
}

struct Outcome {
    records_in: u64,
    lag: i64,
    caught_up: bool,
}

/// Runs the version's speed layer until its lag is under `--caught-up` (or `--timeout`, or a
/// signal), then stops it cleanly (it leaves its state checkpoint).
async fn run_until_caught_up(
    args: &ReplayArgs,
    job: &Job,
    lake: &Lake,
    pipeline: Arc<Pipeline>,
    config: StreamConfig,
    partitions: i32,
) -> anyhow::Result<Outcome> {
    let stop = StopSignals::new()?.into_flag();
    let metrics = StreamMetrics::new();
    let cutoff = BatchCutoff::new(Duration::from_secs(300));
    tokio::spawn(cutoff.clone().watch(
        job.name().to_string(),
        TableLocation::new(lake.view_table(job)),
        Duration::from_secs(30),
        stop.clone(),
    ));
    let reader = lag_reader(&config)?;
    let daemon =
        StreamDaemon::new(job.clone(), pipeline, config, metrics.clone()).with_batch_cutoff(cutoff);
    let daemon_stop = stop.clone();
    let handle = tokio::task::spawn_blocking(move || daemon.run(daemon_stop));
    let topic = Topics::for_job(job).source;
    let records_in = || -> u64 {
        (0..partitions)
            .map(|p| {
                metrics
                    .records_in
                    .with_label_values(&[job.name(), topic.as_str(), p.to_string().as_str()])
                    .get()
            })
            .sum()
    };
    let progress = progress_bar(args.output == OutputFormat::Text);
    let started = Instant::now();
    let (mut lag, mut caught_up) = (i64::MAX, false);
    let mut rate = Rate::default();
    while !stop.load(Ordering::SeqCst) && !handle.is_finished() {
        lag = sluice_kafka::total_lag(&sluice_kafka::group_lag(
            &reader,
            &topic,
            Duration::from_secs(10),
        )?);
        let per_second = rate.observe(records_in() as f64);
        progress.set_message(progress_line(lag, per_second));
        if lag < args.caught_up {
            caught_up = true;
            break;
        }
        if started.elapsed() >= args.timeout {
            eprintln!(
                "replay {}: not caught up after {:?} ({lag} records behind)",
                job.name(),
                args.timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    progress.finish_and_clear();
    handle.await??;
    Ok(Outcome {
        records_in: records_in(),
        lag,
        caught_up,
    })
}

/// Events per second over the last few samples.
#[derive(Default)]
struct Rate {
    last: Option<(Instant, f64)>,
    per_second: f64,
}

impl Rate {
    fn observe(&mut self, total: f64) -> f64 {
        let now = Instant::now();
        if let Some((at, before)) = self.last {
            let seconds = now.duration_since(at).as_secs_f64();
            if seconds > 0.0 {
                let sample = (total - before).max(0.0) / seconds;
                self.per_second = 0.7 * self.per_second + 0.3 * sample;
            }
        }
        self.last = Some((now, total));
        self.per_second
    }
}

fn progress_line(lag: i64, per_second: f64) -> String {
    let eta = if per_second >= 1.0 {
        format!("ETA {}s", (lag as f64 / per_second).ceil() as u64)
    } else {
        "ETA -".to_string()
    };
    format!("{lag} records behind, {per_second:.0} events/s, {eta}")
}

fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} replay: {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn print_report(report: &ReplayReport, output: OutputFormat) -> anyhow::Result<()> {
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let cutoff = report
        .backfill
        .as_ref()
        .and_then(|b| b.cutoff_us)
        .map_or("-".to_string(), format_time);
    let seeded = match report.seed {
        Some(SeedOutcome::Seeded { rows, .. }) => format!("{rows} state rows seeded"),
        Some(SeedOutcome::AlreadyStarted) | None => "no seed".to_string(),
    };
    println!(
        "replay {} version {} (plan {}): {} from {:?}, cutoff {cutoff}, {seeded}, {} records streamed, {} behind, in {:.1}s",
        report.job,
        report.version,
        report.fingerprint,
        if report.caught_up {
            "caught up"
        } else {
            "NOT caught up"
        },
        report.from,
        report.records_in,
        report.lag,
        report.seconds
    );
    Ok(())
}
