//! Seed 000's order events and an orders job around any query: the one fixture the unit
//! tests of every layer, the end-to-end tests, the benches and `sluice demo` share, so they
//! agree on field names, types and value shapes.
//!
//! Amounts are multiples of 0.25, exact in binary floating point, so a SUM does not depend on
//! the order the layers add values in: the batch and speed layers' answers compare exactly.

use std::borrow::Cow;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::spec::Job;

/// 2024-05-01T10:00:00Z, a bucket boundary of every bucket size up to a day's divisors.
pub const T0_MS: i64 = 1_714_557_600_000;

/// The regions orders come from; a generator uses the first [`OrderShape::regions`].
pub const REGIONS: [&str; 6] = ["eu", "us", "apac", "latam", "mea", "anz"];

/// The orders fields as a job file's `fields` array lists them (seed 000's order event).
pub const ORDER_FIELDS: &str = r#"  { name = "order_id", type = "string", nullable = false },
  { name = "customer_id", type = "string" },
  { name = "region", type = "string" },
  { name = "amount", type = "float64" },
  { name = "status", type = "string" },
  { name = "event_time", type = "timestamp" },
"#;

/// The knobs of an orders job; [`Default`] is a test job over topic `orders`.
#[derive(Debug, Clone)]
pub struct OrdersJob<'a> {
    pub name: &'a str,
    pub topic: &'a str,
    pub watermark_delay: &'a str,
    pub allowed_lateness: &'a str,
    /// The view key, as a TOML array.
    pub key: &'a str,
    pub bucket: &'a str,
    /// More `[source]` settings, as TOML lines.
    pub source_extra: &'a str,
    /// More fields after [`ORDER_FIELDS`], as TOML lines of the `fields` array.
    pub extra_fields: &'a str,
}

impl Default for OrdersJob<'_> {
    fn default() -> Self {
        OrdersJob {
            name: "t",
            topic: "orders",
            watermark_delay: "5s",
            allowed_lateness: "30s",
            key: r#"["region"]"#,
            bucket: "1h",
            source_extra: "",
            extra_fields: "",
        }
    }
}

impl OrdersJob<'_> {
    /// The job file running `sql` over table `orders` with [`ORDER_FIELDS`].
    pub fn toml(&self, sql: &str) -> String {
        let OrdersJob {
            name,
            topic,
            watermark_delay,
            allowed_lateness,
            key,
            bucket,
            source_extra,
            extra_fields,
        } = self;
        format!(
            r#"
name = "{name}"
[source]
topic = "{topic}"
table = "orders"
event_time = "event_time"
watermark_delay = "{watermark_delay}"
allowed_lateness = "{allowed_lateness}"
{source_extra}
fields = [
{ORDER_FIELDS}{extra_fields}]
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

    /// The parsed job (for tests: panics on a fixture that does not parse).
    pub fn job(&self, sql: &str) -> Job {
        let path = format!("{}.toml", self.name);
        match Job::from_toml(&self.toml(sql), std::path::Path::new(&path)) {
            Ok(job) => job,
            Err(e) => panic!("the orders fixture job does not parse: {e}"),
        }
    }
}

/// Completed orders per region and one-minute tumbling window.
pub const REGION_PER_MINUTE_SQL: &str =
    "SELECT region, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start,
  TUMBLE_END(event_time, INTERVAL '1' MINUTE) AS window_end,
  COUNT(*) AS total_orders, SUM(amount) AS total_revenue, AVG(amount) AS avg_order_value
FROM orders WHERE status = 'completed'
GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)";

/// One order event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    pub region: &'static str,
    pub amount: f64,
    pub status: &'static str,
    /// Event time, ms since the epoch.
    pub event_time: i64,
}

impl Order {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The position of the order's region in [`REGIONS`] (0 for a region not in it), for a
    /// caller that partitions orders by region.
    pub fn region_index(&self) -> usize {
        REGIONS.iter().position(|r| *r == self.region).unwrap_or(0)
    }

    /// The order as a JSON object, for a caller that adds fields of its own.
    pub fn to_value(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// What a generator's orders look like.
#[derive(Debug, Clone)]
pub struct OrderShape {
    /// `order_id` is this prefix and the order's sequence number; a caller that produces
    /// several generators' orders into one topic gives each its own (e.g. `o{seed}-`), so ids
    /// stay unique.
    pub id_prefix: Cow<'static, str>,
    /// The first order's event time (ms).
    pub start_ms: i64,
    /// Event-time step between consecutive orders (ms).
    pub spacing_ms: i64,
    /// Each event time is moved back by up to this much (ms), never before `start_ms`.
    pub disorder_ms: i64,
    /// How many of [`REGIONS`] orders come from (1 to 6).
    pub regions: usize,
    /// Percent of orders with status `completed`; the rest are `pending` or `cancelled`.
    pub completed_percent: u32,
    /// Distinct customers.
    pub customers: u32,
}

impl Default for OrderShape {
    fn default() -> Self {
        OrderShape {
            id_prefix: Cow::Borrowed("o"),
            start_ms: T0_MS,
            spacing_ms: 1_000,
            disorder_ms: 0,
            regions: 4,
            completed_percent: 80,
            customers: 5_000,
        }
    }
}

/// A deterministic stream of orders: the same seed and shape give the same orders.
#[derive(Debug, Clone)]
pub struct OrderGenerator {
    shape: OrderShape,
    rng: StdRng,
    seq: u64,
}

impl OrderGenerator {
    pub fn new(seed: u64, shape: OrderShape) -> OrderGenerator {
        OrderGenerator {
            shape,
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
        }
    }

    /// The number the next order gets.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The next order, at the time its shape gives it.
    pub fn next_order(&mut self) -> Order {
        let shape = &self.shape;
        let planned = shape
            .start_ms
            .saturating_add((self.seq as i64).saturating_mul(shape.spacing_ms));
        let disorder = match shape.disorder_ms {
            0 => 0,
            d => self.rng.random_range(0..=d),
        };
        let at = planned.saturating_sub(disorder).max(shape.start_ms);
        self.order_at(at)
    }

    /// The next order, at `event_time_ms` (a live generator stamps the wall clock).
    pub fn order_at(&mut self, event_time_ms: i64) -> Order {
        let shape = &self.shape;
        let regions = shape.regions.clamp(1, REGIONS.len());
        let region = REGIONS[self.rng.random_range(0..regions)];
        let roll = self.rng.random_range(0..100u32);
        let status = if roll < shape.completed_percent {
            "completed"
        } else if roll % 2 == 0 {
            "pending"
        } else {
            "cancelled"
        };
        let amount = f64::from(self.rng.random_range(4..40_000u32)) / 4.0;
        let customer = self.rng.random_range(0..shape.customers.max(1));
        let order = Order {
            order_id: format!("{}{}", shape.id_prefix, self.seq),
            customer_id: format!("c-{customer:05}"),
            region,
            amount,
            status,
            event_time: event_time_ms,
        };
        self.seq += 1;
        order
    }

    /// The next `count` orders as JSON records.
    pub fn records(&mut self, count: usize) -> Vec<Vec<u8>> {
        (0..count).map(|_| self.next_order().to_json()).collect()
    }
}

impl Iterator for OrderGenerator {
    type Item = Order;

    fn next(&mut self) -> Option<Order> {
        Some(self.next_order())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JsonDecoder;

    #[test]
    fn generated_orders_decode_under_the_fixture_job_without_errors() {
        let job = OrdersJob::default().job(REGION_PER_MINUTE_SQL);
        let shape = OrderShape {
            disorder_ms: 3_000,
            ..OrderShape::default()
        };
        let records = OrderGenerator::new(7, shape).records(500);
        let decoded = JsonDecoder::new(&job).decode(&records).unwrap();
        assert!(decoded.errors.is_empty(), "{:?}", decoded.errors.first());
        assert_eq!(decoded.batch.num_rows(), 500);
    }

    #[test]
    fn the_same_seed_gives_the_same_orders_and_times_never_precede_the_start() {
        let shape = OrderShape {
            disorder_ms: 5_000,
            ..OrderShape::default()
        };
        let a: Vec<Order> = OrderGenerator::new(3, shape.clone()).take(200).collect();
        let b: Vec<Order> = OrderGenerator::new(3, shape).take(200).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|o| o.event_time >= T0_MS));
        assert!(a.iter().all(|o| (o.amount * 4.0).fract() == 0.0));
        assert_eq!(a[7].order_id, "o7");
    }

    #[test]
    fn ids_carry_an_owned_prefix_and_region_indices_point_into_the_region_list() {
        let seed = 9;
        let shape = OrderShape {
            id_prefix: format!("o{seed}-").into(),
            regions: REGIONS.len(),
            ..OrderShape::default()
        };
        let orders: Vec<Order> = OrderGenerator::new(seed, shape).take(50).collect();
        assert_eq!(orders[3].order_id, "o9-3");
        assert!(orders.iter().all(|o| REGIONS[o.region_index()] == o.region));
    }
}
