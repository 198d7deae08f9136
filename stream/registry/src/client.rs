//! The registry client: what the speed layer needs from any Confluent-compatible registry
//! (Confluent, Karapace, Apicurio's ccompat API, or `sluice registry`). Blocking, for a plain
//! thread: the decoder asks for a writer schema the first time it meets its id and caches it,
//! so a call per new id is cheap enough, and a blocking client keeps the async runtime out of
//! the hot path. Every answer that is not the one asked for is an error that says whether a
//! retry can help ([`RegistryError::is_transient`]).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{RegistryAuth, split_url};
use crate::compat::Compatibility;
use crate::encoding::{percent_encode, truncate};
use crate::error::{RegistryError, Result};

/// How long connecting, and a whole exchange, may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (a schema is rarely over a few kilobytes).
const MAX_ANSWER_BYTES: u64 = 64 << 20;
/// What requests with a body declare, as Confluent's clients do.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Confluent's clients' `Accept`: the v1 media type first, plain JSON last.
const ACCEPT: &str = "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json; qs=0.9, application/json; qs=0.5";

/// A client of one registry. Cheap to clone (the connection pool is shared); `Send + Sync`.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    auth: RegistryAuth,
    agent: ureq::Agent,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.base)
            .field("auth", &self.auth)
            .finish()
    }
}

/// `GET /schemas/ids/{id}`.
#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

/// `POST /subjects/{subject}/versions`.
#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

/// A registry's error body, `{"error_code": N, "message": "..."}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

impl RegistryClient {
    /// A client of the registry at `url` (`http://host:port[/path]`), authenticating as
    /// [`RegistryAuth::from_url_and_env`] finds. Makes no request.
    pub fn new(url: &str) -> Result<RegistryClient> {
        let (base, auth) = RegistryAuth::from_url_and_env(url)?;
        RegistryClient::with_auth(&base, auth)
    }

    /// A client of the registry at `url` with the credentials given (userinfo in `url`, if
    /// any, is dropped). Makes no request.
    pub fn with_auth(url: &str, auth: RegistryAuth) -> Result<RegistryClient> {
        let (base, _) = split_url(url)?;
        if base.parse::<ureq::http::Uri>().is_err() {
            return Err(RegistryError::Config {
                url: base,
                message: "not a valid URL; expected http://HOST:PORT".into(),
            });
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(TIMEOUT))
            .timeout_global(Some(TIMEOUT))
            .user_agent(concat!("sluice-registry/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(RegistryClient {
            base,
            auth,
            agent: ureq::Agent::new_with_config(config),
        })
    }

    /// The registry's URL, without credentials.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema with id `id`: `Ok(None)` when the registry says the id does not exist (404
    /// with error code 40403); an error for anything else (no connection, a timeout, 5xx,
    /// 401/403, a body that is not a schema), transient for the first three.
    pub fn schema_by_id(&self, id: u32) -> Result<Option<String>> {
        let during = format!("fetching schema id {id}");
        let (status, body) = self.call("GET", &format!("/schemas/ids/{id}"), None, &during)?;
        match status {
            200 => {
                let answer: SchemaAnswer = self.parse(&body, &during)?;
                match answer.schema_type.as_deref() {
                    None => Ok(Some(answer.schema)),
                    Some(kind) if kind.eq_ignore_ascii_case("AVRO") => Ok(Some(answer.schema)),
                    Some(kind) => Err(RegistryError::BadAnswer {
                        url: self.base.clone(),
                        during,
                        message: format!(
                            "schema id {id} is a {kind} schema; Sluice decodes Avro only"
                        ),
                    }),
                }
            }
            404 if error_body(&body).error_code == Some(40403) => Ok(None),
            _ => Err(self.refused(&during, status, &body)),
        }
    }

    /// Registers `schema` under `subject` and returns its id (the existing one when the
    /// subject already has it). 409 is [`RegistryError::Incompatible`], 422
    /// [`RegistryError::InvalidSchema`].
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let during = format!("registering a schema under subject `{subject}`");
        let body = serde_json::json!({ "schema": schema })
            .to_string()
            .into_bytes();
        let path = format!("/subjects/{}/versions", percent_encode(subject));
        let (status, answer) = self.call("POST", &path, Some(body), &during)?;
        match status {
            200 => Ok(self.parse::<IdAnswer>(&answer, &during)?.id),
            409 => Err(RegistryError::Incompatible {
                subject: subject.to_string(),
                message: message_of(&answer),
            }),
            422 => Err(RegistryError::InvalidSchema {
                subject: subject.to_string(),
                message: message_of(&answer),
            }),
            _ => Err(self.refused(&during, status, &answer)),
        }
    }

    /// Sets the compatibility level of `subject`, or the global one (`None`).
    pub fn set_compatibility(&self, subject: Option<&str>, level: Compatibility) -> Result<()> {
        let (path, during) = match subject {
            Some(subject) => (
                format!("/config/{}", percent_encode(subject)),
                format!("setting the compatibility of subject `{subject}` to {level}"),
            ),
            None => (
                "/config".to_string(),
                format!("setting the global compatibility to {level}"),
            ),
        };
        let body = serde_json::json!({ "compatibility": level.as_str() })
            .to_string()
            .into_bytes();
        let (status, answer) = self.call("PUT", &path, Some(body), &during)?;
        match status {
            200 => Ok(()),
            _ => Err(self.refused(&during, status, &answer)),
        }
    }

    /// One request: the status and the whole body. Errors are failures to get an answer.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        during: &str,
    ) -> Result<(u16, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(url.as_str())
            .header("accept", ACCEPT);
        if let Some(value) = self.auth.header() {
            request = request.header("authorization", value);
        }
        // The builder's errors would quote the header values: say only which part was bad.
        let unusable = |_: ureq::http::Error| RegistryError::Config {
            url: self.base.clone(),
            message: format!(
                "{during}: the request cannot be built (bad characters in the subject or the credentials?)"
            ),
        };
        let sent = match body {
            Some(bytes) => self.agent.run(
                request
                    .header("content-type", CONTENT_TYPE)
                    .body(bytes)
                    .map_err(unusable)?,
            ),
            None => self.agent.run(request.body(()).map_err(unusable)?),
        };
        let mut response = sent.map_err(|e| self.unreachable(during, e))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|e| self.unreachable(during, e))?;
        Ok((status, bytes))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, body: &[u8], during: &str) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| RegistryError::BadAnswer {
            url: self.base.clone(),
            during: during.to_string(),
            message: format!(
                "{e}; body: {}",
                truncate(&String::from_utf8_lossy(body), 300)
            ),
        })
    }

    /// A failure to get an answer. Everything but a malformed request is worth retrying: the
    /// registry may be restarting, or the network flapping.
    fn unreachable(&self, during: &str, error: ureq::Error) -> RegistryError {
        match error {
            ureq::Error::Http(_) | ureq::Error::BadUri(_) => RegistryError::Config {
                url: self.base.clone(),
                message: format!("{during}: {error}"),
            },
            error => RegistryError::Unreachable {
                url: self.base.clone(),
                during: during.to_string(),
                message: error.to_string(),
            },
        }
    }

    fn refused(&self, during: &str, status: u16, body: &[u8]) -> RegistryError {
        let parsed = error_body(body);
        RegistryError::Http {
            url: self.base.clone(),
            during: during.to_string(),
            status,
            code: parsed.error_code,
            message: parsed
                .message
                .unwrap_or_else(|| truncate(&String::from_utf8_lossy(body), 300)),
        }
    }
}

/// The error body of an answer (empty when it is not one).
fn error_body(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body).unwrap_or(ErrorBody {
        error_code: None,
        message: None,
    })
}

/// The `message` of an error body, else the body itself (cut short).
fn message_of(body: &[u8]) -> String {
    error_body(body)
        .message
        .unwrap_or_else(|| truncate(&String::from_utf8_lossy(body), 300))
}

#[cfg(test)]
mod tests;
