//! The PostgreSQL sink: a job's results into a table, its dead letters into `ETLDeadLetter`,
//! and samples of its counters into `ETLJobMetric` (the seed 003 tables), exactly once.
//!
//! One `[[sinks]] kind = "postgres"` entry runs two loops of the shared sink loop (see
//! [`crate::sink`]), each its own consumer group with its offsets in `ETLCheckpoint`:
//! `<group>.sink.<name>` over `<job>.results` (or the entry's output topic) and
//! `<group>.sink.<name>.dlq` over `<job>.dlq`. At start the sink connects, creates the seed
//! tables and its table if missing and checks an existing table's columns: configuration
//! errors stop the daemon at once; an outage later only pauses the sink.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use sluice_core::spec::{SinkMode, SinkSpec};
use sluice_core::topics::{Topics, dead_letter_group, sink_group};
use sluice_core::{Job, Pipeline};

pub mod connect;
pub mod copy;
mod dead_letters;
pub mod error;
mod results;
pub mod seed_tables;
pub mod table;
mod target;
#[cfg(test)]
mod tests;

use self::connect::PgTarget;
use self::copy::RowWriter;
use self::error::PgError;
use self::seed_tables::{JobMetricSample, init_seed_tables, insert_job_metric};
use self::table::ResultTable;
use self::target::{PgRows, PostgresTarget};
use super::health::SinkHealth;
use super::{CommitPolicy, SinkFailure, SinkLoop, SinkSummary};
use crate::config::StreamConfig;
use crate::error::{Result, StreamError};
use crate::metrics::StreamMetrics;

/// How long the sink tries to reach PostgreSQL at start before it reports the configuration
/// as wrong (after start, an outage is waited out however long it lasts).
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A connection that reconnects on demand: after an outage the next use connects again and
/// prepares the session (staging tables).
pub(crate) struct Connection {
    target: PgTarget,
    client: Option<tokio_postgres::Client>,
}

impl Connection {
    fn new(target: PgTarget) -> Connection {
        Connection {
            target,
            client: None,
        }
    }

    async fn client<R: PgRows>(
        &mut self,
        rows: &R,
    ) -> Result<&mut tokio_postgres::Client, PgError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            let client = self.target.connect().await?;
            rows.prepare(&client).await?;
            self.client = Some(client);
        }
        self.client.as_mut().ok_or_else(|| PgError::InvalidUrl {
            target: self.target.redacted().to_string(),
            message: "no connection".into(),
        })
    }

    fn reset(&mut self) {
        self.client = None;
    }
}

/// Wraps a failed statement of the sink.
pub(crate) fn connection_error(
    what: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    move |source| PgError::Query {
        target: String::new(),
        what: what.to_string(),
        source,
    }
}

/// An error that passes (PostgreSQL down, connection lost) pauses the sink; anything else
/// stops it. Either way the connection is dropped: its state is unknown.
pub(crate) fn unavailable_or_fatal(
    job: &str,
    sink: &str,
    connection: &mut Connection,
    error: PgError,
) -> SinkFailure {
    connection.reset();
    if error.is_unavailable() {
        SinkFailure::Unavailable(format!("{} ({})", error, connection.target.redacted()))
    } else {
        SinkFailure::Fatal(StreamError::Postgres {
            job: job.to_string(),
            sink: sink.to_string(),
            source: Box::new(error),
        })
    }
}

/// One `[[sinks]] kind = "postgres"` entry of a job.
pub struct PostgresSink {
    job: Job,
    name: String,
    target: PgTarget,
    table: String,
    mode: SinkMode,
    schema: SchemaRef,
    key: Vec<String>,
    topics: Topics,
    input: String,
    dead_letters: bool,
    client: StreamConfig,
    policy: CommitPolicy,
    metrics: StreamMetrics,
    health: SinkHealth,
}

impl PostgresSink {
    /// `client` carries the speed layer's group (`sluice-<job>` by default): the sink's
    /// groups derive from it.
    pub fn new(
        job: &Job,
        pipeline: &Pipeline,
        spec: &SinkSpec,
        client: StreamConfig,
        policy: CommitPolicy,
        metrics: StreamMetrics,
        health: SinkHealth,
    ) -> Result<PostgresSink> {
        let name = spec.sink_name().to_string();
        let plan = pipeline.plan();
        let result_key: Vec<String> = plan
            .aggregate()
            .map(|stage| stage.result_key_columns().to_vec())
            .unwrap_or_default();
        let mode = spec.mode.unwrap_or(if plan.aggregate().is_some() {
            SinkMode::Upsert
        } else {
            SinkMode::Append
        });
        if mode == SinkMode::Upsert && result_key.is_empty() {
            return Err(StreamError::Config {
                job: job.name().to_string(),
                message: format!(
                    "sink `{name}`: mode = \"upsert\" needs result keys (a GROUP BY job); this job's rows have none: use mode = \"append\""
                ),
            });
        }
        let job_dir = job.file.parent().unwrap_or(Path::new("."));
        let target = PgTarget::for_sink(spec, job_dir).map_err(|source| StreamError::Postgres {
            job: job.name().to_string(),
            sink: name.clone(),
            source: Box::new(source),
        })?;
        let topics = Topics::for_job(job);
        Ok(PostgresSink {
            table: spec
                .table
                .clone()
                .unwrap_or_else(|| job.versioned_name().replace(['-', '.'], "_")),
            input: topics.sink_input(spec).to_string(),
            dead_letters: spec.dead_letters,
            key: if mode == SinkMode::Upsert {
                result_key
            } else {
                Vec::new()
            },
            schema: plan.output_schema(),
            job: job.clone(),
            name,
            target,
            mode,
            topics,
            client,
            policy,
            metrics,
            health,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it writes (the URL without its password).
    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    fn error(&self, source: PgError) -> StreamError {
        StreamError::Postgres {
            job: self.job.name().to_string(),
            sink: self.name.clone(),
            source: Box::new(source),
        }
    }

    fn result_table(&self) -> Result<ResultTable> {
        ResultTable::new(&self.table, self.schema.clone(), &self.key).map_err(|e| self.error(e))
    }

    /// Connects, creates the seed tables and the results table if missing, and checks an
    /// existing table's columns and privileges. Run before the sink threads start: every
    /// configuration error is reported here, naming the table and column.
    pub fn prepare(&self, runtime: &tokio::runtime::Handle) -> Result<()> {
        let table = self.result_table()?;
        let started = Instant::now();
        loop {
            let attempt = runtime.block_on(async {
                let client = self.target.connect().await?;
                init_seed_tables(&client, self.target.redacted()).await?;
                let created = table.ensure(&client, self.target.redacted()).await?;
                if created {
                    // A new table holds none of the rows old checkpoints of this sink vouch
                    // for (it was dropped to be recreated): start the topic over.
                    let group = sink_group(&self.client.group_id, &self.name);
                    client
                        .execute(
                            "DELETE FROM ETLCheckpoint WHERE consumer_group = $1 AND topic = $2",
                            &[&group, &self.input],
                        )
                        .await
                        .map_err(PgError::query(
                            self.target.redacted(),
                            "forgetting the checkpoints of a table created anew",
                        ))?;
                }
                Ok::<bool, PgError>(created)
            });
            match attempt {
                Ok(created) => {
                    tracing::info!(
                        job = self.job.name(),
                        sink = %self.name,
                        url = %self.target.redacted(),
                        table = %self.table,
                        mode = self.mode.as_str(),
                        created,
                        "postgres sink ready"
                    );
                    return Ok(());
                }
                Err(e) if e.is_unavailable() && started.elapsed() < START_DEADLINE => {
                    tracing::debug!(sink = %self.name, error = %e, "postgres not reachable yet");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    /// Runs the results loop until `stop` is set. Blocking: give it its own thread.
    pub fn run(
        &self,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
    ) -> Result<SinkSummary> {
        let group = sink_group(&self.client.group_id, &self.name);
        let rows = results::ResultRows {
            writer: RowWriter::new(self.result_table()?).map_err(|e| self.error(e))?,
            schema: self.schema.clone(),
            mode: self.mode,
            topic: self.input.clone(),
            job: self.job.name().to_string(),
        };
        self.run_loop(runtime, stop, &group, &self.input, rows, &self.name, false)
    }

    /// Runs the `<job>.dlq` → `ETLDeadLetter` loop until `stop` is set (returns at once when
    /// the entry says `dead_letters = false`).
    pub fn run_dead_letters(
        &self,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
    ) -> Result<SinkSummary> {
        if !self.dead_letters {
            return Ok(SinkSummary::default());
        }
        let group = dead_letter_group(&self.client.group_id, &self.name);
        let rows = dead_letters::DeadLetterRows {
            source_topic: self.topics.source.clone(),
        };
        let name = format!("{}.dlq", self.name);
        self.run_loop(runtime, stop, &group, &self.topics.dlq, rows, &name, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_loop<R: PgRows>(
        &self,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
        group: &str,
        topic: &str,
        rows: R,
        name: &str,
        wants_headers: bool,
    ) -> Result<SinkSummary> {
        let target = PostgresTarget {
            name: name.to_string(),
            job: self.job.name().to_string(),
            runtime,
            connection: Connection::new(self.target.clone()),
            rows,
            group: group.to_string(),
            topic: topic.to_string(),
            wants_headers,
        };
        tracing::info!(
            job = self.job.name(),
            sink = name,
            topic,
            group,
            "postgres sink started"
        );
        SinkLoop {
            job: self.job.name(),
            topic,
            group,
            client: &self.client,
            policy: &self.policy,
            metrics: &self.metrics,
            health: &self.health,
            target,
        }
        .run(stop)
    }
}

/// Samples the process's counters of `job` into `ETLJobMetric` every `every` until `stop`
/// is set: records consumed, records dead-lettered (both since the process started) and the
/// watermark lag. A sample PostgreSQL does not take (an outage) is skipped, not queued.
pub async fn sample_job_metrics(
    target: PgTarget,
    job: String,
    metrics: StreamMetrics,
    every: Duration,
    stop: Arc<AtomicBool>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::SeqCst) {
        ticks.tick().await;
        let lag = metrics
            .watermark_lag
            .get_metric_with_label_values(&[job.as_str()])
            .map(|g| g.get())
            .ok()
            .filter(|lag| *lag != 0.0);
        let sample = JobMetricSample {
            job_name: job.clone(),
            processed_count: metrics.job_total("sluice_records_in_total", &job) as i64,
            error_count: metrics.job_total("sluice_dlq_records_total", &job) as i64,
            lag_seconds: lag,
            sampled_at: None,
        };
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = target.connect().await.ok();
        }
        let Some(connected) = &client else {
            continue;
        };
        if let Err(e) = insert_job_metric(connected, &sample).await {
            tracing::debug!(job, error = %e, "could not write a job metric sample; skipped");
            client = None;
        }
    }
}
