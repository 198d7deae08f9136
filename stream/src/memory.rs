//! The speed layer's memory bound: what each buffer of a `sluice stream` process may hold at
//! most, computed from its effective configuration (flags and `-X` overrides included), so it
//! is logged at start, documented and tested rather than hoped for.
//!
//! The bound counts what grows with the input; the process's own footprint (code, allocator,
//! threads, clients) comes on top and does not grow.

use std::fmt;

use rdkafka::ClientConfig;

use crate::config::StreamConfig;
use crate::kafka::{consumer_config, producer_config};
use crate::sink::LakeSinkConfig;
use crate::state::STATE_MEMORY_BYTES;

/// A micro-batch is held as records, decoded into Arrow and run through the plan, and its
/// outputs (state rows, results, diverted records) are built before they are produced: each at
/// most about the batch's size.
const MICRO_BATCH_COPIES: u64 = 4;
/// The sink's buffer, its Arrow batches and the Parquet encoder's buffers during a commit.
const SINK_BUFFER_COPIES: u64 = 3;

/// One line per buffer, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBound {
    pub terms: Vec<(&'static str, u64)>,
}

impl MemoryBound {
    /// The bound of a daemon with `config`, with the raw-lake sink in the process when `sink`
    /// is given.
    pub fn of(config: &StreamConfig, sink: Option<&LakeSinkConfig>) -> MemoryBound {
        let fetch_queue = fetch_queue(config);
        let consumers = if sink.is_some() { 2 } else { 1 };
        let producer = producer_config(config);
        let mut terms = vec![
            (
                "micro-batch (records, Arrow, outputs)",
                MICRO_BATCH_COPIES * config.batch_max_bytes as u64,
            ),
            ("consumer fetch queues", consumers * fetch_queue),
            (
                "producer queue",
                setting(&producer, "queue.buffering.max.kbytes").unwrap_or(1_048_576) * 1024,
            ),
            ("state store (RocksDB)", STATE_MEMORY_BYTES),
            ("restore chunk", crate::daemon::RESTORE_CHUNK_BYTES as u64),
        ];
        if let Some(sink) = sink {
            terms.push((
                "raw-lake sink buffer",
                SINK_BUFFER_COPIES * sink.commit_bytes as u64,
            ));
        }
        MemoryBound { terms }
    }

    /// Adds the raw-lake sinks of a job's inputs beyond its primary stream (`others` of
    /// them, each with `sink`'s settings): a consumer and a buffer each.
    pub fn with_other_lake_sinks(
        mut self,
        config: &StreamConfig,
        others: usize,
        sink: &LakeSinkConfig,
    ) -> MemoryBound {
        if others > 0 {
            let others = others as u64;
            self.terms.push((
                "other inputs' raw-lake sinks (fetch queues)",
                others * fetch_queue(config),
            ));
            self.terms.push((
                "other inputs' raw-lake sinks (buffers)",
                others * SINK_BUFFER_COPIES * sink.commit_bytes as u64,
            ));
        }
        self
    }

    /// Adds `loops` sink loops (a PostgreSQL sink runs two: results and dead letters) that
    /// commit every `commit_bytes`: each has a consumer and a buffer.
    pub fn with_sinks(
        mut self,
        config: &StreamConfig,
        loops: u64,
        commit_bytes: usize,
    ) -> MemoryBound {
        if loops > 0 {
            self.terms
                .push(("sink consumer fetch queues", loops * fetch_queue(config)));
            self.terms.push((
                "sink buffers",
                loops * SINK_BUFFER_COPIES * commit_bytes as u64,
            ));
        }
        self
    }

    /// Adds a deduplicating job's per-micro-batch operator state: the batch's rows encoded
    /// into held rows, and those writes again as `<job>.state` records. (Held rows live in
    /// RocksDB between micro-batches, inside its term; a release decides every held row the
    /// watermark passed at once, which after a watermark jump is up to the rows of
    /// `watermark_delay + allowed_lateness`: docs/jobs.md.)
    pub fn with_operator_state(mut self, config: &StreamConfig) -> MemoryBound {
        self.terms.push((
            "operator state writes (dedup)",
            2 * config.batch_max_bytes as u64,
        ));
        self
    }

    pub fn total_bytes(&self) -> u64 {
        self.terms.iter().map(|(_, b)| b).sum()
    }

    pub fn total_mib(&self) -> u64 {
        mib(self.total_bytes())
    }
}

/// What one consumer's fetch queue may hold. The queue may overshoot its limit by one fetch
/// response. A compliant broker keeps a response under `fetch.max.bytes`, but some (noida-db)
/// answer with everything unread; librdkafka refuses any response over
/// `receive.message.max.bytes`, so that is the bound.
fn fetch_queue(config: &StreamConfig) -> u64 {
    let consumer = consumer_config(config, &config.group_id, "");
    let queue = setting(&consumer, "queued.max.messages.kbytes").unwrap_or(65_536) * 1024;
    let fetch_max = setting(&consumer, "fetch.max.bytes").unwrap_or(queue.min(52_428_800));
    let response = setting(&consumer, "receive.message.max.bytes")
        .unwrap_or((fetch_max + 512).max(100_000_000));
    queue + response
}

/// A numeric property the client sets (librdkafka's default applies where it does not).
fn setting(client: &ClientConfig, key: &str) -> Option<u64> {
    client.get(key).and_then(|v| v.parse().ok())
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

impl fmt::Display for MemoryBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB (", self.total_mib())?;
        for (i, (name, bytes)) in self.terms.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{name} {} MiB", mib(*bytes))?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_flags_and_client_overrides() {
        let mut config = StreamConfig::new("j", "127.0.0.1:9092");
        let defaults = MemoryBound::of(&config, Some(&LakeSinkConfig::default()));
        config.batch_max_bytes = 1 << 20;
        config.client_overrides = vec![
            ("queued.max.messages.kbytes".into(), "1024".into()),
            ("receive.message.max.bytes".into(), "2097152".into()),
            ("queue.buffering.max.kbytes".into(), "2048".into()),
        ];
        let small = MemoryBound::of(&config, None);
        let term = |bound: &MemoryBound, name: &str| {
            bound
                .terms
                .iter()
                .find(|(n, _)| n.starts_with(name))
                .map(|(_, b)| *b)
        };
        assert_eq!(term(&small, "micro-batch"), Some(4 << 20));
        // 1 MiB queued, overshot by one response of at most 2 MiB.
        assert_eq!(term(&small, "consumer fetch queues"), Some(3 << 20));
        assert_eq!(
            term(&defaults, "consumer fetch queues"),
            Some(2 * ((16 << 20) + 100_000_000))
        );
        assert_eq!(term(&small, "producer queue"), Some(2 << 20));
        assert_eq!(term(&small, "raw-lake sink"), None);
        assert_eq!(term(&defaults, "raw-lake sink"), Some(192 << 20));
        assert!(defaults.total_bytes() > small.total_bytes());
        assert!(
            small
                .to_string()
                .starts_with(&format!("{} MiB (micro-batch", mib(small.total_bytes())))
        );
    }
}
