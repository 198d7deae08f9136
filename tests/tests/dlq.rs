//! `sluice dlq list | show | replay` end to end: a real `sluice stream` dead-letters known bad
//! records into `<job>.dlq` on the run's broker, and the commands run as child processes.
//!
//! - list and show count and print exactly what was dead-lettered, each record's original bytes
//!   recoverable from what show prints, and nothing a terminal would act on in the text form;
//! - replay after a fix: records job v1 rejected (`amount` declared int64, the records hold
//!   fractions) are re-published to the source topic and counted by v2 (`amount` float64),
//!   which continues v1's consumer group; a second replay re-publishes nothing;
//! - a replay killed with SIGKILL mid-way and run again re-publishes every record exactly once;
//! - `--error-type` and `--since`/`--until` select exactly the expected records, and a dry run
//!   publishes nothing, after which the real run still publishes everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `show` prints of a record: source offset, error type, key, value.
type ShownRecord = (Option<i64>, String, Option<Vec<u8>>, Vec<u8>);
/// A re-published record: where it came from (`sluice.replayed.from`), key, value.
type Republished = (String, Option<Vec<u8>>, Option<Vec<u8>>);

use rdkafka::consumer::BaseConsumer;
use serde_json::Value;
use sluice_core::time::format_time;
use sluice_core::topics::header;
use sluice_e2e::kafka::{
    Daemon, Outgoing, Read, bootstrap, committed_offsets, create_topic, produce, read_all,
    sluice_bin, spawn_stream, unique, wait_until,
};
use sluice_e2e::serve::{log_tail, sluice_ok};

const LONG: Duration = Duration::from_secs(180);
/// The header `sluice dlq replay` puts on every record it re-publishes.
const REPLAYED_FROM: &str = "sluice.replayed.from";
/// 2024-05-01T10:00:00Z: the event time of every record here (far from any lateness or skew
/// bound; the jobs are stateless).
const EVENT_MS: i64 = 1_714_557_600_000;

/// A stateless job over the orders topic `topic`: `amount` is `amount_type`.
fn job_toml(name: &str, topic: &str, version: u32, amount_type: &str) -> String {
    format!(
        r#"name = "{name}"
[source]
topic = "{topic}"
table = "orders"
event_time = "event_time"
fields = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "region", type = "string" }},
  {{ name = "amount", type = "{amount_type}" }},
  {{ name = "event_time", type = "timestamp" }},
]
[transform]
sql = "SELECT order_id, region, amount, event_time FROM orders"
[view]
version = {version}
"#
    )
}

fn order(id: &str, amount: &str) -> Vec<u8> {
    format!(r#"{{"order_id":"{id}","region":"eu","amount":{amount},"event_time":{EVENT_MS}}}"#)
        .into_bytes()
}

/// One test's job files, topic and directories. v1 declares `amount` int64.
struct Scenario {
    dir: tempfile::TempDir,
    name: String,
    topic: String,
    partitions: i32,
    v1: PathBuf,
}

impl Scenario {
    fn new(prefix: &str, partitions: i32) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique(&format!("{prefix}-orders"));
        let name = unique(prefix).replace('-', "_");
        create_topic(&topic, partitions);
        let v1 = dir.path().join("v1.toml");
        std::fs::write(&v1, job_toml(&name, &topic, 1, "int64")).unwrap();
        Scenario {
            dir,
            name,
            topic,
            partitions,
            v1,
        }
    }

    /// The fix: the same job as version 2 with `amount` float64.
    fn v2(&self) -> PathBuf {
        let path = self.dir.path().join("v2.toml");
        std::fs::write(&path, job_toml(&self.name, &self.topic, 2, "float64")).unwrap();
        path
    }

    fn dlq(&self) -> String {
        format!("{}.dlq", self.name)
    }

    /// v1's speed-layer group (`sluice_core::topics::stream_group` of the job name).
    fn group(&self) -> String {
        format!("sluice-{}", self.name)
    }

    fn log(&self, instance: &str) -> PathBuf {
        self.dir.path().join(format!("{instance}.log"))
    }

    fn spawn(&self, job_file: &Path, instance: &str, extra: &[&str]) -> Daemon {
        // Leave the group on stop, so a daemon started next on the group takes over at once.
        let mut args = vec!["--no-lake-sink", "--dynamic-membership"];
        args.extend_from_slice(extra);
        spawn_stream(
            job_file,
            &self.dir.path().join("lake"),
            &self.dir.path().join(format!("state-{instance}")),
            &self.log(instance),
            &args,
        )
    }

    /// Waits until group `group` has committed `counts[p]` offsets of source partition `p`.
    fn wait_consumed(&self, daemon: &mut Daemon, instance: &str, group: &str, counts: &[i64]) {
        wait_until(LONG, "the daemon to commit every source offset", || {
            if let Some(status) = daemon.0.try_wait().expect("try_wait") {
                panic!(
                    "sluice stream ({instance}) exited ({status}); its log:\n{}",
                    log_tail(&self.log(instance), 80)
                );
            }
            committed_offsets(group, &self.topic, self.partitions)
                .iter()
                .zip(counts)
                .all(|(committed, wanted)| committed >= wanted)
        });
    }

    fn stop(&self, mut daemon: Daemon, instance: &str) {
        let status = daemon.terminate();
        assert!(
            status.success(),
            "sluice stream ({instance}) exited with {status}; its log:\n{}",
            log_tail(&self.log(instance), 80)
        );
    }

    /// Produces `records`, runs v1 until it has consumed them and stops it; returns the DLQ.
    fn dead_letter(&self, records: &[Outgoing], dead: usize) -> Vec<Read> {
        produce(&self.topic, records);
        let mut daemon = self.spawn(&self.v1, "v1", &[]);
        self.wait_consumed(
            &mut daemon,
            "v1",
            &self.group(),
            &counts(records, self.partitions),
        );
        self.stop(daemon, "v1");
        let dlq = read_all(&self.dlq());
        assert_eq!(dlq.len(), dead, "records in {}", self.dlq());
        dlq
    }
}

/// Records per partition.
fn counts(records: &[Outgoing], partitions: i32) -> Vec<i64> {
    (0..partitions)
        .map(|p| records.iter().filter(|(q, _, _)| *q == p).count() as i64)
        .collect()
}

/// `sluice dlq <sub> --job <job> --brokers <run's broker> <extra>`, exit 0 asserted: stdout.
fn dlq(sub: &str, job: &Path, extra: &[&str]) -> String {
    let brokers = bootstrap();
    let job = job.to_str().expect("a UTF-8 path");
    let mut args = vec!["dlq", sub, "--job", job, "--brokers", brokers.as_str()];
    args.extend_from_slice(extra);
    sluice_ok(&args)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The one JSON object a command printed.
fn json_summary(text: &str) -> Value {
    let mut lines = json_lines(text);
    assert_eq!(lines.len(), 1, "one JSON line expected:\n{text}");
    lines.remove(0)
}

fn unhex(text: &str) -> Vec<u8> {
    let digits = text.strip_prefix("0x").expect("hex starts with 0x");
    assert!(digits.len().is_multiple_of(2), "odd hex: {text}");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// What show printed of a key or value: (the bytes shown, the full size, whether cut).
fn shown_bytes(value: &Value) -> Option<(Vec<u8>, usize, bool)> {
    if value.is_null() {
        return None;
    }
    let bytes = match value["text"].as_str() {
        Some(text) => text.as_bytes().to_vec(),
        None => unhex(value["hex"].as_str().expect("text or hex")),
    };
    let size = value["size"].as_u64().expect("size") as usize;
    let truncated = value["truncated"].as_bool().expect("truncated");
    Some((bytes, size, truncated))
}

/// `<dlq>/<partition>/<offset>` of a DLQ record: what replay's header names.
fn origin_of(dlq: &str, record: &Read) -> String {
    format!("{dlq}/{}/{}", record.partition, record.offset)
}

/// The records of `topic` that replay re-published, by the DLQ record they came from.
fn replayed(topic: &str) -> Vec<(String, Read)> {
    read_all(topic)
        .into_iter()
        .filter_map(|r| Some((r.headers.get(REPLAYED_FROM)?.clone(), r)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// list and show

/// A record to dead-letter: where it goes, its bytes, and the error type it must get.
struct Bad {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    error_type: &'static str,
}

fn bad(partition: i32, key: Option<&[u8]>, value: Vec<u8>, error_type: &'static str) -> Bad {
    Bad {
        partition,
        key: key.map(<[u8]>::to_vec),
        value,
        error_type,
    }
}

#[test]
fn list_and_show_report_every_dead_letter_with_its_bytes_intact() {
    let s = Scenario::new("dlq-show", 2);
    let (malformed, violation, binary, missing) = (
        "malformed_json",
        "schema_violation",
        "not_utf8",
        "missing_field",
    );
    // Longer than show's 512 bytes (and never closed: malformed).
    let long = format!(r#"{{"order_id":"long","note":"{}""#, "x".repeat(1500)).into_bytes();
    let bads = vec![
        bad(
            0,
            None,
            br#"{"order_id":"m0","amount":1,"#.to_vec(),
            malformed,
        ),
        bad(0, Some(b"k-m1"), b"not json at all".to_vec(), malformed),
        bad(
            0,
            None,
            format!(r#"{{"order_id":"m2","event_time":{EVENT_MS}}} trailing"#).into_bytes(),
            malformed,
        ),
        bad(0, None, long, malformed),
        // A raw ESC inside a string: invalid JSON, and a terminal escape sequence.
        bad(
            0,
            Some(b"k-esc"),
            format!("{{\"order_id\":\"esc\u{1b}[31mred\",\"event_time\":{EVENT_MS}}}").into_bytes(),
            malformed,
        ),
        bad(0, None, order("s0", "12.5"), violation),
        bad(0, Some(b"k-s1"), order("s1", "0.25"), violation),
        bad(
            0,
            Some(&[0x00, 0xff]),
            vec![0xff, 0xfe, 0x1b, b'[', b'2', b'J', 0x00, 0x80, 0x07],
            binary,
        ),
        bad(
            0,
            None,
            br#"{"order_id":"f0","region":"eu","amount":3}"#.to_vec(),
            missing,
        ),
        bad(1, None, b"[1,2,3]".to_vec(), malformed),
        bad(1, None, br#"{"order_id": }"#.to_vec(), malformed),
        bad(1, None, order("s2", "7.75"), violation),
        bad(1, None, order("s3", r#""abc""#), violation),
        bad(1, None, order("s4", "2.5"), violation),
        bad(1, None, vec![0xc3, 0x28, b'{', b'}'], binary),
        bad(1, Some(b"k-b2"), vec![0x80; 40], binary),
        bad(
            1,
            None,
            br#"{"order_id":"f1","amount":1}"#.to_vec(),
            missing,
        ),
        bad(
            1,
            None,
            br#"{"order_id":"f2","region":"us","amount":2,"event_time":null}"#.to_vec(),
            missing,
        ),
    ];
    let mut records: Vec<Outgoing> = bads
        .iter()
        .map(|b| (b.partition, b.key.clone(), b.value.clone()))
        .collect();
    for p in 0..2 {
        for i in 0..3 {
            records.push((p, None, order(&format!("g{p}-{i}"), &i.to_string())));
        }
    }
    s.dead_letter(&records, bads.len());
    // Someone else's record: no Sluice headers at all.
    let foreign = b"written by hand".to_vec();
    produce(&s.dlq(), &[(0, Some(b"hand".to_vec()), foreign.clone())]);
    let dlq_records = read_all(&s.dlq());

    // list: counts by error type and source partition, oldest <= newest.
    let list = json_summary(&dlq("list", &s.v1, &["--output", "json"]));
    assert_eq!(list["topic"], Value::String(s.dlq()));
    assert_eq!(list["total"].as_u64(), Some(bads.len() as u64 + 1));
    let mut want_types: BTreeMap<String, u64> = BTreeMap::new();
    for b in &bads {
        *want_types.entry(b.error_type.to_string()).or_default() += 1;
    }
    want_types.insert("unknown".to_string(), 1);
    let mut got_types: BTreeMap<String, u64> = BTreeMap::new();
    for row in list["by_error_type"].as_array().expect("by_error_type") {
        let name = row["error_type"].as_str().expect("error_type").to_string();
        got_types.insert(name.clone(), row["count"].as_u64().expect("count"));
        let oldest = row["oldest"].as_str().expect("oldest");
        let newest = row["newest"].as_str().expect("newest");
        let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("RFC 3339");
        assert!(
            parse(oldest) <= parse(newest),
            "{name}: {oldest} > {newest}"
        );
    }
    assert_eq!(got_types, want_types, "dead letters by error type");
    let mut got_partitions: BTreeMap<Option<i64>, u64> = BTreeMap::new();
    for row in list["by_source_partition"]
        .as_array()
        .expect("by_source_partition")
    {
        got_partitions.insert(
            row["partition"].as_i64(),
            row["count"].as_u64().expect("count"),
        );
    }
    let per_partition = |p: i32| bads.iter().filter(|b| b.partition == p).count() as u64;
    let want_partitions = BTreeMap::from([
        (Some(0), per_partition(0)),
        (Some(1), per_partition(1)),
        (None, 1),
    ]);
    assert_eq!(
        got_partitions, want_partitions,
        "dead letters by source partition"
    );
    let text = dlq("list", &s.v1, &[]);
    assert!(
        text.contains(&s.dlq()) && text.contains("schema_violation"),
        "{text}"
    );

    // show: every record, its original key and value recoverable, its headers.
    let shown = json_lines(&dlq(
        "show",
        &s.v1,
        &["--output", "json", "--limit", "1000"],
    ));
    assert_eq!(shown.len(), bads.len() + 1, "records shown");
    let mut wrong = Vec::new();
    let mut expected: Vec<ShownRecord> = bads
        .iter()
        .map(|b| {
            (
                Some(i64::from(b.partition)),
                b.error_type.to_string(),
                b.key.clone(),
                b.value.clone(),
            )
        })
        .collect();
    expected.push((
        None,
        "unknown".to_string(),
        Some(b"hand".to_vec()),
        foreign.clone(),
    ));
    let mut got = Vec::new();
    for line in &shown {
        let (mut value, size, truncated) = shown_bytes(&line["value"]).expect("a value");
        let original = expected
            .iter()
            .find(|e| e.3.starts_with(&value) && e.3.len() == size)
            .map(|e| e.3.clone());
        match (truncated, original) {
            (false, _) if value.len() != size => wrong.push(format!(
                "size {size} but {} bytes shown: {line}",
                value.len()
            )),
            (true, Some(original)) if value.len() == 512 && size > 512 => value = original,
            (true, _) => wrong.push(format!(
                "a truncated value that is no record's first 512 bytes: {line}"
            )),
            (false, _) => {}
        }
        let key = shown_bytes(&line["key"]).map(|(k, _, _)| k);
        let error_type = line["error_type"].as_str().expect("error_type").to_string();
        let source_partition = line["source_partition"].as_i64();
        let headers = &line["headers"];
        if error_type == "unknown" {
            if headers.as_object().is_some_and(|h| !h.is_empty()) {
                wrong.push(format!("the foreign record shows headers: {line}"));
            }
        } else {
            if headers[header::ERROR_TYPE].as_str() != Some(error_type.as_str())
                || headers[header::SOURCE_TOPIC].as_str() != Some(s.topic.as_str())
                || headers[header::SOURCE_PARTITION]
                    .as_str()
                    .map(str::to_string)
                    != source_partition.map(|p| p.to_string())
                || headers[header::SOURCE_OFFSET]
                    .as_str()
                    .and_then(|o| o.parse::<i64>().ok())
                    .is_none()
            {
                wrong.push(format!(
                    "headers do not say where the record came from: {line}"
                ));
            }
            if line["topic"].as_str() != Some(s.dlq().as_str())
                || !dlq_records.iter().any(|r| {
                    Some(i64::from(r.partition)) == line["partition"].as_i64()
                        && Some(r.offset) == line["offset"].as_i64()
                })
            {
                wrong.push(format!("no such DLQ record: {line}"));
            }
        }
        got.push((source_partition, error_type, key, value));
    }
    expected.sort();
    got.sort();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        got, expected,
        "(source partition, error type, key, value) of every dead letter"
    );

    // show's filters.
    let only = |extra: &[&str]| {
        let mut args = vec!["--output", "json", "--limit", "1000"];
        args.extend_from_slice(extra);
        json_lines(&dlq("show", &s.v1, &args))
    };
    let binaries = only(&["--error-type", "not_utf8"]);
    assert_eq!(binaries.len(), 3, "not_utf8 records");
    assert!(
        binaries
            .iter()
            .all(|l| l["error_type"] == "not_utf8" && l["value"]["hex"].is_string())
    );
    let second = only(&["--partition", "1"]);
    assert_eq!(
        second.len() as u64,
        per_partition(1),
        "records from source partition 1"
    );
    assert!(second.iter().all(|l| l["source_partition"] == 1));
    let from = only(&["--offset", "2"]);
    assert_eq!(
        from.len(),
        dlq_records.iter().filter(|r| r.offset >= 2).count(),
        "records at DLQ offsets >= 2"
    );
    assert!(from.iter().all(|l| l["offset"].as_i64() >= Some(2)));
    assert_eq!(
        json_lines(&dlq("show", &s.v1, &["--output", "json", "--limit", "2"])).len(),
        2
    );

    // The text form: valid UTF-8, no control character a terminal would act on.
    let text = dlq("show", &s.v1, &["--limit", "1000"]);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in show's text output"
    );
    for needle in [
        "not UTF-8",
        "schema_violation",
        "\\u001b[31mred",
        "of 1528 bytes",
        "0x00ff",
    ] {
        assert!(
            text.contains(needle),
            "`{needle}` not in show's output:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// replay after a fix

#[test]
fn records_v1_rejected_are_replayed_once_and_counted_by_v2() {
    let s = Scenario::new("dlq-fix", 2);
    let mut records: Vec<Outgoing> = Vec::new();
    let mut fractional: BTreeMap<String, f64> = BTreeMap::new();
    for i in 0..40 {
        let p = i % 2;
        records.push((
            p,
            Some(format!("k{i}").into_bytes()),
            order(&format!("good-{i}"), &i.to_string()),
        ));
        if i % 3 == 0 {
            let id = format!("frac-{i}");
            let amount = f64::from(i) + 0.5;
            records.push((
                p,
                Some(id.clone().into_bytes()),
                order(&id, &amount.to_string()),
            ));
            fractional.insert(id, amount);
        }
    }
    let dead = s.dead_letter(&records, fractional.len());
    assert!(
        dead.iter()
            .all(|r| r.headers.get(header::ERROR_TYPE).map(String::as_str)
                == Some("schema_violation")),
        "every fractional amount is a schema_violation under v1"
    );
    let good = read_all(&format!("{}.results", s.name));
    assert_eq!(good.len(), records.len() - fractional.len(), "v1's results");
    // Someone else's record: replayed only with --to-topic, so skipped here.
    produce(&s.dlq(), &[(0, None, b"no headers".to_vec())]);

    // v2 continues v1's group: it starts after everything v1 consumed.
    let v2 = s.v2();
    let group = s.group();
    let mut daemon = s.spawn(&v2, "v2", &["--group", &group]);
    let summary = json_summary(&dlq("replay", &s.v1, &["--output", "json"]));
    assert_eq!(
        summary["scanned"].as_u64(),
        Some(fractional.len() as u64 + 1),
        "{summary}"
    );
    assert_eq!(
        summary["republished"].as_u64(),
        Some(fractional.len() as u64),
        "{summary}"
    );
    assert_eq!(summary["skipped_no_origin"].as_u64(), Some(1), "{summary}");
    assert_eq!(summary["target_topic"], Value::String(s.topic.clone()));
    assert_eq!(summary["dry_run"], Value::Bool(false));

    // v2's results hold exactly the replayed orders, once each.
    let results_topic = format!("{}.v2.results", s.name);
    wait_until(LONG, "v2 to count the replayed records", || {
        if let Some(status) = daemon.0.try_wait().expect("try_wait") {
            panic!(
                "sluice stream (v2) exited ({status}); its log:\n{}",
                log_tail(&s.log("v2"), 80)
            );
        }
        read_all(&results_topic).len() >= fractional.len()
    });
    std::thread::sleep(Duration::from_secs(3));
    let mut counted: BTreeMap<String, f64> = BTreeMap::new();
    let rows = read_all(&results_topic);
    for row in &rows {
        let value: Value =
            serde_json::from_slice(row.value.as_deref().unwrap_or_default()).expect("a JSON row");
        let id = value["order_id"].as_str().expect("order_id").to_string();
        let amount = value["amount"].as_f64().expect("amount");
        assert!(
            counted.insert(id.clone(), amount).is_none(),
            "{id} counted twice by v2"
        );
    }
    assert_eq!(rows.len(), fractional.len(), "rows in {results_topic}");
    assert_eq!(
        counted, fractional,
        "v2 counts the replayed orders with their amounts"
    );
    assert!(
        read_all(&format!("{}.v2.dlq", s.name)).is_empty(),
        "v2 dead-letters none of them"
    );

    // Back to their source partitions, each once, their bytes intact.
    let dlq_topic = s.dlq();
    let by_origin: BTreeMap<String, &Read> =
        dead.iter().map(|r| (origin_of(&dlq_topic, r), r)).collect();
    let back = replayed(&s.topic);
    assert_eq!(
        back.len(),
        fractional.len(),
        "replayed records in the source topic"
    );
    for (from, record) in &back {
        let original = by_origin
            .get(from)
            .unwrap_or_else(|| panic!("replayed from an unknown record {from}"));
        assert_eq!(record.value, original.value, "{from}: the value");
        assert_eq!(record.key, original.key, "{from}: the key");
        assert_eq!(
            Some(record.partition.to_string()),
            original.headers.get(header::SOURCE_PARTITION).cloned(),
            "{from}: its source partition"
        );
        assert_eq!(
            record.headers.len(),
            1,
            "{from}: only the replayed-from header"
        );
    }

    // The same command again: nothing left to re-publish.
    let again = json_summary(&dlq("replay", &s.v1, &["--output", "json"]));
    assert_eq!(again["republished"].as_u64(), Some(0), "{again}");
    assert_eq!(again["scanned"].as_u64(), Some(0), "{again}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        replayed(&s.topic).len(),
        fractional.len(),
        "nothing re-published twice"
    );
    assert_eq!(
        read_all(&results_topic).len(),
        fractional.len(),
        "v2 counted nothing more"
    );
    s.stop(daemon, "v2");
}

// ---------------------------------------------------------------------------------------------
// a killed replay, resumed

/// The DLQ offsets `group` has committed, summed over `partitions` (none: 0).
fn committed_sum(probe: &BaseConsumer, topic: &str, partitions: i32) -> i64 {
    sluice_kafka::committed(probe, topic, partitions, Duration::from_secs(10))
        .expect("committed offsets")
        .into_iter()
        .map(|o| o.unwrap_or(0))
        .sum()
}

#[test]
fn a_replay_killed_mid_way_and_run_again_republishes_each_record_once() {
    const DEAD: usize = 20_000;
    let s = Scenario::new("dlq-kill", 3);
    let records: Vec<Outgoing> = (0..DEAD)
        .map(|i| {
            let key = i.is_multiple_of(3).then(|| format!("key-{i}").into_bytes());
            (
                (i % 3) as i32,
                key,
                format!("not json {i} {}", "y".repeat(i % 50)).into_bytes(),
            )
        })
        .collect();
    let dead = s.dead_letter(&records, DEAD);
    let dlq_topic = s.dlq();
    let high: i64 = sluice_kafka::watermarks(
        &sluice_kafka::client_config(&bootstrap(), &[], |_| {})
            .create::<BaseConsumer>()
            .expect("client"),
        &dlq_topic,
        s.partitions,
        Duration::from_secs(10),
    )
    .expect("watermarks")
    .iter()
    .map(|(_, high)| high)
    .sum();

    // Its offsets, read (uncommitted transactions not waited for) while it runs.
    let group = unique("dlq-kill-replay");
    let probe: BaseConsumer = sluice_kafka::client_config(&bootstrap(), &[], |client| {
        client
            .set("group.id", &group)
            .set("isolation.level", "read_uncommitted");
    })
    .create()
    .expect("probe consumer");
    let log = s.log("replay-killed");
    let job = s.v1.to_str().expect("utf-8 path").to_string();
    let brokers = bootstrap();
    let args = [
        "dlq",
        "replay",
        "--job",
        job.as_str(),
        "--brokers",
        brokers.as_str(),
        "--batch-size",
        "200",
        "--group",
        group.as_str(),
    ];
    let mut replay = Daemon(
        Command::new(sluice_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawning sluice dlq replay"),
    );
    // Kill once some batches are committed, well before the last.
    let deadline = Instant::now() + LONG;
    let at_kill = loop {
        if let Some(status) = replay.0.try_wait().expect("try_wait") {
            panic!(
                "the replay ended ({status}) before it could be killed mid-way; its log:\n{}",
                log_tail(&log, 40)
            );
        }
        let done = committed_sum(&probe, &dlq_topic, s.partitions);
        if done > 0 {
            replay.kill();
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "the replay committed nothing in {LONG:?}; its log:\n{}",
            log_tail(&log, 40)
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let before = replayed(&s.topic).len();
    assert!(
        before > 0 && before < DEAD,
        "{before} of {DEAD} re-published when killed (committed offsets summed {at_kill} of {high}); its log:\n{}",
        log_tail(&log, 40)
    );

    // The same command again: init_transactions aborts the killed batch; it resumes after the
    // last committed one.
    let mut again = args.to_vec();
    again.extend(["--output", "json"]);
    let summary = json_summary(&sluice_ok(&again));
    let scanned = summary["scanned"].as_u64().expect("scanned") as usize;
    assert!(
        scanned > 0 && scanned < DEAD,
        "the second run read {scanned} of {DEAD}: it did not resume"
    );

    let expected: Vec<Republished> = {
        let mut e: Vec<_> = dead
            .iter()
            .map(|r| (origin_of(&dlq_topic, r), r.key.clone(), r.value.clone()))
            .collect();
        e.sort();
        e
    };
    let mut got: Vec<Republished> = replayed(&s.topic)
        .into_iter()
        .map(|(from, r)| (from, r.key, r.value))
        .collect();
    got.sort();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (from, _, _) in &got {
        *seen.entry(from.as_str()).or_default() += 1;
    }
    let twice: Vec<&&str> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(f, _)| f)
        .take(5)
        .collect();
    let wanted: BTreeSet<&str> = expected.iter().map(|(f, _, _)| f.as_str()).collect();
    let missing: Vec<&&str> = wanted
        .iter()
        .filter(|f| !seen.contains_key(**f))
        .take(5)
        .collect();
    assert!(
        twice.is_empty(),
        "re-published more than once (first few): {twice:?}"
    );
    assert!(
        missing.is_empty(),
        "never re-published (first few): {missing:?}"
    );
    assert_eq!(got.len(), DEAD, "records re-published");
    assert!(
        got == expected,
        "a re-published record's key or bytes differ from its dead letter's"
    );
    assert_eq!(
        read_all(&s.topic).len(),
        2 * DEAD,
        "the source holds the originals and one copy each"
    );
}

// ---------------------------------------------------------------------------------------------
// filters and dry run

#[test]
fn filters_select_exactly_their_records_and_a_dry_run_publishes_nothing() {
    let s = Scenario::new("dlq-filter", 2);
    // Two phases, dead-lettered a few seconds apart; `boundary` lies between them.
    let phase = |tag: &str| -> Vec<Outgoing> {
        (0..12)
            .map(|i| {
                let value = match i % 3 {
                    0 => format!("{tag} malformed {i}").into_bytes(),
                    1 => order(&format!("{tag}-frac-{i}"), &format!("{i}.5")),
                    _ => format!(r#"{{"order_id":"{tag}-nt-{i}","amount":1}}"#).into_bytes(),
                };
                (i % 2, None, value)
            })
            .collect()
    };
    let first = phase("A");
    produce(&s.topic, &first);
    let mut daemon = s.spawn(&s.v1, "v1", &[]);
    s.wait_consumed(&mut daemon, "v1", &s.group(), &counts(&first, s.partitions));
    std::thread::sleep(Duration::from_millis(1500));
    let boundary_ms = chrono::Utc::now().timestamp_millis();
    std::thread::sleep(Duration::from_millis(1500));
    let second = phase("B");
    produce(&s.topic, &second);
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    s.wait_consumed(&mut daemon, "v1", &s.group(), &counts(&all, s.partitions));
    s.stop(daemon, "v1");
    let dlq_topic = s.dlq();
    let dead = read_all(&dlq_topic);
    assert_eq!(dead.len(), all.len(), "every record is dead-lettered");
    let since = format_time(boundary_ms * 1000);
    let until = boundary_ms.to_string();

    let phase_of = |r: &Read| -> char {
        let value = r.value.as_deref().unwrap_or_default();
        if value.starts_with(b"A ") || value.windows(3).any(|w| w == b"\"A-") {
            'A'
        } else {
            'B'
        }
    };
    let kind = |r: &Read| {
        r.headers
            .get(header::ERROR_TYPE)
            .cloned()
            .unwrap_or_default()
    };
    let select = |keep: &dyn Fn(&Read) -> bool| -> BTreeSet<String> {
        dead.iter()
            .filter(|&r| keep(r))
            .map(|r| origin_of(&dlq_topic, r))
            .collect()
    };
    let run = |target: &str, extra: &[&str]| -> Value {
        let mut args = vec!["--output", "json", "--to-topic", target];
        args.extend_from_slice(extra);
        json_summary(&dlq("replay", &s.v1, &args))
    };
    let landed = |target: &str| -> BTreeSet<String> {
        let back = replayed(target);
        let set: BTreeSet<String> = back.iter().map(|(from, _)| from.clone()).collect();
        assert_eq!(
            set.len(),
            back.len(),
            "a record re-published twice to {target}"
        );
        set
    };

    let [violations, late, early, everything] =
        ["sv", "since", "until", "all"].map(|t| unique(&format!("dlq-filter-{t}")));
    for target in [&violations, &late, &early, &everything] {
        create_topic(target, 2);
    }
    let summary = run(&violations, &["--error-type", "schema_violation"]);
    let want = select(&|r| kind(r) == "schema_violation");
    assert_eq!(landed(&violations), want, "--error-type schema_violation");
    assert_eq!(
        summary["republished"].as_u64(),
        Some(want.len() as u64),
        "{summary}"
    );
    assert_eq!(
        summary["skipped_by_filter"].as_u64(),
        Some((dead.len() - want.len()) as u64),
        "{summary}"
    );

    run(
        &late,
        &[
            "--error-type",
            "malformed_json",
            "--error-type",
            "missing_field",
            "--since",
            &since,
        ],
    );
    let want = select(&|r| {
        phase_of(r) == 'B' && (kind(r) == "malformed_json" || kind(r) == "missing_field")
    });
    assert_eq!(want.len(), 8, "phase B holds 4 malformed and 4 missing");
    assert_eq!(landed(&late), want, "two error types --since the boundary");

    run(&early, &["--until", &until]);
    assert_eq!(
        landed(&early),
        select(&|r| phase_of(r) == 'A'),
        "--until the boundary"
    );

    // The dry run counts everything and publishes nothing; the real run then publishes it all.
    let dry = run(&everything, &["--dry-run"]);
    assert_eq!(dry["dry_run"], Value::Bool(true));
    assert_eq!(
        dry["republished"].as_u64(),
        Some(dead.len() as u64),
        "{dry}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        read_all(&everything).is_empty(),
        "a dry run published records"
    );
    let real = run(&everything, &[]);
    assert_eq!(
        real["republished"].as_u64(),
        Some(dead.len() as u64),
        "{real}"
    );
    assert_eq!(
        landed(&everything),
        select(&|_| true),
        "the real run after the dry run"
    );
    // A dry run reads the real run's group: after it, nothing is left.
    let after = run(&everything, &["--dry-run"]);
    assert_eq!(after["republished"].as_u64(), Some(0), "{after}");
}
