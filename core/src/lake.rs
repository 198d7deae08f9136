//! The lake's Delta tables and their layouts: the raw table (master dataset) and view tables.
//!
//! Raw table: the job's source columns, then `__source_partition` (Int32) and
//! `__source_offset` (Int64), both null for records loaded from files. Exactly-once appends
//! carry Delta transaction actions (app id, version) that writers resume from.
//!
//! View table (batch view): the finalized SELECT columns of each row, then the partial-state
//! layout of [`crate::AggregateStage::partial_schema`] (`__key_*`, `__window_start`,
//! `__window_end`, `__bucket`, `__state_*`). A stateless job's view has its SELECT columns and
//! `__bucket`. Each backfill replaces a bucket range in one commit whose metadata holds the
//! cutoff under [`CUTOFF_KEY`] (microseconds since the epoch).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, RecordBatch, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Column, ScalarValue};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;

use crate::aggregate::BUCKET_COLUMN;
use crate::error::{Error, Result, arrow_err};
use crate::lake_progress::LakeProgress;
use crate::plan::JobPlan;
use crate::spec::{Job, UTC, timestamp_type};
use crate::view_coverage::ViewCoverage;

pub const SOURCE_PARTITION_COLUMN: &str = "__source_partition";
pub const SOURCE_OFFSET_COLUMN: &str = "__source_offset";
/// Commit metadata key of the batch view's cutoff.
pub const CUTOFF_KEY: &str = commit_key::CUTOFF_US;

/// The keys Sluice writes into a Delta commit's `commitInfo` (and the serving layer and
/// `sluice verify` read back). Values are JSON.
pub mod commit_key {
    /// `"backfill"`, `"lake load"` or `"stream ingest"`.
    pub const OPERATION: &str = "sluice.operation";
    pub const JOB: &str = "sluice.job";
    /// Backfill: the bucket range `[from, to)` it replaced (µs).
    pub const FROM_US: &str = "sluice.from_us";
    pub const TO_US: &str = "sluice.to_us";
    /// Backfill: raw rows read, view rows written, raw rows the plan failed on (skipped).
    pub const ROWS_READ: &str = "sluice.rows_read";
    pub const VIEW_ROWS: &str = "sluice.view_rows";
    pub const ROWS_REJECTED: &str = "sluice.rows_rejected";
    /// Backfill: rows violating each data-quality check (`{check: rows}`).
    pub const CHECK_VIOLATIONS: &str = "sluice.check_violations";
    /// The batch view's cutoff after this commit (µs): it covers every bucket before it.
    pub const CUTOFF_US: &str = "sluice.cutoff_us";
    /// Lake load and ingest: rows appended; lake load: the file and its rejected lines.
    pub const ROWS: &str = "sluice.rows";
    pub const FILE: &str = "sluice.file";
    pub const REJECTED: &str = "sluice.rejected";
    /// Ingest: what the raw table holds of each source partition
    /// ([`crate::lake_progress::LakeProgress`] as JSON).
    pub const LAKE_PROGRESS: &str = "sluice.lake_progress";
    /// Backfill: the raw table's completeness bound it was clamped by (µs; absent when the
    /// raw table holds loaded files only).
    pub const LAKE_COMPLETE_UNTIL_US: &str = "sluice.lake_complete_until_us";
    /// Backfill: the ranges landed beyond the cutoff, not yet contiguous with it
    /// ([`crate::ViewCoverage`]: `[[from_us, to_us], …]`).
    pub const LANDED_US: &str = "sluice.landed_us";
    /// Backfill: the raw table version it read (its rows are exactly that version's).
    pub const RAW_VERSION: &str = "sluice.raw_version";
    /// Backfill: the [`crate::Job::plan_fingerprint`] of the plan that wrote the view.
    pub const PLAN_FINGERPRINT: &str = "sluice.plan_fingerprint";
}

/// The raw table's schema for `job`.
pub fn raw_schema(job: &Job) -> SchemaRef {
    let mut fields: Vec<Field> = job
        .source_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SOURCE_PARTITION_COLUMN, DataType::Int32, true));
    fields.push(Field::new(SOURCE_OFFSET_COLUMN, DataType::Int64, true));
    Arc::new(Schema::new(fields))
}

/// Decoded source rows as raw-table rows: `origin` gives the Kafka partition and each row's
/// offset; rows from files (`None`) have null source columns.
pub fn raw_rows(
    job: &Job,
    batch: &RecordBatch,
    origin: Option<(i32, &[i64])>,
) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let mut columns = batch.columns().to_vec();
    match origin {
        Some((partition, offsets)) => {
            columns.push(Arc::new(Int32Array::from(vec![partition; rows])));
            columns.push(Arc::new(Int64Array::from(offsets.to_vec())));
        }
        None => {
            columns.push(new_null_array(&DataType::Int32, rows));
            columns.push(new_null_array(&DataType::Int64, rows));
        }
    }
    RecordBatch::try_new(raw_schema(job), columns).map_err(arrow_err("adding source columns"))
}

/// The view table's schema for `plan`.
pub fn view_schema(plan: &JobPlan) -> SchemaRef {
    let mut fields: Vec<Field> = plan
        .output_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    match plan.aggregate() {
        Some(stage) => fields.extend(
            stage
                .partial_schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone()),
        ),
        None => fields.push(Field::new(BUCKET_COLUMN, timestamp_type(), false)),
    }
    Arc::new(Schema::new(fields))
}

/// A table's newest commit, as [`TableLocation::last_commit`] reads it.
#[derive(Debug, Clone)]
pub struct CommitSummary {
    pub version: u64,
    pub timestamp_ms: Option<i64>,
    pub info: HashMap<String, serde_json::Value>,
}

/// A table kept loaded by a long-running writer (the raw-lake sink). [`TableLocation`]'s calls
/// each open the table, replaying its log from the last checkpoint; this one reads only the
/// commits made since its last refresh or append, so a commit costs the same however many came
/// before it, and it knows when no one else has written since its own last commit.
pub struct WritableTable {
    location: TableLocation,
    table: DeltaTable,
    /// The version of this writer's last commit.
    own_version: Option<u64>,
}

impl WritableTable {
    /// Reads the commits made since the last refresh or append; true when the table is not at
    /// this writer's own last commit (another writer committed, or this one has not yet).
    pub async fn refresh(&mut self) -> Result<bool> {
        match self.table.update_incremental(None).await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => {}
            Err(e) => return Err(self.location.delta()(e)),
        }
        Ok(self.own_version.is_none() || self.table.version() != self.own_version)
    }

    /// The last version written by `app_id`, as of the last refresh or append.
    pub async fn transaction_version(&self, app_id: &str) -> Result<Option<i64>> {
        self.location
            .transaction_version_in(&self.table, app_id)
            .await
    }

    /// Appends `batches` in one commit with `metadata` and transaction actions. Delta's commit
    /// protocol still detects a concurrent writer's conflicting commit.
    pub async fn append(
        &mut self,
        batches: Vec<RecordBatch>,
        metadata: HashMap<String, serde_json::Value>,
        transactions: Vec<(String, i64)>,
    ) -> Result<()> {
        let table = self.table.clone();
        self.table = self
            .location
            .append_to(table, batches, metadata, transactions)
            .await?;
        self.own_version = self.table.version();
        Ok(())
    }
}

/// A Delta table location (local path, `file://` or an object-store URL).
#[derive(Debug, Clone)]
pub struct TableLocation {
    pub location: String,
    /// Read the table as of this version instead of the newest (for readers only: a write
    /// always commits on the newest version).
    as_of: Option<u64>,
    /// Object-store options beyond the environment's (see [`TableLocation::failing_fast`]).
    options: HashMap<String, String>,
}

/// How long a fail-fast writer's object store retries one request before the writer hears of
/// it (object_store's default is 3 minutes).
const FAIL_FAST_RETRY_TIMEOUT: &str = "10s";
const FAIL_FAST_MAX_RETRIES: &str = "3";

/// A backfill's commit of a view table: the bucket range it replaced and the raw table
/// version it read (`None` in commits from before the version was recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillSource {
    pub from_us: i64,
    pub to_us: i64,
    pub raw_version: Option<u64>,
}

impl TableLocation {
    pub fn new(location: impl Into<String>) -> TableLocation {
        TableLocation {
            location: location.into(),
            as_of: None,
            options: HashMap::new(),
        }
    }

    /// The same table read as of `version` (time travel).
    pub fn at_version(&self, version: u64) -> TableLocation {
        TableLocation {
            location: self.location.clone(),
            as_of: Some(version),
            options: self.options.clone(),
        }
    }

    /// The same table for a writer that retries on its own (the lake sink pauses its
    /// partitions and backs off): the object store gives up on a request after a few seconds
    /// instead of minutes, so an outage reaches the writer, `/health` and the metrics while
    /// it lasts rather than after.
    pub fn failing_fast(mut self) -> TableLocation {
        self.options
            .insert("retry_timeout".into(), FAIL_FAST_RETRY_TIMEOUT.into());
        self.options
            .insert("max_retries".into(), FAIL_FAST_MAX_RETRIES.into());
        self
    }

    fn delta(&self) -> impl FnOnce(DeltaTableError) -> Error + '_ {
        move |source| Error::Delta {
            url: self.location.clone(),
            source: Box::new(source),
        }
    }

    /// The table, or a handle that creates it on first write (`version()` is `None`).
    pub async fn open(&self) -> Result<DeltaTable> {
        let url = deltalake::ensure_table_uri(&self.location).map_err(self.delta())?;
        let mut table = if self.options.is_empty() || url.scheme() == "file" {
            DeltaTable::try_from_url(url).await
        } else {
            DeltaTable::try_from_url_with_storage_options(url, self.options.clone()).await
        }
        .map_err(self.delta())?;
        if let Some(version) = self.as_of {
            table.load_version(version).await.map_err(self.delta())?;
            return Ok(table);
        }
        match table.load().await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
            Err(e) => Err(self.delta()(e)),
        }
    }

    /// Opens an existing table; a missing table is an error that says so.
    pub async fn open_existing(&self) -> Result<DeltaTable> {
        let table = self.open().await?;
        if table.version().is_none() {
            return Err(Error::Table {
                url: self.location.clone(),
                message: "no Delta table here yet".to_string(),
            });
        }
        Ok(table)
    }

    /// Appends `batches` in one commit with `metadata` and transaction actions.
    pub async fn append(
        &self,
        batches: Vec<RecordBatch>,
        metadata: HashMap<String, serde_json::Value>,
        transactions: Vec<(String, i64)>,
    ) -> Result<DeltaTable> {
        let table = self.open().await?;
        self.append_to(table, batches, metadata, transactions).await
    }

    async fn append_to(
        &self,
        table: DeltaTable,
        batches: Vec<RecordBatch>,
        metadata: HashMap<String, serde_json::Value>,
        transactions: Vec<(String, i64)>,
    ) -> Result<DeltaTable> {
        let mut properties = CommitProperties::default().with_metadata(metadata);
        for (app_id, version) in transactions {
            properties = properties.with_application_transaction(Transaction::new(app_id, version));
        }
        table
            .write(batches)
            .with_save_mode(SaveMode::Append)
            .with_schema_mode(SchemaMode::Merge)
            .with_commit_properties(properties)
            .await
            .map_err(self.delta())
    }

    /// The table kept loaded for a long-running writer (see [`WritableTable`]).
    pub async fn writable(&self) -> Result<WritableTable> {
        Ok(WritableTable {
            table: self.open().await?,
            location: self.clone(),
            own_version: None,
        })
    }

    /// Replaces every row whose `__bucket` is in `[from, to)` with `batches`, in one commit
    /// whose metadata `metadata_for` builds from the view's coverage as of the version the
    /// commit lands on.
    ///
    /// Replaces of disjoint ranges may run concurrently (sharded backfills): every commit
    /// carries a Delta transaction action under `writer_app_id`, so of two commits made on the
    /// same table version the later one conflicts, and it is redone on the newer version with
    /// the coverage read again. Coverage is never updated from a stale read.
    pub async fn replace_buckets(
        &self,
        batches: Vec<RecordBatch>,
        (from, to): (i64, i64),
        writer_app_id: &str,
        metadata_for: impl Fn(&ViewCoverage) -> HashMap<String, serde_json::Value>,
    ) -> Result<DeltaTable> {
        /// Commits redone after a conflict before giving up.
        const ATTEMPTS: u32 = 32;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The coverage is read from the very version the write commits on: any commit
            // after it carries the same app id and so makes this one conflict.
            let table = self.open().await?;
            if table.version().is_none()
                && let Some(schema) = batches.first().map(RecordBatch::schema)
            {
                // Created empty first, apart from any coverage: when writers race to create a
                // table, delta-rs retries the loser on the winner's version without checking it
                // for conflicts, so a creating write would commit coverage read from nothing
                // and drop the winner's landed range. Only writes on an existing table carry
                // coverage, and those conflict on the app id.
                let created = table
                    .write(vec![RecordBatch::new_empty(schema)])
                    .with_save_mode(SaveMode::Append)
                    .await;
                if let Err(e) = created
                    && !is_conflict(&e)
                {
                    return Err(self.delta()(e));
                }
                continue;
            }
            let coverage = self.coverage_in(&table).await?;
            let metadata = metadata_for(&coverage);
            let next_version = table.version().map_or(0, |v| v as i64 + 1);
            let write = ReplaceWrite {
                batches: batches.clone(),
                range: (from, to),
                metadata,
                app: (writer_app_id, next_version),
            };
            match write.commit_on(table).await {
                Err(e) if is_conflict(&e) && attempt < ATTEMPTS => {
                    tracing::debug!(table = %self.location, attempt, error = %e, "view commit conflicted with a concurrent backfill; redoing it on the newer version");
                    // Spreads the retries of several shards apart.
                    let pause = 20 * u64::from(attempt) + u64::from(rand::random::<u8>() % 50);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(self.delta()(e)),
                Ok(table) => return Ok(table),
            }
        }
    }

    /// The view's coverage as of `table`'s version: the newest cutoff and landed ranges.
    async fn coverage_in(&self, table: &DeltaTable) -> Result<ViewCoverage> {
        if table.version().is_none() {
            return Ok(ViewCoverage::default());
        }
        let mut history = table.history(None);
        let (mut cutoff, mut landed) = (None, None);
        while let Some(commit) = history.try_next().await.map_err(self.delta())? {
            if cutoff.is_none() {
                cutoff = commit.info.get(CUTOFF_KEY).cloned();
            }
            if landed.is_none() {
                landed = commit.info.get(commit_key::LANDED_US).cloned();
            }
            if cutoff.is_some() && landed.is_some() {
                break;
            }
        }
        Ok(ViewCoverage::from_commit(cutoff.as_ref(), landed.as_ref()))
    }

    /// Refuses a view table another plan than `job`'s wrote (its newest commit that names a
    /// plan decides; a table written before fingerprints existed names none and passes).
    pub async fn check_view_plan(&self, job: &Job) -> Result<()> {
        let found = self
            .latest_commit_value(commit_key::PLAN_FINGERPRINT)
            .await?;
        let place = format!("the view table {}", self.location);
        job.check_plan(&place, found.as_ref().and_then(|v| v.as_str()))
            .map_err(|mismatch| Error::Plan(Box::new(mismatch)))
    }

    /// The backfill commits of this view table, newest first (as of the pinned version).
    pub async fn backfill_sources(&self) -> Result<Vec<BackfillSource>> {
        let table = self.open().await?;
        if table.version().is_none() {
            return Ok(Vec::new());
        }
        let mut history = table.history(None);
        let mut sources = Vec::new();
        while let Some(commit) = history.try_next().await.map_err(self.delta())? {
            let info = &commit.info;
            let is_backfill = info
                .get(commit_key::OPERATION)
                .and_then(|v| v.as_str())
                .is_some_and(|op| op == "backfill");
            let us = |key: &str| info.get(key).and_then(|v| v.as_i64());
            if let (true, Some(from_us), Some(to_us)) =
                (is_backfill, us(commit_key::FROM_US), us(commit_key::TO_US))
            {
                sources.push(BackfillSource {
                    from_us,
                    to_us,
                    raw_version: info.get(commit_key::RAW_VERSION).and_then(|v| v.as_u64()),
                });
            }
        }
        Ok(sources)
    }

    /// Deletes the table: every object under its location (`sluice retire`). Returns how
    /// many were deleted; a table that does not exist deletes nothing.
    pub async fn delete_all(&self) -> Result<usize> {
        use futures::StreamExt;
        let table = self.open().await?;
        let store = table.object_store();
        let objects = store.list(None).map_ok(|meta| meta.location).boxed();
        let deleted: Vec<object_store::path::Path> = store
            .delete_stream(objects)
            .try_collect()
            .await
            .map_err(|e| self.delta()(DeltaTableError::ObjectStore { source: e }))?;
        Ok(deleted.len())
    }

    /// The view's coverage now (see [`ViewCoverage`]).
    pub async fn coverage(&self) -> Result<ViewCoverage> {
        let table = self.open().await?;
        self.coverage_in(&table).await
    }

    /// The last version written by `app_id` (a Delta transaction action), if any.
    pub async fn transaction_version(&self, app_id: &str) -> Result<Option<i64>> {
        let table = self.open().await?;
        self.transaction_version_in(&table, app_id).await
    }

    async fn transaction_version_in(
        &self,
        table: &DeltaTable,
        app_id: &str,
    ) -> Result<Option<i64>> {
        if table.version().is_none() {
            return Ok(None);
        }
        let snapshot = table.snapshot().map_err(self.delta())?;
        snapshot
            .transaction_version(table.log_store().as_ref(), app_id)
            .await
            .map_err(self.delta())
    }

    /// What the raw table holds of each source partition: the progress of its newest
    /// raw-lake commits merged (a few, so that one sink's stale view of another's partitions
    /// never moves progress back). `None` when no raw-lake sink ever wrote the table.
    pub async fn lake_progress(&self) -> Result<Option<LakeProgress>> {
        /// Commits with progress merged, and commits looked at, at most.
        const MERGED: usize = 16;
        const LOOKED_AT: usize = 10_000;
        let table = self.open().await?;
        if table.version().is_none() {
            return Ok(None);
        }
        let mut history = table.history(Some(LOOKED_AT));
        let mut merged: Option<LakeProgress> = None;
        let mut found = 0;
        while let Some(commit) = history.try_next().await.map_err(self.delta())? {
            let Some(progress) = commit
                .info
                .get(commit_key::LAKE_PROGRESS)
                .and_then(LakeProgress::from_json)
            else {
                continue;
            };
            merged
                .get_or_insert_with(LakeProgress::default)
                .merge(&progress);
            found += 1;
            if found >= MERGED {
                break;
            }
        }
        Ok(merged)
    }

    /// The newest value of `key` in commit metadata, searching back through history.
    pub async fn latest_commit_value(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let table = self.open().await?;
        if table.version().is_none() {
            return Ok(None);
        }
        let mut history = table.history(None);
        while let Some(commit) = history.try_next().await.map_err(self.delta())? {
            if let Some(value) = commit.info.get(key) {
                return Ok(Some(value.clone()));
            }
        }
        Ok(None)
    }

    /// The table's version and newest commit (time and metadata); `None` before the first.
    pub async fn last_commit(&self) -> Result<Option<CommitSummary>> {
        let table = self.open().await?;
        let Some(version) = table.version() else {
            return Ok(None);
        };
        let mut history = table.history(Some(1));
        let commit = history.try_next().await.map_err(self.delta())?;
        Ok(Some(CommitSummary {
            version,
            timestamp_ms: commit.as_ref().and_then(|c| c.timestamp),
            info: commit.map(|c| c.info).unwrap_or_default(),
        }))
    }

    /// The batch view's cutoff (µs since the epoch), if a backfill has set one.
    pub async fn cutoff(&self) -> Result<Option<i64>> {
        Ok(self
            .latest_commit_value(CUTOFF_KEY)
            .await?
            .and_then(|v| v.as_i64()))
    }

    /// A DataFusion session with this table registered as `name` (strings as plain Utf8).
    pub async fn session(&self, name: &str) -> Result<SessionContext> {
        let table = self.open_existing().await?;
        let config = SessionConfig::new().set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        );
        let ctx = SessionContext::new_with_config(config);
        let provider = table
            .table_provider()
            .with_session(Arc::new(ctx.state()))
            .await
            .map_err(|source| self.datafusion_error(source))?;
        ctx.register_table(name, provider)
            .map_err(|source| self.datafusion_error(source))?;
        Ok(ctx)
    }

    /// Streams `columns` of the rows whose `time_column` is in `[from, to)` (µs; None = open).
    pub async fn scan(
        &self,
        columns: &[String],
        time_column: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<SendableRecordBatchStream> {
        let ctx = self.session("t").await?;
        let mut frame = ctx.table("t").await.map_err(|e| self.datafusion_error(e))?;
        let time = || Expr::Column(Column::from_name(time_column));
        if let Some(from) = from {
            frame = frame
                .filter(time().gt_eq(lit(micros(from))))
                .map_err(|e| self.datafusion_error(e))?;
        }
        if let Some(to) = to {
            frame = frame
                .filter(time().lt(lit(micros(to))))
                .map_err(|e| self.datafusion_error(e))?;
        }
        let selected: Vec<Expr> = columns
            .iter()
            .map(|c| Expr::Column(Column::from_name(c)))
            .collect();
        frame = frame
            .select(selected)
            .map_err(|e| self.datafusion_error(e))?;
        frame
            .execute_stream()
            .await
            .map_err(|e| self.datafusion_error(e))
    }

    /// Reads every row of the table.
    pub async fn read_all(&self) -> Result<Vec<RecordBatch>> {
        let ctx = self.session("t").await?;
        let frame = ctx.table("t").await.map_err(|e| self.datafusion_error(e))?;
        frame.collect().await.map_err(|e| self.datafusion_error(e))
    }

    /// The partial-state columns of every row of a view table, as partial batches of `plan`.
    pub async fn read_view_partials(&self, plan: &JobPlan) -> Result<Vec<RecordBatch>> {
        let Some(stage) = plan.aggregate() else {
            return Err(Error::Table {
                url: self.location.clone(),
                message: format!(
                    "job `{}` is stateless: its view has no partial states",
                    plan.job()
                ),
            });
        };
        let columns: Vec<String> = stage
            .partial_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let stream = self.scan(&columns, BUCKET_COLUMN, None, None).await?;
        let batches: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| self.datafusion_error(e))?;
        batches
            .into_iter()
            .map(|b| {
                // Delta has no unsigned integers and names list elements `element`: cast back.
                let columns = b
                    .columns()
                    .iter()
                    .zip(stage.partial_schema().fields())
                    .map(|(c, f)| crate::aggregate::conform(c.clone(), f))
                    .collect::<Result<Vec<_>>>()?;
                RecordBatch::try_new(stage.partial_schema().clone(), columns).map_err(|e| {
                    Error::Table {
                        url: self.location.clone(),
                        message: format!(
                            "view table does not have the job's partial-state layout: {e}"
                        ),
                    }
                })
            })
            .collect()
    }

    fn datafusion_error(&self, source: datafusion::error::DataFusionError) -> Error {
        Error::Table {
            url: self.location.clone(),
            message: source.to_string(),
        }
    }
}

/// A UTC microsecond timestamp literal.
/// A commit lost to a concurrent one (redone on the newer version), as opposed to a failure.
fn is_conflict(error: &DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    matches!(
        error,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)
            }
    )
}

pub fn micros(value: i64) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(value), Some(UTC.into()))
}

/// One attempt at a bucket-range replace (see [`TableLocation::replace_buckets`]).
struct ReplaceWrite<'a> {
    batches: Vec<RecordBatch>,
    range: (i64, i64),
    metadata: HashMap<String, serde_json::Value>,
    /// The Delta transaction action that serializes view writers: app id and version.
    app: (&'a str, i64),
}

impl ReplaceWrite<'_> {
    async fn commit_on(
        self,
        table: DeltaTable,
    ) -> std::result::Result<DeltaTable, DeltaTableError> {
        let exists = table.version().is_some();
        let properties = CommitProperties::default()
            .with_metadata(self.metadata)
            .with_application_transaction(Transaction::new(self.app.0, self.app.1));
        let builder = table.write(self.batches).with_commit_properties(properties);
        let builder = if exists {
            let (from, to) = self.range;
            let predicate = col(BUCKET_COLUMN)
                .gt_eq(lit(micros(from)))
                .and(col(BUCKET_COLUMN).lt(lit(micros(to))));
            builder
                .with_save_mode(SaveMode::Overwrite)
                .with_replace_where(predicate)
        } else {
            builder.with_save_mode(SaveMode::Append)
        };
        builder.await
    }
}
