//! Branching: a job's `[[outputs]]` compiled into an [`OutputRouter`], which splits result rows
//! among the outputs by their SQL predicates.
//!
//! A predicate is one SQL boolean expression over the job's result columns (the plan's output
//! schema), in the dialect of the job's own SQL: it is parsed, planned, type-coerced and lowered
//! to a DataFusion physical expression by the plan compiler's own steps ([`crate::plan`]), so
//! `where = "amount >= 100"` means exactly what `WHERE amount >= 100` would, UDFs included.
//! Compiling it with the [`crate::Pipeline`] makes a bad predicate fail the job at start, not
//! at its first row.
//!
//! A row goes to every output whose predicate is TRUE for it; NULL is no match, as in a WHERE
//! clause. The `else = true` output takes the rows no `where` output matched. Routing only
//! selects rows: `<job>.results` keeps every row whatever the outputs.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::kernels::boolean::{not, or};
use arrow::compute::{filter_record_batch, prep_null_mask_filter};
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

use crate::error::{Error, Result, arrow_err};
use crate::plan::Compilation;
use crate::spec::Job;
use crate::topics::Topics;
use crate::udf;

/// The table predicates are planned against; it only shows in DataFusion's messages
/// (`Valid fields are results.region, …`).
const OUTPUT_TABLE: &str = "results";

/// The compiled `[[outputs]]` of a job, in the job file's order.
#[derive(Debug)]
pub struct OutputRouter {
    job: String,
    /// The result rows' schema the predicates were compiled against.
    schema: SchemaRef,
    outputs: Vec<CompiledOutput>,
}

#[derive(Debug)]
struct CompiledOutput {
    name: String,
    /// `None` for the `else = true` output.
    predicate: Option<Arc<dyn PhysicalExpr>>,
}

impl OutputRouter {
    /// Compiles `job`'s outputs against the schema of its result rows (`None` when the job has
    /// no `[[outputs]]`). A predicate that does not parse, names a column the results lack, or
    /// is not boolean is an [`Error::InvalidField`] naming `outputs[i].where` and why; so is an
    /// output topic that is one of the job's own topics or another output's.
    pub fn compile(job: &Job, output_schema: &SchemaRef) -> Result<Option<OutputRouter>> {
        if job.spec.outputs.is_empty() {
            return Ok(None);
        }
        check_topics(job)?;
        let compilation = Compilation {
            job,
            input_schema: output_schema.clone(),
            ctx: SessionContext::new(),
        };
        udf::register(&compilation.ctx);
        compilation
            .ctx
            .register_table(
                OUTPUT_TABLE,
                Arc::new(EmptyTable::new(output_schema.clone())),
            )
            .map_err(|e| Error::InvalidSql {
                job: job.name().to_string(),
                source: Box::new(e),
            })?;
        let outputs = job
            .spec
            .outputs
            .iter()
            .enumerate()
            .map(|(i, output)| {
                let predicate = output
                    .predicate
                    .as_deref()
                    .map(|text| {
                        compile_predicate(&compilation, text, output_schema)
                            .map_err(|why| invalid_predicate(job, i, text, output_schema, &why))
                    })
                    .transpose()?;
                Ok(CompiledOutput {
                    name: output.name.clone(),
                    predicate,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(OutputRouter {
            job: job.name().to_string(),
            schema: output_schema.clone(),
            outputs,
        }))
    }

    /// The outputs' names, in the job file's order (an output's index is its position here).
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.outputs.iter().map(|o| o.name.as_str())
    }

    /// For each output, in the job file's order, the rows of `batch` it takes: those its
    /// predicate is TRUE for, or for the `else` output those no predicate was TRUE for. A row
    /// may go to several outputs; outputs that take no row are left out.
    ///
    /// A predicate that fails on a row (a CAST of bad text, a division by zero) does not match
    /// it: the failing rows are found by halving the batch, as [`crate::Pipeline`] isolates
    /// the rows its plan fails on, and logged. The row is already one of `<job>.results` and
    /// there is no source record to dead-letter, so failing the micro-batch instead would stop
    /// the job on every retry.
    pub fn route(&self, batch: &RecordBatch) -> Result<Vec<(usize, RecordBatch)>> {
        self.check_schema(batch)?;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let mut masks: Vec<Option<BooleanArray>> = Vec::with_capacity(self.outputs.len());
        let mut matched: Option<BooleanArray> = None;
        for output in &self.outputs {
            let Some(predicate) = &output.predicate else {
                masks.push(None);
                continue;
            };
            let mask = self.matches(output, predicate.as_ref(), batch);
            matched = Some(match matched.take() {
                Some(any) => or(&any, &mask).map_err(arrow_err("combining output predicates"))?,
                None => mask.clone(),
            });
            masks.push(Some(mask));
        }
        let mut routed = Vec::new();
        for (index, mask) in masks.into_iter().enumerate() {
            let mask = match (mask, &matched) {
                (Some(mask), _) => mask,
                (None, Some(any)) => not(any).map_err(arrow_err("selecting the else output"))?,
                (None, None) => BooleanArray::from(vec![true; rows]),
            };
            let selected = mask.true_count();
            if selected == 0 {
                continue;
            }
            let part = if selected == rows {
                batch.clone()
            } else {
                filter_record_batch(batch, &mask)
                    .map_err(arrow_err("selecting an output's rows"))?
            };
            routed.push((index, part));
        }
        Ok(routed)
    }

    /// The rows `predicate` is TRUE for, failing rows isolated (see [`OutputRouter::route`]).
    fn matches(
        &self,
        output: &CompiledOutput,
        predicate: &dyn PhysicalExpr,
        batch: &RecordBatch,
    ) -> BooleanArray {
        match evaluate(predicate, batch) {
            Ok(mask) => mask,
            Err(error) => {
                let mut mask = Vec::with_capacity(batch.num_rows());
                let mut failed = 0;
                bisect(
                    predicate,
                    batch,
                    (0, batch.num_rows()),
                    &mut mask,
                    &mut failed,
                );
                tracing::warn!(
                    job = %self.job,
                    output = %output.name,
                    rows = failed,
                    error = %error.strip_backtrace(),
                    "an output's predicate failed on some result rows; they do not match it"
                );
                BooleanArray::from(mask)
            }
        }
    }

    fn check_schema(&self, batch: &RecordBatch) -> Result<()> {
        let expected = self
            .schema
            .fields()
            .iter()
            .map(|f| (f.name(), f.data_type()));
        let actual = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| (f.name(), f.data_type()));
        if expected.eq(actual) {
            return Ok(());
        }
        Err(Error::Execution {
            job: self.job.clone(),
            during: "routing result rows to outputs",
            source: Box::new(DataFusionError::Plan(format!(
                "rows of schema {:?} are not the results' schema {:?}",
                batch.schema(),
                self.schema
            ))),
        })
    }
}

/// `predicate` on `batch`, NULL turned into no match.
fn evaluate(
    predicate: &dyn PhysicalExpr,
    batch: &RecordBatch,
) -> datafusion::error::Result<BooleanArray> {
    let value = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = value.as_boolean_opt().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "an output predicate returned {} instead of booleans",
            value.data_type()
        ))
    })?;
    Ok(if mask.nulls().is_some() {
        prep_null_mask_filter(mask)
    } else {
        mask.clone()
    })
}

/// Appends the matches of rows `offset..offset + len` to `mask`, halving where `predicate`
/// fails down to single rows, which match nothing.
fn bisect(
    predicate: &dyn PhysicalExpr,
    batch: &RecordBatch,
    (offset, len): (usize, usize),
    mask: &mut Vec<bool>,
    failed: &mut usize,
) {
    if len == 0 {
        return;
    }
    match evaluate(predicate, &batch.slice(offset, len)) {
        Ok(part) => mask.extend(part.values().iter()),
        Err(_) if len == 1 => {
            mask.push(false);
            *failed += 1;
        }
        Err(_) => {
            let half = len / 2;
            bisect(predicate, batch, (offset, half), mask, failed);
            bisect(predicate, batch, (offset + half, len - half), mask, failed);
        }
    }
}

/// `text` as a physical predicate over `schema`, or why not. It is planned as the WHERE of a
/// `SELECT * FROM results`, so DataFusion resolves its columns, coerces its types and refuses
/// what a WHERE refuses (aggregates, window functions), exactly as for the job's SQL.
fn compile_predicate(
    compilation: &Compilation<'_>,
    text: &str,
    schema: &SchemaRef,
) -> std::result::Result<Arc<dyn PhysicalExpr>, String> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| e.to_string())?;
    let expr = parser.parse_expr().map_err(|e| e.to_string())?;
    parser
        .expect_token(&Token::EOF)
        .map_err(|e| format!("{e} (a predicate is one expression)"))?;
    let statement = select_where(expr)?;
    let state = compilation.ctx.state();
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
        return Err("not a predicate over one result row".to_string());
    };
    // Each row is routed on its own: a subquery would read other rows (or other tables).
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
        return Err("subqueries are not supported: a predicate reads one result row".to_string());
    }
    let physical = compilation
        .physical(&filter.predicate, filter.input.schema())
        .map_err(|e| match e {
            Error::InvalidSql { source, .. } => reason(&source),
            other => other.to_string(),
        })?;
    match physical.data_type(schema) {
        Ok(DataType::Boolean) => Ok(physical),
        Ok(other) => Err(format!("it is of type {other}, not boolean")),
        Err(e) => Err(reason(&e)),
    }
}

/// `SELECT * FROM results WHERE <expr>`, built as a syntax tree so that nothing in the
/// predicate's text can change the statement around it.
fn select_where(expr: SqlExpr) -> std::result::Result<Statement, String> {
    let internal = |what: &str| format!("internal: the predicate's SELECT {what}");
    let mut statements =
        Parser::parse_sql(&GenericDialect {}, &format!("SELECT * FROM {OUTPUT_TABLE}"))
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
fn reason(error: &DataFusionError) -> String {
    error.strip_backtrace().replace('\n', " ")
}

fn invalid_predicate(job: &Job, index: usize, text: &str, schema: &SchemaRef, why: &str) -> Error {
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    Error::InvalidField {
        file: job.file.clone(),
        field: format!("outputs[{index}].where"),
        expected: format!(
            "a boolean SQL predicate over the result columns ({})",
            columns.join(", ")
        ),
        got: format!("`{text}`: {why}"),
    }
}

/// An output topic must not be one of the job's own (its source would loop, its changelog
/// would be corrupted), nor another output's (a sink reading it would get both outputs).
fn check_topics(job: &Job) -> Result<()> {
    let topics = Topics::for_job(job);
    let own = [
        &topics.source,
        &topics.speed,
        &topics.results,
        &topics.dlq,
        &topics.late,
        &topics.control,
    ];
    let mut seen = HashSet::new();
    for (i, (_, topic)) in topics.outputs.iter().enumerate() {
        let expected = if own.contains(&topic) {
            "a topic other than the job's own (source, speed, results, dlq, late, control)"
        } else if !seen.insert(topic) {
            "a topic no other output writes"
        } else {
            continue;
        };
        return Err(Error::InvalidField {
            file: job.file.clone(),
            field: format!("outputs[{i}].topic"),
            expected: expected.to_string(),
            got: format!("`{topic}`"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
