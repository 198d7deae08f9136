//! `sluice-e2e`: end-to-end tests across Sluice's layers (in `tests/tests/`), their golden
//! files (`tests/golden/`), the Python interop tests (`tests/python/`), and the helpers here.

pub mod corpus;
pub mod http;
pub mod kafka;
pub mod orders;
pub mod postgres;
pub mod proxy;
pub mod s3;
pub mod serve;
pub mod sinks;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use sluice_core::rows::{sorted, to_json_lines};
use sluice_core::{Job, Lake};

/// A path relative to the repository root.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// One of `jobs/examples/*.toml` by name.
pub fn example_job(name: &str) -> Job {
    let path = repo_path(&format!("jobs/examples/{name}.toml"));
    Job::from_file(&path).unwrap_or_else(|e| panic!("example job {name}: {e}"))
}

/// A lake in a fresh temporary directory (kept alive by the returned guard).
pub fn temp_lake() -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().expect("temp dir");
    let lake = Lake::resolve(Some(dir.path().to_str().expect("utf-8 temp path")));
    (dir, lake)
}

/// Rows as sorted JSON lines with timestamps as integers, for exact comparisons of results
/// computed by different engines (which may label time zones differently).
pub fn canonical_rows(batches: &[RecordBatch]) -> Vec<String> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    let fields: Vec<Field> = first
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let data_type = match f.data_type() {
                DataType::Timestamp(_, _) => DataType::Int64,
                DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                other => other.clone(),
            };
            Field::new(f.name(), data_type, true)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let converted: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let columns: Vec<ArrayRef> = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| cast(c, f.data_type()).expect("cast for comparison"))
                .collect();
            RecordBatch::try_new(schema.clone(), columns).expect("comparison batch")
        })
        .collect();
    let all = sorted(&schema, &converted).expect("sort");
    let text = String::from_utf8(to_json_lines(&[all]).expect("json")).expect("utf-8");
    text.lines().map(str::to_string).collect()
}

/// The SQL condition that `column` lies in one of `ranges` (each `[from, to)`), for a
/// reference query over backfilled ranges.
pub fn in_ranges_sql(column: &str, ranges: &[(i64, i64)]) -> String {
    ranges
        .iter()
        .map(|(from, to)| format!("({column} >= {from} AND {column} < {to})"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The columns `names` of each batch (a view's result columns, without its partial states).
pub fn project_columns(batches: &[RecordBatch], names: &[&str]) -> Vec<RecordBatch> {
    batches
        .iter()
        .map(|b| {
            let schema = b.schema();
            let indices: Vec<usize> = names
                .iter()
                .map(|n| {
                    schema
                        .index_of(n)
                        .unwrap_or_else(|_| panic!("no column {n}"))
                })
                .collect();
            b.project(&indices).expect("projecting columns")
        })
        .collect()
}

/// `sluice backfill` of `[from, to)` over raw rows appended by a test, which record no lake
/// progress (so the range is not clamped to completeness); panics naming `context`.
pub async fn backfill_range(
    job: &Job,
    lake: &Lake,
    (from, to): (i64, i64),
    context: &str,
) -> sluice_batch::BackfillReport {
    let request = sluice_batch::BackfillRequest {
        from: Some(from),
        to: Some(to),
        allow_incomplete: true,
        ..sluice_batch::BackfillRequest::default()
    };
    sluice_batch::backfill(job, lake, None, request)
        .await
        .unwrap_or_else(|e| panic!("backfill of [{from}, {to}): {e}; {context}"))
}

/// Rows of `job`'s raw Delta table in the lake at `lake` (0 while it does not exist).
pub fn raw_rows(lake: &std::path::Path, job: &Job) -> usize {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let lake = Lake::resolve(Some(&lake.to_string_lossy()));
    let table = sluice_core::lake::TableLocation::new(lake.raw_table(job));
    match runtime.block_on(table.read_all()) {
        Ok(batches) => batches.iter().map(RecordBatch::num_rows).sum(),
        Err(_) => 0,
    }
}

/// Waits (up to `limit`) until the raw-lake sink has landed `expected` rows, and not one more.
pub fn wait_raw_rows(
    lake: &std::path::Path,
    job: &Job,
    expected: usize,
    limit: std::time::Duration,
) {
    kafka::wait_until(limit, "the raw-lake sink to land every record", || {
        raw_rows(lake, job) >= expected
    });
    assert_eq!(raw_rows(lake, job), expected, "rows in the raw table");
}
