//! The storage a stateful plan stage keeps between micro-batches: an ordered byte map split into
//! key spaces, and nothing more.
//!
//! A stateful stage ([`crate::dedup::DedupStage`] today; the joins of docs/design/joins.md
//! next) is written once, here in `core`, against [`OperatorState`]. The speed layer implements
//! it over RocksDB with a changelog, the batch layer uses [`MemState`]; both drive the same stage
//! code, so neither re-implements which row is kept. Keys and values are opaque to the store:
//! the layouts belong to the stage that writes them, and a store never interprets them.
//!
//! Rules for an implementation:
//! - reads see every write made before them, in the same step too (a stage reads back what it
//!   has just written; the speed layer's store overlays its pending writes);
//! - [`OperatorState::range`] visits keys in ascending byte order;
//! - one state holds one task (one source partition); the caller keeps tasks apart.

use std::collections::BTreeMap;

use crate::error::Result;

/// What a key space holds: one layout of keys and values of a dedup stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpaceKind {
    /// Per dedup key, the (event time, row id) of the last row released.
    DedupSeen,
    /// (event time ‖ dedup key) of every [`SpaceKind::DedupSeen`] entry, to expire them in
    /// time order.
    DedupSeenByTime,
    /// Rows waiting for the watermark, keyed (event time ‖ row id).
    DedupHeld,
    /// A temporal join's table versions, keyed (join key ‖ valid_from ‖ row id); see
    /// [`crate::join::temporal`].
    JoinVersion,
    /// A temporal join's probe rows waiting for the table, keyed (event time ‖ row id).
    JoinWaiting,
}

/// The first tag of the join spaces: above every dedup stage's (at most 80 stages, tags up
/// to 243), one join per job.
const JOIN_TAGS: u8 = 250;

impl SpaceKind {
    /// The kinds of a dedup stage.
    const DEDUP: [SpaceKind; 3] = [
        SpaceKind::DedupSeen,
        SpaceKind::DedupSeenByTime,
        SpaceKind::DedupHeld,
    ];
    /// The kinds of the join.
    const JOIN: [SpaceKind; 2] = [SpaceKind::JoinVersion, SpaceKind::JoinWaiting];

    fn tag(self) -> u8 {
        match self {
            SpaceKind::DedupSeen => 1,
            SpaceKind::DedupSeenByTime => 2,
            SpaceKind::DedupHeld => 3,
            SpaceKind::JoinVersion => 0,
            SpaceKind::JoinWaiting => 1,
        }
    }
}

/// A key space: a kind of a stage's state. A job may have several dedup stages (the SQL's
/// and each `unique` check), numbered in pipeline order; each has spaces of its own. The tag
/// byte (`stage · 3 + kind` for dedup, `250 + kind` for the join) is part of what the speed
/// layer stores, so tags never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Space {
    pub stage: u8,
    pub kind: SpaceKind,
}

impl Space {
    pub fn new(stage: u8, kind: SpaceKind) -> Space {
        Space { stage, kind }
    }

    /// Every space of dedup stage `stage`.
    pub fn all(stage: u8) -> [Space; 3] {
        SpaceKind::DEDUP.map(|kind| Space { stage, kind })
    }

    /// The spaces of the job's join (its stage number is 0).
    pub fn join() -> [Space; 2] {
        SpaceKind::JOIN.map(|kind| Space { stage: 0, kind })
    }

    /// The stored tag of the space.
    pub fn tag(self) -> u8 {
        match self.kind {
            SpaceKind::JoinVersion | SpaceKind::JoinWaiting => JOIN_TAGS + self.kind.tag(),
            _ => self.stage.wrapping_mul(3).wrapping_add(self.kind.tag()),
        }
    }

    pub fn from_tag(tag: u8) -> Option<Space> {
        if tag >= JOIN_TAGS {
            return Space::join().into_iter().find(|s| s.tag() == tag);
        }
        let stage = tag.checked_sub(1)? / 3;
        Space::all(stage).into_iter().find(|s| s.tag() == tag)
    }
}

/// An ordered byte map in key spaces (see the module docs for the rules).
pub trait OperatorState {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>);
    fn delete(&mut self, space: Space, key: Vec<u8>);
    /// The entries of `space` with `from <= key < to`, ascending.
    fn range(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// The greatest entry of `space` with `from <= key < to` (the as-of lookup). The default
    /// reads the whole range; a store that can seek backwards should.
    fn last_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.range(space, from, to)?.pop())
    }
}

/// [`OperatorState`] in memory: the batch layer's, and the unit tests'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemState {
    entries: BTreeMap<(u8, Vec<u8>), Vec<u8>>,
}

impl MemState {
    pub fn new() -> MemState {
        MemState::default()
    }

    /// How many entries `space` holds.
    pub fn len(&self, space: Space) -> usize {
        self.entries
            .range((space.tag(), Vec::new())..)
            .take_while(|((tag, _), _)| *tag == space.tag())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, its space's tag before its key: the keys of the speed layer's store and
    /// `<job>.state` records, so a replay can seed them with what the batch layer computed.
    pub fn into_tagged(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.entries
            .into_iter()
            .map(|((tag, key), value)| {
                let mut tagged = Vec::with_capacity(1 + key.len());
                tagged.push(tag);
                tagged.extend_from_slice(&key);
                (tagged, value)
            })
            .collect()
    }
}

impl OperatorState for MemState {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.entries.get(&(space.tag(), key.to_vec())).cloned())
    }

    fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.entries.insert((space.tag(), key), value);
    }

    fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.entries.remove(&(space.tag(), key));
    }

    fn range(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .entries
            .range((space.tag(), from.to_vec())..(space.tag(), to.to_vec()))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_in(&self, space: Space, from: &[u8], to: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if from >= to {
            return Ok(None);
        }
        Ok(self
            .entries
            .range((space.tag(), from.to_vec())..(space.tag(), to.to_vec()))
            .next_back()
            .map(|((_, k), v)| (k.clone(), v.clone())))
    }
}

/// A stage's value that carries a key before a row: `len u32 LE ‖ key ‖ row`, with the length
/// `u32::MAX` for no key (a null join key, which matches nothing).
pub(crate) fn keyed_value(key: Option<&[u8]>, row_capacity: usize) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + key.map_or(0, <[u8]>::len) + row_capacity);
    match key {
        Some(key) => {
            value.extend_from_slice(&(key.len() as u32).to_le_bytes());
            value.extend_from_slice(key);
        }
        None => value.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    value
}

/// The key and the row of a [`keyed_value`]; `None` when it is malformed.
pub(crate) fn split_keyed(value: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let len: [u8; 4] = value.get(..4)?.try_into().ok()?;
    match u32::from_le_bytes(len) {
        u32::MAX => Some((None, &value[4..])),
        len => {
            let end = 4usize.checked_add(len as usize)?;
            Some((Some(value.get(4..end)?), &value[end..]))
        }
    }
}

/// An event time (µs) as 8 bytes whose byte order is the time order (big-endian, sign bit
/// flipped), for keys scanned in time order.
pub fn time_key(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

/// `rest` after the [`time_key`] of `micros`: a key scanned in time order.
pub fn time_prefixed(micros: i64, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + rest.len());
    key.extend_from_slice(&time_key(micros));
    key.extend_from_slice(rest);
    key
}

/// The event time of a key that starts with [`time_key`]; `None` when it is shorter.
pub fn time_of_key(key: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_as_times_and_round_trip() {
        let times = [
            i64::MIN,
            -5_000_000,
            -1,
            0,
            1,
            1_714_557_600_000_000,
            i64::MAX,
        ];
        for pair in times.windows(2) {
            assert!(time_key(pair[0]) < time_key(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(time_of_key(&time_key(t)), Some(t));
        }
        assert_eq!(time_of_key(&[1, 2, 3]), None);
    }

    #[test]
    fn spaces_are_apart_and_ranges_are_half_open() {
        let mut state = MemState::new();
        let (held_space, seen) = (
            Space::new(0, SpaceKind::DedupHeld),
            Space::new(0, SpaceKind::DedupSeen),
        );
        state.put(held_space, vec![1], vec![10]);
        state.put(held_space, vec![2], vec![20]);
        state.put(held_space, vec![3], vec![30]);
        state.put(seen, vec![2], vec![99]);
        state.put(Space::new(1, SpaceKind::DedupSeen), vec![2], vec![98]);
        let held = state.range(held_space, &[1], &[3]).expect("range");
        assert_eq!(held, vec![(vec![1], vec![10]), (vec![2], vec![20])]);
        assert_eq!(state.get(seen, &[2]).expect("get"), Some(vec![99]));
        assert_eq!(state.get(seen, &[1]).expect("get"), None);
        state.delete(held_space, vec![2]);
        assert_eq!(state.len(held_space), 2);
        assert_eq!(state.len(seen), 1, "stage 1's space is apart");
        assert!(
            state
                .range(held_space, &[3], &[3])
                .expect("range")
                .is_empty()
        );
        for stage in 0..80 {
            for space in Space::all(stage) {
                assert_eq!(Space::from_tag(space.tag()), Some(space));
                assert!(space.tag() < JOIN_TAGS);
            }
        }
        for space in Space::join() {
            assert_eq!(Space::from_tag(space.tag()), Some(space));
        }
        let version = Space::join()[0];
        state.put(version, vec![5, 1], vec![51]);
        state.put(version, vec![5, 2], vec![52]);
        state.put(version, vec![6, 0], vec![60]);
        let last = |from: &[u8], to: &[u8]| state.last_in(version, from, to).expect("last_in");
        assert_eq!(last(&[5], &[5, 3]), Some((vec![5, 2], vec![52])));
        assert_eq!(last(&[5], &[5, 2]), Some((vec![5, 1], vec![51])));
        assert_eq!(last(&[5], &[5, 1]), None);
        assert_eq!(last(&[6], &[5]), None);
        assert_eq!(state.len(version), 3);
    }
}
