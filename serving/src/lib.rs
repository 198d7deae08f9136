//! `sluice-serving`: the serving layer.
//!
//! It owns the merged view of each job, merge(batch(< cutoff), speed(≥ cutoff)): the batch
//! view's partial states below the view table's cutoff (`batch_view`), the speed view's
//! partial states from the committed `<job>.speed` changelog (`speed_view`), and their merge
//! through `sluice_core`'s aggregate stage into one snapshot per change (`snapshot`). The HTTP
//! API ([`Server`]) answers job state, view lookups by key and time range, read-only SQL over
//! every merged view, Prometheus metrics and health, and says which layer each row came from
//! and how fresh it is. Each job answers from one view version at a time, and follows
//! `<job>.control` to switch versions without a restart ([`control`], `versions`). It never
//! re-implements an aggregate: merging and finalizing are core's.

mod anomalies;
mod api;
mod batch_view;
pub mod control;
mod dashboard;
mod error;
mod freshness;
mod metrics;
mod quality;
mod query;
mod server;
mod service;
mod snapshot;
mod speed_view;
mod sql;
mod versions;

pub use api::OPENAPI;
pub use error::{Result, ServingError};
pub use freshness::{Freshness, Stale};
pub use quality::CheckStatus;
pub use query::{DEFAULT_LIMIT, MAX_LIMIT, ViewAnswer, ViewQuery, ViewRow};
pub use server::{PipelineCompiler, ServeConfig, Server};
pub use service::{BATCH_VIEW, BatchRun, JobStatus, Loading, PartialRows, SPEED_VIEW, ServedJob};
pub use sluice_core::Origin;
pub use snapshot::{ORIGIN_COLUMN, OriginCounts};
pub use sql::{MAX_SQL_ROWS, SqlAnswer};

pub use service::{MergedView, MergedViewReader};
