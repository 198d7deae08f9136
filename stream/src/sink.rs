//! The raw-lake sink: every decodable source record lands in the job's raw Delta table, once.
//!
//! The sink is its own consumer group (`<group>.lake`), because the lake commits on a slower
//! clock (every N seconds or M bytes) than the speed layer's transactions. Its position is the
//! lake itself: each Delta commit carries one transaction action per source partition
//! (app id `<job>-p<partition>`, version = the last offset written). When it is assigned a
//! partition it reads that version and seeks just past it; records at or below it are skipped,
//! so a crash or rebalance never writes an offset twice. Kafka offsets are committed after each
//! Delta commit only so that lag shows up in the usual tools.
//!
//! Backpressure and memory: while a Delta commit runs, the sink pauses all its partitions, so
//! librdkafka stops fetching; it resumes when the commit is done. The sink holds at most
//! `commit_bytes` of buffered payloads plus librdkafka's fetch queue
//! (`queued.max.messages.kbytes`, 16 MiB by default, for all its partitions).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use sluice_core::decode::SourceDecoder;
use sluice_core::lake::{TableLocation, WritableTable, commit_key, raw_rows, raw_schema};
use sluice_core::lake_progress::{Completeness, LakeProgress, PartitionProgress};
use sluice_core::topics::lake_app_id;
use sluice_core::{Job, Lake};

use crate::config::StreamConfig;
use crate::error::{Result, kafka};
use crate::kafka::{Change, GroupContext, REQUEST_TIMEOUT, consumer_config, read_to_end};
use crate::metrics::StreamMetrics;
use crate::schemas::{Fetched, SchemaFetcher};

/// One buffered source record: what decoding it into a raw row needs.
struct BufferedRecord {
    offset: i64,
    /// The Kafka timestamp, the clock-skew guard's reference (as in the speed layer).
    timestamp_ms: Option<i64>,
    payload: Vec<u8>,
}

/// Buffered records per partition, in offset order.
type Buffered = BTreeMap<i32, Vec<BufferedRecord>>;

/// What one Delta commit of the sink writes.
struct LakeCommit {
    batches: Vec<arrow::array::RecordBatch>,
    /// (app id, last offset) per partition.
    transactions: Vec<(String, i64)>,
    rows: usize,
    /// Per partition: the next offset and the largest event time landed (`None`: no row).
    landed: Vec<(i32, i64, Option<i64>)>,
}

/// When the sink commits.
#[derive(Debug, Clone)]
pub struct LakeSinkConfig {
    /// Commit at least this often while records arrive (default 10 s).
    pub commit_interval: Duration,
    /// ... or as soon as this many payload bytes are buffered (default 64 MiB), which also
    /// sizes the Parquet files.
    pub commit_bytes: usize,
}

impl Default for LakeSinkConfig {
    fn default() -> Self {
        LakeSinkConfig {
            commit_interval: Duration::from_secs(10),
            commit_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SinkSummary {
    pub commits: u64,
    pub rows: u64,
    pub skipped_duplicates: u64,
}

pub struct LakeSink {
    job: Job,
    decoder: Arc<dyn SourceDecoder>,
    config: StreamConfig,
    sink: LakeSinkConfig,
    table: TableLocation,
    metrics: StreamMetrics,
}

struct Pending {
    /// Per partition: (offset, payload) in offset order.
    records: Buffered,
    bytes: usize,
    since: Option<Instant>,
}

/// What the sink knows of the raw table's completeness (see `sluice_core::lake_progress`):
/// its own partitions' progress as it lands them, the others' as the lake last said.
struct Progress {
    lake: LakeProgress,
    /// When partitions without a landed row were last checked for being read to their end.
    ends_checked: Option<Instant>,
}

impl LakeSink {
    pub fn new(
        job: Job,
        lake: &Lake,
        config: StreamConfig,
        sink: LakeSinkConfig,
        metrics: StreamMetrics,
    ) -> Result<LakeSink> {
        Ok(LakeSink {
            table: TableLocation::new(lake.raw_table(&job)),
            decoder: sluice_core::decode::for_job(&job, config.max_record_bytes)?,
            job,
            config,
            sink,
            metrics,
        })
    }

    fn name(&self) -> &str {
        self.job.name()
    }

    /// Runs until `stop` is set, committing what it holds before returning. Blocking: give it
    /// its own thread; Delta I/O runs on `runtime`.
    pub fn run(
        &self,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
    ) -> Result<SinkSummary> {
        let job = self.name();
        let topic = &self.job.spec.source.topic;
        let group = format!("{}.lake", self.config.group_id);
        let consumer: BaseConsumer<GroupContext> = consumer_config(&self.config, &group, ".lake")
            .create_with_context(GroupContext::new(job, topic, self.metrics.clone()))
            .map_err(kafka(job, "creating the lake sink's consumer"))?;
        consumer.subscribe(&[topic]).map_err(kafka(
            job,
            format!("subscribing the lake sink to `{topic}`"),
        ))?;
        let mut versions: HashMap<i32, i64> = HashMap::new();
        let mut pending = Pending {
            records: BTreeMap::new(),
            bytes: 0,
            since: None,
        };
        let mut summary = SinkSummary::default();
        let mut schemas = SchemaFetcher::for_job(&self.job)?;
        let mut registry_wait: Option<Instant> = None;
        let mut table = runtime.block_on(self.table.writable())?;
        let mut progress = Progress {
            lake: runtime
                .block_on(self.table.lake_progress())?
                .unwrap_or_default(),
            ends_checked: None,
        };
        tracing::info!(job, table = %self.table.location, "raw lake sink started");
        while !stop.load(Ordering::SeqCst) {
            let polled = consumer.poll(Duration::from_millis(100));
            self.apply_changes(
                &consumer,
                &runtime,
                &mut table,
                &mut versions,
                &mut pending,
                &mut progress,
            )?;
            if let Some(Ok(message)) = polled {
                let partition = message.partition();
                if let Some(&version) = versions.get(&partition).filter(|&&v| message.offset() <= v)
                {
                    summary.skipped_duplicates += 1;
                    // The partition is fetching now, so a seek works: skip the rest at once.
                    if message.offset() < version
                        && let Err(e) = consumer.seek(
                            topic,
                            partition,
                            Offset::Offset(version + 1),
                            REQUEST_TIMEOUT,
                        )
                    {
                        tracing::debug!(job, partition, error = %e, "lake sink could not seek; skipping instead");
                    }
                } else if let Some(payload) = message.payload() {
                    pending.bytes += payload.len();
                    pending.since.get_or_insert_with(Instant::now);
                    pending
                        .records
                        .entry(partition)
                        .or_default()
                        .push(BufferedRecord {
                            offset: message.offset(),
                            timestamp_ms: message.timestamp().to_millis(),
                            payload: payload.to_vec(),
                        });
                }
            } else if let Some(Err(e)) = polled {
                tracing::warn!(job, error = %e, "lake sink consumer error");
            }
            let due = pending.bytes >= self.sink.commit_bytes
                || pending
                    .since
                    .is_some_and(|s| s.elapsed() >= self.sink.commit_interval);
            if due
                && self.schemas_ready(&consumer, schemas.as_mut(), &pending, &mut registry_wait)?
            {
                self.commit(
                    &consumer,
                    &runtime,
                    &mut table,
                    &mut versions,
                    &mut pending,
                    &mut progress,
                    &mut summary,
                )?;
            }
            // Also while other partitions stream: a busy sink is rarely without pending rows.
            self.record_ends(
                &consumer,
                &runtime,
                &mut table,
                (&pending, &mut progress),
                &mut summary,
            )?;
        }
        registry_wait = None;
        if self.schemas_ready(&consumer, schemas.as_mut(), &pending, &mut registry_wait)? {
            self.commit(
                &consumer,
                &runtime,
                &mut table,
                &mut versions,
                &mut pending,
                &mut progress,
                &mut summary,
            )?;
        } else {
            tracing::warn!(
                job,
                "stopping with records the schema registry has not answered for: they land on the next start"
            );
        }
        tracing::info!(job, ?summary, "raw lake sink stopped");
        Ok(summary)
    }

    /// `avro-confluent`: whether the registry has answered for every writer schema the
    /// pending records name (see [`crate::schemas`]). While it has not, the sink's partitions
    /// stay paused, so the buffer stops growing; nothing is committed and nothing is lost.
    fn schemas_ready(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        fetcher: Option<&mut SchemaFetcher>,
        pending: &Pending,
        wait: &mut Option<Instant>,
    ) -> Result<bool> {
        let Some(fetcher) = fetcher else {
            return Ok(true);
        };
        let job = self.name();
        if wait.is_some_and(|at| Instant::now() < at) {
            return Ok(false);
        }
        let payloads: Vec<&[u8]> = pending
            .records
            .values()
            .flatten()
            .map(|r| r.payload.as_slice())
            .collect();
        let assignment = consumer
            .assignment()
            .map_err(kafka(job, "reading the assignment"))?;
        match fetcher.fetch_missing(self.decoder.as_ref(), &payloads) {
            Fetched::Ready => {
                if wait.take().is_some() {
                    consumer
                        .resume(&assignment)
                        .map_err(kafka(job, "resuming after the schema registry answered"))?;
                }
                Ok(true)
            }
            Fetched::Unavailable { retry_at } => {
                self.metrics.registry_waits.with_label_values(&[job]).inc();
                consumer.pause(&assignment).map_err(kafka(
                    job,
                    "pausing while the schema registry is unavailable",
                ))?;
                *wait = Some(retry_at);
                Ok(false)
            }
        }
    }

    fn apply_changes(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        runtime: &tokio::runtime::Handle,
        table: &mut WritableTable,
        versions: &mut HashMap<i32, i64>,
        pending: &mut Pending,
        progress: &mut Progress,
    ) -> Result<()> {
        let job = self.name();

        for change in consumer.context().take_changes() {
            match change {
                Change::Assigned(partitions) => {
                    // The previous owner may have committed since this sink last looked.
                    runtime.block_on(table.refresh())?;
                    if let Some(lake) = runtime.block_on(self.table.lake_progress())? {
                        progress.lake.merge(&lake);
                    }
                    progress.ends_checked = None;
                    for partition in partitions {
                        let app_id = lake_app_id(&self.job, partition);
                        let Some(version) = runtime.block_on(table.transaction_version(&app_id))?
                        else {
                            versions.remove(&partition);
                            continue;
                        };
                        versions.insert(partition, version);
                        tracing::info!(
                            job,
                            partition,
                            version,
                            "lake sink resumes after the last offset in the lake"
                        );
                    }
                }
                Change::Revoked(partitions) => {
                    for partition in partitions {
                        if let Some(dropped) = pending.records.remove(&partition) {
                            pending.bytes -= dropped.iter().map(|r| r.payload.len()).sum::<usize>();
                        }
                        versions.remove(&partition);
                    }
                }
            }
        }
        Ok(())
    }

    /// One Delta commit of everything pending, with a transaction action per partition and
    /// the partitions' progress.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        runtime: &tokio::runtime::Handle,
        table: &mut WritableTable,
        versions: &mut HashMap<i32, i64>,
        pending: &mut Pending,
        progress: &mut Progress,
        summary: &mut SinkSummary,
    ) -> Result<()> {
        if pending.records.is_empty() {
            return Ok(());
        }
        let job = self.name();
        let records = std::mem::take(&mut pending.records);
        pending.bytes = 0;
        pending.since = None;
        let records = self.still_ours(runtime, consumer, table, versions, records)?;
        let LakeCommit {
            batches,
            transactions,
            rows,
            landed,
        } = self.raw_batches(&records)?;
        if batches.is_empty() {
            // Only undecodable records (the speed layer dead-letters them): nothing to land.
            return Ok(());
        }
        let mut lake = progress.lake.clone();
        lake.partitions = lake.partitions.max(self.source_partitions(consumer));
        for &(partition, next_offset, max_event_us) in &landed {
            lake.advance(partition, next_offset, max_event_us);
        }
        let assignment = consumer
            .assignment()
            .map_err(kafka(job, "reading the assignment"))?;
        consumer
            .pause(&assignment)
            .map_err(kafka(job, "pausing while the lake commits"))?;
        let metadata = HashMap::from([
            (commit_key::OPERATION.to_string(), json!("stream ingest")),
            (commit_key::JOB.to_string(), json!(job)),
            (commit_key::ROWS.to_string(), json!(rows)),
            (commit_key::LAKE_PROGRESS.to_string(), lake.to_json()),
        ]);
        let written = runtime.block_on(table.append(batches, metadata, transactions.clone()));
        consumer
            .resume(&assignment)
            .map_err(kafka(job, "resuming after the lake commit"))?;
        written?;
        progress.lake = lake;
        self.observe_completeness(&progress.lake);
        summary.commits += 1;
        summary.rows += rows as u64;
        self.metrics.lake_commits.with_label_values(&[job]).inc();
        let mut offsets = TopicPartitionList::new();
        for (partition, last) in records
            .iter()
            .filter_map(|(p, r)| r.last().map(|last| (*p, last.offset)))
        {
            versions.insert(partition, last);
            let written_rows = records[&partition].len() as u64;
            self.metrics
                .lake_rows
                .with_label_values(&[job, &partition.to_string()])
                .inc_by(written_rows);
            let _ = offsets.add_partition_offset(
                &self.job.spec.source.topic,
                partition,
                Offset::Offset(last + 1),
            );
        }
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(job, error = %e, "committing lake sink offsets (for lag only)");
        }
        Ok(())
    }

    /// The source topic's partition count now (0 when the broker cannot say).
    fn source_partitions(&self, consumer: &BaseConsumer<GroupContext>) -> i32 {
        let topic = &self.job.spec.source.topic;
        sluice_kafka::partition_count(consumer, topic, REQUEST_TIMEOUT)
            .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX))
    }

    fn observe_completeness(&self, lake: &LakeProgress) {
        let delay = self.job.spec.source.watermark_delay.as_micros() as i64;
        if let Completeness::Until(until) = lake.complete_until(delay)
            && until != i64::MAX
        {
            self.metrics
                .lake_complete_until
                .with_label_values(&[self.name()])
                .set(until as f64 / 1e6);
        }
    }

    /// Records, in a commit without rows, the assigned partitions that have no landed row, no
    /// pending row, and that this sink has read to their end: an empty partition must not hold
    /// the raw table's completeness back forever. Checked once per commit interval, whether or
    /// not other partitions have rows pending.
    fn record_ends(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        runtime: &tokio::runtime::Handle,
        table: &mut WritableTable,
        (pending, progress): (&Pending, &mut Progress),
        summary: &mut SinkSummary,
    ) -> Result<()> {
        if progress
            .ends_checked
            .is_some_and(|at| at.elapsed() < self.sink.commit_interval)
        {
            return Ok(());
        }
        progress.ends_checked = Some(Instant::now());
        let job = self.name();
        let topic = &self.job.spec.source.topic;
        let assignment = consumer
            .assignment()
            .map_err(kafka(job, "reading the assignment"))?;
        let mut lake = progress.lake.clone();
        let partitions = self.source_partitions(consumer);
        let mut changed = partitions > lake.partitions;
        lake.partitions = lake.partitions.max(partitions);
        for element in assignment.elements_for_topic(topic) {
            let partition = element.partition();
            let known = lake.by_partition.get(&partition).copied();
            // A partition with rows waiting for their commit is not empty: it must not count
            // as complete before they land.
            if known.is_some_and(|p| p.max_event_us.is_some() || p.at_end)
                || pending.records.contains_key(&partition)
            {
                continue;
            }
            if !read_to_end(consumer, topic, partition) {
                continue;
            }
            let next_offset = match consumer
                .position()
                .ok()
                .and_then(|list| list.find_partition(topic, partition).map(|e| e.offset()))
            {
                Some(Offset::Offset(next)) => next,
                _ => known.map_or(0, |p| p.next_offset),
            };
            lake.by_partition.insert(
                partition,
                PartitionProgress {
                    next_offset,
                    max_event_us: None,
                    at_end: true,
                },
            );
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        let metadata = HashMap::from([
            (commit_key::OPERATION.to_string(), json!("stream ingest")),
            (commit_key::JOB.to_string(), json!(job)),
            (commit_key::ROWS.to_string(), json!(0)),
            (commit_key::LAKE_PROGRESS.to_string(), lake.to_json()),
        ]);
        let empty = RecordBatch::new_empty(raw_schema(&self.job));
        runtime.block_on(table.append(vec![empty], metadata, Vec::new()))?;
        tracing::debug!(job, "lake sink recorded partitions read to their end");
        progress.lake = lake;
        self.observe_completeness(&progress.lake);
        summary.commits += 1;
        Ok(())
    }

    /// Drops partitions whose lake version moved since this sink read it: another sink took
    /// the partition over (this one was evicted during a long commit) and wrote them already.
    fn still_ours(
        &self,
        runtime: &tokio::runtime::Handle,
        consumer: &BaseConsumer<GroupContext>,
        table: &mut WritableTable,
        versions: &mut HashMap<i32, i64>,
        mut records: Buffered,
    ) -> Result<Buffered> {
        // Reading a partition's transaction version replays the log since the last checkpoint:
        // skip it while nobody but this sink has committed since its own last commit.
        if !runtime.block_on(table.refresh())? {
            return Ok(records);
        }
        for partition in records.keys().copied().collect::<Vec<_>>() {
            let app_id = lake_app_id(&self.job, partition);
            let current = runtime.block_on(table.transaction_version(&app_id))?;
            if current != versions.get(&partition).copied() {
                tracing::warn!(
                    job = self.name(),
                    partition,
                    ?current,
                    "another sink wrote this partition; dropping the buffer"
                );
                records.remove(&partition);
                let resume = match current {
                    Some(v) => {
                        versions.insert(partition, v);
                        Offset::Offset(v + 1)
                    }
                    None => {
                        versions.remove(&partition);
                        Offset::Beginning
                    }
                };
                let topic = &self.job.spec.source.topic;
                if let Err(e) = consumer.seek(topic, partition, resume, REQUEST_TIMEOUT) {
                    tracing::warn!(job = self.name(), partition, error = %e, "could not rewind the lake sink");
                }
            }
        }
        Ok(records)
    }

    fn raw_batches(&self, records: &Buffered) -> Result<LakeCommit> {
        let decoder = self.decoder.as_ref();
        let event_time = &self.job.spec.source.event_time;
        let mut batches = Vec::new();
        let mut transactions = Vec::new();
        let mut landed = Vec::new();
        let mut rows = 0;
        for (&partition, records) in records {
            let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
            let stamps: Vec<Option<i64>> = records.iter().map(|r| r.timestamp_ms).collect();
            let decoded = decoder.decode_stamped(&payloads, &stamps)?;
            let offsets: Vec<i64> = decoded.rows.iter().map(|&i| records[i].offset).collect();
            if decoded.batch.num_rows() > 0 {
                rows += decoded.batch.num_rows();
                batches.push(raw_rows(
                    &self.job,
                    &decoded.batch,
                    Some((partition, &offsets)),
                )?);
            }
            if let Some(last) = records.last() {
                transactions.push((lake_app_id(&self.job, partition), last.offset));
                let max_event_us = decoded
                    .batch
                    .column_by_name(event_time)
                    .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
                    .and_then(arrow::compute::max);
                landed.push((partition, last.offset + 1, max_event_us));
            }
        }
        Ok(LakeCommit {
            batches,
            transactions,
            rows,
            landed,
        })
    }
}
