//! [`OperatorState`] over the RocksDB store, for one partition and one micro-batch.
//!
//! Writes collect in an overlay that reads see (the trait's rule), and land at the end of the
//! step in one RocksDB write and as `<job>.state` records of the micro-batch's transaction: the
//! store stays a cache of that changelog, restored from it after a crash, a rebalance or an
//! aborted transaction, exactly as the window state is of `<job>.speed`.

use std::collections::BTreeMap;

use sluice_core::operator_state::{OperatorState, Space};

use crate::state::{OperatorWrite, StateStore};

/// A partition's operator state during one step.
pub(crate) struct StoreState<'s> {
    store: &'s StateStore,
    partition: i32,
    /// Tag ++ key → the value written this step (`None`: deleted).
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

fn tagged(space: Space, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(space.tag());
    out.extend_from_slice(key);
    out
}

impl<'s> StoreState<'s> {
    pub(crate) fn new(store: &'s StateStore, partition: i32) -> StoreState<'s> {
        StoreState {
            store,
            partition,
            overlay: BTreeMap::new(),
        }
    }

    /// Lands the step's writes in the store and returns them for `<job>.state`.
    pub(crate) fn finish(self) -> crate::error::Result<Vec<OperatorWrite>> {
        let writes: Vec<OperatorWrite> = self.overlay.into_iter().collect();
        self.store.operator_apply(self.partition, &writes)?;
        Ok(writes)
    }
}

fn core_error(e: crate::error::StreamError) -> sluice_core::Error {
    sluice_core::Error::OperatorState(format!("reading the operator state: {e}"))
}

impl OperatorState for StoreState<'_> {
    fn get(&self, space: Space, key: &[u8]) -> sluice_core::Result<Option<Vec<u8>>> {
        let key = tagged(space, key);
        if let Some(written) = self.overlay.get(&key) {
            return Ok(written.clone());
        }
        self.store
            .operator_get(self.partition, &key)
            .map_err(core_error)
    }

    fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert(tagged(space, &key), Some(value));
    }

    fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.overlay.insert(tagged(space, &key), None);
    }

    fn range(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
    ) -> sluice_core::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let (from, to) = (tagged(space, from), tagged(space, to));
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .store
            .operator_range(self.partition, &from, &to)
            .map_err(core_error)?
            .into_iter()
            .collect();
        for (key, value) in self.overlay.range(from..to) {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged
            .into_iter()
            .map(|(mut key, value)| {
                key.remove(0);
                (key, value)
            })
            .collect())
    }
}
