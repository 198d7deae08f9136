//! Data-quality checks end to end: a real `sluice stream` dead-letters the records a
//! `quarantine` check rejects as `check_failed` (naming the check and the field) and counts
//! every check's violations in its metrics; `sluice backfill` over the raw table the same
//! daemon landed skips exactly the same records and counts the same violations.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_core::Job;
use sluice_core::fixture::{OrderGenerator, T0_MS};
use sluice_core::topics::{Topics, header};
use sluice_e2e::kafka::{
    Outgoing, create_topic, produce, read_all, sluice_bin, spawn_stream, unique, wait_until,
    wait_while_progressing,
};
use sluice_e2e::orders;
use sluice_e2e::postgres::{free_port, metric};

const CHECKS: &str = r#"
[[checks]]
check = "range"
column = "amount"
min = 0
severity = "quarantine"

[[checks]]
check = "accepted_values"
column = "status"
values = ["completed", "pending", "cancelled"]
"#;

#[test]
fn both_layers_quarantine_the_same_records_and_count_the_same_violations() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("checked");
    let name = unique("checked").replace('-', "_");
    let toml = orders::job_toml(
        &name,
        &topic,
        orders::REGION_PER_MINUTE_SQL,
        r#"["region"]"#,
        "10m",
    ) + CHECKS;
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, toml).unwrap();
    let job = Job::from_file(&job_file).unwrap();
    create_topic(&topic, 2);

    let shape = orders::on_time_shape("c", T0_MS, 40);
    let mut quarantined = BTreeSet::new();
    let mut warned: u32 = 0;
    let generated: Vec<_> = OrderGenerator::new(5, shape)
        .take(2_000)
        .enumerate()
        .map(|(i, mut order)| {
            if i % 97 == 0 {
                order.amount = -order.amount.abs() - 1.0;
                quarantined.insert(order.order_id.clone());
            }
            if i % 89 == 0 {
                order.status = "refunded";
                warned += 1;
            }
            order
        })
        .collect();
    let events: Vec<Outgoing> = orders::by_region(generated, 2);
    let total = events.len();
    produce(&topic, &events);

    let addr = format!("127.0.0.1:{}", free_port());
    let lake = dir.path().join("lake");
    let mut daemon = spawn_stream(
        &job_file,
        &lake,
        &dir.path().join("state"),
        &dir.path().join("a.log"),
        &["--metrics-addr", &addr],
    );
    let topics = Topics::for_job(&job);
    wait_while_progressing(
        Duration::from_secs(90),
        Duration::from_secs(1),
        "the quarantined records in the DLQ",
        quarantined.len(),
        || read_all(&topics.dlq).len(),
    );
    let dead = read_all(&topics.dlq);
    let order_id = |bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v["order_id"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let mut speed_positions = BTreeSet::new();
    let mut dead_ids = BTreeSet::new();
    for record in &dead {
        let h = |key: &str| record.headers.get(key).cloned().unwrap_or_default();
        assert_eq!(
            h(header::ERROR_TYPE),
            "check_failed",
            "{:?}",
            record.headers
        );
        assert_eq!(h(header::CHECK), "range_amount");
        assert_eq!(h(header::ERROR_FIELD), "amount");
        assert!(
            h(header::ERROR_MESSAGE).contains("`amount` >= 0"),
            "{:?}",
            record.headers
        );
        dead_ids.insert(order_id(record.value.as_deref().unwrap_or_default()));
        speed_positions.insert((
            h(header::SOURCE_PARTITION).parse::<i64>().unwrap(),
            h(header::SOURCE_OFFSET).parse::<i64>().unwrap(),
        ));
    }
    assert_eq!(
        dead_ids, quarantined,
        "the speed layer dead-letters exactly the quarantined"
    );

    // The counters move after each micro-batch's commit, just after its records show.
    let violations = |check: &str, severity: &str| {
        let metrics = sluice_e2e::http::get(&addr, "/metrics", None).body;
        metric(
            &metrics,
            "sluice_check_violations_total",
            &[("job", &name), ("check", check), ("severity", severity)],
        )
    };
    let counted = (Some(quarantined.len() as f64), Some(f64::from(warned)));
    wait_until(Duration::from_secs(30), "the violation counters", || {
        (
            violations("range_amount", "quarantine"),
            violations("accepted_values_status", "warn"),
        ) == counted
    });

    // The raw table keeps every record, the quarantined ones too (the master dataset).
    sluice_e2e::wait_raw_rows(&lake, &job, total, Duration::from_secs(90));
    assert!(daemon.terminate().success(), "SIGTERM exits 0");

    let rejects = dir.path().join("rejects.jsonl");
    let out = Command::new(sluice_bin())
        .args(["backfill", "--job"])
        .arg(&job_file)
        .arg("--lake")
        .arg(&lake)
        .args([
            "--from",
            "2024-05-01T00:00:00Z",
            "--to",
            "2024-05-02T00:00:00Z",
            "--allow-incomplete",
            "--output",
            "json",
            "--rejects",
        ])
        .arg(&rejects)
        .output()
        .expect("sluice backfill");
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit 3: rows were skipped\n{out:?}"
    );
    let report: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or_default(),
    )
    .expect("a JSON report");
    assert_eq!(report["rows_rejected"], quarantined.len());
    assert_eq!(
        report["check_violations"],
        serde_json::json!([
            {"check": "range_amount", "severity": "quarantine", "rows": quarantined.len()},
            {"check": "accepted_values_status", "severity": "warn", "rows": warned},
        ])
    );
    let batch_positions: BTreeSet<(i64, i64)> = read_lines(&rejects)
        .iter()
        .map(|row| {
            assert_eq!(row["error"], "check_failed", "{row}");
            assert_eq!(row["check"], "range_amount", "{row}");
            (
                row["partition"].as_i64().unwrap(),
                row["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        batch_positions, speed_positions,
        "backfill skips exactly the records the speed layer dead-lettered"
    );
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}
