//! `sluice stream` and `sluice ingest`: the speed-layer daemon and the raw-lake sink.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sluice_core::duration::parse_duration;
use sluice_core::lake::TableLocation;
use sluice_core::{Job, Lake, Pipeline};
use sluice_stream::{
    BatchCutoff, CommitPolicy, Guarantee, LakeSink, LakeSinkConfig, MemoryBound, PostgresSink,
    SinkHealth, StreamConfig, StreamDaemon, StreamMetrics, sample_job_metrics, serve_metrics,
};

use crate::signals::StopSignals;
use crate::transforms;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum GuaranteeArg {
    ExactlyOnce,
    AtLeastOnce,
}

/// What the speed-layer daemon and the raw-lake sink both take.
#[derive(Args, Debug)]
pub struct SourceArgs {
    /// The job, the brokers and the lake (for the raw-lake sink).
    #[command(flatten)]
    pub target: crate::target::KafkaJobArgs,
    /// Consumer group [default: sluice-<job>; the raw-lake sink uses <group>.lake]
    #[arg(long, env = "SLUICE_GROUP")]
    pub group: Option<String>,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, env = "SLUICE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The raw-lake sink commits at least this often.
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    pub lake_commit_interval: Duration,
    /// ... or when this many MiB are buffered.
    #[arg(long, default_value_t = 64)]
    pub lake_commit_mb: usize,
    /// Leave the group when stopping instead of keeping a static membership (by default a
    /// restarted process takes its old partitions back at once; with this, a stopped one's
    /// partitions move to the others immediately).
    #[arg(long)]
    pub dynamic_membership: bool,
    /// Records larger than this many bytes go to the DLQ as `oversized`.
    #[arg(long, default_value_t = sluice_core::decode::DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
}

#[derive(Args, Debug)]
pub struct StreamArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[arg(long, value_enum, default_value_t = GuaranteeArg::ExactlyOnce, env = "SLUICE_GUARANTEE")]
    pub guarantee: GuaranteeArg,
    /// RocksDB state directory, a cache of `<job>.speed` [default: ./state/<job>]
    #[arg(long, env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Transactional id, also the static group member id's prefix; must differ between
    /// daemons of one job [default: from job, host, state dir]
    #[arg(long)]
    pub transactional_id: Option<String>,
    /// Records per micro-batch at most.
    #[arg(long, default_value_t = 100_000)]
    pub batch_size: usize,
    /// How long a micro-batch waits for more records after its first.
    #[arg(long, default_value = "100ms", value_parser = parse_duration_arg)]
    pub linger: Duration,
    /// A micro-batch closes once its records reach this many MiB.
    #[arg(long, default_value_t = 16)]
    pub batch_max_mb: usize,
    /// A partition silent this long stops holding the watermark back.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub idle_timeout: Duration,
    /// Do not run the raw-lake sink in this process (run `sluice ingest` instead).
    #[arg(long)]
    pub no_lake_sink: bool,
    /// Do not run the job's `[[sinks]]` (PostgreSQL …) in this process.
    #[arg(long)]
    pub no_sinks: bool,
    /// The `[[sinks]]` commit at least this often (each commit one transaction with its
    /// offsets) ...
    #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
    pub sink_commit_interval: Duration,
    /// ... or when this many MiB are buffered.
    #[arg(long, default_value_t = 16)]
    pub sink_commit_mb: usize,
    /// How often the daemon samples its counters into PostgreSQL's `ETLJobMetric` (when the
    /// job has a postgres sink).
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    pub metric_interval: Duration,
    /// How often to read the batch view's cutoff from the lake.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub batch_poll: Duration,
    /// Expired windows stay in `<job>.speed` until the batch view covers their bucket and
    /// its cutoff has been visible this long (so serving replicas have loaded it); then they
    /// are tombstoned and compaction removes them.
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
    pub tombstone_grace: Duration,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The static group member id's prefix; must differ between sinks of one job on one host
    /// [default: from job and host]
    #[arg(long)]
    pub member_id: Option<String>,
}

pub(crate) fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .ok_or_else(|| format!("expected a duration like 100ms, 5s, 1m or 1h, got `{text}`"))
}

pub fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got `{text}`"))
}

impl SourceArgs {
    /// The client settings both processes share; `member` is the static member id prefix
    /// (the daemon's transactional id).
    fn config(&self, job: &Job, member: Option<&str>, state_dir: Option<&PathBuf>) -> StreamConfig {
        // Plan-dependent names (group, state directory) are the job version's.
        let name = job.versioned_name();
        let mut config = StreamConfig::new(&name, &self.target.brokers);
        if let Some(dir) = state_dir {
            config = config.with_state_dir(&name, dir.clone());
        }
        if let Some(group) = &self.group {
            config.group_id = group.clone();
        }
        if let Some(member) = member {
            config.transactional_id = member.to_string();
        }
        config.max_record_bytes = self.max_record_bytes.max(1);
        config.static_membership = !self.dynamic_membership;
        config.client_overrides = self.target.property.clone();
        config
    }

    /// The raw-lake sink's client settings: its group (`<group>.lake`) is the job's, whatever
    /// the view version, because every version shares the one raw table and one sink lands it.
    fn sink_client(&self, job: &Job, config: &StreamConfig) -> StreamConfig {
        let mut sink = config.clone();
        if self.group.is_none() {
            sink.group_id = sluice_core::topics::stream_group(job.name());
        }
        sink
    }

    fn sink_config(&self) -> LakeSinkConfig {
        LakeSinkConfig {
            commit_interval: self.lake_commit_interval,
            commit_bytes: self.lake_commit_mb.max(1) << 20,
        }
    }
}

impl StreamArgs {
    fn config(&self, job: &Job) -> StreamConfig {
        let mut config = self.source.config(
            job,
            self.transactional_id.as_deref(),
            self.state_dir.as_ref(),
        );
        config.guarantee = match self.guarantee {
            GuaranteeArg::ExactlyOnce => Guarantee::ExactlyOnce,
            GuaranteeArg::AtLeastOnce => Guarantee::AtLeastOnce,
        };
        config.batch_max_records = self.batch_size.max(1);
        config.batch_linger = self.linger;
        config.batch_max_bytes = self.batch_max_mb.max(1) << 20;
        config.idle_timeout = self.idle_timeout;
        config
    }
}

fn start_metrics(addr: Option<SocketAddr>, metrics: &StreamMetrics, health: &SinkHealth) {
    if let Some(addr) = addr {
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_metrics(addr, metrics, health).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
}

pub async fn stream(args: StreamArgs) -> anyhow::Result<ExitCode> {
    let job = Job::from_file(&args.source.target.job)?;
    let transform = transforms::registry().for_job(&job)?;
    let pipeline = Arc::new(Pipeline::compile(&job, transform)?);
    let job_toml = std::fs::read_to_string(&args.source.target.job)?;
    let (brokers, overrides) = (
        args.source.target.brokers.clone(),
        args.source.target.property.clone(),
    );
    let registering = job.clone();
    // `<job>.control` names the versions a switch may return to; a broker that refuses it
    // (no topic creation) costs only that.
    tokio::task::spawn_blocking(move || {
        if let Err(e) =
            crate::versions_cmd::register_if_missing(&registering, &job_toml, &brokers, &overrides)
        {
            tracing::warn!(job = registering.name(), error = %e, "could not record the version in the control topic");
        }
    });
    let config = args.config(&job);
    let metrics = StreamMetrics::new();
    let health = SinkHealth::new();
    start_metrics(args.source.metrics_addr, &metrics, &health);
    let stop = StopSignals::new()?.into_flag();
    let sink_config = (!args.no_lake_sink).then(|| args.source.sink_config());
    let lake = Lake::resolve(args.source.target.lake.as_deref());
    let cutoff = BatchCutoff::new(args.tombstone_grace);
    tokio::spawn(cutoff.clone().watch(
        job.name().to_string(),
        TableLocation::new(lake.view_table(&job)),
        args.batch_poll.max(Duration::from_millis(100)),
        stop.clone(),
    ));
    let postgres = if args.no_sinks {
        Vec::new()
    } else {
        start_postgres_sinks(&args, &job, &pipeline, &config, &metrics, &health, &stop).await?
    };
    let mut bound = MemoryBound::of(&config, sink_config.as_ref()).with_sinks(
        &config,
        2 * postgres.len() as u64,
        args.sink_commit_mb.max(1) << 20,
    );
    if let Some(sink_config) = &sink_config {
        bound = bound.with_other_lake_sinks(&config, job.input_names().len() - 1, sink_config);
    }
    if pipeline.stateful().is_some() {
        bound = bound.with_operator_state(&config);
    }
    tracing::info!(job = job.name(), bound_mib = bound.total_mib(), terms = %bound, "memory bound (beyond the process's fixed footprint)");
    let lake_sinks = match sink_config {
        Some(sink_config) => {
            let client = args.source.sink_client(&job, &config);
            spawn_lake_sinks(&job, &lake, &client, &sink_config, &metrics, &health, &stop)?
        }
        None => Vec::new(),
    };
    let daemon = StreamDaemon::new(job, pipeline, config, metrics).with_batch_cutoff(cutoff);
    let daemon_stop = stop.clone();
    let summary = tokio::task::spawn_blocking(move || daemon.run(daemon_stop)).await?;
    stop.store(true, Ordering::SeqCst);
    join_lake_sinks(lake_sinks)?;
    for (name, thread) in postgres {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("the thread of sink `{name}` panicked"),
        }
    }
    let summary = summary?;
    eprintln!(
        "stopped: {} micro-batches, {} records, {} dead-lettered, {} late, {} aborted",
        summary.batches, summary.records_in, summary.dlq, summary.late, summary.aborted
    );
    Ok(ExitCode::SUCCESS)
}

/// A raw-lake sink's thread, named by its input.
type LakeSinkThread = (
    String,
    std::thread::JoinHandle<sluice_stream::Result<sluice_stream::SinkSummary>>,
);

/// One raw-lake sink per input of `job` (its primary stream, then the others), each on its own
/// thread; one failing stops them all and the process.
fn spawn_lake_sinks(
    job: &Job,
    lake: &Lake,
    client: &StreamConfig,
    sink_config: &LakeSinkConfig,
    metrics: &StreamMetrics,
    health: &SinkHealth,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Vec<LakeSinkThread>> {
    let mut threads = Vec::new();
    for input in job.inputs() {
        let table = input.table.clone();
        let sink = LakeSink::for_input(
            input,
            lake,
            client.clone(),
            sink_config.clone(),
            metrics.clone(),
        )?
        .with_health(health.clone());
        let (runtime, stop) = (tokio::runtime::Handle::current(), stop.clone());
        threads.push((
            table,
            std::thread::spawn(move || {
                let result = sink.run(runtime, stop.clone());
                if result.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                result
            }),
        ));
    }
    Ok(threads)
}

/// Waits for every raw-lake sink; the first failure is the answer.
fn join_lake_sinks(
    threads: Vec<LakeSinkThread>,
) -> anyhow::Result<Vec<sluice_stream::SinkSummary>> {
    let mut summaries = Vec::new();
    let mut failure = None;
    for (table, thread) in threads {
        match thread.join() {
            Ok(Ok(summary)) => summaries.push(summary),
            Ok(Err(e)) => {
                failure.get_or_insert_with(|| {
                    anyhow::Error::new(e).context(format!("the raw-lake sink of input `{table}`"))
                });
            }
            Err(_) => {
                failure.get_or_insert_with(|| {
                    anyhow::anyhow!("the raw-lake sink thread of input `{table}` panicked")
                });
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(summaries),
    }
}

/// A sink's two loops in one thread each, joined as one.
type SinkThread = std::thread::JoinHandle<sluice_stream::Result<()>>;

/// Prepares every `[[sinks]]` entry (a configuration error stops the start here), then runs
/// each one's results and dead-letter loops on their own threads and samples the process's
/// counters into the first one's `ETLJobMetric`.
async fn start_postgres_sinks(
    args: &StreamArgs,
    job: &Job,
    pipeline: &Arc<Pipeline>,
    config: &StreamConfig,
    metrics: &StreamMetrics,
    health: &SinkHealth,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Vec<(String, SinkThread)>> {
    let policy = CommitPolicy {
        interval: args.sink_commit_interval,
        bytes: args.sink_commit_mb.max(1) << 20,
    };
    let mut threads = Vec::new();
    for spec in &job.spec.sinks {
        let sink = Arc::new(PostgresSink::new(
            job,
            pipeline,
            spec,
            config.clone(),
            policy.clone(),
            metrics.clone(),
            health.clone(),
        )?);
        let runtime = tokio::runtime::Handle::current();
        let preparing = sink.clone();
        let prepared = runtime.clone();
        tokio::task::spawn_blocking(move || preparing.prepare(&prepared)).await??;
        if threads.is_empty() {
            tokio::spawn(sample_job_metrics(
                sink.target().clone(),
                job.name().to_string(),
                metrics.clone(),
                args.metric_interval,
                stop.clone(),
            ));
        }
        let (dlq_sink, dlq_runtime, dlq_stop) = (sink.clone(), runtime.clone(), stop.clone());
        let dead_letters = std::thread::spawn(move || {
            let result = dlq_sink.run_dead_letters(dlq_runtime, dlq_stop.clone());
            // One loop failing stops the other and the process.
            if result.is_err() {
                dlq_stop.store(true, Ordering::SeqCst);
            }
            result.map(|_| ())
        });
        let loop_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let results = sink.run(runtime, loop_stop.clone());
            // One loop failing stops the other and the process.
            if results.is_err() {
                loop_stop.store(true, Ordering::SeqCst);
            }
            let dead = match dead_letters.join() {
                Ok(dead) => dead,
                Err(_) => {
                    tracing::error!("the dead-letter loop panicked");
                    Ok(())
                }
            };
            if dead.is_err() {
                loop_stop.store(true, Ordering::SeqCst);
            }
            results.map(|_| ())?;
            dead
        });
        threads.push((spec.sink_name().to_string(), thread));
    }
    Ok(threads)
}

pub async fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let job = Job::from_file(&args.source.target.job)?;
    let config = args.source.config(&job, args.member_id.as_deref(), None);
    let config = args.source.sink_client(&job, &config);
    let metrics = StreamMetrics::new();
    let health = SinkHealth::new();
    start_metrics(args.source.metrics_addr, &metrics, &health);
    let stop = StopSignals::new()?.into_flag();
    let lake = Lake::resolve(args.source.target.lake.as_deref());
    let sinks = spawn_lake_sinks(
        &job,
        &lake,
        &config,
        &args.source.sink_config(),
        &metrics,
        &health,
        &stop,
    )?;
    let summaries = tokio::task::spawn_blocking(move || join_lake_sinks(sinks)).await??;
    let (commits, rows, skipped) = summaries.iter().fold((0, 0, 0), |(c, r, s), summary| {
        (
            c + summary.commits,
            r + summary.rows,
            s + summary.skipped_duplicates,
        )
    });
    eprintln!("stopped: {commits} lake commits, {rows} rows, {skipped} duplicates skipped");
    Ok(ExitCode::SUCCESS)
}
