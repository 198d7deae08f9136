//! Where each part of a partial row sits, and which layers a merged row came from.
//!
//! A partial batch (see [`crate::aggregate`]) is `[__key_0.., __window_start, __window_end,
//! __bucket, __state_0_0..]`. Every layer addresses those columns: the aggregate stage merges
//! them, the speed layer encodes the first part as a Kafka key and scans windows by key prefix,
//! the serving layer filters buckets by the cutoff. They all ask a [`PartialLayout`] rather than
//! counting offsets, so a new column (a join side, a dedup marker) is one change here.

use std::ops::{Range, RangeFrom};

use arrow::array::{AsArray, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::TimestampMicrosecondType;
use serde::Serialize;

/// The column positions of an aggregate stage's partial batches.
///
/// Invariant: the key columns come first, then window start, window end and bucket, then the
/// state columns; the speed key is everything before the states, in that order, so that a
/// view key's windows and a window's buckets are byte prefixes of its row keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialLayout {
    keys: usize,
}

/// How much of a row key a prefix covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPrefix {
    /// The view key columns only.
    ViewKey,
    /// The view key columns and the window bounds.
    Window,
}

impl PartialLayout {
    pub(crate) fn new(keys: usize) -> PartialLayout {
        PartialLayout { keys }
    }

    /// The GROUP BY key columns (the view key, without the window).
    pub fn keys(&self) -> Range<usize> {
        0..self.keys
    }

    pub fn key_count(&self) -> usize {
        self.keys
    }

    pub fn window_start(&self) -> usize {
        self.keys
    }

    pub fn window_end(&self) -> usize {
        self.keys + 1
    }

    pub fn bucket(&self) -> usize {
        self.keys + 2
    }

    /// What identifies a finalized row: the keys and the window bounds.
    pub fn group(&self) -> Range<usize> {
        0..self.keys + 2
    }

    /// What identifies a partial row, and what the speed layer's record key encodes.
    pub fn row_key(&self) -> Range<usize> {
        0..self.keys + 3
    }

    /// The columns a key prefix of the row key covers.
    pub fn prefix(&self, prefix: KeyPrefix) -> Range<usize> {
        match prefix {
            KeyPrefix::ViewKey => self.keys(),
            KeyPrefix::Window => self.group(),
        }
    }

    /// The aggregates' partial-state columns.
    pub fn states(&self) -> RangeFrom<usize> {
        self.keys + 3..
    }

    pub fn first_state(&self) -> usize {
        self.keys + 3
    }

    /// A partial batch's bucket column (µs, never null).
    pub fn buckets<'b>(&self, partial: &'b RecordBatch) -> &'b TimestampMicrosecondArray {
        partial
            .column(self.bucket())
            .as_primitive::<TimestampMicrosecondType>()
    }

    /// A partial batch's window ends (µs; null for a job without a group window).
    pub fn window_ends<'b>(&self, partial: &'b RecordBatch) -> &'b TimestampMicrosecondArray {
        partial
            .column(self.window_end())
            .as_primitive::<TimestampMicrosecondType>()
    }

    /// A partial batch's window starts (µs; null for a job without a group window).
    pub fn window_starts<'b>(&self, partial: &'b RecordBatch) -> &'b TimestampMicrosecondArray {
        partial
            .column(self.window_start())
            .as_primitive::<TimestampMicrosecondType>()
    }
}

/// The layers whose partial states make up a merged row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Only the batch view (history below the cutoff).
    Batch,
    /// Only the speed view.
    Speed,
    /// Both: a window the cutoff splits, or a late record's bucket the batch view already had.
    Merged,
}

impl Origin {
    /// The origin of a row given which layers contributed to it; `None` when neither did.
    pub fn of(batch: bool, speed: bool) -> Option<Origin> {
        match (batch, speed) {
            (true, true) => Some(Origin::Merged),
            (true, false) => Some(Origin::Batch),
            (false, true) => Some(Origin::Speed),
            (false, false) => None,
        }
    }

    /// Adds a layer's contribution to a row's origin so far.
    pub fn with(self, other: Origin) -> Origin {
        if self == other { self } else { Origin::Merged }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Batch => "batch",
            Origin::Speed => "speed",
            Origin::Merged => "merged",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_key_is_keys_then_window_then_bucket_and_states_follow() {
        let layout = PartialLayout::new(2);
        assert_eq!(layout.keys(), 0..2);
        assert_eq!(
            (layout.window_start(), layout.window_end(), layout.bucket()),
            (2, 3, 4)
        );
        assert_eq!(layout.row_key(), 0..5);
        assert_eq!(layout.prefix(KeyPrefix::ViewKey), 0..2);
        assert_eq!(layout.prefix(KeyPrefix::Window), 0..4);
        assert_eq!(layout.states(), 5..);
    }

    #[test]
    fn origins_combine_to_merged_only_across_layers() {
        assert_eq!(Origin::Batch.with(Origin::Batch), Origin::Batch);
        assert_eq!(Origin::Speed.with(Origin::Batch), Origin::Merged);
        assert_eq!(Origin::of(false, false), None);
        assert_eq!(Origin::of(true, true), Some(Origin::Merged));
    }
}
