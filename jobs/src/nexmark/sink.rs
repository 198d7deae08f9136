//! Where the generated events go: three JSON-lines files in a directory (what `sluice lake
//! load` and DuckDB read), or three Kafka topics (what `sluice stream` reads). Either way one
//! line or record per event, in event order within each stream.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientContext;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use sluice_kafka::{Created, client_config};

use super::model::{Event, Stream};

/// How long creating the topics may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the last events may take to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// Delivery reports are served every this many records (and whenever the queue is full).
const POLL_EVERY: u64 = 1024;

/// The files or topics, one per stream, and how to reach them.
pub(super) enum Sink {
    Files(Files),
    Kafka(Box<Kafka>),
}

impl Sink {
    /// Writes `json`, the encoding of `event`, to the event's stream.
    pub(super) fn write(&mut self, event: &Event, json: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::Files(files) => files.write(event.stream(), json),
            Sink::Kafka(kafka) => kafka.send(event, json),
        }
    }

    /// Flushes everything; the events are all written (or acknowledged) once this returns.
    pub(super) fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Files(files) => files.finish(),
            Sink::Kafka(kafka) => kafka.finish(),
        }
    }

    /// Where each stream went, in [`Stream::ALL`] order: a file path or a topic name.
    pub(super) fn targets(&self) -> Vec<String> {
        match self {
            Sink::Files(files) => files
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            Sink::Kafka(kafka) => kafka.topics.to_vec(),
        }
    }
}

/// `<dir>/person.jsonl`, `<dir>/auction.jsonl`, `<dir>/bid.jsonl`, replaced if present.
pub(super) struct Files {
    paths: Vec<PathBuf>,
    writers: Vec<BufWriter<File>>,
}

impl Files {
    pub(super) fn create(dir: &Path) -> anyhow::Result<Files> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let paths: Vec<PathBuf> = Stream::ALL
            .iter()
            .map(|s| dir.join(format!("{}.jsonl", s.name())))
            .collect();
        let mut writers = Vec::with_capacity(paths.len());
        for path in &paths {
            let file = File::create(path).with_context(|| format!("writing {}", path.display()))?;
            writers.push(BufWriter::with_capacity(1 << 20, file));
        }
        Ok(Files { paths, writers })
    }

    fn write(&mut self, stream: Stream, json: &[u8]) -> anyhow::Result<()> {
        let i = stream.index();
        let writer = &mut self.writers[i];
        writer
            .write_all(json)
            .and_then(|()| writer.write_all(b"\n"))
            .with_context(|| format!("writing {}", self.paths[i].display()))
    }

    fn finish(mut self) -> anyhow::Result<()> {
        for (writer, path) in self.writers.iter_mut().zip(&self.paths) {
            writer
                .flush()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Counts deliveries that failed, so a run whose events did not all arrive says so instead of
/// reporting success.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut first) = self.first_error.lock()
                && first.is_none()
            {
                *first = Some(error.to_string());
            }
        }
    }
}

/// Topics `<prefix>person`, `<prefix>auction`, `<prefix>bid`, created when missing.
pub(super) struct Kafka {
    producer: BaseProducer<Deliveries>,
    topics: [String; 3],
    brokers: String,
    sent: u64,
}

impl Kafka {
    pub(super) fn connect(
        brokers: &str,
        overrides: &[(String, String)],
        prefix: &str,
        partitions: i32,
    ) -> anyhow::Result<Kafka> {
        let topics = Stream::ALL.map(|s| format!("{prefix}{}", s.name()));
        create_topics(brokers, overrides, &topics, partitions)?;
        let producer: BaseProducer<Deliveries> = client_config(brokers, overrides, |client| {
            // Idempotence keeps each partition in event-time order through retries.
            client
                .set("enable.idempotence", "true")
                .set("linger.ms", "20")
                .set("queue.buffering.max.messages", "200000");
        })
        .create_with_context(Deliveries::default())
        .with_context(|| format!("connecting to Kafka at {brokers}"))?;
        Ok(Kafka {
            producer,
            topics,
            brokers: brokers.to_string(),
            sent: 0,
        })
    }

    fn send(&mut self, event: &Event, json: &[u8]) -> anyhow::Result<()> {
        let topic = &self.topics[event.stream().index()];
        let key = event.key().to_string();
        let record = BaseRecord::<str, [u8]>::to(topic)
            .key(key.as_str())
            .payload(json);
        sluice_kafka::send_waiting(&self.producer, record)
            .with_context(|| format!("producing to `{topic}` on {}", self.brokers))?;
        self.sent += 1;
        if self.sent.is_multiple_of(POLL_EVERY) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        self.producer.flush(FLUSH_TIMEOUT).with_context(|| {
            format!(
                "waiting for {} to acknowledge the last events",
                self.brokers
            )
        })?;
        let context = self.producer.context();
        let failed = context.failed.load(Ordering::SeqCst);
        if failed > 0 {
            let first = context
                .first_error
                .lock()
                .ok()
                .and_then(|first| first.clone())
                .unwrap_or_default();
            anyhow::bail!(
                "{failed} of {} events were not delivered to {} (first error: {first})",
                self.sent,
                self.brokers
            );
        }
        Ok(())
    }
}

/// Creates the topics that are missing; one that exists is used as it is.
fn create_topics(
    brokers: &str,
    overrides: &[(String, String)],
    topics: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let created = sluice_kafka::create_topics(
        &client_config(brokers, overrides, |_| {}),
        &new,
        Some(ADMIN_TIMEOUT),
    )
    .with_context(|| format!("creating topics {} on {brokers}", topics.join(", ")))?;
    for (topic, outcome) in created {
        if outcome == Created::Existed {
            tracing::warn!(%topic, "the topic exists already: the events are added to what it holds");
        }
    }
    Ok(())
}
