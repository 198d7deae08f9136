//! Reading a job's source rows back from its raw table, for every fold of the batch layer
//! (backfill, `sluice verify`'s recompute, the replay seed).
//!
//! A backfill may read only the columns its plan reads ([`ScanColumns::ReadByPlan`]): Parquet
//! decodes each column on its own, and the seed query reads three of seven, so most of a
//! scan's work is strings nothing looks at. The skipped columns are filled with placeholders
//! (null, or the type's default where the field is not nullable) so the batches keep the
//! source schema every compiled expression binds to; [`Pipeline::source_columns_read`] says
//! when the plan's answer cannot depend on them.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::Field;
use datafusion::common::ScalarValue;
use futures::StreamExt;
use sluice_core::lake::{SOURCE_OFFSET_COLUMN, SOURCE_PARTITION_COLUMN, TableLocation};
use sluice_core::pii::PiiProtection;
use sluice_core::{Job, Pipeline};

use crate::error::{BatchError, Result};
use crate::fold::RawOrigin;

/// Which source columns a scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanColumns {
    /// Every source column, as landed.
    All,
    /// Only those the pipeline's answer depends on; the rest are placeholders. Rows the plan
    /// rejects then show placeholders too, so a caller that reports rejected rows reads them
    /// again with [`ScanColumns::All`].
    ReadByPlan,
}

pub(crate) fn scan_error<'a>(
    job: &'a Job,
    raw: &'a TableLocation,
) -> impl Fn(datafusion::error::DataFusionError) -> BatchError + 'a {
    move |source| BatchError::Scan {
        job: job.name().to_string(),
        url: raw.location.clone(),
        source: Box::new(source),
    }
}

/// Hands every raw batch with event time in `range` to `each`, as the job's source columns
/// with where each row came from.
pub(crate) async fn scan_raw(
    job: &Job,
    raw: &TableLocation,
    range: (Option<i64>, Option<i64>),
    columns: (ScanColumns, &Pipeline),
    mut each: impl FnMut(&RecordBatch, &RawOrigin) -> Result<()>,
) -> Result<()> {
    let source_schema = job.source_schema();
    let width = source_schema.fields().len();
    let read: BTreeSet<usize> = match columns {
        (ScanColumns::ReadByPlan, pipeline) => pipeline.source_columns_read(),
        (ScanColumns::All, _) => None,
    }
    .unwrap_or_else(|| (0..width).collect());
    let mut names: Vec<String> = read
        .iter()
        .map(|&i| source_schema.field(i).name().clone())
        .collect();
    names.extend([
        SOURCE_PARTITION_COLUMN.to_string(),
        SOURCE_OFFSET_COLUMN.to_string(),
    ]);
    let mut stream = raw
        .scan(&names, &job.spec.source.event_time, range.0, range.1)
        .await?;
    // The raw table is the topic's, shared by every version of every job on it: rows an
    // untagged version (or history from before the tags) landed hold clear values. The
    // policies are applied again as the rows are read, and protection is idempotent, so rows
    // landed protected come out as they are.
    let pii = PiiProtection::for_job(job)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(scan_error(job, raw))?;
        let rows = batch.num_rows();
        let mut scanned = batch.columns().iter();
        let mut source_columns: Vec<ArrayRef> = Vec::with_capacity(width);
        for (i, field) in source_schema.fields().iter().enumerate() {
            let column = match read.contains(&i) {
                true => scanned.next().cloned(),
                false => Some(placeholder(field, rows)?),
            };
            source_columns.extend(column);
        }
        let source =
            RecordBatch::try_new(source_schema.clone(), source_columns).map_err(|source| {
                sluice_core::Error::Arrow {
                    during: "reading raw rows with the job's schema",
                    source: Box::new(source),
                }
            })?;
        let source = match &pii {
            Some(pii) => pii.protect_batch(&source)?,
            None => source,
        };
        each(&source, &RawOrigin::of(&batch, read.len()))?;
    }
    Ok(())
}

/// `rows` values standing in for a column the scan skipped: null, or the type's default (an
/// empty string, zero) where the field cannot be null.
fn placeholder(field: &Arc<Field>, rows: usize) -> Result<ArrayRef> {
    if field.is_nullable() {
        return Ok(new_null_array(field.data_type(), rows));
    }
    ScalarValue::new_default(field.data_type())
        .and_then(|value| value.to_array_of_size(rows))
        .map_err(|source| {
            sluice_core::Error::Arrow {
                during: "filling a column the scan skipped",
                source: Box::new(arrow::error::ArrowError::ComputeError(format!(
                    "`{}`: {source}",
                    field.name()
                ))),
            }
            .into()
        })
}
