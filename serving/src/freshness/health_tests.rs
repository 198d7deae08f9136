//! The freshness SLA through the service and the router: `/v1/jobs` reports the verdict and
//! `/health` answers `degraded` naming the stale job, on jobs served without Kafka whose batch
//! view is set by hand (its cutoff is what the view is complete to: the speed views are empty).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use serde_json::Value;
use sluice_core::lake::CommitSummary;
use sluice_core::{Lake, Pipeline};
use tower::ServiceExt;

use super::now_us;
use crate::api::{AppState, router};
use crate::batch_view::BatchView;
use crate::metrics::ServingMetrics;
use crate::service::{JobService, ServedJob};
use crate::versions::JobSlot;

const SQL: &str = "SELECT region, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS ws,
  COUNT(*) AS n FROM orders GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)";

/// 2024-05-01T11:00:00Z: long past, whatever the clock says.
const OLD_CUTOFF_US: i64 = 1_714_561_200_000_000;

/// A ready job named `name` with `sla`, whose batch view's cutoff is `cutoff_us`.
fn ready_job(
    dir: &std::path::Path,
    name: &str,
    sla: Option<Duration>,
    cutoff_us: i64,
) -> Arc<JobService> {
    let mut job = sluice_core::fixture::OrdersJob {
        name,
        ..Default::default()
    }
    .job(SQL);
    job.spec.view.freshness_sla = sla;
    let pipeline = Arc::new(Pipeline::compile(&job, None).expect("pipeline"));
    let lake = Lake {
        root: dir.to_string_lossy().into_owned(),
    };
    let service =
        Arc::new(JobService::detached(ServedJob::new(job, pipeline), &lake).expect("service"));
    service
        .speed_follower()
        .view
        .write()
        .expect("speed view")
        .caught_up = true;
    let batch = BatchView {
        version: 1,
        cutoff_us: Some(cutoff_us),
        partials: Vec::new(),
        last_run: CommitSummary {
            version: 1,
            timestamp_ms: Some(0),
            info: Default::default(),
        },
    };
    service
        .batch_read(Ok(Some(Arc::new(batch))))
        .expect("batch view");
    assert!(
        service.refresh(&ServingMetrics::new()).expect("refresh"),
        "merged"
    );
    service
}

async fn health(jobs: &[&Arc<JobService>]) -> (StatusCode, Value) {
    let state = AppState {
        jobs: Arc::new(
            jobs.iter()
                .map(|&job| Arc::new(JobSlot::fixed(job.clone())))
                .collect(),
        ),
        metrics: ServingMetrics::new(),
        token: None,
    };
    let request = axum::http::Request::get("/health")
        .body(Body::empty())
        .expect("request");
    let response = router(state).oneshot(request).await.expect("answer");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, serde_json::from_slice(&body).expect("JSON"))
}

#[tokio::test]
async fn a_job_past_its_sla_is_reported_stale_and_degrades_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sla = Some(Duration::from_secs(30));
    let stale = ready_job(dir.path(), "stale", sla, OLD_CUTOFF_US);
    let unjudged = ready_job(dir.path(), "unjudged", None, OLD_CUTOFF_US);

    let status = serde_json::to_value(stale.status()).expect("status");
    assert_eq!(status["fresh"], false, "{status}");
    assert_eq!(status["freshness_sla_seconds"], 30.0, "{status}");
    let behind = status["freshness_seconds"].as_f64().expect("freshness");
    let since_cutoff = (now_us() - OLD_CUTOFF_US) as f64 / 1e6;
    assert!(
        behind > 30.0 && behind <= since_cutoff,
        "freshness {behind} s, the cutoff was {since_cutoff} s ago: {status}"
    );
    let status = serde_json::to_value(unjudged.status()).expect("status");
    assert_eq!(status["fresh"], Value::Null, "no SLA: {status}");
    assert_eq!(status["freshness_sla_seconds"], Value::Null, "{status}");
    assert!(status["freshness_seconds"].as_f64().is_some(), "{status}");

    let (code, body) = health(&[&stale, &unjudged]).await;
    assert_eq!(code, StatusCode::OK, "degraded is alive: {body}");
    assert_eq!(body["status"], "degraded", "{body}");
    let degraded = body["degraded"].as_array().expect("degraded list");
    assert_eq!(degraded.len(), 1, "only the job with an SLA: {body}");
    assert_eq!(degraded[0]["job"], "stale", "{body}");
    let reason = degraded[0]["reason"].as_str().expect("reason");
    assert!(reason.contains("job `stale`"), "{reason}");
    assert!(
        reason.contains("over its freshness SLA of 30 s"),
        "{reason}"
    );
    assert_eq!(degraded[0]["freshness_sla_seconds"], 30.0, "{body}");
}

#[tokio::test]
async fn a_job_within_its_sla_keeps_health_ok() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A cutoff ahead of the clock: freshness 0 whenever the test runs.
    let ahead = now_us() + 3_600_000_000;
    let fresh = ready_job(dir.path(), "fresh", Some(Duration::from_secs(30)), ahead);
    let status = serde_json::to_value(fresh.status()).expect("status");
    assert_eq!(status["fresh"], true, "{status}");
    assert_eq!(status["freshness_seconds"], 0.0, "{status}");

    let (code, body) = health(&[&fresh]).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["degraded"], serde_json::json!([]), "{body}");
}
