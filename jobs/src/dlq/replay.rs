//! `sluice dlq replay`: re-publish dead letters after a fix, exactly once.
//!
//! The replay reads the DLQ in its own consumer group, `sluice-<job>.dlq-replay.<hash>`, the
//! hash taken over the filters and the target topic: the same command run again continues
//! where the last one committed (and replays nothing new when it finished), while a replay
//! with other filters or another target starts from the beginning. It stops at the end the DLQ
//! had when it started, so records dead-lettered again during the replay wait for the next run
//! instead of looping. The transactions are [`super::republish`]'s.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sluice_core::Job;
use sluice_core::time::format_time;
use sluice_core::topics::replay_group;

use super::republish::{Counts, Outcome, Plan, ReplayContext, Republisher};
use super::scan::Range;
use super::{DeadLetters, DlqError, DlqTarget, REQUEST_TIMEOUT, metadata_client, parse_error_type};
use crate::OutputFormat;

/// Reading the group's committed offsets waits for a transaction of the group still pending;
/// one a dead replay left open is aborted by the broker after `transaction.timeout.ms`.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(90);
const TRANSACTION_TIMEOUT_MS: &str = "60000";

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub target: DlqTarget,
    /// Only records of this error type (repeatable; `unknown`: records without one).
    #[arg(long = "error-type", value_parser = parse_error_type)]
    pub error_types: Vec<String>,
    /// Only records dead-lettered at or after this time (the DLQ record's timestamp): RFC 3339,
    /// a date, or epoch milliseconds.
    #[arg(long, value_parser = parse_time_arg)]
    pub since: Option<i64>,
    /// Only records dead-lettered before this time.
    #[arg(long, value_parser = parse_time_arg)]
    pub until: Option<i64>,
    /// Re-publish to this topic (it must exist) instead of the job's source topic.
    #[arg(long)]
    pub to_topic: Option<String>,
    /// Count what would be re-published; publish nothing, commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// DLQ records per transaction at most.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// The consumer group the replay records its progress in [default:
    /// sluice-<job>.dlq-replay.<hash of the filters and the target topic>]
    #[arg(long)]
    pub group: Option<String>,
}

/// `--since` / `--until`: microseconds since the epoch.
fn parse_time_arg(text: &str) -> Result<i64, String> {
    sluice_core::time::parse_time(text).map_err(|e| e.to_string())
}

/// Which dead letters a replay re-publishes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Empty: every error type.
    pub error_types: BTreeSet<String>,
    /// The DLQ record's timestamp at or after this (µs)...
    pub since_us: Option<i64>,
    /// ... and before this (µs).
    pub until_us: Option<i64>,
}

impl Filter {
    fn of(args: &ReplayArgs) -> Result<Filter, DlqError> {
        if let (Some(since), Some(until)) = (args.since, args.until)
            && since >= until
        {
            return Err(DlqError::EmptyRange {
                since: format_time(since),
                until: format_time(until),
            });
        }
        Ok(Filter {
            error_types: args.error_types.iter().cloned().collect(),
            since_us: args.since,
            until_us: args.until,
        })
    }

    /// Whether a record of `error_type` dead-lettered at `timestamp_ms` is selected. A record
    /// without a timestamp passes only when no time bound is given.
    pub fn matches(&self, error_type: &str, timestamp_ms: Option<i64>) -> bool {
        if !self.error_types.is_empty() && !self.error_types.contains(error_type) {
            return false;
        }
        if self.since_us.is_none() && self.until_us.is_none() {
            return true;
        }
        let Some(at) = timestamp_ms.and_then(|ms| ms.checked_mul(1000)) else {
            return false;
        };
        self.since_us.is_none_or(|since| at >= since)
            && self.until_us.is_none_or(|until| at < until)
    }

    /// The text the default group name hashes: what decides which records a replay sends
    /// where (not the batch size, not --dry-run, which reads the real run's group).
    fn identity(&self, target: &str) -> String {
        let bound = |t: Option<i64>| t.map_or_else(|| "-".to_string(), |t| t.to_string());
        let types: Vec<&str> = self.error_types.iter().map(String::as_str).collect();
        format!(
            "target={target}\ntypes={}\nsince={}\nuntil={}",
            types.join(","),
            bound(self.since_us),
            bound(self.until_us)
        )
    }
}

/// `sluice-<job version>.dlq-replay.<12 hex digits>`.
fn default_group(job: &Job, filter: &Filter, target: &str) -> String {
    format!(
        "{}.{}",
        replay_group(&job.versioned_name()),
        short_hash(&filter.identity(target))
    )
}

/// FNV-1a: stable across Rust versions and machines (std's hasher is not), so the same command
/// names the same group everywhere.
fn short_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in text.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", hash >> 16)
}

/// What a replay did (`--output json`).
#[derive(Debug, Serialize)]
struct ReplaySummary {
    job: String,
    dlq_topic: String,
    target_topic: String,
    group: String,
    dry_run: bool,
    #[serde(flatten)]
    counts: Counts,
    /// Transactions committed (with `--dry-run`: batches counted).
    batches: u64,
    seconds: f64,
}

pub(crate) fn replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let filter = Filter::of(args)?;
    let dlq = DeadLetters::open(&args.target)?;
    let job = dlq.job.name().to_string();
    let source = dlq.job.spec.source.topic.clone();
    let target = args.to_topic.clone().unwrap_or_else(|| source.clone());
    let metadata = metadata_client(&args.target, &job)?;
    let target_partitions = sluice_kafka::partition_count(&metadata, &target, REQUEST_TIMEOUT)
        .map_err(|source| DlqError::Kafka {
            job: job.clone(),
            source: Box::new(source),
        })? as i32;
    if target_partitions == 0 {
        return Err(DlqError::NoTargetTopic { job, topic: target }.into());
    }
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| default_group(&dlq.job, &filter, &target));
    let transactional_id = format!("{group}.producer");
    // First, so a transaction a killed run left open is aborted before the offsets are read.
    let producer = if args.dry_run {
        None
    } else {
        Some(transactional_producer(
            &args.target,
            &job,
            &transactional_id,
        )?)
    };
    let consumer = group_consumer(args, &job, &group, &transactional_id)?;
    let committed =
        sluice_kafka::committed(&consumer, &dlq.topic, dlq.partitions, COMMITTED_TIMEOUT).map_err(
            |source| DlqError::Kafka {
                job: job.clone(),
                source: Box::new(source),
            },
        )?;
    let ranges: Vec<Range> = (0..dlq.partitions)
        .zip(dlq.watermarks.iter().zip(&committed))
        .map(|(partition, (&(low, high), done))| Range {
            partition,
            from: done.unwrap_or(low).max(low),
            stop: high,
        })
        .collect();
    let plan = Plan {
        dlq: &dlq.topic,
        target: &target,
        target_partitions,
        keep_partitions: target == source,
        require_origin: args.to_topic.is_none(),
        filter: &filter,
        batch_size: args.batch_size.max(1),
        group: &group,
        transactional_id: &transactional_id,
    };
    let pending: Vec<&Range> = ranges.iter().filter(|r| r.from < r.stop).collect();
    let outcome = if pending.is_empty() {
        Outcome {
            counts: Counts::default(),
            batches: 0,
        }
    } else {
        start_reading(args, &consumer, &dlq.topic, &pending)?;
        Republisher::new(
            plan,
            &consumer,
            producer.as_ref(),
            &ranges,
            args.target.output == OutputFormat::Text,
        )
        .run()?
    };
    let summary = ReplaySummary {
        job,
        dlq_topic: dlq.topic.clone(),
        target_topic: target,
        group,
        dry_run: args.dry_run,
        counts: outcome.counts,
        batches: outcome.batches,
        seconds: started.elapsed().as_secs_f64(),
    };
    print_summary(&summary, args.target.output)?;
    Ok(ExitCode::SUCCESS)
}

/// A real replay joins the group (its offsets then join the transactions); a dry run is only
/// assigned the partitions at the group's committed offsets, so it never disturbs a real
/// replay running in the group.
fn start_reading(
    args: &ReplayArgs,
    consumer: &BaseConsumer<ReplayContext>,
    topic: &str,
    pending: &[&Range],
) -> Result<(), DlqError> {
    if !args.dry_run {
        return consumer
            .subscribe(&[topic])
            .map_err(|source| DlqError::Topic {
                topic: topic.to_string(),
                during: "subscribing to",
                source,
            });
    }
    let mut assignment = TopicPartitionList::new();
    for range in pending {
        assignment
            .add_partition_offset(topic, range.partition, Offset::Offset(range.from))
            .map_err(|source| DlqError::Topic {
                topic: topic.to_string(),
                during: "assigning the partitions of",
                source,
            })?;
    }
    consumer
        .assign(&assignment)
        .map_err(|source| DlqError::Topic {
            topic: topic.to_string(),
            during: "assigning the partitions of",
            source,
        })
}

/// The replay's producer: transactional, its id derived from the group, so a run of the same
/// command fences and aborts whatever an earlier one left open.
fn transactional_producer(
    target: &DlqTarget,
    job: &str,
    transactional_id: &str,
) -> Result<BaseProducer, DlqError> {
    let producer: BaseProducer = target
        .client(|client| {
            client
                .set("transactional.id", transactional_id)
                .set("enable.idempotence", "true")
                .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
                .set("linger.ms", "5")
                // Java's partitioner: a record re-published by key lands where a Java
                // producer would put that key.
                .set("partitioner", "murmur2_random");
        })
        .create()
        .map_err(|source| DlqError::Client {
            job: job.to_string(),
            during: "creating the replay producer".to_string(),
            source,
        })?;
    producer
        .init_transactions(REQUEST_TIMEOUT)
        .map_err(|source| DlqError::Transactions {
            job: job.to_string(),
            transactional_id: transactional_id.to_string(),
            source,
        })?;
    Ok(producer)
}

/// The replay's consumer: read_committed, offsets committed only through the transactions.
fn group_consumer(
    args: &ReplayArgs,
    job: &str,
    group: &str,
    instance: &str,
) -> Result<BaseConsumer<ReplayContext>, DlqError> {
    args.target
        .client(|client| {
            client
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "true")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000");
            if !args.dry_run {
                // A static member: a run started again after kill -9 takes the partitions back
                // at once instead of waiting for the dead member's session to expire.
                client.set("group.instance.id", instance);
            }
        })
        .create_with_context(ReplayContext::default())
        .map_err(|source| DlqError::Client {
            job: job.to_string(),
            during: format!("creating the replay consumer (group `{group}`)"),
            source,
        })
}

fn print_summary(summary: &ReplaySummary, output: OutputFormat) -> anyhow::Result<()> {
    let c = &summary.counts;
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string(summary)?);
    } else {
        let verb = if summary.dry_run {
            "would re-publish"
        } else {
            "re-published"
        };
        println!(
            "dlq replay {} -> {} (group {}): {} read, {} matched, {verb} {}, {} skipped by the filters, {} without Sluice's headers, {} truncated; {} batches in {:.1}s",
            summary.dlq_topic,
            summary.target_topic,
            summary.group,
            c.scanned,
            c.matched,
            c.republished,
            c.skipped_by_filter,
            c.skipped_no_origin,
            c.skipped_truncated,
            summary.batches,
            summary.seconds
        );
        if summary.dry_run {
            println!("dry run: nothing was published and no offset was committed");
        }
    }
    if c.skipped_no_origin > 0 {
        eprintln!(
            "note: {} matching dead letters carry no sluice.source.* headers (someone else wrote them) and were not re-published to the source topic; --to-topic re-publishes them",
            c.skipped_no_origin
        );
    }
    if c.skipped_truncated > 0 {
        eprintln!(
            "note: {} matching dead letters were truncated (sluice.payload.truncated: the DLQ holds only their first bytes) and were not re-published",
            c.skipped_truncated
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(types: &[&str], since: Option<i64>, until: Option<i64>) -> Filter {
        Filter {
            error_types: types.iter().map(|t| t.to_string()).collect(),
            since_us: since,
            until_us: until,
        }
    }

    #[test]
    fn filters_select_by_error_type_and_dead_letter_time() {
        let all = Filter::default();
        assert!(all.matches("malformed_json", None));
        let types = filter(&["schema_violation", "unknown"], None, None);
        assert!(types.matches("schema_violation", Some(1)));
        assert!(types.matches("unknown", None));
        assert!(!types.matches("malformed_json", Some(1)));
        // [2 s, 5 s): since inclusive, until exclusive, on milliseconds.
        let window = filter(&[], Some(2_000_000), Some(5_000_000));
        assert!(!window.matches("x", Some(1_999)));
        assert!(window.matches("x", Some(2_000)));
        assert!(window.matches("x", Some(4_999)));
        assert!(!window.matches("x", Some(5_000)));
        assert!(!window.matches("x", None), "no timestamp, no match");
    }

    #[test]
    fn the_group_names_the_filters_and_the_target() {
        let a = filter(&["schema_violation"], Some(1), None);
        let same = filter(&["schema_violation"], Some(1), None);
        assert_eq!(
            short_hash(&a.identity("orders")),
            short_hash(&same.identity("orders"))
        );
        assert_ne!(
            short_hash(&a.identity("orders")),
            short_hash(&a.identity("orders.retry"))
        );
        assert_ne!(
            short_hash(&a.identity("orders")),
            short_hash(&filter(&[], Some(1), None).identity("orders"))
        );
        assert_eq!(short_hash("").len(), 12);
        // FNV-1a of "" is its offset basis: the name must never change between releases.
        assert_eq!(short_hash(""), "cbf29ce48422");
    }
}
