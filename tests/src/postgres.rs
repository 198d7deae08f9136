//! The PostgreSQL side of the end-to-end harness: a throw-away cluster per test ([`PgCluster`]:
//! `initdb` in a temporary directory with the machine's server binaries, a free port, stopped
//! and started again on the same port for outage tests), SQL through the `psql` CLI (so the
//! tests crate needs no PostgreSQL client), and the checks every sink test shares: the
//! `ETLCheckpoint` rows against the Kafka-committed offsets, `/health`, metrics and memory.
//!
//! PostgreSQL refuses to run as root; under root the server binaries run as the `postgres` OS
//! user (`setpriv`, else `runuser`) in a directory that user owns.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use serde_json::Value;

use crate::http;
use crate::kafka::{Daemon, bootstrap, committed_offsets, read_all, sluice_bin, unique};

/// Overrides where the server binaries (`initdb`, `postgres`) are looked for.
pub const PG_BIN_ENV: &str = "SLUICE_TEST_PG_BIN";

/// How long a cluster may take to accept connections after its server starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding `initdb` and `postgres`: [`PG_BIN_ENV`], else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout) that has both.
pub fn server_bin_dir() -> Option<PathBuf> {
    fn has_both(dir: &Path) -> bool {
        dir.join("initdb").is_file() && dir.join("postgres").is_file()
    }
    if let Ok(dir) = std::env::var(PG_BIN_ENV)
        && !dir.trim().is_empty()
    {
        return Some(PathBuf::from(dir)).filter(|d| has_both(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Why the PostgreSQL tests cannot run here, if they cannot: no server binaries or no `psql`.
pub fn unavailable() -> Option<String> {
    let Some(bin) = server_bin_dir() else {
        return Some(format!(
            "no PostgreSQL server binaries (initdb, postgres) in /usr/lib/postgresql/*/bin; \
             install them or point {PG_BIN_ENV} at their directory"
        ));
    };
    let psql = psql_program(&bin);
    match Command::new(&psql).arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some(format!("`{}` does not run", psql.display())),
    }
}

fn psql_program(bin: &Path) -> PathBuf {
    let next_to_server = bin.join("psql");
    if next_to_server.is_file() {
        next_to_server
    } else {
        PathBuf::from("psql")
    }
}

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
    })
}

fn setpriv() -> Option<&'static Path> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
}

/// `program` as a command that PostgreSQL accepts to run: as the `postgres` OS user under
/// root. `setpriv` execs in place, so the child's pid is the server's, and it asks for SIGINT
/// (a fast shutdown) should the test process die without dropping the cluster.
fn server_command(program: &Path) -> Command {
    match (running_as_root(), setpriv()) {
        (true, Some(setpriv)) => {
            let mut command = Command::new(setpriv);
            command
                .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .args(["--pdeathsig", "INT", "--"])
                .arg(program);
            command
        }
        (true, None) => {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        }
        (false, Some(setpriv)) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "INT", "--"]).arg(program);
            command
        }
        (false, None) => Command::new(program),
    }
}

/// A free TCP port on 127.0.0.1 now (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("a local address").port()
}

/// `text` as an SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A PostgreSQL cluster of its own: data directory and Unix socket in a temporary directory,
/// TCP on 127.0.0.1 only, trust authentication for every role, `fsync=off`. Stopped when
/// dropped. Where `setpriv` exists the server also stops when the thread that (re)started it
/// ends (the parent-death signal is per thread), so keep a cluster within its test's thread.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    server: Option<Child>,
}

impl PgCluster {
    /// `initdb` (superuser `postgres`, trust auth, UTF-8, C locale, no sync) and a server on a
    /// free port. Panics with the tool's output when either fails.
    pub fn start() -> PgCluster {
        let bin = server_bin_dir().unwrap_or_else(|| {
            panic!(
                "{}",
                unavailable().unwrap_or_else(|| "no server".to_string())
            )
        });
        // Under root the server user must reach the directory: /tmp, not a root-only TMPDIR.
        let parent = if running_as_root() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir_in(parent)
            .expect("a temporary directory for the cluster");
        if running_as_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .expect("running chown");
            assert!(
                chown.success(),
                "chown -R postgres {}",
                dir.path().display()
            );
        }
        let mut cluster = PgCluster {
            dir,
            bin,
            port: 0,
            server: None,
        };
        let initdb = server_command(&cluster.bin.join("initdb"))
            .arg("-D")
            .arg(cluster.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .stdin(Stdio::null())
            .output()
            .expect("running initdb");
        assert!(
            initdb.status.success(),
            "initdb failed ({}):\n{}\n{}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        // Another process may take the released port before the server binds it: try others.
        let mut failures = Vec::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.launch() {
                Ok(()) => return cluster,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "the PostgreSQL server did not start:\n{}",
            failures.join("\n---\n")
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (every start appends to it).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::serve::log_tail(&self.log_path(), lines)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        self.url_as("postgres", db)
    }

    /// The URL of `db` for role `user` (trust auth: no password needed).
    pub fn url_as(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening the server log: {e}"))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cloning the log: {e}"))?;
        let mut server = server_command(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning postgres: {e}"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.try_wait() {
                return Err(format!(
                    "postgres on port {} exited ({status}):\n{}",
                    self.port,
                    self.log_tail(20)
                ));
            }
            // A server answering may be another one, on a port it took after `free_port`
            // released it: ours reports our data directory.
            if let Ok(rows) = self.try_query("postgres", "SHOW data_directory") {
                let data = self.data_dir();
                if rows.first().and_then(|r| r.first()).map(PathBuf::from) == Some(data) {
                    self.server = Some(server);
                    return Ok(());
                }
                let _ = server.kill();
                let _ = server.wait();
                return Err(format!(
                    "another PostgreSQL server answers on port {}: {rows:?}",
                    self.port
                ));
            }
            if Instant::now() > deadline {
                let _ = server.kill();
                let _ = server.wait();
                return Err(format!(
                    "postgres on port {} did not accept connections within {READY_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A fast shutdown (SIGINT: open sessions are cut, nothing lost), waiting for the server to
    /// exit. The port stays this cluster's: [`PgCluster::restart`] binds it again.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        if !matches!(server.try_wait(), Ok(None)) {
            // Already gone: its postmaster.pid may name a pid reused since.
            return;
        }
        // The postmaster's pid is the first line of postmaster.pid; with `runuser` in between
        // it is not the child's.
        let pid = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::to_string))
            .filter(|pid| pid.parse::<u32>().is_ok())
            .unwrap_or_else(|| server.id().to_string());
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match server.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = Command::new("kill").args(["-KILL", &pid]).status();
                    let _ = server.kill();
                    let _ = server.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Starts the stopped server again, on the same port and data directory.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "restart() of a running cluster");
        if let Err(e) = self.launch() {
            panic!("restarting PostgreSQL on port {}: {e}", self.port);
        }
    }

    /// `sql` in `db` through `psql` as `postgres`: the rows, tab-separated fields (NULL is "").
    pub fn try_query(&self, db: &str, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let out = Command::new(psql_program(&self.bin))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-F", "\t"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| line.split('\t').map(str::to_string).collect())
            .collect())
    }

    /// [`PgCluster::try_query`], panicking with the SQL and psql's error.
    pub fn query(&self, db: &str, sql: &str) -> Vec<Vec<String>> {
        self.try_query(db, sql)
            .unwrap_or_else(|e| panic!("SQL in {db} failed: {e}\n{sql}"))
    }

    /// Runs statements for their effect.
    pub fn exec(&self, db: &str, sql: &str) {
        self.query(db, sql);
    }

    /// The single integer `sql` answers, or `None` while it cannot (a table not created yet,
    /// the server stopped).
    pub fn try_i64(&self, db: &str, sql: &str) -> Option<i64> {
        let rows = self.try_query(db, sql).ok()?;
        rows.first()?.first()?.parse().ok()
    }

    /// The `ETLCheckpoint` offsets of `group` on `topic`, by partition.
    pub fn checkpoint(&self, db: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        let sql = format!(
            r#"SELECT partition, "offset" FROM ETLCheckpoint
               WHERE consumer_group = {} AND topic = {} ORDER BY partition"#,
            literal(group),
            literal(topic)
        );
        self.query(db, &sql)
            .iter()
            .map(|row| {
                let field = |i: usize| -> i64 {
                    row.get(i)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| panic!("an ETLCheckpoint row of {group}: {row:?}"))
                };
                (field(0) as i32, field(1))
            })
            .collect()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The Kafka side of a sink's progress

fn metadata_consumer() -> BaseConsumer {
    sluice_kafka::reader_config(&bootstrap(), &[], &unique("pg-meta"))
        .create()
        .expect("a metadata consumer")
}

/// The partitions of `topic` (0 while it does not exist).
pub fn partition_count(topic: &str) -> i32 {
    sluice_kafka::partition_count(&metadata_consumer(), topic, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the metadata of {topic}: {e}")) as i32
}

/// The high watermark of each of `topic`'s `partitions`.
pub fn high_watermarks(topic: &str, partitions: i32) -> Vec<i64> {
    sluice_kafka::watermarks(
        &metadata_consumer(),
        topic,
        partitions,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("the watermarks of {topic}: {e}"))
    .into_iter()
    .map(|(_, high)| high)
    .collect()
}

/// A sink's progress is exact: once the Kafka commit that follows each PostgreSQL commit has
/// landed (waited for, up to 30 s), `ETLCheckpoint` for `group` on `topic` equals the offsets
/// Kafka holds for the group (-1 where neither has one), and every partition's offset is past
/// its last committed record (offset + 1) and not past its end.
pub fn assert_checkpoint_agrees(pg: &PgCluster, db: &str, group: &str, topic: &str) {
    let partitions = partition_count(topic);
    assert!(partitions > 0, "{topic} does not exist");
    let in_postgres = || -> Vec<i64> {
        let stored = pg.checkpoint(db, group, topic);
        (0..partitions)
            .map(|p| stored.get(&p).copied().unwrap_or(-1))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let stored = in_postgres();
        let kafka = committed_offsets(group, topic, partitions);
        if stored == kafka {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "ETLCheckpoint of {group} on {topic} is {stored:?} but Kafka holds {kafka:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut last_records = vec![-1i64; partitions as usize];
    for record in read_all(topic) {
        let slot = &mut last_records[record.partition as usize];
        *slot = (*slot).max(record.offset);
    }
    let highs = high_watermarks(topic, partitions);
    let each = stored.iter().zip(&last_records).zip(&highs).enumerate();
    for (p, ((offset, last), high)) in each {
        if *last >= 0 {
            assert!(
                offset > last,
                "{group} on {topic}[{p}]: checkpoint {offset} but the last record is at {last}"
            );
        }
        assert!(
            offset <= high,
            "{group} on {topic}[{p}]: checkpoint {offset} is past the end {high}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Job files and `sluice` processes

/// A `[[sinks]]` entry of kind postgres, for appending to a job file.
pub fn sink_toml(name: Option<&str>, url: &str, table: &str, mode: &str) -> String {
    let name = name
        .map(|n| format!("name = \"{n}\"\n"))
        .unwrap_or_default();
    format!(
        "\n[[sinks]]\n{name}kind = \"postgres\"\nurl = \"{url}\"\ntable = \"{table}\"\nmode = \"{mode}\"\n"
    )
}

/// The settings [`stream_command`] gives a daemon unless `extra` names the flag: short timers
/// so a test is quick, and a small record limit.
pub const STREAM_DEFAULTS: [(&str, &str); 5] = [
    ("--idle-timeout", "2s"),
    ("--lake-commit-interval", "1s"),
    ("--max-record-bytes", "10000"),
    ("--sink-commit-interval", "200ms"),
    ("--metric-interval", "1s"),
];

/// The `sluice stream` command the sink tests run: the run's broker, [`STREAM_DEFAULTS`] for
/// the flags `extra` leaves out (a flag given twice is an error), and none of the caller's
/// PostgreSQL settings (a `SLUICE_POSTGRES_URL` would redirect every sink).
pub fn stream_command(job_file: &Path, lake: &Path, state_dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(sluice_bin());
    command
        .arg("stream")
        .arg("--job")
        .arg(job_file)
        .arg("--brokers")
        .arg(bootstrap())
        .arg("--lake")
        .arg(lake)
        .arg("--state-dir")
        .arg(state_dir);
    for (flag, value) in STREAM_DEFAULTS {
        if !extra.contains(&flag) {
            command.args([flag, value]);
        }
    }
    // noida-db loses partitions of a cooperative group when a member rejoins (see
    // `group_protocol_args`), which the kill -9 tests do on purpose.
    command
        .args(crate::kafka::group_protocol_args())
        .args(extra)
        .env_remove(sluice_core::spec::POSTGRES_URL_ENV)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// [`stream_command`] as a daemon logging to `log`.
pub fn spawn_stream(
    job_file: &Path,
    lake: &Path,
    state_dir: &Path,
    log: &Path,
    extra: &[&str],
) -> Daemon {
    let log_file = File::create(log).expect("log file");
    stream_command(job_file, lake, state_dir, extra)
        .stderr(log_file)
        .spawn()
        .map(Daemon)
        .expect("spawning sluice stream")
}

/// Runs `command` with stderr to `log` until it exits; panics when it is still running after
/// `limit` (it is killed then). The exit status and stderr.
pub fn run_to_exit(mut command: Command, log: &Path, limit: Duration) -> (ExitStatus, String) {
    let log_file = File::create(log).expect("log file");
    let mut daemon = command
        .stderr(log_file)
        .spawn()
        .map(Daemon)
        .expect("spawning sluice");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = daemon.0.try_wait().expect("waiting for sluice") {
            return (status, std::fs::read_to_string(log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            daemon.kill();
            panic!(
                "sluice still running after {limit:?}; it must fail at start. Log:\n{}",
                crate::serve::log_tail(log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Health, metrics and memory of a daemon

/// `GET /health` as JSON, or what was wrong with the answer (refused, not 200, not JSON).
pub fn health(addr: &str) -> Result<Value, String> {
    match http::try_get(addr, "/health", None) {
        Ok(r) if r.status == 200 => serde_json::from_str(&r.body)
            .map_err(|e| format!("/health is not JSON ({e}): {}", r.body)),
        Ok(r) => Err(format!("/health answered {}: {}", r.status, r.body)),
        Err(e) => Err(format!("GET /health: {e}")),
    }
}

/// The entry of sink `name` in a `/health` answer.
pub fn sink_health<'a>(health: &'a Value, name: &str) -> Option<&'a Value> {
    health["sinks"]
        .as_array()?
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
}

/// The value of the sample of `name` whose labels include every `labels` pair, in a
/// Prometheus text exposition.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(inner) => inner.split_once('}')?,
            None if rest.starts_with(' ') => ("", rest),
            None => return None,
        };
        let all = labels.iter().all(|(k, v)| {
            let wanted = format!("{k}=\"{v}\"");
            label_text.split(',').any(|pair| pair == wanted)
        });
        if !all {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The sum over every sample of `name` whose labels include every `labels` pair (a counter
/// split by partition, summed), in a Prometheus text exposition; 0 when none is there yet.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| metric(line, name, labels))
        .sum()
}

pub use crate::kafka::{logged_bound_mib, memory_kib};

/// Lowercase hex of `bytes` (what `encode(bytea, 'hex')` gives).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels_in_any_order() {
        let text = "# HELP sluice_sink_up whether the sink's store answers\n\
                    sluice_sink_up{job=\"j\",sink=\"postgres\"} 1\n\
                    sluice_sink_up{sink=\"postgres\",job=\"k\"} 0\n\
                    sluice_sink_up_total{job=\"k\",sink=\"postgres\"} 7\n\
                    sluice_lake_commits_total 3\n";
        let up = |job| {
            metric(
                text,
                "sluice_sink_up",
                &[("job", job), ("sink", "postgres")],
            )
        };
        assert_eq!(up("j"), Some(1.0));
        assert_eq!(up("k"), Some(0.0));
        assert_eq!(up("x"), None);
        assert_eq!(metric(text, "sluice_sink", &[]), None);
        assert_eq!(metric(text, "sluice_lake_commits_total", &[]), Some(3.0));
    }

    #[test]
    fn the_logged_bound_is_read_through_colour_codes() {
        let log = "INFO \u{1b}[3mbound_mib\u{1b}[0m=42 nothing\n\
                   INFO memory bound (beyond the process's fixed footprint) \
                   \u{1b}[3mbound_mib\u{1b}[0m\u{1b}[2m=\u{1b}[0m96 terms=...\n";
        assert_eq!(logged_bound_mib(log), 96);
    }

    #[test]
    fn literals_double_their_quotes_and_hex_is_lowercase() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
