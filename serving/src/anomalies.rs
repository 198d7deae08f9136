//! Row-count anomalies of the served jobs (`[anomalies]`; the rule is
//! [`sluice_core::anomaly`]'s): each job's newest complete windows of event time, the rows the
//! raw table holds in each, and which are outside the band of the windows before them, for
//! `GET /v1/jobs/{job}/anomalies`, the metrics and the dashboard.
//!
//! The counts come from the raw table, not from the merged view: the view holds what the SQL
//! made of the rows (filtered, grouped), while a dropped feed is a drop in the rows themselves.
//! A window is judged once the raw table holds it completely: it ends at or before the lake's
//! completeness bound ([`raw_completeness`]) less the job's `allowed_lateness`, so that the late
//! records the speed layer still takes are in (for a raw table of loaded files only, which has
//! no bound, before the window of its newest row, where the files may end). So a feed that
//! stops entirely also stops the bound, and it shows as staleness (the freshness SLA, the lag
//! alerts), not here; a feed that drops, or stops and resumes, shows here.
//!
//! A task started with the server judges every job periodically, so the metrics move without
//! anyone asking, and a request judges the job itself when a judgement is due (the in-process
//! tests run no task). A judgement is due once per window length, clamped to between
//! [`MIN_EVERY`] and [`MAX_EVERY`]: each one reads the raw table's newest commits
//! for its completeness, and only when a new window has completed since the last judgement
//! does it scan the event-time column over the `trailing` + [`RECENT_WINDOWS`] windows that
//! judging the newest [`RECENT_WINDOWS`] needs (the scan's filter skips the files outside them).
//! Rescanning rather than keeping counts lets late records that landed since be counted, as a
//! backfill of the same range would.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::TimestampMicrosecondType;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use serde::Serialize;
use sluice_core::Job;
use sluice_core::anomaly::{Anomaly, Direction, RowCounter, Rule, Window, windows};
use sluice_core::lake::TableLocation;
use sluice_core::lake_progress::{Completeness, raw_completeness};
use sluice_core::time::{floor_to, format_time};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::api::{AppState, job_name, json_response};
use crate::error::ServingError;
use crate::freshness::now_us;
use crate::metrics::ServingMetrics;
use crate::versions::JobSlot;

/// The newest complete windows judged and answered.
pub(crate) const RECENT_WINDOWS: usize = 30;
/// Judgements are due once per window length, but never more often than this...
const MIN_EVERY: Duration = Duration::from_secs(5);
/// ...and never less often than this.
const MAX_EVERY: Duration = Duration::from_secs(60);
/// How often the task looks for jobs whose judgement is due.
const TICK: Duration = Duration::from_secs(5);

/// One served job's judgements (in its [`crate::service::JobService`]).
pub(crate) struct Anomalies {
    /// `None`: the job declares no `[anomalies]`.
    rule: Option<Rule>,
    /// Held while judging, so the task and a request never judge at once (the later one finds
    /// the judgement fresh).
    judging: Mutex<Progress>,
    judged: RwLock<Arc<Judgement>>,
}

/// What the newest judgement was made from.
#[derive(Debug, Default)]
struct Progress {
    /// When the raw table was last looked at.
    checked_at: Option<Instant>,
    basis: Option<Basis>,
}

/// What a judgement depends on: where the judged windows end (`None`: none is complete), and
/// for a raw table without a completeness bound, its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Basis {
    until_us: Option<i64>,
    raw_version: Option<u64>,
}

/// The newest judgement of a job.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Judgement {
    /// The judged windows end at or before this: the raw table's completeness bound less the
    /// job's allowed lateness, floored to a window (null before a window is complete, or
    /// without `[anomalies]`).
    pub complete_until: Option<String>,
    pub complete_until_us: Option<i64>,
    /// When the raw table was last read for it.
    pub judged_at: Option<String>,
    /// Why the last read failed (the judgement before it is kept).
    pub error: Option<String>,
    /// The newest complete windows, oldest first.
    pub windows: Vec<WindowRow>,
    /// Those of them that are anomalous.
    pub anomalies: Vec<Anomaly>,
}

/// One window as the API lists it: its rows, and its band once judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct WindowRow {
    pub start: String,
    pub end: String,
    pub start_us: i64,
    pub end_us: i64,
    pub rows: u64,
    /// The trailing windows' median and MAD and the band they make (null while fewer than
    /// `min_history` windows precede it).
    pub median: Option<f64>,
    pub mad: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub direction: Option<Direction>,
}

impl From<&Window> for WindowRow {
    fn from(window: &Window) -> WindowRow {
        let band = window.band;
        WindowRow {
            start: format_time(window.start_us),
            end: format_time(window.end_us),
            start_us: window.start_us,
            end_us: window.end_us,
            rows: window.rows,
            median: band.map(|b| b.median),
            mad: band.map(|b| b.mad),
            low: band.map(|b| b.low),
            high: band.map(|b| b.high),
            direction: window.direction,
        }
    }
}

/// `GET /v1/jobs/{job}/anomalies`.
#[derive(Serialize)]
struct Answer<'a> {
    job: &'a str,
    rule: Option<&'a Rule>,
    #[serde(flatten)]
    judgement: &'a Judgement,
}

impl Anomalies {
    pub fn new(job: &Job) -> Anomalies {
        Anomalies {
            rule: Rule::for_job(job),
            judging: Mutex::default(),
            judged: RwLock::default(),
        }
    }

    fn judged(&self) -> Arc<Judgement> {
        self.judged
            .read()
            .map(|j| j.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn publish(&self, judgement: Judgement) {
        let mut slot = self
            .judged
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Arc::new(judgement);
    }

    /// The anomalous windows of the newest judgement (`None` without `[anomalies]` or before
    /// the first judgement), for the job's status.
    pub fn count(&self) -> Option<usize> {
        let judged = self.judged();
        self.rule
            .as_ref()
            .and(judged.judged_at.as_ref())
            .map(|_| judged.anomalies.len())
    }

    /// The answer of `GET /v1/jobs/{job}/anomalies`.
    pub fn answer(&self, job: &str) -> Result<String, ServingError> {
        let judgement = self.judged();
        let answer = Answer {
            job,
            rule: self.rule.as_ref(),
            judgement: &judgement,
        };
        serde_json::to_string(&answer).map_err(|e| ServingError::Internal(e.to_string()))
    }

    /// Judges `job`'s newest complete windows in `raw` if a judgement is due, counting the
    /// anomalies found in `metrics`. A failed read keeps the judgement before, with the error.
    pub async fn refresh(&self, raw: &TableLocation, job: &Job, metrics: &ServingMetrics) {
        let Some(rule) = &self.rule else {
            return;
        };
        let mut progress = self.judging.lock().await;
        if progress
            .checked_at
            .is_some_and(|at| at.elapsed() < every(rule))
        {
            return;
        }
        progress.checked_at = Some(Instant::now());
        let judged_at = Some(format_time(now_us()));
        match judge(raw, job, rule, progress.basis).await {
            Ok(Some((basis, recent))) => {
                metrics.observe_row_counts(job.name(), &recent);
                progress.basis = Some(basis);
                self.publish(Judgement {
                    complete_until: basis.until_us.map(format_time),
                    complete_until_us: basis.until_us,
                    judged_at,
                    error: None,
                    windows: recent.iter().map(WindowRow::from).collect(),
                    anomalies: recent.iter().filter_map(Window::anomaly).collect(),
                });
            }
            // Nothing completed since: the judgement stands, read again just now.
            Ok(None) => {
                let judged = self.judged();
                self.publish(Judgement {
                    judged_at,
                    error: None,
                    ..(*judged).clone()
                });
            }
            Err(e) => {
                tracing::warn!(job = job.name(), error = %e, "judging row-count anomalies failed; keeping the last judgement");
                let judged = self.judged();
                self.publish(Judgement {
                    error: Some(e.to_string()),
                    ..(*judged).clone()
                });
            }
        }
    }
}

/// How often a judgement is due under `rule`.
fn every(rule: &Rule) -> Duration {
    let window = Duration::from_micros(u64::try_from(rule.window_us).unwrap_or(u64::MAX));
    window.clamp(MIN_EVERY, MAX_EVERY)
}

/// The newest [`RECENT_WINDOWS`] complete windows of `raw`, judged, with what they were judged
/// from; `None` when that is `known`, the basis of the judgement before.
async fn judge(
    raw: &TableLocation,
    job: &Job,
    rule: &Rule,
    known: Option<Basis>,
) -> sluice_core::Result<Option<(Basis, Vec<Window>)>> {
    let width = rule.window_us;
    let lateness = i64::try_from(job.spec.source.allowed_lateness.as_micros()).unwrap_or(i64::MAX);
    let basis = match raw_completeness(raw, job).await? {
        // No table, or a partition not reported yet; or every partition empty.
        Completeness::Nothing | Completeness::Until(i64::MAX) => Basis {
            until_us: None,
            raw_version: None,
        },
        Completeness::Until(until) => Basis {
            until_us: Some(floor_to(until.saturating_sub(lateness), width)),
            raw_version: None,
        },
        // Loaded files only: complete as loaded, up to the window of the newest row, which the
        // files may end inside. Read again only when a load committed.
        Completeness::Unbounded => {
            let raw_version = raw.open().await?.version();
            if known.is_some_and(|known| known.raw_version == raw_version) {
                return Ok(None);
            }
            Basis {
                until_us: newest_event(raw, job)
                    .await?
                    .map(|newest| floor_to(newest, width)),
                raw_version,
            }
        }
    };
    if known == Some(basis) {
        return Ok(None);
    }
    let Some(until) = basis.until_us else {
        return Ok(Some((basis, Vec::new())));
    };
    let span = i64::try_from(rule.trailing.saturating_add(RECENT_WINDOWS)).unwrap_or(i64::MAX);
    let from = until.saturating_sub(span.saturating_mul(width));
    let mut counter = RowCounter::new(job, rule);
    counter.add_raw(raw, (from, until)).await?;
    let mut judged: Vec<Window> = windows(counter.counts(), (from, until), rule).collect();
    let recent = judged.split_off(judged.len().saturating_sub(RECENT_WINDOWS));
    Ok(Some((basis, recent)))
}

/// The raw table's newest event time (µs), reading its event-time column.
async fn newest_event(raw: &TableLocation, job: &Job) -> sluice_core::Result<Option<i64>> {
    let time = &job.spec.source.event_time;
    let mut stream = raw
        .scan(std::slice::from_ref(time), time, None, None)
        .await?;
    let mut newest = None;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|source| sluice_core::Error::Execution {
            job: job.name().to_string(),
            during: "reading the raw table's newest event time",
            source: Box::new(source),
        })?;
        let max = batch
            .column(0)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .and_then(arrow::compute::max);
        newest = newest.max(max);
    }
    Ok(newest)
}

/// Judges every served job when due, until `stop` flips.
pub(crate) fn start(
    jobs: Arc<Vec<Arc<JobSlot>>>,
    metrics: ServingMetrics,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let round = async {
                for slot in jobs.iter() {
                    let service = slot.current();
                    service
                        .anomalies
                        .refresh(&service.raw_table, &service.served.job, &metrics)
                        .await;
                }
            };
            // A scan under way is dropped at shutdown: it holds nothing but reads.
            tokio::select! {
                _ = round => {}
                _ = stop.changed() => return,
            }
        }
    })
}

/// `GET /v1/jobs/{job}/anomalies`: the newest judgement (made now if one is due). A job
/// without `[anomalies]` answers `rule: null` and no windows.
pub(crate) async fn anomalies(
    State(state): State<AppState>,
    job: Result<Path<String>, PathRejection>,
) -> Result<Response, ServingError> {
    let service = state.job(&job_name(job)?)?;
    service
        .anomalies
        .refresh(&service.raw_table, &service.served.job, &state.metrics)
        .await;
    Ok(json_response(
        StatusCode::OK,
        service.anomalies.answer(service.name())?,
    ))
}

#[cfg(test)]
mod tests;
