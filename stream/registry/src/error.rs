//! The error type of `sluice-registry`, for both halves: the client names the registry URL
//! (never its credentials) and what it was asking, and says whether trying again can help; the
//! server names the brokers and the topic it could not use.

/// What went wrong talking to a schema registry, or running one.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry URL or its credentials cannot be used (no request was made).
    #[error("schema registry `{url}`: {message}")]
    Config { url: String, message: String },
    /// No answer: connection refused or reset, timeout, unknown host. Transient.
    #[error("schema registry {url}: {during}: {message}")]
    Unreachable {
        url: String,
        during: String,
        message: String,
    },
    /// An answer, but not the one asked for: its HTTP status, the registry's `error_code` when
    /// it sent one, and its message. Transient for 5xx, 408 and 429.
    #[error("schema registry {url}: {during}: HTTP {status}{}: {message}", code_suffix(*code))]
    Http {
        url: String,
        during: String,
        status: u16,
        code: Option<i64>,
        message: String,
    },
    /// A successful status with a body that is not what the API promises.
    #[error("schema registry {url}: {during}: unexpected answer: {message}")]
    BadAnswer {
        url: String,
        during: String,
        message: String,
    },
    /// The registry refused the schema: incompatible with the subject's earlier versions at
    /// the subject's compatibility level (HTTP 409).
    #[error("subject `{subject}`: the schema is incompatible with earlier versions: {message}")]
    Incompatible { subject: String, message: String },
    /// The registry refused the schema as invalid (HTTP 422).
    #[error("subject `{subject}`: invalid schema: {message}")]
    InvalidSchema { subject: String, message: String },
    /// Not one of the compatibility levels.
    #[error(
        "invalid compatibility level `{0}`; expected BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE or NONE"
    )]
    InvalidLevel(String),
    /// The registry server could not use Kafka: the brokers, what it was doing, Kafka's words.
    #[error("kafka at `{brokers}`: while {during}: {message}")]
    Kafka {
        brokers: String,
        during: String,
        message: String,
    },
    /// The schemas topic exists but cannot be the registry's log.
    #[error("topic `{topic}`: {message}")]
    Topic { topic: String, message: String },
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A bug or a lost task, not the caller's input.
    #[error("schema registry: internal error: {0}")]
    Internal(String),
}

fn code_suffix(code: Option<i64>) -> String {
    code.map(|code| format!(" (error code {code})"))
        .unwrap_or_default()
}

impl RegistryError {
    /// Whether the same request may succeed later: no connection, a timeout, a server-side
    /// failure (5xx), or a request the registry asked to repeat (408, 429). Callers retry these
    /// with backoff; everything else needs a change (of URL, credentials, schema) first.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } | RegistryError::Kafka { .. } => true,
            RegistryError::Http { status, .. } => *status >= 500 || matches!(*status, 408 | 429),
            _ => false,
        }
    }

    /// The registry's `error_code` (`40403`: no such schema id, ...), when it sent one.
    pub fn error_code(&self) -> Option<i64> {
        match self {
            RegistryError::Http { code, .. } => *code,
            RegistryError::Incompatible { .. } => Some(409),
            RegistryError::InvalidSchema { .. } => Some(42201),
            _ => None,
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> RegistryError {
        RegistryError::Http {
            url: "http://r:8081".into(),
            during: "fetching schema id 7".into(),
            status,
            code: Some(50001),
            message: "store down".into(),
        }
    }

    #[test]
    fn server_failures_and_silence_are_transient_refusals_are_not() {
        assert!(http(500).is_transient());
        assert!(http(503).is_transient());
        assert!(http(429).is_transient());
        assert!(!http(401).is_transient());
        assert!(!http(403).is_transient());
        assert!(!http(404).is_transient());
        let unreachable = RegistryError::Unreachable {
            url: "http://r:8081".into(),
            during: "fetching schema id 7".into(),
            message: "connection refused".into(),
        };
        assert!(unreachable.is_transient());
        let incompatible = RegistryError::Incompatible {
            subject: "s".into(),
            message: "m".into(),
        };
        assert!(!incompatible.is_transient());
    }

    #[test]
    fn messages_name_the_registry_the_request_and_the_code() {
        assert_eq!(
            http(500).to_string(),
            "schema registry http://r:8081: fetching schema id 7: HTTP 500 (error code 50001): store down"
        );
        let plain = RegistryError::Http {
            url: "http://r".into(),
            during: "x".into(),
            status: 502,
            code: None,
            message: "bad gateway".into(),
        };
        assert_eq!(
            plain.to_string(),
            "schema registry http://r: x: HTTP 502: bad gateway"
        );
    }
}
