//! Pairs of `u64` on disk: appended to a file, then read back sorted, with memory bounded by a
//! budget whatever the file's size.
//!
//! Every on-disk table of a near-duplicate run is such a file of 16-byte records: band buckets
//! `(bucket key, doc)`, candidate pairs `(doc, doc)` and cluster members `(kept doc, doc)`.
//! [`sorted`] sorts a file in memory when it fits the budget; otherwise it sorts budget-sized runs
//! into files of their own and merges them (one pass, a small read buffer per run).

use crate::{Error, Result};
use rayon::slice::ParallelSliceMut;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// One record.
pub(crate) type Rec = [u64; 2];
const REC_BYTES: usize = 16;
/// Read buffer per run while merging.
const MERGE_BUFFER: usize = 64 << 10;

fn encode(r: &Rec) -> [u8; REC_BYTES] {
    let mut b = [0u8; REC_BYTES];
    b[..8].copy_from_slice(&r[0].to_le_bytes());
    b[8..].copy_from_slice(&r[1].to_le_bytes());
    b
}

/// Appends records to a file.
pub(crate) struct RecWriter {
    path: PathBuf,
    out: BufWriter<File>,
    count: u64,
}

impl RecWriter {
    pub(crate) fn create(path: &Path) -> Result<RecWriter> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(RecWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(256 << 10, file),
            count: 0,
        })
    }

    pub(crate) fn push(&mut self, r: Rec) -> Result<()> {
        self.count += 1;
        self.out
            .write_all(&encode(&r))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes; returns the file and its number of records.
    pub(crate) fn finish(mut self) -> Result<(PathBuf, u64)> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        Ok((self.path, self.count))
    }
}

/// Reads records in file order.
pub(crate) struct RecReader {
    path: PathBuf,
    input: BufReader<File>,
}

impl RecReader {
    fn open(path: &Path, buffer: usize) -> Result<RecReader> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(RecReader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(buffer, file),
        })
    }

    fn next(&mut self) -> Result<Option<Rec>> {
        let mut b = [0u8; REC_BYTES];
        match self.input.read_exact(&mut b) {
            Ok(()) => {
                let mut lo = [0u8; 8];
                let mut hi = [0u8; 8];
                lo.copy_from_slice(&b[..8]);
                hi.copy_from_slice(&b[8..]);
                Ok(Some([u64::from_le_bytes(lo), u64::from_le_bytes(hi)]))
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    /// Up to `max` records.
    fn chunk(&mut self, max: usize) -> Result<Vec<Rec>> {
        let mut v = Vec::with_capacity(max.min(1 << 20));
        while v.len() < max {
            match self.next()? {
                Some(r) => v.push(r),
                None => break,
            }
        }
        Ok(v)
    }
}

/// The records of a file in ascending order (duplicates dropped when asked); see [`sorted`].
pub(crate) enum Sorted {
    Memory(std::vec::IntoIter<Rec>),
    Merge {
        runs: Vec<RecReader>,
        heap: BinaryHeap<Reverse<(Rec, usize)>>,
        last: Option<Rec>,
        dedup: bool,
    },
}

impl Sorted {
    pub(crate) fn next(&mut self) -> Result<Option<Rec>> {
        match self {
            Sorted::Memory(it) => Ok(it.next()),
            Sorted::Merge {
                runs,
                heap,
                last,
                dedup,
            } => loop {
                let Some(Reverse((rec, run))) = heap.pop() else {
                    return Ok(None);
                };
                if let Some(next) = runs[run].next()? {
                    heap.push(Reverse((next, run)));
                }
                if *dedup && *last == Some(rec) {
                    continue;
                }
                *last = Some(rec);
                return Ok(Some(rec));
            },
        }
    }

    /// Up to `max` records.
    pub(crate) fn chunk(&mut self, max: usize) -> Result<Vec<Rec>> {
        let mut v = Vec::new();
        while v.len() < max {
            match self.next()? {
                Some(r) => v.push(r),
                None => break,
            }
        }
        Ok(v)
    }
}

/// Sorts the records of `path` (which is removed), using at most about `memory` bytes of
/// records at once; sorted runs, when needed, are written beside it.
pub(crate) fn sorted(path: &Path, memory: usize, dedup: bool) -> Result<Sorted> {
    let per_run = (memory / REC_BYTES).max(1024);
    let mut reader = RecReader::open(path, 1 << 20)?;
    let mut first = reader.chunk(per_run)?;
    let sort = |v: &mut Vec<Rec>| {
        v.par_sort_unstable();
        if dedup {
            v.dedup();
        }
    };
    if first.len() < per_run {
        drop(reader);
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        sort(&mut first);
        return Ok(Sorted::Memory(first.into_iter()));
    }
    let mut runs = Vec::new();
    let mut chunk = first;
    while !chunk.is_empty() {
        sort(&mut chunk);
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".run{}", runs.len()));
        let mut w = RecWriter::create(Path::new(&name))?;
        for r in chunk.drain(..) {
            w.push(r)?;
        }
        runs.push(w.finish()?.0);
        chunk = reader.chunk(per_run)?;
    }
    drop(reader);
    std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    let mut readers = Vec::with_capacity(runs.len());
    let mut heap = BinaryHeap::new();
    for (k, run) in runs.iter().enumerate() {
        let mut r = RecReader::open(run, MERGE_BUFFER)?;
        // The run's file is unlinked now; the open reader keeps its data until dropped.
        std::fs::remove_file(run).map_err(|e| Error::io(run, e))?;
        if let Some(rec) = r.next()? {
            heap.push(Reverse((rec, k)));
        }
        readers.push(r);
    }
    Ok(Sorted::Merge {
        runs: readers,
        heap,
        last: None,
        dedup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(records: &[Rec], memory: usize, dedup: bool) -> Vec<Rec> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recs");
        let mut w = RecWriter::create(&path).unwrap();
        for r in records {
            w.push(*r).unwrap();
        }
        assert_eq!(w.finish().unwrap().1, records.len() as u64);
        let mut s = sorted(&path, memory, dedup).unwrap();
        let mut out = Vec::new();
        while let Some(r) = s.next().unwrap() {
            out.push(r);
        }
        assert!(!path.exists());
        out
    }

    #[test]
    fn sorts_in_memory_and_by_merging_runs_alike() {
        let records: Vec<Rec> = (0..10_000u64).map(|k| [(k * 7919) % 1000, k % 3]).collect();
        let mut want = records.clone();
        want.sort_unstable();
        assert_eq!(roundtrip(&records, 1 << 30, false), want);
        // 1,024 records per run: ten runs merged.
        assert_eq!(roundtrip(&records, 0, false), want);
        want.dedup();
        assert_eq!(roundtrip(&records, 1 << 30, true), want);
        assert_eq!(roundtrip(&records, 0, true), want);
        assert!(roundtrip(&[], 0, true).is_empty());
    }
}
