//! JSON lines cut into chunks for the decoders, with the 1-based line number of every record.
//!
//! A line is what lies between two `\n`; one `\r` before the `\n` is dropped, and lines of
//! ASCII whitespace only are skipped (but counted, so line numbers stay those of the input). A
//! chunk ends at a line end once it holds [`Limits::chunk_bytes`] or [`Limits::chunk_lines`],
//! so a record never spans two chunks, however the reads fell.
//!
//! Memory stays bounded whatever the input: a line longer than the record limit is not kept.
//! Once it outgrows the limit only its length is counted to its end, and it comes out as an
//! `oversized` rejection with the same reason the decoders give (they judge the lines at or
//! just over the limit themselves), holding the line's first [`KEPT_OF_OVERSIZED`] bytes.

use std::io::{self, BufRead};

use sluice_core::{DivertReason, RecordError};

/// What is kept of an oversized line, for the rejection report.
pub const KEPT_OF_OVERSIZED: usize = 4096;

/// Where chunks are cut, and the longest record accepted.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub chunk_bytes: usize,
    pub chunk_lines: usize,
    pub max_record_bytes: usize,
}

/// A run of whole lines for one decode call.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The records' bytes, one after another (no newlines, no final `\r`).
    pub data: Vec<u8>,
    /// `(start, end)` of each record in `data`.
    pub spans: Vec<(usize, usize)>,
    /// The line number of each record.
    pub lines: Vec<usize>,
    /// Lines longer than the record limit, rejected here, in line order.
    pub oversized: Vec<Oversized>,
}

impl Chunk {
    fn with_capacity(limits: &Limits) -> Chunk {
        Chunk {
            // A chunk ends at the first line end past `chunk_bytes`: reallocated only for a
            // line longer than a chunk.
            data: Vec::with_capacity(
                limits.chunk_bytes + limits.max_record_bytes.min(limits.chunk_bytes) + 1,
            ),
            ..Chunk::default()
        }
    }

    /// The records, in line order.
    pub fn records(&self) -> Vec<&[u8]> {
        self.spans
            .iter()
            .map(|&(start, end)| &self.data[start..end])
            .collect()
    }

    /// Lines in it: records and oversized lines.
    pub fn len(&self) -> usize {
        self.spans.len() + self.oversized.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A line rejected for its length alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    pub line: usize,
    pub error: RecordError,
    /// Its first [`KEPT_OF_OVERSIZED`] bytes.
    pub kept: Vec<u8>,
}

/// Cuts the lines of `input` into chunks (see the module docs).
pub struct Chunker<R> {
    input: R,
    cutter: Cutter,
    /// BLAKE3 of every byte read, when the content is not hashed beforehand (stdin).
    hasher: Option<blake3::Hasher>,
    bytes: u64,
}

impl<R: BufRead> Chunker<R> {
    pub fn new(input: R, limits: Limits, hash: bool) -> Chunker<R> {
        Chunker {
            input,
            cutter: Cutter::new(limits),
            hasher: hash.then(blake3::Hasher::new),
            bytes: 0,
        }
    }

    /// The next chunk; `None` at the end of the input.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        let Chunker {
            input,
            cutter,
            hasher,
            bytes,
        } = self;
        loop {
            let block = match input.fill_buf() {
                Ok(block) => block,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if block.is_empty() {
                return Ok(cutter.finish());
            }
            let (used, full) = cutter.take_lines(block);
            if let Some(hasher) = hasher {
                hasher.update(&block[..used]);
            }
            *bytes += used as u64;
            input.consume(used);
            if full {
                return Ok(Some(cutter.cut()));
            }
        }
    }

    /// Bytes read (decompressed), and their BLAKE3 when hashing.
    pub fn summary(&self) -> (u64, Option<blake3::Hash>) {
        (
            self.bytes,
            self.hasher.as_ref().map(blake3::Hasher::finalize),
        )
    }
}

/// The line state across reads, apart from the input so a read's block can be borrowed while
/// the lines in it are taken.
struct Cutter {
    limits: Limits,
    chunk: Chunk,
    /// The number of the line being read.
    line: usize,
    /// Where the line being read starts in `chunk.data`.
    start: usize,
    /// The line being read outgrew the limit: only counted from there on.
    long: Option<LongLine>,
    /// Bytes of the oversized lines kept in `chunk`.
    kept: usize,
}

struct LongLine {
    len: usize,
    blank: bool,
    last: u8,
    kept: Vec<u8>,
}

impl LongLine {
    fn add(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        if self.blank {
            self.blank = bytes.iter().all(u8::is_ascii_whitespace);
        }
        if let Some(&last) = bytes.last() {
            self.last = last;
        }
        let room = KEPT_OF_OVERSIZED.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }
}

impl Cutter {
    fn new(limits: Limits) -> Cutter {
        Cutter {
            chunk: Chunk::with_capacity(&limits),
            limits,
            line: 1,
            start: 0,
            long: None,
            kept: 0,
        }
    }

    /// Takes the lines of `block` until the chunk is full: how many bytes it took, and whether
    /// the chunk is full (it then ends at a line end).
    fn take_lines(&mut self, block: &[u8]) -> (usize, bool) {
        let mut used = 0;
        while used < block.len() {
            match memchr::memchr(b'\n', &block[used..]) {
                Some(at) => {
                    self.take(&block[used..used + at]);
                    used += at + 1;
                    self.end_line();
                    if self.full() {
                        return (used, true);
                    }
                }
                None => {
                    self.take(&block[used..]);
                    used = block.len();
                }
            }
        }
        (used, false)
    }

    /// Part of the line being read.
    fn take(&mut self, bytes: &[u8]) {
        if let Some(long) = &mut self.long {
            long.add(bytes);
            return;
        }
        let so_far = self.chunk.data.len() - self.start;
        // One byte over the limit is still kept: it may be the `\r` dropped at the line end,
        // and a line one byte too long is the decoders' to reject.
        if so_far + bytes.len() <= self.limits.max_record_bytes.saturating_add(1) {
            self.chunk.data.extend_from_slice(bytes);
            return;
        }
        let line = &self.chunk.data[self.start..];
        let mut long = LongLine {
            len: line.len(),
            blank: line.iter().all(u8::is_ascii_whitespace),
            last: line.last().copied().unwrap_or(0),
            kept: line[..line.len().min(KEPT_OF_OVERSIZED)].to_vec(),
        };
        self.chunk.data.truncate(self.start);
        long.add(bytes);
        self.long = Some(long);
    }

    fn end_line(&mut self) {
        let line = self.line;
        self.line += 1;
        if let Some(long) = self.long.take() {
            if !long.blank {
                let len = long.len - usize::from(long.last == b'\r');
                self.kept += long.kept.len();
                self.chunk.oversized.push(Oversized {
                    line,
                    error: RecordError {
                        index: 0,
                        kind: DivertReason::Oversized,
                        field: None,
                        reason: format!(
                            "{len} bytes, the limit is {}",
                            self.limits.max_record_bytes
                        ),
                    },
                    kept: long.kept,
                });
            }
            return;
        }
        let data = &mut self.chunk.data;
        let mut end = data.len();
        if end > self.start && data[end - 1] == b'\r' {
            end -= 1;
        }
        if data[self.start..end].iter().all(u8::is_ascii_whitespace) {
            data.truncate(self.start);
        } else {
            data.truncate(end);
            self.chunk.spans.push((self.start, end));
            self.chunk.lines.push(line);
        }
        self.start = data.len();
    }

    fn full(&self) -> bool {
        self.chunk.data.len() + self.kept >= self.limits.chunk_bytes
            || self.chunk.len() >= self.limits.chunk_lines
    }

    fn cut(&mut self) -> Chunk {
        self.start = 0;
        self.kept = 0;
        std::mem::replace(&mut self.chunk, Chunk::with_capacity(&self.limits))
    }

    /// The end of the input: the last line (if it has no newline), and what is left.
    fn finish(&mut self) -> Option<Chunk> {
        if self.long.is_some() || self.chunk.data.len() > self.start {
            self.end_line();
        }
        if self.chunk.is_empty() {
            return None;
        }
        self.start = 0;
        self.kept = 0;
        Some(std::mem::take(&mut self.chunk))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Cursor};

    use super::*;

    const ROOMY: Limits = Limits {
        chunk_bytes: 1 << 20,
        chunk_lines: 1 << 20,
        max_record_bytes: 1 << 20,
    };

    /// Every chunk of `text` read `read_size` bytes at a time: (line, record) pairs per chunk,
    /// and the oversized rejections.
    fn chunks(
        text: &[u8],
        limits: Limits,
        read_size: usize,
    ) -> (Vec<Vec<(usize, String)>>, Vec<Oversized>) {
        let input = BufReader::with_capacity(read_size, Cursor::new(text.to_vec()));
        let mut chunker = Chunker::new(input, limits, true);
        let mut out = Vec::new();
        let mut oversized = Vec::new();
        while let Some(mut chunk) = chunker.next_chunk().unwrap() {
            assert!(!chunk.is_empty(), "no empty chunks");
            let records = chunk
                .records()
                .iter()
                .zip(&chunk.lines)
                .map(|(r, line)| (*line, String::from_utf8_lossy(r).into_owned()))
                .collect();
            out.push(records);
            oversized.append(&mut chunk.oversized);
        }
        assert!(
            chunker.next_chunk().unwrap().is_none(),
            "the end stays the end"
        );
        let (bytes, hash) = chunker.summary();
        assert_eq!(bytes, text.len() as u64);
        assert_eq!(hash, Some(blake3::hash(text)));
        (out, oversized)
    }

    fn flat(chunks: Vec<Vec<(usize, String)>>) -> Vec<(usize, String)> {
        chunks.into_iter().flatten().collect()
    }

    fn numbered(lines: &[(usize, &str)]) -> Vec<(usize, String)> {
        lines.iter().map(|(n, l)| (*n, l.to_string())).collect()
    }

    #[test]
    fn crlf_is_dropped_blank_lines_are_skipped_and_line_numbers_are_the_input_s() {
        let text = b"{\"a\":1}\r\n\r\n   \n{\"a\":2}\n\t\n{\"a\":3}\r";
        let (chunks, oversized) = chunks(text, ROOMY, 4096);
        assert_eq!(chunks.len(), 1);
        assert!(oversized.is_empty());
        assert_eq!(
            flat(chunks),
            numbered(&[(1, "{\"a\":1}"), (4, "{\"a\":2}"), (6, "{\"a\":3}")])
        );
    }

    #[test]
    fn only_one_cr_is_dropped_and_inner_crs_stay() {
        let (chunks, _) = chunks(b"x\r\r\ny\rz\n", ROOMY, 4096);
        assert_eq!(flat(chunks), numbered(&[(1, "x\r"), (2, "y\rz")]));
    }

    #[test]
    fn a_trailing_newline_adds_no_line_and_empty_input_gives_no_chunk() {
        let (chunks_, _) = chunks(b"a\nb\n", ROOMY, 4096);
        assert_eq!(flat(chunks_), numbered(&[(1, "a"), (2, "b")]));
        let (none, _) = chunks(b"", ROOMY, 4096);
        assert!(none.is_empty());
        let (blank, _) = chunks(b"\n \r\n", ROOMY, 4096);
        assert!(blank.is_empty());
    }

    #[test]
    fn the_same_lines_come_out_whatever_the_reads_and_chunk_sizes() {
        let mut text = Vec::new();
        let mut expected = Vec::new();
        for i in 1..=500usize {
            let line = match i % 7 {
                0 => String::new(),
                1 => format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 40)),
                _ => format!("{{\"n\":{i}}}"),
            };
            text.extend_from_slice(line.as_bytes());
            text.extend_from_slice(if i % 3 == 0 { b"\r\n" } else { b"\n" });
            if !line.is_empty() {
                expected.push((i, line));
            }
        }
        for read_size in [1, 2, 3, 7, 64, 4096] {
            for (chunk_bytes, chunk_lines) in [(1, 1000), (50, 1000), (1 << 20, 3), (1 << 20, 1000)]
            {
                let limits = Limits {
                    chunk_bytes,
                    chunk_lines,
                    max_record_bytes: 1 << 20,
                };
                let (chunks, _) = chunks(&text, limits, read_size);
                for chunk in &chunks {
                    assert!(chunk.len() <= chunk_lines);
                }
                if chunk_bytes == 1 {
                    assert_eq!(chunks.len(), expected.len(), "one record a chunk");
                }
                assert_eq!(
                    flat(chunks),
                    expected,
                    "read size {read_size}, chunks of {chunk_bytes} bytes / {chunk_lines} lines"
                );
            }
        }
    }

    #[test]
    fn lines_over_the_limit_are_rejected_with_their_number_and_length_without_being_kept() {
        let limits = Limits {
            chunk_bytes: 1 << 20,
            chunk_lines: 1000,
            max_record_bytes: 10,
        };
        let long = "y".repeat(10_000);
        let text = format!(
            "0123456789\n01234567890\n012345678901\r\n{long}\n{{}}\n          \r\n{}\nlast{long}",
            " ".repeat(50)
        );
        for read_size in [1, 5, 4096] {
            let (chunks, oversized) = chunks(text.as_bytes(), limits, read_size);
            // At the limit, or one over (the decoder's to judge), the line is kept whole.
            assert_eq!(
                flat(chunks),
                numbered(&[(1, "0123456789"), (2, "01234567890"), (5, "{}")]),
                "read size {read_size}"
            );
            let rejected: Vec<(usize, &str)> = oversized
                .iter()
                .map(|o| (o.line, o.error.reason.as_str()))
                .collect();
            assert_eq!(
                rejected,
                vec![
                    (3, "12 bytes, the limit is 10"),
                    (4, "10000 bytes, the limit is 10"),
                    (8, "10004 bytes, the limit is 10"),
                ],
                "whitespace-only long lines are blank, not oversized (read size {read_size})"
            );
            assert!(
                oversized
                    .iter()
                    .all(|o| o.error.kind == DivertReason::Oversized)
            );
            assert_eq!(
                oversized[1].kept,
                long.as_bytes()[..KEPT_OF_OVERSIZED].to_vec()
            );
            assert_eq!(oversized[0].kept, b"012345678901\r".to_vec());
        }
    }

    #[test]
    fn a_chunk_of_oversized_lines_still_ends() {
        let limits = Limits {
            chunk_bytes: 3 * KEPT_OF_OVERSIZED,
            chunk_lines: 1000,
            max_record_bytes: 10,
        };
        let text = format!("{}\n", "z".repeat(KEPT_OF_OVERSIZED + 1)).repeat(9);
        let (chunks, oversized) = chunks(text.as_bytes(), limits, 4096);
        assert_eq!(oversized.len(), 9);
        assert_eq!(chunks.len(), 3, "three oversized lines fill a chunk");
        let lines: Vec<usize> = oversized.iter().map(|o| o.line).collect();
        assert_eq!(lines, (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn without_hashing_there_is_no_hash() {
        let mut chunker = Chunker::new(Cursor::new(b"a\n".to_vec()), ROOMY, false);
        while chunker.next_chunk().unwrap().is_some() {}
        assert_eq!(chunker.summary(), (2, None));
    }
}
