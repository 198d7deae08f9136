//! Event-time progress: a watermark per source partition and the job watermark.
//!
//! A partition's watermark is its largest event time minus the job's watermark delay. The job
//! watermark is the minimum over the active partitions; a partition that has produced nothing
//! for the idle timeout stops holding it back (Flink's idleness), and a partition that has never
//! produced an event holds it back until then, because its first events may be old.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_core::speed::PartitionWatermark;

#[derive(Debug, Clone)]
struct PartitionProgress {
    max_event_us: Option<i64>,
    last_record: Instant,
}

#[derive(Debug, Clone)]
pub(crate) struct Watermarks {
    delay_us: i64,
    idle_timeout: Duration,
    partitions: BTreeMap<i32, PartitionProgress>,
}

impl Watermarks {
    pub(crate) fn new(delay: Duration, idle_timeout: Duration) -> Watermarks {
        Watermarks {
            delay_us: delay.as_micros() as i64,
            idle_timeout,
            partitions: BTreeMap::new(),
        }
    }

    /// A newly assigned partition, with its watermark restored from the changelog if it had one.
    pub(crate) fn assign(
        &mut self,
        partition: i32,
        restored: Option<PartitionWatermark>,
        now: Instant,
    ) {
        self.partitions.insert(
            partition,
            PartitionProgress {
                max_event_us: restored.map(|w| w.max_event_us),
                last_record: now,
            },
        );
    }

    /// The assigned partitions with their latest event time.
    pub(crate) fn partitions(&self) -> impl Iterator<Item = (i32, Option<i64>)> + '_ {
        self.partitions
            .iter()
            .map(|(p, progress)| (*p, progress.max_event_us))
    }

    pub(crate) fn delay_us(&self) -> i64 {
        self.delay_us
    }

    pub(crate) fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Records that `partition` delivered records, the latest event at `max_event_us`.
    /// Returns the partition's new watermark when it moved.
    pub(crate) fn observe(
        &mut self,
        partition: i32,
        max_event_us: Option<i64>,
        now: Instant,
    ) -> Option<PartitionWatermark> {
        let delay = self.delay_us;
        let progress = self
            .partitions
            .entry(partition)
            .or_insert(PartitionProgress {
                max_event_us: None,
                last_record: now,
            });
        progress.last_record = now;
        let seen = max_event_us?;
        if progress.max_event_us.is_some_and(|m| m >= seen) {
            return None;
        }
        progress.max_event_us = Some(seen);
        Some(PartitionWatermark {
            max_event_us: seen,
            watermark_us: seen.saturating_sub(delay),
            emitted_us: None,
        })
    }

    /// The job watermark (µs), or `None` while an active partition has no events yet.
    pub(crate) fn job_watermark(&self, now: Instant) -> Option<i64> {
        let watermark =
            |p: &PartitionProgress| p.max_event_us.map(|m| m.saturating_sub(self.delay_us));
        let active: Vec<&PartitionProgress> = self
            .partitions
            .values()
            .filter(|p| now.duration_since(p.last_record) < self.idle_timeout)
            .collect();
        if active.is_empty() {
            // Everything is idle: hold at the slowest partition that has any progress.
            return self.partitions.values().filter_map(watermark).min();
        }
        active
            .into_iter()
            .map(watermark)
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_watermark_is_the_minimum_over_active_partitions_and_idle_ones_drop_out() {
        let start = Instant::now();
        let mut w = Watermarks::new(Duration::from_micros(5), Duration::from_secs(10));
        w.assign(0, None, start);
        w.assign(1, None, start);
        assert_eq!(
            w.observe(0, Some(100), start).map(|p| p.watermark_us),
            Some(95)
        );
        assert_eq!(
            w.job_watermark(start),
            None,
            "partition 1 has no events yet"
        );
        w.observe(1, Some(50), start);
        assert_eq!(w.job_watermark(start), Some(45));
        assert_eq!(
            w.observe(1, Some(40), start),
            None,
            "watermarks never go back"
        );
        let later = start + Duration::from_secs(11);
        w.observe(0, Some(120), later);
        assert_eq!(w.job_watermark(later), Some(115), "partition 1 is idle");
        w.revoke(0);
        assert_eq!(
            w.job_watermark(later),
            Some(45),
            "all idle: the slowest progress"
        );
        let restored = PartitionWatermark {
            max_event_us: 500,
            watermark_us: 495,
            emitted_us: None,
        };
        w.assign(2, Some(restored), later);
        assert_eq!(w.job_watermark(later), Some(495));
    }
}
