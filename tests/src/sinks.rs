//! What the sink tests ask a running daemon: its `/health` verdict on one sink, the sink's
//! metrics, and whether its memory stayed within the bound it logged.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kafka::memory_kib;
use crate::postgres::{health, metric, sink_health};

/// `/health` at `addr` says `status`, and sink `sink`'s entry says `state`: the entry, or why not.
pub fn health_says(addr: &str, sink: &str, status: &str, state: &str) -> Result<Value, String> {
    let health = health(addr)?;
    let entry =
        sink_health(&health, sink).ok_or_else(|| format!("no sink `{sink}` in {health}"))?;
    if health["status"] != status || entry["state"] != state {
        return Err(health.to_string());
    }
    Ok(entry.clone())
}

/// The partitions a `/health` sink entry says are paused.
pub fn paused(entry: &Value) -> usize {
    entry["paused_partitions"].as_array().map_or(0, Vec::len)
}

/// The value of metric `name` of `job`'s sink `sink` on the daemon's `/metrics`.
pub fn sink_metric(addr: &str, name: &str, job: &str, sink: &str) -> Option<f64> {
    let text = crate::http::get(addr, "/metrics", None).body;
    metric(&text, name, &[("job", job), ("sink", sink)])
}

/// Panics when process `pid`'s peak RSS grew more than `bound_mib` over `idle_kib`.
pub fn assert_grew_within(pid: u32, idle_kib: u64, bound_mib: u64) {
    let (_, peak_kib) = memory_kib(pid);
    let grown_mib = peak_kib.saturating_sub(idle_kib) / 1024;
    eprintln!(
        "idle {} MiB, peak {} MiB, grown {grown_mib} MiB, bound {bound_mib} MiB",
        idle_kib / 1024,
        peak_kib / 1024
    );
    assert!(
        grown_mib <= bound_mib,
        "memory grew by {grown_mib} MiB over the idle {} MiB, more than the logged bound of {bound_mib} MiB",
        idle_kib / 1024
    );
}

/// Polls `check` every 250 ms until it passes; panics after `limit` with `what` and the last
/// reason it gave.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// How long a sink's store stays away in the outage tests.
pub const OUTAGE: Duration = Duration::from_secs(30);

/// Takes sink `sink` of `job`'s daemon (metrics and `/health` at `addr`) through an outage of
/// its store: `reachable(false)` makes the store unreachable, `reachable(true)` brings it back
/// after [`OUTAGE`].
/// Checks that meanwhile `/health` says degraded with the sink unavailable and its partitions
/// paused, the sink's metrics say so too, and the speed layer goes on (`emitted`, what it has
/// written so far, grows); and that afterwards the sink is back with nothing paused.
pub fn ride_out_outage(
    (addr, sink, job): (&str, &str, &str),
    mut reachable: impl FnMut(bool),
    emitted: impl Fn() -> usize,
) {
    let emitted_before = emitted();
    reachable(false);
    let outage = Instant::now();
    eprintln!("{sink}'s store cut off with {emitted_before} records emitted");
    eventually(
        OUTAGE,
        "/health to say degraded, the sink unavailable with paused partitions",
        || {
            let entry = health_says(addr, sink, "degraded", "unavailable")?;
            if paused(&entry) == 0 || entry["error"].as_str().is_none_or(str::is_empty) {
                return Err(entry.to_string());
            }
            Ok(())
        },
    );
    assert_eq!(
        sink_metric(addr, "sluice_sink_up", job, sink),
        Some(0.0),
        "sluice_sink_up during the outage"
    );
    assert!(
        sink_metric(addr, "sluice_sink_paused_partitions", job, sink).is_some_and(|n| n > 0.0),
        "sluice_sink_paused_partitions during the outage"
    );
    std::thread::sleep(OUTAGE.saturating_sub(outage.elapsed()));
    if let Err(e) = health_says(addr, sink, "degraded", "unavailable") {
        panic!("/health must say degraded until the outage ends: {e}");
    }
    let emitted_during = emitted();
    assert!(
        emitted_during > emitted_before,
        "the speed layer goes on during the outage ({emitted_before} records before, {emitted_during} after)"
    );
    reachable(true);
    eprintln!("{sink}'s store is back after {:?}", outage.elapsed());
    eventually(
        Duration::from_secs(60),
        "/health to say ok after the outage",
        || {
            let entry = health_says(addr, sink, "ok", "ok")?;
            match paused(&entry) {
                0 => Ok(()),
                _ => Err(entry.to_string()),
            }
        },
    );
}
