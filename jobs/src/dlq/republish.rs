//! The replay loop: consume the DLQ in the replay's consumer group and re-publish the matching
//! records, one Kafka transaction per batch.
//!
//! A batch's transaction holds the re-published records and the DLQ offsets the batch consumed
//! (`send_offsets_to_transaction`, matching records or not), so a batch is either published
//! and consumed or neither. A replay killed mid-batch leaves its transaction open; the next run
//! with the same transactional id aborts it in `init_transactions` and resumes from the last
//! committed offsets, so every record is re-published once. Any failure aborts the open batch
//! and stops the run: what it committed stands, and running the command again resumes.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;
use sluice_kafka::send_waiting;

use super::record::{self, Origin};
use super::replay::Filter;
use super::scan::{Range, STALL};
use super::{DlqError, REQUEST_TIMEOUT};

/// The header every re-published record carries: `<dlq topic>/<partition>/<offset>`.
pub(crate) const REPLAYED_FROM: &str = "sluice.replayed.from";
const POLL: Duration = Duration::from_millis(200);
/// Plain progress lines (stderr not a terminal) come at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What a replay re-publishes, and where.
pub(crate) struct Plan<'a> {
    pub dlq: &'a str,
    pub target: &'a str,
    pub target_partitions: i32,
    /// Re-publishing to the source topic: records go back to their source partition.
    pub keep_partitions: bool,
    /// No `--to-topic`: records without Sluice's headers are skipped (they name no source).
    pub require_origin: bool,
    pub filter: &'a Filter,
    pub batch_size: usize,
    pub group: &'a str,
    pub transactional_id: &'a str,
}

/// What a replay did with the records it consumed.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(crate) struct Counts {
    /// DLQ records consumed.
    pub scanned: u64,
    /// Records the filters selected.
    pub matched: u64,
    /// Matching records re-published (with `--dry-run`: that would be).
    pub republished: u64,
    pub skipped_by_filter: u64,
    /// Matching records without Sluice's source headers, not re-published to the source topic.
    pub skipped_no_origin: u64,
    /// Matching records whose DLQ value holds only the first bytes of the original.
    pub skipped_truncated: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.scanned += other.scanned;
        self.matched += other.matched;
        self.republished += other.republished;
        self.skipped_by_filter += other.skipped_by_filter;
        self.skipped_no_origin += other.skipped_no_origin;
        self.skipped_truncated += other.skipped_truncated;
    }
}

/// The replay consumer's context: notices a revocation (the open batch's records would be
/// consumed again from the committed offsets) and keeps the end of a partition, which a
/// reader expects, out of the error log.
#[derive(Default)]
pub(crate) struct ReplayContext {
    revoked: AtomicBool,
}

impl ClientContext for ReplayContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::warn!(error = %error, reason, "kafka replay consumer");
        }
    }
}

impl ConsumerContext for ReplayContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance
            && list.count() > 0
        {
            self.revoked.store(true, Ordering::SeqCst);
        }
    }
}

/// The batch being built: its counts, and the DLQ offsets it consumed per partition.
#[derive(Default)]
struct Batch {
    in_transaction: bool,
    counts: Counts,
    first: BTreeMap<i32, i64>,
    next: BTreeMap<i32, i64>,
}

/// The result of a replay that read everything up to its stop offsets.
pub(crate) struct Outcome {
    pub counts: Counts,
    pub batches: u64,
}

pub(crate) struct Republisher<'a> {
    plan: Plan<'a>,
    consumer: &'a BaseConsumer<ReplayContext>,
    /// `None`: a dry run.
    producer: Option<&'a BaseProducer>,
    stops: Vec<i64>,
    /// The next offset per partition (for messages when a read stalls).
    positions: Vec<i64>,
    done: Vec<bool>,
    batch: Batch,
    committed: Counts,
    batches: u64,
    progress: Progress,
}

impl<'a> Republisher<'a> {
    /// `ranges` holds every DLQ partition, in order: from the committed offset to the stop.
    pub fn new(
        plan: Plan<'a>,
        consumer: &'a BaseConsumer<ReplayContext>,
        producer: Option<&'a BaseProducer>,
        ranges: &[Range],
        show_bar: bool,
    ) -> Republisher<'a> {
        let total = ranges.iter().map(|r| (r.stop - r.from).max(0) as u64).sum();
        let dry_run = producer.is_none();
        Republisher {
            plan,
            consumer,
            producer,
            stops: ranges.iter().map(|r| r.stop).collect(),
            positions: ranges.iter().map(|r| r.from).collect(),
            done: ranges.iter().map(|r| r.from >= r.stop).collect(),
            batch: Batch::default(),
            committed: Counts::default(),
            batches: 0,
            progress: Progress::new(total, show_bar, dry_run),
        }
    }

    /// Replays until every partition is read to its stop offset. On an error the open batch is
    /// aborted; the committed ones stand.
    pub fn run(mut self) -> Result<Outcome, DlqError> {
        let result = self.drive();
        if result.is_err() {
            self.abort_open();
        }
        self.progress.finish();
        result.map(|()| Outcome {
            counts: self.committed,
            batches: self.batches,
        })
    }

    fn drive(&mut self) -> Result<(), DlqError> {
        // A copy of the reference: polled messages borrow the consumer, not `self`.
        let consumer = self.consumer;
        let mut last_event = Instant::now();
        let mut last_error: Option<String> = None;
        while self.done.iter().any(|done| !done) {
            let polled = consumer.poll(POLL);
            if consumer.context().revoked.load(Ordering::SeqCst) {
                return Err(DlqError::Rebalanced {
                    topic: self.plan.dlq.to_string(),
                    group: self.plan.group.to_string(),
                });
            }
            match polled {
                None => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(slot) = self.slot(partition) {
                        self.done[slot] = true;
                    }
                    last_event = Instant::now();
                }
                Some(Err(error)) => {
                    tracing::warn!(topic = self.plan.dlq, error = %error, "reading the dead-letter topic");
                    last_error = Some(error.to_string());
                }
                Some(Ok(message)) => {
                    last_event = Instant::now();
                    self.take(&message)?;
                }
            }
            let all_read = self.done.iter().all(|done| *done);
            let scanned = self.batch.counts.scanned;
            if scanned >= self.plan.batch_size as u64 || (all_read && scanned > 0) {
                self.commit()?;
            }
            if last_event.elapsed() > STALL {
                return Err(self.stalled(last_error.take()));
            }
            self.progress
                .update(&self.committed, &self.batch.counts, self.batches);
        }
        self.commit()
    }

    /// The index of `partition` in the per-partition vectors.
    fn slot(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition)
            .ok()
            .filter(|&i| i < self.done.len())
    }

    fn take(&mut self, message: &BorrowedMessage<'_>) -> Result<(), DlqError> {
        let (partition, offset) = (message.partition(), message.offset());
        let Some(slot) = self.slot(partition) else {
            return Ok(());
        };
        if self.done[slot] {
            return Ok(());
        }
        if offset >= self.stops[slot] {
            // Dead-lettered after the replay started: left for the next run.
            self.done[slot] = true;
            return Ok(());
        }
        let headers = record::headers(message);
        let origin = Origin::of(&headers);
        self.batch.counts.scanned += 1;
        let timestamp_ms = message.timestamp().to_millis();
        if !self.plan.filter.matches(origin.error_type, timestamp_ms) {
            self.batch.counts.skipped_by_filter += 1;
        } else if origin.truncated {
            self.batch.counts.matched += 1;
            self.batch.counts.skipped_truncated += 1;
            tracing::warn!(
                topic = self.plan.dlq,
                partition,
                offset,
                "a truncated dead letter (sluice.payload.truncated) holds only the first bytes of its record: not re-published"
            );
        } else if self.plan.require_origin && !origin.is_sluices() {
            self.batch.counts.matched += 1;
            self.batch.counts.skipped_no_origin += 1;
        } else {
            self.batch.counts.matched += 1;
            self.publish(message, &origin)?;
            self.batch.counts.republished += 1;
        }
        self.batch.first.entry(partition).or_insert(offset);
        self.batch.next.insert(partition, offset + 1);
        self.positions[slot] = offset + 1;
        if offset + 1 >= self.stops[slot] {
            self.done[slot] = true;
        }
        Ok(())
    }

    /// The original key and value, exactly as the DLQ holds them, with only the
    /// `sluice.replayed.from` header (the source record had none of Sluice's).
    fn publish(
        &mut self,
        message: &BorrowedMessage<'_>,
        origin: &Origin<'_>,
    ) -> Result<(), DlqError> {
        let Some(producer) = self.producer else {
            return Ok(());
        };
        self.begin()?;
        let from = format!(
            "{}/{}/{}",
            self.plan.dlq,
            message.partition(),
            message.offset()
        );
        let headers = OwnedHeaders::new().insert(Header {
            key: REPLAYED_FROM,
            value: Some(&from),
        });
        let mut out = BaseRecord::<[u8], [u8]>::to(self.plan.target).headers(headers);
        if let Some(key) = message.key() {
            out = out.key(key);
        }
        if let Some(value) = message.payload() {
            out = out.payload(value);
        }
        if let Some(partition) = self.partition_for(origin) {
            out = out.partition(partition);
        }
        send_waiting(producer, out).map_err(|source| DlqError::Produce {
            topic: self.plan.dlq.to_string(),
            partition: message.partition(),
            offset: message.offset(),
            target: self.plan.target.to_string(),
            source,
        })
    }

    /// The record's source partition when it goes back to its source topic and that partition
    /// exists; else `None` (the producer partitions by key).
    fn partition_for(&self, origin: &Origin<'_>) -> Option<i32> {
        if !self.plan.keep_partitions || origin.source_topic != Some(self.plan.target) {
            return None;
        }
        origin
            .source_partition
            .filter(|p| (0..self.plan.target_partitions).contains(p))
    }

    fn begin(&mut self) -> Result<(), DlqError> {
        if let Some(producer) = self.producer
            && !self.batch.in_transaction
        {
            producer
                .begin_transaction()
                .map_err(|source| self.commit_error(source))?;
            self.batch.in_transaction = true;
        }
        Ok(())
    }

    /// Commits the batch: its records and its DLQ offsets in one transaction (a dry run only
    /// counts it).
    fn commit(&mut self) -> Result<(), DlqError> {
        if self.batch.counts.scanned == 0 {
            return Ok(());
        }
        if let Some(producer) = self.producer {
            // A batch of filtered-out records still commits how far it read.
            self.begin()?;
            let offsets = self.offsets().map_err(|source| self.commit_error(source))?;
            // Without group metadata (not in the group) the offsets cannot join the transaction.
            let group = self
                .consumer
                .group_metadata()
                .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))
                .map_err(|source| self.commit_error(source))?;
            producer
                .send_offsets_to_transaction(&offsets, &group, REQUEST_TIMEOUT)
                .map_err(|source| self.commit_error(source))?;
            producer
                .commit_transaction(REQUEST_TIMEOUT)
                .map_err(|source| self.commit_error(source))?;
            self.batch.in_transaction = false;
        }
        self.committed.add(&self.batch.counts);
        self.batches += 1;
        self.batch = Batch::default();
        Ok(())
    }

    fn offsets(&self) -> Result<TopicPartitionList, KafkaError> {
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in &self.batch.next {
            list.add_partition_offset(self.plan.dlq, partition, Offset::Offset(next))?;
        }
        Ok(list)
    }

    fn commit_error(&self, source: KafkaError) -> DlqError {
        if let KafkaError::Transaction(e) = &source
            && e.is_fatal()
        {
            return DlqError::Fenced {
                transactional_id: self.plan.transactional_id.to_string(),
                source,
            };
        }
        let ranges: Vec<String> = self
            .batch
            .first
            .iter()
            .map(|(partition, first)| {
                let last = self.batch.next.get(partition).map_or(*first, |n| n - 1);
                format!("[{partition}] {first}..={last}")
            })
            .collect();
        DlqError::Commit {
            topic: self.plan.dlq.to_string(),
            ranges: ranges.join(", "),
            target: self.plan.target.to_string(),
            source,
        }
    }

    /// Aborts the open transaction, if any. librdkafka waits for outstanding deliveries first,
    /// and those complete only while someone serves the queue: flush does.
    fn abort_open(&mut self) {
        let Some(producer) = self.producer else {
            return;
        };
        if !self.batch.in_transaction {
            return;
        }
        let _ = producer.flush(REQUEST_TIMEOUT);
        let mut attempts = 0;
        loop {
            match producer.abort_transaction(REQUEST_TIMEOUT) {
                Ok(()) => {
                    self.batch.in_transaction = false;
                    return;
                }
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => {
                    attempts += 1;
                }
                Err(error) => {
                    tracing::warn!(transactional_id = self.plan.transactional_id, error = %error, "could not abort the open batch; the broker aborts it after transaction.timeout.ms, or the next run does at its start");
                    return;
                }
            }
        }
    }

    fn stalled(&self, last_error: Option<String>) -> DlqError {
        let slot = self.done.iter().position(|done| !done).unwrap_or(0);
        let partition = slot as i32;
        let assigned = self.consumer.assignment().ok().map(|list| {
            list.elements_for_topic(self.plan.dlq)
                .iter()
                .any(|e| e.partition() == partition)
        });
        let mut detail = String::new();
        if assigned == Some(false) {
            detail.push_str(&format!(
                "; the partition is not assigned to this replay (another consumer in group `{}`?)",
                self.plan.group
            ));
        }
        if let Some(error) = last_error {
            detail.push_str(&format!("; last error: {error}"));
        }
        DlqError::Stalled {
            topic: self.plan.dlq.to_string(),
            partition,
            offset: self.positions.get(slot).copied().unwrap_or(0),
            stop: self.stops.get(slot).copied().unwrap_or(0),
            waited: STALL,
            detail,
        }
    }
}

/// Progress on stderr: a bar on a terminal, else a line per committed batch at most every
/// [`PROGRESS_EVERY`] (for logs, and for whoever waits for a replay to be under way).
struct Progress {
    bar: ProgressBar,
    plain: bool,
    total: u64,
    dry_run: bool,
    last_line: Option<Instant>,
    last_batches: u64,
}

impl Progress {
    fn new(total: u64, show_bar: bool, dry_run: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal && show_bar {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} dead letters read, {msg} ({elapsed}, ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            plain: !terminal,
            total,
            dry_run,
            last_line: None,
            last_batches: 0,
        }
    }

    fn update(&mut self, committed: &Counts, open: &Counts, batches: u64) {
        let verb = if self.dry_run {
            "would re-publish"
        } else {
            "re-published"
        };
        self.bar.set_position(committed.scanned + open.scanned);
        self.bar
            .set_message(format!("{} {verb}", committed.republished));
        if !self.plain || batches == self.last_batches {
            return;
        }
        if self
            .last_line
            .is_some_and(|at| at.elapsed() < PROGRESS_EVERY)
        {
            return;
        }
        eprintln!(
            "dlq replay: {} of at most {} dead letters read, {} {verb}, {batches} batches committed",
            committed.scanned, self.total, committed.republished
        );
        self.last_line = Some(Instant::now());
        self.last_batches = batches;
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
