//! The HTTP routes: jobs, views, SQL, health, metrics and the OpenAPI document.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Json, MatchedPath, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::error::ServingError;
use crate::metrics::ServingMetrics;
use crate::query::{self, ViewQuery};
use crate::service::JobService;
use crate::sql;
use crate::versions::JobSlot;

/// The OpenAPI document of this API, as the file has it: with the bearer token required and
/// examples naming the demo's job; a server serves it adapted to how it runs (`served_openapi`).
pub const OPENAPI: &str = include_str!("../openapi.yaml");

/// The job the examples of [`OPENAPI`] name (`sluice demo`'s).
const EXAMPLE_JOB: &str = "orders_demo";

/// `Retry-After` (seconds) on the 503s answered while a job is loading.
const RETRY_AFTER_SECONDS: &str = "1";

/// The routes, as [`MatchedPath`] names them.
mod route {
    pub const HEALTH: &str = "/health";
    pub const METRICS: &str = "/metrics";
    pub const OPENAPI: &str = "/openapi.yaml";
    pub const JOBS: &str = "/v1/jobs";
    pub const JOB: &str = "/v1/jobs/{job}";
    pub const VIEW: &str = "/v1/jobs/{job}/view";
    pub const ANOMALIES: &str = "/v1/jobs/{job}/anomalies";
    pub const SQL: &str = "/v1/sql";
}

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub jobs: Arc<Vec<Arc<JobSlot>>>,
    pub metrics: ServingMetrics,
    pub token: Option<Arc<str>>,
}

impl AppState {
    /// The service of `name`'s answering version (taken once per request: a switch during
    /// the request does not change what it answers from).
    pub fn job(&self, name: &str) -> Result<Arc<JobService>, ServingError> {
        self.jobs
            .iter()
            .find(|j| j.name() == name)
            .map(|slot| slot.current())
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

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

fn retry_later(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    response
}

pub(crate) fn router(state: AppState) -> Router {
    // Before the token layer, so that a wrong method on `/v1/` needs the token too.
    let v1 = Router::new()
        .route(route::JOBS, get(list_jobs))
        .route(route::JOB, get(job_status))
        .route(route::VIEW, get(view))
        .route(route::ANOMALIES, get(crate::anomalies::anomalies))
        .route(route::SQL, post(run_sql))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // Rendered once: the jobs' names and the token do not change while the server runs.
    let document = Bytes::from(served_openapi(&state));
    Router::new()
        .route(route::HEALTH, get(health))
        .route(route::METRICS, get(metrics))
        .route(
            route::OPENAPI,
            get(move || std::future::ready(openapi(document.clone()))),
        )
        .merge(crate::dashboard::routes(&state))
        .merge(v1)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = endpoint_of(request.extensions().get::<MatchedPath>());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe_request(
        endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// A low-cardinality label for a request: the route it matched (`other`: none, a 404).
fn endpoint_of(matched: Option<&MatchedPath>) -> &'static str {
    match matched.map(MatchedPath::as_str) {
        Some(route::HEALTH) => "health",
        Some(route::METRICS) => "metrics",
        Some(route::OPENAPI) => "openapi",
        Some(route::JOBS) => "jobs",
        Some(route::JOB) => "job",
        Some(route::VIEW) => "view",
        Some(route::ANOMALIES) => "anomalies",
        Some(route::SQL) => "sql",
        other => crate::dashboard::endpoint_of(other),
    }
}

pub(crate) async fn require_token(
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

/// A path this server has, with a method it does not take: axum adds `Allow`.
async fn method_not_allowed(method: axum::http::Method) -> Response {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({
            "error": "method_not_allowed",
            "message": format!("this endpoint does not take {method} (see Allow); see /openapi.yaml"),
        })
        .to_string(),
    )
}

/// 200 once every job is ready; 503 before, naming each part still loading. A ready server
/// whose job misses its freshness SLA answers 200 `degraded` (alive, but stale), naming it.
async fn health(State(state): State<AppState>) -> Response {
    let mut jobs = serde_json::Map::new();
    let mut loading = Vec::new();
    let mut degraded = Vec::new();
    for slot in state.jobs.iter() {
        let job = slot.current();
        let parts = job.loading();
        jobs.insert(
            job.name().to_string(),
            json!({"ready": parts.is_empty(), "loading": &parts}),
        );
        loading.extend(parts);
        degraded.extend(job.stale());
    }
    let body = |word: &str| {
        json!({"status": word, "jobs": &jobs, "loading": &loading, "degraded": &degraded})
            .to_string()
    };
    if loading.is_empty() && !degraded.is_empty() {
        json_response(StatusCode::OK, body("degraded"))
    } else if loading.is_empty() {
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

fn openapi(document: Bytes) -> Response {
    ([(CONTENT_TYPE, "application/yaml")], document).into_response()
}

/// [`OPENAPI`] as this server serves it. Two things in it depend on how the server runs; they
/// are rewritten in the text (the workspace has no YAML library, and the edits are two):
///
/// - The file requires the bearer token of every operation but the probes (a top-level
///   `security` block, which the open endpoints override with `security: []`). That holds only
///   with `--token`; without one the block is left out, so that neither a client nor a checker
///   (schemathesis's `ignored_auth` and auth-header checks) is told to send a token nobody
///   asks for. Dropping one block of the one file, rather than keeping a second document,
///   leaves a single description to maintain and lint.
/// - Its examples name [`EXAMPLE_JOB`]; served, they name a job this server serves, so an
///   example request is answered with rows rather than a 404 (or the SQL example with a
///   400). The job is the first with a view key and a group window, which the examples'
///   `key`, `from` and `to` need, else the first.
pub(crate) fn served_openapi(state: &AppState) -> String {
    let document = if state.token.is_some() {
        OPENAPI.to_string()
    } else {
        without_global_security(OPENAPI)
    };
    let jobs: Vec<Arc<JobService>> = state.jobs.iter().map(|slot| slot.current()).collect();
    let example = jobs
        .iter()
        .find(|job| {
            let shape = job.shape();
            shape.has_key && shape.has_window
        })
        .or_else(|| jobs.first());
    match example {
        Some(job) => with_example_job(&document, job.name()),
        None => document,
    }
}

/// `document` without its top-level `security:` block (the line and the indented lines under
/// it); the operations' own `security:` lines are indented and stay.
fn without_global_security(document: &str) -> String {
    let mut kept = String::with_capacity(document.len());
    let mut in_block = false;
    for line in document.split_inclusive('\n') {
        if line.trim_end() == "security:" {
            in_block = true;
            continue;
        }
        if in_block && line.starts_with([' ', '-']) {
            continue;
        }
        in_block = false;
        kept.push_str(line);
    }
    kept
}

/// `document` with its examples naming `job` instead of [`EXAMPLE_JOB`]. In the SQL example the
/// name is a table: quoted when SQL would not read it as one identifier (a `-` in it, or a
/// leading digit); a name with capitals stays unquoted, as DataFusion registered the table
/// under its lower-cased name.
fn with_example_job(document: &str, job: &str) -> String {
    let plain = job.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !job.starts_with(|c: char| c.is_ascii_digit());
    let table = if plain {
        job.to_string()
    } else {
        format!("\"{job}\"")
    };
    document
        .replace(&format!("FROM {EXAMPLE_JOB} "), &format!("FROM {table} "))
        .replace(EXAMPLE_JOB, job)
}

async fn list_jobs(State(state): State<AppState>) -> Response {
    let jobs: Vec<_> = state.jobs.iter().map(|j| j.current().status()).collect();
    json_response(StatusCode::OK, json!({"jobs": jobs}).to_string())
}

async fn job_status(
    State(state): State<AppState>,
    job: Result<Path<String>, PathRejection>,
) -> Result<Response, ServingError> {
    let status = state.job(&job_name(job)?)?.status();
    Ok(json_response(StatusCode::OK, json!(status).to_string()))
}

/// The `{job}` of the path (a 400 when it does not decode to text).
pub(crate) fn job_name(path: Result<Path<String>, PathRejection>) -> Result<String, ServingError> {
    path.map(|Path(job)| job)
        .map_err(|e| ServingError::bad_request("job", e.body_text()))
}

/// The job is looked up before the query string is read: an unknown job is a 404 whatever
/// its parameters.
async fn view(
    State(state): State<AppState>,
    job: Result<Path<String>, PathRejection>,
    query: Result<Query<ViewQuery>, QueryRejection>,
) -> Result<Response, ServingError> {
    let service = state.job(&job_name(job)?)?;
    let Query(query) = query.map_err(|e| view_query_rejected(&e))?;
    let snapshot = service.snapshot();
    service.require_batch(&snapshot)?;
    let selection = query::select(&snapshot, &service.shape(), &query)?;
    Ok(json_response(
        StatusCode::OK,
        query::render(&snapshot, (service.name(), service.version()), &selection),
    ))
}

/// A query string `GET /view` refuses: a 400 naming the parameter.
fn view_query_rejected(rejection: &QueryRejection) -> ServingError {
    match serde_error::<serde::de::value::Error>(rejection) {
        (Some(name), _) if !query::PARAMETERS.contains(&name.as_str()) => {
            ServingError::bad_request(&name, "unknown parameter; expected key, from, to or limit")
        }
        (Some(name), message) => ServingError::bad_request(&name, message),
        // Not at one parameter: one given twice, say.
        (None, message) => ServingError::bad_request("query", message),
    }
}

/// The body of `POST /v1/sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

/// A body that is not `{"sql": "..."}`: a 400 naming the field when serde got to one.
fn sql_body_rejected(rejection: &JsonRejection) -> ServingError {
    let (field, message) = serde_error::<serde_json::Error>(rejection);
    match rejection {
        JsonRejection::JsonDataError(_) => ServingError::bad_request(
            field.as_deref().unwrap_or("sql"),
            format!("the body needs one string field `sql`: {message}"),
        ),
        _ => ServingError::bad_request(
            "body",
            format!("expected JSON {{\"sql\": \"...\"}}: {message}"),
        ),
    }
}

/// A body that could not be read: larger than axum's limit (2 MiB: 413 `payload_too_large`) or
/// cut off (400 `bad_request`), as JSON like every other error.
fn body_unreadable(rejection: &BytesRejection) -> Response {
    let status = rejection.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "payload_too_large"
    } else {
        "bad_request"
    };
    let message = format!("`body`: {}", rejection.body_text());
    json_response(
        status,
        json!({"error": code, "message": message}).to_string(),
    )
}

/// What serde said about a rejected query string or body: the parameter or field it failed
/// at (when it got to one) and its message, read from the `serde_path_to_error` error that
/// axum's `Query` and `Json` rejections carry (`E`: the deserializer's error type); failing
/// that, the innermost error's text.
fn serde_error<E>(rejection: &(dyn std::error::Error + 'static)) -> (Option<String>, String)
where
    E: std::error::Error + 'static,
{
    let mut innermost = rejection;
    let mut next = Some(rejection);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<serde_path_to_error::Error<E>>() {
            let field = found.path().iter().find_map(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                _ => None,
            });
            return (field, found.inner().to_string());
        }
        innermost = error;
        next = error.source();
    }
    (None, innermost.to_string())
}

async fn run_sql(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServingError> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return Ok(body_unreadable(&rejection)),
    };
    // Whatever the content type: `curl -d '{"sql": ...}'` sends a form-encoded one.
    let Json(request) = Json::<SqlRequest>::from_bytes(&body).map_err(|e| sql_body_rejected(&e))?;
    let text = request.sql.as_str();
    let mut tables = Vec::new();
    let mut loading = Vec::new();
    let mut versions = std::collections::BTreeMap::new();
    for slot in state.jobs.iter() {
        let job = slot.current();
        versions.insert(job.name().to_string(), job.version());
        let snapshot = job.snapshot();
        if let Err(e) = job.require_batch(&snapshot) {
            loading.push((job.name().to_string(), e));
        }
        tables.push((job.name().to_string(), snapshot.table.clone()));
    }
    let mut answer = sql::run(text, tables, loading).await?;
    answer.versions = versions;
    Ok(json_response(StatusCode::OK, json!(answer).to_string()))
}

#[cfg(test)]
mod tests;
