//! Judging raw tables built here, through the router: a dip is listed once its window is
//! complete, a window past the lake's completeness bound is not judged, a job without
//! `[anomalies]` answers no rule, and each anomalous window is counted once in the metric.

use std::collections::{BTreeMap, HashMap};

use axum::body::Body;
use serde_json::{Value, json};
use sluice_core::fixture::{OrdersJob, REGION_PER_MINUTE_SQL, T0_MS};
use sluice_core::lake::{commit_key, raw_rows};
use sluice_core::lake_progress::{LakeProgress, PartitionProgress};
use sluice_core::{JsonDecoder, Lake, Pipeline};
use tower::ServiceExt;

use super::*;
use crate::api::router;
use crate::service::{JobService, ServedJob};

const MINUTE_MS: i64 = 60_000;
const MINUTE_US: i64 = 60_000_000;
/// One-minute windows, each compared with the six before it once four exist.
const ANOMALIES: &str = "\n[anomalies]\nwindow = \"1m\"\ntrailing = 6\nmin_history = 4\n";

/// The start (µs) of minute `m` after T0.
fn minute(m: i64) -> i64 {
    (T0_MS + m * MINUTE_MS) * 1000
}

/// Orders of minutes `0..minutes` after T0, `per_minute(m)` of them in minute `m`, spread over
/// the minute.
fn orders(minutes: i64, per_minute: impl Fn(i64) -> i64) -> Vec<String> {
    let mut lines = Vec::new();
    for m in 0..minutes {
        let n = per_minute(m);
        for k in 0..n {
            let at = T0_MS + m * MINUTE_MS + k * (MINUTE_MS / n.max(1));
            lines.push(format!(
                r#"{{"order_id":"o{m}-{k}","customer_id":"c","region":"eu","amount":1.0,"status":"completed","event_time":{at}}}"#
            ));
        }
    }
    lines
}

struct Served {
    _dir: tempfile::TempDir,
    state: AppState,
}

/// Job `t` (the orders fixture plus `extra` TOML) served over a lake whose raw table holds
/// `lines`, committed with `progress` as a raw-lake sink records it (none: loaded files).
async fn served(extra: &str, lines: &[String], progress: Option<LakeProgress>) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "{}{extra}",
        OrdersJob::default().toml(REGION_PER_MINUTE_SQL)
    );
    let job = Job::from_toml(&toml, std::path::Path::new("t.toml")).expect("job");
    let lake = Lake {
        root: dir.path().to_string_lossy().into_owned(),
    };
    if !lines.is_empty() {
        let decoded = JsonDecoder::new(&job).decode(lines).expect("decode");
        assert!(decoded.errors.is_empty(), "{:?}", decoded.errors.first());
        let rows = raw_rows(&job, &decoded.batch, None).expect("raw rows");
        let metadata: HashMap<String, Value> = progress
            .map(|p| HashMap::from([(commit_key::LAKE_PROGRESS.to_string(), p.to_json())]))
            .unwrap_or_default();
        TableLocation::new(lake.raw_table(&job))
            .append(vec![rows], metadata, Vec::new())
            .await
            .expect("the raw table");
    }
    let pipeline = Arc::new(Pipeline::compile(&job, None).expect("pipeline"));
    let service =
        Arc::new(JobService::detached(ServedJob::new(job, pipeline), &lake).expect("service"));
    let state = AppState {
        jobs: Arc::new(vec![Arc::new(JobSlot::fixed(service))]),
        metrics: ServingMetrics::new(),
        token: None,
    };
    Served { _dir: dir, state }
}

async fn get(state: &AppState, path: &str) -> (StatusCode, Value) {
    let request = axum::http::Request::builder()
        .uri(path)
        .body(Body::empty())
        .expect("request");
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("the router never fails");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes));
    });
    (status, body)
}

/// The anomalies of an answer as (window start µs, direction).
fn found(body: &Value) -> Vec<(i64, String)> {
    body["anomalies"]
        .as_array()
        .expect("anomalies")
        .iter()
        .map(|a| {
            let start = a["start_us"].as_i64().expect("start_us");
            (
                start,
                a["direction"].as_str().expect("direction").to_string(),
            )
        })
        .collect()
}

/// The value of `name{…}` whose labels include each of `labels` (`job="t"`), if exported.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn a_dip_in_the_raw_table_is_listed_with_its_band_and_counted() {
    // Ten orders a minute for 20 minutes, but none in minute 12 and three in minute 15.
    let lines = orders(20, |m| match m {
        12 => 0,
        15 => 3,
        _ => 10,
    });
    let f = served(ANOMALIES, &lines, None).await;
    let (status, body) = get(&f.state, "/v1/jobs/t/anomalies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job"], "t");
    assert_eq!(
        body["rule"],
        json!({"window": "1m", "window_us": MINUTE_US, "trailing": 6, "k": 3.5,
               "min_history": 4, "min_deviation": 1})
    );
    assert_eq!(body["error"], Value::Null, "{body}");
    // Loaded files only: judged up to the window of the newest row (minute 19), which the
    // files may end inside.
    assert_eq!(body["complete_until_us"], minute(19), "{body}");
    let windows = body["windows"].as_array().expect("windows");
    let starts: Vec<i64> = windows
        .iter()
        .map(|w| w["start_us"].as_i64().expect("start_us"))
        .collect();
    assert_eq!(starts, (0..19).map(minute).collect::<Vec<_>>());
    assert_eq!(windows[12]["rows"], 0, "an empty window counts as 0");
    assert_eq!(
        windows[3]["median"],
        Value::Null,
        "judged from four windows of history"
    );
    assert_eq!(windows[4]["median"], 10.0);
    // A steady history has a MAD of 0: the band is min_deviation (1) wide.
    assert_eq!(
        (&windows[12]["low"], &windows[12]["high"]),
        (&json!(9.0), &json!(11.0))
    );
    assert_eq!(
        found(&body),
        [
            (minute(12), "low".to_string()),
            (minute(15), "low".to_string())
        ]
    );
    assert_eq!(body["anomalies"][0]["start"], "2024-05-01T10:12:00Z");

    let metrics = f.state.metrics.render();
    let anomalies = "sluice_row_count_anomalies_total";
    assert_eq!(
        sample(&metrics, anomalies, &["job=\"t\"", "direction=\"low\""]),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "sluice_window_rows", &["job=\"t\""]),
        Some(10.0)
    );
    let (_, job_status) = get(&f.state, "/v1/jobs/t").await;
    assert_eq!(job_status["row_count_anomalies"], 2, "{job_status}");

    // Asked again at once: the same judgement, and nothing counted twice.
    let (_, again) = get(&f.state, "/v1/jobs/t/anomalies").await;
    assert_eq!(again["anomalies"], body["anomalies"]);
    let metrics = f.state.metrics.render();
    assert_eq!(
        sample(&metrics, anomalies, &["job=\"t\"", "direction=\"low\""]),
        Some(2.0)
    );
}

#[tokio::test]
async fn windows_past_the_lakes_completeness_bound_are_not_judged() {
    let lines = orders(20, |m| if m == 10 || m == 16 { 0 } else { 10 });
    // The sink has landed event times up to 14:35 of its one partition: with the job's 5 s
    // watermark delay, every record before 14:30 is in the table, and the job's 30 s allowed
    // lateness have passed for windows ending by 14:00.
    let progress = LakeProgress {
        partitions: 1,
        by_partition: BTreeMap::from([(
            0,
            PartitionProgress {
                next_offset: lines.len() as i64,
                max_event_us: Some(minute(14) + 35_000_000),
                at_end: false,
            },
        )]),
    };
    let f = served(ANOMALIES, &lines, Some(progress)).await;
    let (status, body) = get(&f.state, "/v1/jobs/t/anomalies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["complete_until_us"], minute(14), "{body}");
    assert_eq!(body["complete_until"], "2024-05-01T10:14:00Z");
    assert_eq!(body["windows"].as_array().map(Vec::len), Some(14));
    // Minute 16 has no rows either, but the lake may still be landing them.
    assert_eq!(found(&body), [(minute(10), "low".to_string())]);
}

#[tokio::test]
async fn a_job_without_anomalies_answers_no_rule_and_an_unknown_job_is_a_404() {
    let f = served("", &orders(10, |_| 10), None).await;
    let (status, body) = get(&f.state, "/v1/jobs/t/anomalies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"job": "t", "rule": null, "complete_until": null, "complete_until_us": null,
               "judged_at": null, "error": null, "windows": [], "anomalies": []})
    );
    let (_, job_status) = get(&f.state, "/v1/jobs/t").await;
    assert_eq!(
        job_status["row_count_anomalies"],
        Value::Null,
        "{job_status}"
    );
    let (status, body) = get(&f.state, "/v1/jobs/nope/anomalies").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "unknown_job");
}

#[tokio::test]
async fn a_job_whose_raw_table_does_not_exist_yet_has_nothing_complete() {
    let f = served(ANOMALIES, &[], None).await;
    let (status, body) = get(&f.state, "/v1/jobs/t/anomalies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["error"], Value::Null, "{body}");
    assert_eq!(body["complete_until"], Value::Null);
    assert_eq!(body["windows"], json!([]));
    assert!(body["judged_at"].is_string(), "{body}");
}

#[test]
fn each_anomalous_window_is_counted_once_however_often_it_is_judged() {
    let rule = Rule {
        window: "1m".to_string(),
        window_us: MINUTE_US,
        trailing: 6,
        k: 3.5,
        min_history: 4,
        min_deviation: 1,
    };
    let counts: BTreeMap<i64, u64> = (0..12)
        .filter(|&m| m != 7)
        .map(|m| (m * MINUTE_US, 10))
        .collect();
    let judged: Vec<Window> = windows(&counts, (0, 12 * MINUTE_US), &rule).collect();
    assert_eq!(judged.iter().filter(|w| w.direction.is_some()).count(), 1);
    let metrics = ServingMetrics::new();
    metrics.observe_row_counts("t", &judged);
    metrics.observe_row_counts("t", &judged);
    // A later judgement, whose oldest windows have moved on.
    metrics.observe_row_counts("t", &judged[5..]);
    let text = metrics.render();
    let name = "sluice_row_count_anomalies_total";
    assert_eq!(
        sample(&text, name, &["job=\"t\"", "direction=\"low\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, name, &["direction=\"high\""]), None);
}
