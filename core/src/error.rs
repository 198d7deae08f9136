//! The error type of `sluice-core`.

use std::path::PathBuf;

/// Everything that can go wrong while reading a job, compiling its plan, decoding records or
/// running the plan. Each variant carries what a caller needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: cannot read job file: {source}")]
    ReadJob {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not match the job schema (unknown key, wrong type, missing key).
    #[error("{file}: {message}")]
    ParseJob { file: PathBuf, message: String },
    /// The TOML parsed but a value is not acceptable.
    #[error("{file}: field `{field}`: expected {expected}, got {got}")]
    InvalidField {
        file: PathBuf,
        field: String,
        expected: String,
        got: String,
    },
    /// A command named an input (`--input`) the job does not have.
    #[error("job `{job}` has no input `{input}`; its inputs are: {known}")]
    UnknownInput {
        job: String,
        input: String,
        known: String,
    },
    /// The SQL transform cannot run as a Sluice job.
    #[error("job `{job}`: SQL not supported: {what}: {why}")]
    UnsupportedSql {
        job: String,
        what: String,
        why: String,
    },
    /// DataFusion refused the SQL (syntax, unknown column, type error).
    #[error("job `{job}`: invalid SQL: {source}")]
    InvalidSql {
        job: String,
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },
    #[error("job `{job}`: while {during}: {source}")]
    Execution {
        job: String,
        during: &'static str,
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },
    #[error("arrow error while {during}: {source}")]
    Arrow {
        during: &'static str,
        #[source]
        source: Box<arrow::error::ArrowError>,
    },
    /// A partial state could not be decoded from its binary form.
    #[error("partial state codec: {0}")]
    StateCodec(String),
    /// A stateful plan stage (dedup) met rows or state it cannot work with.
    #[error("operator state: {0}")]
    OperatorState(String),
    #[error("table {url}: {message}")]
    Table { url: String, message: String },
    #[error("delta table {url}: {source}")]
    Delta {
        url: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// A Rust record transform (e.g. Polars) failed.
    #[error("transform `{name}`: {message}")]
    Transform { name: String, message: String },
    #[error("invalid time `{value}`: {why}")]
    InvalidTime { value: String, why: String },
    /// `format = "avro"`: the writer schema file cannot be read.
    #[error("job `{job}`: cannot read the Avro schema file {file}: {source}")]
    ReadSchema {
        job: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A decoder broke its own rules (not a bad record: those are `RecordError`s).
    #[error("job `{job}`: decoder: {message}")]
    Decode { job: String, message: String },
    /// Records named a registry schema id nobody fetched: the caller must hand every id
    /// `missing_writer_schemas` names to `add_writer_schema` before decoding.
    #[error("job `{job}`: schema id {id} was not fetched from the registry before decoding")]
    MissingWriterSchema { job: String, id: u32 },
    /// A source row violates a `quarantine` data-quality check (see [`crate::checks`]).
    #[error("check `{check}` failed: expected {rule}")]
    CheckFailed {
        job: String,
        check: String,
        rule: String,
    },
    /// A secret the job needs is missing from the environment (named, never its value).
    #[error("job `{job}`: environment variable {variable}: {why}")]
    MissingSecret {
        job: String,
        variable: &'static str,
        why: String,
    },
    /// State written by another plan (see [`crate::plan_version`]).
    #[error(transparent)]
    Plan(#[from] Box<crate::plan_version::PlanMismatch>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn arrow_err(during: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> Error {
    move |source| Error::Arrow {
        during,
        source: Box::new(source),
    }
}
