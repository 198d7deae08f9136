//! The orders fixture of the speed-layer and serving tests: the shared orders job and order
//! generator ([`sluice_core::fixture`]), the shape of orders none of which is late, the
//! records keyed and partitioned by region, the records that move every partition's
//! watermark, and the ground truth a test compares the layers' answers with (the shared plan
//! over all events at once, as canonical JSON rows).

use std::borrow::Cow;

use serde_json::Value;
use sluice_core::fixture::{Order, OrderShape, OrdersJob, REGIONS};
use sluice_core::rows::to_json_lines;
use sluice_core::time::format_time;
use sluice_core::{Job, JsonDecoder, Pipeline};

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

/// How far an order's event time falls behind its place in the sequence at most: less than
/// the orders job's 5 s watermark delay, so no order is late.
pub const DISORDER_MS: i64 = 3_000;

/// Orders from `start_ms`, `spacing_ms` apart, each up to [`DISORDER_MS`] early (never before
/// `start_ms`), from all of [`REGIONS`], 80% of them completed; `order_id` is `id_prefix`
/// and the order's number.
pub fn on_time_shape(
    id_prefix: impl Into<Cow<'static, str>>,
    start_ms: i64,
    spacing_ms: i64,
) -> OrderShape {
    OrderShape {
        id_prefix: id_prefix.into(),
        start_ms,
        spacing_ms,
        disorder_ms: DISORDER_MS,
        regions: REGIONS.len(),
        completed_percent: 80,
        ..OrderShape::default()
    }
}

/// `orders` as records keyed by region and partitioned by it (the region's index in
/// [`REGIONS`] modulo `partitions`), so every view key lives in one partition.
pub fn by_region(orders: impl IntoIterator<Item = Order>, partitions: i32) -> Vec<Outgoing> {
    let partitions = partitions.max(1);
    orders
        .into_iter()
        .map(|order| {
            let partition = order.region_index() as i32 % partitions;
            let key = order.region.as_bytes().to_vec();
            (partition, Some(key), order.to_json())
        })
        .collect()
}

/// Orders and re-sent copies of some (`(arrival_ms, order)`, in any order) as they reach the
/// topic: sorted by arrival (stable, so an original stays before a copy arriving at the same
/// moment), keyed and partitioned by region ([`by_region`]: a copy lands with its original),
/// then [`watermark_pushers`] ten minutes past the last event time, so every row is decided.
/// Returns the records and the orders in the same order. Panics when an order would be
/// `late_behind_ms` or more behind its partition's newest event time: such a fixture would
/// test lateness, not duplicates.
pub fn arriving(
    mut timed: Vec<(i64, Order)>,
    partitions: i32,
    late_behind_ms: i64,
) -> (Vec<Outgoing>, Vec<Order>) {
    timed.sort_by_key(|(arrival, _)| *arrival);
    let sent: Vec<Order> = timed.into_iter().map(|(_, order)| order).collect();
    let mut events = by_region(sent.iter().cloned(), partitions);
    let mut newest: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    for ((partition, _, _), order) in events.iter().zip(&sent) {
        let max = newest.entry(*partition).or_insert(i64::MIN);
        *max = (*max).max(order.event_time);
        let behind = *max - order.event_time;
        assert!(
            behind < late_behind_ms,
            "the fixture made {} late: {behind} ms behind its partition",
            order.order_id
        );
    }
    let last = sent.iter().map(|o| o.event_time).max().unwrap_or_default();
    events.extend(watermark_pushers(partitions, last + 600_000));
    (events, sent)
}

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

// ---------------------------------------------------------------------------------------------
// Ground truth

/// Canonical JSON text of a value: object keys sorted, RFC 3339 strings as
/// [`format_time`] renders them, integral numbers as integers. Two answers with the same rows
/// have the same canonical text whichever layer or engine rendered them.
pub fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String((*k).clone()),
                        canonical(&map[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        Value::String(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) => Value::String(format_time(t.timestamp_micros())).to_string(),
            Err(_) => value.to_string(),
        },
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 1e15 {
                    (f as i64).to_string()
                } else {
                    format!("{f:?}")
                }
            }
        }
        _ => value.to_string(),
    }
}

/// JSON lines as sorted canonical rows.
pub fn canonical_lines(text: &str) -> Vec<String> {
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            canonical(
                &serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON row ({e}): {l}")),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The full recompute in-process: every event through `job`'s plan at once, finalized, as
/// sorted canonical rows. Panics when an event does not decode (the orders fixture's never do).
pub fn truth(job: &Job, events: &[Outgoing]) -> Vec<String> {
    let pipeline = Pipeline::compile(job, None).expect("the job compiles");
    let stage = pipeline.plan().aggregate().expect("an aggregating job");
    let payloads: Vec<&[u8]> = events.iter().map(|(_, _, v)| v.as_slice()).collect();
    let decoded = JsonDecoder::new(job).decode(&payloads).expect("decoding");
    assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
    let partial = stage
        .partial(&pipeline.filtered(&decoded.batch).expect("filtering"))
        .expect("partial states");
    let rows = stage.finalize(&[partial]).expect("finalizing");
    let text = String::from_utf8(to_json_lines(&[rows]).expect("JSON lines")).expect("UTF-8");
    canonical_lines(&text)
}
