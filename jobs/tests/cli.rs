//! The `sluice` command line as a user runs it: help with examples, errors that name the file
//! and field, bad input reported by line with exit code 3, and the backfill example end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn sluice(args: &[&str], lake: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_LAKE", lake)
        .env_remove("SLUICE_LOG_FORMAT")
        .output()
        .expect("run sluice")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_subcommands_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    let out = sluice(&["--help"], dir.path());
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["backfill", "lake", "view", "bench", "Examples:"] {
        assert!(help.contains(word), "missing {word}: {help}");
    }
    let out = sluice(&["backfill", "--help"], dir.path());
    assert!(text(&out.stdout).contains("sluice backfill --job"));
}

#[test]
fn a_bad_job_file_names_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("bad.toml");
    std::fs::write(&job, "name = \"x\"\n[source]\ntopic = \"t\"\nevent_time = \"ts\"\nwatermark_delay = \"soon\"\nfields = []\n[transform]\nsql = \"SELECT 1\"\n").unwrap();
    let out = sluice(&["view", "--job", job.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("watermark_delay") && err.contains("soon"),
        "{err}"
    );
}

#[test]
fn load_reports_bad_lines_and_exits_3_while_good_lines_land() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"order_id\":\"a\",\"amount\":1.5,\"status\":\"completed\",\"event_time\":1714557600000}\n\
         {\"order_id\":\"b\",\"amount\":\"lots\",\"event_time\":1714557600000}\n\
         not json\n\
         \n\
         {\"amount\":2.0,\"event_time\":1714557600000}\n",
    )
    .unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let job = repo("jobs/examples/orders_per_minute.toml");
    let out = sluice(
        &[
            "lake",
            "load",
            "--job",
            job.to_str().unwrap(),
            input.to_str().unwrap(),
            "--rejects",
            rejects.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("in.jsonl:2: schema_violation"), "{err}");
    assert!(err.contains("in.jsonl:3: malformed_json"), "{err}");
    assert!(err.contains("in.jsonl:5: missing_field"), "{err}");
    assert!(
        text(&out.stdout).contains("loaded 1 rows"),
        "{}",
        text(&out.stdout)
    );
    let rejected = std::fs::read_to_string(&rejects).unwrap();
    assert_eq!(rejected.lines().count(), 3);
    assert!(
        rejected.contains("\"field\":\"amount\"") && rejected.contains("not json"),
        "{rejected}"
    );
}

#[test]
fn load_backfill_view_gives_the_seed_querys_view() {
    let dir = tempfile::tempdir().unwrap();
    let job = repo("jobs/examples/orders_per_minute.toml");
    let job = job.to_str().unwrap();
    let input = repo("tests/golden/orders.input.jsonl");
    let out = sluice(
        &["lake", "load", "--job", job, input.to_str().unwrap()],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sluice(
        &[
            "backfill",
            "--job",
            job,
            "--from",
            "2024-05-01",
            "--to",
            "2024-05-02",
            "--output",
            "json",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows_read"], 60);
    assert_eq!(report["cutoff"], "2024-05-02T00:00:00Z");
    let out = sluice(&["view", "--job", job], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected =
        std::fs::read_to_string(repo("tests/golden/orders_per_minute.expected.jsonl")).unwrap();
    assert_eq!(text(&out.stdout), expected);
    let out = sluice(
        &["backfill", "--job", job, "--from", "tomorrow"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--from"),
        "{}",
        text(&out.stderr)
    );
}
