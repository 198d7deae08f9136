//! Branching end to end: a real `sluice stream` routes a job's result rows to its `[[outputs]]`
//! topics by SQL predicate, in the transactions that write `<job>.results`, so that each row
//! reaches every output it matches exactly once, across a kill -9; a bad predicate stops the
//! daemon at start.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which expected rows an output holds.
type Selects = fn(&Expected) -> bool;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sluice_core::Job;
use sluice_core::fixture::{OrderGenerator, OrdersJob, T0_MS};
use sluice_core::topics::{Topics, stream_group};
use sluice_e2e::kafka::{
    Daemon, Outgoing, committed_offsets, create_topic, latest_by_key, produce, read_all,
    spawn_stream, unique, wait_until,
};
use sluice_e2e::orders::{self, canonical, watermark_pushers};

/// One test's job, source topic and directory.
struct Scenario {
    dir: tempfile::TempDir,
    job_file: PathBuf,
    job: Job,
    partitions: i32,
}

impl Scenario {
    /// An orders job running `sql` with view key `key` and the `outputs` TOML, over a new
    /// topic of `partitions` partitions.
    fn new(sql: &str, key: &str, outputs: &str, partitions: i32) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique("orders");
        let name = unique("branch").replace('-', "_");
        let toml = OrdersJob {
            name: &name,
            topic: &topic,
            key,
            ..OrdersJob::default()
        }
        .toml(sql)
            + outputs;
        let job_file = dir.path().join("job.toml");
        std::fs::write(&job_file, toml).unwrap();
        let job = Job::from_file(&job_file).unwrap();
        create_topic(&topic, partitions);
        Scenario {
            dir,
            job_file,
            job,
            partitions,
        }
    }

    fn topics(&self) -> Topics {
        Topics::for_job(&self.job)
    }

    /// The topic of output `name`.
    fn output_topic(&self, name: &str) -> String {
        self.topics()
            .outputs
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, topic)| topic)
            .unwrap_or_else(|| panic!("no output {name}"))
    }

    /// `sluice stream` logging to `<run>.log`; every run shares one state directory, as a
    /// restarted daemon does.
    fn spawn(&self, run: &str, extra: &[&str]) -> Daemon {
        let mut args = vec!["--no-lake-sink"];
        args.extend_from_slice(extra);
        spawn_stream(
            &self.job_file,
            &self.dir.path().join("lake"),
            &self.dir.path().join("state"),
            &self.dir.path().join(format!("{run}.log")),
            &args,
        )
    }

    fn log(&self, run: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{run}.log"))).unwrap_or_default()
    }

    /// The daemon's group's committed offset per source partition (-1 before any).
    fn committed(&self) -> Vec<i64> {
        let group = stream_group(&self.job.versioned_name());
        committed_offsets(&group, &self.job.spec.source.topic, self.partitions)
    }

    /// Whether the daemon's group has committed every one of `events`.
    fn all_committed(&self, events: &[Outgoing]) -> bool {
        let ends: Vec<i64> = (0..self.partitions)
            .map(|p| events.iter().filter(|e| e.0 == p).count() as i64)
            .collect();
        self.committed() == ends
    }
}

/// A topic's record values as sorted canonical JSON rows: a multiset, duplicates kept.
fn rows(topic: &str) -> Vec<String> {
    let mut rows: Vec<String> = read_all(topic)
        .iter()
        .map(|r| {
            let value = r.value.as_deref().unwrap_or_default();
            let row: Value = serde_json::from_slice(value)
                .unwrap_or_else(|e| panic!("{topic}: not a JSON row ({e})"));
            canonical(&row)
        })
        .collect();
    rows.sort();
    rows
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A plain HTTP/1.1 GET; the body as text.
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

const BRANCHES: &str = r#"
[[outputs]]
name = "big"
where = "amount >= 100"
[[outputs]]
name = "eu"
where = "region = 'eu'"
[[outputs]]
name = "rest"
else = true
"#;

/// One event's result row (what `SELECT order_id, region, amount` makes of it) and which
/// outputs it belongs to, decided here in Rust, independently of the SQL.
struct Expected {
    row: String,
    big: bool,
    eu: bool,
}

/// `count` orders over `partitions` partitions with amounts from 0 to 199.75 (both sides of
/// 100), one in 50 without a region and one in 50 without an amount (NULL matches nothing).
fn branch_events(count: usize, partitions: i32) -> (Vec<Outgoing>, Vec<Expected>) {
    let shape = orders::on_time_shape("b", T0_MS, 40);
    let mut events = Vec::with_capacity(count);
    let mut expected = Vec::with_capacity(count);
    for (i, order) in OrderGenerator::new(31, shape).take(count).enumerate() {
        let mut event = order.to_value();
        let amount = ((i * 7919) % 800) as f64 / 4.0;
        let region = (i % 50 != 0).then_some(order.region);
        let amount = (i % 50 != 1).then_some(amount);
        event.insert("region".into(), region.map_or(Value::Null, Value::from));
        event.insert("amount".into(), amount.map_or(Value::Null, Value::from));
        let mut row = serde_json::Map::new();
        for field in ["order_id", "region", "amount"] {
            row.insert(field.into(), event[field].clone());
        }
        expected.push(Expected {
            row: canonical(&Value::Object(row)),
            big: amount.is_some_and(|a| a >= 100.0),
            eu: region == Some("eu"),
        });
        let value = serde_json::to_vec(&Value::Object(event)).unwrap();
        let partition = (i % partitions as usize) as i32;
        events.push((partition, Some(order.order_id.into_bytes()), value));
    }
    (events, expected)
}

/// The sorted rows of `expected` that `keep` says belong to an output.
fn expected_rows(expected: &[Expected], keep: impl Fn(&Expected) -> bool) -> Vec<String> {
    let mut rows: Vec<String> = expected
        .iter()
        .filter(|&e| keep(e))
        .map(|e| e.row.clone())
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_stateless_jobs_rows_reach_each_matching_output_exactly_once_across_a_kill_9() {
    let s = Scenario::new(
        "SELECT order_id, region, amount FROM orders",
        "[]",
        BRANCHES,
        3,
    );
    let (events, expected) = branch_events(24_000, 3);
    let results_topic = s.topics().results;
    let producer = {
        let (topic, events) = (s.job.spec.source.topic.clone(), events.clone());
        std::thread::spawn(move || {
            for chunk in events.chunks(2_000) {
                produce(&topic, chunk);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let small_batches = ["--batch-size", "500"];
    let mut first = s.spawn("first", &small_batches);
    // Killed once it has committed micro-batches, while events are still coming.
    wait_until(
        Duration::from_secs(90),
        "the first committed micro-batch",
        || s.committed().iter().any(|&offset| offset > 0),
    );
    std::thread::sleep(Duration::from_millis(
        StdRng::seed_from_u64(41).random_range(200..1_500),
    ));
    first.kill();
    eprintln!(
        "killed sluice stream with offsets {:?} of {} events committed",
        s.committed(),
        events.len()
    );
    let metrics_addr = free_address();
    let mut args = small_batches.to_vec();
    args.extend(["--metrics-addr", metrics_addr.as_str()]);
    let mut second = s.spawn("second", &args);
    producer.join().unwrap();
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            Duration::from_secs(240),
            "every event to be committed",
            || s.all_committed(&events),
        )
    }));
    if done.is_err() {
        panic!(
            "not every event was committed\nfirst run:\n{}\nsecond run:\n{}",
            s.log("first"),
            s.log("second")
        );
    }

    let all = expected_rows(&expected, |_| true);
    assert_eq!(
        rows(&results_topic),
        all,
        "<job>.results holds every row, once"
    );
    let cases: [(&str, Selects); 3] = [
        ("big", |e| e.big),
        ("eu", |e| e.eu),
        ("rest", |e| !e.big && !e.eu),
    ];
    for (name, keep) in cases {
        let wanted = expected_rows(&expected, keep);
        assert!(!wanted.is_empty(), "{name}: the events reach every output");
        let got = rows(&s.output_topic(name));
        if got != wanted {
            let missing = wanted.iter().filter(|r| !got.contains(r)).count();
            let unexpected = got.iter().filter(|r| !wanted.contains(r)).count();
            panic!(
                "output {name}: {} rows, expected {} ({missing} missing, {unexpected} unexpected, the rest duplicated)",
                got.len(),
                wanted.len()
            );
        }
    }
    let both = expected.iter().filter(|e| e.big && e.eu).count();
    assert!(both > 0, "some rows belong to both big and eu");

    let metrics = http_get(&metrics_addr, "/metrics");
    for name in ["big", "eu", "rest"] {
        let line = format!(
            "sluice_records_out_total{{job=\"{}\",topic=\"{}\"}}",
            s.job.name(),
            s.output_topic(name)
        );
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    assert!(second.terminate().success(), "SIGTERM exits 0");
}

const ORDERS_PER_REGION_MINUTE: &str =
    "SELECT region, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start,
  TUMBLE_END(event_time, INTERVAL '1' MINUTE) AS window_end, COUNT(*) AS order_count
FROM orders WHERE status = 'completed'
GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)";

#[test]
fn an_aggregates_output_holds_exactly_the_results_its_predicate_selects() {
    let outputs = r#"
[[outputs]]
name = "busy"
where = "order_count > 3"
"#;
    let s = Scenario::new(ORDERS_PER_REGION_MINUTE, r#"["region"]"#, outputs, 3);
    // An order every 2 s over 6 regions, 80% completed: about 4 a region and minute, so the
    // predicate splits the windows.
    let count = 6_000;
    let shape = orders::on_time_shape("w", T0_MS, 2_000);
    let mut events = orders::by_region(OrderGenerator::new(5, shape).take(count), 3);
    events.extend(watermark_pushers(3, T0_MS + count as i64 * 2_000 + 600_000));
    let truth = orders::truth(&s.job, &events);
    produce(&s.job.spec.source.topic, &events);
    let mut daemon = s.spawn("a", &[]);
    let results_topic = s.topics().results;
    let latest = || -> Vec<String> {
        let mut rows: Vec<String> = latest_by_key(&read_all(&results_topic))
            .into_values()
            .map(|v| canonical(&serde_json::from_slice(&v).unwrap()))
            .collect();
        rows.sort();
        rows
    };
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            Duration::from_secs(180),
            "every event to be committed",
            || s.all_committed(&events),
        );
        wait_until(
            Duration::from_secs(60),
            "the results to equal the truth",
            || latest() == truth,
        )
    }));
    if done.is_err() {
        panic!(
            "results differ from the truth ({} vs {} rows)\nlog:\n{}",
            latest().len(),
            truth.len(),
            s.log("a")
        );
    }

    let records = |topic: &str| -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
        let mut records: Vec<_> = read_all(topic)
            .into_iter()
            .map(|r| (r.key, r.value.unwrap_or_default()))
            .collect();
        records.sort();
        records
    };
    let busy: Vec<_> = records(&results_topic)
        .into_iter()
        .filter(|(_, value)| {
            let row: Value = serde_json::from_slice(value).unwrap();
            row["order_count"].as_i64().unwrap() > 3
        })
        .collect();
    assert!(
        !busy.is_empty() && busy.len() < truth.len(),
        "the predicate splits the windows: {} of {}",
        busy.len(),
        truth.len()
    );
    assert_eq!(
        records(&s.output_topic("busy")),
        busy,
        "the output holds the results with order_count > 3, with their result keys"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn a_predicate_naming_an_unknown_column_stops_the_daemon_at_start() {
    let outputs = r#"
[[outputs]]
name = "bad"
where = "nope > 1"
"#;
    let s = Scenario::new(
        "SELECT order_id, region, amount FROM orders",
        "[]",
        outputs,
        1,
    );
    let mut daemon = s.spawn("a", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sluice stream still runs with a bad predicate:\n{}",
            s.log("a")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = s.log("a");
    assert!(!status.success(), "exit status {status}:\n{log}");
    assert!(log.contains("outputs[0].where"), "{log}");
    assert!(log.contains("No field named nope"), "{log}");
    assert!(
        !log.contains("speed layer started"),
        "it stopped before starting:\n{log}"
    );
}
