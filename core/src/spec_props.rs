//! Property tests for job files: whatever a job file says — truncated, with bytes flipped,
//! tokens inserted, or values swapped for out-of-range numbers, huge durations, wrong types
//! and broken text — reading it and compiling its plan either works or fails with an error
//! that names the file; it never panics. Job files are read by every command and by the
//! daemon at start, so a panic here is a crash a user sees for a typo.
//!
//! The seeds are the repository's example jobs and a job using every section (checks,
//! outputs, sinks). `PROPTEST_CASES` raises the case count for a longer fuzzing session.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::Pipeline;
use crate::spec::Job;

/// A job with every section, so mutations reach their parsers and validators.
const EVERY_SECTION: &str = r#"
name = "every_section"

[source]
topic = "orders.events"
table = "orders"
event_time = "event_time"
watermark_delay = "5s"
allowed_lateness = "1m"
max_future_skew = "1h"
fields = [
  { name = "order_id", type = "string", nullable = false },
  { name = "region", type = "string" },
  { name = "amount", type = "float64" },
  { name = "status", type = "string" },
  { name = "event_time", type = "timestamp", from = "ts" },
]

[transform]
sql = "SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start, region, COUNT(*) AS n, SUM(amount) AS revenue FROM orders WHERE status = 'completed' GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), region"

[view]
key = ["region"]
bucket = "1h"
version = 2

[[checks]]
check = "range"
column = "amount"
min = 0
max = 100000
severity = "quarantine"

[[checks]]
check = "expect"
name = "completed_have_amount"
predicate = "status <> 'completed' OR amount > 0"

[[outputs]]
name = "big"
where = "revenue >= 100"

[[outputs]]
name = "rest"
else = true

[[sinks]]
kind = "postgres"
url = "postgres://sluice@127.0.0.1:5432/analytics"
table = "orders_per_minute"
mode = "upsert"
"#;

/// Values a user (or a bad template) may put anywhere.
const WEIRD_VALUES: &[&str] = &[
    "-1",
    "0",
    "1e400",
    "-9223372036854775809",
    "99999999999999999999999",
    "nan",
    "inf",
    "\"\"",
    "\"1y\"",
    "\"99999999999999999d\"",
    "\"18446744073709551615s\"",
    "\"-5s\"",
    "\"0s\"",
    "\"5\"",
    "\"\\u0000\"",
    "\"é\"",
    "true",
    "[]",
    "[1, \"a\"]",
    "{}",
    "{ a = 1 }",
    "\"SELECT\"",
    "\"SELECT * FROM orders; DROP TABLE x\"",
    "\"a\\\"b\"",
    "1979-05-27T07:32:00Z",
];

/// Tokens inserted at random places.
const TOKENS: &[&str] = &[
    "\"", "'", "[", "]", "{", "}", "=", "\n", ",", "#", "[[", "]]", "\\", "\u{0}", "\u{feff}", "\r",
];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, usize),
    /// The value of the i-th `key = value` line becomes a weird one.
    Value(prop::sample::Index, usize),
    /// A line is dropped.
    DropLine(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<prop::sample::Index>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<prop::sample::Index>(), 0..WEIRD_VALUES.len())
            .prop_map(|(i, v)| Mutation::Value(i, v)),
        any::<prop::sample::Index>().prop_map(Mutation::DropLine),
    ]
}

fn apply(text: &str, mutation: &Mutation) -> Vec<u8> {
    let bytes = text.as_bytes();
    match mutation {
        Mutation::Truncate(at) => bytes[..at.index(bytes.len() + 1)].to_vec(),
        Mutation::Flip(at, byte) => {
            let mut out = bytes.to_vec();
            if !out.is_empty() {
                let i = at.index(out.len());
                out[i] = *byte;
            }
            out
        }
        Mutation::Insert(at, token) => {
            let mut out = bytes.to_vec();
            let i = at.index(out.len() + 1);
            out.splice(i..i, TOKENS[*token].bytes());
            out
        }
        Mutation::Value(at, value) => {
            let lines: Vec<&str> = text.lines().collect();
            let assignments: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains(" = "))
                .collect();
            if assignments.is_empty() {
                return bytes.to_vec();
            }
            let target = assignments[at.index(assignments.len())];
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            if let Some((key, _)) = out[target].split_once(" = ") {
                out[target] = format!("{key} = {}", WEIRD_VALUES[*value]);
            }
            out.join("\n").into_bytes()
        }
        Mutation::DropLine(at) => {
            let lines: Vec<&str> = text.lines().collect();
            let drop = at.index(lines.len().max(1));
            lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, l)| *l)
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()
        }
    }
}

fn seeds() -> Vec<String> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../jobs/examples");
    let mut seeds = vec![EVERY_SECTION.to_string()];
    if let Ok(entries) = std::fs::read_dir(&examples) {
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        seeds.extend(files.iter().filter_map(|f| std::fs::read_to_string(f).ok()));
    }
    seeds
}

#[test]
fn the_seeds_are_valid_so_mutations_start_from_working_jobs() {
    for seed in seeds() {
        let job =
            Job::from_toml(&seed, Path::new("seed.toml")).unwrap_or_else(|e| panic!("{e}\n{seed}"));
        // Jobs naming a Polars transform compile only with the binary's registry.
        if job.spec.transform.polars.is_none() {
            Pipeline::compile(&job, None).unwrap_or_else(|e| panic!("{e}\n{seed}"));
        }
    }
}

#[test]
fn a_mangled_job_file_is_an_error_naming_the_file_never_a_panic() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(400);
    let seeds = seeds();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..4));
    runner
        .run(&strategy, |(seed, mutations)| {
            let mut text = seeds[seed].clone();
            for m in &mutations {
                text = String::from_utf8_lossy(&apply(&text, m)).into_owned();
            }
            let file = Path::new("mangled.toml");
            match Job::from_toml(&text, file) {
                Ok(job) => {
                    if job.spec.transform.polars.is_none()
                        && let Err(e) = Pipeline::compile(&job, None)
                    {
                        prop_assert!(!e.to_string().is_empty());
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(
                        message.contains("mangled.toml"),
                        "the error names the file: {message}"
                    );
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
