//! The sampler: a task started with the server that, every [`SAMPLE_EVERY`], reads each
//! served job's status and asks Kafka about its topics, and records one sample per job in the
//! [`Dashboard`]. The serving layer itself keeps no history; this is the dashboard's. It also
//! hands each job the count of `<job>.dlq` by data-quality check, which the job's status reports
//! (`checks[].speed_quarantined`), since this is the one reader of that topic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::board::Dashboard;
use super::history::Reading;
use super::probe::{KafkaAccess, Probe, Target};
use crate::api::AppState;
use crate::server::ServeConfig;
use crate::service::JobStatus;
use crate::versions::JobSlot;

/// How often every job is sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Starts sampling `state`'s jobs until `stop` flips; the routes read the [`Dashboard`].
pub(crate) fn start(
    state: &AppState,
    config: &ServeConfig,
    stop: watch::Receiver<bool>,
) -> (Arc<Dashboard>, JoinHandle<()>) {
    let kafka = KafkaAccess::new(&config.brokers, &config.client_overrides);
    let no_kafka = kafka
        .is_none()
        .then(|| "this server has no Kafka brokers configured (--brokers)".to_string());
    let every_ms = u64::try_from(SAMPLE_EVERY.as_millis()).unwrap_or(u64::MAX);
    let dashboard = Arc::new(Dashboard::new(no_kafka, every_ms));
    let task = tokio::spawn(run(dashboard.clone(), state.jobs.clone(), kafka, stop));
    (dashboard, task)
}

async fn run(
    dashboard: Arc<Dashboard>,
    jobs: Arc<Vec<Arc<JobSlot>>>,
    kafka: Option<KafkaAccess>,
    mut stop: watch::Receiver<bool>,
) {
    // Tells a sample under way on the blocking pool to give up its reads.
    let halt = Arc::new(AtomicBool::new(false));
    let mut probes: BTreeMap<String, Probe> = BTreeMap::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let (board, slots, access, flag) =
            (dashboard.clone(), jobs.clone(), kafka.clone(), halt.clone());
        let sample = tokio::task::spawn_blocking(move || {
            sample_all(&board, &slots, access.as_ref(), &mut probes, &flag);
            probes
        });
        tokio::select! {
            done = sample => match done {
                Ok(back) => probes = back,
                Err(e) => {
                    tracing::error!(error = %e, "a dashboard sample failed");
                    probes = BTreeMap::new();
                }
            },
            _ = stop.changed() => {
                // The sample under way ends its reads and drops its clients on its own.
                halt.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
    halt.store(true, Ordering::SeqCst);
    // Closing a consumer blocks.
    let _ = tokio::task::spawn_blocking(move || drop(probes)).await;
}

/// One sample of every job (blocking: it asks Kafka).
fn sample_all(
    dashboard: &Dashboard,
    jobs: &[Arc<JobSlot>],
    kafka: Option<&KafkaAccess>,
    probes: &mut BTreeMap<String, Probe>,
    halt: &AtomicBool,
) {
    for slot in jobs {
        if halt.load(Ordering::SeqCst) {
            return;
        }
        let service = slot.current();
        let probed = kafka.map(|kafka| {
            let target = Target::of(&service);
            let probe = probes
                .entry(slot.name().to_string())
                .or_insert_with(|| Probe::new(target.clone()));
            if probe.target() != &target {
                // Another version answers now: its own topics and group.
                *probe = Probe::new(target);
            }
            probe.read(kafka, halt)
        });
        if let Some(probed) = &probed {
            // Before the status below, which reports it per check.
            service.note_quarantined(probed.dlq.by_check());
        }
        let status = service.status();
        let at_ms = chrono::Utc::now().timestamp_millis();
        dashboard.record(
            slot.name(),
            reading(&status, at_ms),
            status.last_batch_run.as_ref(),
            probed,
        );
    }
}

fn reading(status: &JobStatus, at_ms: i64) -> Reading {
    Reading {
        at_ms,
        version: status.version,
        source_lag_records: status.source_lag_records,
        speed_lag_records: status.speed_lag_records,
        watermark_us: status.watermark_us,
        freshness_ms: status.freshness_ms,
        rows: status.rows,
        ..Reading::default()
    }
}
