//! View versions end to end: real `sluice stream`, `replay`, `switch`, `versions`, `retire`,
//! `backfill`, `verify` and `serve` processes against the run's real broker and a real lake
//! directory, with the ground truth computed in-process by the shared plan over every event
//! produced (`sluice_e2e::orders::truth`).
//!
//! What is tested, and why (issue 11, §2 to §5):
//!
//! - a new view version (the same job with a new aggregate column) is replayed from the lake
//!   and Kafka while version 1 serves and events flow, promoted with `sluice switch`, and rolled
//!   back; a client loop that runs through both switches sees no failed request, no answer
//!   that mixes versions (each answer's rows have exactly its version's columns, each status
//!   names its version's plan) and no flapping; after each switch the served view equals the
//!   full recompute of the version that answers. Then the old version is listed, retired and
//!   its state deleted, and the serving version cannot be retired;
//! - a job file whose plan changed under the same name and version is refused by `backfill`,
//!   `stream` and `serve`, naming both plan fingerprints and the fix (raise `[view] version`):
//!   no plan ever runs on state another plan wrote;
//! - `sluice verify` compares one consistent cut, so it passes again and again while events
//!   (some of them late) flow and backfills move the cutoff, and still catches a corrupted
//!   state row of the speed view.
//!
//! Orders start at 2024-05-01T10:00Z (long past, so cutoffs are meaningful) with one-minute
//! buckets, so the cutoff moves every minute of event time. Amounts are multiples of 0.25:
//! every SUM is exact whatever order the layers add in, so rows compare without tolerance.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_core::fixture::{OrderGenerator, T0_MS};
use sluice_core::speed::{PartitionWatermark, SpeedCodec, WATERMARK_KEY, is_reserved_key};
use sluice_core::topics::{Topics, stream_group};
use sluice_core::{Job, Pipeline};
use sluice_e2e::http::{get, post_json, try_get};
use sluice_e2e::kafka::{
    Daemon, Outgoing, Read, bootstrap, committed_offsets, create_topic, group_protocol_args,
    latest_by_key, produce, read_all, spawn_stream, unique, wait_until,
};
use sluice_e2e::orders::{self, canonical, truth, watermark_pushers};
use sluice_e2e::serve::{log_tail, serve_log, sluice, spawn_serve, wait_healthy, wait_status};
use sluice_e2e::{raw_rows, wait_raw_rows};

/// How long any one wait may take before the test fails (the happy path takes seconds).
const LONG: Duration = Duration::from_secs(90);
/// Source partitions of every test's topic.
const PARTITIONS: i32 = 2;
/// Event-time step between consecutive orders.
const SPACING_MS: i64 = 400;
/// The columns of a version 1 row (`REGION_PER_MINUTE_SQL`), as the API renders them.
const V1_COLUMNS: [&str; 6] = [
    "region",
    "window_start",
    "window_end",
    "total_orders",
    "total_revenue",
    "avg_order_value",
];
/// The column version 2 adds.
const V2_COLUMN: &str = "biggest";
/// Pause between the client loop's rounds of requests: often enough to be inside every switch,
/// rare enough to leave the 2 cores to the processes under test.
const CLIENT_PAUSE: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// Jobs, topics and directories

/// A job file and the job it parses to.
struct JobFile {
    path: PathBuf,
    job: Job,
}

impl JobFile {
    fn path(&self) -> &str {
        path_str(&self.path)
    }

    /// The speed layer's consumer group of this version (`sluice-<job>[.vN]`).
    fn group(&self) -> String {
        stream_group(&self.job.versioned_name())
    }
}

/// One test's topic, job name and directory (the lake is `<dir>/lake`).
struct Scenario {
    dir: tempfile::TempDir,
    topic: String,
    name: String,
}

impl Scenario {
    fn new() -> Scenario {
        let topic = unique("orders");
        create_topic(&topic, PARTITIONS);
        Scenario {
            dir: tempfile::tempdir().unwrap(),
            topic,
            name: unique("ver").replace('-', "_"),
        }
    }

    fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    fn state_dir(&self, instance: &str) -> PathBuf {
        self.dir.path().join(format!("state-{instance}"))
    }

    /// Writes `<dir>/<file>`: the orders job over this scenario's topic running `sql`, view key
    /// `region`, one-minute buckets, `[view] version = version`.
    fn job(&self, file: &str, sql: &str, version: u32) -> JobFile {
        let toml = with_version(
            &orders::job_toml(&self.name, &self.topic, sql, r#"["region"]"#, "1m"),
            version,
        );
        let path = self.dir.path().join(file);
        std::fs::write(&path, toml).unwrap();
        let job = Job::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(job.version(), version, "{}", path.display());
        JobFile { path, job }
    }

    /// `sluice stream` on `job` with state in `state-<instance>`, logging to `<instance>.log`.
    fn stream(&self, job: &JobFile, instance: &str, extra: &[&str]) -> (Daemon, PathBuf) {
        let log = self.dir.path().join(format!("{instance}.log"));
        let daemon = spawn_stream(
            &job.path,
            &self.lake(),
            &self.state_dir(instance),
            &log,
            extra,
        );
        (daemon, log)
    }

    /// Waits until `job`'s group has committed every one of `events` (this test's fresh topic
    /// holds nothing else, so a partition's committed offset is its count of events).
    fn wait_committed(&self, job: &JobFile, events: &[Outgoing], log: &Path) {
        let group = job.group();
        let expected = per_partition(events);
        let mut last = Vec::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(
                LONG,
                &format!("group {group} to commit every record"),
                || {
                    last = committed_offsets(&group, &self.topic, PARTITIONS);
                    last == expected
                },
            )
        }));
        if outcome.is_err() {
            panic!(
                "group {group} committed {last:?}, expected {expected:?}; log {}:\n{}",
                log.display(),
                log_tail(log, 40)
            );
        }
    }
}

/// `toml` with `version = N` as the first line of its `[view]` table (version 1 is the
/// default, left implicit as a job file written before versions existed has it).
fn with_version(toml: &str, version: u32) -> String {
    if version == 1 {
        return toml.to_string();
    }
    let mut out = String::new();
    let mut inserted = false;
    for line in toml.lines() {
        out.push_str(line);
        out.push('\n');
        if !inserted && line.trim() == "[view]" {
            out.push_str(&format!("version = {version}\n"));
            inserted = true;
        }
    }
    assert!(inserted, "no [view] table in the job file:\n{toml}");
    out
}

/// Version 2's SQL: version 1's with one more aggregate column, `biggest`.
fn with_biggest_sql() -> String {
    let sql = orders::REGION_PER_MINUTE_SQL.replacen(
        "AS avg_order_value",
        "AS avg_order_value, MAX(amount) AS biggest",
        1,
    );
    assert_ne!(sql, orders::REGION_PER_MINUTE_SQL, "the SQL text changed");
    sql
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------------------------
// Events

/// Orders from 10:00, `SPACING_MS` apart, up to 3 s early (nothing is late), all regions,
/// ids `o<seed>-<n>`.
fn generator(seed: u64) -> OrderGenerator {
    OrderGenerator::new(
        seed,
        orders::on_time_shape(format!("o{seed}-"), T0_MS, SPACING_MS),
    )
}

/// The generator's next `count` orders, keyed and partitioned by region.
fn take(generator: &mut OrderGenerator, count: usize) -> Vec<Outgoing> {
    orders::by_region(generator.by_ref().take(count), PARTITIONS)
}

fn event_ms(record: &Outgoing) -> i64 {
    serde_json::from_slice::<Value>(&record.2)
        .ok()
        .and_then(|v| v["event_time"].as_i64())
        .expect("an event with an event_time")
}

fn max_event_ms(events: &[Outgoing]) -> i64 {
    events.iter().map(event_ms).max().expect("some events")
}

/// Records per partition.
fn per_partition(events: &[Outgoing]) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| events.iter().filter(|(q, _, _)| *q == p).count() as i64)
        .collect()
}

/// Ten minutes after the newest of `events`, on every partition: every window closes and the
/// raw table's completeness passes every order.
fn pushers_after(events: &[Outgoing]) -> Vec<Outgoing> {
    watermark_pushers(PARTITIONS, max_event_ms(events) + 600_000)
}

/// How a [`Flow`] produces.
struct FlowPlan {
    chunk: usize,
    every: Duration,
    /// Stops by itself after this many orders.
    max: usize,
    /// Every `late_every`-th order (0: none) is stamped `LATE_BY_MS` behind its place (once
    /// that is after 10:00), far past the job's 30 s allowed lateness, so the speed layer
    /// diverts it to `<job>.late` (and the raw-lake sink lands it for the next backfill).
    late_every: u64,
}

/// How far behind a late order's event time is: ten minutes, so that the order is late even
/// when the daemon falls a few seconds behind the producer (lateness is judged against the
/// watermark of the micro-batches before, which lags by as much).
const LATE_BY_MS: i64 = 600_000;

/// What a [`Flow`] produced.
struct Flowed {
    events: Vec<Outgoing>,
    late: usize,
}

/// Orders produced from a thread in small chunks until stopped: events keep flowing while the
/// test replays, switches and verifies.
struct Flow {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Flowed>,
}

impl Flow {
    fn start(topic: &str, mut generator: OrderGenerator, plan: FlowPlan) -> Flow {
        let stop = Arc::new(AtomicBool::new(false));
        let topic = topic.to_string();
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut flowed = Flowed {
                events: Vec::new(),
                late: 0,
            };
            while !stopped.load(Ordering::SeqCst) && flowed.events.len() < plan.max {
                let mut chunk = Vec::with_capacity(plan.chunk);
                for _ in 0..plan.chunk {
                    let mut order = generator.next_order();
                    if plan.late_every > 0
                        && generator.seq().is_multiple_of(plan.late_every)
                        && order.event_time - LATE_BY_MS >= T0_MS
                    {
                        order.event_time -= LATE_BY_MS;
                        flowed.late += 1;
                    }
                    chunk.push(order);
                }
                let records = orders::by_region(chunk, PARTITIONS);
                produce(&topic, &records);
                flowed.events.extend(records);
                std::thread::sleep(plan.every);
            }
            flowed
        });
        Flow { stop, handle }
    }

    fn stop(self) -> Flowed {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("the producer thread panicked")
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot commands and the lake

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last JSON object line of a command's stdout (its `--output json` report; logs go to
/// stderr).
fn last_json(stdout: &str, what: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report from {what}: {stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what} printed bad JSON ({e}): {line}"))
}

/// `sluice <args>`, asserting exit 0; its JSON report.
fn sluice_json(args: &[&str]) -> Value {
    let output = sluice(args);
    assert!(
        output.status.success(),
        "sluice {}: {}",
        args.join(" "),
        describe(&output)
    );
    last_json(
        &String::from_utf8_lossy(&output.stdout),
        &format!("sluice {}", args[0]),
    )
}

/// `sluice backfill --output json` over the default range (the raw table's first event to
/// what the lake holds completely); the report.
fn backfill(job: &JobFile, lake: &Path) -> Value {
    sluice_json(&[
        "backfill",
        "--job",
        job.path(),
        "--lake",
        path_str(lake),
        "--output",
        "json",
    ])
}

fn verify(job: &JobFile, lake: &Path, settle: &str) -> Output {
    let brokers = bootstrap();
    sluice(&[
        "verify",
        "--job",
        job.path(),
        "--brokers",
        brokers.as_str(),
        "--lake",
        path_str(lake),
        "--settle",
        settle,
    ])
}

/// `sluice switch --output json` to `version` (default: the one the job file names).
fn switch(job: &JobFile, lake: &Path, version: Option<u32>) -> Value {
    let brokers = bootstrap();
    let version = version.map(|v| v.to_string());
    let mut args = vec![
        "switch",
        "--job",
        job.path(),
        "--brokers",
        brokers.as_str(),
        "--lake",
        path_str(lake),
        "--output",
        "json",
        "--settle",
        "30s",
    ];
    if let Some(version) = &version {
        args.extend(["--version", version.as_str()]);
    }
    sluice_json(&args)
}

/// `sluice versions --output json`: the listed versions.
fn versions(job: &JobFile, lake: &Path) -> Vec<Value> {
    let brokers = bootstrap();
    let listed = sluice_json(&[
        "versions",
        "--job",
        job.path(),
        "--brokers",
        brokers.as_str(),
        "--lake",
        path_str(lake),
        "--output",
        "json",
    ]);
    assert_eq!(listed["job"], job.job.name(), "{listed}");
    listed["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions array: {listed}"))
        .clone()
}

fn version_row(rows: &[Value], version: u64) -> Value {
    rows.iter()
        .find(|r| r["version"].as_u64() == Some(version))
        .cloned()
        .unwrap_or_else(|| panic!("version {version} is not listed: {rows:?}"))
}

fn retire(job: &JobFile, lake: &Path, version: u32) -> Output {
    let brokers = bootstrap();
    let version = version.to_string();
    sluice(&[
        "retire",
        "--job",
        job.path(),
        "--version",
        version.as_str(),
        "--brokers",
        brokers.as_str(),
        "--lake",
        path_str(lake),
        "--output",
        "json",
    ])
}

/// Regular files under `dir` (0 when it does not exist).
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() { files_under(&path) } else { 1 }
        })
        .sum()
}

/// Polls `check` every 200 ms until it gives `Ok`, or panics after `limit` with the last `Err`.
fn poll<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until a `sluice` child exits by itself; its status.
fn wait_exit(daemon: &mut Daemon, limit: Duration, log: &Path) -> ExitStatus {
    poll(limit, "sluice to exit by itself", || {
        match daemon.0.try_wait().expect("waiting for sluice") {
            Some(status) => Ok(status),
            None => Err(log_tail(log, 20)),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The serving API

/// An answer's rows, canonical and sorted (to compare with [`truth`]).
fn served_rows(answer: &Value) -> Vec<String> {
    let mut rows: Vec<String> = answer["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|r| canonical(&r["row"])).collect())
        .unwrap_or_default();
    rows.sort();
    rows
}

/// What differs between two sorted row lists, briefly.
fn row_difference(actual: &[String], expected: &[String]) -> String {
    let a: BTreeSet<&String> = actual.iter().collect();
    let e: BTreeSet<&String> = expected.iter().collect();
    let missing: Vec<_> = e.difference(&a).take(3).collect();
    let unexpected: Vec<_> = a.difference(&e).take(3).collect();
    format!(
        "{} rows served, {} expected; missing: {missing:#?}; unexpected: {unexpected:#?}",
        actual.len(),
        expected.len()
    )
}

/// Waits until the whole view answers from `version` with `cutoff_us` and exactly the rows
/// `expected`; the answer.
fn wait_view(addr: &str, job: &str, version: u64, cutoff_us: i64, expected: &[String]) -> Value {
    let what = format!("the view of version {version} to equal its full recompute");
    poll(LONG, &what, || {
        let response = get(addr, &format!("/v1/jobs/{job}/view?limit=100000"), None);
        if response.status != 200 {
            return Err(format!("{} {}", response.status, response.body));
        }
        let answer = response.json();
        let rows = served_rows(&answer);
        let (served_version, served_cutoff) =
            (answer["version"].as_u64(), answer["cutoff_us"].as_i64());
        if served_version == Some(version)
            && served_cutoff == Some(cutoff_us)
            && answer["truncated"] == false
            && rows == expected
        {
            return Ok(answer);
        }
        Err(format!(
            "version {served_version:?}, cutoff {served_cutoff:?} (want {cutoff_us}), {}",
            row_difference(&rows, expected)
        ))
    })
}

/// `POST /v1/sql` counting the job's rows: the answer names the version it read.
fn assert_sql_answers_from(addr: &str, job: &str, version: u64, rows: usize) {
    let sql = format!("SELECT COUNT(*) AS n FROM {job}");
    let response = post_json(addr, "/v1/sql", &json!({ "sql": sql }), None);
    assert_eq!(response.status, 200, "{sql}: {}", response.body);
    let answer = response.json();
    assert_eq!(answer["versions"][job].as_u64(), Some(version), "{answer}");
    assert_eq!(
        answer["rows"][0]["n"].as_u64(),
        Some(rows as u64),
        "{answer}"
    );
}

/// The columns a row of `version` has (`None`: not a version of these tests).
fn columns_of(version: u64) -> Option<BTreeSet<&'static str>> {
    let mut columns: BTreeSet<&'static str> = V1_COLUMNS.into_iter().collect();
    match version {
        1 => Some(columns),
        2 => {
            columns.insert(V2_COLUMN);
            Some(columns)
        }
        _ => None,
    }
}

/// One answer the client loop got.
#[derive(Clone)]
struct Observation {
    endpoint: &'static str,
    /// The HTTP status (`None`: the request itself failed).
    status: Option<u16>,
    version: Option<u64>,
    /// 200, and the answer is wholly its version's: a view whose rows have exactly that
    /// version's columns, a status naming that version's plan fingerprint.
    consistent: bool,
    /// The body (or the error) when not consistent, for the failure message.
    problem: String,
}

/// `GET path`, judged by `judge(answer, version)`.
fn observe(
    addr: &str,
    endpoint: &'static str,
    path: &str,
    judge: impl Fn(&Value, u64) -> bool,
) -> Observation {
    let response = match try_get(addr, path, None) {
        Ok(response) => response,
        Err(e) => {
            return Observation {
                endpoint,
                status: None,
                version: None,
                consistent: false,
                problem: e.to_string(),
            };
        }
    };
    let answer: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    let version = answer["version"].as_u64();
    let consistent = response.status == 200 && version.is_some_and(|v| judge(&answer, v));
    let problem = if consistent {
        String::new()
    } else {
        response.body.chars().take(600).collect()
    };
    Observation {
        endpoint,
        status: Some(response.status),
        version,
        consistent,
        problem,
    }
}

impl Observation {
    fn describe(&self) -> String {
        format!(
            "{} answered {:?} from version {:?}: {}",
            self.endpoint, self.status, self.version, self.problem
        )
    }
}

fn observe_view(addr: &str, job: &str) -> Observation {
    let path = format!("/v1/jobs/{job}/view?limit=100000");
    observe(addr, "view", &path, |answer, version| {
        let Some(expected) = columns_of(version) else {
            return false;
        };
        answer["rows"].as_array().is_some_and(|rows| {
            rows.iter().all(|r| {
                r["row"].as_object().is_some_and(|row| {
                    row.keys().map(String::as_str).collect::<BTreeSet<&str>>() == expected
                })
            })
        })
    })
}

fn observe_status(addr: &str, job: &str, fingerprints: &[String; 2]) -> Observation {
    let path = format!("/v1/jobs/{job}");
    observe(addr, "status", &path, |status, version| {
        let expected = match version {
            1 => fingerprints[0].as_str(),
            2 => fingerprints[1].as_str(),
            _ => return false,
        };
        status["plan_fingerprint"].as_str() == Some(expected)
    })
}

/// A client that asks for the view and the job status in a loop, from its own thread, until
/// stopped, keeping every answer: what a user sees through the switches.
struct Client {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Observation>>>,
    handle: JoinHandle<()>,
}

impl Client {
    /// `fingerprints`: the plan fingerprints of versions 1 and 2.
    fn start(addr: &str, job: &str, fingerprints: [String; 2]) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stopped, kept) = (stop.clone(), seen.clone());
        let (addr, job) = (addr.to_string(), job.to_string());
        let handle = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let view = observe_view(&addr, &job);
                let status = observe_status(&addr, &job, &fingerprints);
                {
                    let mut list = kept.lock().unwrap();
                    list.push(view);
                    list.push(status);
                }
                std::thread::sleep(CLIENT_PAUSE);
            }
        });
        Client { stop, seen, handle }
    }

    fn answers(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until the client has had `more` answers beyond those it has now.
    fn wait_for_more(&self, more: usize) {
        let target = self.answers() + more;
        wait_until(LONG, "the client loop to keep getting answers", || {
            self.answers() >= target
        });
    }

    fn stop(self) -> Vec<Observation> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("the client thread panicked");
        self.seen.lock().unwrap().clone()
    }
}

/// No answer failed or mixed versions, and the versions went 1, then 2, then 1 again: one
/// change per switch, none back and forth.
fn assert_clean_switches(seen: &[Observation]) {
    let count = |endpoint: &str, version: u64| {
        seen.iter()
            .filter(|o| o.endpoint == endpoint && o.version == Some(version))
            .count()
    };
    let summary = format!(
        "{} answers: views {} of version 1, {} of version 2; statuses {} of version 1, {} of version 2",
        seen.len(),
        count("view", 1),
        count("view", 2),
        count("status", 1),
        count("status", 2)
    );
    let bad: Vec<String> = seen
        .iter()
        .filter(|o| !o.consistent)
        .map(Observation::describe)
        .collect();
    assert!(
        bad.is_empty(),
        "{} answers failed, named another version than 1 or 2, or were not wholly their version's ({summary}); the first: {:#?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let mut path: Vec<u64> = Vec::new();
    for version in seen.iter().filter_map(|o| o.version) {
        if path.last() != Some(&version) {
            path.push(version);
        }
    }
    assert_eq!(
        path,
        vec![1, 2, 1],
        "the versions answers came from, in order ({summary})"
    );
}

// ---------------------------------------------------------------------------------------------
// The speed view's changelog

/// A state row of `<job>.speed` to corrupt: (partition, its key, another row's value, the
/// partition's newest watermark record). The row's bucket is at or after `cutoff_us`, so the
/// merged view reads it from the speed layer.
fn row_to_corrupt(job: &Job, cutoff_us: i64) -> (i32, Vec<u8>, Vec<u8>, Vec<u8>) {
    let pipeline = Pipeline::compile(job, None).unwrap();
    let stage = pipeline.plan().aggregate().unwrap();
    let codec = SpeedCodec::new(stage);
    let topic = Topics::for_job(job).speed;
    let records = read_all(&topic);
    for partition in 0..PARTITIONS {
        let mine: Vec<Read> = records
            .iter()
            .filter(|r| r.partition == partition)
            .cloned()
            .collect();
        let latest = latest_by_key(&mine);
        let Some(watermark) = latest.get(WATERMARK_KEY).cloned() else {
            continue;
        };
        let mark = PartitionWatermark::decode(&watermark).unwrap();
        assert!(
            mark.source_next_offset.is_some(),
            "watermark records carry the source offsets verify cuts at: {mark:?}"
        );
        let rows: Vec<(Vec<u8>, Vec<u8>)> = latest
            .iter()
            .filter(|(k, _)| !is_reserved_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let target = rows
            .iter()
            .find(|(key, _)| codec.key_times(key).unwrap().0 >= cutoff_us);
        let Some((key, value)) = target else {
            continue;
        };
        let Some(other) = rows.iter().map(|(_, v)| v).find(|v| *v != value) else {
            continue;
        };
        return (partition, key.clone(), other.clone(), watermark);
    }
    panic!("no state row of {topic} at or after the cutoff {cutoff_us} to corrupt");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn replay_switch_and_rollback_answer_exact_versions_while_events_flow() {
    let s = Scenario::new();
    let lake = s.lake();
    let v1 = s.job("v1.toml", orders::REGION_PER_MINUTE_SQL, 1);
    let v2 = s.job("v2.toml", &with_biggest_sql(), 2);
    let name = s.name.clone();
    let fingerprints = [v1.job.plan_fingerprint(), v2.job.plan_fingerprint()];
    assert_ne!(fingerprints[0], fingerprints[1]);
    assert_eq!(Topics::for_job(&v2.job).speed, format!("{name}.v2.speed"));
    assert_eq!(v2.group(), format!("sluice-{name}.v2"));
    let brokers = bootstrap();

    // Version 1 streams (its daemon lands the raw table for every version) and serves.
    let mut generator = generator(41);
    let first = take(&mut generator, 1_500); // 10:00 to 10:10
    let second = take(&mut generator, 1_000); // 10:10 to 10:16:40
    produce(&s.topic, &first);
    let (mut stream_v1, log_v1) = s.stream(&v1, "v1", &[]);
    s.wait_committed(&v1, &first, &log_v1);
    let (mut serve, addr) = spawn_serve(&[v1.path.as_path()], &lake, &["--batch-poll", "500ms"]);
    wait_healthy(&addr, LONG);
    wait_raw_rows(&lake, &v1.job, first.len(), LONG);
    let report = backfill(&v1, &lake);
    let cutoff = report["cutoff_us"].as_i64().expect("a cutoff");
    wait_view(&addr, &name, 1, cutoff, &truth(&v1.job, &first));

    // More events, and from here on a trickle of them through the replay and the switch.
    produce(&s.topic, &second);
    let trickle = Flow::start(
        &s.topic,
        generator,
        FlowPlan {
            chunk: 20,
            every: Duration::from_millis(200),
            max: 4_000,
            late_every: 0,
        },
    );

    // Version 2 from history: its batch view from the lake, its speed state seeded from the
    // raw rows past that cutoff, the Kafka tail from the offsets after them.
    let state_v2 = s.state_dir("v2");
    let replay = sluice_json(&[
        "replay",
        "--job",
        v2.path(),
        "--brokers",
        brokers.as_str(),
        "--lake",
        path_str(&lake),
        "--state-dir",
        path_str(&state_v2),
        "--output",
        "json",
        "--timeout",
        "2m",
    ]);
    assert_eq!(replay["version"].as_u64(), Some(2), "{replay}");
    assert_eq!(replay["caught_up"], true, "{replay}");
    assert_eq!(replay["from"], "lake", "{replay}");
    assert_eq!(replay["fingerprint"], fingerprints[1].as_str(), "{replay}");
    assert_eq!(replay["group"], v2.group().as_str(), "{replay}");
    assert!(
        replay["backfill"]["cutoff_us"].as_i64().is_some(),
        "the replay's backfill moved version 2's cutoff: {replay}"
    );
    let seeded = &replay["seed"]["Seeded"];
    assert!(
        seeded["rows"].as_u64().is_some_and(|rows| rows > 0),
        "the raw rows past the cutoff seeded version 2's speed state: {replay}"
    );
    assert_eq!(
        seeded["partitions"].as_u64(),
        Some(PARTITIONS as u64),
        "{replay}"
    );

    // `sluice stream` carries version 2 on (same group, same state); version 1's daemon keeps
    // landing the raw table, so this one runs no lake sink.
    // Dynamic membership: it leaves the group when stopped, so `retire` can delete the group.
    let (mut stream_v2, log_v2) = s.stream(&v2, "v2", &["--no-lake-sink", "--dynamic-membership"]);

    // The client loop runs from before the switch to after the rollback.
    let client = Client::start(&addr, &name, fingerprints.clone());
    client.wait_for_more(4);

    let switched = switch(&v2, &lake, None);
    assert_eq!(switched["switched"], true, "{switched}");
    assert_eq!(
        (switched["from"].as_u64(), switched["to"].as_u64()),
        (Some(1), Some(2)),
        "{switched}"
    );
    assert_eq!(switched["verify_identical"], true, "{switched}");
    wait_status(
        &addr,
        &name,
        None,
        LONG,
        "serve to answer from version 2",
        |st| st["version"].as_u64() == Some(2),
    );
    client.wait_for_more(4);

    // The events stop; windows close; both versions' batch views take everything.
    let mut all: Vec<Outgoing> = first.iter().chain(&second).cloned().collect();
    all.extend(trickle.stop().events);
    let last_order_ms = max_event_ms(&all);
    let pushers = pushers_after(&all);
    produce(&s.topic, &pushers);
    all.extend(pushers);
    s.wait_committed(&v1, &all, &log_v1);
    s.wait_committed(&v2, &all, &log_v2);
    wait_raw_rows(&lake, &v1.job, all.len(), LONG);
    let (report_v2, report_v1) = (backfill(&v2, &lake), backfill(&v1, &lake));
    let cutoff_of = |report: &Value| {
        let cutoff = report["cutoff_us"].as_i64().expect("a cutoff");
        assert!(
            cutoff > last_order_ms * 1000,
            "the backfill covers every order (the pushers are ten minutes on): {report}"
        );
        cutoff
    };
    let (cutoff_v2, cutoff_v1) = (cutoff_of(&report_v2), cutoff_of(&report_v1));

    let expected_v2 = truth(&v2.job, &all);
    wait_view(&addr, &name, 2, cutoff_v2, &expected_v2);
    assert_sql_answers_from(&addr, &name, 2, expected_v2.len());

    // Rollback: switching back to version 1.
    let rolled_back = switch(&v2, &lake, Some(1));
    assert_eq!(rolled_back["switched"], true, "{rolled_back}");
    assert_eq!(
        (rolled_back["from"].as_u64(), rolled_back["to"].as_u64()),
        (Some(2), Some(1)),
        "{rolled_back}"
    );
    wait_status(
        &addr,
        &name,
        None,
        LONG,
        "serve to answer from version 1 again",
        |st| st["version"].as_u64() == Some(1),
    );
    let expected_v1 = truth(&v1.job, &all);
    assert_ne!(expected_v1, expected_v2, "the versions' rows differ");
    wait_view(&addr, &name, 1, cutoff_v1, &expected_v1);
    assert_sql_answers_from(&addr, &name, 1, expected_v1.len());
    client.wait_for_more(4);
    assert_clean_switches(&client.stop());

    // Both versions are listed; version 1 serves.
    let listed = versions(&v2, &lake);
    let (row_v1, row_v2) = (version_row(&listed, 1), version_row(&listed, 2));
    assert_eq!(row_v1["state"], "serving", "{listed:?}");
    assert_eq!(
        row_v1["fingerprint"],
        fingerprints[0].as_str(),
        "{listed:?}"
    );
    assert_eq!(row_v2["state"], "caught up", "{listed:?}");
    assert_eq!(
        row_v2["fingerprint"],
        fingerprints[1].as_str(),
        "{listed:?}"
    );
    assert!(
        row_v2["view_rows"].as_u64().is_some_and(|n| n > 0),
        "{listed:?}"
    );

    // Retiring version 2 deletes its topics, group and view table.
    assert!(stream_v2.terminate().success(), "{}", log_tail(&log_v2, 30));
    let view_table_v2 = lake.join("views").join(format!("{name}.v2"));
    assert!(
        files_under(&view_table_v2) > 0,
        "version 2's view table is at {}",
        view_table_v2.display()
    );
    // A stopped static group member may hold the group until the broker expires its session
    // (refusing the group's deletion meanwhile): retried briefly.
    let retired = poll(Duration::from_secs(30), "sluice retire --version 2", || {
        let output = retire(&v2, &lake, 2);
        if output.status.success() {
            Ok(last_json(
                &String::from_utf8_lossy(&output.stdout),
                "sluice retire",
            ))
        } else {
            Err(describe(&output))
        }
    });
    assert_eq!(retired["retired"], true, "{retired}");
    assert_eq!(retired["version"].as_u64(), Some(2), "{retired}");
    assert_eq!(retired["group"], v2.group().as_str(), "{retired}");
    let speed_v2 = json!(format!("{name}.v2.speed"));
    assert!(
        retired["topics"]
            .as_array()
            .is_some_and(|topics| topics.contains(&speed_v2)),
        "{retired}"
    );
    assert!(
        retired["objects_deleted"].as_u64().is_some_and(|n| n > 0),
        "{retired}"
    );
    assert_eq!(
        files_under(&view_table_v2),
        0,
        "version 2's view table is gone"
    );
    let listed = versions(&v2, &lake);
    assert_eq!(version_row(&listed, 2)["state"], "retired", "{listed:?}");
    assert_eq!(version_row(&listed, 1)["state"], "serving", "{listed:?}");

    // The serving version cannot be retired.
    let refused = retire(&v2, &lake, 1);
    assert!(
        !refused.status.success(),
        "retiring the serving version must be refused: {}",
        describe(&refused)
    );

    assert!(
        serve.terminate().success(),
        "{}",
        log_tail(&serve_log(&lake), 30)
    );
    assert!(stream_v1.terminate().success(), "{}", log_tail(&log_v1, 30));
}

#[test]
fn a_changed_plan_under_the_same_version_is_refused() {
    let s = Scenario::new();
    let lake = s.lake();
    let job = s.job("job.toml", orders::REGION_PER_MINUTE_SQL, 1);
    // Another aggregate, same name, same (default) version.
    let changed_sql = orders::REGION_PER_MINUTE_SQL.replacen(
        "AVG(amount) AS avg_order_value",
        "MIN(amount) AS smallest",
        1,
    );
    assert_ne!(changed_sql, orders::REGION_PER_MINUTE_SQL);
    let changed = s.job("changed.toml", &changed_sql, 1);
    let (old, new) = (job.job.plan_fingerprint(), changed.job.plan_fingerprint());
    assert_ne!(old, new);
    let mismatch = format!("was written by plan {old}, but this job file compiles to plan {new}");
    let fix = "Raise `[view] version`";

    // The first plan writes its state: the speed changelog and the batch view. Its daemon
    // leaves the group when stopped (dynamic membership), so the next one gets the partitions.
    let mut membership = vec!["--dynamic-membership"];
    membership.extend(group_protocol_args());
    let events = take(&mut generator(43), 1_000);
    produce(&s.topic, &events);
    let (mut daemon, log) = s.stream(&job, "a", &membership);
    s.wait_committed(&job, &events, &log);
    wait_raw_rows(&lake, &job.job, events.len(), LONG);
    let report = backfill(&job, &lake);
    assert!(report["cutoff_us"].as_i64().is_some(), "{report}");
    assert!(daemon.terminate().success(), "{}", log_tail(&log, 30));

    // backfill: the view table's commits name the first plan.
    let output = sluice(&[
        "backfill",
        "--job",
        changed.path(),
        "--lake",
        path_str(&lake),
        "--output",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(&mismatch) && stderr.contains(fix),
        "backfill of a changed plan must be refused, naming both plans ({mismatch}): {}",
        describe(&output)
    );

    // stream, on a fresh state directory: its restore reads the plan record of `<job>.speed`.
    let mut extra = vec!["--no-lake-sink"];
    extra.extend(membership.iter().copied());
    let (mut refused, refused_log) = s.stream(&changed, "changed", &extra);
    let status = wait_exit(&mut refused, Duration::from_secs(45), &refused_log);
    let text = std::fs::read_to_string(&refused_log).unwrap_or_default();
    assert!(
        !status.success() && text.contains(&mismatch) && text.contains(fix),
        "stream on a changed plan must exit non-zero naming both plans ({mismatch}); {status}, log:\n{}",
        log_tail(&refused_log, 30)
    );

    // serve keeps running but is not healthy, and says why.
    let (mut serve, addr) =
        spawn_serve(&[changed.path.as_path()], &lake, &["--batch-poll", "500ms"]);
    poll(
        Duration::from_secs(60),
        "/health to report the plan mismatch",
        || match try_get(&addr, "/health", None) {
            Ok(r)
                if r.status == 503
                    && r.body.contains("[view] version")
                    && r.body.contains(&old)
                    && r.body.contains(&new) =>
            {
                Ok(())
            }
            Ok(r) => Err(format!("{} {}", r.status, r.body)),
            Err(e) => Err(e.to_string()),
        },
    );
    let view = get(&addr, &format!("/v1/jobs/{}/view", s.name), None);
    assert_eq!(
        view.status, 503,
        "no answer from another plan's state: {}",
        view.body
    );
    let _ = serve.terminate();

    // The fix the message names: the changed plan as version 2 builds beside version 1.
    let raised = s.job("changed-v2.toml", &changed_sql, 2);
    let report = backfill(&raised, &lake);
    assert!(report["cutoff_us"].as_i64().is_some(), "{report}");
}

#[test]
fn verify_passes_while_events_flow_and_fails_on_a_corrupted_state_row() {
    let s = Scenario::new();
    let lake = s.lake();
    let job = s.job("job.toml", orders::REGION_PER_MINUTE_SQL, 1);
    let (mut daemon, log) = s.stream(&job, "a", &[]);
    // Live before the first order, so the orders stamped late find a watermark to be late by.
    wait_until(LONG, "the daemon to own its partitions", || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("state restored"))
    });

    // 100 orders every 200 ms, 20 s of event time each; every 50th is ten minutes late.
    let flow = Flow::start(
        &s.topic,
        OrderGenerator::new(47, orders::on_time_shape("f47-", T0_MS, 200)),
        FlowPlan {
            chunk: 100,
            every: Duration::from_millis(200),
            max: 30_000,
            late_every: 50,
        },
    );
    // Backfills every 2 s move the cutoff while the events flow (from the raw table's first
    // commit on: before it there is no raw table to read).
    wait_until(LONG, "the raw table's first rows", || {
        raw_rows(&lake, &job.job) > 0
    });
    let backfills = Backfills::start(&job, &lake);
    poll(LONG, "a first backfill to set a cutoff", || {
        backfills
            .cutoff()
            .ok_or_else(|| format!("runs so far:\n{}", describe_runs(&backfills.runs())))
    });

    // Verify must hold with late records in the pipeline: in `<job>.late`, and in the lake.
    let late_topic = Topics::for_job(&job.job).late;
    wait_until(LONG, "the first late records", || {
        !read_all(&late_topic).is_empty()
    });
    for round in 1..=3 {
        let output = verify(&job, &lake, "20s");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.code() == Some(0) && stdout.contains(": OK"),
            "verify round {round} while events flow: {}\nstream log:\n{}",
            describe(&output),
            log_tail(&log, 20)
        );
    }
    let flowed = flow.stop();
    let runs = backfills.stop();
    // 4: nothing complete yet (the first commits may not have passed a bucket).
    let failed: Vec<&BackfillRun> = runs
        .iter()
        .filter(|r| !matches!(r.code, Some(0 | 4)))
        .collect();
    assert!(
        failed.is_empty(),
        "backfills failed:\n{}",
        describe_runs(failed)
    );
    assert!(flowed.late > 0, "some orders were late");

    // Everything is in: the daemon committed every record, and verify passed with late
    // records in the pipeline (in `<job>.late`, and in the raw table).
    s.wait_committed(&job, &flowed.events, &log);
    let diverted = read_all(&Topics::for_job(&job.job).late).len();
    assert!(
        (1..=flowed.late).contains(&diverted),
        "{diverted} records in <job>.late; {} orders were stamped late",
        flowed.late
    );
    wait_raw_rows(&lake, &job.job, flowed.events.len(), LONG);
    let cutoff_us = backfill(&job, &lake)["cutoff_us"]
        .as_i64()
        .expect("a cutoff");

    // A state row the merged view reads from the speed layer gets another row's value, and its
    // partition's newest watermark record is repeated after it, so a reader that stops at the
    // watermark record holds the corrupted row.
    let (partition, key, other_value, watermark) = row_to_corrupt(&job.job, cutoff_us);
    produce(
        &Topics::for_job(&job.job).speed,
        &[
            (partition, Some(key), other_value),
            (partition, Some(WATERMARK_KEY.to_vec()), watermark),
        ],
    );
    let output = verify(&job, &lake, "5s");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.code() == Some(1) && stdout.contains("DIFFERENT"),
        "verify must find the corrupted speed row: {}",
        describe(&output)
    );
    assert!(daemon.terminate().success(), "{}", log_tail(&log, 30));
}

// ---------------------------------------------------------------------------------------------
// Backfills in the background

/// One `sluice backfill` run of [`Backfills`].
#[derive(Clone)]
struct BackfillRun {
    code: Option<i32>,
    cutoff_us: Option<i64>,
    stderr: String,
}

impl BackfillRun {
    fn describe(&self) -> String {
        format!(
            "exit {:?}, cutoff {:?}: {}",
            self.code, self.cutoff_us, self.stderr
        )
    }
}

fn describe_runs<'a>(runs: impl IntoIterator<Item = &'a BackfillRun>) -> String {
    runs.into_iter()
        .map(BackfillRun::describe)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `sluice backfill` every 2 s from a thread until stopped, as a scheduler would run it.
struct Backfills {
    stop: Arc<AtomicBool>,
    runs: Arc<Mutex<Vec<BackfillRun>>>,
    handle: JoinHandle<()>,
}

impl Backfills {
    const EVERY: Duration = Duration::from_secs(2);

    fn start(job: &JobFile, lake: &Path) -> Backfills {
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (stopped, kept) = (stop.clone(), runs.clone());
        let (job, lake) = (job.path.clone(), lake.to_path_buf());
        let handle = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let started = Instant::now();
                let output = sluice(&[
                    "backfill",
                    "--job",
                    path_str(&job),
                    "--lake",
                    path_str(&lake),
                    "--output",
                    "json",
                ]);
                let stdout = String::from_utf8_lossy(&output.stdout);
                let cutoff_us = stdout
                    .lines()
                    .rev()
                    .find(|l| l.trim_start().starts_with('{'))
                    .and_then(|l| serde_json::from_str::<Value>(l).ok())
                    .and_then(|report| report["cutoff_us"].as_i64());
                kept.lock().unwrap().push(BackfillRun {
                    code: output.status.code(),
                    cutoff_us,
                    stderr: String::from_utf8_lossy(&output.stderr)
                        .chars()
                        .take(2000)
                        .collect(),
                });
                while !stopped.load(Ordering::SeqCst) && started.elapsed() < Self::EVERY {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Backfills { stop, runs, handle }
    }

    fn runs(&self) -> Vec<BackfillRun> {
        self.runs.lock().unwrap().clone()
    }

    /// The newest cutoff a run set.
    fn cutoff(&self) -> Option<i64> {
        self.runs().iter().rev().find_map(|r| r.cutoff_us)
    }

    fn stop(self) -> Vec<BackfillRun> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("the backfill thread panicked");
        self.runs.lock().unwrap().clone()
    }
}

#[test]
fn replay_from_earliest_builds_a_version_from_kafka_alone_that_verifies() {
    let s = Scenario::new();
    let lake = s.lake();
    let v1 = s.job("v1.toml", orders::REGION_PER_MINUTE_SQL, 1);
    let v2 = s.job("v2.toml", &with_biggest_sql(), 2);
    let brokers = bootstrap();
    let mut generator = generator(43);
    let events = take(&mut generator, 1_200);
    produce(&s.topic, &events);
    // Version 1's daemon lands the raw table (what verify recomputes version 2 from).
    let (mut stream_v1, log_v1) = s.stream(&v1, "v1", &[]);
    s.wait_committed(&v1, &events, &log_v1);
    wait_raw_rows(&lake, &v1.job, events.len(), LONG);

    // Kappa proper: no batch view, no seed; version 2's speed layer reads the topic from its
    // start until it has caught up.
    let state_v2 = s.state_dir("v2");
    let replay = sluice_json(&[
        "replay",
        "--job",
        v2.path(),
        "--brokers",
        brokers.as_str(),
        "--lake",
        path_str(&lake),
        "--state-dir",
        path_str(&state_v2),
        "--from",
        "earliest",
        "--caught-up",
        "1",
        "--output",
        "json",
        "--timeout",
        "2m",
    ]);
    assert_eq!(replay["from"], "earliest", "{replay}");
    assert_eq!(replay["caught_up"], true, "{replay}");
    assert!(replay["backfill"].is_null(), "{replay}");
    assert!(replay["seed"].is_null(), "{replay}");
    assert_eq!(
        replay["records_in"].as_u64(),
        Some(events.len() as u64),
        "{replay}"
    );

    // Its merged view (speed alone: no cutoff) is exactly the recompute of its plan.
    let output = verify(&v2, &lake, "20s");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.code() == Some(0) && stdout.contains(": OK"),
        "verify of a version replayed from earliest: {}",
        describe(&output)
    );
    assert!(stream_v1.terminate().success());
}
