//! Keyed window state in RocksDB: encoded partial states per (source partition, view key,
//! window, bucket).
//!
//! The store is a local cache of the committed `<job>.speed` changelog, never the source of
//! truth. As in Kafka Streams, a daemon that stops cleanly writes a [`Checkpoint`] into the
//! store: the plan fingerprint and, per partition, the changelog offset its state reflects and
//! the partition's watermark. The next start takes the checkpoint out again (a synced delete,
//! before any other write) and replays only the changelog after those offsets. Without a
//! checkpoint (a crash, a `kill -9`: state may hold a micro-batch that was never committed) or
//! with another plan's, the store is wiped and each partition restored from the whole
//! changelog, so uncommitted state never leaks into results.
//! Store keys are `partition (i32, big-endian) ++ speed key`, so one partition is one key range
//! and a view key's or window's rows are one prefix.
//!
//! A second key space holds the *retired* rows: windows that expired in the speed layer but
//! whose `<job>.speed` rows must stay until the batch view covers their bucket (the serving
//! layer answers from them until then). Their keys are `0xfe ++ partition ++ bucket ++ speed
//! key` with no value, in bucket order, so the rows a new batch cutoff covers are one range
//! scan, and they survive a clean restart with the rest of the state.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use rocksdb::{
    BlockBasedOptions, Cache, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use sluice_core::speed::PartitionWatermark;

use crate::error::{Result, StreamError};

/// Where the checkpoint lives: after every partition's key range (partitions are
/// non-negative, so their keys start with a byte ≤ 0x7f) and the retired rows (0xfe).
const CHECKPOINT_KEY: &[u8] = b"\xff\xff\xff\xff\xff\xffsluice.checkpoint";

/// What a cleanly stopped daemon's store reflects (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Checkpoint {
    /// [`sluice_core::Job::plan_fingerprint`] of the plan that wrote the state.
    pub fingerprint: String,
    pub partitions: BTreeMap<i32, PartitionCheckpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PartitionCheckpoint {
    /// The first `<job>.speed` offset the state does not reflect.
    pub changelog_offset: i64,
    /// The partition's watermark at the checkpoint (a changelog record after the offset
    /// replaces it).
    pub watermark: Option<PartitionWatermark>,
}

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
    /// The row's window expired: out of the open state, into the retired rows of `bucket`.
    Retire {
        partition: i32,
        bucket: i64,
        key: Vec<u8>,
    },
    /// The retired row was tombstoned in `<job>.speed`: forget it.
    Forget {
        partition: i32,
        bucket: i64,
        key: Vec<u8>,
    },
}

/// A retired row: its partition, bucket (µs) and speed key.
pub(crate) type RetiredRow = (i32, i64, Vec<u8>);

const RETIRED_SPACE: u8 = 0xfe;

/// A third key space holds the stateful plan stages' state ([`sluice_core::operator_state`]):
/// `0xfd ++ partition ++ space tag ++ key`. Its changelog is `<job>.state`, not `<job>.speed`
/// (the serving layer reads the latter and has no use for it).
const OPERATOR_SPACE: u8 = 0xfd;

fn operator_prefix(partition: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(6);
    out.push(OPERATOR_SPACE);
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

fn operator_key(partition: i32, key: &[u8]) -> Vec<u8> {
    let mut out = operator_prefix(partition);
    out.extend_from_slice(key);
    out
}

/// One change to a partition's operator state: the key (tag ++ stage key) and its new value
/// (`None`: deleted), as `<job>.state` records carry them.
pub(crate) type OperatorWrite = (Vec<u8>, Option<Vec<u8>>);

fn retired_prefix(partition: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(5);
    out.push(RETIRED_SPACE);
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

/// Buckets sort as signed numbers: the sign bit flipped, big-endian.
fn retired_key(partition: i32, bucket: i64, key: &[u8]) -> Vec<u8> {
    let mut out = retired_prefix(partition);
    out.extend_from_slice(&((bucket as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(key);
    out
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
    /// Opens the store at `path`. If it holds a checkpoint written under `fingerprint`, the
    /// state is kept and the checkpoint returned (and removed from the store, so a crash from
    /// now on means a full restore); otherwise the store is wiped.
    pub(crate) fn open(
        job: &str,
        path: &Path,
        fingerprint: &str,
    ) -> Result<(StateStore, Option<Checkpoint>)> {
        if path.exists() {
            match StateStore::open_at(job, path) {
                Ok(store) => {
                    if let Some(checkpoint) = store.take_checkpoint(fingerprint)? {
                        return Ok((store, Some(checkpoint)));
                    }
                }
                Err(e) => tracing::warn!(job, error = %e, "cannot open the state store; wiping it"),
            }
        }
        Ok((StateStore::open_fresh(job, path)?, None))
    }

    /// The checkpoint, if there is one of `fingerprint`'s plan, removed from the store.
    fn take_checkpoint(&self, fingerprint: &str) -> Result<Option<Checkpoint>> {
        let Some(bytes) = self.db.get(CHECKPOINT_KEY).map_err(self.error())? else {
            return Ok(None);
        };
        let checkpoint = match serde_json::from_slice::<Checkpoint>(&bytes) {
            Ok(c) if c.fingerprint == fingerprint => c,
            Ok(c) => {
                tracing::info!(job = %self.job, found = %c.fingerprint, expected = %fingerprint, "the state checkpoint is another plan's; restoring in full");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(job = %self.job, error = %e, "unreadable state checkpoint; restoring in full");
                return Ok(None);
            }
        };
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db
            .delete_opt(CHECKPOINT_KEY, &sync)
            .map_err(self.error())?;
        Ok(Some(checkpoint))
    }

    /// Records that the store reflects `checkpoint` (a synced write: it must survive the
    /// process). Written when the daemon stops cleanly, after its last commit.
    pub(crate) fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()> {
        let bytes = serde_json::to_vec(checkpoint).unwrap_or_default();
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db
            .put_opt(CHECKPOINT_KEY, bytes, &sync)
            .map_err(self.error())?;
        self.db.flush().map_err(self.error())
    }

    /// Opens an empty store at `path`, discarding whatever an earlier run left there.
    pub(crate) fn open_fresh(job: &str, path: &Path) -> Result<StateStore> {
        if path.exists() {
            DB::destroy(&Options::default(), path).map_err(|source| StreamError::State {
                job: job.to_string(),
                path: path.to_path_buf(),
                source,
            })?;
        }
        StateStore::open_at(job, path)
    }

    fn open_at(job: &str, path: &Path) -> Result<StateStore> {
        let error = |source| StreamError::State {
            job: job.to_string(),
            path: path.to_path_buf(),
            source,
        };
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

    /// Every `(key, value)` of `partition` whose key starts with one of `prefixes` (ascending,
    /// none a prefix of another), in key order. One iterator seeks from prefix to prefix, where
    /// an iterator per prefix pays RocksDB's iterator setup once per emitted key.
    pub(crate) fn scan_prefixes<'p>(
        &self,
        partition: i32,
        prefixes: impl IntoIterator<Item = &'p [u8]>,
        out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        let mut iterator = self.db.raw_iterator();
        for prefix in prefixes {
            let start = store_key(partition, prefix);
            iterator.seek(&start);
            while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
                if !key.starts_with(&start) {
                    break;
                }
                out.push((key[4..].to_vec(), value.to_vec()));
                iterator.next();
            }
            iterator.status().map_err(self.error())?;
        }
        Ok(())
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
                StateWrite::Retire {
                    partition,
                    bucket,
                    key,
                } => {
                    batch.delete(store_key(*partition, key));
                    batch.put(retired_key(*partition, *bucket, key), []);
                }
                StateWrite::Forget {
                    partition,
                    bucket,
                    key,
                } => batch.delete(retired_key(*partition, *bucket, key)),
            }
        }
        self.db.write(batch).map_err(self.error())
    }

    /// Up to `limit` retired rows of `partition` whose bucket is before `before` (µs), oldest
    /// bucket first.
    pub(crate) fn retired_before(
        &self,
        partition: i32,
        before: i64,
        limit: usize,
    ) -> Result<Vec<RetiredRow>> {
        let prefix = retired_prefix(partition);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (key, _) = item.map_err(self.error())?;
            if !key.starts_with(&prefix) || key.len() < prefix.len() + 8 || out.len() >= limit {
                break;
            }
            let mut bucket = [0u8; 8];
            bucket.copy_from_slice(&key[prefix.len()..prefix.len() + 8]);
            let bucket = (u64::from_be_bytes(bucket) ^ (1 << 63)) as i64;
            if bucket >= before {
                break;
            }
            out.push((partition, bucket, key[prefix.len() + 8..].to_vec()));
        }
        Ok(out)
    }

    /// Forgets everything of `partition` (revoked, or about to be restored).
    pub(crate) fn drop_partition(&self, partition: i32) -> Result<()> {
        let mut batch = WriteBatch::default();
        let from = partition.to_be_bytes().to_vec();
        // Partitions are non-negative: their keys all start below 0x80, the other spaces above.
        let to = match partition.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => vec![0x80],
        };
        batch.delete_range(from, to);
        let retired = retired_prefix(partition);
        let retired_end = match partition.checked_add(1) {
            Some(next) => retired_prefix(next),
            None => vec![RETIRED_SPACE, 0xff, 0xff, 0xff, 0xff, 0xff],
        };
        batch.delete_range(retired, retired_end);
        self.db.write(batch).map_err(self.error())?;
        self.drop_operator_state(partition)
    }

    /// Forgets `partition`'s operator state (about to be restored from `<job>.state`).
    pub(crate) fn drop_operator_state(&self, partition: i32) -> Result<()> {
        let mut batch = WriteBatch::default();
        let end = match partition.checked_add(1) {
            Some(next) => operator_prefix(next),
            None => vec![OPERATOR_SPACE, 0xff, 0xff, 0xff, 0xff, 0xff],
        };
        batch.delete_range(operator_prefix(partition), end);
        self.db.write(batch).map_err(self.error())
    }

    /// The operator-state value of `key` (tag ++ stage key) in `partition`.
    pub(crate) fn operator_get(&self, partition: i32, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get(operator_key(partition, key))
            .map_err(self.error())
    }

    /// The operator-state entries of `partition` with `from <= key < to` (tag ++ stage key),
    /// ascending.
    pub(crate) fn operator_range(
        &self,
        partition: i32,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = operator_key(partition, from);
        let end = operator_key(partition, to);
        let prefix = operator_prefix(partition).len();
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item.map_err(self.error())?;
            if key.as_ref() >= end.as_slice() {
                break;
            }
            out.push((key[prefix..].to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    /// Applies operator-state changes of `partition` in one write.
    pub(crate) fn operator_apply(&self, partition: i32, writes: &[OperatorWrite]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.put(operator_key(partition, key), value),
                None => batch.delete(operator_key(partition, key)),
            }
        }
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

    #[test]
    fn retired_rows_leave_the_open_state_and_come_back_in_bucket_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_fresh("t", &dir.path().join("s")).unwrap();
        let put = |key: &[u8]| StateWrite::Put {
            partition: 1,
            key: key.to_vec(),
            value: b"v".to_vec(),
        };
        store.apply(&[put(b"a"), put(b"b"), put(b"c")]).unwrap();
        let retire = |bucket, key: &[u8]| StateWrite::Retire {
            partition: 1,
            bucket,
            key: key.to_vec(),
        };
        store
            .apply(&[retire(7_200, b"a"), retire(-3_600, b"b"), retire(0, b"c")])
            .unwrap();
        assert!(
            store.scan(1, b"").unwrap().is_empty(),
            "no longer open state"
        );
        let row = |bucket, key: &[u8]| (1, bucket, key.to_vec());
        assert_eq!(
            store.retired_before(1, 7_200, 10).unwrap(),
            vec![row(-3_600, b"b"), row(0, b"c")]
        );
        assert_eq!(store.retired_before(1, 7_200, 1).unwrap().len(), 1);
        assert!(store.retired_before(0, i64::MAX, 10).unwrap().is_empty());
        store
            .apply(&[StateWrite::Forget {
                partition: 1,
                bucket: -3_600,
                key: b"b".to_vec(),
            }])
            .unwrap();
        assert_eq!(
            store.retired_before(1, i64::MAX, 10).unwrap(),
            vec![row(0, b"c"), row(7_200, b"a")]
        );
        store.drop_partition(1).unwrap();
        assert!(store.retired_before(1, i64::MAX, 10).unwrap().is_empty());
    }

    #[test]
    fn a_checkpoint_keeps_the_state_for_one_start_of_the_same_plan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let put = |partition| StateWrite::Put {
            partition,
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        let checkpoint = Checkpoint {
            fingerprint: "plan-a".to_string(),
            partitions: BTreeMap::from([(
                3,
                PartitionCheckpoint {
                    changelog_offset: 42,
                    watermark: None,
                },
            )]),
        };
        let (store, found) = StateStore::open("t", &path, "plan-a").unwrap();
        assert_eq!(found, None, "a new store has no checkpoint");
        store.apply(&[put(3), put(i32::MAX)]).unwrap();
        store.drop_partition(i32::MAX).unwrap();
        store.write_checkpoint(&checkpoint).unwrap();
        store.drop_partition(i32::MAX).unwrap();
        drop(store);

        let (store, found) = StateStore::open("t", &path, "plan-a").unwrap();
        assert_eq!(found, Some(checkpoint.clone()));
        assert_eq!(store.scan(3, b"").unwrap().len(), 1, "state kept");
        drop(store);
        // The checkpoint was taken out: a start after a crash restores in full.
        let (store, found) = StateStore::open("t", &path, "plan-a").unwrap();
        assert_eq!(found, None);
        assert!(store.scan(3, b"").unwrap().is_empty(), "state wiped");
        store.apply(&[put(3)]).unwrap();
        store.write_checkpoint(&checkpoint).unwrap();
        drop(store);
        // Another plan's checkpoint is not used.
        let (store, found) = StateStore::open("t", &path, "plan-b").unwrap();
        assert_eq!(found, None);
        assert!(store.scan(3, b"").unwrap().is_empty());
    }
}
