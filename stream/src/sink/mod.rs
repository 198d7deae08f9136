//! The loop every sink shares: consume a topic, buffer, and commit rows together with the
//! offsets they cover to a [`CommitTarget`], exactly once.
//!
//! A sink is its own consumer group, but its position is what its target last committed (a
//! Delta transaction action per partition, an `ETLCheckpoint` row per partition): on
//! assignment the loop asks the target and seeks there, and records below it are skipped, so
//! a crash or rebalance never writes an offset twice. Kafka offsets are committed after each
//! target commit only so that lag shows up in the usual tools.
//!
//! Ownership: a sink evicted during a long commit may find that another one took its
//! partitions over and committed them. Targets check, in (or just before) the commit, that
//! each partition's committed offset is still the one this sink resumed from, and report the
//! partitions that moved instead of writing them; the loop then drops their buffer and seeks
//! to where the other sink got to. The same check makes a retried commit idempotent: a
//! commit whose outcome was lost (connection reset after COMMIT) shows up as moved.
//!
//! Backpressure: while a commit runs the loop pauses its partitions, so librdkafka stops
//! fetching. When the target is unavailable (store down, registry down) the partitions stay
//! paused, the buffer is kept, and the commit is retried with backoff (0.2 s doubling to 5 s);
//! memory stays at most `commit_bytes` of buffered records plus librdkafka's fetch queue.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::StreamConfig;
use crate::error::{Result, StreamError, kafka};
use crate::kafka::{Change, GroupContext, REQUEST_TIMEOUT, consumer_config};
use crate::metrics::StreamMetrics;

pub(crate) mod delta;
pub mod health;
pub mod postgres;

pub use delta::{LakeSink, LakeSinkConfig};

/// One buffered record: what a target needs to write it.
#[derive(Debug, Clone)]
pub(crate) struct SinkRecord {
    pub offset: i64,
    /// The Kafka timestamp (ms since the epoch).
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    /// `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Only for targets that ask for them ([`CommitTarget::wants_headers`]).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Buffered records per partition, in offset order.
pub(crate) type Buffered = BTreeMap<i32, Vec<SinkRecord>>;

/// What a target says after a commit.
#[derive(Debug, Default)]
pub(crate) struct CommitOutcome {
    /// Rows written (what the summary and metrics count).
    pub rows: usize,
    /// Partitions another writer moved since this sink resumed them (not written): the next
    /// offset to read that the target now holds (`None`: nothing committed).
    pub moved: BTreeMap<i32, Option<i64>>,
}

/// Why a target could not act now.
#[derive(Debug)]
pub(crate) enum SinkFailure {
    /// The store is unreachable or refused for a reason that passes (connection lost,
    /// shutdown, conflict): keep the buffer, pause, retry later.
    Unavailable(String),
    /// Retrying cannot help (bad configuration, a bug): the sink stops with this error.
    Fatal(StreamError),
}

impl From<StreamError> for SinkFailure {
    fn from(error: StreamError) -> SinkFailure {
        SinkFailure::Fatal(error)
    }
}

/// What a target sees of the loop: the consumer (assignment, positions, partition counts)
/// and the topic it reads.
pub(crate) struct SinkContext<'a> {
    pub consumer: &'a BaseConsumer<GroupContext>,
    pub topic: &'a str,
}

/// Where a sink commits. Rules:
/// - [`committed`](Self::committed) is the truth about positions: the loop resumes every
///   assigned partition at the offset it returns, and never holds a record below it.
/// - [`commit`](Self::commit) writes all records of `batch` with, per partition, the offset
///   after its last record, atomically; a partition whose committed offset is no longer
///   `expected` is reported in [`CommitOutcome::moved`] and not written.
/// - A failed commit leaves nothing behind (or something `commit` recognises as moved next
///   time); the loop retries it with the same records.
pub(crate) trait CommitTarget {
    /// Names the sink in logs, metrics and `/health`.
    fn name(&self) -> &str;

    /// Whether records must carry their headers.
    fn wants_headers(&self) -> bool {
        false
    }

    /// The next offset to read of each of `partitions` that has a committed position.
    /// Called on every assignment (the previous owner may have committed since).
    fn committed(
        &mut self,
        ctx: &SinkContext<'_>,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, i64>, SinkFailure>;

    /// Whether `pending` can be committed now; `Unavailable` pauses and retries.
    fn ready(&mut self, _pending: &Buffered) -> Result<(), SinkFailure> {
        Ok(())
    }

    fn commit(
        &mut self,
        ctx: &SinkContext<'_>,
        batch: &Buffered,
        expected: &BTreeMap<i32, Option<i64>>,
    ) -> Result<CommitOutcome, SinkFailure>;

    /// Called about once per commit interval, whether or not records are pending.
    fn tick(&mut self, _ctx: &SinkContext<'_>, _pending: &Buffered) -> Result<(), SinkFailure> {
        Ok(())
    }
}

/// When a sink commits.
#[derive(Debug, Clone)]
pub struct CommitPolicy {
    /// Commit at least this often while records arrive.
    pub interval: Duration,
    /// ... or as soon as this many payload bytes are buffered.
    pub bytes: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SinkSummary {
    pub commits: u64,
    pub rows: u64,
    pub skipped_duplicates: u64,
    /// Commits that failed because the target was unavailable, and were retried.
    pub retries: u64,
}

/// How often the loop looks for partitions whose fetch does not move (see `unstick`).
const STUCK_CHECK: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Pending {
    records: Buffered,
    bytes: usize,
    since: Option<Instant>,
}

impl Pending {
    fn take(&mut self) -> Buffered {
        self.bytes = 0;
        self.since = None;
        std::mem::take(&mut self.records)
    }
}

/// An outage in progress: partitions stay paused until `retry_at`.
struct Outage {
    retry_at: Instant,
    backoff: Duration,
}

/// Runs `target` over `topic` until `stop` is set, then commits what it holds once more.
/// Blocking: give it its own thread.
pub(crate) struct SinkLoop<'a, T: CommitTarget> {
    pub job: &'a str,
    pub topic: &'a str,
    /// The consumer group (its Kafka offsets are for lag tools only).
    pub group: &'a str,
    pub client: &'a StreamConfig,
    pub policy: &'a CommitPolicy,
    pub metrics: &'a StreamMetrics,
    pub health: &'a health::SinkHealth,
    pub target: T,
}

impl<T: CommitTarget> SinkLoop<'_, T> {
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<SinkSummary> {
        let (job, topic) = (self.job, self.topic);
        let suffix = format!(".{}", self.target.name());
        let consumer: BaseConsumer<GroupContext> =
            consumer_config(self.client, self.group, &suffix)
                .create_with_context(GroupContext::new(
                    job,
                    topic,
                    self.target.name(),
                    self.metrics.clone(),
                ))
                .map_err(kafka(
                    job,
                    format!("creating the {} sink's consumer", suffix),
                ))?;
        // A sink of the speed layer's topics may start before the daemon has created them,
        // and librdkafka rechecks a missing subscribed topic only every few minutes.
        let mut waited = false;
        while !stop.load(Ordering::SeqCst)
            && !sluice_kafka::partition_count(&consumer, topic, REQUEST_TIMEOUT)
                .is_ok_and(|n| n > 0)
        {
            if !waited {
                tracing::info!(
                    job,
                    sink = self.target.name(),
                    topic,
                    "waiting for the topic to exist"
                );
                waited = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        consumer.subscribe(&[topic]).map_err(kafka(
            job,
            format!("subscribing the {} sink to `{topic}`", self.target.name()),
        ))?;
        self.health.ok(self.target.name());
        self.up(true);
        // At zero from the start, so that `increase()` sees the first commit and retry.
        let labels = [job, self.target.name()];
        for counter in [
            &self.metrics.sink_retries,
            &self.metrics.sink_commits,
            &self.metrics.sink_rows,
        ] {
            counter.with_label_values(&labels).inc_by(0);
        }
        let mut state = LoopState {
            next: HashMap::new(),
            pending: Pending {
                records: BTreeMap::new(),
                bytes: 0,
                since: None,
            },
            summary: SinkSummary::default(),
            outage: None,
            last_tick: None,
            unplaced: false,
            unpositioned: HashSet::new(),
            delivered: HashSet::new(),
            stuck_checked: None,
            paused: HashSet::new(),
        };
        while !stop.load(Ordering::SeqCst) {
            let polled = consumer.poll(Duration::from_millis(100));
            let ctx = SinkContext {
                consumer: &consumer,
                topic,
            };
            self.apply_changes(&ctx, &mut state, &stop)?;
            match polled {
                Some(Ok(message)) => self.take(&ctx, &mut state, &message),
                Some(Err(e)) => {
                    tracing::warn!(job, sink = self.target.name(), error = %e, "sink consumer error")
                }
                None => {}
            }
            let pending = &state.pending;
            let due = pending.bytes >= self.policy.bytes
                || pending
                    .since
                    .is_some_and(|s| s.elapsed() >= self.policy.interval);
            let waiting = state
                .outage
                .as_ref()
                .is_some_and(|o| Instant::now() < o.retry_at);
            // An outage also ends with nothing pending (it began at an assignment).
            if (due || state.outage.is_some()) && !waiting {
                self.commit(&ctx, &mut state)?;
            }
            if state.outage.is_none()
                && state
                    .stuck_checked
                    .is_none_or(|at| at.elapsed() >= STUCK_CHECK)
            {
                state.stuck_checked = Some(Instant::now());
                self.unstick(&ctx, &mut state);
            }
            if state
                .last_tick
                .is_none_or(|at| at.elapsed() >= self.policy.interval)
                && state.outage.is_none()
            {
                state.last_tick = Some(Instant::now());
                match self.target.tick(&ctx, &state.pending.records) {
                    Ok(()) => {}
                    Err(SinkFailure::Unavailable(why)) => {
                        tracing::debug!(job, sink = self.target.name(), %why, "sink tick skipped")
                    }
                    Err(SinkFailure::Fatal(e)) => return Err(e),
                }
            }
        }
        let ctx = SinkContext {
            consumer: &consumer,
            topic,
        };
        state.outage = None;
        if !state.unplaced {
            self.commit(&ctx, &mut state)?;
        }
        if !state.pending.records.is_empty() {
            tracing::warn!(
                job,
                sink = self.target.name(),
                "stopping with records the sink could not commit: they are read again on the next start"
            );
        }
        tracing::info!(job, sink = self.target.name(), summary = ?state.summary, "sink stopped");
        Ok(state.summary)
    }

    fn up(&self, up: bool) {
        self.metrics
            .sink_up
            .with_label_values(&[self.job, self.target.name()])
            .set(i64::from(up));
    }

    fn take(
        &self,
        ctx: &SinkContext<'_>,
        state: &mut LoopState,
        message: &rdkafka::message::BorrowedMessage<'_>,
    ) {
        let partition = message.partition();
        let offset = message.offset();
        state.delivered.insert(partition);
        if state.unpositioned.remove(&partition) && !self.at_start(ctx, partition, offset) {
            // The store has nothing of this partition but the group's Kafka offset is past its
            // start (the store's checkpoints were removed): read it from the beginning.
            tracing::info!(
                job = self.job,
                sink = self.target.name(),
                partition,
                offset,
                "the store has no position for this partition: reading it from the start"
            );
            if let Err(e) =
                ctx.consumer
                    .seek(ctx.topic, partition, Offset::Beginning, REQUEST_TIMEOUT)
            {
                tracing::warn!(job = self.job, partition, error = %e, "could not rewind to the partition's start; retrying on its next record");
                state.unpositioned.insert(partition);
            }
            return;
        }
        if let Some(&next) = state.next.get(&partition).filter(|&&n| offset < n) {
            state.summary.skipped_duplicates += 1;
            tracing::debug!(
                job = self.job,
                sink = self.target.name(),
                partition,
                offset,
                next,
                "sink skips a committed record"
            );
            // The partition is fetching now, so a seek works: skip the rest at once.
            if offset + 1 < next
                && let Err(e) =
                    ctx.consumer
                        .seek(ctx.topic, partition, Offset::Offset(next), REQUEST_TIMEOUT)
            {
                tracing::debug!(job = self.job, partition, error = %e, "sink could not seek; skipping instead");
            }
            return;
        }
        // Read as bytes: rdkafka's own header access panics on a name that is not UTF-8, and
        // anyone may write to the topics a sink reads.
        let headers = if self.target.wants_headers() {
            sluice_kafka::raw_headers(message)
                .into_iter()
                .map(|h| {
                    (
                        String::from_utf8_lossy(h.name).into_owned(),
                        h.value.unwrap_or_default().to_vec(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let record = SinkRecord {
            offset,
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        };
        let pending = &mut state.pending;
        pending.bytes +=
            record.payload.as_ref().map_or(0, Vec::len) + record.key.as_ref().map_or(0, Vec::len);
        pending.since.get_or_insert_with(Instant::now);
        pending.records.entry(partition).or_default().push(record);
    }

    /// Re-seeks partitions whose position has not moved since the last check although the
    /// partition holds more beyond it. Seen against noida-db with read_committed: after a
    /// pause and resume, a fetch that lands in a long run of aborted transactional records
    /// never moves on, while a fresh fetch from the same offset does. A seek to the position
    /// restarts the fetch; on a healthy partition it costs one fetch.
    fn unstick(&self, ctx: &SinkContext<'_>, state: &mut LoopState) {
        let delivered = std::mem::take(&mut state.delivered);
        let Ok(assignment) = self.assignment(ctx) else {
            return;
        };
        for element in assignment.elements_for_topic(ctx.topic) {
            let partition = element.partition();
            if delivered.contains(&partition) || state.pending.records.contains_key(&partition) {
                continue;
            }
            // With nothing pending, everything this partition delivered is committed, so the
            // committed position is where it stands. (Not `position()`: after a revoke and a
            // new assignment it still names records whose buffer the revoke dropped.)
            let Some(&position) = state.next.get(&partition) else {
                continue;
            };
            let Ok((_, high)) =
                ctx.consumer
                    .fetch_watermarks(ctx.topic, partition, REQUEST_TIMEOUT)
            else {
                continue;
            };
            // One offset past the position is the usual closing transaction marker.
            if high > position + 1 {
                tracing::debug!(
                    job = self.job,
                    sink = self.target.name(),
                    partition,
                    position,
                    high,
                    fetch = ?ctx.consumer.context().fetch_state(partition),
                    paused = state.paused.contains(&partition),
                    "partition not moving: re-seeking"
                );
                if let Err(e) = ctx.consumer.seek(
                    ctx.topic,
                    partition,
                    Offset::Offset(position),
                    REQUEST_TIMEOUT,
                ) {
                    tracing::debug!(job = self.job, partition, error = %e, "could not re-seek");
                }
            }
        }
    }

    /// Whether `offset` is the first record `partition` still holds.
    fn at_start(&self, ctx: &SinkContext<'_>, partition: i32, offset: i64) -> bool {
        offset == 0
            || ctx
                .consumer
                .fetch_watermarks(ctx.topic, partition, REQUEST_TIMEOUT)
                .is_ok_and(|(low, _)| offset <= low)
    }

    fn apply_changes(
        &mut self,
        ctx: &SinkContext<'_>,
        state: &mut LoopState,
        stop: &AtomicBool,
    ) -> Result<()> {
        for change in ctx.consumer.context().take_changes() {
            match change {
                Change::Assigned(partitions) => {
                    tracing::debug!(
                        job = self.job,
                        sink = self.target.name(),
                        ?partitions,
                        "sink assigned"
                    );
                    // Without its position the sink cannot read these partitions: wait for
                    // the target without polling (a record polled now could not be placed).
                    // An outage longer than `max.poll.interval.ms` costs a rejoin, and the
                    // new assignment asks again.
                    let committed = loop {
                        match self.target.committed(ctx, &partitions) {
                            Ok(committed) => break committed,
                            Err(SinkFailure::Fatal(e)) => return Err(e),
                            Err(SinkFailure::Unavailable(why)) => {
                                self.note_outage(ctx, state, why);
                                if stop.load(Ordering::SeqCst) {
                                    state.unplaced = true;
                                    return Ok(());
                                }
                                std::thread::sleep(
                                    state.outage.as_ref().map_or(MAX_BACKOFF, |o| o.backoff),
                                );
                            }
                        }
                    };
                    for &partition in &partitions {
                        match committed.get(&partition) {
                            Some(&next) => {
                                state.next.insert(partition, next);
                                tracing::info!(
                                    job = self.job,
                                    sink = self.target.name(),
                                    partition,
                                    next,
                                    "sink resumes after its last commit"
                                );
                            }
                            None => {
                                state.next.remove(&partition);
                                state.unpositioned.insert(partition);
                            }
                        }
                    }
                    // librdkafka keeps a partition the application paused paused across a
                    // revoke and a new assignment: resume what is ours again, unless the
                    // store is still down.
                    // (Only those this sink paused: resuming a partition librdkafka is still
                    // starting can leave it without a fetch.)
                    if state.outage.is_some() {
                        self.pause(ctx, &mut state.paused);
                    } else {
                        let mut list = TopicPartitionList::new();
                        for &partition in partitions.iter().filter(|p| state.paused.contains(p)) {
                            list.add_partition(ctx.topic, partition);
                        }
                        if list.count() > 0 {
                            if let Err(e) = ctx.consumer.resume(&list) {
                                tracing::debug!(job = self.job, error = %e, "resuming reassigned partitions");
                            }
                            state.paused.retain(|p| !partitions.contains(p));
                        }
                    }
                    // Newly assigned partitions get their first tick (e.g. a lake commit
                    // recording an empty partition) at once.
                    state.last_tick = None;
                    // ...but no watchdog seek before they had a whole check interval to start
                    // fetching: a seek while librdkafka starts a partition was seen (noida-db,
                    // librdkafka 2.12) to leave it fetching past records never delivered.
                    state.stuck_checked = Some(Instant::now());
                    state.delivered.clear();
                }
                Change::Revoked(partitions) => {
                    for partition in partitions {
                        state.unpositioned.remove(&partition);
                        if let Some(dropped) = state.pending.records.remove(&partition) {
                            let bytes: usize = dropped
                                .iter()
                                .map(|r| {
                                    r.payload.as_ref().map_or(0, Vec::len)
                                        + r.key.as_ref().map_or(0, Vec::len)
                                })
                                .sum();
                            state.pending.bytes = state.pending.bytes.saturating_sub(bytes);
                        }
                        state.next.remove(&partition);
                    }
                }
            }
        }
        Ok(())
    }

    fn assignment(&self, ctx: &SinkContext<'_>) -> Result<TopicPartitionList> {
        ctx.consumer
            .assignment()
            .map_err(kafka(self.job, "reading the sink's assignment"))
    }

    /// Pauses the assignment; `paused` remembers which partitions this sink paused (librdkafka
    /// keeps them paused across a revoke and a new assignment).
    fn pause(&self, ctx: &SinkContext<'_>, paused: &mut HashSet<i32>) {
        if let Ok(assignment) = self.assignment(ctx) {
            if let Err(e) = ctx.consumer.pause(&assignment) {
                tracing::warn!(job = self.job, sink = self.target.name(), error = %e, "could not pause the sink's partitions");
            }
            paused.extend(assignment.elements().iter().map(|e| e.partition()));
        }
        let paused = self.assignment(ctx).map_or(0, |a| a.count());
        self.metrics
            .sink_paused_partitions
            .with_label_values(&[self.job, self.target.name()])
            .set(paused as i64);
    }

    fn resume(&self, ctx: &SinkContext<'_>, paused: &mut HashSet<i32>) -> Result<()> {
        let assignment = self.assignment(ctx)?;
        ctx.consumer
            .resume(&assignment)
            .map_err(kafka(self.job, "resuming the sink's partitions"))?;
        for element in assignment.elements() {
            paused.remove(&element.partition());
        }
        self.metrics
            .sink_paused_partitions
            .with_label_values(&[self.job, self.target.name()])
            .set(0);
        Ok(())
    }

    fn note_outage(&self, ctx: &SinkContext<'_>, state: &mut LoopState, why: String) {
        let backoff = state
            .outage
            .as_ref()
            .map_or(FIRST_BACKOFF, |o| (o.backoff * 2).min(MAX_BACKOFF));
        if state.outage.is_none() {
            tracing::warn!(job = self.job, sink = self.target.name(), error = %why, "sink unavailable: pausing its partitions and retrying");
        } else {
            tracing::debug!(job = self.job, sink = self.target.name(), error = %why, ?backoff, "sink still unavailable");
        }
        state.outage = Some(Outage {
            retry_at: Instant::now() + backoff,
            backoff,
        });
        state.summary.retries += 1;
        self.metrics
            .sink_retries
            .with_label_values(&[self.job, self.target.name()])
            .inc();
        self.up(false);
        self.pause(ctx, &mut state.paused);
        let paused = self
            .assignment(ctx)
            .map(|a| a.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        self.health.unavailable(self.target.name(), paused, why);
    }

    /// Commits everything pending, unless the target is not ready or unavailable (then the
    /// records stay pending and the partitions paused).
    fn commit(&mut self, ctx: &SinkContext<'_>, state: &mut LoopState) -> Result<()> {
        if state.pending.records.is_empty() {
            if state.outage.take().is_some() {
                self.recovered(ctx, &mut state.paused)?;
            }
            return Ok(());
        }
        if let Err(failure) = self.target.ready(&state.pending.records) {
            return self.failed(ctx, state, failure);
        }
        let expected: BTreeMap<i32, Option<i64>> = state
            .pending
            .records
            .keys()
            .map(|p| (*p, state.next.get(p).copied()))
            .collect();
        self.pause(ctx, &mut state.paused);
        let outcome = self.target.commit(ctx, &state.pending.records, &expected);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(failure) => return self.failed(ctx, state, failure),
        };
        let records = state.pending.take();
        let recovering = state.outage.take().is_some();
        self.resume(ctx, &mut state.paused)?;
        if recovering {
            self.recovered(ctx, &mut state.paused)?;
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, records) in &records {
            if let Some(moved) = outcome.moved.get(partition) {
                tracing::warn!(
                    job = self.job,
                    sink = self.target.name(),
                    partition,
                    ?moved,
                    "another sink committed this partition; dropping the buffer"
                );
                let resume = match moved {
                    Some(next) => {
                        state.next.insert(*partition, *next);
                        Offset::Offset(*next)
                    }
                    None => {
                        state.next.remove(partition);
                        Offset::Beginning
                    }
                };
                // Reading on past a dropped buffer would lose it: a sink that cannot rewind
                // stops (and its restart resumes from the store).
                ctx.consumer
                    .seek(ctx.topic, *partition, resume, REQUEST_TIMEOUT)
                    .map_err(kafka(
                        self.job,
                        format!("rewinding partition {partition} to where another sink got to"),
                    ))?;
                continue;
            }
            if let Some(last) = records.last() {
                state.next.insert(*partition, last.offset + 1);
                let _ = offsets.add_partition_offset(
                    ctx.topic,
                    *partition,
                    Offset::Offset(last.offset + 1),
                );
            }
        }
        state.summary.commits += 1;
        state.summary.rows += outcome.rows as u64;
        tracing::debug!(job = self.job, sink = self.target.name(), rows = outcome.rows, moved = ?outcome.moved, "sink committed");
        let labels = [self.job, self.target.name()];
        self.metrics.sink_commits.with_label_values(&labels).inc();
        self.metrics
            .sink_rows
            .with_label_values(&labels)
            .inc_by(outcome.rows as u64);
        if offsets.count() > 0
            && let Err(e) = ctx.consumer.commit(&offsets, CommitMode::Async)
        {
            tracing::debug!(job = self.job, error = %e, "committing sink offsets (for lag only)");
        }
        Ok(())
    }

    fn failed(
        &self,
        ctx: &SinkContext<'_>,
        state: &mut LoopState,
        failure: SinkFailure,
    ) -> Result<()> {
        match failure {
            SinkFailure::Fatal(e) => Err(e),
            SinkFailure::Unavailable(why) => {
                self.note_outage(ctx, state, why);
                Ok(())
            }
        }
    }

    fn recovered(&self, ctx: &SinkContext<'_>, paused: &mut HashSet<i32>) -> Result<()> {
        tracing::info!(
            job = self.job,
            sink = self.target.name(),
            "sink available again: resuming"
        );
        self.resume(ctx, paused)?;
        self.up(true);
        self.health.ok(self.target.name());
        Ok(())
    }
}

struct LoopState {
    /// Per partition: the next offset the target has not committed (absent: nothing yet).
    next: HashMap<i32, i64>,
    pending: Pending,
    summary: SinkSummary,
    outage: Option<Outage>,
    last_tick: Option<Instant>,
    /// Stopped while waiting for an assignment's positions: what was polled cannot be placed,
    /// so nothing is committed on the way out.
    unplaced: bool,
    /// Assigned partitions the store has no position for, until their first record: the
    /// consumer starts them at the group's Kafka offset, which only the store can vouch for.
    unpositioned: HashSet<i32>,
    /// Partitions that delivered a record since the last check for partitions that do not
    /// move.
    delivered: HashSet<i32>,
    stuck_checked: Option<Instant>,
    /// Partitions this sink paused and has not resumed.
    paused: HashSet<i32>,
}
