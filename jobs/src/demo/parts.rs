//! The speed layer, the raw-lake sink and the serving layer as the demo configures them, and
//! [`Running`], the handles of everything that runs until the demo stops. Kept out of `mod.rs`
//! so that the overall flow reads on one screen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use sluice_core::{Job, Lake, Pipeline};
use sluice_serving::{ServeConfig, ServedJob, Server};
use sluice_stream::{
    LakeSink, LakeSinkConfig, RunSummary, SinkSummary, StreamConfig, StreamDaemon, StreamMetrics,
};

use super::DemoArgs;
use super::backfill::{Backfills, spawn_backfill};
use super::generator::{Counters, spawn_generator};
use super::kafka::Kafka;
use super::workdir::STATE_DIR;

pub(super) fn stream_config(job: &Job, kafka: &Kafka, dir: &Path) -> StreamConfig {
    let state = dir.join(STATE_DIR).join(job.name());
    let mut config =
        StreamConfig::new(job.name(), kafka.bootstrap()).with_state_dir(job.name(), state);
    config.guarantee = kafka.guarantee();
    config.static_membership = false;
    config.idle_timeout = Duration::from_secs(5);
    config.batch_linger = Duration::from_millis(100);
    config
}

pub(super) async fn start_server(
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
pub(super) struct Running {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) counters: Arc<Counters>,
    pub(super) metrics: StreamMetrics,
    pub(super) backfills: Arc<Mutex<Backfills>>,
    pub(super) generator: JoinHandle<()>,
    pub(super) backfill: JoinHandle<()>,
    pub(super) sink: JoinHandle<sluice_stream::Result<SinkSummary>>,
    pub(super) daemon: tokio::task::JoinHandle<sluice_stream::Result<RunSummary>>,
}

pub(super) fn start_running(
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
    let sink = LakeSink::new(job.clone(), lake, config.clone(), commits, metrics.clone())?;
    let (runtime, stop) = (tokio::runtime::Handle::current(), stop.clone());
    std::thread::Builder::new()
        .name("demo-lake-sink".into())
        .spawn(move || sink.run(runtime, stop))
        .context("starting the raw-lake sink")
}
