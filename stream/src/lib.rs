//! `sluice-stream`: the speed layer.
//!
//! It owns the Kafka side of a job: the consumer-group daemon ([`StreamDaemon`]) that runs each
//! micro-batch through `sluice_core`'s [`Pipeline`](sluice_core::Pipeline) and commits state,
//! results, dead letters, late records and offsets in one Kafka transaction; the RocksDB window
//! state that caches the `<job>.speed` changelog; watermarks; the raw-lake sink
//! ([`LakeSink`]) that lands every source record in the raw Delta table exactly once; and the
//! Prometheus metrics. It never re-implements a filter, window or aggregate: the processor only
//! routes rows and keys state.

mod config;
mod cutoff;
mod daemon;
mod error;
mod kafka;
mod memory;
mod metrics;
mod processor;
mod schemas;
mod seed;
mod sink;
mod state;
mod watermark;

pub use config::{Guarantee, StreamConfig, default_transactional_id};
pub use cutoff::BatchCutoff;
pub use daemon::{RunSummary, StreamDaemon};
pub use error::{Result, StreamError};
pub use memory::MemoryBound;
pub use metrics::{StreamMetrics, serve_metrics};
pub use processor::{Diverted, Output, RoutedRecord, SourceRecord, SpeedRecord};
pub use seed::{SeedOutcome, seed_speed_layer};
pub use sink::health::{HealthReport, SinkHealth, SinkState};
pub use sink::postgres::{self, PostgresSink, sample_job_metrics};
pub use sink::{CommitPolicy, LakeSink, LakeSinkConfig, SinkSummary};
pub use sluice_kafka::send_waiting;
