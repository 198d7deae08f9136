//! `sluice demo`: the whole Lambda architecture in one process, nothing to install.
//!
//! One command starts, in this process:
//!
//! - Kafka: librdkafka's in-process mock cluster on its own thread (its handle is not `Send`),
//!   with the job's topics created up front (it does not implement the CreateTopics request);
//!   or, with `--brokers` / `SLUICE_BROKERS`, an existing Kafka;
//! - a generator of JSON order events at `--rate` per second: about 2% malformed (they end in
//!   `<job>.dlq`) and about 2% stamped two minutes in the past, later than the watermark delay
//!   plus the allowed lateness (the speed layer diverts them to `<job>.late`, the raw-lake sink
//!   lands them anyway, and the next backfill counts them);
//! - the speed layer ([`StreamDaemon`]), at-least-once on the mock cluster (it writes no
//!   transaction markers) and exactly-once on a real Kafka, and the raw-lake sink ([`LakeSink`])
//!   into `<dir>/lake`;
//! - a backfill every `--backfill-every`: the view's buckets are one minute, so the cutoff moves
//!   once a minute;
//! - the serving layer ([`Server`]) on `--bind`.
//!
//! The first stdout line is `listening on http://ADDR`, as with `sluice serve`; then come
//! example requests and the `sluice verify` command line, then a live one-screen summary
//! (one line every 5 s with `--plain` or when stdout is not a terminal). SIGINT or SIGTERM stops
//! the parts in order and exits 0.
//!
//! `<dir>/lake` and `<dir>/state` are emptied on start unless the previous run used the same
//! external Kafka: the mock cluster starts empty every time, and the raw-lake sink resumes from
//! positions (Delta transaction versions = offsets) that must belong to the topic it reads.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use serde_json::{Value, json};
use sluice_batch::{BackfillReport, BackfillRequest, BatchError};
use sluice_core::topics::Topics;
use sluice_core::{Job, Lake, Pipeline};
use sluice_serving::{JobStatus, Origin, ServeConfig, ServedJob, Server, ViewQuery, ViewRow};
use sluice_stream::{
    Guarantee, LakeSink, LakeSinkConfig, RunSummary, SinkSummary, StreamConfig, StreamDaemon,
    StreamMetrics,
};

use crate::signals::StopSignals;
use crate::stream_cmd::parse_duration_arg;
use crate::transforms;

/// The demo's job, written to `<dir>/orders_demo.toml` on every start.
const JOB_TOML: &str = include_str!("../examples/demo_orders.toml");
const JOB_FILE: &str = "orders_demo.toml";
const LAKE_DIR: &str = "lake";
const STATE_DIR: &str = "state";
/// Names the Kafka the lake in `<dir>` belongs to.
const KAFKA_MARKER: &str = "kafka";
const IN_PROCESS: &str = "in-process";
/// Shares of malformed and of late events, in percent.
const MALFORMED_PERCENT: u32 = 2;
const LATE_PERCENT: u32 = 2;
/// Late events are this far in the past: well beyond watermark delay (2 s) + lateness (5 s).
const LATE_BY_MS: i64 = 120_000;
const REGIONS: [&str; 3] = ["eu", "us", "apac"];
const STATUSES: [&str; 10] = [
    "completed",
    "completed",
    "completed",
    "completed",
    "completed",
    "completed",
    "completed",
    "pending",
    "pending",
    "cancelled",
];
/// Merged rows shown on the live screen.
const SHOWN_ROWS: usize = 6;
/// The plain summary's period.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// How long admin and metadata requests to an external Kafka may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Working directory: the job file, the lake (`lake/`) and the speed layer's state (`state/`).
    #[arg(long, default_value = "./sluice-demo")]
    pub dir: PathBuf,
    /// Address of the serving layer's HTTP API (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Order events generated per second.
    #[arg(long, default_value_t = 300)]
    pub rate: u64,
    /// How often a backfill recomputes the batch view (the cutoff moves once per 1-minute bucket).
    #[arg(long, default_value = "15s", value_parser = parse_duration_arg)]
    pub backfill_every: Duration,
    /// Stop generating after this many events; everything else keeps running.
    #[arg(long)]
    pub events: Option<u64>,
    /// Partitions of the source topic.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..=64))]
    pub partitions: i32,
    /// No screen redraw: print one summary line every 5 s (the default when stdout is not a
    /// terminal).
    #[arg(long)]
    pub plain: bool,
    /// Use this Kafka instead of the in-process one (the speed layer runs exactly-once there).
    /// The demo's topics on it should be new: the lake is recreated when the Kafka changes.
    #[arg(long, env = "SLUICE_BROKERS")]
    pub brokers: Option<String>,
}

/// Runs the demo until SIGINT or SIGTERM (or until the speed layer or the sink fails).
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let brokers = args.brokers.clone().filter(|b| !b.trim().is_empty());
    let dir = prepare_dir(&args.dir, brokers.as_deref())?;
    let job = Job::from_file(&dir.join(JOB_FILE))?;
    let pipeline = Arc::new(Pipeline::compile(
        &job,
        transforms::registry().for_job(&job)?,
    )?);
    let lake_dir = dir.join(LAKE_DIR);
    let lake_root = lake_dir
        .to_str()
        .context("the demo directory's path is not UTF-8")?;
    let lake = Lake::resolve(Some(lake_root));
    let topics = Topics::for_job(&job);
    let kafka = match &brokers {
        Some(brokers) => start_external(brokers, &topics, args.partitions).await?,
        None => start_in_process(&topics, args.partitions).await?,
    };
    let config = stream_config(&job, &kafka, &dir);
    let server = start_server(&job, &pipeline, &config, &lake, args.bind).await?;
    let info = Info {
        job: job.name().to_string(),
        url: format!("http://{}", server.local_addr()),
        bootstrap: kafka.bootstrap().to_string(),
        kafka: kafka.label(),
        lake: lake_root.to_string(),
        job_file: dir.join(JOB_FILE).display().to_string(),
        started: Instant::now(),
    };
    // Before the parts start (a failure after would leave the speed layer's blocking task
    // running) and before the URL is printed (a SIGINT after it must stop the demo cleanly).
    let mut signals = StopSignals::new()?;
    let running = start_running(&job, pipeline, &lake, config, &args)?;
    say(&header(&info).join("\n"));
    let plain = args.plain || !std::io::stdout().is_terminal();
    watch(&mut signals, &server, &running, &info, plain).await;
    shutdown(server, running, kafka, &info).await
}

// ---------------------------------------------------------------------------------------------
// The demo directory

/// Makes `dir` a demo directory: the job file (from the embedded one) and an empty `lake/` and
/// `state/`, unless the last run used the same external Kafka. Refuses a non-empty directory
/// that is not a demo directory, so that it never deletes anything else.
fn prepare_dir(dir: &Path, brokers: Option<&str>) -> anyhow::Result<PathBuf> {
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let is_demo_dir = dir.join(JOB_FILE).exists();
    if !is_demo_dir
        && dir
            .read_dir()
            .is_ok_and(|mut entries| entries.next().is_some())
    {
        bail!(
            "{} is not empty and holds no {JOB_FILE}, so it is not a demo directory; pass another --dir",
            dir.display()
        );
    }
    let kafka = brokers.unwrap_or(IN_PROCESS);
    let marker = dir.join(KAFKA_MARKER);
    let same_kafka = brokers.is_some()
        && std::fs::read_to_string(&marker).is_ok_and(|previous| previous.trim() == kafka);
    if !same_kafka {
        for sub in [LAKE_DIR, STATE_DIR] {
            remove_dir_if_exists(&dir.join(sub))?;
        }
    }
    let lake = dir.join(LAKE_DIR);
    std::fs::create_dir_all(&lake).with_context(|| format!("creating {}", lake.display()))?;
    let job_file = dir.join(JOB_FILE);
    std::fs::write(&job_file, JOB_TOML)
        .with_context(|| format!("writing {}", job_file.display()))?;
    std::fs::write(&marker, kafka).with_context(|| format!("writing {}", marker.display()))?;
    Ok(dir)
}

fn remove_dir_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("emptying {}", path.display()))),
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka

/// Where the demo's Kafka is.
enum Kafka {
    /// librdkafka's mock cluster, owned by `thread` until `stop` is set.
    InProcess {
        bootstrap: String,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    },
    External {
        bootstrap: String,
    },
}

impl Kafka {
    fn bootstrap(&self) -> &str {
        match self {
            Kafka::InProcess { bootstrap, .. } | Kafka::External { bootstrap } => bootstrap,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Kafka::InProcess { .. } => IN_PROCESS,
            Kafka::External { .. } => "external",
        }
    }

    /// The mock cluster writes no transaction markers, so read_committed consumers would never
    /// see transactional records there.
    fn guarantee(&self) -> Guarantee {
        match self {
            Kafka::InProcess { .. } => Guarantee::AtLeastOnce,
            Kafka::External { .. } => Guarantee::ExactlyOnce,
        }
    }

    async fn stop(self) {
        if let Kafka::InProcess { stop, thread, .. } = self {
            stop.store(true, Ordering::SeqCst);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Starts the mock cluster on its own thread and waits for its bootstrap address.
async fn start_in_process(topics: &Topics, partitions: i32) -> anyhow::Result<Kafka> {
    let (sender, receiver) = tokio::sync::oneshot::channel::<anyhow::Result<String>>();
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, topics) = (stop.clone(), topics.clone());
    let thread = std::thread::Builder::new()
        .name("demo-kafka".into())
        .spawn(move || {
            let cluster = match mock_cluster(&topics, partitions) {
                Ok(cluster) => cluster,
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            };
            if sender.send(Ok(cluster.bootstrap_servers())).is_err() {
                return;
            }
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(cluster);
        })
        .context("starting the in-process Kafka thread")?;
    let bootstrap = receiver
        .await
        .context("the in-process Kafka thread ended before it started")??;
    Ok(Kafka::InProcess {
        bootstrap,
        stop,
        thread,
    })
}

/// A one-broker mock cluster with every topic of the job (`<job>.speed` needs as many
/// partitions as the source).
fn mock_cluster(
    topics: &Topics,
    partitions: i32,
) -> anyhow::Result<MockCluster<'static, DefaultProducerContext>> {
    let cluster = MockCluster::new(1).context("starting the in-process Kafka cluster")?;
    for topic in [
        &topics.source,
        &topics.speed,
        &topics.results,
        &topics.dlq,
        &topics.late,
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic `{topic}` on the in-process Kafka"))?;
    }
    Ok(cluster)
}

/// Creates the source topic on an existing Kafka (the speed layer creates its own topics) and
/// waits until its metadata shows it.
async fn start_external(brokers: &str, topics: &Topics, partitions: i32) -> anyhow::Result<Kafka> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .with_context(|| format!("connecting to Kafka at {brokers}"))?;
    let topic = NewTopic::new(&topics.source, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .with_context(|| format!("creating topic `{}` on {brokers}", topics.source))?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::warn!(
                topic = %name,
                "the demo's source topic already exists on {brokers}: records of an earlier run there are \
                 read again (use new topics for a clean run)"
            ),
            Err((name, code)) => bail!("creating topic `{name}` on {brokers}: {code}"),
        }
    }
    wait_for_partitions(brokers, &topics.source)?;
    Ok(Kafka::External {
        bootstrap: brokers.to_string(),
    })
}

/// Waits a little for a new topic's metadata to show its partitions.
fn wait_for_partitions(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .with_context(|| format!("connecting to Kafka at {brokers}"))?;
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .with_context(|| format!("reading the metadata of `{topic}`"))?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        if count > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("topic `{topic}` has no partitions on {brokers}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// The parts

fn stream_config(job: &Job, kafka: &Kafka, dir: &Path) -> StreamConfig {
    let state = dir.join(STATE_DIR).join(job.name());
    let mut config =
        StreamConfig::new(job.name(), kafka.bootstrap()).with_state_dir(job.name(), state);
    config.guarantee = kafka.guarantee();
    config.static_membership = false;
    config.idle_timeout = Duration::from_secs(5);
    config.batch_linger = Duration::from_millis(100);
    config
}

async fn start_server(
    job: &Job,
    pipeline: &Arc<Pipeline>,
    config: &StreamConfig,
    lake: &Lake,
    bind: SocketAddr,
) -> anyhow::Result<Server> {
    let mut served = ServedJob::new(job.clone(), pipeline.clone());
    served.stream_group = config.group_id.clone();
    let mut serve = ServeConfig::new(vec![served], config.brokers.clone(), lake.clone());
    serve.bind = bind;
    Server::start(serve)
        .await
        .with_context(|| format!("starting the serving layer on {bind}"))
}

/// The demo's moving parts; all stop when `stop` is set.
struct Running {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    metrics: StreamMetrics,
    backfills: Arc<Mutex<Backfills>>,
    generator: JoinHandle<()>,
    backfill: JoinHandle<()>,
    sink: JoinHandle<sluice_stream::Result<SinkSummary>>,
    daemon: tokio::task::JoinHandle<sluice_stream::Result<RunSummary>>,
}

fn start_running(
    job: &Job,
    pipeline: Arc<Pipeline>,
    lake: &Lake,
    config: StreamConfig,
    args: &DemoArgs,
) -> anyhow::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let metrics = StreamMetrics::new();
    let backfills = Arc::new(Mutex::new(Backfills::default()));
    let generator = spawn_generator(&config.brokers, job, args, &counters, &stop)?;
    let sink = spawn_sink(job, lake, &config, &metrics, &stop)?;
    let backfill = spawn_backfill(job, lake, args.backfill_every, &backfills, &stop)?;
    // The demo's serving layer reloads the batch view every second or two, in this process:
    // half a minute of grace is plenty before the speed layer tombstones what a backfill covers.
    let cutoff = sluice_stream::BatchCutoff::new(Duration::from_secs(30));
    tokio::spawn(cutoff.clone().watch(
        job.name().to_string(),
        sluice_core::lake::TableLocation::new(lake.view_table(job)),
        Duration::from_secs(5),
        stop.clone(),
    ));
    let daemon =
        StreamDaemon::new(job.clone(), pipeline, config, metrics.clone()).with_batch_cutoff(cutoff);
    let flag = stop.clone();
    let daemon = tokio::task::spawn_blocking(move || daemon.run(flag));
    Ok(Running {
        stop,
        counters,
        metrics,
        backfills,
        generator,
        backfill,
        sink,
        daemon,
    })
}

fn spawn_sink(
    job: &Job,
    lake: &Lake,
    config: &StreamConfig,
    metrics: &StreamMetrics,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<sluice_stream::Result<SinkSummary>>> {
    let commits = LakeSinkConfig {
        commit_interval: Duration::from_secs(1),
        commit_bytes: 64 << 20,
    };
    let sink = LakeSink::new(job.clone(), lake, config.clone(), commits, metrics.clone());
    let (runtime, stop) = (tokio::runtime::Handle::current(), stop.clone());
    std::thread::Builder::new()
        .name("demo-lake-sink".into())
        .spawn(move || sink.run(runtime, stop))
        .context("starting the raw-lake sink")
}

// ---------------------------------------------------------------------------------------------
// Backfills

/// What the backfill loop did, for the summary.
#[derive(Default)]
struct Backfills {
    runs: u64,
    /// Wall-clock time (UTC) and report of the last successful run.
    last: Option<(String, BackfillReport)>,
    /// The last run found nothing to do yet (no raw table, or no complete bucket).
    waiting: bool,
    error: Option<String>,
}

impl Backfills {
    fn describe(&self) -> String {
        if let Some(error) = &self.error {
            return format!("failed: {}", clip(error, 100));
        }
        match &self.last {
            Some((at, report)) => format!(
                "{at}, {} raw rows -> {} view rows in {:.1}s ({} runs)",
                grouped(report.rows_read as u64),
                grouped(report.view_rows as u64),
                report.seconds,
                self.runs
            ),
            None if self.waiting => {
                "waiting for a complete 1-minute bucket of raw data".to_string()
            }
            None => "not run yet".to_string(),
        }
    }
}

/// Runs a backfill every `every` on its own thread (Delta I/O on the runtime).
fn spawn_backfill(
    job: &Job,
    lake: &Lake,
    every: Duration,
    state: &Arc<Mutex<Backfills>>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let (job, lake, state, stop) = (job.clone(), lake.clone(), state.clone(), stop.clone());
    let runtime = tokio::runtime::Handle::current();
    let every = every.max(Duration::from_secs(1));
    std::thread::Builder::new()
        .name("demo-backfill".into())
        .spawn(move || {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let request = BackfillRequest {
                    from: None,
                    to: None,
                    progress: false,
                };
                let result = runtime.block_on(sluice_batch::backfill(&job, &lake, None, request));
                record_backfill(&state, result);
                next = Instant::now() + every;
            }
        })
        .context("starting the backfill loop")
}

fn record_backfill(state: &Mutex<Backfills>, result: sluice_batch::Result<BackfillReport>) {
    let Ok(mut state) = state.lock() else {
        return;
    };
    match result {
        Ok(report) => {
            state.runs += 1;
            state.error = None;
            state.last = Some((clock(), report));
        }
        Err(e) if nothing_to_backfill(&e) => state.waiting = true,
        Err(e) => {
            tracing::warn!(error = %e, "demo backfill failed; trying again next round");
            state.error = Some(e.to_string());
        }
    }
}

/// Before the sink's first commit there is no raw table; while every raw row is in the current
/// bucket the range is empty.
fn nothing_to_backfill(error: &BatchError) -> bool {
    matches!(
        error,
        BatchError::Range { .. } | BatchError::Core(sluice_core::Error::Table { .. })
    )
}

// ---------------------------------------------------------------------------------------------
// The order generator

/// What the generator produced so far.
#[derive(Default)]
struct Counters {
    produced: AtomicU64,
    malformed: AtomicU64,
    late: AtomicU64,
    /// Set when the generator has stopped (`--events` reached, or an error).
    done: AtomicBool,
}

impl Counters {
    fn count(&self, kind: Kind) {
        self.produced.fetch_add(1, Ordering::Relaxed);
        match kind {
            Kind::Malformed => self.malformed.fetch_add(1, Ordering::Relaxed),
            Kind::Late => self.late.fetch_add(1, Ordering::Relaxed),
            Kind::OnTime => 0,
        };
    }

    /// (produced, malformed, late).
    fn get(&self) -> (u64, u64, u64) {
        (
            self.produced.load(Ordering::Relaxed),
            self.malformed.load(Ordering::Relaxed),
            self.late.load(Ordering::Relaxed),
        )
    }
}

#[derive(Clone, Copy)]
enum Kind {
    OnTime,
    Late,
    Malformed,
}

struct Event {
    key: String,
    value: Vec<u8>,
    kind: Kind,
}

fn spawn_generator(
    brokers: &str,
    job: &Job,
    args: &DemoArgs,
    counters: &Arc<Counters>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "100000")
        .create()
        .context("creating the order generator's producer")?;
    let topic = job.spec.source.topic.clone();
    let (rate, limit) = (args.rate.max(1), args.events);
    let (counters, stop) = (counters.clone(), stop.clone());
    std::thread::Builder::new()
        .name("demo-generator".into())
        .spawn(move || {
            if let Err(e) = generate(&producer, &topic, rate, limit, &counters, &stop) {
                tracing::error!(error = %format!("{e:#}"), "the order generator stopped");
            }
            if let Err(e) = producer.flush(Duration::from_secs(10)) {
                tracing::warn!(error = %e, "the order generator could not flush its last events");
            }
            counters.done.store(true, Ordering::SeqCst);
        })
        .context("starting the order generator")
}

/// Produces `rate` events per second (in 10 ms steps) until `stop` or `limit`.
fn generate(
    producer: &BaseProducer,
    topic: &str,
    rate: u64,
    limit: Option<u64>,
    counters: &Counters,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let seed = chrono::Utc::now().timestamp_micros() as u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let within = |seq: u64| limit.is_none_or(|limit| seq < limit);
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) && within(seq) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while seq < due && within(seq) {
            let event = next_event(seq, &mut rng);
            send(producer, topic, &event)?;
            counters.count(event.kind);
            seq += 1;
        }
        producer.poll(Duration::from_millis(10));
    }
    Ok(())
}

/// Sends one event, waiting while the producer's queue is full.
fn send(producer: &BaseProducer, topic: &str, event: &Event) -> anyhow::Result<()> {
    let record = BaseRecord::<str, [u8]>::to(topic)
        .key(event.key.as_str())
        .payload(event.value.as_slice());
    sluice_stream::send_waiting(producer, record).with_context(|| format!("producing to `{topic}`"))
}

/// One order as JSON. Amounts are multiples of 0.25, exact in binary floating point, so sums
/// do not depend on the order the layers add them in.
fn next_event(seq: u64, rng: &mut StdRng) -> Event {
    let now = chrono::Utc::now().timestamp_millis();
    let key = format!("o-{seq:09}");
    let roll = rng.random_range(0..100u32);
    if roll < MALFORMED_PERCENT {
        let value = malformed(seq, &key, now);
        return Event {
            key,
            value,
            kind: Kind::Malformed,
        };
    }
    let late = roll < MALFORMED_PERCENT + LATE_PERCENT;
    let event_time = if late { now - LATE_BY_MS } else { now };
    let customer = format!("c-{:04}", rng.random_range(0..5_000u32));
    let region = REGIONS[rng.random_range(0..REGIONS.len())];
    let amount = f64::from(rng.random_range(4..40_000u32)) / 4.0;
    let status = STATUSES[rng.random_range(0..STATUSES.len())];
    let value = json!({
        "order_id": key.as_str(),
        "customer_id": customer,
        "region": region,
        "amount": amount,
        "status": status,
        "event_time": event_time,
    });
    Event {
        key,
        value: value.to_string().into_bytes(),
        kind: if late { Kind::Late } else { Kind::OnTime },
    }
}

/// A record the decoder rejects: broken JSON, a wrong type, or no event time.
fn malformed(seq: u64, key: &str, now: i64) -> Vec<u8> {
    let value = match seq % 3 {
        0 => return br#"{"order_id": 17, "amount": "lots""#.to_vec(),
        1 => {
            json!({"order_id": key, "region": "eu", "amount": "lots", "status": "completed", "event_time": now})
        }
        _ => json!({"order_id": key, "region": "us", "amount": 9.5, "status": "completed"}),
    };
    value.to_string().into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The live summary

/// What the screen shows that does not change.
struct Info {
    job: String,
    url: String,
    bootstrap: String,
    kafka: &'static str,
    lake: String,
    job_file: String,
    started: Instant,
}

/// Shows the summary every second until a signal arrives or the speed layer or sink stops.
async fn watch(
    signals: &mut StopSignals,
    server: &Server,
    running: &Running,
    info: &Info,
    plain: bool,
) {
    let mut screen = Screen::new(plain);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = signals.recv() => return,
            _ = tick.tick() => {}
        }
        if running.daemon.is_finished() || running.sink.is_finished() {
            tracing::error!("the speed layer or the raw-lake sink stopped; stopping the demo");
            return;
        }
        screen.update(server, running, info);
    }
}

/// Counters read from the speed layer's metrics.
#[derive(Default)]
struct SpeedCounts {
    consumed: u64,
    dlq: u64,
    late: u64,
    lake_rows: u64,
}

fn speed_counts(metrics: &StreamMetrics, info: &Info) -> SpeedCounts {
    let total = |name| metrics.job_total(name, &info.job);
    SpeedCounts {
        consumed: total("sluice_records_in_total"),
        dlq: total("sluice_dlq_records_total"),
        late: total("sluice_late_records_total"),
        lake_rows: total("sluice_lake_rows_total"),
    }
}

/// One second's view of everything.
struct Frame {
    elapsed: u64,
    generated_per_s: f64,
    consumed_per_s: f64,
    produced: u64,
    malformed: u64,
    late_sent: u64,
    generator_done: bool,
    speed: SpeedCounts,
    status: Option<JobStatus>,
    rows: Vec<ViewRow>,
    backfill: String,
}

struct Screen {
    plain: bool,
    /// (when, produced, consumed) at the previous frame.
    previous: Option<(Instant, u64, u64)>,
    next_line: Instant,
}

impl Screen {
    fn new(plain: bool) -> Screen {
        Screen {
            plain,
            previous: None,
            next_line: Instant::now() + PLAIN_EVERY,
        }
    }

    fn update(&mut self, server: &Server, running: &Running, info: &Info) {
        let frame = self.frame(server, running, info);
        if !self.plain {
            say(&redraw(info, &frame));
        } else if Instant::now() >= self.next_line {
            self.next_line = Instant::now() + PLAIN_EVERY;
            say(&plain_line(&frame));
        }
    }

    fn frame(&mut self, server: &Server, running: &Running, info: &Info) -> Frame {
        let now = Instant::now();
        let (produced, malformed, late_sent) = running.counters.get();
        let speed = speed_counts(&running.metrics, info);
        let (generated_per_s, consumed_per_s) = match self.previous {
            Some((at, p, c)) => {
                let seconds = now.duration_since(at).as_secs_f64().max(1e-3);
                (
                    produced.saturating_sub(p) as f64 / seconds,
                    speed.consumed.saturating_sub(c) as f64 / seconds,
                )
            }
            None => (0.0, 0.0),
        };
        self.previous = Some((now, produced, speed.consumed));
        Frame {
            elapsed: info.started.elapsed().as_secs(),
            generated_per_s,
            consumed_per_s,
            produced,
            malformed,
            late_sent,
            generator_done: running.counters.done.load(Ordering::SeqCst),
            speed,
            status: server.status().into_iter().find(|s| s.job == info.job),
            rows: recent_rows(server, &info.job),
            backfill: running
                .backfills
                .lock()
                .map(|b| b.describe())
                .unwrap_or_default(),
        }
    }
}

/// The newest windows of the merged view (of the last minute), newest first.
fn recent_rows(server: &Server, job: &str) -> Vec<ViewRow> {
    let since_ms = chrono::Utc::now().timestamp_millis() - 60_000;
    let query = ViewQuery {
        from: Some(since_ms.to_string()),
        limit: Some(1_000),
        ..ViewQuery::default()
    };
    let Ok(answer) = server.view(job, &query) else {
        return Vec::new();
    };
    let mut rows = answer.rows;
    let start = |r: &ViewRow| r.row["window_start"].to_string();
    let region = |r: &ViewRow| r.row["region"].to_string();
    rows.sort_by(|a, b| {
        start(b)
            .cmp(&start(a))
            .then_with(|| region(a).cmp(&region(b)))
    });
    rows.truncate(SHOWN_ROWS);
    rows
}

fn header(info: &Info) -> Vec<String> {
    let (url, job) = (&info.url, &info.job);
    vec![
        format!("listening on {url}"),
        format!(
            "sluice demo: job {job}, Kafka ({}) at {}, lake {}",
            info.kafka, info.bootstrap, info.lake
        ),
        format!("  curl '{url}/v1/jobs/{job}/view?key=eu'"),
        format!(
            "  curl -XPOST {url}/v1/sql -d '{{\"sql\":\"SELECT region, SUM(revenue) FROM {job} GROUP BY region\"}}'"
        ),
        format!(
            "  sluice verify --job {} --brokers {} --lake {}",
            info.job_file, info.bootstrap, info.lake
        ),
        "Ctrl-C stops the demo. Times are UTC.".to_string(),
    ]
}

/// The whole screen: clear, header, counters, the newest merged rows.
fn redraw(info: &Info, frame: &Frame) -> String {
    let mut lines = header(info);
    lines.push(String::new());
    lines.extend(status_lines(frame));
    lines.push(String::new());
    lines.extend(row_lines(&frame.rows));
    format!("\x1b[H\x1b[2J{}", lines.join("\n"))
}

fn status_lines(f: &Frame) -> Vec<String> {
    let s = f.status.as_ref();
    let done = if f.generator_done {
        "  (generator done)"
    } else {
        ""
    };
    vec![
        format!(
            "events   {:>7.0}/s generated   {} total, {} malformed, {} late{done}",
            f.generated_per_s,
            grouped(f.produced),
            grouped(f.malformed),
            grouped(f.late_sent)
        ),
        format!(
            "speed    {:>7.0}/s consumed    watermark {}   source lag {}   DLQ {}   late topic {}",
            f.consumed_per_s,
            time_of(s.and_then(|s| s.watermark.as_deref())),
            number(s.and_then(|s| s.source_lag_records)),
            grouped(f.speed.dlq),
            grouped(f.speed.late)
        ),
        format!(
            "batch    cutoff {}   lake rows {}   last backfill: {}",
            time_of(s.and_then(|s| s.cutoff.as_deref())),
            grouped(f.speed.lake_rows),
            f.backfill
        ),
        format!(
            "serving  {}   speed lag {}   freshness {} ms   rows: {} batch, {} speed, {} merged",
            if s.is_some_and(|s| s.ready) {
                "ready"
            } else {
                "starting"
            },
            number(s.map(|s| s.speed_lag_records)),
            number(s.and_then(|s| s.freshness_ms)),
            s.map_or(0, |s| s.rows.batch),
            s.map_or(0, |s| s.rows.speed),
            s.map_or(0, |s| s.rows.merged)
        ),
    ]
}

fn row_lines(rows: &[ViewRow]) -> Vec<String> {
    let line = |cells: [&str; 6]| {
        format!(
            "  {:<6} {:<17} {:>7} {:>11} {:>9}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        )
    };
    let mut lines = vec![line([
        "region", "window", "orders", "revenue", "avg", "origin",
    ])];
    if rows.is_empty() {
        lines.push(
            "  (no rows yet: the merged view fills once the speed layer commits)".to_string(),
        );
    }
    for r in rows {
        let cell = |column: &str| text(&r.row[column]);
        let window = format!("{}-{}", cell("window_start"), cell("window_end"));
        let (region, orders) = (cell("region"), cell("orders"));
        let (revenue, avg) = (cell("revenue"), cell("avg_amount"));
        lines.push(line([
            region.as_str(),
            window.as_str(),
            orders.as_str(),
            revenue.as_str(),
            avg.as_str(),
            origin_name(r.origin),
        ]));
    }
    lines
}

fn plain_line(f: &Frame) -> String {
    let s = f.status.as_ref();
    format!(
        "[{:>5}s] {:.0} events/s, {} events ({} malformed, {} late){} | speed: watermark {}, \
         source lag {}, DLQ {}, late {} | serving: {} ({} batch, {} speed, {} merged rows), \
         speed lag {}, freshness {} ms | cutoff {}, backfill: {}",
        f.elapsed,
        f.generated_per_s,
        f.produced,
        f.malformed,
        f.late_sent,
        if f.generator_done {
            ", generator done"
        } else {
            ""
        },
        time_of(s.and_then(|s| s.watermark.as_deref())),
        number(s.and_then(|s| s.source_lag_records)),
        f.speed.dlq,
        f.speed.late,
        if s.is_some_and(|s| s.ready) {
            "ready"
        } else {
            "starting"
        },
        s.map_or(0, |s| s.rows.batch),
        s.map_or(0, |s| s.rows.speed),
        s.map_or(0, |s| s.rows.merged),
        number(s.map(|s| s.speed_lag_records)),
        number(s.and_then(|s| s.freshness_ms)),
        time_of(s.and_then(|s| s.cutoff.as_deref())),
        f.backfill
    )
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Batch => "batch",
        Origin::Speed => "speed",
        Origin::Merged => "merged",
    }
}

/// A JSON cell for the table: times as `HH:MM:SS`, floats with two decimals.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => short_time(s).to_string(),
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// `HH:MM:SS` of an RFC 3339 time; other text unchanged.
fn short_time(text: &str) -> &str {
    match text.split_once('T') {
        Some((date, time)) if date.len() == 10 => time.get(..8).unwrap_or(time),
        _ => text,
    }
}

fn time_of(value: Option<&str>) -> &str {
    value.map_or("-", short_time)
}

fn number(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

fn clock() -> String {
    chrono::Utc::now().format("%H:%M:%S").to_string()
}

/// Writes a line to stdout, ignoring a closed stdout (the demo keeps running).
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------------
// Stopping

/// Stops every part in order (generator, serving, speed layer, sink, backfills, Kafka) and
/// prints a final line. An error of the speed layer or the sink is returned after that.
async fn shutdown(
    server: Server,
    running: Running,
    kafka: Kafka,
    info: &Info,
) -> anyhow::Result<ExitCode> {
    say("stopping: generator, serving layer, speed layer, raw-lake sink, backfills, Kafka");
    running.stop.store(true, Ordering::SeqCst);
    server.shutdown().await;
    let daemon = match running.daemon.await {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(e) => Err(anyhow!("the speed layer panicked: {e}")),
    };
    let sink = join(running.sink, "the raw-lake sink")
        .await
        .and_then(|result| result.map_err(anyhow::Error::from));
    let _ = join(running.backfill, "the backfill loop").await;
    let _ = join(running.generator, "the order generator").await;
    kafka.stop().await;
    let runs = running.backfills.lock().map(|b| b.runs).unwrap_or_default();
    say(&final_line(
        info,
        &running.counters,
        daemon.as_ref().ok(),
        sink.as_ref().ok(),
        runs,
    ));
    daemon.context("the speed layer failed")?;
    sink.context("the raw-lake sink failed")?;
    Ok(ExitCode::SUCCESS)
}

async fn join<T: Send + 'static>(thread: JoinHandle<T>, what: &str) -> anyhow::Result<T> {
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(anyhow!("{what} panicked")),
    }
}

fn final_line(
    info: &Info,
    counters: &Counters,
    daemon: Option<&RunSummary>,
    sink: Option<&SinkSummary>,
    backfills: u64,
) -> String {
    let (produced, malformed, late) = counters.get();
    let mut line = format!(
        "demo stopped after {}s: {produced} events generated ({malformed} malformed, {late} late)",
        info.started.elapsed().as_secs()
    );
    if let Some(d) = daemon {
        line.push_str(&format!(
            "; speed layer: {} micro-batches, {} records, {} dead-lettered, {} late",
            d.batches, d.records_in, d.dlq, d.late
        ));
    }
    if let Some(s) = sink {
        line.push_str(&format!(
            "; raw-lake sink: {} commits, {} rows",
            s.commits, s.rows
        ));
    }
    line.push_str(&format!("; {backfills} backfills"));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_job_parses_and_compiles() {
        let job = Job::from_toml(JOB_TOML, Path::new(JOB_FILE)).expect("demo job parses");
        assert_eq!(job.name(), "orders_demo");
        Pipeline::compile(&job, None).expect("demo job compiles");
    }

    #[test]
    fn events_are_valid_json_except_the_malformed_ones() {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut late, mut malformed) = (0, 0);
        for seq in 0..5_000 {
            let event = next_event(seq, &mut rng);
            let parsed = serde_json::from_slice::<Value>(&event.value);
            match event.kind {
                Kind::OnTime | Kind::Late => {
                    let value = parsed.expect("valid JSON");
                    assert!(value["amount"].as_f64().is_some(), "{value}");
                    late += usize::from(matches!(event.kind, Kind::Late));
                }
                Kind::Malformed => malformed += 1,
            }
        }
        assert!((25..=200).contains(&late), "late {late}");
        assert!((25..=200).contains(&malformed), "malformed {malformed}");
    }

    #[test]
    fn cells_are_short() {
        assert_eq!(short_time("2024-05-01T10:00:10Z"), "10:00:10");
        assert_eq!(short_time("2024-05-01T10:00:10.123+00:00"), "10:00:10");
        assert_eq!(short_time("eu"), "eu");
        assert_eq!(text(&json!(12.5)), "12.50");
        assert_eq!(text(&json!(12)), "12");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(12), "12");
        assert_eq!(clip("abcdef", 3), "abc...");
    }

    #[test]
    fn a_foreign_directory_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("precious.txt"), "x").expect("write");
        let error = prepare_dir(dir.path(), None).expect_err("refused");
        assert!(
            error.to_string().contains("not a demo directory"),
            "{error}"
        );
        assert!(dir.path().join("precious.txt").exists());
    }

    #[test]
    fn a_demo_directory_is_reset_for_the_in_process_kafka() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = prepare_dir(&dir.path().join("demo"), None).expect("prepared");
        std::fs::write(root.join(LAKE_DIR).join("old"), "x").expect("write");
        let root = prepare_dir(&root, None).expect("prepared again");
        assert!(root.join(JOB_FILE).exists());
        assert!(!root.join(LAKE_DIR).join("old").exists());
    }
}
