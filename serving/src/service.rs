//! One served job: its speed follower, its batch view, and the merged snapshot requests read.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use sluice_core::lake::TableLocation;
use sluice_core::speed::SpeedCodec;
use sluice_core::time::format_time;
use sluice_core::topics::Topics;
use sluice_core::{Job, Lake, Pipeline};
use tokio::sync::watch;

use crate::batch_view::{self, BatchView};
use crate::error::{Result, ServingError};
use crate::metrics::ServingMetrics;
use crate::query::JobShape;
use crate::snapshot::{Inputs, OriginCounts, Snapshot};
use crate::speed_view::{SpeedFollower, SpeedSource};

/// A job to serve and where its speed daemon's consumer group is.
#[derive(Clone)]
pub struct ServedJob {
    pub job: Job,
    pub pipeline: Arc<Pipeline>,
    /// The speed daemon's consumer group (whose source lag is reported).
    pub stream_group: String,
}

impl ServedJob {
    /// A job whose speed daemon runs in the default group, `sluice-<job>`.
    pub fn new(job: Job, pipeline: Arc<Pipeline>) -> ServedJob {
        let stream_group = format!("sluice-{}", job.name());
        ServedJob {
            job,
            pipeline,
            stream_group,
        }
    }
}

/// The newest batch run, as `GET /v1/jobs/{job}` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRun {
    pub version: u64,
    pub at: Option<String>,
    pub operation: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Partial-state rows by layer (batch: below the cutoff; speed: at or above it).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PartialRows {
    pub batch: usize,
    pub speed: usize,
}

/// A job's state: `GET /v1/jobs/{job}`.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub source_topic: String,
    pub speed_topic: String,
    pub view_table: String,
    pub key_columns: Vec<String>,
    pub cutoff: Option<String>,
    pub cutoff_us: Option<i64>,
    pub watermark: Option<String>,
    pub watermark_us: Option<i64>,
    pub speed_lag_records: i64,
    pub source_lag_records: Option<i64>,
    pub last_batch_run: Option<BatchRun>,
    pub rows: OriginCounts,
    /// Partial-state rows the merge read from each layer.
    pub partial_rows: PartialRows,
    pub freshness_ms: Option<i64>,
    pub snapshot_at: String,
    pub ready: bool,
}

pub(crate) struct JobService {
    pub served: ServedJob,
    pub codec: SpeedCodec,
    pub topics: Topics,
    pub view_table: TableLocation,
    speed: SpeedFollower,
    batch: RwLock<Option<Arc<BatchView>>>,
    batch_read_once: std::sync::atomic::AtomicBool,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl JobService {
    pub fn new(
        served: ServedJob,
        brokers: &str,
        lake: &Lake,
        overrides: &[(String, String)],
    ) -> Result<JobService> {
        let job = &served.job;
        let stage = served
            .pipeline
            .plan()
            .aggregate()
            .ok_or_else(|| ServingError::Stateless {
                job: job.name().to_string(),
            })?;
        let topics = Topics::for_job(job);
        let speed = SpeedFollower::start(SpeedSource {
            job: job.name().to_string(),
            brokers: brokers.to_string(),
            speed_topic: topics.speed.clone(),
            source_topic: topics.source.clone(),
            stream_group: served.stream_group.clone(),
            overrides: overrides.to_vec(),
        })?;
        Ok(JobService {
            codec: SpeedCodec::new(stage),
            view_table: TableLocation::new(lake.view_table(job)),
            snapshot: RwLock::new(Arc::new(Snapshot::empty(stage))),
            topics,
            speed,
            batch: RwLock::new(None),
            batch_read_once: std::sync::atomic::AtomicBool::new(false),
            served,
        })
    }

    pub fn name(&self) -> &str {
        self.served.job.name()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn stage(&self) -> Result<&sluice_core::AggregateStage> {
        self.served
            .pipeline
            .plan()
            .aggregate()
            .ok_or_else(|| ServingError::Stateless {
                job: self.name().to_string(),
            })
    }

    pub fn shape(&self) -> JobShape<'_> {
        JobShape {
            has_key: !self.served.job.spec.view.key.is_empty(),
            has_window: self.stage().is_ok_and(|s| s.window().is_some()),
            job: self.name(),
        }
    }

    pub fn ready(&self) -> bool {
        self.speed_caught_up()
            && self
                .batch_read_once
                .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reloads the batch view when the table has a new version.
    pub async fn poll_batch(&self) -> Result<()> {
        let known = self
            .batch
            .read()
            .ok()
            .and_then(|b| b.as_ref().map(|b| b.version));
        let stage = self.stage()?;
        let loaded = batch_view::load_if_changed(
            self.served.pipeline.plan(),
            stage,
            &self.view_table,
            known,
        )
        .await;
        self.batch_read_once
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(view) = loaded? {
            tracing::info!(job = self.name(), version = view.version, cutoff = ?view.cutoff_us.map(format_time), "batch view loaded");
            if let Ok(mut batch) = self.batch.write() {
                *batch = Some(view);
            }
        }
        Ok(())
    }

    /// Rebuilds the merged snapshot if either layer changed since the last one.
    pub fn refresh(&self, metrics: &ServingMetrics) -> Result<bool> {
        let current = self.snapshot();
        let batch = self.batch.read().ok().and_then(|b| b.clone());
        let batch_version = batch.as_ref().map(|b| b.version);
        let stage = self.stage()?;
        let built = self.speed.read(|speed| {
            let unchanged = speed.version == current.speed_version
                && batch_version == current.batch_version
                && speed.watermark_us() == current.watermark_us;
            (!unchanged).then(|| {
                Snapshot::build(&Inputs {
                    stage,
                    codec: &self.codec,
                    key_columns: &self.served.job.spec.view.key,
                    batch: batch.as_deref(),
                    speed,
                })
            })
        })?;
        let Some(snapshot) = built.transpose()? else {
            return Ok(false);
        };
        metrics.observe_snapshot(self.name(), &snapshot);
        if let Ok(mut slot) = self.snapshot.write() {
            *slot = Arc::new(snapshot);
        }
        Ok(true)
    }

    pub fn status(&self) -> JobStatus {
        let snapshot = self.snapshot();
        let (speed_lag, source_lag) = self.lags();
        let batch = self.batch.read().ok().and_then(|b| b.clone());
        JobStatus {
            job: self.name().to_string(),
            source_topic: self.topics.source.clone(),
            speed_topic: self.topics.speed.clone(),
            view_table: self.view_table.location.clone(),
            key_columns: self.served.job.spec.view.key.clone(),
            cutoff: snapshot.cutoff_us.map(format_time),
            cutoff_us: snapshot.cutoff_us,
            watermark: snapshot.watermark_us.map(format_time),
            watermark_us: snapshot.watermark_us,
            speed_lag_records: speed_lag,
            source_lag_records: source_lag,
            last_batch_run: batch.map(|b| batch_run(&b)),
            rows: snapshot.counts,
            partial_rows: PartialRows {
                batch: snapshot.batch_partial_rows,
                speed: snapshot.speed_partial_rows,
            },
            freshness_ms: freshness_ms(&snapshot),
            snapshot_at: format_time(snapshot.built_at_ms * 1000),
            ready: self.ready(),
        }
    }

    /// Serving's lag on `<job>.speed` and the speed daemon's lag on the source topic.
    pub fn lags(&self) -> (i64, Option<i64>) {
        self.speed
            .read(|v| (v.speed_lag, v.source_lag))
            .unwrap_or((0, None))
    }

    fn speed_caught_up(&self) -> bool {
        self.speed.read(|v| v.caught_up).unwrap_or(false)
    }

    pub fn stop(&self) {
        self.speed.stop();
    }
}

pub(crate) fn freshness_ms(snapshot: &Snapshot) -> Option<i64> {
    snapshot
        .newest_data_ms
        .map(|ms| (chrono::Utc::now().timestamp_millis() - ms).max(0))
}

fn batch_run(view: &BatchView) -> BatchRun {
    let info = &view.last_run.info;
    let time = |key: &str| info.get(key).and_then(|v| v.as_i64()).map(format_time);
    BatchRun {
        version: view.version,
        at: view.last_run.timestamp_ms.map(|ms| format_time(ms * 1000)),
        operation: info
            .get("sluice.operation")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        from: time("sluice.from_us"),
        to: time("sluice.to_us"),
    }
}

/// Runs a job's batch poller and snapshot refresher until `stop` flips.
pub(crate) async fn run_followers(
    service: Arc<JobService>,
    metrics: ServingMetrics,
    refresh: Duration,
    batch_poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch_due = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= batch_due {
            batch_due = tokio::time::Instant::now() + batch_poll;
            if let Err(e) = service.poll_batch().await {
                tracing::warn!(job = service.name(), error = %e, "reading the batch view failed");
            }
        }
        let worker = service.clone();
        let metrics_ = metrics.clone();
        match tokio::task::spawn_blocking(move || worker.refresh(&metrics_)).await {
            Ok(Err(e)) => {
                tracing::warn!(job = service.name(), error = %e, "merging the view failed")
            }
            Err(e) => tracing::error!(job = service.name(), error = %e, "the merge task failed"),
            Ok(Ok(_)) => {}
        }
        metrics.observe_speed_lag(service.name(), service.lags().0);
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A job's merged view computed once: result rows plus [`crate::ORIGIN_COLUMN`].
#[derive(Debug, Clone)]
pub struct MergedView {
    pub rows: arrow::array::RecordBatch,
    pub cutoff_us: Option<i64>,
    pub watermark_us: Option<i64>,
    pub counts: OriginCounts,
}

/// Merges one job's layers outside a server, as often as asked (what `sluice verify` compares
/// with a recompute). It follows `<job>.speed` from [`MergedViewReader::start`] until
/// [`MergedViewReader::stop`], so repeated reads do not read the topic again.
pub struct MergedViewReader {
    service: Arc<JobService>,
    metrics: ServingMetrics,
}

impl MergedViewReader {
    pub fn start(
        served: ServedJob,
        brokers: &str,
        lake: &Lake,
        overrides: &[(String, String)],
    ) -> Result<MergedViewReader> {
        Ok(MergedViewReader {
            service: Arc::new(JobService::new(served, brokers, lake, overrides)?),
            metrics: ServingMetrics::new(),
        })
    }

    /// Waits (up to `timeout`) until the speed view has reached the end of `<job>.speed`,
    /// reloads the view table if it has a new version, and merges.
    pub async fn read(&self, timeout: Duration) -> Result<MergedView> {
        let service = &self.service;
        let started = tokio::time::Instant::now();
        while !service.speed_caught_up() {
            if started.elapsed() > timeout {
                return Err(ServingError::Kafka {
                    job: service.name().to_string(),
                    during: format!("reading `{}` to its end", service.topics.speed),
                    message: format!("not at the end after {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        service.poll_batch().await?;
        let (worker, metrics) = (service.clone(), self.metrics.clone());
        tokio::task::spawn_blocking(move || worker.refresh(&metrics))
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))??;
        let snapshot = service.snapshot();
        Ok(MergedView {
            rows: snapshot.table.clone(),
            cutoff_us: snapshot.cutoff_us,
            watermark_us: snapshot.watermark_us,
            counts: snapshot.counts,
        })
    }

    /// Stops following `<job>.speed`.
    pub async fn stop(self) {
        let service = self.service;
        let _ = tokio::task::spawn_blocking(move || service.stop()).await;
    }
}
