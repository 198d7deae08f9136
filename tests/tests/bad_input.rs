//! The bad-input corpus (`sluice_e2e::corpus`) through both layers: every case lands where the
//! docs say (a DLQ reason and field, loaded, or loaded but rejected by the plan), nothing
//! stops, and the merged view still equals a full recompute.
//!
//! - in process: the decoder (10 000-byte limit) on the whole corpus at once, on each case
//!   alone, and as file lines (the default 1 MiB limit), and the plan on what decoded;
//! - the speed layer: a real `sluice stream` on a one-partition topic holding the corpus between
//!   good orders; then `sluice backfill --rejects` over the raw lake it wrote and `sluice verify`;
//! - the lake-load half: `sluice lake load --rejects` of the corpus as a JSON-lines file, then
//!   `sluice backfill --rejects` on that lake.
//!
//! Each test collects every unmet expectation before failing, so one run lists them all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use serde_json::Value;
use sluice_core::lake::{SOURCE_OFFSET_COLUMN, SOURCE_PARTITION_COLUMN, commit_key};
use sluice_core::rows::to_json_lines;
use sluice_core::time::{floor_to, format_time};
use sluice_core::topics::header;
use sluice_core::{Decoded, DivertReason, Job, JsonDecoder, Pipeline, RecordError};
use sluice_e2e::corpus::{self, Case, Category, Expect, HOUR_MS, MINUTE_MS, Origin, RECORD_LIMIT};
use sluice_e2e::kafka::{
    Outgoing, bootstrap, committed_offsets, create_topic, latest_by_key, produce, read_all,
    spawn_stream, unique, wait_until,
};
use sluice_e2e::serve::{log_tail, sluice};

const LONG: Duration = Duration::from_secs(180);
/// The in-process test decodes file lines up to this size; larger ones (the 600 KB deeply
/// nested case) only run in a `sluice lake load` process, where a stack overflow would show
/// as a failed command instead of aborting this test binary.
const IN_PROCESS_FILE_MAX: usize = 64 * 1024;
/// `--from` of every backfill here: T0, the start of the corpus's day.
const FROM: &str = "2024-05-01T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// In process

#[test]
fn every_case_decodes_as_the_docs_say_in_a_batch_alone_and_as_a_file_line() {
    let job = corpus::job("bad_input_decode", "bad-input-decode");
    let cases = corpus::cases(chrono::Utc::now().timestamp_millis());
    eprintln!("{}", category_table(&cases));
    let decoder = JsonDecoder::new(&job).with_max_record_bytes(RECORD_LIMIT);
    let mut wrong: Vec<String> = Vec::new();

    // All at once, as one micro-batch would hold them.
    let all: Vec<&[u8]> = cases.iter().map(|c| c.bytes.as_slice()).collect();
    let decoded = decoder
        .decode(&all)
        .expect("decoding never fails because of a record's content");
    assert_eq!(decoded.batch.num_rows(), decoded.rows.len());
    for (i, case) in cases.iter().enumerate() {
        wrong.extend(judge(case, case.expect, &outcome(&decoded, i), "one batch"));
    }

    // The plan over what decoded fails on exactly the PlanRejected cases.
    let pipeline = Pipeline::compile(&job, None).expect("the corpus job compiles");
    let isolated = pipeline
        .evaluate_isolating(&decoded.batch)
        .expect("the plan runs on the decoded rows");
    let failed: BTreeMap<usize, String> = isolated
        .failed
        .iter()
        .map(|f| (decoded.rows[f.row], f.error.to_string()))
        .collect();
    for &i in &decoded.rows {
        let case = &cases[i];
        match (case.expect, failed.get(&i)) {
            (Expect::PlanRejected, None) => wrong.push(format!(
                "the plan: `{}` was expected to fail in the plan, and passed",
                case.name
            )),
            (Expect::Loaded, Some(error)) => wrong.push(format!(
                "the plan: `{}` was expected to pass, and failed: {}",
                case.name,
                short(error)
            )),
            _ => {}
        }
    }

    // Each alone: the decoder's per-record fallback must agree with its batch path.
    for case in &cases {
        let alone = decoder
            .decode(&[case.bytes.as_slice()])
            .expect("decoding one record");
        wrong.extend(judge(case, case.expect, &outcome(&alone, 0), "alone"));
    }

    // As a line of a file: `lake load` decodes with the default limit (1 MiB).
    let file_decoder = JsonDecoder::new(&job);
    for case in cases
        .iter()
        .filter(|c| c.fits_a_line() && c.bytes.len() <= IN_PROCESS_FILE_MAX)
    {
        let line = file_decoder
            .decode(&[case.bytes.as_slice()])
            .expect("decoding one line");
        wrong.extend(judge(
            case,
            case.expect_in_file(),
            &outcome(&line, 0),
            "file line (1 MiB limit)",
        ));
    }

    assert!(
        wrong.is_empty(),
        "{} unmet expectations over {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// A record holding two JSON values and one holding none must not pair up in the decoder's
/// batch path (all records decoded together give the right row count) and shift their
/// neighbours' rows onto the wrong records.
#[test]
fn records_of_two_objects_or_none_never_shift_their_neighbours_rows() {
    let job = corpus::job("bad_input_pairs", "bad-input-pairs");
    let good = corpus::good_orders(4, 3);
    let at = corpus::T0_MS;
    let pair = |a: &str, b: &str| {
        format!(r#"{{"order_id":"{a}","event_time":{at}}} {{"order_id":"{b}","event_time":{at}}}"#)
            .into_bytes()
    };
    // 4 good + 2 + 0 + 0 + 2 values = 8 values for 8 records.
    let records: Vec<Vec<u8>> = vec![
        good[0].clone(),
        pair("pair-a", "pair-b"),
        good[1].clone(),
        Vec::new(),
        good[2].clone(),
        b"   ".to_vec(),
        good[3].clone(),
        pair("pair-c", "pair-d"),
    ];
    let decoded = JsonDecoder::new(&job).decode(&records).expect("decode");
    let errors: Vec<(usize, &str)> = decoded
        .errors
        .iter()
        .map(|e| (e.index, e.kind.as_str()))
        .collect();
    let malformed = DivertReason::MalformedJson.as_str();
    assert_eq!(
        errors,
        vec![
            (1, malformed),
            (3, malformed),
            (5, malformed),
            (7, malformed)
        ],
        "each of them is malformed_json: {:?}",
        decoded.errors
    );
    assert_eq!(decoded.rows, vec![0, 2, 4, 6]);
    let ids: Vec<String> = decoded
        .batch
        .column_by_name("order_id")
        .expect("order_id column")
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, vec!["good-0", "good-1", "good-2", "good-3"]);
}

// ---------------------------------------------------------------------------------------------
// The speed layer, then backfill and verify over the lake it wrote

#[test]
fn the_speed_layer_and_backfill_divert_every_case_as_documented_and_verify_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("bad-input");
    let name = unique("bad_input").replace('-', "_");
    create_topic(&topic, 1);
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, corpus::job_toml(&name, &topic)).unwrap();
    let job = Job::from_file(&job_file).unwrap();
    let lake = dir.path().join("lake");
    let log = dir.path().join("stream.log");

    let now_ms = chrono::Utc::now().timestamp_millis();
    let cases: Vec<Case> = corpus::cases(now_ms)
        .into_iter()
        .filter(Case::fits_kafka)
        .collect();
    eprintln!("{}", category_table(&cases));
    let good = corpus::good_orders(300, 41);
    // After the live cases' windows (now + 30 min): closes them.
    let pusher = corpus::watermark_pusher(now_ms + 40 * MINUTE_MS);
    let sequence = corpus::sequence(&cases, &good, pusher);
    let expected_results = truth(
        &job,
        &sequence
            .iter()
            .filter(|(origin, _)| counts_in_view(&cases, *origin))
            .map(|(_, bytes)| bytes.as_slice())
            .collect::<Vec<_>>(),
    );
    let outgoing: Vec<Outgoing> = sequence
        .iter()
        .map(|(_, bytes)| (0, None, bytes.clone()))
        .collect();
    produce(&topic, &outgoing);

    // Offsets as the broker assigned them, matched by content (every record is unique).
    let origin_of: HashMap<&[u8], Origin> = sequence
        .iter()
        .map(|(origin, bytes)| (bytes.as_slice(), *origin))
        .collect();
    assert_eq!(
        origin_of.len(),
        sequence.len(),
        "every produced record is unique"
    );
    let source = read_all(&topic);
    assert_eq!(source.len(), sequence.len(), "records in the source topic");
    let by_offset: BTreeMap<i64, Origin> = source
        .iter()
        .map(|r| {
            let value = r.value.clone().unwrap_or_default();
            let origin = *origin_of.get(value.as_slice()).unwrap_or_else(|| {
                panic!("offset {} holds a record that was not produced", r.offset)
            });
            (r.offset, origin)
        })
        .collect();
    let name_at = |offset: i64| describe_origin(&cases, by_offset.get(&offset).copied());

    let mut daemon = spawn_stream(&job_file, &lake, &dir.path().join("state"), &log, &[]);
    let group = format!("sluice-{name}");
    let total = sequence.len() as i64;
    wait_until(LONG, "the daemon to commit every source offset", || {
        if let Some(status) = daemon.0.try_wait().expect("try_wait") {
            panic!(
                "sluice stream exited ({status}) before it consumed the corpus; its log:\n{}",
                log_tail(&log, 80)
            );
        }
        committed_offsets(&group, &topic, 1)[0] >= total
    });
    let mut wrong: Vec<String> = Vec::new();

    // The DLQ: one record per Dlq / PlanRejected case, with its reason and field.
    let expected_dlq: BTreeMap<i64, usize> = by_offset
        .iter()
        .filter_map(|(offset, origin)| match origin {
            Origin::Case(i) if cases[*i].expect.dlq_reason().is_some() => Some((*offset, *i)),
            _ => None,
        })
        .collect();
    let dlq_topic = format!("{name}.dlq");
    let mut dlq = Vec::new();
    settle(Duration::from_secs(30), || {
        dlq = read_all(&dlq_topic);
        dlq.len() >= expected_dlq.len()
    });
    let mut diverted: BTreeSet<i64> = BTreeSet::new();
    for record in &dlq {
        let h = |key: &str| record.headers.get(key).cloned();
        let kind = h(header::ERROR_TYPE).unwrap_or_default();
        let field = h(header::ERROR_FIELD);
        let message = short(&h(header::ERROR_MESSAGE).unwrap_or_default());
        let Some(offset) = h(header::SOURCE_OFFSET).and_then(|o| o.parse::<i64>().ok()) else {
            wrong.push(format!(
                "speed layer: a DLQ record without {}: {:?}",
                header::SOURCE_OFFSET,
                record.headers
            ));
            continue;
        };
        if !diverted.insert(offset) {
            wrong.push(format!(
                "speed layer: {} (offset {offset}) is in the DLQ twice",
                name_at(offset)
            ));
        }
        if h(header::SOURCE_PARTITION).as_deref() != Some("0")
            || h(header::SOURCE_TOPIC).as_deref() != Some(topic.as_str())
        {
            wrong.push(format!(
                "speed layer: the DLQ record of offset {offset} names its source wrongly: {:?}",
                record.headers
            ));
        }
        match by_offset.get(&offset) {
            Some(Origin::Case(i)) => {
                let case = &cases[*i];
                let right = match case.expect {
                    Expect::Loaded => false,
                    Expect::PlanRejected => kind == DivertReason::TransformError.as_str(),
                    Expect::Dlq {
                        reason,
                        field: want,
                    } => kind == reason && (want.is_none() || field.as_deref() == want),
                };
                if !right {
                    wrong.push(format!(
                        "speed layer: `{}` ({}) expected {}, dead-lettered as {kind} (field {field:?}): {message}",
                        case.name,
                        case.category.as_str(),
                        describe_expect(case.expect)
                    ));
                }
                let value = record.value.clone().unwrap_or_default();
                let intact = if record.headers.contains_key(header::TRUNCATED) {
                    case.bytes.starts_with(&value)
                        && h(header::ORIGINAL_SIZE) == Some(case.bytes.len().to_string())
                } else {
                    value == case.bytes
                };
                if !intact {
                    wrong.push(format!(
                        "speed layer: the DLQ record of `{}` does not keep its bytes",
                        case.name
                    ));
                }
            }
            other => wrong.push(format!(
                "speed layer: {} (offset {offset}) was dead-lettered as {kind} (field {field:?}): {message}",
                describe_origin(&cases, other.copied())
            )),
        }
    }
    for (offset, i) in &expected_dlq {
        if !diverted.contains(offset) {
            let case = &cases[*i];
            wrong.push(format!(
                "speed layer: `{}` ({}) expected {}, not in the DLQ (offset {offset})",
                case.name,
                case.category.as_str(),
                describe_expect(case.expect)
            ));
        }
    }

    // Nothing is late: the allowed lateness (1 h) covers the corpus's few minutes, and a
    // clock-skewed record that moved the watermark would make the records after it late.
    for record in read_all(&format!("{name}.late")) {
        let offset = record
            .headers
            .get(header::SOURCE_OFFSET)
            .and_then(|o| o.parse::<i64>().ok())
            .unwrap_or(-1);
        wrong.push(format!(
            "speed layer: {} (offset {offset}) went to {name}.late (watermark {:?})",
            name_at(offset),
            record.headers.get(header::WATERMARK)
        ));
    }

    // Nothing stopped it.
    if let Some(status) = daemon.0.try_wait().expect("try_wait") {
        wrong.push(format!(
            "sluice stream exited ({status}) after consuming the corpus"
        ));
    }

    // Results: the shared plan over the loaded cases and the good orders.
    let results_topic = format!("{name}.results");
    let mut results = BTreeSet::new();
    settle(Duration::from_secs(30), || {
        results = latest_rows(&results_topic);
        results == expected_results
    });
    if results != expected_results {
        wrong.push(difference(
            "speed layer: <job>.results",
            &expected_results,
            &results,
        ));
    }

    // The raw lake: every record that decodes (loaded, plan-rejected, good, the pusher), by
    // offset, once; none of the dead-lettered ones.
    let app_id = sluice_core::topics::lake_app_id(&job, 0);
    let last_offset = by_offset.keys().next_back().copied().unwrap_or(-1);
    if !settle(LONG, || {
        corpus::raw_transaction_version(&lake, &job, &app_id) == Some(last_offset)
    }) {
        wrong.push(format!(
            "raw lake: the sink did not reach offset {last_offset} (transaction {app_id} is at {:?})",
            corpus::raw_transaction_version(&lake, &job, &app_id)
        ));
    }
    let landed = source_columns(&corpus::raw_rows(&lake, &job));
    let landed_offsets: BTreeSet<i64> = landed.iter().filter_map(|(_, o)| *o).collect();
    if landed_offsets.len() != landed.len() {
        wrong.push(format!(
            "raw lake: {} rows for {} distinct offsets",
            landed.len(),
            landed_offsets.len()
        ));
    }
    if landed.iter().any(|(p, _)| *p != Some(0)) {
        wrong.push("raw lake: a row whose __source_partition is not 0".to_string());
    }
    let expected_lake: BTreeSet<i64> = by_offset
        .iter()
        .filter(|(_, origin)| decodes(&cases, **origin))
        .map(|(offset, _)| *offset)
        .collect();
    for offset in expected_lake.difference(&landed_offsets) {
        wrong.push(format!(
            "raw lake: {} (offset {offset}) is missing",
            name_at(*offset)
        ));
    }
    for offset in landed_offsets.difference(&expected_lake) {
        wrong.push(format!(
            "raw lake: {} (offset {offset}) is there and should not be",
            name_at(*offset)
        ));
    }

    let stopped = daemon.terminate();
    if !stopped.success() {
        wrong.push(format!("sluice stream: SIGTERM gave {stopped}"));
    }

    // Backfill up to the live cases' bucket (so the merge takes them from the speed layer):
    // it skips exactly the plan-rejected rows, the ones the speed layer dead-lettered.
    let plan_rejected: BTreeMap<i64, usize> = by_offset
        .iter()
        .filter_map(|(offset, origin)| match origin {
            Origin::Case(i) if cases[*i].expect == Expect::PlanRejected => Some((*offset, *i)),
            _ => None,
        })
        .collect();
    let to = format_time(floor_to(now_ms * 1000, job.bucket_micros()));
    let rejects = backfill_with_rejects(
        [&job_file, &lake],
        &to,
        plan_rejected.len(),
        "backfill of the streamed lake",
        dir.path(),
        &mut wrong,
    );
    let mut seen = BTreeSet::new();
    for row in rejects {
        let Some(offset) = row["offset"].as_i64() else {
            wrong.push(format!("backfill rejects: a row without an offset: {row}"));
            continue;
        };
        seen.insert(offset);
        if row["partition"].as_i64() != Some(0) || row["error"] != "transform_error" {
            wrong.push(format!("backfill rejects: {row}"));
        }
        match plan_rejected.get(&offset) {
            Some(i) if row["record"]["order_id"] == corpus::case_id(cases[*i].name).as_str() => {}
            Some(i) => wrong.push(format!(
                "backfill rejects: offset {offset} (`{}`) lists another record: {}",
                cases[*i].name, row["record"]
            )),
            None => wrong.push(format!(
                "backfill rejects: {} (offset {offset}) was skipped: {}",
                name_at(offset),
                short(row["reason"].as_str().unwrap_or_default())
            )),
        }
    }
    for (offset, i) in &plan_rejected {
        if !seen.contains(offset) {
            wrong.push(format!(
                "backfill rejects: `{}` (offset {offset}) is not listed",
                cases[*i].name
            ));
        }
    }
    let info = corpus::view_commit_info(&lake, &job).unwrap_or_default();
    if info.get(commit_key::ROWS_REJECTED).and_then(Value::as_u64)
        != Some(plan_rejected.len() as u64)
    {
        wrong.push(format!(
            "backfill: commit metadata {} is {:?}, expected {}",
            commit_key::ROWS_REJECTED,
            info.get(commit_key::ROWS_REJECTED),
            plan_rejected.len()
        ));
    }

    // The merge (batch below the cutoff, the speed changelog above it) equals a recompute.
    let brokers = bootstrap();
    let verify = sluice(&[
        "verify",
        "--job",
        path(&job_file),
        "--brokers",
        &brokers,
        "--lake",
        path(&lake),
        "--settle",
        "30s",
    ]);
    if verify.status.code() != Some(0) {
        wrong.push(format!("sluice verify: {}", output_text(&verify)));
    }

    assert!(
        wrong.is_empty(),
        "{} problems with the bad-input corpus in the speed and batch layers:\n{}\n\nsluice stream's log (tail):\n{}",
        wrong.len(),
        wrong.join("\n"),
        log_tail(&log, 40)
    );
}

// ---------------------------------------------------------------------------------------------
// `sluice lake load`, then backfill over that lake

#[test]
fn lake_load_and_backfill_reject_exactly_the_documented_lines() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("bad_load").replace('-', "_");
    // Only names the raw table: no Kafka here.
    let topic = unique("bad-load");
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, corpus::job_toml(&name, &topic)).unwrap();
    let job = Job::from_file(&job_file).unwrap();
    let lake = dir.path().join("lake");

    let now_ms = chrono::Utc::now().timestamp_millis();
    let cases: Vec<Case> = corpus::cases(now_ms)
        .into_iter()
        .filter(Case::fits_a_line)
        .collect();
    let good = corpus::good_orders(100, 43);
    let lines = corpus::sequence(
        &cases,
        &good,
        corpus::watermark_pusher(now_ms + 40 * MINUTE_MS),
    );
    let mut text = Vec::new();
    for (_, bytes) in &lines {
        text.extend_from_slice(bytes);
        text.push(b'\n');
    }
    let file = dir.path().join("corpus.jsonl");
    std::fs::write(&file, &text).unwrap();
    // Line n (1-based) is lines[n - 1].
    let origin_at = |line: usize| line.checked_sub(1).and_then(|n| lines.get(n)).map(|l| l.0);

    let rejects = dir.path().join("load.rejects.jsonl");
    let out = sluice(&[
        "lake",
        "load",
        "--job",
        path(&job_file),
        "--lake",
        path(&lake),
        "--rejects",
        path(&rejects),
        "--output",
        "json",
        path(&file),
    ]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "sluice lake load did not finish (a crash or an error): {}",
        output_text(&out)
    );
    let mut wrong: Vec<String> = Vec::new();

    let expect_rejected: BTreeMap<usize, usize> = lines
        .iter()
        .enumerate()
        .filter_map(|(n, (origin, _))| match origin {
            Origin::Case(i) if !cases[*i].expect_in_file().decodes() => Some((n + 1, *i)),
            _ => None,
        })
        .collect();
    let expected_code = if expect_rejected.is_empty() { 0 } else { 3 };
    if out.status.code() != Some(expected_code) {
        wrong.push(format!(
            "lake load: exit {:?}, expected {expected_code}",
            out.status.code()
        ));
    }
    let expected_loaded = lines.len() - expect_rejected.len();
    let report = last_json(&out.stdout);
    if report["rows_loaded"].as_u64() != Some(expected_loaded as u64) {
        wrong.push(format!(
            "lake load: rows_loaded {}, expected {expected_loaded} (report {report})",
            report["rows_loaded"]
        ));
    }

    let mut seen = BTreeSet::new();
    for row in read_json_lines(&rejects) {
        let Some(line) = row["line"].as_u64().map(|l| l as usize) else {
            wrong.push(format!("lake load rejects: a row without a line: {row}"));
            continue;
        };
        if !seen.insert(line) {
            wrong.push(format!("lake load rejects: line {line} is listed twice"));
        }
        let error = row["error"].as_str().unwrap_or_default();
        let field = row["field"].as_str();
        let reason = short(row["reason"].as_str().unwrap_or_default());
        match origin_at(line) {
            Some(Origin::Case(i)) => {
                let case = &cases[i];
                let right = match case.expect_in_file() {
                    Expect::Dlq {
                        reason: want,
                        field: want_field,
                    } => error == want && (want_field.is_none() || field == want_field),
                    _ => false,
                };
                if !right {
                    wrong.push(format!(
                        "lake load: `{}` ({}, line {line}) expected {}, rejected as {error} (field {field:?}): {reason}",
                        case.name,
                        case.category.as_str(),
                        describe_expect(case.expect_in_file())
                    ));
                }
            }
            other => wrong.push(format!(
                "lake load: {} (line {line}) was rejected as {error} (field {field:?}): {reason}",
                describe_origin(&cases, other)
            )),
        }
    }
    for (line, i) in &expect_rejected {
        if !seen.contains(line) {
            let case = &cases[*i];
            wrong.push(format!(
                "lake load: `{}` ({}, line {line}) expected {}, not rejected",
                case.name,
                case.category.as_str(),
                describe_expect(case.expect_in_file())
            ));
        }
    }

    // The raw table holds the lines that decode: by order_id where the case has its own.
    let rows = corpus::raw_rows(&lake, &job);
    let row_count: usize = rows.iter().map(RecordBatch::num_rows).sum();
    if row_count != expected_loaded {
        wrong.push(format!(
            "raw lake: {row_count} rows, expected {expected_loaded}"
        ));
    }
    if source_columns(&rows)
        .iter()
        .any(|(p, o)| p.is_some() || o.is_some())
    {
        wrong.push(
            "raw lake: a row loaded from a file has a source partition or offset".to_string(),
        );
    }
    let ids: BTreeSet<String> = string_column(&rows, "order_id")
        .into_iter()
        .flatten()
        .collect();
    for case in &cases {
        let Some(id) = case.order_id() else { continue };
        let wanted = case.expect_in_file().decodes();
        if ids.contains(&id) != wanted {
            wrong.push(format!(
                "raw lake: `{}` ({}) is {}in the raw table; expected {}",
                case.name,
                case.category.as_str(),
                if wanted { "not " } else { "" },
                describe_expect(case.expect_in_file())
            ));
        }
    }
    for i in 0..good.len() {
        if !ids.contains(&format!("good-{i}")) {
            wrong.push(format!("raw lake: good order {i} is missing"));
        }
    }

    // Backfill of that lake skips exactly the plan-rejected lines (partition and offset null).
    let plan_rejected: BTreeMap<String, &'static str> = cases
        .iter()
        .filter(|c| c.expect_in_file() == Expect::PlanRejected)
        .map(|c| (corpus::case_id(c.name), c.name))
        .collect();
    let to = format_time((now_ms + HOUR_MS) * 1000);
    let rejects = backfill_with_rejects(
        [&job_file, &lake],
        &to,
        plan_rejected.len(),
        "backfill of the loaded lake",
        dir.path(),
        &mut wrong,
    );
    let mut skipped = BTreeSet::new();
    for row in rejects {
        let id = row["record"]["order_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !row["partition"].is_null()
            || !row["offset"].is_null()
            || row["error"] != "transform_error"
        {
            wrong.push(format!("backfill rejects (loaded lake): {row}"));
        }
        if !plan_rejected.contains_key(&id) {
            wrong.push(format!(
                "backfill rejects (loaded lake): `{id}` was skipped: {}",
                short(row["reason"].as_str().unwrap_or_default())
            ));
        }
        skipped.insert(id);
    }
    for (id, name) in &plan_rejected {
        if !skipped.contains(id) {
            wrong.push(format!(
                "backfill rejects (loaded lake): `{name}` is not listed"
            ));
        }
    }

    assert!(
        wrong.is_empty(),
        "{} problems with the bad-input corpus in lake load and backfill:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// What the decoder made of one input record.
enum Outcome<'a> {
    Decoded,
    Rejected(&'a RecordError),
    Vanished,
    Both,
}

fn outcome(decoded: &Decoded, index: usize) -> Outcome<'_> {
    let errors: Vec<&RecordError> = decoded.errors.iter().filter(|e| e.index == index).collect();
    match (decoded.rows.contains(&index), errors.as_slice()) {
        (true, []) => Outcome::Decoded,
        (false, [one]) => Outcome::Rejected(one),
        (false, []) => Outcome::Vanished,
        _ => Outcome::Both,
    }
}

/// `None` when `got` is what `expect` says, else what differs.
fn judge(case: &Case, expect: Expect, got: &Outcome<'_>, how: &str) -> Option<String> {
    let right = match (expect, got) {
        (Expect::Loaded | Expect::PlanRejected, Outcome::Decoded) => true,
        (Expect::Dlq { reason, field }, Outcome::Rejected(e)) => {
            e.kind.as_str() == reason && (field.is_none() || e.field.as_deref() == field)
        }
        _ => false,
    };
    let got = match got {
        Outcome::Decoded => "decoded".to_string(),
        Outcome::Rejected(e) => format!(
            "{} (field {:?}): {}",
            e.kind.as_str(),
            e.field,
            short(&e.reason)
        ),
        Outcome::Vanished => "neither a row nor an error".to_string(),
        Outcome::Both => "a row and an error, or several errors".to_string(),
    };
    (!right).then(|| {
        format!(
            "{how}: `{}` ({}) expected {}, got {got}",
            case.name,
            case.category.as_str(),
            describe_expect(expect)
        )
    })
}

fn describe_expect(expect: Expect) -> String {
    match expect {
        Expect::Loaded => "loaded".to_string(),
        Expect::Dlq {
            reason,
            field: Some(field),
        } => format!("{reason} (field {field})"),
        Expect::Dlq {
            reason,
            field: None,
        } => reason.to_string(),
        Expect::PlanRejected => "decoded, then rejected by the plan (transform_error)".to_string(),
    }
}

fn describe_origin(cases: &[Case], origin: Option<Origin>) -> String {
    match origin {
        Some(Origin::Case(i)) => format!(
            "`{}` (expected {})",
            cases[i].name,
            describe_expect(cases[i].expect)
        ),
        Some(Origin::Good(i)) => format!("good order {i}"),
        Some(Origin::Pusher) => "the watermark pusher".to_string(),
        None => "an unknown record".to_string(),
    }
}

/// Whether the record is in the raw table.
fn decodes(cases: &[Case], origin: Origin) -> bool {
    match origin {
        Origin::Case(i) => cases[i].expect.decodes(),
        Origin::Good(_) | Origin::Pusher => true,
    }
}

/// Whether the record counts in the view (the pusher decodes but the plan filters it out).
fn counts_in_view(cases: &[Case], origin: Origin) -> bool {
    match origin {
        Origin::Case(i) => cases[i].expect == Expect::Loaded,
        Origin::Good(_) => true,
        Origin::Pusher => false,
    }
}

/// The finalized view over `records` with the shared plan, as JSON lines. Rows the decoder
/// or the plan rejects are left out (the tests report those cases on their own).
fn truth(job: &Job, records: &[&[u8]]) -> BTreeSet<String> {
    let decoded = JsonDecoder::new(job)
        .with_max_record_bytes(RECORD_LIMIT)
        .decode(records)
        .expect("decode");
    let pipeline = Pipeline::compile(job, None).expect("the corpus job compiles");
    let stage = pipeline.plan().aggregate().expect("an aggregate job");
    let isolated = pipeline
        .evaluate_isolating(&decoded.batch)
        .expect("the plan runs");
    let partials: Vec<RecordBatch> = isolated.pieces.into_iter().map(|p| p.output).collect();
    let rows = stage.finalize(&partials).expect("finalize");
    lines(&to_json_lines(&[rows]).expect("json"))
}

fn lines(bytes: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

/// An upsert topic's latest value per key, as text.
fn latest_rows(topic: &str) -> BTreeSet<String> {
    latest_by_key(&read_all(topic))
        .into_values()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .collect()
}

fn difference(what: &str, expected: &BTreeSet<String>, got: &BTreeSet<String>) -> String {
    let cut = |row: &String| row.chars().take(300).collect::<String>();
    let missing: Vec<String> = expected.difference(got).take(8).map(cut).collect();
    let extra: Vec<String> = got.difference(expected).take(8).map(cut).collect();
    format!(
        "{what}: {} rows, expected {}\n  missing: {missing:#?}\n  unexpected: {extra:#?}",
        got.len(),
        expected.len()
    )
}

/// `(__source_partition, __source_offset)` of every raw row.
fn source_columns(batches: &[RecordBatch]) -> Vec<(Option<i64>, Option<i64>)> {
    let mut out = Vec::new();
    for batch in batches {
        let column = |name: &str| -> Vec<Option<i64>> {
            let column = batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("the raw table has no {name}"));
            let column = arrow::compute::cast(column, &DataType::Int64).expect("cast to int64");
            column.as_primitive::<Int64Type>().iter().collect()
        };
        let partitions = column(SOURCE_PARTITION_COLUMN);
        let offsets = column(SOURCE_OFFSET_COLUMN);
        out.extend(partitions.into_iter().zip(offsets));
    }
    out
}

fn string_column(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for batch in batches {
        let column = batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("the raw table has no {name}"));
        let column = arrow::compute::cast(column, &DataType::Utf8).expect("cast to utf8");
        out.extend(
            column
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_string)),
        );
    }
    out
}

/// Checks a `sluice backfill --output json --rejects` run that should skip `rejected` rows.
/// Runs `sluice backfill` from [`FROM`] to `to` with `--rejects`, checks its exit code and
/// `rows_rejected` against `rejected`, and returns the rejected rows it wrote.
fn backfill_with_rejects(
    [job_file, lake]: [&Path; 2],
    to: &str,
    rejected: usize,
    what: &str,
    dir: &Path,
    wrong: &mut Vec<String>,
) -> Vec<Value> {
    let rejects = dir.join("backfill.rejects.jsonl");
    let out = sluice(&[
        "backfill",
        "--job",
        path(job_file),
        "--lake",
        path(lake),
        "--from",
        FROM,
        "--to",
        to,
        "--output",
        "json",
        "--rejects",
        path(&rejects),
    ]);
    check_backfill(&out, rejected, what, wrong);
    read_json_lines(&rejects)
}

fn check_backfill(out: &Output, rejected: usize, what: &str, wrong: &mut Vec<String>) {
    let expected_code = if rejected == 0 { 0 } else { 3 };
    if out.status.code() != Some(expected_code) {
        wrong.push(format!(
            "{what}: expected exit {expected_code}: {}",
            output_text(out)
        ));
    }
    let report = last_json(&out.stdout);
    if report["rows_rejected"].as_u64() != Some(rejected as u64) {
        wrong.push(format!(
            "{what}: rows_rejected {}, expected {rejected} (report {report})",
            report["rows_rejected"]
        ));
    }
}

/// The last stdout line that is a JSON object (`Null` when there is none).
fn last_json(stdout: &[u8]) -> Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

fn read_json_lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", file.display())))
        .collect()
}

fn output_text(out: &Output) -> String {
    let tail = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(30)..]
            .iter()
            .map(|l| l.chars().take(400).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "exit {:?} ({})\nstdout:\n{}\nstderr (tail):\n{}",
        out.status.code(),
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    )
}

/// Polls `done` every 250 ms until it holds (true) or `limit` passes (false).
fn settle(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Cases per category: total (loaded / dead-lettered / rejected by the plan).
fn category_table(cases: &[Case]) -> String {
    let mut out = String::from(
        "bad-input corpus: cases per category (loaded / dead-lettered / plan-rejected)\n",
    );
    for category in Category::ALL {
        let of: Vec<&Case> = cases.iter().filter(|c| c.category == category).collect();
        let count = |f: fn(Expect) -> bool| of.iter().filter(|c| f(c.expect)).count();
        out += &format!(
            "  {:<14} {:>3}  ({} / {} / {})\n",
            category.as_str(),
            of.len(),
            count(|e| e == Expect::Loaded),
            count(|e| matches!(e, Expect::Dlq { .. })),
            count(|e| e == Expect::PlanRejected)
        );
    }
    out += &format!("  {:<14} {:>3}\n", "total", cases.len());
    out
}
