//! The processor on a deduplicating job: rows held until the release bound passes them,
//! duplicates within the horizon dropped, late rows diverted, and the operator state restored
//! from `<job>.state` so a restart continues exactly where the state was.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::Pipeline;
use sluice_core::fixture::OrdersJob;

use super::*;
use crate::state::StateStore;
use crate::watermark::Watermarks;

const SQL: &str = "SELECT order_id, region, amount FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY order_id ORDER BY event_time) AS rn FROM orders
) WHERE rn = 1";

const T0: i64 = 1_714_557_600_000;
const SECOND_MS: i64 = 1_000;
const HOUR_MS: i64 = 3_600_000;

fn processor(dir: &Path) -> Processor {
    let job = OrdersJob {
        name: "dedup",
        watermark_delay: "0s",
        allowed_lateness: "0s",
        key: "[]",
        ..OrdersJob::default()
    }
    .job(SQL);
    let pipeline = Arc::new(Pipeline::compile(&job, None).unwrap());
    assert!(pipeline.dedup().is_some(), "the SQL deduplicates");
    let store = StateStore::open_fresh("dedup", dir).unwrap();
    let watermarks = Watermarks::new(Duration::ZERO, Duration::from_secs(3600));
    let decoder = sluice_core::decode::for_job(&job, 1 << 20).unwrap();
    Processor::new(job, pipeline, store, watermarks, decoder)
}

fn order(partition: i32, offset: i64, id: &str, amount: f64, at_ms: i64) -> SourceRecord {
    SourceRecord {
        partition,
        offset,
        timestamp_ms: None,
        key: None,
        payload: Some(
            format!(
                r#"{{"order_id":"{id}","region":"eu","amount":{amount},"status":"completed","event_time":{at_ms}}}"#
            )
            .into_bytes(),
        ),
    }
}

fn batches() -> Vec<Vec<SourceRecord>> {
    vec![
        // Released up to the watermark (T0 + 10 s, no delay): o1 and o2; the duplicate at
        // the watermark waits.
        vec![
            order(0, 0, "o1", 1.0, T0),
            order(0, 1, "o1", 2.0, T0 + 10 * SECOND_MS),
            order(0, 2, "o2", 3.0, T0 + 5 * SECOND_MS),
            order(1, 0, "o9", 4.0, T0 + 20 * SECOND_MS),
        ],
        // The held duplicate goes (10 s after o1); o1 two hours later is a new order.
        vec![
            order(0, 3, "o1", 5.0, T0 + 2 * HOUR_MS),
            order(0, 4, "o3", 6.0, T0 + 2 * HOUR_MS + SECOND_MS),
            order(1, 1, "o9", 7.0, T0 + 2 * HOUR_MS + 30 * SECOND_MS),
        ],
        // Late: before partition 0's release bound.
        vec![
            order(0, 5, "o4", 8.0, T0 + SECOND_MS),
            order(0, 6, "o5", 9.0, T0 + 3 * HOUR_MS),
            order(1, 2, "o8", 1.5, T0 + 3 * HOUR_MS),
        ],
        // A duplicate of o3 (59 min 59 s after it) at the bound: held, not late.
        vec![
            order(0, 7, "o3", 10.0, T0 + 3 * HOUR_MS),
            order(1, 3, "o7", 1.0, T0 + 6 * HOUR_MS),
        ],
    ]
}

fn amounts(outputs: &[Output]) -> Vec<String> {
    let mut out: Vec<String> = outputs
        .iter()
        .flat_map(|o| o.results.iter())
        .map(|(_, v)| {
            let row: serde_json::Value = serde_json::from_slice(v).unwrap();
            format!("{}={}", row["order_id"].as_str().unwrap(), row["amount"])
        })
        .collect();
    out.sort();
    out
}

fn started(dir: &Path) -> Processor {
    let mut p = processor(dir);
    let now = Instant::now();
    p.restore(0, Vec::new(), now).unwrap();
    p.restore(1, Vec::new(), now).unwrap();
    p
}

#[test]
fn rows_wait_for_the_bound_and_duplicates_within_the_horizon_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = started(&dir.path().join("s"));
    let now = Instant::now();
    let outputs: Vec<Output> = batches()
        .into_iter()
        .map(|b| p.process(b, now).unwrap())
        .collect();
    // The job watermark is the slower partition's: partition 1 at T0 + 20 s.
    assert_eq!(amounts(&outputs[..1]), ["o1=1.0", "o2=3.0"]);
    assert_eq!(outputs[0].deduplicated, 0);
    assert!(!outputs[0].state.is_empty(), "held rows are in <job>.state");
    assert_eq!(
        amounts(&outputs[1..2]),
        ["o1=5.0", "o9=4.0"],
        "the bound (T0 + 2 h) passed the duplicate and o1's new order"
    );
    assert_eq!(outputs[1].deduplicated, 1, "o1 10 s after o1");
    assert_eq!(outputs[2].late.len(), 1);
    assert_eq!(outputs[2].late[0].record.offset, 5);
    assert_eq!(
        outputs[3].deduplicated, 0,
        "o3's duplicate is not decided yet"
    );
    let everything = amounts(&outputs);
    assert_eq!(
        everything,
        ["o1=1.0", "o1=5.0", "o2=3.0", "o3=6.0", "o9=4.0", "o9=7.0"],
        "o5, o8 and o3's duplicate wait at the bound (T0 + 3 h)"
    );
    // The watermark records carry the release bound.
    let marks: Vec<PartitionWatermark> = outputs[3]
        .speed
        .iter()
        .filter(|r| r.key == WATERMARK_KEY)
        .map(|r| PartitionWatermark::decode(r.value.as_deref().unwrap()).unwrap())
        .collect();
    assert!(marks.iter().all(|m| m.purge_us.is_some()), "{marks:?}");
    let pushed = p
        .process(
            vec![
                order(0, 8, "o6", 1.0, T0 + 10 * HOUR_MS),
                order(1, 4, "o6", 1.0, T0 + 10 * HOUR_MS),
            ],
            now,
        )
        .unwrap();
    assert_eq!(
        pushed.deduplicated, 1,
        "o3's duplicate, 59 min 59 s after it"
    );
    assert_eq!(amounts(&[pushed]), ["o5=9.0", "o7=1.0", "o8=1.5"]);
}

#[test]
fn a_restart_from_the_changelogs_continues_exactly_where_the_state_was() {
    let dir = tempfile::tempdir().unwrap();
    let now = Instant::now();
    let all = batches();
    let mut straight = started(&dir.path().join("a"));
    let expected: Vec<Output> = all
        .iter()
        .map(|b| straight.process(b.clone(), now).unwrap())
        .collect();

    let mut first = started(&dir.path().join("b"));
    let mut speed: BTreeMap<i32, Vec<ChangelogRecord>> = BTreeMap::new();
    let mut state: BTreeMap<i32, Vec<ChangelogRecord>> = BTreeMap::new();
    for batch in &all[..2] {
        let out = first.process(batch.clone(), now).unwrap();
        for r in out.speed {
            speed.entry(r.partition).or_default().push((r.key, r.value));
        }
        for r in out.state {
            state.entry(r.partition).or_default().push((r.key, r.value));
        }
    }
    drop(first);
    // A store that lost everything (as after a crash): both changelogs bring it back.
    let mut resumed = processor(&dir.path().join("c"));
    for partition in [0, 1] {
        resumed
            .restore(partition, speed.remove(&partition).unwrap_or_default(), now)
            .unwrap();
        resumed.start_operator_restore(partition).unwrap();
        resumed
            .restore_operator_chunk(partition, state.remove(&partition).unwrap_or_default())
            .unwrap();
    }
    let rest: Vec<Output> = all[2..]
        .iter()
        .map(|b| resumed.process(b.clone(), now).unwrap())
        .collect();
    assert_eq!(amounts(&rest), amounts(&expected[2..]));
    let late = |o: &[Output]| o.iter().map(|o| o.late.len()).sum::<usize>();
    assert_eq!(late(&rest), late(&expected[2..]));
    let changes = |o: &[Output]| o.iter().flat_map(|o| o.state.clone()).collect::<Vec<_>>();
    assert_eq!(changes(&rest), changes(&expected[2..]));
}
