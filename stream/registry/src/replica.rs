//! One replica of the registry: the state its follower applies from the log, and the writes
//! that go through the log. A write is never applied locally first: the replica appends the
//! record, waits until its own follower has applied the log up to that record's offset, and
//! answers from the applied state. So an answer is what every replica will also come to hold,
//! and a write another replica won first is seen as lost and done again ("first in the log
//! wins", see [`crate::state`]).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::api_error::ApiError;
use crate::compat::Compatibility;
use crate::records::{SchemaValue, config_key, config_value, decode, schema_key, schema_value};
use crate::schema::ParsedSchema;
use crate::state::{Outcome, Plan, State, Version, VersionRef};

/// How many times a registration is tried when other writers keep winning the race.
const MAX_ATTEMPTS: usize = 10;
/// How long a replica may take to read back its own write.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where writes go: the schemas topic (or, in tests, a log in memory that applies to its
/// followers as it appends).
pub(crate) trait Log: Send + Sync {
    /// Appends one record (`value: None` is a tombstone) and returns its offset once the log
    /// has it durably. Errors are 50001s.
    fn append(&self, key: &[u8], value: Option<&[u8]>) -> Result<i64, ApiError>;
}

/// The state and how far into the log it is.
#[derive(Debug, Default)]
pub(crate) struct Replicated {
    pub state: State,
    /// The offset after the last record applied.
    pub next_offset: i64,
    /// Whether the follower has read the log to the end it had when the replica started.
    pub caught_up: bool,
}

/// What the follower and the request handlers share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    inner: Mutex<Replicated>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Replicated> {
        // A panic while holding the lock left the state as it was before the record (apply
        // mutates only after its checks): keep serving it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies the record at `offset`: decoded and parsed outside the lock, applied inside.
    pub fn apply(&self, offset: i64, key: &[u8], value: Option<&[u8]>) {
        let decoded = decode(key, value);
        let outcome = {
            let mut inner = self.lock();
            let outcome = decoded.map(|change| inner.state.apply(change));
            inner.next_offset = inner.next_offset.max(offset + 1);
            outcome
        };
        self.changed.notify_all();
        match outcome {
            Ok(Outcome::Applied | Outcome::Skipped) => {}
            Ok(Outcome::Ignored(reason)) => {
                tracing::warn!(offset, %reason, "ignored a record: the first in the log wins");
            }
            Err(reason) => tracing::warn!(offset, %reason, "skipped a record of the schemas topic"),
        }
    }

    pub fn mark_caught_up(&self) {
        let mut inner = self.lock();
        if !inner.caught_up {
            inner.caught_up = true;
            drop(inner);
            self.changed.notify_all();
        }
    }

    /// Waits until the follower has caught up; `false` after `timeout`.
    pub fn wait_caught_up(&self, timeout: Duration) -> bool {
        let inner = self.lock();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |inner| !inner.caught_up)
            .unwrap_or_else(PoisonError::into_inner);
        inner.caught_up
    }

    /// The state once the record at `offset` is applied (50002 after `timeout`).
    pub fn wait_applied(
        &self,
        offset: i64,
        timeout: Duration,
    ) -> Result<MutexGuard<'_, Replicated>, ApiError> {
        let inner = self.lock();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |inner| inner.next_offset <= offset)
            .unwrap_or_else(PoisonError::into_inner);
        if inner.next_offset <= offset {
            return Err(ApiError::timeout(format!(
                "the change was written at offset {offset}, but this replica has read the log only up to offset {} after {timeout:?}",
                inner.next_offset
            )));
        }
        Ok(inner)
    }

    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.lock().state)
    }

    pub fn next_offset(&self) -> i64 {
        self.lock().next_offset
    }
}

pub(crate) struct Replica {
    shared: Arc<Shared>,
    log: Box<dyn Log>,
    /// One write of this replica at a time: its writes never race each other, only other
    /// replicas' writes.
    writes: Mutex<()>,
}

impl Replica {
    pub fn new(shared: Arc<Shared>, log: Box<dyn Log>) -> Replica {
        Replica {
            shared,
            log,
            writes: Mutex::new(()),
        }
    }

    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        self.shared.read(read)
    }

    fn turn(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one record and returns the state once it is applied.
    fn write(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<MutexGuard<'_, Replicated>, ApiError> {
        let offset = self.log.append(key, value)?;
        self.shared.wait_applied(offset, APPLY_TIMEOUT)
    }

    /// Registers `schema` under `subject` and returns its id.
    pub fn register(&self, subject: &str, schema: &ParsedSchema) -> Result<u32, ApiError> {
        let _turn = self.turn();
        for attempt in 1..=MAX_ATTEMPTS {
            let (version, id) = match self.read(|state| state.plan_register(subject, schema))? {
                Plan::Existing(id) => return Ok(id),
                Plan::Write { version, id } => (version, id),
            };
            let value = SchemaValue {
                subject: subject.to_string(),
                version,
                id,
                schema: schema.text.clone(),
                deleted: false,
                schema_type: None,
            };
            let (held, ours) = {
                let applied =
                    self.write(&schema_key(subject, version), Some(&schema_value(&value)))?;
                (
                    applied.state.version_of(subject, version),
                    applied.state.holds(id, &schema.canonical),
                )
            };
            match held {
                // The version holds the id, and the id this schema: the record won (or an
                // identical one did).
                Some(held) if held.id == id && ours => return Ok(id),
                Some(winner) => {
                    tracing::info!(
                        subject,
                        version,
                        attempt,
                        winner = winner.id,
                        "another writer took the version first; trying the next one"
                    );
                    self.repair(subject, version, winner)?;
                }
                None => {
                    tracing::info!(
                        subject,
                        version,
                        id,
                        attempt,
                        "another writer took the id first; trying the next one"
                    );
                }
            }
        }
        Err(ApiError::store(format!(
            "gave up registering under `{subject}` after {MAX_ATTEMPTS} attempts: other writers kept taking the version or id first"
        )))
    }

    /// Writes the winner of `version` of `subject` again after a lost race: the lost record
    /// has the same key, and a compacted topic keeps only a key's last record, so without this
    /// the loser would be all that is left of the version once the log is compacted.
    fn repair(&self, subject: &str, version: i32, winner: Version) -> Result<(), ApiError> {
        let Some(value) = self.read(|state| {
            state.schema(winner.id).map(|stored| SchemaValue {
                subject: subject.to_string(),
                version,
                id: winner.id,
                schema: stored.text.clone(),
                deleted: winner.deleted,
                schema_type: stored.schema_type.clone(),
            })
        }) else {
            return Ok(());
        };
        self.log
            .append(&schema_key(subject, version), Some(&schema_value(&value)))?;
        Ok(())
    }

    /// Soft-deletes one version; returns its number.
    pub fn delete_version(&self, subject: &str, version: VersionRef) -> Result<i32, ApiError> {
        let _turn = self.turn();
        let (number, found) = self.read(|state| state.version(subject, version, true))?;
        let (number, found) = match version {
            // `latest` is the latest live version.
            VersionRef::Latest => self.read(|state| state.version(subject, version, false))?,
            VersionRef::Number(_) if found.deleted => {
                return Err(ApiError::soft_deleted(subject, number));
            }
            VersionRef::Number(_) => (number, found),
        };
        let value = self.deleted_value(subject, number, found)?;
        drop(self.write(&schema_key(subject, number), Some(&schema_value(&value)))?);
        Ok(number)
    }

    /// Soft-deletes every live version of `subject`; returns their numbers.
    pub fn delete_subject(&self, subject: &str) -> Result<Vec<i32>, ApiError> {
        let _turn = self.turn();
        let live = self.read(|state| state.versions(subject, false))?;
        let mut last = None;
        for (number, found) in &live {
            let value = self.deleted_value(subject, *number, *found)?;
            last = Some(
                self.log
                    .append(&schema_key(subject, *number), Some(&schema_value(&value)))?,
            );
        }
        if let Some(offset) = last {
            drop(self.shared.wait_applied(offset, APPLY_TIMEOUT)?);
        }
        Ok(live.into_iter().map(|(number, _)| number).collect())
    }

    fn deleted_value(
        &self,
        subject: &str,
        version: i32,
        found: Version,
    ) -> Result<SchemaValue, ApiError> {
        self.read(|state| {
            state.schema(found.id).map(|stored| SchemaValue {
                subject: subject.to_string(),
                version,
                id: found.id,
                schema: stored.text.clone(),
                deleted: true,
                schema_type: stored.schema_type.clone(),
            })
        })
        .ok_or_else(|| {
            ApiError::internal(format!(
                "version {version} of `{subject}` names an unknown id {}",
                found.id
            ))
        })
    }

    /// Sets the level of `subject`, or the global one.
    pub fn set_level(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<Compatibility, ApiError> {
        let _turn = self.turn();
        drop(self.write(&config_key(subject), Some(&config_value(level)))?);
        Ok(level)
    }

    /// Removes the level of `subject` (40408 when it has none), or resets the global one;
    /// returns the level it had.
    pub fn delete_level(&self, subject: Option<&str>) -> Result<Compatibility, ApiError> {
        let _turn = self.turn();
        let old = match subject {
            Some(subject) => self
                .read(|state| state.subject_level(subject))
                .ok_or_else(|| ApiError::no_subject_level(subject))?,
            None => self.read(State::global_level),
        };
        drop(self.write(&config_key(subject), None)?);
        Ok(old)
    }
}

#[cfg(test)]
mod tests;
