//! The fetcher against canned registry answers on a local socket, with a real Avro decoder: which
//! answers make records wait, which dead-letter them and as what, and that an id not found is
//! asked again before its records are given up.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread::JoinHandle;

use sluice_core::{AvroDecoder, DivertReason};
use sluice_registry::RegistryAuth;

use super::*;

const SCHEMA: &str = r#"{"type":"record","name":"E","fields":[{"name":"order_id","type":"string"},{"name":"ts","type":"long"}]}"#;

/// Serves one connection per answer (`status line`, body), in order, then stops. Returns the
/// base URL and a handle yielding each request's first line.
fn registry(answers: Vec<(&'static str, String)>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for (status, body) in answers {
            let (mut socket, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).expect("read");
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&request).into_owned();
            requests.push(head.lines().next().unwrap_or_default().to_string());
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).expect("write");
        }
        requests
    });
    (url, server)
}

fn schema_answer() -> String {
    serde_json::json!({ "schema": SCHEMA }).to_string()
}

fn job(url: &str) -> Job {
    job_file(url, "", Path::new("orders.toml"))
}

/// The job at `file`, its `[source]` naming the registry `url`, plus `source_lines`.
fn job_file(url: &str, source_lines: &str, file: &Path) -> Job {
    Job::from_toml(
        &format!(
            r#"
name = "orders"
[source]
topic = "orders.events"
format = "avro-confluent"
registry = "{url}"
{source_lines}
event_time = "ts"
fields = [ {{ name = "order_id", type = "string" }}, {{ name = "ts", type = "timestamp" }} ]
[transform]
sql = "SELECT COUNT(*) AS n FROM orders_events"
"#
        ),
        file,
    )
    .expect("job")
}

/// A fetcher and a decoder of `url`'s registry, an id not found believed after `grace`.
fn fetcher(url: &str, grace: Duration) -> (SchemaFetcher, AvroDecoder) {
    let client = RegistryClient::with_auth(url, RegistryAuth::None).expect("client");
    let decoder = AvroDecoder::confluent(&job(url)).expect("decoder");
    (SchemaFetcher::new("orders", client, grace), decoder)
}

/// A record of schema `id`: order_id "a", ts 1 (valid under [`SCHEMA`]).
fn record(id: u32) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend_from_slice(&[0x02, b'a', 0x02]);
    framed
}

fn wait_until(fetched: &Fetched) {
    if let Fetched::Wait { retry_at, .. } = fetched {
        std::thread::sleep(retry_at.saturating_duration_since(Instant::now()));
    }
}

#[test]
fn an_answer_that_is_no_avro_schema_dead_letters_at_once_as_incompatible_schema() {
    let (url, server) = registry(vec![
        (
            "200 OK",
            r#"{"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF"}"#.to_string(),
        ),
        ("200 OK", "<html>a login page</html>".to_string()),
    ]);
    let (mut fetcher, decoder) = fetcher(&url, Duration::from_secs(60));
    let records = [record(5), record(6)];
    let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    assert_eq!(fetcher.fetch_missing(&decoder, &payloads), Fetched::Ready);
    let out = decoder.decode_records(&payloads).expect("decode");
    let kinds: Vec<_> = out.errors.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            DivertReason::IncompatibleSchema,
            DivertReason::IncompatibleSchema
        ]
    );
    let reasons: Vec<&str> = out.errors.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons[0].contains("schema id 5") && reasons[0].contains("PROTOBUF"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("schema id 6") && reasons[1].contains("not a schema"),
        "{reasons:?}"
    );
    assert_eq!(
        server.join().expect("server"),
        ["GET /schemas/ids/5 HTTP/1.1", "GET /schemas/ids/6 HTTP/1.1"]
    );
}

#[test]
fn an_id_not_found_waits_and_decodes_once_the_registry_has_it() {
    // A lagging replica: "not found" first, the schema on the next ask.
    let (url, server) = registry(vec![
        (
            "404 Not Found",
            r#"{"error_code":40403,"message":"Schema 7 not found"}"#.to_string(),
        ),
        ("200 OK", schema_answer()),
    ]);
    let (mut fetcher, decoder) = fetcher(&url, Duration::from_secs(60));
    let records = [record(7)];
    let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let first = fetcher.fetch_missing(&decoder, &payloads);
    let Fetched::Wait { retry_at, reason } = &first else {
        panic!("{first:?}");
    };
    assert!(reason.contains("schema id 7"), "{reason}");
    assert!(*retry_at <= Instant::now() + NOT_FOUND_FIRST_RETRY);
    // Asked again before its time: no request, the same wait.
    assert_eq!(fetcher.fetch_missing(&decoder, &payloads), first);
    assert_eq!(decoder.missing_writer_schemas(&payloads), [7]);
    wait_until(&first);
    assert_eq!(fetcher.fetch_missing(&decoder, &payloads), Fetched::Ready);
    let out = decoder.decode_records(&payloads).expect("decode");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.rows, [0]);
    assert_eq!(server.join().expect("server").len(), 2);
}

#[test]
fn an_id_not_found_for_the_whole_grace_is_unknown_schema_id() {
    // A 404 without the registry's code counts as not found too.
    let (url, server) = registry(vec![
        ("404 Not Found", "not here".to_string()),
        (
            "404 Not Found",
            r#"{"error_code":40403,"message":"Schema 8 not found"}"#.to_string(),
        ),
    ]);
    let (mut fetcher, decoder) = fetcher(&url, Duration::from_millis(300));
    let records = [record(8)];
    let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let first = fetcher.fetch_missing(&decoder, &payloads);
    assert!(matches!(first, Fetched::Wait { .. }), "{first:?}");
    // The last ask is at the end of the grace, not a whole backoff later.
    wait_until(&first);
    assert_eq!(fetcher.fetch_missing(&decoder, &payloads), Fetched::Ready);
    let out = decoder.decode_records(&payloads).expect("decode");
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    assert_eq!(out.errors[0].kind, DivertReason::UnknownSchemaId);
    assert!(
        out.errors[0].reason.contains("schema id 8"),
        "{}",
        out.errors[0].reason
    );
    assert_eq!(server.join().expect("server").len(), 2);
}

#[test]
fn with_no_grace_the_first_not_found_is_final() {
    let (url, server) = registry(vec![(
        "404 Not Found",
        r#"{"error_code":40403,"message":"Schema 9 not found"}"#.to_string(),
    )]);
    let (mut fetcher, decoder) = fetcher(&url, Duration::ZERO);
    let records = [record(9)];
    let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    assert_eq!(fetcher.fetch_missing(&decoder, &payloads), Fetched::Ready);
    let out = decoder.decode_records(&payloads).expect("decode");
    assert_eq!(out.errors[0].kind, DivertReason::UnknownSchemaId);
    server.join().expect("server");
}

#[test]
fn a_registry_that_cannot_or_will_not_answer_makes_records_wait_with_no_verdict() {
    let (url, server) = registry(vec![
        (
            "500 Internal Server Error",
            r#"{"error_code":50001,"message":"Error in the backend data store"}"#.to_string(),
        ),
        (
            "401 Unauthorized",
            r#"{"error_code":401,"message":"Unauthorized"}"#.to_string(),
        ),
        ("429 Too Many Requests", String::new()),
        ("200 OK", schema_answer()),
    ]);
    let (mut fetcher, decoder) = fetcher(&url, Duration::ZERO);
    let records = [record(4)];
    let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    for expected in ["backend data store", "HTTP 401", "HTTP 429"] {
        match fetcher.fetch_missing(&decoder, &payloads) {
            Fetched::Wait { reason, .. } => assert!(reason.contains(expected), "{reason}"),
            other => panic!("{expected}: {other:?}"),
        }
        assert_eq!(decoder.missing_writer_schemas(&payloads), [4]);
    }
    assert_eq!(fetcher.failures, 3);
    assert_eq!(fetcher.fetch_missing(&decoder, &payloads), Fetched::Ready);
    assert_eq!(fetcher.failures, 0);
    assert!(
        decoder
            .decode_records(&payloads)
            .expect("decode")
            .errors
            .is_empty()
    );
    assert_eq!(server.join().expect("server").len(), 4);
}

#[test]
fn the_jobs_ca_file_is_found_beside_the_job_file_and_must_hold_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("orders.toml");
    let with_ca = |name: &str| {
        job_file(
            "https://127.0.0.1:1",
            &format!("registry_ca = \"{name}\""),
            &file,
        )
    };
    // Relative to the job file, not to the working directory.
    let job = with_ca("ca.pem");
    assert_eq!(job.registry_ca(), Some(dir.path().join("ca.pem")));
    let error = SchemaFetcher::for_job(&job)
        .err()
        .expect("a CA file that does not exist is refused");
    let text = error.to_string();
    assert!(matches!(error, StreamError::Config { .. }), "{text}");
    assert!(text.contains("ca.pem"), "{text}");

    std::fs::write(
        dir.path().join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let fetcher = SchemaFetcher::for_job(&job).expect("a CA file with a certificate");
    assert_eq!(
        fetcher.as_ref().map(SchemaFetcher::url),
        Some("https://127.0.0.1:1")
    );
}
