//! Stopping the demo: the parts one after the other (the generator and the serving layer first,
//! the in-process Kafka last, as the others still talk to it), then one final line of what each
//! did. Its own module because a part that failed must still let the others stop before its
//! error is returned.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use anyhow::{Context, anyhow};
use sluice_serving::Server;
use sluice_stream::{RunSummary, SinkSummary};

use super::generator::Counters;
use super::kafka::Kafka;
use super::parts::Running;
use super::screen::{Info, say};

/// Stops every part in order (generator, serving, speed layer, sink, backfills, Kafka) and
/// prints a final line. An error of the speed layer or the sink is returned after that.
pub(super) async fn shutdown(
    server: Server,
    running: Running,
    registry: Option<sluice_registry::RegistryServer>,
    kafka: Kafka,
    info: &Info,
) -> anyhow::Result<ExitCode> {
    say("stopping: generator, serving layer, speed layer, raw-lake sink, backfills, Kafka");
    running.stop.store(true, Ordering::SeqCst);
    server.shutdown().await;
    let daemon = match running.daemon.await {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(e) => Err(anyhow!("the speed layer panicked: {e}")),
    };
    let sink = join(running.sink, "the raw-lake sink")
        .await
        .and_then(|result| result.map_err(anyhow::Error::from));
    let _ = join(running.backfill, "the backfill loop").await;
    let _ = join(running.generator, "the order generator").await;
    if let Some(registry) = registry {
        registry.shutdown().await;
    }
    kafka.stop().await;
    let runs = running.backfills.lock().map(|b| b.runs).unwrap_or_default();
    say(&final_line(
        info,
        &running.counters,
        daemon.as_ref().ok(),
        sink.as_ref().ok(),
        runs,
    ));
    daemon.context("the speed layer failed")?;
    sink.context("the raw-lake sink failed")?;
    Ok(ExitCode::SUCCESS)
}

async fn join<T: Send + 'static>(thread: JoinHandle<T>, what: &str) -> anyhow::Result<T> {
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(anyhow!("{what} panicked")),
    }
}

fn final_line(
    info: &Info,
    counters: &Counters,
    daemon: Option<&RunSummary>,
    sink: Option<&SinkSummary>,
    backfills: u64,
) -> String {
    let (produced, malformed, late) = counters.get();
    let (negative, unknown_status) = counters.failing_checks();
    let mut line = format!(
        "demo stopped after {}s: {produced} events generated ({malformed} malformed, {late} late, \
         {negative} negative amount, {unknown_status} unknown status)",
        info.started.elapsed().as_secs()
    );
    if let Some(d) = daemon {
        line.push_str(&format!(
            "; speed layer: {} micro-batches, {} records, {} dead-lettered, {} late",
            d.batches, d.records_in, d.dlq, d.late
        ));
    }
    if let Some(s) = sink {
        line.push_str(&format!(
            "; raw-lake sink: {} commits, {} rows",
            s.commits, s.rows
        ));
    }
    line.push_str(&format!("; {backfills} backfills"));
    line
}
