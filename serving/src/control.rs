//! Reading and writing a job's `<job>.control` topic (the format is
//! [`sluice_core::control`]'s): the serving pointer a switch moves and the version records.
//!
//! The topic is small (a record per switch and per version, compacted), so every read takes
//! it whole, to its end, and keeps the newest value of each key.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_core::control::{SERVING_KEY, ServingPointer, VersionRecord, version_of_key};

use crate::error::{Result, ServingError};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where a job's control topic is.
#[derive(Debug, Clone)]
pub struct ControlTopic {
    pub job: String,
    pub topic: String,
    pub brokers: String,
    pub overrides: Vec<(String, String)>,
}

/// What a job's control topic says now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlState {
    pub serving: Option<ServingPointer>,
    pub versions: BTreeMap<u32, VersionRecord>,
}

impl ControlTopic {
    /// The control topic of `job` (whatever its version) on `brokers`.
    pub fn for_job(job: &sluice_core::Job, brokers: &str, overrides: &[(String, String)]) -> Self {
        ControlTopic {
            job: job.name().to_string(),
            topic: sluice_core::topics::Topics::for_job(job).control,
            brokers: brokers.to_string(),
            overrides: overrides.to_vec(),
        }
    }

    fn kafka(&self, during: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> ServingError {
        let (job, during) = (self.job.clone(), format!("{during} `{}`", self.topic));
        move |e| ServingError::Kafka {
            job,
            during,
            message: e.to_string(),
        }
    }

    fn client(&self, during: &str) -> impl FnOnce(sluice_kafka::Error) -> ServingError {
        let (job, during) = (self.job.clone(), format!("{during} `{}`", self.topic));
        move |e| ServingError::Kafka {
            job,
            during,
            message: e.to_string(),
        }
    }

    /// The newest value of every key (an empty state when the topic does not exist yet).
    pub fn read(&self) -> Result<ControlState> {
        let group = format!("sluice-{}-control-reader", self.job);
        let consumer: BaseConsumer<sluice_kafka::ReaderContext> =
            sluice_kafka::reader_config(&self.brokers, &self.overrides, &group)
                .create_with_context(sluice_kafka::ReaderContext)
                .map_err(self.kafka("creating a reader of"))?;
        let partitions = sluice_kafka::partition_count(&consumer, &self.topic, TIMEOUT)
            .map_err(self.client("reading the metadata of"))?;
        let mut newest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        if partitions > 0 {
            let read = sluice_kafka::read_partition(
                &consumer,
                (&self.topic, 0, Offset::Beginning),
                (TIMEOUT, TIMEOUT),
                (10_000, 8 << 20),
                |chunk| {
                    newest.extend(chunk);
                    Ok::<(), std::convert::Infallible>(())
                },
            );
            if let Err(sluice_kafka::ReadError::Kafka(e)) = read {
                return Err(self.client("reading")(e));
            }
        }
        let mut state = ControlState::default();
        for (key, value) in newest {
            let (Ok(key), Some(value)) = (String::from_utf8(key), value) else {
                continue;
            };
            if key == SERVING_KEY {
                state.serving = serde_json::from_slice(&value).ok();
            } else if let Some(version) = version_of_key(&key)
                && let Ok(record) = serde_json::from_slice(&value)
            {
                state.versions.insert(version, record);
            }
        }
        Ok(state)
    }

    /// Writes `value` under `key`, creating the topic (compacted, one partition) if needed,
    /// and waits until the broker has it.
    pub fn write(&self, key: &str, value: &impl serde::Serialize) -> Result<()> {
        let client = sluice_kafka::client_config(&self.brokers, &self.overrides, |_| {});
        let topic = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact");
        sluice_kafka::create_topics(&client, &[topic], Some(TIMEOUT))
            .map_err(self.client("creating"))?;
        let producer: BaseProducer =
            sluice_kafka::client_config(&self.brokers, &self.overrides, |client| {
                client.set("enable.idempotence", "true");
            })
            .create()
            .map_err(self.kafka("creating a producer for"))?;
        let body = serde_json::to_vec(value)
            .map_err(|e| ServingError::Internal(format!("encoding a control record: {e}")))?;
        let record = BaseRecord::<str, [u8]>::to(&self.topic)
            .partition(0)
            .key(key)
            .payload(&body);
        sluice_kafka::send_waiting(&producer, record).map_err(self.kafka("writing to"))?;
        producer.flush(TIMEOUT).map_err(self.kafka("writing to"))?;
        Ok(())
    }

    /// Removes the topic's record of `key` (a tombstone).
    pub fn delete(&self, key: &str) -> Result<()> {
        let producer: BaseProducer =
            sluice_kafka::client_config(&self.brokers, &self.overrides, |_| {})
                .create()
                .map_err(self.kafka("creating a producer for"))?;
        let record = BaseRecord::<str, [u8]>::to(&self.topic)
            .partition(0)
            .key(key);
        sluice_kafka::send_waiting(&producer, record).map_err(self.kafka("writing to"))?;
        producer.flush(TIMEOUT).map_err(self.kafka("writing to"))?;
        Ok(())
    }
}
