//! `sluice lake load`: JSON lines → the job's raw Delta table, so the batch layer works before
//! (and without) the stream. The input is JSON lines whatever the topic's wire format (JSON or
//! Avro): the job's fields, by their source names (`from`). It may be a file or stdin (`-`),
//! plain or compressed with gzip or zstd ([`input`]).
//!
//! A load streams ([`pipeline`]): one thread reads and cuts lines into chunks ([`lines`]),
//! decoder threads (one per core, at most [`pipeline::MAX_DECODERS`]) decode chunks with the
//! stream's own JSON decoder, and the writer encodes Parquet files into the table as they fill
//! ([`sluice_core::lake_writer`]). Memory is bounded whatever the size of the input: at most
//! `decoders + 2` chunks of [`CHUNK_BYTES`] of lines are in flight with their decoded rows
//! (about 3 × [`CHUNK_BYTES`] each), plus one line of up to the record limit being read, plus
//! one Parquet row group (at most [`sluice_core::lake_writer::ROW_GROUP_BYTES`] encoded) being
//! built by the one writer and its uploads: about 100 MiB above the process's own, and a load
//! stays under 384 MiB of resident memory ([`PEAK_RSS_BOUND_MIB`], tested with a file of more
//! than twice that).
//!
//! Every good line lands in one commit, made at the end; bad lines are reported with their
//! line number, field and reason as they are met. The commit records a content hash as a Delta
//! transaction action so loading the same content again is a no-op rather than a duplicate. A
//! file is hashed before anything is written and skipped when already loaded; stdin is hashed
//! while it is read, and if it turns out to be loaded already nothing is committed and the files
//! written are deleted. A load that fails midway commits nothing and deletes what it wrote. The
//! hash is BLAKE3 of the decompressed content: a collision would silently skip a different
//! file, so it must be a cryptographic one.

pub mod input;
pub mod lines;
pub mod pipeline;
mod progress;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use sluice_core::decode::DEFAULT_MAX_RECORD_BYTES;
use sluice_core::lake::{TableLocation, commit_key, raw_schema};
use sluice_core::lake_writer::StreamingAppend;
use sluice_core::pii::PiiProtection;
use sluice_core::{Job, JsonDecoder, Lake, RecordError};

use self::input::{FileStamp, Source, app_id, content_hash};
use self::lines::Limits;
use self::pipeline::Stage;
use self::progress::Progress;
use crate::error::{BatchError, Result};

/// Lines are cut into chunks of about this many bytes for the decoders.
pub const CHUNK_BYTES: usize = 4 << 20;

/// At most this many lines a chunk (what the load decoded in one call before it streamed).
pub const CHUNK_LINES: usize = 65_536;

/// The peak resident memory of a `sluice lake load` process, whatever the input's size (with
/// the default record limit).
pub const PEAK_RSS_BOUND_MIB: u64 = 384;

/// How a load runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Lines longer than this many bytes are rejected as `oversized` (default: the stream's,
    /// [`DEFAULT_MAX_RECORD_BYTES`]).
    pub max_record_bytes: usize,
    /// Draw a progress bar on stderr (only when it is a terminal). Default: no.
    pub progress: bool,
    /// Keep every rejection in [`LoadReport::rejected`] (default: yes). A caller that handles
    /// them as they come turns this off, so memory does not grow with the bad lines.
    pub keep_rejected: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            progress: false,
            keep_rejected: true,
        }
    }
}

/// One rejected line, as it is met.
#[derive(Debug, Clone)]
pub struct Reject {
    /// 1-based, in the decompressed input.
    pub line: usize,
    pub error: RecordError,
    /// The line (without its newline); of an oversized line, its first
    /// [`lines::KEPT_OF_OVERSIZED`] bytes.
    pub record: Vec<u8>,
}

/// What is called with each rejected line, in line order.
pub type OnReject<'a> = dyn FnMut(&Reject) -> Result<()> + Send + 'a;

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The input as named (`-` for stdin).
    pub file: PathBuf,
    pub table: String,
    pub rows_loaded: usize,
    /// Bad lines: 1-based line number and what is wrong (empty unless
    /// [`LoadOptions::keep_rejected`]).
    pub rejected: Vec<(usize, RecordError)>,
    /// How many lines were rejected.
    pub rejected_lines: usize,
    /// Bytes of content read (decompressed); 0 when skipped before reading.
    pub content_bytes: u64,
    /// True when this exact content was loaded before (nothing committed).
    pub already_loaded: bool,
    pub table_version: Option<u64>,
}

/// Appends the records of a JSON-lines file (`-`: stdin) to `job`'s raw table, keeping the
/// rejections in the report.
pub async fn load_jsonl(job: &Job, lake: &Lake, file: &Path) -> Result<LoadReport> {
    load(job, lake, file, &LoadOptions::default(), &mut ignore).await
}

fn ignore(_: &Reject) -> Result<()> {
    Ok(())
}

/// Appends the records of `file` (a path, or `-` for stdin; plain, gzip or zstd) to `job`'s raw
/// table in one commit, calling `on_reject` with each bad line as it is met.
pub async fn load(
    job: &Job,
    lake: &Lake,
    file: &Path,
    options: &LoadOptions,
    on_reject: &mut OnReject<'_>,
) -> Result<LoadReport> {
    let source = Source::from_arg(file);
    let io_error = |source: io::Error| BatchError::Io {
        path: file.to_path_buf(),
        source,
    };
    let table = TableLocation::new(lake.raw_table(job));
    let mut report = LoadReport {
        file: file.to_path_buf(),
        table: table.location.clone(),
        rows_loaded: 0,
        rejected: Vec::new(),
        rejected_lines: 0,
        content_bytes: 0,
        already_loaded: false,
        table_version: None,
    };
    // A file is hashed first, and skipped before anything is written when already loaded.
    let hashed = match &source {
        Source::File(path) => {
            let stamp = FileStamp::of(path).map_err(io_error)?;
            let hash = hash_file(&source, options.progress, stamp.len)
                .await
                .map_err(io_error)?;
            let app_id = app_id(&hash);
            if table.transaction_version(&app_id).await?.is_some() {
                report.already_loaded = true;
                return Ok(report);
            }
            Some((app_id, stamp))
        }
        Source::Stdin => None,
    };

    // Files are JSON lines whatever the topic's format; the job's PII policies apply all the
    // same, before a row reaches the raw table.
    let decoder = sluice_core::decode::protect_with(
        Arc::new(JsonDecoder::new(job).with_max_record_bytes(options.max_record_bytes)),
        PiiProtection::for_job(job)?.map(PiiProtection::reading_json),
    );
    let mut append = StreamingAppend::open(&table, raw_schema(job)).await?;
    let total = hashed.as_ref().map(|(_, stamp)| stamp.len);
    let progress = Progress::new(options.progress, "lake load", total);
    let stage = Stage {
        job,
        path: file,
        source: source.clone(),
        limits: Limits {
            chunk_bytes: CHUNK_BYTES,
            chunk_lines: CHUNK_LINES,
            max_record_bytes: options.max_record_bytes,
        },
        // Stdin is hashed while it is read.
        hash: hashed.is_none(),
        decoder,
        keep_rejected: options.keep_rejected,
        progress: &progress,
    };
    let streamed = pipeline::stream(stage, &mut append, on_reject).await;
    drop(progress);
    let streamed = match streamed {
        Ok(streamed) => streamed,
        Err(e) => return Err(abandon(append, e).await),
    };
    report.rows_loaded = streamed.rows;
    report.rejected_lines = streamed.rejected;
    report.rejected = streamed.kept;
    report.content_bytes = streamed.bytes;

    let app_id = match (hashed, streamed.hash) {
        (Some((app_id, stamp)), _) => {
            // The file must still be what was hashed: the commit claims its hash.
            if FileStamp::of(file).ok().as_ref() != Some(&stamp) {
                let changed = io::Error::other("the file changed while it was being loaded");
                return Err(abandon(append, io_error(changed)).await);
            }
            app_id
        }
        (None, Some(hash)) => app_id(&hash),
        (None, None) => {
            let lost = io::Error::other("the content hash of the input was not computed");
            return Err(abandon(append, io_error(lost)).await);
        }
    };
    if report.rows_loaded == 0 {
        // Nothing to commit (and no file was written): not recorded as loaded, as before.
        return Ok(report);
    }
    if source == Source::Stdin {
        // Only now is the content's hash known: content loaded before commits nothing.
        let loaded_before = match append.transaction_version(&app_id).await {
            Ok(version) => version.is_some(),
            Err(e) => return Err(abandon(append, e.into()).await),
        };
        if loaded_before {
            let deleted = append.abort().await?;
            tracing::info!(table = %report.table, files = deleted, "stdin held content loaded before: nothing committed, its files deleted");
            report.already_loaded = true;
            report.rows_loaded = 0;
            return Ok(report);
        }
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
            json!(report.rejected_lines),
        ),
    ]);
    match append.commit(metadata, vec![(app_id.clone(), 0)]).await {
        Ok(version) => report.table_version = version,
        // A load of the same content that committed first makes this one a no-op (the commit
        // conflicted on the app id; its files are deleted).
        Err(e) => match table.transaction_version(&app_id).await {
            Ok(Some(_)) => {
                report.already_loaded = true;
                report.rows_loaded = 0;
            }
            _ => return Err(e.into()),
        },
    }
    Ok(report)
}

/// BLAKE3 of the file's content (decompressed), off the async threads.
async fn hash_file(source: &Source, progress: bool, len: u64) -> io::Result<blake3::Hash> {
    let bar = Progress::new(progress, "hashing", Some(len));
    let ticker = bar.ticker();
    let source = source.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        let (mut content, _) = source.open(ticker.counter())?;
        content_hash(&mut content, || ticker.tick())
    })
    .await
    .map_err(io::Error::other)??;
    Ok(hashed.0)
}

/// Deletes what a failed load wrote, and hands back its error.
async fn abandon(append: StreamingAppend, error: BatchError) -> BatchError {
    if let Err(e) = append.abort().await {
        tracing::warn!(error = %e, "could not delete the files of a failed load; no reader sees them");
    }
    error
}

#[cfg(test)]
mod tests {
    use sluice_core::fixture::{OrderGenerator, OrderShape, OrdersJob, REGION_PER_MINUTE_SQL};

    use super::*;

    /// Orders as JSON lines with bad lines at `bad` (1-based), several chunks long.
    fn orders_file(dir: &Path, lines: usize, bad: &[usize]) -> (PathBuf, usize) {
        let mut orders = OrderGenerator::new(5, OrderShape::default());
        let mut text = Vec::new();
        let mut good = 0;
        for line in 1..=lines {
            if bad.contains(&line) {
                text.extend_from_slice(b"{\"order_id\":");
            } else {
                text.extend_from_slice(&orders.next_order().to_json());
                good += 1;
            }
            text.push(b'\n');
        }
        let path = dir.join("orders.jsonl");
        std::fs::write(&path, text).unwrap();
        (path, good)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn rejections_come_in_line_order_across_chunks_and_a_second_load_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::resolve(Some(dir.path().to_str().unwrap()));
        let job = OrdersJob::default().job(REGION_PER_MINUTE_SQL);
        let bad = [2, 40_000, 40_001, 99_999, 120_000];
        let (file, good) = orders_file(dir.path(), 120_000, &bad);
        assert!(std::fs::metadata(&file).unwrap().len() > 2 * CHUNK_BYTES as u64);

        let mut seen = Vec::new();
        let mut on_reject = |reject: &Reject| -> Result<()> {
            seen.push(reject.line);
            Ok(())
        };
        let options = LoadOptions::default();
        let report = load(&job, &lake, &file, &options, &mut on_reject)
            .await
            .unwrap();
        assert_eq!(report.rows_loaded, good);
        assert_eq!(report.rejected_lines, bad.len());
        assert_eq!(seen, bad.to_vec(), "met in line order");
        let kept: Vec<usize> = report.rejected.iter().map(|(line, _)| *line).collect();
        assert_eq!(kept, bad.to_vec());
        assert_eq!(report.table_version, Some(0));
        assert_eq!(
            report.content_bytes,
            std::fs::metadata(&file).unwrap().len()
        );
        let rows: usize = TableLocation::new(lake.raw_table(&job))
            .read_all()
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, good);

        let again = load_jsonl(&job, &lake, &file).await.unwrap();
        assert!(again.already_loaded);
        assert_eq!((again.rows_loaded, again.table_version), (0, None));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_of_bad_lines_only_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::resolve(Some(dir.path().to_str().unwrap()));
        let job = OrdersJob::default().job(REGION_PER_MINUTE_SQL);
        let (file, good) = orders_file(dir.path(), 3, &[1, 2, 3]);
        assert_eq!(good, 0);
        let report = load_jsonl(&job, &lake, &file).await.unwrap();
        assert_eq!((report.rows_loaded, report.rejected.len()), (0, 3));
        assert_eq!(report.table_version, None);
        let table = TableLocation::new(lake.raw_table(&job));
        assert!(table.last_commit().await.unwrap().is_none(), "no table");
    }
}
