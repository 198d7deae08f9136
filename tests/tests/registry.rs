//! The built-in schema registry end to end: real `sluice registry` processes against the run's
//! real broker, each test on a topic of its own (`--topic`), talked to over HTTP as any
//! Confluent client would.
//!
//! What is tested, and why:
//!
//! - schemas evolve under the subject's compatibility level (a field added with a default is
//!   BACKWARD, one without is refused with 409 until the subject is set to NONE), ids are
//!   reused across subjects, and a replica killed with SIGKILL and started again on the same
//!   topic answers exactly as before: the topic is the whole state;
//! - two replicas on one topic see each other's writes, and concurrent registrations of
//!   different schemas on both never give one id to two schemas ("first in the log wins");
//! - bad input gets Confluent's status and error code, never a 5xx; an unreachable Kafka at
//!   start is an error naming the brokers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_e2e::http::{Response, try_request};
use sluice_e2e::kafka::{Daemon, bootstrap, sluice_bin, unique};
use sluice_e2e::serve::spawn_with_address;

/// The registry's media type, which requests declare as Confluent's clients do.
const MEDIA: &str = "application/vnd.schemaregistry.v1+json";
/// How long a replica may take to see another's write.
const LONG: Duration = Duration::from_secs(30);

/// A `sluice registry` process and its `host:port`.
struct Replica {
    daemon: Daemon,
    addr: String,
}

/// `sluice registry --brokers <run's broker> --listen 127.0.0.1:0 --topic TOPIC`, logging to
/// `<dir>/<name>.log`, once it prints its address (it has read the topic to its end).
fn start(dir: &Path, topic: &str, name: &str) -> Replica {
    let mut command = Command::new(sluice_bin());
    command
        .arg("registry")
        .arg("--brokers")
        .arg(bootstrap())
        .args(["--listen", "127.0.0.1:0", "--topic", topic]);
    let log = dir.join(format!("{name}.log"));
    let (daemon, addr) = spawn_with_address(command, &log, "sluice registry", registry_address);
    Replica { daemon, addr }
}

/// `ADDR` of the line `registry listening on http://ADDR`.
fn registry_address(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("registry listening on http://")?;
    let address: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '/')
        .collect();
    address.contains(':').then_some(address)
}

/// One request; the answer must not be a 5xx (bad input never makes one).
fn call(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Response {
    let bytes = body.map(|b| serde_json::to_vec(b).expect("a JSON body"));
    let answer = try_request(
        addr,
        method,
        path,
        None,
        bytes.as_deref().map(|b| (MEDIA, b)),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(
        answer.status < 500,
        "{method} {path}: {} {}",
        answer.status,
        answer.body
    );
    answer
}

/// A request that must succeed; its JSON answer.
fn ok(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let answer = call(addr, method, path, body);
    assert_eq!(answer.status, 200, "{method} {path}: {}", answer.body);
    answer.json()
}

/// A request that must be refused with `status` and `code`.
fn refused(addr: &str, method: &str, path: &str, body: Option<&Value>, status: u16, code: u64) {
    assert_refused(&call(addr, method, path, body), status, code);
}

fn assert_refused(answer: &Response, status: u16, code: u64) {
    let json = answer.json();
    assert_eq!(
        (answer.status, json["error_code"].as_u64()),
        (status, Some(code)),
        "{}",
        answer.body
    );
    assert!(json["message"].is_string(), "{}", answer.body);
}

fn register(addr: &str, subject: &str, schema: &str) -> Response {
    call(
        addr,
        "POST",
        &format!("/subjects/{subject}/versions"),
        Some(&json!({ "schema": schema })),
    )
}

fn register_ok(addr: &str, subject: &str, schema: &str) -> u64 {
    let answer = register(addr, subject, schema);
    assert_eq!(
        answer.status, 200,
        "registering under {subject}: {}",
        answer.body
    );
    answer.json()["id"].as_u64().expect("an id")
}

/// The `Order` record: `id`, then `extra` fields.
fn order(extra: &[Value]) -> String {
    let mut fields = vec![json!({"name": "id", "type": "long"})];
    fields.extend_from_slice(extra);
    json!({"type": "record", "name": "Order", "namespace": "sluice.e2e", "fields": fields})
        .to_string()
}

/// An int field with a default: any two schemas made of these are BACKWARD compatible.
fn optional(name: &str) -> Value {
    json!({"name": name, "type": "int", "default": 0})
}

/// Polls `check` every 100 ms until it gives a value, or panics after `limit`.
fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything a replica answers about its state: subjects (deleted ones too), every version
/// of each, each subject's level (or its 40408), the global level, every schema by id.
fn snapshot(addr: &str) -> Value {
    let subjects = ok(addr, "GET", "/subjects?deleted=true", None);
    let mut versions = serde_json::Map::new();
    let mut ids = std::collections::BTreeSet::new();
    for subject in subjects.as_array().expect("a list of subjects") {
        let subject = subject.as_str().expect("a subject");
        let numbers = ok(
            addr,
            "GET",
            &format!("/subjects/{subject}/versions?deleted=true"),
            None,
        );
        let mut bodies = Vec::new();
        for number in numbers.as_array().expect("a list of versions") {
            let path = format!("/subjects/{subject}/versions/{number}?deleted=true");
            let body = ok(addr, "GET", &path, None);
            ids.insert(body["id"].as_u64().expect("an id"));
            bodies.push(body);
        }
        let live = call(addr, "GET", &format!("/subjects/{subject}/versions"), None);
        let level = call(addr, "GET", &format!("/config/{subject}"), None);
        versions.insert(
            subject.to_string(),
            json!({
                "versions": numbers,
                "bodies": bodies,
                "live": [live.status, live.body],
                "level": [level.status, level.body],
            }),
        );
    }
    let schemas: BTreeMap<String, Value> = ids
        .iter()
        .map(|id| {
            (
                id.to_string(),
                ok(addr, "GET", &format!("/schemas/ids/{id}"), None),
            )
        })
        .collect();
    json!({
        "subjects": subjects,
        "live_subjects": ok(addr, "GET", "/subjects", None),
        "versions": versions,
        "global": ok(addr, "GET", "/config", None),
        "schemas": schemas,
    })
}

#[test]
fn schemas_evolve_under_their_level_and_survive_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("schemas");
    let mut first = start(dir.path(), &topic, "first");
    let addr = first.addr.clone();
    assert_eq!(ok(&addr, "GET", "/subjects", None), json!([]));
    assert_eq!(
        ok(&addr, "GET", "/config", None),
        json!({"compatibilityLevel": "BACKWARD"})
    );

    let subject = "orders-value";
    let region = json!({"name": "region", "type": "string", "default": "eu"});
    let v1 = order(&[]);
    let v2 = order(std::slice::from_ref(&region));
    let v3 = order(&[region, json!({"name": "amount", "type": "double"})]);
    assert_eq!(register_ok(&addr, subject, &v1), 1);
    assert_eq!(register_ok(&addr, subject, &v2), 2);
    assert_eq!(
        register_ok(&addr, subject, &v1),
        1,
        "registered already: its id"
    );
    // `amount` has no default: the new schema cannot read v2's data.
    let refused_v3 = register(&addr, subject, &v3);
    assert_refused(&refused_v3, 409, 409);
    assert!(refused_v3.body.contains("amount"), "{}", refused_v3.body);
    let check = ok(
        &addr,
        "POST",
        &format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"),
        Some(&json!({ "schema": v3 })),
    );
    assert_eq!(check["is_compatible"], false, "{check}");
    assert_eq!(
        ok(
            &addr,
            "PUT",
            &format!("/config/{subject}"),
            Some(&json!({"compatibility": "NONE"}))
        ),
        json!({"compatibility": "NONE"})
    );
    assert_eq!(register_ok(&addr, subject, &v3), 3);
    assert_eq!(
        ok(&addr, "GET", &format!("/subjects/{subject}/versions"), None),
        json!([1, 2, 3])
    );
    for (id, schema) in [(1, &v1), (2, &v2), (3, &v3)] {
        assert_eq!(
            ok(&addr, "GET", &format!("/schemas/ids/{id}"), None),
            json!({ "schema": schema })
        );
    }
    // The same schema under another subject keeps its id; a soft delete; a global level.
    assert_eq!(register_ok(&addr, "other-value", &v1), 1);
    assert_eq!(
        ok(&addr, "GET", "/schemas/ids/1/subjects", None),
        json!([subject, "other-value"])
    );
    assert_eq!(
        ok(&addr, "DELETE", "/subjects/other-value/versions/1", None),
        json!(1)
    );
    assert_eq!(
        ok(
            &addr,
            "PUT",
            "/config",
            Some(&json!({"compatibility": "FULL"}))
        ),
        json!({"compatibility": "FULL"})
    );
    let before = snapshot(&addr);

    first.daemon.kill();
    let second = start(dir.path(), &topic, "second");
    assert_eq!(
        snapshot(&second.addr),
        before,
        "the restarted replica lost something"
    );
    // It goes on from there: v1 keeps id 1, a new schema gets the next id.
    assert_eq!(register_ok(&second.addr, subject, &v1), 1);
    assert_eq!(
        register_ok(&second.addr, "fresh-value", &order(&[optional("n")])),
        4
    );
}

#[test]
fn replicas_on_one_topic_agree_and_never_give_one_id_to_two_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("schemas");
    let a = start(dir.path(), &topic, "a");
    let b = start(dir.path(), &topic, "b");

    // A write on one replica shows on the other once it has read that far.
    let id = register_ok(&a.addr, "seen-value", &order(&[]));
    let seen = eventually(LONG, "replica b to see a's schema", || {
        let answer = call(&b.addr, "GET", "/subjects/seen-value/versions/latest", None);
        (answer.status == 200).then(|| answer.json())
    });
    assert_eq!(seen["id"], id);
    let id = register_ok(&b.addr, "seen-value", &order(&[optional("b")]));
    let seen = eventually(LONG, "replica a to see b's schema", || {
        let answer = call(&a.addr, "GET", "/subjects/seen-value/versions/2", None);
        (answer.status == 200).then(|| answer.json())
    });
    assert_eq!(seen["id"], id);

    // Both replicas register different schemas at once, half of them under one subject.
    let answers: Vec<(String, u64)> = std::thread::scope(|scope| {
        let threads: Vec<_> = [("a", a.addr.clone()), ("b", b.addr.clone())]
            .into_iter()
            .map(|(name, addr)| {
                scope.spawn(move || {
                    (0..6)
                        .map(|i| {
                            let schema = order(&[optional(&format!("{name}{i}"))]);
                            let subject = if i % 2 == 0 {
                                "shared-value".to_string()
                            } else {
                                format!("{name}-value")
                            };
                            let id = register_ok(&addr, &subject, &schema);
                            (schema, id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("a registering thread"))
            .collect()
    });
    let mut schema_of: BTreeMap<u64, &String> = BTreeMap::new();
    for (schema, id) in &answers {
        if let Some(other) = schema_of.insert(*id, schema) {
            assert_eq!(other, schema, "id {id} was given to two schemas");
        }
    }
    assert_eq!(
        schema_of.len(),
        answers.len(),
        "12 different schemas, 12 ids"
    );
    for replica in [&a, &b] {
        for (schema, id) in &answers {
            let answer = eventually(LONG, "every schema on every replica", || {
                let answer = call(&replica.addr, "GET", &format!("/schemas/ids/{id}"), None);
                (answer.status == 200).then(|| answer.json())
            });
            assert_eq!(
                answer,
                json!({ "schema": schema }),
                "id {id} on {}",
                replica.addr
            );
        }
    }
    eventually(
        LONG,
        "both replicas to hold the same subjects and versions",
        || (snapshot(&a.addr) == snapshot(&b.addr)).then_some(()),
    );
    let shared = ok(&a.addr, "GET", "/subjects/shared-value/versions", None);
    assert_eq!(
        shared,
        json!([1, 2, 3, 4, 5, 6]),
        "no version lost or doubled"
    );
}

#[test]
fn bad_input_gets_confluents_error_codes_and_never_a_5xx() {
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), &unique("schemas"), "registry");
    let addr = registry.addr.as_str();
    register_ok(addr, "s", &order(&[]));
    let post = |content_type: &str, body: &str| {
        let body = Some((content_type, body.as_bytes()));
        try_request(addr, "POST", "/subjects/s/versions", None, body).expect("an answer")
    };
    // A body that is not JSON: 400; JSON without `schema`: 422.
    assert_refused(&post("application/json", "this is not json"), 400, 400);
    assert_refused(&post(MEDIA, r#"{"schemaType": "AVRO"}"#), 422, 422);
    // A schema that is not JSON, not Avro, or not AVRO at all: 42201.
    let path = "/subjects/s/versions";
    refused(
        addr,
        "POST",
        path,
        Some(&json!({"schema": "not json"})),
        422,
        42201,
    );
    refused(
        addr,
        "POST",
        path,
        Some(&json!({"schema": "{\"type\": \"record\"}"})),
        422,
        42201,
    );
    let protobuf = json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"});
    refused(addr, "POST", path, Some(&protobuf), 422, 42201);
    // What newer clients add is ignored, and the content type does not matter.
    let modern: &[u8] = br#"{"schema": "\"string\"", "schemaType": "AVRO", "references": [], "metadata": null, "ruleSet": null}"#;
    let answer = try_request(
        addr,
        "POST",
        "/subjects/t/versions?normalize=true",
        None,
        Some(("text/plain", modern)),
    )
    .expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.json()["id"].is_u64(), "{}", answer.body);

    refused(addr, "GET", "/subjects/s/versions/abc", None, 422, 42202);
    refused(addr, "GET", "/subjects/s/versions/0", None, 422, 42202);
    refused(addr, "GET", "/subjects/unknown/versions", None, 404, 40401);
    refused(
        addr,
        "GET",
        "/subjects/unknown/versions/latest",
        None,
        404,
        40401,
    );
    refused(addr, "GET", "/subjects/s/versions/9", None, 404, 40402);
    refused(addr, "GET", "/schemas/ids/999", None, 404, 40403);
    let lookup = json!({"schema": order(&[optional("never")])});
    refused(addr, "POST", "/subjects/s", Some(&lookup), 404, 40403);
    refused(addr, "POST", "/subjects/unknown", Some(&lookup), 404, 40401);
    refused(
        addr,
        "PUT",
        "/config",
        Some(&json!({"compatibility": "SIDEWAYS"})),
        422,
        42203,
    );
    refused(addr, "GET", "/config/s", None, 404, 40408);
    refused(addr, "GET", "/no/such/route", None, 404, 404);
    assert_eq!(
        ok(addr, "GET", "/config/s?defaultToGlobal=true", None),
        json!({"compatibilityLevel": "BACKWARD"})
    );
}

#[test]
fn an_unreachable_kafka_is_named_at_start() {
    let output = Command::new(sluice_bin())
        .args([
            "registry",
            "--brokers",
            "127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running sluice registry");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:1"),
        "the error names the brokers: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "it never listened"
    );
}
