//! The serving layer's Prometheus metrics (`sluice_serving_<noun>_<unit>`, label `job`).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

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
        ServingMetrics {
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
