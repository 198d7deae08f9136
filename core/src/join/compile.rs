//! Lowering the DataFusion join of a temporal join into a [`TemporalJoin`].
//!
//! DataFusion plans `… JOIN customers AS c ON o.k = c.k` (with the version clause cut out, see
//! [`super::sql`]) as a `Join` whose ON conditions sit in its filter (no optimizer runs, so
//! they are never turned into equi-join keys). Each conjunct must equate an expression of the
//! stream's columns with one of the table's; those pairs are the join key, lowered on each
//! side's own rows, and the table's side must cover the table's declared `key`, so a stream row
//! meets at most one version at a time.

use std::collections::BTreeSet;

use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator, binary_expr};

use super::sql::TemporalSql;
use super::temporal::{JoinKind, TemporalJoin, TemporalJoinParts};
use crate::error::Result;
use crate::plan::Compilation;

impl Compilation<'_> {
    /// The temporal join `sql` declares, from the `Join` in `plan`; `probe_time` is the
    /// stream's event-time column.
    pub(crate) fn temporal_join(
        &self,
        plan: &LogicalPlan,
        sql: &TemporalSql,
        probe_time: usize,
    ) -> Result<TemporalJoin> {
        let Some(join) = find_join(plan) else {
            return Err(self.refuse(
                format!("JOIN {}", sql.table),
                "the join must be in the FROM clause of the job's SELECT",
            ));
        };
        let kind = match join.join_type {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            other => {
                return Err(self.refuse(
                    format!("{other} JOIN"),
                    "a temporal join is JOIN or LEFT JOIN",
                ));
            }
        };
        if kind != sql.kind {
            return Err(self.refuse(
                format!("{} JOIN", join.join_type),
                "the planned join differs from the one written",
            ));
        }
        let input = self.job.input(&sql.table)?;
        let mut conditions: Vec<Expr> = join
            .on
            .iter()
            .map(|(l, r)| binary_expr(l.clone(), Operator::Eq, r.clone()))
            .collect();
        if let Some(filter) = &join.filter {
            conditions.extend(split_conjunction(filter).into_iter().cloned());
        }
        let (left, right) = (join.left.schema(), join.right.schema());
        let side = |expr: &Expr| -> Option<bool> {
            let columns = expr.column_refs();
            if columns.is_empty() {
                return None;
            }
            if columns.iter().all(|c| left.has_column(c)) {
                Some(true)
            } else if columns.iter().all(|c| right.has_column(c)) {
                Some(false)
            } else {
                None
            }
        };
        let mut probe_keys = Vec::new();
        let mut table_keys = Vec::new();
        let mut covered = BTreeSet::new();
        for condition in &conditions {
            let pair = match condition {
                Expr::BinaryExpr(BinaryExpr {
                    left: a,
                    op: Operator::Eq,
                    right: b,
                }) => match (side(a), side(b)) {
                    (Some(true), Some(false)) => Some((a.as_ref(), b.as_ref())),
                    (Some(false), Some(true)) => Some((b.as_ref(), a.as_ref())),
                    _ => None,
                },
                _ => None,
            };
            let Some((probe, table)) = pair else {
                return Err(self.refuse(
                    format!("ON condition `{condition}`"),
                    "a temporal join's ON clause equates stream expressions with table expressions (… = … AND …); filter rows in WHERE instead",
                ));
            };
            if let Some(column) = bare_column(table) {
                covered.insert(column);
            }
            probe_keys.push(self.physical(probe, left)?);
            table_keys.push(self.physical(table, right)?);
        }
        let missing: Vec<&String> = input.key.iter().filter(|k| !covered.contains(*k)).collect();
        if conditions.is_empty() || !missing.is_empty() {
            let missing: Vec<&str> = missing.iter().map(|k| k.as_str()).collect();
            return Err(self.refuse(
                format!("JOIN {} ON …", input.table),
                format!(
                    "the ON clause must equate each key field of `{}` ({}) with the stream; missing: {}",
                    input.table,
                    input.key.join(", "),
                    missing.join(", ")
                ),
            ));
        }
        let table_schema = input.job.source_schema();
        let table_time = table_schema
            .index_of(&input.job.spec.source.event_time)
            .map_err(|_| {
                self.refuse(
                    format!("JOIN {}", input.table),
                    "its valid_from is not a column",
                )
            })?;
        TemporalJoin::new(TemporalJoinParts {
            job: self.job.name().to_string(),
            table: input.table.clone(),
            probe_schema: self.input_schema.clone(),
            probe_time,
            probe_keys,
            table_schema,
            table_time,
            table_keys,
            kind,
        })
    }
}

/// The join under the SELECT's projection, aggregate and filters.
fn find_join(plan: &LogicalPlan) -> Option<&datafusion::logical_expr::Join> {
    match plan {
        LogicalPlan::Join(join) => Some(join),
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::Aggregate(_) => {
            plan.inputs().into_iter().find_map(find_join)
        }
        _ => None,
    }
}

/// The table column an ON side names, itself or cast (as SQL coerces a key's type).
fn bare_column(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Column(column) => Some(column.name.clone()),
        Expr::Cast(cast) => bare_column(&cast.expr),
        Expr::TryCast(cast) => bare_column(&cast.expr),
        _ => None,
    }
}
