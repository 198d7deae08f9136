//! Stopping on SIGINT or SIGTERM, for every long-running subcommand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, listened for from creation on: create it before announcing an address,
/// so a signal sent right after the announcement stops the process cleanly instead of
/// killing it.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    pub fn new() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Returns when either signal arrives.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// A flag set when either signal arrives (for loops that poll rather than await).
    pub fn into_flag(mut self) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        tokio::spawn(async move {
            self.recv().await;
            tracing::info!("stopping: finishing the current work");
            flag.store(true, Ordering::SeqCst);
        });
        stop
    }
}
