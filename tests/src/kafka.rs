//! The Kafka side of the end-to-end harness: the broker of the test run, per-test topics,
//! producing events, reading topics to their end (read_committed), and `sluice` child processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_kafka::{Created, client_config};

use crate::repo_path;

/// The bootstrap address of the run's broker: `SLUICE_TEST_BOOTSTRAP` (set by `tests/run.sh`,
/// or pointing at your own Kafka), else one started with `tests/broker.sh start` (left running
/// for the next test binary; `tests/broker.sh stop` stops it).
pub fn bootstrap() -> String {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| {
            if let Ok(address) = std::env::var("SLUICE_TEST_BOOTSTRAP")
                && !address.trim().is_empty()
            {
                return address;
            }
            let output = Command::new(repo_path("tests/broker.sh"))
                .arg("start")
                .output()
                .expect("running tests/broker.sh start");
            let stdout = String::from_utf8_lossy(&output.stdout);
            stdout
                .lines()
                .find_map(|l| l.strip_prefix("BOOTSTRAP="))
                .unwrap_or_else(|| {
                    panic!(
                        "tests/broker.sh start printed no BOOTSTRAP: {stdout} {}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                })
                .to_string()
        })
        .clone()
}

/// Extra `sluice stream` arguments for tests that run several daemons in one group. noida-db,
/// the default test broker, never assigns partitions to a second member of a cooperative
/// (incremental) group, while the eager protocol works on it; measured with librdkafka 2.16:
/// after a second member joins, the first gives up half its partitions and nobody gets them.
/// So against noida-db the daemons use the eager round-robin assignor; against your own broker
/// (`SLUICE_BROKER=external`) they keep their default, cooperative-sticky.
pub fn group_protocol_args() -> Vec<&'static str> {
    match std::env::var("SLUICE_BROKER").as_deref() {
        Ok("external") => Vec::new(),
        _ => vec!["-X", "partition.assignment.strategy=roundrobin"],
    }
}

/// A topic name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

pub fn create_topic(topic: &str, partitions: i32) {
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let created =
        sluice_kafka::create_topics(&client_config(&bootstrap(), &[], |_| {}), &[new], None)
            .unwrap_or_else(|e| panic!("creating {topic}: {e}"));
    for (name, outcome) in created {
        assert_eq!(outcome, Created::New, "creating {name}: it already exists");
    }
}

/// Produces `(partition, key, value)` records and waits for every delivery.
/// A record to produce: (partition, key, value).
pub type Outgoing = (i32, Option<Vec<u8>>, Vec<u8>);

pub fn produce(topic: &str, records: &[Outgoing]) {
    let producer: BaseProducer = client_config(&bootstrap(), &[], |client| {
        client
            .set("linger.ms", "5")
            .set("enable.idempotence", "true");
    })
    .create()
    .expect("producer");
    for (partition, key, value) in records {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(*partition)
            .payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        sluice_kafka::send_waiting(&producer, record).unwrap_or_else(|e| panic!("produce: {e}"));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Every committed record of `topic` (read_committed), up to its end now.
pub fn read_all(topic: &str) -> Vec<Read> {
    // noida-db, the default test broker, ignores `fetch.max.bytes` and answers a fetch with
    // everything unread; librdkafka refuses a response over `receive.message.max.bytes`
    // ("Invalid response size", reported as BadMessage), so a reader of a topic larger than its
    // 100 MB default would fail. A test reads whole topics of a few hundred MB at most.
    let large_responses = [(
        "receive.message.max.bytes".to_string(),
        "1000000000".to_string(),
    )];
    let consumer: BaseConsumer =
        sluice_kafka::reader_config(&bootstrap(), &large_responses, &unique("reader"))
            .create()
            .expect("consumer");
    let partitions = sluice_kafka::partition_count(&consumer, topic, Duration::from_secs(10))
        .expect("metadata") as i32;
    let watermarks =
        sluice_kafka::watermarks(&consumer, topic, partitions, Duration::from_secs(10))
            .expect("watermarks");
    let mut list = TopicPartitionList::new();
    let mut open = 0;
    for (p, (low, high)) in (0..).zip(watermarks) {
        if high > low {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .expect("assign");
            open += 1;
        }
    }
    let mut out = Vec::new();
    if open == 0 {
        return out;
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while open > 0 {
        assert!(Instant::now() < deadline, "reading {topic} took over 60 s");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
    }
    out
}

/// The committed offset of `group` on each partition of `topic` (-1 when none).
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = client_config(&bootstrap(), &[], |client| {
        client.set("group.id", group);
    })
    .create()
    .expect("consumer");
    sluice_kafka::committed(&consumer, topic, partitions, Duration::from_secs(10))
        .expect("committed")
        .into_iter()
        .map(|offset| offset.unwrap_or(-1))
        .collect()
}

/// The `sluice` binary next to the test executable (built by `cargo test --workspace`).
pub fn sluice_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("SLUICE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable");
    let debug = exe.parent().and_then(Path::parent).expect("target dir");
    debug.join("sluice")
}

/// A `sluice` child process, killed (SIGKILL) if still running when dropped, so a failing test
/// leaves no daemon behind.
pub struct Daemon(pub Child);

impl Daemon {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then waits up to 30 s for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { kill(self.0.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().expect("waiting for sluice") {
                return status;
            }
            assert!(Instant::now() < deadline, "sluice did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

/// `sluice stream` for `job_file` as a child process, logging to `log`.
pub fn spawn_stream(
    job_file: &Path,
    lake: &Path,
    state_dir: &Path,
    log: &Path,
    extra: &[&str],
) -> Daemon {
    let log_file = std::fs::File::create(log).expect("log file");
    Command::new(sluice_bin())
        .arg("stream")
        .arg("--job")
        .arg(job_file)
        .arg("--brokers")
        .arg(bootstrap())
        .arg("--lake")
        .arg(lake)
        .arg("--state-dir")
        .arg(state_dir)
        // A test's own `--idle-timeout` in `extra` replaces the harness's (clap refuses two).
        .args(
            ["--idle-timeout", "2s"]
                .into_iter()
                .filter(|_| !extra.contains(&"--idle-timeout")),
        )
        .args([
            "--lake-commit-interval",
            "1s",
            "--max-record-bytes",
            "10000",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map(Daemon)
        .expect("spawning sluice stream")
}

/// Waits until `check` holds, polling every 200 ms, or panics after `limit` with `what`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `measure` reaches `target`, polling every `every`; panics with `what` only when
/// the measure has not grown for `stall_limit`. For work whose speed depends on how loaded the
/// machine is (a lake sink catching up on hundreds of MB), a fixed deadline fails slow machines,
/// while a stall is what a bug looks like.
pub fn wait_while_progressing(
    stall_limit: Duration,
    every: Duration,
    what: &str,
    target: usize,
    mut measure: impl FnMut() -> usize,
) {
    let mut best = 0;
    let mut last_growth = Instant::now();
    loop {
        let now = measure();
        if now >= target {
            return;
        }
        if now > best {
            best = now;
            last_growth = Instant::now();
        }
        assert!(
            last_growth.elapsed() < stall_limit,
            "stalled at {best} of {target} for {stall_limit:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// The latest value per key (what a compacted topic or an upsert consumer keeps); tombstones
/// remove the key.
pub fn latest_by_key(records: &[Read]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    for r in records {
        let key = r.key.clone().unwrap_or_default();
        match &r.value {
            Some(v) => {
                out.insert(key, v.clone());
            }
            None => {
                out.remove(&key);
            }
        }
    }
    out
}

/// `VmRSS` and `VmHWM` (the peak) of a process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} not in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The `bound_mib` a daemon logged at start (`memory bound ... bound_mib=N`).
pub fn logged_bound_mib(log: &str) -> u64 {
    crate::serve::strip_ansi(log)
        .lines()
        .filter(|l| l.contains("memory bound"))
        .find_map(|l| {
            let rest = l.split("bound_mib=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no memory bound in the log:\n{log}"))
}
