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

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_core::speed::{PartitionWatermark, WATERMARK_KEY};

use crate::error::{Result, ServingError};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Reaching a partition's end is how the follower knows it caught up, not an error; librdkafka
/// also reports it to the client's error callback, which would log it as one.
struct FollowerContext;

impl ClientContext for FollowerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::warn!(error = %error, reason, "speed-view consumer");
        }
    }
}

impl ConsumerContext for FollowerContext {}

type FollowerConsumer = BaseConsumer<FollowerContext>;

/// What the follower has read so far.
#[derive(Debug, Default)]
pub(crate) struct SpeedView {
    pub rows: HashMap<(i32, Vec<u8>), Vec<u8>>,
    pub watermarks: BTreeMap<i32, PartitionWatermark>,
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
            }
            return;
        }
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

fn kafka(source: &SpeedSource, during: &str) -> impl FnOnce(KafkaError) -> ServingError {
    let (job, during) = (source.job.clone(), during.to_string());
    move |e| ServingError::Kafka {
        job,
        during,
        message: e.to_string(),
    }
}

fn client(source: &SpeedSource, group: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &source.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    for (key, value) in &source.overrides {
        client.set(key, value);
    }
    client
}

/// Reads `<job>.speed` from the beginning until stopped.
fn follow(source: &SpeedSource, view: &RwLock<SpeedView>, stop: &AtomicBool) -> Result<()> {
    let consumer: FollowerConsumer = client(source, &format!("{}-serving", source.stream_group))
        .create_with_context(FollowerContext)
        .map_err(kafka(source, "creating the speed-view consumer"))?;
    let lag_reader: FollowerConsumer = client(source, &source.stream_group)
        .create_with_context(FollowerContext)
        .map_err(kafka(source, "creating the lag reader"))?;
    let partitions = partition_count(&consumer, source, &source.speed_topic, stop)?;
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

fn partition_count(
    consumer: &FollowerConsumer,
    source: &SpeedSource,
    topic: &str,
    stop: &AtomicBool,
) -> Result<i32> {
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(kafka(source, &format!("reading the metadata of `{topic}`")))?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        if count > 0 || stop.load(Ordering::SeqCst) {
            return Ok(count);
        }
        tracing::info!(job = %source.job, topic, "waiting for the speed layer to create the topic");
        std::thread::sleep(Duration::from_secs(1));
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
    let positions = consumer.position().ok();
    let mut speed_lag = 0;
    let at_end = view.read().map(|v| v.at_end.clone()).unwrap_or_default();
    for partition in 0..partitions {
        if at_end.get(&partition).copied().unwrap_or(false) {
            continue;
        }
        let Ok((low, high)) =
            consumer.fetch_watermarks(&source.speed_topic, partition, REQUEST_TIMEOUT)
        else {
            continue;
        };
        let position = positions
            .as_ref()
            .and_then(|p| p.find_partition(&source.speed_topic, partition))
            .and_then(|p| match p.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(low);
        speed_lag += (high - position).max(0);
    }
    let source_lag = group_lag(lag_reader, &source.source_topic);
    if let Ok(mut view) = view.write() {
        view.speed_lag = speed_lag;
        view.source_lag = source_lag;
    }
}

/// Records of `topic` the group has not committed yet (`None` when it cannot be read).
fn group_lag(reader: &FollowerConsumer, topic: &str) -> Option<i64> {
    let metadata = reader.fetch_metadata(Some(topic), REQUEST_TIMEOUT).ok()?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)?
        .partitions()
        .len() as i32;
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = reader.committed_offsets(list, REQUEST_TIMEOUT).ok()?;
    let mut lag = 0;
    for partition in 0..partitions {
        let (low, high) = reader
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .ok()?;
        let done = match committed
            .find_partition(topic, partition)
            .map(|p| p.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        lag += (high - done).max(0);
    }
    Some(lag)
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
        };
        view.apply(0, WATERMARK_KEY, Some(&mark(50, None).encode()));
        view.apply(1, WATERMARK_KEY, Some(&mark(20, None).encode()));
        assert_eq!(view.rows.len(), 1);
        assert_eq!(view.watermark_us(), Some(20));
        view.apply(1, WATERMARK_KEY, Some(&mark(20, Some(40)).encode()));
        assert_eq!(view.watermark_us(), Some(40));
    }
}
