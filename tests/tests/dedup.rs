//! First-row deduplication end to end (`ROW_NUMBER() … WHERE rn = 1`, `dedup_within = "1m"`):
//! a real `sluice stream` against the run's broker and `sluice backfill` over the raw table that
//! same daemon landed drop exactly the re-sent orders that came at most a minute after an
//! earlier copy in their partition, and count again those re-sent two to three minutes later.
//! The expected answer is computed here, in plain Rust, from the rule as docs/jobs.md states it
//! (per partition, in (event time, offset) order, a row is dropped when the previous row of its
//! order id is at most the horizon before it), never with Sluice's code. A daemon killed with
//! kill -9 at random moments ends at the same answer; `sluice verify` passes on the live daemon
//! while it holds rows and after it released them; `replay --from earliest` rebuilds a version
//! that verifies, and `replay --from lake` seeds a version with the rows and keys held at the
//! seam, after which it counts exactly what the rule says.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sluice_core::Job;
use sluice_core::fixture::{Order, OrderGenerator, T0_MS};
use sluice_core::topics::Topics;
use sluice_e2e::kafka::{
    Daemon, Outgoing, create_topic, latest_by_key, produce, read_all, spawn_stream, unique,
};
use sluice_e2e::orders::{self, canonical, canonical_lines};
use sluice_e2e::postgres::{free_port, metric};
use sluice_e2e::serve::{log_tail, sluice, sluice_ok};
use sluice_e2e::sinks::eventually;

/// Completed orders per region and minute, each order counted once within the horizon.
const DEDUP_SQL: &str =
    "SELECT region, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start,
  COUNT(*) AS total_orders, SUM(amount) AS total_revenue
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY order_id ORDER BY event_time) AS rn FROM orders)
WHERE rn = 1 AND status = 'completed'
GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)";
/// The job's `dedup_within`, as written in the job file.
const DEDUP_WITHIN: &str = "1m";
/// [`DEDUP_WITHIN`] in ms.
const HORIZON_MS: i64 = 60_000;
const PARTITIONS: i32 = 2;
/// A row is late once its partition's release bound (the job watermark less the allowed
/// lateness) has passed it: `orders::job_toml`'s 5 s watermark delay plus its 30 s lateness
/// behind the partition's largest event time at least. The fixture keeps every record closer.
const LATE_BEHIND_MS: i64 = 35_000;
/// How long after its event time a re-sent copy may arrive, at most (less than
/// [`LATE_BEHIND_MS`], so no copy is late).
const MAX_COPY_WAIT_MS: i64 = 20_000;
/// Within-horizon copies are at most this much later in event time than their original.
const NEAR_SHIFT_MS: i64 = 30_000;
/// Beyond-horizon copies are this much later in event time than their original.
const FAR_SHIFT_MS: std::ops::RangeInclusive<i64> = 120_000..=180_000;

/// The orders job of `orders::job_toml` over `DEDUP_SQL`, with `dedup_within` in its
/// `[transform]` table (which `job_toml` writes just before `[view]`).
fn job_toml(name: &str, topic: &str) -> String {
    let plain = orders::job_toml(name, topic, DEDUP_SQL, r#"["region"]"#, "10m");
    let toml = plain.replacen(
        "\n[view]\n",
        &format!("\ndedup_within = \"{DEDUP_WITHIN}\"\n[view]\n"),
        1,
    );
    assert_ne!(
        toml, plain,
        "the orders job has no [view] table to put dedup_within before"
    );
    toml
}

/// One test's job, its topics and directories.
struct Setup {
    dir: tempfile::TempDir,
    job_file: PathBuf,
    job: Job,
    topics: Topics,
}

impl Setup {
    fn new(prefix: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique(prefix);
        let name = unique(prefix).replace('-', "_");
        let job_file = dir.path().join("job.toml");
        std::fs::write(&job_file, job_toml(&name, &topic)).unwrap();
        let job = Job::from_file(&job_file).unwrap();
        assert_eq!(
            job.spec.transform.dedup_within(),
            Duration::from_millis(HORIZON_MS as u64),
            "dedup_within is read from [transform]"
        );
        create_topic(&topic, PARTITIONS);
        let topics = Topics::for_job(&job);
        Setup {
            dir,
            job_file,
            job,
            topics,
        }
    }

    fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("stream.log")
    }

    /// Version 2 of the job (`[view] version = 2`): its own group, state, topics and view.
    fn version_2(&self) -> PathBuf {
        let v2_file = self.dir.path().join("v2.toml");
        let v1_toml = std::fs::read_to_string(&self.job_file).unwrap();
        let v2_toml = v1_toml.replacen("\n[view]\n", "\n[view]\nversion = 2\n", 1);
        assert_ne!(
            v2_toml, v1_toml,
            "the job has a [view] table to put the version in"
        );
        std::fs::write(&v2_file, v2_toml).unwrap();
        v2_file
    }

    /// `sluice stream` on the job, always with the same state directory (a restart resumes it).
    fn spawn(&self, extra: &[&str]) -> Daemon {
        let state = self.dir.path().join("state");
        spawn_stream(&self.job_file, &self.lake(), &state, &self.log(), extra)
    }
}

/// Orders with re-sent copies, as produced.
struct Fixture {
    /// The records in produce order, the watermark pushers last.
    events: Vec<Outgoing>,
    /// The order of each record before the pushers.
    sent: Vec<Order>,
    /// Copies at most [`NEAR_SHIFT_MS`] after their original: duplicates.
    near: usize,
    /// Copies [`FAR_SHIFT_MS`] after their original: beyond the horizon, counted again.
    far: usize,
}

/// `count` orders `spacing_ms` apart (up to 3 s of disorder, keyed and partitioned by region)
/// and copies of 7% of them: 5% re-sent with the same or an up to 30 s later event time, 2% with
/// one 2 to 3 minutes later. A copy has its original's region, so its partition too, and comes
/// after it in the stream, right after it or up to 20 s after its own event time.
fn orders_with_copies(count: usize, spacing_ms: i64, seed: u64) -> Fixture {
    let shape = orders::on_time_shape(format!("d{seed}-"), T0_MS, spacing_ms);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    // (arrival, order): an original arrives at its planned time, which its event time trails
    // by up to 3 s; a copy no earlier than its original nor than its own event time, so no
    // record runs ahead of the stream.
    let mut timed: Vec<(i64, Order)> = Vec::new();
    let (mut near, mut far) = (0, 0);
    for (seq, order) in OrderGenerator::new(seed, shape).take(count).enumerate() {
        let planned = T0_MS + seq as i64 * spacing_ms;
        let roll = rng.random_range(0..100u32);
        let shift = match roll {
            0..=4 if rng.random_bool(0.3) => Some(0),
            0..=4 => Some(rng.random_range(1..=NEAR_SHIFT_MS)),
            5..=6 => Some(rng.random_range(FAR_SHIFT_MS)),
            _ => None,
        };
        timed.push((planned, order.clone()));
        if let Some(shift) = shift {
            near += usize::from(roll <= 4);
            far += usize::from(roll > 4);
            let copy = Order {
                event_time: order.event_time + shift,
                ..order
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
        far,
    }
}

/// The answer by the rule, independently of Sluice: per partition, rows in (event time,
/// offset) order, a row dropped when the previous row of its order id (dropped or not) is at
/// most the horizon before it; then completed orders counted and summed per region and
/// minute. Returns the sorted canonical rows and how many rows were dropped.
fn by_the_rule(fixture: &Fixture) -> (Vec<String>, usize) {
    // Within a partition offsets follow the produce order, as does the index here.
    let mut per_partition: BTreeMap<i32, Vec<(i64, usize, &Order)>> = BTreeMap::new();
    for (index, ((partition, _, _), order)) in fixture.events.iter().zip(&fixture.sent).enumerate()
    {
        per_partition
            .entry(*partition)
            .or_default()
            .push((order.event_time, index, order));
    }
    let mut windows: BTreeMap<(&str, i64), (i64, f64)> = BTreeMap::new();
    let mut dropped = 0;
    for rows in per_partition.values_mut() {
        rows.sort_by_key(|&(time, index, _)| (time, index));
        let mut previous: HashMap<&str, i64> = HashMap::new();
        for &(time, _, order) in rows.iter() {
            let before = previous.insert(order.order_id.as_str(), time);
            if before.is_some_and(|before| time - before <= HORIZON_MS) {
                dropped += 1;
            } else if order.status == "completed" {
                let start = time - time.rem_euclid(60_000);
                let window = windows.entry((order.region, start)).or_default();
                window.0 += 1;
                // Amounts are multiples of 0.25: the sum is exact in any order.
                window.1 += order.amount;
            }
        }
    }
    let mut rows: Vec<String> = windows
        .into_iter()
        .map(|((region, start), (count, revenue))| {
            let start = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(start)
                .expect("a window start in range")
                .to_rfc3339();
            canonical(&json!({
                "region": region,
                "window_start": start,
                "total_orders": count,
                "total_revenue": revenue,
            }))
        })
        .collect();
    rows.sort();
    (rows, dropped)
}

/// `<job>.results` as an upsert table (the latest row per key), as sorted canonical rows.
fn results(topics: &Topics) -> Vec<String> {
    let mut rows: Vec<String> = latest_by_key(&read_all(&topics.results))
        .values()
        .map(|v| canonical(&serde_json::from_slice::<Value>(v).expect("a JSON result row")))
        .collect();
    rows.sort();
    rows
}

/// Waits until `<job>.results` holds exactly `expected`; on timeout, names what differs.
fn wait_for_results(s: &Setup, expected: &[String], limit: Duration) {
    eventually(limit, "<job>.results to equal the expected rows", || {
        let got = results(&s.topics);
        if got == expected {
            return Ok(());
        }
        let missing: Vec<&String> = expected
            .iter()
            .filter(|r| !got.contains(r))
            .take(5)
            .collect();
        let extra: Vec<&String> = got
            .iter()
            .filter(|r| !expected.contains(r))
            .take(5)
            .collect();
        Err(format!(
            "{} rows vs {} expected\nmissing: {missing:#?}\nunexpected: {extra:#?}\n{} late records\nlog:\n{}",
            got.len(),
            expected.len(),
            read_all(&s.topics.late).len(),
            log_tail(&s.log(), 30)
        ))
    });
}

/// A row's window: (region, canonical window start).
fn window_of(row: &Value) -> (String, String) {
    let region = row["region"].as_str().unwrap_or_default().to_string();
    (region, canonical(&row["window_start"]))
}

/// Every emission of a window counts no fewer orders than the one before it and no more than
/// the final answer. A deduplicating job re-emits a window as the release bound lets more of
/// its rows through (so a window may well be emitted more than once), but rows are only ever
/// added: a count that fell, or overshot, would be rows of a rolled-back micro-batch.
fn assert_emissions_only_grow(topics: &Topics, expected: &[String]) {
    let finals: HashMap<(String, String), i64> = expected
        .iter()
        .map(|row| {
            let row: Value = serde_json::from_str(row).expect("an expected row");
            let count = row["total_orders"].as_i64().expect("a count");
            (window_of(&row), count)
        })
        .collect();
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    // Read in offset order per partition, and a window's key always lands in one partition.
    for record in read_all(&topics.results) {
        let Some(value) = &record.value else {
            continue;
        };
        let row: Value = serde_json::from_slice(value).expect("a JSON result row");
        let window = window_of(&row);
        let count = row["total_orders"].as_i64().unwrap_or(-1);
        let before = last.insert(window.clone(), count).unwrap_or(0);
        assert!(
            count >= before,
            "{window:?} was emitted with {count} orders after {before}"
        );
        let last_count = finals.get(&window).copied();
        assert!(
            last_count.is_some_and(|f| count <= f),
            "{window:?} was emitted with {count} orders; it ends with {last_count:?}"
        );
    }
}

#[test]
fn both_layers_drop_the_same_duplicates_and_keep_those_beyond_the_horizon() {
    let s = Setup::new("dedup");
    // 2000 orders over 500 s: the 2-3 minute copies land among later originals.
    let fixture = orders_with_copies(2_000, 250, 41);
    let (expected, dropped) = by_the_rule(&fixture);
    assert_eq!(
        dropped, fixture.near,
        "by the rule, exactly the within-horizon copies are duplicates"
    );
    assert!(
        fixture.near >= 50 && fixture.far >= 10,
        "too few copies to prove anything: {} near, {} far",
        fixture.near,
        fixture.far
    );
    produce(&s.job.spec.source.topic, &fixture.events);
    let addr = format!("127.0.0.1:{}", free_port());
    // Small micro-batches: rows wait in the state across many of them before their release.
    let mut daemon = s.spawn(&["--metrics-addr", &addr, "--batch-size", "200"]);
    wait_for_results(&s, &expected, Duration::from_secs(120));
    assert_emissions_only_grow(&s.topics, &expected);

    // The counter moves after each micro-batch's commit, just after its records show.
    let job = s.job.name().to_string();
    eventually(
        Duration::from_secs(30),
        "sluice_dedup_dropped_total to count the within-horizon copies",
        || {
            let text = sluice_e2e::http::try_get(&addr, "/metrics", None)
                .map_err(|e| e.to_string())?
                .body;
            match metric(&text, "sluice_dedup_dropped_total", &[("job", &job)]) {
                Some(n) if n == dropped as f64 => Ok(()),
                other => Err(format!("{other:?}, expected {dropped}")),
            }
        },
    );
    assert!(
        !read_all(&s.topics.state).is_empty(),
        "the held and seen rows have a changelog in <job>.state"
    );
    let late = read_all(&s.topics.late);
    assert!(late.is_empty(), "{} records went to <job>.late", late.len());

    // The raw table keeps every record, duplicates too (the master dataset).
    let lake = s.lake();
    sluice_e2e::wait_raw_rows(&lake, &s.job, fixture.events.len(), Duration::from_secs(90));
    assert!(daemon.terminate().success(), "SIGTERM exits 0");

    let (job_file, lake) = (s.job_file.to_str().unwrap(), lake.to_str().unwrap());
    let out = sluice_ok(&[
        "backfill",
        "--job",
        job_file,
        "--lake",
        lake,
        "--from",
        "2024-05-01T00:00:00Z",
        "--to",
        "2024-05-02T00:00:00Z",
        // The lake sink's completeness ends near the last watermark; the table is whole here.
        "--allow-incomplete",
        "--output",
        "json",
    ]);
    let report = last_json(&out, "backfill");
    assert_eq!(
        report["rows_read"],
        json!(fixture.events.len()),
        "the backfill reads every raw row of the day once: {report}"
    );
    let batch = canonical_lines(&sluice_ok(&["view", "--job", job_file, "--lake", lake]));
    assert_eq!(batch, expected, "the batch view drops the same rows");
}

#[test]
fn kill_9_at_random_moments_drops_and_duplicates_nothing() {
    let s = Setup::new("dedupk");
    // 8000 orders over 800 s, produced in rounds while the daemon is killed and restarted.
    let fixture = orders_with_copies(8_000, 100, 43);
    let (expected, dropped) = by_the_rule(&fixture);
    assert_eq!(
        dropped, fixture.near,
        "by the rule, the within-horizon copies"
    );
    let producer = {
        let (topic, events) = (s.job.spec.source.topic.clone(), fixture.events.clone());
        std::thread::spawn(move || {
            for round in events.chunks(400) {
                produce(&topic, round);
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(19);
    let kills = rng.random_range(3..=4);
    for kill in 0..kills {
        let mut child = s.spawn(&["--batch-size", "500"]);
        std::thread::sleep(Duration::from_millis(rng.random_range(1_000..4_000)));
        child.kill();
        eprintln!("killed sluice stream ({} of {kills})", kill + 1);
    }
    producer.join().unwrap();
    let mut daemon = s.spawn(&[]);
    wait_for_results(&s, &expected, Duration::from_secs(300));
    assert_emissions_only_grow(&s.topics, &expected);
    let late = read_all(&s.topics.late);
    assert!(
        late.is_empty(),
        "a restart made {} records late (the release bound must resume, not jump)",
        late.len()
    );
    sluice_e2e::wait_raw_rows(
        &s.lake(),
        &s.job,
        fixture.events.len(),
        Duration::from_secs(120),
    );
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
}

/// The JSON report a command printed last on stdout.
fn last_json(out: &str, what: &str) -> Value {
    out.lines()
        .rfind(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report from {what}: {out}"))
}

/// `sluice replay --from FROM` of `job_file` with its own `state` directory, until caught up;
/// its JSON report.
fn replay(s: &Setup, job_file: &Path, state: &Path, from: &str) -> Value {
    let lake = s.lake();
    let out = sluice_ok(&[
        "replay",
        "--job",
        job_file.to_str().unwrap(),
        "--brokers",
        &sluice_e2e::kafka::bootstrap(),
        "--lake",
        lake.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--from",
        from,
        "--caught-up",
        "1",
        "--timeout",
        "2m",
        "--output",
        "json",
    ]);
    last_json(&out, "replay")
}

/// `sluice verify` of `job_file` (`s`'s job or a version of it), against the run's broker;
/// panics unless it passes.
fn assert_verify_passes(s: &Setup, job_file: &Path, when: &str) {
    let (job, lake) = (job_file.to_str().unwrap(), s.lake());
    let out = sluice(&[
        "verify",
        "--job",
        job,
        "--brokers",
        &sluice_e2e::kafka::bootstrap(),
        "--lake",
        lake.to_str().unwrap(),
        "--settle",
        "10s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify {when}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn verify_passes_while_the_speed_layer_holds_rows_and_after_it_released_them() {
    let s = Setup::new("dedupv");
    // 3200 orders over 800 s: past the first 10-minute bucket, so a backfill sets a cutoff and
    // the cut has a batch side (read back by the horizon) as well as a speed side.
    let fixture = orders_with_copies(3_200, 250, 47);
    let (expected, _) = by_the_rule(&fixture);
    let (orders, pushers) = fixture.events.split_at(fixture.sent.len());
    assert!(
        !pushers.is_empty(),
        "the fixture ends with watermark pushers"
    );
    produce(&s.job.spec.source.topic, orders);
    let mut daemon = s.spawn(&["--batch-size", "200"]);
    let lake = s.lake();
    sluice_e2e::wait_raw_rows(&lake, &s.job, orders.len(), Duration::from_secs(90));
    let out = sluice_ok(&[
        "backfill",
        "--job",
        s.job_file.to_str().unwrap(),
        "--lake",
        lake.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let report = last_json(&out, "backfill");
    assert!(
        report["cutoff_us"].as_i64().is_some(),
        "the backfill set a cutoff: {report}"
    );
    // Without the pushers the release bound stays 35 s (delay and lateness) behind the newest
    // order: the rows after it are held, and a recompute that released them would count them
    // in windows the speed side has not (the cut holds them too).
    assert!(
        results(&s.topics).len() < expected.len(),
        "the last windows wait for the pushers"
    );
    assert_verify_passes(&s, &s.job_file, "while the newest rows are held");
    produce(&s.job.spec.source.topic, pushers);
    wait_for_results(&s, &expected, Duration::from_secs(120));
    assert_verify_passes(&s, &s.job_file, "once every row was released");
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
}

/// Kappa: version 2 of the job, replayed from the topic's start, builds its own dedup state and
/// its merged view verifies (the rows it still holds when it stops are held in the cut too).
#[test]
fn replay_from_earliest_rebuilds_a_deduplicating_version_that_verifies() {
    let s = Setup::new("dedupr");
    let fixture = orders_with_copies(1_500, 250, 53);
    produce(&s.job.spec.source.topic, &fixture.events);
    // Version 1 lands the raw table that verify recomputes version 2 from.
    let mut daemon = s.spawn(&["--batch-size", "200"]);
    sluice_e2e::wait_raw_rows(
        &s.lake(),
        &s.job,
        fixture.events.len(),
        Duration::from_secs(90),
    );
    let v2_file = s.version_2();
    let state = s.dir.path().join("state-v2");
    let report = replay(&s, &v2_file, &state, "earliest");
    assert_eq!(report["caught_up"], json!(true), "{report}");
    assert_eq!(
        report["records_in"],
        json!(fixture.events.len()),
        "version 2 read the whole topic: {report}"
    );
    assert_verify_passes(&s, &v2_file, "of version 2, replayed from earliest");
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
}

/// Lambda: version 2 replayed from the lake while orders are still held (no pushers yet): the
/// seed carries the held rows and remembered keys across the seam, so once version 2's daemon
/// reads the rest (copies of orders from before the seam among them) its emitted windows after
/// the cutoff are exactly the rule's, and its merged view verifies.
#[test]
fn replay_from_the_lake_seeds_the_held_rows_and_keys_across_the_seam() {
    let s = Setup::new("dedupl");
    // 8000 orders over 2000 s: the first half reaches past the first 10-minute bucket, so the
    // version's backfill has a cutoff to seed from.
    let fixture = orders_with_copies(8_000, 250, 59);
    let (expected, _) = by_the_rule(&fixture);
    let (orders, pushers) = fixture.events.split_at(fixture.sent.len());
    let (before, after) = orders.split_at(orders.len() / 2);
    let ids = |sent: &[Order]| -> std::collections::HashSet<String> {
        sent.iter().map(|o| o.order_id.clone()).collect()
    };
    let (sent_before, sent_after) = fixture.sent.split_at(before.len());
    assert!(
        ids(sent_before).intersection(&ids(sent_after)).count() > 0,
        "some orders were re-sent across the seam (the seed's keys must drop or keep them)"
    );
    let topic = s.job.spec.source.topic.clone();
    produce(&topic, before);
    let mut daemon = s.spawn(&["--batch-size", "200"]);
    let lake = s.lake();
    sluice_e2e::wait_raw_rows(&lake, &s.job, before.len(), Duration::from_secs(90));
    let v2_file = s.version_2();
    let state = s.dir.path().join("state-v2");
    let report = replay(&s, &v2_file, &state, "lake");
    let cutoff_ms = report["backfill"]["cutoff_us"]
        .as_i64()
        .unwrap_or_else(|| panic!("the version's backfill set a cutoff: {report}"))
        / 1_000;
    assert!(
        report["seed"]["Seeded"]["partitions"] == json!(PARTITIONS),
        "every partition seeded: {report}"
    );
    let v2 = Job::from_file(&v2_file).unwrap();
    let v2_topics = Topics::for_job(&v2);
    assert!(
        !read_all(&v2_topics.state).is_empty(),
        "the seed wrote the held rows and keys to version 2's <job>.state"
    );
    // Version 2 carries on with `sluice stream` over the rest.
    produce(&topic, after);
    produce(&topic, pushers);
    let mut v2_daemon = spawn_stream(
        &v2_file,
        &lake,
        &state,
        &s.dir.path().join("v2.log"),
        // Version 1's daemon lands the raw table (one master dataset).
        &["--batch-size", "200", "--no-lake-sink"],
    );
    let after_cutoff: Vec<String> = expected
        .iter()
        .filter(|row| {
            let start = serde_json::from_str::<Value>(row).unwrap()["window_start"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
                .expect("a window start");
            start >= cutoff_ms
        })
        .cloned()
        .collect();
    assert!(
        !after_cutoff.is_empty() && after_cutoff.len() < expected.len(),
        "the cutoff splits the windows"
    );
    eventually(
        Duration::from_secs(120),
        "version 2's results after the cutoff to be the rule's",
        || {
            let got = results(&v2_topics);
            if got == after_cutoff {
                Ok(())
            } else {
                Err(format!(
                    "{} rows vs {} expected; log:\n{}",
                    got.len(),
                    after_cutoff.len(),
                    log_tail(&s.dir.path().join("v2.log"), 20)
                ))
            }
        },
    );
    sluice_e2e::wait_raw_rows(&lake, &s.job, fixture.events.len(), Duration::from_secs(90));
    assert_verify_passes(&s, &v2_file, "of version 2 after the seam");
    assert!(v2_daemon.terminate().success(), "SIGTERM exits 0");
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
}
