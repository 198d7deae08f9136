//! The HTTP routes: jobs, views, SQL, health, metrics and the OpenAPI document.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
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

async fn health(State(state): State<AppState>) -> Response {
    let jobs: serde_json::Map<String, serde_json::Value> = state
        .jobs
        .iter()
        .map(|j| (j.name().to_string(), json!({"ready": j.ready()})))
        .collect();
    let ready = state.jobs.iter().all(|j| j.ready());
    let (status, word) = if ready {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    json_response(status, json!({"status": word, "jobs": jobs}).to_string())
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
    let tables = state
        .jobs
        .iter()
        .map(|j| (j.name().to_string(), j.snapshot().table.clone()))
        .collect();
    let answer = sql::run(text, tables).await?;
    Ok(json_response(StatusCode::OK, json!(answer).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
