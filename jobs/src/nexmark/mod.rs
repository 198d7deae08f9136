//! `sluice nexmark`: events of the Nexmark benchmark (persons, auctions and bids of an online
//! auction), to JSON-lines files or Kafka topics, for the Nexmark queries of
//! `jobs/examples/nexmark/` (docs/nexmark.md).
//!
//! The events follow the spec as the generator of Flink's Nexmark suite implements it (the mix,
//! the ids, the hot sellers, bidders and auctions, the value shapes), written anew here, with
//! two differences that make runs reproducible: event time advances from a fixed `--start` at
//! `--rate` events per second of event time whatever the wall clock does, and every random
//! value comes from `--seed`. So a DuckDB run over the files and a Sluice job over the same
//! files or topics see the same events, run after run.
//!
//! `generator` assigns the mix, ids and times, `values` draws the field values, `model` is the
//! three flat event types and `sink` the files or topics they go to.

mod generator;
mod model;
mod sink;
mod values;

#[cfg(test)]
mod tests;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_core::time::{format_time, parse_time};

pub use generator::{Config, Generator, Proportions};
pub use model::{Auction, Bid, Event, Person, Stream};

use self::sink::{Files, Kafka, Sink};
use crate::OutputFormat;
use crate::stream_cmd::parse_property;

/// `sluice nexmark --help`, after the options.
pub const HELP: &str = "Examples:
  sluice nexmark --events 1000000 --out nexmark
  sluice lake load --job jobs/examples/nexmark/q1.toml nexmark/bid.jsonl
  sluice backfill --job jobs/examples/nexmark/q1.toml --from 2024-05-01 --to 2024-05-02
  sluice nexmark --events 10000000 --brokers 127.0.0.1:9092 --partitions 4
  sluice nexmark --events 20000 --rate 0.1 --seed 7 --out /tmp/nexmark --output json

The mix is the spec's (person:auction:bid = 1:3:46 unless --proportions), and so are the ids:
sellers, bidders and auctions named by auctions and bids are recent ones, mostly the hot ones.
Event time starts at --start and advances --rate events per second of event time, however fast
the events are written; the same --seed, --start, --rate and --proportions give the same events,
to files or to Kafka. Times (dateTime, expires) are epoch milliseconds.
--out DIR writes DIR/person.jsonl, DIR/auction.jsonl and DIR/bid.jsonl (replacing them).
--brokers produces to <prefix>person, <prefix>auction and <prefix>bid (created with
--partitions when missing), keyed by the person's id, the auction's id and the bid's auction.
A progress bar is drawn on stderr when it is a terminal (not with --output json). See
docs/nexmark.md.";

/// Progress is redrawn every this many events.
const PROGRESS_EVERY: u64 = 4096;

#[derive(Args, Debug, Clone)]
pub struct NexmarkArgs {
    /// How many events to generate, persons, auctions and bids together.
    #[arg(long)]
    pub events: u64,
    /// Write DIR/person.jsonl, DIR/auction.jsonl and DIR/bid.jsonl (DIR is created).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "brokers",
        conflicts_with = "brokers"
    )]
    pub out: Option<PathBuf>,
    /// Produce to Kafka at these bootstrap servers instead of writing files.
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,
    /// With --brokers: the topics are <prefix>person, <prefix>auction and <prefix>bid.
    #[arg(long, default_value = "nexmark.")]
    pub topic_prefix: String,
    /// With --brokers: partitions of each topic it creates.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// With --brokers: an extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_parser = parse_property)]
    pub property: Vec<(String, String)>,
    /// Events per second of event time (fractions allowed: 0.1 is one event every 10 s).
    #[arg(long, default_value_t = 10_000.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Event time of the first event: RFC 3339, a date, or epoch milliseconds.
    #[arg(long, default_value = "2024-05-01T00:00:00Z")]
    pub start: String,
    /// Seed of every random value: the same seed gives the same events.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shares of persons, auctions and bids, PERSON:AUCTION:BID.
    #[arg(long, default_value = "1:3:46", value_parser = Proportions::parse)]
    pub proportions: Proportions,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|rate| rate.is_finite() && *rate > 0.0)
        .ok_or_else(|| format!("expected a positive number of events per second, got `{text}`"))
}

impl NexmarkArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let start = parse_time(&self.start).context("--start")?;
        Ok(Config {
            proportions: self.proportions,
            rate: self.rate,
            start_ms: start.div_euclid(1000),
            seed: self.seed,
        })
    }

    fn sink(&self) -> anyhow::Result<Sink> {
        match (&self.out, &self.brokers) {
            (Some(dir), _) => Ok(Sink::Files(Files::create(dir)?)),
            (None, Some(brokers)) => Ok(Sink::Kafka(Box::new(Kafka::connect(
                brokers,
                &self.property,
                &self.topic_prefix,
                self.partitions,
            )?))),
            (None, None) => anyhow::bail!("give --out DIR or --brokers HOST:PORT"),
        }
    }
}

/// What a run wrote.
#[derive(Debug, Default)]
struct Written {
    per_stream: [u64; 3],
    first_time: Option<i64>,
    last_time: Option<i64>,
}

pub async fn run(args: NexmarkArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || generate(&args))
        .await
        .context("the generator thread")?
}

fn generate(args: &NexmarkArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let mut sink = args.sink()?;
    let targets = sink.targets();
    let started = Instant::now();
    let progress = progress_bar(args.events, args.output == OutputFormat::Text);
    let mut generator = Generator::new(config);
    let mut written = Written::default();
    let mut json = Vec::with_capacity(1024);
    for n in 0..args.events {
        let event = generator.next_event();
        json.clear();
        event
            .write_json(&mut json)
            .context("encoding an event as JSON")?;
        sink.write(&event, &json)?;
        written.per_stream[event.stream().index()] += 1;
        if written.first_time.is_none() {
            written.first_time = Some(event.date_time());
        }
        written.last_time = Some(event.date_time());
        if n.is_multiple_of(PROGRESS_EVERY) {
            progress.set_position(n);
        }
    }
    sink.finish()?;
    progress.finish_and_clear();
    report(args, &written, &targets, started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn report(args: &NexmarkArgs, written: &Written, targets: &[String], seconds: f64) {
    let time = |ms: Option<i64>| ms.map(|ms| format_time(ms.saturating_mul(1000)));
    let [person, auction, bid] = written.per_stream;
    let kind = if args.out.is_some() {
        "files"
    } else {
        "topics"
    };
    match args.output {
        OutputFormat::Json => {
            let names: serde_json::Map<String, serde_json::Value> = Stream::ALL
                .iter()
                .zip(targets)
                .map(|(stream, target)| (stream.name().to_string(), target.clone().into()))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "events": args.events, "person": person, "auction": auction, "bid": bid,
                    "first_event_time": time(written.first_time),
                    "last_event_time": time(written.last_time),
                    "seed": args.seed, "rate": args.rate, kind: names, "seconds": seconds,
                })
            );
        }
        OutputFormat::Text => println!(
            "nexmark: {} events (person {person}, auction {auction}, bid {bid}), event time {} .. {}, written to {} in {seconds:.2}s",
            args.events,
            time(written.first_time).unwrap_or_else(|| "-".to_string()),
            time(written.last_time).unwrap_or_else(|| "-".to_string()),
            targets.join(", "),
        ),
    }
}

fn progress_bar(events: u64, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(events);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
