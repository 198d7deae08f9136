//! Stateless record transforms written in Rust (e.g. with Polars), applied before the SQL.
//!
//! Core only knows the Arrow-level contract so that the speed and batch layers can share one
//! registry without core depending on a DataFrame library. Rules for implementors:
//! - `apply` is a pure function of its input batch (no state across calls), so applying it per
//!   micro-batch and over a whole table gives the same rows;
//! - its output schema depends only on the input schema and must keep the event time column.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::spec::Job;

/// A named stateless transform over Arrow batches.
pub trait BatchTransform: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;

    /// Transforms one batch.
    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch>;

    /// The output schema for `input`; by default found by transforming an empty batch.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.apply(&RecordBatch::new_empty(input.clone()))?.schema())
    }
}

/// Transforms by the name job files use for them.
#[derive(Debug, Default, Clone)]
pub struct TransformRegistry {
    transforms: BTreeMap<String, Arc<dyn BatchTransform>>,
}

impl TransformRegistry {
    pub fn register(&mut self, transform: Arc<dyn BatchTransform>) {
        self.transforms
            .insert(transform.name().to_string(), transform);
    }

    /// The transform `job` names, if any; an unknown name is an error listing the known ones.
    pub fn for_job(&self, job: &Job) -> Result<Option<Arc<dyn BatchTransform>>> {
        let Some(name) = &job.spec.transform.polars else {
            return Ok(None);
        };
        self.transforms
            .get(name)
            .cloned()
            .map(Some)
            .ok_or_else(|| Error::InvalidField {
                file: job.file.clone(),
                field: "transform.polars".to_string(),
                expected: format!(
                    "the name of a transform registered in this sluice binary ({})",
                    if self.transforms.is_empty() {
                        "none are registered".to_string()
                    } else {
                        self.transforms
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
                got: format!("`{name}`"),
            })
    }
}
