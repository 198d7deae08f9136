//! P2 of docs/design/joins.md §12 for first-row deduplication: the batch layer over random raw
//! rows and random bucket-aligned backfill ranges equals an independent SQL reference over all
//! rows.
//!
//! Raw rows (keys with nulls, many equal and near-equal times, several source partitions and
//! rows loaded from files) land in the raw Delta table in a few appends; one or two disjoint
//! ranges are backfilled and the view read back. The reference is plain DataFusion SQL with
//! no Sluice plan: a row is dropped when `t - LAG(t) OVER (PARTITION BY partition, k ORDER BY
//! t, offset) <= dedup_within`, computed over every row (also those before the range, which
//! only the backfill's reach lets it see), then restricted to the ranges and, for the
//! aggregate, counted and summed per key and minute. Amounts are multiples of 0.25 so float
//! sums are exact in any order.

use std::collections::{BTreeMap, HashMap};
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
const FIRST_ROWS: &str = "(SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM t)";
/// Sizes of the generated data: times on a 15 s grid over 10 minutes, ±1 ms.
const STEP_MS: i64 = 15_000;
const STEPS: i64 = 41;

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// The first rows themselves (a stateless job).
    Rows,
    /// The first rows counted and summed per key and minute.
    PerMinute,
}

impl Shape {
    fn sql(self) -> String {
        match self {
            Shape::Rows => format!("SELECT k, a, ts FROM {FIRST_ROWS} WHERE rn = 1"),
            Shape::PerMinute => format!(
                "SELECT k, TUMBLE_START(ts, INTERVAL '1' MINUTE) AS w, COUNT(*) AS n, SUM(a) AS s \
                 FROM {FIRST_ROWS} WHERE rn = 1 GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)"
            ),
        }
    }

    /// The view key (TOML) and the view's result columns (not its partial states or bucket).
    fn view(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Shape::Rows => ("", &["k", "a", "ts"]),
            Shape::PerMinute => ("\"k\"", &["k", "w", "n", "s"]),
        }
    }

    /// Over the raw rows as table `ev`. File rows have a null partition, one window partition
    /// of their own, and a null offset: they tie only with identical rows (`file_quarters`).
    fn reference_sql(self, within_us: i64, ranges: &[(i64, i64)]) -> String {
        let in_ranges = in_ranges_sql("t", ranges);
        let kept = format!(
            "SELECT k, a, t FROM ( \
               SELECT k, a, t, t - LAG(t) OVER ( \
                 PARTITION BY __source_partition, k ORDER BY t, __source_offset) AS gap \
               FROM (SELECT *, CAST(ts AS BIGINT) AS t FROM ev)) \
             WHERE (gap IS NULL OR gap > {within_us}) AND ({in_ranges})"
        );
        match self {
            Shape::Rows => format!("SELECT k, a, t AS ts FROM ({kept})"),
            Shape::PerMinute => format!(
                "SELECT k, w, COUNT(*) AS n, SUM(a) AS s FROM ( \
                   SELECT k, a, t - t % 60000000 AS w FROM ({kept})) GROUP BY k, w"
            ),
        }
    }
}

/// A raw row as it lands.
#[derive(Debug, Clone)]
struct Placed {
    key: Option<u8>,
    quarters: Option<i32>,
    t_us: i64,
    /// Its Kafka offset (ignored in a file append).
    offset: i64,
}

/// One commit to the raw table: rows of one source partition, or of a file (`None`).
#[derive(Debug, Clone)]
struct Append {
    partition: Option<i32>,
    rows: Vec<Placed>,
}

#[derive(Debug, Clone)]
struct Case {
    shape: Shape,
    /// `dedup_within` as written, and in µs.
    within: (&'static str, i64),
    bucket: &'static str,
    appends: Vec<Append>,
    /// Bucket-aligned `[from, to)`, backfilled in this order.
    ranges: Vec<(i64, i64)>,
}

fn job(case: &Case) -> Job {
    let toml = format!(
        r#"
name = "dedup_parity"
[source]
topic = "t"
event_time = "ts"
fields = [
  {{ name = "k", type = "string" }},
  {{ name = "a", type = "float64" }},
  {{ name = "ts", type = "timestamp" }},
]
[transform]
sql = "{sql}"
dedup_within = "{within}"
[view]
key = [{key}]
bucket = "{bucket}"
"#,
        sql = case.shape.sql(),
        within = case.within.0,
        key = case.shape.view().0,
        bucket = case.bucket,
    );
    Job::from_toml(&toml, Path::new("dedup_parity.toml")).expect("the job file")
}

fn source_batch(job: &Job, rows: &[Placed]) -> RecordBatch {
    let keys: StringArray = rows
        .iter()
        .map(|r| r.key.map(|k| format!("k{k}")))
        .collect();
    let amounts: Float64Array = rows
        .iter()
        .map(|r| r.quarters.map(|q| f64::from(q) / 4.0))
        .collect();
    let times = TimestampMicrosecondArray::from(rows.iter().map(|r| r.t_us).collect::<Vec<_>>())
        .with_timezone("UTC");
    RecordBatch::try_new(
        job.source_schema(),
        vec![Arc::new(keys), Arc::new(amounts), Arc::new(times)],
    )
    .expect("a source batch")
}

async fn reference(ctx: &SessionContext, case: &Case, ranges: &[(i64, i64)]) -> Vec<String> {
    let sql = case.shape.reference_sql(case.within.1, ranges);
    let rows = ctx
        .sql(&sql)
        .await
        .expect(&sql)
        .collect()
        .await
        .expect(&sql);
    canonical_rows(&rows)
}

/// Lands `case`'s raw rows, backfills its ranges, checks each report and the view against the
/// reference; returns the view's result rows (canonical).
async fn check(case: &Case) -> Vec<String> {
    let job = job(case);
    let (_dir, lake) = temp_lake();
    let raw = TableLocation::new(lake.raw_table(&job));
    let mut landed = Vec::new();
    for append in case.appends.iter().filter(|a| !a.rows.is_empty()) {
        let offsets: Vec<i64> = append.rows.iter().map(|r| r.offset).collect();
        let origin = append.partition.map(|p| (p, offsets.as_slice()));
        let rows = raw_rows(&job, &source_batch(&job, &append.rows), origin).expect("raw rows");
        raw.append(vec![rows.clone()], HashMap::new(), Vec::new())
            .await
            .expect("appending raw rows");
        landed.push(rows);
    }
    // The reference reads the very rows landed, every one of them, with SQL alone.
    let ctx = SessionContext::new();
    let all = MemTable::try_new(raw_schema(&job), vec![landed]).expect("a memory table");
    ctx.register_table("ev", Arc::new(all))
        .expect("registering the raw rows");
    let context = format!(
        "{:?}, within {}, bucket {}, ranges {:?}",
        case.shape, case.within.0, case.bucket, case.ranges
    );
    for &(from, to) in &case.ranges {
        let report = backfill_range(&job, &lake, (from, to), &context).await;
        let in_range = case
            .appends
            .iter()
            .flat_map(|a| &a.rows)
            .filter(|r| (from..to).contains(&r.t_us))
            .count();
        assert_eq!(
            report.rows_read, in_range,
            "rows read for [{from}, {to}): the reach before it is not counted; {context}"
        );
        assert_eq!(
            report.view_rows,
            reference(&ctx, case, &[(from, to)]).await.len(),
            "view rows of [{from}, {to}); {context}"
        );
    }
    let view = TableLocation::new(lake.view_table(&job))
        .read_all()
        .await
        .expect("reading the view");
    let got = canonical_rows(&project_columns(&view, case.shape.view().1));
    assert_eq!(got, reference(&ctx, case, &case.ranges).await, "{context}");
    got
}

/// Rows (offsets still to assign) on a 15 s grid ± 1 ms, each with the append (0..3) it is in.
fn events() -> impl Strategy<Value = Vec<(Placed, usize)>> {
    let jitter = prop_oneof![4 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64)];
    let t_us = (0i64..STEPS, jitter).prop_map(|(step, jitter)| at_ms(step * STEP_MS + jitter));
    let key = prop::option::weighted(0.9, 0u8..5);
    let quarters = prop::option::weighted(0.9, -40i32..400);
    let row = (key, quarters, t_us).prop_map(|(key, quarters, t_us)| Placed {
        key,
        quarters,
        t_us,
        offset: 0,
    });
    prop::collection::vec((row, 0usize..3), 1..150)
}

/// A file row's amount: a function of its key and time. File rows have no offset, so rows
/// with equal key and time are ordered by their encoding; making them identical keeps the
/// reference free of that order (two identical rows are interchangeable).
fn file_quarters(key: Option<u8>, t_us: i64) -> Option<i32> {
    let k = key.map_or(11, i64::from);
    let q = (t_us / 1000 % 7919 * 31 + k * 977) % 1601 - 400;
    i32::try_from(q).ok().filter(|q| q % 7 != 0)
}

/// The events as appends of `origins` (a partition, or a file), with offsets increasing per
/// partition across appends.
fn appends(events: &[(Placed, usize)], origins: [Option<i32>; 3]) -> Vec<Append> {
    let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let mut appends = Vec::new();
    for (i, partition) in origins.into_iter().enumerate() {
        let mut rows = Vec::new();
        for (event, _) in events.iter().filter(|(_, append)| *append == i) {
            let mut row = event.clone();
            match partition {
                Some(p) => {
                    let next = next_offset.entry(p).or_insert(0);
                    row.offset = *next;
                    *next += 1;
                }
                None => row.quarters = file_quarters(row.key, row.t_us),
            }
            rows.push(row);
        }
        appends.push(Append { partition, rows });
    }
    appends
}

/// Which buckets to backfill, drawn independently of the bucket size: the whole span or not,
/// start and length (modulo what fits), a second range (gap after the first, length − 1, maybe
/// past the data), and whether the second runs first.
type RangePick = (bool, i64, i64, Option<(i64, i64)>, bool);

fn range_picks() -> impl Strategy<Value = RangePick> {
    (
        prop::bool::weighted(0.25),
        0i64..16,
        0i64..16,
        prop::option::weighted(0.4, (0i64..3, 0i64..3)),
        any::<bool>(),
    )
}

fn ranges(bucket_us: i64, (whole, start, len, second, second_first): RangePick) -> Vec<(i64, i64)> {
    // From the bucket before the first time (times go 1 ms below BASE) past the last.
    let low = at_ms(0) - bucket_us;
    let end = at_ms((STEPS - 1) * STEP_MS + 1) + 1;
    let buckets = (end - low + bucket_us - 1) / bucket_us;
    let (start, len) = if whole {
        (0, buckets)
    } else {
        (start % buckets, 1 + len % (buckets - start % buckets))
    };
    let at = |b: i64| low + b * bucket_us;
    let mut ranges = vec![(at(start), at(start + len))];
    if let Some((gap, extra)) = second {
        let second = start + len + gap;
        ranges.push((at(second), at(second + 1 + extra)));
    }
    if second_first {
        ranges.reverse();
    }
    ranges
}

const SHAPES: [Shape; 2] = [Shape::Rows, Shape::PerMinute];
const WITHINS: [(&str, i64); 4] = [
    ("0s", 0),
    ("30s", 30_000_000),
    ("2m", 120_000_000),
    ("10m", 600_000_000),
];
const BUCKETS: [(&str, i64); 3] = [("1m", 60_000_000), ("2m", 120_000_000), ("5m", 300_000_000)];

proptest! {
    // Each case writes a Delta table and backfills it once or twice.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn backfilled_ranges_equal_the_sql_reference_over_all_rows(
        events in events(),
        origins in prop::array::uniform3(prop::option::weighted(0.7, 0i32..3)),
        shape in 0usize..2,
        within in 0usize..4,
        bucket in 0usize..3,
        pick in range_picks(),
    ) {
        let (bucket, bucket_us) = BUCKETS[bucket];
        let case = Case {
            shape: SHAPES[shape],
            within: WITHINS[within],
            bucket,
            appends: appends(&events, origins),
            ranges: ranges(bucket_us, pick),
        };
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        runtime.block_on(check(&case));
    }
}

fn at_ms(ms: i64) -> i64 {
    (BASE_MS + ms) * 1000
}

/// Rows (key, quarters, ms after BASE_MS) at offsets 0, 1, …
fn placed(rows: &[(u8, i32, i64)]) -> Vec<Placed> {
    (0..)
        .zip(rows)
        .map(|(offset, &(key, quarters, ms))| Placed {
            key: Some(key),
            quarters: Some(quarters),
            t_us: at_ms(ms),
            offset,
        })
        .collect()
}

/// Backfilling [1m, 2m) with a 30 s horizon: rows of the reach [30 s, 1m) decide (its start
/// included), partitions and files deduplicate apart, equal times keep the lower offset.
fn reach_case(shape: Shape) -> Case {
    Case {
        shape,
        within: ("30s", 30_000_000),
        bucket: "1m",
        appends: vec![
            Append {
                partition: Some(0),
                rows: placed(&[
                    (0, 4, 50_000),
                    (0, 8, 70_000),
                    (1, 12, 90_000),
                    (1, 16, 120_000),
                ]),
            },
            Append {
                partition: Some(1),
                rows: placed(&[
                    (0, 20, 70_000),
                    (0, 24, 70_000),
                    (1, 28, 30_000),
                    (1, 32, 60_000),
                    (2, 36, 29_999),
                    (2, 40, 60_000),
                ]),
            },
            Append {
                partition: None,
                rows: placed(&[(1, 44, 35_000), (1, 48, 61_000), (0, 52, 65_000)]),
            },
        ],
        ranges: vec![(at_ms(60_000), at_ms(120_000))],
    }
}

fn field(row: &str, name: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_str(row).expect("a canonical JSON row");
    value[name].clone()
}

#[test]
fn the_reach_decides_and_each_partition_deduplicates_alone() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");

    let rows = runtime.block_on(check(&reach_case(Shape::Rows)));
    let mut kept: Vec<(i64, f64)> = rows
        .iter()
        .map(|r| {
            let ts = field(r, "ts").as_i64().expect("ts");
            (ts, field(r, "a").as_f64().expect("a"))
        })
        .collect();
    kept.sort_by_key(|(ts, _)| *ts);
    // Dropped: partition 0's k0 at 70 s (20 s after 50 s), partition 1's second k0 at 70 s
    // (offset 1), its k1 at 60 s (exactly 30 s after 30 s), the file's k1 at 61 s (26 s after
    // 35 s). Kept: partition 1's k2 at 60 s (30.001 s after a row before the reach), the file's
    // k0 at 65 s, partition 1's first k0 at 70 s (amount 5, not 6), partition 0's k1 at 90 s.
    assert_eq!(
        kept,
        vec![
            (at_ms(60_000), 10.0),
            (at_ms(65_000), 13.0),
            (at_ms(70_000), 5.0),
            (at_ms(90_000), 3.0),
        ],
        "{rows:#?}"
    );

    let minutes = runtime.block_on(check(&reach_case(Shape::PerMinute)));
    // Canonical rows are sorted by key first.
    let counts: Vec<String> = minutes
        .iter()
        .map(|r| format!("{} {}", field(r, "k"), field(r, "n")))
        .collect();
    assert_eq!(
        counts,
        [r#""k0" 2"#, r#""k1" 1"#, r#""k2" 1"#],
        "{minutes:#?}"
    );
}
