//! The `sluice` binary's library half: the subcommands that run a layer (`stream_cmd`,
//! `serve_cmd`, `verify`, `demo`), the job definitions that are code rather than files (the
//! Polars transforms registered by name) and the built-in benchmarks. Job files live in
//! `jobs/examples/`, the Airflow DAG in `jobs/airflow/`.

pub mod bench;
pub mod bench_keyed;
pub mod bench_postgres;
pub mod bench_restore;
pub mod bench_serve;
pub mod bench_serve_memory;
pub mod bench_stream;
pub mod demo;
pub mod dlq;
pub mod nexmark;
pub mod postgres_cmd;
pub mod registry_cmd;
pub mod replay;
pub mod serve_cmd;
pub mod signals;
pub mod stream_cmd;
pub mod target;
pub mod transforms;
pub mod verify;
pub mod verify_cut;
pub mod versions_cmd;

/// How a command prints its result.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}
