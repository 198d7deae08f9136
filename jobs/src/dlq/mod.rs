//! `sluice dlq list | show | replay`: look into a job's dead-letter topic and re-publish what
//! failed once the cause is fixed.
//!
//! Every DLQ record keeps the original key and value bytes unchanged (a job with PII fields:
//! protected or withheld, see [`sluice_core::pii`]) and carries everything
//! Sluice knows about it in headers ([`sluice_core::topics::header`]), so the three commands
//! need nothing but the topic: `list` counts, `show` prints records with their raw bytes made
//! safe for a terminal, and `replay` re-publishes the original bytes, exactly once, in Kafka
//! transactions that also commit its own progress on the DLQ (see [`replay`]).
//!
//! A record someone else wrote to the topic (no Sluice headers) is listed and shown with error
//! type `unknown`; it is re-published only to an explicit `--to-topic`.

// `DlqError` carries the topic, partition, offset and the client's error by value: a command
// returns one at most once, on its way out, so its size costs nothing.
#![allow(clippy::result_large_err)]

mod list;
mod record;
mod replay;
mod republish;
mod scan;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use sluice_core::topics::Topics;
use sluice_core::{DivertReason, Job};
use sluice_kafka::ReaderContext;

use crate::OutputFormat;

pub use list::{ListArgs, ShowArgs};
pub use replay::ReplayArgs;

/// How long a metadata or offsets request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// Count a job's dead letters by error type and source partition, with the oldest and
    /// newest of each error type.
    #[command(
        after_help = "Examples:\n  sluice dlq list --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092\n  sluice dlq list --job job.toml --brokers 127.0.0.1:9092 --output json\n\nReads the whole <job>.dlq topic (read_committed, no consumer group) up to where it ended when\nthe command started. Records without Sluice's headers count as error type `unknown`."
    )]
    List(ListArgs),
    /// Print dead letters with their headers, keys and values (raw bytes shown safely).
    #[command(
        after_help = "Examples:\n  sluice dlq show --job job.toml --brokers 127.0.0.1:9092 --error-type schema_violation --limit 5\n  sluice dlq show --job job.toml --brokers 127.0.0.1:9092 --partition 3 --offset 1200 --output json\n\nUTF-8 keys and values print as JSON strings (control characters escaped); other bytes as\n0x-hex with a lossy preview. Values over 512 bytes are cut and their full size is said.\n--output json prints one JSON object per line. DLQ partitions are read one after another."
    )]
    Show(ShowArgs),
    /// Re-publish dead letters (their original key and bytes) to the source topic or
    /// --to-topic, exactly once.
    #[command(
        after_help = "Examples:\n  sluice dlq replay --job job.toml --brokers 127.0.0.1:9092 --dry-run\n  sluice dlq replay --job job.toml --brokers 127.0.0.1:9092 --error-type schema_violation --since 2024-05-01\n  sluice dlq replay --job job.toml --brokers 127.0.0.1:9092 --to-topic orders.retry --output json\n\nEach batch is one Kafka transaction: the re-published records and the replay's offsets on\n<job>.dlq (consumer group sluice-<job>.dlq-replay.<hash of the filters and target>, or\n--group). A replay killed and run again with the same arguments resumes after its last\ncommitted batch: each record is re-published once. It stops at the end the DLQ had when it\nstarted. Records go to their original source partition when re-published to the source\ntopic, else by key; they carry the header sluice.replayed.from = <dlq topic>/<partition>/<offset>.\nTruncated dead letters and, without --to-topic, records lacking Sluice's headers are skipped\nand counted. Exit 0 on success, 1 on error."
    )]
    Replay(ReplayArgs),
}

/// What every `dlq` subcommand takes: the job (whose DLQ it is), the brokers and the output.
#[derive(clap::Args, Debug, Clone)]
pub struct DlqTarget {
    /// The job file (TOML); its DLQ is `<job>.dlq` (`<job>.v<N>.dlq` for `[view] version = N`).
    #[arg(long)]
    pub job: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SLUICE_BROKERS")]
    pub brokers: String,
    /// Extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_parser = crate::stream_cmd::parse_property)]
    pub property: Vec<(String, String)>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl DlqTarget {
    /// A client configuration for these brokers: `settings`, then the user's `-X` overrides.
    fn client(&self, settings: impl FnOnce(&mut ClientConfig)) -> ClientConfig {
        sluice_kafka::client_config(&self.brokers, &self.property, settings)
    }
}

/// Runs a `dlq` subcommand; the Kafka work is blocking and runs off the async runtime.
pub async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || match command {
        DlqCommand::List(args) => list::list(&args),
        DlqCommand::Show(args) => list::show(&args),
        DlqCommand::Replay(args) => replay::replay(&args),
    })
    .await?
}

/// Why a `dlq` command failed: always naming the job or the topic, partition and offset.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(
        "job `{job}`: the dead-letter topic `{topic}` does not exist (the job's `sluice stream` creates it when it starts)"
    )]
    NoDeadLetterTopic { job: String, topic: String },
    #[error("job `{job}`: the replay target topic `{topic}` does not exist; create it first")]
    NoTargetTopic { job: String, topic: String },
    #[error("job `{job}`: {source}")]
    Kafka {
        job: String,
        #[source]
        source: Box<sluice_kafka::Error>,
    },
    #[error("job `{job}`: kafka: while {during}: {source}")]
    Client {
        job: String,
        during: String,
        #[source]
        source: KafkaError,
    },
    #[error("kafka: while {during} `{topic}`: {source}")]
    Topic {
        topic: String,
        during: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error(
        "reading `{topic}` [{partition}]: nothing arrived for {waited:?} at offset {offset} (reading up to {stop}){detail}"
    )]
    Stalled {
        topic: String,
        partition: i32,
        offset: i64,
        stop: i64,
        waited: Duration,
        /// More about why: `; last error: …`, or empty.
        detail: String,
    },
    #[error(
        "job `{job}`: initialising Kafka transactions (transactional.id `{transactional_id}`) failed: {source}. `sluice dlq replay` commits every batch as a Kafka transaction: use a broker with transactions (or --dry-run to only count)"
    )]
    Transactions {
        job: String,
        transactional_id: String,
        #[source]
        source: KafkaError,
    },
    #[error("re-publishing `{topic}` [{partition}] offset {offset} to `{target}`: {source}")]
    Produce {
        topic: String,
        partition: i32,
        offset: i64,
        target: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "committing the replay batch of `{topic}` {ranges} to `{target}` failed and was aborted (none of it is published; run the command again to resume after the last committed batch): {source}"
    )]
    Commit {
        topic: String,
        /// The DLQ offsets of the batch, per partition: `[0] 100..=299, [2] 7..=7`.
        ranges: String,
        target: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "transactional id `{transactional_id}` was fenced: another `sluice dlq replay` with the same arguments (or --group) took over; this one stops, its committed batches stand: {source}"
    )]
    Fenced {
        transactional_id: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "the partitions of `{topic}` were reassigned in group `{group}` (another consumer joined it): the open batch was aborted; run the command again to resume after the last committed batch"
    )]
    Rebalanced { topic: String, group: String },
    #[error("--since {since} is not before --until {until}")]
    EmptyRange { since: String, until: String },
}

/// A job's dead-letter topic as it was when the command started.
pub(crate) struct DeadLetters {
    pub job: Job,
    pub topic: String,
    pub partitions: i32,
    /// (low, high) watermarks per partition: reading stops at `high`, so records that arrive
    /// while a command runs are left for the next one.
    pub watermarks: Vec<(i64, i64)>,
}

impl DeadLetters {
    /// Loads the job file and reads the DLQ's partitions and watermarks.
    pub fn open(target: &DlqTarget) -> anyhow::Result<DeadLetters> {
        let job = Job::from_file(&target.job)?;
        let topic = Topics::for_job(&job).dlq;
        let name = job.name().to_string();
        let metadata = metadata_client(target, &name)?;
        let partitions =
            sluice_kafka::partition_count(&metadata, &topic, REQUEST_TIMEOUT).map_err(|source| {
                DlqError::Kafka {
                    job: name.clone(),
                    source: Box::new(source),
                }
            })? as i32;
        if partitions == 0 {
            return Err(DlqError::NoDeadLetterTopic { job: name, topic }.into());
        }
        let watermarks = sluice_kafka::watermarks(&metadata, &topic, partitions, REQUEST_TIMEOUT)
            .map_err(|source| DlqError::Kafka {
            job: name.clone(),
            source: Box::new(source),
        })?;
        Ok(DeadLetters {
            job,
            topic,
            partitions,
            watermarks,
        })
    }

    /// A consumer that reads committed records without joining a group (it is assigned
    /// partitions and never commits).
    pub fn reader(&self, target: &DlqTarget) -> Result<BaseConsumer<ReaderContext>, DlqError> {
        let group = format!("sluice-{}.dlq-reader", self.job.versioned_name());
        sluice_kafka::reader_config(&target.brokers, &target.property, &group)
            .create_with_context(ReaderContext)
            .map_err(|source| DlqError::Client {
                job: self.job.name().to_string(),
                during: format!("creating a reader of `{}`", self.topic),
                source,
            })
    }
}

/// A client for metadata and watermark requests.
fn metadata_client(target: &DlqTarget, job: &str) -> Result<BaseConsumer, DlqError> {
    target
        .client(|_| {})
        .create()
        .map_err(|source| DlqError::Client {
            job: job.to_string(),
            during: "creating a metadata client".to_string(),
            source,
        })
}

/// `--error-type`: a [`DivertReason`] name, or `unknown` (records without the header).
fn parse_error_type(text: &str) -> Result<String, String> {
    if text == record::UNKNOWN || DivertReason::parse(text).is_some() {
        return Ok(text.to_string());
    }
    let names: Vec<&str> = DivertReason::ALL.iter().map(|r| r.as_str()).collect();
    Err(format!(
        "expected one of {}, or `{}`",
        names.join(", "),
        record::UNKNOWN
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_are_the_divert_reasons_or_unknown() {
        assert_eq!(
            parse_error_type("schema_violation").as_deref(),
            Ok("schema_violation")
        );
        assert_eq!(parse_error_type("unknown").as_deref(), Ok("unknown"));
        let refused = parse_error_type("schema_violaton").unwrap_err();
        assert!(refused.contains("malformed_json"), "{refused}");
    }
}
