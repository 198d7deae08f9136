//! A running serving layer: the HTTP listener and each job's followers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::control::VersionSpec;
use sluice_core::{Job, Lake, Pipeline};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::control::ControlTopic;
use crate::error::{Result, ServingError};
use crate::metrics::ServingMetrics;
use crate::query::{self, ViewAnswer, ViewQuery};
use crate::service::{JobService, JobStatus, ServedJob};
use crate::versions::{FollowerSettings, JobSlot, VersionBuilder, follow_control, start_version};

/// Compiles a job's plan (with the Rust transforms the binary registers), for the versions a
/// switch brings in.
pub type PipelineCompiler = Arc<dyn Fn(&Job) -> Result<Arc<Pipeline>> + Send + Sync>;

/// How to serve. [`ServeConfig::new`] documents the defaults.
#[derive(Clone)]
pub struct ServeConfig {
    pub jobs: Vec<ServedJob>,
    pub brokers: String,
    pub lake: Lake,
    /// Default 127.0.0.1:8080.
    pub bind: SocketAddr,
    /// Bearer token every `/v1/` request must present (none: open).
    pub token: Option<String>,
    /// How often the merged view is rebuilt when a layer changed. Default 200 ms.
    pub refresh: Duration,
    /// How often the view table is checked for a new version. Default 2 s.
    pub batch_poll: Duration,
    /// Extra librdkafka properties for the speed-view consumers.
    pub client_overrides: Vec<(String, String)>,
    /// How often each job's `<job>.control` is read for a switch. Default 1 s.
    pub control_poll: Duration,
    /// Compiles the plan of a version a switch names. Default: no Rust transforms.
    pub compile: PipelineCompiler,
}

impl ServeConfig {
    pub fn new(jobs: Vec<ServedJob>, brokers: impl Into<String>, lake: Lake) -> ServeConfig {
        ServeConfig {
            jobs,
            brokers: brokers.into(),
            lake,
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            refresh: Duration::from_millis(200),
            batch_poll: Duration::from_secs(2),
            client_overrides: Vec::new(),
            control_poll: Duration::from_secs(1),
            compile: Arc::new(|job: &Job| Ok(Arc::new(Pipeline::compile(job, None)?))),
        }
    }
}

/// The serving layer, running. Stop it with [`Server::shutdown`].
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds, starts following every job's layers and returns at once; the views fill in
    /// the background (`GET /health` says when they are ready).
    pub async fn start(config: ServeConfig) -> Result<Server> {
        let metrics = ServingMetrics::new();
        let settings = FollowerSettings {
            metrics: metrics.clone(),
            refresh: config.refresh,
            batch_poll: config.batch_poll,
        };
        let build = version_builder(&config);
        let slots = slots(&config, &build, &settings).await?;
        let state = AppState {
            jobs: Arc::new(slots.iter().map(|(slot, _)| slot.clone()).collect()),
            metrics: metrics.clone(),
            token: config.token.as_deref().map(Arc::from),
        };
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| ServingError::Bind {
                addr: config.bind.to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServingError::Bind {
            addr: config.bind.to_string(),
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks: Vec<JoinHandle<()>> = slots
            .into_iter()
            .map(|(slot, control)| {
                tokio::spawn(follow_control(
                    slot,
                    control,
                    build.clone(),
                    settings.clone(),
                    config.control_poll,
                    stopped.clone(),
                ))
            })
            .collect();
        let (dashboard, sampler) = crate::dashboard::start(&state, &config, stopped.clone());
        tasks.push(sampler);
        tasks.push(crate::anomalies::start(
            state.jobs.clone(),
            metrics.clone(),
            stopped.clone(),
        ));
        let app = api::router(state.clone()).layer(axum::Extension(dashboard));
        let mut shutdown = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let graceful = async move {
                let _ = shutdown.changed().await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        }));
        Ok(Server {
            addr,
            state,
            stop,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every job's state, as `GET /v1/jobs` answers.
    pub fn status(&self) -> Vec<JobStatus> {
        self.state
            .jobs
            .iter()
            .map(|j| j.current().status())
            .collect()
    }

    /// A view query, as `GET /v1/jobs/{job}/view` answers it ([`ServingError::Loading`] until
    /// the job's batch view is loaded).
    pub fn view(&self, job: &str, query: &ViewQuery) -> Result<ViewAnswer> {
        let service = self.state.job(job)?;
        let snapshot = service.snapshot();
        service.require_batch(&snapshot)?;
        let selection = query::select(&snapshot, &service.shape(), query)?;
        Ok(query::answer(
            &snapshot,
            (service.name(), service.version()),
            &selection,
        ))
    }

    /// Stops the listener and the followers and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let jobs = self.state.jobs.clone();
        let _ = tokio::task::spawn_blocking(move || jobs.iter().for_each(|j| j.stop())).await;
    }
}

/// Builds the service of a version the control topic names.
fn version_builder(config: &ServeConfig) -> VersionBuilder {
    let (brokers, lake) = (config.brokers.clone(), config.lake.clone());
    let (overrides, compile) = (config.client_overrides.clone(), config.compile.clone());
    Arc::new(move |spec: &VersionSpec| {
        let job = spec.job(std::path::Path::new("<job>.control"))?;
        let pipeline = compile(&job)?;
        let served = ServedJob::new(job, pipeline);
        Ok(Arc::new(JobService::new(
            served, &brokers, &lake, &overrides,
        )?))
    })
}

/// Every served job's slot, answering from the version its control topic names (the job
/// file's when it names none, or cannot be read), with the job's control topic.
async fn slots(
    config: &ServeConfig,
    build: &VersionBuilder,
    settings: &FollowerSettings,
) -> Result<Vec<(Arc<JobSlot>, ControlTopic)>> {
    let mut slots: Vec<(Arc<JobSlot>, ControlTopic)> = Vec::new();
    for served in &config.jobs {
        let name = served.job.name();
        if slots.iter().any(|(s, _)| s.name() == name) {
            return Err(ServingError::DuplicateJob {
                job: name.to_string(),
            });
        }
        let control = ControlTopic::for_job(&served.job, &config.brokers, &config.client_overrides);
        let reader = control.clone();
        let pointer = match tokio::task::spawn_blocking(move || reader.read()).await {
            Ok(Ok(state)) => state.serving,
            Ok(Err(e)) => {
                tracing::warn!(job = name, error = %e, "cannot read the control topic; serving the job file's version");
                None
            }
            Err(e) => return Err(ServingError::Internal(e.to_string())),
        };
        let service = match pointer {
            Some(pointer) if !served.serves(&pointer.spec) => {
                tracing::info!(
                    job = name,
                    version = pointer.spec.version,
                    "serving the version the control topic names"
                );
                let (build, spec) = (build.clone(), pointer.spec.clone());
                tokio::task::spawn_blocking(move || build(&spec))
                    .await
                    .map_err(|e| ServingError::Internal(e.to_string()))??
            }
            _ => Arc::new(JobService::new(
                served.clone(),
                &config.brokers,
                &config.lake,
                &config.client_overrides,
            )?),
        };
        let slot = Arc::new(JobSlot::new(start_version(service, settings)));
        slots.push((slot, control));
    }
    Ok(slots)
}
