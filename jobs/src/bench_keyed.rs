//! `sluice bench-stream --keyed`: the speed layer on a high-cardinality running aggregate.
//!
//! Seed-style orders spread over many customers (1M by default) feed `SELECT customer_id,
//! COUNT(*), SUM(amount) … GROUP BY customer_id` (no window: every changed key is emitted each
//! micro-batch). The orders are produced first; one exactly-once daemon then drains the backlog,
//! timed from its first commit to its last, with the process's peak resident memory sampled
//! while it runs. The daemon is stopped cleanly and started twice more on the same state: once
//! from the clean stop's checkpoint and once with the state wiped, as after a `kill -9` (the
//! whole `<job>.speed` changelog replayed). It is the shape whose per-key state access the
//! seed's few windows never exercise.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice_core::Job;
use sluice_core::fixture::{OrderGenerator, OrderShape, OrdersJob};
use sluice_core::topics::{Topics, stream_group};
use sluice_stream::{Guarantee, StreamMetrics};

use crate::bench_restore::{fresh_job_file, timed_restore, topic_records};
use crate::bench_stream::{
    StreamBenchArgs, committed_total, create_topic, produce_all, start_daemon, wait_for_commits,
};

/// The running aggregate per customer: every micro-batch changes (and emits) one row per
/// customer it saw.
pub const PER_CUSTOMER_SQL: &str = "SELECT customer_id, COUNT(*) AS orders, SUM(amount) AS amount FROM orders GROUP BY customer_id";

pub struct KeyedRow {
    pub events: usize,
    pub customers: u32,
    pub partitions: i32,
    pub drain_seconds: f64,
    pub peak_rss_bytes: u64,
    pub changelog_records: i64,
    pub checkpoint_seconds: f64,
    pub full_seconds: f64,
}

/// The job under a fresh name and topic, written to `dir` and parsed back from there.
fn keyed_job(dir: &Path) -> anyhow::Result<(Job, PathBuf)> {
    let orders = OrdersJob {
        key: r#"["customer_id"]"#,
        ..OrdersJob::default()
    };
    fresh_job_file(dir, "keyed", orders, PER_CUSTOMER_SQL)
}

/// Orders 3 ms apart over `customers` customers, from the shared generator.
fn keyed_orders(events: usize, customers: u32) -> Vec<Vec<u8>> {
    let shape = OrderShape {
        spacing_ms: 3,
        disorder_ms: 5_000,
        customers: customers.max(1),
        ..OrderShape::default()
    };
    OrderGenerator::new(11, shape).records(events)
}

/// This process's resident memory now (bytes), from `/proc/self/statm`; 0 where there is none.
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Samples [`resident_bytes`] every 50 ms until stopped; returns the largest seen.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sampler: std::thread::JoinHandle<()>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(resident_bytes()));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    peak.fetch_max(resident_bytes(), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        PeakRss {
            stop,
            peak,
            sampler,
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.sampler.join();
        self.peak.load(Ordering::SeqCst)
    }
}

/// The drain, then both restores, of `customers` customers' orders.
pub fn run(args: &StreamBenchArgs, customers: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (job, _file) = keyed_job(dir.path())?;
    let state = dir.path().join("state");
    let topic = job.spec.source.topic.clone();
    create_topic(&args.brokers, &topic, args.partitions)?;
    let events = keyed_orders(args.events, customers);
    produce_all(args, &topic, &events)?;
    drop(events);
    let group = stream_group(job.name());
    let committed = || committed_total(&args.brokers, &group, &topic, args.partitions);
    let rss = PeakRss::start();
    let (stop, handle) = start_daemon(
        args,
        &job,
        Guarantee::ExactlyOnce,
        &state,
        StreamMetrics::new(),
    )?;
    let first = wait_for_commits(|| Ok(committed()? > 0))?;
    let at_first = committed()? as usize;
    let done = wait_for_commits(|| Ok(committed()? >= args.events as i64))?;
    stop.store(true, Ordering::SeqCst);
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("daemon panicked"))??;
    let peak_rss_bytes = rss.finish();
    let drained = args.events - at_first;
    let speed = Topics::for_job(&job).speed;
    let changelog_records = topic_records(&args.brokers, &speed, args.partitions)?;
    let checkpoint_seconds = timed_restore(args, &job, &state)?;
    std::fs::remove_dir_all(state.join(job.name()))?;
    let full_seconds = timed_restore(args, &job, &state)?;
    let row = KeyedRow {
        events: drained,
        customers,
        partitions: args.partitions,
        drain_seconds: done.duration_since(first).as_secs_f64(),
        peak_rss_bytes,
        changelog_records,
        checkpoint_seconds,
        full_seconds,
    };
    print_table(&row);
    Ok(())
}

fn print_table(row: &KeyedRow) {
    println!(
        "keyed running aggregate ({}), exactly-once, draining a backlog",
        PER_CUSTOMER_SQL
    );
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>12} {:>14} {:>18} {:>22} {:>18}",
        "events",
        "customers",
        "partitions",
        "seconds",
        "events/s",
        "peak RSS MiB",
        "changelog records",
        "restore, checkpoint s",
        "restore, full s"
    );
    println!(
        "{:>10} {:>10} {:>10} {:>10.2} {:>12.0} {:>14.0} {:>18} {:>22.3} {:>18.3}",
        row.events,
        row.customers,
        row.partitions,
        row.drain_seconds,
        row.events as f64 / row.drain_seconds,
        row.peak_rss_bytes as f64 / (1 << 20) as f64,
        row.changelog_records,
        row.checkpoint_seconds,
        row.full_seconds
    );
}
