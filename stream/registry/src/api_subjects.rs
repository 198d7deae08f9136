//! The handlers of subjects, versions, compatibility checks and levels: the writes clients
//! make (register, delete, set a level) and the reads their serializers depend on.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use crate::api::{Api, SchemaRequest, blocking, body, flag, ok, param, raw};
use crate::api_error::ApiError;
use crate::compat::Compatibility;
use crate::state::VersionRef;

type Subject = Result<Path<String>, PathRejection>;
type SubjectVersion = Result<Path<(String, String)>, PathRejection>;
type Body = Result<Bytes, BytesRejection>;

/// The body of `PUT /config`: `{"compatibility": "FULL"}` (`compatibilityLevel`, as the
/// answers spell it, is taken too).
#[derive(Deserialize)]
struct LevelRequest {
    #[serde(default)]
    compatibility: Option<String>,
    #[serde(default, rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

impl LevelRequest {
    fn level(&self) -> Result<Compatibility, ApiError> {
        let text = self
            .compatibility
            .as_deref()
            .or(self.compatibility_level.as_deref())
            .unwrap_or_default();
        Compatibility::parse(text).ok_or_else(|| ApiError::invalid_level(text))
    }
}

pub(crate) async fn list(State(api): State<Api>, RawQuery(query): RawQuery) -> Response {
    let deleted = flag(&query, "deleted");
    ok(json!(api.read(|state| state.subjects(deleted))))
}

pub(crate) async fn versions(
    State(api): State<Api>,
    subject: Subject,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let subject = param(subject)?;
    let deleted = flag(&query, "deleted");
    let versions = api.read(|state| state.versions(&subject, deleted))?;
    let numbers: Vec<i32> = versions.into_iter().map(|(number, _)| number).collect();
    Ok(ok(json!(numbers)))
}

pub(crate) async fn register(
    State(api): State<Api>,
    subject: Subject,
    request: Body,
) -> Result<Response, ApiError> {
    let subject = param(subject)?;
    let request: SchemaRequest = body(request)?;
    let id = blocking(move || {
        let schema = request.parse()?;
        api.register(&subject, &schema)
    })
    .await?;
    Ok(ok(json!({ "id": id })))
}

/// A version with its schema, as `GET /subjects/{s}/versions/{v}` and lookups answer.
fn version_body(
    api: &Api,
    subject: &str,
    version: VersionRef,
    deleted: bool,
) -> Result<serde_json::Value, ApiError> {
    api.read(|state| {
        let (number, found) = state.version(subject, version, deleted)?;
        let stored = state.schema(found.id).ok_or_else(|| {
            ApiError::internal(format!(
                "version {number} of `{subject}` names an unknown id"
            ))
        })?;
        let mut answer = json!({
            "subject": subject,
            "version": number,
            "id": found.id,
            "schema": stored.text,
        });
        if let Some(kind) = &stored.schema_type {
            answer["schemaType"] = json!(kind);
        }
        Ok(answer)
    })
}

pub(crate) async fn version(
    State(api): State<Api>,
    path: SubjectVersion,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (subject, version) = param(path)?;
    let version = VersionRef::parse(&version)?;
    let deleted = flag(&query, "deleted");
    Ok(ok(version_body(&api, &subject, version, deleted)?))
}

pub(crate) async fn version_schema(
    State(api): State<Api>,
    path: SubjectVersion,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (subject, version) = param(path)?;
    let version = VersionRef::parse(&version)?;
    let deleted = flag(&query, "deleted");
    let text = api.read(|state| {
        let (number, found) = state.version(&subject, version, deleted)?;
        state
            .schema(found.id)
            .map(|stored| stored.text.clone())
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "version {number} of `{subject}` names an unknown id"
                ))
            })
    })?;
    Ok(raw(text))
}

/// `POST /subjects/{subject}`: which version of the subject holds this schema.
pub(crate) async fn lookup(
    State(api): State<Api>,
    subject: Subject,
    RawQuery(query): RawQuery,
    request: Body,
) -> Result<Response, ApiError> {
    let subject = param(subject)?;
    let request: SchemaRequest = body(request)?;
    let deleted = flag(&query, "deleted");
    let (reader, name) = (api.clone(), subject.clone());
    let (number, _) = blocking(move || {
        let schema = request.parse()?;
        reader.read(|state| state.lookup(&name, &schema, deleted))
    })
    .await?;
    Ok(ok(version_body(
        &api,
        &subject,
        VersionRef::Number(number),
        true,
    )?))
}

/// Hard deletes would let ids and versions be reused, which a log-replicated registry cannot
/// make safe: refused, saying so.
fn refuse_permanent(query: &Option<String>) -> Result<(), ApiError> {
    if flag(query, "permanent") {
        return Err(ApiError::unprocessable(
            "Permanent deletes are not supported by this registry: it soft-deletes only, so ids and versions are never reused",
        ));
    }
    Ok(())
}

pub(crate) async fn delete_subject(
    State(api): State<Api>,
    subject: Subject,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let subject = param(subject)?;
    refuse_permanent(&query)?;
    let deleted = blocking(move || api.delete_subject(&subject)).await?;
    Ok(ok(json!(deleted)))
}

pub(crate) async fn delete_version(
    State(api): State<Api>,
    path: SubjectVersion,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (subject, version) = param(path)?;
    let version = VersionRef::parse(&version)?;
    refuse_permanent(&query)?;
    let number = blocking(move || api.delete_version(&subject, version)).await?;
    Ok(ok(json!(number)))
}

/// `POST /compatibility/subjects/{s}/versions/{v}`: would this schema be accepted?
pub(crate) async fn check(
    State(api): State<Api>,
    path: SubjectVersion,
    RawQuery(query): RawQuery,
    request: Body,
) -> Result<Response, ApiError> {
    let (subject, version) = param(path)?;
    let version = VersionRef::parse(&version)?;
    let request: SchemaRequest = body(request)?;
    let verbose = flag(&query, "verbose");
    let messages = blocking(move || {
        // The subject and version are looked up before the schema is judged: an unknown
        // subject is a 40401 whatever the body says.
        api.read(|state| state.version(&subject, version, false).map(|_| ()))?;
        let schema = request.parse()?;
        api.read(|state| state.check(&subject, version, &schema))
    })
    .await?;
    let mut answer = json!({ "is_compatible": messages.is_empty() });
    if verbose {
        answer["messages"] = json!(messages);
    }
    Ok(ok(answer))
}

pub(crate) async fn global_level(State(api): State<Api>) -> Response {
    ok(json!({ "compatibilityLevel": api.read(|state| state.global_level()).as_str() }))
}

pub(crate) async fn set_global_level(
    State(api): State<Api>,
    request: Body,
) -> Result<Response, ApiError> {
    let level = body::<LevelRequest>(request)?.level()?;
    let level = blocking(move || api.set_level(None, level)).await?;
    Ok(ok(json!({ "compatibility": level.as_str() })))
}

pub(crate) async fn delete_global_level(State(api): State<Api>) -> Result<Response, ApiError> {
    let old = blocking(move || api.delete_level(None)).await?;
    Ok(ok(json!({ "compatibilityLevel": old.as_str() })))
}

pub(crate) async fn subject_level(
    State(api): State<Api>,
    subject: Subject,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let subject = param(subject)?;
    let fallback = flag(&query, "defaultToGlobal");
    let level = api.read(|state| match state.subject_level(&subject) {
        Some(level) => Ok(level),
        None if fallback => Ok(state.global_level()),
        None => Err(ApiError::no_subject_level(&subject)),
    })?;
    Ok(ok(json!({ "compatibilityLevel": level.as_str() })))
}

pub(crate) async fn set_subject_level(
    State(api): State<Api>,
    subject: Subject,
    request: Body,
) -> Result<Response, ApiError> {
    let subject = param(subject)?;
    let level = body::<LevelRequest>(request)?.level()?;
    let level = blocking(move || api.set_level(Some(&subject), level)).await?;
    Ok(ok(json!({ "compatibility": level.as_str() })))
}

pub(crate) async fn delete_subject_level(
    State(api): State<Api>,
    subject: Subject,
) -> Result<Response, ApiError> {
    let subject = param(subject)?;
    let old = blocking(move || api.delete_level(Some(&subject))).await?;
    Ok(ok(json!({ "compatibilityLevel": old.as_str() })))
}
