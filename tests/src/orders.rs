//! The orders fixture of the speed-layer and serving tests: the shared orders job
//! ([`sluice_core::fixture`]) around a query, and the records that move every partition's
//! watermark.

use sluice_core::fixture::OrdersJob;

use crate::kafka::Outgoing;

/// A job over the orders topic `topic` (5 s watermark delay, 30 s allowed lateness) running
/// `sql`, with view key `key` (a TOML array) and state buckets of `bucket`.
pub fn job_toml(name: &str, topic: &str, sql: &str, key: &str, bucket: &str) -> String {
    OrdersJob {
        name,
        topic,
        key,
        bucket,
        ..OrdersJob::default()
    }
    .toml(sql)
}

pub use sluice_core::fixture::REGION_PER_MINUTE_SQL;

/// One record per partition at `at_ms`: filtered out by every orders job (status `push`), but
/// it moves each partition's watermark past all earlier windows.
pub fn watermark_pushers(partitions: i32, at_ms: i64) -> Vec<Outgoing> {
    (0..partitions)
        .map(|p| {
            let value = format!(
                r#"{{"order_id":"push{p}","region":"eu","amount":0,"status":"push","event_time":{at_ms}}}"#
            );
            (p, None, value.into_bytes())
        })
        .collect()
}
