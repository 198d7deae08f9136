//! The PostgreSQL building blocks against the machine's real server
//! (`postgres://root@127.0.0.1:5432/test`): a mock would not catch a wrong COPY wire format, a
//! type PostgreSQL spells differently, or a constraint ON CONFLICT cannot infer. Every test
//! uses tables, groups and topics of its own, since other tests share the database.
//! `SLUICE_TEST_NO_POSTGRES=1` skips them on a machine without PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tokio_postgres::Client;

use super::connect::PgTarget;

mod connecting;
mod round_trip;
mod seed;
mod tables;

pub(super) const TEST_URL: &str = "postgres://root@127.0.0.1:5432/test";

pub(super) fn skipped() -> bool {
    let skip = std::env::var_os("SLUICE_TEST_NO_POSTGRES").is_some();
    if skip {
        eprintln!("skipped: SLUICE_TEST_NO_POSTGRES is set");
    }
    skip
}

pub(super) fn target() -> PgTarget {
    PgTarget::from_url(TEST_URL, None).expect("the test URL parses")
}

pub(super) async fn client() -> Option<Client> {
    if skipped() {
        return None;
    }
    let client = target().connect().await.unwrap_or_else(|error| {
        panic!("{error} (set SLUICE_TEST_NO_POSTGRES=1 to skip the PostgreSQL tests)")
    });
    client
        .batch_execute("SET TIME ZONE 'UTC'")
        .await
        .expect("setting the session time zone");
    Some(client)
}

/// A name no other test (or earlier run) uses: lowercase, so quoted and unquoted agree.
pub(super) fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{nanos:x}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs its statements on a connection of its own when dropped, so a failing test still
/// removes what it created. The lock timeout keeps a lock held by the failed test's own,
/// no longer driven, connection from hanging the cleanup.
pub(super) struct Cleanup(pub(super) Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let statements = std::mem::take(&mut self.0);
        if statements.is_empty() {
            return;
        }
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(async move {
                let client = target().connect().await.map_err(|e| e.to_string())?;
                client
                    .batch_execute("SET lock_timeout = '5s'")
                    .await
                    .map_err(|e| e.to_string())?;
                for statement in &statements {
                    client
                        .batch_execute(statement)
                        .await
                        .map_err(|e| format!("{statement}: {e}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("cleanup failed: {error}"),
            Err(_) => eprintln!("cleanup panicked"),
        }
    }
}

pub(super) fn drop_table(name: &str) -> String {
    format!("DROP TABLE IF EXISTS \"{name}\"")
}

pub(super) const T_2024_05_01_10H_S: i64 = 1_714_557_600;

pub(super) fn keyed_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new(
            "w",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("v", DataType::Int64, false),
    ]))
}
