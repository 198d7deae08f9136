//! `sluice registry`: the built-in schema registry, one replica per process, its state in a
//! compacted Kafka topic. Run several on one topic for availability; they agree through the
//! log. The API is Confluent's, so producers' serializers and Sluice's sources point at it as
//! they would at Confluent's registry.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use sluice_registry::{RegistryConfig, RegistryServer};

use crate::signals::StopSignals;
use crate::stream_cmd::parse_property;

#[derive(Args, Debug)]
pub struct RegistryArgs {
    /// Kafka bootstrap servers (where the schemas topic is).
    #[arg(long, env = "SLUICE_BROKERS")]
    pub brokers: String,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8081", env = "SLUICE_REGISTRY_LISTEN")]
    pub listen: SocketAddr,
    /// The topic that stores the schemas: one partition, compacted (created so if missing).
    #[arg(long, default_value = RegistryConfig::DEFAULT_TOPIC)]
    pub topic: String,
    /// The schemas topic's replication factor, when the registry creates it (an existing
    /// topic is used as it is). Default: 3, or the number of brokers when the cluster has
    /// fewer.
    #[arg(
        long,
        env = "SLUICE_REGISTRY_REPLICATION",
        value_parser = clap::value_parser!(i32).range(1..)
    )]
    pub replication_factor: Option<i32>,
    /// Extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_parser = parse_property)]
    pub property: Vec<(String, String)>,
}

pub async fn run(args: RegistryArgs) -> anyhow::Result<ExitCode> {
    let mut config = RegistryConfig::new(&args.brokers);
    config.listen = args.listen;
    config.topic = args.topic.clone();
    config.kafka_overrides = args.property.clone();
    config.replication_factor = args.replication_factor;
    let mut signals = StopSignals::new()?;
    let server = RegistryServer::start(config).await?;
    let addr = server.local_addr();
    tracing::info!(%addr, topic = %args.topic, brokers = %args.brokers, "schema registry listening");
    println!("registry listening on http://{addr}");
    std::io::stdout().flush()?;
    signals.recv().await;
    tracing::info!("stopping the schema registry");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
