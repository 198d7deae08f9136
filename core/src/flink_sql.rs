//! Flink group-window SQL → SQL DataFusion can plan.
//!
//! `GROUP BY TUMBLE(t, INTERVAL '1' MINUTE)` becomes `GROUP BY __window_start, __window_end`
//! and `TUMBLE_START(...)`/`TUMBLE_END(...)` become those columns, which the plan compiler adds
//! to the source table. The window itself is returned as a [`WindowKind`], assigned by
//! [`crate::window`] at run time. Flink's first-row deduplication subquery is first replaced by
//! its source table ([`crate::dedup_sql`]). Statement shapes that cannot run on a stream are
//! refused here with the reason.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    DateTimeField, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    Ident, Interval, SetExpr, Statement, TableFactor, Value, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::dedup_sql;
use crate::error::{Error, Result};
use crate::join::sql::{OtherInput, TemporalSql, Versioned};
use crate::window::WindowKind;

pub(crate) const WINDOW_START: &str = "__window_start";
pub(crate) const WINDOW_END: &str = "__window_end";

/// The SQL after rewriting, the group window it declared, and the PARTITION BY columns of its
/// first-row deduplication as written (quoted or not; [`dedup_sql::resolve_keys`] resolves them).
#[derive(Debug)]
pub(crate) struct Rewritten {
    pub statement: Statement,
    pub window: Option<WindowKind>,
    pub dedup: Option<Vec<Ident>>,
    /// The table joined `FOR SYSTEM_TIME AS OF` the stream's event time, if any.
    pub join: Option<TemporalSql>,
}

/// The job's names that the SQL is checked against.
pub(crate) struct Context<'a> {
    pub(crate) job: &'a str,
    pub(crate) table: &'a str,
    pub(crate) event_time: &'a str,
    /// The job's inputs beside the primary stream, which a join may name.
    pub(crate) others: &'a [OtherInput],
}

impl Context<'_> {
    pub(crate) fn refuse(&self, what: impl Into<String>, why: impl Into<String>) -> Error {
        Error::UnsupportedSql {
            job: self.job.to_string(),
            what: what.into(),
            why: why.into(),
        }
    }
}

#[cfg(test)]
pub(crate) fn rewrite(job: &str, sql: &str, table: &str, event_time: &str) -> Result<Rewritten> {
    rewrite_with_inputs(job, sql, (table, event_time), &[])
}

/// Rewrites the SQL of a job whose primary stream is `(table, event_time)` and whose other
/// inputs are `others`.
pub(crate) fn rewrite_with_inputs(
    job: &str,
    sql: &str,
    (table, event_time): (&str, &str),
    others: &[OtherInput],
) -> Result<Rewritten> {
    let cx = Context {
        job,
        table,
        event_time,
        others,
    };
    let (sql, versions) = crate::join::sql::strip_versions(&cx, sql)?;
    let mut statements =
        Parser::parse_sql(&GenericDialect {}, &sql).map_err(|e| Error::InvalidSql {
            job: job.to_string(),
            source: Box::new(e.into()),
        })?;
    if statements.len() != 1 {
        return Err(cx.refuse(
            format!("{} statements", statements.len()),
            "a job's transform is exactly one SELECT",
        ));
    }
    let mut statement = statements.remove(0);
    let (window, dedup, join) = rewrite_query(&cx, &mut statement, &versions)?;
    replace_window_functions(&cx, &mut statement, window.as_ref())?;
    Ok(Rewritten {
        statement,
        window: window.map(|w| w.kind),
        dedup,
        join,
    })
}

/// The group window found in GROUP BY, with its argument text for matching `_START`/`_END`.
struct GroupWindow {
    kind: WindowKind,
    args: String,
}

/// The group window, the dedup keys of a first-row deduplication, and the temporal join.
type QueryParts = (Option<GroupWindow>, Option<Vec<Ident>>, Option<TemporalSql>);

fn rewrite_query(
    cx: &Context,
    statement: &mut Statement,
    versions: &[Versioned],
) -> Result<QueryParts> {
    let Statement::Query(query) = statement else {
        return Err(cx.refuse(
            first_word(&statement.to_string()),
            "a job's transform is a read-only SELECT",
        ));
    };
    if query.with.is_some() {
        return Err(cx.refuse(
            "WITH",
            "common table expressions are not supported in a job",
        ));
    }
    if query.order_by.is_some() {
        return Err(cx.refuse(
            "ORDER BY",
            "a stream has no end, so its results have no total order; order when you query the view",
        ));
    }
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return Err(cx.refuse(
            "LIMIT",
            "a stream has no end, so a limit would depend on arrival order; limit when you query the view",
        ));
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(cx.refuse(
            "set operations (UNION/INTERSECT/EXCEPT/VALUES)",
            "a job reads one source table with one SELECT",
        ));
    };
    if select.distinct.is_some() {
        return Err(cx.refuse(
            "SELECT DISTINCT",
            "distinct rows need unbounded state on a stream; use GROUP BY or COUNT(DISTINCT ...)",
        ));
    }
    if select.qualify.is_some() || !select.named_window.is_empty() {
        return Err(cx.refuse(
            "QUALIFY/WINDOW",
            "OVER windows are not supported; use group windows (TUMBLE, HOP, SESSION)",
        ));
    }
    let dedup = dedup_sql::strip(cx, select)?;
    let join = check_outer_from(cx, &select.from, versions)?;
    // With a join, a window's time must be the stream's own, named by its table or alias
    // (the table's `valid_from` may share its name).
    let stream_names: Option<Vec<String>> =
        join.as_ref()
            .and_then(|_| match &select.from.first()?.relation {
                TableFactor::Table { name, alias, .. } => Some(
                    name.0
                        .last()
                        .and_then(|p| p.as_ident())
                        .map(|i| i.value.clone())
                        .into_iter()
                        .chain(alias.as_ref().map(|a| a.name.value.clone()))
                        .collect(),
                ),
                _ => None,
            });
    let GroupByExpr::Expressions(group_by, modifiers) = &mut select.group_by else {
        return Err(cx.refuse("GROUP BY ALL", "name the grouping columns"));
    };
    if !modifiers.is_empty() {
        return Err(cx.refuse(
            "GROUP BY modifiers (ROLLUP/CUBE/GROUPING SETS)",
            "each result row must have one grouping key so partial states merge exactly",
        ));
    }
    let mut window = None;
    let mut kept = Vec::with_capacity(group_by.len() + 2);
    for expr in group_by.drain(..) {
        if matches!(
            expr,
            Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_)
        ) {
            return Err(cx.refuse(
                "ROLLUP/CUBE/GROUPING SETS",
                "each result row must have one grouping key so partial states merge exactly",
            ));
        }
        match parse_group_window(cx, &expr, stream_names.as_deref())? {
            Some(found) if window.is_some() => {
                return Err(cx.refuse(
                    format!("a second group window {}", found.kind.sql_name()),
                    "a job groups by at most one window",
                ));
            }
            Some(found) => window = Some(found),
            None => kept.push(expr),
        }
    }
    if window.is_some() {
        kept.push(Expr::Identifier(Ident::new(WINDOW_START)));
        kept.push(Expr::Identifier(Ident::new(WINDOW_END)));
    }
    *group_by = kept;
    Ok((window, dedup, join))
}

/// The statement's own FROM: the primary stream alone, or joined with one table
/// ([`crate::join::sql::temporal_join`]).
fn check_outer_from(
    cx: &Context,
    from: &[datafusion::sql::sqlparser::ast::TableWithJoins],
    versions: &[Versioned],
) -> Result<Option<TemporalSql>> {
    if let [table] = from
        && (!table.joins.is_empty() || !versions.is_empty())
    {
        return crate::join::sql::temporal_join(cx, table, versions);
    }
    check_from(cx, from)?;
    Ok(None)
}

pub(crate) fn check_from(
    cx: &Context,
    from: &[datafusion::sql::sqlparser::ast::TableWithJoins],
) -> Result<()> {
    let expected = || format!("a job reads exactly one source table, `{}`", cx.table);
    let [table] = from else {
        return Err(cx.refuse(format!("FROM with {} tables", from.len()), expected()));
    };
    if !table.joins.is_empty() {
        return Err(cx.refuse(
            "JOIN",
            "joins are not supported yet; a job reads one source table",
        ));
    }
    match &table.relation {
        TableFactor::Table { name, .. } => {
            let last = name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.value.as_str());
            if last.is_some_and(|n| n.eq_ignore_ascii_case(cx.table)) {
                Ok(())
            } else {
                Err(cx.refuse(format!("FROM {name}"), expected()))
            }
        }
        _ => Err(cx.refuse("a subquery or table function in FROM", expected())),
    }
}

pub(crate) fn function_name(f: &Function) -> String {
    f.name.to_string().to_ascii_uppercase()
}

fn unnamed_args(f: &Function) -> Option<Vec<&Expr>> {
    match &f.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect(),
        FunctionArguments::None => Some(Vec::new()),
        FunctionArguments::Subquery(_) => None,
    }
}

fn args_text(args: &[&Expr]) -> String {
    args.iter()
        .map(|e| e.to_string().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A group window in GROUP BY; with `stream_names` (a joining query), a qualified time must
/// name the stream.
fn parse_group_window(
    cx: &Context,
    expr: &Expr,
    stream_names: Option<&[String]>,
) -> Result<Option<GroupWindow>> {
    let Expr::Function(f) = expr else {
        return Ok(None);
    };
    let name = function_name(f);
    let arity = match name.as_str() {
        "TUMBLE" | "SESSION" => 2,
        "HOP" => 3,
        _ => return Ok(None),
    };
    let usage = match name.as_str() {
        "TUMBLE" => "TUMBLE(<event time>, INTERVAL '<n>' <unit>)",
        "SESSION" => "SESSION(<event time>, INTERVAL '<gap>' <unit>)",
        _ => "HOP(<event time>, INTERVAL '<slide>' <unit>, INTERVAL '<size>' <unit>)",
    };
    let args = unnamed_args(f)
        .filter(|a| a.len() == arity)
        .ok_or_else(|| cx.refuse(format!("{name}(...)"), format!("expected {usage}")))?;
    let (time, of_stream) = match args[0] {
        Expr::Identifier(id) => (id.value.clone(), true),
        Expr::CompoundIdentifier(ids) => {
            let qualifier = ids.len().checked_sub(2).and_then(|i| ids.get(i));
            let of_stream = match (stream_names, qualifier) {
                (Some(names), Some(q)) => names.iter().any(|n| n.eq_ignore_ascii_case(&q.value)),
                _ => true,
            };
            let time = ids.last().map(|i| i.value.clone()).unwrap_or_default();
            (time, of_stream)
        }
        other => (other.to_string(), true),
    };
    if !time.eq_ignore_ascii_case(cx.event_time) || !of_stream {
        return Err(cx.refuse(
            format!("{name} over `{time}`"),
            format!(
                "group windows are over the job's event time column `{}`",
                cx.event_time
            ),
        ));
    }
    let mut sizes = Vec::with_capacity(arity - 1);
    for arg in &args[1..] {
        let micros = interval_micros(arg).ok_or_else(|| {
            cx.refuse(
                format!("window interval {arg}"),
                format!(
                    "expected a positive fixed interval such as INTERVAL '1' MINUTE, in {usage}"
                ),
            )
        })?;
        sizes.push(micros);
    }
    let kind = match (name.as_str(), sizes.as_slice()) {
        ("TUMBLE", [size]) => WindowKind::Tumble { size: *size },
        ("SESSION", [gap]) => WindowKind::Session { gap: *gap },
        (_, [slide, size]) => WindowKind::Hop {
            slide: *slide,
            size: *size,
        },
        _ => unreachable!("arity checked above"),
    };
    Ok(Some(GroupWindow {
        kind,
        args: args_text(&args),
    }))
}

/// A fixed-length SQL interval in microseconds: `INTERVAL '5' MINUTE` or `INTERVAL '5 minutes'`.
fn interval_micros(expr: &Expr) -> Option<i64> {
    let Expr::Interval(Interval {
        value,
        leading_field,
        last_field: None,
        ..
    }) = expr
    else {
        return None;
    };
    let text = match value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            _ => return None,
        },
        _ => return None,
    };
    let (amount, unit) = match leading_field {
        Some(field) => (text.trim().to_string(), field_unit_micros(field)?),
        None => {
            let mut parts = text.split_whitespace();
            let amount = parts.next()?.to_string();
            let unit = unit_micros(parts.next()?)?;
            if parts.next().is_some() {
                return None;
            }
            (amount, unit)
        }
    };
    let amount: i64 = amount.parse().ok()?;
    (amount > 0).then(|| amount.checked_mul(unit)).flatten()
}

fn field_unit_micros(field: &DateTimeField) -> Option<i64> {
    unit_micros(&field.to_string())
}

fn unit_micros(unit: &str) -> Option<i64> {
    Some(match unit.to_ascii_lowercase().trim_end_matches('s') {
        "millisecond" => 1_000,
        "second" => 1_000_000,
        "minute" => 60_000_000,
        "hour" => 3_600_000_000,
        "day" => 86_400_000_000,
        _ => return None,
    })
}

/// Replaces `TUMBLE_START(...)` etc. with the window columns, checking they name the group window.
fn replace_window_functions(
    cx: &Context,
    statement: &mut Statement,
    window: Option<&GroupWindow>,
) -> Result<()> {
    let mut failure = None;
    let _ = visit_expressions_mut(statement, |expr: &mut Expr| {
        let Expr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        let name = function_name(f);
        let Some((prefix, column)) = name
            .strip_suffix("_START")
            .map(|p| (p, WINDOW_START))
            .or_else(|| name.strip_suffix("_END").map(|p| (p, WINDOW_END)))
        else {
            return ControlFlow::Continue(());
        };
        if !matches!(prefix, "TUMBLE" | "HOP" | "SESSION") {
            return ControlFlow::Continue(());
        }
        let matches_group = window.is_some_and(|w| {
            w.kind.sql_name() == prefix
                && unnamed_args(f).is_some_and(|args| args_text(&args) == w.args)
        });
        if !matches_group {
            failure = Some(cx.refuse(
                format!(
                    "{name}({})",
                    unnamed_args(f).map(|a| args_text(&a)).unwrap_or_default()
                ),
                match window {
                    Some(w) => format!(
                        "it must repeat the GROUP BY window exactly: {}_{}({})",
                        w.kind.sql_name(),
                        column.trim_start_matches("__window_").to_ascii_uppercase(),
                        w.args
                    ),
                    None => format!("there is no {prefix}(...) group window in GROUP BY"),
                },
            ));
            return ControlFlow::Break(());
        }
        *expr = Expr::Identifier(Ident::new(column));
        ControlFlow::Continue(())
    });
    failure.map_or(Ok(()), Err)
}

fn first_word(sql: &str) -> String {
    sql.split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(sql: &str) -> Result<Rewritten> {
        rewrite("j", sql, "orders", "ts")
    }

    #[test]
    fn tumble_becomes_window_columns() {
        let out = rw(
            "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS ws, COUNT(*) FROM orders \
                      WHERE x = 1 GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
        )
        .unwrap();
        assert_eq!(out.window, Some(WindowKind::Tumble { size: 60_000_000 }));
        let sql = out.statement.to_string();
        assert!(sql.contains("__window_start AS ws"), "{sql}");
        assert!(
            sql.contains("GROUP BY __window_start, __window_end"),
            "{sql}"
        );
    }

    #[test]
    fn hop_and_session_parse_both_interval_forms() {
        let out = rw("SELECT k, COUNT(*) FROM orders GROUP BY k, HOP(ts, INTERVAL '30 seconds', INTERVAL '2' MINUTE)").unwrap();
        assert_eq!(
            out.window,
            Some(WindowKind::Hop {
                slide: 30_000_000,
                size: 120_000_000
            })
        );
        let out = rw("SELECT SESSION_END(ts, INTERVAL '10' SECOND), COUNT(*) FROM orders GROUP BY SESSION(ts, INTERVAL '10' SECOND)").unwrap();
        assert_eq!(out.window, Some(WindowKind::Session { gap: 10_000_000 }));
    }

    #[test]
    fn refusals_say_what_and_why() {
        let cases = [
            ("SELECT k FROM orders ORDER BY k", "ORDER BY"),
            ("SELECT k FROM orders LIMIT 3", "LIMIT"),
            ("SELECT DISTINCT k FROM orders", "SELECT DISTINCT"),
            ("SELECT k FROM other", "FROM other"),
            (
                "SELECT a.k FROM orders a JOIN orders b ON a.k = b.k",
                "JOIN",
            ),
            (
                "SELECT k FROM orders UNION SELECT k FROM orders",
                "set operations",
            ),
            (
                "SELECT COUNT(*) FROM orders GROUP BY TUMBLE(other, INTERVAL '1' MINUTE)",
                "TUMBLE over `other`",
            ),
            (
                "SELECT COUNT(*) FROM orders GROUP BY TUMBLE(ts, INTERVAL '1' MONTH)",
                "window interval",
            ),
            (
                "SELECT TUMBLE_START(ts, INTERVAL '2' MINUTE) FROM orders GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
                "TUMBLE_START",
            ),
            (
                "SELECT HOP_START(ts, INTERVAL '1' MINUTE) FROM orders",
                "no HOP(...) group window",
            ),
            ("DELETE FROM orders", "DELETE"),
        ];
        for (sql, expected) in cases {
            let err = rw(sql).unwrap_err().to_string();
            assert!(err.contains(expected), "{sql}: {err}");
        }
    }
}
