//! The router over hand-made result rows: overlaps, `else`, NULLs, failing and bad predicates.

use std::path::Path;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::Int64Type;

use super::*;
use crate::Pipeline;

fn job(outputs: &str) -> Result<Job> {
    let toml = format!(
        r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [
  {{ name = "ts", type = "timestamp" }},
  {{ name = "id", type = "int64" }},
  {{ name = "region", type = "string" }},
  {{ name = "amount", type = "float64" }},
]
[transform]
sql = "SELECT id, region, amount FROM t"
{outputs}
"#
    );
    Job::from_toml(&toml, Path::new("t.toml"))
}

fn pipeline(outputs: &str) -> Result<Pipeline> {
    Pipeline::compile(&job(outputs)?, None)
}

/// Result rows (id, region, amount) in the plan's output schema.
fn rows(pipeline: &Pipeline, rows: &[(i64, Option<&str>, Option<f64>)]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
    ];
    RecordBatch::try_new(pipeline.plan().output_schema(), columns).expect("result rows")
}

/// (output name, ids of its rows) for every output that took rows.
fn routed(pipeline: &Pipeline, batch: &RecordBatch) -> Vec<(String, Vec<i64>)> {
    let router = pipeline.outputs().expect("outputs");
    let names: Vec<&str> = router.names().collect();
    router
        .route(batch)
        .expect("routing")
        .into_iter()
        .map(|(index, part)| {
            let ids = part.column(0).as_primitive::<Int64Type>().values().to_vec();
            (names[index].to_string(), ids)
        })
        .collect()
}

const THREE: &str = r#"
[[outputs]]
name = "big"
where = "amount >= 100"
[[outputs]]
name = "eu"
where = "region = 'eu'"
topic = "orders.eu"
[[outputs]]
name = "rest"
else = true
"#;

#[test]
fn rows_go_to_every_output_they_match_and_else_takes_the_rest() {
    let pipeline = pipeline(THREE).expect("compiles");
    let batch = rows(
        &pipeline,
        &[
            (1, Some("eu"), Some(150.0)),
            (2, Some("us"), Some(150.0)),
            (3, Some("eu"), Some(5.0)),
            (4, Some("us"), Some(5.0)),
            // NULL region: not `eu`, but still big.
            (5, None, Some(200.0)),
            // NULL amount: not big, not eu, so the else output's.
            (6, Some("apac"), None),
        ],
    );
    assert_eq!(
        routed(&pipeline, &batch),
        vec![
            ("big".to_string(), vec![1, 2, 5]),
            ("eu".to_string(), vec![1, 3]),
            ("rest".to_string(), vec![4, 6]),
        ]
    );
}

#[test]
fn outputs_that_take_no_row_are_left_out() {
    let pipeline = pipeline(THREE).expect("compiles");
    let batch = rows(&pipeline, &[(1, Some("eu"), Some(150.0))]);
    assert_eq!(
        routed(&pipeline, &batch),
        vec![("big".to_string(), vec![1]), ("eu".to_string(), vec![1])]
    );
    assert!(routed(&pipeline, &batch.slice(0, 0)).is_empty());
}

#[test]
fn an_else_output_alone_takes_every_row_and_no_outputs_compile_to_none() {
    let pipeline = pipeline("[[outputs]]\nname = \"all\"\nelse = true\n").expect("compiles");
    let batch = rows(&pipeline, &[(1, None, None), (2, Some("eu"), Some(1.0))]);
    assert_eq!(
        routed(&pipeline, &batch),
        vec![("all".to_string(), vec![1, 2])]
    );
    assert!(self::pipeline("").expect("compiles").outputs().is_none());
}

#[test]
fn a_predicate_failing_on_a_row_does_not_match_it() {
    let outputs = r#"
[[outputs]]
name = "numbered"
where = "CAST(region AS BIGINT) > 0"
[[outputs]]
name = "rest"
else = true
"#;
    let pipeline = pipeline(outputs).expect("compiles");
    let batch = rows(
        &pipeline,
        &[
            (1, Some("7"), None),
            (2, Some("eu"), None),
            (3, Some("3"), None),
            (4, Some("-1"), None),
        ],
    );
    assert_eq!(
        routed(&pipeline, &batch),
        vec![
            ("numbered".to_string(), vec![1, 3]),
            ("rest".to_string(), vec![2, 4]),
        ]
    );
}

fn refusal(outputs: &str) -> String {
    match pipeline(outputs) {
        Ok(_) => panic!("compiled: {outputs}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_predicates_are_refused_naming_the_output_and_why() {
    let cases = [
        ("nope > 1", "No field named nope"),
        ("amount + 1", "Float64"),
        ("region", "returning Utf8"),
        ("amount >=", "Expected"),
        ("amount > 1 LIMIT 3", "one expression"),
        ("count(*) > 1", "not allowed in the WHERE clause"),
        ("amount > (SELECT max(amount) FROM results)", "subqueries"),
        ("region IN (SELECT region FROM results)", "subqueries"),
    ];
    for (predicate, why) in cases {
        let outputs = format!(
            "[[outputs]]\nname = \"ok\"\nwhere = \"amount > 0\"\n[[outputs]]\nname = \"bad\"\nwhere = \"{predicate}\"\n"
        );
        let message = refusal(&outputs);
        assert!(
            message.contains("`outputs[1].where`"),
            "{predicate}: {message}"
        );
        assert!(message.contains(why), "{predicate}: {message}");
    }
}

#[test]
fn output_topics_may_not_be_the_jobs_own_or_shared() {
    let own = refusal("[[outputs]]\nname = \"x\"\nwhere = \"true\"\ntopic = \"t.results\"\n");
    assert!(own.contains("`outputs[0].topic`"), "{own}");
    let shared = refusal(
        "[[outputs]]\nname = \"x\"\nwhere = \"true\"\ntopic = \"a\"\n[[outputs]]\nname = \"y\"\nelse = true\ntopic = \"a\"\n",
    );
    assert!(shared.contains("`outputs[1].topic`"), "{shared}");
}

#[test]
fn rows_of_another_schema_are_refused() {
    let pipeline = pipeline(THREE).expect("compiles");
    let batch = rows(&pipeline, &[(1, Some("eu"), Some(1.0))])
        .project(&[0, 1])
        .expect("projection");
    let router = pipeline.outputs().expect("outputs");
    assert!(router.route(&batch).is_err());
}
