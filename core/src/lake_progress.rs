//! How far the raw table is complete: per source partition, what the raw-lake sink has
//! landed and the event-time watermark there.
//!
//! The batch view's cutoff C says "every bucket before C is in the batch view, so the serving
//! layer drops the speed view there". A backfill whose range ends after what the lake holds
//! would move C past records still on their way to the lake, and the merged view would lose
//! them until a later backfill. So every raw-lake commit records, in its commit metadata
//! ([`crate::lake::commit_key::LAKE_PROGRESS`]), the progress of the partitions it knows, and a
//! backfill clamps its range to [`LakeProgress::complete_until`]: the minimum over all
//! partitions of the source topic of the partition's watermark at what was landed. A record
//! that arrives later with an older event time is behind its partition's watermark, a late
//! record, which the next backfill of its range corrects (as for the speed layer).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::lake::TableLocation;
use crate::spec::Job;

/// How complete `job`'s raw table `raw` is (see the module docs).
pub async fn raw_completeness(raw: &TableLocation, job: &Job) -> Result<Completeness> {
    let delay = job.spec.source.watermark_delay.as_micros() as i64;
    // No table yet: nothing has landed, so nothing is complete (a backfill must not move the
    // cutoff over records still on their way).
    if raw.open().await?.version().is_none() {
        return Ok(Completeness::Nothing);
    }
    Ok(match raw.lake_progress().await? {
        None => Completeness::Unbounded,
        Some(progress) => progress.complete_until(delay),
    })
}

/// One source partition's progress in the raw table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionProgress {
    /// Every record before this offset has been read (and landed unless it was undecodable).
    pub next_offset: i64,
    /// The largest event time landed from the partition (µs); `None` before its first row.
    pub max_event_us: Option<i64>,
    /// The sink had read the partition to its end at `next_offset`.
    #[serde(default)]
    pub at_end: bool,
}

/// What the raw table holds of each partition of the source topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LakeProgress {
    /// The source topic's partition count when the sink last looked.
    pub partitions: i32,
    /// Progress by partition number.
    pub by_partition: BTreeMap<i32, PartitionProgress>,
}

/// Up to when the raw table is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// No raw-lake sink has written the table (it holds loaded files only, each loaded whole):
    /// nothing limits a backfill.
    Unbounded,
    /// Every partition's records with event times before this (µs) are in the table.
    Until(i64),
    /// A partition of the source topic has not been reported yet: nothing is known complete.
    Nothing,
}

impl Completeness {
    /// The latest range end (µs) a backfill may use instead of `to`: `to` itself, or the
    /// completeness bound floored to a bucket when that is earlier (`i64::MIN` when nothing
    /// is complete).
    pub fn clamp(self, to: i64, bucket_us: i64) -> i64 {
        match self {
            Completeness::Unbounded => to,
            Completeness::Until(until) => {
                let floor = until.saturating_sub(until.rem_euclid(bucket_us.max(1)));
                to.min(floor)
            }
            Completeness::Nothing => i64::MIN,
        }
    }

    /// What two raw tables hold completely together (a stream and the table it joins): the
    /// earlier bound, nothing when either holds nothing complete.
    pub fn and(self, other: Completeness) -> Completeness {
        match (self, other) {
            (Completeness::Nothing, _) | (_, Completeness::Nothing) => Completeness::Nothing,
            (Completeness::Until(a), Completeness::Until(b)) => Completeness::Until(a.min(b)),
            (Completeness::Until(a), Completeness::Unbounded)
            | (Completeness::Unbounded, Completeness::Until(a)) => Completeness::Until(a),
            (Completeness::Unbounded, Completeness::Unbounded) => Completeness::Unbounded,
        }
    }

    /// `unbounded`, `until` or `nothing`, as `sluice lake status --output json` names it.
    pub fn kind(self) -> &'static str {
        match self {
            Completeness::Unbounded => "unbounded",
            Completeness::Until(_) => "until",
            Completeness::Nothing => "nothing",
        }
    }

    /// The bound as a time (µs), `None` when unbounded or nothing is complete.
    pub fn until_us(self) -> Option<i64> {
        match self {
            Completeness::Until(until) => Some(until),
            _ => None,
        }
    }
}

impl LakeProgress {
    /// Takes in what another (newer, or another sink's) commit says: per partition the entry
    /// that has read further wins, so stale entries never move progress back.
    pub fn merge(&mut self, other: &LakeProgress) {
        self.partitions = self.partitions.max(other.partitions);
        for (&partition, theirs) in &other.by_partition {
            match self.by_partition.get_mut(&partition) {
                Some(ours) if ours.next_offset > theirs.next_offset => {}
                Some(ours) if ours.next_offset == theirs.next_offset => {
                    ours.at_end |= theirs.at_end;
                    ours.max_event_us = ours.max_event_us.max(theirs.max_event_us);
                }
                _ => {
                    self.by_partition.insert(partition, *theirs);
                }
            }
        }
    }

    /// Records that partition `partition` was read up to `next_offset`, landing rows with
    /// event times up to `max_event_us` (`None`: no row this time).
    pub fn advance(&mut self, partition: i32, next_offset: i64, max_event_us: Option<i64>) {
        let entry = self
            .by_partition
            .entry(partition)
            .or_insert(PartitionProgress {
                next_offset,
                max_event_us: None,
                at_end: false,
            });
        entry.next_offset = entry.next_offset.max(next_offset);
        entry.max_event_us = entry.max_event_us.max(max_event_us);
        entry.at_end = false;
    }

    /// Up to when every partition's records are in the table: the minimum over partitions of
    /// the largest landed event time minus `watermark_delay_us` (the partition's watermark). A
    /// partition read to its end without a single row does not hold it back; one not
    /// reported at all makes nothing complete.
    pub fn complete_until(&self, watermark_delay_us: i64) -> Completeness {
        let mut until: Option<i64> = None;
        for partition in 0..self.partitions {
            let Some(progress) = self.by_partition.get(&partition) else {
                return Completeness::Nothing;
            };
            match progress.max_event_us {
                Some(max) => {
                    let watermark = max.saturating_sub(watermark_delay_us);
                    until = Some(until.map_or(watermark, |u| u.min(watermark)));
                }
                None if progress.at_end => {}
                None => return Completeness::Nothing,
            }
        }
        match until {
            Some(until) => Completeness::Until(until),
            // Every partition is empty: whatever arrives later is newer than any cutoff that
            // matters, and there is nothing to backfill.
            None if self.partitions > 0 => Completeness::Until(i64::MAX),
            None => Completeness::Nothing,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_json(value: &serde_json::Value) -> Option<LakeProgress> {
        serde_json::from_value(value.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tables_are_complete_as_far_as_both_are() {
        use Completeness::{Nothing, Unbounded, Until};
        assert_eq!(Until(5).and(Until(3)), Until(3));
        assert_eq!(Until(5).and(Unbounded), Until(5));
        assert_eq!(Unbounded.and(Until(7)), Until(7));
        assert_eq!(Unbounded.and(Unbounded), Unbounded);
        assert_eq!(Until(5).and(Nothing), Nothing);
        assert_eq!(Nothing.and(Unbounded), Nothing);
    }

    fn progress(entries: &[(i32, i64, Option<i64>, bool)], partitions: i32) -> LakeProgress {
        LakeProgress {
            partitions,
            by_partition: entries
                .iter()
                .map(|&(p, next_offset, max_event_us, at_end)| {
                    (
                        p,
                        PartitionProgress {
                            next_offset,
                            max_event_us,
                            at_end,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn completeness_is_the_slowest_partitions_watermark() {
        let p = progress(
            &[(0, 10, Some(5_000), false), (1, 3, Some(9_000), false)],
            2,
        );
        assert_eq!(p.complete_until(1_000), Completeness::Until(4_000));
    }

    #[test]
    fn an_unreported_partition_makes_nothing_complete_and_an_empty_one_at_its_end_does_not_count() {
        let missing = progress(&[(0, 10, Some(5_000), false)], 2);
        assert_eq!(missing.complete_until(0), Completeness::Nothing);
        let empty_at_end = progress(&[(0, 10, Some(5_000), false), (1, 0, None, true)], 2);
        assert_eq!(empty_at_end.complete_until(0), Completeness::Until(5_000));
        let empty_reading = progress(&[(0, 10, Some(5_000), false), (1, 0, None, false)], 2);
        assert_eq!(empty_reading.complete_until(0), Completeness::Nothing);
    }

    #[test]
    fn merging_keeps_the_entry_that_read_further() {
        let mut ours = progress(
            &[(0, 10, Some(5_000), false), (1, 4, Some(1_000), false)],
            2,
        );
        let theirs = progress(&[(0, 8, Some(4_000), false), (1, 9, Some(3_000), false)], 3);
        ours.merge(&theirs);
        assert_eq!(ours.partitions, 3);
        assert_eq!(ours.by_partition[&0].next_offset, 10, "stale entries lose");
        assert_eq!(ours.by_partition[&1].max_event_us, Some(3_000));
    }

    #[test]
    fn a_range_end_clamps_to_the_bucket_floor_of_completeness() {
        let hour = 3_600_000_000;
        let until = Completeness::Until(2 * hour + 5);
        assert_eq!(until.clamp(10 * hour, hour), 2 * hour);
        assert_eq!(until.clamp(hour, hour), hour, "an earlier end stays");
        assert_eq!(Completeness::Unbounded.clamp(10 * hour, hour), 10 * hour);
        assert_eq!(Completeness::Nothing.clamp(10 * hour, hour), i64::MIN);
    }

    #[test]
    fn progress_round_trips_through_commit_metadata() {
        let p = progress(&[(0, 10, Some(5_000), true), (2, 1, None, false)], 3);
        assert_eq!(LakeProgress::from_json(&p.to_json()), Some(p));
    }
}
