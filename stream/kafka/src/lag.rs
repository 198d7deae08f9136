//! Consumer lag: how many records of a topic lie past a group's committed offsets (or a
//! consumer's positions), per partition and in total. A partition the group never committed
//! on counts from its low watermark: everything still in the log is unread.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::metadata::partition_count;

/// One partition's offsets: the log's low and high watermarks and how far the consumer got
/// (`None`: no committed offset or position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    pub done: Option<i64>,
}

impl PartitionLag {
    /// The records left to read.
    pub fn records(&self) -> i64 {
        records_behind(self.low, self.high, self.done)
    }
}

/// Records between `done` (or `low` when there is none) and `high`; never negative.
pub fn records_behind(low: i64, high: i64, done: Option<i64>) -> i64 {
    (high - done.unwrap_or(low)).max(0)
}

/// The records left to read over all `lags`.
pub fn total_lag(lags: &[PartitionLag]) -> i64 {
    lags.iter().map(PartitionLag::records).sum()
}

/// The concrete offset `list` holds for partition `partition` of `topic` (`None` for a missing
/// entry or a logical offset such as "invalid", which is what an uncommitted partition reports).
pub fn offset_in(list: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    match list.find_partition(topic, partition).map(|e| e.offset()) {
        Some(Offset::Offset(offset)) => Some(offset),
        _ => None,
    }
}

/// The committed offsets of `consumer`'s group on partitions `0..partitions` of `topic`.
pub fn committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Option<i64>>> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, timeout)
        .map_err(Error::during(format!(
            "reading the committed offsets on `{topic}`"
        )))?;
    Ok((0..partitions)
        .map(|partition| offset_in(&committed, topic, partition))
        .collect())
}

/// The (low, high) watermarks of partitions `0..partitions` of `topic`.
pub fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<(i64, i64)>> {
    (0..partitions)
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(Error::during(format!(
                    "reading the offsets of `{topic}` [{partition}]"
                )))
        })
        .collect()
}

/// The lag of `consumer`'s group on every partition of `topic` (none when it does not exist),
/// from its committed offsets.
pub fn group_lag<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionLag>> {
    let partitions = partition_count(consumer, topic, timeout)? as i32;
    let committed = committed(consumer, topic, partitions, timeout)?;
    let watermarks = watermarks(consumer, topic, partitions, timeout)?;
    Ok(committed
        .into_iter()
        .zip(watermarks)
        .zip(0..)
        .map(|((done, (low, high)), partition)| PartitionLag {
            partition,
            low,
            high,
            done,
        })
        .collect())
}

/// The records `consumer` has yet to read of `partitions` of `topic`, from its positions (a
/// partition with no position counts from its low watermark; one whose watermarks cannot be
/// read counts nothing).
pub fn position_lag<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    timeout: Duration,
) -> i64 {
    let positions = consumer.position().ok();
    partitions
        .into_iter()
        .filter_map(|partition| {
            let (low, high) = consumer.fetch_watermarks(topic, partition, timeout).ok()?;
            let done = positions
                .as_ref()
                .and_then(|list| offset_in(list, topic, partition));
            Some(records_behind(low, high, done))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_without_a_committed_offset_counts_from_its_low_watermark() {
        assert_eq!(records_behind(40, 100, None), 60);
        assert_eq!(records_behind(40, 100, Some(90)), 10);
        assert_eq!(records_behind(0, 0, None), 0);
    }

    #[test]
    fn lag_is_never_negative() {
        // A committed offset past the high watermark (a log truncated by retention, or a
        // watermark read before the commit) is no lag, not a negative one.
        assert_eq!(records_behind(0, 10, Some(12)), 0);
    }

    #[test]
    fn the_total_adds_the_partitions() {
        let lags = [
            PartitionLag {
                partition: 0,
                low: 0,
                high: 10,
                done: Some(4),
            },
            PartitionLag {
                partition: 1,
                low: 5,
                high: 8,
                done: None,
            },
            PartitionLag {
                partition: 2,
                low: 0,
                high: 3,
                done: Some(7),
            },
        ];
        assert_eq!(total_lag(&lags), 6 + 3);
        assert_eq!(total_lag(&[]), 0);
    }

    #[test]
    fn only_concrete_offsets_count() {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("t", 0, Offset::Offset(17))
            .expect("offset");
        list.add_partition_offset("t", 1, Offset::Invalid)
            .expect("offset");
        assert_eq!(offset_in(&list, "t", 0), Some(17));
        assert_eq!(offset_in(&list, "t", 1), None);
        assert_eq!(offset_in(&list, "t", 2), None);
        assert_eq!(offset_in(&list, "u", 0), None);
    }
}
