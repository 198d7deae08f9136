//! The last hour of a job, as the dashboard charts it: a fixed-size ring of samples.
//!
//! The serving layer keeps only the present (the snapshot, the lags of now); a chart needs the
//! past. Every [`super::SAMPLE_EVERY`] the sampler turns what it read into one [`Sample`], with
//! rates taken against the sample before, and the ring drops the oldest once it holds
//! [`CAPACITY`] of them: memory is fixed whatever the uptime.

use std::collections::VecDeque;

use serde::Serialize;

use crate::service::BatchRun;
use crate::snapshot::OriginCounts;

/// Samples kept per job: one hour at one every 5 s.
pub(crate) const CAPACITY: usize = 720;
/// Batch runs kept per job.
pub(crate) const BACKFILLS: usize = 10;

/// What the sampler read at one moment; [`History::record`] turns it into a [`Sample`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reading {
    pub at_ms: i64,
    pub version: u32,
    /// The source topic's high watermarks, summed over its partitions.
    pub source_end: Option<i64>,
    /// The speed daemon's committed offsets on the source topic, summed (a partition it never
    /// committed on counts from its low watermark).
    pub consumed: Option<i64>,
    pub source_lag_records: Option<i64>,
    pub speed_lag_records: i64,
    pub watermark_us: Option<i64>,
    pub freshness_ms: Option<i64>,
    /// Records counted in `<job>.dlq` and `<job>.late` so far.
    pub dlq_records: Option<u64>,
    pub late_records: Option<u64>,
    pub rows: OriginCounts,
}

/// One point of every time series of a job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Sample {
    pub at_ms: i64,
    /// The view version answering at that moment.
    pub version: u32,
    /// Records appended to the source topic per second since the sample before.
    pub events_in_per_s: Option<f64>,
    /// Source records the speed daemon committed per second since the sample before.
    pub consumed_per_s: Option<f64>,
    pub source_lag_records: Option<i64>,
    pub speed_lag_records: i64,
    /// The sample's time minus the speed watermark.
    pub watermark_delay_ms: Option<i64>,
    pub freshness_ms: Option<i64>,
    pub dlq_records: Option<u64>,
    pub late_records: Option<u64>,
    pub dlq_per_s: Option<f64>,
    pub late_per_s: Option<f64>,
    pub rows: OriginCounts,
    #[serde(skip)]
    source_end: Option<i64>,
    #[serde(skip)]
    consumed: Option<i64>,
}

/// One job's ring of samples and the batch runs seen.
#[derive(Debug)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
    capacity: usize,
    backfills: VecDeque<BatchRun>,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            samples: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            backfills: VecDeque::with_capacity(BACKFILLS),
        }
    }

    /// Appends the sample `reading` makes, dropping the oldest when full.
    pub fn record(&mut self, reading: &Reading) -> Sample {
        let sample = sample(self.samples.back(), reading);
        if self.samples.len() >= self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        sample
    }

    /// The newest `limit` samples, oldest first.
    pub fn newest(&self, limit: usize) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .skip(self.samples.len().saturating_sub(limit))
    }

    /// Remembers `run` unless it is the newest one already remembered (the sampler sees the
    /// same run at every sample until the next backfill).
    pub fn note_batch_run(&mut self, run: &BatchRun) {
        if self
            .backfills
            .back()
            .is_some_and(|b| b.version == run.version)
        {
            return;
        }
        if self.backfills.len() >= BACKFILLS {
            self.backfills.pop_front();
        }
        self.backfills.push_back(run.clone());
    }

    /// The batch runs seen, newest first.
    pub fn backfills(&self) -> impl Iterator<Item = &BatchRun> {
        self.backfills.iter().rev()
    }
}

fn sample(previous: Option<&Sample>, reading: &Reading) -> Sample {
    let seconds = previous.map_or(0.0, |p| (reading.at_ms - p.at_ms) as f64 / 1000.0);
    let rate = |before: Option<i64>, now: Option<i64>| -> Option<f64> {
        let (before, now) = (before?, now?);
        // Offsets that went back (a recreated topic, a reset group) are no rate.
        (seconds > 0.0 && now >= before).then(|| (now - before) as f64 / seconds)
    };
    let count = |n: Option<u64>| n.and_then(|n| i64::try_from(n).ok());
    Sample {
        at_ms: reading.at_ms,
        version: reading.version,
        events_in_per_s: rate(previous.and_then(|p| p.source_end), reading.source_end),
        consumed_per_s: rate(previous.and_then(|p| p.consumed), reading.consumed),
        source_lag_records: reading.source_lag_records,
        speed_lag_records: reading.speed_lag_records,
        watermark_delay_ms: reading
            .watermark_us
            .map(|w| (reading.at_ms - w / 1000).max(0)),
        freshness_ms: reading.freshness_ms,
        dlq_records: reading.dlq_records,
        late_records: reading.late_records,
        dlq_per_s: rate(
            previous.and_then(|p| count(p.dlq_records)),
            count(reading.dlq_records),
        ),
        late_per_s: rate(
            previous.and_then(|p| count(p.late_records)),
            count(reading.late_records),
        ),
        rows: reading.rows,
        source_end: reading.source_end,
        consumed: reading.consumed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ms: i64, source_end: i64, consumed: i64, dlq: u64) -> Reading {
        Reading {
            at_ms,
            version: 1,
            source_end: Some(source_end),
            consumed: Some(consumed),
            dlq_records: Some(dlq),
            ..Reading::default()
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_in_order() {
        let mut history = History::new(4);
        for i in 0..10 {
            history.record(&reading(i * 5_000, i, i, 0));
        }
        let times: Vec<i64> = history.newest(usize::MAX).map(|s| s.at_ms).collect();
        assert_eq!(times, vec![30_000, 35_000, 40_000, 45_000]);
        let newest: Vec<i64> = history.newest(2).map(|s| s.at_ms).collect();
        assert_eq!(newest, vec![40_000, 45_000]);
    }

    #[test]
    fn rates_are_growth_over_the_time_since_the_sample_before() {
        let mut history = History::new(CAPACITY);
        let first = history.record(&reading(10_000, 1_000, 900, 4));
        assert_eq!(first.events_in_per_s, None, "no sample before the first");
        let (dt_ms, grew, consumed, dead) = (4_000, 1_200, 1_000, 8);
        let second = history.record(&reading(
            10_000 + dt_ms,
            1_000 + grew,
            900 + consumed,
            4 + dead,
        ));
        let seconds = dt_ms as f64 / 1000.0;
        assert_eq!(second.events_in_per_s, Some(grew as f64 / seconds));
        assert_eq!(second.consumed_per_s, Some(consumed as f64 / seconds));
        assert_eq!(second.dlq_per_s, Some(dead as f64 / seconds));
        assert_eq!(second.late_per_s, None, "no late count was read");
    }

    #[test]
    fn offsets_that_go_back_are_no_rate() {
        let mut history = History::new(CAPACITY);
        history.record(&reading(0, 500, 500, 0));
        let after_reset = history.record(&reading(5_000, 20, 20, 0));
        assert_eq!(after_reset.events_in_per_s, None);
        assert_eq!(after_reset.consumed_per_s, None);
        let same_time = history.record(&reading(5_000, 40, 40, 0));
        assert_eq!(same_time.events_in_per_s, None, "no time passed");
    }

    #[test]
    fn the_watermark_delay_is_the_sample_time_minus_the_watermark() {
        let mut history = History::new(CAPACITY);
        let (at_ms, behind_ms) = (1_700_000_000_000, 2_500);
        let sample = history.record(&Reading {
            at_ms,
            watermark_us: Some((at_ms - behind_ms) * 1000),
            ..Reading::default()
        });
        assert_eq!(sample.watermark_delay_ms, Some(behind_ms));
        let none = history.record(&Reading::default());
        assert_eq!(none.watermark_delay_ms, None);
    }

    #[test]
    fn each_batch_run_is_remembered_once_and_only_the_newest_are_kept() {
        let mut history = History::new(CAPACITY);
        let run = |version| BatchRun {
            version,
            at: None,
            operation: Some("backfill".to_string()),
            from: None,
            to: None,
        };
        for version in 1..=(BACKFILLS as u64 + 3) {
            history.note_batch_run(&run(version));
            history.note_batch_run(&run(version));
        }
        let versions: Vec<u64> = history.backfills().map(|b| b.version).collect();
        let newest = BACKFILLS as u64 + 3;
        let expected: Vec<u64> = (newest + 1 - BACKFILLS as u64..=newest).rev().collect();
        assert_eq!(versions, expected);
    }
}
