//! A running serving layer: the HTTP listener and each job's followers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::Lake;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::error::{Result, ServingError};
use crate::metrics::ServingMetrics;
use crate::query::{self, ViewAnswer, ViewQuery};
use crate::service::{JobService, JobStatus, ServedJob};

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
        let services = services(&config)?;
        let metrics = ServingMetrics::new();
        let state = AppState {
            jobs: Arc::new(services),
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
        let mut tasks: Vec<JoinHandle<()>> = state
            .jobs
            .iter()
            .map(|service| {
                tokio::spawn(crate::service::run_followers(
                    service.clone(),
                    metrics.clone(),
                    config.refresh,
                    config.batch_poll,
                    stopped.clone(),
                ))
            })
            .collect();
        let app = api::router(state.clone());
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
        self.state.jobs.iter().map(|j| j.status()).collect()
    }

    /// A view query, as `GET /v1/jobs/{job}/view` answers it ([`ServingError::Loading`] until
    /// the job's batch view is loaded).
    pub fn view(&self, job: &str, query: &ViewQuery) -> Result<ViewAnswer> {
        let service = self.state.job(job)?;
        let snapshot = service.snapshot();
        service.require_batch(&snapshot)?;
        let selection = query::select(&snapshot, &service.shape(), query)?;
        Ok(query::answer(&snapshot, service.name(), &selection))
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

fn services(config: &ServeConfig) -> Result<Vec<Arc<JobService>>> {
    let mut services: Vec<Arc<JobService>> = Vec::new();
    for served in &config.jobs {
        if services.iter().any(|s| s.name() == served.job.name()) {
            return Err(ServingError::DuplicateJob {
                job: served.job.name().to_string(),
            });
        }
        services.push(Arc::new(JobService::new(
            served.clone(),
            &config.brokers,
            &config.lake,
            &config.client_overrides,
        )?));
    }
    Ok(services)
}
