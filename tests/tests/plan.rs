//! The plan compiler refuses SQL that cannot run exactly on a stream, at compile time, saying
//! what and why; and it accepts the Flink window and first-row deduplication syntax.

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

/// Flink's first-row deduplication of `t` by `k`, as a derived table.
const FIRST_ROWS: &str = "(SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM t)";

fn compiled(sql: &str, key: &str) -> JobPlan {
    compile(sql, key).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[test]
fn accepts_first_row_dedup_and_records_its_keys() {
    let k = ["k".to_string()];
    let by_k = Some(&k[..]);

    let stateless = compiled(
        &format!("SELECT k, a FROM {FIRST_ROWS} WHERE rn = 1 AND a > 0"),
        "",
    );
    assert_eq!(stateless.dedup_keys(), by_k);
    assert!(stateless.aggregate().is_none());
    let names: Vec<String> = stateless
        .output_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["k", "a"]);

    let windowed = compiled(
        &format!(
            "SELECT k, TUMBLE_START(ts, INTERVAL '1' MINUTE) AS w, COUNT(*) AS n FROM {FIRST_ROWS} \
             WHERE rn = 1 GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)"
        ),
        "\"k\"",
    );
    assert_eq!(windowed.dedup_keys(), by_k);
    assert!(windowed.aggregate().is_some());

    let aliased = compiled(
        &format!("SELECT d.k, d.a * 2 AS a2 FROM {FIRST_ROWS} AS d WHERE d.rn = 1"),
        "",
    );
    assert_eq!(aliased.dedup_keys(), by_k);

    // `*` qualified, keys qualified and in another case, `1 = n`, in PARTITION BY order.
    let several = compiled(
        "SELECT * FROM (SELECT t.*, ROW_NUMBER() OVER (PARTITION BY a, T.K ORDER BY TS ASC) AS n \
         FROM t) WHERE 1 = n",
        "",
    );
    assert_eq!(
        several.dedup_keys(),
        Some(&["a".to_string(), "k".to_string()][..])
    );
    assert_eq!(several.output_schema().fields().len(), 3);

    let plain = compiled("SELECT k, a FROM t WHERE a > 0", "");
    assert_eq!(plain.dedup_keys(), None);
}

#[test]
fn refuses_dedup_variants_with_the_alternative() {
    let numbered = |over: &str, inside: &str| {
        format!(
            "SELECT k FROM (SELECT *, ROW_NUMBER() OVER ({over}) AS rn FROM t{inside}) WHERE rn = 1"
        )
    };
    let by_k = "PARTITION BY k ORDER BY ts";
    let cases = [
        (
            numbered("PARTITION BY k ORDER BY ts DESC", ""),
            "ORDER BY ts DESC (last-row deduplication)",
        ),
        (
            numbered("PARTITION BY k ORDER BY ts DESC", ""),
            "retracting rows already emitted, which an append-only view cannot do; ORDER BY ts ASC keeps the first row",
        ),
        (
            numbered("PARTITION BY k ORDER BY a", ""),
            "lets the batch and speed layers pick the same row; write ORDER BY ts",
        ),
        (
            numbered("PARTITION BY k ORDER BY ts, a", ""),
            "pick the same row; write ORDER BY ts",
        ),
        (
            numbered("ORDER BY ts", ""),
            "name the key whose duplicates to drop in PARTITION BY",
        ),
        (
            numbered("PARTITION BY nope ORDER BY ts", ""),
            "PARTITION BY `nope`: not a column of the source",
        ),
        (
            format!("SELECT k FROM {FIRST_ROWS} WHERE rn <= 3"),
            "top-N is not supported; `rn = 1` keeps the first row per key",
        ),
        (
            format!("SELECT k FROM {FIRST_ROWS} WHERE rn < 3"),
            "top-N is not supported",
        ),
        (
            format!("SELECT k FROM {FIRST_ROWS} WHERE rn = 2"),
            "top-N is not supported",
        ),
        (
            format!("SELECT k FROM {FIRST_ROWS} WHERE a > 0"),
            "supported only as first-row deduplication: add WHERE rn = 1",
        ),
        (
            format!("SELECT k, rn FROM {FIRST_ROWS} WHERE rn = 1"),
            "rn is not a column of the result: only `rn = 1` may use it",
        ),
        (
            format!("SELECT k FROM {FIRST_ROWS} WHERE rn = 1 AND rn + a > 1"),
            "rn is not a column of the result",
        ),
        (
            format!(
                "SELECT k, COUNT(*) AS c FROM {FIRST_ROWS} WHERE rn = 1 GROUP BY k HAVING MAX(rn) = 1"
            ),
            "rn is not a column of the result",
        ),
        (
            numbered(by_k, " WHERE a > 0"),
            "move the filter to the outer WHERE (which filters after deduplication)",
        ),
        (
            numbered(by_k, " GROUP BY k, a, ts"),
            "GROUP BY inside the ROW_NUMBER() subquery: deduplication runs on every source row",
        ),
        (numbered(by_k, " HAVING a > 0"), "HAVING inside"),
        (numbered(by_k, " LIMIT 5"), "LIMIT inside"),
        (numbered(by_k, " ORDER BY ts"), "ORDER BY inside"),
        (
            numbered(by_k, " JOIN t AS u ON t.k = u.k"),
            "JOIN inside the ROW_NUMBER() subquery",
        ),
        (
            format!(
                "SELECT k FROM (SELECT DISTINCT *, ROW_NUMBER() OVER ({by_k}) AS rn FROM t) WHERE rn = 1"
            ),
            "DISTINCT inside",
        ),
        (
            format!("SELECT k FROM (SELECT *, RANK() OVER ({by_k}) AS rn FROM t) WHERE rn = 1"),
            "the only window function supported is ROW_NUMBER()",
        ),
        (
            "SELECT k FROM (SELECT k, a FROM t)".to_string(),
            "a subquery or table function in FROM",
        ),
    ];
    for (sql, expected) in cases {
        match compile(&sql, "") {
            Ok(_) => panic!("accepted: {sql}"),
            Err(e) => assert!(e.contains(expected), "{sql}: {e}"),
        }
    }
}

/// Every example job in jobs/examples/ compiles (those without a Polars transform, which
/// needs the binary's registry), and the dedup example deduplicates by its order id.
#[test]
fn the_example_jobs_compile() {
    let dir = sluice_e2e::repo_path("jobs/examples");
    let mut compiled = 0;
    for entry in std::fs::read_dir(&dir).expect("jobs/examples") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let job = Job::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if job.spec.transform.polars.is_some() {
            continue;
        }
        let pipeline = sluice_core::Pipeline::compile(&job, None)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if job.name() == "dedup_orders" {
            let dedup = pipeline.dedup().expect("the dedup example deduplicates");
            assert_eq!(dedup.key_names(), ["order_id"]);
            assert_eq!(dedup.within_us(), 3_600_000_000);
        }
        compiled += 1;
    }
    assert!(
        compiled >= 5,
        "only {compiled} example jobs in {}",
        dir.display()
    );
}
