//! Reading dead letters without a consumer group: partitions assigned from given offsets, each
//! read up to the end it had when the command started, as `list` and `show` need. Records that
//! arrive meanwhile are left for the next run, so a DLQ that keeps growing still ends a read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::DlqError;

/// A read gives up when nothing (no record, no end of partition) arrives for this long.
pub(crate) const STALL: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

/// One partition to read: offsets `from..stop`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Range {
    pub partition: i32,
    pub from: i64,
    pub stop: i64,
}

/// Whether a visitor wants more records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    More,
    Enough,
}

/// Hands every committed record of `ranges` of `topic` to `visit`, until each range is read
/// (its last offset seen, or the end of the partition reached) or `visit` has had enough.
/// Records of different partitions interleave in the order they arrive.
pub(crate) fn scan<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    ranges: &[Range],
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> Flow,
) -> Result<(), DlqError> {
    // partition -> (next offset expected, stop)
    let mut open: BTreeMap<i32, (i64, i64)> = ranges
        .iter()
        .filter(|r| r.from < r.stop)
        .map(|r| (r.partition, (r.from, r.stop)))
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    for (&partition, &(from, _)) in &open {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|source| assign_error(topic, source))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|source| assign_error(topic, source))?;
    let mut last_event = Instant::now();
    let mut last_error: Option<String> = None;
    while !open.is_empty() {
        match consumer.poll(POLL) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
                last_event = Instant::now();
            }
            Some(Err(error)) => {
                tracing::warn!(topic, error = %error, "reading the dead-letter topic");
                last_error = Some(error.to_string());
            }
            Some(Ok(message)) => {
                last_event = Instant::now();
                let partition = message.partition();
                let Some(&(_, stop)) = open.get(&partition) else {
                    continue;
                };
                if message.offset() >= stop {
                    open.remove(&partition);
                    continue;
                }
                let flow = visit(&message);
                if message.offset() + 1 >= stop {
                    open.remove(&partition);
                } else {
                    open.insert(partition, (message.offset() + 1, stop));
                }
                if flow == Flow::Enough {
                    return Ok(());
                }
            }
        }
        if last_event.elapsed() > STALL
            && let Some((&partition, &(offset, stop))) = open.first_key_value()
        {
            return Err(DlqError::Stalled {
                topic: topic.to_string(),
                partition,
                offset,
                stop,
                waited: STALL,
                detail: last_error
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default(),
            });
        }
    }
    Ok(())
}

fn assign_error(topic: &str, source: KafkaError) -> DlqError {
    DlqError::Topic {
        topic: topic.to_string(),
        during: "assigning the partitions of",
        source,
    }
}
