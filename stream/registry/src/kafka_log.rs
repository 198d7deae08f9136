//! The registry's log on Kafka: the schemas topic (one partition, so one total order; created
//! compacted if missing, replicated 3 times or on every broker of a smaller cluster: losing it
//! loses every id), the producer writes go through (acks=all, idempotent, each write
//! waiting for its own delivery report to learn its offset), and the follower, a thread that
//! reads the topic from the beginning and applies every record to the replica's state, for as
//! long as the replica runs. A replica serves only once its follower has read the log to the
//! end it had at start, so it never answers from a partial history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_kafka::{ReaderContext, TopicWait, client_config, reader_config};

use crate::api_error::ApiError;
use crate::error::{RegistryError, Result};
use crate::replica::{Log, Shared};
use crate::server::RegistryConfig;

/// How long a metadata, watermark or admin request may take; an unreachable broker is
/// reported after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long creating the topic, and its metadata showing it, may take.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading the log to its end at start may take.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the broker may take to acknowledge a write (librdkafka's `message.timeout.ms`);
/// a write to an unreachable Kafka fails after this, as a 50001.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The delivery report of one write: its offset, or why it failed.
type Delivery = std::result::Result<i64, String>;

/// Routes each delivery report to the write waiting for it.
struct DeliveryContext;

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "schema registry producer");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Sender<Delivery>>;

    fn delivery(&self, result: &DeliveryResult<'_>, sender: Self::DeliveryOpaque) {
        let delivery = match result {
            Ok(message) => Ok(message.offset()),
            Err((error, _)) => Err(error.to_string()),
        };
        // The writer may have given up waiting; then nobody needs the report.
        let _ = sender.send(delivery);
    }
}

/// Writes to the schemas topic.
pub(crate) struct KafkaLog {
    producer: BaseProducer<DeliveryContext>,
    topic: String,
}

impl Log for KafkaLog {
    fn append(&self, key: &[u8], value: Option<&[u8]>) -> std::result::Result<i64, ApiError> {
        let (sender, receiver) = channel();
        let mut record = BaseRecord::<[u8], [u8], _>::with_opaque_to(&self.topic, Box::new(sender))
            .partition(0)
            .key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        sluice_kafka::send_waiting(&self.producer, record)
            .map_err(|e| ApiError::store(format!("writing to `{}`: {e}", self.topic)))?;
        // Serve delivery reports until this write's arrives (other writers' reports go to
        // their own channels).
        let deadline = Instant::now() + DELIVERY_TIMEOUT + Duration::from_secs(5);
        loop {
            match receiver.try_recv() {
                Ok(Ok(offset)) => return Ok(offset),
                Ok(Err(error)) => {
                    return Err(ApiError::store(format!(
                        "writing to `{}`: {error}",
                        self.topic
                    )));
                }
                Err(TryRecvError::Disconnected) => {
                    return Err(ApiError::store(format!(
                        "writing to `{}`: the producer dropped the delivery report",
                        self.topic
                    )));
                }
                Err(TryRecvError::Empty) => {}
            }
            if Instant::now() > deadline {
                return Err(ApiError::store(format!(
                    "writing to `{}`: no delivery report after {:?}",
                    self.topic,
                    DELIVERY_TIMEOUT + Duration::from_secs(5)
                )));
            }
            self.producer.poll(Duration::from_millis(10));
        }
    }
}

/// The follower thread; stopped when dropped (or by [`Follower::stop`], which waits for it).
pub(crate) struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Stops the thread and waits for it (at most one poll, 100 ms).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Opens the log for a replica: checks the brokers answer, creates the topic if it is
/// missing, reads it to its end into `shared`, and keeps following it. Blocking.
pub(crate) fn open(config: &RegistryConfig, shared: Arc<Shared>) -> Result<(KafkaLog, Follower)> {
    ensure_topic(config)?;
    let follower = follow(config, shared.clone())?;
    let producer: BaseProducer<DeliveryContext> =
        client_config(&config.brokers, &config.kafka_overrides, |client| {
            client
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", "0")
                .set(
                    "message.timeout.ms",
                    DELIVERY_TIMEOUT.as_millis().to_string(),
                );
        })
        .create_with_context(DeliveryContext)
        .map_err(|e| kafka(config, "creating the registry's producer", e))?;
    let started = Instant::now();
    if !shared.wait_caught_up(CATCH_UP_TIMEOUT) {
        return Err(RegistryError::Kafka {
            brokers: config.brokers.clone(),
            during: format!("reading `{}` to its end", config.topic),
            message: format!(
                "not at the end after {:?} ({} records read)",
                started.elapsed(),
                shared.next_offset()
            ),
        });
    }
    tracing::info!(
        topic = %config.topic,
        records = shared.next_offset(),
        "read the schemas topic to its end"
    );
    Ok((
        KafkaLog {
            producer,
            topic: config.topic.clone(),
        },
        follower,
    ))
}

/// The replication factor of a schemas topic the registry creates, unless told one: 3, or
/// every broker of a smaller cluster (`brokers`: how many the metadata lists). A factor of 1
/// on a real cluster would lose every schema id with one disk, silently.
pub(crate) fn default_replication(brokers: usize) -> i32 {
    // At most 3, so the cast cannot truncate.
    brokers.clamp(1, 3) as i32
}

/// A Kafka failure as a [`RegistryError`] naming the brokers.
fn kafka(config: &RegistryConfig, during: &str, error: impl std::fmt::Display) -> RegistryError {
    RegistryError::Kafka {
        brokers: config.brokers.clone(),
        during: during.to_string(),
        message: error.to_string(),
    }
}

/// Makes sure the topic exists with one partition: created compacted when missing (without
/// the setting, with a warning, when the broker refuses it), with the configured replication
/// factor or [`default_replication`].
fn ensure_topic(config: &RegistryConfig) -> Result<()> {
    let topic = config.topic.as_str();
    let client = client_config(&config.brokers, &config.kafka_overrides, |_| {});
    let metadata: BaseConsumer = client
        .create()
        .map_err(|e| kafka(config, "creating a metadata client", e))?;
    // One metadata request first: an unreachable Kafka is said so, naming the brokers. It also
    // says how many brokers there are, for the default replication factor.
    let cluster = metadata
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .map_err(|e| kafka(config, "connecting (is Kafka running there?)", e))?;
    let existing = cluster
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if let Some(existing) = existing {
        let replicas = existing
            .partitions()
            .first()
            .map_or(0, |p| p.replicas().len());
        if replicas < 3 && cluster.brokers().len() >= 3 {
            tracing::warn!(
                topic,
                replicas,
                brokers = cluster.brokers().len(),
                "the schemas topic exists with fewer than 3 replicas: a broker's loss can lose every schema id; the registry uses the topic as it is (raise its replication with kafka-reassign-partitions)"
            );
        }
    } else {
        let brokers = cluster.brokers().len();
        let (replication, chosen) = match config.replication_factor {
            Some(factor) => (factor, "as configured"),
            None => (
                default_replication(brokers),
                "the default: 3, or every broker of a smaller cluster (--replication-factor overrides it)",
            ),
        };
        tracing::info!(
            topic,
            replication,
            brokers,
            chosen,
            "creating the schemas topic"
        );
        let compacted = NewTopic::new(topic, 1, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "compact");
        match sluice_kafka::create_topics(&client, &[compacted], Some(TOPIC_TIMEOUT)) {
            Ok(_) => tracing::info!(
                topic,
                replication,
                "created the schemas topic (compacted, 1 partition)"
            ),
            Err(error) => {
                tracing::warn!(
                    topic,
                    error = %error,
                    "creating the schemas topic compacted failed; trying without cleanup.policy=compact (a broker may refuse the setting): if that works, set the policy on the topic, or old schemas expire with the broker's retention"
                );
                let plain = NewTopic::new(topic, 1, TopicReplication::Fixed(replication));
                sluice_kafka::create_topics(&client, &[plain], Some(TOPIC_TIMEOUT)).map_err(
                    |e| {
                        kafka(
                            config,
                            &format!(
                                "creating topic `{topic}` with replication factor {replication}"
                            ),
                            e,
                        )
                    },
                )?;
            }
        }
    }
    let wait = TopicWait::up_to(TOPIC_TIMEOUT, Duration::from_millis(200));
    let partitions = sluice_kafka::wait_for_topic(&metadata, topic, &wait, || {})
        .map_err(|e| kafka(config, &format!("waiting for topic `{topic}`"), e))?;
    if partitions != 1 {
        return Err(RegistryError::Topic {
            topic: topic.to_string(),
            message: format!(
                "it has {partitions} partitions; the registry's log needs exactly 1 (one order for every write)"
            ),
        });
    }
    Ok(())
}

/// Starts the follower: assigned partition 0 from the beginning, caught up at once when the
/// topic is empty, else once it has read the record before the high watermark it had now.
fn follow(config: &RegistryConfig, shared: Arc<Shared>) -> Result<Follower> {
    let topic = config.topic.clone();
    let group = format!("sluice-registry-{topic}");
    let consumer: BaseConsumer<ReaderContext> =
        reader_config(&config.brokers, &config.kafka_overrides, &group)
            .create_with_context(ReaderContext)
            .map_err(|e| kafka(config, "creating the registry's consumer", e))?;
    let (low, high) = watermarks(&consumer, &topic)
        .map_err(|e| kafka(config, &format!("reading the offsets of `{topic}`"), e))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .map_err(|e| kafka(config, &format!("assigning `{topic}`"), e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| kafka(config, &format!("assigning `{topic}`"), e))?;
    if high <= low {
        shared.mark_caught_up();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("registry-follower".into())
        .spawn(move || run(&consumer, high, &shared, &flag))
        .map_err(|e| RegistryError::Internal(format!("starting the follower thread: {e}")))?;
    Ok(Follower {
        stop,
        thread: Some(thread),
    })
}

/// The (low, high) watermarks of partition 0, asked again for up to [`REQUEST_TIMEOUT`]: a
/// topic just created may have no leader for a moment.
fn watermarks(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
) -> std::result::Result<(i64, i64), KafkaError> {
    let started = Instant::now();
    loop {
        match consumer.fetch_watermarks(topic, 0, REQUEST_TIMEOUT) {
            Ok(watermarks) => return Ok(watermarks),
            Err(error) if started.elapsed() >= REQUEST_TIMEOUT => return Err(error),
            Err(error) => {
                tracing::debug!(topic, error = %error, "the schemas topic has no offsets yet; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// The follower's loop: apply every record, in order, until stopped. Kafka errors are
/// reported (at most every 30 s) and the loop goes on: librdkafka reconnects by itself.
fn run(consumer: &BaseConsumer<ReaderContext>, end: i64, shared: &Shared, stop: &AtomicBool) {
    let mut last_report: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let offset = message.offset();
                shared.apply(offset, message.key().unwrap_or_default(), message.payload());
                if offset + 1 >= end {
                    shared.mark_caught_up();
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => shared.mark_caught_up(),
            Some(Err(error))
                if last_report.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) =>
            {
                tracing::warn!(error = %error, "reading the schemas topic");
                last_report = Some(Instant::now());
            }
            Some(Err(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::default_replication;

    #[test]
    fn the_default_replication_is_three_or_every_broker_of_a_smaller_cluster() {
        assert_eq!(
            default_replication(0),
            1,
            "no broker listed: still a valid factor"
        );
        assert_eq!(default_replication(1), 1);
        assert_eq!(default_replication(2), 2);
        assert_eq!(default_replication(3), 3);
        assert_eq!(default_replication(12), 3);
    }
}
