//! The lake's object store goes away for 30 s while events keep coming (moto's S3 server
//! behind a proxy the test cuts): the raw-lake sink pauses and says so on `/health` and in
//! its metrics, the speed layer goes on, memory stays within the daemon's bound, and when the
//! store is back every record lands in the raw table exactly once.
//!
//! One test in this file: it points the process's own AWS environment at the store to read
//! the raw table back, which no other test may share.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sluice_core::fixture::{OrderGenerator, T0_MS};
use sluice_core::lake::{SOURCE_OFFSET_COLUMN, SOURCE_PARTITION_COLUMN, TableLocation};
use sluice_core::topics::Topics;
use sluice_core::{Job, Lake};
use sluice_e2e::kafka::{
    Daemon, Outgoing, create_topic, logged_bound_mib, memory_kib, produce, read_all, unique,
    wait_while_progressing,
};
use sluice_e2e::orders;
use sluice_e2e::postgres::{free_port, stream_command};
use sluice_e2e::proxy::Proxy;
use sluice_e2e::s3::S3Server;
use sluice_e2e::sinks::{self, eventually};

const BUCKET: &str = "sluice-outage";
const SINK: &str = "lake";

/// (partition, offset) of every row of the raw table (empty while it does not exist).
fn lake_offsets(lake: &Lake, job: &Job) -> Vec<(i32, i64)> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let table = TableLocation::new(lake.raw_table(job));
    let Ok(batches) = runtime.block_on(table.read_all()) else {
        return Vec::new();
    };
    let column = |batch: &arrow::array::RecordBatch, name: &str| {
        let index = batch.schema().index_of(name).unwrap();
        let cast =
            arrow::compute::cast(batch.column(index), &arrow::datatypes::DataType::Int64).unwrap();
        cast.as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    };
    batches
        .iter()
        .flat_map(|batch| {
            let partitions = column(batch, SOURCE_PARTITION_COLUMN);
            let offsets = column(batch, SOURCE_OFFSET_COLUMN);
            partitions
                .into_iter()
                .map(|p| p as i32)
                .zip(offsets)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn health_says(addr: &str, status: &str, state: &str) -> Result<Value, String> {
    sinks::health_says(addr, SINK, status, state)
}

fn sink_metric(addr: &str, name: &str, job: &str) -> Option<f64> {
    sinks::sink_metric(addr, name, job, SINK)
}

#[test]
fn a_lake_store_outage_pauses_the_lake_sink_and_loses_and_duplicates_nothing() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let proxy = Proxy::start(s3.endpoint.trim_start_matches("http://"));
    // This process reads the raw table straight from the store, the daemon through the proxy.
    for (key, value) in s3.env() {
        // SAFETY: the only test of this binary sets these before it starts any thread of its own.
        unsafe { std::env::set_var(key, value) };
    }
    let daemon_env: Vec<(&str, String)> = s3
        .env()
        .into_iter()
        .map(|(k, v)| match k {
            "AWS_ENDPOINT_URL" => (k, proxy.endpoint()),
            _ => (k, v),
        })
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let topic = unique("outage");
    let name = unique("lake_outage").replace('-', "_");
    let toml = orders::job_toml(
        &name,
        &topic,
        orders::REGION_PER_MINUTE_SQL,
        r#"["region"]"#,
        "10m",
    );
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, toml).unwrap();
    let job = Job::from_file(&job_file).unwrap();
    create_topic(&topic, 4);
    let lake_root = format!("s3://{BUCKET}/lake");
    let lake = Lake::resolve(Some(&lake_root));
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("a.log");
    // Small buffers, as in the speed layer's memory test, so the bound means something.
    let args = [
        "--metrics-addr",
        addr.as_str(),
        "--batch-max-mb",
        "1",
        "--lake-commit-mb",
        "4",
        "-X",
        "queued.max.messages.kbytes=2048",
        "-X",
        "receive.message.max.bytes=16777728",
        "-X",
        "queue.buffering.max.kbytes=4096",
    ];
    let mut daemon = Daemon(
        stream_command(
            &job_file,
            Path::new(&lake_root),
            &dir.path().join("state"),
            &args,
        )
        .envs(daemon_env)
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning sluice stream"),
    );
    let log_tail = || sluice_e2e::serve::log_tail(&log, 40);
    eventually(Duration::from_secs(60), "the lake sink to start", || {
        health_says(&addr, "ok", "ok").map(|_| ())
    });
    std::thread::sleep(Duration::from_secs(2));
    let (idle_kib, _) = memory_kib(daemon.id());
    let bound_mib = logged_bound_mib(&std::fs::read_to_string(&log).unwrap_or_default());

    let shape = orders::on_time_shape("o", T0_MS, 40);
    let events: Vec<Outgoing> = orders::by_region(OrderGenerator::new(23, shape).take(40_000), 4);
    let total = events.len();
    let producer = {
        let topic = topic.clone();
        std::thread::spawn(move || {
            for part in events.chunks(1_000) {
                produce(&topic, part);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    eventually(
        Duration::from_secs(60),
        "rows in the raw table before the outage",
        || match lake_offsets(&lake, &job).len() {
            0 => Err(format!("none yet\n{}", log_tail())),
            _ => Ok(()),
        },
    );
    let speed = Topics::for_job(&job).speed;
    sinks::ride_out_outage(
        (&addr, SINK, &name),
        |up| if up { proxy.restore() } else { proxy.cut() },
        || read_all(&speed).len(),
    );
    producer.join().unwrap();
    wait_while_progressing(
        Duration::from_secs(90),
        Duration::from_secs(2),
        "the raw table to hold every event",
        total,
        || lake_offsets(&lake, &job).len(),
    );
    let offsets = lake_offsets(&lake, &job);
    let distinct: BTreeSet<(i32, i64)> = offsets.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        offsets.len(),
        "an offset landed twice\n{}",
        log_tail()
    );
    assert_eq!(
        offsets.len(),
        total,
        "rows in the raw table\n{}",
        log_tail()
    );
    assert!(
        sink_metric(&addr, "sluice_sink_retries_total", &name).is_some_and(|n| n > 0.0),
        "the lake sink retried during the outage"
    );
    assert_eq!(sink_metric(&addr, "sluice_sink_up", &name), Some(1.0));

    sinks::assert_grew_within(daemon.id(), idle_kib, bound_mib);
    assert!(
        daemon.terminate().success(),
        "SIGTERM exits 0\n{}",
        log_tail()
    );
}
