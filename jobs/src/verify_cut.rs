//! What `sluice verify` needs to cut a live pipeline consistently: the records the speed
//! layer diverted as late, and a raw table that holds every offset the speed side reflects.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::lake::TableLocation;
use sluice_core::topics::{Topics, header};
use sluice_core::{Job, Lake};

/// `(partition, offset)` of every record in `<job>.late`, from its headers.
pub fn late_records(
    job: &Job,
    brokers: &str,
    overrides: &[(String, String)],
) -> anyhow::Result<HashSet<(i32, i64)>> {
    let topic = Topics::for_job(job).late;
    let group = format!("sluice-{}-verify", job.versioned_name());
    let consumer: BaseConsumer<sluice_kafka::ReaderContext> =
        sluice_kafka::reader_config(brokers, overrides, &group)
            .create_with_context(sluice_kafka::ReaderContext)?;
    let timeout = Duration::from_secs(30);
    let partitions = sluice_kafka::partition_count(&consumer, &topic, timeout)? as i32;
    let mut late = HashSet::new();
    let mut open: HashSet<i32> = HashSet::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
        if high > low {
            assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
            open.insert(partition);
        }
    }
    if open.is_empty() {
        return Ok(late);
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    while !open.is_empty() {
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("`{topic}` was not read to its end in 120 s");
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(message)) => {
                let headers = sluice_kafka::raw_headers(&message);
                let text = |name: &str| sluice_kafka::header_text(&headers, name);
                let partition = text(header::SOURCE_PARTITION).and_then(|p| p.parse().ok());
                let offset = text(header::SOURCE_OFFSET).and_then(|o| o.parse().ok());
                if let (Some(partition), Some(offset)) = (partition, offset) {
                    late.insert((partition, offset));
                }
            }
        }
    }
    Ok(late)
}

/// Waits (up to `timeout`) until the raw table holds every source offset the speed side
/// reflects; `false` when it did not in time.
pub async fn wait_for_lake(
    job: &Job,
    lake: &Lake,
    speed_offsets: &BTreeMap<i32, i64>,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let raw = TableLocation::new(lake.raw_table(job));
    let started = Instant::now();
    loop {
        let progress = raw.lake_progress().await?.unwrap_or_default();
        let landed = speed_offsets.iter().all(|(partition, &next)| {
            progress
                .by_partition
                .get(partition)
                .is_some_and(|p| p.next_offset >= next)
        });
        if landed {
            return Ok(true);
        }
        if started.elapsed() >= timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
