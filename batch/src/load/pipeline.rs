//! The threads of one load, so that every core works and memory stays bounded.
//!
//! ```text
//! reader thread ──chunks──▶ decoder threads (up to MAX_DECODERS) ──batches──▶ writer (this task)
//!  read, decompress,          decoder.decode_records: the               Parquet encoding into
//!  cut lines (lines.rs)       same decoder and checks as the stream     the table, in line order
//! ```
//!
//! Chunks in flight are bounded by credits: the reader takes one before it reads a chunk and
//! the writer gives it back once the chunk is written, so at most `decoders + SPARE_CHUNKS`
//! chunks (each up to `CHUNK_BYTES` of lines, then their decoded rows) exist at any time,
//! whether the source, the decoders or the writer is the slowest. The writer takes the decoded
//! chunks back in line order, so rows land and rejections are reported in input order.
//!
//! The writer stopping (an error) ends the other threads: their channels close. A decoder that
//! panics turns into an error rather than a chunk that never comes.

use std::collections::BTreeMap;
use std::io;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use sluice_core::decode::SourceDecoder;
use sluice_core::lake::raw_rows;
use sluice_core::lake_writer::StreamingAppend;
use sluice_core::{Job, RecordError};

use super::input::{Content, Source};
use super::lines::{Chunk, Chunker, Limits};
use super::progress::{Progress, Ticker};
use super::{OnReject, Reject};
use crate::error::{BatchError, Result};

/// Decoder threads at most: past this the one Parquet writer is the bottleneck, and every
/// decoder adds chunks in flight.
pub const MAX_DECODERS: usize = 4;

/// Chunks in flight besides one per decoder: one being read, one waiting for the writer.
pub const SPARE_CHUNKS: usize = 2;

/// Decoder threads on this machine: one per core, at most [`MAX_DECODERS`].
pub fn decoders() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .clamp(1, MAX_DECODERS)
}

/// What a load streamed.
#[derive(Debug, Default)]
pub(crate) struct Streamed {
    pub rows: usize,
    pub rejected: usize,
    /// The rejections, when the caller keeps them.
    pub kept: Vec<(usize, RecordError)>,
    /// Content bytes read (decompressed) and their BLAKE3 when the chunker hashed them.
    pub bytes: u64,
    pub hash: Option<blake3::Hash>,
}

/// What one load streams, and how.
pub(crate) struct Stage<'a> {
    pub job: &'a Job,
    /// The input as named (for errors).
    pub path: &'a Path,
    /// Opened by the reader thread (stdin may keep it waiting).
    pub source: Source,
    pub limits: Limits,
    /// Hash the content while reading it (when it was not hashed beforehand).
    pub hash: bool,
    pub decoder: Arc<dyn SourceDecoder>,
    pub keep_rejected: bool,
    pub progress: &'a Progress,
}

struct ReadSummary {
    chunks: u64,
    bytes: u64,
    hash: Option<blake3::Hash>,
}

struct Decoded {
    seq: u64,
    batch: RecordBatch,
    rejects: Vec<Reject>,
}

type Chunks = Arc<Mutex<Receiver<(u64, Chunk)>>>;

/// Streams the lines of the stage's source into `append`, reporting each bad line to
/// `on_reject` in line order. Nothing is committed here.
pub(crate) async fn stream(
    stage: Stage<'_>,
    append: &mut StreamingAppend,
    on_reject: &mut OnReject<'_>,
) -> Result<Streamed> {
    let io_error = |source: io::Error| BatchError::Io {
        path: stage.path.to_path_buf(),
        source,
    };
    let workers = decoders();
    let in_flight = workers + SPARE_CHUNKS;
    let (credits, credit_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        // Cannot fail: the channel has room for every credit.
        let _ = credits.try_send(());
    }
    let (chunk_tx, chunk_rx) = sync_channel::<(u64, Chunk)>(in_flight);
    let (decoded_tx, mut decoded_rx) = tokio::sync::mpsc::channel::<Result<Decoded>>(in_flight);
    let (summary_tx, summary_rx) = std::sync::mpsc::channel::<io::Result<ReadSummary>>();

    let ticker = stage.progress.ticker();
    let (source, limits, hash) = (stage.source.clone(), stage.limits, stage.hash);
    std::thread::Builder::new()
        .name("lake-load-read".to_string())
        .spawn(move || {
            let read = source.open(ticker.counter()).and_then(|(content, _)| {
                let mut chunker = Chunker::new(content, limits, hash);
                let chunks = read_chunks(&mut chunker, &credit_rx, &chunk_tx, &ticker)?;
                let (bytes, hash) = chunker.summary();
                Ok(ReadSummary {
                    chunks,
                    bytes,
                    hash,
                })
            });
            let _ = summary_tx.send(read);
            // `chunk_tx` closes here, after the summary is sent: the decoders end after it.
            drop(chunk_tx);
        })
        .map_err(io_error)?;
    let chunk_rx: Chunks = Arc::new(Mutex::new(chunk_rx));
    for n in 0..workers {
        let (chunks, out, decoder) = (chunk_rx.clone(), decoded_tx.clone(), stage.decoder.clone());
        let job = stage.job.name().to_string();
        std::thread::Builder::new()
            .name(format!("lake-load-decode-{n}"))
            .spawn(move || decode_chunks(&job, decoder.as_ref(), &chunks, &out))
            .map_err(io_error)?;
    }
    // The batch channel closes once every decoder has ended.
    drop(decoded_tx);
    drop(chunk_rx);

    let mut streamed = Streamed::default();
    let mut pending: BTreeMap<u64, Decoded> = BTreeMap::new();
    let mut next = 0u64;
    while let Some(decoded) = decoded_rx.recv().await {
        let decoded = decoded?;
        pending.insert(decoded.seq, decoded);
        while let Some(decoded) = pending.remove(&next) {
            next += 1;
            for reject in decoded.rejects {
                streamed.rejected += 1;
                stage.progress.suspend(|| on_reject(&reject))?;
                if stage.keep_rejected {
                    streamed.kept.push((reject.line, reject.error));
                }
            }
            let rows = decoded.batch.num_rows();
            if rows > 0 {
                append
                    .write(raw_rows(stage.job, &decoded.batch, None)?)
                    .await?;
                streamed.rows += rows;
            }
            stage.progress.loaded(streamed.rows);
            // The chunk is written: the reader may read another.
            let _ = credits.try_send(());
        }
    }
    let summary = match summary_rx.try_recv() {
        Ok(summary) => summary.map_err(io_error)?,
        Err(_) => return Err(io_error(io::Error::other("the reading thread stopped"))),
    };
    if summary.chunks != next || !pending.is_empty() {
        return Err(io_error(io::Error::other(format!(
            "{} of {} chunks of lines came back from the decoders",
            next, summary.chunks
        ))));
    }
    streamed.bytes = summary.bytes;
    streamed.hash = summary.hash;
    Ok(streamed)
}

/// The reader thread: a chunk per credit, until the end of the input or the writer is gone.
fn read_chunks(
    chunker: &mut Chunker<Content>,
    credits: &Receiver<()>,
    chunks: &SyncSender<(u64, Chunk)>,
    ticker: &Ticker,
) -> io::Result<u64> {
    let mut seq = 0;
    while credits.recv().is_ok() {
        let Some(chunk) = chunker.next_chunk()? else {
            break;
        };
        ticker.tick();
        if chunks.send((seq, chunk)).is_err() {
            break;
        }
        seq += 1;
    }
    Ok(seq)
}

/// A decoder thread: chunks until there are no more or the writer is gone.
fn decode_chunks(
    job: &str,
    decoder: &dyn SourceDecoder,
    chunks: &Chunks,
    out: &tokio::sync::mpsc::Sender<Result<Decoded>>,
) {
    loop {
        let next = match chunks.lock() {
            Ok(chunks) => chunks.recv(),
            Err(_) => return,
        };
        let Ok((seq, chunk)) = next else {
            return;
        };
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| decode(decoder, seq, chunk)))
            .unwrap_or_else(|_| {
                Err(BatchError::Core(sluice_core::Error::Decode {
                    job: job.to_string(),
                    message: format!("the decoder panicked on chunk {seq} of the input"),
                }))
            });
        if out.blocking_send(decoded).is_err() {
            return;
        }
    }
}

/// A rejected line as a rejects file may hold it (its PII protected, or withheld).
fn redacted(decoder: &dyn SourceDecoder, line: &[u8]) -> Vec<u8> {
    decoder
        .redact(None, Some(line))
        .payload
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default()
}

/// One chunk's rows, and its bad lines (the decoder's and the oversized ones) in line order.
fn decode(decoder: &dyn SourceDecoder, seq: u64, mut chunk: Chunk) -> Result<Decoded> {
    let oversized = std::mem::take(&mut chunk.oversized);
    let records = chunk.records();
    let decoded = decoder.decode_records(&records)?;
    let mut rejects: Vec<Reject> = decoded
        .errors
        .into_iter()
        .map(|error| Reject {
            line: chunk.lines.get(error.index).copied().unwrap_or_default(),
            record: records
                .get(error.index)
                .map(|r| redacted(decoder, r))
                .unwrap_or_default(),
            error,
        })
        .collect();
    rejects.extend(oversized.into_iter().map(|o| Reject {
        line: o.line,
        error: o.error,
        record: redacted(decoder, &o.kept),
    }));
    rejects.sort_by_key(|r| r.line);
    Ok(Decoded {
        seq,
        batch: decoded.batch,
        rejects,
    })
}
