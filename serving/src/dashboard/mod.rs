//! The web dashboard: a page at `/` that shows every served job live, for a person rather than
//! a program (see docs/dashboard.md).
//!
//! It is part of the serving layer because that process already knows each job's state and
//! reaches its Kafka; what it lacked is the past, so a sampler ([`sampler`]) records one
//! sample per job every 5 s into a fixed-size ring ([`history`]) and reads the job's diverted
//! topics as they grow ([`probe`], [`letters`]). The routes:
//!
//! - `GET /` and `GET /assets/{*path}`: the page and its files, embedded in the binary
//!   ([`assets`]); they hold no data, so they need no token;
//! - `GET /v1/jobs/{job}/history?limit=`: the last hour of samples, the newest lags per
//!   partition, the diverted-record counts and the batch runs seen;
//! - `GET /v1/jobs/{job}/dlq?limit=`: counts by error type and by data-quality check and the
//!   newest records of `<job>.dlq` (and `<job>.late`) with their headers.
//!
//! The quality page (`#/quality/<job>`) needs no route of its own: a job's checks and their
//! counts are in `GET /v1/jobs/{job}` (the sampler hands it the dead letters' count by check)
//! and the quarantined records in the DLQ route.
//!
//! The two data routes sit behind the token like every `/v1/` route. They read what the
//! sampler stored ([`board`]), never Kafka, so a page polling them costs the server nothing
//! but a lock and some JSON.

mod assets;
mod board;
mod history;
mod letters;
mod probe;
mod sampler;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

pub(crate) use board::Dashboard;
pub(crate) use sampler::start;

use crate::api::{AppState, job_name, json_response};
use crate::error::ServingError;

/// The routes, as `MatchedPath` names them.
mod route {
    pub const INDEX: &str = "/";
    pub const ASSETS: &str = "/assets/{*path}";
    pub const HISTORY: &str = "/v1/jobs/{job}/history";
    pub const DLQ: &str = "/v1/jobs/{job}/dlq";
}

/// Samples answered when no `limit` is given: all of them.
const DEFAULT_SAMPLES: usize = history::CAPACITY;
/// Records of each diverted topic answered when no `limit` is given.
const DEFAULT_LETTERS: usize = 50;

/// The dashboard's routes; the data routes need the token (`require_token`) when the server
/// has one. The [`Dashboard`] they read is an [`Extension`] the server adds with the sampler.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    let data = Router::new()
        .route(route::HISTORY, get(history))
        .route(route::DLQ, get(dead_letters))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::api::require_token,
        ));
    Router::new()
        .route(route::INDEX, get(assets::index))
        .route(route::ASSETS, get(assets::asset))
        .merge(data)
}

/// The metrics label of a dashboard route (`other` for anything else).
pub(crate) fn endpoint_of(matched: Option<&str>) -> &'static str {
    match matched {
        Some(route::INDEX) => "dashboard",
        Some(route::ASSETS) => "dashboard_assets",
        Some(route::HISTORY) => "history",
        Some(route::DLQ) => "dlq",
        _ => "other",
    }
}

/// The query string of both data routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    limit: Option<usize>,
}

/// The largest `limit` either data route takes (the document's `maximum`).
const MAX_LIMIT: usize = 100_000;

fn limit_of(
    query: Result<Query<Limit>, QueryRejection>,
    default: usize,
) -> Result<usize, ServingError> {
    let Query(query) = query.map_err(|e| ServingError::bad_request("query", e.body_text()))?;
    if let Some(limit) = query.limit.filter(|l| *l > MAX_LIMIT) {
        return Err(ServingError::bad_request(
            "limit",
            format!("at most {MAX_LIMIT}, got {limit}"),
        ));
    }
    Ok(query.limit.unwrap_or(default))
}

/// A dashboard with nothing recorded, for a router running without the sampler (in-process
/// tests of the API).
fn or_empty(dashboard: Option<Extension<Arc<Dashboard>>>) -> Arc<Dashboard> {
    dashboard.map_or_else(
        || {
            Arc::new(Dashboard::new(
                Some("the dashboard's sampler is not running".to_string()),
                0,
            ))
        },
        |Extension(d)| d,
    )
}

fn json(body: &serde_json::Value) -> Response {
    json_response(StatusCode::OK, body.to_string())
}

/// The job is looked up before the query string is read, as `/view` does: an unknown job is
/// a 404 whatever the parameters.
async fn history(
    State(state): State<AppState>,
    dashboard: Option<Extension<Arc<Dashboard>>>,
    job: Result<Path<String>, PathRejection>,
    query: Result<Query<Limit>, QueryRejection>,
) -> Result<Response, ServingError> {
    let service = state.job(&job_name(job)?)?;
    let limit = limit_of(query, DEFAULT_SAMPLES)?;
    Ok(json(&or_empty(dashboard).history(&service, limit)))
}

async fn dead_letters(
    State(state): State<AppState>,
    dashboard: Option<Extension<Arc<Dashboard>>>,
    job: Result<Path<String>, PathRejection>,
    query: Result<Query<Limit>, QueryRejection>,
) -> Result<Response, ServingError> {
    let service = state.job(&job_name(job)?)?;
    let limit = limit_of(query, DEFAULT_LETTERS)?;
    Ok(json(&or_empty(dashboard).dead_letters(&service, limit)))
}

#[cfg(test)]
mod tests;
