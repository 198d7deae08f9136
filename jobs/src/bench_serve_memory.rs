//! `sluice bench-stream --restore`, second table: what a `sluice serve` process holds against
//! how much history `<job>.speed` has seen. Its speed view is the changelog's live rows in
//! memory, so serving memory is bounded by open state only once the speed layer tombstones the
//! rows the batch view covers; this measures it on the restore bench's histories.
//!
//! For each history, the real `sluice serve` (this executable, a process of its own so that
//! its memory is its own) is measured twice, once its views are loaded (`VmRSS` and `VmHWM`,
//! the peak, from `/proc/<pid>/status`):
//! - before the batch view covers the history: the speed view holds a row per window and
//!   partition of it;
//! - after: the history is loaded into the lake as a JSON-lines file (loaded whole, so the raw
//!   table is complete and the backfill is not clamped), backfilled in this process over all
//!   its minutes, and the daemon runs again with tombstones on until it has tombstoned every
//!   row (all windows expired: the pushers closed them); the speed view then holds the open
//!   windows only (none), and the batch view holds the history as finalized partial rows.
//!
//! The rows are the changelog's live keys, what a follower that read it to its end holds,
//! checked against the server's own `partial_rows` before. The server reads `<job>.speed` from
//! its start, so until compaction removes the tombstoned rows it reads their upserts before
//! their tombstones: the peak after still includes them.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rdkafka::Offset;
use rdkafka::consumer::BaseConsumer;
use serde_json::Value;
use sluice_batch::{BackfillRequest, backfill, load_jsonl};
use sluice_core::lake::TableLocation;
use sluice_core::speed::is_reserved_key;
use sluice_core::topics::Topics;
use sluice_core::{Lake, Pipeline};
use sluice_kafka::ReadError;
use sluice_stream::{BatchCutoff, StreamConfig, StreamDaemon, StreamMetrics};

use crate::bench_restore::{History, topic_records};
use crate::bench_stream::StreamBenchArgs;

/// How long `sluice serve` may take to print its address.
const ADDRESS_LIMIT: Duration = Duration::from_secs(60);
/// How long `sluice serve` may take to load its views (the whole changelog of the largest
/// history, and the batch view).
const LOAD_LIMIT: Duration = Duration::from_secs(600);
/// How long the daemon may take to tombstone the covered history.
const TOMBSTONE_LIMIT: Duration = Duration::from_secs(600);
/// How often the tombstoning daemon reads the batch view's cutoff (`sluice stream
/// --batch-poll`): short, the bench waits on it.
const CUTOFF_POLL: Duration = Duration::from_millis(200);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading one partition of the changelog may take.
const READ_LIMIT: Duration = Duration::from_secs(600);

/// What one `sluice serve` held once its views were loaded.
pub struct ServeFootprint {
    /// Live rows of `<job>.speed`: what its speed view holds.
    pub speed_rows: usize,
    /// Partial-state rows of its batch view.
    pub batch_rows: u64,
    pub rss_kib: u64,
    /// `VmHWM`: the most it held at any moment, loading included.
    pub peak_kib: u64,
}

pub struct ServeMemoryRow {
    pub events: usize,
    /// Records of `<job>.speed` before the tombstones.
    pub changelog_records: i64,
    pub before: ServeFootprint,
    pub after: ServeFootprint,
}

/// Serving memory before and after the batch view covers `history` (see the module docs).
/// Leaves the history tombstoned in `<job>.speed`.
pub(crate) fn measure(args: &StreamBenchArgs, history: &History) -> anyhow::Result<ServeMemoryRow> {
    let runtime = BenchRuntime::get()?;
    let speed_topic = Topics::for_job(&history.job).speed;
    let changelog_records = topic_records(&args.brokers, &speed_topic, args.partitions)?;
    let rows_before = live_rows(args, &speed_topic)?;
    let before = footprint(args, history, &runtime, "before", rows_before, |status| {
        status["partial_rows"]["speed"].as_u64() == Some(rows_before as u64)
    })?;
    let cutoff = cover_with_batch_view(history, &runtime)?;
    tombstone_covered(args, history, &runtime, rows_before)?;
    let rows_after = live_rows(args, &speed_topic)?;
    let after = footprint(args, history, &runtime, "after", rows_after, |status| {
        status["cutoff_us"].as_i64() == Some(cutoff)
    })?;
    Ok(ServeMemoryRow {
        events: history.events,
        changelog_records,
        before,
        after,
    })
}

pub(crate) fn print_table(rows: &[ServeMemoryRow]) {
    println!(
        "sluice serve, before and after the batch view covers the history (rows: live rows of <job>.speed, what its speed view holds)"
    );
    println!(
        "{:>10} {:>18} {:>12} {:>15} {:>16} {:>11} {:>17} {:>14} {:>15}",
        "events",
        "changelog records",
        "rows before",
        "RSS MiB before",
        "peak MiB before",
        "rows after",
        "batch rows after",
        "RSS MiB after",
        "peak MiB after"
    );
    for row in rows {
        let (before, after) = (&row.before, &row.after);
        println!(
            "{:>10} {:>18} {:>12} {:>15.1} {:>16.1} {:>11} {:>17} {:>14.1} {:>15.1}",
            row.events,
            row.changelog_records,
            before.speed_rows,
            mib(before.rss_kib),
            mib(before.peak_kib),
            after.speed_rows,
            after.batch_rows,
            mib(after.rss_kib),
            mib(after.peak_kib)
        );
    }
    println!(
        "(after: serve reads <job>.speed from its start, so until compaction removes the tombstoned rows its peak includes reading them)"
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Starts `sluice serve` on the history, waits until it is ready and `loaded` holds for its
/// job status, and reads its memory; `speed_rows` is what its speed view holds then.
fn footprint(
    args: &StreamBenchArgs,
    history: &History,
    runtime: &BenchRuntime,
    tag: &str,
    speed_rows: usize,
    loaded: impl Fn(&Value) -> bool,
) -> anyhow::Result<ServeFootprint> {
    let serve = Serve::spawn(args, history, tag)?;
    let path = format!("/v1/jobs/{}", history.job.name());
    let mut status = Value::Null;
    wait_until("sluice serve to load its views", LOAD_LIMIT, || {
        status = runtime.handle.block_on(get_json(&serve.addr, &path))?;
        Ok(status["ready"].as_bool() == Some(true) && loaded(&status))
    })
    .with_context(|| {
        format!(
            "sluice serve ({tag}); its last status: {status}\nits log:\n{}",
            log_tail(&serve.log)
        )
    })?;
    let (rss_kib, peak_kib) = memory_kib(serve.child.id())?;
    Ok(ServeFootprint {
        speed_rows,
        batch_rows: status["partial_rows"]["batch"].as_u64().unwrap_or(0),
        rss_kib,
        peak_kib,
    })
}

/// Loads the history into its lake and backfills every minute of it: returns the cutoff, the
/// end of the newest order's minute.
fn cover_with_batch_view(history: &History, runtime: &BenchRuntime) -> anyhow::Result<i64> {
    let lake = lake_of(history)?;
    let job = &history.job;
    let loaded = runtime
        .handle
        .block_on(load_jsonl(job, &lake, &history.jsonl))?;
    anyhow::ensure!(
        loaded.rejected.is_empty(),
        "lake load rejected {} of the history's records",
        loaded.rejected.len()
    );
    // From the first event (a backfill that starts the history sets the cutoff); the end is
    // rounded up to the bucket, so the newest order's minute is covered.
    let request = BackfillRequest {
        to: Some(history.last_order_ms * 1000 + 1),
        ..BackfillRequest::default()
    };
    let report = runtime
        .handle
        .block_on(backfill(job, &lake, None, request))?;
    report
        .cutoff_us
        .context("the backfill of the history moved no cutoff")
}

fn lake_of(history: &History) -> anyhow::Result<Lake> {
    let root = history.lake();
    let root = root
        .to_str()
        .context("the bench's temporary directory is not UTF-8")?;
    Ok(Lake::resolve(Some(root)))
}

/// Runs the daemon on its kept state with tombstones on, as `sluice stream --tombstone-grace 0s
/// --batch-poll 200ms` would (no grace: no other server has to load the cutoff first), until
/// it has tombstoned `rows` rows; then stops it cleanly.
fn tombstone_covered(
    args: &StreamBenchArgs,
    history: &History,
    runtime: &BenchRuntime,
    rows: usize,
) -> anyhow::Result<()> {
    let job = &history.job;
    let view = TableLocation::new(lake_of(history)?.view_table(job));
    let stop = Arc::new(AtomicBool::new(false));
    let cutoff = BatchCutoff::new(Duration::ZERO);
    runtime.handle.spawn(cutoff.clone().watch(
        job.name().to_string(),
        view,
        CUTOFF_POLL,
        stop.clone(),
    ));
    let metrics = StreamMetrics::new();
    let tombstoned = metrics.speed_tombstones.with_label_values(&[job.name()]);
    // The state directory of the restore bench's daemons, so this one resumes from their
    // checkpoint (and fences them by the same transactional id).
    let config = StreamConfig::new(job.name(), &args.brokers)
        .with_state_dir(job.name(), history.state().join(job.name()));
    let pipeline = Arc::new(Pipeline::compile(job, None)?);
    let daemon =
        StreamDaemon::new(job.clone(), pipeline, config, metrics).with_batch_cutoff(cutoff);
    let flag = stop.clone();
    let running = std::thread::spawn(move || daemon.run(flag));
    let waited = wait_until(
        "the daemon to tombstone the history",
        TOMBSTONE_LIMIT,
        || Ok(tombstoned.get() >= rows as u64),
    );
    stop.store(true, Ordering::SeqCst);
    running
        .join()
        .map_err(|_| anyhow::anyhow!("daemon panicked"))??;
    waited.with_context(|| format!("{} of {rows} rows tombstoned", tombstoned.get()))
}

/// The live keys of `topic` (a `<job>.speed`; reserved records left out), counted per
/// partition from its start to its end: what a follower that read it to its end holds.
fn live_rows(args: &StreamBenchArgs, topic: &str) -> anyhow::Result<usize> {
    let group = format!("{topic}.bench-rows");
    let consumer: BaseConsumer =
        sluice_kafka::reader_config(&args.brokers, &[], &group).create()?;
    let mut total = 0;
    for partition in 0..args.partitions {
        let mut live: HashSet<Vec<u8>> = HashSet::new();
        sluice_kafka::read_partition(
            &consumer,
            (topic, partition, Offset::Beginning),
            (READ_LIMIT, REQUEST_TIMEOUT),
            (10_000, 16 << 20),
            |chunk| {
                for (key, value) in chunk {
                    if is_reserved_key(&key) {
                        continue;
                    }
                    if value.is_some() {
                        live.insert(key);
                    } else {
                        live.remove(&key);
                    }
                }
                Ok::<(), Infallible>(())
            },
        )
        .map_err(|e| match e {
            ReadError::Kafka(e) => anyhow::Error::new(e),
            ReadError::Apply(never) => match never {},
        })?;
        total += live.len();
    }
    Ok(total)
}

/// Polls `done` every 200 ms until it holds; fails naming `what` after `limit`.
fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done()? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The runtime the lake work, the status requests and the cutoff watcher run on: `sluice`'s
/// own when the bench runs inside it (`sluice` calls it in `spawn_blocking`), else one of its
/// own.
struct BenchRuntime {
    handle: tokio::runtime::Handle,
    _owned: Option<tokio::runtime::Runtime>,
}

impl BenchRuntime {
    fn get() -> anyhow::Result<BenchRuntime> {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            return Ok(BenchRuntime {
                handle,
                _owned: None,
            });
        }
        let owned = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the bench runtime")?;
        Ok(BenchRuntime {
            handle: owned.handle().clone(),
            _owned: Some(owned),
        })
    }
}

/// `GET path` from `addr` on a connection of its own; the body of a 200 as JSON.
async fn get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .with_context(|| format!("starting HTTP/1.1 with {addr}"))?;
    let connection = tokio::spawn(connection);
    let answer = send_get(&mut sender, addr, path).await;
    connection.abort();
    answer
}

async fn send_get(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    addr: &str,
    path: &str,
) -> anyhow::Result<Value> {
    let request = Request::get(path)
        .header(header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .context("building a status request")?;
    sender
        .ready()
        .await
        .context("the server closed the connection")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("GET {path}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to GET {path}"))?
        .to_bytes();
    anyhow::ensure!(
        status == StatusCode::OK,
        "GET {path}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).with_context(|| format!("the answer to GET {path}"))
}

/// A `sluice serve` child process, killed when dropped (its figures are read by then).
struct Serve {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Serve {
    /// `sluice serve` (this executable) for the history's job on its lake and the bench's
    /// broker, on a free port; returns once it has printed the address it listens on.
    fn spawn(args: &StreamBenchArgs, history: &History, tag: &str) -> anyhow::Result<Serve> {
        let exe = std::env::current_exe().context("locating the sluice executable")?;
        let log = history.dir().join(format!("serve-{tag}.log"));
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--job")
            .arg(&history.job_file)
            .arg("--brokers")
            .arg(&args.brokers)
            .arg("--lake")
            .arg(history.lake())
            .args(["--bind", "127.0.0.1:0"])
            // The status requests carry no token.
            .env_remove("SLUICE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning sluice serve")?;
        let stdout = child.stdout.take();
        let mut serve = Serve {
            child,
            addr: String::new(),
            log,
        };
        let stdout = stdout.context("sluice serve has no stdout pipe")?;
        serve.addr = listening_address(stdout).with_context(|| {
            format!(
                "sluice serve ({tag}) printed no address; its log:\n{}",
                log_tail(&serve.log)
            )
        })?;
        Ok(serve)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `ADDR` of the `listening on http://ADDR` line `sluice serve` prints; a thread keeps
/// reading its stdout afterwards, so it never blocks on a full pipe.
fn listening_address(stdout: ChildStdout) -> anyhow::Result<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                let _ = sender.send(addr.trim_end_matches('/').to_string());
            }
        }
    });
    receiver
        .recv_timeout(ADDRESS_LIMIT)
        .context("waiting for the address it listens on")
}

/// The last lines of a log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `VmRSS` and `VmHWM` (the peak) of process `pid`, in KiB.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
