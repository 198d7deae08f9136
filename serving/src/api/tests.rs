//! The HTTP API in-process: the router answering `tower::ServiceExt::oneshot` requests over jobs
//! served without Kafka or a lake (their speed views filled here), for auth, status, view
//! queries and their errors, SQL and its refusals, readiness and metrics. `tests/tests/serving.rs`
//! runs the real binary against a broker and a lake.

use super::*;
use crate::batch_view::BatchView;
use crate::service::ServedJob;
use crate::versions::JobSlot;
use axum::body::Body;
use axum::http::Method;
use serde_json::Value;
use sluice_core::lake::CommitSummary;
use sluice_core::time::parse_time;
use sluice_core::{Job, JsonDecoder, Lake, Pipeline};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// Requests

/// An answer of the router.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}); status {}, body: {}",
                self.status, self.body
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(state: &AppState, request: axum::http::Request<Body>) -> Answer {
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("the router never fails");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn request(method: Method, path: &str, token: Option<&str>) -> axum::http::request::Builder {
    let builder = axum::http::Request::builder().method(method).uri(path);
    match token {
        Some(token) => builder.header(AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    }
}

async fn get(state: &AppState, path: &str, token: Option<&str>) -> Answer {
    let request = request(Method::GET, path, token)
        .body(Body::empty())
        .expect("request");
    send(state, request).await
}

async fn post(
    state: &AppState,
    path: &str,
    content_type: &str,
    body: &[u8],
    token: Option<&str>,
) -> Answer {
    let request = request(Method::POST, path, token)
        .header(CONTENT_TYPE, content_type)
        .body(Body::from(body.to_vec()))
        .expect("request");
    send(state, request).await
}

async fn sql(state: &AppState, text: &str, token: Option<&str>) -> Answer {
    let body = json!({ "sql": text }).to_string();
    post(state, "/v1/sql", "application/json", body.as_bytes(), token).await
}

/// Asserts a JSON error: its status, its code (one of `codes`) and a message; the body.
#[track_caller]
fn assert_error(answer: &Answer, status: StatusCode, codes: &[&str], what: &str) -> Value {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{what}: errors are JSON"
    );
    let body = answer.json();
    let code = body["error"].as_str().unwrap_or_default();
    assert!(
        codes.contains(&code),
        "{what}: error `{code}`, expected one of {codes:?}: {body}"
    );
    assert!(
        !body["message"].as_str().unwrap_or_default().is_empty(),
        "{what}: errors carry a message: {body}"
    );
    // openapi.yaml's `Error` allows no other field.
    let fields = body
        .as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert!(
        fields.is_some_and(|f| f
            .iter()
            .all(|k| ["error", "message", "loading"].contains(&k.as_str()))),
        "{what}: an error has `error`, `message` and (503 `loading`) `loading` only: {body}"
    );
    body
}

/// The message of an error answer.
fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Two jobs on one orders topic, everything in their speed views, behind a token

const TOKEN: &str = "secret";
const AUTH: Option<&str> = Some(TOKEN);
/// 2024-05-01T10:00:00Z.
const T0_MS: i64 = 1_714_557_600_000;
const REGIONS: [&str; 4] = ["eu", "us", "apac", "latam"];
/// Orders of the fixture: one every 20 s for 30 minutes.
const ORDERS: usize = 90;

/// Every fifth order is pending; the jobs count the completed ones.
fn completed(order: usize) -> bool {
    order % 5 != 4
}

fn region(order: usize) -> &'static str {
    REGIONS[order % REGIONS.len()]
}

fn orders() -> Vec<String> {
    (0..ORDERS)
        .map(|i| {
            let region = region(i);
            let status = if completed(i) { "completed" } else { "pending" };
            let amount = (i % 7 + 1) as f64 * 0.25;
            let at = T0_MS + i as i64 * 20_000;
            format!(
                r#"{{"order_id":"o{i}","region":"{region}","amount":{amount},"status":"{status}","event_time":{at}}}"#
            )
        })
        .collect()
}

fn orders_job(name: &str, sql: &str, key: &str) -> String {
    format!(
        r#"
name = "{name}"
[source]
topic = "orders"
table = "orders"
event_time = "event_time"
watermark_delay = "5s"
allowed_lateness = "30s"
fields = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "region", type = "string" }},
  {{ name = "amount", type = "float64" }},
  {{ name = "status", type = "string" }},
  {{ name = "event_time", type = "timestamp" }},
]
[transform]
sql = """
{sql}
"""
[view]
key = {key}
bucket = "1h"
"#
    )
}

/// A running total per region, no window (view key `region`).
const TOTALS_SQL: &str = "SELECT region, SUM(amount) AS total, COUNT(*) AS orders
FROM orders WHERE status = 'completed'
GROUP BY region";

/// Completed orders per one-minute tumbling window (no view key).
const MINUTES_SQL: &str = "SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start,
  TUMBLE_END(event_time, INTERVAL '1' MINUTE) AS window_end,
  COUNT(*) AS total_orders, SUM(amount) AS total_revenue, AVG(amount) AS avg_order_value
FROM orders WHERE status = 'completed'
GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE)";

/// A job served without Kafka: its speed view holds the partial states of `events` (as if
/// read to the end of `<job>.speed`), its batch view is the empty one of a view table that
/// does not exist yet, and its snapshot is merged: ready.
fn speed_served(
    dir: &std::path::Path,
    toml: &str,
    events: &[String],
    metrics: &ServingMetrics,
) -> Arc<JobService> {
    let job = Job::from_toml(toml, std::path::Path::new("job.toml")).expect("job");
    let pipeline = Arc::new(Pipeline::compile(&job, None).expect("pipeline"));
    let lake = Lake {
        root: dir.to_string_lossy().into_owned(),
    };
    let service =
        Arc::new(JobService::detached(ServedJob::new(job, pipeline), &lake).expect("service"));
    let decoded = JsonDecoder::new(&service.served.job)
        .decode(events)
        .expect("decode");
    assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
    let partial = service
        .served
        .pipeline
        .plan()
        .partial(&decoded.batch)
        .expect("partial");
    {
        let mut speed = service.speed_follower().view.write().expect("speed view");
        for row in 0..partial.num_rows() {
            let key = service.codec.key(&partial, row).expect("key");
            let value = service.codec.value(&partial, row).expect("value");
            speed.rows.insert((0, key), value);
        }
        speed.version += 1;
        speed.caught_up = true;
    }
    service
        .batch_read(Ok(None))
        .expect("a view table that does not exist yet");
    assert!(service.refresh(metrics).expect("refresh"));
    service
}

struct Fixture {
    dir: tempfile::TempDir,
    state: AppState,
}

/// `totals` (view key `region`, no window) and `minutes` (windows, no view key) over
/// [`orders`], served with `--token secret`.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = ServingMetrics::new();
    let events = orders();
    let totals = speed_served(
        dir.path(),
        &orders_job("totals", TOTALS_SQL, r#"["region"]"#),
        &events,
        &metrics,
    );
    let minutes = speed_served(
        dir.path(),
        &orders_job("minutes", MINUTES_SQL, "[]"),
        &events,
        &metrics,
    );
    let state = AppState {
        jobs: Arc::new(vec![
            Arc::new(JobSlot::fixed(totals)),
            Arc::new(JobSlot::fixed(minutes)),
        ]),
        metrics,
        token: Some(Arc::from(TOKEN)),
    };
    Fixture { dir, state }
}

// ---------------------------------------------------------------------------------------------
// Probes, auth and job state

#[tokio::test]
async fn probes_and_the_openapi_document_need_no_token() {
    let f = fixture();
    let health = get(&f.state, "/health", None).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    let health = health.json();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["jobs"]["totals"]["ready"], true, "{health}");
    assert_eq!(health["jobs"]["minutes"]["ready"], true, "{health}");
    assert_eq!(health["loading"], json!([]), "{health}");

    let openapi = get(&f.state, "/openapi.yaml", None).await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert_eq!(openapi.header("content-type"), Some("application/yaml"));
    assert!(openapi.body.contains("openapi:"), "{}", openapi.body);
    assert!(openapi.body.contains("/v1/jobs/{job}/view"));
    // With --token: the file, its examples naming the first job (neither job has both a view
    // key and a window).
    assert_eq!(openapi.body, OPENAPI.replace(EXAMPLE_JOB, "totals"));

    let metrics = get(&f.state, "/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    // The speed-lag gauge is set by the followers, which only a running server has (e2e).
    for name in [
        "sluice_serving_requests_total",
        "sluice_serving_request_duration_seconds",
        "sluice_serving_view_rows",
        "sluice_serving_snapshot_builds_total",
    ] {
        assert!(
            metrics.body.contains(name),
            "{name} not in:\n{}",
            metrics.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_endpoint_refuses_a_missing_or_wrong_token() {
    let f = fixture();
    for path in [
        "/v1/jobs",
        "/v1/jobs/totals",
        "/v1/jobs/totals/view",
        "/v1/jobs/totals/view?bogus=1",
        "/v1/jobs/no_such_job",
    ] {
        let missing = assert_error(
            &get(&f.state, path, None).await,
            StatusCode::UNAUTHORIZED,
            &["unauthorized"],
            path,
        );
        assert_eq!(
            message(&missing),
            "this server needs `Authorization: Bearer <token>`"
        );
        let wrong = assert_error(
            &get(&f.state, path, Some("wrong")).await,
            StatusCode::UNAUTHORIZED,
            &["unauthorized"],
            path,
        );
        assert_eq!(message(&wrong), "the bearer token is not valid");
        let basic = request(Method::GET, path, None)
            .header(AUTHORIZATION, format!("Basic {TOKEN}"))
            .body(Body::empty())
            .expect("request");
        assert_error(
            &send(&f.state, basic).await,
            StatusCode::UNAUTHORIZED,
            &["unauthorized"],
            "another scheme",
        );
    }
    let select = "SELECT * FROM totals";
    assert_error(
        &sql(&f.state, select, None).await,
        StatusCode::UNAUTHORIZED,
        &["unauthorized"],
        "/v1/sql",
    );
    assert_error(
        &sql(&f.state, select, Some("secret2")).await,
        StatusCode::UNAUTHORIZED,
        &["unauthorized"],
        "/v1/sql with a longer token",
    );
    for path in ["/v1/jobs", "/v1/jobs/totals", "/v1/jobs/totals/view"] {
        let answer = get(&f.state, path, AUTH).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    }
    assert_eq!(sql(&f.state, select, AUTH).await.status, StatusCode::OK);
}

#[tokio::test]
async fn jobs_lists_every_served_job() {
    let f = fixture();
    let jobs = get(&f.state, "/v1/jobs", AUTH).await;
    assert_eq!(jobs.status, StatusCode::OK, "{}", jobs.body);
    let listed: Vec<String> = jobs.json()["jobs"]
        .as_array()
        .expect("jobs array")
        .iter()
        .map(|j| j["job"].as_str().expect("job name").to_string())
        .collect();
    assert_eq!(listed, ["totals", "minutes"]);
}

#[tokio::test]
async fn job_status_names_topics_keys_and_readiness() {
    let f = fixture();
    for (job, keys) in [("totals", json!(["region"])), ("minutes", json!([]))] {
        let answer = get(&f.state, &format!("/v1/jobs/{job}"), AUTH).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let status = answer.json();
        for field in [
            "job",
            "version",
            "plan_fingerprint",
            "source_topic",
            "speed_topic",
            "view_table",
            "key_columns",
            "cutoff",
            "cutoff_us",
            "watermark",
            "watermark_us",
            "speed_lag_records",
            "source_lag_records",
            "last_batch_run",
            "rows",
            "partial_rows",
            "freshness_ms",
            "snapshot_at",
            "ready",
            "loading",
        ] {
            assert!(
                status.get(field).is_some(),
                "job status lacks `{field}`: {status}"
            );
        }
        assert_eq!(status["job"], job);
        assert_eq!(status["source_topic"], "orders");
        assert_eq!(status["speed_topic"], format!("{job}.speed"));
        assert_eq!(status["key_columns"], keys);
        assert_eq!(status["ready"], true, "{status}");
        assert_eq!(status["loading"], json!([]), "{status}");
        assert_eq!(status["cutoff"], Value::Null, "no backfill: {status}");
        assert_eq!(status["rows"]["batch"], 0, "{status}");
        assert_eq!(status["rows"]["merged"], 0, "{status}");
    }
}

#[tokio::test]
async fn an_unknown_job_is_a_404_naming_the_served_jobs() {
    let f = fixture();
    for path in [
        "/v1/jobs/no_such_job",
        "/v1/jobs/no_such_job/view",
        // The job is looked up first: its parameters do not matter.
        "/v1/jobs/no_such_job/view?bogus=1&limit=x",
    ] {
        let body = assert_error(
            &get(&f.state, path, AUTH).await,
            StatusCode::NOT_FOUND,
            &["unknown_job"],
            path,
        );
        assert_eq!(
            message(&body),
            "no job named `no_such_job`; serving: totals, minutes",
            "{path}"
        );
    }
}

#[tokio::test]
async fn unknown_endpoints_are_json_404s() {
    let f = fixture();
    for path in ["/nope", "/v1/jobs/totals/view/extra", "/v2/jobs"] {
        assert_error(
            &get(&f.state, path, AUTH).await,
            StatusCode::NOT_FOUND,
            &["not_found"],
            path,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// View queries

#[tokio::test]
async fn a_view_by_key_answers_that_key_s_rows() {
    let f = fixture();
    let eu = get(&f.state, "/v1/jobs/totals/view?key=eu", AUTH).await;
    assert_eq!(eu.status, StatusCode::OK, "{}", eu.body);
    assert_eq!(eu.header("content-type"), Some("application/json"));
    let eu = eu.json();
    for field in [
        "job",
        "version",
        "cutoff",
        "cutoff_us",
        "watermark",
        "watermark_us",
        "freshness_ms",
        "count",
        "truncated",
        "rows",
    ] {
        assert!(eu.get(field).is_some(), "view answer lacks `{field}`: {eu}");
    }
    assert_eq!(eu["job"], "totals");
    assert_eq!(
        (eu["count"].as_u64(), eu["truncated"].as_bool()),
        (Some(1), Some(false))
    );
    let rows = eu["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["origin"], "speed");
    assert_eq!(rows[0]["row"]["region"], "eu");
    let eu_orders = (0..ORDERS)
        .filter(|&i| completed(i) && region(i) == "eu")
        .count();
    assert_eq!(rows[0]["row"]["orders"].as_u64(), Some(eu_orders as u64));

    let none = get(&f.state, "/v1/jobs/totals/view?key=nowhere", AUTH).await;
    assert_eq!(none.status, StatusCode::OK, "{}", none.body);
    assert_eq!(none.json()["rows"], json!([]));
}

#[tokio::test]
async fn window_ranges_select_by_window_start() {
    let f = fixture();
    let all = get(&f.state, "/v1/jobs/minutes/view", AUTH).await.json();
    assert_eq!(all["count"], 30, "one row per minute: {all}");
    // [10:10, 10:20) as RFC 3339 and as epoch ms; the whole day as dates.
    let to_ms = T0_MS + 20 * 60_000;
    let ranged = get(
        &f.state,
        &format!("/v1/jobs/minutes/view?from=2024-05-01T10:10:00Z&to={to_ms}"),
        AUTH,
    )
    .await;
    assert_eq!(ranged.status, StatusCode::OK, "{}", ranged.body);
    let ranged = ranged.json();
    let starts: Vec<&str> = ranged["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["row"]["window_start"].as_str().expect("window_start"))
        .collect();
    assert_eq!(starts.len(), 10, "{ranged}");
    let minute_us = |m: i64| (T0_MS + m * 60_000) * 1000;
    assert_eq!(parse_time(starts[0]).ok(), Some(minute_us(10)), "{ranged}");
    assert_eq!(parse_time(starts[9]).ok(), Some(minute_us(19)), "{ranged}");
    let day = get(
        &f.state,
        "/v1/jobs/minutes/view?from=2024-05-01&to=2024-05-02",
        AUTH,
    )
    .await
    .json();
    assert_eq!(day["rows"], all["rows"]);
}

#[tokio::test]
async fn limits_cut_answers_and_bad_limits_are_400s() {
    let f = fixture();
    let limited = get(&f.state, "/v1/jobs/minutes/view?limit=3", AUTH)
        .await
        .json();
    assert_eq!(limited["rows"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        (limited["count"].as_u64(), limited["truncated"].as_bool()),
        (Some(3), Some(true))
    );
    let most = get(&f.state, "/v1/jobs/minutes/view?limit=100000", AUTH).await;
    assert_eq!(most.status, StatusCode::OK, "{}", most.body);
    assert_eq!(most.json()["truncated"], false);

    let over = assert_error(
        &get(&f.state, "/v1/jobs/minutes/view?limit=100001", AUTH).await,
        StatusCode::BAD_REQUEST,
        &["bad_request"],
        "limit",
    );
    assert_eq!(message(&over), "`limit`: at most 100000, got 100001");
    for limit in ["ten", "-1", "", "1.5"] {
        let body = assert_error(
            &get(
                &f.state,
                &format!("/v1/jobs/minutes/view?limit={limit}"),
                AUTH,
            )
            .await,
            StatusCode::BAD_REQUEST,
            &["bad_request"],
            "limit not a count",
        );
        assert_eq!(
            message(&body),
            format!("`limit`: expected a row count, got `{limit}`")
        );
    }
}

#[tokio::test]
async fn unknown_query_parameters_are_400s_naming_them() {
    let f = fixture();
    for (query, parameter) in [
        ("bogus=1", "bogus"),
        ("key=eu&Limit=3", "Limit"),
        ("limit=3&keys=eu", "keys"),
    ] {
        let body = assert_error(
            &get(&f.state, &format!("/v1/jobs/totals/view?{query}"), AUTH).await,
            StatusCode::BAD_REQUEST,
            &["bad_request"],
            query,
        );
        assert_eq!(
            message(&body),
            format!("`{parameter}`: unknown parameter; expected key, from, to or limit"),
            "{query}"
        );
    }
    let twice = assert_error(
        &get(&f.state, "/v1/jobs/totals/view?limit=1&limit=2", AUTH).await,
        StatusCode::BAD_REQUEST,
        &["bad_request"],
        "a parameter given twice",
    );
    assert!(message(&twice).contains("limit"), "{twice}");
}

#[tokio::test]
async fn unparsable_times_are_400s_naming_the_parameter() {
    let f = fixture();
    for (query, parameter) in [("from=yesterday", "`from`"), ("to=soon", "`to`")] {
        let body = assert_error(
            &get(&f.state, &format!("/v1/jobs/minutes/view?{query}"), AUTH).await,
            StatusCode::BAD_REQUEST,
            &["bad_request"],
            query,
        );
        assert!(message(&body).starts_with(parameter), "{body}");
    }
}

#[tokio::test]
async fn key_and_time_filters_need_a_view_key_and_a_window() {
    let f = fixture();
    let no_key = assert_error(
        &get(&f.state, "/v1/jobs/minutes/view?key=eu", AUTH).await,
        StatusCode::BAD_REQUEST,
        &["bad_request"],
        "key on a job without a view key",
    );
    assert!(
        message(&no_key).starts_with("`key`: job `minutes` has no view key"),
        "{no_key}"
    );
    for query in ["from=2024-05-01", "to=2024-05-02"] {
        let no_window = assert_error(
            &get(&f.state, &format!("/v1/jobs/totals/view?{query}"), AUTH).await,
            StatusCode::BAD_REQUEST,
            &["bad_request"],
            "a time on a job without a window",
        );
        assert!(
            message(&no_window).contains("job `totals` has no group window"),
            "{no_window}"
        );
    }
}

#[tokio::test]
async fn the_view_answer_embeds_each_row_s_json_as_the_in_process_answer_has_it() {
    let f = fixture();
    let service = f.state.job("minutes").expect("minutes").clone();
    let snapshot = service.snapshot();
    let selection =
        query::select(&snapshot, &service.shape(), &ViewQuery::default()).expect("select");
    let named = (service.name(), service.version());
    let text = query::render(&snapshot, named, &selection);
    let answer = serde_json::to_value(query::answer(&snapshot, named, &selection)).expect("answer");
    let rendered: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(rendered, answer);
    // The header's fields as before (sorted), then each row verbatim.
    assert!(
        text.starts_with(
            r#"{"count":30,"cutoff":null,"cutoff_us":null,"freshness_ms":null,"job":"minutes","truncated":false,"version":1,"watermark":null,"watermark_us":null,"rows":[{"origin":"speed","row":{"#
        ),
        "{text}"
    );
    for &row in &selection.rows {
        let embedded = format!(r#"{{"origin":"speed","row":{}}}"#, snapshot.json[row]);
        assert!(text.contains(&embedded), "{embedded} not in {text}");
    }
    assert!(text.ends_with("}]}"), "{text}");
    let served = get(&f.state, "/v1/jobs/minutes/view", AUTH).await;
    assert_eq!(served.body, text, "GET /view answers the rendered text");
}

// ---------------------------------------------------------------------------------------------
// SQL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_columns_rows_and_origins() {
    let f = fixture();
    let completed_orders = (0..ORDERS).filter(|&i| completed(i)).count() as i64;
    let sum = sql(&f.state, "SELECT SUM(total_orders) AS n FROM minutes", AUTH).await;
    assert_eq!(sum.status, StatusCode::OK, "{}", sum.body);
    let sum = sum.json();
    assert_eq!(
        sum["rows"][0]["n"].as_i64(),
        Some(completed_orders),
        "{sum}"
    );
    assert_eq!(sum["columns"][0]["name"], "n", "{sum}");
    assert!(sum["columns"][0]["type"].is_string(), "{sum}");
    assert_eq!(
        (sum["count"].as_u64(), sum["truncated"].as_bool()),
        (Some(1), Some(false))
    );

    let by_region = sql(
        &f.state,
        "SELECT region, orders, __origin FROM totals ORDER BY region",
        AUTH,
    )
    .await;
    assert_eq!(by_region.status, StatusCode::OK, "{}", by_region.body);
    let answer = by_region.json();
    let names: Vec<&str> = answer["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["region", "orders", "__origin"]);
    let rows = answer["rows"].as_array().expect("rows");
    let regions: Vec<&str> = rows
        .iter()
        .map(|r| r["region"].as_str().expect("region"))
        .collect();
    let mut expected = REGIONS.to_vec();
    expected.sort_unstable();
    assert_eq!(regions, expected);
    let orders: i64 = rows
        .iter()
        .map(|r| r["orders"].as_i64().expect("orders"))
        .sum();
    assert_eq!(orders, completed_orders);
    assert!(rows.iter().all(|r| r["__origin"] == "speed"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_at_most_10000_rows() {
    let f = fixture();
    // 30 windows cubed.
    let cubed = sql(
        &f.state,
        "SELECT a.window_start FROM minutes a CROSS JOIN minutes b CROSS JOIN minutes c",
        AUTH,
    )
    .await;
    assert_eq!(cubed.status, StatusCode::OK, "{}", cubed.body);
    let cubed = cubed.json();
    assert_eq!(cubed["rows"].as_array().map(Vec::len), Some(10_000));
    assert_eq!(cubed["count"], 10_000);
    assert_eq!(cubed["truncated"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_refuses_anything_but_reads_of_the_views() {
    let f = fixture();
    let copy_target = f.dir.path().join("copied.csv");
    let refused = [
        "CREATE TABLE x AS SELECT 1".to_string(),
        "CREATE VIEW v AS SELECT * FROM totals".to_string(),
        "INSERT INTO totals SELECT * FROM totals".to_string(),
        "DELETE FROM totals".to_string(),
        "DROP TABLE totals".to_string(),
        format!("COPY (SELECT 1) TO '{}'", copy_target.display()),
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ];
    for text in &refused {
        assert_error(
            &sql(&f.state, text, AUTH).await,
            StatusCode::BAD_REQUEST,
            &["sql_refused"],
            text,
        );
    }
    assert!(
        !copy_target.exists(),
        "COPY wrote {}",
        copy_target.display()
    );
    let still = sql(&f.state, "SELECT COUNT(*) AS n FROM totals", AUTH).await;
    assert_eq!(
        still.status,
        StatusCode::OK,
        "the views survive refused statements: {}",
        still.body
    );
    assert_eq!(
        still.json()["rows"][0]["n"].as_i64(),
        Some(REGIONS.len() as i64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cannot_reach_files() {
    let f = fixture();
    // Whichever way the refusal is classified.
    for text in [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM t",
        "SELECT 1; DROP TABLE totals",
    ] {
        let answer = sql(&f.state, text, AUTH).await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            &["sql_refused", "bad_sql"],
            text,
        );
        assert!(
            !answer.body.contains("root:"),
            "{text} returned file contents: {}",
            answer.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sql_is_bad_sql() {
    let f = fixture();
    for text in [
        "SELEKT 1 FROM",
        "SELECT",
        "SELECT no_such_column FROM totals",
        "SELECT * FROM no_such_table",
    ] {
        assert_error(
            &sql(&f.state, text, AUTH).await,
            StatusCode::BAD_REQUEST,
            &["bad_sql"],
            text,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_bodies_must_be_one_sql_string() {
    let f = fixture();
    for (body, field, what) in [
        (&b"SELECT 1"[..], "body", "not JSON"),
        (&b""[..], "body", "empty"),
        (&br#"{"sql": "SELECT 1"} x"#[..], "body", "trailing text"),
        (&br#"{"query": "SELECT 1"}"#[..], "query", "no sql field"),
        (&br#"{}"#[..], "sql", "an empty object"),
        (&br#"{"sql": 42}"#[..], "sql", "sql not text"),
        (&br#""SELECT 1""#[..], "sql", "a JSON string"),
        (
            &br#"{"sql": "SELECT 1", "limit": 5}"#[..],
            "limit",
            "an unknown field",
        ),
    ] {
        let answer = post(&f.state, "/v1/sql", "application/json", body, AUTH).await;
        let error = assert_error(&answer, StatusCode::BAD_REQUEST, &["bad_request"], what);
        assert!(
            message(&error).starts_with(&format!("`{field}`: ")),
            "{what}: {error}"
        );
    }
    // `curl -d` sends its body form-encoded: it is read as JSON all the same.
    let curl = post(
        &f.state,
        "/v1/sql",
        "application/x-www-form-urlencoded",
        br#"{"sql": "SELECT 1 AS one"}"#,
        AUTH,
    )
    .await;
    assert_eq!(curl.status, StatusCode::OK, "{}", curl.body);
    assert_eq!(curl.json()["rows"][0]["one"], 1);
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[tokio::test]
async fn request_metrics_are_labelled_by_route_not_by_path() {
    let f = fixture();
    get(&f.state, "/v1/jobs/totals/view?key=eu", AUTH).await;
    get(&f.state, "/v1/jobs/minutes/view", AUTH).await;
    get(&f.state, "/v1/jobs/no_such_job", AUTH).await;
    get(&f.state, "/v1/jobs", None).await;
    get(&f.state, "/etc/passwd", None).await;
    let metrics = get(&f.state, "/metrics", None).await.body;
    for series in [
        r#"sluice_serving_requests_total{endpoint="view",status="200"} 2"#,
        r#"sluice_serving_requests_total{endpoint="job",status="404"} 1"#,
        r#"sluice_serving_requests_total{endpoint="jobs",status="401"} 1"#,
        r#"sluice_serving_requests_total{endpoint="other",status="404"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} not in:\n{metrics}");
    }
    for path in ["no_such_job", "passwd", "totals/view"] {
        assert!(!metrics.contains(path), "{path} in a label:\n{metrics}");
    }
    assert_eq!(endpoint_of(None), "other");
}

#[test]
fn tokens_compare_whole() {
    assert!(constant_time_eq(b"secret", b"secret"));
    assert!(!constant_time_eq(b"secret", b"secreT"));
    assert!(!constant_time_eq(b"secret", b"secret2"));
}

// ---------------------------------------------------------------------------------------------
// Readiness: one job `t` whose batch view is loaded (or fails to load) by the test

const SQL: &str = "SELECT region, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS ws,
  COUNT(*) AS n FROM orders GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)";

/// 11:00 on 2024-05-01, a bucket boundary.
const CUTOFF_US: i64 = 1_714_561_200_000_000;

/// One job served without Kafka (its speed view is empty and caught up), its lake in `dir`.
fn served(dir: &std::path::Path) -> (AppState, Arc<JobService>) {
    let job = sluice_core::fixture::OrdersJob::default().job(SQL);
    let pipeline = Arc::new(Pipeline::compile(&job, None).expect("pipeline"));
    let lake = Lake {
        root: dir.to_string_lossy().into_owned(),
    };
    let service =
        Arc::new(JobService::detached(ServedJob::new(job, pipeline), &lake).expect("service"));
    service
        .speed_follower()
        .view
        .write()
        .expect("speed view")
        .caught_up = true;
    let state = AppState {
        jobs: Arc::new(vec![Arc::new(JobSlot::fixed(service.clone()))]),
        metrics: ServingMetrics::new(),
        token: None,
    };
    (state, service)
}

/// A version of the view table holding two `eu` events and one `us` event before the cutoff.
fn batch_view(service: &JobService, version: u64) -> Arc<BatchView> {
    let plan = service.served.pipeline.plan();
    let lines = [
        r#"{"order_id":"a","region":"eu","amount":2.0,"event_time":1714561170000}"#,
        r#"{"order_id":"b","region":"eu","amount":4.0,"event_time":1714561175000}"#,
        r#"{"order_id":"c","region":"us","amount":1.0,"event_time":1714561100000}"#,
    ];
    let decoded = JsonDecoder::new(&service.served.job)
        .decode(&lines)
        .expect("decode");
    let partial = plan.partial(&decoded.batch).expect("partial");
    let stage = plan.aggregate().expect("aggregate");
    Arc::new(BatchView {
        version,
        cutoff_us: Some(CUTOFF_US),
        partials: vec![
            stage
                .buckets_in(&partial, None, Some(CUTOFF_US))
                .expect("buckets"),
        ],
        last_run: CommitSummary {
            version,
            timestamp_ms: Some(0),
            info: Default::default(),
        },
    })
}

async fn get_health(state: &AppState) -> Answer {
    get(state, "/health", None).await
}

async fn get_view(state: &AppState, key: &str) -> Answer {
    get(state, &format!("/v1/jobs/t/view?key={key}"), None).await
}

async fn post_sql(state: &AppState, text: &str) -> Answer {
    sql(state, text, None).await
}

#[track_caller]
fn assert_loading(answer: &Answer, what: &str) {
    let body = answer.json();
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {body}"
    );
    assert_eq!(
        answer.header("retry-after"),
        Some(RETRY_AFTER_SECONDS),
        "{what}: {body}"
    );
    assert_eq!(body["error"], "loading", "{what}: {body}");
    assert!(
        message(&body).starts_with("job `t`: the batch view is still loading"),
        "{what}: {body}"
    );
    assert_eq!(body["loading"][0]["part"], "batch view", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_view_and_sql_wait_until_the_batch_view_is_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, service) = served(dir.path());
    // The speed view is caught up and merged; the view table was not read yet.
    service.refresh(&state.metrics).expect("refresh");
    let health = get_health(&state).await;
    let body = health.json();
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(health.header("retry-after"), Some(RETRY_AFTER_SECONDS));
    assert_eq!(body["status"], "starting", "{body}");
    assert_eq!(
        body["loading"],
        json!([{"job": "t", "part": "batch view"}]),
        "{body}"
    );
    assert_eq!(body["jobs"]["t"]["ready"], false, "{body}");
    assert!(!service.status().ready);
    assert_loading(&get_view(&state, "eu").await, "view before the batch view");
    assert_loading(
        &post_sql(&state, "SELECT COUNT(*) AS n FROM t").await,
        "sql before the batch view",
    );
    let subquery = "SELECT x FROM (VALUES (1)) AS v(x) WHERE x IN (SELECT n FROM t)";
    assert_loading(
        &post_sql(&state, subquery).await,
        "sql reading the job in a subquery",
    );
    let untouched = post_sql(&state, "SELECT 1 AS one").await;
    assert_eq!(
        untouched.status,
        StatusCode::OK,
        "sql reading no job: {}",
        untouched.body
    );

    // No view table yet: an empty batch view, read, but not merged into a snapshot yet.
    service
        .poll_batch()
        .await
        .expect("a view table that does not exist yet is an empty batch view");
    assert_eq!(
        get_health(&state).await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "ready before the batch view is merged"
    );
    assert_loading(&get_view(&state, "eu").await, "view before the merge");

    assert!(service.refresh(&state.metrics).expect("refresh"));
    let health = get_health(&state).await;
    let body = health.json();
    assert_eq!(health.status, StatusCode::OK, "{body}");
    assert_eq!(health.header("retry-after"), None);
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["loading"], json!([]), "{body}");
    assert_eq!(body["jobs"]["t"]["ready"], true, "{body}");
    assert!(service.status().ready);
    let view = get_view(&state, "eu").await;
    let body = view.json();
    assert_eq!(view.status, StatusCode::OK, "{body}");
    assert_eq!(body["cutoff"], Value::Null, "no backfill yet: {body}");
    assert_eq!(body["count"], 0, "{body}");
    let counted = post_sql(&state, "SELECT COUNT(*) AS n FROM t").await;
    let body = counted.json();
    assert_eq!(counted.status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"][0]["n"], 0, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_read_is_named_and_a_loaded_batch_view_stays_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, service) = served(dir.path());
    service.refresh(&state.metrics).expect("refresh");
    let unreadable = || -> Result<Option<Arc<BatchView>>, ServingError> {
        Err(ServingError::Internal(
            "the view table is unreadable".into(),
        ))
    };

    assert!(service.batch_read(unreadable()).is_err());
    service.refresh(&state.metrics).expect("refresh");
    let health = get_health(&state).await;
    let body = health.json();
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["loading"][0]["part"], "batch view", "{body}");
    assert_eq!(
        body["loading"][0]["error"], "the view table is unreadable",
        "{body}"
    );
    let view = get_view(&state, "eu").await;
    assert_loading(&view, "view after a failed read");
    let body = view.json();
    assert!(
        message(&body).contains("the view table is unreadable"),
        "{body}"
    );

    // The retry reads version 1; once merged, the job is ready and answers its rows.
    service
        .batch_read(Ok(Some(batch_view(&service, 1))))
        .expect("read");
    assert_eq!(
        get_health(&state).await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "ready before the batch view is merged"
    );
    assert!(service.refresh(&state.metrics).expect("refresh"));
    assert_eq!(get_health(&state).await.status, StatusCode::OK);
    let view = get_view(&state, "eu").await;
    let body = view.json();
    assert_eq!(view.status, StatusCode::OK, "{body}");
    assert_eq!(body["cutoff"], "2024-05-01T11:00:00Z", "{body}");
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["rows"][0]["origin"], "batch", "{body}");
    assert_eq!(body["rows"][0]["row"]["n"], 2, "{body}");

    // A later read that fails keeps the loaded view: still ready, still the same rows.
    assert!(service.batch_read(unreadable()).is_err());
    service.refresh(&state.metrics).expect("refresh");
    let health = get_health(&state).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    let again = get_view(&state, "eu").await.json();
    assert_eq!(again["rows"], body["rows"]);
    assert_eq!(again["cutoff"], body["cutoff"]);
}

// ---------------------------------------------------------------------------------------------
// The served OpenAPI document, methods, bodies and the forms of `from` and `to`

/// `state` as a server started without `--token` serves it.
fn without_token(state: &AppState) -> AppState {
    AppState {
        token: None,
        ..state.clone()
    }
}

/// How many lines of `document` are exactly `line` (so at column 0 for an unindented one).
fn top_level(document: &str, line: &str) -> usize {
    document.lines().filter(|l| *l == line).count()
}

#[tokio::test]
async fn the_served_document_requires_the_token_only_when_the_server_has_one() {
    let f = fixture();
    let with = get(&f.state, "/openapi.yaml", None).await.body;
    assert_eq!(top_level(&with, "security:"), 1, "{with}");
    assert!(with.contains("security:\n  - bearerAuth: []\n"), "{with}");

    let open = without_token(&f.state);
    let without = get(&open, "/openapi.yaml", None).await.body;
    assert_eq!(top_level(&without, "security:"), 0, "{without}");
    assert!(!without.contains("  - bearerAuth: []"), "{without}");
    // Only that block is left out: the scheme stays declared, the probes stay open, and
    // every other line is the file's.
    assert!(without.contains("    bearerAuth:\n      type: http\n      scheme: bearer\n"));
    assert_eq!(
        without.matches("      security: []\n").count(),
        with.matches("      security: []\n").count()
    );
    let dropped: Vec<&str> = with
        .lines()
        .filter(|l| !without.lines().any(|kept| kept == *l))
        .collect();
    assert_eq!(dropped, ["security:", "  - bearerAuth: []"]);
    assert_eq!(without.lines().count(), with.lines().count() - 2);

    // And the server agrees with each document: no token needed without one.
    assert_eq!(get(&open, "/v1/jobs", None).await.status, StatusCode::OK);
    assert_eq!(
        get(&f.state, "/v1/jobs", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// Completed orders per region and minute: a view key and a window.
const REGION_MINUTES_SQL: &str = "SELECT region,
  TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start, COUNT(*) AS orders
FROM orders WHERE status = 'completed'
GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)";

/// The value of the document's SQL example (`value: { sql: '...' }`).
fn sql_example(document: &str) -> &str {
    let start = document
        .find("value: { sql: '")
        .map(|at| at + "value: { sql: '".len())
        .expect("an SQL example");
    let length = document[start..].find('\'').expect("a closing quote");
    &document[start..start + length]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_examples_name_a_served_job_that_takes_every_example_parameter() {
    let f = fixture();
    let regions = speed_served(
        f.dir.path(),
        &orders_job("regions", REGION_MINUTES_SQL, r#"["region"]"#),
        &orders(),
        &f.state.metrics,
    );
    let mut jobs: Vec<Arc<JobSlot>> = f.state.jobs.iter().cloned().collect();
    jobs.push(Arc::new(JobSlot::fixed(regions)));
    let state = AppState {
        jobs: Arc::new(jobs),
        ..f.state.clone()
    };
    let document = get(&state, "/openapi.yaml", None).await.body;
    assert!(!document.contains(EXAMPLE_JOB), "{document}");
    assert!(
        document.contains("      example: \"regions\"\n"),
        "{document}"
    );

    let example = sql_example(&document);
    assert!(example.contains("FROM regions "), "{example}");
    let answer = sql(&state, example, AUTH).await;
    assert_eq!(answer.status, StatusCode::OK, "{example}: {}", answer.body);
    let counted: i64 = answer.json()["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["n"].as_i64().expect("n"))
        .sum();
    let expected = speed_view_rows(&state, "regions").await;
    assert_eq!(counted, expected, "{example}");

    // The view examples (key, from, to) are answered for the job they name.
    let view = get(
        &state,
        "/v1/jobs/regions/view?key=eu&from=2024-05-01T10:00:00Z&to=2024-05-02",
        AUTH,
    )
    .await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert!(view.json()["count"].as_u64().is_some_and(|n| n > 0));
}

/// How many rows `GET /view` answers for `job`.
async fn speed_view_rows(state: &AppState, job: &str) -> i64 {
    let all = get(state, &format!("/v1/jobs/{job}/view?limit=100000"), AUTH)
        .await
        .json();
    all["count"].as_i64().expect("count")
}

#[test]
fn the_sql_example_quotes_a_job_name_sql_would_not_read_as_one_identifier() {
    for (job, table) in [
        ("orders_eu", "orders_eu"),
        ("Orders", "Orders"),
        ("orders-eu", "\"orders-eu\""),
        ("2024_orders", "\"2024_orders\""),
    ] {
        let document = with_example_job(OPENAPI, job);
        let example = sql_example(&document);
        assert!(
            example.contains(&format!("FROM {table} ")),
            "{job}: {example}"
        );
        assert!(!document.contains(EXAMPLE_JOB), "{job}");
        assert!(
            document.contains(&format!("      example: \"{job}\"\n")),
            "{job}"
        );
    }
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_with_allow() {
    let f = fixture();
    for (method, path, token, allow) in [
        (Method::POST, "/health", None, "GET,HEAD"),
        (Method::DELETE, "/openapi.yaml", None, "GET,HEAD"),
        (Method::PUT, "/v1/jobs", AUTH, "GET,HEAD"),
        (Method::PATCH, "/v1/jobs/totals/view", AUTH, "GET,HEAD"),
        (Method::GET, "/v1/sql", AUTH, "POST"),
    ] {
        let what = format!("{method} {path}");
        let answer = send(
            &f.state,
            request(method, path, token)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_error(
            &answer,
            StatusCode::METHOD_NOT_ALLOWED,
            &["method_not_allowed"],
            &what,
        );
        assert_eq!(answer.header("allow"), Some(allow), "{what}");
    }
    // Under /v1/ the token comes first, whatever the method.
    let anonymous = request(Method::PUT, "/v1/jobs", None)
        .body(Body::empty())
        .expect("request");
    assert_error(
        &send(&f.state, anonymous).await,
        StatusCode::UNAUTHORIZED,
        &["unauthorized"],
        "PUT /v1/jobs without a token",
    );
}

#[tokio::test]
async fn an_sql_body_over_the_limit_is_a_json_413() {
    let f = fixture();
    let padding = " ".repeat(3 << 20);
    let body = format!(r#"{{"sql": "SELECT 1{padding}"}}"#);
    let answer = post(
        &f.state,
        "/v1/sql",
        "application/json",
        body.as_bytes(),
        AUTH,
    )
    .await;
    let error = assert_error(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        &["payload_too_large"],
        "a 3 MiB body",
    );
    assert!(message(&error).starts_with("`body`: "), "{error}");
}

/// Every byte but letters and digits percent-encoded, for a query-string value.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Times in the forms the `Time` schema of openapi.yaml declares (core's looser reader, which
/// the CLI uses, reads each to the same instant).
const DOCUMENTED_TIMES: [&str; 14] = [
    "2024-05-01T10:00:00Z",
    "2024-05-01t10:00:00z",
    "2024-05-01T12:00:00+02:00",
    "2024-05-01T05:30:00.123456789-04:30",
    "2024-05-01T10:00:00.5Z",
    "2024-05-01T10:00:00-00:00",
    "2024-05-01",
    "2024-02-29",
    "0000-01-01",
    "1714557600000",
    "-1000",
    "0",
    "007",
    "999999999999999",
];

/// Text the `Time` schema refuses (by its patterns or its formats): the server refuses each.
const UNDOCUMENTED_TIMES: [&str; 26] = [
    "",
    " 2024-05-01",
    "2024-05-01 ",
    "2024-05-01 10:00:00Z",
    "2024-05-01T10:00:00",
    "2024-05-01T10:00Z",
    "2016-12-31T23:59:60Z",
    "2024-05-01T10:00:00.Z",
    "2024-05-01T10:00:00.1234567890Z",
    "2024-05-01T24:00:00Z",
    "2024-05-01T10:60:00Z",
    "2024-05-01T10:00:00+24:00",
    "2024-05-01T10:00:00+0200",
    "2024-05-01T10:00:00Zjunk",
    "2024-02-30",
    "2023-02-29",
    "2024-13-01",
    "2024-5-1",
    "+1714557600000",
    "1e12",
    "1714557600000.5",
    "1000000000000000",
    "--1",
    "-",
    "yesterday",
    "\u{ff12}\u{ff10}\u{ff12}\u{ff14}-05-01",
];

#[test]
fn view_times_take_exactly_the_documented_forms() {
    for text in DOCUMENTED_TIMES {
        let read = query::parse_view_time(text);
        assert!(read.is_some(), "`{text}` is refused");
        assert_eq!(read, parse_time(text).ok(), "`{text}`");
    }
    assert_eq!(query::parse_view_time("1714557600000"), Some(T0_MS * 1000));
    for text in UNDOCUMENTED_TIMES {
        assert_eq!(query::parse_view_time(text), None, "`{text}` is read");
    }
}

#[tokio::test]
async fn view_time_parameters_answer_200_for_the_documented_forms_and_400_for_the_rest() {
    let f = fixture();
    for text in DOCUMENTED_TIMES {
        for parameter in ["from", "to"] {
            let path = format!("/v1/jobs/minutes/view?{parameter}={}", query_value(text));
            let answer = get(&f.state, &path, AUTH).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        }
    }
    for text in UNDOCUMENTED_TIMES {
        for parameter in ["from", "to"] {
            let path = format!("/v1/jobs/minutes/view?{parameter}={}", query_value(text));
            let body = assert_error(
                &get(&f.state, &path, AUTH).await,
                StatusCode::BAD_REQUEST,
                &["bad_request"],
                &path,
            );
            assert_eq!(
                message(&body),
                format!(
                    "`{parameter}`: expected RFC 3339 (2024-05-01T10:00:00Z), a date (2024-05-01) or epoch milliseconds (1714557600000), got `{text}`"
                ),
                "{path}"
            );
        }
    }
}
