//! The stateful stages chained: a warn `unique` counts without holding rows back, a quarantine
//! `unique` rejects exactly the duplicates the SQL's dedup would drop, and the SQL's dedup then
//! sees only the rows the checks let through; reach rows decide but are not reported.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};

use super::*;
use crate::Pipeline;
use crate::operator_state::MemState;

const MINUTE: i64 = 60_000_000;

fn pipeline(checks: &str, sql: &str) -> Pipeline {
    let toml = format!(
        r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [
  {{ name = "k", type = "string" }},
  {{ name = "n", type = "int64" }},
  {{ name = "ts", type = "timestamp" }},
]
[transform]
sql = "{sql}"
dedup_within = "10m"
[view]
key = []
{checks}
"#
    );
    let job = Job::from_toml(&toml, Path::new("t.toml")).expect("job");
    Pipeline::compile(&job, None).expect("pipeline")
}

fn rows(pipeline: &Pipeline, rows: &[(&str, i64, i64)]) -> RecordBatch {
    let schema = pipeline.plan().input_schema().clone();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                    .with_timezone("UTC"),
            ),
        ],
    )
    .expect("rows")
}

fn ids(from: i64, n: usize) -> Vec<RowId> {
    (from..from + n as i64).map(RowId::offset).collect()
}

fn ns(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("n")
        .values()
        .to_vec()
}

const STATELESS: &str = "SELECT k, n FROM t";
const DEDUP: &str = "SELECT k, n FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM t) WHERE rn = 1";

#[test]
fn a_warn_unique_counts_when_rows_are_decided_and_holds_nothing_back() {
    let p = pipeline(
        "[[checks]]\ncheck = \"unique\"\ncolumn = \"k\"\nwithin = \"1m\"\n",
        STATELESS,
    );
    let stages = p.stateful().expect("a unique check is a stateful stage");
    assert!(!stages.holds_rows());
    assert!(p.dedup().is_none());
    assert_eq!(p.holding(), None);
    let mut state = MemState::new();
    let arriving = rows(&p, &[("a", 1, 0), ("a", 2, 30_000_000), ("b", 3, MINUTE)]);
    let first = stages
        .step(&mut state, &arriving, &ids(0, 3), (None, Some(0)), None)
        .expect("step");
    assert_eq!(ns(&first.rows), [1, 2, 3], "every row goes on at once");
    assert_eq!(first.violations, [0], "nothing decided yet");
    // Late for the check (before the previous bound): it goes on, uncounted.
    let late = rows(&p, &[("a", 4, 10)]);
    let second = stages
        .step(
            &mut state,
            &late,
            &ids(3, 1),
            (Some(20), Some(2 * MINUTE)),
            None,
        )
        .expect("step");
    assert_eq!(ns(&second.rows), [4]);
    assert_eq!(second.violations, [1], "a at 30 s, 30 s after a at 0");
    assert!(second.rejected.is_empty());
}

#[test]
fn a_quarantine_unique_rejects_what_dedup_would_drop_before_the_sql_dedup_sees_it() {
    let p = pipeline(
        "[[checks]]\ncheck = \"unique\"\ncolumns = [\"k\", \"n\"]\nwithin = \"1m\"\nseverity = \"quarantine\"\n",
        DEDUP,
    );
    let stages = p.stateful().expect("stages");
    assert!(stages.holds_rows());
    assert_eq!(stages.stages().len(), 2);
    assert_eq!(stages.reach_us(), 11 * MINUTE, "1 min + the SQL's 10 min");
    assert_eq!(p.holding().as_deref(), Some("deduplicates by (k)"));
    let mut state = MemState::new();
    let arriving = rows(
        &p,
        &[
            ("a", 1, 0),
            ("a", 1, 30_000_000), // the check's duplicate: same (k, n) within 1 min
            ("a", 2, 40_000_000), // not the check's (n differs) but the SQL's (k within 10 min)
            ("b", 1, 50_000_000),
            ("b", 1, 5 * MINUTE), // beyond the check's minute, within the SQL's 10
        ],
    );
    let held = stages
        .step(&mut state, &arriving, &ids(0, 5), (None, None), None)
        .expect("hold");
    assert_eq!(held.rows.num_rows(), 0, "held until a bound passes them");
    let released = stages
        .step(
            &mut state,
            &rows(&p, &[]),
            &[],
            (None, Some(i64::MAX)),
            None,
        )
        .expect("release");
    assert_eq!(ns(&released.rows), [1, 1], "a at 0 and b at 50 s");
    assert_eq!(released.ids, [RowId::offset(0), RowId::offset(3)]);
    assert_eq!(released.dropped, 2, "a (n = 2) and b at 5 min, by the SQL");
    assert_eq!(released.violations, [1]);
    assert_eq!(released.rejected.len(), 1);
    assert_eq!(released.rejected[0].id, RowId::offset(1));
    assert_eq!(released.rejected[0].check, 0);
    let failed = p.check_failure(0);
    assert_eq!(failed.check.as_deref(), Some("unique_k_n"));
    assert!(
        failed.error.to_string().contains("within 1m"),
        "{}",
        failed.error
    );
}

#[test]
fn reach_rows_decide_but_are_not_reported() {
    let p = pipeline(
        "[[checks]]\ncheck = \"unique\"\ncolumn = \"k\"\nwithin = \"1m\"\nseverity = \"quarantine\"\n",
        STATELESS,
    );
    let stages = p.stateful().expect("stages");
    let mut state = MemState::new();
    let arriving = rows(&p, &[("a", 1, 0), ("a", 2, 10), ("a", 3, 20), ("c", 4, 30)]);
    let stepped = stages
        .step(
            &mut state,
            &arriving,
            &ids(0, 4),
            (None, Some(i64::MAX)),
            Some(20),
        )
        .expect("step");
    // a at 10 is a violation of the reach: decided (so a at 20 is one too), not reported.
    assert_eq!(stepped.violations, [1]);
    assert_eq!(stepped.rejected.len(), 1);
    assert_eq!(stepped.rejected[0].id, RowId::offset(2));
    assert_eq!(
        ns(&stepped.rows),
        [1, 4],
        "the caller drops the reach row a at 0"
    );
}
