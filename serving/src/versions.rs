//! A served job's active view version, swapped atomically when `<job>.control` says so.
//!
//! Each served job has a [`JobSlot`]: the [`JobService`] of the version that answers now.
//! A follower reads the job's control topic ([`crate::control`]); when its serving pointer
//! names another version, the follower builds that version's service beside the active one,
//! waits until it is ready (speed view read to its end, batch view loaded), and swaps the
//! slot in one step. A request takes the slot's service once and answers from it alone, so no
//! answer mixes versions and none fails during a switch; each names its version.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sluice_core::control::VersionSpec;
use tokio::sync::watch;

use crate::control::ControlTopic;
use crate::error::Result;
use crate::metrics::ServingMetrics;
use crate::service::{JobService, run_followers};

/// How long a new version may take to get ready before a switch to it is given up (and
/// tried again on the next read of the control topic).
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// A version's service and the stop of its followers.
pub(crate) struct ActiveVersion {
    pub service: Arc<JobService>,
    stop: watch::Sender<bool>,
}

impl ActiveVersion {
    fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// How the followers of every version run.
#[derive(Clone)]
pub(crate) struct FollowerSettings {
    pub metrics: ServingMetrics,
    pub refresh: Duration,
    pub batch_poll: Duration,
}

/// Starts `service`'s batch poller and snapshot refresher.
pub(crate) fn start_version(
    service: Arc<JobService>,
    settings: &FollowerSettings,
) -> Arc<ActiveVersion> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(run_followers(
        service.clone(),
        settings.metrics.clone(),
        settings.refresh,
        settings.batch_poll,
        stopped,
    ));
    Arc::new(ActiveVersion { service, stop })
}

/// One served job: the version that answers now.
pub(crate) struct JobSlot {
    name: String,
    active: RwLock<Arc<ActiveVersion>>,
}

impl JobSlot {
    pub fn new(active: Arc<ActiveVersion>) -> JobSlot {
        JobSlot {
            name: active.service.name().to_string(),
            active: RwLock::new(active),
        }
    }

    /// A slot whose service runs no followers (tests fill it by hand).
    #[cfg(test)]
    pub fn fixed(service: Arc<JobService>) -> JobSlot {
        let (stop, _) = watch::channel(false);
        JobSlot::new(Arc::new(ActiveVersion { service, stop }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn active(&self) -> Arc<ActiveVersion> {
        self.active
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The service of the version that answers now.
    pub fn current(&self) -> Arc<JobService> {
        self.active().service.clone()
    }

    /// Makes `next` the answering version; returns the one it replaced.
    fn swap(&self, next: Arc<ActiveVersion>) -> Arc<ActiveVersion> {
        let mut slot = self
            .active
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *slot, next)
    }

    /// Stops the answering version's followers and its speed view.
    pub fn stop(&self) {
        let active = self.active();
        active.stop();
        active.service.stop();
    }
}

/// Builds the service of a version from its spec (the job file the control topic carries).
pub(crate) type VersionBuilder = Arc<dyn Fn(&VersionSpec) -> Result<Arc<JobService>> + Send + Sync>;

/// Follows `control` until `stop` flips, switching `slot` to the version its serving pointer
/// names.
pub(crate) async fn follow_control(
    slot: Arc<JobSlot>,
    control: ControlTopic,
    build: VersionBuilder,
    settings: FollowerSettings,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
        let reader = control.clone();
        let state = match tokio::task::spawn_blocking(move || reader.read()).await {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                tracing::debug!(job = slot.name(), error = %e, "reading the control topic");
                continue;
            }
            Err(e) => {
                tracing::warn!(job = slot.name(), error = %e, "the control reader failed");
                continue;
            }
        };
        let Some(pointer) = state.serving else {
            continue;
        };
        let current = slot.current();
        if current.serves(&pointer.spec) {
            continue;
        }
        if let Err(e) = switch(&slot, &pointer.spec, &build, &settings, &stop).await {
            tracing::warn!(job = slot.name(), version = pointer.spec.version, error = %e, "switching versions failed; retrying on the next read of the control topic");
        }
    }
}

/// Builds `spec`'s version, waits until it is ready and swaps it in.
async fn switch(
    slot: &JobSlot,
    spec: &VersionSpec,
    build: &VersionBuilder,
    settings: &FollowerSettings,
    stop: &watch::Receiver<bool>,
) -> Result<()> {
    let (build, owned) = (build.clone(), spec.clone());
    let service = tokio::task::spawn_blocking(move || build(&owned))
        .await
        .map_err(|e| crate::ServingError::Internal(format!("building a version: {e}")))??;
    let next = start_version(service.clone(), settings);
    let started = Instant::now();
    while !service.loading().is_empty() {
        if started.elapsed() > READY_TIMEOUT || *stop.borrow() {
            next.stop();
            let stopping = service.clone();
            let _ = tokio::task::spawn_blocking(move || stopping.stop()).await;
            return Err(crate::ServingError::Internal(format!(
                "version {} was not ready after {READY_TIMEOUT:?}: {:?}",
                spec.version,
                service.loading()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old = slot.swap(next);
    tracing::info!(
        job = slot.name(),
        from = old.service.version(),
        to = spec.version,
        "switched the serving version"
    );
    old.stop();
    let _ = tokio::task::spawn_blocking(move || old.service.stop()).await;
    Ok(())
}
