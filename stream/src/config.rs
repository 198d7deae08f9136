//! How a speed-layer daemon connects and batches. Every field has a default that gives
//! sub-second latency on one broker; the CLI maps its flags (and `SLUICE_*` variables) here.

use std::path::PathBuf;
use std::time::Duration;

/// What survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Each micro-batch is one Kafka transaction (state, results, DLQ, late, offsets).
    #[default]
    ExactlyOnce,
    /// No transactions, for brokers without them: outputs are flushed, then offsets committed,
    /// so a crash may repeat the last micro-batch's outputs.
    AtLeastOnce,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group. Default `sluice-<job>`.
    pub group_id: String,
    /// Stable per daemon instance so that a restarted daemon fences and aborts its
    /// predecessor's open transaction. Default: derived from the job, host and state dir.
    pub transactional_id: String,
    pub guarantee: Guarantee,
    /// A micro-batch closes at this many records (default 100 000) ...
    pub batch_max_records: usize,
    /// ... or this long after its first record (default 100 ms) ...
    pub batch_linger: Duration,
    /// ... or once its records' keys and values reach this many bytes (default 16 MiB).
    pub batch_max_bytes: usize,
    /// A partition with no records for this long stops holding the job watermark back
    /// (default 30 s).
    pub idle_timeout: Duration,
    /// RocksDB state directory (default `./state/<job>`). It is a cache of `<job>.speed`:
    /// kept across a clean stop (with a checkpoint of the changelog offsets it reflects),
    /// wiped and restored from the whole changelog after a crash or a plan change.
    pub state_dir: PathBuf,
    /// Static group membership (`group.instance.id` = the transactional id; default on): a
    /// restarted daemon takes its old place and partitions at once instead of waiting for the
    /// broker to expire the dead member. Off, a daemon that stops leaves the group and its
    /// partitions move to the others immediately.
    pub static_membership: bool,
    /// Larger records are dead-lettered as `oversized` (default 1 MiB).
    pub max_record_bytes: usize,
    /// Extra librdkafka properties (`-X key=value`), applied last.
    pub client_overrides: Vec<(String, String)>,
}

impl StreamConfig {
    pub fn new(job: &str, brokers: impl Into<String>) -> StreamConfig {
        let state_dir = PathBuf::from("state").join(job);
        StreamConfig {
            brokers: brokers.into(),
            group_id: sluice_core::topics::stream_group(job),
            transactional_id: default_transactional_id(job, &state_dir),
            guarantee: Guarantee::default(),
            batch_max_records: 100_000,
            batch_linger: Duration::from_millis(100),
            batch_max_bytes: 16 << 20,
            idle_timeout: Duration::from_secs(30),
            state_dir,
            static_membership: true,
            max_record_bytes: sluice_core::decode::DEFAULT_MAX_RECORD_BYTES,
            client_overrides: Vec::new(),
        }
    }

    /// Sets the state directory and the transactional id derived from it.
    pub fn with_state_dir(mut self, job: &str, state_dir: PathBuf) -> StreamConfig {
        self.transactional_id = default_transactional_id(job, &state_dir);
        self.state_dir = state_dir;
        self
    }
}

/// Two daemons on one host differ by state directory; a restarted daemon keeps its id.
pub fn default_transactional_id(job: &str, state_dir: &std::path::Path) -> String {
    let absolute = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let identity = format!("{host}\u{0}{}", absolute.display());
    let hash = identity.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!("sluice-{job}-{hash:016x}")
}
