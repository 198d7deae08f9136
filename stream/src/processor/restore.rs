//! Bringing a partition's state back from `<job>.speed`: a full replay into an emptied store,
//! or (after a clean stop) only the changelog newer than the store's checkpoint.
//!
//! Either way the changelog arrives in chunks, oldest first, so a restore holds one chunk in
//! memory whatever the changelog's size; the open windows' index is rebuilt by one streaming
//! pass over the store at the end.

use std::time::Instant;

use sluice_core::speed::{PLAN_KEY, PartitionWatermark, WATERMARK_KEY, is_reserved_key};

use super::Processor;
use crate::error::Result;
use crate::state::StateWrite;

/// One `<job>.speed` record as read back: key and value (`None` = tombstone).
pub(crate) type ChangelogRecord = (Vec<u8>, Option<Vec<u8>>);

/// Expired rows a restore retires in one write.
const RESTORE_DELETE_CHUNK: usize = 10_000;

/// A partition whose changelog is being replayed into the store.
pub(crate) struct Restoring {
    partition: i32,
    /// The newest watermark record seen so far.
    watermark: Option<PartitionWatermark>,
    /// The fingerprint in the newest plan record seen so far.
    plan: Option<String>,
    /// Resumed from a checkpoint of this plan (its changelog holds this plan's record, from
    /// before the checkpoint).
    from_checkpoint: bool,
}

impl Restoring {
    /// Resumes `partition` from a checkpoint: the store already reflects the changelog before
    /// the checkpoint's offset (with `watermark` as of then), so only newer records follow.
    pub(crate) fn resume(partition: i32, watermark: Option<PartitionWatermark>) -> Restoring {
        Restoring {
            partition,
            watermark,
            plan: None,
            from_checkpoint: true,
        }
    }
}

impl Processor {
    /// Starts restoring `partition` from its whole committed changelog: forgets what the
    /// store held of it.
    pub(crate) fn start_restore(&mut self, partition: i32) -> Result<Restoring> {
        self.store.drop_partition(partition)?;
        Ok(Restoring {
            partition,
            watermark: None,
            plan: None,
            from_checkpoint: false,
        })
    }

    /// Applies the next chunk of the changelog (`(key, value)`; `None` value = tombstone).
    pub(crate) fn restore_chunk(
        &mut self,
        restoring: &mut Restoring,
        chunk: Vec<ChangelogRecord>,
    ) -> Result<()> {
        let partition = restoring.partition;
        let mut writes = Vec::with_capacity(chunk.len());
        for (key, value) in chunk {
            if key == WATERMARK_KEY {
                restoring.watermark = value
                    .as_deref()
                    .map(PartitionWatermark::decode)
                    .transpose()?;
                continue;
            }
            if key == PLAN_KEY {
                restoring.plan = value.map(|v| String::from_utf8_lossy(&v).into_owned());
                continue;
            }
            if is_reserved_key(&key) {
                continue;
            }
            writes.push(match value {
                Some(value) => StateWrite::Put {
                    partition,
                    key,
                    value,
                },
                None => StateWrite::Delete { partition, key },
            });
        }
        self.store.apply(&writes)
    }

    /// The whole changelog has been applied: the partition resumes from its last committed
    /// watermark, and windows that had expired by then are dropped from the store again.
    pub(crate) fn finish_restore(&mut self, restoring: Restoring, now: Instant) -> Result<()> {
        let Restoring {
            partition,
            watermark,
            plan,
            from_checkpoint,
        } = restoring;
        let place = format!(
            "partition {partition} of {}",
            sluice_core::topics::Topics::for_job(&self.job).speed
        );
        self.job
            .check_plan(&place, plan.as_deref())
            .map_err(|mismatch| sluice_core::Error::Plan(Box::new(mismatch)))?;
        if plan.is_none() && !from_checkpoint {
            // A new changelog (or one from before plan records): say whose it is now.
            self.plan_pending.insert(partition);
        }
        // What the committed changelog says, never what an aborted batch consumed.
        match watermark.and_then(|w| w.source_next_offset) {
            Some(next) => self.next_offsets.insert(partition, next),
            None => self.next_offsets.remove(&partition),
        };
        match watermark.and_then(|w| w.purge_us) {
            Some(bound) => self.purge_us.insert(partition, bound),
            None => self.purge_us.remove(&partition),
        };
        self.watermarks.assign(partition, watermark, now);
        self.windows
            .restore_emitted(partition, watermark.and_then(|w| w.emitted_us));
        // The partition may hold retired rows the batch view already covers.
        self.tombstones.recheck();
        self.index_restored(partition)
    }

    /// Starts restoring `partition`'s operator state from its whole `<job>.state` changelog:
    /// forgets what the store held of it.
    pub(crate) fn start_operator_restore(&mut self, partition: i32) -> Result<()> {
        self.store.drop_operator_state(partition)
    }

    /// Applies the next chunk of `partition`'s `<job>.state` changelog.
    pub(crate) fn restore_operator_chunk(
        &mut self,
        partition: i32,
        chunk: Vec<ChangelogRecord>,
    ) -> Result<()> {
        self.store.operator_apply(partition, &chunk)
    }

    /// The whole changelog at once.
    #[cfg(test)]
    pub(crate) fn restore(
        &mut self,
        partition: i32,
        changelog: Vec<ChangelogRecord>,
        now: Instant,
    ) -> Result<()> {
        let mut restoring = self.start_restore(partition)?;
        self.restore_chunk(&mut restoring, changelog)?;
        self.finish_restore(restoring, now)
    }

    /// Tracks the restored windows that are still open and retires the expired ones (their
    /// changelog rows stay until the batch view covers them), streaming over the store so
    /// that memory holds only the open windows' index.
    fn index_restored(&mut self, partition: i32) -> Result<()> {
        let Some(codec) = &self.codec else {
            return Ok(());
        };
        // Without a group window no row ever expires and there is no end to index: scanning
        // (and decoding) every key of a 1M-key state would only find that out.
        if self
            .pipeline
            .plan()
            .aggregate()
            .is_none_or(|s| s.window().is_none())
        {
            return Ok(());
        }
        let (store, windows) = (&self.store, &mut self.windows);
        let mut expired = Vec::new();
        store.for_each(partition, b"", |key, _| {
            let (bucket, end) = codec.key_times(key)?;
            if end.is_some_and(|end| windows.is_expired(partition, end)) {
                expired.push(StateWrite::Retire {
                    partition,
                    bucket,
                    key: key.to_vec(),
                });
                if expired.len() >= RESTORE_DELETE_CHUNK {
                    store.apply(&expired)?;
                    expired.clear();
                }
                return Ok(());
            }
            windows.track(codec, partition, key)
        })?;
        store.apply(&expired)
    }
}
