//! `sluice bench-serve`: point lookups against a running `sluice serve` (or `sluice demo`) from
//! this process, over keep-alive HTTP/1.1 connections (hyper's client, one connection per
//! worker, one request in flight on each); prints throughput and latency (an HDR histogram of
//! microseconds).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;

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

/// What the connections measured: every request's latency in microseconds, and how many
/// answered with a status other than 200.
struct Tally {
    latencies_us: Histogram<u64>,
    errors: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        // Auto-resizing, three significant figures: 0.1% resolution at any latency.
        let latencies_us = Histogram::new(3)
            .map_err(|e| anyhow::anyhow!("creating the latency histogram: {e:?}"))?;
        Ok(Self {
            latencies_us,
            errors: 0,
        })
    }

    fn record(&mut self, latency: Duration) -> anyhow::Result<()> {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies_us
            .record(us)
            .map_err(|e| anyhow::anyhow!("recording a latency of {us} µs: {e:?}"))
    }

    fn merge(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.latencies_us
            .add(&other.latencies_us)
            .map_err(|e| anyhow::anyhow!("merging latency histograms: {e:?}"))?;
        self.errors += other.errors;
        Ok(())
    }

    /// The latency at quantile `q` in milliseconds (0 when nothing was recorded).
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// The highest latency in milliseconds (0 when nothing was recorded).
    fn max_ms(&self) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.max() as f64 / 1000.0
    }
}

pub fn run(args: &BenchServeArgs) -> anyhow::Result<()> {
    let (tally, elapsed) = measure(args)?;
    print_table(args, &tally, elapsed);
    Ok(())
}

/// Runs the load on the current tokio runtime when called from one (`sluice` calls [`run`] in
/// `spawn_blocking`), else on a runtime of its own; returns the tally and the seconds elapsed.
fn measure(args: &BenchServeArgs) -> anyhow::Result<(Tally, f64)> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(load(args)),
        Err(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the bench runtime")?
            .block_on(load(args)),
    }
}

/// `connections` workers, each on its own keep-alive connection, send lookups back to back for
/// `seconds`; a worker's connection or protocol error fails the bench once the time is up.
async fn load(args: &BenchServeArgs) -> anyhow::Result<(Tally, f64)> {
    let keys: Vec<String> = args
        .keys
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let paths: Vec<String> = if keys.is_empty() {
        vec![path(args, None)]
    } else {
        keys.iter().map(|k| path(args, Some(k))).collect()
    };
    let paths = Arc::new(paths);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections.max(1))
        .map(|i| {
            let (stop, paths, addr, token) = (
                stop.clone(),
                paths.clone(),
                args.addr.clone(),
                args.token.clone(),
            );
            tokio::spawn(async move { worker(i, &addr, token.as_deref(), &paths, &stop).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds.max(1))).await;
    stop.store(true, Ordering::SeqCst);
    let mut tally = Tally::new()?;
    for worker in workers {
        let local = worker
            .await
            .map_err(|_| anyhow::anyhow!("a bench connection panicked"))??;
        tally.merge(&local)?;
    }
    Ok((tally, started.elapsed().as_secs_f64()))
}

/// The lookup's path and query.
fn path(args: &BenchServeArgs, key: Option<&str>) -> String {
    let key = key.map_or(String::new(), |k| format!("&key={k}"));
    format!("/v1/jobs/{}/view?limit={}{key}", args.job, args.limit)
}

async fn worker(
    index: usize,
    addr: &str,
    token: Option<&str>,
    paths: &[String],
    stop: &AtomicBool,
) -> anyhow::Result<Tally> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .with_context(|| format!("starting HTTP/1.1 with {addr}"))?;
    let connection = tokio::spawn(connection);
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut local = Tally::new()?;
    let mut n = index;
    let outcome = async {
        while !stop.load(Ordering::Relaxed) {
            let mut request =
                Request::get(paths[n % paths.len()].as_str()).header(header::HOST, addr);
            if let Some(authorization) = &authorization {
                request = request.header(header::AUTHORIZATION, authorization.as_str());
            }
            let request = request
                .body(Empty::<Bytes>::new())
                .context("building a lookup request")?;
            sender
                .ready()
                .await
                .context("the server closed the connection")?;
            let sent = Instant::now();
            let response = sender
                .send_request(request)
                .await
                .context("sending a lookup")?;
            let status = response.status();
            response
                .into_body()
                .collect()
                .await
                .context("reading a lookup's response")?;
            local.record(sent.elapsed())?;
            if status != StatusCode::OK {
                local.errors += 1;
            }
            n += 1;
        }
        anyhow::Ok(())
    }
    .await;
    drop(sender);
    connection.abort();
    outcome.map(|()| local)
}

fn print_table(args: &BenchServeArgs, tally: &Tally, elapsed: f64) {
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
        tally.quantile_ms(0.5),
        tally.quantile_ms(0.9),
        tally.quantile_ms(0.99),
        tally.max_ms()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn quantiles_come_from_the_histogram_in_milliseconds() {
        let mut tally = Tally::new().unwrap();
        assert_eq!((tally.quantile_ms(0.5), tally.max_ms()), (0.0, 0.0));
        for ms in 1..=100 {
            tally.record(Duration::from_millis(ms)).unwrap();
        }
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(
            close(tally.quantile_ms(0.5), 50.0),
            "{}",
            tally.quantile_ms(0.5)
        );
        assert!(
            close(tally.quantile_ms(0.9), 90.0),
            "{}",
            tally.quantile_ms(0.9)
        );
        assert!(
            close(tally.quantile_ms(0.99), 99.0),
            "{}",
            tally.quantile_ms(0.99)
        );
        assert!(close(tally.max_ms(), 100.0), "{}", tally.max_ms());

        let mut other = Tally::new().unwrap();
        other.record(Duration::from_secs(2)).unwrap();
        other.errors = 3;
        tally.merge(&other).unwrap();
        assert_eq!((tally.latencies_us.len(), tally.errors), (101, 3));
        assert!(close(tally.max_ms(), 2000.0), "{}", tally.max_ms());
    }

    /// Answers requests on one keep-alive connection until the client hangs up: 200 for
    /// `key=eu`, 404 otherwise (with a chunked body). Returns (answered, not found).
    fn serve_connection(listener: &TcpListener) -> (u64, u64) {
        let (mut socket, _) = listener.accept().unwrap();
        let (mut buffer, mut chunk) = (Vec::new(), [0u8; 4096]);
        let (mut answered, mut not_found) = (0, 0);
        loop {
            while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                buffer.drain(..end + 4);
                assert!(
                    head.starts_with("GET /v1/jobs/j/view?limit=3&key="),
                    "{head}"
                );
                assert!(
                    head.to_ascii_lowercase()
                        .contains("authorization: bearer tk"),
                    "{head}"
                );
                let reply: &[u8] = if head.contains("key=eu ") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]"
                } else {
                    not_found += 1;
                    b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                };
                socket.write_all(reply).unwrap();
                answered += 1;
            }
            match socket.read(&mut chunk) {
                Ok(0) | Err(_) => return (answered, not_found),
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The whole load against in-process servers: every answer is counted once, non-200
    /// answers are errors, and each worker keeps to one connection.
    #[test]
    fn load_counts_every_answer_over_keep_alive_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let listener = Arc::new(listener);
            let connections: Vec<_> = (0..2)
                .map(|_| {
                    let listener = listener.clone();
                    std::thread::spawn(move || serve_connection(&listener))
                })
                .collect();
            connections
                .into_iter()
                .map(|c| c.join().unwrap())
                .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
        });
        let args = BenchServeArgs {
            addr,
            job: "j".into(),
            keys: "eu,us".into(),
            limit: 3,
            connections: 2,
            seconds: 1,
            token: Some("tk".into()),
        };
        let (tally, elapsed) = measure(&args).unwrap();
        let (answered, not_found) = server.join().unwrap();
        assert!(elapsed >= 1.0);
        assert!(answered > 0);
        assert_eq!(tally.latencies_us.len(), answered);
        assert_eq!(tally.errors, not_found);
        assert!(not_found > 0 && not_found < answered);
        print_table(&args, &tally, elapsed);
    }
}
