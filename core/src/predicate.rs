//! SQL predicates over one row at a time: `[[outputs]]`' `where` over result rows and
//! `[[checks]]` over source rows.
//!
//! A predicate is one SQL boolean expression in the dialect of the job's own SQL: it is parsed,
//! planned as the WHERE of `SELECT * FROM <table>`, type-coerced and lowered to a DataFusion
//! physical expression by the plan compiler's own steps ([`crate::plan`]), so it means exactly
//! what the same WHERE would, UDFs included, and it is compiled when the job starts.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::prep_null_mask_filter;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::TreeNode;
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, SetExpr, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::error::{Error, Result};
use crate::plan::Compilation;
use crate::spec::Job;
use crate::udf;

/// Compiles predicates over the rows of one schema, named `table` in DataFusion's messages
/// (`Valid fields are results.region, …`).
pub(crate) struct PredicateCompiler<'a> {
    compilation: Compilation<'a>,
    table: &'static str,
    schema: SchemaRef,
}

impl<'a> PredicateCompiler<'a> {
    pub(crate) fn new(
        job: &'a Job,
        table: &'static str,
        schema: &SchemaRef,
    ) -> Result<PredicateCompiler<'a>> {
        let compilation = Compilation {
            job,
            input_schema: schema.clone(),
            ctx: SessionContext::new(),
        };
        udf::register(&compilation.ctx);
        compilation
            .ctx
            .register_table(table, Arc::new(EmptyTable::new(schema.clone())))
            .map_err(|e| Error::InvalidSql {
                job: job.name().to_string(),
                source: Box::new(e),
            })?;
        Ok(PredicateCompiler {
            compilation,
            table,
            schema: schema.clone(),
        })
    }

    /// `text` as a physical predicate, or why not. DataFusion resolves its columns, coerces
    /// its types and refuses what a WHERE refuses (aggregates, window functions); subqueries
    /// are refused, since a predicate reads one row.
    pub(crate) fn compile(&self, text: &str) -> std::result::Result<Arc<dyn PhysicalExpr>, String> {
        self.compile_expr(parse(text)?)
    }

    /// `(text) IS FALSE`: TRUE exactly for the rows `text` is FALSE for (NULL is not FALSE).
    /// Wrapped as a syntax tree, so the text cannot change what is negated.
    pub(crate) fn compile_is_false(
        &self,
        text: &str,
    ) -> std::result::Result<Arc<dyn PhysicalExpr>, String> {
        let expr = parse(text)?;
        self.compile_expr(SqlExpr::IsFalse(Box::new(SqlExpr::Nested(Box::new(expr)))))
    }

    fn compile_expr(&self, expr: SqlExpr) -> std::result::Result<Arc<dyn PhysicalExpr>, String> {
        let statement = select_where(self.table, expr)?;
        let state = self.compilation.ctx.state();
        let plan = futures::executor::block_on(
            state.statement_to_plan(DFStatement::Statement(Box::new(statement))),
        )
        .map_err(|e| reason(&e))?;
        let plan = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map_err(|e| reason(&e))?;
        let filter = match &plan {
            LogicalPlan::Projection(projection) => match projection.input.as_ref() {
                LogicalPlan::Filter(filter)
                    if matches!(filter.input.as_ref(), LogicalPlan::TableScan(_)) =>
                {
                    Some(filter)
                }
                _ => None,
            },
            _ => None,
        };
        let Some(filter) = filter else {
            return Err("not a predicate over one row".to_string());
        };
        let subquery = filter
            .predicate
            .exists(|e| {
                Ok(matches!(
                    e,
                    Expr::ScalarSubquery(_)
                        | Expr::InSubquery(_)
                        | Expr::Exists(_)
                        | Expr::SetComparison(_)
                ))
            })
            .map_err(|e| reason(&e))?;
        if subquery {
            return Err("subqueries are not supported: a predicate reads one row".to_string());
        }
        let physical = self
            .compilation
            .physical(&filter.predicate, filter.input.schema())
            .map_err(|e| match e {
                Error::InvalidSql { source, .. } => reason(&source),
                other => other.to_string(),
            })?;
        match physical.data_type(&self.schema) {
            Ok(DataType::Boolean) => Ok(physical),
            Ok(other) => Err(format!("it is of type {other}, not boolean")),
            Err(e) => Err(reason(&e)),
        }
    }
}

/// `text` as one SQL expression (nothing after it).
fn parse(text: &str) -> std::result::Result<SqlExpr, String> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| e.to_string())?;
    let expr = parser.parse_expr().map_err(|e| e.to_string())?;
    parser
        .expect_token(&Token::EOF)
        .map_err(|e| format!("{e} (a predicate is one expression)"))?;
    Ok(expr)
}

/// `predicate` on `batch`, NULL turned into no match.
pub(crate) fn evaluate(
    predicate: &dyn PhysicalExpr,
    batch: &RecordBatch,
) -> datafusion::error::Result<BooleanArray> {
    let value = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = value.as_boolean_opt().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "a predicate returned {} instead of booleans",
            value.data_type()
        ))
    })?;
    Ok(if mask.nulls().is_some() {
        prep_null_mask_filter(mask)
    } else {
        mask.clone()
    })
}

/// `predicate` on every row of `batch`, the rows it fails on (a CAST of bad text, a division
/// by zero) isolated by halving down to single rows: the matches, with the failing rows as
/// `false`, and the failing rows' indices. Costs one evaluation when nothing fails.
pub(crate) fn evaluate_isolating(
    predicate: &dyn PhysicalExpr,
    batch: &RecordBatch,
) -> (BooleanArray, Vec<usize>) {
    match evaluate(predicate, batch) {
        Ok(mask) => (mask, Vec::new()),
        Err(_) => {
            let mut mask = Vec::with_capacity(batch.num_rows());
            let mut failed = Vec::new();
            bisect(
                predicate,
                batch,
                (0, batch.num_rows()),
                &mut mask,
                &mut failed,
            );
            (BooleanArray::from(mask), failed)
        }
    }
}

fn bisect(
    predicate: &dyn PhysicalExpr,
    batch: &RecordBatch,
    (offset, len): (usize, usize),
    mask: &mut Vec<bool>,
    failed: &mut Vec<usize>,
) {
    if len == 0 {
        return;
    }
    match evaluate(predicate, &batch.slice(offset, len)) {
        Ok(part) => mask.extend(part.values().iter()),
        Err(_) if len == 1 => {
            mask.push(false);
            failed.push(offset);
        }
        Err(_) => {
            let half = len / 2;
            bisect(predicate, batch, (offset, half), mask, failed);
            bisect(predicate, batch, (offset + half, len - half), mask, failed);
        }
    }
}

/// `SELECT * FROM <table> WHERE <expr>`, built as a syntax tree so that nothing in the
/// predicate's text can change the statement around it.
fn select_where(table: &str, expr: SqlExpr) -> std::result::Result<Statement, String> {
    let internal = |what: &str| format!("internal: the predicate's SELECT {what}");
    let mut statements = Parser::parse_sql(&GenericDialect {}, &format!("SELECT * FROM {table}"))
        .map_err(|e| internal(&e.to_string()))?;
    let mut statement = statements.pop().ok_or_else(|| internal("is empty"))?;
    let Statement::Query(query) = &mut statement else {
        return Err(internal("is no query"));
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(internal("is no SELECT"));
    };
    select.selection = Some(expr);
    Ok(statement)
}

/// A DataFusion error on one line, without the backtrace.
pub(crate) fn reason(error: &DataFusionError) -> String {
    error.strip_backtrace().replace('\n', " ")
}
