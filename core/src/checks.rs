//! A job's `[[checks]]` (see [`crate::spec::CheckSpec`]) compiled into [`QualityChecks`]: the
//! one implementation of data-quality checks that the speed and the batch layer both run,
//! through [`crate::Pipeline::evaluate_isolating`], on the same decoded source rows, so both
//! quarantine exactly the same records and count the same violations.
//!
//! Every check becomes one SQL condition a passing row satisfies (`"amount" IS NOT NULL`,
//! `"status" IN ('a', 'b')`, an `expect` predicate as written), compiled like an output's
//! `where` ([`crate::predicate`]) as `(<condition>) IS FALSE`, TRUE exactly for violating rows;
//! so a check means what the same SQL means in the job, and a check that does not type-check
//! fails the job at start. `IS FALSE` lets NULL pass every check but `not_null`, as in dbt.
//! A row the predicate itself fails on (an `expect` with a CAST of bad text) counts as a
//! violation: it could not be shown to pass.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::utils::collect_columns;

use crate::error::{Error, Result};
use crate::predicate::{self, PredicateCompiler};
use crate::spec::{CheckKind, CheckSpec, Job, Severity};
use crate::spec_checks::sql_text;

/// The table checks are planned against; it only shows in DataFusion's messages.
const SOURCE_TABLE: &str = "source";

/// The compiled `[[checks]]` of a job, in the job file's order.
#[derive(Debug)]
pub struct QualityChecks {
    job: String,
    schema: SchemaRef,
    checks: Vec<CompiledCheck>,
}

#[derive(Debug)]
pub struct CompiledCheck {
    pub name: String,
    pub kind: CheckKind,
    pub severity: Severity,
    pub column: Option<String>,
    /// What a passing row satisfies, for messages (`` `amount` >= 0 ``).
    pub rule: String,
    /// TRUE for violating rows; `None` for `unique`, which no row decides alone (it runs on
    /// the dedup stage: [`crate::stateful`]).
    violated: Option<Arc<dyn PhysicalExpr>>,
}

/// What the checks found in a batch of source rows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// (row, check index) of every row a `quarantine` check rejects, in row order: the
    /// first such check the row violates.
    pub quarantined: Vec<(usize, usize)>,
    /// Per check (in the job file's order), the rows that violate it.
    pub violations: Vec<usize>,
}

impl QualityChecks {
    /// Compiles `job`'s checks against its source schema (`None` when it has none). A check
    /// whose SQL does not compile (a type the column does not have, a bad `expect`) is an
    /// [`Error::InvalidField`] naming `checks[i]` and why.
    pub fn compile(job: &Job, source_schema: &SchemaRef) -> Result<Option<QualityChecks>> {
        if job.spec.checks.is_empty() {
            return Ok(None);
        }
        let compiler = PredicateCompiler::new(job, SOURCE_TABLE, source_schema)?;
        let checks =
            job.spec
                .checks
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    if spec.check == CheckKind::Unique {
                        return Ok(CompiledCheck {
                            name: spec.display_name(),
                            kind: spec.check,
                            severity: spec.severity,
                            column: Some(spec.key_columns().join(", ")),
                            rule: unique_rule(job, spec),
                            violated: None,
                        });
                    }
                    let (condition, rule) = condition_sql(spec);
                    let field = match spec.check {
                        CheckKind::Expect => format!("checks[{i}].predicate"),
                        _ => format!("checks[{i}]"),
                    };
                    let violated = compiler.compile_is_false(&condition).map_err(|why| {
                        Error::InvalidField {
                            file: job.file.clone(),
                            field,
                            expected: "a check the source fields can be checked with".to_string(),
                            got: format!("`{rule}`: {why}"),
                        }
                    })?;
                    Ok(CompiledCheck {
                        name: spec.display_name(),
                        kind: spec.check,
                        severity: spec.severity,
                        column: spec.column.clone(),
                        rule,
                        violated: Some(violated),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
        Ok(Some(QualityChecks {
            job: job.name().to_string(),
            schema: source_schema.clone(),
            checks,
        }))
    }

    /// The source columns (indices) the checks read.
    pub fn input_columns(&self) -> BTreeSet<usize> {
        self.checks
            .iter()
            .filter_map(|check| check.violated.as_ref())
            .flat_map(|violated| collect_columns(violated).into_iter().map(|c| c.index()))
            .collect()
    }

    pub fn checks(&self) -> &[CompiledCheck] {
        &self.checks
    }

    /// Every check on every row of `batch` (source rows of the job's source schema).
    pub fn apply(&self, batch: &RecordBatch) -> Result<CheckOutcome> {
        if !crate::plan::same_fields(&self.schema, batch.schema_ref()) {
            return Err(Error::Execution {
                job: self.job.clone(),
                during: "checking source rows",
                source: Box::new(datafusion::error::DataFusionError::Plan(format!(
                    "rows of schema {:?} are not the source schema {:?}",
                    batch.schema(),
                    self.schema
                ))),
            });
        }
        let rows = batch.num_rows();
        let mut outcome = CheckOutcome::default();
        let mut rejected_by: Vec<Option<usize>> = vec![None; rows];
        for (index, check) in self.checks.iter().enumerate() {
            let Some(violated) = &check.violated else {
                outcome.violations.push(0);
                continue;
            };
            let (mask, failed) = predicate::evaluate_isolating(violated.as_ref(), batch);
            let mut violated: Vec<bool> = mask.values().iter().collect();
            for row in failed {
                violated[row] = true;
            }
            outcome
                .violations
                .push(violated.iter().filter(|v| **v).count());
            if check.severity == Severity::Quarantine {
                for (row, _) in violated.iter().enumerate().filter(|(_, v)| **v) {
                    rejected_by[row].get_or_insert(index);
                }
            }
        }
        outcome.quarantined = rejected_by
            .into_iter()
            .enumerate()
            .filter_map(|(row, check)| check.map(|c| (row, c)))
            .collect();
        Ok(outcome)
    }

    /// The error a record quarantined by check `index` (of [`CheckOutcome::quarantined`])
    /// is dead-lettered with.
    pub fn failure(&self, index: usize) -> Error {
        let (check, rule) = self
            .checks
            .get(index)
            .map_or((String::new(), String::new()), |c| {
                (c.name.clone(), c.rule.clone())
            });
        Error::CheckFailed {
            job: self.job.clone(),
            check,
            rule,
        }
    }
}

/// What a row passing a `unique` check satisfies, for messages.
fn unique_rule(job: &Job, spec: &CheckSpec) -> String {
    let within = spec
        .within
        .unwrap_or_else(|| job.spec.transform.dedup_within());
    let columns: Vec<String> = spec
        .key_columns()
        .iter()
        .map(|c| format!("`{c}`"))
        .collect();
    format!(
        "no earlier row with the same {} within {} of it",
        columns.join(", "),
        humantime::format_duration(within)
    )
}

/// `"name"`, quotes doubled.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL condition a row passing `spec` satisfies, and the same for messages. (The spec
/// was validated: each kind has the keys it needs.)
fn condition_sql(spec: &CheckSpec) -> (String, String) {
    let column = spec.column.as_deref().map(ident).unwrap_or_default();
    let shown = spec.column.as_deref().unwrap_or_default();
    match spec.check {
        CheckKind::NotNull => (
            format!("{column} IS NOT NULL"),
            format!("`{shown}` is not null"),
        ),
        CheckKind::AcceptedValues => {
            let values: Vec<String> = spec.values.iter().flatten().map(|v| v.sql()).collect();
            let list = values.join(", ");
            (
                format!("{column} IN ({list})"),
                format!("`{shown}` is one of ({list})"),
            )
        }
        CheckKind::Range => {
            let inclusive = spec.inclusive.unwrap_or(true);
            let (low, high) = if inclusive { (">=", "<=") } else { (">", "<") };
            let mut parts = Vec::new();
            let mut shown_parts = Vec::new();
            if let Some(min) = &spec.min {
                parts.push(format!("{column} {low} {}", min.sql()));
                shown_parts.push(format!("`{shown}` {low} {}", min.sql()));
            }
            if let Some(max) = &spec.max {
                parts.push(format!("{column} {high} {}", max.sql()));
                shown_parts.push(format!("`{shown}` {high} {}", max.sql()));
            }
            (parts.join(" AND "), shown_parts.join(" AND "))
        }
        CheckKind::Regex => {
            let pattern = sql_text(spec.pattern.as_deref().unwrap_or_default());
            (
                format!("regexp_like({column}, {pattern})"),
                format!("`{shown}` matches {pattern}"),
            )
        }
        CheckKind::Expect => {
            let predicate = spec.predicate.as_deref().unwrap_or_default();
            (predicate.to_string(), predicate.to_string())
        }
        // Not a row condition (see `unique_rule`); never compiled as one.
        CheckKind::Unique => ("TRUE".to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests;
