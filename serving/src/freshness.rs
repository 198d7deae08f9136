//! A job's freshness against its `[view] freshness_sla`: how far behind the wall clock the
//! merged view is complete, and whether that is within the SLA. `/v1/jobs` reports it,
//! `/health` turns a missed SLA into `degraded`, and the metrics carry both figures for the
//! alert. Everything here is a pure function of the clock passed in, so the verdict is tested
//! without waiting for time to pass.

use std::time::Duration;

use serde::Serialize;
use sluice_core::lake::commit_key;
use sluice_core::time::format_time;

use crate::batch_view::BatchView;
use crate::snapshot::Snapshot;

/// The newest event time (µs since the epoch) the merged view is complete to.
///
/// The merged view is batch(< cutoff) ∪ speed(≥ cutoff). Below the cutoff the batch view is
/// final; from the cutoff on, the speed layer has closed every window up to its watermark (the
/// bound it emitted windows to). So the view is complete to the later of the two. The
/// watermark alone would call a view stale whose speed daemon is stopped while backfills keep
/// it complete; the cutoff alone would lag by the whole batch interval. The record timestamps
/// behind `freshness_ms` are processing time, not event time: a view can be fed fresh records
/// of old events, and that is not fresh data.
pub(crate) fn complete_to_us(cutoff_us: Option<i64>, watermark_us: Option<i64>) -> Option<i64> {
    cutoff_us.max(watermark_us)
}

/// The wall clock (µs since the epoch) the serving layer judges freshness at.
pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The freshness of what `snapshot` answers (its cutoff and watermark) at `now_us`.
pub(crate) fn freshness_of(snapshot: &Snapshot, sla: Option<Duration>, now_us: i64) -> Freshness {
    let complete_to = complete_to_us(snapshot.cutoff_us, snapshot.watermark_us);
    Freshness::assess(complete_to, sla, now_us)
}

/// What `sluice backfill` writes as [`commit_key::OPERATION`].
const BACKFILL_OPERATION: &str = "backfill";

/// The commit time (ms since the epoch) of the view table's newest version when a backfill
/// wrote it: the batch layer's last success, for `sluice_backfill_last_success_timestamp_seconds`.
/// Only backfills write view tables today; another writer's commit (maintenance, say) is not
/// a backfill's success, so it reports nothing rather than a wrong time.
pub(crate) fn last_backfill_ms(view: &BatchView) -> Option<i64> {
    let operation = view.last_run.info.get(commit_key::OPERATION)?.as_str()?;
    view.last_run
        .timestamp_ms
        .filter(|_| operation == BACKFILL_OPERATION)
}

/// A job's freshness as `GET /v1/jobs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Freshness {
    /// What the view is complete to ([`complete_to_us`]); the status carries the cutoff and
    /// the watermark it comes from instead.
    #[serde(skip)]
    pub complete_to_us: Option<i64>,
    /// Wall clock minus the newest event time the merged view is complete to (never negative;
    /// `None` before either layer has any: no cutoff and no watermark yet).
    pub freshness_seconds: Option<f64>,
    /// `[view] freshness_sla`, when the job has one.
    pub freshness_sla_seconds: Option<f64>,
    /// Whether `freshness_seconds` is within the SLA; `None` without an SLA, or while the
    /// freshness is not known yet (a view with no data is not judged stale).
    pub fresh: Option<bool>,
}

impl Freshness {
    /// The freshness of a view complete to `complete_to_us`, judged against `sla`, at `now_us`.
    pub(crate) fn assess(
        complete_to_us: Option<i64>,
        sla: Option<Duration>,
        now_us: i64,
    ) -> Freshness {
        let freshness_seconds =
            complete_to_us.map(|to| now_us.saturating_sub(to).max(0) as f64 / 1e6);
        let freshness_sla_seconds = sla.map(|sla| sla.as_secs_f64());
        let fresh = match (freshness_seconds, freshness_sla_seconds) {
            (Some(seconds), Some(sla)) => Some(seconds <= sla),
            _ => None,
        };
        Freshness {
            complete_to_us,
            freshness_seconds,
            freshness_sla_seconds,
            fresh,
        }
    }

    /// What `/health` says about `job` when this misses its SLA (`None`: fresh, or not judged).
    pub(crate) fn stale(&self, job: &str) -> Option<Stale> {
        let (Some(false), Some(seconds), Some(sla), Some(to)) = (
            self.fresh,
            self.freshness_seconds,
            self.freshness_sla_seconds,
            self.complete_to_us,
        ) else {
            return None;
        };
        Some(Stale {
            job: job.to_string(),
            reason: format!(
                "job `{job}`: the merged view is complete to {} ({seconds:.1} s ago), \
                 {over:.1} s over its freshness SLA of {sla} s",
                format_time(to),
                over = seconds - sla,
            ),
            freshness_seconds: seconds,
            freshness_sla_seconds: sla,
        })
    }
}

/// A job whose view misses its freshness SLA: one entry of `degraded` in `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stale {
    pub job: String,
    /// Names the job, how far behind its view is and by how much that exceeds the SLA.
    pub reason: String,
    pub freshness_seconds: f64,
    pub freshness_sla_seconds: f64,
}

#[cfg(test)]
mod health_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;
    const NOW: i64 = 1_714_557_600 * SECOND; // 2024-05-01T10:00:00Z

    #[test]
    fn the_view_is_complete_to_the_later_of_cutoff_and_watermark() {
        assert_eq!(complete_to_us(None, None), None);
        assert_eq!(complete_to_us(Some(10), None), Some(10));
        assert_eq!(complete_to_us(None, Some(20)), Some(20));
        // The usual case: the speed layer runs ahead of the last backfill.
        assert_eq!(complete_to_us(Some(10), Some(20)), Some(20));
        // The speed daemon stopped while backfills go on: the batch view is newer.
        assert_eq!(complete_to_us(Some(30), Some(20)), Some(30));
    }

    #[test]
    fn freshness_is_the_wall_clock_minus_what_the_view_is_complete_to() {
        let f = Freshness::assess(Some(NOW - 12_500_000), None, NOW);
        assert_eq!(f.complete_to_us, Some(NOW - 12_500_000));
        assert_eq!(f.freshness_seconds, Some(12.5));
        assert_eq!((f.freshness_sla_seconds, f.fresh), (None, None));
        // A cutoff ahead of the clock (a backfill of future buckets) is not negative freshness.
        let ahead = Freshness::assess(Some(NOW + 5 * SECOND), None, NOW);
        assert_eq!(ahead.freshness_seconds, Some(0.0));
    }

    #[test]
    fn the_sla_verdict_holds_up_to_the_sla_and_fails_past_it() {
        let sla = Some(Duration::from_secs(30));
        let at = |behind_us: i64| Freshness::assess(Some(NOW - behind_us), sla, NOW);
        assert_eq!(at(29 * SECOND).fresh, Some(true));
        assert_eq!(at(30 * SECOND).fresh, Some(true));
        assert_eq!(at(30 * SECOND + 1).fresh, Some(false));
        assert_eq!(at(0).freshness_sla_seconds, Some(30.0));
        assert_eq!(at(10 * SECOND).stale("orders"), None, "fresh: not stale");
        assert!(
            at(31 * SECOND).stale("orders").is_some(),
            "past the SLA: stale"
        );
    }

    #[test]
    fn without_an_sla_or_any_data_nothing_is_judged() {
        let no_sla = Freshness::assess(Some(NOW - 3600 * SECOND), None, NOW);
        assert_eq!(no_sla.fresh, None);
        assert_eq!(no_sla.stale("orders"), None);
        let no_data = Freshness::assess(None, Some(Duration::from_secs(30)), NOW);
        assert_eq!(
            (no_data.freshness_seconds, no_data.fresh),
            (None, None),
            "{no_data:?}"
        );
        assert_eq!(no_data.stale("orders"), None);
    }

    #[test]
    fn a_missed_sla_names_the_job_and_by_how_much() {
        let to = NOW - 45 * SECOND;
        let f = Freshness::assess(Some(to), Some(Duration::from_secs(30)), NOW);
        let stale = f.stale("orders_demo").expect("stale");
        assert_eq!(stale.job, "orders_demo");
        assert_eq!(
            (stale.freshness_seconds, stale.freshness_sla_seconds),
            (45.0, 30.0)
        );
        assert!(
            stale.reason.contains("job `orders_demo`"),
            "{}",
            stale.reason
        );
        assert!(stale.reason.contains(&format_time(to)), "{}", stale.reason);
        assert!(stale.reason.contains("45.0 s ago"), "{}", stale.reason);
        assert!(stale.reason.contains("15.0 s over"), "{}", stale.reason);
        assert!(stale.reason.contains("SLA of 30 s"), "{}", stale.reason);
    }

    #[test]
    fn the_last_backfill_is_the_view_table_s_newest_commit_when_a_backfill_made_it() {
        use sluice_core::lake::CommitSummary;
        let view = |operation: Option<&str>, timestamp_ms| BatchView {
            version: 3,
            cutoff_us: None,
            partials: Vec::new(),
            last_run: CommitSummary {
                version: 3,
                timestamp_ms,
                info: operation
                    .map(|op| {
                        (
                            commit_key::OPERATION.to_string(),
                            serde_json::Value::from(op),
                        )
                    })
                    .into_iter()
                    .collect(),
            },
        };
        assert_eq!(
            last_backfill_ms(&view(Some("backfill"), Some(42))),
            Some(42)
        );
        assert_eq!(last_backfill_ms(&view(Some("backfill"), None)), None);
        assert_eq!(last_backfill_ms(&view(Some("OPTIMIZE"), Some(42))), None);
        assert_eq!(last_backfill_ms(&view(None, Some(42))), None);
    }
}
