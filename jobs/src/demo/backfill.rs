//! The batch layer in the demo: a backfill every `--backfill-every` on a thread of its own, and
//! what the last one did, for the summary. It has its own module because "nothing to backfill
//! yet" is a normal state here (no raw table before the sink's first commit, no complete bucket
//! in the first minute), not an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_batch::{BackfillReport, BackfillRequest, BatchError};
use sluice_core::{Job, Lake};

use super::screen::{clip, clock, grouped};

/// What the backfill loop did, for the summary.
#[derive(Default)]
pub(super) struct Backfills {
    pub(super) runs: u64,
    /// Wall-clock time (UTC) and report of the last successful run.
    last: Option<(String, BackfillReport)>,
    /// The last run found nothing to do yet (no raw table, or no complete bucket).
    waiting: bool,
    error: Option<String>,
}

impl Backfills {
    pub(super) fn describe(&self) -> String {
        if let Some(error) = &self.error {
            return format!("failed: {}", clip(error, 100));
        }
        match &self.last {
            Some((at, report)) => format!(
                "{at}, {} raw rows -> {} view rows in {:.1}s ({} runs)",
                grouped(report.rows_read as u64),
                grouped(report.view_rows as u64),
                report.seconds,
                self.runs
            ),
            None if self.waiting => {
                "waiting for a complete 1-minute bucket of raw data".to_string()
            }
            None => "not run yet".to_string(),
        }
    }
}

/// Runs a backfill every `every` on its own thread (Delta I/O on the runtime).
pub(super) fn spawn_backfill(
    job: &Job,
    lake: &Lake,
    every: Duration,
    state: &Arc<Mutex<Backfills>>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let (job, lake, state, stop) = (job.clone(), lake.clone(), state.clone(), stop.clone());
    let runtime = tokio::runtime::Handle::current();
    let every = every.max(Duration::from_secs(1));
    std::thread::Builder::new()
        .name("demo-backfill".into())
        .spawn(move || {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let request = BackfillRequest::default();
                let result = runtime.block_on(sluice_batch::backfill(&job, &lake, None, request));
                record_backfill(&state, result);
                next = Instant::now() + every;
            }
        })
        .context("starting the backfill loop")
}

fn record_backfill(state: &Mutex<Backfills>, result: sluice_batch::Result<BackfillReport>) {
    let Ok(mut state) = state.lock() else {
        return;
    };
    match result {
        Ok(report) => {
            state.runs += 1;
            state.error = None;
            state.last = Some((clock(), report));
        }
        Err(e) if nothing_to_backfill(&e) => state.waiting = true,
        Err(e) => {
            tracing::warn!(error = %e, "demo backfill failed; trying again next round");
            state.error = Some(e.to_string());
        }
    }
}

/// Before the sink's first commit there is no raw table; while every raw row is in the current
/// bucket the range is empty.
fn nothing_to_backfill(error: &BatchError) -> bool {
    matches!(
        error,
        BatchError::Range { .. }
            | BatchError::Incomplete { .. }
            | BatchError::Core(sluice_core::Error::Table { .. })
    )
}
