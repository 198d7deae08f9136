//! Appends to a Delta table that stream: Parquet data files are written into the table while
//! the batches come, and committed together, in one Delta commit, only at the end.
//!
//! [`crate::lake::TableLocation::append`] takes every batch at once, so what it appends must fit
//! in memory. A [`StreamingAppend`] takes the batches one by one: each is encoded into the open
//! Parquet file, whose row groups ([`ROW_GROUP_BYTES`] encoded at most) are uploaded as they
//! complete, and a new file starts once one reaches [`TARGET_FILE_BYTES`]. Memory holds the row
//! group being built and the uploads in flight, whatever the size of the whole append.
//!
//! Readers see nothing until [`StreamingAppend::commit`]: one commit of every file written, with
//! the caller's commit metadata and Delta transaction actions, exactly what `append` commits. A
//! missing table is created by that commit with the batches' schema, and columns the table does
//! not have yet widen its schema (Delta's schema merge), as `append` does. A failed commit and
//! [`StreamingAppend::abort`] delete the files written; a crash in between leaves unreferenced
//! files only, which no reader sees and a vacuum removes. Tables partitioned by a column are not
//! supported (Sluice's raw tables never are).

use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::config::ParquetOptions;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, Add, MetadataExt, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use crate::error::{Error, Result, arrow_err};
use crate::lake::TableLocation;

/// A data file is closed (and a new one started) once it holds about this much.
pub const TARGET_FILE_BYTES: u64 = 128 << 20;

/// A Parquet row group is flushed once its encoded size reaches this: what the writer holds in
/// memory besides the uploads in flight.
pub const ROW_GROUP_BYTES: usize = 32 << 20;

/// One append in progress (see the module docs).
pub struct StreamingAppend {
    location: TableLocation,
    table: DeltaTable,
    writer: RecordBatchWriter,
    /// The table existed when the append started (else the commit creates it).
    existed: bool,
    /// The schema the files started out in: the table's, or the batches' for a new table.
    baseline: SchemaRef,
    rows: usize,
}

impl StreamingAppend {
    /// Starts an append of batches of `schema` to the table at `location`, which need not exist.
    pub async fn open(location: &TableLocation, schema: SchemaRef) -> Result<StreamingAppend> {
        let table = location.open().await?;
        let existed = table.version().is_some();
        let writer = if existed {
            RecordBatchWriter::for_table(&table)
        } else {
            RecordBatchWriter::try_new(table.table_url().as_str(), schema, None, None)
        }
        .map_err(|e| delta(location, e))?
        .with_writer_properties(writer_properties(location)?)
        .with_target_file_size(TARGET_FILE_BYTES);
        let baseline = writer.arrow_schema();
        Ok(StreamingAppend {
            location: location.clone(),
            table,
            writer,
            existed,
            baseline,
            rows: 0,
        })
    }

    /// Encodes `batch` into the open data file (uploading what completes).
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = batch.num_rows();
        self.writer
            .write_with_mode(batch, WriteMode::MergeSchema)
            .await
            .map_err(|e| delta(&self.location, e))?;
        self.rows += rows;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The last version committed under `app_id` as of now (the table is read again first).
    pub async fn transaction_version(&mut self, app_id: &str) -> Result<Option<i64>> {
        self.refresh().await?;
        if self.table.version().is_none() {
            return Ok(None);
        }
        let log_store = self.table.log_store();
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| delta(&self.location, e))?;
        snapshot
            .transaction_version(log_store.as_ref(), app_id)
            .await
            .map_err(|e| delta(&self.location, e))
    }

    /// Commits every file written in one commit holding `metadata` (commit info) and a Delta
    /// transaction action per `(app id, version)`. `None` when nothing was written: then
    /// nothing is committed. When the commit fails, the files are deleted.
    pub async fn commit(
        mut self,
        metadata: HashMap<String, serde_json::Value>,
        transactions: Vec<(String, i64)>,
    ) -> Result<Option<u64>> {
        let adds = self
            .writer
            .flush()
            .await
            .map_err(|e| delta(&self.location, e))?;
        if adds.is_empty() {
            return Ok(None);
        }
        let mut properties = CommitProperties::default().with_metadata(metadata);
        for (app_id, version) in transactions {
            properties = properties.with_application_transaction(Transaction::new(app_id, version));
        }
        match self.commit_files(&adds, properties).await {
            Ok(version) => Ok(Some(version)),
            Err(e) => {
                self.delete(&adds).await;
                Err(e)
            }
        }
    }

    /// Deletes every file written (nothing is committed); returns how many were deleted.
    pub async fn abort(mut self) -> Result<usize> {
        let adds = self
            .writer
            .flush()
            .await
            .map_err(|e| delta(&self.location, e))?;
        Ok(self.delete(&adds).await)
    }

    async fn commit_files(&mut self, adds: &[Add], properties: CommitProperties) -> Result<u64> {
        self.refresh().await?;
        let schema = self.writer.arrow_schema();
        let files = adds.iter().cloned().map(Action::Add);
        if self.table.version().is_none() {
            // Created by this commit, as a write to a missing table creates it: the protocol and
            // metadata `CreateBuilder` makes from the schema, then the files.
            let columns = kernel_schema(&schema)?;
            let created = self
                .table
                .create()
                .with_columns(columns.fields().cloned())
                .with_save_mode(SaveMode::ErrorIfExists)
                .with_actions(files)
                .with_commit_properties(properties)
                .await
                .map_err(|e| delta(&self.location, e))?;
            return created.version().ok_or_else(|| Error::Table {
                url: self.location.location.clone(),
                message: "the commit that created the table left no version".to_string(),
            });
        }
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| delta(&self.location, e))?;
        let mut actions = Vec::with_capacity(adds.len() + 1);
        if !self.existed {
            // Another writer created the table while this append was writing: its files are in
            // the batches' schema, which must then be the table's.
            if snapshot.snapshot().arrow_schema() != schema {
                return Err(Error::Table {
                    url: self.location.location.clone(),
                    message: "another writer created the table with another schema while this append was writing; run it again".to_string(),
                });
            }
        } else if schema != self.baseline {
            // New columns merged into the table's schema while writing (the job gained fields).
            let metadata = snapshot
                .metadata()
                .clone()
                .with_schema(&kernel_schema(&schema)?)
                .map_err(|e| Error::Table {
                    url: self.location.location.clone(),
                    message: format!("widening the table's schema: {e}"),
                })?;
            actions.push(Action::Metadata(metadata));
        }
        actions.extend(files);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let committed = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(
                Some(snapshot as &dyn TableReference),
                self.table.log_store(),
                operation,
            )
            .await
            .map_err(|e| delta(&self.location, e))?;
        Ok(committed.version())
    }

    /// Reads the commits made since the table was opened (or learns that it now exists).
    async fn refresh(&mut self) -> Result<()> {
        match self.table.update_incremental(None).await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(()),
            Err(e) => Err(delta(&self.location, e)),
        }
    }

    /// Best effort: a file left behind is never read (no commit names it).
    async fn delete(&self, adds: &[Add]) -> usize {
        let paths: Vec<object_store::Result<Path>> = adds
            .iter()
            .filter_map(|add| Path::parse(&add.path).ok())
            .map(Ok)
            .collect();
        let store = self.table.object_store();
        let deleted: std::result::Result<Vec<Path>, _> = store
            .delete_stream(futures::stream::iter(paths).boxed())
            .try_collect()
            .await;
        match deleted {
            Ok(deleted) => deleted.len(),
            Err(e) => {
                tracing::warn!(table = %self.location.location, error = %e, "could not delete the data files of an append that was not committed; no reader sees them");
                0
            }
        }
    }
}

/// The Parquet settings of every other write to the lake (DataFusion's defaults, as
/// `TableLocation::append` writes), with row groups bounded in bytes.
fn writer_properties(
    location: &TableLocation,
) -> Result<deltalake::parquet::file::properties::WriterProperties> {
    let builder = ParquetOptions::default()
        .into_writer_properties_builder()
        .map_err(|e| Error::Table {
            url: location.location.clone(),
            message: format!("Parquet writer settings: {e}"),
        })?;
    Ok(builder
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .build())
}

fn kernel_schema(schema: &SchemaRef) -> Result<StructType> {
    schema
        .as_ref()
        .try_into_kernel()
        .map_err(arrow_err("converting the schema to a Delta schema"))
}

fn delta(location: &TableLocation, source: DeltaTableError) -> Error {
    Error::Delta {
        url: location.location.clone(),
        source: Box::new(source),
    }
}
