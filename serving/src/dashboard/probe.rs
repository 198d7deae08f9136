//! What the sampler asks Kafka about one job: the source topic's offsets against the speed
//! daemon's committed ones (throughput and lag per partition), and `<job>.dlq` and
//! `<job>.late` read as they grow (their counts and newest records).
//!
//! Counting records from offsets would be wrong on a transactional Kafka, where every commit
//! leaves a marker that takes an offset, so the two diverted topics are read, `read_committed`,
//! from their start, a bounded amount per sample, and never by a consumer group: the dashboard
//! moves nobody's offsets. Everything here blocks; the sampler runs it off the async runtime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use sluice_kafka::{PartitionLag, ReaderContext};

use super::letters::{DeadLetter, Tally};
use crate::error::ServingError;
use crate::service::JobService;

/// How long one metadata, offsets or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one sample may read a diverted topic, and how many records at most: a big DLQ is
/// counted over several samples instead of holding one up.
const READ_BUDGET: Duration = Duration::from_millis(1500);
const READ_RECORDS: usize = 50_000;
const POLL: Duration = Duration::from_millis(100);
/// librdkafka prefetches up to this much per consumer between two samples (its default is
/// 64 MiB), unless the user's `-X` properties say otherwise.
const PREFETCH_KBYTES: (&str, &str) = ("queued.max.messages.kbytes", "1024");
/// Newest records kept per diverted topic.
pub(crate) const KEEP_DLQ: usize = 100;
pub(crate) const KEEP_LATE: usize = 20;

type Reader = BaseConsumer<ReaderContext>;

/// Where the serving layer's Kafka is.
#[derive(Debug, Clone)]
pub(crate) struct KafkaAccess {
    pub brokers: String,
    pub overrides: Vec<(String, String)>,
}

impl KafkaAccess {
    /// `None` when no brokers are configured.
    pub fn new(brokers: &str, overrides: &[(String, String)]) -> Option<KafkaAccess> {
        (!brokers.trim().is_empty()).then(|| KafkaAccess {
            brokers: brokers.to_string(),
            overrides: overrides.to_vec(),
        })
    }

    fn reader(&self, group: &str) -> Result<Reader, KafkaError> {
        let mut config = sluice_kafka::reader_config(&self.brokers, &self.overrides, group);
        let (key, value) = PREFETCH_KBYTES;
        if !self.overrides.iter().any(|(k, _)| k == key) {
            config.set(key, value);
        }
        config.create_with_context(ReaderContext)
    }
}

/// The topics and group of the job version a probe reads; a switch to another version makes
/// a new probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub job: String,
    pub source: String,
    pub dlq: String,
    pub late: String,
    /// The speed daemon's consumer group, whose committed offsets are its progress.
    pub group: String,
}

impl Target {
    pub fn of(service: &JobService) -> Target {
        Target {
            job: service.name().to_string(),
            source: service.topics.source.clone(),
            dlq: service.topics.dlq.clone(),
            late: service.topics.late.clone(),
            group: service.served.stream_group.clone(),
        }
    }
}

/// One diverted topic as read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Followed {
    pub topic: String,
    pub tally: Tally,
    /// Every partition was read to its end at least once: the counts are the topic's.
    pub complete: bool,
    /// Why the last read failed (the topic does not exist yet, Kafka is unreachable).
    pub unavailable: Option<String>,
}

impl Followed {
    /// Records by `sluice.check`, once every partition was read to its end (before that the
    /// counts are only a lower bound, which a job's status does not report).
    pub fn by_check(&self) -> Option<BTreeMap<String, u64>> {
        self.complete.then(|| self.tally.by_check.clone())
    }
}

/// What one probe of a job found.
pub(crate) struct Probed {
    /// The source topic's partitions against the speed daemon's committed offsets.
    pub partitions: Result<Vec<PartitionLag>, String>,
    pub dlq: Followed,
    pub late: Followed,
}

/// A job's Kafka clients, kept from sample to sample.
pub(crate) struct Probe {
    target: Target,
    /// In the speed daemon's group, only to read its committed offsets (it never commits).
    lag: Option<Reader>,
    dlq: Follower,
    late: Follower,
}

impl Probe {
    pub fn new(target: Target) -> Probe {
        Probe {
            dlq: Follower::new(&target.dlq, KEEP_DLQ),
            late: Follower::new(&target.late, KEEP_LATE),
            lag: None,
            target,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn read(&mut self, kafka: &KafkaAccess, stop: &AtomicBool) -> Probed {
        let partitions = self.partitions(kafka).map_err(|e| e.to_string());
        // The diverted topics are read with a group of their own: a name only, never joined.
        let group = format!("{}-dashboard", self.target.group);
        let job = self.target.job.as_str();
        self.dlq.read(job, kafka, &group, stop);
        self.late.read(job, kafka, &group, stop);
        Probed {
            partitions,
            dlq: self.dlq.state.clone(),
            late: self.late.state.clone(),
        }
    }

    fn partitions(&mut self, kafka: &KafkaAccess) -> Result<Vec<PartitionLag>, ServingError> {
        let job = &self.target.job;
        let lag = match &mut self.lag {
            Some(lag) => lag,
            empty => empty.insert(
                kafka
                    .reader(&self.target.group)
                    .map_err(kafka_error(job, "creating the dashboard's lag reader"))?,
            ),
        };
        sluice_kafka::group_lag(lag, &self.target.source, REQUEST_TIMEOUT).map_err(|e| {
            ServingError::KafkaClient {
                job: job.clone(),
                source: Box::new(e),
            }
        })
    }
}

fn kafka_error(job: &str, during: &str) -> impl FnOnce(KafkaError) -> ServingError {
    let (job, wrap) = (job.to_string(), sluice_kafka::Error::during(during));
    move |e| ServingError::KafkaClient {
        job,
        source: Box::new(wrap(e)),
    }
}

/// Reads one topic from its start, a bounded amount per call, resuming where it stopped.
struct Follower {
    consumer: Option<Reader>,
    /// Partitions assigned (0: none yet).
    partitions: i32,
    /// Per partition, the offset after the last record read.
    next: BTreeMap<i32, i64>,
    /// Per partition, whether its end was reached with nothing read since.
    at_end: BTreeMap<i32, bool>,
    state: Followed,
}

impl Follower {
    fn new(topic: &str, keep: usize) -> Follower {
        Follower {
            consumer: None,
            partitions: 0,
            next: BTreeMap::new(),
            at_end: BTreeMap::new(),
            state: Followed {
                topic: topic.to_string(),
                tally: Tally::new(keep),
                complete: false,
                unavailable: None,
            },
        }
    }

    fn read(&mut self, job: &str, kafka: &KafkaAccess, group: &str, stop: &AtomicBool) {
        self.state.unavailable = self
            .try_read(job, kafka, group, stop)
            .err()
            .map(|e| e.to_string());
    }

    fn try_read(
        &mut self,
        job: &str,
        kafka: &KafkaAccess,
        group: &str,
        stop: &AtomicBool,
    ) -> Result<(), ServingError> {
        let topic = self.state.topic.clone();
        let consumer = match &mut self.consumer {
            Some(consumer) => consumer,
            empty => empty.insert(
                kafka
                    .reader(group)
                    .map_err(kafka_error(job, "creating the dashboard's topic reader"))?,
            ),
        };
        let partitions =
            sluice_kafka::partition_count(consumer, &topic, REQUEST_TIMEOUT).map_err(|e| {
                ServingError::KafkaClient {
                    job: job.to_string(),
                    source: Box::new(e),
                }
            })? as i32;
        if partitions == 0 {
            return Err(ServingError::Kafka {
                job: job.to_string(),
                during: format!("reading `{topic}`"),
                message: "the topic does not exist yet (the job's `sluice stream` creates it)"
                    .to_string(),
            });
        }
        if partitions != self.partitions {
            let mut assignment = TopicPartitionList::new();
            for partition in 0..partitions {
                let from = self
                    .next
                    .get(&partition)
                    .map_or(Offset::Beginning, |&next| Offset::Offset(next));
                assignment
                    .add_partition_offset(&topic, partition, from)
                    .map_err(kafka_error(job, "assigning a diverted topic"))?;
                self.at_end.entry(partition).or_insert(false);
            }
            consumer
                .assign(&assignment)
                .map_err(kafka_error(job, "assigning a diverted topic"))?;
            self.partitions = partitions;
        }
        let (started, mut read) = (Instant::now(), 0);
        while started.elapsed() < READ_BUDGET && read < READ_RECORDS && !stop.load(Ordering::SeqCst)
        {
            match consumer.poll(POLL) {
                None if self.at_end.values().all(|&end| end) => break,
                None => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    self.at_end.insert(partition, true);
                    if self.at_end.values().all(|&end| end) {
                        self.state.complete = true;
                        break;
                    }
                }
                Some(Err(e)) => {
                    return Err(kafka_error(job, &format!("reading `{topic}`"))(e));
                }
                Some(Ok(message)) => {
                    let letter = DeadLetter::of_message(&message);
                    self.at_end.insert(letter.partition, false);
                    self.next.insert(letter.partition, letter.offset + 1);
                    self.state.tally.add(letter);
                    read += 1;
                }
            }
        }
        Ok(())
    }
}
