//! Starting a new view version's speed layer where the lake ends (`sluice replay`).
//!
//! The seeds ([`SpeedSeed`], computed by the batch layer from the raw table) become the first
//! records of the version's `<job>.speed` partitions, with a watermark and a plan record each,
//! and the group's offsets move to where the seeded rows end, all in ONE Kafka transaction: the
//! daemon that starts next restores the seeds as it restores any changelog and continues from
//! those offsets, so each record is counted once across the seam. A job with stateful stages
//! (dedup, `unique`) also gets its held rows and remembered keys as the first records of
//! `<job>.state`, and its release bound in the watermark record. A group that already has
//! committed offsets has started (seeded, or streaming), and is never seeded again.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::speed::{PLAN_KEY, PartitionWatermark, SpeedCodec, SpeedSeed, WATERMARK_KEY};
use sluice_core::topics::Topics;
use sluice_core::{Job, Pipeline};
use sluice_kafka::send_waiting;

use crate::config::StreamConfig;
use crate::error::{Result, StreamError, in_job, kafka};
use crate::kafka::{
    REQUEST_TIMEOUT, client_config, ensure_topics, partition_count, producer_config,
};

/// A seed's transaction may hold the whole open history of a partition.
const SEED_COMMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// What [`seed_speed_layer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SeedOutcome {
    /// The changelog now starts with this many state rows, over the source's partitions.
    Seeded { rows: usize, partitions: usize },
    /// The version's group has committed offsets: it was seeded (or streamed) before.
    AlreadyStarted,
}

/// Writes `seeds` as the first records of `job`'s (version's) `<job>.speed` and moves its
/// consumer group (`config.group_id`) to the seeds' offsets, atomically.
pub fn seed_speed_layer(
    job: &Job,
    pipeline: &Pipeline,
    config: &StreamConfig,
    seeds: &[SpeedSeed],
) -> Result<SeedOutcome> {
    let name = job.name();
    let topics = Topics::for_job(job);
    let stage = pipeline
        .plan()
        .aggregate()
        .ok_or_else(|| StreamError::Config {
            job: name.to_string(),
            message: "a stateless job has no speed state to seed".to_string(),
        })?;
    let consumer: BaseConsumer = client_config(config, |client| {
        client
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
    })
    .create()
    .map_err(kafka(name, "creating the seeding client"))?;
    let partitions = partition_count(name, &consumer, &topics.source)?;
    let committed = sluice_kafka::committed(
        &consumer,
        &topics.source,
        partitions as i32,
        REQUEST_TIMEOUT,
    )
    .map_err(in_job(name))?;
    if committed.iter().any(Option::is_some) {
        return Ok(SeedOutcome::AlreadyStarted);
    }
    let stateful = pipeline.stateful().is_some();
    ensure_topics(name, config, &topics, partitions, stateful)?;
    let mut seeding = config.clone();
    seeding.transactional_id = format!("{}-seed", config.transactional_id);
    let producer: BaseProducer = producer_config(&seeding)
        .create()
        .map_err(kafka(name, "creating the seeding producer"))?;
    producer
        .init_transactions(REQUEST_TIMEOUT)
        .map_err(kafka(name, "initialising the seeding transaction"))?;
    producer
        .begin_transaction()
        .map_err(kafka(name, "beginning the seeding transaction"))?;
    let codec = SpeedCodec::new(stage);
    let fingerprint = job.plan_fingerprint();
    let delay = job.spec.source.watermark_delay.as_micros() as i64;
    let mut offsets = TopicPartitionList::new();
    let mut rows = 0;
    for seed in seeds {
        let partition = seed.partition;
        let send_to = |topic: &str, key: &[u8], value: &[u8]| {
            let record = BaseRecord::<[u8], [u8]>::to(topic)
                .partition(partition)
                .key(key)
                .payload(value);
            send_waiting(&producer, record)
                .map_err(kafka(name, format!("seeding partition {partition}")))
        };
        let send = |key: &[u8], value: &[u8]| send_to(topics.speed.as_str(), key, value);
        // The held rows and remembered keys, which the daemon restores from `<job>.state`
        // before its first micro-batch.
        for (key, value) in &seed.operator_state {
            send_to(topics.state.as_str(), key, value)?;
        }
        for row in 0..seed.partials.num_rows() {
            send(
                &codec.key(&seed.partials, row)?,
                &codec.value(&seed.partials, row)?,
            )?;
        }
        rows += seed.partials.num_rows();
        if let Some(max_event_us) = seed.max_event_us {
            let watermark = PartitionWatermark {
                max_event_us,
                watermark_us: max_event_us.saturating_sub(delay),
                emitted_us: None,
                source_next_offset: Some(seed.next_offset),
                purge_us: seed.purge_us,
            };
            send(WATERMARK_KEY, &watermark.encode())?;
        }
        send(PLAN_KEY, fingerprint.as_bytes())?;
        offsets
            .add_partition_offset(&topics.source, partition, Offset::Offset(seed.next_offset))
            .map_err(kafka(name, "listing the seeded offsets"))?;
    }
    let group = consumer
        .group_metadata()
        .ok_or_else(|| StreamError::Config {
            job: name.to_string(),
            message: format!("no group metadata for `{}`", config.group_id),
        })?;
    producer
        .send_offsets_to_transaction(&offsets, &group, REQUEST_TIMEOUT)
        .map_err(kafka(
            name,
            "committing the seeded offsets in the transaction",
        ))?;
    producer
        .commit_transaction(SEED_COMMIT_TIMEOUT)
        .map_err(kafka(name, "committing the seeding transaction"))?;
    Ok(SeedOutcome::Seeded {
        rows,
        partitions: seeds.len(),
    })
}
