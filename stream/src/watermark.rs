//! Event-time progress: a watermark per source partition and the job watermark.
//!
//! A partition's watermark is its largest event time minus the job's watermark delay. The job
//! watermark is the minimum over the active partitions; a partition that has produced nothing
//! for the idle timeout and has nothing left to read stops holding it back (Flink's idleness),
//! and a partition that has never produced an event holds it back until then, because its
//! first events may be old.
//!
//! "Nothing left to read" is the broker's word, not a guess from silence: a partition whose
//! records are merely slow to arrive (its fetches starved by busier partitions, a stalled
//! connection) would otherwise see its windows closed by the others and its records turned
//! late. The daemon asks the broker about each partition that has been silent for the idle
//! timeout ([`Watermarks::unconfirmed_idle`]), and an answer counts for [`CONFIRMATION_TTL`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice_core::speed::PartitionWatermark;

/// How long the broker's word that a partition was read to its end counts: records produced
/// since may be on their way.
pub(crate) const CONFIRMATION_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct PartitionProgress {
    max_event_us: Option<i64>,
    last_record: Instant,
    /// When the broker last said that the consumer had read the partition to its end.
    read_to_end_at: Option<Instant>,
}

impl PartitionProgress {
    fn new(max_event_us: Option<i64>, now: Instant) -> PartitionProgress {
        PartitionProgress {
            max_event_us,
            last_record: now,
            read_to_end_at: None,
        }
    }

    /// Records arrived, or the broker says some are waiting: active as of `now`, and any
    /// earlier word that it was read to its end no longer holds.
    fn active_at(&mut self, now: Instant) {
        self.last_record = now;
        self.read_to_end_at = None;
    }

    fn silent(&self, now: Instant, idle_timeout: Duration) -> bool {
        now.duration_since(self.last_record) >= idle_timeout
    }

    fn confirmed_at_end(&self, now: Instant) -> bool {
        self.read_to_end_at
            .is_some_and(|at| now.duration_since(at) < CONFIRMATION_TTL)
    }
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
            PartitionProgress::new(restored.map(|w| w.max_event_us), now),
        );
    }

    /// The assigned partitions with their latest event time.
    pub(crate) fn partitions(&self) -> impl Iterator<Item = (i32, Option<i64>)> + '_ {
        self.partitions
            .iter()
            .map(|(p, progress)| (*p, progress.max_event_us))
    }

    /// The largest event time seen in `partition`, if any.
    pub(crate) fn max_event_us(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|p| p.max_event_us)
    }

    pub(crate) fn delay_us(&self) -> i64 {
        self.delay_us
    }

    pub(crate) fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// The partitions silent for the idle timeout whose end the broker has not confirmed
    /// lately: until it does, they still hold the job watermark back.
    pub(crate) fn unconfirmed_idle(&self, now: Instant) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.silent(now, self.idle_timeout) && !p.confirmed_at_end(now))
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// The broker says `partition` has records left to read: it is not idle, however long
    /// since its last record (a backlog's partitions arrive one fetch at a time, and one that
    /// comes last must not find its windows closed by the others).
    pub(crate) fn touch(&mut self, partition: i32, now: Instant) {
        if let Some(progress) = self.partitions.get_mut(&partition) {
            progress.active_at(now);
        }
    }

    /// The broker says the consumer has read `partition` to its end.
    pub(crate) fn confirm_read_to_end(&mut self, partition: i32, now: Instant) {
        if let Some(progress) = self.partitions.get_mut(&partition) {
            progress.read_to_end_at = Some(now);
        }
    }

    /// The partitions that no longer hold the job watermark back.
    pub(crate) fn idle(&self, now: Instant) -> BTreeSet<i32> {
        self.partitions
            .iter()
            .filter(|(_, p)| self.is_idle(p, now))
            .map(|(partition, _)| *partition)
            .collect()
    }

    fn is_idle(&self, progress: &PartitionProgress, now: Instant) -> bool {
        progress.silent(now, self.idle_timeout) && progress.confirmed_at_end(now)
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
            .or_insert_with(|| PartitionProgress::new(None, now));
        progress.active_at(now);
        let seen = max_event_us?;
        if progress.max_event_us.is_some_and(|m| m >= seen) {
            return None;
        }
        progress.max_event_us = Some(seen);
        Some(PartitionWatermark {
            max_event_us: seen,
            watermark_us: seen.saturating_sub(delay),
            emitted_us: None,
            source_next_offset: None,
            purge_us: None,
        })
    }

    /// The job watermark (µs), or `None` while an active partition has no events yet.
    pub(crate) fn job_watermark(&self, now: Instant) -> Option<i64> {
        let watermark =
            |p: &PartitionProgress| p.max_event_us.map(|m| m.saturating_sub(self.delay_us));
        let active: Vec<&PartitionProgress> = self
            .partitions
            .values()
            .filter(|p| !self.is_idle(p, now))
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

    /// Silent past the idle timeout, and the broker confirms it has nothing left.
    fn idle_out(w: &mut Watermarks, now: Instant) {
        for partition in w.unconfirmed_idle(now) {
            w.confirm_read_to_end(partition, now);
        }
    }

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
        assert_eq!(w.unconfirmed_idle(later), vec![1]);
        idle_out(&mut w, later);
        assert_eq!(w.idle(later), BTreeSet::from([1]));
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
            source_next_offset: None,
            purge_us: None,
        };
        w.assign(2, Some(restored), later);
        assert_eq!(w.job_watermark(later), Some(495));
    }

    #[test]
    fn a_silent_partition_holds_the_watermark_until_the_broker_confirms_its_end() {
        let start = Instant::now();
        let mut w = Watermarks::new(Duration::ZERO, Duration::from_secs(2));
        w.assign(0, None, start);
        w.assign(1, None, start);
        w.observe(0, Some(100), start);
        w.observe(1, Some(10), start);
        let later = start + Duration::from_secs(3);
        w.observe(0, Some(200), later);
        assert_eq!(
            w.job_watermark(later),
            Some(10),
            "silence alone does not make partition 1 idle"
        );
        w.touch(1, later);
        assert!(
            w.unconfirmed_idle(later).is_empty(),
            "records are left: no need to ask again for an idle timeout"
        );
        let much_later = later + Duration::from_secs(3);
        w.observe(0, Some(300), much_later);
        assert_eq!(w.unconfirmed_idle(much_later), vec![1]);
        w.confirm_read_to_end(1, much_later);
        assert_eq!(w.job_watermark(much_later), Some(300), "then it idles");
        let stale = much_later + CONFIRMATION_TTL;
        assert_eq!(
            w.job_watermark(stale),
            Some(10),
            "an old confirmation no longer counts"
        );
        assert_eq!(w.unconfirmed_idle(stale), vec![1]);
        w.observe(1, Some(20), stale);
        assert!(w.idle(stale).is_empty(), "a record makes it active again");
    }
}
