//! PII policies end to end: a job whose source has an email (hashed), a name (masked) and a
//! phone (dropped) runs through a real `sluice stream` (speed layer, lake sink, DLQ with
//! records that are malformed, of the wrong type and rejected by a check, some keyed by the
//! email), `sluice lake load` (with a rejects file) and `sluice serve`; then every topic the
//! job writes, every raw-table row, every file in the lake and the state directory, every API
//! answer and every log line is searched for the clear values. None may hold one; the outputs
//! hold the protected values instead, the same in every layer.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::fixture::{OrderGenerator, OrdersJob, T0_MS};
use sluice_core::pii::{KEY_ENV, PiiProtection};
use sluice_core::topics::{Topics, header};
use sluice_core::{Job, Lake};
use sluice_e2e::kafka::{
    Outgoing, create_topic, produce, read_all, spawn_stream, unique, wait_until,
};
use sluice_e2e::orders;
use sluice_e2e::serve::{sluice, sluice_ok, spawn_serve};

const KEY: &str = "the e2e test's PII key, long enough";

/// (email, name, phone) of the customers the orders come from.
const PEOPLE: [(&str, &str, &str); 3] = [
    (
        "alice.liddell@example.com",
        "Alice Liddell",
        "+44 20 7946 0958",
    ),
    (
        "bob.kowalczyk@example.org",
        "Bob Kowalczyk",
        "+48 22 555 01 77",
    ),
    (
        "chiara.bellini@example.net",
        "Chiara Bellini",
        "+39 06 4815 1623",
    ),
];

/// Text that would betray a clear value: whole values and their distinctive parts, long
/// enough not to turn up by chance in hashes, timestamps, ids or binary files.
const BETRAYING: [&str; 12] = [
    "liddell",
    "kowalczyk",
    "bellini",
    "alice.l",
    "bob.k",
    "chiara.b",
    "7946 0958",
    "555 01 77",
    "4815 1623",
    "2079460958",
    "225550177",
    "0648151623",
];

const FIELDS: &str = r#"  { name = "email", type = "string", pii = "email", policy = "hash" },
  { name = "customer_name", type = "string", pii = "name" },
  { name = "phone", type = "string", pii = "phone", policy = "drop" },
"#;

const SQL: &str =
    "SELECT email, customer_name, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start,
  TUMBLE_END(event_time, INTERVAL '1' MINUTE) AS window_end,
  COUNT(*) AS orders, SUM(amount) AS revenue, MAX(phone) AS phone
FROM orders
GROUP BY email, customer_name, TUMBLE(event_time, INTERVAL '1' MINUTE)";

const CHECK: &str = r#"
[[checks]]
check = "range"
column = "amount"
min = 0
severity = "quarantine"
"#;

fn with_person(order: sluice_core::fixture::Order, person: usize) -> Value {
    let (email, name, phone) = PEOPLE[person % PEOPLE.len()];
    let mut value = order.to_value();
    value.insert("email".into(), json!(email));
    value.insert("customer_name".into(), json!(name));
    value.insert("phone".into(), json!(phone));
    Value::Object(value)
}

#[test]
fn no_tagged_value_reaches_any_topic_table_answer_or_log() {
    // SAFETY: the only test of this binary; no other thread reads the environment yet. The
    // daemons started below inherit the key.
    unsafe { std::env::set_var(KEY_ENV, KEY) };
    unsafe {
        std::env::set_var(
            "SLUICE_LOG",
            "info,sluice=debug,sluice_jobs=debug,sluice_stream=debug,sluice_core=debug,\
             sluice_batch=debug,sluice_serving=debug",
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("pii");
    let name = unique("pii").replace('-', "_");
    let toml = OrdersJob {
        name: &name,
        topic: &topic,
        key: r#"["email", "customer_name"]"#,
        extra_fields: FIELDS,
        ..OrdersJob::default()
    }
    .toml(SQL)
        + CHECK;
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, toml).unwrap();
    let job = Job::from_file(&job_file).unwrap();
    let pii = PiiProtection::with_key(&job, Some(KEY))
        .unwrap()
        .expect("tagged fields");
    create_topic(&topic, 2);

    let shape = orders::on_time_shape("p", T0_MS, 200);
    let mut events: Vec<Outgoing> = OrderGenerator::new(3, shape)
        .take(300)
        .enumerate()
        .map(|(i, order)| {
            let value = with_person(order, i);
            // Some keyed by the email, the way a producer keying by customer would.
            let key = (i % 2 == 0).then(|| PEOPLE[i % 3].0.as_bytes().to_vec());
            ((i % 2) as i32, key, value.to_string().into_bytes())
        })
        .collect();
    let template = || {
        with_person(
            OrderGenerator::new(9, orders::on_time_shape("x", T0_MS, 200))
                .next()
                .unwrap(),
            0,
        )
    };
    let mut wrong_type = template();
    wrong_type["amount"] = json!("a lot, said alice.liddell@example.com");
    let mut rejected = template();
    rejected["amount"] = json!(-5.0);
    let alice = PEOPLE[0].0.as_bytes().to_vec();
    let bad = [
        (
            0,
            Some(alice.clone()),
            br#"{"order_id":"m-1","email":"alice.liddell@example.com","customer_name":"Alice Liddell""#
                .to_vec(),
        ),
        (1, Some(alice.clone()), wrong_type.to_string().into_bytes()),
        (0, Some(alice.clone()), rejected.to_string().into_bytes()),
    ];
    events.extend(bad.iter().cloned());
    events.extend(orders::watermark_pushers(2, T0_MS + 3_600_000));
    produce(&topic, &events);

    let lake = dir.path().join("lake");
    let state = dir.path().join("state");
    let stream_log = dir.path().join("stream.log");
    let mut daemon = spawn_stream(&job_file, &lake, &state, &stream_log, &[]);
    let topics = Topics::for_job(&job);
    wait_until(Duration::from_secs(90), "the three dead letters", || {
        read_all(&topics.dlq).len() >= bad.len()
    });
    // Every record that decoded lands: the good ones, the rejected one, the pushers.
    sluice_e2e::wait_raw_rows(&lake, &job, 300 + 1 + 2, Duration::from_secs(90));
    wait_until(Duration::from_secs(60), "the windows' results", || {
        !read_all(&topics.results).is_empty()
    });

    // A file loaded into the same lake, with a bad line.
    let file = dir.path().join("more.jsonl");
    let mut lines: Vec<String> =
        OrderGenerator::new(4, orders::on_time_shape("f", T0_MS - 7_200_000, 500))
            .take(20)
            .enumerate()
            .map(|(i, order)| with_person(order, i).to_string())
            .collect();
    lines.push(r#"{"order_id":"f-bad","email":"bob.kowalczyk@example.org","amount":"#.to_string());
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let loaded = sluice(&[
        "lake",
        "load",
        "--job",
        &job_file.to_string_lossy(),
        "--lake",
        &lake.to_string_lossy(),
        "--output",
        "json",
        "--rejects",
        &rejects.to_string_lossy(),
        &file.to_string_lossy(),
    ]);
    let load_out = format!(
        "{}\n{}",
        String::from_utf8_lossy(&loaded.stdout),
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert_eq!(
        loaded.status.code(),
        Some(3),
        "exit 3: a line was rejected\n{load_out}"
    );
    // The batch layer over the raw table the stream and the load landed.
    let backfill = sluice(&[
        "backfill",
        "--job",
        &job_file.to_string_lossy(),
        "--lake",
        &lake.to_string_lossy(),
        "--from",
        "2024-05-01T00:00:00Z",
        "--to",
        "2024-05-02T00:00:00Z",
        "--allow-incomplete",
        "--output",
        "json",
    ]);
    // Exit 3: the row the check rejects is skipped.
    assert_eq!(backfill.status.code(), Some(3), "{backfill:?}");
    let backfill = String::from_utf8_lossy(&backfill.stdout).into_owned();
    let dlq_show = sluice_ok(&[
        "dlq",
        "show",
        "--job",
        &job_file.to_string_lossy(),
        "--brokers",
        &sluice_e2e::kafka::bootstrap(),
        "--output",
        "json",
    ]);

    let (mut serve, addr) = spawn_serve(&[&job_file], &lake, &[]);
    sluice_e2e::serve::wait_caught_up(&addr, &name, None, Duration::from_secs(60));
    let answers: Vec<String> = [
        "/v1/jobs".to_string(),
        format!("/v1/jobs/{name}"),
        format!("/v1/jobs/{name}/view"),
        format!("/v1/jobs/{name}/dlq"),
        format!("/v1/jobs/{name}/history"),
        format!("/v1/jobs/{name}/anomalies"),
        "/metrics".to_string(),
    ]
    .iter()
    .map(|path| {
        let response = sluice_e2e::http::get(&addr, path, None);
        assert_eq!(response.status, 200, "{path}: {}", response.body);
        format!("GET {path}: {}", response.body)
    })
    .collect();
    let view = sluice_e2e::http::get(&addr, &format!("/v1/jobs/{name}/view"), None).json();
    serve.terminate();
    assert!(daemon.terminate().success(), "SIGTERM exits 0");

    // The outputs hold the protected values, the same in the speed layer, the lake and the DLQ.
    let hashed: Vec<String> = PEOPLE
        .iter()
        .map(|(email, _, _)| pii.protect("email", email).unwrap())
        .collect();
    let rows = view["rows"].as_array().cloned().unwrap_or_default();
    assert!(!rows.is_empty(), "{view}");
    for answer in &rows {
        let row = &answer["row"];
        if row["email"].is_null() {
            continue; // the watermark pushers' window
        }
        let email = row["email"].as_str().unwrap_or_default();
        assert!(hashed.iter().any(|h| h == email), "{row}");
        assert!(
            row["customer_name"]
                .as_str()
                .unwrap_or_default()
                .ends_with("***"),
            "{row}"
        );
        assert!(row["phone"].is_null(), "dropped: {row}");
    }
    let dead = read_all(&topics.dlq);
    let by_type = |t: &str| {
        dead.iter()
            .find(|r| r.headers.get(header::ERROR_TYPE).map(String::as_str) == Some(t))
            .unwrap_or_else(|| panic!("a {t} dead letter in {dead:?}"))
    };
    let malformed = by_type("malformed_json");
    let withheld = String::from_utf8_lossy(malformed.value.as_deref().unwrap_or_default());
    assert!(withheld.contains("withheld"), "{withheld}");
    for t in ["schema_violation", "check_failed"] {
        let record = by_type(t);
        let value: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        assert_eq!(value["email"], hashed[0], "{t}: {value}");
        assert!(value.get("phone").is_none(), "{t}: {value}");
        assert_eq!(
            record.key.as_deref(),
            Some(hashed[0].as_bytes()),
            "{t}: the key"
        );
    }

    // And nothing anywhere holds a clear value.
    let mut places: Vec<(String, String)> = Vec::new();
    for topic in [&topics.speed, &topics.results, &topics.dlq, &topics.late] {
        for r in read_all(topic) {
            let text = format!(
                "{} {} {:?}",
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()),
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()),
                r.headers
            );
            places.push((format!("{topic} offset {}", r.offset), text));
        }
    }
    let raw = raw_rows(&lake, &job);
    assert!(raw.len() > 300, "{} raw rows", raw.len());
    for row in raw {
        places.push(("the raw table".into(), row));
    }
    for path in files_under(&lake).into_iter().chain(files_under(&state)) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        places.push((
            path.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    for log in [&stream_log, &sluice_e2e::serve::serve_log(&lake), &rejects] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!text.is_empty(), "{} is empty", log.display());
        for (n, line) in text.lines().enumerate() {
            places.push((
                format!("{} line {}", log.display(), n + 1),
                line.to_string(),
            ));
        }
    }
    places.push(("lake load's output".into(), load_out));
    places.push(("backfill's report".into(), backfill));
    places.push(("sluice dlq show".into(), dlq_show));
    for answer in answers {
        places.push(("the API".into(), answer));
    }
    assert!(places.len() > 300, "searched {} places", places.len());
    search(&places);

    // Rows another job on the same topic landed without the tags hold clear values (the raw
    // table is the topic's); the tagged job's batch layer protects them as it reads them.
    let plain_file = dir.path().join("plain.toml");
    let plain_name = format!("{name}_plain");
    let untagged = FIELDS
        .replace(r#", pii = "email", policy = "hash""#, "")
        .replace(r#", pii = "name""#, "")
        .replace(r#", pii = "phone", policy = "drop""#, "");
    std::fs::write(
        &plain_file,
        OrdersJob {
            name: &plain_name,
            topic: &topic,
            key: r#"["email", "customer_name"]"#,
            extra_fields: &untagged,
            ..OrdersJob::default()
        }
        .toml(SQL),
    )
    .unwrap();
    let shared = dir.path().join("shared-lake");
    let args = |job: &Path| {
        vec![
            "--job".to_string(),
            job.to_string_lossy().into_owned(),
            "--lake".to_string(),
            shared.to_string_lossy().into_owned(),
        ]
    };
    let mut load: Vec<String> = vec!["lake".into(), "load".into()];
    load.extend(args(&plain_file));
    load.push(file.to_string_lossy().into_owned());
    let load: Vec<&str> = load.iter().map(String::as_str).collect();
    assert_eq!(
        sluice(&load).status.code(),
        Some(3),
        "the bad line is rejected"
    );
    let clear = raw_rows(&shared, &Job::from_file(&plain_file).unwrap());
    assert!(
        clear.iter().any(|r| r.contains("liddell")),
        "the untagged job landed clear rows"
    );
    let mut backfill: Vec<String> = vec!["backfill".into()];
    backfill.extend(args(&job_file));
    backfill.extend(
        [
            "--from",
            "2024-04-30T00:00:00Z",
            "--to",
            "2024-05-02T00:00:00Z",
            "--allow-incomplete",
        ]
        .map(String::from),
    );
    let backfill: Vec<&str> = backfill.iter().map(String::as_str).collect();
    let out = sluice(&backfill);
    assert!(out.status.success(), "{out:?}");
    let lake = Lake::resolve(Some(&shared.to_string_lossy()));
    let view = sluice_core::lake::TableLocation::new(lake.view_table(&job));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let rows = sluice_e2e::canonical_rows(&runtime.block_on(view.read_all()).expect("the view"));
    assert!(!rows.is_empty());
    assert!(
        rows.iter().any(|r| r.contains(&hashed[1])),
        "hashed emails in the view: {rows:?}"
    );
    let places: Vec<(String, String)> = rows
        .into_iter()
        .map(|r| ("the view over clear raw rows".to_string(), r))
        .collect();
    search(&places);
}

/// Panics naming the place that holds a clear value.
fn search(places: &[(String, String)]) {
    for (place, text) in places {
        let lower = text.to_lowercase();
        for clear in BETRAYING {
            assert!(!lower.contains(clear), "{place} holds `{clear}`: {text}");
        }
    }
}

/// Every row of the job's raw table, as JSON.
fn raw_rows(lake: &Path, job: &Job) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let lake = Lake::resolve(Some(&lake.to_string_lossy()));
    let table = sluice_core::lake::TableLocation::new(lake.raw_table(job));
    let batches = runtime.block_on(table.read_all()).expect("the raw table");
    sluice_e2e::canonical_rows(&batches)
}

fn files_under(root: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no files under {}", root.display());
    files
}
