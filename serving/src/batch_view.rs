//! The batch view: the view table's partial states below its cutoff, reloaded as backfills
//! commit new versions.

use std::sync::Arc;

use arrow::array::RecordBatch;
use sluice_core::lake::{CUTOFF_KEY, CommitSummary, TableLocation};
use sluice_core::{AggregateStage, JobPlan};

use crate::error::Result;

/// One version of the view table, as the merge uses it.
#[derive(Debug, Clone)]
pub(crate) struct BatchView {
    pub version: u64,
    /// Every bucket before the cutoff is the batch layer's (µs).
    pub cutoff_us: Option<i64>,
    /// Partial rows of buckets before the cutoff.
    pub partials: Vec<RecordBatch>,
    pub last_run: CommitSummary,
}

/// Reads the view table if its version differs from `known` (`Ok(None)`: nothing new, or no
/// table yet).
///
/// The cutoff is read before the rows. A backfill that commits in between only adds rows
/// below a later cutoff, which the older cutoff hands to the speed view, which still holds
/// them; the other order could drop rows from both.
pub(crate) async fn load_if_changed(
    plan: &JobPlan,
    stage: &AggregateStage,
    table: &TableLocation,
    known: Option<u64>,
) -> Result<Option<Arc<BatchView>>> {
    let Some(last_run) = table.last_commit().await? else {
        return Ok(None);
    };
    if Some(last_run.version) == known {
        return Ok(None);
    }
    // A backfill's commit carries the cutoff; other commits keep the one before.
    let cutoff_us = match last_run.info.get(CUTOFF_KEY) {
        Some(cutoff) => cutoff.as_i64(),
        None => table.cutoff().await?,
    };
    let partials = match cutoff_us {
        Some(cutoff) => table
            .read_view_partials(plan)
            .await?
            .iter()
            .map(|partial| stage.buckets_in(partial, None, Some(cutoff)))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok(Some(Arc::new(BatchView {
        version: last_run.version,
        cutoff_us,
        partials,
        last_run,
    })))
}
