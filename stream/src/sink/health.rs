//! What the daemon's `/health` says about its sinks: a sink whose store is unreachable makes
//! the process `degraded` (alive, nothing lost, catching up later), not dead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One sink's state as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SinkState {
    pub name: String,
    /// `ok` or `unavailable`.
    pub state: &'static str,
    /// Partitions paused until the store answers again.
    pub paused_partitions: Vec<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The sinks of one process, shared between their threads and the HTTP endpoint.
#[derive(Clone, Default)]
pub struct SinkHealth {
    sinks: Arc<Mutex<BTreeMap<String, SinkState>>>,
}

/// The body of `GET /health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthReport {
    /// `ok`, or `degraded` while a sink's store is unavailable.
    pub status: &'static str,
    pub sinks: Vec<SinkState>,
}

impl SinkHealth {
    pub fn new() -> SinkHealth {
        SinkHealth::default()
    }

    pub(crate) fn ok(&self, name: &str) {
        self.set(SinkState {
            name: name.to_string(),
            state: "ok",
            paused_partitions: Vec::new(),
            error: None,
        });
    }

    pub(crate) fn unavailable(&self, name: &str, paused: Vec<i32>, error: String) {
        self.set(SinkState {
            name: name.to_string(),
            state: "unavailable",
            paused_partitions: paused,
            error: Some(error),
        });
    }

    fn set(&self, state: SinkState) {
        if let Ok(mut sinks) = self.sinks.lock() {
            sinks.insert(state.name.clone(), state);
        }
    }

    pub fn report(&self) -> HealthReport {
        let sinks: Vec<SinkState> = self
            .sinks
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        let degraded = sinks.iter().any(|s| s.state != "ok");
        HealthReport {
            status: if degraded { "degraded" } else { "ok" },
            sinks,
        }
    }
}
