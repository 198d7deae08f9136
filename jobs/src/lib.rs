//! The `sluice` binary's library half: the job definitions that are code rather than files
//! (the Polars transforms registered by name) and the built-in benchmark. Job files live in
//! `jobs/examples/`, the Airflow DAG in `jobs/airflow/`.

pub mod bench;
pub mod bench_stream;
pub mod stream_cmd;
pub mod transforms;
