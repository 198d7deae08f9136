//! The registry client: what the speed layer needs from any Confluent-compatible registry
//! (Confluent, Karapace, Apicurio's ccompat API, or `sluice registry`). Blocking, for a plain
//! thread: the decoder asks for a writer schema the first time it meets its id and caches it,
//! so a call per new id is cheap enough, and a blocking client keeps the async runtime out of
//! the hot path. Every answer that is not the one asked for is an error that says whether a
//! retry can help ([`RegistryError::is_transient`]); for a schema id, an answer that settles
//! the id (no such id, not an Avro schema) is a value ([`SchemaLookup`]), so the caller can
//! tell "ask again later" from "this id's records can never decode".
//!
//! `https://` registries are checked, by the system's OpenSSL, against its trusted roots, or
//! against a private CA's certificates only ([`RegistryClient::with_ca_file`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};

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
    /// The private CA file `https://` is checked against (`None`: the public roots).
    ca: Option<PathBuf>,
    agent: ureq::Agent,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.base)
            .field("auth", &self.auth)
            .field("ca", &self.ca)
            .finish()
    }
}

/// What the registry answered for a schema id ([`RegistryClient::schema_by_id`]), when the
/// answer settles the id. Answers that say nothing about the id (no connection, 5xx, 401...)
/// are errors instead: ask again later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaLookup {
    /// The writer schema's text: `schemaType` absent or `AVRO`. (Whether the text parses as
    /// Avro is the decoder's to say.)
    Avro(String),
    /// The registry has no schema under the id: HTTP 404, with Confluent's error code 40403
    /// or without it. What it said, for logs. A registry replica that lags behind the one the
    /// producer registered with says this for a moment, so callers ask again before believing
    /// it.
    NotFound(String),
    /// The registry answered for the id, but not with an Avro schema: another `schemaType`
    /// (PROTOBUF, JSON), or a body that is not the API's answer. Why, for the dead letters.
    NotAvro(String),
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
    /// A client of the registry at `url` (`http[s]://host:port[/path]`), authenticating as
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
                message: "not a valid URL; expected http://HOST:PORT or https://HOST:PORT".into(),
            });
        }
        Ok(RegistryClient {
            base,
            auth,
            ca: None,
            agent: agent(None),
        })
    }

    /// This client, checking an `https://` registry's certificate against the CA
    /// certificates in the PEM file `ca` only (a private CA), instead of the public roots.
    /// The file is read now: a missing file, or one without a `CERTIFICATE` block, is a
    /// [`RegistryError::Config`] naming it. (A block that is not a certificate fails the TLS
    /// handshake later, as an unknown issuer.)
    pub fn with_ca_file(self, ca: &Path) -> Result<RegistryClient> {
        let roots = read_ca(&self.base, ca)?;
        if !self.base.starts_with("https://") {
            tracing::warn!(
                registry = %self.base,
                ca = %ca.display(),
                "a registry CA file is set, but the registry URL is not https://: the CA is not used"
            );
        }
        Ok(RegistryClient {
            base: self.base,
            auth: self.auth,
            ca: Some(ca.to_path_buf()),
            agent: agent(Some(roots)),
        })
    }

    /// The registry's URL, without credentials.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// What the registry holds under schema id `id` ([`SchemaLookup`]): an Avro schema's
    /// text, no such id (404), or something that is not an Avro schema (another
    /// `schemaType`, a body that is not a schema). An error when the answer says nothing
    /// about the id: no connection, a timeout or 5xx (transient), 401/403 (the credentials),
    /// or another refusal of the request (the URL).
    pub fn schema_by_id(&self, id: u32) -> Result<SchemaLookup> {
        let during = format!("fetching schema id {id}");
        let (status, body) = self.call("GET", &format!("/schemas/ids/{id}"), None, &during)?;
        match status {
            200 => Ok(avro_schema(&body)),
            // With or without the registry's code: a registry behind a path prefix or a proxy
            // may answer a bare 404 for an id it lacks.
            404 => Ok(SchemaLookup::NotFound(not_found(&body))),
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

/// The agent every request goes through: statuses as values (the caller maps them), the
/// timeouts, and for `https://` the system's TLS library (OpenSSL, through native-tls) checking
/// the registry's certificate against `roots` (`None`: the system's trusted roots).
fn agent(roots: Option<RootCerts>) -> ureq::Agent {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::NativeTls)
        .root_certs(roots.unwrap_or(RootCerts::PlatformVerifier))
        .build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(TIMEOUT))
        .timeout_global(Some(TIMEOUT))
        .user_agent(concat!("sluice-registry/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls);
    ureq::Agent::new_with_config(config.build())
}

/// The certificates of the PEM file `path`, as the only roots (keys beside them are skipped).
fn read_ca(url: &str, path: &Path) -> Result<RootCerts> {
    let refuse = |message: String| RegistryError::Config {
        url: url.to_string(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| {
        refuse(format!(
            "reading the registry CA file {}: {e}",
            path.display()
        ))
    })?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(certificate)) => certificates.push(certificate),
            Ok(_) => {}
            Err(e) => {
                return Err(refuse(format!(
                    "the registry CA file {} is not valid PEM: {e}",
                    path.display()
                )));
            }
        }
    }
    if certificates.is_empty() {
        return Err(refuse(format!(
            "the registry CA file {} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)",
            path.display()
        )));
    }
    Ok(RootCerts::new_with_certs(&certificates))
}

/// A 200 answer to `GET /schemas/ids/{id}`: the Avro schema, or why it is none.
fn avro_schema(body: &[u8]) -> SchemaLookup {
    let answer: SchemaAnswer = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(e) => {
            return SchemaLookup::NotAvro(format!(
                "the registry's answer is not a schema ({e}); body: {}",
                truncate(&String::from_utf8_lossy(body), 300)
            ));
        }
    };
    match answer.schema_type.as_deref() {
        None => SchemaLookup::Avro(answer.schema),
        Some(kind) if kind.eq_ignore_ascii_case("AVRO") => SchemaLookup::Avro(answer.schema),
        Some(kind) => SchemaLookup::NotAvro(format!(
            "the registry holds a {} schema under this id; Sluice decodes Avro only",
            truncate(kind, 40)
        )),
    }
}

/// What a 404 for a schema id said, and whether it was the registry's own "no such id".
fn not_found(body: &[u8]) -> String {
    let parsed = error_body(body);
    let message = parsed
        .message
        .unwrap_or_else(|| truncate(&String::from_utf8_lossy(body), 300));
    match parsed.error_code {
        Some(40403) => format!("HTTP 404, error code 40403: {message}"),
        Some(code) => format!(
            "HTTP 404 with error code {code}, not 40403 (does the URL point at a schema registry?): {message}"
        ),
        None => format!(
            "HTTP 404 without an error code (does the URL point at a schema registry?): {message}"
        ),
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
