//! Both forms of a job's inputs and every error of their validation.

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;

use super::*;
use crate::Lake;
use crate::topics::{DivertReason, Topics};

const ORDERS: &str = r#"
topic = "orders.events"
table = "orders"
event_time = "event_time"
fields = [
  { name = "order_id", type = "string", nullable = false },
  { name = "customer_id", type = "string" },
  { name = "amount", type = "float64" },
  { name = "event_time", type = "timestamp" },
]
"#;

const CUSTOMERS: &str = r#"
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

const TAIL: &str = r#"
[transform]
sql = "SELECT customer_id, SUM(amount) AS total FROM orders GROUP BY customer_id"
[view]
key = ["customer_id"]
"#;

fn parse(text: &str) -> Result<Job> {
    Job::from_toml(text, Path::new("job.toml"))
}

fn one_source() -> String {
    format!("name = \"j\"\n[source]{ORDERS}{TAIL}")
}

/// `[[sources]]` orders, then `extra` (more `[[sources]]` / `[[tables]]` entries).
fn several(extra: &str) -> String {
    format!("name = \"j\"\n[[sources]]{ORDERS}{extra}{TAIL}")
}

fn with_customers(customers: &str) -> String {
    several(&format!("[[tables]]{customers}"))
}

/// The error `text` gives, which must name `field` of job.toml.
fn error_at(text: &str, field: &str) -> String {
    let message = match parse(text) {
        Ok(_) => panic!("accepted, expected an error at `{field}`:\n{text}"),
        Err(e) => e.to_string(),
    };
    assert!(message.starts_with("job.toml"), "{message}");
    assert!(
        message.contains(&format!("field `{field}`")),
        "expected `{field}` in: {message}"
    );
    message
}

#[test]
fn one_sources_entry_is_the_source_form_with_the_same_fingerprint() {
    let source = parse(&one_source()).unwrap();
    let sources = parse(&several("")).unwrap();
    assert_eq!(source.plan_fingerprint(), sources.plan_fingerprint());
    assert!(!source.has_several_inputs() && !sources.has_several_inputs());
    assert_eq!(source.inputs().len(), 1);
    assert_eq!(sources.table_name(), "orders");
    // A one-input job's fingerprint is what it was before several inputs existed.
    assert_eq!(source.plan_fingerprint(), PINNED_ONE_SOURCE);
}

/// `one_source()`'s fingerprint by the formula from before `[[sources]]` existed (its canonical
/// text written out by hand and hashed with Python's `blake3`, not by this code).
const PINNED_ONE_SOURCE: &str = "9267b888caeb300d7a6688eb475d1996";

#[test]
fn inputs_are_the_streams_in_order_then_the_tables() {
    let clicks = ORDERS
        .replace("orders.events", "clicks")
        .replace("\"orders\"", "\"clicks\"");
    let job = parse(&several(&format!(
        "[[sources]]{clicks}[[tables]]{CUSTOMERS}"
    )))
    .unwrap();
    assert!(job.has_several_inputs());
    let inputs = job.inputs();
    let names: Vec<(&str, &str, InputKind)> = inputs
        .iter()
        .map(|i| (i.table.as_str(), i.topic.as_str(), i.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("orders", "orders.events", InputKind::Stream),
            ("clicks", "clicks", InputKind::Stream),
            ("customers", "customers", InputKind::Table),
        ]
    );
    assert!(inputs[0].is_primary() && !inputs[2].is_primary());
    assert_eq!(inputs[0].lake_group("g"), "g.lake");
    assert_eq!(inputs[2].lake_group("g"), "g.lake.customers");
    assert_eq!(inputs[2].key, ["customer_id"]);
    // Each input's job is the job as it sees it: its own source, no other inputs.
    let customers = &inputs[2].job;
    assert_eq!(customers.spec.source.topic, "customers");
    assert_eq!(customers.spec.source.event_time, "updated_at");
    assert!(!customers.has_several_inputs());
    assert_eq!(customers.table_name(), "customers");
    assert_eq!(job.input("CUSTOMERS").unwrap().index, 2);
    let unknown = job.input("prices").unwrap_err().to_string();
    assert!(unknown.contains("orders, clicks, customers"), "{unknown}");
    let topics = Topics::for_job(&job);
    assert_eq!(topics.source, "orders.events");
    assert_eq!(
        topics.inputs,
        [
            ("orders".to_string(), "orders.events".to_string()),
            ("clicks".to_string(), "clicks".to_string()),
            ("customers".to_string(), "customers".to_string()),
        ]
    );
}

#[test]
fn each_input_has_its_own_raw_table_unless_lake_raw_names_one() {
    let lake = Lake {
        root: "/l".to_string(),
    };
    let job = parse(&with_customers(CUSTOMERS)).unwrap();
    assert_eq!(lake.raw_table(&job), "/l/raw/orders.events");
    let customers = job.input("customers").unwrap();
    assert_eq!(lake.raw_table(&customers.job), "/l/raw/customers");
    let mapped = parse(&format!(
        "{}[lake.raw]\nCustomers = \"s3://b/raw/c\"\n",
        with_customers(CUSTOMERS)
    ))
    .unwrap();
    assert_eq!(lake.raw_table(&mapped), "/l/raw/orders.events");
    let customers = mapped.input("customers").unwrap();
    assert_eq!(lake.raw_table(&customers.job), "s3://b/raw/c");
    // One input may still name its raw table either way.
    let one = parse(&format!("{}[lake]\nraw = \"/r\"\n", one_source())).unwrap();
    assert_eq!(lake.raw_table(&one), "/r");
    let one = parse(&format!("{}[lake.raw]\norders = \"/r2\"\n", one_source())).unwrap();
    assert_eq!(lake.raw_table(&one), "/r2");
}

#[test]
fn the_fingerprint_covers_what_an_input_holds_but_not_how_it_is_read() {
    let base = parse(&several("")).unwrap().plan_fingerprint();
    let with = parse(&with_customers(CUSTOMERS))
        .unwrap()
        .plan_fingerprint();
    assert_ne!(base, with);
    let slower = CUSTOMERS.replace("key =", "watermark_delay = \"1m\"\nkey =");
    assert_eq!(
        with,
        parse(&with_customers(&slower)).unwrap().plan_fingerprint()
    );
    let rekeyed = CUSTOMERS.replace(r#"key = ["customer_id"]"#, r#"key = ["region"]"#);
    assert_ne!(
        with,
        parse(&with_customers(&rekeyed)).unwrap().plan_fingerprint()
    );
    let untimed = CUSTOMERS.replace("valid_from = \"updated_at\"\n", "");
    assert_ne!(
        with,
        parse(&with_customers(&untimed)).unwrap().plan_fingerprint()
    );
}

#[test]
fn a_table_without_valid_from_is_timed_by_the_kafka_timestamp() {
    let untimed = CUSTOMERS.replace("valid_from = \"updated_at\"\n", "");
    let job = parse(&with_customers(&untimed)).unwrap();
    let input = job.input("customers").unwrap();
    assert!(input.timed_by_kafka());
    assert!(!job.primary_input().timed_by_kafka());
    let schema = input.job.source_schema();
    let last = schema.field(schema.fields().len() - 1);
    assert_eq!(last.name(), KAFKA_VALID_FROM);
    assert!(!last.is_nullable());
    assert_eq!(last.data_type(), &crate::spec::timestamp_type());
    let raw = crate::lake::raw_schema(&input.job);
    assert!(raw.index_of(KAFKA_VALID_FROM).is_ok());

    let decoder = crate::decode::for_job(&input.job, 1 << 20).unwrap();
    assert_eq!(decoder.schema(), &schema);
    let records: Vec<&[u8]> = vec![
        br#"{"customer_id":"c1","region":"eu","updated_at":5}"#,
        br#"{"customer_id":null}"#,
        br#"{"customer_id":"c2","__valid_from":1}"#,
    ];
    let stamps = [Some(1_000), Some(2_000), Some(3_000)];
    let out = decoder.decode_stamped(&records, &stamps).unwrap();
    assert_eq!(out.rows, [0, 2]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].index, 1);
    let column = out.batch.column(out.batch.num_columns() - 1);
    let times = column.as_primitive::<TimestampMicrosecondType>();
    // The record's own `__valid_from` key is not a field: the Kafka timestamp wins.
    assert_eq!(times.values().to_vec(), [1_000_000, 3_000_000]);
    assert_eq!(column.null_count(), 0);

    // A producer's timestamp outside the supported range is a bad record, not a bad batch.
    let records: Vec<&[u8]> = vec![
        br#"{"customer_id":"c1"}"#,
        br#"{"customer_id":"c2"}"#,
        br#"{"customer_id":null}"#,
    ];
    let out = decoder
        .decode_stamped(&records, &[Some(i64::MAX), Some(7), Some(i64::MIN)])
        .unwrap();
    assert_eq!(out.rows, [1]);
    let errors: Vec<(usize, DivertReason, Option<&str>)> = out
        .errors
        .iter()
        .map(|e| (e.index, e.kind, e.field.as_deref()))
        .collect();
    assert_eq!(
        errors,
        [
            (0, DivertReason::SchemaViolation, Some(KAFKA_VALID_FROM)),
            (2, DivertReason::MissingField, Some("customer_id")),
        ]
    );
    assert!(
        out.errors[0]
            .reason
            .contains("outside the supported time range")
    );
    let column = out.batch.column(out.batch.num_columns() - 1);
    assert_eq!(
        column
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec(),
        [7_000]
    );
}

#[test]
fn the_two_stream_forms_may_not_be_mixed_and_one_is_needed() {
    error_at(
        &format!("name = \"j\"\n[source]{ORDERS}[[sources]]{ORDERS}{TAIL}"),
        "sources",
    );
    let none = error_at(&format!("name = \"j\"\n{TAIL}"), "source");
    assert!(none.contains("neither"), "{none}");
    let tables_only = error_at(
        &format!("name = \"j\"\n[[tables]]{CUSTOMERS}{TAIL}"),
        "source",
    );
    assert!(tables_only.contains("only [[tables]]"), "{tables_only}");
}

#[test]
fn errors_name_the_entry_of_the_input_at_fault() {
    let second = |patch: &dyn Fn(&str) -> String| {
        let clicks = ORDERS
            .replace("orders.events", "clicks")
            .replace("\"orders\"", "\"clicks\"");
        several(&format!("[[sources]]{}", patch(&clicks)))
    };
    error_at(
        &second(&|s| s.replace("event_time = \"event_time\"", "event_time = \"nope\"")),
        "sources[1].event_time",
    );
    error_at(
        &second(&|s| s.replace("\"clicks\"\n", "\"\"\n")),
        "sources[1].topic",
    );
    error_at(
        &second(&|s| s.replace("\"order_id\"", "\"__order_id\"")),
        "sources[1].fields[0].name",
    );
    error_at(
        &second(&|s| {
            s.replace(
                "event_time = \"event_time\"",
                "event_time = \"event_time\"\nschema = \"s.avsc\"",
            )
        }),
        "sources[1].schema",
    );
    // The primary stream of the `[[sources]]` form is `sources[0]`.
    error_at(
        &several("").replace("event_time = \"event_time\"", "event_time = \"amount\""),
        "sources[0].event_time",
    );
    // ... and of the `[source]` form `source`, as always.
    error_at(
        &one_source().replace("event_time = \"event_time\"", "event_time = \"amount\""),
        "source.event_time",
    );
}

#[test]
fn a_table_needs_a_key_of_its_fields_and_a_timestamp_valid_from() {
    let table = |patch: &dyn Fn(&str) -> String| with_customers(&patch(CUSTOMERS));
    error_at(
        &table(&|s| s.replace(r#"key = ["customer_id"]"#, "key = []")),
        "tables[0].key",
    );
    let unknown = error_at(
        &table(&|s| s.replace(r#"key = ["customer_id"]"#, r#"key = ["id"]"#)),
        "tables[0].key",
    );
    assert!(
        unknown.contains("customer_id, region, updated_at"),
        "{unknown}"
    );
    error_at(
        &table(&|s| {
            s.replace(
                r#"key = ["customer_id"]"#,
                r#"key = ["customer_id", "customer_id"]"#,
            )
        }),
        "tables[0].key",
    );
    error_at(
        &table(&|s| s.replace("valid_from = \"updated_at\"", "valid_from = \"region\"")),
        "tables[0].valid_from",
    );
    error_at(
        &table(&|s| s.replace("valid_from = \"updated_at\"", "valid_from = \"when\"")),
        "tables[0].valid_from",
    );
    error_at(
        &table(&|s| s.replace("\"region\"", "\"__region\"")),
        "tables[0].fields[1].name",
    );
    error_at(
        &table(&|s| {
            s.replace(
                "table = \"customers\"",
                "table = \"customers\"\nregistry = \"http://r\"",
            )
        }),
        "tables[0].registry",
    );
    // A table has no event time or lateness of its own, and must have a key.
    for (from, to) in [
        ("key =", "event_time = \"updated_at\"\nkey ="),
        ("key =", "allowed_lateness = \"1m\"\nkey ="),
        ("key = [\"customer_id\"]\n", ""),
    ] {
        let err = parse(&table(&|s| s.replace(from, to)))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("job.toml"), "{err}");
        assert!(
            err.contains("event_time") || err.contains("allowed_lateness") || err.contains("key"),
            "{err}"
        );
    }
}

#[test]
fn input_names_and_topics_are_unique_across_inputs() {
    let clash = error_at(
        &with_customers(&CUSTOMERS.replace("table = \"customers\"", "table = \"Orders\"")),
        "tables[0].table",
    );
    assert!(clash.contains("sources[0].table"), "{clash}");
    let topic = error_at(
        &with_customers(&CUSTOMERS.replace("topic = \"customers\"", "topic = \"orders.events\"")),
        "tables[0].topic",
    );
    assert!(topic.contains("one raw table per topic"), "{topic}");
    // The default name from the topic counts too.
    error_at(
        &with_customers(
            &CUSTOMERS
                .replace("table = \"customers\"\n", "")
                .replace("topic = \"customers\"", "topic = \"orders\""),
        ),
        "tables[0].table",
    );
}

#[test]
fn lake_raw_is_one_url_only_for_one_input_and_names_inputs_otherwise() {
    error_at(
        &format!("{}[lake]\nraw = \"/r\"\n", with_customers(CUSTOMERS)),
        "lake.raw",
    );
    let unknown = error_at(
        &format!("{}[lake.raw]\nprices = \"/r\"\n", with_customers(CUSTOMERS)),
        "lake.raw.prices",
    );
    assert!(unknown.contains("orders, customers"), "{unknown}");
    error_at(
        &format!(
            "{}[lake.raw]\ncustomers = \" \"\n",
            with_customers(CUSTOMERS)
        ),
        "lake.raw.customers",
    );
    let wrong_type = parse(&format!("{}[lake]\nraw = 3\n", one_source()))
        .unwrap_err()
        .to_string();
    assert!(
        wrong_type.contains("a raw table URL, or a table of input name = raw table URL"),
        "{wrong_type}"
    );
}
