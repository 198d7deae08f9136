//! `sluice bench-stream`: the speed layer through a real broker, in this process.
//!
//! Throughput, two ways, each with exactly-once on and off (the raw-lake sink off):
//! - concurrent: N synthetic orders are produced as fast as possible while a `StreamDaemon`
//!   consumes them; events/s is N over the time until the daemon's committed offsets reach the
//!   end of every partition. Producer, daemon and broker share the machine's cores.
//! - backlog: the N orders are produced first (the producer's own rate is a row too), then the
//!   daemon drains them; timed from its first commit to its last.
//!
//! Latency: orders stamped with the wall clock are produced at a fixed rate; each `<job>.speed`
//! watermark record says the newest event its transaction holds, so read_committed receipt time
//! minus that event time is the produce → `<job>.speed` latency of that event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_core::fixture::{OrderGenerator, OrderShape};
use sluice_core::speed::{PartitionWatermark, WATERMARK_KEY};
use sluice_core::{Job, Pipeline};
use sluice_kafka::client_config;
use sluice_stream::{Guarantee, StreamConfig, StreamDaemon, StreamMetrics};

use crate::bench::{ORDERS_PER_MINUTE, synthetic_orders};

#[derive(Clone)]
pub struct StreamBenchArgs {
    pub brokers: String,
    pub events: usize,
    pub partitions: i32,
    pub rate: u64,
    pub seconds: u64,
    pub batch_size: usize,
    /// `-X` librdkafka properties for the daemon's clients.
    pub client_overrides: Vec<(String, String)>,
}

pub struct ThroughputRow {
    pub mode: &'static str,
    pub events: usize,
    pub seconds: f64,
}

pub struct LatencyRow {
    pub rate: u64,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub(crate) fn bench_job(tag: &str) -> anyhow::Result<Job> {
    let mut job = Job::from_toml(
        ORDERS_PER_MINUTE,
        std::path::Path::new("orders_per_minute.toml"),
    )?;
    let suffix = format!("{}_{:08x}", std::process::id(), rand::random::<u32>());
    job.spec.name = format!("bench_{tag}_{suffix}");
    job.spec.source.topic = format!("bench.{tag}.{suffix}");
    Ok(job)
}

/// Creates a bench's source topic (its name is new, so one that exists is a clash).
pub(crate) fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let created = sluice_kafka::create_topics(&client_config(brokers, &[], |_| {}), &[new], None)?;
    for (name, outcome) in created {
        anyhow::ensure!(
            outcome == sluice_kafka::Created::New,
            "creating {name}: it already exists"
        );
    }
    Ok(())
}

fn producer(brokers: &str) -> anyhow::Result<BaseProducer> {
    Ok(client_config(brokers, &[], |client| {
        client
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000");
    })
    .create()?)
}

fn send(producer: &BaseProducer, topic: &str, partition: i32, value: &[u8]) -> anyhow::Result<()> {
    let record = BaseRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .payload(value);
    Ok(sluice_kafka::send_waiting(producer, record)?)
}

pub(crate) fn start_daemon(
    args: &StreamBenchArgs,
    job: &Job,
    guarantee: Guarantee,
    state: &std::path::Path,
    metrics: StreamMetrics,
) -> anyhow::Result<(
    Arc<AtomicBool>,
    std::thread::JoinHandle<sluice_stream::Result<sluice_stream::RunSummary>>,
)> {
    let pipeline = Arc::new(Pipeline::compile(job, None)?);
    let mut config = StreamConfig::new(job.name(), &args.brokers)
        .with_state_dir(job.name(), state.join(job.name()));
    config.guarantee = guarantee;
    config.batch_max_records = args.batch_size;
    config.client_overrides = args.client_overrides.clone();
    let daemon = StreamDaemon::new(job.clone(), pipeline, config, metrics);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    Ok((stop, std::thread::spawn(move || daemon.run(flag))))
}

/// Sum over partitions of the group's committed offsets.
pub(crate) fn committed_total(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = client_config(brokers, &[], |client| {
        client.set("group.id", group);
    })
    .create()?;
    let committed = sluice_kafka::committed(&consumer, topic, partitions, Duration::from_secs(10))?;
    Ok(committed.into_iter().map(|o| o.unwrap_or(0)).sum())
}

/// How the events meet the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Produced while the daemon consumes: both compete for the cores.
    Concurrent,
    /// Produced before the daemon starts: the daemon alone, draining a backlog (timed from its
    /// first commit, so group join and restore are not counted).
    Backlog,
}

pub(crate) fn produce_all(
    args: &StreamBenchArgs,
    topic: &str,
    events: &[Vec<u8>],
) -> anyhow::Result<()> {
    let producer = producer(&args.brokers)?;
    for (i, event) in events.iter().enumerate() {
        send(&producer, topic, i as i32 % args.partitions, event)?;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

pub fn throughput(
    args: &StreamBenchArgs,
    guarantee: Guarantee,
    feed: Feed,
    state: &std::path::Path,
) -> anyhow::Result<Vec<ThroughputRow>> {
    let tag = match guarantee {
        Guarantee::ExactlyOnce => "eos",
        Guarantee::AtLeastOnce => "alo",
    };
    let job = bench_job(tag)?;
    let topic = job.spec.source.topic.clone();
    create_topic(&args.brokers, &topic, args.partitions)?;
    let events = synthetic_orders(args.events, 7);
    let group = sluice_core::topics::stream_group(job.name());
    let committed = || committed_total(&args.brokers, &group, &topic, args.partitions);
    let mut rows = Vec::new();
    let (stop, handle, started, counted) = match feed {
        Feed::Concurrent => {
            let (stop, handle) = start_daemon(args, &job, guarantee, state, StreamMetrics::new())?;
            let started = Instant::now();
            produce_all(args, &topic, &events)?;
            (stop, handle, started, args.events)
        }
        Feed::Backlog => {
            let producing = Instant::now();
            produce_all(args, &topic, &events)?;
            rows.push(ThroughputRow {
                mode: "producer alone",
                events: args.events,
                seconds: producing.elapsed().as_secs_f64(),
            });
            let (stop, handle) = start_daemon(args, &job, guarantee, state, StreamMetrics::new())?;
            let first = wait_for_commits(|| Ok(committed()? > 0))?;
            let at_first = committed()? as usize;
            (stop, handle, first, args.events - at_first)
        }
    };
    wait_for_commits(|| Ok(committed()? >= args.events as i64))?;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("daemon panicked"))??;
    rows.push(ThroughputRow {
        mode: match (feed, guarantee) {
            (Feed::Concurrent, Guarantee::ExactlyOnce) => "concurrent, exactly-once",
            (Feed::Concurrent, Guarantee::AtLeastOnce) => "concurrent, at-least-once",
            (Feed::Backlog, Guarantee::ExactlyOnce) => "backlog, exactly-once",
            (Feed::Backlog, Guarantee::AtLeastOnce) => "backlog, at-least-once",
        },
        events: counted,
        seconds,
    });
    Ok(rows)
}

/// Polls until `done`, or fails after 10 minutes; returns when it became true.
pub(crate) fn wait_for_commits(
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done()? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the daemon did not catch up within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Instant::now())
}

pub fn latency(args: &StreamBenchArgs, state: &std::path::Path) -> anyhow::Result<LatencyRow> {
    let job = bench_job("latency")?;
    let topic = job.spec.source.topic.clone();
    create_topic(&args.brokers, &topic, args.partitions)?;
    let (stop, handle) = start_daemon(
        args,
        &job,
        Guarantee::ExactlyOnce,
        state,
        StreamMetrics::new(),
    )?;
    // Let the group form and the speed topic appear before the clock starts.
    std::thread::sleep(Duration::from_secs(3));
    let speed = format!("{}.speed", job.name());
    let reader: BaseConsumer = client_config(&args.brokers, &[], |client| {
        client
            .set("group.id", format!("{}-latency", job.name()))
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10");
    })
    .create()?;
    reader.subscribe(&[&speed])?;
    let producing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (brokers, topic, producing) = (args.brokers.clone(), topic.clone(), producing.clone());
        let (rate, seconds, partitions) = (args.rate, args.seconds, args.partitions);
        std::thread::spawn(move || -> anyhow::Result<()> {
            let producer = producer(&brokers)?;
            let shape = OrderShape {
                regions: 1,
                completed_percent: 100,
                ..OrderShape::default()
            };
            let mut orders = OrderGenerator::new(7, shape);
            let started = Instant::now();
            let total = rate * seconds;
            for i in 0..total {
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let now = chrono::Utc::now().timestamp_millis();
                let value = orders.order_at(now).to_json();
                send(&producer, &topic, i as i32 % partitions, &value)?;
                producer.poll(Duration::ZERO);
            }
            producer.flush(Duration::from_secs(30))?;
            producing.store(false, Ordering::SeqCst);
            Ok(())
        })
    };
    let mut samples = Vec::new();
    let drain_until = |producing: &AtomicBool| producing.load(Ordering::SeqCst);
    let mut quiet_since = None;
    loop {
        if !drain_until(&producing) {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        let Some(Ok(message)) = reader.poll(Duration::from_millis(50)) else {
            continue;
        };
        if message.key() != Some(WATERMARK_KEY) {
            continue;
        }
        let Some(watermark) = message
            .payload()
            .and_then(|p| PartitionWatermark::decode(p).ok())
        else {
            continue;
        };
        let now_us = chrono::Utc::now().timestamp_micros();
        samples.push((now_us - watermark.max_event_us) as f64 / 1000.0);
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    stop.store(true, Ordering::SeqCst);
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("daemon panicked"))??;
    samples.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(LatencyRow {
        rate: args.rate,
        samples: samples.len(),
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        max_ms: samples.last().copied().unwrap_or(f64::NAN),
    })
}

/// Both throughput runs and the latency run, then the tables.
pub fn run(args: &StreamBenchArgs) -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for feed in [Feed::Concurrent, Feed::Backlog] {
        for guarantee in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
            rows.extend(throughput(args, guarantee, feed, state.path())?);
        }
    }
    let latency = latency(args, state.path())?;
    print_tables(&rows, &latency);
    Ok(())
}

pub fn print_tables(throughput: &[ThroughputRow], latency: &LatencyRow) {
    println!(
        "{:<27} {:>10} {:>10} {:>14}",
        "run", "events", "seconds", "events/s"
    );
    for row in throughput {
        println!(
            "{:<27} {:>10} {:>10.2} {:>14.0}",
            row.mode,
            row.events,
            row.seconds,
            row.events as f64 / row.seconds
        );
    }
    println!();
    println!(
        "produce -> <job>.speed latency at {} events/s (exactly-once, {} samples)",
        latency.rate, latency.samples
    );
    println!("{:>10} {:>10} {:>10}", "p50 ms", "p99 ms", "max ms");
    println!(
        "{:>10.1} {:>10.1} {:>10.1}",
        latency.p50_ms, latency.p99_ms, latency.max_ms
    );
}
