//! Reading a job's batch view back as finalized result rows (`sluice view`).

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use sluice_core::JobPlan;
use sluice_core::aggregate::BUCKET_COLUMN;
use sluice_core::lake::TableLocation;
use sluice_core::rows::sorted;

use crate::error::Result;

/// The batch view's rows, finalized (partial states merged across buckets) and sorted.
pub async fn read_view(plan: &JobPlan, view: &TableLocation) -> Result<RecordBatch> {
    let output = plan.output_schema();
    let batches = match plan.aggregate() {
        Some(stage) => vec![stage.finalize(&view.read_view_partials(plan).await?)?],
        None => {
            let columns: Vec<String> = output.fields().iter().map(|f| f.name().clone()).collect();
            let stream = view.scan(&columns, BUCKET_COLUMN, None, None).await?;
            let batches: Vec<RecordBatch> =
                stream
                    .try_collect()
                    .await
                    .map_err(|e| sluice_core::Error::Table {
                        url: view.location.clone(),
                        message: e.to_string(),
                    })?;
            batches
                .into_iter()
                .map(|b| {
                    RecordBatch::try_new(output.clone(), b.columns().to_vec()).map_err(|source| {
                        sluice_core::Error::Arrow {
                            during: "reading stateless view rows",
                            source: Box::new(source),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(sorted(&output, &batches)?)
}
