//! What the sink tests ask a running daemon: its `/health` verdict on one sink, the sink's
//! metrics, and whether its memory stayed within the bound it logged.

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
