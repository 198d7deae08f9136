//! Seed 003's checkpoint, dead-letter and metric tables, exactly as the seed defines them, and
//! the statements the sink runs on them.
//!
//! `ETLCheckpoint` is what makes the sink exactly once: the offsets a sink consumed commit in
//! the same PostgreSQL transaction as the rows they produced, so after a crash the table says
//! precisely where to resume. `ETLDeadLetter` mirrors `<job>.dlq`; `ETLJobMetric` takes the
//! daemon's periodic samples.
//!
//! The names are unquoted as in the seed, so they fold to lowercase (`etlcheckpoint`) and
//! resolve through `search_path` like any other unqualified table.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, SimpleQueryMessage, Transaction};

use super::error::PgError;
use super::table::{DDL_LOCK_KEY, ResultTable, column, quote_ident};

/// The seed's tables by the names PostgreSQL keeps (the seed's `ETLCheckpoint` unquoted folds
/// to `etlcheckpoint`).
pub const SEED_TABLES: [&str; 3] = ["etlcheckpoint", "etldeadletter", "etljobmetric"];

// The seed's DDL with two changes, both needed to run it: `offset` is a reserved word in
// PostgreSQL, so it is quoted as "offset" (the column is still named offset); and IF NOT EXISTS
// with named indexes (the names PostgreSQL would generate), so that init can run again.
pub const CHECKPOINT_DDL: &str = "CREATE TABLE IF NOT EXISTS ETLCheckpoint (
id BIGSERIAL PRIMARY KEY,
consumer_group TEXT NOT NULL,
topic TEXT NOT NULL,
partition INTEGER NOT NULL,
\"offset\" BIGINT NOT NULL,
committed_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
UNIQUE (consumer_group, topic, partition)
)";

pub const DEAD_LETTER_DDL: &str = "CREATE TABLE IF NOT EXISTS ETLDeadLetter (
id BIGSERIAL PRIMARY KEY,
topic TEXT NOT NULL,
partition INTEGER NOT NULL,
original_offset BIGINT NOT NULL,
error_type TEXT NOT NULL,
raw_message BYTEA NOT NULL,
created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)";

pub const DEAD_LETTER_INDEX_DDL: &str = "CREATE INDEX IF NOT EXISTS etldeadletter_topic_created_at_idx ON ETLDeadLetter (topic, created_at DESC)";

pub const JOB_METRIC_DDL: &str = "CREATE TABLE IF NOT EXISTS ETLJobMetric (
id BIGSERIAL PRIMARY KEY,
job_name TEXT NOT NULL,
processed_count BIGINT NOT NULL DEFAULT 0,
error_count BIGINT NOT NULL DEFAULT 0,
lag_seconds NUMERIC,
sampled_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)";

pub const JOB_METRIC_INDEX_DDL: &str = "CREATE INDEX IF NOT EXISTS etljobmetric_job_name_sampled_at_idx ON ETLJobMetric (job_name, sampled_at DESC)";

/// The target in the errors of the statements below, which are not told it (the caller adds
/// its own context).
const STORE: &str = "";

/// Creates the seed tables and their indexes where missing, in one transaction under the DDL
/// advisory lock, then [`check_seed_tables`]. Returns each table (named as in [`SEED_TABLES`])
/// with whether this call created it.
pub async fn init_seed_tables(
    client: &Client,
    target: &str,
) -> Result<Vec<(String, bool)>, PgError> {
    // One simple query is one implicit transaction: the lock is held until its end, and the
    // to_regclass probe runs after the lock, so it sees a concurrent creator's tables. Each
    // CREATE runs only for what is missing, because even CREATE … IF NOT EXISTS demands CREATE
    // on the schema (and CREATE INDEX ownership of the table) when everything already exists.
    let guarded =
        |probe: &str, ddl: &str| format!("IF to_regclass('{probe}') IS NULL THEN {ddl}; END IF;");
    let sql = format!(
        "SELECT pg_advisory_xact_lock({DDL_LOCK_KEY});\n\
         SELECT to_regclass('ETLCheckpoint') IS NULL AS sluice_seed_missing, \
         to_regclass('ETLDeadLetter') IS NULL, to_regclass('ETLJobMetric') IS NULL;\n\
         DO $sluice$ BEGIN\n{}\n{}\n{}\n{}\n{}\nEND $sluice$;",
        guarded("ETLCheckpoint", CHECKPOINT_DDL),
        guarded("ETLDeadLetter", DEAD_LETTER_DDL),
        guarded("etldeadletter_topic_created_at_idx", DEAD_LETTER_INDEX_DDL),
        guarded("ETLJobMetric", JOB_METRIC_DDL),
        guarded("etljobmetric_job_name_sampled_at_idx", JOB_METRIC_INDEX_DDL),
    );
    let messages = match client.simple_query(&sql).await {
        Ok(messages) => messages,
        Err(source) if source.code().is_some_and(|code| code.code() == "42501") => {
            return Err(no_create_privilege(client, target, source).await);
        }
        Err(source) => return Err(seed_creation_failed(target, source)),
    };
    let missing = messages
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row)
                if row
                    .columns()
                    .first()
                    .is_some_and(|c| c.name() == "sluice_seed_missing") =>
            {
                Some(
                    (0..SEED_TABLES.len())
                        .map(|index| matches!(row.try_get(index), Ok(Some("t"))))
                        .collect::<Vec<bool>>(),
                )
            }
            _ => None,
        })
        .unwrap_or_else(|| vec![false; SEED_TABLES.len()]);
    check_seed_tables(client, target).await?;
    Ok(SEED_TABLES
        .iter()
        .zip(missing)
        .map(|(name, created)| (name.to_string(), created))
        .collect())
}

/// Checks, at a sink's start, that the seed tables exist with the seed's columns and that the
/// connected role may use them (SELECT, INSERT and UPDATE on ETLCheckpoint; INSERT on the
/// others), so a missing grant fails now rather than at the first commit.
pub async fn check_seed_tables(client: &Client, target: &str) -> Result<(), PgError> {
    for table in seed_tables()? {
        table.check(client, target).await?;
    }
    Ok(())
}

/// The role may not create the missing tables: say which schema needs the grant.
async fn no_create_privilege(
    client: &Client,
    target: &str,
    source: tokio_postgres::Error,
) -> PgError {
    let who = client
        .query_one("SELECT current_user::text, current_schema()::text", &[])
        .await;
    match who {
        Ok(row) => {
            let role: Result<String, _> = row.try_get(0);
            let schema: Result<Option<String>, _> = row.try_get(1);
            match (role, schema) {
                (Ok(role), Ok(schema)) => PgError::MissingPrivilege {
                    table: SEED_TABLES.join(", "),
                    role,
                    privilege: "CREATE".to_string(),
                    on: format!(
                        "SCHEMA {}",
                        quote_ident(schema.as_deref().unwrap_or("public"))
                    ),
                },
                _ => seed_creation_failed(target, source),
            }
        }
        Err(_) => seed_creation_failed(target, source),
    }
}

fn seed_creation_failed(target: &str, source: tokio_postgres::Error) -> PgError {
    PgError::Query {
        target: target.to_string(),
        what: "creating the seed tables (ETLCheckpoint, ETLDeadLetter, ETLJobMetric)".to_string(),
        source,
    }
}

/// The columns Sluice writes to each seed table, as result tables, so their existing shape is
/// checked like any results table's. Lowercase names because `ResultTable` quotes them.
fn seed_tables() -> Result<[ResultTable; 3], PgError> {
    let timestamptz = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")));
    let checkpoint = Schema::new(vec![
        Field::new("consumer_group", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("committed_at", timestamptz.clone(), false),
    ]);
    let dead_letter = Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("original_offset", DataType::Int64, false),
        Field::new("error_type", DataType::Utf8, false),
        Field::new("raw_message", DataType::Binary, false),
        Field::new("created_at", timestamptz.clone(), false),
    ]);
    let job_metric = Schema::new(vec![
        Field::new("job_name", DataType::Utf8, false),
        Field::new("processed_count", DataType::Int64, false),
        Field::new("error_count", DataType::Int64, false),
        Field::new("lag_seconds", DataType::Decimal128(38, 9), true),
        Field::new("sampled_at", timestamptz, false),
    ]);
    let key = ["consumer_group", "topic", "partition"].map(str::to_string);
    Ok([
        ResultTable::new("etlcheckpoint", Arc::new(checkpoint), &key)?,
        ResultTable::new("etldeadletter", Arc::new(dead_letter), &[])?,
        ResultTable::new("etljobmetric", Arc::new(job_metric), &[])?,
    ])
}

/// Partition → offset (the next offset to read, Kafka's convention) committed for `group` on
/// `topic`. With `for_update`, the rows stay locked until the caller's transaction ends, which
/// fences off another owner committing the same partitions meanwhile.
pub async fn read_checkpoints(
    client: &impl GenericClient,
    group: &str,
    topic: &str,
    for_update: bool,
) -> Result<BTreeMap<i32, i64>, PgError> {
    let sql = if for_update {
        "SELECT partition, \"offset\" FROM ETLCheckpoint \
         WHERE consumer_group = $1 AND topic = $2 FOR UPDATE"
    } else {
        "SELECT partition, \"offset\" FROM ETLCheckpoint \
         WHERE consumer_group = $1 AND topic = $2"
    };
    let what = format!("reading ETLCheckpoint for group `{group}`, topic `{topic}`");
    let rows = client
        .query(sql, &[&group, &topic])
        .await
        .map_err(PgError::query(STORE, what.as_str()))?;
    let mut offsets = BTreeMap::new();
    for row in &rows {
        let partition: i32 = column(row, 0, STORE, &what)?;
        let offset: i64 = column(row, 1, STORE, &what)?;
        offsets.insert(partition, offset);
    }
    Ok(offsets)
}

/// Upserts the next offset to read of each partition in `offsets` (a partition given twice
/// keeps its last offset), in one statement, inside the caller's transaction.
pub async fn write_checkpoints(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), PgError> {
    if offsets.is_empty() {
        return Ok(());
    }
    // ON CONFLICT may touch a row once per statement, hence one entry per partition.
    let latest: BTreeMap<i32, i64> = offsets.iter().copied().collect();
    let partitions: Vec<i32> = latest.keys().copied().collect();
    let next: Vec<i64> = latest.values().copied().collect();
    tx.execute(
        "INSERT INTO ETLCheckpoint (consumer_group, topic, partition, \"offset\", committed_at) \
         SELECT $1::text, $2::text, u.p, u.o, now() FROM unnest($3::int4[], $4::int8[]) AS u(p, o) \
         ON CONFLICT (consumer_group, topic, partition) \
         DO UPDATE SET \"offset\" = EXCLUDED.\"offset\", committed_at = EXCLUDED.committed_at",
        &[&group, &topic, &partitions, &next],
    )
    .await
    .map_err(PgError::query(
        STORE,
        format!("writing ETLCheckpoint for group `{group}`, topic `{topic}`"),
    ))?;
    Ok(())
}

/// One `<job>.dlq` record as `ETLDeadLetter` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    /// The source topic the record failed on.
    pub topic: String,
    pub partition: i32,
    pub original_offset: i64,
    pub error_type: String,
    /// The record's value as it arrived, any bytes.
    pub raw_message: Vec<u8>,
    /// `None`: now.
    pub created_at: Option<DateTime<Utc>>,
}

/// Inserts `rows` with one binary COPY inside the caller's transaction; returns the number of
/// rows inserted.
pub async fn insert_dead_letters(
    tx: &Transaction<'_>,
    rows: &[DeadLetterRow],
) -> Result<u64, PgError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let what = format!("copying {} rows into ETLDeadLetter", rows.len());
    let sink = tx
        .copy_in(
            "COPY ETLDeadLetter (topic, partition, original_offset, error_type, raw_message, created_at) \
             FROM STDIN (FORMAT binary)",
        )
        .await
        .map_err(PgError::query(STORE, what.as_str()))?;
    let types = [
        Type::TEXT,
        Type::INT4,
        Type::INT8,
        Type::TEXT,
        Type::BYTEA,
        Type::TIMESTAMPTZ,
    ];
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    let now = Utc::now();
    for row in rows {
        let created_at = row.created_at.unwrap_or(now);
        writer
            .as_mut()
            .write(&[
                &row.topic,
                &row.partition,
                &row.original_offset,
                &row.error_type,
                &row.raw_message,
                &created_at,
            ])
            .await
            .map_err(PgError::query(STORE, what.as_str()))?;
    }
    writer
        .as_mut()
        .finish()
        .await
        .map_err(PgError::query(STORE, what.as_str()))
}

/// One sample of a job's counters for `ETLJobMetric`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobMetricSample {
    pub job_name: String,
    pub processed_count: i64,
    pub error_count: i64,
    /// How far behind the newest source record the job is; `None` when unknown.
    pub lag_seconds: Option<f64>,
    /// `None`: now.
    pub sampled_at: Option<DateTime<Utc>>,
}

pub async fn insert_job_metric(client: &Client, sample: &JobMetricSample) -> Result<(), PgError> {
    client
        .execute(
            "INSERT INTO ETLJobMetric (job_name, processed_count, error_count, lag_seconds, sampled_at) \
             VALUES ($1, $2, $3, $4::float8::numeric, COALESCE($5::timestamptz, now()))",
            &[
                &sample.job_name,
                &sample.processed_count,
                &sample.error_count,
                &sample.lag_seconds,
                &sample.sampled_at,
            ],
        )
        .await
        .map_err(PgError::query(
            STORE,
            format!("inserting an ETLJobMetric sample for job `{}`", sample.job_name),
        ))?;
    Ok(())
}
