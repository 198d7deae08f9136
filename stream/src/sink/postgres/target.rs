//! The PostgreSQL commit target: rows and the offsets they cover in one transaction, the
//! offsets in the seed 003 `ETLCheckpoint` table.
//!
//! The ownership check happens inside the transaction: a transaction-scoped advisory lock on
//! (group, topic) serialises the sinks that write it, then the group's checkpoint rows are
//! read; a partition whose offset is not where this sink resumed it has moved (another sink
//! took it over, or a commit whose COMMIT reply was lost did land) and its records are not
//! written; the other partitions' are. A retried commit is therefore idempotent.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::{IsolationLevel, Transaction};

use super::error::PgError;
use super::seed_tables::{read_checkpoints, write_checkpoints};
use super::{Connection, connection_error, unavailable_or_fatal};
use crate::sink::{Buffered, CommitOutcome, CommitTarget, SinkContext, SinkFailure};

/// What a target writes besides the offsets: result rows, dead letters.
pub(crate) trait PgRows {
    /// Called after every (re)connect, before the connection is used.
    async fn prepare(&self, client: &tokio_postgres::Client) -> Result<(), PgError>;

    /// Writes the rows of `batch`, but those of the partitions in `skip`, in `tx`;
    /// `Ok(Err(message))` for records that cannot be rows (a bug or a foreign producer: the
    /// sink stops with the message).
    async fn write(
        &self,
        tx: &Transaction<'_>,
        batch: &Buffered,
        skip: &BTreeMap<i32, Option<i64>>,
    ) -> Result<Result<u64, String>, PgError>;
}

pub(crate) struct PostgresTarget<R: PgRows> {
    pub name: String,
    pub job: String,
    pub runtime: tokio::runtime::Handle,
    pub connection: Connection,
    pub rows: R,
    /// `ETLCheckpoint.consumer_group` and `.topic` of this sink.
    pub group: String,
    pub topic: String,
    pub wants_headers: bool,
}

/// Rows written and the partitions that moved (not written).
type Written = (u64, BTreeMap<i32, Option<i64>>);

/// How long one call to PostgreSQL (a whole commit transaction) may take before the sink
/// treats the server as unavailable, drops the connection and retries.
const CALL_DEADLINE: Duration = Duration::from_secs(90);

impl<R: PgRows> PostgresTarget<R> {
    fn failure(&mut self, error: PgError) -> SinkFailure {
        unavailable_or_fatal(&self.job, &self.name, &mut self.connection, error)
    }
}

impl<R: PgRows> CommitTarget for PostgresTarget<R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants_headers(&self) -> bool {
        self.wants_headers
    }

    fn committed(
        &mut self,
        _ctx: &SinkContext<'_>,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, i64>, SinkFailure> {
        let runtime = self.runtime.clone();
        let read = runtime.block_on(async {
            let work = async {
                let client = self.connection.client(&self.rows).await?;
                read_checkpoints(&*client, &self.group, &self.topic, false).await
            };
            match tokio::time::timeout(CALL_DEADLINE, work).await {
                Ok(done) => done,
                Err(_) => Err(PgError::CallTimeout {
                    target: String::new(),
                    seconds: CALL_DEADLINE.as_secs(),
                }),
            }
        });
        match read {
            Ok(all) => Ok(all
                .into_iter()
                .filter(|(p, _)| partitions.contains(p))
                .collect()),
            Err(e) => Err(self.failure(e)),
        }
    }

    fn commit(
        &mut self,
        _ctx: &SinkContext<'_>,
        batch: &Buffered,
        expected: &BTreeMap<i32, Option<i64>>,
    ) -> Result<CommitOutcome, SinkFailure> {
        let runtime = self.runtime.clone();
        let PostgresTarget {
            ref mut connection,
            ref rows,
            ref group,
            ref topic,
            ..
        } = *self;
        let work = async {
            let client = connection.client(rows).await?;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::ReadCommitted)
                .start()
                .await
                .map_err(connection_error("opening a transaction"))?;
            // A frozen server or a lock held by a dead session must end in an error the
            // loop retries, never in a sink stuck forever.
            tx.batch_execute("SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '60s'")
                .await
                .map_err(connection_error("setting the transaction's timeouts"))?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&format!("sluice sink {group} {topic}")],
            )
            .await
            .map_err(connection_error("locking the sink's checkpoints"))?;
            // A fresh snapshot after the lock: what the previous holder committed is visible.
            let locked = read_checkpoints(&tx, group, topic, true).await?;
            let moved = moved(expected, &locked);
            let written = match rows.write(&tx, batch, &moved).await? {
                Ok(written) => written,
                Err(message) => return Ok(Err(message)),
            };
            let offsets: Vec<(i32, i64)> = batch
                .iter()
                .filter(|(p, _)| !moved.contains_key(*p))
                .filter_map(|(p, records)| records.last().map(|last| (*p, last.offset + 1)))
                .collect();
            write_checkpoints(&tx, group, topic, &offsets).await?;
            tx.commit()
                .await
                .map_err(connection_error("committing the rows and their offsets"))?;
            Ok::<_, PgError>(Ok((written, moved)))
        };
        let committed: Result<Result<Written, String>, PgError> = runtime.block_on(async {
            match tokio::time::timeout(CALL_DEADLINE, work).await {
                Ok(done) => done,
                Err(_) => Err(PgError::CallTimeout {
                    target: String::new(),
                    seconds: CALL_DEADLINE.as_secs(),
                }),
            }
        });
        match committed {
            Ok(Ok((rows, moved))) => Ok(CommitOutcome {
                rows: rows as usize,
                moved,
            }),
            Ok(Err(message)) => Err(SinkFailure::Fatal(crate::StreamError::Config {
                job: self.job.clone(),
                message: format!("sink `{}`: {message}", self.name),
            })),
            Err(e) => Err(self.failure(e)),
        }
    }
}

/// The partitions whose committed offset is not what the loop expected, with the current one.
pub(super) fn moved(
    expected: &BTreeMap<i32, Option<i64>>,
    current: &BTreeMap<i32, i64>,
) -> BTreeMap<i32, Option<i64>> {
    expected
        .iter()
        .filter_map(|(p, want)| {
            let now = current.get(p).copied();
            (now != *want).then_some((*p, now))
        })
        .collect()
}
