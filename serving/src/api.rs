//! The HTTP routes: jobs, views, SQL, health, metrics and the OpenAPI document.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::error::ServingError;
use crate::metrics::ServingMetrics;
use crate::query::{self, ViewQuery};
use crate::service::JobService;
use crate::sql;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

/// `Retry-After` (seconds) on the 503s answered while a job is loading.
const RETRY_AFTER_SECONDS: &str = "1";

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub jobs: Arc<Vec<Arc<JobService>>>,
    pub metrics: ServingMetrics,
    pub token: Option<Arc<str>>,
}

impl AppState {
    pub fn job(&self, name: &str) -> Result<&Arc<JobService>, ServingError> {
        self.jobs
            .iter()
            .find(|j| j.name() == name)
            .ok_or_else(|| ServingError::UnknownJob {
                job: name.to_string(),
                known: self
                    .jobs
                    .iter()
                    .map(|j| j.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl IntoResponse for ServingError {
    fn into_response(self) -> Response {
        let (status, code) = self.http();
        if let ServingError::Loading(loading) = &self {
            let body = json!({"error": code, "message": self.to_string(), "loading": [loading]});
            return retry_later(json_response(status, body.to_string()));
        }
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        json_response(
            status,
            json!({"error": code, "message": self.to_string()}).to_string(),
        )
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

fn retry_later(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    response
}

pub(crate) fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{job}", get(job_status))
        .route("/v1/jobs/{job}/view", get(view))
        .route("/v1/sql", post(run_sql))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.yaml", get(openapi))
        .merge(v1)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = endpoint_of(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe_request(
        endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// A low-cardinality label for a request path.
fn endpoint_of(path: &str) -> &'static str {
    match path.trim_end_matches('/') {
        "/health" => "health",
        "/metrics" => "metrics",
        "/openapi.yaml" => "openapi",
        "/v1/jobs" => "jobs",
        "/v1/sql" => "sql",
        p if p.starts_with("/v1/jobs/") && p.ends_with("/view") => "view",
        p if p.starts_with("/v1/jobs/") => "job",
        _ => "other",
    }
}

async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is not valid"),
        None => unauthorized("this server needs `Authorization: Bearer <token>`"),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(message: &str) -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "unauthorized", "message": message}).to_string(),
    )
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": "not_found", "message": "no such endpoint; see /openapi.yaml"}).to_string(),
    )
}

/// 200 once every job is ready; 503 before, naming each part still loading.
async fn health(State(state): State<AppState>) -> Response {
    let mut jobs = serde_json::Map::new();
    let mut loading = Vec::new();
    for job in state.jobs.iter() {
        let parts = job.loading();
        jobs.insert(
            job.name().to_string(),
            json!({"ready": parts.is_empty(), "loading": &parts}),
        );
        loading.extend(parts);
    }
    let body = |word: &str| json!({"status": word, "jobs": &jobs, "loading": &loading}).to_string();
    if loading.is_empty() {
        json_response(StatusCode::OK, body("ok"))
    } else {
        retry_later(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            body("starting"),
        ))
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

async fn list_jobs(State(state): State<AppState>) -> Response {
    let jobs: Vec<_> = state.jobs.iter().map(|j| j.status()).collect();
    json_response(StatusCode::OK, json!({"jobs": jobs}).to_string())
}

async fn job_status(
    State(state): State<AppState>,
    Path(job): Path<String>,
) -> Result<Response, ServingError> {
    let status = state.job(&job)?.status();
    Ok(json_response(StatusCode::OK, json!(status).to_string()))
}

async fn view(
    State(state): State<AppState>,
    Path(job): Path<String>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ServingError> {
    let service = state.job(&job)?;
    let Query(params) = params.map_err(|e| ServingError::bad_request("query", e.body_text()))?;
    let query = ViewQuery::from_params(&params)?;
    let snapshot = service.snapshot();
    service.require_batch(&snapshot)?;
    let selection = query::select(&snapshot, &service.shape(), &query)?;
    Ok(json_response(
        StatusCode::OK,
        query::render(&snapshot, service.name(), &selection),
    ))
}

async fn run_sql(State(state): State<AppState>, body: Bytes) -> Result<Response, ServingError> {
    let request: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ServingError::bad_request("body", format!("expected JSON {{\"sql\": \"...\"}}: {e}"))
    })?;
    let Some(text) = request.get("sql").and_then(|s| s.as_str()) else {
        return Err(ServingError::bad_request(
            "sql",
            "the body needs a string field `sql`",
        ));
    };
    let mut tables = Vec::new();
    let mut loading = Vec::new();
    for job in state.jobs.iter() {
        let snapshot = job.snapshot();
        if let Err(e) = job.require_batch(&snapshot) {
            loading.push((job.name().to_string(), e));
        }
        tables.push((job.name().to_string(), snapshot.table.clone()));
    }
    let answer = sql::run(text, tables, loading).await?;
    Ok(json_response(StatusCode::OK, json!(answer).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch_view::BatchView;
    use crate::service::ServedJob;
    use serde_json::Value;
    use sluice_core::lake::CommitSummary;
    use sluice_core::{Job, JsonDecoder, Lake, Pipeline};

    #[test]
    fn endpoints_have_low_cardinality_labels() {
        assert_eq!(endpoint_of("/v1/jobs/x/view"), "view");
        assert_eq!(endpoint_of("/v1/jobs/x"), "job");
        assert_eq!(endpoint_of("/v1/jobs"), "jobs");
        assert_eq!(endpoint_of("/etc/passwd"), "other");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    const JOB: &str = r#"
name = "t"
[source]
topic = "orders"
event_time = "ts"
fields = [
  { name = "region", type = "string" },
  { name = "amount", type = "float64" },
  { name = "ts", type = "timestamp" },
]
[transform]
sql = """SELECT region, TUMBLE_START(ts, INTERVAL '1' MINUTE) AS ws, COUNT(*) AS n
  FROM orders GROUP BY region, TUMBLE(ts, INTERVAL '1' MINUTE)"""
[view]
key = ["region"]
bucket = "1h"
"#;

    /// 11:00 on 2024-05-01, a bucket boundary.
    const CUTOFF_US: i64 = 1_714_561_200_000_000;

    /// One job served without Kafka (its speed view is empty and caught up), its lake in `dir`.
    fn served(dir: &std::path::Path) -> (AppState, Arc<JobService>) {
        let job = Job::from_toml(JOB, std::path::Path::new("t.toml")).expect("job");
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
        let state = AppState {
            jobs: Arc::new(vec![service.clone()]),
            metrics: ServingMetrics::new(),
            token: None,
        };
        (state, service)
    }

    /// A version of the view table holding two `eu` events and one `us` event before the cutoff.
    fn batch_view(service: &JobService, version: u64) -> Arc<BatchView> {
        let plan = service.served.pipeline.plan();
        let lines = [
            r#"{"region":"eu","amount":2.0,"ts":1714561170000}"#,
            r#"{"region":"eu","amount":4.0,"ts":1714561175000}"#,
            r#"{"region":"us","amount":1.0,"ts":1714561100000}"#,
        ];
        let decoded = JsonDecoder::new(&service.served.job)
            .decode(&lines)
            .expect("decode");
        let partial = plan.partial(&decoded.batch).expect("partial");
        let stage = plan.aggregate().expect("aggregate");
        Arc::new(BatchView {
            version,
            cutoff_us: Some(CUTOFF_US),
            partials: vec![
                stage
                    .buckets_in(&partial, None, Some(CUTOFF_US))
                    .expect("buckets"),
            ],
            last_run: CommitSummary {
                version,
                timestamp_ms: Some(0),
                info: Default::default(),
            },
        })
    }

    async fn read(response: Response) -> (StatusCode, Option<String>, Value) {
        let status = response.status();
        let retry = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
        (status, retry, body)
    }

    async fn get_health(state: &AppState) -> (StatusCode, Option<String>, Value) {
        read(health(State(state.clone())).await).await
    }

    async fn get_view(state: &AppState, key: &str) -> (StatusCode, Option<String>, Value) {
        let params = HashMap::from([("key".to_string(), key.to_string())]);
        let response = view(
            State(state.clone()),
            Path("t".to_string()),
            Ok(Query(params)),
        )
        .await;
        read(response.into_response()).await
    }

    async fn post_sql(state: &AppState, sql: &str) -> (StatusCode, Option<String>, Value) {
        let body = Bytes::from(json!({ "sql": sql }).to_string());
        read(run_sql(State(state.clone()), body).await.into_response()).await
    }

    fn assert_loading(answer: &(StatusCode, Option<String>, Value), what: &str) {
        let (status, retry, body) = answer;
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
        assert_eq!(
            retry.as_deref(),
            Some(RETRY_AFTER_SECONDS),
            "{what}: {body}"
        );
        assert_eq!(body["error"], "loading", "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("job `t`: the batch view is still loading"),
            "{what}: {body}"
        );
        assert_eq!(body["loading"][0]["part"], "batch view", "{what}: {body}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_view_and_sql_wait_until_the_batch_view_is_merged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (state, service) = served(dir.path());
        // The speed view is caught up and merged; the view table was not read yet.
        service.refresh(&state.metrics).expect("refresh");
        let health = get_health(&state).await;
        assert_eq!(health.0, StatusCode::SERVICE_UNAVAILABLE, "{}", health.2);
        assert_eq!(health.1.as_deref(), Some(RETRY_AFTER_SECONDS));
        assert_eq!(health.2["status"], "starting", "{}", health.2);
        assert_eq!(
            health.2["loading"],
            json!([{"job": "t", "part": "batch view"}]),
            "{}",
            health.2
        );
        assert_eq!(health.2["jobs"]["t"]["ready"], false, "{}", health.2);
        assert!(!service.status().ready);
        assert_loading(&get_view(&state, "eu").await, "view before the batch view");
        assert_loading(
            &post_sql(&state, "SELECT COUNT(*) AS n FROM t").await,
            "sql before the batch view",
        );
        let subquery = "SELECT x FROM (VALUES (1)) AS v(x) WHERE x IN (SELECT n FROM t)";
        assert_loading(
            &post_sql(&state, subquery).await,
            "sql reading the job in a subquery",
        );
        let untouched = post_sql(&state, "SELECT 1 AS one").await;
        assert_eq!(
            untouched.0,
            StatusCode::OK,
            "sql reading no job: {}",
            untouched.2
        );

        // No view table yet: an empty batch view, read, but not merged into a snapshot yet.
        service
            .poll_batch()
            .await
            .expect("a view table that does not exist yet is an empty batch view");
        assert_eq!(
            get_health(&state).await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "ready before the batch view is merged"
        );
        assert_loading(&get_view(&state, "eu").await, "view before the merge");

        assert!(service.refresh(&state.metrics).expect("refresh"));
        let health = get_health(&state).await;
        assert_eq!(health.0, StatusCode::OK, "{}", health.2);
        assert_eq!(health.1, None);
        assert_eq!(health.2["status"], "ok", "{}", health.2);
        assert_eq!(health.2["loading"], json!([]), "{}", health.2);
        assert_eq!(health.2["jobs"]["t"]["ready"], true, "{}", health.2);
        assert!(service.status().ready);
        let view = get_view(&state, "eu").await;
        assert_eq!(view.0, StatusCode::OK, "{}", view.2);
        assert_eq!(view.2["cutoff"], Value::Null, "no backfill yet: {}", view.2);
        assert_eq!(view.2["count"], 0, "{}", view.2);
        let sql = post_sql(&state, "SELECT COUNT(*) AS n FROM t").await;
        assert_eq!(sql.0, StatusCode::OK, "{}", sql.2);
        assert_eq!(sql.2["rows"][0]["n"], 0, "{}", sql.2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_first_read_is_named_and_a_loaded_batch_view_stays_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (state, service) = served(dir.path());
        service.refresh(&state.metrics).expect("refresh");
        let unreadable = || -> Result<Option<Arc<BatchView>>, ServingError> {
            Err(ServingError::Internal(
                "the view table is unreadable".into(),
            ))
        };

        assert!(service.batch_read(unreadable()).is_err());
        service.refresh(&state.metrics).expect("refresh");
        let health = get_health(&state).await;
        assert_eq!(health.0, StatusCode::SERVICE_UNAVAILABLE, "{}", health.2);
        assert_eq!(health.2["loading"][0]["part"], "batch view", "{}", health.2);
        assert_eq!(
            health.2["loading"][0]["error"], "the view table is unreadable",
            "{}",
            health.2
        );
        let view = get_view(&state, "eu").await;
        assert_loading(&view, "view after a failed read");
        assert!(
            view.2["message"]
                .as_str()
                .is_some_and(|m| m.contains("the view table is unreadable")),
            "{}",
            view.2
        );

        // The retry reads version 1; once merged, the job is ready and answers its rows.
        service
            .batch_read(Ok(Some(batch_view(&service, 1))))
            .expect("read");
        assert_eq!(
            get_health(&state).await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "ready before the batch view is merged"
        );
        assert!(service.refresh(&state.metrics).expect("refresh"));
        assert_eq!(get_health(&state).await.0, StatusCode::OK);
        let view = get_view(&state, "eu").await;
        assert_eq!(view.0, StatusCode::OK, "{}", view.2);
        assert_eq!(view.2["cutoff"], "2024-05-01T11:00:00Z", "{}", view.2);
        assert_eq!(view.2["count"], 1, "{}", view.2);
        assert_eq!(view.2["rows"][0]["origin"], "batch", "{}", view.2);
        assert_eq!(view.2["rows"][0]["row"]["n"], 2, "{}", view.2);

        // A later read that fails keeps the loaded view: still ready, still the same rows.
        assert!(service.batch_read(unreadable()).is_err());
        service.refresh(&state.metrics).expect("refresh");
        let health = get_health(&state).await;
        assert_eq!(health.0, StatusCode::OK, "{}", health.2);
        let again = get_view(&state, "eu").await;
        assert_eq!(again.0, StatusCode::OK, "{}", again.2);
        assert_eq!(again.2["rows"], view.2["rows"]);
        assert_eq!(again.2["cutoff"], view.2["cutoff"]);
    }
}
