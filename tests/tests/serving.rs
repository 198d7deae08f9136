//! The serving layer end to end: real `sluice stream` and `sluice serve` processes against the
//! run's real broker and a real lake directory, checked against full recomputes of the same
//! events (an independent `sluice lake load` + `sluice backfill` + `sluice view` into a scratch
//! lake, or the shared plan run in-process), before and after batch runs move the cutoff.
//!
//! Rows are compared as canonical JSON text (keys sorted, RFC 3339 times normalized, numbers
//! normalized). Amounts are multiples of 0.25, so every SUM is exact whatever order the two
//! layers add in, and AVG (count and sum states, then one division) is exact too: no tolerance.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type};
use serde_json::{Value, json};
use sluice_core::fixture::{OrderGenerator, T0_MS};
use sluice_core::lake::{CUTOFF_KEY, TableLocation};
use sluice_core::rows::to_json_lines;
use sluice_core::time::{format_time, parse_time};
use sluice_core::{Job, JsonDecoder, Lake, Pipeline};
use sluice_e2e::http::{get, post_json, try_get};
use sluice_e2e::kafka::{
    Daemon, Outgoing, bootstrap, committed_offsets, create_topic, produce, read_all, sluice_bin,
    spawn_stream, unique, wait_until,
};
use sluice_e2e::orders::{self, canonical, canonical_lines, watermark_pushers};
use sluice_e2e::serve::{
    job_status, log_tail, serve_log, sluice, sluice_ok, spawn_demo, spawn_serve, wait_caught_up,
    wait_healthy, wait_status,
};
use sluice_e2e::wait_raw_rows;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const TOKEN: &str = "secret";
const LONG: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Jobs and events

#[derive(Clone, Copy)]
enum Kind {
    /// Completed orders per region and one-minute tumbling window (view key `region`).
    RegionPerMinute,
    /// Completed orders per one-minute tumbling window: seed 000's query (no view key).
    PerMinute,
    /// A running total per region, no window (view key `region`).
    RegionTotals,
}

/// A job file with a unique name in a test's directory.
struct JobFile {
    path: PathBuf,
    job: Job,
}

impl JobFile {
    fn name(&self) -> &str {
        self.job.name()
    }
}

fn write_job(dir: &Path, kind: Kind, topic: &str) -> JobFile {
    let name = unique("srv").replace('-', "_");
    let (sql, key) = match kind {
        Kind::RegionPerMinute => (orders::REGION_PER_MINUTE_SQL, r#"["region"]"#),
        Kind::PerMinute => (
            "SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start,
  TUMBLE_END(event_time, INTERVAL '1' MINUTE) AS window_end,
  COUNT(*) AS total_orders, SUM(amount) AS total_revenue, AVG(amount) AS avg_order_value
FROM orders WHERE status = 'completed'
GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE)",
            "[]",
        ),
        Kind::RegionTotals => (
            "SELECT region, SUM(amount) AS total, COUNT(*) AS orders
FROM orders WHERE status = 'completed'
GROUP BY region",
            r#"["region"]"#,
        ),
    };
    let toml = orders::job_toml(&name, topic, sql, key, "1h");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    let job = Job::from_file(&path).unwrap();
    JobFile { path, job }
}

/// `count` orders from `start_ms` (2024-05-01T10:00:00Z in these tests: long past, so
/// cutoffs are meaningful), `step_ms` apart, each up to 3 s early (less than the 5 s watermark
/// delay: nothing is late), keyed and partitioned by region. Amounts are multiples of 0.25, so
/// sums are exact in any order. Ids are `o<seed>-<i>`: unique across the seeds of one topic.
fn orders(count: usize, partitions: i32, start_ms: i64, step_ms: i64, seed: u64) -> Vec<Outgoing> {
    let shape = orders::on_time_shape(format!("o{seed}-"), start_ms, step_ms);
    orders::by_region(OrderGenerator::new(seed, shape).take(count), partitions)
}

fn completed(events: &[Outgoing]) -> Vec<Value> {
    events
        .iter()
        .map(|(_, _, v)| serde_json::from_slice::<Value>(v).unwrap())
        .filter(|v| v["status"] == "completed")
        .collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn write_jsonl(path: &Path, events: &[Outgoing]) {
    let mut text = Vec::new();
    for (_, _, value) in events {
        text.extend_from_slice(value);
        text.push(b'\n');
    }
    std::fs::write(path, text).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Ground truth

/// The full recompute, independent of the speed and serving layers: the events loaded from a
/// file into a scratch lake with `sluice lake load`, `sluice backfill` over all of it, and the
/// finalized rows printed by `sluice view`.
fn recompute_with_cli(dir: &Path, job_file: &Path, events: &[Outgoing]) -> Vec<String> {
    let scratch = dir.join("recompute-lake");
    let input = dir.join("recompute.jsonl");
    write_jsonl(&input, events);
    let (job, lake, input) = (path_str(job_file), path_str(&scratch), path_str(&input));
    sluice_ok(&["lake", "load", "--job", job, "--lake", lake, input]);
    sluice_ok(&["backfill", "--job", job, "--lake", lake]);
    canonical_lines(&sluice_ok(&["view", "--job", job, "--lake", lake]))
}

/// The full recompute in-process: every event through the shared plan at once, finalized.
fn truth(job: &Job, events: &[Outgoing]) -> Vec<String> {
    let pipeline = Pipeline::compile(job, None).unwrap();
    let stage = pipeline.plan().aggregate().unwrap();
    let payloads: Vec<&[u8]> = events.iter().map(|(_, _, v)| v.as_slice()).collect();
    let decoded = JsonDecoder::new(job).decode(&payloads).unwrap();
    assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
    let partial = stage
        .partial(&pipeline.filtered(&decoded.batch).unwrap())
        .unwrap();
    let rows = stage.finalize(&[partial]).unwrap();
    canonical_lines(&String::from_utf8(to_json_lines(&[rows]).unwrap()).unwrap())
}

fn assert_same_rows(actual: &[String], expected: &[String], what: &str) {
    if actual == expected {
        return;
    }
    let a: BTreeSet<&String> = actual.iter().collect();
    let e: BTreeSet<&String> = expected.iter().collect();
    let missing: Vec<_> = e.difference(&a).take(5).collect();
    let unexpected: Vec<_> = a.difference(&e).take(5).collect();
    panic!(
        "{what}: {} rows served ({} distinct), {} expected\nmissing: {missing:#?}\nunexpected: {unexpected:#?}",
        actual.len(),
        a.len(),
        expected.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Processes, the lake and the serving API

/// Waits until the speed daemon's group (`sluice-<job>`) has committed every one of `total`
/// records of the job's fresh topic.
fn wait_stream_caught_up(job: &JobFile, partitions: i32, total: usize, stream_log: &Path) {
    let group = format!("sluice-{}", job.name());
    let topic = job.job.spec.source.topic.clone();
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(LONG, "the speed daemon to commit every record", || {
            let committed: i64 = committed_offsets(&group, &topic, partitions)
                .iter()
                .filter(|o| **o > 0)
                .sum();
            committed == total as i64
        })
    }));
    if done.is_err() {
        panic!("sluice stream log:\n{}", log_tail(stream_log, 40));
    }
}

fn spawn_stream_for(dir: &Path, job: &JobFile, lake: &Path, extra: &[&str]) -> (Daemon, PathBuf) {
    let log = dir.join(format!("stream-{}.log", job.name()));
    let daemon = spawn_stream(
        &job.path,
        lake,
        &dir.join(format!("state-{}", job.name())),
        &log,
        extra,
    );
    (daemon, log)
}

/// `sluice backfill --output json` on `lake`, to `to` (default: up to now); the report.
fn backfill(job: &JobFile, lake: &Path, to: Option<&str>) -> Value {
    let mut args = vec![
        "backfill",
        "--job",
        path_str(&job.path),
        "--lake",
        path_str(lake),
        "--output",
        "json",
    ];
    if let Some(to) = to {
        args.extend(["--to", to]);
    }
    let out = sluice_ok(&args);
    let line = out.lines().rev().find(|l| l.trim_start().starts_with('{'));
    serde_json::from_str(line.unwrap_or_else(|| panic!("no JSON report from backfill: {out}")))
        .unwrap()
}

/// `GET /v1/jobs/{job}/view?{query}` (200 asserted), checking the answer's shape.
fn view(addr: &str, job: &str, query: &str, token: Option<&str>) -> Value {
    let r = get(addr, &format!("/v1/jobs/{job}/view?{query}"), token);
    assert_eq!(r.status, 200, "view of {job} with `{query}`: {}", r.body);
    let answer = r.json();
    for field in [
        "job",
        "cutoff",
        "cutoff_us",
        "watermark",
        "watermark_us",
        "freshness_ms",
        "count",
        "truncated",
        "rows",
    ] {
        assert!(
            answer.get(field).is_some(),
            "view answer lacks `{field}`: {answer}"
        );
    }
    assert_eq!(answer["job"], job);
    for row in answer["rows"].as_array().expect("rows array") {
        let origin = row["origin"].as_str().expect("origin");
        assert!(
            ["batch", "speed", "merged"].contains(&origin),
            "origin {origin}"
        );
        assert!(row["row"].is_object(), "row object: {row}");
    }
    answer
}

/// The whole view (limit 100000): not truncated, `count` = rows returned.
fn full_view(addr: &str, job: &str, token: Option<&str>) -> Value {
    let answer = view(addr, job, "limit=100000", token);
    assert_eq!(answer["truncated"], false, "a full view is not truncated");
    assert_eq!(
        answer["count"].as_u64(),
        Some(answer["rows"].as_array().unwrap().len() as u64),
        "count = rows returned"
    );
    answer
}

fn served_rows(answer: &Value) -> Vec<String> {
    let mut rows: Vec<String> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| canonical(&r["row"]))
        .collect();
    rows.sort();
    rows
}

/// Polls the full view until its rows equal `expected`; on timeout, panics with the difference.
fn wait_for_view(addr: &str, job: &str, expected: &[String], what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = full_view(addr, job, None);
        let rows = served_rows(&answer);
        if rows == expected {
            return answer;
        }
        if Instant::now() > deadline {
            assert_same_rows(&rows, expected, what);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until both the job status and a view answer carry `cutoff_us`; the view answer.
fn wait_for_cutoff(addr: &str, job: &str, cutoff_us: i64) -> Value {
    let status = wait_status(
        addr,
        job,
        None,
        Duration::from_secs(60),
        "the new cutoff",
        |s| s["cutoff_us"].as_i64() == Some(cutoff_us),
    );
    assert_eq!(
        status["cutoff"].as_str().map(|c| parse_time(c).unwrap()),
        Some(cutoff_us),
        "cutoff (RFC 3339) and cutoff_us agree: {status}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = full_view(addr, job, None);
        if answer["cutoff_us"].as_i64() == Some(cutoff_us) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the view answer never showed cutoff {cutoff_us}: {}",
            answer["cutoff_us"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn window_start_us(row: &Value) -> i64 {
    parse_time(row["window_start"].as_str().expect("window_start text")).unwrap()
}

/// Every row's origin follows from its window and the cutoff: one-minute windows never
/// straddle an hour bucket, so a row is `batch` before the cutoff and `speed` from it on.
fn assert_origins(answer: &Value, cutoff_us: Option<i64>) {
    for r in answer["rows"].as_array().unwrap() {
        let start = window_start_us(&r["row"]);
        let expected = match cutoff_us {
            Some(c) if start < c => "batch",
            _ => "speed",
        };
        assert_eq!(
            r["origin"],
            expected,
            "origin of the row at {} with cutoff {cutoff_us:?}: {r}",
            format_time(start)
        );
    }
}

fn origin_counts(answer: &Value) -> (usize, usize, usize) {
    let rows = answer["rows"].as_array().unwrap();
    let count = |o: &str| rows.iter().filter(|r| r["origin"] == o).count();
    (count("batch"), count("speed"), count("merged"))
}

fn assert_status_rows(status: &Value, (batch, speed, merged): (usize, usize, usize)) {
    assert_eq!(
        (
            status["rows"]["batch"].as_u64(),
            status["rows"]["speed"].as_u64(),
            status["rows"]["merged"].as_u64()
        ),
        (Some(batch as u64), Some(speed as u64), Some(merged as u64)),
        "rows by origin in the job status: {status}"
    );
}

/// The served row of view key `region` and window start `start_us`: (origin, row).
fn row_at(answer: &Value, region: &str, start_us: i64) -> Option<(String, Value)> {
    answer["rows"].as_array().unwrap().iter().find_map(|r| {
        (r["row"]["region"] == region && window_start_us(&r["row"]) == start_us)
            .then(|| (r["origin"].as_str().unwrap().to_string(), r["row"].clone()))
    })
}

fn assert_error(response: &sluice_e2e::http::Response, status: u16, codes: &[&str], what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.body);
    let body = response.json();
    let code = body["error"].as_str().unwrap_or_default();
    assert!(
        codes.contains(&code),
        "{what}: error `{code}`, expected one of {codes:?}: {body}"
    );
    assert!(
        !body["message"].as_str().unwrap_or_default().is_empty(),
        "{what}: errors carry a message: {body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn merged_view_equals_full_recompute_before_and_after_backfill() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("orders");
    create_topic(&topic, 2);
    let job = write_job(dir.path(), Kind::RegionPerMinute, &topic);
    let name = job.name().to_string();
    // Four hours of event time, 2024-05-01 10:00 to 14:00.
    let events = orders(6_000, 2, T0_MS, 2_400, 21);
    let expected = recompute_with_cli(dir.path(), &job.path, &events);
    assert!(expected.len() > 1000, "{} rows", expected.len());

    produce(&topic, &events);
    let lake = dir.path().join("lake");
    let (mut stream, stream_log) = spawn_stream_for(dir.path(), &job, &lake, &[]);
    wait_stream_caught_up(&job, 2, events.len(), &stream_log);
    let (mut serve, addr) = spawn_serve(&[&job.path], &lake, &["--batch-poll", "500ms"]);
    let health = wait_healthy(&addr, LONG);
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["jobs"][&name]["ready"], true, "{health}");
    assert_eq!(health["loading"], json!([]), "{health}");
    // Ready before any backfill: a view table that does not exist yet is an empty batch view.
    let status = job_status(&addr, &name, None);
    assert_eq!(status["loading"], json!([]), "{status}");
    assert_eq!(status["cutoff"], Value::Null, "{status}");
    wait_caught_up(&addr, &name, None, LONG);

    // No batch run yet: everything comes from the speed layer.
    let answer = wait_for_view(
        &addr,
        &name,
        &expected,
        "the merged view before any backfill",
    );
    assert!(
        answer["cutoff"].is_null() && answer["cutoff_us"].is_null(),
        "{}",
        answer["cutoff"]
    );
    assert_origins(&answer, None);
    let status = job_status(&addr, &name, None);
    assert_status_rows(&status, (0, expected.len(), 0));
    assert!(
        status["cutoff_us"].is_null() && status["last_batch_run"].is_null(),
        "{status}"
    );
    assert!(status["watermark_us"].as_i64().is_some(), "{status}");
    // Sorted by key, then window start.
    let order: Vec<(String, i64)> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["row"]["region"].as_str().unwrap().to_string(),
                window_start_us(&r["row"]),
            )
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "rows sorted by key then window start"
    );

    // The batch layer takes the first two hours: the cutoff moves into the middle.
    wait_raw_rows(&lake, &job.job, events.len(), LONG);
    let mid_us = parse_time("2024-05-01T12:00:00Z").unwrap();
    let report = backfill(&job, &lake, Some("2024-05-01T12:00:00Z"));
    assert_eq!(report["cutoff_us"].as_i64(), Some(mid_us), "{report}");
    let answer = wait_for_cutoff(&addr, &name, mid_us);
    assert_same_rows(
        &served_rows(&answer),
        &expected,
        "the merged view with the cutoff at 12:00",
    );
    assert_origins(&answer, Some(mid_us));
    let (batch, speed, merged) = origin_counts(&answer);
    assert!(
        batch > 0 && speed > 0 && merged == 0,
        "{batch} batch, {speed} speed rows"
    );
    let status = wait_status(
        &addr,
        &name,
        None,
        Duration::from_secs(30),
        "row counts",
        |s| s["rows"]["batch"].as_u64() == Some(batch as u64),
    );
    assert_status_rows(&status, (batch, speed, 0));
    assert!(
        status["last_batch_run"]["version"].as_i64().is_some(),
        "last_batch_run after a backfill: {status}"
    );

    // Filters: one key; a window range across the cutoff (RFC 3339 and epoch ms); a date.
    let eu = view(&addr, &name, "key=eu&limit=100000", None);
    let expected_eu: Vec<String> = expected
        .iter()
        .filter(|r| r.contains(r#""region":"eu""#))
        .cloned()
        .collect();
    assert!(!expected_eu.is_empty());
    assert_same_rows(&served_rows(&eu), &expected_eu, "key=eu");
    let (from_us, to_us) = (
        mid_us - 30 * MINUTE_MS * 1000,
        mid_us + 30 * MINUTE_MS * 1000,
    );
    let ranged = view(
        &addr,
        &name,
        &format!("from=2024-05-01T11:30:00Z&to={}&limit=100000", to_us / 1000),
        None,
    );
    let in_range: Vec<String> = expected
        .iter()
        .filter(|r| {
            let start = window_start_us(&serde_json::from_str(r).unwrap());
            (from_us..to_us).contains(&start)
        })
        .cloned()
        .collect();
    assert_same_rows(&served_rows(&ranged), &in_range, "from 11:30 to 12:30");
    let (b, s, _) = origin_counts(&ranged);
    assert!(b > 0 && s > 0, "the range spans both layers");
    let whole_day = view(
        &addr,
        &name,
        "from=2024-05-01&to=2024-05-02&limit=100000",
        None,
    );
    assert_same_rows(&served_rows(&whole_day), &expected, "a date range");
    let limited = view(&addr, &name, "limit=10", None);
    assert_eq!(limited["rows"].as_array().unwrap().len(), 10);
    assert_eq!(limited["truncated"], true);

    // A backfill up to now stops where the raw table is complete: the last hour's bucket
    // ends after the slowest partition's watermark (its newest event minus the 5 s delay), so
    // it stays with the speed layer; still the same rows.
    let report = backfill(&job, &lake, None);
    let until = report["lake_complete_until_us"]
        .as_i64()
        .expect("lake_complete_until after a streamed lake");
    let full_us = report["cutoff_us"]
        .as_i64()
        .expect("cutoff after a full backfill");
    assert_eq!(full_us, (T0_MS + 3 * HOUR_MS) * 1000, "{report}");
    assert!(
        (full_us..full_us + HOUR_MS * 1000).contains(&until),
        "{report}"
    );
    assert!(report["clamped_from"].is_string(), "{report}");
    let answer = wait_for_cutoff(&addr, &name, full_us);
    assert_same_rows(
        &served_rows(&answer),
        &expected,
        "the merged view after a backfill up to now",
    );
    assert_origins(&answer, Some(full_us));
    let (batch, speed, merged) = origin_counts(&answer);
    assert!(
        batch > 0 && speed > 0 && merged == 0,
        "{batch} {speed} {merged}"
    );

    assert!(
        serve.terminate().success(),
        "sluice serve exits 0 on SIGTERM:\n{}",
        log_tail(&serve_log(&lake), 30)
    );
    assert!(stream.terminate().success());
}

/// `sluice ingest` (the raw-lake sink alone) for `job`, logging to `<dir>/ingest.log`, with
/// its metrics on `metrics_addr`.
fn spawn_ingest(dir: &Path, job: &JobFile, lake: &Path, metrics_addr: &str) -> Daemon {
    let log = std::fs::File::create(dir.join("ingest.log")).unwrap();
    std::process::Command::new(sluice_bin())
        .args(["ingest", "--job", path_str(&job.path), "--brokers"])
        .arg(bootstrap())
        .args(["--lake", path_str(lake), "--lake-commit-interval", "1s"])
        .args(["--metrics-addr", metrics_addr])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map(Daemon)
        .expect("spawning sluice ingest")
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The event time before which `events` are all in, per the rule of
/// `sluice_core::lake_progress`: the slowest partition's newest event minus the 5 s delay (µs).
fn complete_until_us(events: &[Outgoing], partitions: i32) -> i64 {
    (0..partitions)
        .map(|p| {
            events
                .iter()
                .filter(|(partition, _, _)| *partition == p)
                .map(|(_, _, v)| {
                    serde_json::from_slice::<Value>(v).unwrap()["event_time"]
                        .as_i64()
                        .unwrap()
                })
                .max()
                .expect("events in every partition")
        })
        .min()
        .unwrap()
        .saturating_sub(5_000)
        * 1000
}

#[test]
fn a_backfill_stops_where_the_lake_is_complete_and_the_merge_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("orders");
    create_topic(&topic, 2);
    let job = write_job(dir.path(), Kind::RegionPerMinute, &topic);
    let name = job.name().to_string();
    // 10:00 to 11:30 reaches the lake first; 11:30 to 13:00 is held back from it.
    let first = orders(2_250, 2, T0_MS, 2_400, 31);
    let second = orders(2_250, 2, T0_MS + 90 * MINUTE_MS, 2_400, 32);
    let all: Vec<Outgoing> = first.iter().chain(&second).cloned().collect();
    let expected = truth(&job.job, &all);
    let lake = dir.path().join("lake");
    produce(&topic, &first);
    let metrics = free_address();
    let mut ingest = spawn_ingest(dir.path(), &job, &lake, &metrics);
    wait_raw_rows(&lake, &job.job, first.len(), LONG);
    let first_until = complete_until_us(&first, 2);
    let gauge = format!("sluice_lake_complete_until_seconds{{job=\"{name}\"}}");
    wait_until(LONG, "the sink's completeness gauge", || {
        try_get(&metrics, "/metrics", None).is_ok_and(|r| {
            r.body.lines().any(|l| {
                l.strip_prefix(gauge.as_str())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|v| (v * 1e6).round() as i64 == first_until)
            })
        })
    });
    assert!(
        ingest.terminate().success(),
        "sluice ingest exits 0 on SIGTERM"
    );

    // The lake sink is stopped: the speed layer alone sees the next 90 minutes.
    produce(&topic, &second);
    let (mut stream, stream_log) = spawn_stream_for(dir.path(), &job, &lake, &["--no-lake-sink"]);
    wait_stream_caught_up(&job, 2, all.len(), &stream_log);
    let (mut serve, addr) = spawn_serve(&[&job.path], &lake, &["--batch-poll", "500ms"]);
    wait_healthy(&addr, LONG);
    wait_caught_up(&addr, &name, None, LONG);
    wait_for_view(
        &addr,
        &name,
        &expected,
        "the merged view before any backfill",
    );

    // Asked for everything, the backfill stops at the bucket floor of what the lake holds:
    // without the clamp the cutoff would pass 11:30 to 13:00, which only the speed view has.
    let report = backfill(&job, &lake, Some("2024-05-01T13:00:00Z"));
    assert_eq!(
        report["lake_complete_until_us"].as_i64(),
        Some(first_until),
        "{report}"
    );
    assert_eq!(report["clamped_from"], "2024-05-01T13:00:00Z", "{report}");
    assert_eq!(report["to"], "2024-05-01T11:00:00Z", "{report}");
    let cutoff = (T0_MS + HOUR_MS) * 1000;
    assert_eq!(report["cutoff_us"].as_i64(), Some(cutoff), "{report}");
    let answer = wait_for_cutoff(&addr, &name, cutoff);
    assert_same_rows(
        &served_rows(&answer),
        &expected,
        "the merged view after a backfill the lake held back",
    );
    let status = wait_status(&addr, &name, None, LONG, "lake_complete_until", |s| {
        s["lake_complete_until_us"].as_i64() == Some(first_until)
    });
    assert_eq!(
        status["lake_complete_until"]
            .as_str()
            .map(|t| parse_time(t).unwrap()),
        Some(first_until),
        "{status}"
    );

    // A range that lies wholly past what the lake holds: nothing to do yet, exit 4.
    let out = sluice(&[
        "backfill",
        "--job",
        path_str(&job.path),
        "--lake",
        path_str(&lake),
        "--from",
        "2024-05-01T11:00:00Z",
        "--to",
        "2024-05-01T12:00:00Z",
        "--output",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refusal: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refusal["status"], "incomplete", "{refusal}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-incomplete"),
        "the refusal names the override"
    );

    // The lake catches up; a backfill up to now moves the cutoff as far as it now holds.
    let mut ingest = spawn_ingest(dir.path(), &job, &lake, &free_address());
    wait_raw_rows(&lake, &job.job, all.len(), LONG);
    let report = backfill(&job, &lake, None);
    let all_until = complete_until_us(&all, 2);
    assert_eq!(
        report["lake_complete_until_us"].as_i64(),
        Some(all_until),
        "{report}"
    );
    let cutoff = (T0_MS + 2 * HOUR_MS) * 1000;
    assert_eq!(report["cutoff_us"].as_i64(), Some(cutoff), "{report}");
    let answer = wait_for_cutoff(&addr, &name, cutoff);
    assert_same_rows(
        &served_rows(&answer),
        &expected,
        "the merged view once the lake caught up",
    );
    assert!(ingest.terminate().success());
    assert!(serve.terminate().success());
    assert!(stream.terminate().success());
}

#[test]
fn late_event_is_absent_from_speed_until_the_next_backfill() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("orders");
    create_topic(&topic, 1);
    let job = write_job(dir.path(), Kind::RegionPerMinute, &topic);
    let name = job.name().to_string();
    // Two hours (10:00 to 12:00), then a record at 12:10 that closes every window.
    let mut events = orders(1_200, 1, T0_MS, 6_000, 5);
    events.extend(watermark_pushers(1, T0_MS + 2 * HOUR_MS + 10 * MINUTE_MS));
    // Far behind the watermark (12:09:55) and its 30 s lateness, in the 10:00 window.
    let window_us = T0_MS * 1000;
    let late: Outgoing = (
        0,
        Some(b"eu".to_vec()),
        format!(
            r#"{{"order_id":"late-1","region":"eu","amount":1000.25,"status":"completed","event_time":{}}}"#,
            T0_MS + 30_000
        )
        .into_bytes(),
    );
    let without_late = truth(&job.job, &events);
    let mut all = events.clone();
    all.push(late.clone());
    let with_late = truth(&job.job, &all);
    assert_ne!(without_late, with_late);

    produce(&topic, &events);
    let lake = dir.path().join("lake");
    let (mut stream, stream_log) = spawn_stream_for(dir.path(), &job, &lake, &[]);
    wait_stream_caught_up(&job, 1, events.len(), &stream_log);
    let (mut serve, addr) = spawn_serve(&[&job.path], &lake, &["--batch-poll", "500ms"]);
    wait_healthy(&addr, LONG);
    wait_caught_up(&addr, &name, None, LONG);
    let before = wait_for_view(
        &addr,
        &name,
        &without_late,
        "the speed view before the late event",
    );
    assert_origins(&before, None);
    let window_before = row_at(&before, "eu", window_us);

    produce(&topic, std::slice::from_ref(&late));
    let late_topic = format!("{name}.late");
    wait_until(
        Duration::from_secs(60),
        "the late event in <job>.late",
        || !read_all(&late_topic).is_empty(),
    );
    assert_eq!(read_all(&late_topic).len(), 1);
    wait_stream_caught_up(&job, 1, events.len() + 1, &stream_log);
    wait_caught_up(&addr, &name, None, LONG);
    let after_late = full_view(&addr, &name, None);
    assert_same_rows(
        &served_rows(&after_late),
        &without_late,
        "the view after a late event (the speed layer leaves it out)",
    );
    assert_eq!(
        row_at(&after_late, "eu", window_us),
        window_before,
        "the 10:00 eu row is unchanged"
    );

    // The raw sink landed it; a backfill of its bucket brings it in.
    wait_raw_rows(&lake, &job.job, all.len(), LONG);
    let cutoff_us = parse_time("2024-05-01T11:00:00Z").unwrap();
    let report = backfill(&job, &lake, Some("2024-05-01T11:00:00Z"));
    assert_eq!(report["cutoff_us"].as_i64(), Some(cutoff_us), "{report}");
    let answer = wait_for_cutoff(&addr, &name, cutoff_us);
    assert_same_rows(
        &served_rows(&answer),
        &with_late,
        "the view after the backfill",
    );
    assert_origins(&answer, Some(cutoff_us));
    let (origin, row) = row_at(&answer, "eu", window_us).expect("the 10:00 eu row");
    assert_eq!(origin, "batch");
    let count_before = window_before.map_or(0, |(_, r)| r["total_orders"].as_i64().unwrap());
    assert_eq!(
        row["total_orders"].as_i64(),
        Some(count_before + 1),
        "{row}"
    );

    assert!(serve.terminate().success());
    assert!(stream.terminate().success());
}

// ---------------------------------------------------------------------------------------------
// A running server's API. Its errors, refusals, auth and readiness are checked in-process against
// the router (`serving/src/api/tests.rs`); these check what needs the real binary, broker and
// lake, each test serving its own jobs.

/// `sluice serve` for some jobs over one fresh topic of 30 minutes of orders, every job's speed
/// daemon caught up on all of them, the server healthy.
struct Served {
    _dir: tempfile::TempDir,
    topic: String,
    jobs: Vec<JobFile>,
    events: Vec<Outgoing>,
    lake: PathBuf,
    streams: Vec<Daemon>,
    serve: Daemon,
    addr: String,
}

/// Serves one job of each of `kinds` with `sluice serve <extra>`. The jobs share the topic, so
/// none lands raw rows (the raw table is per topic).
fn serve_orders(kinds: &[Kind], extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("orders");
    create_topic(&topic, 1);
    let jobs: Vec<JobFile> = kinds
        .iter()
        .map(|&kind| write_job(dir.path(), kind, &topic))
        .collect();
    let events = orders(600, 1, T0_MS, 3_000, 9);
    produce(&topic, &events);
    let lake = dir.path().join("lake");
    let mut streams = Vec::new();
    for job in &jobs {
        let (daemon, log) = spawn_stream_for(dir.path(), job, &lake, &["--no-lake-sink"]);
        wait_stream_caught_up(job, 1, events.len(), &log);
        streams.push(daemon);
    }
    let files: Vec<&Path> = jobs.iter().map(|j| j.path.as_path()).collect();
    let (serve, addr) = spawn_serve(&files, &lake, extra);
    let health = wait_healthy(&addr, LONG);
    for job in &jobs {
        assert_eq!(health["jobs"][job.name()]["ready"], true, "{health}");
    }
    Served {
        _dir: dir,
        topic,
        jobs,
        events,
        lake,
        streams,
        serve,
        addr,
    }
}

impl Served {
    fn name(&self, job: usize) -> &str {
        self.jobs[job].name()
    }

    /// Stops `sluice serve` and the speed daemons, asserting each exits 0.
    fn stop(self) {
        let Served {
            mut serve,
            streams,
            lake,
            ..
        } = self;
        assert!(
            serve.terminate().success(),
            "{}",
            log_tail(&serve_log(&lake), 30)
        );
        for mut daemon in streams {
            assert!(daemon.terminate().success());
        }
    }
}

#[test]
fn a_token_guards_the_v1_api_and_leaves_the_probes_open() {
    let served = serve_orders(&[Kind::RegionTotals], &["--token", TOKEN]);
    let (addr, job) = (served.addr.as_str(), served.name(0));
    let status = format!("/v1/jobs/{job}");
    let view = format!("/v1/jobs/{job}/view");
    for path in ["/v1/jobs", status.as_str(), view.as_str()] {
        assert_error(&get(addr, path, None), 401, &["unauthorized"], path);
        assert_error(
            &get(addr, path, Some("wrong")),
            401,
            &["unauthorized"],
            path,
        );
        let answer = get(addr, path, Some(TOKEN));
        assert_eq!(answer.status, 200, "{path} with the token: {}", answer.body);
    }
    let select = json!({"sql": format!("SELECT * FROM {job}")});
    assert_error(
        &post_json(addr, "/v1/sql", &select, None),
        401,
        &["unauthorized"],
        "/v1/sql",
    );
    let answer = post_json(addr, "/v1/sql", &select, Some(TOKEN));
    assert_eq!(
        answer.status, 200,
        "/v1/sql with the token: {}",
        answer.body
    );

    // Probes and scrapers need no token.
    assert_eq!(get(addr, "/health", None).status, 200);
    let openapi = get(addr, "/openapi.yaml", None);
    assert_eq!(openapi.status, 200);
    assert!(openapi.body.contains("openapi:"), "{}", openapi.body);
    assert!(openapi.body.contains("/v1/jobs/{job}/view"));
    assert_eq!(get(addr, "/metrics", None).status, 200);
    served.stop();
}

#[test]
fn jobs_on_one_topic_are_listed_and_report_their_topics_and_keys() {
    let served = serve_orders(&[Kind::RegionTotals, Kind::PerMinute], &[]);
    let addr = served.addr.as_str();
    let jobs = get(addr, "/v1/jobs", None);
    assert_eq!(jobs.status, 200, "{}", jobs.body);
    let listed: BTreeSet<String> = jobs.json()["jobs"]
        .as_array()
        .expect("jobs array")
        .iter()
        .map(|j| j["job"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([served.name(0).to_string(), served.name(1).to_string()])
    );
    for (job, keys) in [
        (served.name(0), json!(["region"])),
        (served.name(1), json!([])),
    ] {
        // Every field of the status is checked in process (serving's api tests); here, what
        // only the real processes know.
        let status = wait_caught_up(addr, job, None, LONG);
        assert_eq!(status["ready"], true, "{status}");
        assert_eq!(status["source_topic"], served.topic.as_str());
        assert_eq!(status["speed_topic"], format!("{job}.speed"));
        assert_eq!(status["key_columns"], keys);
    }
    served.stop();
}

#[test]
fn sql_over_the_served_views_counts_every_completed_order() {
    let served = serve_orders(&[Kind::RegionTotals, Kind::PerMinute], &[]);
    let (addr, totals, minutes) = (served.addr.as_str(), served.name(0), served.name(1));
    let done = completed(&served.events);
    let regions: BTreeSet<&str> = done.iter().map(|v| v["region"].as_str().unwrap()).collect();
    let sql = |text: &str| post_json(addr, "/v1/sql", &json!({ "sql": text }), None);

    let sum = format!("SELECT SUM(total_orders) AS n FROM {minutes}");
    let mut last = Value::Null;
    wait_until(
        Duration::from_secs(60),
        "SQL to count every completed order",
        || {
            let r = sql(&sum);
            assert_eq!(r.status, 200, "{sum}: {}", r.body);
            last = r.json();
            last["rows"][0]["n"].as_i64() == Some(done.len() as i64)
        },
    );
    assert_eq!(last["columns"][0]["name"], "n", "{last}");
    assert!(last["columns"][0]["type"].is_string(), "{last}");
    assert_eq!(
        (last["count"].as_u64(), last["truncated"].as_bool()),
        (Some(1), Some(false))
    );

    let by_region = sql(&format!(
        "SELECT region, orders, __origin FROM {totals} ORDER BY region"
    ));
    assert_eq!(by_region.status, 200, "{}", by_region.body);
    let answer = by_region.json();
    let names: Vec<&str> = answer["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["region", "orders", "__origin"]);
    let rows = answer["rows"].as_array().unwrap();
    let served_regions: Vec<&str> = rows.iter().map(|r| r["region"].as_str().unwrap()).collect();
    assert_eq!(served_regions, regions.iter().copied().collect::<Vec<_>>());
    let orders_total: i64 = rows.iter().map(|r| r["orders"].as_i64().unwrap()).sum();
    assert_eq!(orders_total, done.len() as i64);
    assert!(rows.iter().all(|r| r["__origin"] == "speed"), "{answer}");

    let count = sql(&format!("SELECT COUNT(*) AS n FROM {totals}"));
    assert_eq!(count.status, 200, "{}", count.body);
    assert_eq!(
        count.json()["rows"][0]["n"].as_i64(),
        Some(regions.len() as i64)
    );
    served.stop();
}

#[test]
fn a_view_by_key_serves_that_key_s_row_from_the_speed_layer() {
    let served = serve_orders(&[Kind::RegionTotals], &[]);
    let (addr, totals) = (served.addr.as_str(), served.name(0));
    wait_caught_up(addr, totals, None, LONG);
    let eu = view(addr, totals, "key=eu", None);
    let eu_rows = eu["rows"].as_array().unwrap();
    assert_eq!(eu_rows.len(), 1, "{eu_rows:?}");
    assert_eq!(eu_rows[0]["row"]["region"], "eu");
    assert_eq!(eu_rows[0]["origin"], "speed");
    let eu_orders = completed(&served.events)
        .iter()
        .filter(|v| v["region"] == "eu")
        .count();
    assert_eq!(
        eu_rows[0]["row"]["orders"].as_u64(),
        Some(eu_orders as u64),
        "{eu}"
    );
    served.stop();
}

#[test]
fn metrics_export_requests_views_snapshots_and_the_speed_lag() {
    let served = serve_orders(&[Kind::RegionTotals], &[]);
    let (addr, job) = (served.addr.as_str(), served.name(0));
    wait_caught_up(addr, job, None, LONG);
    view(addr, job, "limit=10", None);
    let metrics = get(addr, "/metrics", None);
    assert_eq!(metrics.status, 200);
    for name in [
        "sluice_serving_requests_total",
        "sluice_serving_request_duration_seconds",
        "sluice_serving_view_rows",
        "sluice_serving_speed_lag_records",
        "sluice_serving_snapshot_builds_total",
    ] {
        assert!(
            metrics.body.contains(name),
            "{name} not in:\n{}",
            metrics.body
        );
    }
    assert!(
        metrics.body.contains(r#"endpoint="view""#),
        "requests are labelled by route:\n{}",
        metrics.body
    );
    served.stop();
}

/// Adds 1 to the COUNT(*) partial state (`__state_0_0`) and to `total_orders` of region
/// `region`'s first row in the batch view's first bucket, rewriting that bucket in one commit
/// that repeats the cutoff. Returns the corrupted row's window start (µs).
fn corrupt_batch_view(lake: &Path, job: &Job, region: &str) -> i64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let lake = Lake::resolve(Some(path_str(lake)));
        let table = TableLocation::new(lake.view_table(job));
        let cutoff = table.cutoff().await.unwrap().expect("a cutoff");
        let batches = table.read_all().await.unwrap();
        let schema = batches[0].schema();
        let all = concat_batches(&schema, &batches).unwrap();
        let column = |batch: &RecordBatch, name: &str| -> ArrayRef {
            let index = schema
                .index_of(name)
                .unwrap_or_else(|_| panic!("view column {name}"));
            batch.column(index).clone()
        };
        let as_i64 = |array: &ArrayRef| cast(array, &DataType::Int64).unwrap();
        let buckets = as_i64(&column(&all, "__bucket"));
        let buckets = buckets.as_primitive::<Int64Type>();
        let first = arrow::compute::min(buckets).expect("view rows");
        let mask: BooleanArray = buckets.iter().map(|b| Some(b == Some(first))).collect();
        let rows = filter_record_batch(&all, &mask).unwrap();
        let regions = cast(&column(&rows, "region"), &DataType::Utf8).unwrap();
        let regions = regions.as_string::<i32>();
        let target = (0..rows.num_rows())
            .find(|&i| regions.is_valid(i) && regions.value(i) == region)
            .unwrap_or_else(|| panic!("no {region} row in the first bucket"));
        let mut columns = rows.columns().to_vec();
        for name in ["__state_0_0", "total_orders"] {
            let index = schema.index_of(name).unwrap();
            let original = columns[index].clone();
            let values = as_i64(&original);
            let bumped: Int64Array = values
                .as_primitive::<Int64Type>()
                .iter()
                .enumerate()
                .map(|(i, v)| if i == target { v.map(|v| v + 1) } else { v })
                .collect();
            let bumped: ArrayRef = Arc::new(bumped);
            columns[index] = cast(&bumped, original.data_type()).unwrap();
        }
        let window_start = as_i64(&column(&rows, "__window_start"))
            .as_primitive::<Int64Type>()
            .value(target);
        let corrupted = RecordBatch::try_new(rows.schema(), columns).unwrap();
        let metadata = HashMap::from([
            (CUTOFF_KEY.to_string(), json!(cutoff)),
            ("sluice.operation".to_string(), json!("test-corruption")),
        ]);
        table
            .replace_buckets(
                vec![corrupted],
                (first, first + job.bucket_micros()),
                "test-corruption",
                |_| metadata.clone(),
            )
            .await
            .unwrap();
        assert_eq!(
            table.cutoff().await.unwrap(),
            Some(cutoff),
            "the cutoff is kept"
        );
        let rows_after: usize = table
            .read_all()
            .await
            .unwrap()
            .iter()
            .map(RecordBatch::num_rows)
            .sum();
        assert_eq!(rows_after, all.num_rows(), "the rewrite keeps every row");
        window_start
    })
}

#[test]
fn verify_passes_on_live_data_and_fails_on_a_corrupted_batch_view() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("orders");
    create_topic(&topic, 2);
    let job = write_job(dir.path(), Kind::RegionPerMinute, &topic);
    // Two hours of event time; the first goes to the batch layer.
    let events = orders(3_000, 2, T0_MS, 2_400, 17);
    produce(&topic, &events);
    let lake = dir.path().join("lake");
    let (mut stream, stream_log) = spawn_stream_for(dir.path(), &job, &lake, &[]);
    wait_stream_caught_up(&job, 2, events.len(), &stream_log);
    wait_raw_rows(&lake, &job.job, events.len(), LONG);
    let report = backfill(&job, &lake, Some("2024-05-01T11:00:00Z"));
    assert_eq!(
        report["cutoff_us"].as_i64(),
        Some(parse_time("2024-05-01T11:00:00Z").unwrap())
    );

    let brokers = bootstrap();
    let verify = |settle: &str| {
        sluice(&[
            "verify",
            "--job",
            path_str(&job.path),
            "--brokers",
            brokers.as_str(),
            "--lake",
            path_str(&lake),
            "--settle",
            settle,
        ])
    };
    let text = |o: &std::process::Output| {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let ok = verify("30s");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "verify on live data: {}",
        text(&ok)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("OK"), "{stdout}");

    let window_start = corrupt_batch_view(&lake, &job.job, "latam");
    let bad = verify("2s");
    assert_eq!(
        bad.status.code(),
        Some(1),
        "verify on a corrupted batch view: {}",
        text(&bad)
    );
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(
        stdout.contains("latam") && stdout.to_lowercase().contains("differ"),
        "verify names the differing row (latam at {}): {stdout}",
        format_time(window_start)
    );
    assert!(!stdout.contains(": OK"), "{stdout}");

    assert!(stream.terminate().success());
}

#[test]
fn demo_serves_a_merged_view_that_verify_proves_and_stops_on_sigint() {
    demo_run_verifies(&[]);
}

/// `--format avro`: the in-process registry, v1 then v2 of the schema halfway through the
/// events, and the same proofs as the JSON demo.
#[test]
fn the_avro_demo_evolves_its_schema_and_verify_proves_the_merge() {
    let log = demo_run_verifies(&["--format", "avro"]);
    for registered in [
        "OrderEvent v1 registered",
        "OrderEvent v2 (adds `channel`) registered",
    ] {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        assert!(
            log.contains(registered),
            "{registered}:\n{}",
            tail.join("\n")
        );
    }
}

/// Runs a finite demo with `extra` arguments, proves its merge with `sluice verify`, stops it
/// with SIGINT, and returns its log.
fn demo_run_verifies(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let log = PathBuf::from(format!("{}.log", demo_dir.display()));
    // A finite run, so the layers settle and `sluice verify` can prove the merge on its data.
    let mut args = vec![
        "--plain",
        "--backfill-every",
        "3s",
        "--events",
        "3000",
        "--rate",
        "600",
    ];
    args.extend_from_slice(extra);
    let (mut demo, addr) = spawn_demo(&demo_dir, &args);
    let mut last = String::new();
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            Duration::from_secs(60),
            "the demo's merged view to have rows",
            || match try_get(&addr, "/v1/jobs/orders_demo/view", None) {
                Ok(r) if r.status == 200 => {
                    let rows = r.json()["rows"].as_array().map_or(0, Vec::len);
                    last = format!("{rows} rows");
                    rows > 0
                }
                Ok(r) => {
                    last = format!("{} {}", r.status, r.body);
                    false
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            },
        )
    }));
    if served.is_err() {
        panic!("last answer: {last}\ndemo log:\n{}", log_tail(&log, 60));
    }

    let verify_line = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let l = l.trim_start_matches("[stdout]").trim();
            l.strip_prefix("sluice verify ").map(str::to_string)
        })
        .unwrap_or_else(|| {
            panic!(
                "the demo prints a verify command line:\n{}",
                log_tail(&log, 40)
            )
        });
    let mut args: Vec<&str> = vec!["verify"];
    args.extend(verify_line.split_whitespace());
    args.extend(["--settle", "90s"]);
    let verified = sluice(&args);
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && stdout.contains(": OK"),
        "sluice {} on the demo's data: {}\nstdout: {stdout}\nstderr: {}\ndemo log:\n{}",
        args.join(" "),
        verified.status,
        String::from_utf8_lossy(&verified.stderr),
        log_tail(&log, 20)
    );

    let pid = demo.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", pid.as_str()])
        .status()
        .expect("running kill");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.0.try_wait().expect("waiting for the demo") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sluice demo did not stop within 30 s of SIGINT:\n{}",
            log_tail(&log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "demo exit {status}:\n{}",
        log_tail(&log, 40)
    );
    // The log is in the temporary directory, which is removed on return.
    std::fs::read_to_string(&log).unwrap_or_default()
}
