//! Per-document values on disk, read back by document index: the documents' ids and, for
//! verification, their shingle sets.
//!
//! A [`Blobs`] file holds the values one after another; only the offsets (8 bytes per document)
//! stay in memory. Readers use positioned reads, so any number of threads read at once.

use crate::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Appends one value per document.
pub(crate) struct BlobWriter {
    path: PathBuf,
    out: BufWriter<File>,
    offsets: Vec<u64>,
    end: u64,
}

impl BlobWriter {
    pub(crate) fn create(path: &Path) -> Result<BlobWriter> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(BlobWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            offsets: vec![0],
            end: 0,
        })
    }

    /// Appends the value of the next document (a shingle set as little-endian `u64`s).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.end += bytes.len() as u64;
        self.offsets.push(self.end);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<Blobs> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(Blobs {
            path: self.path,
            file,
            offsets: self.offsets,
        })
    }
}

/// The values written by a [`BlobWriter`], by document index.
pub(crate) struct Blobs {
    path: PathBuf,
    file: File,
    offsets: Vec<u64>,
}

impl Blobs {
    /// Reads document `doc`'s value into `buf`.
    pub(crate) fn read(&self, doc: u64, buf: &mut Vec<u8>) -> Result<()> {
        let d = doc as usize;
        let (start, end) = match (self.offsets.get(d), self.offsets.get(d + 1)) {
            (Some(&s), Some(&e)) => (s, e),
            _ => {
                return Err(Error::io(
                    &self.path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("no document {doc} in this table"),
                    ),
                ))
            }
        };
        buf.clear();
        buf.resize((end - start) as usize, 0);
        self.file
            .read_exact_at(buf, start)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Document `doc`'s value as text (ids).
    pub(crate) fn string(&self, doc: u64) -> Result<String> {
        let mut buf = Vec::new();
        self.read(doc, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Document `doc`'s shingle set into `out`.
    pub(crate) fn u64s(&self, doc: u64, buf: &mut Vec<u8>, out: &mut Vec<u64>) -> Result<()> {
        self.read(doc, buf)?;
        out.clear();
        out.extend(buf.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        }));
        Ok(())
    }
}

/// Exact Jaccard similarity of two sorted sets without repeats; 0 for two empty sets.
pub(crate) fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut shared) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - shared;
    if union == 0 {
        0.0
    } else {
        shared as f64 / union as f64
    }
}

/// Reads shingle sets and compares them; keeps the last set read for the first document of a
/// pair, as pairs come sorted by it.
pub(crate) struct Comparer<'a> {
    sets: &'a Blobs,
    buf: Vec<u8>,
    first: Option<u64>,
    a: Vec<u64>,
    b: Vec<u64>,
}

impl<'a> Comparer<'a> {
    pub(crate) fn new(sets: &'a Blobs) -> Self {
        Comparer {
            sets,
            buf: Vec::new(),
            first: None,
            a: Vec::new(),
            b: Vec::new(),
        }
    }

    /// Exact Jaccard similarity of documents `x` and `y`'s shingle sets.
    pub(crate) fn jaccard(&mut self, x: u64, y: u64) -> Result<f64> {
        if self.first != Some(x) {
            self.sets.u64s(x, &mut self.buf, &mut self.a)?;
            self.first = Some(x);
        }
        self.sets.u64s(y, &mut self.buf, &mut self.b)?;
        Ok(jaccard(&self.a, &self.b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_by_index_and_sets_compare() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlobWriter::create(&dir.path().join("sets")).unwrap();
        let bytes = |v: &[u64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        w.push(&bytes(&[1, 2, 3, 4])).unwrap();
        w.push(&bytes(&[])).unwrap();
        w.push(&bytes(&[2, 3, 4, 5, 6])).unwrap();
        let sets = w.finish().unwrap();
        let mut c = Comparer::new(&sets);
        assert_eq!(c.jaccard(0, 2).unwrap(), 3.0 / 6.0);
        assert_eq!(c.jaccard(0, 1).unwrap(), 0.0);
        assert_eq!(c.jaccard(2, 2).unwrap(), 1.0);
        assert!(c.jaccard(0, 3).is_err());
        let mut w = BlobWriter::create(&dir.path().join("ids")).unwrap();
        w.push("a".as_bytes()).unwrap();
        w.push("éb".as_bytes()).unwrap();
        let ids = w.finish().unwrap();
        assert_eq!(ids.string(1).unwrap(), "éb");
        assert_eq!(ids.string(0).unwrap(), "a");
    }
}
