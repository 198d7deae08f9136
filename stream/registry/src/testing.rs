//! A log in memory for the crate's tests: appending applies the record to every follower at
//! once, in one total order, as the topic would once each follower has read it. Records can be
//! slipped in ahead of the next append, to play another replica winning a race.

use std::sync::{Arc, Mutex, PoisonError};

use crate::api_error::ApiError;
use crate::replica::{Log, Replica, Shared};

/// A record: key, value (`None`: a tombstone).
pub(crate) type Entry = (Vec<u8>, Option<Vec<u8>>);

#[derive(Default)]
pub(crate) struct MemoryLog {
    followers: Mutex<Vec<Arc<Shared>>>,
    records: Mutex<Vec<Entry>>,
    /// Written just before the next append (another replica's records).
    ahead: Mutex<Vec<Entry>>,
    /// When set, appends fail as a broker that is down would.
    down: Mutex<bool>,
}

impl MemoryLog {
    pub fn new() -> Arc<MemoryLog> {
        Arc::new(MemoryLog::default())
    }

    /// A replica following this log (it has read everything appended so far).
    pub fn replica(self: &Arc<Self>) -> Replica {
        let shared = Arc::new(Shared::default());
        // Records, then followers: the order `push` takes them in, so no record is missed or
        // applied twice.
        let records = lock(&self.records);
        for (offset, (key, value)) in records.iter().enumerate() {
            shared.apply(offset as i64, key, value.as_deref());
        }
        shared.mark_caught_up();
        lock(&self.followers).push(shared.clone());
        drop(records);
        Replica::new(shared, Box::new(SharedLog(self.clone())))
    }

    pub fn records(&self) -> Vec<Entry> {
        lock(&self.records).clone()
    }

    /// Appends `entry` before the next write of any replica.
    pub fn slip_in(&self, entry: Entry) {
        lock(&self.ahead).push(entry);
    }

    pub fn set_down(&self, down: bool) {
        *lock(&self.down) = down;
    }

    /// Appends and applies under the records' lock: every follower sees one order.
    fn push(&self, key: &[u8], value: Option<&[u8]>) -> i64 {
        let mut records = lock(&self.records);
        records.push((key.to_vec(), value.map(<[u8]>::to_vec)));
        let offset = records.len() as i64 - 1;
        for follower in lock(&self.followers).iter() {
            follower.apply(offset, key, value);
        }
        offset
    }
}

/// The handle a replica appends through.
struct SharedLog(Arc<MemoryLog>);

impl Log for SharedLog {
    fn append(&self, key: &[u8], value: Option<&[u8]>) -> Result<i64, ApiError> {
        if *lock(&self.0.down) {
            return Err(ApiError::store(
                "writing to `_schemas`: Local: Message timed out",
            ));
        }
        let ahead: Vec<Entry> = std::mem::take(&mut *lock(&self.0.ahead));
        for (key, value) in ahead {
            self.0.push(&key, value.as_deref());
        }
        Ok(self.0.push(key, value))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
