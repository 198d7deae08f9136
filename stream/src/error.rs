//! The error type of `sluice-stream`.

use std::path::PathBuf;

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Core(#[from] sluice_core::Error),
    #[error("job `{job}`: kafka: while {during}: {source}")]
    Kafka {
        job: String,
        during: String,
        #[source]
        source: Box<KafkaError>,
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
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = StreamError> = std::result::Result<T, E>;

pub(crate) fn kafka(
    job: &str,
    during: impl Into<String>,
) -> impl FnOnce(KafkaError) -> StreamError {
    let job = job.to_string();
    let during = during.into();
    move |source| StreamError::Kafka {
        job,
        during,
        source: Box::new(source),
    }
}
