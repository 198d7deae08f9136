//! The client against canned answers on a local socket (one connection each): what it sends,
//! and how each kind of answer becomes a value or an error.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

use super::*;

/// Serves one connection: reads the request head and its `Content-Length` body, writes
/// `status` with `body` (JSON) and closes. Returns the base URL and a handle yielding the
/// request as received.
fn one_shot(status: &'static str, body: &'static str) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = socket.read(&mut buf).expect("read");
            assert!(n > 0, "client closed early");
            request.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&request[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().expect("length"))
            })
            .unwrap_or(0);
        while request.len() < head_end + length {
            let n = socket.read(&mut buf).expect("read body");
            assert!(n > 0, "client closed before the body");
            request.extend_from_slice(&buf[..n]);
        }
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(reply.as_bytes()).expect("write");
        String::from_utf8_lossy(&request).into_owned()
    });
    (url, server)
}

#[test]
fn a_schema_by_id_and_the_request_that_fetched_it() {
    let (url, server) = one_shot("200 OK", r#"{"schema":"\"string\"","extra":1}"#);
    let client = RegistryClient::with_auth(
        &url,
        RegistryAuth::Basic {
            user: "user".into(),
            password: "pass".into(),
        },
    )
    .unwrap();
    assert_eq!(
        client.schema_by_id(7).unwrap(),
        SchemaLookup::Avro("\"string\"".into())
    );
    let request = server.join().unwrap().to_ascii_lowercase();
    assert!(
        request.starts_with("get /schemas/ids/7 http/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("authorization: basic dxnlcjpwyxnz\r\n"),
        "{request}"
    );
    assert!(
        request.contains("accept: application/vnd.schemaregistry.v1+json"),
        "{request}"
    );
}

#[test]
fn a_404_with_or_without_the_registrys_code_is_not_found_and_says_which() {
    let (url, server) = one_shot(
        "404 Not Found",
        r#"{"error_code":40403,"message":"Schema 9 not found"}"#,
    );
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    match client.schema_by_id(9).unwrap() {
        SchemaLookup::NotFound(message) => {
            assert!(message.contains("40403"), "{message}");
            assert!(message.contains("Schema 9 not found"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    server.join().unwrap();

    // Without the registry's code (a proxy, a path prefix): still no schema, but the message
    // asks whether the URL is a registry's.
    for body in [
        r#"{"error_code":404,"message":"HTTP 404"}"#,
        "<html>gone</html>",
    ] {
        let (url, server) = one_shot("404 Not Found", body);
        let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
        match client.schema_by_id(9).unwrap() {
            SchemaLookup::NotFound(message) => {
                assert!(message.contains("schema registry?"), "{message}");
            }
            other => panic!("{body}: {other:?}"),
        }
        server.join().unwrap();
    }
}

#[test]
fn a_non_avro_schema_or_a_body_that_is_no_schema_is_not_avro() {
    let (url, server) = one_shot(
        "200 OK",
        r#"{"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF"}"#,
    );
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    match client.schema_by_id(3).unwrap() {
        SchemaLookup::NotAvro(message) => assert!(message.contains("PROTOBUF"), "{message}"),
        other => panic!("{other:?}"),
    }
    server.join().unwrap();

    // `schemaType` in any case is Avro's.
    let (url, server) = one_shot("200 OK", r#"{"schema":"\"long\"","schemaType":"avro"}"#);
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    assert_eq!(
        client.schema_by_id(4).unwrap(),
        SchemaLookup::Avro("\"long\"".into())
    );
    server.join().unwrap();

    for body in ["<html>not a registry</html>", r#"{"id":1}"#] {
        let (url, server) = one_shot("200 OK", body);
        let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
        match client.schema_by_id(1).unwrap() {
            SchemaLookup::NotAvro(message) => {
                assert!(message.contains("not a schema"), "{body}: {message}")
            }
            other => panic!("{body}: {other:?}"),
        }
        server.join().unwrap();
    }
}

#[test]
fn server_errors_are_transient_auth_failures_are_not_and_both_are_errors() {
    let (url, server) = one_shot(
        "500 Internal Server Error",
        r#"{"error_code":50001,"message":"Error in the backend data store"}"#,
    );
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    let error = client.schema_by_id(1).unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("backend data store"), "{error}");
    server.join().unwrap();

    let (url, server) = one_shot("401 Unauthorized", r#"{"error_code":401,"message":"no"}"#);
    let client = RegistryClient::with_auth(&url, RegistryAuth::Bearer("bad".into())).unwrap();
    let error = client.schema_by_id(1).unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(
        !error.to_string().contains("bad"),
        "the token leaked: {error}"
    );
    server.join().unwrap();

    // A refusal of the request rather than of the id: an error, not a verdict on the id.
    let (url, server) = one_shot(
        "400 Bad Request",
        "The plain HTTP request was sent to HTTPS port",
    );
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    let error = client.schema_by_id(1).unwrap_err();
    assert!(
        matches!(error, RegistryError::Http { status: 400, .. }),
        "{error}"
    );
    server.join().unwrap();
}

#[test]
fn no_registry_listening_is_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    let error = client.schema_by_id(1).unwrap_err();
    assert!(
        matches!(error, RegistryError::Unreachable { .. }),
        "{error}"
    );
    assert!(error.is_transient());
}

#[test]
fn register_sends_the_schema_and_maps_refusals() {
    let (url, server) = one_shot("200 OK", r#"{"id":12}"#);
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    assert_eq!(
        client.register("orders.events-value", "\"long\"").unwrap(),
        12
    );
    let request = server.join().unwrap();
    let lower = request.to_ascii_lowercase();
    assert!(
        lower.starts_with("post /subjects/orders.events-value/versions http/1.1\r\n"),
        "{request}"
    );
    assert!(
        lower.contains("content-type: application/vnd.schemaregistry.v1+json\r\n"),
        "{request}"
    );
    assert!(request.ends_with(r#"{"schema":"\"long\""}"#), "{request}");

    let (url, server) = one_shot(
        "409 Conflict",
        r#"{"error_code":409,"message":"incompatible: field x"}"#,
    );
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    match client.register("a/b", "\"long\"") {
        Err(RegistryError::Incompatible { subject, message }) => {
            assert_eq!(subject, "a/b");
            assert_eq!(message, "incompatible: field x");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        server
            .join()
            .unwrap()
            .starts_with("POST /subjects/a%2Fb/versions ")
    );

    let (url, server) = one_shot(
        "422 Unprocessable Entity",
        r#"{"error_code":42201,"message":"Invalid schema"}"#,
    );
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    let error = client.register("s", "nope").unwrap_err();
    assert!(
        matches!(error, RegistryError::InvalidSchema { .. }),
        "{error}"
    );
    server.join().unwrap();
}

#[test]
fn set_compatibility_puts_the_level() {
    let (url, server) = one_shot("200 OK", r#"{"compatibility":"FULL"}"#);
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    client
        .set_compatibility(Some("s"), Compatibility::Full)
        .unwrap();
    let request = server.join().unwrap();
    assert!(
        request.starts_with("PUT /config/s HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.ends_with(r#"{"compatibility":"FULL"}"#),
        "{request}"
    );

    let (url, server) = one_shot("200 OK", r#"{"compatibility":"NONE"}"#);
    let client = RegistryClient::with_auth(&url, RegistryAuth::None).unwrap();
    client.set_compatibility(None, Compatibility::None).unwrap();
    assert!(
        server
            .join()
            .unwrap()
            .starts_with("PUT /config HTTP/1.1\r\n")
    );
}

#[test]
fn the_client_names_its_url_without_credentials() {
    let client = RegistryClient::with_auth(
        "http://alice:secret@registry:8081/",
        RegistryAuth::Bearer("t0k3n".into()),
    )
    .unwrap();
    assert_eq!(client.url(), "http://registry:8081");
    let printed = format!("{client:?}");
    assert!(
        !printed.contains("secret") && !printed.contains("t0k3n"),
        "{printed}"
    );
    let https =
        RegistryClient::with_auth("https://alice:secret@registry:8443/", RegistryAuth::None)
            .unwrap();
    assert_eq!(https.url(), "https://registry:8443");
}

/// Any certificate block will do here: the roots are only checked at a TLS handshake.
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";

#[test]
fn a_ca_file_must_exist_and_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let client = || RegistryClient::with_auth("https://registry:8443", RegistryAuth::None).unwrap();

    let good = dir.path().join("ca.pem");
    std::fs::write(&good, format!("a comment line\n{PEM}{PEM}")).unwrap();
    let with_ca = client().with_ca_file(&good).unwrap();
    assert_eq!(with_ca.url(), "https://registry:8443");
    assert!(format!("{with_ca:?}").contains("ca.pem"));

    let missing = dir.path().join("nope.pem");
    let error = client().with_ca_file(&missing).unwrap_err();
    assert!(matches!(error, RegistryError::Config { .. }), "{error}");
    assert!(error.to_string().contains("nope.pem"), "{error}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let error = client().with_ca_file(&empty).unwrap_err();
    assert!(
        error.to_string().contains("holds no certificate"),
        "{error}"
    );
}
