//! The PostgreSQL sink end to end: a real `sluice stream` process against the run's broker,
//! writing a job's results, its dead letters and its metrics into a throw-away PostgreSQL
//! cluster of each test's own (`sluice_e2e::postgres::PgCluster`), compared with the ground
//! truth of the same events. The tests skip, saying why, where the machine has no PostgreSQL
//! server binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sluice_core::Job;
use sluice_core::fixture::{Order, OrderGenerator, REGIONS, T0_MS};
use sluice_core::topics::{Topics, dead_letter_group, sink_group};
use sluice_e2e::kafka::{
    Daemon, Outgoing, committed_offsets, create_topic, produce, read_all, unique,
};
use sluice_e2e::orders;
use sluice_e2e::postgres::{self, PgCluster, literal, sink_toml};
use sluice_e2e::serve::{log_tail, strip_ansi};
use sluice_e2e::sinks::{self, eventually};

/// Every test's cluster is its own, so the sink writes into the default database.
const DB: &str = "postgres";
/// The table of the stateless job's rows.
const TABLE: &str = "orders_out";
/// The table of the aggregate job's windows.
const WINDOWS: &str = "orders_per_minute";
/// The default sink name, which names its consumer groups, metrics and `/health` entry.
const SINK: &str = "postgres";
/// Event-time step between consecutive generated orders.
const SPACING_MS: i64 = 40;
const STATELESS_SQL: &str =
    "SELECT order_id, region, amount, event_time FROM orders WHERE status = 'completed'";

/// A fresh cluster, or `None` (and the reason printed) where PostgreSQL is not installed.
fn cluster() -> Option<PgCluster> {
    if let Some(why) = postgres::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(PgCluster::start())
}

enum Kind {
    /// [`STATELESS_SQL`]: one row per completed order.
    Stateless,
    /// Completed orders per region and minute ([`orders::REGION_PER_MINUTE_SQL`]).
    Aggregate,
}

/// One test's job (with its `[[sinks]]`), source topic and directories.
struct Scenario {
    dir: tempfile::TempDir,
    job_file: PathBuf,
    job: Job,
}

impl Scenario {
    fn new(kind: Kind, partitions: i32, sinks: &str) -> Scenario {
        let mut dir = tempfile::tempdir().unwrap();
        // For debugging a failure: the logs, lake and state stay (the path is printed).
        if std::env::var_os("SLUICE_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let topic = unique("pgorders");
        let name = unique("pg").replace('-', "_");
        let (sql, key) = match kind {
            Kind::Stateless => (STATELESS_SQL, "[]"),
            Kind::Aggregate => (orders::REGION_PER_MINUTE_SQL, r#"["region"]"#),
        };
        let toml = orders::job_toml(&name, &topic, sql, key, "10m") + sinks;
        let job_file = dir.path().join("job.toml");
        std::fs::write(&job_file, toml).unwrap();
        let job = Job::from_file(&job_file).unwrap();
        create_topic(&topic, partitions);
        Scenario { dir, job_file, job }
    }

    fn topic(&self) -> &str {
        &self.job.spec.source.topic
    }

    fn topics(&self) -> Topics {
        Topics::for_job(&self.job)
    }

    /// The speed layer's consumer group.
    fn group(&self) -> String {
        format!("sluice-{}", self.job.name())
    }

    fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    fn log_path(&self, instance: &str) -> PathBuf {
        self.dir.path().join(format!("{instance}.log"))
    }

    fn log(&self, instance: &str) -> String {
        std::fs::read_to_string(self.log_path(instance)).unwrap_or_default()
    }

    /// A daemon; the same `instance` again is the same daemon restarted (its state directory,
    /// static membership and transactional id).
    fn spawn(&self, instance: &str, extra: &[&str]) -> Daemon {
        postgres::spawn_stream(
            &self.job_file,
            &self.lake(),
            &self.dir.path().join(format!("state-{instance}")),
            &self.log_path(instance),
            extra,
        )
    }
}

fn generate(count: usize, seed: u64) -> Vec<Order> {
    OrderGenerator::new(seed, orders::on_time_shape("o", T0_MS, SPACING_MS))
        .take(count)
        .collect()
}

/// Produces `events` in chunks with a pause after each, on a thread of its own.
fn produce_steadily(
    topic: &str,
    events: Vec<Outgoing>,
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    let topic = topic.to_string();
    std::thread::spawn(move || {
        for part in events.chunks(chunk) {
            produce(&topic, part);
            std::thread::sleep(pause);
        }
    })
}

fn int(text: &str) -> i64 {
    text.parse()
        .unwrap_or_else(|e| panic!("`{text}` is not an integer: {e}"))
}

fn float(text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|e| panic!("`{text}` is not a number: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The stateless job's rows

/// (order_id, region, amount in quarters, event time in ms): amounts are multiples of 0.25,
/// so the comparison is exact.
type Row = (String, String, i64, i64);

/// What the stateless job writes for `orders`: the completed ones, sorted.
fn expected_rows(orders: &[Order]) -> Vec<Row> {
    let mut rows: Vec<Row> = orders
        .iter()
        .filter(|o| o.status == "completed")
        .map(|o| {
            let quarters = (o.amount * 4.0) as i64;
            (
                o.order_id.clone(),
                o.region.to_string(),
                quarters,
                o.event_time,
            )
        })
        .collect();
    rows.sort();
    rows
}

fn table_rows(pg: &PgCluster) -> Vec<Row> {
    let sql = format!(
        "SELECT order_id, region, (amount * 4)::bigint,
                (extract(epoch FROM event_time) * 1000)::bigint FROM {TABLE}"
    );
    let mut rows: Vec<Row> = pg
        .query(DB, &sql)
        .iter()
        .map(|row| match row.as_slice() {
            [id, region, quarters, at] => (id.clone(), region.clone(), int(quarters), int(at)),
            other => panic!("a row of {TABLE}: {other:?}"),
        })
        .collect();
    rows.sort();
    rows
}

/// Rows in the stateless job's table (0 while it does not exist or the server is down).
fn table_count(pg: &PgCluster) -> usize {
    pg.try_i64(DB, &format!("SELECT count(*) FROM {TABLE}"))
        .unwrap_or(0) as usize
}

/// Waits until the table holds `expected` rows, failing only when the count stops growing for
/// 90 s (how fast it grows depends on the machine's load; a stall is what a bug looks like).
fn wait_for_rows(pg: &PgCluster, s: &Scenario, instance: &str, expected: usize) {
    let stall = Duration::from_secs(90);
    let (mut best, mut grown) = (0, Instant::now());
    loop {
        let now = table_count(pg);
        if now >= expected {
            return;
        }
        if now > best {
            (best, grown) = (now, Instant::now());
        }
        assert!(
            grown.elapsed() < stall,
            "stalled at {best} of {expected} rows in {TABLE} for {stall:?}\n{}\nsluice log:\n{}\npostgres log:\n{}",
            diagnose(pg, s),
            log_tail(&s.log_path(instance), 40),
            pg.log_tail(20)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Where the stateless job's rows are, per results partition: what the topic holds, what the
/// sink checkpointed, and which of the topic's orders the table lacks (a stall or a loss tells
/// apart a sink that stopped reading from one that skipped records).
fn diagnose(pg: &PgCluster, s: &Scenario) -> String {
    let results = s.topics().results;
    let in_table: BTreeSet<String> = pg
        .query(DB, &format!("SELECT order_id FROM {TABLE}"))
        .into_iter()
        .filter_map(|row| row.into_iter().next())
        .collect();
    let checkpoint = pg.checkpoint(DB, &sink_group(&s.group(), SINK), &results);
    let mut per_partition: BTreeMap<i32, (usize, i64, Vec<i64>)> = BTreeMap::new();
    for record in read_all(&results) {
        let entry = per_partition
            .entry(record.partition)
            .or_insert((0, -1, Vec::new()));
        entry.0 += 1;
        entry.1 = entry.1.max(record.offset);
        let order = record
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
            .and_then(|v| v["order_id"].as_str().map(str::to_string));
        if order.is_none_or(|o| !in_table.contains(&o)) {
            entry.2.push(record.offset);
        }
    }
    let mut lines = vec![format!(
        "{results}: {} rows in {TABLE}; per partition (records, last offset, checkpoint, offsets missing from the table):",
        in_table.len()
    )];
    for (p, (count, last, missing)) in per_partition {
        let shown: Vec<i64> = missing.iter().copied().take(12).collect();
        lines.push(format!(
            "  {p}: {count} records, last {last}, checkpoint {:?}, {} missing {shown:?}",
            checkpoint.get(&p),
            missing.len()
        ));
    }
    lines.join("\n")
}

/// The columns of `table` as (name, type), in order.
fn column_types(pg: &PgCluster, table: &str) -> Vec<(String, String)> {
    let sql = format!(
        "SELECT column_name, data_type FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = {} ORDER BY ordinal_position",
        literal(table)
    );
    pg.query(DB, &sql)
        .into_iter()
        .map(|row| match row.as_slice() {
            [name, kind] => (name.clone(), kind.clone()),
            other => panic!("an information_schema row: {other:?}"),
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The table holds each expected row once: no order twice, none missing, none extra.
fn assert_rows_exactly_once(pg: &PgCluster, s: &Scenario, expected: &[Row]) {
    let twice = pg.query(
        DB,
        &format!(
            "SELECT order_id, count(*) FROM {TABLE} GROUP BY order_id
             HAVING count(*) > 1 ORDER BY order_id LIMIT 10"
        ),
    );
    assert!(
        twice.is_empty(),
        "orders written more than once (order_id, copies): {twice:?}"
    );
    let rows = table_rows(pg);
    if rows != expected {
        let want: BTreeSet<&Row> = expected.iter().collect();
        let got: BTreeSet<&Row> = rows.iter().collect();
        let missing: Vec<_> = want.difference(&got).take(5).collect();
        let extra: Vec<_> = got.difference(&want).take(5).collect();
        panic!(
            "{TABLE} differs from the truth ({} rows, {} expected)\nmissing: {missing:?}\nunexpected: {extra:?}\n{}",
            rows.len(),
            expected.len(),
            diagnose(pg, s)
        );
    }
}

#[test]
#[ignore = "noida-db 0.2.3 hides committed records from a read_committed fetch that starts after an aborted transaction (any librdkafka consumer, see docs/stream.md and tests/tools/txn_probe.py); 2 of 6 runs stalled on it"]
fn kill_9_at_random_moments_writes_each_row_to_postgres_exactly_once() {
    let Some(pg) = cluster() else { return };
    let s = Scenario::new(
        Kind::Stateless,
        4,
        &sink_toml(None, &pg.url(DB), TABLE, "append"),
    );
    let generated = generate(100_000, 11);
    let expected = expected_rows(&generated);
    // Events keep arriving while the daemon is killed and restarted.
    let producer = produce_steadily(
        s.topic(),
        orders::by_region(generated, 4),
        5_000,
        Duration::from_millis(500),
    );
    let mut rng = StdRng::seed_from_u64(41);
    let rounds = rng.random_range(3..=4);
    for round in 1..=rounds {
        let mut daemon = s.spawn("a", &["--batch-size", "2000"]);
        std::thread::sleep(Duration::from_millis(rng.random_range(1_500..4_000)));
        daemon.kill();
        eprintln!(
            "kill -9 of sluice stream ({round} of {rounds}), {} rows in PostgreSQL",
            table_count(&pg)
        );
    }
    producer.join().unwrap();
    let mut daemon = s.spawn("a", &[]);
    wait_for_rows(&pg, &s, "a", expected.len());
    assert_rows_exactly_once(&pg, &s, &expected);
    let group = sink_group(&s.group(), SINK);
    postgres::assert_checkpoint_agrees(&pg, DB, &group, &s.topics().results);
    assert_eq!(
        column_types(&pg, TABLE),
        owned(&[
            ("order_id", "text"),
            ("region", "text"),
            ("amount", "double precision"),
            ("event_time", "timestamp with time zone"),
        ]),
        "a column per result column, its type mapped from Arrow's"
    );
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
}

// ---------------------------------------------------------------------------------------------
// The aggregate job's windows

/// One window of completed orders per region and minute, times in ms.
#[derive(Debug, Clone, PartialEq)]
struct Window {
    region: String,
    start_ms: i64,
    end_ms: i64,
    orders: i64,
    revenue: f64,
    average: f64,
}

fn rfc3339_ms(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {value}"))
}

impl Window {
    /// A result row as JSON (the truth, or a record of `<job>.results`).
    fn from_json(row: &Value) -> Window {
        let number = |name: &str| {
            row[name]
                .as_f64()
                .unwrap_or_else(|| panic!("{name} of {row}"))
        };
        Window {
            region: row["region"].as_str().unwrap_or_default().to_string(),
            start_ms: rfc3339_ms(&row["window_start"]),
            end_ms: rfc3339_ms(&row["window_end"]),
            orders: row["total_orders"]
                .as_i64()
                .unwrap_or_else(|| panic!("total_orders of {row}")),
            revenue: number("total_revenue"),
            average: number("avg_order_value"),
        }
    }
}

fn sort_windows(windows: &mut [Window]) {
    windows.sort_by(|a, b| (&a.region, a.start_ms).cmp(&(&b.region, b.start_ms)));
}

/// The truth: every event through the shared plan at once, finalized.
fn truth_windows(job: &Job, events: &[Outgoing]) -> Vec<Window> {
    let mut windows: Vec<Window> = orders::truth(job, events)
        .iter()
        .map(|line| Window::from_json(&serde_json::from_str::<Value>(line).unwrap()))
        .collect();
    sort_windows(&mut windows);
    windows
}

fn table_windows(pg: &PgCluster) -> Vec<Window> {
    let sql = format!(
        "SELECT region, (extract(epoch FROM window_start) * 1000)::bigint,
                (extract(epoch FROM window_end) * 1000)::bigint,
                total_orders, total_revenue, avg_order_value FROM {WINDOWS}"
    );
    let mut windows: Vec<Window> = pg
        .try_query(DB, &sql)
        .unwrap_or_default()
        .iter()
        .map(|row| match row.as_slice() {
            [region, start, end, count, revenue, average] => Window {
                region: region.clone(),
                start_ms: int(start),
                end_ms: int(end),
                orders: int(count),
                revenue: float(revenue),
                average: float(average),
            },
            other => panic!("a row of {WINDOWS}: {other:?}"),
        })
        .collect();
    sort_windows(&mut windows);
    windows
}

fn ending_at(windows: &[Window], end_ms: i64) -> Vec<Window> {
    windows
        .iter()
        .filter(|w| w.end_ms == end_ms)
        .cloned()
        .collect()
}

#[test]
fn re_emitted_windows_replace_their_rows_and_the_table_equals_the_truth() {
    let Some(pg) = cluster() else { return };
    let partitions = 4;
    let s = Scenario::new(
        Kind::Aggregate,
        partitions,
        &sink_toml(None, &pg.url(DB), WINDOWS, "upsert"),
    );
    // The first events end 20 s into minute 10, so the watermark (5 s behind) has closed the
    // window ending at minute 10; events 5 s before that minute are then late, but within the
    // 30 s of allowed lateness: their windows are emitted again.
    let boundary = T0_MS + 10 * 60_000;
    let first_end = boundary + 20_000;
    let mut generator = OrderGenerator::new(5, orders::on_time_shape("o", T0_MS, SPACING_MS));
    let first_count = ((first_end - T0_MS) / SPACING_MS) as usize;
    let first = orders::by_region(generator.by_ref().take(first_count), partitions);
    let late: Vec<Order> = (0..2 * REGIONS.len())
        .map(|i| Order {
            order_id: format!("late{i}"),
            customer_id: "c-late".to_string(),
            region: REGIONS[i % REGIONS.len()],
            amount: 100.25 + i as f64,
            status: "completed",
            event_time: boundary - 5_000 - i as i64 * 200,
        })
        .collect();
    let late = orders::by_region(late, partitions);
    let rest_count = 10_000;
    let rest = orders::by_region(generator.take(rest_count), partitions);
    let pushers = orders::watermark_pushers(
        partitions,
        first_end + rest_count as i64 * SPACING_MS + 600_000,
    );
    let all: Vec<Outgoing> = [&first, &late, &rest, &pushers]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let truth = truth_windows(&s.job, &all);
    let truth_at_boundary = ending_at(&truth, boundary);
    assert_eq!(
        truth_at_boundary.len(),
        REGIONS.len(),
        "a window per region"
    );

    produce(s.topic(), &first);
    // No partition goes idle while the test waits between phases, so the job watermark is
    // every partition's and none of the events that follow is late beyond the lateness.
    let mut daemon = s.spawn("a", &["--idle-timeout", "10m"]);
    eventually(
        Duration::from_secs(120),
        "every region's window ending at minute 10 in PostgreSQL",
        || match ending_at(&table_windows(&pg), boundary).len() {
            n if n == REGIONS.len() => Ok(()),
            n => Err(format!("{n} rows")),
        },
    );
    let before = ending_at(&table_windows(&pg), boundary);
    assert_ne!(
        before, truth_at_boundary,
        "the late events are not counted yet"
    );

    produce(s.topic(), &late);
    eventually(
        Duration::from_secs(60),
        "the re-emitted windows to replace their rows",
        || {
            let now = ending_at(&table_windows(&pg), boundary);
            if now == truth_at_boundary {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    );
    produce(s.topic(), &rest);
    produce(s.topic(), &pushers);
    let mut last = Vec::new();
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(
            Duration::from_secs(180),
            "the table to equal the truth",
            || {
                last = table_windows(&pg);
                if last == truth {
                    Ok(())
                } else {
                    Err(format!("{} rows of {}", last.len(), truth.len()))
                }
            },
        )
    }));
    if done.is_err() {
        let missing: Vec<_> = truth.iter().filter(|w| !last.contains(w)).take(5).collect();
        let extra: Vec<_> = last.iter().filter(|w| !truth.contains(w)).take(5).collect();
        panic!(
            "{WINDOWS} differs from the truth\nmissing: {missing:#?}\nunexpected: {extra:#?}\nlate records: {}\nsluice log:\n{}",
            read_all(&s.topics().late).len(),
            log_tail(&s.log_path("a"), 40)
        );
    }
    let duplicates = pg.try_i64(
        DB,
        &format!(
            "SELECT count(*) - count(DISTINCT (region, window_start, window_end)) FROM {WINDOWS}"
        ),
    );
    assert_eq!(duplicates, Some(0), "one row per region and window");
    assert_eq!(
        column_types(&pg, WINDOWS),
        owned(&[
            ("region", "text"),
            ("window_start", "timestamp with time zone"),
            ("window_end", "timestamp with time zone"),
            ("total_orders", "bigint"),
            ("total_revenue", "double precision"),
            ("avg_order_value", "double precision"),
        ]),
        "a column per result column, its type mapped from Arrow's"
    );
    let indexes = pg.query(
        DB,
        &format!(
            "SELECT indexdef FROM pg_indexes WHERE tablename = {}",
            literal(WINDOWS)
        ),
    );
    assert!(
        indexes.iter().flatten().any(|def| {
            def.contains("UNIQUE")
                && def.contains("NULLS NOT DISTINCT")
                && ["region", "window_start", "window_end"]
                    .iter()
                    .all(|c| def.contains(c))
        }),
        "a UNIQUE NULLS NOT DISTINCT constraint on the result key: {indexes:?}"
    );
    // The results topic emitted those windows twice: the sink did replace rows.
    let emitted = read_all(&s.topics().results);
    for region in REGIONS {
        let times = emitted
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(r.value.as_deref()?).ok())
            .map(|row| Window::from_json(&row))
            .filter(|w| w.region == region && w.end_ms == boundary)
            .count();
        assert!(
            times >= 2,
            "{region}'s window ending at minute 10 was emitted {times} times"
        );
    }
    assert!(
        read_all(&s.topics().late).is_empty(),
        "no event is late beyond the lateness"
    );
    let group = sink_group(&s.group(), SINK);
    postgres::assert_checkpoint_agrees(&pg, DB, &group, &s.topics().results);
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
}

// ---------------------------------------------------------------------------------------------
// An outage

fn health_says(addr: &str, status: &str, state: &str) -> Result<Value, String> {
    sinks::health_says(addr, SINK, status, state)
}

fn sink_metric(addr: &str, name: &str, job: &str) -> Option<f64> {
    sinks::sink_metric(addr, name, job, SINK)
}

/// PostgreSQL stops for 30 s while events keep coming: the sink pauses and says so, the speed
/// layer goes on, memory stays within the daemon's bound, and when the server is back every
/// row lands once.
#[test]
fn an_outage_pauses_the_sink_and_loses_and_duplicates_nothing() {
    let Some(mut pg) = cluster() else { return };
    let s = Scenario::new(
        Kind::Stateless,
        4,
        &sink_toml(None, &pg.url(DB), TABLE, "append"),
    );
    let job = s.job.name().to_string();
    let generated = generate(45_000, 19);
    let expected = expected_rows(&generated);
    let addr = format!("127.0.0.1:{}", postgres::free_port());
    // Small buffers, as in the speed layer's memory test, so the bound means something.
    let args = [
        "--metrics-addr",
        addr.as_str(),
        "--batch-max-mb",
        "1",
        "--lake-commit-mb",
        "4",
        "--sink-commit-mb",
        "4",
        "-X",
        "queued.max.messages.kbytes=2048",
        "-X",
        "receive.message.max.bytes=16777728",
        "-X",
        "queue.buffering.max.kbytes=4096",
    ];
    let mut daemon = s.spawn("a", &args);
    eventually(Duration::from_secs(60), "the sink to start", || {
        health_says(&addr, "ok", "ok")?;
        let exists = pg.try_i64(DB, &format!("SELECT count(*) FROM {TABLE}"));
        exists
            .map(|_| ())
            .ok_or_else(|| format!("no table {TABLE}"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let (idle_kib, _) = postgres::memory_kib(daemon.id());
    let bound_mib = postgres::logged_bound_mib(&s.log("a"));

    let producer = produce_steadily(
        s.topic(),
        orders::by_region(generated, 4),
        1_000,
        Duration::from_secs(1),
    );
    eventually(
        Duration::from_secs(60),
        "rows in PostgreSQL before the outage",
        || match table_count(&pg) {
            0 => Err("none".to_string()),
            _ => Ok(()),
        },
    );
    let results = s.topics().results;
    sinks::ride_out_outage(
        (&addr, SINK, &job),
        |up| if up { pg.restart() } else { pg.stop() },
        || read_all(&results).len(),
    );
    producer.join().unwrap();
    wait_for_rows(&pg, &s, "a", expected.len());
    assert_rows_exactly_once(&pg, &s, &expected);
    let group = sink_group(&s.group(), SINK);
    postgres::assert_checkpoint_agrees(&pg, DB, &group, &results);
    assert_eq!(sink_metric(&addr, "sluice_sink_up", &job), Some(1.0));
    assert_eq!(
        sink_metric(&addr, "sluice_sink_paused_partitions", &job),
        Some(0.0)
    );
    assert!(
        sink_metric(&addr, "sluice_sink_retries_total", &job).is_some_and(|n| n > 0.0),
        "the sink retried during the outage"
    );
    assert!(
        sink_metric(&addr, "sluice_sink_rows_total", &job)
            .is_some_and(|n| n >= expected.len() as f64),
        "sluice_sink_rows_total counts every row"
    );
    assert!(sink_metric(&addr, "sluice_sink_commits_total", &job).is_some_and(|n| n > 0.0));

    sinks::assert_grew_within(daemon.id(), idle_kib, bound_mib);
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
}

// ---------------------------------------------------------------------------------------------
// Dead letters and metrics

/// A record as produced, with the DLQ error type it must get when it is bad.
type Tagged = (Outgoing, Option<&'static str>);

/// A bad record to produce: (partition, value, the DLQ error type it must get).
type Bad = (i32, Vec<u8>, &'static str);

/// Bad records of every kind, their bytes told apart by `tag`.
fn bad_records(tag: &str, partitions: [i32; 4]) -> Vec<Bad> {
    let [a, b, c, d] = partitions;
    vec![
        (
            a,
            format!(r#"{{"order_id": "{tag}-1", "region": "#).into_bytes(),
            "malformed_json",
        ),
        (b, vec![b'{', 0xff, tag.len() as u8, b'}'], "not_utf8"),
        (
            c,
            format!(r#"{{"order_id":"{tag}-3","region":"eu","amount":1,"status":"completed"}}"#)
                .into_bytes(),
            "missing_field",
        ),
        (
            d,
            format!(
                r#"{{"order_id":"{tag}-4","region":"us","amount":2,"status":"completed","event_time":null}}"#
            )
            .into_bytes(),
            "missing_field",
        ),
    ]
}

/// `good` records with `bad` ones between them.
fn mixed(good: Vec<Outgoing>, bad: Vec<Bad>) -> Vec<Tagged> {
    let mut out: Vec<Tagged> = good.into_iter().map(|r| (r, None)).collect();
    for (i, (partition, value, error)) in bad.into_iter().enumerate() {
        out.insert(i * 600 + 1, ((partition, None, value), Some(error)));
    }
    out
}

/// The records to produce, untagged.
fn records(tagged: &[Tagged]) -> Vec<Outgoing> {
    tagged.iter().map(|(record, _)| record.clone()).collect()
}

/// A dead letter as `ETLDeadLetter` keeps it: (partition, offset, error type, hex bytes).
type DeadLetter = (i32, i64, String, String);

/// The dead letters of `records` produced in order after `next` (the next offset of each
/// partition, advanced past them).
fn dead_letters(records: &[Tagged], next: &mut BTreeMap<i32, i64>) -> Vec<DeadLetter> {
    let mut out = Vec::new();
    for ((partition, _, value), error) in records {
        let offset = next.entry(*partition).or_insert(0);
        if let Some(error) = error {
            out.push((*partition, *offset, error.to_string(), postgres::hex(value)));
        }
        *offset += 1;
    }
    out
}

fn table_dead_letters(pg: &PgCluster, source: &str) -> Vec<DeadLetter> {
    let rows = pg.query(
        DB,
        "SELECT topic, partition, original_offset, error_type, encode(raw_message, 'hex'),
                created_at IS NOT NULL
         FROM ETLDeadLetter ORDER BY partition, original_offset, id",
    );
    rows.iter()
        .map(|row| match row.as_slice() {
            [topic, partition, offset, error, raw, stamped] => {
                assert_eq!(topic, source, "ETLDeadLetter.topic is the source topic");
                assert_eq!(stamped, "t", "ETLDeadLetter.created_at");
                (
                    int(partition) as i32,
                    int(offset),
                    error.clone(),
                    raw.clone(),
                )
            }
            other => panic!("an ETLDeadLetter row: {other:?}"),
        })
        .collect()
}

/// `ETLJobMetric` rows of `job`: (id, processed_count, error_count, sampled_at in µs).
fn metric_rows(pg: &PgCluster, job: &str) -> Vec<(i64, i64, i64, i64)> {
    let sql = format!(
        "SELECT id, processed_count, error_count, (extract(epoch FROM sampled_at) * 1000000)::bigint
         FROM ETLJobMetric WHERE job_name = {} ORDER BY id",
        literal(job)
    );
    pg.try_query(DB, &sql)
        .unwrap_or_default()
        .iter()
        .map(|row| match row.as_slice() {
            [id, processed, errors, at] => (int(id), int(processed), int(errors), int(at)),
            other => panic!("an ETLJobMetric row: {other:?}"),
        })
        .collect()
}

/// Waits until the metric rows after `after_id` are two or more (sampling goes on) and one of
/// them counts exactly `processed` records and `errors` dead letters.
fn wait_for_metric(pg: &PgCluster, job: &str, after_id: i64, processed: i64, errors: i64) {
    eventually(
        Duration::from_secs(90),
        &format!("an ETLJobMetric row of {processed} records and {errors} errors"),
        || {
            let rows: Vec<_> = metric_rows(pg, job)
                .into_iter()
                .filter(|r| r.0 > after_id)
                .collect();
            let reached = rows.iter().any(|r| r.1 == processed && r.2 == errors);
            if reached && rows.len() >= 2 {
                Ok(())
            } else {
                Err(format!(
                    "{:?}",
                    rows.iter().rev().take(3).collect::<Vec<_>>()
                ))
            }
        },
    );
}

#[test]
fn dead_letters_are_mirrored_once_and_metrics_are_sampled_across_a_kill_9() {
    let Some(pg) = cluster() else { return };
    let partitions = 3;
    let s = Scenario::new(
        Kind::Stateless,
        partitions,
        &sink_toml(None, &pg.url(DB), TABLE, "append"),
    );
    let job = s.job.name().to_string();
    let mut generator = OrderGenerator::new(23, orders::on_time_shape("o", T0_MS, SPACING_MS));
    let first_orders: Vec<Order> = generator.by_ref().take(3_000).collect();
    let second_orders: Vec<Order> = generator.take(3_000).collect();
    let mut good = expected_rows(&first_orders);
    good.extend(expected_rows(&second_orders));
    good.sort();
    let first = mixed(
        orders::by_region(first_orders, partitions),
        bad_records("first", [0, 1, 2, 0]),
    );
    let second = mixed(
        orders::by_region(second_orders, partitions),
        bad_records("second", [1, 2, 0, 1]),
    );
    let mut next = BTreeMap::new();
    let mut expected = dead_letters(&first, &mut next);
    let first_letters = expected.len();
    expected.extend(dead_letters(&second, &mut next));
    expected.sort();
    let count_letters = || {
        pg.try_i64(DB, "SELECT count(*) FROM ETLDeadLetter")
            .unwrap_or(0)
    };

    produce(s.topic(), &records(&first));
    let mut daemon = s.spawn("a", &[]);
    eventually(
        Duration::from_secs(90),
        "the first dead letters",
        || match count_letters() {
            n if n as usize >= first_letters => Ok(()),
            n => Err(format!("{n} rows")),
        },
    );
    wait_for_metric(&pg, &job, 0, first.len() as i64, first_letters as i64);

    // A kill -9 while the second half is in flight.
    produce(s.topic(), &records(&second));
    let pause = StdRng::seed_from_u64(7).random_range(0..500);
    std::thread::sleep(Duration::from_millis(pause));
    daemon.kill();
    // What the next daemon resumes from: a commit the broker was completing when the daemon
    // died lands within moments.
    std::thread::sleep(Duration::from_secs(1));
    let resumed = committed_offsets(&s.group(), s.topic(), partitions);
    let resumed_at = |p: i32| resumed[p as usize].max(0);
    let left: i64 = next.iter().map(|(&p, &end)| end - resumed_at(p)).sum();
    let left_bad = expected.iter().filter(|d| d.1 >= resumed_at(d.0)).count() as i64;
    let last_id = metric_rows(&pg, &job).last().map_or(0, |r| r.0);
    eprintln!(
        "killed after {pause} ms; the restart resumes at {resumed:?}: {left} records, {left_bad} bad"
    );
    let mut daemon = s.spawn("a", &[]);
    wait_for_metric(&pg, &job, last_id, left, left_bad);
    eventually(
        Duration::from_secs(60),
        "every dead letter",
        || match count_letters() {
            n if n as usize >= expected.len() => Ok(()),
            n => Err(format!("{n} rows")),
        },
    );
    wait_for_rows(&pg, &s, "a", good.len());
    // A duplicate would come with the next commit.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        table_dead_letters(&pg, s.topic()),
        expected,
        "ETLDeadLetter holds each dead letter once"
    );
    assert_rows_exactly_once(&pg, &s, &good);

    let metrics = metric_rows(&pg, &job);
    for pair in metrics.windows(2) {
        assert!(pair[1].3 > pair[0].3, "sampled_at rises: {pair:?}");
        // Each process counts from its own start.
        if pair[0].0 > last_id || pair[1].0 <= last_id {
            assert!(
                pair[1].1 >= pair[0].1 && pair[1].2 >= pair[0].2,
                "counts never fall within a process: {pair:?}"
            );
        }
    }
    let group = s.group();
    let topics = s.topics();
    postgres::assert_checkpoint_agrees(&pg, DB, &sink_group(&group, SINK), &topics.results);
    postgres::assert_checkpoint_agrees(&pg, DB, &dead_letter_group(&group, SINK), &topics.dlq);
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
}

// ---------------------------------------------------------------------------------------------
// Bad configuration

/// `sluice stream` on `s` exits non-zero within 60 s, and its stderr names each of `names`
/// (case-insensitive) and holds none of `secrets`.
fn assert_fails_at_start(s: &Scenario, names: &[&str], secrets: &[&str]) {
    let command =
        postgres::stream_command(&s.job_file, &s.lake(), &s.dir.path().join("state"), &[]);
    let started = Instant::now();
    let (status, stderr) =
        postgres::run_to_exit(command, &s.log_path("start"), Duration::from_secs(60));
    eprintln!("exited with {status} after {:?}", started.elapsed());
    assert!(!status.success(), "sluice stream must fail:\n{stderr}");
    let plain = strip_ansi(&stderr).to_lowercase();
    for name in names {
        assert!(
            plain.contains(&name.to_lowercase()),
            "stderr does not name `{name}`:\n{stderr}"
        );
    }
    for secret in secrets {
        assert!(
            !stderr.contains(secret),
            "stderr shows the password `{secret}`:\n{stderr}"
        );
    }
}

#[test]
fn nothing_listening_at_the_url_fails_at_start_naming_the_sink_and_the_url() {
    let port = postgres::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let s = Scenario::new(
        Kind::Stateless,
        1,
        &sink_toml(Some("warehouse"), &url, TABLE, "append"),
    );
    assert_fails_at_start(&s, &["warehouse", &format!("127.0.0.1:{port}")], &[]);
}

#[test]
fn an_unknown_database_fails_at_start() {
    let Some(pg) = cluster() else { return };
    let s = Scenario::new(
        Kind::Stateless,
        1,
        &sink_toml(None, &pg.url("no_such_db"), TABLE, "append"),
    );
    assert_fails_at_start(&s, &["no_such_db"], &[]);
}

#[test]
fn a_results_table_with_a_column_of_another_type_fails_at_start_naming_the_column() {
    let Some(pg) = cluster() else { return };
    pg.exec(
        DB,
        &format!(
            "CREATE TABLE {TABLE} (order_id text, region text, amount text, event_time timestamptz)"
        ),
    );
    let s = Scenario::new(
        Kind::Stateless,
        1,
        &sink_toml(None, &pg.url(DB), TABLE, "append"),
    );
    assert_fails_at_start(&s, &["amount"], &[]);
    let kept = pg.query(
        DB,
        &format!(
            "SELECT data_type FROM information_schema.columns
             WHERE table_name = {} AND column_name = 'amount'",
            literal(TABLE)
        ),
    );
    assert_eq!(kept, vec![vec!["text".to_string()]], "never a silent cast");
}

#[test]
fn a_role_without_insert_on_the_results_table_fails_at_start_naming_table_and_privilege() {
    let Some(pg) = cluster() else { return };
    // The seed tables exist and the role may write them: only the results table is refused.
    sluice_e2e::serve::sluice_ok(&["postgres", "init", "--url", &pg.url(DB)]);
    pg.exec(
        DB,
        &format!(
            "CREATE ROLE sluice_ro LOGIN;
             CREATE TABLE {TABLE} (order_id text, region text, amount double precision,
                                   event_time timestamptz);
             GRANT SELECT ON {TABLE} TO sluice_ro;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ETLCheckpoint, ETLDeadLetter, ETLJobMetric
                 TO sluice_ro;
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO sluice_ro;"
        ),
    );
    let s = Scenario::new(
        Kind::Stateless,
        1,
        &sink_toml(None, &pg.url_as("sluice_ro", DB), TABLE, "append"),
    );
    assert_fails_at_start(&s, &[TABLE, "insert"], &[]);
}

#[test]
fn a_password_in_the_url_never_reaches_stderr() {
    let Some(pg) = cluster() else { return };
    let url = format!(
        "postgres://postgres:s3cret@127.0.0.1:{}/no_such_db",
        pg.port()
    );
    let s = Scenario::new(Kind::Stateless, 1, &sink_toml(None, &url, TABLE, "append"));
    assert_fails_at_start(&s, &["no_such_db"], &["s3cret"]);
}

// ---------------------------------------------------------------------------------------------
// `sluice postgres init`

/// The seed 003 columns as `information_schema.columns` describes them: table, column, type,
/// nullable, default (`nextval(` stands for a serial's).
const SEED_COLUMNS: &str = "
etlcheckpoint|id|bigint|NO|nextval(
etlcheckpoint|consumer_group|text|NO|
etlcheckpoint|topic|text|NO|
etlcheckpoint|partition|integer|NO|
etlcheckpoint|offset|bigint|NO|
etlcheckpoint|committed_at|timestamp with time zone|NO|now()
etldeadletter|id|bigint|NO|nextval(
etldeadletter|topic|text|NO|
etldeadletter|partition|integer|NO|
etldeadletter|original_offset|bigint|NO|
etldeadletter|error_type|text|NO|
etldeadletter|raw_message|bytea|NO|
etldeadletter|created_at|timestamp with time zone|NO|now()
etljobmetric|id|bigint|NO|nextval(
etljobmetric|job_name|text|NO|
etljobmetric|processed_count|bigint|NO|0
etljobmetric|error_count|bigint|NO|0
etljobmetric|lag_seconds|numeric|YES|
etljobmetric|sampled_at|timestamp with time zone|NO|now()
";

/// `sluice postgres init --url URL --output json`: (table, created) in name order.
fn init(url: &str) -> Vec<(String, bool)> {
    let out = sluice_e2e::serve::sluice_ok(&["postgres", "init", "--url", url, "--output", "json"]);
    let report: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("postgres init --output json ({e}): {out}"));
    let shown = report["url"].as_str().unwrap_or_default();
    assert!(shown.contains("127.0.0.1:"), "the report's url: {report}");
    let mut tables: Vec<(String, bool)> = report["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("no tables in {report}"))
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap_or_default().to_string();
            let created = t["created"]
                .as_bool()
                .unwrap_or_else(|| panic!("`created` of {t}"));
            (name, created)
        })
        .collect();
    tables.sort();
    tables
}

#[test]
fn postgres_init_creates_the_seed_tables_once_as_the_seed_defines_them() {
    let Some(pg) = cluster() else { return };
    pg.exec(DB, "CREATE DATABASE init_test");
    let url = pg.url("init_test");
    let names = ["etlcheckpoint", "etldeadletter", "etljobmetric"];
    let created = |flag: bool| -> Vec<(String, bool)> {
        names.iter().map(|n| (n.to_string(), flag)).collect()
    };
    assert_eq!(init(&url), created(true), "the first run creates all three");
    assert_eq!(init(&url), created(false), "the second run creates none");

    let columns = pg.query(
        "init_test",
        "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
         FROM information_schema.columns
         WHERE table_schema = 'public'
           AND table_name IN ('etlcheckpoint', 'etldeadletter', 'etljobmetric')
         ORDER BY table_name, ordinal_position",
    );
    let seed: Vec<Vec<&str>> = SEED_COLUMNS
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').collect())
        .collect();
    assert_eq!(columns.len(), seed.len(), "columns: {columns:#?}");
    for (got, want) in columns.iter().zip(&seed) {
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .enumerate()
                .all(|(i, (g, w))| match (i, *w) {
                    (4, "nextval(") => g.starts_with("nextval("),
                    _ => g == w,
                });
        assert!(same, "column {got:?}, the seed has {want:?}");
    }

    let indexes: Vec<(String, String)> = pg
        .query(
            "init_test",
            "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'",
        )
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [table, def] => Some((table.clone(), def.clone())),
            _ => None,
        })
        .collect();
    let has = |table: &str, unique: bool, columns: &str| {
        indexes.iter().any(|(t, def)| {
            t == table && def.contains("UNIQUE INDEX") == unique && def.ends_with(columns)
        })
    };
    for table in names {
        assert!(
            has(table, true, "(id)"),
            "{table}'s primary key: {indexes:#?}"
        );
    }
    assert!(
        has("etlcheckpoint", true, "(consumer_group, topic, partition)"),
        "UNIQUE (consumer_group, topic, partition): {indexes:#?}"
    );
    assert!(
        has("etldeadletter", false, "(topic, created_at DESC)"),
        "the dead letters' index: {indexes:#?}"
    );
    assert!(
        has("etljobmetric", false, "(job_name, sampled_at DESC)"),
        "the metrics' index: {indexes:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A foreign record in the results topic

/// Another producer writes records into `<job>.results` that are not rows of the job's
/// results: each lands in `ETLDeadLetter` as `not_a_result_row` with its bytes and position,
/// the daemon goes on, and every real row still lands once.
#[test]
fn a_record_that_is_not_a_result_row_is_dead_lettered_and_the_sink_goes_on() {
    let Some(pg) = cluster() else { return };
    let s = Scenario::new(
        Kind::Stateless,
        2,
        &sink_toml(None, &pg.url(DB), TABLE, "append"),
    );
    let generated = generate(4_000, 29);
    let expected = expected_rows(&generated);
    let mut events = orders::by_region(generated, 2);
    let later = events.split_off(2_000);
    let mut daemon = s.spawn("a", &[]);
    produce(s.topic(), &events);
    wait_for_rows(&pg, &s, "a", 1);
    let results = s.topics().results;
    let bad: Vec<Outgoing> = vec![
        (0, Some(b"k1".to_vec()), b"not json".to_vec()),
        (
            1,
            Some(b"k2".to_vec()),
            br#"{"order_id":"x","region":"eu","amount":"#.to_vec(),
        ),
        (1, None, br#"{"order_id":"y"}{"order_id":"z"}"#.to_vec()),
    ];
    produce(&results, &bad);
    produce(s.topic(), &later);
    wait_for_rows(&pg, &s, "a", expected.len());
    let letters = || -> Vec<(i32, String, String)> {
        pg.query(
            DB,
            &format!(
                "SELECT partition, error_type, encode(raw_message, 'escape') FROM ETLDeadLetter
                 WHERE topic = {} ORDER BY partition, original_offset",
                literal(&results)
            ),
        )
        .into_iter()
        .map(|row| match row.as_slice() {
            [p, error, raw] => (int(p) as i32, error.clone(), raw.clone()),
            other => panic!("an ETLDeadLetter row: {other:?}"),
        })
        .collect()
    };
    eventually(
        Duration::from_secs(30),
        "three dead letters",
        || match letters().len() {
            3 => Ok(()),
            n => Err(format!("{n}")),
        },
    );
    let mut want: Vec<(i32, String, String)> = bad
        .iter()
        .map(|(p, _, v)| {
            (
                *p,
                "not_a_result_row".to_string(),
                String::from_utf8(v.clone()).unwrap(),
            )
        })
        .collect();
    want.sort();
    let mut got = letters();
    got.sort();
    assert_eq!(got, want, "each foreign record once, with its bytes");
    assert_rows_exactly_once(&pg, &s, &expected);
    assert!(
        log_tail(&s.log_path("a"), 200).contains("not_a_result_row"),
        "the log says why records were set aside"
    );
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
}
