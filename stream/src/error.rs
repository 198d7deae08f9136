//! The error type of `sluice-stream`.

use std::path::PathBuf;

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Core(#[from] sluice_core::Error),
    /// A Kafka call failed; `source` says what it was doing (`kafka: while …`).
    #[error("job `{job}`: {source}")]
    Kafka {
        job: String,
        #[source]
        source: Box<sluice_kafka::Error>,
    },
    #[error("job `{job}`: state store {path}: {source}")]
    State {
        job: String,
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("job `{job}`: {message}")]
    Config { job: String, message: String },
    #[error("job `{job}`: restoring partition {partition} from `{topic}`: {message}")]
    Restore {
        job: String,
        topic: String,
        partition: i32,
        message: String,
    },
    /// A PostgreSQL sink's store refused for a reason retrying cannot fix.
    #[error("job `{job}`: postgres sink `{sink}`: {source}")]
    Postgres {
        job: String,
        sink: String,
        #[source]
        source: Box<crate::sink::postgres::error::PgError>,
    },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = StreamError> = std::result::Result<T, E>;

/// Wraps a failed rdkafka call of `job`: `.map_err(kafka(job, "creating the consumer"))`.
pub(crate) fn kafka(
    job: &str,
    during: impl Into<String>,
) -> impl FnOnce(KafkaError) -> StreamError {
    let job = job.to_string();
    let wrap = sluice_kafka::Error::during(during);
    move |source| StreamError::Kafka {
        job,
        source: Box::new(wrap(source)),
    }
}

/// Puts a `sluice_kafka` error in `job`'s context.
pub(crate) fn in_job(job: &str) -> impl FnOnce(sluice_kafka::Error) -> StreamError {
    let job = job.to_string();
    move |source| StreamError::Kafka {
        job,
        source: Box::new(source),
    }
}
