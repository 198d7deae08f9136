//! Row-count anomalies (`[anomalies]`) end to end, through the real binary: forty minutes of
//! orders at a steady rate, with one minute where the feed drops to almost nothing and one
//! where it triples, loaded with `sluice lake load`; `sluice backfill` reports exactly those two
//! windows (JSON and text), and `sluice serve` judges the same two among the windows it serves
//! (`GET /v1/jobs/{job}/anomalies`), counts them in its metrics and in the job's status, while
//! a job without `[anomalies]` on the same lake answers no rule and no windows.
//!
//! The expected windows and bands come from the counts generated here, through an independent
//! reading of the rule in docs/jobs.md (median and MAD of the trailing windows), and the data is
//! checked to make that reading flag exactly the two windows before any layer is asked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sluice_core::anomaly::MAD_SCALE;
use sluice_core::fixture::{OrderGenerator, OrderShape, OrdersJob, REGION_PER_MINUTE_SQL, T0_MS};
use sluice_core::time::{floor_to, format_time};
use sluice_e2e::http::get;
use sluice_e2e::kafka::{unique, wait_until};
use sluice_e2e::postgres::metric;
use sluice_e2e::serve::{job_status, log_tail, serve_log, sluice_ok, spawn_serve};

const MINUTE_MS: i64 = 60_000;
const WINDOW_US: i64 = MINUTE_MS * 1000;
/// Minutes of event time generated, from `T0_MS`.
const MINUTES: i64 = 40;
/// The steady feed's rows per minute, cycling: close together, so the band is narrow.
const STEADY: [u64; 5] = [30, 32, 29, 31, 28];
/// The minute the feed drops to `DROP_ROWS` rows...
const DROP_MINUTE: i64 = 15;
const DROP_ROWS: u64 = 2;
/// ...and the minute it holds `SPIKE_FACTOR` times its steady rows.
const SPIKE_MINUTE: i64 = 30;
const SPIKE_FACTOR: u64 = 3;

// The `[anomalies]` of the job file.
const TRAILING: usize = 12;
const K: f64 = 3.5;
const MIN_HISTORY: usize = 6;
const MIN_DEVIATION: u64 = 1;

/// The newest complete windows the serving layer judges and answers (docs/jobs.md).
const SERVED_WINDOWS: usize = 30;
/// How long the serving layer may take to judge (its task judges at start, then once a
/// window length, 60 s here, while nothing new completes).
const JUDGED_WITHIN: Duration = Duration::from_secs(120);

/// Rows generated in `minute` (from `T0_MS`).
fn rows_in(minute: i64) -> u64 {
    let steady = STEADY[minute.rem_euclid(STEADY.len() as i64) as usize];
    match minute {
        DROP_MINUTE => DROP_ROWS,
        SPIKE_MINUTE => steady * SPIKE_FACTOR,
        _ => steady,
    }
}

fn minute_start_us(minute: i64) -> i64 {
    (T0_MS + minute * MINUTE_MS) * 1000
}

/// The orders of every minute, spread evenly over it, as JSON lines; and the newest event
/// time (µs).
fn orders_file(path: &Path) -> (usize, i64) {
    let mut generator = OrderGenerator::new(16, OrderShape::default());
    let mut body = Vec::new();
    let (mut lines, mut newest_ms) = (0, i64::MIN);
    for minute in 0..MINUTES {
        let rows = rows_in(minute) as i64;
        for i in 0..rows {
            let at = T0_MS + minute * MINUTE_MS + i * MINUTE_MS / rows;
            body.extend_from_slice(&generator.order_at(at).to_json());
            body.push(b'\n');
            lines += 1;
            newest_ms = newest_ms.max(at);
        }
    }
    std::fs::write(path, body).unwrap();
    (lines, newest_ms * 1000)
}

fn anomalies_toml() -> String {
    format!(
        r#"
[anomalies]
window = "1m"
trailing = {TRAILING}
k = {K:?}
min_history = {MIN_HISTORY}
min_deviation = {MIN_DEVIATION}
"#
    )
}

/// A job file over `topic` with a one-minute bucket (so a backfill of whole minutes reads no
/// empty window past the data), with `extra` TOML appended.
fn write_job(dir: &Path, prefix: &str, topic: &str, extra: &str) -> (PathBuf, String) {
    let name = unique(prefix).replace('-', "_");
    let toml = OrdersJob {
        name: &name,
        topic,
        bucket: "1m",
        ..OrdersJob::default()
    }
    .toml(REGION_PER_MINUTE_SQL)
        + extra;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    (path, name)
}

/// What the rule makes of one window, read independently of `sluice_core::anomaly`.
#[derive(Debug, Clone, PartialEq)]
struct Judged {
    minute: i64,
    rows: u64,
    /// median, MAD, low, high; `None` before `MIN_HISTORY` windows precede it.
    band: Option<(f64, f64, f64, f64)>,
    direction: Option<&'static str>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Every generated minute, each against the `TRAILING` minutes before it.
fn judge_minutes() -> Vec<Judged> {
    let counts: Vec<u64> = (0..MINUTES).map(rows_in).collect();
    (0..counts.len())
        .map(|i| {
            let history: Vec<f64> = counts[i.saturating_sub(TRAILING)..i]
                .iter()
                .map(|&c| c as f64)
                .collect();
            let rows = counts[i];
            let band = (history.len() >= MIN_HISTORY).then(|| {
                let m = median(history.clone());
                let mad = median(history.iter().map(|x| (x - m).abs()).collect());
                let half = (K * MAD_SCALE * mad).max(MIN_DEVIATION as f64);
                (m, mad, m - half, m + half)
            });
            let direction = band.and_then(|(_, _, low, high)| {
                let count = rows as f64;
                if count > high {
                    Some("high")
                } else if count < low {
                    Some("low")
                } else {
                    None
                }
            });
            Judged {
                minute: i as i64,
                rows,
                band,
                direction,
            }
        })
        .collect()
}

fn close(actual: &Value, expected: f64, what: &str) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {actual}"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: {actual}, expected {expected}"
    );
}

/// `anomaly` (as the report or the API lists it) is `expected`'s window, rows and band.
fn assert_anomaly(anomaly: &Value, expected: &Judged) {
    let start = minute_start_us(expected.minute);
    let (median, mad, low, high) = expected.band.expect("an anomaly has a band");
    assert_eq!(anomaly["start_us"], start, "{anomaly}");
    assert_eq!(anomaly["end_us"], start + WINDOW_US, "{anomaly}");
    assert_eq!(anomaly["start"], format_time(start), "{anomaly}");
    assert_eq!(anomaly["end"], format_time(start + WINDOW_US), "{anomaly}");
    assert_eq!(anomaly["rows"], expected.rows, "{anomaly}");
    assert_eq!(
        anomaly["direction"],
        expected.direction.unwrap(),
        "{anomaly}"
    );
    close(&anomaly["median"], median, "median");
    close(&anomaly["mad"], mad, "mad");
    close(&anomaly["low"], low, "low");
    close(&anomaly["high"], high, "high");
}

/// The text report's bound of a band (as `sluice backfill` prints it).
fn printed_bound(bound: f64) -> f64 {
    if bound <= 0.0 {
        0.0
    } else {
        (bound * 10.0).round() / 10.0
    }
}

fn anomalies(addr: &str, job: &str) -> Value {
    let answer = get(addr, &format!("/v1/jobs/{job}/anomalies"), None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

#[test]
fn the_dropped_and_the_tripled_minute_are_the_anomalies_of_every_layer() {
    let judged = judge_minutes();
    let expected: Vec<&Judged> = judged.iter().filter(|j| j.direction.is_some()).collect();
    // The data is what the test says it is: the rule flags the drop and the spike, nothing else.
    let flagged: Vec<(i64, &str)> = expected
        .iter()
        .map(|j| (j.minute, j.direction.unwrap()))
        .collect();
    assert_eq!(flagged, [(DROP_MINUTE, "low"), (SPIKE_MINUTE, "high")]);

    let dir = tempfile::tempdir().unwrap();
    let topic = unique("anomaly-orders");
    let (job_file, job) = write_job(dir.path(), "anomalies", &topic, &anomalies_toml());
    let (plain_file, plain) = write_job(dir.path(), "plain", &topic, "");
    let input = dir.path().join("orders.jsonl");
    let (lines, newest_us) = orders_file(&input);
    let lake = dir.path().join("lake");
    let (job_arg, lake_arg, input_arg) = (
        job_file.to_str().unwrap(),
        lake.to_str().unwrap(),
        input.to_str().unwrap(),
    );

    let loaded: Value = serde_json::from_str(
        sluice_ok(&[
            "lake", "load", "--job", job_arg, "--lake", lake_arg, input_arg, "--output", "json",
        ])
        .lines()
        .last()
        .unwrap_or_default(),
    )
    .expect("the load's JSON summary");
    assert_eq!(loaded["rows_loaded"], lines, "{loaded}");

    // The backfill: every minute of the data, judged against the minutes before it.
    let (from, to) = (
        format_time(minute_start_us(0)),
        format_time(minute_start_us(MINUTES)),
    );
    let backfill = |output: &str| {
        sluice_ok(&[
            "backfill",
            "--job",
            job_arg,
            "--lake",
            lake_arg,
            "--from",
            from.as_str(),
            "--to",
            to.as_str(),
            "--output",
            output,
        ])
    };
    let report: Value = serde_json::from_str(backfill("json").trim()).expect("the JSON report");
    assert_eq!(report["rows_read"], lines, "{report}");
    assert_eq!(report["from"], from.as_str(), "{report}");
    assert_eq!(report["to"], to.as_str(), "{report}");
    // Loaded files only: no completeness bound, so the range is not clamped.
    assert_eq!(report["lake_complete_until"], Value::Null, "{report}");
    let found = report["row_count_anomalies"]
        .as_array()
        .expect("row_count_anomalies");
    assert_eq!(found.len(), expected.len(), "{report:#}");
    for (anomaly, want) in found.iter().zip(&expected) {
        assert_anomaly(anomaly, want);
    }

    // The text report says the same, on one line.
    let text = backfill("text");
    let listed: Vec<String> = expected
        .iter()
        .map(|j| {
            let (_, _, low, high) = j.band.unwrap();
            format!(
                "{} {} ({} rows, expected {}–{})",
                format_time(minute_start_us(j.minute)),
                j.direction.unwrap(),
                j.rows,
                printed_bound(low),
                printed_bound(high)
            )
        })
        .collect();
    let line = format!("row-count anomalies: {}", listed.join(", "));
    assert!(
        text.lines().any(|l| l == line),
        "no line {line:?} in:\n{text}"
    );

    // The serving layer: loaded files only, so it judges up to the window of the newest row
    // (excluded), the newest `SERVED_WINDOWS` of them.
    let (mut serve, addr) = spawn_serve(
        &[job_file.as_path(), plain_file.as_path()],
        &lake,
        &["--batch-poll", "500ms"],
    );
    let until = floor_to(newest_us, WINDOW_US);
    let complete: Vec<&Judged> = judged
        .iter()
        .filter(|j| minute_start_us(j.minute) + WINDOW_US <= until)
        .collect();
    let served = &complete[complete.len().saturating_sub(SERVED_WINDOWS)..];
    assert!(
        served.first().is_some_and(|j| j.minute < DROP_MINUTE)
            && served.last().is_some_and(|j| j.minute > SPIKE_MINUTE),
        "the served windows hold both anomalies"
    );

    let mut answer = Value::Null;
    wait_until(
        JUDGED_WITHIN,
        "the serving layer to judge the anomalies",
        || {
            answer = anomalies(&addr, &job);
            answer["anomalies"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        },
    );
    assert_eq!(answer["job"], job.as_str());
    assert_eq!(answer["error"], Value::Null, "{answer:#}");
    assert!(answer["judged_at"].is_string(), "{answer:#}");
    assert_eq!(answer["complete_until_us"], until, "{answer:#}");
    assert_eq!(answer["complete_until"], format_time(until), "{answer:#}");
    let rule = &answer["rule"];
    assert_eq!(rule["window"], "1m", "{rule}");
    assert_eq!(rule["window_us"], WINDOW_US, "{rule}");
    assert_eq!(rule["trailing"], TRAILING, "{rule}");
    close(&rule["k"], K, "k");
    assert_eq!(rule["min_history"], MIN_HISTORY, "{rule}");
    assert_eq!(rule["min_deviation"], MIN_DEVIATION, "{rule}");

    let windows = answer["windows"].as_array().expect("windows");
    let listed: Vec<(i64, u64)> = windows
        .iter()
        .map(|w| (w["start_us"].as_i64().unwrap(), w["rows"].as_u64().unwrap()))
        .collect();
    let generated: Vec<(i64, u64)> = served
        .iter()
        .map(|j| (minute_start_us(j.minute), j.rows))
        .collect();
    assert_eq!(listed, generated, "the served windows and their rows");
    for (window, want) in windows.iter().zip(served) {
        let (median, _, low, high) = want.band.expect("every served window is judged");
        close(&window["median"], median, "a window's median");
        close(&window["low"], low, "a window's low");
        close(&window["high"], high, "a window's high");
        match want.direction {
            Some(direction) => assert_eq!(window["direction"], direction, "{window}"),
            None => assert_eq!(window["direction"], Value::Null, "{window}"),
        }
    }
    let found = answer["anomalies"].as_array().unwrap();
    assert_eq!(found.len(), expected.len(), "{answer:#}");
    for (anomaly, want) in found.iter().zip(&expected) {
        assert_anomaly(anomaly, want);
    }

    // Each anomalous window counted once, by direction; the newest window's rows.
    let metrics = get(&addr, "/metrics", None).body;
    for direction in ["low", "high"] {
        let counted = expected
            .iter()
            .filter(|j| j.direction == Some(direction))
            .count() as f64;
        assert_eq!(
            metric(
                &metrics,
                "sluice_row_count_anomalies_total",
                &[("job", &job), ("direction", direction)]
            ),
            Some(counted),
            "{direction} anomalies of {job} in:\n{metrics}"
        );
    }
    let newest = served.last().expect("a served window");
    assert_eq!(
        metric(&metrics, "sluice_window_rows", &[("job", &job)]),
        Some(newest.rows as f64),
        "{metrics}"
    );
    assert_eq!(
        job_status(&addr, &job, None)["row_count_anomalies"],
        expected.len(),
        "the job's status counts its anomalies"
    );

    // A job without `[anomalies]` over the same raw table is not judged.
    let none = anomalies(&addr, &plain);
    assert_eq!(none["job"], plain.as_str());
    assert_eq!(none["rule"], Value::Null, "{none}");
    assert_eq!(none["windows"], serde_json::json!([]), "{none}");
    assert_eq!(none["anomalies"], serde_json::json!([]), "{none}");
    assert_eq!(none["complete_until"], Value::Null, "{none}");
    assert_eq!(
        job_status(&addr, &plain, None)["row_count_anomalies"],
        Value::Null
    );
    assert_eq!(
        metric(
            &get(&addr, "/metrics", None).body,
            "sluice_window_rows",
            &[("job", &plain)]
        ),
        None,
        "no window rows for a job without [anomalies]"
    );

    assert!(
        serve.terminate().success(),
        "{}",
        log_tail(&serve_log(&lake), 30)
    );
}
