//! The processor over whole micro-batch sequences: emission, lateness, tombstones, restore.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::fixture::OrdersJob;
use sluice_core::speed::{PLAN_KEY, is_reserved_key};
use sluice_core::{DivertReason, Job, Pipeline};

use super::*;
use crate::state::StateStore;
use crate::watermark::Watermarks;

const SQL: &str = "SELECT region, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS ws,
  COUNT(*) AS n, SUM(amount) AS total, AVG(amount) AS mean
  FROM orders WHERE status = 'completed'
  GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)";

const MINUTE_MS: i64 = 60_000;
const T0: i64 = 1_714_557_600_000;

fn processor(dir: &Path) -> Processor {
    let job = OrdersJob {
        name: "opm",
        watermark_delay: "0s",
        allowed_lateness: "1m",
        ..OrdersJob::default()
    }
    .job(SQL);
    let pipeline = Arc::new(Pipeline::compile(&job, None).unwrap());
    let store = StateStore::open_fresh("opm", dir).unwrap();
    let watermarks = Watermarks::new(Duration::ZERO, Duration::from_secs(3600));
    let decoder = sluice_core::decode::for_job(&job, 1 << 20).unwrap();
    Processor::new(job, pipeline, store, watermarks, decoder)
}

fn record(partition: i32, offset: i64, payload: &str) -> SourceRecord {
    SourceRecord {
        partition,
        offset,
        timestamp_ms: None,
        key: Some(b"k".to_vec()),
        payload: Some(payload.as_bytes().to_vec()),
    }
}

fn order(partition: i32, offset: i64, region: &str, amount: f64, at_ms: i64) -> SourceRecord {
    record(
        partition,
        offset,
        &format!(
            r#"{{"order_id":"o{partition}-{offset}","region":"{region}","amount":{amount},"status":"completed","event_time":{at_ms}}}"#
        ),
    )
}

fn results(outputs: &[Output]) -> BTreeMap<String, String> {
    outputs
        .iter()
        .flat_map(|o| o.results.iter())
        .map(|(k, v)| {
            (
                String::from_utf8(k.clone().unwrap()).unwrap(),
                String::from_utf8(v.clone()).unwrap(),
            )
        })
        .collect()
}

fn batches() -> Vec<Vec<SourceRecord>> {
    vec![
        vec![
            order(0, 0, "eu", 10.0, T0),
            order(1, 0, "eu", 2.0, T0 + 1_000),
            order(0, 1, "us", 4.0, T0 + 30_000),
            record(0, 2, "{not json"),
        ],
        vec![
            order(0, 3, "eu", 6.0, T0 + MINUTE_MS + 5),
            order(1, 1, "eu", 1.0, T0 + MINUTE_MS),
        ],
        // Within lateness: updates and re-emits the first minute.
        vec![
            order(1, 2, "eu", 3.0, T0 + 2_000),
            order(0, 4, "eu", 1.0, T0 + 3 * MINUTE_MS),
        ],
        vec![order(1, 3, "us", 1.0, T0 + 3 * MINUTE_MS)],
        // Beyond lateness: the first minute ended 3 minutes before the watermark.
        vec![order(0, 5, "eu", 100.0, T0 + 10)],
    ]
}

#[test]
fn retired_windows_are_tombstoned_once_the_batch_view_covers_their_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(&dir.path().join("s"));
    let now = Instant::now();
    p.restore(0, Vec::new(), now).unwrap();
    p.restore(1, Vec::new(), now).unwrap();
    let mut written = BTreeMap::new();
    for batch in batches() {
        for r in p.process(batch, now).unwrap().speed {
            written.insert((r.partition, r.key), r.value);
        }
    }
    let codec = p.codec.clone().unwrap();
    assert_eq!(
        p.process(Vec::new(), now).unwrap().tombstoned,
        0,
        "no cutoff yet"
    );
    p.set_batch_cutoff(Some((T0 + 30 * MINUTE_MS) * 1000));
    assert_eq!(
        p.process(Vec::new(), now).unwrap().tombstoned,
        0,
        "the bucket [10:00, 11:00) is not covered by a cutoff at 10:30"
    );
    p.set_batch_cutoff(Some((T0 + 60 * MINUTE_MS) * 1000));
    let out = p.process(Vec::new(), now).unwrap();
    let tombstoned: BTreeSet<(i32, Vec<u8>)> = out
        .speed
        .iter()
        .filter(|r| r.value.is_none())
        .map(|r| (r.partition, r.key.clone()))
        .collect();
    assert_eq!(out.tombstoned, tombstoned.len());
    // Exactly the rows of the windows that expired: ended at least the allowed lateness
    // (1 min) before the emitted watermark (10:03); the 10:03 window stays.
    let emitted_us = (T0 + 3 * MINUTE_MS) * 1000;
    let expected: BTreeSet<(i32, Vec<u8>)> = written
        .iter()
        .filter(|((_, key), value)| value.is_some() && !is_reserved_key(key))
        .filter(|((_, key), _)| {
            let end = codec.key_times(key).unwrap().1.unwrap();
            end + 60_000_000 <= emitted_us
        })
        .map(|(k, _)| k.clone())
        .collect();
    assert!(expected.len() >= 3, "{expected:?}");
    assert_eq!(tombstoned, expected);
    assert_eq!(
        p.process(Vec::new(), now).unwrap().tombstoned,
        0,
        "each row once"
    );
}

#[test]
fn windows_emit_when_the_watermark_passes_and_late_records_are_diverted() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(&dir.path().join("s"));
    let now = Instant::now();
    p.restore(0, Vec::new(), now).unwrap();
    p.restore(1, Vec::new(), now).unwrap();
    let outputs: Vec<Output> = batches()
        .into_iter()
        .map(|b| p.process(b, now).unwrap())
        .collect();
    assert_eq!(outputs[0].dlq.len(), 1);
    assert_eq!(outputs[0].dlq[0].error_type, DivertReason::MalformedJson);
    assert_eq!(outputs[0].dlq[0].record.offset, 2);
    assert!(outputs[0].results.is_empty(), "nothing closed yet");
    let first = r#"{"region":"eu","ws":"2024-05-01T10:00:00Z"}"#;
    assert_eq!(
        results(&outputs[1..2]).get(first).map(String::as_str),
        Some(r#"{"region":"eu","ws":"2024-05-01T10:00:00Z","n":2,"total":12.0,"mean":6.0}"#),
        "the watermark passed 10:01 in partition 0 and 1"
    );
    assert_eq!(
        results(&outputs[2..3]).get(first).map(String::as_str),
        Some(r#"{"region":"eu","ws":"2024-05-01T10:00:00Z","n":3,"total":15.0,"mean":5.0}"#),
        "a record within the allowed lateness re-emits its window"
    );
    let late = &outputs[4].late;
    assert_eq!(late.len(), 1);
    assert_eq!(
        late[0].record.payload,
        order(0, 5, "eu", 100.0, T0 + 10).payload
    );
    assert!(!results(&outputs[4..]).contains_key(first));
    assert_eq!(outputs[4].next_offsets.get(&0), Some(&6));
}

#[test]
fn restoring_from_the_changelog_continues_exactly_where_the_state_was() {
    let dir = tempfile::tempdir().unwrap();
    let now = Instant::now();
    let mut straight = processor(&dir.path().join("a"));
    straight.restore(0, Vec::new(), now).unwrap();
    straight.restore(1, Vec::new(), now).unwrap();
    let all = batches();
    let expected: Vec<Output> = all
        .iter()
        .map(|b| straight.process(b.clone(), now).unwrap())
        .collect();

    let mut first = processor(&dir.path().join("b"));
    first.restore(0, Vec::new(), now).unwrap();
    first.restore(1, Vec::new(), now).unwrap();
    let mut changelog: BTreeMap<i32, Vec<ChangelogRecord>> = BTreeMap::new();
    for batch in &all[..2] {
        for r in first.process(batch.clone(), now).unwrap().speed {
            changelog
                .entry(r.partition)
                .or_default()
                .push((r.key, r.value));
        }
    }
    drop(first);
    let mut resumed = processor(&dir.path().join("b"));
    for partition in [0, 1] {
        resumed
            .restore(
                partition,
                changelog.remove(&partition).unwrap_or_default(),
                now,
            )
            .unwrap();
    }
    let rest: Vec<Output> = all[2..]
        .iter()
        .map(|b| resumed.process(b.clone(), now).unwrap())
        .collect();
    assert_eq!(results(&rest), results(&expected[2..]));
    let speed = |o: &[Output]| o.iter().flat_map(|o| o.speed.clone()).collect::<Vec<_>>();
    assert_eq!(speed(&rest), speed(&expected[2..]));
}

#[test]
fn a_changelog_another_plan_wrote_is_refused_and_a_new_one_gets_this_plans_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(&dir.path().join("p"));
    let now = Instant::now();
    p.restore(0, Vec::new(), now).unwrap();
    let first = p.process(Vec::new(), now).unwrap();
    let plan: Vec<_> = first.speed.iter().filter(|r| r.key == PLAN_KEY).collect();
    assert_eq!(plan.len(), 1, "one plan record for the new partition");
    let fingerprint = p.job.plan_fingerprint();
    assert_eq!(plan[0].value.as_deref(), Some(fingerprint.as_bytes()));
    assert!(
        p.process(Vec::new(), now)
            .unwrap()
            .speed
            .iter()
            .all(|r| r.key != PLAN_KEY),
        "written once"
    );

    let ours = vec![(PLAN_KEY.to_vec(), Some(fingerprint.as_bytes().to_vec()))];
    p.restore(1, ours, now).unwrap();
    assert!(p.plan_pending.is_empty(), "the changelog names this plan");

    let theirs = vec![(PLAN_KEY.to_vec(), Some(b"0123456789abcdef".to_vec()))];
    let refused = p.restore(2, theirs, now).unwrap_err().to_string();
    assert!(refused.contains("0123456789abcdef"), "{refused}");
    assert!(refused.contains(&fingerprint), "{refused}");
    assert!(refused.contains("[view] version"), "{refused}");
}

/// A processor like [`processor`]'s for `sql` (view key `key`) with the `outputs` TOML.
fn routing_processor(dir: &Path, sql: &str, key: &str, outputs: &str) -> Processor {
    let toml = OrdersJob {
        name: "opm",
        watermark_delay: "0s",
        allowed_lateness: "1m",
        key,
        ..OrdersJob::default()
    }
    .toml(sql)
        + outputs;
    let job = Job::from_toml(&toml, Path::new("opm.toml")).unwrap();
    let pipeline = Arc::new(Pipeline::compile(&job, None).unwrap());
    let store = StateStore::open_fresh("opm", dir).unwrap();
    let watermarks = Watermarks::new(Duration::ZERO, Duration::from_secs(3600));
    let decoder = sluice_core::decode::for_job(&job, 1 << 20).unwrap();
    Processor::new(job, pipeline, store, watermarks, decoder)
}

/// (output, key, value) of an output's routed records, sorted.
fn routed(output: &Output) -> Vec<(usize, Option<Vec<u8>>, Vec<u8>)> {
    let mut routed: Vec<_> = output
        .routed
        .iter()
        .map(|r| (r.output, r.key.clone(), r.value.clone()))
        .collect();
    routed.sort();
    routed
}

fn field(row: &[u8], name: &str) -> serde_json::Value {
    let row: serde_json::Value = serde_json::from_slice(row).unwrap();
    row[name].clone()
}

#[test]
fn an_aggregates_emitted_windows_are_routed_with_their_result_keys() {
    let outputs = r#"
[[outputs]]
name = "busy"
where = "n >= 2"
[[outputs]]
name = "quiet"
else = true
"#;
    let dir = tempfile::tempdir().unwrap();
    let mut p = routing_processor(&dir.path().join("s"), SQL, r#"["region"]"#, outputs);
    let now = Instant::now();
    p.restore(0, Vec::new(), now).unwrap();
    p.restore(1, Vec::new(), now).unwrap();
    let mut seen = BTreeSet::new();
    for batch in batches() {
        let out = p.process(batch, now).unwrap();
        let mut expected: Vec<_> = out
            .results
            .iter()
            .map(|(key, value)| {
                let busy = field(value, "n").as_i64().unwrap() >= 2;
                (usize::from(!busy), key.clone(), value.clone())
            })
            .collect();
        expected.sort();
        assert_eq!(routed(&out), expected, "each result once, in its output");
        seen.extend(expected.iter().map(|(output, _, _)| *output));
    }
    assert_eq!(seen, BTreeSet::from([0, 1]), "both outputs got rows");
}

#[test]
fn a_stateless_jobs_rows_go_to_every_output_they_match_and_all_to_results() {
    let outputs = r#"
[[outputs]]
name = "big"
where = "amount >= 5"
[[outputs]]
name = "eu"
where = "region = 'eu'"
"#;
    let sql = "SELECT order_id, region, amount FROM orders WHERE status = 'completed'";
    let dir = tempfile::tempdir().unwrap();
    let mut p = routing_processor(&dir.path().join("s"), sql, "[]", outputs);
    let now = Instant::now();
    p.restore(0, Vec::new(), now).unwrap();
    let out = p
        .process(
            vec![
                order(0, 0, "eu", 10.0, T0),
                order(0, 1, "us", 10.0, T0),
                order(0, 2, "eu", 1.0, T0),
                order(0, 3, "us", 1.0, T0),
            ],
            now,
        )
        .unwrap();
    assert_eq!(out.results.len(), 4, "results keep every row");
    let ids = |wanted: usize| -> Vec<String> {
        routed(&out)
            .into_iter()
            .filter(|(output, _, _)| *output == wanted)
            .map(|(_, key, value)| {
                assert_eq!(key, None, "a stateless row has no result key");
                field(&value, "order_id").as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(ids(0), vec!["o0-0", "o0-1"]);
    assert_eq!(ids(1), vec!["o0-0", "o0-2"]);
    let results: BTreeSet<&Vec<u8>> = out.results.iter().map(|(_, v)| v).collect();
    assert!(out.routed.iter().all(|r| results.contains(&r.value)));
}
