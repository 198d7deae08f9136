//! The plan compiler refuses SQL that cannot run exactly on a stream, at compile time, saying
//! what and why; and it accepts the Flink window syntax.

use std::path::Path;

use sluice_core::{Job, JobPlan};

fn compile(sql: &str, key: &str) -> Result<JobPlan, String> {
    let toml = format!(
        r#"
name = "p"
[source]
topic = "t"
event_time = "ts"
fields = [ {{ name = "k", type = "string" }}, {{ name = "a", type = "float64" }}, {{ name = "ts", type = "timestamp" }} ]
[transform]
sql = "{sql}"
[view]
key = [{key}]
"#
    );
    let job = Job::from_toml(&toml, Path::new("p.toml")).map_err(|e| e.to_string())?;
    JobPlan::compile(&job, job.source_schema()).map_err(|e| e.to_string())
}

#[test]
fn refuses_what_cannot_merge_or_order() {
    let cases = [
        (
            "SELECT k, median(a) AS m FROM t GROUP BY k",
            "\"k\"",
            "aggregate `median`",
        ),
        (
            "SELECT k, array_agg(a) AS m FROM t GROUP BY k",
            "\"k\"",
            "aggregate `array_agg`",
        ),
        (
            "SELECT k, stddev(a) AS m FROM t GROUP BY k",
            "\"k\"",
            "does not merge exactly",
        ),
        (
            "SELECT k, avg(DISTINCT a) AS m FROM t GROUP BY k",
            "\"k\"",
            "avg(DISTINCT",
        ),
        ("SELECT k, a FROM t ORDER BY a", "", "ORDER BY"),
        (
            "SELECT k, row_number() OVER (ORDER BY a) AS r FROM t",
            "",
            "Window",
        ),
        (
            "SELECT k, COUNT(*) AS n FROM t GROUP BY ROLLUP(k)",
            "\"k\"",
            "ROLLUP",
        ),
        (
            "SELECT k, COUNT(*) AS __n FROM t GROUP BY k",
            "\"k\"",
            "reserved",
        ),
        ("SELECT k, COUNT(*) AS n FROM t GROUP BY k", "", "view.key"),
        (
            "SELECT k, COUNT(*) AS n FROM t GROUP BY k",
            "\"n\"",
            "view.key",
        ),
        ("SELECT k FROM t", "\"k\"", "stateless"),
        ("SELECT nope FROM t", "", "invalid SQL"),
        ("SELEC k FROM t", "", "invalid SQL"),
    ];
    for (sql, key, expected) in cases {
        match compile(sql, key) {
            Ok(_) => panic!("accepted: {sql}"),
            Err(e) => assert!(e.contains(expected), "{sql}: {e}"),
        }
    }
}

#[test]
fn accepts_the_supported_shapes() {
    let cases = [
        (
            "SELECT k, SUM(a) AS s FROM t GROUP BY k HAVING SUM(a) > 10",
            "\"k\"",
        ),
        (
            "SELECT k, COUNT(*) FILTER (WHERE a > 1) AS n FROM t GROUP BY k",
            "\"k\"",
        ),
        (
            "SELECT upper(k) AS uk, MAX(a) AS m FROM t WHERE a IS NOT NULL GROUP BY upper(k)",
            "\"uk\"",
        ),
        (
            "SELECT TUMBLE_START(ts, INTERVAL '5' MINUTE) AS w, COUNT(DISTINCT k) AS n FROM t GROUP BY TUMBLE(ts, INTERVAL '5' MINUTE)",
            "",
        ),
        ("SELECT x.k, x.a * 2 AS a2 FROM t AS x WHERE x.a > 0", ""),
    ];
    for (sql, key) in cases {
        if let Err(e) = compile(sql, key) {
            panic!("{sql}: {e}");
        }
    }
}
