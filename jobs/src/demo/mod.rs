//! `sluice demo`: the whole Lambda architecture in one process, nothing to install.
//!
//! One command starts, in this process:
//!
//! - Kafka: librdkafka's in-process mock cluster on its own thread (its handle is not `Send`),
//!   with the job's topics created up front (it does not implement the CreateTopics request);
//!   or, with `--brokers` / `SLUICE_BROKERS`, an existing Kafka;
//! - a generator of JSON order events at `--rate` per second, the shared orders of
//!   [`sluice_core::fixture`] stamped with the wall clock: about 2% malformed (they end in
//!   `<job>.dlq`) and about 2% stamped two minutes in the past, later than the watermark delay
//!   plus the allowed lateness (the speed layer diverts them to `<job>.late`, the raw-lake sink
//!   lands them anyway, and the next backfill counts them); and about 1% each with a negative
//!   amount and with status `refunded`, which fail the job's data-quality checks (the first are
//!   quarantined to `<job>.dlq` as `check_failed`, the second counted);
//! - the speed layer ([`StreamDaemon`](sluice_stream::StreamDaemon)), at-least-once on the mock
//!   cluster (it writes no transaction markers) and exactly-once on a real Kafka, and the
//!   raw-lake sink ([`LakeSink`](sluice_stream::LakeSink)) into `<dir>/lake`;
//! - a backfill every `--backfill-every`: the view's buckets are one minute, so the cutoff moves
//!   once a minute;
//! - the serving layer ([`Server`](sluice_serving::Server)) on `--bind`;
//! - with `--format avro`, the built-in schema registry ([`sluice_registry`]) on a free port,
//!   keeping schemas in the demo Kafka's `_schemas`; the job then reads Confluent-framed Avro
//!   and the generator evolves the schema from v1 to v2 while it runs.
//!
//! The first stdout line is `listening on http://ADDR`, as with `sluice serve`; then come
//! example requests and the `sluice verify` command line, then a live one-screen summary
//! (one line every 5 s with `--plain` or when stdout is not a terminal). SIGINT or SIGTERM stops
//! the parts in order and exits 0.
//!
//! `<dir>/lake` and `<dir>/state` are emptied on start unless the previous run used the same
//! external Kafka: the mock cluster starts empty every time, and the raw-lake sink resumes from
//! positions (Delta transaction versions = offsets) that must belong to the topic it reads.
//!
//! One module per part: `workdir` (the working directory), `kafka`, `generator` (the events),
//! `parts` (the speed layer, the sink and the serving layer), `backfill`, `screen` (the live
//! summary) and `stopping`; this file is the overall flow.

mod backfill;
mod generator;
mod kafka;
mod parts;
mod screen;
mod stopping;
mod workdir;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sluice_core::topics::Topics;
use sluice_core::{Job, Lake, Pipeline};

use sluice_registry::{RegistryConfig, RegistryServer};

use self::kafka::{REGISTRY_TOPIC, start_external, start_in_process};
use self::parts::{start_running, start_server, stream_config};
use self::screen::{Info, header, say, watch};
use self::stopping::shutdown;
use self::workdir::{JOB_FILE, LAKE_DIR, prepare_dir, write_avro_job};
use crate::signals::StopSignals;
use crate::stream_cmd::parse_duration_arg;
use crate::transforms;

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
    /// `avro`: orders in Confluent-framed Avro through an in-process schema registry, with the
    /// schema evolving from v1 to v2 (an added field) while the demo runs.
    #[arg(long, value_enum, default_value = "json")]
    pub format: DemoFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoFormat {
    Json,
    Avro,
}

/// Runs the demo until SIGINT or SIGTERM (or until the speed layer or the sink fails).
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let brokers = args.brokers.clone().filter(|b| !b.trim().is_empty());
    let dir = prepare_dir(&args.dir, brokers.as_deref())?;
    let job = Job::from_file(&dir.join(JOB_FILE))?;
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
    let registry = match args.format {
        DemoFormat::Json => None,
        DemoFormat::Avro => {
            let registry = start_registry(&kafka).await?;
            write_avro_job(&dir, &format!("http://{}", registry.local_addr()))?;
            Some(registry)
        }
    };
    let job = Job::from_file(&dir.join(JOB_FILE))?;
    let pipeline = Arc::new(Pipeline::compile(
        &job,
        transforms::registry().for_job(&job)?,
    )?);
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
    shutdown(server, running, registry, kafka, &info).await
}

/// The built-in schema registry, in this process, over the demo's Kafka.
async fn start_registry(kafka: &self::kafka::Kafka) -> anyhow::Result<RegistryServer> {
    let config = RegistryConfig {
        brokers: kafka.bootstrap().to_string(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        topic: REGISTRY_TOPIC.to_string(),
        kafka_overrides: Vec::new(),
        replication_factor: None,
    };
    RegistryServer::start(config)
        .await
        .context("starting the demo's schema registry")
}
