//! The blocking HTTP client of the end-to-end tests and benches, over [`ureq`]: one request per
//! connection (`Connection: close`, no pooling, no redirects followed), every status returned as
//! a [`Response`] (tests check 4xx/5xx bodies), the body read whole. Tests want failures loudly,
//! so [`get`] and [`post_json`] panic on I/O errors; the `try_` variants return them (for polling
//! a server that may not be up yet).

use std::sync::LazyLock;
use std::time::Duration;

/// How long a request may take to connect, and to send or receive each part of the exchange.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One agent for the whole test process; it keeps no idle connections, so a server restarted on
/// the same address is never reached through a stale socket.
static AGENT: LazyLock<ureq::Agent> = LazyLock::new(|| {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .user_agent("sluice-e2e")
        .timeout_connect(Some(TIMEOUT))
        .timeout_send_request(Some(TIMEOUT))
        .timeout_send_body(Some(TIMEOUT))
        .timeout_recv_response(Some(TIMEOUT))
        .timeout_recv_body(Some(TIMEOUT))
        .build();
    ureq::Agent::new_with_config(config)
});

/// A response: status code, headers (names lowercase) and body as text (lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The body as JSON; panics with the status and body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status,
                self.body.chars().take(2000).collect::<String>()
            )
        })
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path`, with `Authorization: Bearer <token>` when `token` is given.
pub fn get(addr: &str, path: &str, token: Option<&str>) -> Response {
    try_get(addr, path, token).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// `POST path` with `body` as `application/json`.
pub fn post_json(
    addr: &str,
    path: &str,
    body: &serde_json::Value,
    token: Option<&str>,
) -> Response {
    let bytes = serde_json::to_vec(body).expect("serializing the request body");
    post_raw(addr, path, "application/json", &bytes, token)
}

/// `POST path` with any body and content type (e.g. a body that is not JSON).
pub fn post_raw(
    addr: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    token: Option<&str>,
) -> Response {
    try_request(addr, "POST", path, token, Some((content_type, body)))
        .unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"))
}

/// [`get`] returning I/O and protocol errors instead of panicking.
pub fn try_get(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<Response> {
    try_request(addr, "GET", path, token, None)
}

/// One request on a fresh connection; the whole response read. Any status is `Ok`; errors are
/// failures to connect, send or read (their `ErrorKind` kept, e.g. `ConnectionRefused`).
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<Response> {
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("connection", "close");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let built = |e: ureq::http::Error| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{method} {path}: {e}"),
        )
    };
    let sent = match body {
        Some((content_type, bytes)) => AGENT.run(
            request
                .header("content-type", content_type)
                .body(bytes)
                .map_err(built)?,
        ),
        // No body: none at all for GET and HEAD, `Content-Length: 0` for the other methods.
        None if method == "GET" || method == "HEAD" => AGENT.run(request.body(()).map_err(built)?),
        None => AGENT.run(request.body(Vec::<u8>::new()).map_err(built)?),
    };
    let mut response = sent.map_err(|e| io_error(method, path, e))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| io_error(method, path, e))?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// A ureq error as an I/O error naming the request, keeping the underlying kind.
fn io_error(method: &str, path: &str, error: ureq::Error) -> std::io::Error {
    let kind = match &error {
        ureq::Error::Io(e) => e.kind(),
        ureq::Error::Timeout(_) => std::io::ErrorKind::TimedOut,
        _ => std::io::ErrorKind::InvalidData,
    };
    std::io::Error::new(kind, format!("{method} {path}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves one connection: reads the request head and its `Content-Length` body, writes
    /// `reply` and closes. Returns the address and a handle yielding the request as received.
    fn one_shot(reply: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            let head_end = loop {
                if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                let n = socket.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            };
            let head = String::from_utf8_lossy(&request[..head_end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while request.len() < head_end + length {
                let n = socket.read(&mut buf).unwrap();
                assert!(n > 0, "client closed before the body");
                request.extend_from_slice(&buf[..n]);
            }
            socket.write_all(reply).unwrap();
            String::from_utf8(request).unwrap()
        });
        (addr, server)
    }

    /// The whole client against an in-process socket: what it sends, and a chunked reply.
    #[test]
    fn post_sends_auth_and_body_and_reads_a_chunked_reply() {
        let (addr, server) = one_shot(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"o\r\n6\r\nk\":42}\r\n0\r\n\r\n",
        );
        let body = serde_json::json!({"sql": "SELECT 1"});
        let response = post_json(&addr, "/v1/sql", &body, Some("t0k"));
        let request = server.join().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        assert_eq!(response.json()["ok"], 42);
        let lower = request.to_ascii_lowercase();
        assert!(lower.starts_with("post /v1/sql http/1.1\r\n"), "{request}");
        assert!(lower.contains("authorization: bearer t0k\r\n"), "{request}");
        assert!(lower.contains("content-length: 18\r\n"), "{request}");
        assert!(request.ends_with(r#"{"sql":"SELECT 1"}"#), "{request}");
    }

    #[test]
    fn error_statuses_are_responses_with_their_bodies() {
        let (addr, server) = one_shot(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\n{\"error\":\"no_such\"}\n",
        );
        let response = get(&addr, "/v1/jobs/nope", None);
        let request = server.join().unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.json()["error"], "no_such");
        let lower = request.to_ascii_lowercase();
        assert!(
            lower.starts_with("get /v1/jobs/nope http/1.1\r\n"),
            "{request}"
        );
        assert!(!lower.contains("authorization") && !lower.contains("content-length"));

        let (addr, server) =
            one_shot(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\n\r\nstarting");
        let response = try_get(&addr, "/health", None).unwrap();
        server.join().unwrap();
        assert_eq!((response.status, response.body.as_str()), (503, "starting"));
    }

    #[test]
    fn nothing_listening_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(try_get(&addr, "/health", None).is_err());
    }
}
