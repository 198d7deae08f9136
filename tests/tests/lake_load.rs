//! `sluice lake load` end to end, through the real binary into a lake directory: the same
//! content loaded plain, gzip, zstd and through stdin gives the raw rows the stream's decoder
//! makes of it; loading content again is a no-op whatever its form; bad lines are reported
//! with their exact line numbers; a load that fails midway commits nothing and leaves no data
//! file; and a file more than twice the memory bound loads with a peak resident memory under it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use serde_json::Value;
use sluice_batch::load::PEAK_RSS_BOUND_MIB;
use sluice_core::fixture::T0_MS;
use sluice_core::lake::{TableLocation, commit_key, raw_rows};
use sluice_core::{Job, JsonDecoder, Lake};
use sluice_e2e::kafka::sluice_bin;
use sluice_e2e::{canonical_rows, example_job, repo_path};

const REGIONS: [&str; 4] = ["eu", "us", "apac", "latam"];
const STATUSES: [&str; 5] = [
    "completed",
    "completed",
    "completed",
    "pending",
    "cancelled",
];

/// Order number `i` of seed 000's shape, as one JSON line (no newline).
fn order_line(i: usize) -> String {
    format!(
        r#"{{"order_id":"o{i}","customer_id":"c-{:05}","email":"user{}@example.com","region":"{}","amount":{}.{:02},"status":"{}","event_time":{}}}"#,
        i * 7_919 % 5_000,
        i % 100_000,
        REGIONS[i % REGIONS.len()],
        i % 10_000,
        [0, 25, 50, 75][i % 4],
        STATUSES[i % STATUSES.len()],
        T0_MS + i as i64 * 100,
    )
}

fn job() -> Job {
    example_job("orders_per_minute")
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(future)
}

fn lake_at(dir: &Path) -> Lake {
    Lake::resolve(Some(dir.to_str().expect("utf-8 temp path")))
}

fn raw_table(dir: &Path) -> TableLocation {
    TableLocation::new(lake_at(dir).raw_table(&job()))
}

/// The raw table's rows, canonical (sorted, timestamps as integers).
fn table_rows(dir: &Path) -> Vec<String> {
    canonical_rows(&block_on(raw_table(dir).read_all()).expect("reading the raw table"))
}

/// The raw rows the stream's decoder makes of `lines`, canonical.
fn decoded_rows(lines: &[Vec<u8>]) -> Vec<String> {
    let job = job();
    let decoded = JsonDecoder::new(&job).decode(lines).expect("decoding");
    assert!(decoded.errors.is_empty(), "{:?}", decoded.errors.first());
    let batch: RecordBatch = raw_rows(&job, &decoded.batch, None).expect("raw rows");
    canonical_rows(&[batch])
}

fn table_version(dir: &Path) -> Option<u64> {
    block_on(raw_table(dir).last_commit())
        .expect("the raw table's last commit")
        .map(|c| c.version)
}

/// Data files in the raw table's directory, committed or not.
fn parquet_files(dir: &Path) -> usize {
    let table = PathBuf::from(lake_at(dir).raw_table(&job()));
    match std::fs::read_dir(&table) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            .count(),
        Err(_) => 0,
    }
}

/// `sluice lake load --output json` of `inputs` into the lake at `lake`, with `stdin` piped in.
fn load<P: AsRef<OsStr>>(
    lake: &Path,
    inputs: &[P],
    stdin: Option<Vec<u8>>,
    extra: &[&str],
) -> Output {
    let mut command = Command::new(sluice_bin());
    command
        .args(["lake", "load", "--job"])
        .arg(repo_path("jobs/examples/orders_per_minute.toml"))
        .arg("--lake")
        .arg(lake)
        .args(["--output", "json"])
        .args(extra)
        .args(inputs)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawning sluice lake load");
    let feeder = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("a stdin pipe");
        std::thread::spawn(move || {
            // The load reads it all, unless it fails (the test then sees the failure).
            let _ = pipe.write_all(&bytes);
        })
    });
    let output = child.wait_with_output().expect("sluice lake load");
    if let Some(feeder) = feeder {
        feeder.join().expect("the stdin feeder");
    }
    output
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The JSON summary of the last input.
fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", text(output)))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn zstd_compress(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).expect("zstd")
}

#[test]
fn plain_gzip_zstd_and_stdin_load_the_decoders_rows_and_the_same_content_loads_once() {
    let dir = tempfile::tempdir().unwrap();
    // Several chunks of lines, CRLF and blank lines among them.
    let n = 60_000;
    let lines: Vec<Vec<u8>> = (0..n).map(|i| order_line(i).into_bytes()).collect();
    let mut content = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        content.extend_from_slice(line);
        content.extend_from_slice(if i % 3 == 0 { b"\r\n" } else { b"\n" });
        if i % 1_000 == 0 {
            content.extend_from_slice(b"\n \t\n");
        }
    }
    let expected = decoded_rows(&lines);
    assert_eq!(expected.len(), n);

    let plain = dir.path().join("orders.jsonl");
    std::fs::write(&plain, &content).unwrap();
    // Told by their first bytes: the gzip file has no telling name.
    let gz = dir.path().join("orders.data");
    std::fs::write(&gz, gzip(&content)).unwrap();
    let zst = dir.path().join("orders.jsonl.zst");
    std::fs::write(&zst, zstd_compress(&content)).unwrap();
    let stdin = Path::new("-");

    let cases: [(&str, &Path, Option<Vec<u8>>); 5] = [
        ("plain", plain.as_path(), None),
        ("gzip", gz.as_path(), None),
        ("zstd", zst.as_path(), None),
        ("stdin", stdin, Some(content.clone())),
        ("zstd stdin", stdin, Some(zstd_compress(&content))),
    ];
    for (name, input, piped) in &cases {
        let lake = dir.path().join(name.replace(' ', "_"));
        let out = load(&lake, &[input], piped.clone(), &[]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let summary = report(&out);
        assert_eq!(summary["rows_loaded"], n, "{name}: {summary}");
        assert_eq!(summary["rejected"], 0, "{name}: {summary}");
        assert_eq!(summary["already_loaded"], false, "{name}: {summary}");
        assert_eq!(
            summary["table_version"], 0,
            "{name}: created by the load's one commit"
        );
        assert_eq!(table_rows(&lake), expected, "{name}: the raw rows");
        let commit = block_on(raw_table(&lake).last_commit()).unwrap().unwrap();
        assert_eq!(commit.info[commit_key::OPERATION], "lake load", "{name}");
        assert_eq!(commit.info[commit_key::ROWS], n, "{name}");
        assert_eq!(commit.info[commit_key::REJECTED], 0, "{name}");
    }

    // The content again, in any form, into the lake that has it: nothing written.
    let lake = dir.path().join("plain");
    let files_before = parquet_files(&lake);
    for (name, input, piped) in &cases {
        let out = load(&lake, &[input], piped.clone(), &[]);
        assert!(out.status.success(), "again, {name}: {}", text(&out));
        let summary = report(&out);
        assert_eq!(summary["already_loaded"], true, "again, {name}: {summary}");
        assert_eq!(summary["rows_loaded"], 0, "again, {name}: {summary}");
        assert_eq!(table_version(&lake), Some(0), "again, {name}: no commit");
        assert_eq!(
            parquet_files(&lake),
            files_before,
            "again, {name}: the files a reload of stdin wrote are deleted"
        );
    }
    assert_eq!(table_rows(&lake), expected);

    // Other content is appended in a commit of its own.
    let more = dir.path().join("more.jsonl");
    std::fs::write(&more, format!("{}\n", order_line(n))).unwrap();
    let out = load(&lake, &[&more], None, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report(&out)["table_version"], 1);
    assert_eq!(table_rows(&lake).len(), n + 1);
}

#[test]
fn bad_lines_are_reported_with_their_line_numbers_in_the_decompressed_input() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 400;
    let long = format!(
        r#"{{"order_id":"long","email":"{}","event_time":{T0_MS}}}"#,
        "e".repeat(5_000)
    );
    let long_len = long.len();
    let bad: Vec<(usize, Vec<u8>, &str, Option<&str>)> = vec![
        (3, b"{\"order_id\":\"x\",".to_vec(), "malformed_json", None),
        (
            25_000,
            format!(r#"{{"customer_id":"c","event_time":{T0_MS}}}"#).into_bytes(),
            "missing_field",
            Some("order_id"),
        ),
        (
            40_001,
            b"{\"order_id\":\"\xff\",\"event_time\":1}".to_vec(),
            "not_utf8",
            None,
        ),
        (61_234, long.into_bytes(), "oversized", None),
    ];
    let total = 90_000;
    let mut content = Vec::new();
    let mut good = Vec::new();
    let mut next_bad = bad.iter().peekable();
    for line in 1..=total {
        match next_bad.peek() {
            Some((at, bytes, _, _)) if *at == line => {
                content.extend_from_slice(bytes);
                next_bad.next();
            }
            // Blank lines count as lines, and are not rejected.
            _ if line % 997 == 0 => content.extend_from_slice(b"  "),
            _ => {
                let order = order_line(line).into_bytes();
                content.extend_from_slice(&order);
                good.push(order);
            }
        }
        content.extend_from_slice(if line % 2 == 0 { b"\r\n" } else { b"\n" });
    }
    // The last line has no newline, and is bad too.
    content.extend_from_slice(b"not json");
    let file = dir.path().join("orders.jsonl.gz");
    std::fs::write(&file, gzip(&content)).unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let lake = dir.path().join("lake");
    let limit_text = limit.to_string();
    let out = load(
        &lake,
        &[&file],
        None,
        &[
            "--rejects",
            rejects.to_str().unwrap(),
            "--max-record-bytes",
            &limit_text,
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let summary = report(&out);
    assert_eq!(summary["rows_loaded"], good.len(), "{summary}");
    assert_eq!(summary["rejected"], bad.len() + 1, "{summary}");

    let mut expected: Vec<(usize, &str, Option<&str>)> = bad
        .iter()
        .map(|(line, _, error, field)| (*line, *error, *field))
        .collect();
    expected.push((total + 1, "malformed_json", None));
    let listed: Vec<Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let found: Vec<(usize, &str, Option<&str>)> = listed
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap() as usize,
                r["error"].as_str().unwrap(),
                r["field"].as_str(),
            )
        })
        .collect();
    assert_eq!(found, expected, "rejected lines, in line order");
    let oversized = &listed[3];
    assert_eq!(
        oversized["reason"],
        format!("{long_len} bytes, the limit is {limit}"),
        "{oversized}"
    );
    assert_eq!(listed[0]["record"], "{\"order_id\":\"x\",");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file_name = file.display().to_string();
    for (line, error, _) in &expected {
        let said = format!("{file_name}:{line}: {error} rejected");
        assert!(stderr.contains(&said), "stderr lacks `{said}`:\n{stderr}");
    }
    assert_eq!(table_rows(&lake), decoded_rows(&good));
    let commit = block_on(raw_table(&lake).last_commit()).unwrap().unwrap();
    assert_eq!(commit.info[commit_key::REJECTED], bad.len() + 1);
    assert_eq!(commit.info[commit_key::FILE], file_name);
}

#[test]
fn a_load_that_fails_midway_commits_nothing_and_deletes_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let mut content = String::new();
    for i in 0..200_000 {
        content.push_str(&order_line(i));
        content.push('\n');
    }
    // Rows are decoded and written before the end of the stream turns out to be cut off.
    let mut truncated = gzip(content.as_bytes());
    truncated.truncate(truncated.len() - 4);
    let file = dir.path().join("cut.jsonl.gz");
    std::fs::write(&file, truncated).unwrap();
    let lake = dir.path().join("lake");
    let out = load(&lake, &[&file], None, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(table_version(&lake), None, "nothing committed");
    assert_eq!(parquet_files(&lake), 0, "the files written were deleted");

    // The whole file then loads.
    std::fs::write(&file, gzip(content.as_bytes())).unwrap();
    let out = load(&lake, &[&file], None, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report(&out)["rows_loaded"], 200_000);
}

/// `VmHWM` (peak resident memory) of a running process, in KiB; `None` once it has exited.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of a running process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces), from the third: utime is the 14th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[test]
fn a_file_over_twice_the_memory_bound_loads_under_it() {
    let bound_bytes = PEAK_RSS_BOUND_MIB << 20;
    // On disk (not a tmpfs /tmp): the file is larger than the bound on purpose.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("big.jsonl");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&file).unwrap());
    let (mut written, mut lines) = (0u64, 0usize);
    while written < bound_bytes * 9 / 4 {
        let line = order_line(lines);
        out.write_all(line.as_bytes()).unwrap();
        out.write_all(b"\n").unwrap();
        written += line.len() as u64 + 1;
        lines += 1;
    }
    out.flush().unwrap();
    drop(out);
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(
        size > 2 * bound_bytes,
        "the file ({size} bytes) is over twice the bound"
    );

    let lake = dir.path().join("lake");
    let log = dir.path().join("load.log");
    let mut child = Command::new(sluice_bin())
        .args(["lake", "load", "--job"])
        .arg(repo_path("jobs/examples/orders_per_minute.toml"))
        .arg("--lake")
        .arg(&lake)
        .args(["--output", "json"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("spawning sluice lake load");
    let pid = child.id();
    let started = Instant::now();
    let (mut peak, mut cpu) = (0u64, 0u64);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for sluice") {
            break status;
        }
        peak = peak.max(peak_kib(pid).unwrap_or(0));
        cpu = cpu.max(cpu_ticks(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}: {stdout}\n{log_text}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(summary["rows_loaded"], lines, "{summary}");
    // For the record (not asserted: it depends on the machine): cores kept busy.
    eprintln!(
        "lake load of {size} bytes: {:.1} s, peak RSS {} MiB, {:.2} cores busy on average",
        wall.as_secs_f64(),
        peak >> 10,
        cpu as f64 / 100.0 / wall.as_secs_f64()
    );
    assert!(peak > 0, "the peak was sampled");
    assert!(
        (peak << 10) < bound_bytes,
        "peak RSS {} MiB over the bound of {PEAK_RSS_BOUND_MIB} MiB for a {} MiB file",
        peak >> 10,
        size >> 20
    );
}
