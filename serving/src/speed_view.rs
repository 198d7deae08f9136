//! The speed view: every committed record of `<job>.speed`, followed live.
//!
//! A thread reads the compacted `<job>.speed` topic from the beginning with `read_committed`,
//! so it only ever sees state the speed layer committed together with its source offsets. The
//! newest value per (partition, key) is the speed layer's partial state for that row; tombstones
//! remove rows; the reserved watermark key carries each partition's event-time progress.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::speed::{PLAN_KEY, PartitionWatermark, WATERMARK_KEY, is_reserved_key};
use sluice_kafka::TopicWait;

use crate::error::{Result, ServingError};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const LAG_EVERY: Duration = Duration::from_secs(1);

type FollowerContext = sluice_kafka::ReaderContext;

type FollowerConsumer = BaseConsumer<FollowerContext>;

/// What the follower has read so far.
#[derive(Debug, Default)]
pub(crate) struct SpeedView {
    pub rows: HashMap<(i32, Vec<u8>), Vec<u8>>,
    pub watermarks: BTreeMap<i32, PartitionWatermark>,
    /// The plan fingerprint each partition's plan record names (see
    /// [`sluice_core::plan_version`]); answers are refused when one is not the served plan's.
    pub plans: BTreeMap<i32, String>,
    /// Per partition, the source offset its newest watermark record says the state reflects.
    pub source_offsets: BTreeMap<i32, i64>,
    /// Partitions with state records applied after their newest watermark record: a
    /// transaction read part of the way, whose state matches no source offset yet.
    pub mid_transaction: std::collections::BTreeSet<i32>,
    /// Partitions whose end the follower has reached (and read nothing since).
    pub at_end: BTreeMap<i32, bool>,
    pub speed_lag: i64,
    pub source_lag: Option<i64>,
    /// Producer timestamp of the newest record applied (ms since the epoch).
    pub newest_record_ms: Option<i64>,
    /// Bumped on every change of `rows`, so the snapshot builder knows when to rebuild.
    pub version: u64,
    /// Whether every partition's end was reached at least once.
    pub caught_up: bool,
    pub last_error: Option<String>,
}

impl SpeedView {
    /// The job watermark the speed layer acted on: the highest emitted bound when windows are
    /// emitted, else the slowest partition's watermark.
    pub fn watermark_us(&self) -> Option<i64> {
        let emitted = self.watermarks.values().filter_map(|w| w.emitted_us).max();
        emitted.or_else(|| self.watermarks.values().map(|w| w.watermark_us).min())
    }

    fn apply(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) {
        if key == WATERMARK_KEY {
            if let Some(Ok(watermark)) = value.map(PartitionWatermark::decode) {
                self.watermarks.insert(partition, watermark);
                if let Some(next) = watermark.source_next_offset {
                    self.source_offsets.insert(partition, next);
                    self.mid_transaction.remove(&partition);
                }
            }
            return;
        }
        if key == PLAN_KEY {
            if let Some(plan) = value {
                self.plans
                    .insert(partition, String::from_utf8_lossy(plan).into_owned());
            }
            return;
        }
        if is_reserved_key(key) {
            return;
        }
        self.mid_transaction.insert(partition);
        match value {
            Some(value) => self.rows.insert((partition, key.to_vec()), value.to_vec()),
            None => self.rows.remove(&(partition, key.to_vec())),
        };
        self.version += 1;
    }
}

/// Where to read and whose lag to report.
#[derive(Debug, Clone)]
pub(crate) struct SpeedSource {
    pub job: String,
    pub brokers: String,
    pub speed_topic: String,
    pub source_topic: String,
    pub stream_group: String,
    pub overrides: Vec<(String, String)>,
}

/// The follower thread and the view it fills.
pub(crate) struct SpeedFollower {
    pub view: Arc<RwLock<SpeedView>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SpeedFollower {
    pub fn start(source: SpeedSource) -> Result<SpeedFollower> {
        let view = Arc::new(RwLock::new(SpeedView::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag) = (view.clone(), stop.clone());
        let job = source.job.clone();
        let thread = std::thread::Builder::new()
            .name(format!("speed-{job}"))
            .spawn(move || follow_until_stopped(&source, &shared, &flag))
            .map_err(|e| {
                ServingError::Internal(format!("job `{job}`: starting the speed-view thread: {e}"))
            })?;
        Ok(SpeedFollower {
            view,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// A follower with no thread and no Kafka: the test fills its view.
    #[cfg(test)]
    pub fn detached() -> SpeedFollower {
        SpeedFollower {
            view: Arc::new(RwLock::new(SpeedView::default())),
            stop: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
        }
    }

    /// Reads the view (`Err` only if a panic poisoned its lock).
    pub fn read<T>(&self, read: impl FnOnce(&SpeedView) -> T) -> Result<T> {
        let view = self
            .view
            .read()
            .map_err(|_| ServingError::Internal("speed view lock poisoned".to_string()))?;
        Ok(read(&view))
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for SpeedFollower {
    fn drop(&mut self) {
        self.stop();
    }
}

fn follow_until_stopped(source: &SpeedSource, view: &RwLock<SpeedView>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = follow(source, view, stop) {
            tracing::warn!(job = %source.job, error = %e, "following the speed view failed; retrying");
            if let Ok(mut view) = view.write() {
                view.last_error = Some(e.to_string());
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Puts a `sluice_kafka` error in the job's context.
fn in_job(source: &SpeedSource) -> impl FnOnce(sluice_kafka::Error) -> ServingError {
    let job = source.job.clone();
    move |e| ServingError::KafkaClient {
        job,
        source: Box::new(e),
    }
}

/// Wraps a failed rdkafka call: `.map_err(kafka(source, "assigning the speed topic"))`.
fn kafka(source: &SpeedSource, during: &str) -> impl FnOnce(KafkaError) -> ServingError {
    let (wrap, with_job) = (sluice_kafka::Error::during(during), in_job(source));
    move |e| with_job(wrap(e))
}

/// Reads `<job>.speed` from the beginning until stopped.
fn follow(source: &SpeedSource, view: &RwLock<SpeedView>, stop: &AtomicBool) -> Result<()> {
    let reader = |group: &str| -> KafkaResult<FollowerConsumer> {
        sluice_kafka::reader_config(&source.brokers, &source.overrides, group)
            .create_with_context(sluice_kafka::ReaderContext)
    };
    let consumer: FollowerConsumer = reader(&format!("{}-serving", source.stream_group))
        .map_err(kafka(source, "creating the speed-view consumer"))?;
    let lag_reader: FollowerConsumer =
        reader(&source.stream_group).map_err(kafka(source, "creating the lag reader"))?;
    let wait = TopicWait::until_stopped(stop, Duration::from_secs(1), REQUEST_TIMEOUT);
    let partitions = sluice_kafka::wait_for_topic(&consumer, &source.speed_topic, &wait, || {
        tracing::info!(
            job = %source.job,
            topic = source.speed_topic.as_str(),
            "waiting for the speed layer to create the topic"
        );
    })
    .map_err(in_job(source))? as i32;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(&source.speed_topic, partition, Offset::Beginning)
            .map_err(kafka(source, "assigning the speed topic"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(kafka(source, "assigning the speed topic"))?;
    if let Ok(mut view) = view.write() {
        *view = SpeedView::default();
        view.at_end = (0..partitions).map(|p| (p, false)).collect();
    }
    let mut lag_due = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        poll_once(&consumer, source, view)?;
        if lag_due.elapsed() >= LAG_EVERY {
            lag_due = Instant::now();
            update_lag(&consumer, &lag_reader, source, partitions, view);
        }
    }
    Ok(())
}

fn poll_once(
    consumer: &FollowerConsumer,
    source: &SpeedSource,
    view: &RwLock<SpeedView>,
) -> Result<()> {
    let Some(message) = consumer.poll(Duration::from_millis(100)) else {
        return Ok(());
    };
    let mut view = view
        .write()
        .map_err(|_| ServingError::Internal("speed view lock poisoned".to_string()))?;
    match message {
        Err(KafkaError::PartitionEOF(partition)) => {
            view.at_end.insert(partition, true);
            view.caught_up = view.caught_up || view.at_end.values().all(|&end| end);
            Ok(())
        }
        Err(e) => Err(kafka(source, "reading the speed topic")(e)),
        Ok(message) => {
            let partition = message.partition();
            view.at_end.insert(partition, false);
            if let Some(ms) = message.timestamp().to_millis() {
                view.newest_record_ms = Some(view.newest_record_ms.map_or(ms, |n| n.max(ms)));
            }
            view.apply(
                partition,
                message.key().unwrap_or_default(),
                message.payload(),
            );
            Ok(())
        }
    }
}

/// Serving's own lag on `<job>.speed`, and the speed daemon's group lag on the source topic.
fn update_lag(
    consumer: &FollowerConsumer,
    lag_reader: &FollowerConsumer,
    source: &SpeedSource,
    partitions: i32,
    view: &RwLock<SpeedView>,
) {
    let at_end = view.read().map(|v| v.at_end.clone()).unwrap_or_default();
    let reading = (0..partitions).filter(|p| !at_end.get(p).copied().unwrap_or(false));
    let speed_lag =
        sluice_kafka::position_lag(consumer, &source.speed_topic, reading, REQUEST_TIMEOUT);
    // The records of the source topic the group has not committed yet (`None` when that
    // cannot be read).
    let source_lag = sluice_kafka::group_lag(lag_reader, &source.source_topic, REQUEST_TIMEOUT)
        .ok()
        .map(|lags| sluice_kafka::total_lag(&lags));
    if let Ok(mut view) = view.write() {
        view.speed_lag = speed_lag;
        view.source_lag = source_lag;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_upsert_and_tombstones_remove_and_watermarks_are_kept_apart() {
        let mut view = SpeedView::default();
        view.apply(0, b"\x01a", Some(b"1"));
        view.apply(1, b"\x01a", Some(b"2"));
        view.apply(0, b"\x01a", Some(b"3"));
        assert_eq!(view.rows.len(), 2);
        assert_eq!(view.rows[&(0, b"\x01a".to_vec())], b"3");
        view.apply(1, b"\x01a", None);
        assert_eq!(view.rows.len(), 1);
        let mark = |w, e| PartitionWatermark {
            max_event_us: w,
            watermark_us: w,
            emitted_us: e,
            source_next_offset: None,
            purge_us: None,
        };
        view.apply(0, WATERMARK_KEY, Some(&mark(50, None).encode()));
        view.apply(1, WATERMARK_KEY, Some(&mark(20, None).encode()));
        assert_eq!(view.rows.len(), 1);
        assert_eq!(view.watermark_us(), Some(20));
        view.apply(1, WATERMARK_KEY, Some(&mark(20, Some(40)).encode()));
        assert_eq!(view.watermark_us(), Some(40));
    }
}
