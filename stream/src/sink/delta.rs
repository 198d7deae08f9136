//! The raw-lake sink: every decodable source record lands in the job's raw Delta table, once.
//!
//! A [`CommitTarget`] of the shared sink loop (see [`super`]). It is its own consumer group
//! (`<group>.lake`), because the lake commits on a slower clock (every N seconds or M bytes)
//! than the speed layer's transactions. Its position is the lake itself: each Delta commit
//! carries one transaction action per source partition (app id `<job>-p<partition>`,
//! version = the last offset written), which the loop resumes after.
//!
//! Memory: the sink holds at most `commit_bytes` of buffered payloads plus librdkafka's fetch
//! queue (`queued.max.messages.kbytes`, 16 MiB by default, for all its partitions).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use serde_json::json;
use sluice_core::decode::SourceDecoder;
use sluice_core::lake::{TableLocation, WritableTable, commit_key, raw_rows, raw_schema};
use sluice_core::lake_progress::{Completeness, LakeProgress, PartitionProgress};
use sluice_core::spec::Input;
use sluice_core::topics::lake_app_id;
use sluice_core::{Job, Lake};

use super::health::SinkHealth;
use super::{
    Buffered, CommitOutcome, CommitPolicy, CommitTarget, SinkContext, SinkFailure, SinkLoop,
    SinkSummary,
};
use crate::config::StreamConfig;
use crate::error::{Result, StreamError, kafka};
use crate::kafka::{REQUEST_TIMEOUT, read_to_end};
use crate::metrics::StreamMetrics;
use crate::schemas::{Fetched, SchemaFetcher};

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

pub struct LakeSink {
    job: Job,
    /// Its consumer group (see [`sluice_core::spec::Input::lake_group`]).
    group: String,
    /// Its name in logs, metrics and `/health`: `lake`, `lake.<table>` for a job's other inputs.
    name: String,
    decoder: Arc<dyn SourceDecoder>,
    config: StreamConfig,
    sink: LakeSinkConfig,
    table: TableLocation,
    metrics: StreamMetrics,
    health: SinkHealth,
}

/// What the sink knows of the raw table's completeness (see `sluice_core::lake_progress`):
/// its own partitions' progress as it lands them, the others' as the lake last said.
struct Progress {
    lake: LakeProgress,
}

impl LakeSink {
    pub fn new(
        job: Job,
        lake: &Lake,
        config: StreamConfig,
        sink: LakeSinkConfig,
        metrics: StreamMetrics,
    ) -> Result<LakeSink> {
        LakeSink::for_input(job.primary_input(), lake, config, sink, metrics)
    }

    /// The sink of one input of a job: its records into its own raw table, under its own
    /// consumer group. A job with several inputs runs one per input.
    pub fn for_input(
        input: Input,
        lake: &Lake,
        config: StreamConfig,
        sink: LakeSinkConfig,
        metrics: StreamMetrics,
    ) -> Result<LakeSink> {
        let group = input.lake_group(&config.group_id);
        let name = match input.is_primary() {
            true => "lake".to_string(),
            false => format!("lake.{}", input.table),
        };
        let job = input.job;
        Ok(LakeSink {
            group,
            name,
            table: TableLocation::new(lake.raw_table(&job)).failing_fast(),
            decoder: sluice_core::decode::for_job(&job, config.max_record_bytes)?,
            job,
            config,
            sink,
            metrics,
            health: SinkHealth::new(),
        })
    }

    /// Reports the sink's state (e.g. its store unreachable) to `health`.
    pub fn with_health(mut self, health: SinkHealth) -> LakeSink {
        self.health = health;
        self
    }

    /// Runs until `stop` is set, committing what it holds before returning. Blocking: give it
    /// its own thread; Delta I/O runs on `runtime`.
    pub fn run(
        &self,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
    ) -> Result<SinkSummary> {
        let job = self.job.name();
        let table = runtime.block_on(self.table.writable())?;
        let progress = Progress {
            lake: runtime
                .block_on(self.table.lake_progress())?
                .unwrap_or_default(),
        };
        tracing::info!(job, table = %self.table.location, "raw lake sink started");
        let group = &self.group;
        let policy = CommitPolicy {
            interval: self.sink.commit_interval,
            bytes: self.sink.commit_bytes,
        };
        let target = DeltaTarget {
            sink: self,
            runtime,
            table,
            progress,
            schemas: SchemaFetcher::for_job(&self.job)?,
        };
        SinkLoop {
            job,
            topic: &self.job.spec.source.topic,
            group,
            client: &self.config,
            policy: &policy,
            metrics: &self.metrics,
            health: &self.health,
            target,
        }
        .run(stop)
    }
}

/// The raw Delta table as the shared loop's commit target.
struct DeltaTarget<'a> {
    sink: &'a LakeSink,
    runtime: tokio::runtime::Handle,
    table: WritableTable,
    progress: Progress,
    /// `avro-confluent` jobs: where writer schemas come from.
    schemas: Option<SchemaFetcher>,
}

/// Object-store and Delta errors pass (a store down, a conflict); anything else is a bug or
/// bad configuration.
fn lake_failure(error: StreamError) -> SinkFailure {
    match &error {
        StreamError::Core(sluice_core::Error::Delta { .. } | sluice_core::Error::Table { .. }) => {
            SinkFailure::Unavailable(error.to_string())
        }
        _ => SinkFailure::Fatal(error),
    }
}

impl CommitTarget for DeltaTarget<'_> {
    fn name(&self) -> &str {
        &self.sink.name
    }

    fn committed(
        &mut self,
        _ctx: &SinkContext<'_>,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, i64>, SinkFailure> {
        let runtime = self.runtime.clone();
        // The previous owner may have committed since this sink last looked.
        runtime
            .block_on(self.table.refresh())
            .map_err(|e| lake_failure(e.into()))?;
        if let Some(lake) = runtime
            .block_on(self.sink.table.lake_progress())
            .map_err(|e| lake_failure(e.into()))?
        {
            self.progress.lake.merge(&lake);
        }
        let mut next = BTreeMap::new();
        for &partition in partitions {
            let app_id = lake_app_id(&self.sink.job, partition);
            if let Some(version) = runtime
                .block_on(self.table.transaction_version(&app_id))
                .map_err(|e| lake_failure(e.into()))?
            {
                next.insert(partition, version + 1);
            }
        }
        Ok(next)
    }

    /// `avro-confluent`: whether the registry has answered for good for every writer schema
    /// the pending records name (see [`crate::schemas`]: it may be down, or not have found an
    /// id yet). While it has not, the loop keeps the partitions paused, so the buffer stops
    /// growing; nothing is committed and nothing lost.
    fn ready(&mut self, pending: &Buffered) -> Result<(), SinkFailure> {
        let Some(fetcher) = self.schemas.as_mut() else {
            return Ok(());
        };
        let job = self.sink.job.name();
        let payloads: Vec<&[u8]> = pending
            .values()
            .flatten()
            .filter_map(|r| r.payload.as_deref())
            .collect();
        match fetcher.fetch_missing(self.sink.decoder.as_ref(), &payloads) {
            Fetched::Ready => Ok(()),
            // The loop's backoff spaces the retries; the fetcher asks an id not found yet
            // again only at its own time, however often it is called.
            Fetched::Wait { reason, .. } => {
                self.sink
                    .metrics
                    .registry_waits
                    .with_label_values(&[job])
                    .inc();
                Err(SinkFailure::Unavailable(reason))
            }
        }
    }

    /// One Delta commit of everything pending, with a transaction action per partition and
    /// the partitions' progress.
    fn commit(
        &mut self,
        ctx: &SinkContext<'_>,
        batch: &Buffered,
        expected: &BTreeMap<i32, Option<i64>>,
    ) -> Result<CommitOutcome, SinkFailure> {
        let job = self.sink.job.name();
        let moved = self.moved(expected)?;
        let LakeCommit {
            batches,
            transactions,
            rows,
            landed,
        } = self.raw_batches(batch, &moved)?;
        if transactions.is_empty() {
            return Ok(CommitOutcome { rows: 0, moved });
        }
        // Only undecodable records (the speed layer dead-letters them) still move the
        // partitions' versions, so the loop's positions and the lake's agree.
        let batches = if batches.is_empty() {
            vec![RecordBatch::new_empty(raw_schema(&self.sink.job))]
        } else {
            batches
        };
        let mut lake = self.progress.lake.clone();
        lake.partitions = lake.partitions.max(self.source_partitions(ctx));
        for &(partition, next_offset, max_event_us) in &landed {
            lake.advance(partition, next_offset, max_event_us);
        }
        let metadata = HashMap::from([
            (commit_key::OPERATION.to_string(), json!("stream ingest")),
            (commit_key::JOB.to_string(), json!(job)),
            (commit_key::ROWS.to_string(), json!(rows)),
            (commit_key::LAKE_PROGRESS.to_string(), lake.to_json()),
        ]);
        self.runtime
            .block_on(self.table.append(batches, metadata, transactions))
            .map_err(|e| lake_failure(e.into()))?;
        self.progress.lake = lake;
        self.observe_completeness();
        self.sink
            .metrics
            .lake_commits
            .with_label_values(&[job])
            .inc();
        for (partition, records) in batch.iter().filter(|(p, _)| !moved.contains_key(p)) {
            self.sink
                .metrics
                .lake_rows
                .with_label_values(&[job, &partition.to_string()])
                .inc_by(records.len() as u64);
        }
        Ok(CommitOutcome { rows, moved })
    }

    fn tick(&mut self, ctx: &SinkContext<'_>, pending: &Buffered) -> Result<(), SinkFailure> {
        self.record_ends(ctx, pending)
    }
}

impl DeltaTarget<'_> {
    /// Partitions whose lake version moved since this sink read it: another sink took the
    /// partition over (this one was evicted during a long commit) and wrote them already, or
    /// a commit whose outcome this sink did not learn did land.
    fn moved(
        &mut self,
        expected: &BTreeMap<i32, Option<i64>>,
    ) -> Result<BTreeMap<i32, Option<i64>>, SinkFailure> {
        let runtime = self.runtime.clone();
        let mut moved = BTreeMap::new();
        // Reading a partition's transaction version replays the log since the last checkpoint:
        // skip it while nobody but this sink has committed since its own last commit.
        if !runtime
            .block_on(self.table.refresh())
            .map_err(|e| lake_failure(e.into()))?
        {
            return Ok(moved);
        }
        for (&partition, &next) in expected {
            let app_id = lake_app_id(&self.sink.job, partition);
            let current = runtime
                .block_on(self.table.transaction_version(&app_id))
                .map_err(|e| lake_failure(e.into()))?
                .map(|v| v + 1);
            if current != next {
                moved.insert(partition, current);
            }
        }
        Ok(moved)
    }

    /// The source topic's partition count now (0 when the broker cannot say).
    fn source_partitions(&self, ctx: &SinkContext<'_>) -> i32 {
        sluice_kafka::partition_count(ctx.consumer, ctx.topic, REQUEST_TIMEOUT)
            .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX))
    }

    fn observe_completeness(&self) {
        let delay = self.sink.job.spec.source.watermark_delay.as_micros() as i64;
        if let Completeness::Until(until) = self.progress.lake.complete_until(delay)
            && until != i64::MAX
        {
            self.sink
                .metrics
                .lake_complete_until
                .with_label_values(&[self.sink.job.name()])
                .set(until as f64 / 1e6);
        }
    }

    /// Records, in a commit without rows, the assigned partitions that have no landed row, no
    /// pending row, and that this sink has read to their end: an empty partition must not hold
    /// the raw table's completeness back forever. Checked once per commit interval, whether or
    /// not other partitions have rows pending.
    fn record_ends(
        &mut self,
        ctx: &SinkContext<'_>,
        pending: &Buffered,
    ) -> Result<(), SinkFailure> {
        let job = self.sink.job.name();
        let (consumer, topic) = (ctx.consumer, ctx.topic);
        let assignment = consumer
            .assignment()
            .map_err(kafka(job, "reading the assignment"))?;
        let mut lake = self.progress.lake.clone();
        let partitions = self.source_partitions(ctx);
        let mut changed = partitions > lake.partitions;
        lake.partitions = lake.partitions.max(partitions);
        for element in assignment.elements_for_topic(topic) {
            let partition = element.partition();
            let known = lake.by_partition.get(&partition).copied();
            // A partition with rows waiting for their commit is not empty: it must not count
            // as complete before they land.
            if known.is_some_and(|p| p.max_event_us.is_some() || p.at_end)
                || pending.contains_key(&partition)
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
        let empty = RecordBatch::new_empty(raw_schema(&self.sink.job));
        self.runtime
            .block_on(self.table.append(vec![empty], metadata, Vec::new()))
            .map_err(|e| lake_failure(e.into()))?;
        tracing::debug!(job, "lake sink recorded partitions read to their end");
        self.progress.lake = lake;
        self.observe_completeness();
        Ok(())
    }

    /// The raw rows of every partition of `records` but those in `skip`.
    fn raw_batches(
        &self,
        records: &Buffered,
        skip: &BTreeMap<i32, Option<i64>>,
    ) -> Result<LakeCommit, SinkFailure> {
        let job = &self.sink.job;
        let decoder = self.sink.decoder.as_ref();
        let event_time = &job.spec.source.event_time;
        let mut batches = Vec::new();
        let mut transactions = Vec::new();
        let mut landed = Vec::new();
        let mut rows = 0;
        for (&partition, records) in records.iter().filter(|(p, _)| !skip.contains_key(p)) {
            // Tombstones carry no row, but their offsets still count as landed.
            let with_payload: Vec<_> = records.iter().filter(|r| r.payload.is_some()).collect();
            let payloads: Vec<&[u8]> = with_payload
                .iter()
                .filter_map(|r| r.payload.as_deref())
                .collect();
            let stamps: Vec<Option<i64>> = with_payload.iter().map(|r| r.timestamp_ms).collect();
            let decoded = decoder
                .decode_stamped(&payloads, &stamps)
                .map_err(|e| SinkFailure::Fatal(e.into()))?;
            let offsets: Vec<i64> = decoded
                .rows
                .iter()
                .map(|&i| with_payload[i].offset)
                .collect();
            if decoded.batch.num_rows() > 0 {
                rows += decoded.batch.num_rows();
                batches.push(
                    raw_rows(job, &decoded.batch, Some((partition, &offsets)))
                        .map_err(|e| SinkFailure::Fatal(e.into()))?,
                );
            }
            if let Some(last) = records.last() {
                transactions.push((lake_app_id(job, partition), last.offset));
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
