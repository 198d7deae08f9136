//! Which buckets the batch view holds, and so where its cutoff may stand.
//!
//! The serving layer answers with batch(< cutoff) merged with speed(≥ cutoff), and the speed
//! layer tombstones what lies below the cutoff. So the cutoff may only pass buckets the view
//! holds *without a gap back to the start of history*: a cutoff past a missing bucket loses
//! that bucket from every answer. Backfills of disjoint ranges may land in any order (an
//! Airflow DAG runs a month as parallel one-day shards), so each backfill commit records, next
//! to the cutoff, the ranges landed beyond it; the cutoff then moves over them as soon as the
//! gap before them is filled.
//!
//! Invariant: every bucket in `[history start, cutoff)` and every range in `landed` was written
//! by a backfill, and every range in `landed` starts after the cutoff (a gap lies before it).

use serde_json::{Value, json};

/// The batch view's cutoff and the ranges landed beyond it (µs, `[from, to)`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewCoverage {
    /// Every bucket before it is in the view; `None` until a backfill from the start of
    /// history has landed.
    pub cutoff: Option<i64>,
    /// Disjoint, sorted, each starting after `cutoff`.
    pub landed: Vec<(i64, i64)>,
}

impl ViewCoverage {
    /// The coverage recorded in a commit: its cutoff and landed-ranges values (either may be
    /// absent; a malformed range list counts as none, which only keeps the cutoff lower).
    pub fn from_commit(cutoff: Option<&Value>, landed: Option<&Value>) -> ViewCoverage {
        let landed: Vec<(i64, i64)> = landed
            .and_then(Value::as_array)
            .map(|ranges| {
                ranges
                    .iter()
                    .filter_map(|range| {
                        let from = range.get(0)?.as_i64()?;
                        let to = range.get(1)?.as_i64()?;
                        (from < to).then_some((from, to))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut coverage = ViewCoverage {
            cutoff: cutoff.and_then(Value::as_i64),
            landed: Vec::new(),
        };
        for range in landed {
            coverage.insert(range);
        }
        coverage.absorb();
        coverage
    }

    /// The landed ranges as commit metadata: `[[from, to], …]`.
    pub fn landed_json(&self) -> Value {
        json!(
            self.landed
                .iter()
                .map(|&(from, to)| [from, to])
                .collect::<Vec<_>>()
        )
    }

    /// The coverage after a backfill of `[from, to)` lands. `starts_history` says that no raw
    /// row lies before `from`, so a view without a cutoff may start one there.
    pub fn land(&self, from: i64, to: i64, starts_history: bool) -> ViewCoverage {
        let mut next = self.clone();
        if from >= to {
            return next;
        }
        if next.cutoff.is_none() && starts_history {
            next.cutoff = Some(from);
        }
        next.insert((from, to));
        next.absorb();
        next
    }

    /// Adds `range` to `landed`, coalescing overlapping and touching ranges.
    fn insert(&mut self, (from, to): (i64, i64)) {
        let mut merged = (from, to);
        let mut kept = Vec::with_capacity(self.landed.len() + 1);
        for &(a, b) in &self.landed {
            if b < merged.0 || a > merged.1 {
                kept.push((a, b));
            } else {
                merged = (merged.0.min(a), merged.1.max(b));
            }
        }
        kept.push(merged);
        kept.sort_unstable();
        self.landed = kept;
    }

    /// Moves the cutoff over every landed range that reaches back to it.
    fn absorb(&mut self) {
        let Some(mut cutoff) = self.cutoff else {
            return;
        };
        // Sorted and coalesced: one pass moves the cutoff as far as it can go.
        self.landed.retain(|&(from, to)| {
            if from <= cutoff {
                cutoff = cutoff.max(to);
                false
            } else {
                true
            }
        });
        self.cutoff = Some(cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::ViewCoverage;
    use proptest::prelude::*;

    fn at(cutoff: Option<i64>, landed: &[(i64, i64)]) -> ViewCoverage {
        ViewCoverage {
            cutoff,
            landed: landed.to_vec(),
        }
    }

    #[test]
    fn the_cutoff_moves_only_while_the_view_stays_contiguous() {
        let empty = ViewCoverage::default();
        assert_eq!(empty.land(10, 20, true), at(Some(20), &[]));
        assert_eq!(empty.land(10, 20, false), at(None, &[(10, 20)]));
        assert_eq!(at(Some(20), &[]).land(10, 30, true), at(Some(30), &[]));
        assert_eq!(at(Some(20), &[]).land(20, 30, false), at(Some(30), &[]));
        assert_eq!(at(Some(40), &[]).land(10, 30, false), at(Some(40), &[]));
        assert_eq!(
            at(Some(20), &[]).land(25, 30, false),
            at(Some(20), &[(25, 30)])
        );
        // Filling the gap moves the cutoff over what landed beyond it.
        assert_eq!(
            at(Some(20), &[(25, 30), (40, 50)]).land(20, 25, false),
            at(Some(30), &[(40, 50)])
        );
        // The start of history arriving last.
        assert_eq!(
            at(None, &[(20, 30), (30, 40)]).land(10, 20, true),
            at(Some(40), &[])
        );
    }

    #[test]
    fn commit_values_round_trip_and_garbage_counts_as_nothing_landed() {
        let coverage = at(Some(20), &[(25, 30), (40, 50)]);
        let json = coverage.landed_json();
        assert_eq!(
            ViewCoverage::from_commit(Some(&serde_json::json!(20)), Some(&json)),
            coverage
        );
        let garbage = serde_json::json!([[5], "x", [9, 3], {"a": 1}]);
        assert_eq!(
            ViewCoverage::from_commit(Some(&serde_json::json!(20)), Some(&garbage)),
            at(Some(20), &[])
        );
        assert_eq!(
            ViewCoverage::from_commit(None, None),
            ViewCoverage::default()
        );
    }

    proptest! {
        /// Shards of a range landing in any order end with the cutoff at the range end, and
        /// the cutoff never stands past a shard that has not landed.
        #[test]
        fn shards_in_any_order_end_contiguous(order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle()) {
            let shard = |i: usize| (i as i64 * 10, i as i64 * 10 + 10);
            let mut coverage = ViewCoverage::default();
            let mut done = [false; 8];
            for &i in &order {
                let (from, to) = shard(i);
                coverage = coverage.land(from, to, i == 0);
                done[i] = true;
                let contiguous = done.iter().take_while(|d| **d).count() as i64 * 10;
                prop_assert_eq!(coverage.cutoff.unwrap_or(0), contiguous);
            }
            prop_assert_eq!(coverage, at(Some(80), &[]));
        }
    }
}
