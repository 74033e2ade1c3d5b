//! A class's documents, tokenized, on disk: what the interleaving reads back in any order without
//! holding a class in memory.
//!
//! Per class, five files in the mix's work folder: `CLASS.tokens` (u32 little-endian, every
//! document's tokens in turn), `CLASS.mask` (a byte per token: 1 when it counts in the loss),
//! `CLASS.offsets` (u64: where each document's tokens start, then the token count), and
//! `CLASS.docs` with `CLASS.docoffsets`, the samples as JSON and where each starts. They are
//! deleted when the mix is complete.

use crate::{Error, Result};
use corpus::sample::Sample;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const NAMES: [&str; 5] = ["tokens", "mask", "offsets", "docs", "docoffsets"];

fn paths(dir: &Path, class: &str) -> [PathBuf; 5] {
    NAMES.map(|n| dir.join(format!("{class}.{n}")))
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    File::create(path)
        .map(|f| BufWriter::with_capacity(1 << 20, f))
        .map_err(|e| Error::io(path, e))
}

/// Appends a class's tokenized documents.
pub struct SpillWriter {
    paths: [PathBuf; 5],
    tokens: BufWriter<File>,
    mask: BufWriter<File>,
    offsets: BufWriter<File>,
    docs: BufWriter<File>,
    docoffsets: BufWriter<File>,
    token_count: u64,
    doc_bytes: u64,
    pub documents: u64,
}

impl SpillWriter {
    pub fn create(dir: &Path, class: &str) -> Result<SpillWriter> {
        let paths = paths(dir, class);
        let mut w = SpillWriter {
            tokens: create(&paths[0])?,
            mask: create(&paths[1])?,
            offsets: create(&paths[2])?,
            docs: create(&paths[3])?,
            docoffsets: create(&paths[4])?,
            paths,
            token_count: 0,
            doc_bytes: 0,
            documents: 0,
        };
        w.offsets_put(0, 0)?;
        Ok(w)
    }

    fn offsets_put(&mut self, tokens: u64, bytes: u64) -> Result<()> {
        self.offsets
            .write_all(&tokens.to_le_bytes())
            .map_err(|e| Error::io(&self.paths[2], e))?;
        self.docoffsets
            .write_all(&bytes.to_le_bytes())
            .map_err(|e| Error::io(&self.paths[4], e))
    }

    /// Tokens so far: the class's unique tokens.
    pub fn tokens(&self) -> u64 {
        self.token_count
    }

    /// Appends a document: its sample, tokens and loss mask (all counted when `None`).
    pub fn push(&mut self, sample: &Sample, ids: &[u32], mask: Option<&[bool]>) -> Result<()> {
        let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
        self.tokens
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.paths[0], e))?;
        let flags: Vec<u8> = match mask {
            Some(m) => m.iter().map(|&b| b as u8).collect(),
            None => vec![1; ids.len()],
        };
        self.mask
            .write_all(&flags)
            .map_err(|e| Error::io(&self.paths[1], e))?;
        let json = serde_json::to_vec(sample).map_err(|e| Error::stage("mix", e))?;
        self.docs
            .write_all(&json)
            .map_err(|e| Error::io(&self.paths[3], e))?;
        self.token_count += ids.len() as u64;
        self.doc_bytes += json.len() as u64;
        self.documents += 1;
        self.offsets_put(self.token_count, self.doc_bytes)
    }

    /// Flushes the files; [`SpillReader::open`] reads them.
    pub fn finish(self) -> Result<()> {
        let SpillWriter {
            paths,
            tokens,
            mask,
            offsets,
            docs,
            docoffsets,
            ..
        } = self;
        for (w, p) in [tokens, mask, offsets, docs, docoffsets]
            .into_iter()
            .zip(&paths)
        {
            w.into_inner()
                .map_err(|e| Error::io(p, e.into_error()))?
                .sync_all()
                .map_err(|e| Error::io(p, e))?;
        }
        Ok(())
    }
}

/// Reads a class's documents back by index.
pub struct SpillReader {
    paths: [PathBuf; 5],
    files: [File; 5],
    pub documents: u64,
}

/// A document read back.
pub struct SpillDoc {
    pub sample: Sample,
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

impl SpillReader {
    pub fn open(dir: &Path, class: &str, documents: u64) -> Result<SpillReader> {
        let paths = paths(dir, class);
        let open = |p: &PathBuf| File::open(p).map_err(|e| Error::io(p, e));
        let files = [
            open(&paths[0])?,
            open(&paths[1])?,
            open(&paths[2])?,
            open(&paths[3])?,
            open(&paths[4])?,
        ];
        Ok(SpillReader {
            paths,
            files,
            documents,
        })
    }

    fn read(&mut self, file: usize, at: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let p = &self.paths[file];
        let f = &mut self.files[file];
        f.seek(SeekFrom::Start(at)).map_err(|e| Error::io(p, e))?;
        f.read_exact(&mut buf).map_err(|e| Error::io(p, e))?;
        Ok(buf)
    }

    /// The start and end of document `k` in offsets file `file` (2: tokens, 4: JSON bytes).
    fn span(&mut self, file: usize, k: u64) -> Result<(u64, u64)> {
        if k >= self.documents {
            return Err(Error::stage(
                "mix",
                format!("document {k} of a class of {}", self.documents),
            ));
        }
        let b = self.read(file, k * 8, 16)?;
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&b[..8]);
        hi.copy_from_slice(&b[8..]);
        Ok((u64::from_le_bytes(lo), u64::from_le_bytes(hi)))
    }

    /// Document `k`'s token count.
    pub fn tokens_of(&mut self, k: u64) -> Result<u64> {
        let (lo, hi) = self.span(2, k)?;
        Ok(hi - lo)
    }

    /// Document `k`: its sample, tokens and loss mask.
    pub fn get(&mut self, k: u64) -> Result<SpillDoc> {
        let (lo, hi) = self.span(2, k)?;
        let n = (hi - lo) as usize;
        let ids = self
            .read(0, lo * 4, n * 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mask = self.read(1, lo, n)?.into_iter().map(|b| b == 1).collect();
        let (a, b) = self.span(4, k)?;
        let json = self.read(3, a, (b - a) as usize)?;
        let sample = serde_json::from_slice(&json).map_err(|e| Error::Corrupt {
            path: self.paths[3].clone(),
            message: format!("document {k}: {e}"),
        })?;
        Ok(SpillDoc { sample, ids, mask })
    }
}
