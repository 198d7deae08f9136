//! Reading a partition to its end: the committed records of a changelog (`<job>.speed`) from an
//! offset up to where the partition ended when the read began, in bounded chunks, so a restore
//! replays a changelog of any size without holding it.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::client::client_config;
use crate::error::Error;

/// A record of a changelog: its key (empty when it has none) and its value (`None`: a
/// tombstone).
pub type Record = (Vec<u8>, Option<Vec<u8>>);

/// A consumer that reads committed records only, from the earliest one when its group has no
/// offset, reports each partition's end, and never commits: what reads a changelog (or follows
/// one) needs. `group` is only a name here.
pub fn reader_config(brokers: &str, overrides: &[(String, String)], group: &str) -> ClientConfig {
    client_config(brokers, overrides, |client| {
        client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // A start offset below the log's (compacted) start: every record left is newer.
            .set("auto.offset.reset", "earliest");
    })
}

/// The context of a [`reader_config`] consumer: reaching a partition's end is how a reader
/// knows it is done, not an error, but librdkafka also reports it to the client's error
/// callback, which would log it as one. Other errors are logged as warnings.
pub struct ReaderContext;

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::warn!(error = %error, reason, "kafka reader");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Why [`read_partition`] stopped before the end: Kafka, or the caller's `apply`.
#[derive(Debug)]
pub enum ReadError<E> {
    Kafka(Error),
    Apply(E),
}

impl<E> From<Error> for ReadError<E> {
    fn from(error: Error) -> Self {
        ReadError::Kafka(error)
    }
}

/// Every committed record of partition `partition` of `topic` from offset `from`, oldest
/// first, handed to `apply` in chunks of at most `chunk_records` records or `chunk_bytes` bytes
/// (keys and values), until the end of the partition as it was when the read began (as
/// read_committed sees it).
/// `consumer` should come from [`reader_config`]; the read assigns it the partition. Returns how
/// many records it read; fails after `deadline` if the end was not reached. The watermarks are
/// asked with `request_timeout`.
pub fn read_partition<C: ConsumerContext, E>(
    consumer: &BaseConsumer<C>,
    (topic, partition, from): (&str, i32, Offset),
    (deadline, request_timeout): (Duration, Duration),
    (chunk_records, chunk_bytes): (usize, usize),
    mut apply: impl FnMut(Vec<Record>) -> Result<(), E>,
) -> Result<usize, ReadError<E>> {
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, request_timeout)
        .map_err(Error::during(format!(
            "reading the offsets of `{topic}` [{partition}]"
        )))?;
    let nothing_newer = matches!(from, Offset::Offset(start) if start >= high);
    if high <= low || nothing_newer {
        return Ok(0);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, from)
        .map_err(Error::during("assigning the changelog"))?;
    consumer
        .assign(&assignment)
        .map_err(Error::during("assigning the changelog"))?;
    let started = Instant::now();
    let mut chunk = Vec::new();
    let (mut read, mut bytes) = (0, 0);
    loop {
        if started.elapsed() > deadline {
            return Err(ReadError::Kafka(Error::NotAtEnd {
                topic: topic.to_string(),
                partition,
                waited: deadline,
                read,
                high,
            }));
        }
        let at_end = match consumer.poll(Duration::from_millis(200)) {
            None => false,
            Some(Err(KafkaError::PartitionEOF(_))) => true,
            Some(Err(source)) => {
                return Err(ReadError::Kafka(Error::Read {
                    topic: topic.to_string(),
                    partition,
                    source,
                }));
            }
            Some(Ok(message)) => {
                let key = message.key().unwrap_or_default().to_vec();
                bytes += key.len() + message.payload_len();
                chunk.push((key, message.payload().map(<[u8]>::to_vec)));
                read += 1;
                message.offset() + 1 >= high
            }
        };
        if at_end || chunk.len() >= chunk_records || bytes >= chunk_bytes {
            apply(std::mem::take(&mut chunk)).map_err(ReadError::Apply)?;
            bytes = 0;
        }
        if at_end {
            return Ok(read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_never_commits_and_reads_only_committed_records() {
        let overrides = [(
            "isolation.level".to_string(),
            "read_uncommitted".to_string(),
        )];
        let reader = reader_config("here:9092", &[], "g-restore");
        assert_eq!(reader.get("group.id"), Some("g-restore"));
        assert_eq!(reader.get("enable.auto.commit"), Some("false"));
        assert_eq!(reader.get("isolation.level"), Some("read_committed"));
        assert_eq!(reader.get("enable.partition.eof"), Some("true"));
        let overridden = reader_config("here:9092", &overrides, "g");
        assert_eq!(overridden.get("isolation.level"), Some("read_uncommitted"));
    }
}
