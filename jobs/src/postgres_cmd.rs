//! `sluice postgres init`: creates seed 003's `ETLCheckpoint`, `ETLDeadLetter` and
//! `ETLJobMetric` tables where they are missing, so an administrator can set the database up
//! once and run the sinks as a role that may only use them. A sink creates them itself at
//! start when its role may.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use sluice_core::spec::redact_url;
use sluice_stream::postgres::connect::PgTarget;
use sluice_stream::postgres::seed_tables::init_seed_tables;

use crate::OutputFormat;

/// `sluice postgres init --help`'s epilogue: examples and the queries worth knowing.
pub const INIT_HELP: &str = "Examples:
  sluice postgres init --url postgres://sluice@127.0.0.1:5432/analytics
  SLUICE_POSTGRES_URL=postgres://admin@db:5432/analytics sluice postgres init --output json
  sluice postgres init --url postgres://admin@db/analytics --password-file /run/secrets/pg

Creates ETLCheckpoint, ETLDeadLetter and ETLJobMetric (seed 003) and their indexes where
missing, then checks their columns; running it again changes nothing. The password comes from
the URL, else --password-file (its first line), else PGPASSWORD; it is never printed. TLS
(sslmode=require) is not supported yet.

Queries (see docs/postgres.md):
  -- where each sink resumes, per partition (\"offset\" is the next one to read)
  SELECT consumer_group, topic, partition, \"offset\", now() - committed_at AS since_commit
    FROM ETLCheckpoint ORDER BY consumer_group, topic, partition;
  -- dead letters of the last hour by error type
  SELECT topic, error_type, count(*) FROM ETLDeadLetter
   WHERE created_at > now() - interval '1 hour' GROUP BY 1, 2 ORDER BY 3 DESC;
  -- records per second between metric samples
  SELECT job_name, sampled_at, lag_seconds,
         greatest(processed_count - lag(processed_count) OVER w, 0)
           / nullif(extract(epoch FROM sampled_at - lag(sampled_at) OVER w), 0) AS per_second
    FROM ETLJobMetric WINDOW w AS (PARTITION BY job_name ORDER BY sampled_at)
   ORDER BY sampled_at DESC LIMIT 20;";

#[derive(Subcommand, Debug)]
pub enum PostgresCommand {
    /// Create the seed 003 tables (ETLCheckpoint, ETLDeadLetter, ETLJobMetric) where missing.
    #[command(after_help = INIT_HELP)]
    Init(InitArgs),
}

#[derive(Args)]
pub struct InitArgs {
    /// The database: postgres://user[:password]@host:port/database.
    #[arg(long, env = "SLUICE_POSTGRES_URL", hide_env_values = true)]
    pub url: String,
    /// A file whose first line is the password (when the URL has none).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// How to print which tables were created.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// Hand-written: a derived one would print the URL's password.
impl fmt::Debug for InitArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitArgs")
            .field("url", &redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("output", &self.output)
            .finish()
    }
}

pub async fn run(command: PostgresCommand) -> anyhow::Result<ExitCode> {
    match command {
        PostgresCommand::Init(args) => init(args).await,
    }
}

async fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let target = PgTarget::from_url(&args.url, args.password_file.as_deref())?;
    let client = target.connect().await?;
    let tables = init_seed_tables(&client, target.redacted()).await?;
    match args.output {
        OutputFormat::Text => {
            println!("PostgreSQL {}", target.redacted());
            for (name, created) in &tables {
                let state = if *created { "created" } else { "already there" };
                println!("  {name:<14} {state}");
            }
        }
        OutputFormat::Json => {
            let tables: Vec<serde_json::Value> = tables
                .iter()
                .map(|(name, created)| serde_json::json!({"name": name, "created": created}))
                .collect();
            let report = serde_json::json!({"url": target.redacted(), "tables": tables});
            println!("{report}");
        }
    }
    tracing::info!(url = %target.redacted(), ?tables, "seed tables ready");
    Ok(ExitCode::SUCCESS)
}
