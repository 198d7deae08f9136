//! The serving layer's Prometheus metrics: `sluice_serving_<noun>_<unit>` for the server
//! itself, `sluice_view_*` and `sluice_backfill_*` for what it knows of each job (label `job`),
//! and the row-count anomalies it judges (`sluice_row_count_anomalies_total`,
//! `sluice_window_rows`). docs/monitoring.md lists them with the stream daemon's.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use sluice_core::anomaly::Window;

use crate::freshness::Freshness;
use crate::snapshot::Snapshot;

#[derive(Clone)]
pub struct ServingMetrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    view_rows: IntGaugeVec,
    speed_lag: IntGaugeVec,
    cutoff: IntGaugeVec,
    watermark: IntGaugeVec,
    snapshot_builds: IntCounterVec,
    freshness: GaugeVec,
    freshness_sla: GaugeVec,
    backfill_last_success: GaugeVec,
    row_count_anomalies: IntCounterVec,
    window_rows: IntGaugeVec,
    /// The start (µs) of every anomalous window counted, per job, back to the oldest window
    /// still judged: a window is judged again at every judgement (and by the next version
    /// after a switch) but counted once.
    anomalies_counted: Arc<Mutex<HashMap<String, BTreeSet<i64>>>>,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    // Names are constants of this module; a clash is a programming error caught by the tests.
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// A gauge of fractional seconds (freshness, timestamps to the millisecond).
fn seconds_gauge(registry: &Registry, name: &str, help: &str) -> GaugeVec {
    register(
        registry,
        GaugeVec::new(Opts::new(name, help), &["job"]).expect("valid metric"),
    )
}

impl ServingMetrics {
    pub fn new() -> ServingMetrics {
        let registry = Registry::new();
        let requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_serving_requests_total",
                    "HTTP requests by endpoint and status.",
                ),
                &["endpoint", "status"],
            )
            .expect("valid metric"),
        );
        let request_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "sluice_serving_request_duration_seconds",
                    "Time to answer an HTTP request.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
                ]),
                &["endpoint"],
            )
            .expect("valid metric"),
        );
        let snapshot_builds = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_serving_snapshot_builds_total",
                    "Merged-view rebuilds.",
                ),
                &["job"],
            )
            .expect("valid metric"),
        );
        let row_count_anomalies = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_row_count_anomalies_total",
                    "Windows whose count of source rows is outside the band of the windows before them ([anomalies]), by direction (high, low); each window counted once.",
                ),
                &["job", "direction"],
            )
            .expect("valid metric"),
        );
        ServingMetrics {
            row_count_anomalies,
            window_rows: gauge(
                &registry,
                "sluice_window_rows",
                "Source rows in the newest complete window of the job's [anomalies] rule (the raw table's).",
                &["job"],
            ),
            anomalies_counted: Arc::default(),
            freshness: seconds_gauge(
                &registry,
                "sluice_view_freshness_seconds",
                "Wall-clock time minus the newest event time the merged view is complete to (the later of the batch cutoff and the speed watermark).",
            ),
            freshness_sla: seconds_gauge(
                &registry,
                "sluice_view_freshness_sla_seconds",
                "The job's [view] freshness_sla (only jobs that declare one).",
            ),
            backfill_last_success: seconds_gauge(
                &registry,
                "sluice_backfill_last_success_timestamp_seconds",
                "When the newest backfill committed to the view table (seconds since the epoch).",
            ),
            view_rows: gauge(
                &registry,
                "sluice_serving_view_rows",
                "Merged-view rows by origin.",
                &["job", "origin"],
            ),
            speed_lag: gauge(
                &registry,
                "sluice_serving_speed_lag_records",
                "Records of <job>.speed not yet read by the serving layer.",
                &["job"],
            ),
            cutoff: gauge(
                &registry,
                "sluice_serving_cutoff_seconds",
                "The batch view's cutoff (seconds since the epoch).",
                &["job"],
            ),
            watermark: gauge(
                &registry,
                "sluice_serving_watermark_seconds",
                "The speed view's watermark (seconds since the epoch).",
                &["job"],
            ),
            requests,
            request_duration,
            snapshot_builds,
            registry,
        }
    }

    pub fn observe_request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[endpoint, &status.to_string()])
            .inc();
        self.request_duration
            .with_label_values(&[endpoint])
            .observe(seconds);
    }

    pub(crate) fn observe_snapshot(&self, job: &str, snapshot: &Snapshot) {
        self.snapshot_builds.with_label_values(&[job]).inc();
        let counts = snapshot.counts;
        for (origin, rows) in [
            ("batch", counts.batch),
            ("speed", counts.speed),
            ("merged", counts.merged),
        ] {
            self.view_rows
                .with_label_values(&[job, origin])
                .set(rows as i64);
        }
        if let Some(cutoff) = snapshot.cutoff_us {
            self.cutoff
                .with_label_values(&[job])
                .set(cutoff / 1_000_000);
        }
        if let Some(watermark) = snapshot.watermark_us {
            self.watermark
                .with_label_values(&[job])
                .set(watermark / 1_000_000);
        }
    }

    pub fn observe_speed_lag(&self, job: &str, lag: i64) {
        self.speed_lag.with_label_values(&[job]).set(lag);
    }

    /// A job's freshness and SLA; a figure not known yet (no data, no SLA) exports nothing,
    /// so `sluice_view_freshness_seconds > sluice_view_freshness_sla_seconds` only matches
    /// jobs with both.
    pub(crate) fn observe_freshness(&self, job: &str, freshness: &Freshness) {
        if let Some(seconds) = freshness.freshness_seconds {
            self.freshness.with_label_values(&[job]).set(seconds);
        }
        if let Some(sla) = freshness.freshness_sla_seconds {
            self.freshness_sla.with_label_values(&[job]).set(sla);
        }
    }

    /// The commit time (ms since the epoch) of the newest backfill of `job`'s view table.
    pub(crate) fn observe_backfill(&self, job: &str, committed_ms: i64) {
        self.backfill_last_success
            .with_label_values(&[job])
            .set(committed_ms as f64 / 1e3);
    }

    /// Takes in a judgement of `job`'s newest complete windows (oldest first): counts the
    /// anomalous ones not counted before and sets the newest window's rows.
    pub(crate) fn observe_row_counts(&self, job: &str, windows: &[Window]) {
        let (Some(oldest), Some(newest)) = (windows.first(), windows.last()) else {
            return;
        };
        self.window_rows
            .with_label_values(&[job])
            .set(i64::try_from(newest.rows).unwrap_or(i64::MAX));
        let mut counted = self
            .anomalies_counted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let seen = counted.entry(job.to_string()).or_default();
        // Windows older than the oldest judged are never judged again.
        seen.retain(|&start| start >= oldest.start_us);
        for window in windows {
            if let Some(direction) = window.direction
                && seen.insert(window.start_us)
            {
                self.row_count_anomalies
                    .with_label_values(&[job, direction.as_str()])
                    .inc();
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for ServingMetrics {
    fn default() -> Self {
        ServingMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The value of the sample `name{job="<job>"}` in the text format, if exported.
    fn sample(text: &str, name: &str, job: &str) -> Option<f64> {
        let prefix = format!("{name}{{job=\"{job}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn freshness_and_backfill_gauges_export_what_is_known() {
        let metrics = ServingMetrics::new();
        let now_us = 1_714_557_600_000_000;
        let judged = Freshness::assess(
            Some(now_us - 42_000_000),
            Some(Duration::from_secs(30)),
            now_us,
        );
        metrics.observe_freshness("a", &judged);
        metrics.observe_freshness("b", &Freshness::assess(None, None, now_us));
        metrics.observe_backfill("a", 1_714_557_600_250);
        let text = metrics.render();
        assert_eq!(
            sample(&text, "sluice_view_freshness_seconds", "a"),
            Some(42.0)
        );
        assert_eq!(
            sample(&text, "sluice_view_freshness_sla_seconds", "a"),
            Some(30.0)
        );
        assert_eq!(
            sample(&text, "sluice_backfill_last_success_timestamp_seconds", "a"),
            Some(1_714_557_600.25)
        );
        // Nothing known about `b`: no sample that an alert could compare.
        assert_eq!(sample(&text, "sluice_view_freshness_seconds", "b"), None);
        assert_eq!(
            sample(&text, "sluice_view_freshness_sla_seconds", "b"),
            None
        );
    }
}
