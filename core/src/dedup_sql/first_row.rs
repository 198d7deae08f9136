//! The outer query's side of first-row deduplication: its `rn = 1` test goes with the
//! subquery, and `rn` may appear nowhere else, since the rewritten query has no such column
//! (keeping rows 2..N, top-N, would need retractions on an append-only view).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Ident, Select, Value, ValueWithSpan, visit_expressions,
};

use super::same;
use crate::error::Result;
use crate::flink_sql::Context;

/// The row number's alias, as the outer query may name it.
pub(super) struct RowNumber<'a> {
    pub(super) name: &'a Ident,
    pub(super) derived: Option<&'a Ident>,
}

impl RowNumber<'_> {
    /// `rn` or `d.rn`.
    fn is(&self, expr: &Expr) -> bool {
        match expr {
            Expr::Identifier(id) => same(id, self.name),
            Expr::CompoundIdentifier(ids) => match ids.as_slice() {
                [qualifier, id] => {
                    self.derived.is_some_and(|d| same(qualifier, d)) && same(id, self.name)
                }
                _ => false,
            },
            Expr::Nested(inner) => self.is(inner),
            _ => false,
        }
    }

    /// Any reference that could mean `rn` (conservatively: any name ending in it).
    fn mentioned_by(&self, expr: &Expr) -> bool {
        match expr {
            Expr::Identifier(id) => same(id, self.name),
            Expr::CompoundIdentifier(ids) => ids.last().is_some_and(|id| same(id, self.name)),
            _ => false,
        }
    }
}

/// Removes the top-level conjunct(s) keeping the first row; refuses top-N and a missing one.
pub(super) fn remove_first_row_test(
    cx: &Context,
    selection: Option<Expr>,
    rn: &RowNumber,
) -> Result<Option<Expr>> {
    let mut conjuncts = Vec::new();
    if let Some(expr) = selection {
        split_and(expr, &mut conjuncts);
    }
    let mut found = false;
    let mut kept = Vec::with_capacity(conjuncts.len());
    for conjunct in conjuncts {
        match first_row_test(&conjunct, rn) {
            Some(true) => found = true,
            Some(false) => {
                return Err(cx.refuse(
                    format!("WHERE {conjunct}"),
                    format!(
                        "top-N is not supported; `{} = 1` keeps the first row per key",
                        rn.name
                    ),
                ));
            }
            None => kept.push(conjunct),
        }
    }
    if !found {
        return Err(cx.refuse(
            format!("a ROW_NUMBER() subquery without WHERE {} = 1", rn.name),
            format!(
                "a ROW_NUMBER() subquery is supported only as first-row deduplication: add \
                 WHERE {} = 1",
                rn.name
            ),
        ));
    }
    Ok(kept.into_iter().reduce(|left, right| Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    }))
}

fn split_and(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_and(*inner, out);
        }
        other => out.push(other),
    }
}

/// `rn` compared with an integer: `Some(true)` when that keeps exactly row 1 (`rn = 1`,
/// `1 = rn`, `rn <= 1`, `rn < 2`), `Some(false)` for any other bound; `None` for anything else.
fn first_row_test(expr: &Expr, rn: &RowNumber) -> Option<bool> {
    let Expr::BinaryOp { left, op, right } = expr else {
        return None;
    };
    let (flipped, n) = if rn.is(left) {
        (false, integer(right)?)
    } else if rn.is(right) {
        (true, integer(left)?)
    } else {
        return None;
    };
    // `rn <op> n`, after turning `n <op> rn` around.
    let op = match (op, flipped) {
        (BinaryOperator::Eq, _) => BinaryOperator::Eq,
        (BinaryOperator::NotEq, _) => BinaryOperator::NotEq,
        (BinaryOperator::Lt, false) | (BinaryOperator::Gt, true) => BinaryOperator::Lt,
        (BinaryOperator::LtEq, false) | (BinaryOperator::GtEq, true) => BinaryOperator::LtEq,
        (BinaryOperator::Gt, false) | (BinaryOperator::Lt, true) => BinaryOperator::Gt,
        (BinaryOperator::GtEq, false) | (BinaryOperator::LtEq, true) => BinaryOperator::GtEq,
        _ => return None,
    };
    Some(matches!(
        (op, n),
        (BinaryOperator::Eq, 1) | (BinaryOperator::LtEq, 1) | (BinaryOperator::Lt, 2)
    ))
}

fn integer(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::Value(ValueWithSpan {
            value: Value::Number(n, _),
            ..
        }) => n.parse().ok(),
        Expr::Nested(inner) => integer(inner),
        _ => None,
    }
}

/// `rn` is gone once the subquery is: the outer query may use it only in the removed test.
pub(super) fn check_unused(cx: &Context, select: &Select, rn: &RowNumber) -> Result<()> {
    let used = visit_expressions(select, |expr: &Expr| {
        if rn.mentioned_by(expr) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break();
    if used {
        let name = rn.name;
        return Err(cx.refuse(
            format!("`{name}` outside WHERE {name} = 1"),
            format!(
                "{name} is not a column of the result: only `{name} = 1` may use it (first-row \
                 deduplication; top-N is not supported)"
            ),
        ));
    }
    Ok(())
}
