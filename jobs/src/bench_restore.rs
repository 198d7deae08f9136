//! `sluice bench-stream --restore`: how long a daemon takes to get its state back, and how much
//! memory `sluice serve` needs, against how much history the `<job>.speed` changelog holds.
//! Both must be bounded by open state, not by history; these tables are the measurement.
//!
//! For each history size, orders (one-minute windows of their own) are streamed through a daemon
//! with small micro-batches (so the changelog grows with the history), then records that move
//! every partition's watermark past the history close all its windows, and the daemon is
//! stopped cleanly. Then it is started twice more on the same state directory: once as after a
//! clean stop (the checkpoint path: only the changelog after the checkpoint is replayed) and
//! once with the state directory wiped, as after a `kill -9` (the whole changelog is replayed).
//! The times are `sluice_restore_duration_seconds` summed over the partitions. Serving memory
//! is then measured on the same history ([`crate::bench_serve_memory`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::BaseConsumer;
use sluice_core::Job;
use sluice_core::fixture::{OrderGenerator, OrderShape, OrdersJob, REGION_PER_MINUTE_SQL, T0_MS};
use sluice_core::topics::Topics;
use sluice_stream::{Guarantee, StreamMetrics};

use crate::bench_serve_memory::{self, ServeMemoryRow};
use crate::bench_stream::{
    StreamBenchArgs, committed_total, create_topic, produce_all, start_daemon, wait_for_commits,
};

pub struct RestoreRow {
    pub events: usize,
    pub changelog_records: i64,
    pub checkpoint_seconds: f64,
    pub full_seconds: f64,
}

/// Event-time step between the history's orders: four to a one-minute window.
const SPACING_MS: i64 = 15_000;
/// How far past the last order the watermark pushers are: beyond the last window's end, the
/// job's 5 s watermark delay and its 30 s allowed lateness, so every window of the history
/// expires (the state the batch view may take over).
const PUSH_AFTER_MS: i64 = 10 * 60_000;

/// One history streamed through the daemon, and the files both measurements need.
pub(crate) struct History {
    dir: tempfile::TempDir,
    pub job: Job,
    /// The job as a file, for `sluice serve`.
    pub job_file: PathBuf,
    /// Every record produced, as JSON lines, for `lake load`.
    pub jsonl: PathBuf,
    /// Orders in the history (the watermark pushers not counted).
    pub events: usize,
    /// The newest order's event time (ms): the history ends with its minute.
    pub last_order_ms: i64,
}

impl History {
    /// Produces `events` orders and the watermark pushers and streams them through a daemon.
    pub fn stream(args: &StreamBenchArgs, events: usize) -> anyhow::Result<History> {
        let dir = tempfile::tempdir()?;
        let (job, job_file) = history_job(dir.path())?;
        let (records, last_order_ms) = history(events, args.partitions);
        let jsonl = dir.path().join("history.jsonl");
        std::fs::write(&jsonl, records.join(&b'\n'))
            .with_context(|| format!("writing {}", jsonl.display()))?;
        let history = History {
            dir,
            job,
            job_file,
            jsonl,
            events,
            last_order_ms,
        };
        let topic = history.job.spec.source.topic.clone();
        create_topic(&args.brokers, &topic, args.partitions)?;
        produce_all(args, &topic, &records)?;
        history.run_until_committed(args, records.len() as i64)?;
        Ok(history)
    }

    /// Runs a daemon with small micro-batches (so the changelog grows with the history) until
    /// its group has committed `produced` records, and stops it cleanly.
    fn run_until_committed(&self, args: &StreamBenchArgs, produced: i64) -> anyhow::Result<()> {
        let small_batches = StreamBenchArgs {
            batch_size: 1_000,
            ..args.clone()
        };
        let (topic, group) = (
            &self.job.spec.source.topic,
            sluice_core::topics::stream_group(self.job.name()),
        );
        let (stop, handle) = start_daemon(
            &small_batches,
            &self.job,
            Guarantee::ExactlyOnce,
            &self.state(),
            StreamMetrics::new(),
        )?;
        wait_for_commits(|| {
            Ok(committed_total(&args.brokers, &group, topic, args.partitions)? >= produced)
        })?;
        stop.store(true, Ordering::SeqCst);
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("daemon panicked"))??;
        Ok(())
    }

    /// Scratch files (logs) go here; it is removed with the history.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's state root (it keeps `<job>/` under it).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The history's own lake: empty until the serving bench loads the history into it.
    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }
}

/// The shared orders job (completed orders per region and one-minute window) under a fresh
/// name and topic, with one-minute buckets so that backfilled buckets cover every closed
/// window. Written to `dir` and parsed back from there, so the daemons of this process and the
/// `sluice serve` processes run the same plan.
fn history_job(dir: &Path) -> anyhow::Result<(Job, PathBuf)> {
    let orders = OrdersJob {
        bucket: "1m",
        ..OrdersJob::default()
    };
    fresh_job_file(dir, "restore", orders, REGION_PER_MINUTE_SQL)
}

/// `orders` running `sql` under a fresh name (`bench_<tag>_…`) and topic (`bench.<tag>.…`),
/// written to `dir` and parsed back from there.
pub(crate) fn fresh_job_file(
    dir: &Path,
    tag: &str,
    orders: OrdersJob<'_>,
    sql: &str,
) -> anyhow::Result<(Job, PathBuf)> {
    let suffix = format!("{}_{:08x}", std::process::id(), rand::random::<u32>());
    let name = format!("bench_{tag}_{suffix}");
    let topic = format!("bench.{tag}.{suffix}");
    let toml = OrdersJob {
        name: &name,
        topic: &topic,
        ..orders
    }
    .toml(sql);
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, toml).with_context(|| format!("writing {}", file.display()))?;
    let job = Job::from_file(&file)?;
    Ok((job, file))
}

/// Completed orders of one region 15 s apart from [`T0_MS`] (a minute boundary), from the
/// shared generator: every minute of event time is a window of its own, so the changelog grows
/// with the history. Then one watermark pusher per partition: `produce_all` sends record `i` to
/// partition `i % partitions`, so the last `partitions` records reach each partition once.
/// Returns the records and the newest order's event time (ms).
fn history(events: usize, partitions: i32) -> (Vec<Vec<u8>>, i64) {
    let shape = OrderShape {
        start_ms: T0_MS,
        spacing_ms: SPACING_MS,
        regions: 1,
        completed_percent: 100,
        disorder_ms: 0,
        ..OrderShape::default()
    };
    let mut orders = OrderGenerator::new(7, shape);
    let mut records = orders.records(events);
    let last_order_ms = T0_MS + events.saturating_sub(1) as i64 * SPACING_MS;
    for _ in 0..partitions {
        // Filtered out by the job (`status = 'completed'`): it opens no window of its own.
        let mut pusher = orders.order_at(last_order_ms + PUSH_AFTER_MS);
        pusher.status = "push";
        records.push(pusher.to_json());
    }
    (records, last_order_ms)
}

/// Records in a topic (the sum of its partitions' high watermarks).
pub(crate) fn topic_records(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = sluice_kafka::client_config(brokers, &[], |_| {}).create()?;
    let watermarks =
        sluice_kafka::watermarks(&consumer, topic, partitions, Duration::from_secs(10))?;
    Ok(watermarks.into_iter().map(|(_, high)| high).sum())
}

/// Starts the daemon on `state`, waits until every partition is restored, stops it; returns
/// the summed restore time.
pub(crate) fn timed_restore(
    args: &StreamBenchArgs,
    job: &Job,
    state: &Path,
) -> anyhow::Result<f64> {
    let metrics = StreamMetrics::new();
    let restores = metrics.restore_seconds.with_label_values(&[job.name()]);
    let (stop, handle) = start_daemon(args, job, Guarantee::ExactlyOnce, state, metrics.clone())?;
    wait_for_commits(|| Ok(restores.get_sample_count() >= args.partitions as u64))?;
    stop.store(true, Ordering::SeqCst);
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("daemon panicked"))??;
    Ok(restores.get_sample_sum())
}

/// Both restores of `history`: from the checkpoint of its clean stop, then in full. Leaves the
/// state as the second one's clean stop wrote it.
pub(crate) fn restore(args: &StreamBenchArgs, history: &History) -> anyhow::Result<RestoreRow> {
    let job = &history.job;
    let speed = Topics::for_job(job).speed;
    let changelog_records = topic_records(&args.brokers, &speed, args.partitions)?;
    let checkpoint_seconds = timed_restore(args, job, &history.state())?;
    std::fs::remove_dir_all(history.state().join(job.name()))?;
    let full_seconds = timed_restore(args, job, &history.state())?;
    Ok(RestoreRow {
        events: history.events,
        changelog_records,
        checkpoint_seconds,
        full_seconds,
    })
}

/// One row of each table per history size: `events / 100`, `events / 10` and `events` orders.
pub fn run(args: &StreamBenchArgs) -> anyhow::Result<()> {
    let mut restores = Vec::new();
    let mut memory: Vec<ServeMemoryRow> = Vec::new();
    for events in [args.events / 100, args.events / 10, args.events] {
        let history = History::stream(args, events.max(1_000))?;
        restores.push(restore(args, &history)?);
        memory.push(bench_serve_memory::measure(args, &history)?);
    }
    print_restore_table(&restores);
    println!();
    bench_serve_memory::print_table(&memory);
    Ok(())
}

fn print_restore_table(rows: &[RestoreRow]) {
    println!(
        "{:>10} {:>18} {:>22} {:>22}",
        "events", "changelog records", "restore, checkpoint s", "restore, full s"
    );
    for row in rows {
        println!(
            "{:>10} {:>18} {:>22.3} {:>22.3}",
            row.events, row.changelog_records, row.checkpoint_seconds, row.full_seconds
        );
    }
}
