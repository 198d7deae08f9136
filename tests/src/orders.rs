//! The orders fixture shared by the speed-layer and serving tests: the job file around a query,
//! and the records that move every partition's watermark.

use crate::kafka::Outgoing;

/// A job over the orders topic `topic` (5 s watermark delay, 30 s allowed lateness) running
/// `sql`, with view key `key` (a TOML array) and state buckets of `bucket`.
pub fn job_toml(name: &str, topic: &str, sql: &str, key: &str, bucket: &str) -> String {
    format!(
        r#"
name = "{name}"
[source]
topic = "{topic}"
table = "orders"
event_time = "event_time"
watermark_delay = "5s"
allowed_lateness = "30s"
fields = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "region", type = "string" }},
  {{ name = "amount", type = "float64" }},
  {{ name = "status", type = "string" }},
  {{ name = "event_time", type = "timestamp" }},
]
[transform]
sql = """
{sql}
"""
[view]
key = {key}
bucket = "{bucket}"
"#
    )
}

/// Completed orders per region and one-minute tumbling window.
pub const REGION_PER_MINUTE_SQL: &str =
    "SELECT region, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start,
  TUMBLE_END(event_time, INTERVAL '1' MINUTE) AS window_end,
  COUNT(*) AS total_orders, SUM(amount) AS total_revenue, AVG(amount) AS avg_order_value
FROM orders WHERE status = 'completed'
GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)";

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
