//! `sluice-batch`: the batch layer.
//!
//! It owns loading JSON-lines files into the raw Delta table ([`load`]), recomputing the batch
//! view from the raw table with the job's shared plan ([`backfill`]), reading the batch view
//! back as finalized rows ([`view`]), reporting what the lake holds ([`status`]), and, behind
//! the `polars` feature, running Polars `LazyFrame -> LazyFrame` transforms as
//! [`sluice_core::BatchTransform`]s ([`polars`]).
//! It never re-implements a filter, window or aggregate: those are `sluice_core::JobPlan`.

pub mod backfill;
pub mod cut;
mod dedup_fold;
pub mod error;
mod fold;
mod join_fold;
pub mod load;
#[cfg(feature = "polars")]
pub mod polars;
mod raw_scan;
pub mod seed;
pub mod status;
pub mod view;

pub use backfill::{BackfillReport, BackfillRequest, backfill, recompute_partials};
pub use cut::{Cut, recompute_cut};
pub use error::{BatchError, Result};
pub use load::{LoadReport, load_jsonl};
pub use seed::{replay_backfill_limit, speed_seeds};
pub use status::{LakeStatus, lake_status};
