//! One served job: its speed follower, its batch view, and the merged snapshot requests read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_core::lake::{TableLocation, commit_key};
use sluice_core::lake_progress::raw_completeness;
use sluice_core::speed::SpeedCodec;
use sluice_core::time::format_time;
use sluice_core::topics::Topics;
use sluice_core::{Job, Lake, Pipeline};
use tokio::sync::watch;

use crate::anomalies::Anomalies;
use crate::batch_view::{self, BatchView};
use crate::error::{Result, ServingError};
use crate::freshness::{Freshness, Stale, freshness_of, last_backfill_ms, now_us};
use crate::metrics::ServingMetrics;
use crate::quality::{self, CheckStatus, Quarantined};
use crate::query::JobShape;
use crate::snapshot::{Inputs, OriginCounts, Snapshot};
use crate::speed_view::{SpeedFollower, SpeedSource, SpeedView};

/// A job to serve and where its speed daemon's consumer group is.
#[derive(Clone)]
pub struct ServedJob {
    pub job: Job,
    pub pipeline: Arc<Pipeline>,
    /// The speed daemon's consumer group (whose source lag is reported).
    pub stream_group: String,
}

impl ServedJob {
    /// Whether this job is the version `spec` describes (same version, same plan).
    pub fn serves(&self, spec: &sluice_core::control::VersionSpec) -> bool {
        spec.version == self.job.version() && spec.fingerprint == self.job.plan_fingerprint()
    }

    /// A job whose speed daemon runs in the default group, `sluice-<job>`.
    pub fn new(job: Job, pipeline: Arc<Pipeline>) -> ServedJob {
        let stream_group = sluice_core::topics::stream_group(&job.versioned_name());
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
    /// The view version answering (`[view] version`; see `sluice switch`).
    pub version: u32,
    pub plan_fingerprint: String,
    pub source_topic: String,
    pub speed_topic: String,
    pub view_table: String,
    pub key_columns: Vec<String>,
    pub cutoff: Option<String>,
    pub cutoff_us: Option<i64>,
    /// The event time before which the raw table holds every source partition's records, the
    /// bound backfills stop at (`None`: not known yet, or the raw table holds files only).
    pub lake_complete_until: Option<String>,
    pub lake_complete_until_us: Option<i64>,
    pub watermark: Option<String>,
    pub watermark_us: Option<i64>,
    pub speed_lag_records: i64,
    pub source_lag_records: Option<i64>,
    pub last_batch_run: Option<BatchRun>,
    pub rows: OriginCounts,
    /// Partial-state rows the merge read from each layer.
    pub partial_rows: PartialRows,
    pub freshness_ms: Option<i64>,
    /// `freshness_seconds`, `freshness_sla_seconds` and `fresh`: how far behind the clock the
    /// merged view is complete, against `[view] freshness_sla` (see [`Freshness`]).
    #[serde(flatten)]
    pub freshness: Freshness,
    pub snapshot_at: String,
    /// Whether the job answers: nothing in `loading`.
    pub ready: bool,
    /// The parts still loading (empty once ready).
    pub loading: Vec<Loading>,
    /// The job's `[[checks]]` with the rows the newest backfill found violating each and the
    /// records the speed layer quarantined under each (see [`CheckStatus`]).
    pub checks: Vec<CheckStatus>,
    /// Anomalous windows among the newest judged by the job's `[anomalies]`
    /// (`GET /v1/jobs/{job}/anomalies`); `None` without `[anomalies]` or before the first
    /// judgement.
    pub row_count_anomalies: Option<usize>,
}

/// What [`Loading::part`] names: the view table's rows, merged into the snapshot requests read.
pub const BATCH_VIEW: &str = "batch view";
/// What [`Loading::part`] names: `<job>.speed`, read to its end.
pub const SPEED_VIEW: &str = "speed view";

/// A part of a job that is not loaded yet: why `GET /health` answers 503, and what a 503 from
/// `/view` or `/sql` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loading {
    pub job: String,
    /// [`BATCH_VIEW`] or [`SPEED_VIEW`].
    pub part: &'static str,
    /// Why the last attempt to load it failed (it is retried).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl std::fmt::Display for Loading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job `{}`: the {} is still loading", self.job, self.part)?;
        if let Some(error) = &self.error {
            write!(f, " (the last attempt failed: {error}; retrying)")?;
        }
        Ok(())
    }
}

/// How often the raw table's completeness is read.
const LAKE_POLL: Duration = Duration::from_secs(10);

pub(crate) struct JobService {
    pub served: ServedJob,
    pub codec: SpeedCodec,
    pub topics: Topics,
    pub view_table: TableLocation,
    pub raw_table: TableLocation,
    /// The raw table's completeness bound (µs) and when it was last read.
    lake_complete: RwLock<(Option<i64>, Option<Instant>)>,
    speed: SpeedFollower,
    batch: RwLock<Option<Arc<BatchView>>>,
    /// Set once a read of the view table succeeded (a table that does not exist yet counts: an
    /// empty batch view), after `batch` holds what it read. Never cleared: a later read that
    /// fails keeps the view read before.
    batch_loaded: AtomicBool,
    /// The error of the newest read of the view table; cleared by the next success.
    batch_error: RwLock<Option<String>>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// `<job>.dlq` counted by check, as the dashboard's sampler last read it.
    quarantined: Quarantined,
    /// Row-count anomalies of the raw table (`[anomalies]`).
    pub anomalies: Anomalies,
}

impl JobService {
    pub fn new(
        served: ServedJob,
        brokers: &str,
        lake: &Lake,
        overrides: &[(String, String)],
    ) -> Result<JobService> {
        let (job, stream_group) = (served.job.name().to_string(), served.stream_group.clone());
        JobService::with_speed(served, lake, |topics| {
            SpeedFollower::start(SpeedSource {
                job,
                brokers: brokers.to_string(),
                speed_topic: topics.speed.clone(),
                source_topic: topics.source.clone(),
                stream_group,
                overrides: overrides.to_vec(),
            })
        })
    }

    /// A job whose speed view `speed` follows (it is started only for a stateful job).
    fn with_speed(
        served: ServedJob,
        lake: &Lake,
        speed: impl FnOnce(&Topics) -> Result<SpeedFollower>,
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
        let speed = speed(&topics)?;
        Ok(JobService {
            codec: SpeedCodec::new(stage),
            view_table: TableLocation::new(lake.view_table(job)),
            raw_table: TableLocation::new(lake.raw_table(job)),
            lake_complete: RwLock::new((None, None)),
            snapshot: RwLock::new(Arc::new(Snapshot::empty(stage))),
            topics,
            speed,
            batch: RwLock::new(None),
            batch_loaded: AtomicBool::new(false),
            batch_error: RwLock::new(None),
            quarantined: Quarantined::default(),
            anomalies: Anomalies::new(job),
            served,
        })
    }

    pub fn name(&self) -> &str {
        self.served.job.name()
    }

    /// The view version this service answers from.
    pub fn version(&self) -> u32 {
        self.served.job.version()
    }

    /// Whether this service is the version `spec` describes (same version, same plan).
    pub fn serves(&self, spec: &sluice_core::control::VersionSpec) -> bool {
        self.served.serves(spec)
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

    /// The parts not loaded yet (ready when there are none): the speed view until it reached the end of `<job>.speed`
    /// (again after its follower reconnects), the batch view until the snapshot requests read
    /// was built from a successful read of the view table (once: later reads that fail or are
    /// under way keep the snapshot built before).
    pub fn loading(&self) -> Vec<Loading> {
        let mut parts = Vec::new();
        let (caught_up, error) = self
            .speed
            .read(|v| (v.caught_up, v.last_error.clone()))
            .unwrap_or((false, None));
        if !caught_up {
            parts.push(Loading {
                job: self.name().to_string(),
                part: SPEED_VIEW,
                error,
            });
        }
        if !self.snapshot().batch_loaded {
            parts.push(self.batch_loading());
        }
        parts
    }

    /// Refuses to answer from `snapshot` before it holds the batch view: its rows would be
    /// the speed view's alone, with no cutoff, which is a wrong answer, not an empty one.
    pub fn require_batch(&self, snapshot: &Snapshot) -> Result<()> {
        if snapshot.batch_loaded {
            Ok(())
        } else {
            Err(ServingError::Loading(self.batch_loading()))
        }
    }

    /// The batch view as a part still loading, with the error of the last read while no read
    /// has succeeded yet.
    fn batch_loading(&self) -> Loading {
        let error = if self.batch_loaded.load(Ordering::SeqCst) {
            None
        } else {
            self.batch_error.read().ok().and_then(|e| e.clone())
        };
        Loading {
            job: self.name().to_string(),
            part: BATCH_VIEW,
            error,
        }
    }

    /// Reloads the batch view when the table has a new version.
    pub async fn poll_batch(&self) -> Result<()> {
        let known = self
            .batch
            .read()
            .ok()
            .and_then(|b| b.as_ref().map(|b| b.version));
        let stage = self.stage()?;
        let read = batch_view::load_if_changed(
            self.served.pipeline.plan(),
            stage,
            &self.view_table,
            known,
        )
        .await
        .and_then(|view| self.check_batch_plan(view));
        self.poll_lake_completeness().await;
        self.batch_read(read)
    }

    /// Refuses a view table version another plan wrote (its newest commit names the plan).
    fn check_batch_plan(&self, view: Option<Arc<BatchView>>) -> Result<Option<Arc<BatchView>>> {
        let found = view.as_ref().and_then(|view| {
            view.last_run
                .info
                .get(commit_key::PLAN_FINGERPRINT)
                .and_then(|v| v.as_str())
        });
        let place = format!("the view table {}", self.view_table.location);
        self.served
            .job
            .check_plan(&place, found)
            .map_err(|mismatch| sluice_core::Error::Plan(Box::new(mismatch)))?;
        Ok(view)
    }

    /// Refuses speed state another plan wrote (a partition's plan record names it).
    fn check_speed_plans(&self, speed: &SpeedView) -> Result<()> {
        let topic = Topics::for_job(&self.served.job).speed;
        for (partition, found) in &speed.plans {
            let place = format!("partition {partition} of {topic}");
            self.served
                .job
                .check_plan(&place, Some(found))
                .map_err(|mismatch| sluice_core::Error::Plan(Box::new(mismatch)))?;
        }
        Ok(())
    }

    /// Reads how complete the raw table is, at most every [`LAKE_POLL`] (it reads the raw
    /// table's newest commits). A failed read keeps the last figure; the status shows it.
    async fn poll_lake_completeness(&self) {
        let due = self
            .lake_complete
            .read()
            .map(|c| c.1.is_none_or(|at| at.elapsed() >= LAKE_POLL))
            .unwrap_or(true);
        if !due {
            return;
        }
        let read = raw_completeness(&self.raw_table, &self.served.job).await;
        if let Ok(mut slot) = self.lake_complete.write() {
            match read {
                Ok(completeness) => *slot = (completeness.until_us(), Some(Instant::now())),
                Err(e) => {
                    tracing::debug!(job = self.name(), error = %e, "reading the raw table's completeness");
                    slot.1 = Some(Instant::now());
                }
            }
        }
    }

    /// Takes in one read of the view table: a new version, nothing new (`Ok(None)`, also when
    /// the table does not exist yet), or an error, which is kept for `/health` until a read
    /// succeeds and returned.
    pub(crate) fn batch_read(&self, read: Result<Option<Arc<BatchView>>>) -> Result<()> {
        let view = match read {
            Ok(view) => view,
            Err(e) => {
                if let Ok(mut error) = self.batch_error.write() {
                    *error = Some(e.to_string());
                }
                return Err(e);
            }
        };
        if let Some(view) = view {
            tracing::info!(job = self.name(), version = view.version, cutoff = ?view.cutoff_us.map(format_time), "batch view loaded");
            let mut batch = self
                .batch
                .write()
                .map_err(|_| ServingError::Internal("batch view lock poisoned".to_string()))?;
            *batch = Some(view);
        }
        if let Ok(mut error) = self.batch_error.write() {
            *error = None;
        }
        // After `batch` is filled: a snapshot built once this is set holds what was just read.
        self.batch_loaded.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Rebuilds the merged snapshot if either layer changed since the last one.
    pub fn refresh(&self, metrics: &ServingMetrics) -> Result<bool> {
        let current = self.snapshot();
        // Before `batch`: `batch_read` fills `batch` before it sets the flag, so a snapshot
        // marked loaded holds the first successful read of the view table or a later one.
        let batch_loaded = self.batch_loaded.load(Ordering::SeqCst);
        let batch = self.batch.read().ok().and_then(|b| b.clone());
        let batch_version = batch.as_ref().map(|b| b.version);
        let stage = self.stage()?;
        let built = self.speed.read(|speed| {
            let unchanged = speed.version == current.speed_version
                && batch_version == current.batch_version
                && batch_loaded == current.batch_loaded
                && speed.watermark_us() == current.watermark_us;
            (!unchanged).then(|| {
                self.check_speed_plans(speed)?;
                Snapshot::build(&Inputs {
                    stage,
                    codec: &self.codec,
                    key_columns: &self.served.job.spec.view.key,
                    batch: batch.as_deref(),
                    batch_loaded,
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

    /// The merged view's freshness at `now_us` against the job's `[view] freshness_sla`,
    /// from the snapshot requests read (the cutoff and watermark answers carry).
    pub fn freshness(&self, now_us: i64) -> Freshness {
        freshness_of(
            &self.snapshot(),
            self.served.job.spec.view.freshness_sla,
            now_us,
        )
    }

    /// What `/health` reports when this job's view misses its freshness SLA now. Not judged
    /// before the batch view is merged in: until then the snapshot lacks the cutoff, and
    /// `/health` says `starting` anyway.
    pub fn stale(&self) -> Option<Stale> {
        let snapshot = self.snapshot();
        if !snapshot.batch_loaded {
            return None;
        }
        let sla = self.served.job.spec.view.freshness_sla;
        freshness_of(&snapshot, sla, now_us()).stale(self.name())
    }

    /// The commit time (ms) of the backfill that wrote the view table's newest version.
    fn last_backfill_ms(&self) -> Option<i64> {
        let batch = self.batch.read().ok()?.clone()?;
        last_backfill_ms(&batch)
    }

    /// Records what the dashboard's sampler counted of `<job>.dlq` by `sluice.check` (`None`:
    /// not read to its end yet), for [`JobStatus::checks`].
    pub(crate) fn note_quarantined(
        &self,
        by_check: Option<std::collections::BTreeMap<String, u64>>,
    ) {
        self.quarantined.set(by_check);
    }

    pub fn status(&self) -> JobStatus {
        let snapshot = self.snapshot();
        let (speed_lag, source_lag) = self.lags();
        let batch = self.batch.read().ok().and_then(|b| b.clone());
        let loading = self.loading();
        let lake_complete_until = self
            .lake_complete
            .read()
            .ok()
            .and_then(|c| c.0)
            .filter(|&until| until != i64::MAX);
        let checks = quality::statuses(
            self.served.pipeline.checks(),
            batch.as_ref().map(|b| &b.last_run),
            &self.quarantined,
        );
        JobStatus {
            job: self.name().to_string(),
            version: self.version(),
            plan_fingerprint: self.served.job.plan_fingerprint(),
            source_topic: self.topics.source.clone(),
            speed_topic: self.topics.speed.clone(),
            view_table: self.view_table.location.clone(),
            key_columns: self.served.job.spec.view.key.clone(),
            cutoff: snapshot.cutoff_us.map(format_time),
            cutoff_us: snapshot.cutoff_us,
            lake_complete_until: lake_complete_until.map(format_time),
            lake_complete_until_us: lake_complete_until,
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
            freshness: freshness_of(&snapshot, self.served.job.spec.view.freshness_sla, now_us()),
            snapshot_at: format_time(snapshot.built_at_ms * 1000),
            ready: loading.is_empty(),
            loading,
            checks,
            row_count_anomalies: self.anomalies.count(),
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

#[cfg(test)]
impl JobService {
    /// A job with no Kafka behind it: the test fills its speed view.
    pub fn detached(served: ServedJob, lake: &Lake) -> Result<JobService> {
        JobService::with_speed(served, lake, |_| Ok(SpeedFollower::detached()))
    }

    pub fn speed_follower(&self) -> &SpeedFollower {
        &self.speed
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
            .get(commit_key::OPERATION)
            .and_then(|v| v.as_str())
            .map(str::to_string),
        from: time(commit_key::FROM_US),
        to: time(commit_key::TO_US),
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
        // Every round, not only when the view changes: freshness grows with the clock.
        metrics.observe_freshness(service.name(), &service.freshness(now_us()));
        if let Some(committed_ms) = service.last_backfill_ms() {
            metrics.observe_backfill(service.name(), committed_ms);
        }
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
    /// The view table version the batch side came from.
    pub batch_version: Option<u64>,
    /// Per source partition, the offset the speed side reflects.
    pub speed_offsets: std::collections::BTreeMap<i32, i64>,
    /// Per source partition, the release bound of a job's stateful stages the speed side had
    /// reached (rows before it decided, the later ones still held); empty for other jobs.
    pub speed_release_bounds: std::collections::BTreeMap<i32, i64>,
    /// The speed side is exactly the state of `speed_offsets` (no transaction half read).
    pub speed_consistent: bool,
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
            batch_version: snapshot.batch_version,
            speed_offsets: snapshot.speed_offsets.clone(),
            speed_release_bounds: snapshot.speed_release_bounds.clone(),
            speed_consistent: snapshot.speed_consistent,
        })
    }

    /// As [`MergedViewReader::read`], taken at a moment when no transaction of
    /// `<job>.speed` is half read, so the speed side is the state of known source offsets.
    pub async fn read_consistent(&self, timeout: Duration) -> Result<MergedView> {
        let started = tokio::time::Instant::now();
        loop {
            let merged = self.read(timeout).await?;
            if merged.speed_consistent {
                return Ok(merged);
            }
            if started.elapsed() > timeout {
                return Err(ServingError::Internal(format!(
                    "job `{}`: the speed view was in the middle of a transaction at every read for {timeout:?}",
                    self.service.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops following `<job>.speed`.
    pub async fn stop(self) {
        let service = self.service;
        let _ = tokio::task::spawn_blocking(move || service.stop()).await;
    }
}
