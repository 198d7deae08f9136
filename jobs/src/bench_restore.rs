//! `sluice bench-stream --restore`: how long a daemon takes to get its state back, against how
//! much history its `<job>.speed` changelog holds.
//!
//! For each history size, orders (one-minute windows of their own) are streamed through a daemon with small
//! micro-batches (so the changelog grows with the history), and the daemon is stopped cleanly.
//! Then it is started twice more on the same state directory: once as after a clean stop (the
//! checkpoint path: only the changelog after the checkpoint is replayed) and once with the
//! state directory wiped, as after a `kill -9` (the whole changelog is replayed). The times are
//! `sluice_restore_duration_seconds` summed over the partitions.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use sluice_core::fixture::{OrderGenerator, OrderShape, T0_MS};
use sluice_core::topics::Topics;
use sluice_stream::{Guarantee, StreamMetrics};

use crate::bench_stream::{
    StreamBenchArgs, bench_job, committed_total, create_topic, produce_all, start_daemon,
    wait_for_commits,
};

pub struct RestoreRow {
    pub events: usize,
    pub changelog_records: i64,
    pub checkpoint_seconds: f64,
    pub full_seconds: f64,
}

/// Completed orders of one region 15 s apart from [`T0_MS`] (a minute boundary), from the
/// shared generator: the bench job groups by one-minute window only, so every minute of event
/// time is a window of its own and the changelog grows with the history (a quarter of a record
/// per order).
fn history(events: usize) -> Vec<Vec<u8>> {
    let shape = OrderShape {
        start_ms: T0_MS,
        spacing_ms: 15_000,
        regions: 1,
        completed_percent: 100,
        disorder_ms: 0,
        ..OrderShape::default()
    };
    OrderGenerator::new(7, shape).records(events)
}

/// Records in a topic (the sum of its partitions' high watermarks).
fn topic_records(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = sluice_kafka::client_config(brokers, &[], |_| {}).create()?;
    let watermarks =
        sluice_kafka::watermarks(&consumer, topic, partitions, Duration::from_secs(10))?;
    Ok(watermarks.into_iter().map(|(_, high)| high).sum())
}

/// Starts the daemon on `state`, waits until every partition is restored, stops it; returns
/// the summed restore time.
fn timed_restore(
    args: &StreamBenchArgs,
    job: &sluice_core::Job,
    state: &std::path::Path,
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

pub fn restore(args: &StreamBenchArgs, events: usize) -> anyhow::Result<RestoreRow> {
    let state = tempfile::tempdir()?;
    let job = bench_job("restore")?;
    let topic = job.spec.source.topic.clone();
    create_topic(&args.brokers, &topic, args.partitions)?;
    produce_all(args, &topic, &history(events))?;
    let small_batches = StreamBenchArgs {
        batch_size: 1_000,
        ..args.clone()
    };
    let group = sluice_core::topics::stream_group(job.name());
    let (stop, handle) = start_daemon(
        &small_batches,
        &job,
        Guarantee::ExactlyOnce,
        state.path(),
        StreamMetrics::new(),
    )?;
    wait_for_commits(|| {
        Ok(committed_total(&args.brokers, &group, &topic, args.partitions)? >= events as i64)
    })?;
    stop.store(true, Ordering::SeqCst);
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("daemon panicked"))??;
    let speed = Topics::for_job(&job).speed;
    let changelog_records = topic_records(&args.brokers, &speed, args.partitions)?;
    let checkpoint_seconds = timed_restore(args, &job, state.path())?;
    std::fs::remove_dir_all(state.path().join(job.name()))?;
    let full_seconds = timed_restore(args, &job, state.path())?;
    Ok(RestoreRow {
        events,
        changelog_records,
        checkpoint_seconds,
        full_seconds,
    })
}

/// One row per history size: `events / 100`, `events / 10` and `events` orders.
pub fn run(args: &StreamBenchArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for events in [args.events / 100, args.events / 10, args.events] {
        rows.push(restore(args, events.max(1_000))?);
    }
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
    Ok(())
}
