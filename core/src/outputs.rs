//! Branching: a job's `[[outputs]]` compiled into an [`OutputRouter`], which splits result rows
//! among the outputs by their SQL predicates.
//!
//! A predicate is one SQL boolean expression over the job's result columns (the plan's output
//! schema), compiled by [`crate::predicate`], so `where = "amount >= 100"` means exactly what
//! `WHERE amount >= 100` would, UDFs included.
//! Compiling it with the [`crate::Pipeline`] makes a bad predicate fail the job at start, not
//! at its first row.
//!
//! A row goes to every output whose predicate is TRUE for it; NULL is no match, as in a WHERE
//! clause. The `else = true` output takes the rows no `where` output matched. Routing only
//! selects rows: `<job>.results` keeps every row whatever the outputs.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::boolean::{not, or};
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{Error, Result, arrow_err};
use crate::predicate::{self, PredicateCompiler};
use crate::spec::Job;
use crate::topics::Topics;

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
        let compiler = PredicateCompiler::new(job, OUTPUT_TABLE, output_schema)?;
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
                        compiler
                            .compile(text)
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
        let (mask, failed) = predicate::evaluate_isolating(predicate, batch);
        if let Some(&first) = failed.first() {
            let error = predicate::evaluate(predicate, &batch.slice(first, 1))
                .err()
                .map(|e| predicate::reason(&e))
                .unwrap_or_default();
            tracing::warn!(
                job = %self.job,
                output = %output.name,
                rows = failed.len(),
                %error,
                "an output's predicate failed on some result rows; they do not match it"
            );
        }
        mask
    }

    fn check_schema(&self, batch: &RecordBatch) -> Result<()> {
        if crate::plan::same_fields(&self.schema, batch.schema_ref()) {
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
