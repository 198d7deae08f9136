//! Keyed window state in RocksDB: encoded partial states per (source partition, view key,
//! window, bucket).
//!
//! The store is a local cache of the committed `<job>.speed` changelog, never the source of
//! truth: it is wiped when the daemon starts and each assigned partition is restored from the
//! changelog, so state a crashed daemon wrote but never committed cannot leak into results.
//! Store keys are `partition (i32, big-endian) ++ speed key`, so one partition is one key range
//! and a view key's or window's rows are one prefix.

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, DB, Direction, IteratorMode, Options, WriteBatch};

use crate::error::{Result, StreamError};

/// One change to apply to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateWrite {
    Put {
        partition: i32,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        partition: i32,
        key: Vec<u8>,
    },
}

pub(crate) struct StateStore {
    job: String,
    path: PathBuf,
    db: DB,
}

/// RocksDB's memtables: this many of this size at most, before they are flushed to disk.
const WRITE_BUFFER_BYTES: usize = 16 << 20;
const WRITE_BUFFERS: i32 = 2;
/// Data, index and filter blocks read from disk share this cache.
const BLOCK_CACHE_BYTES: usize = 16 << 20;
/// What the store holds in memory at most, whatever the state's size (the rest is on disk).
pub(crate) const STATE_MEMORY_BYTES: u64 =
    (WRITE_BUFFER_BYTES as u64) * (WRITE_BUFFERS as u64) + BLOCK_CACHE_BYTES as u64;

fn store_key(partition: i32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(key);
    out
}

impl StateStore {
    /// Opens an empty store at `path`, discarding whatever an earlier run left there.
    pub(crate) fn open_fresh(job: &str, path: &Path) -> Result<StateStore> {
        let error = |source| StreamError::State {
            job: job.to_string(),
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            DB::destroy(&Options::default(), path).map_err(error)?;
        }
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.set_write_buffer_size(WRITE_BUFFER_BYTES);
        options.set_max_write_buffer_number(WRITE_BUFFERS);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
        table.set_cache_index_and_filter_blocks(true);
        options.set_block_based_table_factory(&table);
        let db = DB::open(&options, path).map_err(error)?;
        Ok(StateStore {
            job: job.to_string(),
            path: path.to_path_buf(),
            db,
        })
    }

    fn error(&self) -> impl Fn(rocksdb::Error) -> StreamError + '_ {
        move |source| StreamError::State {
            job: self.job.clone(),
            path: self.path.clone(),
            source,
        }
    }

    /// The values of `keys` in `partition` (None where absent).
    pub(crate) fn get_many(
        &self,
        partition: i32,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.db
            .multi_get(keys.iter().map(|k| store_key(partition, k)))
            .into_iter()
            .map(|r| r.map_err(self.error()))
            .collect()
    }

    /// Every `(key, value)` of `partition` whose key starts with `prefix`, in key order.
    pub(crate) fn scan(&self, partition: i32, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.for_each(partition, prefix, |key, value| {
            out.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `visit` with every `(key, value)` of `partition` whose key starts with `prefix`, in
    /// key order, without collecting them (a partition's state may be larger than memory).
    pub(crate) fn for_each(
        &self,
        partition: i32,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let start = store_key(partition, prefix);
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item.map_err(self.error())?;
            if !key.starts_with(&start) {
                break;
            }
            visit(&key[4..], &value)?;
        }
        Ok(())
    }

    pub(crate) fn apply(&self, writes: &[StateWrite]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for write in writes {
            match write {
                StateWrite::Put {
                    partition,
                    key,
                    value,
                } => batch.put(store_key(*partition, key), value),
                StateWrite::Delete { partition, key } => batch.delete(store_key(*partition, key)),
            }
        }
        self.db.write(batch).map_err(self.error())
    }

    /// Forgets everything of `partition` (revoked, or about to be restored).
    pub(crate) fn drop_partition(&self, partition: i32) -> Result<()> {
        let mut batch = WriteBatch::default();
        let from = partition.to_be_bytes().to_vec();
        let to = match partition.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => vec![0xff; 5],
        };
        batch.delete_range(from, to);
        self.db.write(batch).map_err(self.error())
    }

    /// RocksDB's estimate of the number of live keys.
    pub(crate) fn estimated_keys(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_separate_ranges_and_prefix_scans_stop_at_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_fresh("t", &dir.path().join("s")).unwrap();
        let put = |partition, key: &[u8], value: &[u8]| StateWrite::Put {
            partition,
            key: key.to_vec(),
            value: value.to_vec(),
        };
        store
            .apply(&[
                put(0, b"ab1", b"x"),
                put(0, b"ab2", b"y"),
                put(0, b"ac", b"z"),
                put(1, b"ab1", b"w"),
            ])
            .unwrap();
        let scanned = store.scan(0, b"ab").unwrap();
        assert_eq!(
            scanned
                .iter()
                .map(|(k, _)| k.as_slice())
                .collect::<Vec<_>>(),
            [b"ab1", b"ab2"]
        );
        assert_eq!(
            store
                .get_many(1, &[b"ab1".to_vec(), b"ab2".to_vec()])
                .unwrap(),
            vec![Some(b"w".to_vec()), None]
        );
        store.drop_partition(0).unwrap();
        assert!(store.scan(0, b"").unwrap().is_empty());
        assert_eq!(store.scan(1, b"").unwrap().len(), 1);
        store
            .apply(&[StateWrite::Delete {
                partition: 1,
                key: b"ab1".to_vec(),
            }])
            .unwrap();
        assert!(store.scan(1, b"").unwrap().is_empty());
        drop(store);
        let reopened = StateStore::open_fresh("t", &dir.path().join("s")).unwrap();
        assert!(
            reopened.scan(0, b"").unwrap().is_empty(),
            "a fresh open forgets the cache"
        );
    }
}
