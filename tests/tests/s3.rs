//! The lake on an S3-compatible object store: `sluice lake load`, `backfill` and `view` with
//! `--lake s3://...` give the same view as on a local directory.

use std::process::Command;

use sluice_e2e::kafka::sluice_bin;
use sluice_e2e::repo_path;
use sluice_e2e::s3::S3Server;

#[test]
fn load_backfill_view_work_on_an_s3_lake() {
    let s3 = S3Server::start();
    s3.create_bucket("sluice-lake");
    let lake = "s3://sluice-lake/lake";
    let job = repo_path("jobs/examples/orders_per_minute.toml");
    let input = repo_path("tests/golden/orders.input.jsonl");
    let run = |args: &[&str]| {
        let out = Command::new(sluice_bin())
            .args(args)
            .args(["--lake", lake])
            .envs(s3.env())
            .output()
            .expect("run sluice");
        assert!(
            out.status.success(),
            "sluice {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let job = job.to_str().unwrap();
    run(&["lake", "load", "--job", job, input.to_str().unwrap()]);
    run(&[
        "backfill",
        "--job",
        job,
        "--from",
        "2024-05-01",
        "--to",
        "2024-05-02",
    ]);
    let view = run(&["view", "--job", job]);
    let expected =
        std::fs::read_to_string(repo_path("tests/golden/orders_per_minute.expected.jsonl"))
            .unwrap();
    assert_eq!(view, expected);
    let again = run(&[
        "lake",
        "load",
        "--job",
        job,
        input.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(again.contains("\"already_loaded\":true"), "{again}");
}
