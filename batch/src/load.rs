//! `sluice lake load`: JSON-lines files → the job's raw Delta table, so the batch layer works
//! before (and without) the stream. Files are JSON lines whatever the topic's wire format
//! (JSON or Avro): the job's fields, by their source names (`from`).
//!
//! Every good line lands in one commit; bad lines are reported with their line number, field
//! and reason, and the commit records a content hash as a Delta transaction action so loading
//! the same file again is a no-op rather than a duplicate. The hash is BLAKE3: a collision
//! would silently skip a different file, so it must be a cryptographic one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use sluice_core::decode::SourceDecoder;
use sluice_core::lake::{TableLocation, commit_key, raw_rows};
use sluice_core::{Job, JsonDecoder, Lake, RecordError};

use crate::error::{BatchError, Result};

/// Lines decoded per batch.
const CHUNK_LINES: usize = 65_536;

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub file: PathBuf,
    pub table: String,
    pub rows_loaded: usize,
    /// Bad lines: 1-based line number and what is wrong.
    pub rejected: Vec<(usize, RecordError)>,
    /// True when this exact file content was loaded before (nothing written).
    pub already_loaded: bool,
    pub table_version: Option<u64>,
}

/// Appends the records of a JSON-lines file to `job`'s raw table.
pub async fn load_jsonl(job: &Job, lake: &Lake, file: &Path) -> Result<LoadReport> {
    let bytes = std::fs::read(file).map_err(|source| BatchError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let table = TableLocation::new(lake.raw_table(job));
    let app_id = format!("sluice-load-{}", blake3::hash(&bytes).to_hex());
    let mut report = LoadReport {
        file: file.to_path_buf(),
        table: table.location.clone(),
        rows_loaded: 0,
        rejected: Vec::new(),
        already_loaded: false,
        table_version: None,
    };
    if table.transaction_version(&app_id).await?.is_some() {
        report.already_loaded = true;
        return Ok(report);
    }
    // Files are JSON lines whatever the topic's wire format: the same fields, by their
    // source names, through the same checks.
    let json = JsonDecoder::new(job);
    let decoder: &dyn SourceDecoder = &json;
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut batches = Vec::new();
    for chunk in lines.chunks(CHUNK_LINES) {
        let records: Vec<&[u8]> = chunk.iter().map(|(_, line)| *line).collect();
        let decoded = decoder.decode_records(&records)?;
        for error in decoded.errors {
            report.rejected.push((chunk[error.index].0, error));
        }
        report.rows_loaded += decoded.batch.num_rows();
        if decoded.batch.num_rows() > 0 {
            batches.push(raw_rows(job, &decoded.batch, None)?);
        }
    }
    if batches.is_empty() {
        return Ok(report);
    }
    let metadata = HashMap::from([
        (commit_key::OPERATION.to_string(), json!("lake load")),
        (
            commit_key::FILE.to_string(),
            json!(file.display().to_string()),
        ),
        (commit_key::ROWS.to_string(), json!(report.rows_loaded)),
        (
            commit_key::REJECTED.to_string(),
            json!(report.rejected.len()),
        ),
    ]);
    let written = table.append(batches, metadata, vec![(app_id, 0)]).await?;
    report.table_version = written.version();
    Ok(report)
}
