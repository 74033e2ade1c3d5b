//! Megatron-LM's indexed dataset (`PREFIX.bin` + `PREFIX.idx`, the `MMIDIDX` format that
//! megatron-core's `IndexedDataset` reads), so a mix trains with Megatron-LM or NeMo as well as
//! with phiforge's own trainer. One document is one sequence.
//!
//! ```text
//! PREFIX.bin: the tokens of every document, one after another, in the index's dtype
//! PREFIX.idx (little-endian):
//!   b"MMIDIDX\x00\x00"           9 bytes
//!   version                      u64 = 1
//!   dtype code                   u8: 8 = uint16 (vocabularies under 65,500), 4 = int32
//!   sequences                    u64
//!   document index entries       u64 (documents + 1)
//!   sequence lengths             i32 x sequences
//!   sequence byte offsets        i64 x sequences (into PREFIX.bin)
//!   document index               i64 x (documents + 1): 0, 1, ..., sequences
//! ```
//!
//! The `.bin` is streamed to a temporary name; both files are renamed into place when complete.

use crate::tokshard::ShardError;
use corpus::atomic::{AtomicFile, Written};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const INDEX_MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";

/// megatron-core's dtype codes for the two token types it picks from a vocabulary size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    U16,
    I32,
}

impl TokenType {
    /// megatron-core's `DType.optimal_dtype`: uint16 below 65,500 tokens, else int32.
    pub fn for_vocab(vocab: u32) -> TokenType {
        if vocab < 65_500 {
            TokenType::U16
        } else {
            TokenType::I32
        }
    }

    pub fn code(self) -> u8 {
        match self {
            TokenType::U16 => 8,
            TokenType::I32 => 4,
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            TokenType::U16 => 2,
            TokenType::I32 => 4,
        }
    }
}

/// Writes one indexed dataset, document by document.
pub struct MegatronWriter {
    prefix: PathBuf,
    ty: TokenType,
    vocab: u32,
    bin: AtomicFile,
    lengths: Vec<i32>,
}

fn path_with(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

impl MegatronWriter {
    /// Starts `PREFIX.bin` for a vocabulary of `vocab` tokens.
    pub fn create(prefix: &Path, vocab: u32) -> Result<MegatronWriter, ShardError> {
        Ok(MegatronWriter {
            prefix: prefix.to_path_buf(),
            ty: TokenType::for_vocab(vocab),
            vocab,
            bin: AtomicFile::create(&path_with(prefix, ".bin"))?,
            lengths: Vec::new(),
        })
    }

    /// Adds a document (a token outside the vocabulary, or a document past 2^31 tokens, is
    /// refused).
    pub fn push(&mut self, ids: &[u32]) -> Result<(), ShardError> {
        let bin = path_with(&self.prefix, ".bin");
        let refuse = |message: String| ShardError::Bad {
            path: bin.clone(),
            message,
        };
        if let Some(&id) = ids.iter().find(|&&id| id >= self.vocab) {
            return Err(refuse(format!(
                "token {id} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        let len = i32::try_from(ids.len())
            .map_err(|_| refuse(format!("a document of {} tokens", ids.len())))?;
        let bytes: Vec<u8> = match self.ty {
            TokenType::U16 => ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect(),
            TokenType::I32 => ids.iter().flat_map(|&i| (i as i32).to_le_bytes()).collect(),
        };
        self.bin
            .write_all(&bytes)
            .map_err(|e| refuse(format!("writing: {e}")))?;
        self.lengths.push(len);
        Ok(())
    }

    /// Writes the index and puts both files in place: what each holds (`.bin`, `.idx`).
    pub fn finish(self) -> Result<(Written, Written), ShardError> {
        let n = self.lengths.len() as u64;
        let mut idx = Vec::with_capacity(34 + self.lengths.len() * 20 + 8);
        idx.extend_from_slice(INDEX_MAGIC);
        idx.extend_from_slice(&1u64.to_le_bytes());
        idx.push(self.ty.code());
        idx.extend_from_slice(&n.to_le_bytes());
        idx.extend_from_slice(&(n + 1).to_le_bytes());
        for l in &self.lengths {
            idx.extend_from_slice(&l.to_le_bytes());
        }
        let mut offset: i64 = 0;
        for l in &self.lengths {
            idx.extend_from_slice(&offset.to_le_bytes());
            offset += *l as i64 * self.ty.bytes() as i64;
        }
        for k in 0..=n as i64 {
            idx.extend_from_slice(&k.to_le_bytes());
        }
        let bin = self.bin.commit()?;
        let idx = corpus::atomic::write(&path_with(&self.prefix, ".idx"), &idx)?;
        Ok((bin, idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads an index as megatron-core's `_IndexReader` does, and the `.bin` by its pointers.
    fn read_back(prefix: &Path) -> (u8, Vec<Vec<u32>>, Vec<i64>) {
        let idx = std::fs::read(path_with(prefix, ".idx")).unwrap();
        let bin = std::fs::read(path_with(prefix, ".bin")).unwrap();
        assert_eq!(&idx[..9], INDEX_MAGIC);
        let u64_at = |o: usize| u64::from_le_bytes(idx[o..o + 8].try_into().unwrap());
        assert_eq!(u64_at(9), 1);
        let code = idx[17];
        let (seqs, docs) = (u64_at(18) as usize, u64_at(26) as usize);
        let mut at = 34;
        let lengths: Vec<i32> = (0..seqs)
            .map(|k| i32::from_le_bytes(idx[at + 4 * k..at + 4 * k + 4].try_into().unwrap()))
            .collect();
        at += 4 * seqs;
        let pointers: Vec<i64> = (0..seqs)
            .map(|k| i64::from_le_bytes(idx[at + 8 * k..at + 8 * k + 8].try_into().unwrap()))
            .collect();
        at += 8 * seqs;
        let doc_index: Vec<i64> = (0..docs)
            .map(|k| i64::from_le_bytes(idx[at + 8 * k..at + 8 * k + 8].try_into().unwrap()))
            .collect();
        assert_eq!(at + 8 * docs, idx.len());
        let width = if code == 8 { 2 } else { 4 };
        let seqs = lengths
            .iter()
            .zip(&pointers)
            .map(|(&l, &p)| {
                let bytes = &bin[p as usize..p as usize + l as usize * width];
                bytes
                    .chunks_exact(width)
                    .map(|c| match width {
                        2 => u16::from_le_bytes([c[0], c[1]]) as u32,
                        _ => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32,
                    })
                    .collect()
            })
            .collect();
        (code, seqs, doc_index)
    }

    #[test]
    fn documents_read_back_through_the_index_as_megatron_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        for (vocab, code) in [(32_000u32, 8u8), (100_352, 4)] {
            let prefix = dir.path().join(format!("mix_{vocab}_text_document"));
            let mut w = MegatronWriter::create(&prefix, vocab).unwrap();
            let docs: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![], vec![vocab - 1, 0]];
            for d in &docs {
                w.push(d).unwrap();
            }
            assert!(w.push(&[vocab]).is_err());
            let (bin, _) = w.finish().unwrap();
            assert_eq!(bin.bytes, 5 * if code == 8 { 2 } else { 4 });
            let (got_code, seqs, doc_index) = read_back(&prefix);
            assert_eq!(got_code, code);
            assert_eq!(seqs, docs);
            assert_eq!(doc_index, [0, 1, 2, 3]);
        }
    }
}
