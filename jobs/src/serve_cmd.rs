//! `sluice serve`: the serving layer's HTTP API over one or more jobs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sluice_core::{Job, Lake, Pipeline};
use sluice_serving::{ServeConfig, ServedJob, Server};

use crate::signals::StopSignals;
use crate::stream_cmd::{parse_duration_arg, parse_property};
use crate::transforms;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A job file (TOML); repeat to serve several jobs.
    #[arg(long = "job", required = true)]
    pub jobs: Vec<PathBuf>,
    /// Kafka bootstrap servers (where each `<job>.speed` is).
    #[arg(long, env = "SLUICE_BROKERS")]
    pub brokers: String,
    /// The lake root [env: SLUICE_LAKE] [default: ./lake]
    #[arg(long)]
    pub lake: Option<String>,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080", env = "SLUICE_BIND")]
    pub bind: SocketAddr,
    /// Require `Authorization: Bearer <token>` on /v1/*.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The speed daemon's consumer group, for its lag (one job only) [default: sluice-<job>]
    #[arg(long, env = "SLUICE_GROUP")]
    pub group: Option<String>,
    /// How often the merged view is rebuilt when a layer changed.
    #[arg(long, default_value = "200ms", value_parser = parse_duration_arg)]
    pub refresh: Duration,
    /// How often the view table is checked for a new version.
    #[arg(long, default_value = "2s", value_parser = parse_duration_arg)]
    pub batch_poll: Duration,
    /// Extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_parser = parse_property)]
    pub property: Vec<(String, String)>,
}

/// Loads and compiles job files for serving.
pub fn served_jobs(files: &[PathBuf], group: Option<&str>) -> anyhow::Result<Vec<ServedJob>> {
    if group.is_some() && files.len() > 1 {
        anyhow::bail!("--group names one speed daemon's group: give it with a single --job");
    }
    files
        .iter()
        .map(|file| {
            let job = Job::from_file(file)?;
            let pipeline = Arc::new(Pipeline::compile(
                &job,
                transforms::registry().for_job(&job)?,
            )?);
            let mut served = ServedJob::new(job, pipeline);
            if let Some(group) = group {
                served.stream_group = group.to_string();
            }
            Ok(served)
        })
        .collect()
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let jobs = served_jobs(&args.jobs, args.group.as_deref())?;
    let mut config = ServeConfig::new(jobs, &args.brokers, Lake::resolve(args.lake.as_deref()));
    config.bind = args.bind;
    config.token = args.token.clone().filter(|t| !t.is_empty());
    config.refresh = args.refresh.max(Duration::from_millis(10));
    config.batch_poll = args.batch_poll.max(Duration::from_millis(100));
    config.client_overrides = args.property.clone();
    config.compile = Arc::new(|job: &Job| {
        let transform = transforms::registry().for_job(job)?;
        Ok(Arc::new(Pipeline::compile(job, transform)?))
    });
    let mut signals = StopSignals::new()?;
    let server = Server::start(config).await?;
    println!("listening on http://{}", server.local_addr());
    use std::io::Write;
    std::io::stdout().flush()?;
    signals.recv().await;
    tracing::info!("stopping the serving layer");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
