//! The HTTP API: Confluent Schema Registry's REST API (the part Avro clients use), so any
//! Confluent client, serializer or tool works against it unchanged. Requests are read
//! leniently (the v1 media type, `application/json` or none; unknown fields ignored, as newer
//! clients send `metadata` and `ruleSet`); answers are `application/vnd.schemaregistry.v1+json`.
//! Reads answer from the replica's applied state; writes run on the blocking pool, since they
//! wait for Kafka and for the follower. Nothing a client sends makes a 5xx: those are Kafka's.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api_error::{ApiError, MEDIA_TYPE};
use crate::api_subjects as subjects;
use crate::replica::Replica;
use crate::schema::{ParsedSchema, parse_schema};

/// The largest request body read; larger ones are refused with 413.
pub(crate) const BODY_LIMIT: usize = 16 << 20;

pub(crate) type Api = Arc<Replica>;

pub(crate) fn router(replica: Api) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route("/subjects", get(subjects::list))
        .route(
            "/subjects/{subject}",
            post(subjects::lookup).delete(subjects::delete_subject),
        )
        .route(
            "/subjects/{subject}/versions",
            get(subjects::versions).post(subjects::register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(subjects::version).delete(subjects::delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(subjects::version_schema),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(subjects::check),
        )
        .route(
            "/config",
            get(subjects::global_level)
                .put(subjects::set_global_level)
                .delete(subjects::delete_global_level),
        )
        .route(
            "/config/{subject}",
            get(subjects::subject_level)
                .put(subjects::set_subject_level)
                .delete(subjects::delete_subject_level),
        )
        .route("/mode", get(mode))
        .route("/mode/{subject}", get(mode))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(replica)
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the handlers

/// A 200 with a JSON body.
pub(crate) fn ok(body: Value) -> Response {
    raw(body.to_string())
}

/// A 200 with a body that is JSON already (a stored schema).
pub(crate) fn raw(body: String) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, MEDIA_TYPE)], body).into_response()
}

/// A path parameter (axum only refuses one that does not decode to UTF-8).
pub(crate) fn param<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

/// Whether the query string sets `name=true`.
pub(crate) fn flag(query: &Option<String>, name: &str) -> bool {
    query.as_deref().unwrap_or_default().split('&').any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        key == name && value.eq_ignore_ascii_case("true")
    })
}

/// The JSON body, whatever the content type: not JSON is a 400, JSON of the wrong shape a 422,
/// too large a 413.
pub(crate) fn body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                413,
                format!("The request body is larger than {} MiB", BODY_LIMIT >> 20),
            )
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable(format!("Unprocessable request body: {e}"))
        }
        _ => ApiError::bad_request(format!("The request body is not JSON: {e}")),
    })
}

/// Runs a write (or a parse of a large schema) on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("a request task failed: {e}")))?
}

/// The body of a registration, lookup or compatibility check. Fields other clients send
/// (`metadata`, `ruleSet`, `normalize`, ...) are ignored.
#[derive(Deserialize)]
pub(crate) struct SchemaRequest {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Value>,
}

impl SchemaRequest {
    /// The schema, parsed: 42201 for another type than Avro, references, or what Avro refuses.
    pub fn parse(&self) -> Result<ParsedSchema, ApiError> {
        if let Some(kind) = &self.schema_type
            && !kind.eq_ignore_ascii_case("AVRO")
        {
            return Err(ApiError::invalid_schema(format!(
                "Invalid schema: this registry stores only AVRO schemas, not schemaType {kind}"
            )));
        }
        let has_references = match &self.references {
            None | Some(Value::Null) => false,
            Some(Value::Array(references)) => !references.is_empty(),
            Some(_) => true,
        };
        if has_references {
            return Err(ApiError::invalid_schema(
                "Invalid schema: schema references are not supported by this registry",
            ));
        }
        parse_schema(&self.schema)
            .map_err(|e| ApiError::invalid_schema(format!("Invalid schema: {e}")))
    }
}

/// A schema id in a path; one that is not a number is an unknown id.
fn schema_id(path: Result<Path<String>, PathRejection>) -> Result<u32, ApiError> {
    let text = param(path)?;
    text.parse::<u32>()
        .map_err(|_| ApiError::id_not_found(crate::encoding::truncate(&text, 100)))
}

// ---------------------------------------------------------------------------------------------
// Handlers: schemas by id, and the rest

async fn root() -> Response {
    ok(json!({}))
}

async fn schema_types() -> Response {
    ok(json!(["AVRO"]))
}

async fn mode() -> Response {
    ok(json!({ "mode": "READWRITE" }))
}

async fn not_found() -> ApiError {
    ApiError::new(404, "HTTP 404 Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(405, "HTTP 405 Method Not Allowed")
}

async fn schema_by_id(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = schema_id(id)?;
    let answer = api.read(|state| {
        state.schema(id).map(|stored| {
            let mut answer = json!({ "schema": stored.text });
            if let Some(kind) = &stored.schema_type {
                answer["schemaType"] = json!(kind);
            }
            answer
        })
    });
    answer.map(ok).ok_or_else(|| ApiError::id_not_found(id))
}

async fn raw_schema_by_id(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = schema_id(id)?;
    api.read(|state| state.schema(id).map(|stored| stored.text.clone()))
        .map(raw)
        .ok_or_else(|| ApiError::id_not_found(id))
}

async fn id_versions(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = schema_id(id)?;
    let deleted = flag(&query, "deleted");
    let versions = api.read(|state| state.id_versions(id, deleted))?;
    let body: Vec<Value> = versions
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    Ok(ok(json!(body)))
}

async fn id_subjects(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = schema_id(id)?;
    let deleted = flag(&query, "deleted");
    let mut subjects: Vec<String> = api
        .read(|state| state.id_versions(id, deleted))?
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    subjects.dedup();
    Ok(ok(json!(subjects)))
}

#[cfg(test)]
mod tests;
