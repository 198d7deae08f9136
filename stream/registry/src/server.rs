//! A running registry replica: the log opened (read to its end, then followed), the HTTP
//! listener bound, the API served until stopped. Start as many replicas on one topic as you
//! like; they agree because they all apply the one log.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api;
use crate::error::{RegistryError, Result};
use crate::kafka_log::{self, Follower};
use crate::replica::{Replica, Shared};

/// How to run a replica. [`RegistryConfig::new`] documents the defaults.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Where the API listens. Default 127.0.0.1:8081 (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The topic holding the registry's records. Default `_schemas`, Confluent's.
    pub topic: String,
    /// Extra librdkafka properties (`-X key=value`), for every client of the replica.
    pub kafka_overrides: Vec<(String, String)>,
    /// The replication factor of the topic when the replica creates it. Default (`None`): 3,
    /// or the number of brokers in the cluster's metadata when it has fewer, so a real cluster
    /// keeps its schemas through a broker's loss and a one-broker development cluster still
    /// works. An existing topic is used as it is.
    pub replication_factor: Option<i32>,
}

impl RegistryConfig {
    /// The topic Confluent's registry uses, and this one by default.
    pub const DEFAULT_TOPIC: &'static str = "_schemas";

    /// Listens on 127.0.0.1:8081, stores in `_schemas`, no overrides, the default replication
    /// factor (see [`RegistryConfig::replication_factor`]).
    pub fn new(brokers: impl Into<String>) -> RegistryConfig {
        RegistryConfig {
            brokers: brokers.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            topic: RegistryConfig::DEFAULT_TOPIC.to_string(),
            kafka_overrides: Vec::new(),
            replication_factor: None,
        }
    }
}

/// A registry replica serving. Stop it with [`RegistryServer::shutdown`] (dropping it stops
/// it too, without waiting).
pub struct RegistryServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    follower: Option<Follower>,
}

impl RegistryServer {
    /// Opens the log (creating the topic if missing), reads it to its end, binds and starts
    /// serving; returns once requests are answered. Fails naming the brokers when Kafka cannot
    /// be reached, or the address when it cannot be bound.
    pub async fn start(config: RegistryConfig) -> Result<RegistryServer> {
        let shared = Arc::new(Shared::default());
        let (log, follower) = {
            let (config, shared) = (config.clone(), shared.clone());
            tokio::task::spawn_blocking(move || kafka_log::open(&config, shared))
                .await
                .map_err(|e| RegistryError::Internal(format!("opening the log: {e}")))??
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| RegistryError::Bind {
                addr: config.listen.to_string(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| RegistryError::Bind {
                addr: config.listen.to_string(),
                source,
            })?;
        let replica = Arc::new(Replica::new(shared, Box::new(log)));
        let app = api::router(replica);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            // A stop sent, or the sender dropped with the server: either way, stop.
            let graceful = async move {
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::error!(error = %e, "the registry's HTTP server stopped");
            }
        });
        tracing::info!(%addr, topic = %config.topic, brokers = %config.brokers, "schema registry serving");
        Ok(RegistryServer {
            addr,
            stop: Some(stop),
            server: Some(server),
            follower: Some(follower),
        })
    }

    /// The address the API listens on (the port chosen, when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting requests, lets those in flight finish, stops following the log.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(follower) = self.follower.take() {
            let _ = tokio::task::spawn_blocking(move || follower.stop()).await;
        }
    }
}

/// Runs a replica until `stop` completes.
pub async fn serve(config: RegistryConfig, stop: impl Future<Output = ()>) -> Result<()> {
    let server = RegistryServer::start(config).await?;
    stop.await;
    server.shutdown().await;
    Ok(())
}
