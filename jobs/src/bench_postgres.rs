//! `sluice bench-postgres`: how fast the PostgreSQL sink's write path loads result rows with
//! exactly-once on, i.e. each batch in one transaction with its `ETLCheckpoint` update.
//!
//! The rows are shaped like seed 000's windowed results (window_start, window_end, region,
//! order_count, revenue). Measured in one run, against the same server:
//! - append: binary COPY straight into the table;
//! - upsert: COPY into the staging table, then `INSERT … ON CONFLICT DO UPDATE`, half of each
//!   batch's keys new and half replacing the previous batch's rows (re-emitted windows);
//! - the per-transaction overhead: a transaction holding only the checkpoint update;
//! - the peer: naive row-by-row `INSERT`s of a prepared statement, one transaction per 1000
//!   rows (checkpoint included), over at most 50 000 rows.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use clap::Args;
use sluice_core::spec::{SinkMode, redact_url};
use sluice_stream::postgres::connect::{Client, PgTarget};
use sluice_stream::postgres::copy::RowWriter;
use sluice_stream::postgres::seed_tables::{init_seed_tables, write_checkpoints};
use sluice_stream::postgres::table::{ResultTable, quote_literal};

const APPEND_TABLE: &str = "sluice_bench_append";
const UPSERT_TABLE: &str = "sluice_bench_upsert";
const TOPIC: &str = "sluice.bench.results";
/// 2024-05-01T00:00:00Z: where the synthetic windows start.
const BASE_MICROS: i64 = 1_714_521_600_000_000;
const MINUTE_MICROS: i64 = 60_000_000;
const REGIONS: u64 = 1000;
const NAIVE_MAX_ROWS: usize = 50_000;
const NAIVE_ROWS_PER_TXN: usize = 1000;
const OVERHEAD_TXNS: usize = 500;
/// The target for append.
const TARGET_ROWS_PER_SECOND: f64 = 100_000.0;

/// `sluice bench-postgres --help`'s epilogue.
pub const BENCH_HELP: &str = "Examples:
  sluice bench-postgres --url postgres://root@127.0.0.1:5432/test
  sluice bench-postgres --url postgres://root@127.0.0.1:5432/test --rows 200000 --batch-rows 5000

Each batch is one transaction holding its rows and its ETLCheckpoint update, as the sink
commits. Tables sluice_bench_append and sluice_bench_upsert are dropped first and at the end.
Rows: append (binary COPY), upsert (COPY into a staging table, then INSERT ... ON CONFLICT,
half the keys new), checkpoint only (the per-transaction cost of exactly-once), and the naive
peer (a prepared INSERT per row, a transaction per 1000 rows, at most 50000 rows). Build with
--release for representative figures.";

#[derive(Args)]
pub struct BenchPostgresArgs {
    /// The database: postgres://user[:password]@host:port/database. Its tables
    /// sluice_bench_append and sluice_bench_upsert are dropped and recreated.
    #[arg(long, env = "SLUICE_POSTGRES_URL", hide_env_values = true)]
    pub url: String,
    /// A file whose first line is the password (when the URL has none).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Result rows written in each of the append and upsert runs.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Rows per batch, i.e. per transaction.
    #[arg(long, default_value_t = 10_000)]
    pub batch_rows: usize,
}

/// Hand-written: a derived one would print the URL's password.
impl fmt::Debug for BenchPostgresArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BenchPostgresArgs")
            .field("url", &redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("rows", &self.rows)
            .field("batch_rows", &self.batch_rows)
            .finish()
    }
}

/// One line of the report.
pub struct BenchRow {
    pub mode: &'static str,
    pub rows: usize,
    pub transactions: usize,
    pub seconds: f64,
}

impl BenchRow {
    fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows as f64 / self.seconds
        } else {
            f64::INFINITY
        }
    }

    fn ms_per_transaction(&self) -> f64 {
        self.seconds * 1000.0 / self.transactions.max(1) as f64
    }
}

pub async fn run(args: BenchPostgresArgs) -> anyhow::Result<ExitCode> {
    let rows = args.rows.max(1);
    let batch_rows = args.batch_rows.clamp(1, rows);
    let target = PgTarget::from_url(&args.url, args.password_file.as_deref())?;
    let mut client = target.connect().await?;
    init_seed_tables(&client, target.redacted()).await?;
    let group = format!("sluice-bench-{}", std::process::id());
    let measured = measure(&mut client, &target, &group, rows, batch_rows).await;
    // Cleaned up whether or not the run got through.
    let cleanup = client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {APPEND_TABLE}; DROP TABLE IF EXISTS {UPSERT_TABLE}; \
             DELETE FROM ETLCheckpoint WHERE consumer_group = {}",
            quote_literal(&group)
        ))
        .await;
    let report = measured?;
    cleanup?;
    print_table(target.redacted(), batch_rows, &report);
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    client: &mut Client,
    target: &PgTarget,
    group: &str,
    rows: usize,
    batch_rows: usize,
) -> anyhow::Result<Vec<BenchRow>> {
    let schema = result_schema();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {APPEND_TABLE}; DROP TABLE IF EXISTS {UPSERT_TABLE}"
        ))
        .await?;
    let mut report = Vec::new();

    let append = ResultTable::new(APPEND_TABLE, schema.clone(), &[])?;
    append.ensure(client, target.redacted()).await?;
    let writer = RowWriter::new(append)?.with_target(target.redacted());
    writer.prepare(client).await?;
    let batches = (0..rows.div_ceil(batch_rows))
        .map(|i| {
            let start = (i * batch_rows) as u64;
            let end = ((i + 1) * batch_rows).min(rows) as u64;
            result_batch(&schema, start..end)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    report.push(write_all(client, &writer, &batches, SinkMode::Append, group, "append").await?);
    drop(batches);

    let key = ["region", "window_start", "window_end"].map(str::to_string);
    let upsert = ResultTable::new(UPSERT_TABLE, schema.clone(), &key)?;
    upsert.ensure(client, target.redacted()).await?;
    let writer = RowWriter::new(upsert)?.with_target(target.redacted());
    writer.prepare(client).await?;
    // Batch i holds keys [i·half, i·half + batch): the first half re-emits the previous
    // batch's second half, the second half is new.
    let half = (batch_rows / 2).max(1);
    let mut batches = Vec::new();
    let mut written = 0;
    let mut index = 0;
    while written < rows {
        let len = batch_rows.min(rows - written);
        let start = (index * half) as u64;
        batches.push(result_batch(&schema, start..start + len as u64)?);
        written += len;
        index += 1;
    }
    report.push(write_all(client, &writer, &batches, SinkMode::Upsert, group, "upsert").await?);
    drop(batches);

    report.push(checkpoint_only(client, group).await?);
    report.push(naive_inserts(client, group, rows.min(NAIVE_MAX_ROWS)).await?);
    Ok(report)
}

/// Each batch in its own transaction with its checkpoint, as the sink commits.
async fn write_all(
    client: &mut Client,
    writer: &RowWriter,
    batches: &[RecordBatch],
    mode: SinkMode,
    group: &str,
    label: &'static str,
) -> anyhow::Result<BenchRow> {
    let topic = format!("{TOPIC}.{label}");
    let started = Instant::now();
    let mut next_offset = 0_i64;
    let mut rows = 0;
    for batch in batches {
        let tx = client.transaction().await?;
        writer.write(&tx, batch, mode).await?;
        next_offset += batch.num_rows() as i64;
        write_checkpoints(&tx, group, &topic, &[(0, next_offset)]).await?;
        tx.commit().await?;
        rows += batch.num_rows();
    }
    Ok(BenchRow {
        mode: label,
        rows,
        transactions: batches.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What exactly-once costs per transaction on its own: BEGIN, the checkpoint upsert, COMMIT.
async fn checkpoint_only(client: &mut Client, group: &str) -> anyhow::Result<BenchRow> {
    let topic = format!("{TOPIC}.overhead");
    let started = Instant::now();
    for offset in 1..=OVERHEAD_TXNS {
        let tx = client.transaction().await?;
        write_checkpoints(&tx, group, &topic, &[(0, offset as i64)]).await?;
        tx.commit().await?;
    }
    Ok(BenchRow {
        mode: "checkpoint only",
        rows: 0,
        transactions: OVERHEAD_TXNS,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The peer: one prepared INSERT per row, a transaction (with its checkpoint) per 1000 rows.
async fn naive_inserts(client: &mut Client, group: &str, rows: usize) -> anyhow::Result<BenchRow> {
    client
        .batch_execute(&format!("TRUNCATE {APPEND_TABLE}"))
        .await?;
    let insert = client
        .prepare(&format!(
            "INSERT INTO {APPEND_TABLE} (window_start, window_end, region, order_count, revenue) \
             VALUES ($1, $2, $3, $4, $5)"
        ))
        .await?;
    let values: Vec<ResultRow> = (0..rows as u64).map(result_row).collect();
    let topic = format!("{TOPIC}.naive");
    let started = Instant::now();
    let mut transactions = 0;
    for (chunk_index, chunk) in values.chunks(NAIVE_ROWS_PER_TXN).enumerate() {
        let tx = client.transaction().await?;
        for row in chunk {
            let window_start = timestamp(row.window_start)?;
            let window_end = timestamp(row.window_end)?;
            tx.execute(
                &insert,
                &[
                    &window_start,
                    &window_end,
                    &row.region,
                    &row.order_count,
                    &row.revenue,
                ],
            )
            .await?;
        }
        let next_offset = ((chunk_index + 1) * NAIVE_ROWS_PER_TXN).min(rows) as i64;
        write_checkpoints(&tx, group, &topic, &[(0, next_offset)]).await?;
        tx.commit().await?;
        transactions += 1;
    }
    Ok(BenchRow {
        mode: "naive INSERT per row",
        rows,
        transactions,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn result_schema() -> SchemaRef {
    let window = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")));
    Arc::new(Schema::new(vec![
        Field::new("window_start", window.clone(), false),
        Field::new("window_end", window, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("order_count", DataType::Int64, false),
        Field::new("revenue", DataType::Float64, false),
    ]))
}

/// The result row of key `id`: region `id % 1000`, the one-minute window `id / 1000`, so
/// distinct ids are distinct keys.
struct ResultRow {
    window_start: i64,
    window_end: i64,
    region: String,
    order_count: i64,
    revenue: f64,
}

fn result_row(id: u64) -> ResultRow {
    let window = (id / REGIONS) as i64;
    let window_start = BASE_MICROS + window * MINUTE_MICROS;
    ResultRow {
        window_start,
        window_end: window_start + MINUTE_MICROS,
        region: format!("region-{:03}", id % REGIONS),
        order_count: (id % 97 + 1) as i64,
        revenue: (id.wrapping_mul(7919) % 1_000_000) as f64 / 100.0,
    }
}

fn result_batch(schema: &SchemaRef, ids: std::ops::Range<u64>) -> anyhow::Result<RecordBatch> {
    let rows: Vec<ResultRow> = ids.map(result_row).collect();
    let window_start: ArrayRef = Arc::new(
        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.window_start))
            .with_timezone("UTC"),
    );
    let window_end: ArrayRef = Arc::new(
        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.window_end))
            .with_timezone("UTC"),
    );
    let region: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.region.as_str()),
    ));
    let order_count: ArrayRef = Arc::new(Int64Array::from_iter_values(
        rows.iter().map(|r| r.order_count),
    ));
    let revenue: ArrayRef = Arc::new(Float64Array::from_iter_values(
        rows.iter().map(|r| r.revenue),
    ));
    let columns = vec![window_start, window_end, region, order_count, revenue];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn timestamp(micros: i64) -> anyhow::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| anyhow::anyhow!("{micros} µs is out of chrono's range"))
}

pub fn print_table(target: &str, batch_rows: usize, report: &[BenchRow]) {
    println!(
        "sluice bench-postgres: {target}, batches of {batch_rows} rows, exactly-once (each transaction commits its ETLCheckpoint row)"
    );
    println!(
        "{:<22} {:>10} {:>13} {:>10} {:>12} {:>10}",
        "mode", "rows", "transactions", "seconds", "rows/s", "ms/txn"
    );
    for row in report {
        let rate = if row.rows == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", row.rows_per_second())
        };
        println!(
            "{:<22} {:>10} {:>13} {:>10.3} {:>12} {:>10.3}",
            row.mode,
            row.rows,
            row.transactions,
            row.seconds,
            rate,
            row.ms_per_transaction()
        );
    }
    if let Some(append) = report.iter().find(|row| row.mode == "append") {
        let verdict = if append.rows_per_second() >= TARGET_ROWS_PER_SECOND {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "target >= {TARGET_ROWS_PER_SECOND:.0} rows/s append: {verdict} ({:.0} rows/s)",
            append.rows_per_second()
        );
    }
}
