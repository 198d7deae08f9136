//! `sluice stream`: the consumer-group daemon that runs micro-batches as Kafka transactions.
//!
//! Each cycle polls a micro-batch, hands it to the [`Processor`] and commits everything it
//! produced (state upserts to `<job>.speed`, closed windows to `<job>.results` and to the
//! `[[outputs]]` topics they match, DLQ and late records; see [`produce`]) together with the
//! consumed offsets in ONE transaction. The RocksDB store is only a
//! cache of the committed changelog: on start, on partition assignment and after any failed
//! transaction, the affected partitions are restored from `<job>.speed`, and the consumer
//! rewinds to the committed offsets, so a crash anywhere loses and repeats nothing. A daemon
//! that stops cleanly leaves a checkpoint in the store (see [`crate::state`]); the next start
//! keeps the state and replays only the changelog written after it, so a restart costs the
//! open state, not the history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_core::topics::Topics;
use sluice_core::{Job, Pipeline};

mod produce;
mod registry_wait;

use crate::config::{Guarantee, StreamConfig};
use crate::cutoff::BatchCutoff;
use crate::error::{Result, StreamError, kafka};
use crate::kafka::{
    Change, GroupContext, REQUEST_TIMEOUT, consumer_config, ensure_topics, partition_count,
    producer_config, read_changelog, read_to_end,
};
use crate::metrics::StreamMetrics;
use crate::processor::{Output, Processor, Restoring, SourceRecord};
use crate::schemas::SchemaFetcher;
use crate::state::{Checkpoint, PartitionCheckpoint, StateStore};
use crate::watermark::Watermarks;

/// How long a restore may take before the daemon gives up on the partition.
const RESTORE_DEADLINE: Duration = Duration::from_secs(120);
/// A restore applies the changelog to the store in chunks of at most this many records ...
const RESTORE_CHUNK_RECORDS: usize = 10_000;
/// ... or bytes (what a restore holds in memory).
pub(crate) const RESTORE_CHUNK_BYTES: usize = 8 << 20;
/// Failed micro-batches in a row before the daemon gives up (each is aborted and retried).
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// Counts failed deliveries, so an at-least-once batch whose outputs did not all arrive is not
/// committed (a transaction fails by itself).
#[derive(Default)]
struct DeliveryContext {
    failed: AtomicU64,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl DeliveryContext {
    fn take_failures(&self) -> u64 {
        self.failed.swap(0, Ordering::SeqCst)
    }
}

/// What a daemon run did, reported when it stops.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub batches: u64,
    pub records_in: u64,
    pub dlq: u64,
    pub late: u64,
    pub aborted: u64,
}

/// The speed-layer daemon of one job.
pub struct StreamDaemon {
    job: Job,
    pipeline: Arc<Pipeline>,
    config: StreamConfig,
    metrics: StreamMetrics,
    topics: Topics,
    /// When set, retired rows the batch view covers are tombstoned in `<job>.speed`.
    batch_cutoff: Option<Arc<BatchCutoff>>,
}

struct Running {
    consumer: BaseConsumer<GroupContext>,
    producer: BaseProducer<DeliveryContext>,
    processor: Processor,
    /// `avro-confluent` jobs: where writer schemas come from.
    schemas: Option<SchemaFetcher>,
    assigned: Vec<i32>,
    summary: RunSummary,
    consecutive_failures: u32,
    /// Partitions whose state the store kept from a clean stop, until they are assigned.
    checkpoint: BTreeMap<i32, PartitionCheckpoint>,
}

impl StreamDaemon {
    pub fn new(
        job: Job,
        pipeline: Arc<Pipeline>,
        config: StreamConfig,
        metrics: StreamMetrics,
    ) -> StreamDaemon {
        StreamDaemon {
            topics: Topics::for_job(&job),
            job,
            pipeline,
            config,
            metrics,
            batch_cutoff: None,
        }
    }

    /// Tombstones retired rows in `<job>.speed` once `cutoff` says the batch view covers them.
    pub fn with_batch_cutoff(mut self, cutoff: Arc<BatchCutoff>) -> StreamDaemon {
        self.batch_cutoff = Some(cutoff);
        self
    }

    fn name(&self) -> &str {
        self.job.name()
    }

    /// Runs until `stop` is set, then finishes the current micro-batch and returns.
    /// Blocking: give it its own thread.
    pub fn run(&self, stop: Arc<AtomicBool>) -> Result<RunSummary> {
        let mut running = self.start()?;
        let checks: Vec<(&str, &str)> = running
            .processor
            .pipeline()
            .checks()
            .map(|c| {
                c.checks()
                    .iter()
                    .map(|c| (c.name.as_str(), c.severity.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        self.metrics.start_job(self.name(), &checks);
        tracing::info!(job = self.name(), topic = %self.topics.source, guarantee = ?self.config.guarantee, "speed layer started");
        while !stop.load(Ordering::SeqCst) {
            let mut records = self.poll_batch(&mut running, &stop)?;
            if !self.wait_for_schemas(&mut running, &mut records, &stop)? {
                break;
            }
            let now = Instant::now();
            self.ask_broker_about_silent_partitions(&mut running, now);
            let cutoff = self.batch_cutoff.as_ref().and_then(|c| c.settled(now));
            running.processor.set_batch_cutoff(cutoff);
            let output = running.processor.process(records, now)?;
            if output.is_empty() {
                self.observe_idle(&running);
                continue;
            }
            match self.commit(&mut running, &output) {
                Ok(()) => self.observe_commit(&mut running, &output, now),
                Err(e) => self.recover(&mut running, e)?,
            }
        }
        self.write_checkpoint(&running)?;
        tracing::info!(job = self.name(), summary = ?running.summary, "speed layer stopped");
        Ok(running.summary)
    }

    /// After the last commit of a clean stop: what the store reflects, per assigned partition
    /// (the changelog's end, which this daemon's committed transactions are the last of).
    fn write_checkpoint(&self, running: &Running) -> Result<()> {
        let mut partitions = BTreeMap::new();
        for &partition in &running.assigned {
            match running
                .consumer
                .fetch_watermarks(&self.topics.speed, partition, REQUEST_TIMEOUT)
            {
                Ok((_, high)) => {
                    partitions.insert(
                        partition,
                        PartitionCheckpoint {
                            changelog_offset: high,
                            watermark: running.processor.partition_watermark(partition),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(job = self.name(), partition, error = %e, "no checkpoint for this partition: the next start restores it in full");
                }
            }
        }
        let checkpoint = Checkpoint {
            fingerprint: self.job.plan_fingerprint(),
            partitions,
        };
        running.processor.store().write_checkpoint(&checkpoint)?;
        tracing::info!(job = self.name(), partitions = ?checkpoint.partitions.keys().collect::<Vec<_>>(), "state checkpoint written");
        Ok(())
    }

    /// A silent partition stops holding the watermark back only once the broker confirms it
    /// has nothing left to read (see [`crate::watermark`]).
    fn ask_broker_about_silent_partitions(&self, running: &mut Running, now: Instant) {
        for partition in running.processor.unconfirmed_idle(now) {
            let at_end = read_to_end(&running.consumer, &self.topics.source, partition);
            if !at_end {
                tracing::debug!(
                    job = self.name(),
                    partition,
                    "partition silent for the idle timeout, but records are left: not idle"
                );
            }
            running.processor.broker_says(partition, at_end, now);
        }
    }

    fn start(&self) -> Result<Running> {
        let job = self.name();
        if let Some(join) = self.pipeline.join() {
            // docs/design/joins.md, milestone 5: the table reader, held rows and the table
            // watermark. Until then a joining job runs in backfills only.
            return Err(StreamError::Config {
                job: job.to_string(),
                message: format!(
                    "the SQL joins `{}` FOR SYSTEM_TIME AS OF the event time: temporal joins run in the batch layer (`sluice backfill`) so far, not in the speed layer; its raw tables are landed by `sluice ingest`",
                    join.table_input()
                ),
            });
        }
        let context = GroupContext::new(job, &self.topics.source, "speed", self.metrics.clone());
        let consumer: BaseConsumer<GroupContext> =
            consumer_config(&self.config, &self.config.group_id, "")
                .create_with_context(context)
                .map_err(kafka(job, "creating the consumer"))?;
        let partitions = partition_count(job, &consumer, &self.topics.source)?;
        ensure_topics(
            job,
            &self.config,
            &self.topics,
            partitions,
            self.pipeline.stateful().is_some(),
        )?;
        let producer = self.producer()?;
        let (store, checkpoint) =
            StateStore::open(job, &self.config.state_dir, &self.job.plan_fingerprint())?;
        if let Some(checkpoint) = &checkpoint {
            tracing::info!(job, partitions = ?checkpoint.partitions.keys().collect::<Vec<_>>(), "state kept from a clean stop; assigned partitions replay only newer changelog records");
        }
        let watermarks = Watermarks::new(
            self.job.spec.source.watermark_delay,
            self.config.idle_timeout,
        );
        let decoder = sluice_core::decode::for_job(&self.job, self.config.max_record_bytes)?;
        let schemas = SchemaFetcher::for_job(&self.job)?;
        let processor = Processor::new(
            self.job.clone(),
            self.pipeline.clone(),
            store,
            watermarks,
            decoder,
        );
        consumer.subscribe(&[&self.topics.source]).map_err(kafka(
            job,
            format!("subscribing to `{}`", self.topics.source),
        ))?;
        Ok(Running {
            consumer,
            producer,
            processor,
            schemas,
            assigned: Vec::new(),
            summary: RunSummary::default(),
            consecutive_failures: 0,
            checkpoint: checkpoint.map(|c| c.partitions).unwrap_or_default(),
        })
    }

    fn producer(&self) -> Result<BaseProducer<DeliveryContext>> {
        let job = self.name();
        let client = producer_config(&self.config);
        let producer: BaseProducer<DeliveryContext> = client
            .create_with_context(DeliveryContext::default())
            .map_err(kafka(job, "creating the producer"))?;
        if self.config.guarantee == Guarantee::ExactlyOnce {
            // Also aborts whatever transaction a crashed predecessor with this id left open.
            producer
                .init_transactions(REQUEST_TIMEOUT)
                .map_err(kafka(job, "initialising transactions (use --guarantee at-least-once for brokers without them)"))?;
        }
        Ok(producer)
    }

    /// Polls until the batch is full, its linger has passed, or `stop` is set. Rebalances are
    /// applied as they happen; records of revoked partitions are dropped (their new owner
    /// reprocesses them from the committed offset).
    fn poll_batch(&self, running: &mut Running, stop: &AtomicBool) -> Result<Vec<SourceRecord>> {
        let mut records: Vec<SourceRecord> = Vec::new();
        let mut bytes = 0;
        let mut deadline = Instant::now() + self.config.batch_linger;
        let mut first = true;
        while records.len() < self.config.batch_max_records
            && bytes < self.config.batch_max_bytes
            && !stop.load(Ordering::SeqCst)
        {
            let timeout = deadline.saturating_duration_since(Instant::now());
            if timeout.is_zero() {
                break;
            }
            let polled = match running.consumer.poll(timeout) {
                None => None,
                Some(Err(e)) => {
                    tracing::warn!(job = self.name(), error = %e, "consumer error");
                    None
                }
                Some(Ok(message)) => Some(source_record(&message)),
            };
            // Rebalance callbacks ran inside poll: restore or drop partitions before using the record.
            self.apply_changes(running, &mut records)?;
            if let Some(record) = polled
                && running.assigned.contains(&record.partition)
            {
                if first {
                    deadline = Instant::now() + self.config.batch_linger;
                    first = false;
                }
                bytes += record.key.as_ref().map_or(0, Vec::len)
                    + record.payload.as_ref().map_or(0, Vec::len);
                records.push(record);
            }
        }
        Ok(records)
    }

    fn apply_changes(&self, running: &mut Running, records: &mut Vec<SourceRecord>) -> Result<()> {
        for change in running.consumer.context().take_changes() {
            match change {
                Change::Assigned(partitions) => {
                    for partition in partitions {
                        self.restore(running, partition)?;
                        running.assigned.push(partition);
                    }
                }
                Change::Revoked(partitions) => {
                    records.retain(|r| !partitions.contains(&r.partition));
                    for partition in partitions {
                        running.checkpoint.remove(&partition);
                        running.processor.revoke(partition)?;
                        running.assigned.retain(|p| *p != partition);
                        tracing::info!(job = self.name(), partition, "partition revoked");
                    }
                }
            }
        }
        Ok(())
    }

    fn restore(&self, running: &mut Running, partition: i32) -> Result<()> {
        let started = Instant::now();
        // With read_committed, fetching committed offsets waits until no transaction of this
        // group is pending, so the changelog read below includes the last committed batch.
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topics.source, partition);
        running
            .consumer
            .committed_offsets(list, REQUEST_TIMEOUT)
            .map_err(kafka(
                self.name(),
                format!("reading the committed offset of partition {partition}"),
            ))?;
        let kept = running.checkpoint.remove(&partition);
        let processor = &mut running.processor;
        let (mut restoring, from) = match kept {
            Some(kept) => (
                Restoring::resume(partition, kept.watermark),
                Offset::Offset(kept.changelog_offset),
            ),
            None => (processor.start_restore(partition)?, Offset::Beginning),
        };
        let records = read_changelog(
            self.name(),
            &self.config,
            (&self.topics.speed, partition, from),
            RESTORE_DEADLINE,
            (RESTORE_CHUNK_RECORDS, RESTORE_CHUNK_BYTES),
            |chunk| processor.restore_chunk(&mut restoring, chunk),
        )?;
        let operator_records = if processor.pipeline().stateful().is_some() {
            // Always the whole `<job>.state` partition: a checkpoint does not cover it, and
            // it is bounded by the horizon and the lateness.
            processor.start_operator_restore(partition)?;
            read_changelog(
                self.name(),
                &self.config,
                (&self.topics.state, partition, Offset::Beginning),
                RESTORE_DEADLINE,
                (RESTORE_CHUNK_RECORDS, RESTORE_CHUNK_BYTES),
                |chunk| processor.restore_operator_chunk(partition, chunk),
            )?
        } else {
            0
        };
        let records = records + operator_records;
        processor.finish_restore(restoring, Instant::now())?;
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .restore_seconds
            .with_label_values(&[self.name()])
            .observe(seconds);
        match kept {
            Some(kept) => tracing::info!(
                job = self.name(),
                partition,
                records,
                seconds,
                from_offset = kept.changelog_offset,
                "partition assigned; state restored from the checkpoint and the changelog after it"
            ),
            None => tracing::info!(
                job = self.name(),
                partition,
                records,
                seconds,
                "partition assigned; state restored from the changelog"
            ),
        }
        Ok(())
    }

    fn commit(
        &self,
        running: &mut Running,
        output: &Output,
    ) -> std::result::Result<(), KafkaError> {
        let exactly_once = self.config.guarantee == Guarantee::ExactlyOnce;
        if exactly_once {
            running.producer.begin_transaction()?;
        }
        self.produce_all(running, output)?;
        let offsets = self.offsets(&output.next_offsets)?;
        if exactly_once {
            // Without group metadata (not yet in a group) the offsets cannot join the transaction.
            let group = running
                .consumer
                .group_metadata()
                .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
            if offsets.count() > 0 {
                running
                    .producer
                    .send_offsets_to_transaction(&offsets, &group, REQUEST_TIMEOUT)?;
            }
            running.producer.commit_transaction(REQUEST_TIMEOUT)
        } else {
            running.producer.flush(REQUEST_TIMEOUT)?;
            let failed = running.producer.context().take_failures();
            if failed > 0 {
                tracing::warn!(
                    job = self.name(),
                    failed,
                    "deliveries failed; not committing offsets"
                );
                return Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail));
            }
            if offsets.count() > 0 {
                running.consumer.commit(&offsets, CommitMode::Sync)?;
            }
            Ok(())
        }
    }

    fn offsets(
        &self,
        next: &BTreeMap<i32, i64>,
    ) -> std::result::Result<TopicPartitionList, KafkaError> {
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in next {
            list.add_partition_offset(&self.topics.source, partition, Offset::Offset(offset))?;
        }
        Ok(list)
    }

    /// A failed transaction: abort it, rewind every assigned partition to its committed offset
    /// and restore its state, so the batch is redone from committed facts only.
    fn recover(&self, running: &mut Running, error: KafkaError) -> Result<()> {
        let job = self.name();
        if let KafkaError::Transaction(e) = &error
            && e.is_fatal()
        {
            return Err(kafka(
                job,
                "committing a micro-batch (fatal; another instance fenced this one?)",
            )(error));
        }
        tracing::warn!(job, error = %error, "micro-batch failed; aborting and rewinding");
        self.metrics
            .transaction_aborts
            .with_label_values(&[job])
            .inc();
        running.summary.aborted += 1;
        if self.config.guarantee == Guarantee::ExactlyOnce {
            self.abort(running)?;
        }
        running.producer.context().take_failures();
        running.consecutive_failures += 1;
        if running.consecutive_failures > MAX_CONSECUTIVE_FAILURES {
            return Err(kafka(
                job,
                format!(
                    "committing a micro-batch ({MAX_CONSECUTIVE_FAILURES} attempts in a row failed)"
                ),
            )(error));
        }
        std::thread::sleep(Duration::from_millis(200) * running.consecutive_failures);
        let committed = running
            .consumer
            .committed(REQUEST_TIMEOUT)
            .map_err(kafka(job, "reading committed offsets"))?;
        running.processor.forget_emitted();
        for partition in running.assigned.clone() {
            let offset = committed
                .find_partition(&self.topics.source, partition)
                .map(|e| e.offset())
                .filter(|o| matches!(o, Offset::Offset(_)))
                .unwrap_or(Offset::Beginning);
            // A partition assigned during the failed batch is not fetching yet (seek refuses);
            // it will start from the committed offset anyway.
            if let Err(e) =
                running
                    .consumer
                    .seek(&self.topics.source, partition, offset, REQUEST_TIMEOUT)
            {
                tracing::warn!(job, partition, error = %e, "could not rewind; the partition starts from its committed offset");
            }
            running.processor.revoke(partition)?;
            self.restore(running, partition)?;
        }
        Ok(())
    }

    /// Aborts the open transaction. librdkafka waits for outstanding deliveries first, and with
    /// the event API those only complete while someone serves the queue: flush does.
    fn abort(&self, running: &Running) -> Result<()> {
        let job = self.name();
        let _ = running.producer.flush(REQUEST_TIMEOUT);
        let mut attempts = 0;
        loop {
            match running.producer.abort_transaction(REQUEST_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => {
                    attempts += 1
                }
                Err(e) => return Err(kafka(job, "aborting a failed micro-batch")(e)),
            }
        }
    }

    fn observe_commit(&self, running: &mut Running, output: &Output, first_record: Instant) {
        running.consecutive_failures = 0;
        let job = self.name();
        let summary = &mut running.summary;
        summary.batches += 1;
        summary.records_in += output.consumed.values().sum::<u64>();
        summary.dlq += output.dlq.len() as u64;
        summary.late += output.late.len() as u64;
        let m = &self.metrics;
        m.batch_latency
            .with_label_values(&[job])
            .observe(first_record.elapsed().as_secs_f64());
        for (topic, count) in [
            (&self.topics.speed, output.speed.len()),
            (&self.topics.results, output.results.len()),
            (&self.topics.dlq, output.dlq.len()),
            (&self.topics.late, output.late.len()),
            (&self.topics.state, output.state.len()),
        ] {
            m.records_out
                .with_label_values(&[job, topic])
                .inc_by(count as u64);
        }
        for (topic, count) in self.routed_counts(output) {
            m.records_out.with_label_values(&[job, topic]).inc_by(count);
        }
        for diverted in &output.dlq {
            m.dlq_records
                .with_label_values(&[job, diverted.error_type.as_str()])
                .inc();
        }
        for violations in &output.violations {
            m.check_violations
                .with_label_values(&[job, &violations.check, violations.severity.as_str()])
                .inc_by(violations.rows as u64);
        }
        m.late_records
            .with_label_values(&[job])
            .inc_by(output.late.len() as u64);
        if output.deduplicated > 0 {
            m.dedup_dropped
                .with_label_values(&[job])
                .inc_by(output.deduplicated as u64);
        }
        m.speed_tombstones
            .with_label_values(&[job])
            .inc_by(output.tombstoned as u64);
        for (partition, count) in &output.consumed {
            m.records_in
                .with_label_values(&[job, &self.topics.source, &partition.to_string()])
                .inc_by(*count);
        }
        self.observe_idle(running);
    }

    fn observe_idle(&self, running: &Running) {
        let job = self.name();
        self.metrics
            .state_keys
            .with_label_values(&[job])
            .set(running.processor.state_keys() as i64);
        if let Some(watermark) = running.processor.job_watermark() {
            let now = chrono::Utc::now().timestamp_micros();
            self.metrics
                .watermark_lag
                .with_label_values(&[job])
                .set((now - watermark) as f64 / 1e6);
        }
    }
}

fn source_record(message: &rdkafka::message::BorrowedMessage<'_>) -> SourceRecord {
    SourceRecord {
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
    }
}
