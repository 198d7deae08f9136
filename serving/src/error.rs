//! The error type of `sluice-serving`, and how each error reaches an HTTP client.

use axum::http::StatusCode;

use crate::service::Loading;

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error(transparent)]
    Core(Box<sluice_core::Error>),
    #[error("job `{job}`: kafka: while {during}: {message}")]
    Kafka {
        job: String,
        during: String,
        message: String,
    },
    /// A call of the Kafka client failed; `source` says what it was doing (`kafka: while …`).
    #[error("job `{job}`: {source}")]
    KafkaClient {
        job: String,
        #[source]
        source: Box<sluice_kafka::Error>,
    },
    #[error(
        "job `{job}` is stateless: its results are records, not a view; read `{job}.results` or its view table instead"
    )]
    Stateless { job: String },
    #[error("two served jobs are named `{job}`")]
    DuplicateJob { job: String },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A part of the job is not loaded yet, so an answer would be wrong (503, retried).
    #[error("{0}")]
    Loading(Loading),
    #[error("no job named `{job}`; serving: {known}")]
    UnknownJob { job: String, known: String },
    #[error("`{parameter}`: {message}")]
    BadRequest { parameter: String, message: String },
    #[error("refused: {0}")]
    SqlRefused(String),
    #[error("{0}")]
    BadSql(String),
    #[error("{0}")]
    Internal(String),
}

impl From<sluice_core::Error> for ServingError {
    fn from(error: sluice_core::Error) -> Self {
        ServingError::Core(Box::new(error))
    }
}

impl ServingError {
    pub(crate) fn bad_request(parameter: &str, message: impl Into<String>) -> ServingError {
        ServingError::BadRequest {
            parameter: parameter.to_string(),
            message: message.into(),
        }
    }

    /// The HTTP status and the stable error code of the JSON error body.
    pub fn http(&self) -> (StatusCode, &'static str) {
        match self {
            ServingError::UnknownJob { .. } => (StatusCode::NOT_FOUND, "unknown_job"),
            ServingError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ServingError::SqlRefused(_) => (StatusCode::BAD_REQUEST, "sql_refused"),
            ServingError::BadSql(_) => (StatusCode::BAD_REQUEST, "bad_sql"),
            ServingError::Loading(_) => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

pub type Result<T, E = ServingError> = std::result::Result<T, E>;
