//! The temporal join's rule, case by case and against a brute-force reference under random
//! arrival orders.

use std::collections::BTreeMap;

use arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_expr::expressions::Column;
use proptest::prelude::*;

use super::*;
use crate::operator_state::MemState;
use crate::spec::{UTC, timestamp_type};

fn probe_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("event_time", timestamp_type(), false),
    ]))
}

fn table_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("updated_at", timestamp_type(), false),
    ]))
}

fn join(kind: JoinKind) -> TemporalJoin {
    TemporalJoin::new(TemporalJoinParts {
        job: "t".to_string(),
        table: "customers".to_string(),
        probe_schema: probe_schema(),
        probe_time: 3,
        probe_keys: vec![Arc::new(Column::new("customer_id", 1))],
        table_schema: table_schema(),
        table_time: 2,
        table_keys: vec![Arc::new(Column::new("customer_id", 0))],
        kind,
    })
    .expect("a valid join")
}

/// Orders: (order id, customer, time).
fn orders(rows: &[(&str, Option<&str>, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        probe_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|_| 1.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                    .with_timezone(UTC),
            ),
        ],
    )
    .expect("orders")
}

/// Versions: (customer, region, valid_from).
fn customers(rows: &[(&str, &str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        table_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                    .with_timezone(UTC),
            ),
        ],
    )
    .expect("customers")
}

fn ids(from: i64, count: usize) -> Vec<RowId> {
    (0..count as i64).map(|i| RowId::at(0, from + i)).collect()
}

/// (order id, region) of each joined row, in output order.
fn regions(joined: &Joined) -> Vec<(String, Option<String>)> {
    let orders = joined.rows.column(0).as_string::<i32>();
    let regions = joined.rows.column(5).as_string::<i32>();
    (0..joined.rows.num_rows())
        .map(|r| {
            (
                orders.value(r).to_string(),
                regions.is_valid(r).then(|| regions.value(r).to_string()),
            )
        })
        .collect()
}

fn owned(rows: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    rows.iter()
        .map(|(o, r)| (o.to_string(), r.map(str::to_string)))
        .collect()
}

#[test]
fn each_order_gets_the_version_valid_at_its_time() {
    let join = join(JoinKind::Left);
    let mut state = MemState::new();
    let versions = customers(&[("c1", "eu", 100), ("c1", "us", 200), ("c2", "apac", 150)]);
    join.add_versions(&mut state, &versions, &ids(0, 3))
        .unwrap();
    let events = orders(&[
        ("before", Some("c1"), 99),
        ("at", Some("c1"), 100),
        ("between", Some("c1"), 199),
        ("after", Some("c1"), 200),
        ("other", Some("c2"), 500),
        ("missing", Some("c9"), 500),
        ("null", None, 500),
    ]);
    join.hold(&mut state, &events, &ids(10, 7)).unwrap();
    let joined = join.release(&mut state, i64::MAX).unwrap();
    assert_eq!(
        regions(&joined),
        owned(&[
            ("before", None),
            ("at", Some("eu")),
            ("between", Some("eu")),
            ("after", Some("us")),
            ("other", Some("apac")),
            ("missing", None),
            ("null", None),
        ])
    );
    assert_eq!(joined.unmatched, 3);
    assert_eq!(joined.rows.schema(), *join.output_schema());
    assert!(joined.rows.schema().field(5).is_nullable());
    assert_eq!(joined.ids[0], RowId::at(0, 10));
    assert_eq!(state.len(Space::new(0, SpaceKind::JoinWaiting)), 0);
}

#[test]
fn an_inner_join_drops_rows_without_a_version() {
    let join = join(JoinKind::Inner);
    let mut state = MemState::new();
    join.add_versions(&mut state, &customers(&[("c1", "eu", 100)]), &ids(0, 1))
        .unwrap();
    let events = orders(&[
        ("a", Some("c1"), 50),
        ("b", Some("c1"), 150),
        ("c", None, 150),
    ]);
    join.hold(&mut state, &events, &ids(10, 3)).unwrap();
    let joined = join.release(&mut state, i64::MAX).unwrap();
    assert_eq!(regions(&joined), owned(&[("b", Some("eu"))]));
    assert_eq!(joined.unmatched, 2);
}

#[test]
fn rows_wait_for_the_bound_and_versions_arriving_meanwhile_count() {
    let join = join(JoinKind::Left);
    let mut state = MemState::new();
    join.hold(
        &mut state,
        &orders(&[("early", Some("c1"), 100), ("late", Some("c1"), 300)]),
        &ids(10, 2),
    )
    .unwrap();
    // The version arrives after the order, but before the bound passes it.
    join.add_versions(&mut state, &customers(&[("c1", "eu", 90)]), &ids(0, 1))
        .unwrap();
    let first = join.release(&mut state, 101).unwrap();
    assert_eq!(regions(&first), owned(&[("early", Some("eu"))]));
    join.add_versions(&mut state, &customers(&[("c1", "us", 250)]), &ids(1, 1))
        .unwrap();
    assert_eq!(join.release(&mut state, 300).unwrap().rows.num_rows(), 0);
    let second = join.release(&mut state, 301).unwrap();
    assert_eq!(regions(&second), owned(&[("late", Some("us"))]));
}

#[test]
fn equal_valid_from_is_decided_by_the_greater_row_id_and_redelivery_is_one_version() {
    let join = join(JoinKind::Left);
    let mut state = MemState::new();
    let versions = customers(&[("c1", "second", 100), ("c1", "first", 100)]);
    join.add_versions(&mut state, &versions, &[RowId::at(1, 7), RowId::at(0, 9)])
        .unwrap();
    join.add_versions(&mut state, &versions, &[RowId::at(1, 7), RowId::at(0, 9)])
        .unwrap();
    assert_eq!(state.len(Space::new(0, SpaceKind::JoinVersion)), 2);
    join.hold(&mut state, &orders(&[("o", Some("c1"), 100)]), &ids(0, 1))
        .unwrap();
    let joined = join.release(&mut state, i64::MAX).unwrap();
    assert_eq!(regions(&joined), owned(&[("o", Some("second"))]));
}

#[test]
fn mismatched_parts_are_refused() {
    let parts = |probe_keys: Vec<Arc<dyn PhysicalExpr>>, table_time| TemporalJoinParts {
        job: "t".to_string(),
        table: "customers".to_string(),
        probe_schema: probe_schema(),
        probe_time: 3,
        probe_keys,
        table_schema: table_schema(),
        table_time,
        table_keys: vec![Arc::new(Column::new("customer_id", 0))],
        kind: JoinKind::Left,
    };
    let err = TemporalJoin::new(parts(vec![Arc::new(Column::new("amount", 2))], 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Float64 on the stream but Utf8"), "{err}");
    let err = TemporalJoin::new(parts(vec![], 2)).unwrap_err().to_string();
    assert!(err.contains("at least one"), "{err}");
    let err = TemporalJoin::new(parts(vec![Arc::new(Column::new("customer_id", 1))], 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("valid_from"), "{err}");
}

/// The rule, stated directly: the greatest (valid_from, id) at or before the order's time.
fn reference(
    versions: &[(u8, i64, i64)],
    events: &[(u8, i64, i64)],
) -> BTreeMap<i64, Option<String>> {
    events
        .iter()
        .map(|&(customer, time, id)| {
            let best = versions
                .iter()
                .filter(|v| v.0 == customer && v.1 <= time)
                .max_by_key(|v| (v.1, v.2))
                .map(|v| format!("r{}", v.2));
            (id, best)
        })
        .collect()
}

/// Versions (customer, valid_from, id) as table rows named `r<id>`, added to `state`.
fn add(join: &TemporalJoin, state: &mut MemState, versions: &[(u8, i64, i64)]) {
    let names: Vec<String> = versions.iter().map(|x| format!("c{}", x.0)).collect();
    let regions: Vec<String> = versions.iter().map(|x| format!("r{}", x.2)).collect();
    let rows: Vec<(&str, &str, i64)> = versions
        .iter()
        .enumerate()
        .map(|(i, x)| (names[i].as_str(), regions[i].as_str(), x.1))
        .collect();
    let ids: Vec<RowId> = versions.iter().map(|x| RowId::at(0, x.2)).collect();
    join.add_versions(state, &customers(&rows), &ids).unwrap();
}

/// Orders (customer, time, id) as stream rows whose order id is the id, with their ids.
fn order_rows(events: &[(u8, i64, i64)]) -> (RecordBatch, Vec<RowId>) {
    let order_ids: Vec<String> = events.iter().map(|x| x.2.to_string()).collect();
    let names: Vec<String> = events.iter().map(|x| format!("c{}", x.0)).collect();
    let rows: Vec<(&str, Option<&str>, i64)> = events
        .iter()
        .enumerate()
        .map(|(i, x)| (order_ids[i].as_str(), Some(names[i].as_str()), x.1))
        .collect();
    (
        orders(&rows),
        events.iter().map(|x| RowId::at(0, x.2)).collect(),
    )
}

/// The joined rows as (order id → region).
fn answers(rows: RecordBatch) -> Vec<(i64, Option<String>)> {
    let joined = Joined {
        rows,
        ids: Vec::new(),
        unmatched: 0,
    };
    regions(&joined)
        .into_iter()
        .map(|(order, region)| (order.parse::<i64>().unwrap_or(-1), region))
        .collect()
}

proptest! {
    #[test]
    fn any_arrival_order_gives_the_reference_answer(
        versions in prop::collection::vec((0u8..4, 0i64..50), 0..30),
        events in prop::collection::vec((0u8..5, 0i64..60), 0..40),
        splits in prop::collection::vec(0usize..8, 1..6),
    ) {
        // Distinct ids; a version's region names its id, so the answer is checkable.
        let versions: Vec<(u8, i64, i64)> = versions
            .iter()
            .enumerate()
            .map(|(i, &(c, t))| (c, t, i as i64))
            .collect();
        let events: Vec<(u8, i64, i64)> = events
            .iter()
            .enumerate()
            .map(|(i, &(c, t))| (c, t, 1_000 + i as i64))
            .collect();
        let expected = reference(&versions, &events);
        let join = join(JoinKind::Left);
        let mut state = MemState::new();
        // Versions and events interleaved in chunks; the bound moves only past times whose
        // versions have all been added (what the table watermark guarantees).
        let mut got = BTreeMap::new();
        let (mut v, mut e) = (0, 0);
        let mut chunk = splits.iter().cycle();
        while v < versions.len() || e < events.len() {
            let n = chunk.next().copied().unwrap_or(1).max(1);
            let added = &versions[v..(v + n).min(versions.len())];
            v += added.len();
            add(&join, &mut state, added);
            let held = &events[e..(e + n).min(events.len())];
            e += held.len();
            let (rows, ids) = order_rows(held);
            join.hold(&mut state, &rows, &ids).unwrap();
            let bound = versions[v..].iter().map(|x| x.1).min().unwrap_or(i64::MAX);
            for (order, region) in answers(join.release(&mut state, bound).unwrap().rows) {
                prop_assert!(got.insert(order, region).is_none());
            }
        }
        for (order, region) in answers(join.release(&mut state, i64::MAX).unwrap().rows) {
            prop_assert!(got.insert(order, region).is_none());
        }
        prop_assert_eq!(&got, &expected);

        // The batch layer's path: every version first, then the rows joined at once.
        let mut loaded = MemState::new();
        add(&join, &mut loaded, &versions);
        let (rows, _) = order_rows(&events);
        let (joined, inputs, _) = join.join_now(&loaded, &rows).unwrap();
        prop_assert_eq!(inputs, (0..events.len()).collect::<Vec<_>>());
        let now: BTreeMap<i64, Option<String>> = answers(joined).into_iter().collect();
        prop_assert_eq!(now, expected);
    }
}
