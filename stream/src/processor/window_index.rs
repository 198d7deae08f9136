//! Which windows the speed layer's state still holds open, and how far each partition has
//! emitted.
//!
//! The store holds partial rows; deciding when a window's rows go to `<job>.results`, when a
//! record is late and when a window's state is final is a question about window ends only.
//! [`WindowIndex`] answers it from an in-memory index of the open windows (one entry per
//! window, not per bucket row), so emission never scans the store for closed windows.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::speed::SpeedCodec;

use crate::error::Result;

/// A window ending at `end_us` is final, and its state purged, once its partition's windows
/// were emitted at least `lateness_us` past its end.
pub(crate) fn window_expired(end_us: i64, lateness_us: i64, emitted_us: i64) -> bool {
    end_us.saturating_add(lateness_us) <= emitted_us
}

/// A window of one source partition: the partition and the window's key prefix.
pub(crate) type PartitionWindow = (i32, Vec<u8>);

/// The open windows and each partition's emitted bound. See the module docs.
#[derive(Debug)]
pub(crate) struct WindowIndex {
    lateness_us: i64,
    /// Window end → the windows ending then that are still held in the store.
    open: BTreeMap<i64, BTreeSet<PartitionWindow>>,
    /// Per partition: its windows that ended by this job watermark have been emitted, and
    /// those that ended `allowed_lateness` before it purged. It only grows, and it is the bound
    /// lateness is judged by: a record of the partition whose windows all ended
    /// `allowed_lateness` before it is late. (The job watermark itself may step back when a
    /// partition with older data is assigned; that pauses emission, it never reopens windows.)
    emitted_us: BTreeMap<i32, i64>,
}

impl WindowIndex {
    pub(crate) fn new(lateness_us: i64) -> WindowIndex {
        WindowIndex {
            lateness_us,
            open: BTreeMap::new(),
            emitted_us: BTreeMap::new(),
        }
    }

    pub(crate) fn lateness_us(&self) -> i64 {
        self.lateness_us
    }

    /// The job watermark up to which `partition`'s closed windows were emitted.
    pub(crate) fn emitted(&self, partition: i32) -> Option<i64> {
        self.emitted_us.get(&partition).copied()
    }

    /// Sets `partition`'s emitted bound from its restored watermark record.
    pub(crate) fn restore_emitted(&mut self, partition: i32, emitted_us: Option<i64>) {
        match emitted_us {
            Some(emitted) => self.emitted_us.insert(partition, emitted),
            None => self.emitted_us.remove(&partition),
        };
    }

    /// Whether a window of `partition` ending at `end_us` is final (its state purged).
    pub(crate) fn is_expired(&self, partition: i32, end_us: i64) -> bool {
        self.emitted(partition)
            .is_some_and(|emitted| window_expired(end_us, self.lateness_us, emitted))
    }

    /// Indexes the window of a state row key by its end (rows without a group window have
    /// none).
    pub(crate) fn track(&mut self, codec: &SpeedCodec, partition: i32, key: &[u8]) -> Result<()> {
        if let (_, Some(end)) = codec.key_times(key)? {
            let prefix = codec.window_prefix_of(key).to_vec();
            self.open
                .entry(end)
                .or_default()
                .insert((partition, prefix));
        }
        Ok(())
    }

    /// The windows to emit at job watermark `after`: those that ended by it and were not yet
    /// emitted, and emitted ones whose rows changed (`changed` holds window prefixes).
    pub(crate) fn due(&self, after: i64, changed: &BTreeSet<Vec<u8>>) -> BTreeSet<Vec<u8>> {
        let mut due = BTreeSet::new();
        for (&end, windows) in self.open.range(..=after) {
            for (partition, prefix) in windows {
                let emitted = self.emitted(*partition).is_some_and(|e| end <= e);
                if !emitted || changed.contains(prefix) {
                    due.insert(prefix.clone());
                }
            }
        }
        due
    }

    /// Raises every listed partition's emitted bound to `after`; whether any moved (the
    /// bounds must then be recorded in the changelog).
    pub(crate) fn advance(
        &mut self,
        partitions: impl IntoIterator<Item = i32>,
        after: i64,
    ) -> bool {
        let mut moved = false;
        for partition in partitions {
            let emitted = self.emitted_us.entry(partition).or_insert(i64::MIN);
            if *emitted < after {
                *emitted = after;
                moved = true;
            }
        }
        moved
    }

    /// Removes and returns the windows that are final: they ended at least the allowed
    /// lateness before their partition's emitted bound.
    pub(crate) fn take_expired(&mut self) -> Vec<PartitionWindow> {
        let Some(&highest) = self.emitted_us.values().max() else {
            return Vec::new();
        };
        let candidates: Vec<i64> = self
            .open
            .range(..=highest.saturating_sub(self.lateness_us))
            .map(|(&end, _)| end)
            .collect();
        let mut taken = Vec::new();
        for end in candidates {
            let Some(windows) = self.open.get_mut(&end) else {
                continue;
            };
            let (emitted, lateness) = (&self.emitted_us, self.lateness_us);
            let expired: Vec<PartitionWindow> = windows
                .iter()
                .filter(|(p, _)| {
                    emitted
                        .get(p)
                        .is_some_and(|&e| window_expired(end, lateness, e))
                })
                .cloned()
                .collect();
            for window in &expired {
                windows.remove(window);
            }
            if windows.is_empty() {
                self.open.remove(&end);
            }
            taken.extend(expired);
        }
        taken
    }

    /// Forgets a revoked partition's windows and bound.
    pub(crate) fn revoke(&mut self, partition: i32) {
        self.emitted_us.remove(&partition);
        for windows in self.open.values_mut() {
            windows.retain(|(p, _)| *p != partition);
        }
        self.open.retain(|_, windows| !windows.is_empty());
    }

    /// Forgets every emitted bound; restores set them again (after an aborted micro-batch).
    pub(crate) fn forget_emitted(&mut self) {
        self.emitted_us.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_with(windows: &[(i32, i64, &[u8])]) -> WindowIndex {
        let mut index = WindowIndex::new(10);
        for &(partition, end, prefix) in windows {
            index
                .open
                .entry(end)
                .or_default()
                .insert((partition, prefix.to_vec()));
        }
        index
    }

    #[test]
    fn due_windows_are_the_unemitted_closed_ones_and_the_changed_emitted_ones() {
        let mut index = index_with(&[(0, 100, b"a"), (0, 200, b"b"), (1, 300, b"c")]);
        assert_eq!(
            index.due(150, &BTreeSet::new()),
            BTreeSet::from([b"a".to_vec()])
        );
        assert!(index.advance([0, 1], 150));
        assert!(!index.advance([0, 1], 150), "a bound only moves forward");
        assert!(index.due(150, &BTreeSet::new()).is_empty(), "emitted once");
        let changed = BTreeSet::from([b"a".to_vec()]);
        assert_eq!(index.due(150, &changed), changed, "a late change re-emits");
    }

    #[test]
    fn windows_expire_past_their_partitions_bound_plus_lateness() {
        let mut index = index_with(&[(0, 100, b"a"), (1, 100, b"b"), (0, 200, b"c")]);
        index.restore_emitted(0, Some(110));
        index.restore_emitted(1, Some(105));
        assert!(index.is_expired(0, 100));
        assert!(!index.is_expired(1, 100), "partition 1 emitted only to 105");
        assert_eq!(index.take_expired(), vec![(0, b"a".to_vec())]);
        assert!(index.take_expired().is_empty(), "taken once");
        index.revoke(1);
        assert_eq!(index.emitted(1), None);
        assert_eq!(index.open.values().map(BTreeSet::len).sum::<usize>(), 1);
    }
}
