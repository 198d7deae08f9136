//! `sluice dlq list` and `sluice dlq show`: what a job's DLQ holds, counted or record by record.
//! Both read the topic as it was when they started, without a consumer group, and never
//! commit anything.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use rdkafka::message::{BorrowedMessage, Message};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sluice_core::time::format_time;

use super::record::{self, Origin, RawHeader, UNKNOWN, plain};
use super::scan::{Flow, Range, scan};
use super::{DeadLetters, DlqTarget, parse_error_type};
use crate::OutputFormat;

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: DlqTarget,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub target: DlqTarget,
    /// Only records of this error type (`sluice.error.type`; `unknown`: records without one).
    #[arg(long, value_parser = parse_error_type)]
    pub error_type: Option<String>,
    /// Only records read from this source partition (`sluice.source.partition`).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Print at most this many records.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Start at this offset of every DLQ partition [default: the earliest].
    #[arg(long)]
    pub offset: Option<i64>,
}

/// `sluice dlq list --output json`.
#[derive(Debug, Serialize)]
struct ListReport {
    topic: String,
    total: u64,
    by_error_type: Vec<ErrorTypeCount>,
    by_source_partition: Vec<PartitionCount>,
}

#[derive(Debug, Serialize)]
struct ErrorTypeCount {
    error_type: String,
    count: u64,
    /// The oldest and newest DLQ record timestamps (when they were dead-lettered), RFC 3339.
    oldest: Option<String>,
    newest: Option<String>,
}

#[derive(Debug, Serialize)]
struct PartitionCount {
    /// `null`: records without a `sluice.source.partition` header.
    partition: Option<i32>,
    count: u64,
}

#[derive(Default)]
struct TypeTally {
    count: u64,
    oldest_ms: Option<i64>,
    newest_ms: Option<i64>,
}

#[derive(Default)]
struct Tally {
    total: u64,
    by_type: BTreeMap<String, TypeTally>,
    by_partition: BTreeMap<i32, u64>,
    without_partition: u64,
}

impl Tally {
    fn add(&mut self, message: &BorrowedMessage<'_>) {
        let headers = record::headers(message);
        let origin = Origin::of(&headers);
        self.total += 1;
        let tally = self
            .by_type
            .entry(origin.error_type.to_string())
            .or_default();
        tally.count += 1;
        if let Some(ms) = message.timestamp().to_millis() {
            tally.oldest_ms = Some(tally.oldest_ms.map_or(ms, |t| t.min(ms)));
            tally.newest_ms = Some(tally.newest_ms.map_or(ms, |t| t.max(ms)));
        }
        match origin.source_partition {
            Some(partition) => *self.by_partition.entry(partition).or_default() += 1,
            None => self.without_partition += 1,
        }
    }

    fn report(self, topic: &str) -> ListReport {
        let time = |ms: Option<i64>| ms.and_then(|ms| ms.checked_mul(1000)).map(format_time);
        let mut by_error_type: Vec<ErrorTypeCount> = self
            .by_type
            .into_iter()
            .map(|(error_type, t)| ErrorTypeCount {
                error_type,
                count: t.count,
                oldest: time(t.oldest_ms),
                newest: time(t.newest_ms),
            })
            .collect();
        // The most frequent first; the sort is stable, so ties stay in name order.
        by_error_type.sort_by_key(|row| std::cmp::Reverse(row.count));
        let mut by_source_partition: Vec<PartitionCount> = self
            .by_partition
            .into_iter()
            .map(|(partition, count)| PartitionCount {
                partition: Some(partition),
                count,
            })
            .collect();
        if self.without_partition > 0 {
            by_source_partition.push(PartitionCount {
                partition: None,
                count: self.without_partition,
            });
        }
        ListReport {
            topic: topic.to_string(),
            total: self.total,
            by_error_type,
            by_source_partition,
        }
    }
}

pub(crate) fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let dlq = DeadLetters::open(&args.target)?;
    let reader = dlq.reader(&args.target)?;
    let ranges: Vec<Range> = (0..dlq.partitions)
        .zip(&dlq.watermarks)
        .map(|(partition, &(low, high))| Range {
            partition,
            from: low,
            stop: high,
        })
        .collect();
    let mut tally = Tally::default();
    scan(&reader, &dlq.topic, &ranges, |message| {
        tally.add(message);
        Flow::More
    })?;
    let report = tally.report(&dlq.topic);
    match args.target.output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&report)?),
        OutputFormat::Text => print!("{}", list_text(&report)),
    }
    Ok(ExitCode::SUCCESS)
}

fn list_text(report: &ListReport) -> String {
    let mut out = format!("{}: {} dead letters\n", report.topic, report.total);
    if report.total == 0 {
        return out;
    }
    out.push_str(&format!(
        "\n{:<24} {:>10}  {:<30} {:<30}\n",
        "error type", "count", "oldest", "newest"
    ));
    for row in &report.by_error_type {
        out.push_str(&format!(
            "{:<24} {:>10}  {:<30} {:<30}\n",
            plain(&row.error_type),
            row.count,
            row.oldest.as_deref().unwrap_or("-"),
            row.newest.as_deref().unwrap_or("-")
        ));
    }
    out.push_str(&format!("\n{:<24} {:>10}\n", "source partition", "count"));
    for row in &report.by_source_partition {
        let partition = row
            .partition
            .map_or_else(|| UNKNOWN.to_string(), |p| p.to_string());
        out.push_str(&format!("{partition:<24} {:>10}\n", row.count));
    }
    out
}

pub(crate) fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let dlq = DeadLetters::open(&args.target)?;
    let reader = dlq.reader(&args.target)?;
    let mut shown = 0;
    let mut failed: Option<std::io::Error> = None;
    let stdout = std::io::stdout();
    // One partition after another: the output's order does not depend on fetch timing.
    for (partition, &(low, high)) in (0..dlq.partitions).zip(&dlq.watermarks) {
        if shown >= args.limit || failed.is_some() {
            break;
        }
        let range = Range {
            partition,
            from: args.offset.map_or(low, |o| o.max(low)),
            stop: high,
        };
        scan(&reader, &dlq.topic, &[range], |message| {
            let headers = record::headers(message);
            let origin = Origin::of(&headers);
            let wanted = args
                .error_type
                .as_deref()
                .is_none_or(|t| t == origin.error_type)
                && args
                    .partition
                    .is_none_or(|p| origin.source_partition == Some(p));
            if !wanted {
                return Flow::More;
            }
            let text = match args.target.output {
                OutputFormat::Json => show_json(&dlq.topic, message, &headers, &origin).to_string(),
                OutputFormat::Text => show_text(&dlq.topic, message, &headers, &origin),
            };
            if let Err(e) = writeln!(stdout.lock(), "{text}") {
                failed = Some(e);
                return Flow::Enough;
            }
            shown += 1;
            if shown >= args.limit {
                Flow::Enough
            } else {
                Flow::More
            }
        })?;
    }
    match failed {
        // `sluice dlq show | head`: the reader has had enough.
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Some(e) => return Err(anyhow::Error::new(e).context("writing to stdout")),
        None if args.target.output == OutputFormat::Text && shown == 0 && args.limit > 0 => {
            eprintln!("no dead letters in {} match", dlq.topic);
        }
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn timestamp(message: &BorrowedMessage<'_>) -> (Option<i64>, Option<String>) {
    let ms = message.timestamp().to_millis();
    (ms, ms.and_then(|ms| ms.checked_mul(1000)).map(format_time))
}

/// One record as a JSON object (one line of `show --output json`).
fn show_json(
    topic: &str,
    message: &BorrowedMessage<'_>,
    headers: &[RawHeader<'_>],
    origin: &Origin<'_>,
) -> Value {
    let mut named = Map::new();
    for h in headers {
        named.insert(
            String::from_utf8_lossy(h.name).into_owned(),
            record::header_value_json(h.value),
        );
    }
    let (ms, time) = timestamp(message);
    json!({
        "topic": topic,
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": time,
        "timestamp_ms": ms,
        "error_type": origin.error_type,
        "source_topic": origin.source_topic,
        "source_partition": origin.source_partition,
        "source_offset": origin.source_offset,
        "headers": named,
        "key": record::bytes_json(message.key()),
        "value": record::bytes_json(message.payload()),
    })
}

/// One record as text: where it is, when and why it was dead-lettered, its headers, key and
/// value, every byte of it safe for a terminal.
fn show_text(
    topic: &str,
    message: &BorrowedMessage<'_>,
    headers: &[RawHeader<'_>],
    origin: &Origin<'_>,
) -> String {
    let (_, time) = timestamp(message);
    let mut out = format!(
        "{} [{}] offset {}  {}  {}\n",
        plain(topic),
        message.partition(),
        message.offset(),
        time.as_deref().unwrap_or("(no timestamp)"),
        plain(origin.error_type)
    );
    if headers.is_empty() {
        out.push_str("  headers: (none)\n");
    } else {
        out.push_str("  headers:\n");
        for h in headers {
            out.push_str(&format!(
                "    {}: {}\n",
                plain(&String::from_utf8_lossy(h.name)),
                record::header_value_text(h.value)
            ));
        }
    }
    out.push_str(&format!(
        "  key ({}): {}\n",
        size(message.key()),
        record::bytes_text(message.key())
    ));
    out.push_str(&format!(
        "  value ({}): {}",
        size(message.payload()),
        record::bytes_text(message.payload())
    ));
    out
}

fn size(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(|| "none".to_string(), |b| format!("{} bytes", b.len()))
}
