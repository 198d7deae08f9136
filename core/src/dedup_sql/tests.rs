use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::*;
use crate::window::WindowKind;

const NUMBERED: &str = "SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM orders";

/// A PARTITION BY key as strip returns it: its text and whether it was quoted.
type Key = (String, bool);

/// strip's keys and the statement's text after it.
fn strip_sql(sql: &str) -> Result<(Option<Vec<Key>>, String)> {
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).expect("test SQL parses");
    let mut statement = statements.remove(0);
    let Statement::Query(query) = &mut statement else {
        panic!("not a query: {sql}");
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        panic!("not a SELECT: {sql}");
    };
    let cx = Context {
        job: "j",
        table: "orders",
        event_time: "ts",
        others: &[],
    };
    let keys = strip(&cx, select)?.map(|keys| {
        keys.into_iter()
            .map(|k| (k.value, k.quote_style.is_some()))
            .collect()
    });
    Ok((keys, statement.to_string()))
}

fn key(name: &str) -> (String, bool) {
    (name.to_string(), false)
}

#[test]
fn the_numbered_subquery_becomes_its_source_table() {
    let (keys, sql) = strip_sql(&format!(
        "SELECT k, a FROM ({NUMBERED}) WHERE rn = 1 AND a > 0"
    ))
    .unwrap();
    assert_eq!(keys, Some(vec![key("k")]));
    assert_eq!(sql, "SELECT k, a FROM orders WHERE a > 0");

    let (keys, sql) =
        strip_sql(&format!("SELECT d.k FROM ({NUMBERED}) AS d WHERE d.rn = 1")).unwrap();
    assert_eq!(keys, Some(vec![key("k")]));
    assert_eq!(sql, "SELECT d.k FROM orders AS d");

    // The other conjuncts stay, in order and with their parentheses.
    let (_, sql) = strip_sql(&format!(
        "SELECT k FROM ({NUMBERED}) d WHERE a > 0 AND (1 = rn AND (a < 5 OR k = 'x'))"
    ))
    .unwrap();
    assert_eq!(
        sql,
        "SELECT k FROM orders d WHERE a > 0 AND (a < 5 OR k = 'x')"
    );
}

#[test]
fn accepts_the_spellings_of_the_first_row_and_the_subquery() {
    let first_rows = [
        "rn = 1", "1 = rn", "rn <= 1", "1 >= rn", "rn < 2", "(rn) = 1",
    ];
    for test in first_rows {
        let (keys, sql) = strip_sql(&format!("SELECT k FROM ({NUMBERED}) WHERE {test}"))
            .unwrap_or_else(|e| panic!("{test}: {e}"));
        assert_eq!(keys, Some(vec![key("k")]), "{test}");
        assert_eq!(sql, "SELECT k FROM orders", "{test}");
    }
    // `*` second and qualified, the table aliased (the alias is dropped with the subquery),
    // several keys, qualified and quoted, ASC, names in another case.
    let (keys, sql) = strip_sql(
        "SELECT k FROM (SELECT ROW_NUMBER() OVER (PARTITION BY o.k, \"Region\" ORDER BY o.TS ASC) \
         AS Num, o.* FROM Orders AS o) WHERE num = 1",
    )
    .unwrap();
    assert_eq!(keys, Some(vec![key("k"), ("Region".to_string(), true)]));
    assert_eq!(sql, "SELECT k FROM Orders");
    let (keys, sql) = strip_sql(
        "SELECT k FROM (SELECT orders.*, ROW_NUMBER() OVER (PARTITION BY orders.k ORDER BY ts NULLS LAST) AS rn FROM orders) WHERE rn = 1",
    )
    .unwrap();
    assert_eq!(keys, Some(vec![key("k")]));
    assert_eq!(sql, "SELECT k FROM orders");
}

#[test]
fn other_queries_are_left_alone() {
    for sql in [
        "SELECT k FROM orders WHERE rn = 1",
        "SELECT k FROM (SELECT k FROM orders)",
        "SELECT k FROM orders AS o",
    ] {
        let (keys, text) = strip_sql(sql).unwrap();
        assert_eq!(keys, None, "{sql}");
        assert_eq!(text, sql);
    }
}

#[test]
fn refusals_name_the_supported_alternative() {
    let numbered = |over: &str| {
        format!(
            "SELECT k FROM (SELECT *, ROW_NUMBER() OVER ({over}) AS rn FROM orders) WHERE rn = 1"
        )
    };
    let cases = [
        (
            numbered("PARTITION BY k ORDER BY ts DESC"),
            "last-row deduplication",
        ),
        (
            numbered("PARTITION BY k ORDER BY ts DESC"),
            "ORDER BY ts ASC keeps the first row",
        ),
        (numbered("PARTITION BY k ORDER BY a"), "write ORDER BY ts"),
        (
            numbered("PARTITION BY k ORDER BY ts, a"),
            "pick the same row",
        ),
        (numbered("PARTITION BY k"), "ROW_NUMBER() without ORDER BY"),
        (
            numbered("PARTITION BY k ORDER BY ts NULLS FIRST"),
            "NULLS FIRST",
        ),
        (
            numbered("ORDER BY ts"),
            "name the key whose duplicates to drop",
        ),
        (
            numbered("PARTITION BY upper(k) ORDER BY ts"),
            "PARTITION BY upper(k)",
        ),
        (numbered("PARTITION BY x.k ORDER BY ts"), "PARTITION BY x.k"),
        (
            numbered("PARTITION BY k ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"),
            "a window frame",
        ),
        (
            format!("SELECT k FROM ({NUMBERED}) WHERE rn <= 3"),
            "top-N is not supported",
        ),
        (format!("SELECT k FROM ({NUMBERED}) WHERE rn < 3"), "top-N"),
        (format!("SELECT k FROM ({NUMBERED}) WHERE rn = 2"), "top-N"),
        (format!("SELECT k FROM ({NUMBERED}) WHERE 3 >= rn"), "top-N"),
        (format!("SELECT k FROM ({NUMBERED}) WHERE rn > 1"), "top-N"),
        (
            format!("SELECT k FROM ({NUMBERED}) WHERE a > 0"),
            "add WHERE rn = 1",
        ),
        (format!("SELECT k FROM ({NUMBERED})"), "add WHERE rn = 1"),
        (
            format!("SELECT k FROM ({NUMBERED}) WHERE rn = 1 OR a > 0"),
            "add WHERE rn = 1",
        ),
        (
            format!("SELECT k, rn FROM ({NUMBERED}) WHERE rn = 1"),
            "not a column of the result",
        ),
        (
            format!("SELECT k FROM ({NUMBERED}) d WHERE d.rn = 1 AND d.rn + a > 0"),
            "not a column of the result",
        ),
        (
            format!("SELECT k, COUNT(*) FROM ({NUMBERED}) WHERE rn = 1 GROUP BY k, rn"),
            "not a column of the result",
        ),
        (
            "SELECT k FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn \
             FROM orders WHERE a > 0) WHERE rn = 1"
                .to_string(),
            "move the filter to the outer WHERE",
        ),
        (
            "SELECT k FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn \
             FROM orders GROUP BY k) WHERE rn = 1"
                .to_string(),
            "GROUP BY inside the ROW_NUMBER() subquery",
        ),
        (
            "SELECT k FROM (SELECT DISTINCT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) \
             AS rn FROM orders) WHERE rn = 1"
                .to_string(),
            "DISTINCT inside",
        ),
        (
            "SELECT k FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn \
             FROM orders LIMIT 10) WHERE rn = 1"
                .to_string(),
            "LIMIT inside",
        ),
        (
            "SELECT k FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn \
             FROM orders ORDER BY ts) WHERE rn = 1"
                .to_string(),
            "ORDER BY inside",
        ),
        (
            "SELECT k FROM (SELECT o.*, ROW_NUMBER() OVER (PARTITION BY o.k ORDER BY o.ts) \
             AS rn FROM orders o JOIN orders p ON o.k = p.k) WHERE rn = 1"
                .to_string(),
            "JOIN inside",
        ),
        (
            "SELECT k FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn \
             FROM other) WHERE rn = 1"
                .to_string(),
            "FROM other",
        ),
        (
            "SELECT k FROM (SELECT *, RANK() OVER (PARTITION BY k ORDER BY ts) AS rn \
             FROM orders) WHERE rn = 1"
                .to_string(),
            "RANK(...) OVER",
        ),
        (
            "SELECT k FROM (SELECT *, a * 2 AS b, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) \
             AS rn FROM orders) WHERE rn = 1"
                .to_string(),
            "compute columns in the outer SELECT",
        ),
        (
            "SELECT k FROM (SELECT k, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn \
             FROM orders) WHERE rn = 1"
                .to_string(),
            "keeps whole source rows",
        ),
        (
            "SELECT k FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) \
             FROM orders) WHERE rn = 1"
                .to_string(),
            "keeps whole source rows",
        ),
        (
            format!("SELECT k FROM ({NUMBERED}) AS d(x, y, z, n) WHERE n = 1"),
            "column aliases",
        ),
    ];
    for (sql, expected) in cases {
        match strip_sql(&sql) {
            Ok((keys, text)) => panic!("accepted {sql}: {keys:?} {text}"),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains(expected), "{sql}: {e}");
            }
        }
    }
}

#[test]
fn rewrite_records_the_keys_and_keeps_group_windows() {
    let out = crate::flink_sql::rewrite(
        "j",
        &format!(
            "SELECT k, TUMBLE_START(ts, INTERVAL '1' MINUTE) AS w, COUNT(*) AS n FROM ({NUMBERED}) \
             WHERE rn = 1 GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)"
        ),
        "orders",
        "ts",
    )
    .unwrap();
    assert_eq!(out.window, Some(WindowKind::Tumble { size: 60_000_000 }));
    assert_eq!(
        out.dedup
            .map(|keys| keys.into_iter().map(|k| k.value).collect::<Vec<_>>()),
        Some(vec!["k".to_string()])
    );
    let sql = out.statement.to_string();
    assert!(
        sql.contains("FROM orders GROUP BY k, __window_start, __window_end"),
        "{sql}"
    );
    let plain = crate::flink_sql::rewrite("j", "SELECT k FROM orders", "orders", "ts").unwrap();
    assert!(plain.dedup.is_none());
}

#[test]
fn keys_resolve_like_datafusion_identifiers() {
    use arrow::datatypes::{DataType, Field};
    let schema = Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("Region", DataType::Utf8, false),
    ]);
    let keys = [
        Ident::new("K"),
        Ident::with_quote('"', "Region"),
        Ident::new("k"),
    ];
    assert_eq!(
        resolve_keys("j", &keys, &schema).unwrap(),
        vec!["k".to_string(), "Region".to_string()]
    );
    let err = resolve_keys("j", &[Ident::new("Region")], &schema)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PARTITION BY `Region`: not a column of the source")
            && err.contains("\"Region\""),
        "{err}"
    );
    let err = resolve_keys("j", &[Ident::with_quote('"', "K")], &schema)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the column is `k`"), "{err}");
    let err = resolve_keys("j", &[Ident::new("nope")], &schema)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("PARTITION BY `nope`: not a column of the source"),
        "{err}"
    );
}
