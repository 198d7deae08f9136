//! The speed layer's Prometheus metrics (`sluice_<noun>_<unit>`, labels job/topic/partition)
//! and the `/metrics` endpoint that serves a registry.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::error::{Result, StreamError};

/// The metrics of one `sluice stream` process.
#[derive(Clone)]
pub struct StreamMetrics {
    pub registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub dlq_records: IntCounterVec,
    /// Source rows violating each data-quality check (labels job, check, severity).
    pub check_violations: IntCounterVec,
    pub late_records: IntCounterVec,
    pub dedup_dropped: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub watermark_lag: GaugeVec,
    pub batch_latency: HistogramVec,
    pub restore_seconds: HistogramVec,
    pub state_keys: IntGaugeVec,
    pub transaction_aborts: IntCounterVec,
    /// Times a micro-batch or lake commit waited for the schema registry (it was unreachable).
    pub registry_waits: IntCounterVec,
    pub speed_tombstones: IntCounterVec,
    pub lake_rows: IntCounterVec,
    pub lake_commits: IntCounterVec,
    /// The raw table's completeness bound (Unix seconds): see `sluice_core::lake_progress`.
    pub lake_complete_until: GaugeVec,
    /// 1 while a sink's store answers, 0 during an outage (labels job, sink).
    pub sink_up: IntGaugeVec,
    pub sink_paused_partitions: IntGaugeVec,
    pub sink_rows: IntCounterVec,
    pub sink_commits: IntCounterVec,
    pub sink_retries: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl StreamMetrics {
    pub fn new() -> StreamMetrics {
        let registry = Registry::new();
        let watermark_lag = GaugeVec::new(
            Opts::new(
                "sluice_watermark_lag_seconds",
                "Wall-clock time minus the job watermark.",
            ),
            &["job"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(watermark_lag.clone()))
            .expect("unique metric");
        let lake_complete_until = GaugeVec::new(
            Opts::new(
                "sluice_lake_complete_until_seconds",
                "Event time (Unix seconds) before which the raw table holds every partition's records; backfills stop there.",
            ),
            &["job"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(lake_complete_until.clone()))
            .expect("unique metric");
        let batch_latency = HistogramVec::new(
            HistogramOpts::new(
                "sluice_batch_latency_seconds",
                "Time from a micro-batch's first record to its committed transaction.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
            ]),
            &["job"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(batch_latency.clone()))
            .expect("unique metric");
        let restore_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_restore_duration_seconds",
                "Time to bring an assigned partition's state up to date from the changelog.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["job"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(restore_seconds.clone()))
            .expect("unique metric");
        StreamMetrics {
            restore_seconds,
            records_in: counter(
                &registry,
                "sluice_records_in_total",
                "Source records consumed.",
                &["job", "topic", "partition"],
            ),
            records_out: counter(
                &registry,
                "sluice_records_out_total",
                "Records produced, by topic.",
                &["job", "topic"],
            ),
            dlq_records: counter(
                &registry,
                "sluice_dlq_records_total",
                "Records sent to the DLQ, by error type.",
                &["job", "error_type"],
            ),
            check_violations: counter(
                &registry,
                "sluice_check_violations_total",
                "Source rows violating a data-quality check ([[checks]]); quarantined ones are also in sluice_dlq_records_total as check_failed.",
                &["job", "check", "severity"],
            ),
            late_records: counter(
                &registry,
                "sluice_late_records_total",
                "Records later than the allowed lateness.",
                &["job"],
            ),
            dedup_dropped: counter(
                &registry,
                "sluice_dedup_dropped_total",
                "Rows a first-row deduplication dropped as duplicates.",
                &["job"],
            ),
            consumer_lag: gauge(
                &registry,
                "sluice_consumer_lag_records",
                "Records between a consumer's position and the partition's end (consumer: speed, or the sink's name).",
                &["job", "topic", "partition", "consumer"],
            ),
            state_keys: gauge(
                &registry,
                "sluice_state_keys",
                "Keys in the RocksDB state store (estimate).",
                &["job"],
            ),
            speed_tombstones: counter(
                &registry,
                "sluice_speed_tombstones_total",
                "Retired rows tombstoned in <job>.speed because the batch view covers their bucket.",
                &["job"],
            ),
            transaction_aborts: counter(
                &registry,
                "sluice_transaction_aborts_total",
                "Aborted micro-batch transactions.",
                &["job"],
            ),
            registry_waits: counter(
                &registry,
                "sluice_registry_waits_total",
                "Times records waited, partitions paused, for the schema registry: it did not answer, or does not know the schema id yet (a 404 is asked again for 30 s before the records are dead-lettered).",
                &["job"],
            ),
            lake_rows: counter(
                &registry,
                "sluice_lake_rows_total",
                "Rows committed to the raw Delta table.",
                &["job", "partition"],
            ),
            lake_commits: counter(
                &registry,
                "sluice_lake_commits_total",
                "Delta commits of the raw-lake sink.",
                &["job"],
            ),
            sink_up: gauge(
                &registry,
                "sluice_sink_up",
                "1 while the sink's store answers, 0 while it is unavailable.",
                &["job", "sink"],
            ),
            sink_paused_partitions: gauge(
                &registry,
                "sluice_sink_paused_partitions",
                "Partitions the sink paused (a commit running, or its store unavailable).",
                &["job", "sink"],
            ),
            sink_rows: counter(
                &registry,
                "sluice_sink_rows_total",
                "Rows a sink committed.",
                &["job", "sink"],
            ),
            sink_commits: counter(
                &registry,
                "sluice_sink_commits_total",
                "Commits of a sink (each one transaction with its offsets).",
                &["job", "sink"],
            ),
            sink_retries: counter(
                &registry,
                "sluice_sink_retries_total",
                "Sink commits retried because the store was unavailable.",
                &["job", "sink"],
            ),
            watermark_lag,
            lake_complete_until,
            batch_latency,
            registry,
        }
    }

    /// Creates `job`'s counters of rare events at zero, so that a rate or `increase()` over
    /// them sees the first event (a series that appears at 1 has no earlier sample).
    pub fn start_job(&self, job: &str, checks: &[(&str, &str)]) {
        self.transaction_aborts.with_label_values(&[job]).inc_by(0);
        self.registry_waits.with_label_values(&[job]).inc_by(0);
        self.late_records.with_label_values(&[job]).inc_by(0);
        for reason in sluice_core::DivertReason::ALL {
            if reason != sluice_core::DivertReason::Late {
                self.dlq_records
                    .with_label_values(&[job, reason.as_str()])
                    .inc_by(0);
            }
        }
        for (check, severity) in checks {
            self.check_violations
                .with_label_values(&[job, check, severity])
                .inc_by(0);
        }
    }

    /// Counter `name` summed over every label set of `job` (all partitions, all error types).
    pub fn job_total(&self, name: &str, job: &str) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|label| label.name() == "job" && label.value() == job)
            })
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for StreamMetrics {
    fn default() -> Self {
        StreamMetrics::new()
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
/// Serves `/metrics` and `/health` (the sinks' state, `degraded` while a store is down).
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: StreamMetrics,
    health: crate::SinkHealth,
) -> Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/health",
            get(move || {
                let report = health.report();
                async move { axum::Json(report) }
            }),
        );
    let error = |source| StreamError::Metrics {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(error)?;
    axum::serve(listener, app).await.map_err(error)
}
