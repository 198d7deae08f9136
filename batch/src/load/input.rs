//! Where `lake load` reads from: a file or stdin (`-`), plain JSON lines or compressed with
//! gzip or zstd. Compression is told by the first bytes (gzip `1f 8b`, zstd `28 b5 2f fd`),
//! never by the name, so `orders.jsonl` that is really gzip loads too and a `.gz` that is plain
//! text is read as text. The content hash that makes a load idempotent is over the decompressed
//! lines, so a file loaded plain, compressed or through stdin is the same content.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Bytes read from the source, and handed on decompressed, at a time.
pub(crate) const BLOCK_BYTES: usize = 1 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The input of a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// `-` on the command line.
    Stdin,
}

impl Source {
    /// `-` is stdin, anything else a file.
    pub fn from_arg(path: &Path) -> Source {
        if path.as_os_str() == "-" {
            Source::Stdin
        } else {
            Source::File(path.to_path_buf())
        }
    }

    /// The source's bytes, decompressed when they are compressed, counting in `read` the bytes
    /// taken from the source itself (compressed or not: the progress through it).
    pub fn open(&self, read: Arc<AtomicU64>) -> io::Result<(Content, Compression)> {
        match self {
            Source::File(path) => decompressed(Counting::new(File::open(path)?, read)),
            Source::Stdin => decompressed(Counting::new(io::stdin(), read)),
        }
    }
}

/// Decompressed content, read a block at a time.
pub type Content = Box<dyn BufRead + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
}

impl Compression {
    /// What the first bytes of a source say it is.
    pub fn detect(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if prefix.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::Plain
        }
    }
}

/// `raw` decompressed as its first bytes say (gzip members and zstd frames may follow one
/// another, as `cat a.gz b.gz` makes).
pub fn decompressed<R: Read + Send + 'static>(mut raw: R) -> io::Result<(Content, Compression)> {
    // A pipe may hand over fewer bytes than the longest magic number in one read.
    let mut prefix = [0u8; ZSTD_MAGIC.len()];
    let mut have = 0;
    while have < prefix.len() {
        match raw.read(&mut prefix[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let compression = Compression::detect(&prefix[..have]);
    let raw = Cursor::new(prefix[..have].to_vec()).chain(raw);
    let content: Content = match compression {
        Compression::Plain => Box::new(BufReader::with_capacity(BLOCK_BYTES, raw)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            BLOCK_BYTES,
            flate2::read::MultiGzDecoder::new(raw),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            BLOCK_BYTES,
            zstd::stream::read::Decoder::new(raw)?,
        )),
    };
    Ok((content, compression))
}

/// BLAKE3 of `content` and its length, a block at a time; `each_block` runs after every block
/// (progress).
pub fn content_hash<R: BufRead + ?Sized>(
    content: &mut R,
    mut each_block: impl FnMut(),
) -> io::Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let block = match content.fill_buf() {
            Ok(block) => block,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if block.is_empty() {
            return Ok((hasher.finalize(), total));
        }
        hasher.update(block);
        let n = block.len();
        total += n as u64;
        content.consume(n);
        each_block();
    }
}

/// The app id of the Delta transaction action a load of content with this hash commits.
pub fn app_id(hash: &blake3::Hash) -> String {
    format!("sluice-load-{}", hash.to_hex())
}

/// What says a file was not changed between hashing it and loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    pub fn of(path: &Path) -> io::Result<FileStamp> {
        let metadata = std::fs::metadata(path)?;
        Ok(FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
        })
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R> Counting<R> {
    fn new(inner: R, read: Arc<AtomicU64>) -> Counting<R> {
        Counting { inner, read }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const TEXT: &[u8] = b"{\"a\":1}\n{\"a\":2}\r\n\n{\"a\":3}";

    fn read_all(mut content: Content) -> Vec<u8> {
        let mut out = Vec::new();
        content.read_to_end(&mut out).unwrap();
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn zstd_compress(bytes: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(bytes, 1).unwrap()
    }

    /// Hands over `step` bytes per read at most, as a pipe may.
    struct Trickle(Vec<u8>, usize, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len() - self.2);
            buf[..n].copy_from_slice(&self.0[self.2..self.2 + n]);
            self.2 += n;
            Ok(n)
        }
    }

    #[test]
    fn plain_gzip_and_zstd_are_told_by_their_first_bytes_and_read_back_the_same() {
        for (bytes, expected) in [
            (TEXT.to_vec(), Compression::Plain),
            (gzip(TEXT), Compression::Gzip),
            (zstd_compress(TEXT), Compression::Zstd),
        ] {
            let (content, found) = decompressed(Cursor::new(bytes)).unwrap();
            assert_eq!(found, expected);
            assert_eq!(read_all(content), TEXT, "{expected:?}");
        }
    }

    #[test]
    fn magic_bytes_arriving_one_at_a_time_are_still_recognised() {
        for (bytes, expected) in [
            (gzip(TEXT), Compression::Gzip),
            (zstd_compress(TEXT), Compression::Zstd),
        ] {
            let (content, found) = decompressed(Trickle(bytes, 1, 0)).unwrap();
            assert_eq!(found, expected);
            assert_eq!(read_all(content), TEXT);
        }
    }

    #[test]
    fn concatenated_gzip_members_and_zstd_frames_are_read_whole() {
        let (half, rest) = TEXT.split_at(9);
        let members = [gzip(half), gzip(rest)].concat();
        let (content, _) = decompressed(Cursor::new(members)).unwrap();
        assert_eq!(read_all(content), TEXT);
        let frames = [zstd_compress(half), zstd_compress(rest)].concat();
        let (content, _) = decompressed(Cursor::new(frames)).unwrap();
        assert_eq!(read_all(content), TEXT);
    }

    #[test]
    fn short_and_empty_inputs_are_plain() {
        for bytes in [&b""[..], &b"{"[..], &b"\x1f"[..]] {
            let (content, found) = decompressed(Cursor::new(bytes.to_vec())).unwrap();
            assert_eq!(found, Compression::Plain);
            assert_eq!(read_all(content), bytes);
        }
    }

    #[test]
    fn a_truncated_gzip_stream_is_an_error_not_a_short_read() {
        let mut bytes = gzip(TEXT);
        bytes.truncate(bytes.len() - 6);
        let (mut content, _) = decompressed(Cursor::new(bytes)).unwrap();
        let mut out = Vec::new();
        assert!(content.read_to_end(&mut out).is_err());
    }

    #[test]
    fn the_content_hash_is_over_the_decompressed_bytes() {
        let plain = content_hash(
            &mut decompressed(Cursor::new(TEXT.to_vec())).unwrap().0,
            || {},
        )
        .unwrap();
        assert_eq!(plain, (blake3::hash(TEXT), TEXT.len() as u64));
        let gz =
            content_hash(&mut decompressed(Cursor::new(gzip(TEXT))).unwrap().0, || {}).unwrap();
        assert_eq!(gz, plain);
        assert_eq!(
            app_id(&plain.0),
            format!("sluice-load-{}", blake3::hash(TEXT).to_hex())
        );
    }

    #[test]
    fn the_source_counter_counts_compressed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl.zst");
        let compressed = zstd_compress(TEXT);
        std::fs::write(&path, &compressed).unwrap();
        let read = Arc::new(AtomicU64::new(0));
        let (content, found) = Source::File(path).open(read.clone()).unwrap();
        assert_eq!(found, Compression::Zstd);
        assert_eq!(read_all(content), TEXT);
        assert_eq!(read.load(Ordering::Relaxed), compressed.len() as u64);
        assert_eq!(Source::from_arg(Path::new("-")), Source::Stdin);
    }
}
