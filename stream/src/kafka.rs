//! The daemon's and the raw-lake sink's Kafka clients: their settings, the consumer-group
//! context that reports rebalances and lag, the job's output topics and the changelog restore.
//! The plumbing under them (client configuration, topic creation, metadata, reading a partition
//! to its end, producing on a full queue) is `sluice_kafka`'s, shared with serving and the tools.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::topics::Topics;
use sluice_kafka::{Created, ReadError};

use crate::config::{Guarantee, StreamConfig};
use crate::error::{Result, StreamError, in_job, kafka};
use crate::metrics::StreamMetrics;
use crate::processor::ChangelogRecord;

/// The largest record the daemon produces (a state row of a huge COUNT DISTINCT, say).
const MAX_PRODUCED_BYTES: usize = 8 << 20;

/// How long a metadata or admin request may take before the daemon gives up.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client configuration: the brokers, then `settings`, then the user's `-X` overrides (last,
/// so they win).
pub(crate) fn client_config(
    config: &StreamConfig,
    settings: impl FnOnce(&mut ClientConfig),
) -> ClientConfig {
    sluice_kafka::client_config(&config.brokers, &config.client_overrides, settings)
}

/// Partition changes the rebalance callbacks report to the loop.
#[derive(Debug)]
pub(crate) enum Change {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// The consumer context of the daemon and the sink: reports partition changes to the loop and
/// consumer lag to the metrics.
pub(crate) struct GroupContext {
    pub(crate) job: String,
    pub(crate) topic: String,
    /// Which consumer of the process this is (`speed`, or a sink's name): the lag metric's
    /// `consumer` label, since the raw-lake sink reads the same topic as the speed layer.
    consumer: String,
    pub(crate) changes: Mutex<Vec<Change>>,
    pub(crate) metrics: StreamMetrics,
    /// librdkafka's latest view of each partition of `topic` (what a partition that stops
    /// moving is diagnosed with).
    fetch: Mutex<HashMap<i32, FetchState>>,
}

/// What librdkafka's statistics say about one partition's fetcher (logged whole, with
/// `Debug`, when a partition does not move).
#[derive(Debug, Clone, Default)]
#[allow(dead_code)]
pub(crate) struct FetchState {
    /// `active`, `stopped`, `offset-query`, `offset-wait`, ...
    pub state: String,
    /// The next offset the fetcher asks for; the application's position.
    pub next_offset: i64,
    pub app_offset: i64,
    /// Records fetched and queued for the application.
    pub queued: i64,
    pub high: i64,
    /// The last stable offset (read_committed reads stop there).
    pub stable: i64,
    /// Records dropped as outdated (after a seek or pause).
    pub outdated_drops: u64,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        if let Ok(mut fetch) = self.fetch.lock() {
            for (partition, stats) in topic.partitions.iter().filter(|(p, _)| **p >= 0) {
                fetch.insert(
                    *partition,
                    FetchState {
                        state: stats.fetch_state.clone(),
                        next_offset: stats.next_offset,
                        app_offset: stats.app_offset,
                        queued: stats.fetchq_cnt,
                        high: stats.hi_offset,
                        stable: stats.ls_offset,
                        outdated_drops: stats.rx_ver_drops,
                    },
                );
            }
        }
        for (partition, stats) in &topic.partitions {
            // librdkafka's own `consumer_lag` counts from offsets the consumer committed, and
            // ours are committed by the producer's transactions: measure from what was fetched.
            if *partition >= 0 && stats.app_offset >= 0 && stats.ls_offset >= 0 {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[
                        &self.job,
                        &self.topic,
                        &partition.to_string(),
                        &self.consumer,
                    ])
                    .set((stats.ls_offset - stats.app_offset).max(0));
            }
        }
    }
}

impl GroupContext {
    pub(crate) fn new(
        job: &str,
        topic: &str,
        consumer: &str,
        metrics: StreamMetrics,
    ) -> GroupContext {
        GroupContext {
            job: job.to_string(),
            topic: topic.to_string(),
            consumer: consumer.to_string(),
            changes: Mutex::new(Vec::new()),
            metrics,
            fetch: Mutex::new(HashMap::new()),
        }
    }

    /// librdkafka's latest statistics of `partition`'s fetcher, if it reported any.
    pub(crate) fn fetch_state(&self, partition: i32) -> Option<FetchState> {
        self.fetch.lock().ok()?.get(&partition).cloned()
    }

    /// The changes reported since the last call.
    pub(crate) fn take_changes(&self) -> Vec<Change> {
        match self.changes.lock() {
            Ok(mut changes) => changes.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |list: &TopicPartitionList| {
            list.elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect::<Vec<_>>()
        };
        let change = match rebalance {
            Rebalance::Assign(list) => Change::Assigned(partitions(list)),
            Rebalance::Revoke(list) => Change::Revoked(partitions(list)),
            Rebalance::Error(e) => {
                tracing::warn!(job = %self.job, error = %e, "rebalance error");
                return;
            }
        };
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
    }
}

/// A consumer that reads committed records only and commits offsets by hand. `instance`
/// distinguishes the daemon's and the sink's static memberships.
pub(crate) fn consumer_config(config: &StreamConfig, group: &str, instance: &str) -> ClientConfig {
    client_config(config, |client| {
        if config.static_membership {
            client.set(
                "group.instance.id",
                format!("{}{instance}", config.transactional_id),
            );
        }
        client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // A rebalance waits this long for members that stopped polling (a killed daemon), so
            // it bounds how long a takeover can take; the loop polls every micro-batch.
            .set("max.poll.interval.ms", "60000")
            // Bounds the prefetched records of the consumer's queue (over all its partitions;
            // librdkafka caps `fetch.max.bytes` at it unless that is set).
            .set("queued.max.messages.kbytes", "16384")
            // A record over the decoder's limit must still arrive (to be dead-lettered): some
            // brokers do not hand out a record larger than this limit.
            .set("max.partition.fetch.bytes", "8388608")
            .set("statistics.interval.ms", "1000");
    })
}

/// The daemon's producer: idempotent, lz4, its local queue bounded (a full queue makes
/// [`sluice_kafka::send_waiting`] wait for the broker), transactional unless at-least-once.
pub(crate) fn producer_config(config: &StreamConfig) -> ClientConfig {
    client_config(config, |client| {
        client
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "65536")
            .set("message.max.bytes", MAX_PRODUCED_BYTES.to_string());
        if config.guarantee == Guarantee::ExactlyOnce {
            client
                .set("transactional.id", &config.transactional_id)
                .set("transaction.timeout.ms", "30000");
        }
    })
}

/// How long the daemon waits for the broker to say where a partition ends.
const END_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `consumer` has read `partition` of `topic` to its end, in the broker's word now (a
/// round trip). `false` when the broker cannot say: an unconfirmed partition keeps holding the
/// watermark back, which delays results but never turns records late.
pub(crate) fn read_to_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> bool {
    let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, END_QUERY_TIMEOUT) else {
        return false;
    };
    let offset_in = |list: TopicPartitionList| {
        list.find_partition(topic, partition)
            .map(|entry| entry.offset())
    };
    let next = match consumer.position().ok().and_then(offset_in) {
        Some(Offset::Offset(next)) => next,
        // Nothing delivered since the assignment: the consumer starts where the group committed,
        // or at the earliest record.
        _ => {
            let mut list = TopicPartitionList::new();
            list.add_partition(topic, partition);
            match consumer
                .committed_offsets(list, END_QUERY_TIMEOUT)
                .ok()
                .and_then(offset_in)
            {
                Some(Offset::Offset(committed)) => committed,
                Some(Offset::Invalid) => low,
                _ => return false,
            }
        }
    };
    next >= high
}

/// The number of partitions of `topic`, which must exist.
pub(crate) fn partition_count(
    job: &str,
    consumer: &BaseConsumer<impl ConsumerContext>,
    topic: &str,
) -> Result<usize> {
    let partitions =
        sluice_kafka::partition_count(consumer, topic, REQUEST_TIMEOUT).map_err(in_job(job))?;
    if partitions == 0 {
        return Err(StreamError::Config {
            job: job.to_string(),
            message: format!("source topic `{topic}` does not exist (or has no partitions)"),
        });
    }
    Ok(partitions)
}

/// Creates the job's output topics if they are missing: `<job>.speed` compacted with one
/// partition per source partition (partition `p` holds source partition `p`'s state), the
/// others (results, DLQ, late, and the `[[outputs]]` topics) with as many partitions as the
/// source.
pub(crate) fn ensure_topics(
    job: &str,
    config: &StreamConfig,
    topics: &Topics,
    partitions: usize,
    stateful: bool,
) -> Result<()> {
    let metadata: BaseConsumer = client_config(config, |_| {})
        .create()
        .map_err(kafka(job, "creating a metadata client"))?;
    let partitions = partitions as i32;
    // Only ask for the missing topics: a broker without the CreateTopics request (librdkafka's
    // mock cluster, used by `sluice demo`) works when the topics were made beforehand.
    let existing = sluice_kafka::topic_names(&metadata, REQUEST_TIMEOUT).map_err(in_job(job))?;
    if existing.iter().any(|name| name == &topics.speed) {
        check_speed_partitions(job, &metadata, &topics.speed, partitions)?;
    }
    // `[[outputs]]` topics are made like `<job>.results`, whose rows they repeat.
    let outputs = topics
        .outputs
        .iter()
        .map(|(_, topic)| NewTopic::new(topic, partitions, TopicReplication::Fixed(1)));
    let mut wanted = HashSet::new();
    let new_topics: Vec<NewTopic> = [
        NewTopic::new(&topics.speed, partitions, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact"),
        NewTopic::new(&topics.results, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.dlq, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.late, partitions, TopicReplication::Fixed(1)),
    ]
    .into_iter()
    .chain(outputs)
    .chain(stateful.then(|| {
        NewTopic::new(&topics.state, partitions, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact")
    }))
    .filter(|topic| !existing.iter().any(|name| name == topic.name))
    .filter(|topic| wanted.insert(topic.name))
    .collect();
    let created = sluice_kafka::create_topics(
        &client_config(config, |_| {}),
        &new_topics,
        Some(REQUEST_TIMEOUT),
    )
    .map_err(in_job(job))?;
    for (topic, outcome) in created {
        // Made by another daemon of the group since the listing above.
        if outcome == Created::Existed && topic == topics.speed {
            check_speed_partitions(job, &metadata, &topic, partitions)?;
        }
    }
    Ok(())
}

/// `<job>.speed` partition `p` holds source partition `p`'s state, so it needs at least as
/// many partitions as the source.
fn check_speed_partitions(
    job: &str,
    metadata: &BaseConsumer,
    topic: &str,
    needed: i32,
) -> Result<()> {
    let found = partition_count(job, metadata, topic)? as i32;
    if found < needed {
        return Err(StreamError::Config {
            job: job.to_string(),
            message: format!(
                "`{topic}` has {found} partitions but the source has {needed}; add partitions to it (kafka-topics --alter --partitions {needed})"
            ),
        });
    }
    Ok(())
}

/// Every committed record of `<job>.speed` partition `partition` from offset `from`, oldest
/// first, handed to `apply` in chunks of at most `chunk_records` records or `chunk_bytes`
/// bytes: the changelog a restore replays, without holding it all. Reads until the end of the
/// partition as read_committed sees it; returns how many records it read.
pub(crate) fn read_changelog(
    job: &str,
    config: &StreamConfig,
    (topic, partition, from): (&str, i32, Offset),
    deadline: Duration,
    chunks: (usize, usize),
    apply: impl FnMut(Vec<ChangelogRecord>) -> Result<()>,
) -> Result<usize> {
    let group = format!("{}-restore", config.group_id);
    let consumer: BaseConsumer =
        sluice_kafka::reader_config(&config.brokers, &config.client_overrides, &group)
            .create()
            .map_err(kafka(job, "creating a restore consumer"))?;
    sluice_kafka::read_partition(
        &consumer,
        (topic, partition, from),
        (deadline, REQUEST_TIMEOUT),
        chunks,
        apply,
    )
    .map_err(|error| match error {
        ReadError::Apply(error) => error,
        ReadError::Kafka(error) => restore_error(job, error),
    })
}

/// A failed changelog read as the restore of its partition failing.
fn restore_error(job: &str, error: sluice_kafka::Error) -> StreamError {
    let restore = |topic: String, partition: i32, message: String| StreamError::Restore {
        job: job.to_string(),
        topic,
        partition,
        message,
    };
    match error {
        sluice_kafka::Error::NotAtEnd {
            topic,
            partition,
            waited,
            read,
            high,
        } => restore(
            topic,
            partition,
            format!("not at the end after {waited:?} ({read} records read; high watermark {high})"),
        ),
        sluice_kafka::Error::Read {
            topic,
            partition,
            source,
        } => restore(topic, partition, source.to_string()),
        error => in_job(job)(error),
    }
}
