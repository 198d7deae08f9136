//! The `unique` data-quality check end to end: a real `sluice stream` against the run's broker
//! dead-letters as `check_failed` exactly the re-sent orders a quarantine `unique` on
//! `order_id` (within 1m) rejects, and counts those and the violations of a warn `unique` on
//! (`customer_id`, `region`) (within 30s) in its metrics; `sluice backfill` over the raw table
//! that same daemon landed rejects the same (partition, offset)s and counts the same
//! violations; the job's results and the batch view both equal the answer without the
//! rejected rows. The expected rejections and counts are computed here, in plain Rust, from
//! the rule as `core/src/spec_checks.rs` states it (per partition, in (event time, offset)
//! order, a row violates when its key's previous row, itself a violation or not, is at most
//! `within` before it), never with Sluice's code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::ops::RangeInclusive;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sluice_core::Job;
use sluice_core::fixture::{Order, OrderGenerator, OrderShape, T0_MS};
use sluice_core::topics::{Topics, header};
use sluice_e2e::kafka::{
    Outgoing, Read, create_topic, latest_by_key, produce, read_all, spawn_stream, unique,
};
use sluice_e2e::orders::{self, canonical, canonical_lines};
use sluice_e2e::postgres::{free_port, metric};
use sluice_e2e::serve::{log_tail, sluice, sluice_ok};
use sluice_e2e::sinks::eventually;

/// The quarantine check first: the stateful stages run in the job file's order and a row it
/// rejects never reaches a later one, so the warn check sees only the rows it lets through.
/// (A warn stage lets its rows go on, so placed first it would see every row, the copies too.)
const CHECKS: &str = r#"
[[checks]]
check = "unique"
column = "order_id"
within = "1m"
severity = "quarantine"

[[checks]]
check = "unique"
columns = ["customer_id", "region"]
within = "30s"
severity = "warn"
"#;
/// The checks' default names (`unique_<columns joined by _>`) and their `within`s in ms.
const QUARANTINE: &str = "unique_order_id";
const WARN: &str = "unique_customer_id_region";
const ORDER_ID_WITHIN_MS: i64 = 60_000;
const CUSTOMER_WITHIN_MS: i64 = 30_000;
const PARTITIONS: i32 = 2;
/// Few enough customers that some order twice in one region within 30 s by chance.
const CUSTOMERS: u32 = 300;
/// A row is late once its partition's release bound (the job watermark less the allowed
/// lateness) has passed it: `orders::job_toml`'s 5 s watermark delay plus its 30 s lateness
/// behind the partition's largest event time at least. The fixture keeps every record closer.
const LATE_BEHIND_MS: i64 = 35_000;
/// How long after its event time a re-sent copy may arrive, at most.
const MAX_COPY_WAIT_MS: i64 = 20_000;
/// How much later than their originals near copies are at most (on both sides of the warn
/// check's 30 s), and far ones are.
const NEAR_SHIFT_MS: i64 = 55_000;
const FAR_SHIFT_MS: RangeInclusive<i64> = 120_000..=180_000;

/// Orders with re-sent copies, as produced.
struct Fixture {
    /// The records in produce order, the watermark pushers last.
    events: Vec<Outgoing>,
    /// The order of each record before the pushers.
    sent: Vec<Order>,
    /// Orders with one copy at most [`NEAR_SHIFT_MS`] after them.
    near: usize,
    /// Orders with two copies: 35-50 s after them, then 30-55 s after the first copy (over a
    /// minute after the original, within one of the first copy).
    chained: usize,
    /// Orders with one copy [`FAR_SHIFT_MS`] after them: not duplicates.
    far: usize,
}

/// `count` orders `spacing_ms` apart (up to 3 s of disorder, keyed and partitioned by region)
/// and copies of 9% of them (see [`Fixture`]). A copy has its original's region, so its
/// partition too, and comes after it in the stream, right after it or up to 20 s after its
/// own event time, so that no record is late.
fn orders_with_copies(count: usize, spacing_ms: i64, seed: u64) -> Fixture {
    let shape = OrderShape {
        customers: CUSTOMERS,
        ..orders::on_time_shape(format!("u{seed}-"), T0_MS, spacing_ms)
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    // (arrival, order): an original arrives at its planned time, which its event time trails
    // by up to 3 s; a copy no earlier than its original nor than its own event time.
    let mut timed: Vec<(i64, Order)> = Vec::new();
    let (mut near, mut chained, mut far) = (0, 0, 0);
    for (seq, order) in OrderGenerator::new(seed, shape).take(count).enumerate() {
        let planned = T0_MS + seq as i64 * spacing_ms;
        let shifts: Vec<i64> = match rng.random_range(0..100u32) {
            // 30% of the near copies have their original's very event time.
            0..=4 if rng.random_bool(0.3) => vec![0],
            0..=4 => vec![rng.random_range(1..=NEAR_SHIFT_MS)],
            5..=6 => {
                let first = rng.random_range(35_000..=50_000);
                vec![first, first + rng.random_range(30_000..=55_000)]
            }
            7..=8 => vec![rng.random_range(FAR_SHIFT_MS)],
            _ => Vec::new(),
        };
        match shifts.as_slice() {
            [] => {}
            [_, _] => chained += 1,
            [shift] if *shift <= NEAR_SHIFT_MS => near += 1,
            _ => far += 1,
        }
        timed.push((planned, order.clone()));
        for shift in shifts {
            let copy = Order {
                event_time: order.event_time + shift,
                ..order.clone()
            };
            let wait = if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(1..=MAX_COPY_WAIT_MS)
            };
            timed.push((planned.max(copy.event_time + wait), copy));
        }
    }
    let (events, sent) = orders::arriving(timed, PARTITIONS, LATE_BEHIND_MS);
    Fixture {
        events,
        sent,
        near,
        chained,
        far,
    }
}

/// A produced order and where the topic put it.
struct Placed<'a> {
    partition: i32,
    offset: i64,
    order: &'a Order,
}

/// Each sent order where the topic put it: read back (and compared with what was produced),
/// so the offsets are the broker's rather than assumed to count from 0 in each partition.
fn placed_orders<'a>(topic: &str, fixture: &'a Fixture) -> Vec<Placed<'a>> {
    let mut read: BTreeMap<i32, Vec<Read>> = BTreeMap::new();
    for record in read_all(topic) {
        read.entry(record.partition).or_default().push(record);
    }
    let mut next: HashMap<i32, usize> = HashMap::new();
    let sent = fixture.events.iter().zip(&fixture.sent);
    sent.map(|((partition, _, value), order)| {
        let index = next.entry(*partition).or_default();
        let record = read.get(partition).and_then(|r| r.get(*index));
        let record = record.expect("every produced record in the topic");
        *index += 1;
        assert_eq!(
            record.value.as_deref(),
            Some(value.as_slice()),
            "partition {partition} holds the records in produce order"
        );
        Placed {
            partition: *partition,
            offset: record.offset,
            order,
        }
    })
    .collect()
}

/// The (partition, offset) of every row of `rows` that violates a `unique` check on `key`
/// with horizon `within_ms`, by the rule: per partition, in (event time, offset) order, a row
/// whose key's previous row (a violation or not) is at most `within_ms` before it.
fn violations<K: Eq + Hash>(
    rows: &[&Placed<'_>],
    key: impl Fn(&Order) -> K,
    within_ms: i64,
) -> BTreeSet<(i32, i64)> {
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(|r| (r.partition, r.order.event_time, r.offset));
    let mut previous: HashMap<(i32, K), i64> = HashMap::new();
    let mut violating = BTreeSet::new();
    for row in sorted {
        let time = row.order.event_time;
        let before = previous.insert((row.partition, key(row.order)), time);
        if before.is_some_and(|before| time - before <= within_ms) {
            violating.insert((row.partition, row.offset));
        }
    }
    violating
}

#[test]
fn both_layers_quarantine_and_count_the_same_unique_violations() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("uniq");
    let name = unique("uniq").replace('-', "_");
    let sql = orders::REGION_PER_MINUTE_SQL;
    let toml = orders::job_toml(&name, &topic, sql, r#"["region"]"#, "10m") + CHECKS;
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, toml).unwrap();
    let job = Job::from_file(&job_file).unwrap();
    create_topic(&topic, PARTITIONS);

    // 2000 orders over 500 s: the 2-3 minute copies land among later originals.
    let fixture = orders_with_copies(2_000, 250, 53);
    produce(&topic, &fixture.events);
    let placed = placed_orders(&topic, &fixture);
    let all: Vec<&Placed> = placed.iter().collect();
    let quarantined = violations(&all, |o| o.order_id.clone(), ORDER_ID_WITHIN_MS);
    let is_kept = |p: &Placed| !quarantined.contains(&(p.partition, p.offset));
    let kept: Vec<&Placed> = placed.iter().filter(|&p| is_kept(p)).collect();
    let customer = |o: &Order| (o.customer_id.clone(), o.region);
    let warned = violations(&kept, customer, CUSTOMER_WITHIN_MS).len();
    // Were a chain's second copy judged against the last row kept (its original, over a
    // minute before), only one copy of each chain would be rejected.
    assert_eq!(
        quarantined.len(),
        fixture.near + 2 * fixture.chained,
        "by the rule, exactly the near copies and both copies of each chain are duplicates"
    );
    assert!(
        fixture.near >= 50 && fixture.chained >= 15 && fixture.far >= 15 && warned >= 20,
        "too few to prove anything: {} near, {} chained, {} far, {warned} warned",
        fixture.near,
        fixture.chained,
        fixture.far
    );
    assert!(
        violations(&all, customer, CUSTOMER_WITHIN_MS).len() > warned,
        "the fixture cannot tell whether the warn check sees the rejected rows"
    );
    let order_at: HashMap<(i32, i64), &str> = placed
        .iter()
        .map(|p| ((p.partition, p.offset), p.order.order_id.as_str()))
        .collect();
    let kept_events: Vec<Outgoing> = fixture
        .events
        .iter()
        .zip(&placed)
        .filter(|&(_, p)| is_kept(p))
        .map(|(event, _)| event.clone())
        .collect();
    let expected = orders::truth(&job, &kept_events);
    let unchecked = orders::truth(&job, &fixture.events);
    assert_ne!(expected, unchecked, "the rejected rows change the answer");

    let addr = format!("127.0.0.1:{}", free_port());
    let lake = dir.path().join("lake");
    let log = dir.path().join("stream.log");
    // Small micro-batches: rows wait in the state across many of them before their release.
    let mut daemon = spawn_stream(
        &job_file,
        &lake,
        &dir.path().join("state"),
        &log,
        &["--metrics-addr", &addr, "--batch-size", "200"],
    );
    let topics = Topics::for_job(&job);
    let what = "<job>.results to equal the answer without the rejected rows";
    eventually(Duration::from_secs(120), what, || {
        let mut got: Vec<String> = latest_by_key(&read_all(&topics.results))
            .into_values()
            .map(|v| canonical(&serde_json::from_slice(&v).expect("a JSON result row")))
            .collect();
        got.sort();
        if got == expected {
            return Ok(());
        }
        Err(format!("{} rows; log:\n{}", got.len(), log_tail(&log, 20)))
    });

    // The counters move after each micro-batch's commit, just after its records show.
    let counted = |check: &str, severity: &str| {
        let text = sluice_e2e::http::try_get(&addr, "/metrics", None)
            .ok()?
            .body;
        let labels = [
            ("job", name.as_str()),
            ("check", check),
            ("severity", severity),
        ];
        metric(&text, "sluice_check_violations_total", &labels)
    };
    let want = (Some(quarantined.len() as f64), Some(warned as f64));
    eventually(Duration::from_secs(30), "the violation counters", || {
        let got = (counted(QUARANTINE, "quarantine"), counted(WARN, "warn"));
        if got == want {
            return Ok(());
        }
        Err(format!("{got:?}, expected {want:?}"))
    });

    let dead = read_all(&topics.dlq);
    let mut speed_positions = BTreeSet::new();
    for record in &dead {
        let h = |key: &str| record.headers.get(key).cloned().unwrap_or_default();
        let headers = [
            (header::ERROR_TYPE, "check_failed"),
            (header::CHECK, QUARANTINE),
            (header::ERROR_FIELD, "order_id"),
        ];
        for (key, value) in headers {
            assert_eq!(h(key), value, "{key} of {:?}", record.headers);
        }
        let message = h(header::ERROR_MESSAGE);
        assert!(message.contains("`order_id` within 1m"), "{message}");
        let position: (i32, i64) = (
            h(header::SOURCE_PARTITION).parse().expect("a partition"),
            h(header::SOURCE_OFFSET).parse().expect("an offset"),
        );
        let row: Value = serde_json::from_slice(record.value.as_deref().unwrap_or_default())
            .expect("a dead letter holding the decoded row in JSON");
        let read_there = order_at.get(&position).copied();
        assert_eq!(row["order_id"].as_str(), read_there, "at {position:?}");
        speed_positions.insert(position);
    }
    assert_eq!(dead.len(), quarantined.len(), "a dead letter per rejection");
    assert_eq!(speed_positions, quarantined, "the DLQ holds the duplicates");
    let late = read_all(&topics.late);
    assert!(late.is_empty(), "{} records went to <job>.late", late.len());

    // The raw table keeps every record, the rejected ones too (the master dataset).
    sluice_e2e::wait_raw_rows(&lake, &job, fixture.events.len(), Duration::from_secs(90));
    assert!(daemon.terminate().success(), "SIGTERM exits 0");

    let rejects = dir.path().join("rejects.jsonl");
    let utf8 = "a UTF-8 temporary path";
    let (job_path, lake_path) = (job_file.to_str().expect(utf8), lake.to_str().expect(utf8));
    let out = sluice(&[
        "backfill",
        "--job",
        job_path,
        "--lake",
        lake_path,
        "--from",
        "2024-05-01T00:00:00Z",
        "--to",
        "2024-05-02T00:00:00Z",
        // The lake sink's completeness ends near the last watermark; the table is whole here.
        "--allow-incomplete",
        "--output",
        "json",
        "--rejects",
        rejects.to_str().expect(utf8),
    ]);
    assert_eq!(out.status.code(), Some(3), "exit 3: rows skipped\n{out:?}");
    let report: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or_default(),
    )
    .expect("a JSON report");
    let fields = ["rows_read", "rows_rejected", "check_violations"];
    let got: Vec<&Value> = fields.iter().map(|f| &report[*f]).collect();
    let want = [
        json!(fixture.events.len()),
        json!(quarantined.len()),
        json!([
            {"check": QUARANTINE, "severity": "quarantine", "rows": quarantined.len()},
            {"check": WARN, "severity": "warn", "rows": warned},
        ]),
    ];
    assert_eq!(
        got,
        want.iter().collect::<Vec<_>>(),
        "{fields:?} of {report}"
    );
    let lines = std::fs::read_to_string(&rejects).expect("the rejects file");
    let mut batch_rejects = 0;
    let mut batch_positions = BTreeSet::new();
    for line in lines.lines() {
        let row: Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(row["error"], "check_failed", "{row}");
        assert_eq!(row["check"], QUARANTINE, "{row}");
        let partition = row["partition"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok());
        let position = (
            partition.expect("a partition"),
            row["offset"].as_i64().expect("an offset"),
        );
        let read_there = order_at.get(&position).copied();
        assert_eq!(row["record"]["order_id"].as_str(), read_there, "{row}");
        batch_rejects += 1;
        batch_positions.insert(position);
    }
    assert_eq!(
        batch_rejects,
        quarantined.len(),
        "a reject line per rejection"
    );
    assert_eq!(
        batch_positions, speed_positions,
        "backfill rejects exactly the records the speed layer dead-lettered"
    );
    let view = sluice_ok(&["view", "--job", job_path, "--lake", lake_path]);
    assert_eq!(
        canonical_lines(&view),
        expected,
        "the batch view leaves out the same rows"
    );
}
