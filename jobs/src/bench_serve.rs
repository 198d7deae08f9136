//! `sluice bench-serve`: point lookups against a running `sluice serve` (or `sluice demo`) from
//! this process, over keep-alive HTTP/1.1 connections; prints throughput and latency.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct BenchServeArgs {
    /// The server's address, e.g. 127.0.0.1:8080.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// The job to look up.
    #[arg(long, default_value = "orders_demo")]
    pub job: String,
    /// View keys to cycle through, comma-separated (empty: whole-view reads).
    #[arg(long, default_value = "eu,us,apac")]
    pub keys: String,
    /// Rows per lookup.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Bearer token, when the server wants one.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
}

pub fn run(args: &BenchServeArgs) -> anyhow::Result<()> {
    let keys: Vec<String> = args
        .keys
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let requests: Vec<String> = if keys.is_empty() {
        vec![request(args, None)]
    } else {
        keys.iter().map(|k| request(args, Some(k))).collect()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections.max(1))
        .map(|i| {
            let (stop, tally, requests, addr) = (
                stop.clone(),
                tally.clone(),
                requests.clone(),
                args.addr.clone(),
            );
            std::thread::spawn(move || worker(i, &addr, &requests, &stop, &tally))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds.max(1)));
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a bench connection panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut tally = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("tally lock poisoned"))?;
    print_table(args, &mut tally, elapsed);
    Ok(())
}

fn request(args: &BenchServeArgs, key: Option<&str>) -> String {
    let key = key.map_or(String::new(), |k| format!("&key={k}"));
    let auth = args
        .token
        .as_ref()
        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "GET /v1/jobs/{}/view?limit={}{key} HTTP/1.1\r\nHost: {}\r\n{auth}\r\n",
        args.job, args.limit, args.addr
    )
}

fn worker(
    index: usize,
    addr: &str,
    requests: &[String],
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut local = Tally::default();
    let mut n = index;
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        writer.write_all(requests[n % requests.len()].as_bytes())?;
        let status = read_response(&mut reader)?;
        local.latencies_us.push(sent.elapsed().as_micros() as u64);
        if status != 200 {
            local.errors += 1;
        }
        n += 1;
    }
    let mut shared = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("tally lock poisoned"))?;
    shared.latencies_us.extend(local.latencies_us);
    shared.errors += local.errors;
    Ok(())
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
fn read_response(reader: &mut impl BufRead) -> anyhow::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            anyhow::bail!("the server closed the connection");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().context("Content-Length")?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

fn print_table(args: &BenchServeArgs, tally: &mut Tally, elapsed: f64) {
    tally.latencies_us.sort_unstable();
    let n = tally.latencies_us.len();
    println!(
        "GET /v1/jobs/{}/view (limit {}, keys {:?}), {} connections, {:.1}s",
        args.job, args.limit, args.keys, args.connections, elapsed
    );
    println!("| requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
        tally.errors,
        n as f64 / elapsed,
        percentile(&tally.latencies_us, 0.5),
        percentile(&tally.latencies_us, 0.9),
        percentile(&tally.latencies_us, 0.99),
        tally.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_by_content_length_back_to_back() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\n{ }";
        let mut reader = BufReader::new(&wire[..]);
        assert_eq!(read_response(&mut reader).unwrap(), 200);
        assert_eq!(read_response(&mut reader).unwrap(), 404);
        assert!(read_response(&mut reader).is_err());
    }

    #[test]
    fn percentiles_pick_ranks() {
        let values: Vec<u64> = (1..=100).map(|v| v * 1000).collect();
        assert_eq!(percentile(&values, 0.5), 51.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
    }
}
