//! The batch view's cutoff as the speed layer may act on it.
//!
//! Retired rows (windows that expired in the speed layer) stay in `<job>.speed` until the batch
//! view covers their bucket; then they are tombstoned, so the changelog, restores and the
//! serving layer's speed view hold only what the batch has not taken over. But a serving
//! replica learns of a new cutoff only when it next loads the batch view, and until then it
//! answers the buckets between its old cutoff and the new one from the speed view. So the
//! daemon acts on a cutoff only once it has seen it for `grace` (wall time): long enough for
//! every healthy replica to have loaded it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::lake::TableLocation;

/// Cutoffs seen, with when they were first seen; see the module docs.
#[derive(Debug)]
pub struct BatchCutoff {
    grace: Duration,
    /// Rising cutoffs (µs), oldest first; entries older than the newest settled one pruned.
    seen: Mutex<VecDeque<(Instant, i64)>>,
}

impl BatchCutoff {
    pub fn new(grace: Duration) -> Arc<BatchCutoff> {
        Arc::new(BatchCutoff {
            grace,
            seen: Mutex::new(VecDeque::new()),
        })
    }

    /// Records the cutoff read at `now` (a cutoff never moves back: an older one is ignored).
    pub fn observe(&self, cutoff: i64, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.back().is_none_or(|&(_, last)| cutoff > last) {
            seen.push_back((now, cutoff));
        }
    }

    /// The newest cutoff seen at least `grace` before `now`.
    pub fn settled(&self, now: Instant) -> Option<i64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let settled = seen
            .iter()
            .rposition(|&(at, _)| now.saturating_duration_since(at) >= self.grace)?;
        seen.drain(..settled);
        seen.front().map(|&(_, cutoff)| cutoff)
    }

    /// Reads the view table's cutoff every `poll` until `stop` is set.
    pub async fn watch(
        self: Arc<Self>,
        job: String,
        view: TableLocation,
        poll: Duration,
        stop: Arc<AtomicBool>,
    ) {
        while !stop.load(Ordering::SeqCst) {
            match view.cutoff().await {
                Ok(Some(cutoff)) => self.observe(cutoff, Instant::now()),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(job = %job, error = %e, "cannot read the batch view's cutoff yet")
                }
            }
            tokio::time::sleep(poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cutoff_counts_once_it_has_been_seen_for_the_grace_period() {
        let cutoff = BatchCutoff::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(cutoff.settled(t0), None);
        cutoff.observe(100, t0);
        assert_eq!(cutoff.settled(t0 + Duration::from_secs(9)), None);
        assert_eq!(cutoff.settled(t0 + Duration::from_secs(10)), Some(100));
        cutoff.observe(200, t0 + Duration::from_secs(12));
        cutoff.observe(150, t0 + Duration::from_secs(13));
        assert_eq!(cutoff.settled(t0 + Duration::from_secs(21)), Some(100));
        assert_eq!(cutoff.settled(t0 + Duration::from_secs(22)), Some(200));
        assert_eq!(cutoff.settled(t0 + Duration::from_secs(23)), Some(200));
        let no_grace = BatchCutoff::new(Duration::ZERO);
        no_grace.observe(5, t0);
        assert_eq!(no_grace.settled(t0), Some(5));
    }
}
