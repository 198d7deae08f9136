//! Several inputs per job, end to end: a stream and a table (`[[sources]]`, `[[tables]]`), each
//! landed by `sluice stream` in its own raw table exactly once while the daemon is killed with
//! SIGKILL at random moments; and `sluice lake load --input` filling one input's raw table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_core::Job;
use sluice_core::fixture::{ORDER_FIELDS, OrderGenerator, T0_MS};
use sluice_core::lake::{SOURCE_OFFSET_COLUMN, SOURCE_PARTITION_COLUMN};
use sluice_core::spec_inputs::KAFKA_VALID_FROM;
use sluice_e2e::corpus::raw_rows;
use sluice_e2e::kafka::{
    Outgoing, create_topic, produce, sluice_bin, spawn_stream, unique, wait_while_progressing,
};
use sluice_e2e::orders;

const ORDER_PARTITIONS: i32 = 3;
const CUSTOMER_PARTITIONS: i32 = 2;

/// The orders stream (primary) and the customers table; `valid_from` is a TOML line or "".
fn job_toml(name: &str, orders: &str, customers: &str, valid_from: &str) -> String {
    format!(
        r#"
name = "{name}"
[[sources]]
topic = "{orders}"
table = "orders"
event_time = "event_time"
fields = [
{ORDER_FIELDS}]
[[tables]]
topic = "{customers}"
table = "customers"
key = ["customer_id"]
{valid_from}
fields = [
  {{ name = "customer_id", type = "string", nullable = false }},
  {{ name = "region", type = "string" }},
  {{ name = "tier", type = "string" }},
  {{ name = "updated_at", type = "timestamp" }},
]
[transform]
sql = "SELECT region, COUNT(*) AS orders, SUM(amount) AS revenue FROM orders GROUP BY region"
[view]
key = ["region"]
bucket = "10m"
"#
    )
}

/// `count` customer updates over 500 customers, keyed by customer and spread over the
/// table's partitions by key.
fn customer_updates(count: usize) -> Vec<Outgoing> {
    (0..count)
        .map(|i| {
            let id = format!("c{}", i % 500);
            let partition = (i % 500) as i32 % CUSTOMER_PARTITIONS;
            let (region, tier) = (["eu", "us", "apac"][i % 3], ["gold", "silver"][i % 2]);
            let value = serde_json::json!({
                "customer_id": id,
                "region": region,
                "tier": tier,
                "updated_at": T0_MS + i as i64 * 10,
            });
            (
                partition,
                Some(id.into_bytes()),
                serde_json::to_vec(&value).unwrap(),
            )
        })
        .collect()
}

fn int64(batch: &RecordBatch, column: &str) -> Vec<i64> {
    let index = batch.schema().index_of(column).unwrap();
    let column = arrow::compute::cast(batch.column(index), &DataType::Int64).unwrap();
    column.as_primitive::<Int64Type>().values().to_vec()
}

/// (partition, offset) of every row of `job`'s raw table.
fn landed(lake: &Path, job: &Job) -> Vec<(i64, i64)> {
    raw_rows(lake, job)
        .iter()
        .flat_map(|batch| {
            let partitions = int64(batch, SOURCE_PARTITION_COLUMN);
            let offsets = int64(batch, SOURCE_OFFSET_COLUMN);
            partitions.into_iter().zip(offsets).collect::<Vec<_>>()
        })
        .collect()
}

/// Waits for `expected` rows in `job`'s raw table, then checks each offset landed once and
/// every partition's offsets are 0..n without a gap.
fn assert_every_offset_once(lake: &Path, job: &Job, expected: usize, what: &str) {
    wait_while_progressing(
        Duration::from_secs(90),
        Duration::from_secs(2),
        what,
        expected,
        || landed(lake, job).len(),
    );
    let offsets = landed(lake, job);
    let distinct: BTreeSet<(i64, i64)> = offsets.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        offsets.len(),
        "{what}: an offset landed twice"
    );
    assert_eq!(offsets.len(), expected, "{what}: rows in the raw table");
    let mut per_partition: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (partition, offset) in distinct {
        per_partition.entry(partition).or_default().push(offset);
    }
    for (partition, offsets) in per_partition {
        let gapless: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, gapless, "{what}: offsets of partition {partition}");
    }
}

#[test]
fn a_stream_and_a_table_land_in_their_own_raw_tables_exactly_once_under_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (orders_topic, customers_topic) = (unique("orders"), unique("customers"));
    let name = unique("inputs").replace('-', "_");
    // No `valid_from`: the table is timed by the Kafka timestamps, landed as `__valid_from`.
    let job_file = dir.path().join("job.toml");
    std::fs::write(
        &job_file,
        job_toml(&name, &orders_topic, &customers_topic, ""),
    )
    .unwrap();
    let job = Job::from_file(&job_file).unwrap();
    create_topic(&orders_topic, ORDER_PARTITIONS);
    create_topic(&customers_topic, CUSTOMER_PARTITIONS);
    let order_events = orders::by_region(
        OrderGenerator::new(5, orders::on_time_shape("o", T0_MS, 20)).take(60_000),
        ORDER_PARTITIONS,
    );
    let updates = customer_updates(20_000);
    let started_ms = chrono::Utc::now().timestamp_millis();
    // Both topics keep receiving while the daemon is killed and restarted.
    let producer = {
        let (orders_topic, customers_topic) = (orders_topic.clone(), customers_topic.clone());
        let (order_events, updates) = (order_events.clone(), updates.clone());
        std::thread::spawn(move || {
            for (orders, customers) in order_events.chunks(6_000).zip(updates.chunks(2_000)) {
                produce(&orders_topic, orders);
                produce(&customers_topic, customers);
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    let lake = dir.path().join("lake");
    let state = dir.path().join("state");
    let log = |round: usize| dir.path().join(format!("stream-{round}.log"));
    let mut rng = StdRng::seed_from_u64(17);
    for round in 0..5 {
        let mut child = spawn_stream(&job_file, &lake, &state, &log(round), &[]);
        std::thread::sleep(Duration::from_millis(rng.random_range(1_000..4_000)));
        child.kill();
        eprintln!("killed sluice stream (round {round})");
    }
    producer.join().unwrap();
    let finished_ms = chrono::Utc::now().timestamp_millis();
    let mut child = spawn_stream(&job_file, &lake, &state, &log(5), &[]);
    let inputs = job.inputs();
    let (orders_input, customers_input) = (&inputs[0], &inputs[1]);
    assert_every_offset_once(&lake, &orders_input.job, order_events.len(), "orders");
    assert_every_offset_once(&lake, &customers_input.job, updates.len(), "customers");

    // Two tables, each of its own topic: nothing of one input in the other's.
    let raw = |input: &sluice_core::spec::Input| {
        sluice_core::Lake::resolve(Some(lake.to_str().unwrap())).raw_table(&input.job)
    };
    assert!(raw(orders_input).ends_with(&format!("/raw/{orders_topic}")));
    assert!(raw(customers_input).ends_with(&format!("/raw/{customers_topic}")));
    let customer_ids: BTreeSet<String> = raw_rows(&lake, &customers_input.job)
        .iter()
        .flat_map(|batch| {
            let ids = batch.column(batch.schema().index_of("customer_id").unwrap());
            let ids = ids.as_string::<i32>();
            (0..ids.len())
                .map(|i| ids.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(customer_ids.len(), 500);
    // `__valid_from` is each record's Kafka timestamp: set, and within the run.
    for batch in raw_rows(&lake, &customers_input.job) {
        let column = batch.column(batch.schema().index_of(KAFKA_VALID_FROM).unwrap());
        assert_eq!(column.null_count(), 0);
        for us in column.as_primitive::<TimestampMicrosecondType>().values() {
            let ms = us / 1_000;
            assert!(
                (started_ms - 1_000..=finished_ms + 1_000).contains(&ms),
                "__valid_from {ms} outside the run {started_ms}..{finished_ms}"
            );
        }
    }
    assert!(child.terminate().success());
    let logs: String = (0..6)
        .map(|round| std::fs::read_to_string(log(round)).unwrap_or_default())
        .collect();
    assert!(
        !logs.contains("panicked"),
        "a daemon panicked:\n{}",
        &logs[logs.len().saturating_sub(4_000)..]
    );

    // `lake status --input` reports the table's own raw table and partitions.
    let status = Command::new(sluice_bin())
        .args(["lake", "status", "--job"])
        .arg(&job_file)
        .arg("--lake")
        .arg(&lake)
        .args(["--input", "customers", "--output", "json"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        status["raw_table"]
            .as_str()
            .unwrap()
            .ends_with(&customers_topic),
        "{status}"
    );
    assert_eq!(
        status["partitions"].as_array().unwrap().len(),
        CUSTOMER_PARTITIONS as usize,
        "{status}"
    );
}

fn lake_load(job_file: &Path, lake: &Path, extra: &[&str], file: &Path) -> std::process::Output {
    Command::new(sluice_bin())
        .args(["lake", "load", "--job"])
        .arg(job_file)
        .arg("--lake")
        .arg(lake)
        .args(["--output", "json"])
        .args(extra)
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn lake_load_fills_the_raw_table_of_the_input_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let write_job = |file: &str, valid_from: &str| -> PathBuf {
        let path = dir.path().join(file);
        std::fs::write(
            &path,
            job_toml("loaded", "orders.events", "customers", valid_from),
        )
        .unwrap();
        path
    };
    let timed = write_job("timed.toml", "valid_from = \"updated_at\"");
    let lines: Vec<String> = customer_updates(1_000)
        .iter()
        .map(|(_, _, value)| String::from_utf8(value.clone()).unwrap())
        .collect();
    let file = dir.path().join("customers.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let unnamed = lake_load(&timed, &lake, &[], &file);
    assert!(!unnamed.status.success());
    let stderr = String::from_utf8_lossy(&unnamed.stderr);
    assert!(
        stderr.contains("--input") && stderr.contains("orders, customers"),
        "{stderr}"
    );

    let unknown = lake_load(&timed, &lake, &["--input", "prices"], &file);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no input `prices`"), "{stderr}");

    let loaded = lake_load(&timed, &lake, &["--input", "customers"], &file);
    assert!(loaded.status.success(), "{loaded:?}");
    let job = Job::from_file(&timed).unwrap();
    let customers = job.input("customers").unwrap();
    let rows: usize = raw_rows(&lake, &customers.job)
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, 1_000);
    // The orders' raw table was not touched.
    assert!(raw_rows(&lake, &job.primary_input().job).is_empty());

    // A table timed by Kafka timestamps cannot be loaded from a file: lines carry none.
    let untimed = write_job("untimed.toml", "");
    let refused = lake_load(&untimed, &lake, &["--input", "customers"], &file);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Kafka timestamp"), "{stderr}");
}

fn sluice(args: &[&str], lake: &Path) -> std::process::Output {
    Command::new(sluice_bin())
        .args(args)
        .arg("--lake")
        .arg(lake)
        .output()
        .unwrap()
}

/// The user's path for a temporal join: both inputs loaded from files, a backfill, the view;
/// and the speed layer, which does not run joins yet, saying so instead of starting.
#[test]
fn a_joining_job_is_backfilled_from_loaded_files_and_the_speed_layer_names_the_join() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let job = sluice_e2e::repo_path("jobs/examples/orders_by_customer_region.toml");
    let job = job.to_str().unwrap();
    let golden = |name: &str| sluice_e2e::repo_path(&format!("tests/golden/{name}"));
    for (input, file) in [
        ("orders", "orders.input.jsonl"),
        ("customers", "customers.input.jsonl"),
    ] {
        let file = golden(file);
        let out = sluice(
            &[
                "lake",
                "load",
                "--job",
                job,
                "--input",
                input,
                file.to_str().unwrap(),
            ],
            &lake,
        );
        assert!(out.status.success(), "{input}: {out:?}");
    }
    let out = sluice(
        &[
            "backfill",
            "--job",
            job,
            "--from",
            "2024-05-01",
            "--to",
            "2024-05-02",
            "--output",
            "json",
        ],
        &lake,
    );
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows_read"], 60, "{report}");
    let out = sluice(&["view", "--job", job], &lake);
    assert!(out.status.success(), "{out:?}");
    let expected =
        std::fs::read_to_string(golden("orders_by_customer_region.expected.jsonl")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    let refused = Command::new(sluice_bin())
        .args(["stream", "--job", job, "--brokers"])
        .arg(sluice_e2e::kafka::bootstrap())
        .arg("--lake")
        .arg(&lake)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--no-lake-sink")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("joins `customers`") && stderr.contains("sluice backfill"),
        "{stderr}"
    );
}
