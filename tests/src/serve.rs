//! The serving side of the end-to-end harness: `sluice serve` and `sluice demo` child processes
//! whose HTTP address is read from their stdout, polling helpers for the serving API, and
//! one-shot `sluice` commands (`lake load`, `backfill`, `view`, `verify`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http;
use crate::kafka::{Daemon, bootstrap, sluice_bin};

/// How long a child may take to print its address.
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Where [`spawn_serve`] logs for `lake`: `<lake>.serve.log` (stderr and stdout, appended).
pub fn serve_log(lake: &Path) -> PathBuf {
    PathBuf::from(format!("{}.serve.log", lake.display()))
}

/// The tail of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `sluice serve --job F.. --brokers <run's broker> --lake L --bind 127.0.0.1:0 <extra>`,
/// returning the daemon and its `host:port`, read from the stdout line
/// `listening on http://ADDR`. A thread keeps draining stdout (copied to [`serve_log`]).
pub fn spawn_serve(job_files: &[&Path], lake: &Path, extra: &[&str]) -> (Daemon, String) {
    let mut command = Command::new(sluice_bin());
    command.arg("serve");
    for file in job_files {
        command.arg("--job").arg(file);
    }
    command
        .arg("--brokers")
        .arg(bootstrap())
        .arg("--lake")
        .arg(lake)
        .args(["--bind", "127.0.0.1:0"])
        .args(extra);
    spawn_with_address(command, &serve_log(lake), "sluice serve", listening_address)
}

/// `sluice demo --dir DIR --bind 127.0.0.1:0 <extra>` on its in-process mock cluster,
/// returning the daemon and the `host:port` of the first `http://` URL it prints on stdout.
/// Logs (stderr and stdout) go to `<dir>.log`.
pub fn spawn_demo(dir: &Path, extra: &[&str]) -> (Daemon, String) {
    let mut command = Command::new(sluice_bin());
    command
        .arg("demo")
        .arg("--dir")
        .arg(dir)
        .args(["--bind", "127.0.0.1:0"])
        .args(extra)
        .env_remove("SLUICE_BROKERS");
    let log = PathBuf::from(format!("{}.log", dir.display()));
    spawn_with_address(command, &log, "sluice demo", first_http_address)
}

/// Spawns `command` (stdout piped, stderr to `log`), waits for the first stdout line that
/// `find` extracts an address from, and keeps draining stdout into `log` afterwards.
pub fn spawn_with_address(
    mut command: Command,
    log: &Path,
    what: &str,
    find: fn(&str) -> Option<String>,
) -> (Daemon, String) {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
    let mut copy = stderr.try_clone().expect("log file handle");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what} ({}): {e}", sluice_bin().display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut daemon = Daemon(child);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut sent = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = write!(copy, "[stdout] {line}");
                    if !sent && let Some(address) = find(&strip_ansi(&line)) {
                        let _ = sender.send(address);
                        sent = true;
                    }
                }
            }
        }
    });
    match receiver.recv_timeout(ADDRESS_TIMEOUT) {
        Ok(address) => (daemon, address),
        Err(e) => {
            let status = daemon.0.try_wait();
            daemon.kill();
            panic!(
                "{what} printed no address ({e:?}; exit status {status:?}); its log {}:\n{}",
                log.display(),
                log_tail(log, 60)
            )
        }
    }
}

/// `ADDR` of a line `listening on http://ADDR[/...]`.
pub fn listening_address(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("listening on http://")?;
    let address: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '/')
        .collect();
    address.contains(':').then_some(address)
}

/// `host:port` of the first `http://host:port` anywhere in `line`.
pub fn first_http_address(line: &str) -> Option<String> {
    let start = line.find("http://")? + "http://".len();
    let address: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'))
        .collect();
    let port = address.rsplit_once(':')?.1;
    (!port.is_empty() && port.chars().all(|c| c.is_ascii_digit())).then_some(address)
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Polls `GET /health` until 200, or panics after `limit` with the last answer.
pub fn wait_healthy(addr: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let last = match http::try_get(addr, "/health", None) {
            Ok(r) if r.status == 200 => return r.json(),
            Ok(r) => format!("{} {}", r.status, r.body),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "/health not 200 within {limit:?}; last answer: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET /v1/jobs/{job}` (200 asserted).
pub fn job_status(addr: &str, job: &str, token: Option<&str>) -> Value {
    let r = http::get(addr, &format!("/v1/jobs/{job}"), token);
    assert_eq!(r.status, 200, "GET /v1/jobs/{job}: {}", r.body);
    r.json()
}

/// Polls the job's status until `check` holds, or panics after `limit` with the last status.
pub fn wait_status(
    addr: &str,
    job: &str,
    token: Option<&str>,
    limit: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = job_status(addr, job, token);
        if check(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last status of {job}: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the job is ready and serving has read everything: `speed_lag_records == 0`
/// and the speed daemon's `source_lag_records == 0`.
pub fn wait_caught_up(addr: &str, job: &str, token: Option<&str>, limit: Duration) -> Value {
    wait_status(
        addr,
        job,
        token,
        limit,
        "the speed daemon and serving to catch up",
        |s| {
            s["ready"] == Value::Bool(true)
                && s["speed_lag_records"].as_i64() == Some(0)
                && s["source_lag_records"].as_i64() == Some(0)
        },
    )
}

/// Runs `sluice <args>` to completion.
pub fn sluice(args: &[&str]) -> Output {
    Command::new(sluice_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running sluice {}: {e}", args.join(" ")))
}

/// Runs `sluice <args>`, asserts exit 0 and returns its stdout.
pub fn sluice_ok(args: &[&str]) -> String {
    let output = sluice(args);
    assert!(
        output.status.success(),
        "sluice {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_stdout_lines() {
        assert_eq!(
            listening_address("listening on http://127.0.0.1:43123\n").as_deref(),
            Some("127.0.0.1:43123")
        );
        assert_eq!(
            listening_address("listening on http://127.0.0.1:8080/ (2 jobs)").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(listening_address("starting on http://127.0.0.1:1"), None);
        assert_eq!(
            first_http_address("  dashboard: http://127.0.0.1:39999/ (Ctrl-C to stop)").as_deref(),
            Some("127.0.0.1:39999")
        );
        assert_eq!(
            first_http_address(&strip_ansi(
                "\u{1b}[1mopen\u{1b}[0m http://127.0.0.1:5000\u{1b}[0m"
            ))
            .as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(first_http_address("see http://example.invalid/docs"), None);
        assert_eq!(first_http_address("no url here"), None);
    }
}
