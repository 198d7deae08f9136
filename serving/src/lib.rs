//! `sluice-serving`: the serving layer.
//!
//! It will own the HTTP API that merges the batch view (read with `sluice_core::lake`) and the
//! speed view with `sluice_core::AggregateStage::merge`/`finalize`. Nothing is implemented here
//! yet: the serving layer is its own issue.
