use std::path::Path;

use super::*;
use crate::topics::DivertReason;
use crate::{JsonDecoder, Pipeline};

fn job(checks: &str, sql: &str) -> Job {
    let toml = format!(
        r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [
  {{ name = "ts", type = "timestamp" }},
  {{ name = "order_id", type = "string" }},
  {{ name = "status", type = "string" }},
  {{ name = "amount", type = "float64" }},
  {{ name = "qty", type = "string" }},
]
[transform]
sql = "{sql}"
{checks}
"#
    );
    Job::from_toml(&toml, Path::new("t.toml")).expect("job")
}

const STATELESS: &str = "SELECT order_id, amount, CAST(qty AS BIGINT) AS units FROM t";

fn rows(job: &Job, lines: &[&str]) -> RecordBatch {
    let records: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    JsonDecoder::new(job)
        .decode(&records)
        .expect("decode")
        .batch
}

const ORDERS: [&str; 6] = [
    r#"{"ts":1000,"order_id":"o-1","status":"completed","amount":10.0,"qty":"1"}"#,
    r#"{"ts":2000,"order_id":null,"status":"completed","amount":-5.0,"qty":"2"}"#,
    r#"{"ts":3000,"order_id":"x-3","status":"lost","amount":null,"qty":"3"}"#,
    r#"{"ts":4000,"order_id":"o-4","status":null,"amount":200000.0,"qty":"abc"}"#,
    r#"{"ts":5000,"order_id":"o-5","status":"pending","amount":0.0,"qty":"5"}"#,
    r#"{"ts":6000,"order_id":"o-6","status":"completed","amount":100000.0,"qty":"6"}"#,
];

const EVERY_KIND: &str = r#"
[[checks]]
check = "not_null"
column = "order_id"
[[checks]]
check = "accepted_values"
column = "status"
values = ["completed", "pending"]
[[checks]]
check = "range"
column = "amount"
min = 0
max = 100000
[[checks]]
check = "range"
name = "amount_below_limit_exclusive"
column = "amount"
max = 100000
inclusive = false
[[checks]]
check = "regex"
column = "order_id"
pattern = "^o-[0-9]+$"
[[checks]]
check = "expect"
name = "completed_have_amount"
predicate = "status <> 'completed' OR amount > 0"
"#;

#[test]
fn each_kind_counts_its_violations_and_null_passes_all_but_not_null() {
    let job = job(EVERY_KIND, STATELESS);
    let checks = QualityChecks::compile(&job, &job.source_schema())
        .expect("compiles")
        .expect("checks");
    let names: Vec<&str> = checks.checks().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "not_null_order_id",
            "accepted_values_status",
            "range_amount",
            "amount_below_limit_exclusive",
            "regex_order_id",
            "completed_have_amount"
        ]
    );
    let outcome = checks.apply(&rows(&job, &ORDERS)).expect("applies");
    // not_null: row 1. accepted: row 2 ("lost"; row 3's NULL passes). range: rows 1 and 3
    // (200000; row 2's NULL passes). exclusive max: rows 3 and 5. regex: row 2 (row 1's NULL
    // passes). expect: row 1 (completed with -5).
    assert_eq!(outcome.violations, vec![1, 1, 2, 2, 1, 1]);
    assert!(outcome.quarantined.is_empty(), "every check warns only");
}

#[test]
fn quarantine_rejects_each_row_once_under_its_first_failed_check() {
    let checks = EVERY_KIND.replace(
        "check = \"not_null\"",
        "check = \"not_null\"\nseverity = \"quarantine\"",
    ) + "severity = \"quarantine\"\n";
    let job = job(&checks, STATELESS);
    let compiled = QualityChecks::compile(&job, &job.source_schema())
        .expect("compiles")
        .expect("checks");
    let outcome = compiled.apply(&rows(&job, &ORDERS)).expect("applies");
    // Row 1 fails both not_null (check 0) and the expect (check 5): it is listed once.
    assert_eq!(outcome.quarantined, vec![(1, 0)]);
    let message = compiled.failure(0).to_string();
    assert_eq!(
        message,
        "check `not_null_order_id` failed: expected `order_id` is not null"
    );
}

#[test]
fn the_pipeline_sets_quarantined_rows_aside_and_the_plan_runs_on_the_rest() {
    let checks = r#"
[[checks]]
check = "not_null"
column = "order_id"
severity = "quarantine"
[[checks]]
check = "accepted_values"
column = "status"
values = ["completed", "pending"]
"#;
    let job = job(checks, STATELESS);
    let pipeline = Pipeline::compile(&job, None).expect("plan");
    let isolated = pipeline
        .evaluate_isolating(&rows(&job, &ORDERS))
        .expect("evaluates");
    // Row 1 is quarantined; row 3 fails the plan (CAST of "abc"), found among the others
    // and reported at its index in the whole batch.
    let failed: Vec<(usize, DivertReason, Option<&str>)> = isolated
        .failed
        .iter()
        .map(|f| (f.row, f.reason, f.check.as_deref()))
        .collect();
    assert_eq!(
        failed,
        vec![
            (1, DivertReason::CheckFailed, Some("not_null_order_id")),
            (3, DivertReason::TransformError, None)
        ]
    );
    assert_eq!(isolated.failed[0].field.as_deref(), Some("order_id"));
    let out: Vec<String> = isolated
        .pieces
        .iter()
        .flat_map(|p| {
            let column = p.output.column(0).as_any();
            let ids = column
                .downcast_ref::<arrow::array::StringArray>()
                .expect("strings");
            ids.iter()
                .map(|v| v.unwrap_or("-").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(out, ["o-1", "x-3", "o-5", "o-6"], "warned rows go on");
    let violations: Vec<(&str, Severity, usize)> = isolated
        .violations
        .iter()
        .map(|v| (v.check.as_str(), v.severity, v.rows))
        .collect();
    assert_eq!(
        violations,
        vec![
            ("not_null_order_id", Severity::Quarantine, 1),
            ("accepted_values_status", Severity::Warn, 1)
        ]
    );
}

#[test]
fn a_predicate_that_fails_on_a_row_counts_as_a_violation() {
    let checks = r#"
[[checks]]
check = "expect"
name = "qty_positive"
predicate = "CAST(qty AS BIGINT) > 0"
severity = "quarantine"
"#;
    let job = job(checks, STATELESS);
    let compiled = QualityChecks::compile(&job, &job.source_schema())
        .expect("compiles")
        .expect("checks");
    let outcome = compiled.apply(&rows(&job, &ORDERS)).expect("applies");
    assert_eq!(outcome.quarantined, vec![(3, 0)], "the CAST fails on row 3");
}

#[test]
fn a_check_that_does_not_compile_fails_the_job_naming_it() {
    for (check, field) in [
        (
            "check = \"expect\"\nname = \"e\"\npredicate = \"amount + 1\"",
            "checks[0].predicate",
        ),
        (
            "check = \"expect\"\nname = \"e\"\npredicate = \"no_such_column > 1\"",
            "checks[0].predicate",
        ),
        (
            "check = \"expect\"\nname = \"e\"\npredicate = \"amount > (SELECT 1)\"",
            "checks[0].predicate",
        ),
    ] {
        let job = job(&format!("[[checks]]\n{check}\n"), STATELESS);
        let error = Pipeline::compile(&job, None).expect_err("refused");
        let message = error.to_string();
        assert!(message.contains(field), "{check}: {message}");
    }
}

#[test]
fn a_malformed_check_is_refused_when_the_job_file_is_read() {
    let toml = |checks: &str| {
        format!(
            r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [{{ name = "ts", type = "timestamp" }}, {{ name = "a", type = "string" }}]
[transform]
sql = "SELECT a FROM t"
{checks}
"#
        )
    };
    for (checks, field) in [
        ("[[checks]]\ncheck = \"not_null\"\n", "checks[0].column"),
        (
            "[[checks]]\ncheck = \"not_null\"\ncolumn = \"b\"\n",
            "checks[0].column",
        ),
        (
            "[[checks]]\ncheck = \"not_null\"\ncolumn = \"a\"\nvalues = [\"x\"]\n",
            "checks[0].values",
        ),
        (
            "[[checks]]\ncheck = \"expect\"\npredicate = \"a > 1\"\n",
            "checks[0].name",
        ),
        (
            "[[checks]]\ncheck = \"regex\"\ncolumn = \"a\"\npattern = \"(\"\n",
            "checks[0].pattern",
        ),
        (
            "[[checks]]\ncheck = \"range\"\ncolumn = \"a\"\n",
            "checks[0].min",
        ),
        (
            "[[checks]]\ncheck = \"accepted_values\"\ncolumn = \"a\"\nvalues = []\n",
            "checks[0].values",
        ),
        (
            "[[checks]]\ncheck = \"not_null\"\ncolumn = \"a\"\n[[checks]]\ncheck = \"not_null\"\ncolumn = \"a\"\n",
            "checks[1].name",
        ),
        (
            "[[checks]]\ncheck = \"not_null\"\ncolumns = [\"a\"]\n",
            "checks[0].columns",
        ),
        (
            "[[checks]]\ncheck = \"unique\"\ncolumn = \"a\"\ncolumns = [\"a\"]\n",
            "checks[0].columns",
        ),
        (
            "[[checks]]\ncheck = \"unique\"\ncolumns = [\"a\", \"b\"]\n",
            "checks[0].columns",
        ),
        (
            "[[checks]]\ncheck = \"not_null\"\ncolumn = \"a\"\nwithin = \"1m\"\n",
            "checks[0].within",
        ),
        ("[[checks]]\ncheck = \"unique\"\n", "checks[0].column"),
    ] {
        let error = Job::from_toml(&toml(checks), Path::new("t.toml")).expect_err("refused");
        let message = error.to_string();
        assert!(message.contains(field), "{checks}: {message}");
    }
}

#[test]
fn quarantine_checks_are_part_of_the_plan_and_warn_checks_are_not() {
    let plain = job("", STATELESS).plan_fingerprint();
    let warn = job(
        "[[checks]]\ncheck = \"not_null\"\ncolumn = \"order_id\"\n",
        STATELESS,
    )
    .plan_fingerprint();
    let quarantine = job(
        "[[checks]]\ncheck = \"not_null\"\ncolumn = \"order_id\"\nseverity = \"quarantine\"\n",
        STATELESS,
    )
    .plan_fingerprint();
    assert_eq!(plain, warn);
    assert_ne!(plain, quarantine);
    let unique = |within: &str, severity: &str| {
        job(
            &format!(
                "[[checks]]\ncheck = \"unique\"\ncolumn = \"order_id\"\n{within}severity = \"{severity}\"\n"
            ),
            STATELESS,
        )
        .plan_fingerprint()
    };
    assert_eq!(plain, unique("", "warn"), "a warn unique only counts");
    assert_ne!(
        unique("", "quarantine"),
        unique("within = \"5m\"\n", "quarantine")
    );
    assert_eq!(
        unique("", "quarantine"),
        unique("within = \"1h\"\n", "quarantine"),
        "the default horizon is dedup_within's 1h"
    );
}
