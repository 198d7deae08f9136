//! `sluice-stream`: the speed layer.
//!
//! It will own the Kafka source, micro-batching, watermarks, RocksDB window state, exactly-once
//! emit, the DLQ and the raw-lake sink. It runs `sluice_core::JobPlan` on each micro-batch and
//! folds the partial states of `sluice_core::AggregateStage`; it never re-implements a filter,
//! window or aggregate. Nothing is implemented here yet: the speed layer is its own issue.
