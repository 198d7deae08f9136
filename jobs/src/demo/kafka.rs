//! The demo's Kafka: librdkafka's in-process mock cluster on a thread of its own (its handle is
//! not `Send`), with every topic of the job created up front because the mock cluster does not
//! implement the CreateTopics request; or an existing Kafka, where only the source topic is
//! created here. Which one it is decides the speed layer's guarantee.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::BaseConsumer;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use sluice_core::topics::Topics;
use sluice_kafka::{Created, TopicWait, client_config};
use sluice_stream::Guarantee;

pub(super) const IN_PROCESS: &str = "in-process";
/// How long admin and metadata requests to an external Kafka may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the demo's Kafka is.
pub(super) enum Kafka {
    /// librdkafka's mock cluster, owned by `thread` until `stop` is set.
    InProcess {
        bootstrap: String,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    },
    External {
        bootstrap: String,
    },
}

impl Kafka {
    pub(super) fn bootstrap(&self) -> &str {
        match self {
            Kafka::InProcess { bootstrap, .. } | Kafka::External { bootstrap } => bootstrap,
        }
    }

    pub(super) fn label(&self) -> &'static str {
        match self {
            Kafka::InProcess { .. } => IN_PROCESS,
            Kafka::External { .. } => "external",
        }
    }

    /// The mock cluster writes no transaction markers, so read_committed consumers would never
    /// see transactional records there.
    pub(super) fn guarantee(&self) -> Guarantee {
        match self {
            Kafka::InProcess { .. } => Guarantee::AtLeastOnce,
            Kafka::External { .. } => Guarantee::ExactlyOnce,
        }
    }

    pub(super) async fn stop(self) {
        if let Kafka::InProcess { stop, thread, .. } = self {
            stop.store(true, Ordering::SeqCst);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Starts the mock cluster on its own thread and waits for its bootstrap address.
pub(super) async fn start_in_process(topics: &Topics, partitions: i32) -> anyhow::Result<Kafka> {
    let (sender, receiver) = tokio::sync::oneshot::channel::<anyhow::Result<String>>();
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, topics) = (stop.clone(), topics.clone());
    let thread = std::thread::Builder::new()
        .name("demo-kafka".into())
        .spawn(move || {
            let cluster = match mock_cluster(&topics, partitions) {
                Ok(cluster) => cluster,
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            };
            if sender.send(Ok(cluster.bootstrap_servers())).is_err() {
                return;
            }
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(cluster);
        })
        .context("starting the in-process Kafka thread")?;
    let bootstrap = receiver
        .await
        .context("the in-process Kafka thread ended before it started")??;
    Ok(Kafka::InProcess {
        bootstrap,
        stop,
        thread,
    })
}

/// The topic the demo's schema registry keeps schemas in.
pub(super) const REGISTRY_TOPIC: &str = "_schemas";

/// A one-broker mock cluster with every topic of the job (`<job>.speed` needs as many
/// partitions as the source).
fn mock_cluster(
    topics: &Topics,
    partitions: i32,
) -> anyhow::Result<MockCluster<'static, DefaultProducerContext>> {
    let cluster = MockCluster::new(1).context("starting the in-process Kafka cluster")?;
    for topic in [
        &topics.source,
        &topics.speed,
        &topics.results,
        &topics.dlq,
        &topics.late,
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic `{topic}` on the in-process Kafka"))?;
    }
    // `--format avro`: the in-process registry's store (it cannot create topics here).
    cluster
        .create_topic(REGISTRY_TOPIC, 1, 1)
        .with_context(|| format!("creating topic `{REGISTRY_TOPIC}` on the in-process Kafka"))?;
    Ok(cluster)
}

/// Creates the source topic on an existing Kafka (the speed layer creates its own topics) and
/// waits until its metadata shows it.
pub(super) async fn start_external(
    brokers: &str,
    topics: &Topics,
    partitions: i32,
) -> anyhow::Result<Kafka> {
    let topic = NewTopic::new(&topics.source, partitions, TopicReplication::Fixed(1));
    let created = sluice_kafka::create_topics(
        &client_config(brokers, &[], |_| {}),
        &[topic],
        Some(KAFKA_TIMEOUT),
    )
    .with_context(|| format!("creating topic `{}` on {brokers}", topics.source))?;
    for (name, outcome) in created {
        if outcome == Created::Existed {
            tracing::warn!(
                topic = %name,
                "the demo's source topic already exists on {brokers}: records of an earlier run there are \
                 read again (use new topics for a clean run)"
            );
        }
    }
    wait_for_partitions(brokers, &topics.source)?;
    Ok(Kafka::External {
        bootstrap: brokers.to_string(),
    })
}

/// Waits a little for a new topic's metadata to show its partitions.
fn wait_for_partitions(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = client_config(brokers, &[], |_| {})
        .create()
        .with_context(|| format!("connecting to Kafka at {brokers}"))?;
    let wait = TopicWait::up_to(KAFKA_TIMEOUT, Duration::from_millis(200));
    sluice_kafka::wait_for_topic(&consumer, topic, &wait, || {})
        .with_context(|| format!("waiting for `{topic}` on {brokers}"))?;
    Ok(())
}
