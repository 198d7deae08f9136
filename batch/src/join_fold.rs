//! The batch layer's side of a temporal join: the joined table's versions, read from its raw
//! table into a [`MemState`], which every stream row of the fold is joined against with
//! [`TemporalJoin::join_now`] — the speed layer's rule ([`sluice_core::join::temporal`]) with
//! the batch layer's perfect watermark: every version before the range's end is loaded before
//! the first stream row, so no row waits.
//!
//! Memory: every version valid from before the range's end, encoded (the table's whole
//! history; retention by the speed layer's floor is the speed layer's business).

use std::sync::Arc;

use sluice_core::dedup::RowId;
use sluice_core::join::temporal::TemporalJoin;
use sluice_core::lake::TableLocation;
use sluice_core::operator_state::MemState;
use sluice_core::{Job, Lake, Pipeline};

use crate::error::Result;
use crate::raw_scan::{ScanColumns, scan_raw};

/// The versions of the table `pipeline` joins, valid from before `until` (µs; `None`: all),
/// or `None` when the job joins nothing.
pub(crate) async fn load_versions(
    job: &Job,
    lake: &Lake,
    pipeline: &Pipeline,
    until: Option<i64>,
) -> Result<Option<Arc<MemState>>> {
    let Some(join) = pipeline.join() else {
        return Ok(None);
    };
    let input = job.input(join.table_input())?;
    let raw = TableLocation::new(lake.raw_table(&input.job));
    let mut state = MemState::new();
    if raw.open().await?.version().is_none() {
        tracing::warn!(
            job = job.name(),
            table = %input.table,
            raw_table = %raw.location,
            "the joined table has no raw table yet: no stream row finds a version"
        );
        return Ok(Some(Arc::new(state)));
    }
    let mut file_rows = 0u64;
    let scanned = (ScanColumns::All, pipeline);
    scan_raw(&input.job, &raw, (None, until), scanned, |rows, origin| {
        let ids = version_ids(join, rows, origin, &mut file_rows)?;
        join.add_versions(&mut state, rows, &ids)?;
        Ok(())
    })
    .await?;
    Ok(Some(Arc::new(state)))
}

/// A version's id: its record's (partition, offset), or for a row loaded from a file its
/// encoding and a count telling identical rows apart.
fn version_ids(
    join: &TemporalJoin,
    rows: &arrow::array::RecordBatch,
    origin: &crate::fold::RawOrigin,
    file_rows: &mut u64,
) -> Result<Vec<RowId>> {
    (0..rows.num_rows())
        .map(|row| {
            let partition = origin.partitions.get(row).copied().flatten();
            let offset = origin.offsets.get(row).copied().flatten();
            Ok(match (partition, offset) {
                (Some(partition), Some(offset)) => RowId::at(partition, offset),
                _ => {
                    let mut id = join.encode_table_row(rows, row)?;
                    id.extend_from_slice(&file_rows.to_be_bytes());
                    *file_rows += 1;
                    RowId::content(id)
                }
            })
        })
        .collect()
}
