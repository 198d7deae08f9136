//! The demo's event generator: the shared order generator's orders
//! ([`sluice_core::fixture`]), stamped with the wall clock, plus what a real source also
//! delivers and the demo wants to show: about 2% malformed records (they end in `<job>.dlq`)
//! and about 2% orders stamped two minutes in the past, later than the watermark delay plus
//! the allowed lateness (they end in `<job>.late`, and in the lake), and orders that decode but
//! fail the demo job's data-quality checks: about 1% with a negative amount (the `quarantine`
//! check `range_amount` sends them to `<job>.dlq` as `check_failed`, in both layers) and about
//! 1% with status `refunded` (the `warn` check `accepted_values_status` counts them). Produced
//! at `--rate` per second on a thread of their own, counted by kind for the summary.
//!
//! With `--format avro` the orders are Confluent-framed Avro: the generator registers seed
//! 000's `OrderEvent` (v1) with the demo's registry, then after [`EVOLVE_AFTER`] (or half of
//! `--events`) v2, which adds `channel` with a default, and writes v2 from then on; the job
//! reads both. Its malformed records are JSON on the Avro topic, truncated Avro bodies, and
//! records naming a schema id the registry does not have.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;
use sluice_core::Job;
use sluice_core::fixture::{Order, OrderGenerator, OrderShape};
use sluice_core::fixture_avro::{ORDER_EVENT_V1, ORDER_EVENT_V2, OrderAvro};
use sluice_kafka::client_config;
use sluice_registry::RegistryClient;

use super::DemoArgs;

/// Shares of malformed and of late events, in percent.
const MALFORMED_PERCENT: u32 = 2;
const LATE_PERCENT: u32 = 2;
/// Shares of orders with a negative amount (a refund booked as an order) and of orders with a
/// status the job does not accept ([`UNKNOWN_STATUS`]), in percent.
const NEGATIVE_PERCENT: u32 = 1;
const UNKNOWN_STATUS_PERCENT: u32 = 1;
/// A status a newer producer might introduce; the demo job accepts completed, pending and
/// cancelled.
const UNKNOWN_STATUS: &str = "refunded";
/// Late events are this far in the past: well beyond watermark delay (2 s) + lateness (5 s).
const LATE_BY_MS: i64 = 120_000;

/// `--format avro`: v2 of the schema replaces v1 after this long.
const EVOLVE_AFTER: Duration = Duration::from_secs(30);

/// Keeps the orders' random stream apart from the one that picks malformed and late events.
const ORDERS_SEED: u64 = 0x5eed_0de5;

/// The demo's orders: three regions (eu, us, apac), 70% completed, the rest pending or
/// cancelled, 5,000 customers. Their times are the wall clock's, not the shape's.
fn order_shape() -> OrderShape {
    OrderShape {
        regions: 3,
        completed_percent: 70,
        customers: 5_000,
        ..OrderShape::default()
    }
}

/// What the generator produced so far.
#[derive(Default)]
pub(super) struct Counters {
    produced: AtomicU64,
    malformed: AtomicU64,
    late: AtomicU64,
    negative_amount: AtomicU64,
    unknown_status: AtomicU64,
    /// Set when the generator has stopped (`--events` reached, or an error).
    pub(super) done: AtomicBool,
}

impl Counters {
    fn count(&self, kind: Kind) {
        self.produced.fetch_add(1, Ordering::Relaxed);
        match kind {
            Kind::Malformed => self.malformed.fetch_add(1, Ordering::Relaxed),
            Kind::Late => self.late.fetch_add(1, Ordering::Relaxed),
            Kind::NegativeAmount => self.negative_amount.fetch_add(1, Ordering::Relaxed),
            Kind::UnknownStatus => self.unknown_status.fetch_add(1, Ordering::Relaxed),
            Kind::OnTime => 0,
        };
    }

    /// Orders that fail the demo job's checks: (negative amount, unknown status).
    pub(super) fn failing_checks(&self) -> (u64, u64) {
        (
            self.negative_amount.load(Ordering::Relaxed),
            self.unknown_status.load(Ordering::Relaxed),
        )
    }

    /// (produced, malformed, late).
    pub(super) fn get(&self) -> (u64, u64, u64) {
        (
            self.produced.load(Ordering::Relaxed),
            self.malformed.load(Ordering::Relaxed),
            self.late.load(Ordering::Relaxed),
        )
    }
}

#[derive(Clone, Copy)]
enum Kind {
    OnTime,
    Late,
    Malformed,
    /// On time, with a negative amount.
    NegativeAmount,
    /// On time, with status [`UNKNOWN_STATUS`].
    UnknownStatus,
}

struct Event {
    key: String,
    value: Vec<u8>,
    kind: Kind,
}

/// How events are written.
enum Wire {
    Json,
    Avro(Box<AvroWire>),
}

/// Confluent-framed Avro, the schemas registered with `registry` under `subject`.
struct AvroWire {
    registry: RegistryClient,
    subject: String,
    writer: OrderAvro,
    evolved: bool,
}

impl Wire {
    fn for_job(job: &Job) -> anyhow::Result<Wire> {
        if job.spec.source.format != sluice_core::spec::SourceFormat::AvroConfluent {
            return Ok(Wire::Json);
        }
        let url = job
            .registry_url()
            .context("the demo's Avro job names no registry")?;
        let registry = RegistryClient::new(&url).context("the demo's schema registry")?;
        let subject = format!("{}-value", job.spec.source.topic);
        let id = registry
            .register(&subject, ORDER_EVENT_V1)
            .with_context(|| format!("registering OrderEvent v1 under `{subject}`"))?;
        tracing::info!(%subject, id, "OrderEvent v1 registered");
        Ok(Wire::Avro(Box::new(AvroWire {
            registry,
            subject,
            writer: OrderAvro::new(1, id),
            evolved: false,
        })))
    }

    /// Switches to v2 once it is time (see [`EVOLVE_AFTER`]).
    fn evolve(&mut self, due: bool) -> anyhow::Result<()> {
        let Wire::Avro(avro) = self else {
            return Ok(());
        };
        if due && !avro.evolved {
            let id = avro
                .registry
                .register(&avro.subject, ORDER_EVENT_V2)
                .with_context(|| format!("registering OrderEvent v2 under `{}`", avro.subject))?;
            tracing::info!(subject = %avro.subject, id, "OrderEvent v2 (adds `channel`) registered; the generator writes v2 now");
            avro.writer = OrderAvro::new(2, id);
            avro.evolved = true;
        }
        Ok(())
    }

    fn order(&self, order: &Order) -> Vec<u8> {
        match self {
            Wire::Json => order.to_json(),
            Wire::Avro(avro) => avro.writer.confluent(order),
        }
    }

    fn malformed(&self, seq: u64, key: &str, now: i64, order: &Order) -> Vec<u8> {
        let Wire::Avro(avro) = self else {
            return malformed(seq, key, now);
        };
        let writer = &avro.writer;
        match seq % 3 {
            // JSON on an Avro topic: missing_magic_byte.
            0 => order.to_json(),
            // Cut short: malformed_avro.
            1 => {
                let mut record = writer.confluent(order);
                record.truncate(record.len() / 2);
                record
            }
            // A schema id the registry never gave out: unknown_schema_id.
            _ => {
                let mut record = writer.confluent(order);
                record[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
                record
            }
        }
    }
}

pub(super) fn spawn_generator(
    brokers: &str,
    job: &Job,
    args: &DemoArgs,
    counters: &Arc<Counters>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let wire = Wire::for_job(job)?;
    let producer: BaseProducer = client_config(brokers, &[], |client| {
        client
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "100000");
    })
    .create()
    .context("creating the order generator's producer")?;
    let topic = job.spec.source.topic.clone();
    let (rate, limit) = (args.rate.max(1), args.events);
    let (counters, stop) = (counters.clone(), stop.clone());
    std::thread::Builder::new()
        .name("demo-generator".into())
        .spawn(move || {
            if let Err(e) = generate(&producer, &topic, wire, (rate, limit), &counters, &stop) {
                tracing::error!(error = %format!("{e:#}"), "the order generator stopped");
            }
            if let Err(e) = producer.flush(Duration::from_secs(10)) {
                tracing::warn!(error = %e, "the order generator could not flush its last events");
            }
            counters.done.store(true, Ordering::SeqCst);
        })
        .context("starting the order generator")
}

/// Produces `rate` events per second (in 10 ms steps) until `stop` or `limit`.
fn generate(
    producer: &BaseProducer,
    topic: &str,
    mut wire: Wire,
    (rate, limit): (u64, Option<u64>),
    counters: &Counters,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let seed = chrono::Utc::now().timestamp_micros() as u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut orders = OrderGenerator::new(seed ^ ORDERS_SEED, order_shape());
    let started = Instant::now();
    let within = |seq: u64| limit.is_none_or(|limit| seq < limit);
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) && within(seq) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let halfway = limit.is_some_and(|limit| seq >= limit / 2);
        wire.evolve(started.elapsed() >= EVOLVE_AFTER || halfway)?;
        while seq < due && within(seq) {
            let event = next_event(seq, &mut rng, &mut orders, &wire);
            send(producer, topic, &event)?;
            counters.count(event.kind);
            seq += 1;
        }
        producer.poll(Duration::from_millis(10));
    }
    Ok(())
}

/// Sends one event, waiting while the producer's queue is full.
fn send(producer: &BaseProducer, topic: &str, event: &Event) -> anyhow::Result<()> {
    let record = BaseRecord::<str, [u8]>::to(topic)
        .key(event.key.as_str())
        .payload(event.value.as_slice());
    sluice_kafka::send_waiting(producer, record).with_context(|| format!("producing to `{topic}`"))
}

/// One event: usually an order of the shared generator as JSON (amounts are multiples of
/// 0.25, exact in binary floating point, so sums do not depend on the order the layers add them
/// in), stamped now or [`LATE_BY_MS`] ago; now and then a malformed record, or an order stamped
/// now with a negative amount or an unknown status.
fn next_event(seq: u64, rng: &mut StdRng, orders: &mut OrderGenerator, wire: &Wire) -> Event {
    let now = chrono::Utc::now().timestamp_millis();
    let key = format!("o-{seq:09}");
    let roll = rng.random_range(0..100u32);
    if roll < MALFORMED_PERCENT {
        let mut order = orders.order_at(now);
        order.order_id.clone_from(&key);
        let value = wire.malformed(seq, &key, now, &order);
        return Event {
            key,
            value,
            kind: Kind::Malformed,
        };
    }
    let late_below = MALFORMED_PERCENT + LATE_PERCENT;
    let negative_below = late_below + NEGATIVE_PERCENT;
    let kind = if roll < late_below {
        Kind::Late
    } else if roll < negative_below {
        Kind::NegativeAmount
    } else if roll < negative_below + UNKNOWN_STATUS_PERCENT {
        Kind::UnknownStatus
    } else {
        Kind::OnTime
    };
    let event_time = if matches!(kind, Kind::Late) {
        now - LATE_BY_MS
    } else {
        now
    };
    let mut order = orders.order_at(event_time);
    // The order id is the record's key, numbered over all events (malformed ones too).
    order.order_id.clone_from(&key);
    match kind {
        // Amounts are at least 1, so the negated one is below the check's minimum, 0.
        Kind::NegativeAmount => order.amount = -order.amount,
        Kind::UnknownStatus => order.status = UNKNOWN_STATUS,
        Kind::OnTime | Kind::Late | Kind::Malformed => {}
    }
    Event {
        key,
        value: wire.order(&order),
        kind,
    }
}

/// A record the decoder rejects: broken JSON, a wrong type, or no event time.
fn malformed(seq: u64, key: &str, now: i64) -> Vec<u8> {
    let value = match seq % 3 {
        0 => return br#"{"order_id": 17, "amount": "lots""#.to_vec(),
        1 => {
            json!({"order_id": key, "region": "eu", "amount": "lots", "status": "completed", "event_time": now})
        }
        _ => json!({"order_id": key, "region": "us", "amount": 9.5, "status": "completed"}),
    };
    value.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn events_are_valid_json_except_the_malformed_ones() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut orders = OrderGenerator::new(7, order_shape());
        let (mut late, mut malformed, mut negative, mut unknown) = (0, 0, 0, 0);
        for seq in 0..5_000 {
            let event = next_event(seq, &mut rng, &mut orders, &Wire::Json);
            let parsed = serde_json::from_slice::<Value>(&event.value);
            if matches!(event.kind, Kind::Malformed) {
                malformed += 1;
                continue;
            }
            let value = parsed.expect("valid JSON");
            let amount = value["amount"].as_f64().expect("an amount");
            let status = value["status"].as_str().expect("a status");
            match event.kind {
                Kind::NegativeAmount => negative += 1,
                Kind::UnknownStatus => unknown += 1,
                Kind::Late => late += 1,
                Kind::OnTime | Kind::Malformed => {}
            }
            // Exactly the orders counted as failing a check fail it.
            assert_eq!(
                amount < 0.0,
                matches!(event.kind, Kind::NegativeAmount),
                "{value}"
            );
            assert_eq!(
                status == UNKNOWN_STATUS,
                matches!(event.kind, Kind::UnknownStatus),
                "{value}"
            );
            assert!(
                ["completed", "pending", "cancelled", UNKNOWN_STATUS].contains(&status),
                "{value}"
            );
        }
        assert!((25..=200).contains(&late), "late {late}");
        assert!((25..=200).contains(&malformed), "malformed {malformed}");
        assert!(
            (10..=120).contains(&negative),
            "negative amounts {negative}"
        );
        assert!((10..=120).contains(&unknown), "unknown statuses {unknown}");
    }
}
