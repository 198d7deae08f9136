//! [`DedupStage`] against its rule: a row is dropped exactly when the previous row of its key
//! in (event time, row id) order is at most the horizon before it. The unit tests pin the
//! edges (`<=` at the horizon, chains, ties broken by offset, null and multi-column keys,
//! release bounds, bounded state, errors on bad input and corrupt state). The properties
//! check the stage, fed shuffled rows in random micro-batches under a moving bound, against
//! an independent reference (DataFusion's `LAG` over the rows that were not late), and that
//! without late rows neither the cutting nor the arrival order changes the outcome.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::prelude::{SessionConfig, SessionContext};
use proptest::prelude::*;

use super::{DedupStage, Released, RowId};
use crate::error::Error;
use crate::operator_state::{MemState, OperatorState, Space, SpaceKind, time_key};
use crate::spec::timestamp_type;

const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;

/// One source row: the columns `k` and `n`, the event time (µs) and the Kafka offset.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    k: Option<String>,
    n: Option<i64>,
    t: i64,
    off: i64,
}

fn row(k: Option<&str>, n: Option<i64>, t: i64, off: i64) -> Row {
    let k = k.map(str::to_string);
    Row { k, n, t, off }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
        Field::new("ts", timestamp_type(), false),
    ]))
}

/// Dedup by `k` (and `n` when `by_two`), ordered by `ts`.
fn stage(by_two: bool, within_minutes: u64) -> DedupStage {
    let keys = if by_two { vec![0, 1] } else { vec![0] };
    DedupStage::new(schema(), 2, keys, Duration::from_secs(within_minutes * 60))
}

fn batch(rows: &[Row]) -> RecordBatch {
    let k: StringArray = rows.iter().map(|r| r.k.as_deref()).collect();
    let n: Int64Array = rows.iter().map(|r| r.n).collect();
    let ts = TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.t));
    let columns: Vec<ArrayRef> = vec![Arc::new(k), Arc::new(n), Arc::new(ts.with_timezone("UTC"))];
    RecordBatch::try_new(schema(), columns).expect("a batch of the test schema")
}

fn ids(rows: &[Row]) -> Vec<RowId> {
    rows.iter().map(|r| RowId::offset(r.off)).collect()
}

fn hold(stage: &DedupStage, state: &mut MemState, rows: &[Row]) {
    stage.hold(state, &batch(rows), &ids(rows)).expect("hold");
}

/// Rows from the columns `k` (any text type) and `n`, with their times and offsets.
fn read(k: &ArrayRef, n: &ArrayRef, t: &[i64], off: impl Fn(usize) -> i64) -> Vec<Row> {
    let k = arrow::compute::cast(k, &DataType::Utf8).expect("k as text");
    let (k, n) = (k.as_string::<i32>(), n.as_primitive::<Int64Type>());
    (0..t.len())
        .map(|r| Row {
            k: k.is_valid(r).then(|| k.value(r).to_string()),
            n: n.is_valid(r).then(|| n.value(r)),
            t: t[r],
            off: off(r),
        })
        .collect()
}

/// The kept rows of a release, each paired with the offset of its id.
fn decided(released: &Released) -> Vec<Row> {
    let kept = &released.kept;
    assert_eq!(kept.schema(), schema());
    assert_eq!(released.ids.len(), kept.num_rows());
    let ts = kept.column(2).as_primitive::<TimestampMicrosecondType>();
    let off = |r: usize| released.ids[r].as_offset().expect("an offset id");
    read(kept.column(0), kept.column(1), ts.values(), off)
}

/// Releases below `bound`: the kept rows and how many were dropped.
fn release(stage: &DedupStage, state: &mut MemState, bound: i64) -> (Vec<Row>, usize) {
    let released = stage.release(state, bound).expect("release");
    (decided(&released), released.dropped)
}

#[test]
fn a_duplicate_at_most_within_after_is_dropped_and_one_just_past_it_is_kept() {
    let stage = stage(false, 60);
    assert_eq!(stage.within_us(), HOUR);
    let rows = [
        row(Some("a"), Some(0), 0, 0),
        row(Some("a"), Some(1), HOUR, 1),
        row(Some("b"), Some(2), 0, 2),
        row(Some("b"), Some(3), HOUR + 1, 3),
        row(Some("c"), Some(4), 0, 4),
        row(Some("c"), Some(5), 10 * MINUTE, 5),
    ];
    let mut state = MemState::new();
    hold(&stage, &mut state, &rows);
    let (kept, dropped) = release(&stage, &mut state, i64::MAX);
    let expected = [&rows[0], &rows[2], &rows[4], &rows[3]].map(Row::clone);
    assert_eq!(kept, expected);
    assert_eq!(dropped, 2);
}

#[test]
fn only_the_immediate_predecessor_counts_in_one_release_or_several() {
    let stage = stage(false, 60);
    let rows = [
        row(Some("a"), Some(0), 0, 0),
        row(Some("a"), Some(1), 50 * MINUTE, 1),
        row(Some("a"), Some(2), 100 * MINUTE, 2),
        row(Some("b"), Some(3), 0, 3),
        row(Some("b"), Some(4), 61 * MINUTE, 4),
    ];
    let mut state = MemState::new();
    hold(&stage, &mut state, &rows);
    let (kept, dropped) = release(&stage, &mut state, i64::MAX);
    assert_eq!(kept, [&rows[0], &rows[3], &rows[4]].map(Row::clone));
    assert_eq!(dropped, 2);

    // The dropped row at 50 min, released before, still makes the one at 100 min a duplicate.
    let mut state = MemState::new();
    hold(&stage, &mut state, &rows[..3]);
    let first = release(&stage, &mut state, 50 * MINUTE);
    assert_eq!(first, (vec![rows[0].clone()], 0));
    assert_eq!(release(&stage, &mut state, 100 * MINUTE), (Vec::new(), 1));
    assert_eq!(release(&stage, &mut state, i64::MAX), (Vec::new(), 1));
}

#[test]
fn equal_times_keep_the_smaller_offset_whatever_the_arrival_order() {
    let stage = stage(false, 0);
    let later = row(Some("a"), Some(7), 5 * MINUTE, 7);
    let earlier = row(Some("a"), Some(3), 5 * MINUTE, 3);
    for arrival in [[&later, &earlier], [&earlier, &later]] {
        let mut state = MemState::new();
        for r in arrival {
            hold(&stage, &mut state, std::slice::from_ref(r));
        }
        // Within 0: an equal time is still at most the horizon before.
        let decided = release(&stage, &mut state, i64::MAX);
        assert_eq!(decided, (vec![earlier.clone()], 1));
    }
}

#[test]
fn a_null_key_is_one_key_and_not_the_empty_string() {
    let stage = stage(false, 60);
    let rows = [
        row(None, Some(0), 0, 0),
        row(None, Some(1), MINUTE, 1),
        row(Some(""), Some(2), 2 * MINUTE, 2),
        row(Some("a"), Some(3), 3 * MINUTE, 3),
        // `n` is not a key column here.
        row(Some("a"), None, 4 * MINUTE, 4),
    ];
    let mut state = MemState::new();
    hold(&stage, &mut state, &rows);
    let (kept, dropped) = release(&stage, &mut state, i64::MAX);
    assert_eq!(kept, [&rows[0], &rows[2], &rows[3]].map(Row::clone));
    assert_eq!(dropped, 2);
}

#[test]
fn multi_column_keys_compare_every_column() {
    let stage = stage(true, 60);
    assert_eq!(stage.key_names(), ["k", "n"]);
    let rows = [
        row(Some("a"), Some(1), 0, 0),
        row(Some("a"), Some(2), MINUTE, 1),
        row(Some("a"), Some(1), 2 * MINUTE, 2),
        row(Some("b"), Some(1), 3 * MINUTE, 3),
        row(Some("a"), None, 4 * MINUTE, 4),
        row(Some("a"), None, 5 * MINUTE, 5),
        row(None, Some(1), 6 * MINUTE, 6),
    ];
    let mut state = MemState::new();
    hold(&stage, &mut state, &rows);
    let (kept, dropped) = release(&stage, &mut state, i64::MAX);
    assert_eq!(kept, [0, 1, 3, 4, 6].map(|i| rows[i].clone()));
    assert_eq!(dropped, 2);
}

#[test]
fn a_release_decides_the_rows_below_its_bound_in_time_and_id_order() {
    let stage = stage(false, 60);
    let rows = [
        row(Some("a"), Some(0), 0, 0),
        row(Some("a"), Some(1), 10 * MINUTE, 1),
        row(Some("d"), Some(8), 5 * MINUTE, 8),
        row(Some("c"), Some(9), 5 * MINUTE, 9),
        row(Some("b"), Some(2), 20 * MINUTE, 2),
        row(Some("a"), Some(3), 30 * MINUTE, 3),
        row(Some("b"), Some(4), 30 * MINUTE, 4),
    ];
    let mut state = MemState::new();
    let reversed: Vec<Row> = rows.iter().rev().cloned().collect();
    hold(&stage, &mut state, &reversed);
    let nothing = stage.release(&mut state, i64::MIN).expect("release");
    assert_eq!((nothing.kept.num_rows(), nothing.dropped), (0, 0));
    assert_eq!(nothing.kept.schema(), schema());
    assert_eq!(state.len(Space::new(0, SpaceKind::DedupHeld)), 7);

    let first = stage.release(&mut state, 20 * MINUTE).expect("release");
    let offsets: Vec<Option<i64>> = first.ids.iter().map(RowId::as_offset).collect();
    assert_eq!(offsets, [Some(0), Some(8), Some(9)]);
    assert_eq!(decided(&first), [0, 2, 3].map(|i| rows[i].clone()));
    assert_eq!(first.dropped, 1);
    // The row at the bound itself waits.
    assert_eq!(state.len(Space::new(0, SpaceKind::DedupHeld)), 3);

    // `a` at 30 min follows the dropped `a` at 10 min by 20 min.
    let second = release(&stage, &mut state, 40 * MINUTE);
    assert_eq!(second, (vec![rows[4].clone()], 2));
    assert_eq!(state.len(Space::new(0, SpaceKind::DedupHeld)), 0);
}

#[test]
fn keys_are_forgotten_once_no_row_to_come_can_be_within_the_horizon() {
    let stage = stage(false, 60);
    let mut state = MemState::new();
    let rows = [
        row(Some("a"), None, 0, 0),
        row(Some("b"), None, 10 * MINUTE, 1),
    ];
    hold(&stage, &mut state, &rows);
    let (kept, _) = release(&stage, &mut state, HOUR + 10 * MINUTE);
    assert_eq!(kept.len(), 2);
    // A row at the bound is exactly the horizon after `b`, so only `a` may go.
    assert_eq!(state.len(Space::new(0, SpaceKind::DedupSeen)), 1);
    assert_eq!(state.len(Space::new(0, SpaceKind::DedupSeenByTime)), 1);
    let again = row(Some("b"), None, HOUR + 10 * MINUTE, 2);
    hold(&stage, &mut state, &[again]);
    assert_eq!(release(&stage, &mut state, i64::MAX), (Vec::new(), 1));
    for space in Space::all(0) {
        assert_eq!(state.len(space), 0, "{space:?}");
    }
    assert!(state.is_empty());
}

#[test]
fn bad_input_is_an_error() {
    let stage = stage(false, 60);
    let mut state = MemState::new();
    let rows = [row(Some("a"), None, 0, 0), row(Some("b"), None, 0, 1)];
    let result = stage.hold(&mut state, &batch(&rows), &ids(&rows[..1]));
    assert!(
        matches!(result, Err(Error::StateCodec(_) | Error::OperatorState(_))),
        "{result:?}"
    );
    assert!(state.is_empty());

    let nullable = Arc::new(Schema::new(vec![Field::new("ts", timestamp_type(), true)]));
    let stage = DedupStage::new(nullable.clone(), 0, vec![0], Duration::ZERO);
    let times: ArrayRef =
        Arc::new(TimestampMicrosecondArray::from(vec![Some(1), None]).with_timezone("UTC"));
    let rows = RecordBatch::try_new(nullable, vec![times]).expect("a batch");
    let result = stage.hold(&mut state, &rows, &[RowId::offset(0), RowId::offset(1)]);
    assert!(
        matches!(&result, Err(Error::OperatorState(m)) if m.contains("row 1")),
        "{result:?}"
    );
    assert!(state.is_empty());
}

#[test]
fn a_corrupt_state_is_an_error_not_a_panic() {
    let stage = stage(false, 60);
    let mut held_key = time_key(0).to_vec();
    held_key.extend_from_slice(RowId::offset(0).as_bytes());
    let cases = [
        (held_key.clone(), vec![1, 2]),
        (held_key.clone(), vec![200, 0, 0, 0, 1]),
        (held_key, vec![0, 0, 0, 0, 9, 9]),
        // Too short to hold a time, yet inside the range a release scans.
        (vec![0x80], Vec::new()),
    ];
    for (key, value) in cases {
        let mut state = MemState::new();
        state.put(
            Space::new(0, SpaceKind::DedupHeld),
            key.clone(),
            value.clone(),
        );
        let result = stage.release(&mut state, HOUR);
        assert!(
            matches!(result, Err(Error::StateCodec(_) | Error::OperatorState(_))),
            "{key:?} {value:?}: {result:?}"
        );
    }

    let mut state = MemState::new();
    hold(&stage, &mut state, &[row(Some("a"), None, 0, 0)]);
    assert_eq!(release(&stage, &mut state, 1).0.len(), 1);
    let seen = state.range(Space::new(0, SpaceKind::DedupSeen), &[], &[u8::MAX]);
    let seen = seen.expect("range");
    assert_eq!(seen.len(), 1);
    state.put(
        Space::new(0, SpaceKind::DedupSeen),
        seen[0].0.clone(),
        vec![1],
    );
    hold(&stage, &mut state, &[row(Some("a"), None, 1, 1)]);
    let result = stage.release(&mut state, i64::MAX);
    assert!(
        matches!(result, Err(Error::StateCodec(_) | Error::OperatorState(_))),
        "{result:?}"
    );
}

/// What feeding rows to a stage gave.
#[derive(Debug, Default)]
struct Outcome {
    /// Every kept row, over all releases, in release order.
    kept: Vec<Row>,
    dropped: usize,
    /// The rows held (not late), in arrival order.
    on_time: Vec<Row>,
    late: usize,
    state: MemState,
}

/// Feeds `arrivals` in micro-batches of `steps` (size, bound before it; the rest of the rows
/// make a last one): the bound never goes back, rows below it are late and set aside, the
/// others held, then everything below the bound released; at the end, everything.
fn drive(stage: &DedupStage, arrivals: &[Row], steps: &[(usize, i64)]) -> Outcome {
    let mut outcome = Outcome::default();
    let mut bound = i64::MIN;
    let mut rest = arrivals;
    let last = (arrivals.len(), i64::MIN);
    for &(size, next) in steps.iter().chain(std::iter::once(&last)) {
        if rest.is_empty() {
            break;
        }
        bound = bound.max(next);
        let (micro, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        let (late, on_time): (Vec<Row>, Vec<Row>) =
            micro.iter().cloned().partition(|r| r.t < bound);
        outcome.late += late.len();
        hold(stage, &mut outcome.state, &on_time);
        outcome.on_time.extend(on_time);
        let released = stage.release(&mut outcome.state, bound).expect("release");
        outcome.kept.extend(decided(&released));
        outcome.dropped += released.dropped;
    }
    let released = stage.release(&mut outcome.state, i64::MAX);
    let released = released.expect("the last release");
    outcome.kept.extend(decided(&released));
    outcome.dropped += released.dropped;
    let order: Vec<(i64, i64)> = outcome.kept.iter().map(|r| (r.t, r.off)).collect();
    assert!(
        order.is_sorted_by(|a, b| a < b),
        "released out of order: {order:?}"
    );
    outcome
}

/// The bound before each micro-batch: it moves on by `advance` minutes, from just below the
/// first time on its first move.
fn advancing(plan: &[(usize, i64)]) -> Vec<(usize, i64)> {
    let mut bound = i64::MIN;
    plan.iter()
        .map(|&(size, advance)| {
            if advance > 0 {
                bound = bound.max(-MINUTE) + advance * MINUTE;
            }
            (size, bound)
        })
        .collect()
}

/// Micro-batches of `cut` under a bound that never moves: nothing is late or released early.
fn unbounded(cut: &[usize]) -> Vec<(usize, i64)> {
    cut.iter().map(|&size| (size, i64::MIN)).collect()
}

/// The rows of `on_time` whose previous row of the same key, in (time, offset) order, is
/// absent or more than `within_us` before: DataFusion's `LAG`, in (time, offset) order.
fn reference(on_time: &[Row], within_us: i64, by_two: bool) -> Vec<Row> {
    let k: StringArray = on_time.iter().map(|r| r.k.as_deref()).collect();
    let n: Int64Array = on_time.iter().map(|r| r.n).collect();
    let t = Int64Array::from_iter_values(on_time.iter().map(|r| r.t));
    let id = Int64Array::from_iter_values(on_time.iter().map(|r| r.off));
    let columns: [(&str, ArrayRef); 4] = [
        ("k", Arc::new(k)),
        ("n", Arc::new(n)),
        ("t", Arc::new(t)),
        ("id", Arc::new(id)),
    ];
    let table = RecordBatch::try_from_iter(columns).expect("the reference table");
    let partition = if by_two { "k, n" } else { "k" };
    let sql = format!(
        "SELECT k, n, t, id FROM (SELECT k, n, t, id, \
         LAG(t) OVER (PARTITION BY {partition} ORDER BY t, id) AS lag_t FROM arrivals) AS w \
         WHERE lag_t IS NULL OR t - lag_t > {within_us}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let batches = runtime
        .block_on(query(table, &sql))
        .expect("the reference query");
    let mut rows = Vec::new();
    for batch in &batches {
        let t = batch.column(2).as_primitive::<Int64Type>();
        let id = batch.column(3).as_primitive::<Int64Type>();
        let off = |r: usize| id.value(r);
        rows.extend(read(batch.column(0), batch.column(1), t.values(), off));
    }
    rows.sort_by_key(|r| (r.t, r.off));
    rows
}

async fn query(table: RecordBatch, sql: &str) -> datafusion::error::Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    ctx.register_batch("arrivals", table)?;
    ctx.sql(sql).await?.collect().await
}

/// Up to 60 rows over few keys and few minutes, so duplicates and equal times are common;
/// offsets are the positions before any shuffle, so they are unique.
fn rows() -> impl Strategy<Value = Vec<Row>> {
    let part = (
        prop::option::weighted(0.8, 0u8..4),
        prop::option::weighted(0.8, 0i64..2),
        0i64..30,
    );
    prop::collection::vec(part, 0..60).prop_map(|parts| {
        parts
            .into_iter()
            .enumerate()
            .map(|(off, (k, n, minute))| Row {
                k: k.map(|k| k.to_string()),
                n,
                t: minute * MINUTE,
                off: off as i64,
            })
            .collect()
    })
}

fn cut() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..8, 0..20)
}

fn within_minutes() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![0u64, 1, 30, 60])
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn kept_rows_are_the_lag_reference_over_the_rows_on_time(
        arrivals in rows().prop_shuffle(),
        plan in prop::collection::vec((1usize..8, 0i64..4), 0..20),
        within in within_minutes(),
        by_two in any::<bool>(),
    ) {
        let stage = stage(by_two, within);
        let outcome = drive(&stage, &arrivals, &advancing(&plan));
        prop_assert_eq!(outcome.on_time.len() + outcome.late, arrivals.len());
        prop_assert_eq!(outcome.kept.len() + outcome.dropped, outcome.on_time.len());
        let expected = reference(&outcome.on_time, within as i64 * MINUTE, by_two);
        prop_assert_eq!(&outcome.kept, &expected);
        for space in Space::all(0) {
            prop_assert_eq!(outcome.state.len(space), 0, "{:?}", space);
        }
    }

    #[test]
    fn without_late_rows_neither_cutting_nor_arrival_order_matters(
        (first, second) in rows().prop_flat_map(|all| {
            (Just(all.clone()).prop_shuffle(), Just(all).prop_shuffle())
        }),
        cuts in (cut(), cut()),
        within in within_minutes(),
        by_two in any::<bool>(),
    ) {
        let stage = stage(by_two, within);
        let a = drive(&stage, &first, &unbounded(&cuts.0));
        let b = drive(&stage, &second, &unbounded(&cuts.1));
        // In time order, each micro-batch may release everything below its first row.
        let mut sorted = first.clone();
        sorted.sort_by_key(|r| (r.t, r.off));
        let mut at = 0;
        let steps: Vec<(usize, i64)> = cuts.0.iter().map(|&size| {
            let bound = sorted.get(at).map_or(i64::MIN, |r| r.t);
            at += size;
            (size, bound)
        }).collect();
        let c = drive(&stage, &sorted, &steps);
        for outcome in [&a, &b, &c] {
            prop_assert_eq!(outcome.late, 0);
            prop_assert_eq!(outcome.kept.len() + outcome.dropped, first.len());
            prop_assert!(outcome.state.is_empty());
        }
        prop_assert_eq!(&a.kept, &b.kept);
        prop_assert_eq!(&a.kept, &c.kept);
        prop_assert_eq!(a.dropped, b.dropped);
        prop_assert_eq!(a.dropped, c.dropped);
    }
}
