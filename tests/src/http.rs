//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream` for the end-to-end tests and
//! benches: one request per connection (`Connection: close`), the response read to EOF, bodies
//! framed by `Content-Length` or chunked transfer encoding. No dependency beyond `serde_json`.
//! Tests want failures loudly, so [`get`] and [`post_json`] panic on I/O errors; the `try_`
//! variants return them (for polling a server that may not be up yet).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long a request may take to connect, and to send or receive any part of the exchange.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A response: status code, headers (names as sent) and body as text (lossy UTF-8).
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
        header_value(&self.headers, name)
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

/// One request on a fresh connection; the response read to EOF and parsed.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<Response> {
    let target = resolve(addr)?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(&request_bytes(addr, method, path, token, body))?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).map_err(|message| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{method} {path}: {message}"),
        )
    })
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{addr}` resolves to no address"),
        )
    })
}

/// The request as sent: request line, headers, blank line, body.
pub fn request_bytes(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sluice-e2e\r\nAccept: */*\r\nConnection: close\r\n"
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match body {
        Some((content_type, bytes)) => head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        )),
        None if method != "GET" && method != "HEAD" => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if let Some((_, bytes)) = body {
        out.extend_from_slice(bytes);
    }
    out
}

/// Parses a whole response as read to EOF: skips interim `1xx` responses, then decodes the
/// body by `Transfer-Encoding: chunked`, else `Content-Length`, else everything to EOF.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let mut rest = raw;
    loop {
        let end = find(rest, b"\r\n\r\n").ok_or_else(|| {
            format!(
                "no end of headers in {} bytes: {:?}",
                rest.len(),
                String::from_utf8_lossy(&rest[..rest.len().min(200)])
            )
        })?;
        let head = std::str::from_utf8(&rest[..end])
            .map_err(|e| format!("response headers are not UTF-8: {e}"))?;
        let body = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = parse_status_line(status_line)?;
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("malformed header line {line:?}"))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let chunked = header_value(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let bytes = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            decode_chunked(body)?
        } else if let Some(length) = header_value(&headers, "content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| format!("bad Content-Length {length:?}"))?;
            if body.len() < length {
                return Err(format!(
                    "body truncated: Content-Length {length}, got {} bytes",
                    body.len()
                ));
            }
            body[..length].to_vec()
        } else {
            body.to_vec()
        };
        return Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {line:?}"));
    }
    parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or_else(|| format!("bad status code in {line:?}"))
}

/// Decodes a chunked body: `<hex size>[;ext]\r\n<data>\r\n` ... `0\r\n[trailers]\r\n`.
pub fn decode_chunked(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")
            .ok_or_else(|| "chunked body: missing chunk-size line".to_string())?;
        let line = std::str::from_utf8(&body[..line_end])
            .map_err(|_| "chunked body: chunk-size line is not text".to_string())?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunked body: bad chunk size {line:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            // Trailers (ignored) up to the final blank line; tolerate a missing one at EOF.
            return Ok(out);
        }
        if body.len() < size {
            return Err(format!(
                "chunked body truncated: chunk of {size} bytes, {} left",
                body.len()
            ));
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size..];
        match body.strip_prefix(b"\r\n") {
            Some(after) => body = after,
            None => return Err("chunked body: chunk not followed by CRLF".to_string()),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"a\":[1,2]}";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.body, r#"{"a":[1,2]}"#);
        assert_eq!(r.json()["a"][1], 2);
    }

    #[test]
    fn content_length_ignores_bytes_after_the_body_and_rejects_short_bodies() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nokEXTRA";
        let r = parse_response(raw).unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "ok"));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert!(parse_response(short).unwrap_err().contains("truncated"));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4\r\n{\"er\r\nA;name=x\r\nror\":\"bad_\r\n5\r\nsql\"}\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body, r#"{"error":"bad_sql"}"#);
        assert_eq!(r.json()["error"], "bad_sql");
    }

    #[test]
    fn chunked_wins_over_content_length_and_handles_uppercase_hex() {
        let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1A\r\n".to_vec();
        raw.extend_from_slice(&[b'x'; 26]);
        raw.extend_from_slice(b"\r\n0\r\n"); // no final blank line: tolerated at EOF
        let r = parse_response(&raw).unwrap();
        assert_eq!(r.body, "x".repeat(26));
    }

    #[test]
    fn chunked_errors_are_reported() {
        assert!(decode_chunked(b"zz\r\nab\r\n0\r\n\r\n").is_err());
        assert!(
            decode_chunked(b"10\r\nshort\r\n")
                .unwrap_err()
                .contains("truncated")
        );
        assert!(decode_chunked(b"2\r\nabX\r\n0\r\n\r\n").is_err());
        assert_eq!(decode_chunked(b"0\r\n\r\n").unwrap(), b"");
    }

    #[test]
    fn body_to_eof_without_framing_interim_responses_and_no_content() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 503 Service Unavailable\r\n\r\nstarting";
        let r = parse_response(raw).unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "starting"));
        let none = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((none.status, none.body.as_str()), (204, ""));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
    }

    #[test]
    fn request_has_auth_length_and_close() {
        let text = String::from_utf8(request_bytes(
            "127.0.0.1:1",
            "POST",
            "/v1/sql",
            Some("secret"),
            Some(("application/json", b"{}")),
        ))
        .unwrap();
        assert!(text.starts_with("POST /v1/sql HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
        assert!(text.contains("Authorization: Bearer secret\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
        let get = String::from_utf8(request_bytes("h:1", "GET", "/health", None, None)).unwrap();
        assert!(!get.contains("Authorization") && !get.contains("Content-Length"));
    }

    /// The whole client against a one-shot in-process socket (no real server): what it sends,
    /// and a chunked reply read to EOF.
    #[test]
    fn round_trip_over_a_local_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // Read the head, then the announced body.
            while find(&request, b"\r\n\r\n").is_none() {
                let n = socket.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            let head_end = find(&request, b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&request[..head_end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length sent")
                .trim()
                .parse()
                .unwrap();
            while request.len() < head_end + length {
                let n = socket.read(&mut buf).unwrap();
                assert!(n > 0);
                request.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"o\r\n6\r\nk\":42}\r\n0\r\n\r\n")
                .unwrap();
            String::from_utf8(request).unwrap()
        });
        let body = serde_json::json!({"sql": "SELECT 1"});
        let response = post_json(&addr, "/v1/sql", &body, Some("t0k"));
        let request = server.join().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["ok"], 42);
        assert!(
            request.contains("Authorization: Bearer t0k\r\n"),
            "{request}"
        );
        assert!(request.ends_with(r#"{"sql":"SELECT 1"}"#), "{request}");
    }
}
