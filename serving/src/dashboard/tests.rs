//! The dashboard's routes in-process, through the whole API router: the page and its files
//! are public with a tight content policy, the data routes need the token, they answer what
//! the sampler recorded, and a job's status carries its checks with what the backfill's commit
//! and the sampler's reading of `<job>.dlq` counted. `tests/python/test_dashboard.py` drives the page in Chromium
//! against a running pipeline.

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::AUTHORIZATION;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use sluice_core::fixture::{OrdersJob, REGION_PER_MINUTE_SQL};
use sluice_core::lake::{CommitSummary, commit_key};
use sluice_core::topics::header;
use sluice_core::{Job, Lake, Pipeline};
use tower::ServiceExt;

use super::board::Dashboard;
use super::history::Reading;
use super::letters::{DeadLetter, RawRecord, Tally};
use super::probe::{Followed, Probed};
use crate::api::{AppState, router};
use crate::batch_view::BatchView;
use crate::metrics::ServingMetrics;
use crate::service::{JobService, ServedJob};
use crate::versions::JobSlot;

const TOKEN: &str = "secret";

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
    dashboard: Arc<Dashboard>,
}

/// Job `t` (regions per minute), served without Kafka behind a token, and a dashboard with
/// nothing recorded yet.
fn fixture() -> Fixture {
    fixture_of(OrdersJob::default().job(REGION_PER_MINUTE_SQL))
}

/// `job` served as [`fixture`] serves job `t`.
fn fixture_of(job: Job) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = Arc::new(Pipeline::compile(&job, None).expect("pipeline"));
    let lake = Lake {
        root: dir.path().to_string_lossy().into_owned(),
    };
    let service =
        Arc::new(JobService::detached(ServedJob::new(job, pipeline), &lake).expect("service"));
    let state = AppState {
        jobs: Arc::new(vec![Arc::new(JobSlot::fixed(service))]),
        metrics: ServingMetrics::new(),
        token: Some(Arc::from(TOKEN)),
    };
    Fixture {
        _dir: dir,
        state,
        dashboard: Arc::new(Dashboard::new(None, 5_000)),
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

async fn get(f: &Fixture, path: &str, token: Option<&str>) -> Answer {
    let mut request = Request::builder().uri(path);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let app = router(f.state.clone()).layer(axum::Extension(f.dashboard.clone()));
    let response = app
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("the router never fails");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn letter(offset: i64, error_type: &str) -> DeadLetter {
    DeadLetter::of(&RawRecord {
        partition: 0,
        offset,
        timestamp_ms: Some(1_700_000_000_000 + offset),
        key: Some(&b"key"[..]),
        value: Some(&b"{\"amount\": \"lots\"}"[..]),
        headers: vec![(
            sluice_core::topics::header::ERROR_TYPE.as_bytes(),
            Some(error_type.as_bytes()),
        )],
    })
}

/// A record the speed layer quarantined under `check`.
fn quarantined(offset: i64, check: &str) -> DeadLetter {
    DeadLetter::of(&RawRecord {
        partition: 1,
        offset,
        timestamp_ms: Some(1_700_000_000_000 + offset),
        key: Some(&b"key"[..]),
        value: Some(&b"{\"amount\": -2.5}"[..]),
        headers: vec![
            (header::ERROR_TYPE.as_bytes(), Some(&b"check_failed"[..])),
            (header::CHECK.as_bytes(), Some(check.as_bytes())),
        ],
    })
}

fn followed(topic: &str, letters: Vec<DeadLetter>) -> Followed {
    let mut tally = Tally::new(super::probe::KEEP_DLQ);
    letters.into_iter().for_each(|l| tally.add(l));
    Followed {
        topic: topic.to_string(),
        tally,
        complete: true,
        unavailable: None,
    }
}

#[tokio::test]
async fn the_page_and_its_files_need_no_token_and_load_nothing_from_elsewhere() {
    let f = fixture();
    let page = get(&f, "/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
    let policy = page.header("content-security-policy");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    for (path, content_type) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
        ("/assets/vendor/uPlot.iife.min.js", "text/javascript"),
        ("/assets/vendor/LICENSE-uPlot", "text/plain"),
    ] {
        let asset = get(&f, path, None).await;
        assert_eq!(asset.status, StatusCode::OK, "{path}");
        assert!(
            asset.header("content-type").starts_with(content_type),
            "{path}"
        );
        assert!(!asset.body.is_empty(), "{path}");
    }
    let missing = get(&f, "/assets/nope.js", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "not_found");
}

#[tokio::test]
async fn the_data_routes_need_the_token() {
    let f = fixture();
    for path in [
        "/v1/jobs/t/history",
        "/v1/jobs/t/dlq",
        "/v1/jobs/nope/history",
    ] {
        for token in [None, Some("wrong")] {
            let refused = get(&f, path, token).await;
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path} {token:?}");
            assert_eq!(refused.json()["error"], "unauthorized");
        }
    }
    assert_eq!(
        get(&f, "/v1/jobs/t/history", Some(TOKEN)).await.status,
        StatusCode::OK
    );
    let unknown = get(&f, "/v1/jobs/nope/dlq", Some(TOKEN)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"], "unknown_job");
    let bad = get(&f, "/v1/jobs/t/history?limit=many", Some(TOKEN)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown_parameter = get(&f, "/v1/jobs/t/dlq?bogus=1", Some(TOKEN)).await;
    assert_eq!(unknown_parameter.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn history_answers_the_newest_samples_oldest_first_with_the_view_s_shape() {
    let f = fixture();
    let t0 = 1_700_000_000_000;
    let samples = 7;
    for i in 0..samples {
        let reading = Reading {
            at_ms: t0 + i * 5_000,
            version: 1,
            speed_lag_records: i,
            ..Reading::default()
        };
        f.dashboard.record("t", reading, None, None);
    }
    let all = get(&f, "/v1/jobs/t/history", Some(TOKEN)).await.json();
    let times: Vec<i64> = all["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter_map(|s| s["at_ms"].as_i64())
        .collect();
    let expected: Vec<i64> = (0..samples).map(|i| t0 + i * 5_000).collect();
    assert_eq!(times, expected);
    assert_eq!(all["every_ms"], 5_000);
    assert_eq!(all["view"]["has_window"], true);
    assert_eq!(all["view"]["key_columns"], serde_json::json!(["region"]));
    let columns: Vec<&str> = all["view"]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(columns.contains(&"window_start") && columns.contains(&"total_orders"));

    let newest = get(&f, "/v1/jobs/t/history?limit=2", Some(TOKEN))
        .await
        .json();
    let lags: Vec<i64> = newest["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter_map(|s| s["speed_lag_records"].as_i64())
        .collect();
    assert_eq!(lags, vec![samples - 2, samples - 1]);
}

#[tokio::test]
async fn the_dlq_route_answers_counts_by_error_type_and_the_newest_records() {
    let f = fixture();
    let kind = |i: i64| {
        if i % 3 == 0 {
            "schema_violation"
        } else {
            "malformed_json"
        }
    };
    let letters = (0..9).map(|i| letter(i, kind(i))).collect();
    let probed = Probed {
        partitions: Ok(Vec::new()),
        dlq: followed("t.dlq", letters),
        late: followed("t.late", Vec::new()),
    };
    f.dashboard
        .record("t", Reading::default(), None, Some(probed));
    let answer = get(&f, "/v1/jobs/t/dlq?limit=4", Some(TOKEN)).await.json();
    let dlq = &answer["dlq"];
    assert_eq!(dlq["topic"], "t.dlq");
    assert_eq!(dlq["available"], true);
    assert_eq!(dlq["records"], 9);
    let schema = (0..9).filter(|i| i % 3 == 0).count();
    assert_eq!(dlq["by_error_type"]["schema_violation"], schema);
    assert_eq!(dlq["by_error_type"]["malformed_json"], 9 - schema);
    let offsets: Vec<i64> = dlq["newest"]
        .as_array()
        .expect("newest")
        .iter()
        .filter_map(|r| r["offset"].as_i64())
        .collect();
    assert_eq!(offsets, vec![8, 7, 6, 5], "newest first, `limit` of them");
    let record = &dlq["newest"][0];
    assert_eq!(record["headers"][0]["name"], "sluice.error.type");
    assert_eq!(record["value"]["text"], "{\"amount\": \"lots\"}");
    assert_eq!(answer["late"]["records"], 0);
}

#[tokio::test]
async fn before_any_sample_the_dlq_route_says_why_there_is_nothing() {
    let mut f = fixture();
    f.dashboard = Arc::new(Dashboard::new(Some("no brokers".to_string()), 5_000));
    let answer = get(&f, "/v1/jobs/t/dlq", Some(TOKEN)).await.json();
    assert_eq!(answer["dlq"]["available"], false);
    assert_eq!(answer["dlq"]["unavailable"], "no brokers");
    assert_eq!(answer["kafka"]["available"], false);
    assert_eq!(answer["dlq"]["topic"], "t.dlq");
}

#[tokio::test]
async fn dashboard_requests_are_labelled_by_route() {
    let f = fixture();
    get(&f, "/", None).await;
    get(&f, "/assets/app.js", None).await;
    get(&f, "/v1/jobs/t/history", Some(TOKEN)).await;
    let metrics = f.state.metrics.render();
    for label in [
        r#"endpoint="dashboard",status="200""#,
        r#"endpoint="dashboard_assets",status="200""#,
        r#"endpoint="history",status="200""#,
    ] {
        assert!(metrics.contains(label), "{label} not in:\n{metrics}");
    }
}

/// Job `t` with a warn check on `status` and a quarantine check on `amount`, as the demo's.
fn checked_fixture() -> Fixture {
    let checks = r#"
[[checks]]
check = "accepted_values"
column = "status"
values = ["completed", "pending", "cancelled"]
[[checks]]
check = "range"
column = "amount"
min = 0
severity = "quarantine"
"#;
    let toml = format!(
        "{}{checks}",
        OrdersJob::default().toml(REGION_PER_MINUTE_SQL)
    );
    fixture_of(Job::from_toml(&toml, std::path::Path::new("t.toml")).expect("job"))
}

/// A view table version whose commit counted `violations` by check (`Value::Null`: none).
fn backfilled(version: u64, violations: Value) -> Arc<BatchView> {
    let mut info = std::collections::HashMap::new();
    if !violations.is_null() {
        info.insert(commit_key::CHECK_VIOLATIONS.to_string(), violations);
    }
    Arc::new(BatchView {
        version,
        cutoff_us: None,
        partials: Vec::new(),
        last_run: CommitSummary {
            version,
            timestamp_ms: Some(0),
            info,
        },
    })
}

/// `(batch_violations, speed_quarantined)` of each check of a status, in order.
fn counts(status: &Value) -> Vec<(Value, Value)> {
    status["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["batch_violations"].clone(),
                c["speed_quarantined"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_job_status_lists_each_check_with_both_layers_counts() {
    let f = checked_fixture();
    let service = f.state.job("t").expect("served");
    let before = get(&f, "/v1/jobs/t", Some(TOKEN)).await.json();
    let checks = before["checks"].as_array().expect("checks");
    let described: Vec<(&str, &str, &str, &str)> = checks
        .iter()
        .map(|c| {
            let text = |field: &str| c[field].as_str().unwrap_or_default();
            (
                text("name"),
                text("check"),
                text("severity"),
                text("column"),
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            (
                "accepted_values_status",
                "accepted_values",
                "warn",
                "status"
            ),
            ("range_amount", "range", "quarantine", "amount"),
        ]
    );
    assert!(
        checks.iter().all(|c| c["rule"]
            .as_str()
            .is_some_and(|r| r.contains(c["column"].as_str().unwrap_or("?")))),
        "{before}"
    );
    assert_eq!(
        counts(&before),
        vec![(Value::Null, Value::Null); 2],
        "no backfill and no dead letters read yet"
    );

    service
        .batch_read(Ok(Some(backfilled(
            2,
            json!({"accepted_values_status": 5, "range_amount": 3}),
        ))))
        .expect("a batch view");
    let mut letters: Vec<DeadLetter> = (0..4).map(|i| quarantined(i, "range_amount")).collect();
    letters.push(letter(4, "malformed_json"));
    let dlq = followed("t.dlq", letters);
    // What the sampler does with each sample of `<job>.dlq`.
    service.note_quarantined(dlq.by_check());
    let probed = Probed {
        partitions: Ok(Vec::new()),
        dlq,
        late: followed("t.late", Vec::new()),
    };
    f.dashboard
        .record("t", Reading::default(), None, Some(probed));

    let status = get(&f, "/v1/jobs/t", Some(TOKEN)).await.json();
    let expected = vec![(json!(5), json!(0)), (json!(3), json!(4))];
    assert_eq!(counts(&status), expected, "{status}");
    let listed = get(&f, "/v1/jobs", Some(TOKEN)).await.json();
    assert_eq!(counts(&listed["jobs"][0]), expected, "{listed}");

    let answer = get(&f, "/v1/jobs/t/dlq", Some(TOKEN)).await.json();
    assert_eq!(answer["dlq"]["by_check"], json!({"range_amount": 4}));
    let checked: Vec<Value> = answer["dlq"]["newest"]
        .as_array()
        .expect("newest")
        .iter()
        .map(|r| r["check"].clone())
        .collect();
    assert_eq!(
        checked,
        [
            Value::Null,
            json!("range_amount"),
            json!("range_amount"),
            json!("range_amount"),
            json!("range_amount")
        ]
    );

    // A newer commit without counts, and a DLQ not read to its end: nothing is claimed.
    service
        .batch_read(Ok(Some(backfilled(3, Value::Null))))
        .expect("a batch view");
    let mut partial = followed("t.dlq", vec![quarantined(0, "range_amount")]);
    partial.complete = false;
    service.note_quarantined(partial.by_check());
    let status = get(&f, "/v1/jobs/t", Some(TOKEN)).await.json();
    assert_eq!(
        counts(&status),
        vec![(Value::Null, Value::Null); 2],
        "{status}"
    );
}

#[tokio::test]
async fn a_job_without_checks_has_an_empty_list() {
    let f = fixture();
    let status = get(&f, "/v1/jobs/t", Some(TOKEN)).await.json();
    assert_eq!(status["checks"], json!([]), "{status}");
}
