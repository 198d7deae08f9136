//! The flags that name a job and where its layers live: every command that reads both Kafka
//! and the lake (`replay`, `verify`, `versions`, `switch`, `retire`) takes them the same way.

use std::path::PathBuf;

use crate::stream_cmd::parse_property;

#[derive(clap::Args, Debug, Clone)]
pub struct KafkaJobArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SLUICE_BROKERS")]
    pub brokers: String,
    /// The lake root [env: SLUICE_LAKE] [default: ./lake]
    #[arg(long)]
    pub lake: Option<String>,
    /// Extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_parser = parse_property)]
    pub property: Vec<(String, String)>,
}
