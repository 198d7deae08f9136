//! Flink's first-row deduplication in SQL → the bare source table and its dedup keys.
//!
//! Flink spells "keep the first row per key" as a numbered subquery filtered to its first row:
//! `SELECT … FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY <event time>) AS rn
//! FROM src) WHERE rn = 1`. DataFusion would plan that as a window over the whole input, which
//! a stream never completes (and the plan compiler refuses). So this exact shape is recognised
//! here, the subquery is replaced by the source table and its PARTITION BY columns are recorded;
//! the stateful stage that drops the duplicates is [`crate::dedup`], and the rule under which
//! the batch and speed layers drop the same rows is `dedup_within` (docs/design/joins.md §3.4).
//! Variants an append-only view cannot keep exact (the last row, top-N, filtering before the
//! numbering) are refused with the supported alternative.

use std::fmt::Display;
use std::ops::ControlFlow;

use arrow::datatypes::Schema;
use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArguments, GroupByExpr, Ident, ObjectNamePart, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, TableFactor, TableWithJoins,
    WildcardAdditionalOptions, WindowSpec, WindowType, visit_expressions,
};

use crate::error::{Error, Result};
use crate::flink_sql::{Context, check_from, function_name};
use first_row::{RowNumber, check_unused, remove_first_row_test};

/// Rewrites `FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY …) AS rn FROM src) [AS d]
/// WHERE rn = 1 [AND …]` to `FROM src [AS d] [WHERE …]` and returns the PARTITION BY columns
/// as written (resolve them with [`resolve_keys`]). `Ok(None)`: `select` reads no numbered
/// subquery, and is left as it was (any other subquery is refused by `check_from`).
pub(crate) fn strip(cx: &Context, select: &mut Select) -> Result<Option<Vec<Ident>>> {
    let Some(found) = recognise(cx, select)? else {
        return Ok(None);
    };
    select.from = vec![TableWithJoins {
        relation: found.relation,
        joins: Vec::new(),
    }];
    let rn = RowNumber {
        name: &found.row_number,
        derived: found.derived.as_ref(),
    };
    select.selection = remove_first_row_test(cx, select.selection.take(), &rn)?;
    check_unused(cx, select, &rn)?;
    Ok(Some(found.keys))
}

/// The source fields `keys` name, resolved as DataFusion resolves identifiers (an unquoted
/// name lowercased, a quoted one exactly), each once, in PARTITION BY order.
pub(crate) fn resolve_keys(job: &str, keys: &[Ident], schema: &Schema) -> Result<Vec<String>> {
    let mut resolved: Vec<String> = Vec::with_capacity(keys.len());
    for key in keys {
        let name = match key.quote_style {
            Some(_) => key.value.clone(),
            None => key.value.to_ascii_lowercase(),
        };
        if schema.index_of(&name).is_err() {
            let quoted = key.quote_style.is_some();
            let hint = schema
                .fields()
                .iter()
                .find(|f| f.name().eq_ignore_ascii_case(&name))
                .map(|f| {
                    if quoted {
                        format!(
                            " (a quoted name matches exactly: the column is `{}`)",
                            f.name()
                        )
                    } else {
                        format!(" (unquoted names are lowercased: write \"{}\")", f.name())
                    }
                })
                .unwrap_or_default();
            return Err(Error::UnsupportedSql {
                job: job.to_string(),
                what: format!("PARTITION BY `{}`", key.value),
                why: format!("not a column of the source{hint}"),
            });
        }
        if !resolved.contains(&name) {
            resolved.push(name);
        }
    }
    Ok(resolved)
}

/// A recognised deduplication subquery.
struct Found {
    /// The source table, under the subquery's alias.
    relation: TableFactor,
    /// The alias of the row number (`rn`).
    row_number: Ident,
    /// The subquery's alias, which may qualify `rn` outside.
    derived: Option<Ident>,
    keys: Vec<Ident>,
}

fn recognise(cx: &Context, select: &Select) -> Result<Option<Found>> {
    let [
        TableWithJoins {
            relation:
                TableFactor::Derived {
                    lateral,
                    subquery,
                    alias,
                    sample,
                },
            joins,
        },
    ] = select.from.as_slice()
    else {
        return Ok(None);
    };
    let SetExpr::Select(inner) = subquery.body.as_ref() else {
        return Ok(None);
    };
    if !joins.is_empty() || !numbers_rows(cx, inner)? {
        return Ok(None);
    }
    if *lateral || sample.is_some() {
        return Err(cx.refuse(
            "LATERAL or TABLESAMPLE on the ROW_NUMBER() subquery",
            format!(
                "deduplication reads every row of the source table: {}",
                template(cx)
            ),
        ));
    }
    if let Some(alias) = alias
        && (!alias.columns.is_empty() || alias.at.is_some())
    {
        return Err(cx.refuse(
            format!("column aliases `{alias}` on the ROW_NUMBER() subquery"),
            "deduplication keeps the source's column names; rename columns in the outer SELECT",
        ));
    }
    check_clauses(cx, subquery, inner)?;
    let (table, source) = source_table(cx, inner)?;
    let (row_number, function) = row_number_item(cx, inner, source)?;
    let spec = window_spec(cx, function)?;
    let keys = partition_keys(cx, spec, source)?;
    check_order(cx, spec, source)?;
    let mut relation = table.clone();
    if let TableFactor::Table {
        alias: table_alias, ..
    } = &mut relation
    {
        // The outer query names the rows by the subquery's alias, never by the table's.
        table_alias.clone_from(alias);
    }
    Ok(Some(Found {
        relation,
        row_number: row_number.clone(),
        derived: alias.as_ref().map(|a| a.name.clone()),
        keys,
    }))
}

/// Whether the subquery's select list numbers rows, i.e. is meant as deduplication. Other
/// window functions are refused here: nothing downstream could plan them on a stream.
fn numbers_rows(cx: &Context, inner: &Select) -> Result<bool> {
    let mut windowed = Vec::new();
    let _ = visit_expressions(&inner.projection, |expr: &Expr| {
        if let Expr::Function(f) = expr
            && f.over.is_some()
        {
            windowed.push(function_name(f));
        }
        ControlFlow::<()>::Continue(())
    });
    match windowed.iter().find(|name| name.as_str() != "ROW_NUMBER") {
        Some(other) => Err(cx.refuse(
            format!("{other}(...) OVER (...) in a subquery"),
            format!(
                "the only window function supported is ROW_NUMBER(), as first-row deduplication: {}, then WHERE rn = 1",
                template(cx)
            ),
        )),
        None => Ok(!windowed.is_empty()),
    }
}

/// The subquery Flink documents, for messages.
fn template(cx: &Context) -> String {
    format!(
        "FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY <key> ORDER BY {}) AS rn FROM {})",
        cx.event_time, cx.table
    )
}

/// A clause inside the subquery: it would apply before the numbering, so it changes which row
/// is first and cannot be moved past the dedup stage.
fn inside(cx: &Context, clause: &str, instead: &str) -> Error {
    cx.refuse(
        format!("{clause} inside the ROW_NUMBER() subquery"),
        format!("deduplication runs on every source row, before the outer query; {instead}"),
    )
}

fn check_clauses(cx: &Context, query: &Query, inner: &Select) -> Result<()> {
    let grouped = !matches!(
        &inner.group_by,
        GroupByExpr::Expressions(exprs, modifiers) if exprs.is_empty() && modifiers.is_empty()
    );
    let dialect_specific = inner.top.is_some()
        || inner.into.is_some()
        || inner.exclude.is_some()
        || inner.select_modifiers.is_some()
        || inner.value_table_mode.is_some()
        || !inner.optimizer_hints.is_empty()
        || !inner.lateral_views.is_empty()
        || !inner.connect_by.is_empty()
        || !inner.cluster_by.is_empty()
        || !inner.distribute_by.is_empty()
        || !inner.sort_by.is_empty()
        || !query.locks.is_empty()
        || query.for_clause.is_some()
        || query.settings.is_some()
        || query.format_clause.is_some()
        || !query.pipe_operators.is_empty();
    let clauses = [
        (
            query.with.is_some(),
            "WITH",
            "select from the source table directly",
        ),
        (
            inner.selection.is_some() || inner.prewhere.is_some(),
            "WHERE",
            "move the filter to the outer WHERE (which filters after deduplication)",
        ),
        (
            grouped,
            "GROUP BY",
            "aggregate in the outer query, over the deduplicated rows",
        ),
        (
            inner.having.is_some(),
            "HAVING",
            "aggregate and filter in the outer query",
        ),
        (
            inner.distinct.is_some(),
            "DISTINCT",
            "remove it: PARTITION BY names what makes two rows duplicates",
        ),
        (
            query.order_by.is_some(),
            "ORDER BY",
            "remove it: the ORDER BY inside ROW_NUMBER() OVER (...) picks the first row",
        ),
        (
            query.limit_clause.is_some() || query.fetch.is_some(),
            "LIMIT",
            "remove it: a stream has no end, so a limit would depend on arrival order",
        ),
        (
            inner.qualify.is_some() || !inner.named_window.is_empty(),
            "QUALIFY/WINDOW",
            "write the window inline and keep the first row with the outer WHERE rn = 1",
        ),
        (
            dialect_specific,
            "a dialect-specific clause",
            "the subquery selects *, ROW_NUMBER() OVER (...) AS rn FROM the source table, nothing more",
        ),
    ];
    match clauses.into_iter().find(|(present, ..)| *present) {
        Some((_, clause, instead)) => Err(inside(cx, clause, instead)),
        None => Ok(()),
    }
}

/// The source table the subquery reads, and the name that qualifies its columns there.
fn source_table<'s>(cx: &Context, inner: &'s Select) -> Result<(&'s TableFactor, &'s Ident)> {
    if let [from] = inner.from.as_slice()
        && !from.joins.is_empty()
    {
        return Err(inside(
            cx,
            "JOIN",
            "joins are not supported yet; deduplicate the source table alone",
        ));
    }
    check_from(cx, &inner.from)?;
    let unexpected = || {
        cx.refuse(
            "a subquery or table function in FROM",
            format!("a job reads exactly one source table, `{}`", cx.table),
        )
    };
    let [from] = inner.from.as_slice() else {
        return Err(unexpected());
    };
    let TableFactor::Table { name, alias, .. } = &from.relation else {
        return Err(unexpected());
    };
    if let Some(alias) = alias
        && !alias.columns.is_empty()
    {
        return Err(cx.refuse(
            format!("column aliases `{alias}` on the source table"),
            "deduplication keeps the source's column names; rename columns in the outer SELECT",
        ));
    }
    let visible = match alias {
        Some(alias) => Some(&alias.name),
        None => name.0.last().and_then(ObjectNamePart::as_ident),
    };
    visible
        .map(|visible| (&from.relation, visible))
        .ok_or_else(unexpected)
}

/// The aliased ROW_NUMBER() call beside the `*` of the subquery's select list.
fn row_number_item<'s>(
    cx: &Context,
    inner: &'s Select,
    source: &Ident,
) -> Result<(&'s Ident, &'s Function)> {
    let shape = || {
        cx.refuse(
            format!(
                "SELECT {} in the ROW_NUMBER() subquery",
                comma_separated(inner.projection.as_slice())
            ),
            format!(
                "deduplication keeps whole source rows: write {} and compute columns in the outer SELECT",
                template(cx)
            ),
        )
    };
    let [first, second] = inner.projection.as_slice() else {
        return Err(shape());
    };
    let numbered = match (is_star(first, source), is_star(second, source)) {
        (true, false) => second,
        (false, true) => first,
        _ => return Err(shape()),
    };
    match numbered {
        SelectItem::ExprWithAlias {
            expr: Expr::Function(f),
            alias,
        } if f.over.is_some() => Ok((alias, f)),
        _ => Err(shape()),
    }
}

fn is_star(item: &SelectItem, source: &Ident) -> bool {
    match item {
        SelectItem::Wildcard(options) => plain(options),
        SelectItem::QualifiedWildcard(
            SelectItemQualifiedWildcardKind::ObjectName(name),
            options,
        ) => {
            plain(options)
                && matches!(
                    name.0.as_slice(),
                    [part] if part.as_ident().is_some_and(|q| same(q, source))
                )
        }
        _ => false,
    }
}

/// A `*` without EXCLUDE/EXCEPT/REPLACE/RENAME/ILIKE/AS: every source column as it is.
fn plain(options: &WildcardAdditionalOptions) -> bool {
    options.opt_ilike.is_none()
        && options.opt_exclude.is_none()
        && options.opt_except.is_none()
        && options.opt_replace.is_none()
        && options.opt_rename.is_none()
        && options.opt_alias.is_none()
}

fn window_spec<'f>(cx: &Context, f: &'f Function) -> Result<&'f WindowSpec> {
    let inline = format!(
        "write ROW_NUMBER() OVER (PARTITION BY <key> ORDER BY {})",
        cx.event_time
    );
    let no_arguments = match &f.args {
        FunctionArguments::None => true,
        FunctionArguments::List(list) => {
            list.args.is_empty() && list.clauses.is_empty() && list.duplicate_treatment.is_none()
        }
        FunctionArguments::Subquery(_) => false,
    };
    if !no_arguments
        || !matches!(f.parameters, FunctionArguments::None)
        || f.filter.is_some()
        || f.null_treatment.is_some()
        || !f.within_group.is_empty()
        || f.uses_odbc_syntax
    {
        return Err(cx.refuse(
            f.to_string(),
            format!("ROW_NUMBER() takes no arguments, FILTER or WITHIN GROUP; {inline}"),
        ));
    }
    match &f.over {
        Some(WindowType::WindowSpec(spec)) if spec.window_name.is_none() => {
            if spec.window_frame.is_some() {
                return Err(cx.refuse(
                    format!("a window frame in {f}"),
                    format!("ROW_NUMBER() numbers the whole partition; {inline}"),
                ));
            }
            Ok(spec)
        }
        _ => Err(cx.refuse(
            f.to_string(),
            format!("named windows are not supported; {inline}"),
        )),
    }
}

fn partition_keys(cx: &Context, spec: &WindowSpec, source: &Ident) -> Result<Vec<Ident>> {
    if spec.partition_by.is_empty() {
        return Err(cx.refuse(
            "ROW_NUMBER() without PARTITION BY",
            "deduplication keeps the first row per key: name the key whose duplicates to drop in \
             PARTITION BY, e.g. PARTITION BY order_id",
        ));
    }
    spec.partition_by
        .iter()
        .map(|expr| {
            column(expr, source).cloned().ok_or_else(|| {
                cx.refuse(
                    format!("PARTITION BY {expr}"),
                    format!(
                        "deduplication keys are columns of `{}`: PARTITION BY plain column names",
                        cx.table
                    ),
                )
            })
        })
        .collect()
}

/// The column a plain (or source-qualified) column reference names.
fn column<'e>(expr: &'e Expr, source: &Ident) -> Option<&'e Ident> {
    match expr {
        Expr::Identifier(id) => Some(id),
        Expr::CompoundIdentifier(ids) => match ids.as_slice() {
            [qualifier, id] if same(qualifier, source) => Some(id),
            _ => None,
        },
        Expr::Nested(inner) => column(inner, source),
        _ => None,
    }
}

/// ORDER BY the event time ascending: the (event time, row id) order is the one both layers
/// can reproduce, so it is the only one that picks the same first row in each.
fn check_order(cx: &Context, spec: &WindowSpec, source: &Ident) -> Result<()> {
    let event_time = cx.event_time;
    let why = || {
        format!(
            "ordering by the event time is what lets the batch and speed layers pick the same \
             row; write ORDER BY {event_time}"
        )
    };
    let [order] = spec.order_by.as_slice() else {
        let what = if spec.order_by.is_empty() {
            "ROW_NUMBER() without ORDER BY".to_string()
        } else {
            format!(
                "ROW_NUMBER() ... ORDER BY {}",
                comma_separated(spec.order_by.as_slice())
            )
        };
        return Err(cx.refuse(what, why()));
    };
    let by_event_time =
        column(&order.expr, source).is_some_and(|c| c.value.eq_ignore_ascii_case(event_time));
    if !by_event_time || order.with_fill.is_some() {
        return Err(cx.refuse(format!("ROW_NUMBER() ... ORDER BY {order}"), why()));
    }
    if order.options.asc == Some(false) {
        return Err(cx.refuse(
            format!("ROW_NUMBER() ... ORDER BY {event_time} DESC (last-row deduplication)"),
            format!(
                "keeping the last row means retracting rows already emitted, which an \
                 append-only view cannot do; ORDER BY {event_time} ASC keeps the first row"
            ),
        ));
    }
    if order.options.nulls_first == Some(true) {
        return Err(cx.refuse(
            format!("ROW_NUMBER() ... ORDER BY {order}"),
            format!(
                "the first row is the one with the earliest event time; write ORDER BY {event_time}"
            ),
        ));
    }
    Ok(())
}

/// Case-insensitive, like the table-name check in `check_from`.
fn same(a: &Ident, b: &Ident) -> bool {
    a.value.eq_ignore_ascii_case(&b.value)
}

fn comma_separated<T: Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

mod first_row;
#[cfg(test)]
mod tests;
