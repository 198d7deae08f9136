//! Which temporal joins compile, into what, and the message of every refusal.

use std::path::Path;

use crate::join::temporal::JoinKind;
use crate::{Job, Pipeline};

const INPUTS: &str = r#"
name = "j"
[[sources]]
topic = "orders.events"
table = "orders"
event_time = "event_time"
fields = [
  { name = "order_id", type = "string", nullable = false },
  { name = "customer_id", type = "string" },
  { name = "region", type = "string" },
  { name = "amount", type = "float64" },
  { name = "event_time", type = "timestamp" },
]
[[sources]]
topic = "clicks"
table = "clicks"
event_time = "event_time"
fields = [
  { name = "customer_id", type = "string" },
  { name = "event_time", type = "timestamp" },
]
[[tables]]
topic = "customers"
table = "customers"
key = ["customer_id"]
valid_from = "updated_at"
fields = [
  { name = "customer_id", type = "string", nullable = false },
  { name = "region", type = "string" },
  { name = "updated_at", type = "timestamp" },
]
"#;

const ENRICHED: &str = "SELECT c.region AS customer_region, COUNT(*) AS n, SUM(o.amount) AS total
FROM orders AS o
LEFT JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c ON o.customer_id = c.customer_id
GROUP BY c.region";

fn compile(sql: &str, key: &str) -> crate::Result<Pipeline> {
    let text = format!("{INPUTS}[transform]\nsql = \"\"\"\n{sql}\n\"\"\"\n[view]\nkey = {key}\n");
    let job = Job::from_toml(&text, Path::new("j.toml"))?;
    Pipeline::compile(&job, None)
}

fn refused(sql: &str, expected: &str) {
    let err = match compile(sql, "[]") {
        Ok(_) => panic!("accepted: {sql}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(expected),
        "expected `{expected}` in: {err}\n{sql}"
    );
}

#[test]
fn a_left_temporal_join_compiles_to_joined_rows_under_the_aggregate() {
    let pipeline = compile(ENRICHED, r#"["customer_region"]"#).unwrap();
    let join = pipeline.join().expect("a join");
    assert_eq!(join.kind(), JoinKind::Left);
    assert_eq!(join.table_input(), "customers");
    let names: Vec<&str> = pipeline
        .plan()
        .input_schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        [
            "order_id",
            "customer_id",
            "region",
            "amount",
            "event_time",
            "customer_id",
            "region",
            "updated_at"
        ]
    );
    assert_eq!(pipeline.plan().event_time_index(), 4);
    assert!(pipeline.source_columns_read().is_none());
    // The key column is the table's region (index 6), not the order's (index 2).
    let inner = ENRICHED.replace("LEFT JOIN", "JOIN");
    let pipeline = compile(&inner, r#"["customer_region"]"#).unwrap();
    assert_eq!(pipeline.join().unwrap().kind(), JoinKind::Inner);
}

#[test]
fn a_windowed_aggregate_over_the_join_keeps_every_column_in_place() {
    let sql = "SELECT c.region AS customer_region,
  TUMBLE_START(o.event_time, INTERVAL '1' MINUTE) AS window_start, COUNT(*) AS n
FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.event_time c ON c.customer_id = o.customer_id
WHERE o.amount > 10
GROUP BY c.region, TUMBLE(o.event_time, INTERVAL '1' MINUTE)";
    let pipeline = compile(sql, r#"["customer_region"]"#).unwrap();
    assert_eq!(pipeline.plan().input_schema().fields().len(), 8);
    assert!(pipeline.plan().aggregate().unwrap().window().is_some());
}

#[test]
fn joins_no_backfill_reproduces_are_refused_with_the_alternative() {
    refused(
        "SELECT c.region FROM orders o LEFT JOIN customers c ON o.customer_id = c.customer_id",
        "write JOIN customers FOR SYSTEM_TIME AS OF o.event_time",
    );
    refused(
        "SELECT c.region FROM orders o JOIN customers FOR SYSTEM_TIME AS OF PROCTIME() AS c ON o.customer_id = c.customer_id",
        "processing time",
    );
    refused(
        "SELECT c.region FROM orders o JOIN customers FOR SYSTEM_TIME AS OF c.updated_at AS c ON o.customer_id = c.customer_id",
        "the lookup time is the stream's event time",
    );
    refused(
        "SELECT c.region FROM orders o RIGHT JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c ON o.customer_id = c.customer_id",
        "use LEFT JOIN",
    );
    refused(
        "SELECT c.region FROM orders o FULL OUTER JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c ON o.customer_id = c.customer_id",
        "use LEFT JOIN",
    );
    refused(
        "SELECT c.region FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c ON o.region = c.region",
        "missing: customer_id",
    );
    refused(
        "SELECT c.region FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c ON o.customer_id = c.customer_id AND o.amount > 3",
        "filter rows in WHERE",
    );
    refused(
        "SELECT c.region FROM customers c JOIN orders o ON o.customer_id = c.customer_id",
        "comes first",
    );
    refused(
        "SELECT k.customer_id FROM orders o JOIN clicks k ON o.customer_id = k.customer_id",
        "stream-stream joins are not supported yet",
    );
    refused(
        "SELECT p.x FROM orders o JOIN prices FOR SYSTEM_TIME AS OF o.event_time AS p ON o.customer_id = p.x",
        "join one of the job's other inputs (clicks, customers)",
    );
    refused(
        "SELECT c.region FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c ON o.customer_id = c.customer_id JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS d ON o.customer_id = d.customer_id",
        "2 joins",
    );
    refused(
        "SELECT o.region FROM orders FOR SYSTEM_TIME AS OF event_time AS o",
        "without a join",
    );
    refused(
        "SELECT c.region FROM orders o CROSS JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c",
        "JOIN or LEFT JOIN",
    );
    // A window is over the stream's time, even when the table has a column of its name.
    refused(
        "SELECT c.region AS r, COUNT(*) AS n FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c ON o.customer_id = c.customer_id GROUP BY c.region, TUMBLE(c.event_time, INTERVAL '1' MINUTE)",
        "group windows are over the job's event time column",
    );
}
