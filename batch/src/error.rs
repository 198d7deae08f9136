//! The error type of `sluice-batch`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Core(#[from] sluice_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("job `{job}`: backfill range {from} .. {to}: {why}")]
    Range {
        job: String,
        from: String,
        to: String,
        why: String,
    },
    #[error(
        "job `{job}`: nothing to backfill in {from} .. {to}: the raw table is complete only until {complete_until} on every partition (the lake sink has not landed later records yet); wait for it, or pass --allow-incomplete"
    )]
    Incomplete {
        job: String,
        from: String,
        to: String,
        /// `-` when a partition has not been reported at all.
        complete_until: String,
    },
    #[error("job `{job}` is stateless: it has no partial states to {what}")]
    Stateless { job: String, what: &'static str },
    #[error("job `{job}`: reading the raw table {url}: {source}")]
    Scan {
        job: String,
        url: String,
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },
}

pub type Result<T, E = BatchError> = std::result::Result<T, E>;
