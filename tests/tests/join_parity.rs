//! P1–P2 of docs/design/joins.md §12 for the temporal join, through the batch layer: random
//! stream rows and random table versions land in their raw Delta tables (Kafka partitions
//! and files), random bucket-aligned ranges are backfilled, and the view equals an
//! independent DataFusion SQL reference over all rows.
//!
//! The reference has no Sluice code: each version's validity is `[valid_from, next
//! valid_from)` by `LEAD`, and a stream row joins the version whose validity holds its time
//! (LEFT: or nulls; inner: or nothing). Versions of a key have distinct times here (ties are
//! decided by row id, which `core/src/join/temporal_tests.rs` covers). Versions before every
//! range and after every row are generated, so a backfill must read the table's history,
//! not its range. Amounts are multiples of 0.25, so sums are exact in any order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use sluice_core::Job;
use sluice_core::lake::{TableLocation, raw_rows, raw_schema};
use sluice_e2e::{backfill_range, canonical_rows, in_ranges_sql, project_columns, temp_lake};

/// 2024-05-01T10:00:00Z: aligned to every bucket used here.
const BASE_MS: i64 = 1_714_557_600_000;
const STEP_MS: i64 = 15_000;
const STEPS: i64 = 41;

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// The joined rows themselves (a stateless job).
    Rows,
    /// Counted and summed per the version's `r` and minute.
    PerMinute,
}

const SHAPES: [Shape; 2] = [Shape::Rows, Shape::PerMinute];

fn sql(shape: Shape, left: bool) -> String {
    let join = if left { "LEFT JOIN" } else { "JOIN" };
    let from = format!("FROM t AS o {join} v FOR SYSTEM_TIME AS OF o.ts AS c ON o.k = c.k");
    match shape {
        Shape::Rows => format!("SELECT o.k AS k, o.a AS a, o.ts AS ts, c.r AS r {from}"),
        Shape::PerMinute => format!(
            "SELECT c.r AS r, TUMBLE_START(o.ts, INTERVAL '1' MINUTE) AS w, COUNT(*) AS n, \
             SUM(o.a) AS s {from} GROUP BY c.r, TUMBLE(o.ts, INTERVAL '1' MINUTE)"
        ),
    }
}

/// The view key (TOML) and the view's result columns.
fn view(shape: Shape) -> (&'static str, &'static [&'static str]) {
    match shape {
        Shape::Rows => ("", &["k", "a", "ts", "r"]),
        Shape::PerMinute => ("\"r\"", &["r", "w", "n", "s"]),
    }
}

fn reference_sql(shape: Shape, left: bool, ranges: &[(i64, i64)]) -> String {
    let in_ranges = in_ranges_sql("t", ranges);
    let join = if left { "LEFT JOIN" } else { "JOIN" };
    let joined = format!(
        "SELECT e.k AS k, e.a AS a, e.t AS t, vv.r AS r FROM \
           (SELECT k, a, CAST(ts AS BIGINT) AS t FROM ev) e \
         {join} (SELECT k, r, CAST(vt AS BIGINT) AS f, \
                   LEAD(CAST(vt AS BIGINT)) OVER (PARTITION BY k ORDER BY vt) AS u FROM tv) vv \
           ON e.k = vv.k AND vv.f <= e.t AND (vv.u IS NULL OR e.t < vv.u) \
         WHERE {in_ranges}"
    );
    match shape {
        Shape::Rows => format!("SELECT k, a, t AS ts, r FROM ({joined})"),
        Shape::PerMinute => format!(
            "SELECT r, w, COUNT(*) AS n, SUM(a) AS s FROM ( \
               SELECT r, a, t - t % 60000000 AS w FROM ({joined})) GROUP BY r, w"
        ),
    }
}

/// A stream row: key, amount in quarters, time (µs), its append (a partition, or a file).
type Event = (Option<u8>, Option<i32>, i64, Option<i32>);
/// A version: key, `r`, valid_from (µs), its append.
type Version = (u8, Option<u8>, i64, Option<i32>);

#[derive(Debug, Clone)]
struct Case {
    shape: Shape,
    left: bool,
    bucket: &'static str,
    events: Vec<Event>,
    versions: Vec<Version>,
    ranges: Vec<(i64, i64)>,
}

fn job(case: &Case) -> Job {
    let toml = format!(
        r#"
name = "join_parity"
[[sources]]
topic = "t"
event_time = "ts"
fields = [
  {{ name = "k", type = "string" }},
  {{ name = "a", type = "float64" }},
  {{ name = "ts", type = "timestamp" }},
]
[[tables]]
topic = "v"
key = ["k"]
valid_from = "vt"
fields = [
  {{ name = "k", type = "string", nullable = false }},
  {{ name = "r", type = "string" }},
  {{ name = "vt", type = "timestamp" }},
]
[transform]
sql = "{sql}"
[view]
key = [{key}]
bucket = "{bucket}"
"#,
        sql = sql(case.shape, case.left),
        key = view(case.shape).0,
        bucket = case.bucket,
    );
    Job::from_toml(&toml, Path::new("join_parity.toml")).expect("the job file")
}

fn times(values: impl Iterator<Item = i64>) -> TimestampMicrosecondArray {
    TimestampMicrosecondArray::from(values.collect::<Vec<_>>()).with_timezone("UTC")
}

/// Appends `rows` (built by `batch` per append) to `job`'s raw table, offsets counted per
/// partition; returns every landed raw row.
async fn land<T>(
    job: &Job,
    lake: &sluice_core::Lake,
    rows: &[T],
    append_of: impl Fn(&T) -> Option<i32>,
    batch: impl Fn(&[&T]) -> RecordBatch,
) -> Vec<RecordBatch> {
    let raw = TableLocation::new(lake.raw_table(job));
    let appends: BTreeSet<Option<i32>> = rows.iter().map(&append_of).collect();
    let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let mut landed = Vec::new();
    for append in appends {
        let part: Vec<&T> = rows.iter().filter(|r| append_of(r) == append).collect();
        let source = batch(&part);
        let offsets: Vec<i64> = match append {
            Some(p) => {
                let next = next_offset.entry(p).or_insert(0);
                let start = *next;
                *next += part.len() as i64;
                (start..*next).collect()
            }
            None => Vec::new(),
        };
        let origin = append.map(|p| (p, offsets.as_slice()));
        let rows = raw_rows(job, &source, origin).expect("raw rows");
        raw.append(vec![rows.clone()], HashMap::new(), Vec::new())
            .await
            .expect("appending raw rows");
        landed.push(rows);
    }
    landed
}

async fn check(case: &Case) {
    let job = job(case);
    let (_dir, lake) = temp_lake();
    let stream = job.primary_input().job;
    let table = job.input("v").expect("the table input").job;
    let events = land(
        &stream,
        &lake,
        &case.events,
        |e| e.3,
        |rows| {
            let keys: StringArray = rows.iter().map(|r| r.0.map(|k| format!("k{k}"))).collect();
            let amounts: Float64Array = rows
                .iter()
                .map(|r| r.1.map(|q| f64::from(q) / 4.0))
                .collect();
            RecordBatch::try_new(
                stream.source_schema(),
                vec![
                    Arc::new(keys),
                    Arc::new(amounts),
                    Arc::new(times(rows.iter().map(|r| r.2))),
                ],
            )
            .expect("stream rows")
        },
    )
    .await;
    let versions = land(
        &table,
        &lake,
        &case.versions,
        |v| v.3,
        |rows| {
            let keys: StringArray = rows.iter().map(|r| Some(format!("k{}", r.0))).collect();
            let regions: StringArray = rows.iter().map(|r| r.1.map(|x| format!("r{x}"))).collect();
            RecordBatch::try_new(
                table.source_schema(),
                vec![
                    Arc::new(keys),
                    Arc::new(regions),
                    Arc::new(times(rows.iter().map(|r| r.2))),
                ],
            )
            .expect("table rows")
        },
    )
    .await;
    let ctx = SessionContext::new();
    for (name, job, batches) in [("ev", &stream, events), ("tv", &table, versions)] {
        let all = MemTable::try_new(raw_schema(job), vec![batches]).expect("a memory table");
        ctx.register_table(name, Arc::new(all))
            .expect("registering");
    }
    let context = format!(
        "{:?}, left {}, bucket {}, ranges {:?}",
        case.shape, case.left, case.bucket, case.ranges
    );
    for &(from, to) in &case.ranges {
        let report = backfill_range(&job, &lake, (from, to), &context).await;
        let in_range = case
            .events
            .iter()
            .filter(|e| (from..to).contains(&e.2))
            .count();
        assert_eq!(report.rows_read, in_range, "rows read; {context}");
    }
    let view_rows = TableLocation::new(lake.view_table(&job))
        .read_all()
        .await
        .expect("reading the view");
    let got = project_columns(&view_rows, view(case.shape).1);
    let sql = reference_sql(case.shape, case.left, &case.ranges);
    let expected = ctx
        .sql(&sql)
        .await
        .expect(&sql)
        .collect()
        .await
        .expect(&sql);
    assert_eq!(canonical_rows(&got), canonical_rows(&expected), "{context}");
}

fn at_ms(ms: i64) -> i64 {
    (BASE_MS + ms) * 1000
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    let t_us = (0i64..STEPS, -1i64..=1).prop_map(|(step, jitter)| at_ms(step * STEP_MS + jitter));
    let row = (
        prop::option::weighted(0.9, 0u8..5),
        prop::option::weighted(0.9, -40i32..400),
        t_us,
        prop::option::weighted(0.8, 0i32..3),
    );
    prop::collection::vec(row, 1..120)
}

/// Versions of keys 0..4 (key 4 has none) on a 5 s grid (a third of them at a row's time
/// exactly) from 2 minutes before the first row to 2 minutes after the last: distinct times per
/// key.
fn versions() -> impl Strategy<Value = Vec<Version>> {
    let row = (
        0u8..4,
        prop::option::weighted(0.85, 0u8..3),
        -24i64..144,
        prop::option::weighted(0.8, 0i32..2),
    );
    prop::collection::vec(row, 0..60).prop_map(|rows| {
        let mut seen = BTreeSet::new();
        rows.into_iter()
            .filter(|(k, _, slot, _)| seen.insert((*k, *slot)))
            .map(|(k, r, slot, append)| (k, r, at_ms(slot * 5_000), append))
            .collect()
    })
}

const BUCKETS: [(&str, i64); 3] = [("1m", 60_000_000), ("2m", 120_000_000), ("5m", 300_000_000)];

/// One or two disjoint bucket-aligned ranges over the rows' span.
fn ranges(bucket_us: i64, (start, len, second): (i64, i64, Option<i64>)) -> Vec<(i64, i64)> {
    let low = at_ms(0) - bucket_us;
    let end = at_ms((STEPS - 1) * STEP_MS + 1) + 1;
    let buckets = (end - low + bucket_us - 1) / bucket_us;
    let start = start % buckets;
    let len = 1 + len % (buckets - start);
    let at = |b: i64| low + b * bucket_us;
    let mut ranges = vec![(at(start), at(start + len))];
    if let Some(gap) = second {
        let next = start + len + gap;
        ranges.push((at(next), at(next + 2)));
    }
    ranges
}

proptest! {
    // Each case writes two Delta tables and backfills once or twice.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn backfilled_ranges_equal_the_sql_reference_over_all_rows(
        events in events(),
        versions in versions(),
        shape in 0usize..2,
        left in any::<bool>(),
        bucket in 0usize..3,
        pick in (0i64..16, 0i64..16, prop::option::weighted(0.4, 0i64..3)),
    ) {
        let (bucket, bucket_us) = BUCKETS[bucket];
        let case = Case {
            shape: SHAPES[shape],
            left,
            bucket,
            events,
            versions,
            ranges: ranges(bucket_us, pick),
        };
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        runtime.block_on(check(&case));
    }
}

/// A hand-made case: versions before the range, between rows, after every row; a key with
/// no version; a null key; both appends kinds.
#[tokio::test(flavor = "multi_thread")]
async fn history_before_the_range_decides_the_rows_of_the_range() {
    for (shape, left) in [
        (Shape::Rows, true),
        (Shape::Rows, false),
        (Shape::PerMinute, true),
    ] {
        let case = Case {
            shape,
            left,
            bucket: "1m",
            events: vec![
                (Some(0), Some(4), at_ms(65_000), Some(0)),
                (Some(0), Some(8), at_ms(100_000), Some(1)),
                (Some(1), Some(12), at_ms(70_000), None),
                (Some(4), Some(16), at_ms(80_000), Some(0)),
                (None, Some(20), at_ms(90_000), Some(0)),
                (Some(2), Some(24), at_ms(10_000), Some(0)),
            ],
            versions: vec![
                (0, Some(0), at_ms(-3_600_000), Some(0)),
                (0, Some(1), at_ms(90_000), None),
                (1, None, at_ms(69_000), Some(1)),
                (2, Some(2), at_ms(500_000), Some(0)),
            ],
            ranges: vec![(at_ms(60_000), at_ms(120_000))],
        };
        check(&case).await;
    }
}
