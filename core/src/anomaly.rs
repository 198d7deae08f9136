//! Row-count anomalies (`[anomalies]`): a window of event time whose count of source rows is
//! far from what the windows just before it held. A feed that dropped (a producer down, a
//! partition gone quiet, a filter upstream gone wrong) and a feed that doubled (a replay, a
//! duplicating producer) pass every per-row check; they show only in the counts.
//!
//! ```toml
//! [anomalies]
//! window = "1h"            # default: the job's [view] bucket
//! trailing = 12            # windows each window is compared with (default 12, at most 1000)
//! k = 3.5                  # band half-width in robust standard deviations (default 3.5)
//! min_history = 6          # trailing windows needed before a window is judged (default 6)
//! min_deviation = 1        # rows: the band is never narrower than ± this (default 1)
//! ```
//!
//! The rule ([`windows`], [`detect`]): windows are `[start, start + window)` aligned to the
//! epoch, like TUMBLE. Each window's count of source rows (the decoded rows the lake holds,
//! before checks and the SQL) is compared with the counts of the `trailing` windows just before
//! it: their median `m` and median absolute deviation `MAD = median(|xᵢ − m|)`. The window is
//! anomalous, `high` or `low`, when its count lies outside
//!
//! ```text
//! m ± max(k · 1.4826 · MAD, min_deviation)
//! ```
//!
//! - Median and MAD rather than mean and standard deviation: an earlier spike or drop in the
//!   history (even one of the anomalies found) moves neither, where it would widen a standard
//!   deviation enough to hide the next one. 1.4826 · MAD estimates the standard deviation of
//!   normally distributed counts, so `k = 3.5` is Iglewicz and Hoaglin's modified z-score
//!   threshold.
//! - `min_deviation` floors the half-width. When more than half of the history is one value
//!   (a perfectly steady feed) the MAD is 0 and the band would have no width, flagging a
//!   change of a single row; with the floor a deviation of `min_deviation` rows or fewer is
//!   never an anomaly.
//! - A window without a row counts as 0: an empty window is the drop this is for. Windows
//!   before the first window holding a row are not counted (the feed had not started), and a
//!   window is judged only once `min_history` windows precede it.
//! - Only complete windows are judged: callers pass a range the lake holds completely (the
//!   serving layer stops at the raw table's completeness bound, a backfill at its range end).
//!
//! [`RowCounter`] counts the rows of Arrow batches per window from their event-time column:
//! the one count the batch layer (over the rows a backfill reads) and the serving layer (over
//! the raw table) both use.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, arrow_err};
use crate::lake::TableLocation;
use crate::spec::Job;
use crate::time::{ceil_to, floor_to, format_time};

/// The factor that makes the MAD of normally distributed values estimate their standard
/// deviation (1 / Φ⁻¹(3/4)).
pub const MAD_SCALE: f64 = 1.4826;

/// `trailing` at most: a serving layer scans this many windows of the raw table per judgement.
pub const MAX_TRAILING: usize = 1000;

/// `window` at most (about ten years): window arithmetic stays far from `i64`'s range.
const MAX_WINDOW: Duration = Duration::from_secs(3650 * 86_400);

/// `[anomalies]` of a job file (see the module docs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalySpec {
    /// The window rows are counted in. Default: the job's `[view] bucket`.
    #[serde(default, deserialize_with = "optional_duration")]
    pub window: Option<Duration>,
    /// How many windows before a window it is compared with.
    #[serde(default = "default_trailing")]
    pub trailing: usize,
    /// The band's half-width in robust standard deviations (1.4826 · MAD).
    #[serde(default = "default_k")]
    pub k: f64,
    /// How many trailing windows must exist before a window is judged.
    #[serde(default = "default_min_history")]
    pub min_history: usize,
    /// The band's least half-width, in rows.
    #[serde(default = "default_min_deviation")]
    pub min_deviation: u64,
}

fn default_trailing() -> usize {
    12
}

fn default_k() -> f64 {
    3.5
}

fn default_min_history() -> usize {
    6
}

fn default_min_deviation() -> u64 {
    1
}

/// `serde_duration` for an optional field (absent: `None`, through `#[serde(default)]`).
fn optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    crate::duration::serde_duration::deserialize(d).map(Some)
}

impl AnomalySpec {
    /// Refuses settings the rule cannot run with; `job_file` names the file in the error.
    pub fn validate(&self, job_file: &Path) -> Result<()> {
        let invalid = |field: &str, expected: String, got: String| Error::InvalidField {
            file: job_file.to_path_buf(),
            field: format!("anomalies.{field}"),
            expected,
            got,
        };
        if let Some(window) = self.window {
            if window.as_micros() == 0 {
                return Err(invalid("window", "a positive duration".into(), "0".into()));
            }
            if window > MAX_WINDOW {
                return Err(invalid(
                    "window",
                    "a duration of at most 3650d".into(),
                    humantime::format_duration(window).to_string(),
                ));
            }
        }
        if !(1..=MAX_TRAILING).contains(&self.trailing) {
            return Err(invalid(
                "trailing",
                format!("from 1 to {MAX_TRAILING} windows"),
                self.trailing.to_string(),
            ));
        }
        if !(1..=self.trailing).contains(&self.min_history) {
            return Err(invalid(
                "min_history",
                format!("from 1 to `trailing` ({})", self.trailing),
                self.min_history.to_string(),
            ));
        }
        if !(self.k.is_finite() && self.k > 0.0) {
            return Err(invalid("k", "a positive number".into(), self.k.to_string()));
        }
        Ok(())
    }

    /// The rule this declares for a job whose `[view] bucket` is `bucket`.
    pub fn rule(&self, bucket: Duration) -> Rule {
        let window = self.window.unwrap_or(bucket);
        Rule {
            window: humantime::format_duration(window).to_string(),
            window_us: i64::try_from(window.as_micros()).unwrap_or(i64::MAX).max(1),
            trailing: self.trailing,
            k: self.k,
            min_history: self.min_history,
            min_deviation: self.min_deviation,
        }
    }
}

/// A job's `[anomalies]` with its window resolved, as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// The window, as a duration (`1h`).
    pub window: String,
    pub window_us: i64,
    pub trailing: usize,
    pub k: f64,
    pub min_history: usize,
    pub min_deviation: u64,
}

impl Rule {
    /// The rule of `job`, `None` when it declares no `[anomalies]`.
    pub fn for_job(job: &Job) -> Option<Rule> {
        job.spec
            .anomalies
            .as_ref()
            .map(|spec| spec.rule(job.spec.view.bucket))
    }

    /// Where the history of the windows from `from_us` on begins: `trailing` windows before
    /// the window holding `from_us`.
    pub fn history_start(&self, from_us: i64) -> i64 {
        let width = self.window_us.max(1);
        let span = i64::try_from(self.trailing)
            .unwrap_or(i64::MAX)
            .saturating_mul(width);
        floor_to(from_us, width).saturating_sub(span)
    }

    /// The band of a window whose trailing windows held `history` rows.
    fn band(&self, history: &VecDeque<u64>) -> Band {
        let mut values: Vec<f64> = history.iter().map(|&rows| rows as f64).collect();
        let median = median_of(&mut values);
        let mut deviations: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
        let mad = median_of(&mut deviations);
        let half_width = (self.k * MAD_SCALE * mad).max(self.min_deviation as f64);
        Band {
            history: values.len(),
            median,
            mad,
            low: median - half_width,
            high: median + half_width,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match (values.len(), values.len() % 2) {
        (0, _) => 0.0,
        (_, 1) => values[middle],
        _ => values[middle - 1].midpoint(values[middle]),
    }
}

/// Which side of the band an anomalous window is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// More rows than the band allows.
    High,
    /// Fewer rows than the band allows (an empty window is the usual one).
    Low,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::High => "high",
            Direction::Low => "low",
        }
    }
}

/// What a window's trailing windows say it should hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Band {
    /// Trailing windows it was computed from (`min_history` to `trailing`).
    pub history: usize,
    pub median: f64,
    pub mad: f64,
    /// `median ∓ max(k · 1.4826 · mad, min_deviation)`: counts in `[low, high]` are normal.
    pub low: f64,
    pub high: f64,
}

/// One window's count and, once it has `min_history` trailing windows, its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    pub start_us: i64,
    pub end_us: i64,
    pub rows: u64,
    /// `None` before `min_history` trailing windows exist (the window is not judged).
    pub band: Option<Band>,
    /// `Some` when the window is anomalous.
    pub direction: Option<Direction>,
}

impl Window {
    /// The window as an anomaly, if it is one.
    pub fn anomaly(&self) -> Option<Anomaly> {
        let (band, direction) = (self.band?, self.direction?);
        Some(Anomaly {
            start: format_time(self.start_us),
            end: format_time(self.end_us),
            start_us: self.start_us,
            end_us: self.end_us,
            rows: self.rows,
            median: band.median,
            mad: band.mad,
            low: band.low,
            high: band.high,
            direction,
        })
    }
}

/// A window whose row count is outside its band.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// The window, RFC 3339 and µs since the epoch.
    pub start: String,
    pub end: String,
    pub start_us: i64,
    pub end_us: i64,
    pub rows: u64,
    /// The median and MAD of the trailing windows' counts, and the band they make.
    pub median: f64,
    pub mad: f64,
    pub low: f64,
    pub high: f64,
    pub direction: Direction,
}

/// Every window of `[from_us, to_us)` that lies wholly inside it, from the first holding a
/// row, oldest first, each judged against the ones before it. `counts` maps window starts
/// (as [`RowCounter`] makes them) to rows; a window it lacks held none.
pub fn windows<'a>(
    counts: &'a BTreeMap<i64, u64>,
    (from_us, to_us): (i64, i64),
    rule: &'a Rule,
) -> Windows<'a> {
    let width = rule.window_us.max(1);
    let first_whole = ceil_to(from_us, width);
    let first_row = counts
        .range(first_whole..)
        .next()
        .map(|(&start, _)| floor_to(start, width));
    Windows {
        counts,
        rule,
        next_start: first_row.map_or(i64::MAX, |start| start.max(first_whole)),
        end_us: to_us,
        history: VecDeque::with_capacity(rule.trailing.min(MAX_TRAILING)),
    }
}

/// The anomalous windows of [`windows`].
pub fn detect(counts: &BTreeMap<i64, u64>, range: (i64, i64), rule: &Rule) -> Vec<Anomaly> {
    windows(counts, range, rule)
        .filter_map(|window| window.anomaly())
        .collect()
}

/// The iterator of [`windows`].
pub struct Windows<'a> {
    counts: &'a BTreeMap<i64, u64>,
    rule: &'a Rule,
    next_start: i64,
    end_us: i64,
    /// The counts of the trailing windows, oldest first.
    history: VecDeque<u64>,
}

impl Iterator for Windows<'_> {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        let start_us = self.next_start;
        let end_us = start_us.checked_add(self.rule.window_us.max(1))?;
        if end_us > self.end_us {
            return None;
        }
        self.next_start = end_us;
        let rows = self.counts.get(&start_us).copied().unwrap_or(0);
        let band = (self.history.len() >= self.rule.min_history.max(1))
            .then(|| self.rule.band(&self.history));
        let direction = band.and_then(|band| {
            let count = rows as f64;
            if count > band.high {
                Some(Direction::High)
            } else if count < band.low {
                Some(Direction::Low)
            } else {
                None
            }
        });
        if self.history.len() >= self.rule.trailing.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(rows);
        Some(Window {
            start_us,
            end_us,
            rows,
            band,
            direction,
        })
    }
}

/// Adds the rows of `batch` to `counts` by the epoch-aligned window of width `window_us` their
/// `event_time` column falls in (µs timestamps; other timestamp units are converted; null
/// event times are not counted).
pub fn count_rows(
    batch: &RecordBatch,
    event_time: &str,
    window_us: i64,
    counts: &mut BTreeMap<i64, u64>,
) -> Result<()> {
    let width = window_us.max(1);
    let column = batch
        .column_by_name(event_time)
        .ok_or_else(|| Error::Arrow {
            during: "counting rows per window",
            source: Box::new(arrow::error::ArrowError::SchemaError(format!(
                "no event-time column `{event_time}`"
            ))),
        })?;
    let converted;
    let times = match column.as_primitive_opt::<TimestampMicrosecondType>() {
        Some(times) => times,
        None => {
            converted =
                arrow::compute::cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))
                    .map_err(arrow_err("reading event times as microseconds"))?;
            converted.as_primitive::<TimestampMicrosecondType>()
        }
    };
    // Rows mostly come in event-time order: count a run of one window before touching the map.
    let (mut run_start, mut run_rows) = (0_i64, 0_u64);
    for time in times.iter().flatten() {
        let start = floor_to(time, width);
        if run_rows > 0 && start != run_start {
            *counts.entry(run_start).or_default() += run_rows;
            run_rows = 0;
        }
        run_start = start;
        run_rows += 1;
    }
    if run_rows > 0 {
        *counts.entry(run_start).or_default() += run_rows;
    }
    Ok(())
}

/// A job's source rows counted per window of its rule, batch by batch or from the raw table.
#[derive(Debug, Clone)]
pub struct RowCounter {
    job: String,
    event_time: String,
    window_us: i64,
    counts: BTreeMap<i64, u64>,
}

impl RowCounter {
    pub fn new(job: &Job, rule: &Rule) -> RowCounter {
        RowCounter {
            job: job.name().to_string(),
            event_time: job.spec.source.event_time.clone(),
            window_us: rule.window_us,
            counts: BTreeMap::new(),
        }
    }

    /// Counts the rows of a batch of source (or raw) rows.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        count_rows(batch, &self.event_time, self.window_us, &mut self.counts)
    }

    /// Counts the raw table's rows with event time in `[from_us, to_us)`, reading the
    /// event-time column alone (and, through the scan's filter, only the files whose
    /// statistics overlap the range).
    pub async fn add_raw(
        &mut self,
        raw: &TableLocation,
        (from_us, to_us): (i64, i64),
    ) -> Result<()> {
        if from_us >= to_us {
            return Ok(());
        }
        let columns = std::slice::from_ref(&self.event_time);
        let mut stream = raw
            .scan(columns, &self.event_time, Some(from_us), Some(to_us))
            .await?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|source| Error::Execution {
                job: self.job.clone(),
                during: "counting the raw table's rows per window",
                source: Box::new(source),
            })?;
            self.add(&batch)?;
        }
        Ok(())
    }

    /// Rows by window start (µs).
    pub fn counts(&self) -> &BTreeMap<i64, u64> {
        &self.counts
    }
}

/// What a backfill of `[from_us, to_us)` reports: the anomalous windows that end in
/// `(from_us, to_us]` (so adjacent ranges report each window once), with `counter` holding the
/// rows the backfill read. The trailing windows before `from_us` that their history needs are
/// counted here from `raw`'s event-time column.
pub async fn anomalies_of_range(
    raw: &TableLocation,
    rule: &Rule,
    mut counter: RowCounter,
    (from_us, to_us): (i64, i64),
) -> Result<Vec<Anomaly>> {
    let history_from = rule.history_start(from_us);
    counter.add_raw(raw, (history_from, from_us)).await?;
    Ok(windows(&counter.counts, (history_from, to_us), rule)
        .filter(|window| window.end_us > from_us)
        .filter_map(|window| window.anomaly())
        .collect())
}

#[cfg(test)]
mod tests;
