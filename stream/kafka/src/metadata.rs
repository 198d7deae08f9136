//! What the cluster's metadata says about topics: how many partitions one has, which topics
//! exist, and the one loop that waits for a topic someone else creates (the speed layer's
//! `<job>.speed` for serving, a freshly created source topic for the demo).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use crate::error::{Error, Result};

/// The number of partitions of `topic` in the metadata now; 0 when it does not exist.
pub fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(Error::during(format!("reading the metadata of `{topic}`")))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()))
}

/// The names of the cluster's topics that have partitions and no error.
pub fn topic_names<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
) -> Result<Vec<String>> {
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(Error::during("listing the cluster's topics"))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name().to_string())
        .collect())
}

/// How [`wait_for_topic`] waits.
#[derive(Debug, Clone, Copy)]
pub struct TopicWait<'a> {
    /// Give up after this long; `None` waits until `stop` (or forever).
    pub timeout: Option<Duration>,
    /// The pause between two metadata requests.
    pub every: Duration,
    /// How long one metadata request may take.
    pub request_timeout: Duration,
    /// Once set, the wait ends with whatever the metadata says (0 partitions, say).
    pub stop: Option<&'a AtomicBool>,
}

impl<'a> TopicWait<'a> {
    /// Waits at most `timeout`, asking every `every`, each request taking at most `timeout`.
    pub fn up_to(timeout: Duration, every: Duration) -> TopicWait<'a> {
        TopicWait {
            timeout: Some(timeout),
            every,
            request_timeout: timeout,
            stop: None,
        }
    }

    /// Waits until `stop` is set, asking every `every`, each request taking at most
    /// `request_timeout`.
    pub fn until_stopped(
        stop: &'a AtomicBool,
        every: Duration,
        request_timeout: Duration,
    ) -> TopicWait<'a> {
        TopicWait {
            timeout: None,
            every,
            request_timeout,
            stop: Some(stop),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.is_some_and(|stop| stop.load(Ordering::SeqCst))
    }
}

/// Waits until `topic` has partitions and returns how many: asks the metadata, and while the
/// topic is missing calls `waiting` (to log, say) and pauses. Returns early with the count seen
/// (maybe 0) once the wait's stop flag is set; fails with [`Error::NoPartitions`] after its
/// timeout, or when a metadata request fails.
pub fn wait_for_topic<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    wait: &TopicWait<'_>,
    mut waiting: impl FnMut(),
) -> Result<usize> {
    let started = Instant::now();
    loop {
        let partitions = partition_count(consumer, topic, wait.request_timeout)?;
        if partitions > 0 || wait.stopped() {
            return Ok(partitions);
        }
        if let Some(timeout) = wait.timeout
            && started.elapsed() > timeout
        {
            return Err(Error::NoPartitions {
                topic: topic.to_string(),
                waited: timeout,
            });
        }
        waiting();
        std::thread::sleep(wait.every);
    }
}
