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

/// Builds one shard in memory (its size is bounded by the caller's shard size), then writes it.
pub struct ShardWriter {
    width: u32,
    vocab: u32,
    tokens: Vec<u8>,
    count: u64,
    index: Vec<u64>,
    mask: Option<Vec<u8>>,
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
        }
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
        Ok(())
    }

    /// Writes the shard to `path` (atomically).
    pub fn write(self, path: &Path) -> Result<Written, ShardError> {
        let mut f = AtomicFile::create(path)?;
        let mut header = [0u8; HEADER_BYTES];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&self.width.to_le_bytes());
        header[16..24].copy_from_slice(&self.count.to_le_bytes());
        header[24..32].copy_from_slice(&(self.index.len() as u64 - 1).to_le_bytes());
        header[32..36].copy_from_slice(&(self.mask.is_some() as u32).to_le_bytes());
        header[36..40].copy_from_slice(&self.vocab.to_le_bytes());
        f.write_all(&header).map_err(io(path))?;
        f.write_all(&self.tokens).map_err(io(path))?;
        let index: Vec<u8> = self.index.iter().flat_map(|o| o.to_le_bytes()).collect();
        f.write_all(&index).map_err(io(path))?;
        if let Some(mask) = &self.mask {
            f.write_all(mask).map_err(io(path))?;
        }
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
}
