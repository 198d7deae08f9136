//! The parity and merge properties of DESIGN.md, for every window kind and aggregate:
//!
//! - parity: random events (out of order, many keys, nulls) split into random micro-batches,
//!   folded into partial states per (key, window, bucket), merged in a random tree and
//!   finalized, equal one plain DataFusion SQL query over all rows (written with date
//!   arithmetic, a cross join and window functions, not with Sluice's plan);
//! - merge: batch(buckets < C) ⊕ speed(buckets ≥ C) equals the same, for random cutoffs C.
//!
//! Amounts are multiples of 0.25 so float sums are exact in any order.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::filter_record_batch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use sluice_core::{Job, JobPlan};
use sluice_e2e::canonical_rows;

const BASE_MS: i64 = 1_714_557_600_000;
const AGGS: &str =
    "COUNT(*) AS n, COUNT(DISTINCT c) AS nc, SUM(a) AS s, AVG(a) AS av, MIN(a) AS mi, MAX(a) AS ma";
const COMPLETED: &str = "(SELECT *, CAST(ts AS BIGINT) AS u FROM t WHERE status = 'completed')";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tumble,
    Hop,
    Session,
    Unwindowed,
}

impl Kind {
    fn sluice_sql(self) -> String {
        let (select, group) = match self {
            Kind::Tumble => (
                "TUMBLE_START(ts, INTERVAL '1' MINUTE) AS ws, TUMBLE_END(ts, INTERVAL '1' MINUTE) AS we,",
                ", TUMBLE(ts, INTERVAL '1' MINUTE)",
            ),
            Kind::Hop => (
                "HOP_START(ts, INTERVAL '30' SECOND, INTERVAL '2' MINUTE) AS ws, HOP_END(ts, INTERVAL '30' SECOND, INTERVAL '2' MINUTE) AS we,",
                ", HOP(ts, INTERVAL '30' SECOND, INTERVAL '2' MINUTE)",
            ),
            Kind::Session => (
                "SESSION_START(ts, INTERVAL '45' SECOND) AS ws, SESSION_END(ts, INTERVAL '45' SECOND) AS we,",
                ", SESSION(ts, INTERVAL '45' SECOND)",
            ),
            Kind::Unwindowed => ("", ""),
        };
        format!("SELECT k, {select} {AGGS} FROM t WHERE status = 'completed' GROUP BY k{group}")
    }

    fn reference_sql(self) -> String {
        let windowed =
            |inner: &str| format!("SELECT k, ws, we, {AGGS} FROM ({inner}) GROUP BY k, ws, we");
        match self {
            Kind::Tumble => windowed(&format!(
                "SELECT k, c, a, u - u % 60000000 AS ws, u - u % 60000000 + 60000000 AS we FROM {COMPLETED}"
            )),
            Kind::Hop => windowed(&format!(
                "SELECT k, c, a, u - u % 30000000 - i * 30000000 AS ws, u - u % 30000000 - i * 30000000 + 120000000 AS we \
                 FROM {COMPLETED} CROSS JOIN (SELECT 0 AS i UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)"
            )),
            Kind::Session => format!(
                "SELECT k, MIN(u) AS ws, MAX(u) + 45000000 AS we, {AGGS} FROM ( \
                   SELECT *, SUM(new_session) OVER (PARTITION BY k ORDER BY u ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM ( \
                     SELECT *, CASE WHEN u - LAG(u) OVER (PARTITION BY k ORDER BY u) <= 45000000 THEN 0 ELSE 1 END AS new_session \
                     FROM {COMPLETED})) GROUP BY k, sid"
            ),
            Kind::Unwindowed => {
                format!("SELECT k, {AGGS} FROM t WHERE status = 'completed' GROUP BY k")
            }
        }
    }
}

fn job(kind: Kind, bucket: &str) -> Job {
    let toml = format!(
        r#"
name = "parity"
[source]
topic = "t"
event_time = "ts"
fields = [
  {{ name = "k", type = "string" }}, {{ name = "c", type = "string" }}, {{ name = "a", type = "float64" }},
  {{ name = "status", type = "string" }}, {{ name = "ts", type = "timestamp" }},
]
[transform]
sql = "{}"
[view]
key = ["k"]
bucket = "{bucket}"
"#,
        kind.sluice_sql()
    );
    Job::from_toml(&toml, Path::new("parity.toml")).unwrap()
}

#[derive(Debug, Clone)]
struct Event {
    key: Option<u8>,
    customer: u8,
    amount_quarters: Option<i32>,
    completed: bool,
    offset_ms: i64,
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    let event = (
        prop::option::weighted(0.9, 0u8..6),
        0u8..10,
        prop::option::weighted(0.9, -400i32..4000),
        prop::bool::weighted(0.75),
        0i64..3 * 3_600_000,
    )
        .prop_map(
            |(key, customer, amount_quarters, completed, offset_ms)| Event {
                key,
                customer,
                amount_quarters,
                completed,
                offset_ms,
            },
        );
    prop::collection::vec(event, 0..160)
}

fn to_batch(job: &Job, events: &[Event]) -> RecordBatch {
    let keys: StringArray = events
        .iter()
        .map(|e| e.key.map(|k| format!("key{k}")))
        .collect();
    let customers: StringArray = events
        .iter()
        .map(|e| Some(format!("c{}", e.customer)))
        .collect();
    let amounts: Float64Array = events
        .iter()
        .map(|e| e.amount_quarters.map(|q| q as f64 / 4.0))
        .collect();
    let status: StringArray = events
        .iter()
        .map(|e| Some(if e.completed { "completed" } else { "pending" }))
        .collect();
    let times = TimestampMicrosecondArray::from(
        events
            .iter()
            .map(|e| (BASE_MS + e.offset_ms) * 1000)
            .collect::<Vec<_>>(),
    )
    .with_timezone("UTC");
    RecordBatch::try_new(
        job.source_schema(),
        vec![
            Arc::new(keys),
            Arc::new(customers),
            Arc::new(amounts),
            Arc::new(status),
            Arc::new(times),
        ],
    )
    .unwrap()
}

fn reference(runtime: &tokio::runtime::Runtime, kind: Kind, batch: &RecordBatch) -> Vec<String> {
    runtime.block_on(async {
        let ctx = SessionContext::new();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let rows = ctx
            .sql(&kind.reference_sql())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        canonical_rows(&rows)
    })
}

/// Splits `batch` at `cuts` into micro-batches.
fn micro_batches(batch: &RecordBatch, cuts: &[usize]) -> Vec<RecordBatch> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (batch.num_rows() + 1)).collect();
    points.extend([0, batch.num_rows()]);
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| batch.slice(w[0], w[1] - w[0]))
        .collect()
}

/// Merges partials pairwise in an order driven by `seed`, like layers merging in any grouping.
fn tree_merge(plan: &JobPlan, mut partials: Vec<RecordBatch>, mut seed: u64) -> RecordBatch {
    let stage = plan.aggregate().unwrap();
    if partials.is_empty() {
        return stage.merge(&[]).unwrap();
    }
    while partials.len() > 1 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = (seed >> 33) as usize % (partials.len() - 1);
        let right = partials.remove(i + 1);
        let left = partials.remove(i);
        partials.insert(i, stage.merge(&[left, right]).unwrap());
    }
    partials.remove(0)
}

fn folded(plan: &JobPlan, batches: &[RecordBatch], seed: u64) -> RecordBatch {
    let partials = batches.iter().map(|b| plan.partial(b).unwrap()).collect();
    tree_merge(plan, partials, seed)
}

fn check_parity(
    kind: Kind,
    bucket: &str,
    events: &[Event],
    cuts: &[usize],
    seed: u64,
    runtime: &tokio::runtime::Runtime,
) {
    let job = job(kind, bucket);
    let plan = JobPlan::compile(&job, job.source_schema()).unwrap();
    let all = to_batch(&job, events);
    let merged = folded(&plan, &micro_batches(&all, cuts), seed);
    let result = plan.aggregate().unwrap().finalize(&[merged]).unwrap();
    assert_eq!(
        canonical_rows(&[result]),
        reference(runtime, kind, &all),
        "{kind:?}, bucket {bucket}"
    );
}

fn check_merge(
    kind: Kind,
    bucket: &str,
    events: &[Event],
    cuts: &[usize],
    cutoff_bucket: i64,
    runtime: &tokio::runtime::Runtime,
) {
    let job = job(kind, bucket);
    let plan = JobPlan::compile(&job, job.source_schema()).unwrap();
    let stage = plan.aggregate().unwrap();
    let all = to_batch(&job, events);
    let bucket_us = job.bucket_micros();
    let cutoff = (BASE_MS * 1000 / bucket_us + cutoff_bucket) * bucket_us;
    let times = all
        .column(4)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    let before: arrow::array::BooleanArray = times
        .iter()
        .map(|t| t.map(|t| t - t.rem_euclid(bucket_us) < cutoff))
        .collect();
    let after = arrow::compute::not(&before).unwrap();
    let batch_view = plan
        .partial(&filter_record_batch(&all, &before).unwrap())
        .unwrap();
    let speed_view = folded(
        &plan,
        &micro_batches(&filter_record_batch(&all, &after).unwrap(), cuts),
        7,
    );
    let buckets = |b: &RecordBatch| stage.layout().buckets(b).values().to_vec();
    assert!(
        buckets(&batch_view).iter().all(|&b| b < cutoff),
        "batch view holds only buckets before C"
    );
    assert!(
        buckets(&speed_view).iter().all(|&b| b >= cutoff),
        "speed view holds only buckets from C"
    );
    let result = stage
        .finalize(&[stage.merge(&[batch_view, speed_view]).unwrap()])
        .unwrap();
    assert_eq!(
        canonical_rows(&[result]),
        reference(runtime, kind, &all),
        "{kind:?}, bucket {bucket}, cutoff {cutoff}"
    );
}

const KINDS: [Kind; 4] = [Kind::Tumble, Kind::Hop, Kind::Session, Kind::Unwindowed];
const BUCKETS: [&str; 3] = ["2m", "5m", "1h"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn micro_batch_folding_equals_one_datafusion_run(
        events in events(),
        cuts in prop::collection::vec(0usize..200, 0..12),
        kind in 0usize..4,
        bucket in 0usize..3,
        seed in any::<u64>(),
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        check_parity(KINDS[kind], BUCKETS[bucket], &events, &cuts, seed, &runtime);
    }

    #[test]
    fn batch_before_cutoff_merged_with_speed_after_equals_the_whole(
        events in events(),
        cuts in prop::collection::vec(0usize..200, 0..12),
        kind in 0usize..4,
        bucket in 0usize..3,
        cutoff_bucket in 0i64..100,
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        check_merge(KINDS[kind], BUCKETS[bucket], &events, &cuts, cutoff_bucket, &runtime);
    }
}

#[test]
fn every_window_kind_has_a_nonempty_case() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let events: Vec<Event> = (0..300)
        .map(|i| Event {
            key: (i % 7 != 0).then_some((i % 4) as u8),
            customer: (i % 9) as u8,
            amount_quarters: (i % 11 != 0).then_some(i * 37 % 1000 - 50),
            completed: i % 5 != 0,
            offset_ms: (i as i64 * 7_919_000) % (3 * 3_600_000),
        })
        .collect();
    for kind in KINDS {
        for bucket in BUCKETS {
            check_parity(kind, bucket, &events, &[17, 90, 3, 250], 11, &runtime);
            check_merge(kind, bucket, &events, &[5, 120], 20, &runtime);
        }
        let job = job(kind, "1h");
        let plan = JobPlan::compile(&job, job.source_schema()).unwrap();
        let rows = plan
            .aggregate()
            .unwrap()
            .finalize(&[plan.partial(&to_batch(&job, &events)).unwrap()])
            .unwrap();
        assert!(
            rows.num_rows() > 3,
            "{kind:?} produced {} rows",
            rows.num_rows()
        );
    }
}
