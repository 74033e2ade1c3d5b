//! Token shards: the trainer's input, one file per shard, in the format `docs/token-shards.md`
//! documents.
//!
//! ```text
//! header (64 bytes, little-endian):
//!   0  magic     b"PFTOKSHD"
//!   8  version   u32 = 1
//!   12 width     u32: bytes per token, 2 (vocabularies up to 65,536) or 4
//!   16 tokens    u64
//!   24 documents u64
//!   32 flags     u32: bit 0, a loss mask follows the index
//!   36 vocab     u32: the tokenizer's vocabulary size (every token is below it)
//!   40 reserved  24 zero bytes
//! tokens:   `tokens` x `width` bytes, little-endian
//! index:    (`documents` + 1) x u64, the token offset where each document starts, then `tokens`
//! mask:     ceil(`tokens` / 8) bytes; bit i (least significant first) is 1 when token i counts in
//!           the loss (a chat's assistant turns), 0 when it does not (the user's turns)
//! ```
//!
//! A shard is written whole under a temporary name and renamed when complete
//! ([`corpus::atomic`]); its size and xxh3 go into the manifest, which a reader checks first.

use corpus::atomic::{AtomicFile, Written};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"PFTOKSHD";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 64;

/// A shard that is not what it should be.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Corpus(#[from] corpus::Error),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ShardError + '_ {
    move |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, message: impl Into<String>) -> ShardError {
    ShardError::Bad {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The bytes per token a vocabulary needs.
pub fn width_for(vocab: u32) -> u32 {
    if vocab <= 1 << 16 {
        2
    } else {
        4
    }
}

/// Builds one shard: in memory, written whole by [`ShardWriter::write`] (its size is bounded by
/// the caller's shard size); or streamed to its file as documents come, when the caller knows
/// the shard's counts beforehand ([`ShardWriter::streaming`]): then only the document index and
/// the mask bits (a ninth of a byte per token or less) are held until [`ShardWriter::finish`].
pub struct ShardWriter {
    width: u32,
    vocab: u32,
    tokens: Vec<u8>,
    count: u64,
    index: Vec<u64>,
    mask: Option<Vec<u8>>,
    stream: Option<Stream>,
}

/// A streamed shard's file and the counts its header promised.
struct Stream {
    path: PathBuf,
    file: AtomicFile,
    tokens: u64,
    documents: u64,
}

/// Token bytes buffered before a streamed shard writes them.
const STREAM_BUFFER: usize = 1 << 20;

fn header(width: u32, tokens: u64, documents: u64, masked: bool, vocab: u32) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&width.to_le_bytes());
    h[16..24].copy_from_slice(&tokens.to_le_bytes());
    h[24..32].copy_from_slice(&documents.to_le_bytes());
    h[32..36].copy_from_slice(&(masked as u32).to_le_bytes());
    h[36..40].copy_from_slice(&vocab.to_le_bytes());
    h
}

impl ShardWriter {
    /// A shard for a vocabulary of `vocab` tokens; `with_mask`: documents carry loss masks.
    pub fn new(vocab: u32, with_mask: bool) -> ShardWriter {
        ShardWriter {
            width: width_for(vocab),
            vocab,
            tokens: Vec::new(),
            count: 0,
            index: vec![0],
            mask: with_mask.then(Vec::new),
            stream: None,
        }
    }

    /// A shard of exactly `tokens` tokens in `documents` documents, streamed to `path` (under a
    /// temporary name until [`ShardWriter::finish`]).
    pub fn streaming(
        path: &Path,
        vocab: u32,
        with_mask: bool,
        tokens: u64,
        documents: u64,
    ) -> Result<ShardWriter, ShardError> {
        let mut w = ShardWriter::new(vocab, with_mask);
        let mut file = AtomicFile::create(path)?;
        file.write_all(&header(w.width, tokens, documents, with_mask, vocab))
            .map_err(io(path))?;
        w.stream = Some(Stream {
            path: path.to_path_buf(),
            file,
            tokens,
            documents,
        });
        Ok(w)
    }

    /// Tokens so far.
    pub fn tokens(&self) -> u64 {
        self.count
    }

    pub fn documents(&self) -> u64 {
        self.index.len() as u64 - 1
    }

    /// Adds a document; `mask` (one flag per token; all counted when `None`) only in a shard
    /// made `with_mask`. A token outside the vocabulary is refused.
    pub fn push(&mut self, ids: &[u32], mask: Option<&[bool]>) -> Result<(), String> {
        if let Some(&id) = ids.iter().find(|&&id| id >= self.vocab) {
            return Err(format!(
                "token {id} is outside the vocabulary of {}",
                self.vocab
            ));
        }
        if let Some(m) = mask {
            if m.len() != ids.len() {
                return Err(format!(
                    "a loss mask of {} flags for {} tokens",
                    m.len(),
                    ids.len()
                ));
            }
        }
        if let Some(bits) = &mut self.mask {
            for (k, _) in ids.iter().enumerate() {
                let i = self.count + k as u64;
                if i.is_multiple_of(8) {
                    bits.push(0);
                }
                if mask.is_none_or(|m| m[k]) {
                    if let Some(last) = bits.last_mut() {
                        *last |= 1 << (i % 8);
                    }
                }
            }
        } else if mask.is_some() {
            return Err("a loss mask for a shard made without masks".into());
        }
        match self.width {
            2 => self
                .tokens
                .extend(ids.iter().flat_map(|&id| (id as u16).to_le_bytes())),
            _ => self
                .tokens
                .extend(ids.iter().flat_map(|&id| id.to_le_bytes())),
        }
        self.count += ids.len() as u64;
        self.index.push(self.count);
        let documents = self.documents();
        if let Some(st) = &mut self.stream {
            if self.count > st.tokens || documents > st.documents {
                return Err(format!(
                    "more than the {} tokens in {} documents the shard was made for",
                    st.tokens, st.documents
                ));
            }
            if self.tokens.len() >= STREAM_BUFFER {
                st.file
                    .write_all(&self.tokens)
                    .map_err(|e| format!("{}: {e}", st.path.display()))?;
                self.tokens.clear();
            }
        }
        Ok(())
    }

    /// Completes a streamed shard: the rest of its tokens, its index and mask, then the file is
    /// moved into place. Refused when the documents pushed are not the counts promised.
    pub fn finish(mut self) -> Result<Written, ShardError> {
        let Some(mut st) = self.stream.take() else {
            return Err(ShardError::Bad {
                path: PathBuf::new(),
                message: "finish() on a shard built in memory (use write)".into(),
            });
        };
        let path = st.path.clone();
        if self.count != st.tokens || self.documents() != st.documents {
            return Err(bad(
                &path,
                format!(
                    "{} tokens in {} documents were pushed into a shard made for {} in {}",
                    self.count,
                    self.documents(),
                    st.tokens,
                    st.documents
                ),
            ));
        }
        self.write_rest(&mut st.file, &path)?;
        Ok(st.file.commit()?)
    }

    /// The buffered tokens, the index and the mask.
    fn write_rest(&self, f: &mut AtomicFile, path: &Path) -> Result<(), ShardError> {
        f.write_all(&self.tokens).map_err(io(path))?;
        let index: Vec<u8> = self.index.iter().flat_map(|o| o.to_le_bytes()).collect();
        f.write_all(&index).map_err(io(path))?;
        if let Some(mask) = &self.mask {
            f.write_all(mask).map_err(io(path))?;
        }
        Ok(())
    }

    /// Writes the shard built in memory to `path` (atomically).
    pub fn write(self, path: &Path) -> Result<Written, ShardError> {
        if self.stream.is_some() {
            return Err(bad(path, "write() on a streamed shard (use finish)"));
        }
        let mut f = AtomicFile::create(path)?;
        let h = header(
            self.width,
            self.count,
            self.documents(),
            self.mask.is_some(),
            self.vocab,
        );
        f.write_all(&h).map_err(io(path))?;
        self.write_rest(&mut f, path)?;
        Ok(f.commit()?)
    }
}

/// A shard read back, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub vocab: u32,
    pub tokens: Vec<u32>,
    /// Token offsets where each document starts, then the token count.
    pub index: Vec<u64>,
    /// Per token, whether it counts in the loss (`None`: all do).
    pub mask: Option<Vec<bool>>,
}

impl Shard {
    /// Reads `path`, checking its header, its size and, when given, its xxh3 (from the manifest).
    pub fn read(path: &Path, xxh3: Option<u64>) -> Result<Shard, ShardError> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        if let Some(want) = xxh3 {
            let got = xxhash_rust::xxh3::xxh3_64(&bytes);
            if got != want {
                return Err(bad(
                    path,
                    format!("checksum xxh3:{got:016x}, the manifest says xxh3:{want:016x}"),
                ));
            }
        }
        if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
            return Err(bad(path, "not a phiforge token shard (no PFTOKSHD header)"));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(
                path,
                format!("version {version}; this phiforge reads {VERSION}"),
            ));
        }
        let width = u32_at(12);
        if width != 2 && width != 4 {
            return Err(bad(
                path,
                format!("a token width of {width} bytes (2 or 4)"),
            ));
        }
        let (count, docs, flags, vocab) = (u64_at(16), u64_at(24), u32_at(32), u32_at(36));
        let masked = flags & 1 == 1;
        let expected = (HEADER_BYTES as u64)
            .checked_add(count.saturating_mul(width as u64))
            .and_then(|n| n.checked_add(docs.checked_add(1)?.checked_mul(8)?))
            .and_then(|n| n.checked_add(if masked { count.div_ceil(8) } else { 0 }));
        if expected != Some(bytes.len() as u64) {
            return Err(bad(
                path,
                format!(
                    "{} bytes, but its header ({count} tokens, {docs} documents) makes {}",
                    bytes.len(),
                    expected.map_or("an impossible size".to_string(), |e| e.to_string())
                ),
            ));
        }
        let mut at = HEADER_BYTES;
        let tokens: Vec<u32> = match width {
            2 => bytes[at..at + count as usize * 2]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                .collect(),
            _ => bytes[at..at + count as usize * 4]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        };
        at += count as usize * width as usize;
        let index: Vec<u64> = (0..=docs as usize).map(|k| u64_at(at + k * 8)).collect();
        at += (docs as usize + 1) * 8;
        if index.first() != Some(&0)
            || index.last() != Some(&count)
            || index.windows(2).any(|w| w[0] > w[1])
        {
            return Err(bad(
                path,
                "the document index is not increasing from 0 to the token count",
            ));
        }
        let mask = masked.then(|| {
            (0..count as usize)
                .map(|i| bytes[at + i / 8] >> (i % 8) & 1 == 1)
                .collect()
        });
        Ok(Shard {
            vocab,
            tokens,
            index,
            mask,
        })
    }

    /// Document `k`'s tokens.
    pub fn document(&self, k: usize) -> &[u32] {
        &self.tokens[self.index[k] as usize..self.index[k + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for (vocab, masked) in [(1000u32, false), (100_352, true)] {
            let mut w = ShardWriter::new(vocab, masked);
            let mask = [false, false, true, true];
            w.push(&[5, 6, 7, 8], masked.then_some(&mask[..])).unwrap();
            w.push(&[999], None).unwrap();
            assert!(w.push(&[vocab], None).is_err());
            let path = dir.path().join(format!("s{vocab}.tok"));
            let written = w.write(&path).unwrap();
            let s = Shard::read(&path, Some(written.xxh3)).unwrap();
            assert_eq!(s.tokens, [5, 6, 7, 8, 999]);
            assert_eq!(s.document(1), [999]);
            assert_eq!(s.index, [0, 4, 5]);
            if masked {
                assert_eq!(s.mask.unwrap(), [false, false, true, true, true]);
            } else {
                assert_eq!(s.mask, None);
            }
            let width = width_for(vocab) as u64;
            assert_eq!(
                written.bytes,
                64 + 5 * width + 3 * 8 + if masked { 1 } else { 0 }
            );
            // A wrong checksum, a cut file, a wrong header: each named.
            let e = Shard::read(&path, Some(written.xxh3 ^ 1))
                .unwrap_err()
                .to_string();
            assert!(e.contains("checksum"), "{e}");
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
            let e = Shard::read(&path, None).unwrap_err().to_string();
            assert!(e.contains("its header (5 tokens, 2 documents)"), "{e}");
            std::fs::write(&path, b"not a shard at all, no").unwrap();
            assert!(Shard::read(&path, None)
                .unwrap_err()
                .to_string()
                .contains("PFTOKSHD"));
        }
    }

    #[test]
    fn a_streamed_shard_is_the_same_bytes_and_holds_to_its_counts() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<Vec<u32>> = (0..3000u32).map(|k| (k..k + 700).collect()).collect();
        let tokens: u64 = docs.iter().map(|d| d.len() as u64).sum();
        let mut mem = ShardWriter::new(5000, true);
        let a = dir.path().join("a.tok");
        let mut st = ShardWriter::streaming(&a, 5000, true, tokens, docs.len() as u64).unwrap();
        for (k, d) in docs.iter().enumerate() {
            let mask: Vec<bool> = d.iter().map(|t| (t + k as u32).is_multiple_of(3)).collect();
            mem.push(d, Some(&mask)).unwrap();
            st.push(d, Some(&mask)).unwrap();
        }
        let b = dir.path().join("b.tok");
        let wb = mem.write(&b).unwrap();
        let wa = st.finish().unwrap();
        assert_eq!(wa, wb);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // Fewer documents than promised: refused, and no file left under the name.
        let c = dir.path().join("c.tok");
        let mut st = ShardWriter::streaming(&c, 5000, false, 10, 2).unwrap();
        st.push(&[1, 2, 3], None).unwrap();
        let e = st.finish().unwrap_err().to_string();
        assert!(e.contains("made for 10 in 2"), "{e}");
        assert!(!c.exists());
        let mut st = ShardWriter::streaming(&c, 5000, false, 2, 1).unwrap();
        assert!(st.push(&[1, 2, 3], None).is_err());
    }
}
