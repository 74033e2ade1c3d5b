//! The passes of a near-duplicate run (see the module above): signatures, candidates, clusters
//! and outputs.

use super::spill::{self, Rec, RecWriter};
use super::store::{BlobWriter, Blobs, Comparer};
use super::{json, Progress, RunOptions, Settings};
use crate::minhash::MinHasher;
use crate::report::InputTotals;
use crate::{Error, Result};
use corpus::{Batch, BatchReader, Compression, Format, FormatWriter, StagedDir, TextSpec};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Candidate pairs (and cluster members) handled at once.
const PAIR_CHUNK: usize = 1 << 16;
/// Pairs compared by one worker, reusing the set of the pairs' shared first document.
const COMPARE_CHUNK: usize = 256;

/// Streams `path` in batches, a reader thread decompressing and splitting ahead.
fn stream(
    path: &Path,
    spec: &TextSpec,
    all_columns: bool,
    each: impl FnMut(Batch) -> Result<()>,
) -> Result<()> {
    BatchReader::open(path, spec, all_columns)?.read_ahead(each)
}

/// What the signature pass leaves on disk and counted.
pub(super) struct Signed {
    pub(super) documents: u64,
    pub(super) text_bytes: u64,
    pub(super) empty: u64,
    pub(super) inputs: Vec<InputTotals>,
    /// One file of `(bucket key, doc)` records per band.
    bands: Vec<PathBuf>,
    ids: Blobs,
    /// Sorted shingle hashes per document.
    sets: Blobs,
}

/// One document's part of the signature pass.
struct Sig {
    id: String,
    keys: Vec<u64>,
    /// The sorted shingle set, as little-endian bytes.
    set: Vec<u8>,
    text_len: usize,
}

fn sign(hasher: &mut MinHasher, shingles: &mut Vec<u64>, id: &str, text: &str) -> Sig {
    hasher.shingles(text, shingles);
    shingles.sort_unstable();
    shingles.dedup();
    let keys = match hasher.signature_of(shingles) {
        Some(sig) => hasher.band_keys(&sig),
        None => Vec::new(),
    };
    Sig {
        id: id.to_string(),
        keys,
        set: shingles.iter().flat_map(|h| h.to_le_bytes()).collect(),
        text_len: text.len(),
    }
}

/// Pass 1 as documents come: signatures into band files, ids and shingle sets into tables.
pub(super) struct Signer {
    mh: crate::minhash::MinHashSettings,
    bands: Vec<RecWriter>,
    ids: BlobWriter,
    sets: BlobWriter,
    n: u64,
    text_bytes: u64,
    empty: u64,
}

impl Signer {
    pub(super) fn create(work: &Path, s: &Settings) -> Result<Signer> {
        Ok(Signer {
            mh: s.minhash(),
            bands: (0..s.bands)
                .map(|b| RecWriter::create(&work.join(format!("band-{b:04}"))))
                .collect::<Result<Vec<_>>>()?,
            ids: BlobWriter::create(&work.join("ids"))?,
            sets: BlobWriter::create(&work.join("shingles"))?,
            n: 0,
            text_bytes: 0,
            empty: 0,
        })
    }

    /// Signs `items` on all cores (`doc` gives each one's id and text) and appends them, in
    /// order, as the next documents.
    pub(super) fn add<T: Sync, D>(
        &mut self,
        items: &[T],
        doc: impl Fn(&T) -> corpus::Result<D> + Sync,
    ) -> Result<()>
    where
        D: Doc,
    {
        let mh = self.mh;
        let signed: Vec<corpus::Result<Sig>> = items
            .par_iter()
            .map_init(
                || (MinHasher::new(mh), Vec::new()),
                |(h, buf), item| doc(item).map(|d| sign(h, buf, d.id(), d.text())),
            )
            .collect();
        for sig in signed {
            let sig = sig?;
            self.ids.push(sig.id.as_bytes())?;
            self.sets.push(&sig.set)?;
            if sig.keys.is_empty() {
                self.empty += 1;
            }
            for (band, key) in self.bands.iter_mut().zip(&sig.keys) {
                band.push([*key, self.n])?;
            }
            self.text_bytes += sig.text_len as u64;
            self.n += 1;
        }
        Ok(())
    }

    pub(super) fn finish(self, inputs: Vec<InputTotals>) -> Result<Signed> {
        Ok(Signed {
            documents: self.n,
            text_bytes: self.text_bytes,
            empty: self.empty,
            inputs,
            bands: self
                .bands
                .into_iter()
                .map(|b| b.finish().map(|(p, _)| p))
                .collect::<Result<_>>()?,
            ids: self.ids.finish()?,
            sets: self.sets.finish()?,
        })
    }
}

/// A document as [`Signer::add`] reads it.
pub(super) trait Doc {
    fn id(&self) -> &str;
    fn text(&self) -> &str;
}

impl Doc for corpus::Doc<'_> {
    fn id(&self) -> &str {
        &self.id
    }
    fn text(&self) -> &str {
        &self.text
    }
}

impl<A: AsRef<str>, B: AsRef<str>> Doc for (A, B) {
    fn id(&self) -> &str {
        self.0.as_ref()
    }
    fn text(&self) -> &str {
        self.1.as_ref()
    }
}

/// Pass 1 over files.
pub(super) fn signatures(
    inputs: &[PathBuf],
    work: &Path,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<Signed> {
    let mut signer = Signer::create(work, &opts.settings)?;
    let mut totals = Vec::new();
    for path in inputs {
        progress.file(path);
        let mut file = InputTotals {
            path: path.display().to_string(),
            ..Default::default()
        };
        stream(path, &opts.text, false, |batch| {
            let rows: Vec<usize> = (0..batch.len()).collect();
            signer.add(&rows, |&i| batch.doc(i, &opts.text))?;
            file.documents += batch.len() as u64;
            file.bytes += batch.bytes();
            progress.advance(batch.len() as u64, batch.bytes());
            Ok(())
        })?;
        totals.push(file);
    }
    signer.finish(totals)
}

/// Union-find over document indices; a root is always its cluster's first document.
struct UnionFind {
    parent: Vec<u64>,
}

impl UnionFind {
    fn find(&mut self, mut x: u64) -> u64 {
        while self.parent[x as usize] != x {
            let up = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = up;
            x = up;
        }
        x
    }

    fn union(&mut self, a: u64, b: u64) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[ra.max(rb) as usize] = ra.min(rb);
        }
    }

    /// Every document's root. A parent never follows its child, so one pass in order suffices.
    fn roots(mut self) -> Vec<u64> {
        for i in 0..self.parent.len() {
            let p = self.parent[i] as usize;
            self.parent[i] = self.parent[p];
        }
        self.parent
    }
}

/// The candidate pass's result: each document's cluster root, and counts.
pub(super) struct Found {
    pub(super) roots: Vec<u64>,
    pub(super) collisions: u64,
    pub(super) candidates: u64,
    /// Candidates at or above the threshold.
    pub(super) similar: u64,
    /// Candidates joined into clusters.
    pub(super) merged: u64,
}

/// Pass 2: bucket collisions, distinct candidate pairs, their verification and the clusters.
pub(super) fn candidates(signed: &Signed, work: &Path, s: &Settings) -> Result<Found> {
    let memory = s.memory_mb.saturating_mul(1 << 20);
    let mut pairs = RecWriter::create(&work.join("candidates"))?;
    for band in &signed.bands {
        let mut sorted = spill::sorted(band, memory, false)?;
        // (key, first doc, previous doc) of the bucket being read.
        let mut bucket: Option<(u64, u64, u64)> = None;
        while let Some([key, doc]) = sorted.next()? {
            match &mut bucket {
                Some((k, first, prev)) if *k == key => {
                    pairs.push([*first, doc])?;
                    if *prev != *first {
                        pairs.push([*prev, doc])?;
                    }
                    *prev = doc;
                }
                _ => bucket = Some((key, doc, doc)),
            }
        }
    }
    let (path, collisions) = pairs.finish()?;
    let mut sorted = spill::sorted(&path, memory, true)?;
    let mut uf = UnionFind {
        parent: (0..signed.documents).collect(),
    };
    let (mut candidates, mut similar, mut merged) = (0u64, 0u64, 0u64);
    loop {
        let chunk = sorted.chunk(PAIR_CHUNK)?;
        if chunk.is_empty() {
            break;
        }
        candidates += chunk.len() as u64;
        let sims = similarities(&signed.sets, &chunk)?;
        for ([a, b], j) in chunk.iter().zip(sims) {
            let near = j >= s.threshold;
            similar += near as u64;
            if near || !s.verify {
                merged += 1;
                uf.union(*a, *b);
            }
        }
    }
    Ok(Found {
        roots: uf.roots(),
        collisions,
        candidates,
        similar,
        merged,
    })
}

/// Exact Jaccard similarity of each pair's shingle sets, on all cores.
fn similarities(sets: &Blobs, pairs: &[Rec]) -> Result<Vec<f64>> {
    let parts = pairs
        .par_chunks(COMPARE_CHUNK)
        .map(|c| {
            let mut cmp = Comparer::new(sets);
            c.iter()
                .map(|[a, b]| cmp.jaccard(*a, *b))
                .collect::<Result<Vec<f64>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(parts.into_iter().flatten().collect())
}

/// The clusters pass's result.
pub(super) struct Clusters {
    pub(super) clusters: u64,
    pub(super) removed: u64,
    /// Per document, the exact Jaccard similarity to its cluster's kept document (NaN for
    /// kept documents).
    pub(super) sims: Vec<f32>,
}

/// Writes `clusters.jsonl`, one line per cluster, and measures each removed document's
/// similarity to the kept one.
pub(super) fn clusters(
    signed: &Signed,
    roots: &[u64],
    out_path: &Path,
    work: &Path,
    s: &Settings,
) -> Result<Clusters> {
    let mut members = RecWriter::create(&work.join("members"))?;
    for (i, &r) in roots.iter().enumerate() {
        if r != i as u64 {
            members.push([r, i as u64])?;
        }
    }
    let (path, removed) = members.finish()?;
    let mut sorted = spill::sorted(&path, s.memory_mb.saturating_mul(1 << 20), false)?;
    let mut sims = vec![f32::NAN; roots.len()];
    let mut out = corpus::open_writer(out_path, Compression::None)?;
    let mut clusters = 0u64;
    // The cluster being assembled: its kept document, and its removed ones with similarities.
    let mut open: Option<(u64, Vec<u64>, Vec<f64>)> = None;
    let mut flush = |c: (u64, Vec<u64>, Vec<f64>)| -> Result<()> {
        let (kept, dropped, jaccard) = c;
        let dropped: Vec<String> = dropped
            .iter()
            .map(|&d| signed.ids.string(d))
            .collect::<Result<_>>()?;
        let jaccard: Vec<f64> = jaccard.iter().map(|j| round(*j)).collect();
        let line = serde_json::json!({
            "kept": signed.ids.string(kept)?,
            "size": dropped.len() + 1,
            "dropped": dropped,
            "jaccard": jaccard,
        });
        out.write_all(json("clusters.jsonl", &line, false)?.as_bytes())?;
        out.write_all(b"\n")?;
        clusters += 1;
        Ok(())
    };
    loop {
        let chunk = sorted.chunk(PAIR_CHUNK)?;
        if chunk.is_empty() {
            break;
        }
        let chunk_sims = similarities(&signed.sets, &chunk)?;
        for ([root, doc], j) in chunk.iter().zip(chunk_sims) {
            if let Some(slot) = sims.get_mut(*doc as usize) {
                *slot = j as f32;
            }
            match &mut open {
                Some((r, dropped, js)) if r == root => {
                    dropped.push(*doc);
                    js.push(j);
                }
                _ => {
                    if let Some(c) = open.replace((*root, vec![*doc], vec![j])) {
                        flush(c)?;
                    }
                }
            }
        }
    }
    if let Some(c) = open.take() {
        flush(c)?;
    }
    out.finish()?;
    Ok(Clusters {
        clusters,
        removed,
        sims,
    })
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Pass 3: every input again, into `kept/NAME` and `removed/NAME` in its own format.
#[allow(clippy::too_many_arguments)]
pub(super) fn write(
    inputs: &[PathBuf],
    names: &[String],
    signed: &Signed,
    roots: &[u64],
    clusters: &Clusters,
    staged: &StagedDir,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let mut n = 0u64;
    // The last kept document named in a note, and its id.
    let mut last: Option<(u64, String)> = None;
    for ((path, name), totals) in inputs.iter().zip(names).zip(&signed.inputs) {
        progress.file(path);
        let format = Format::detect(path)?;
        let mut kept = FormatWriter::create(&staged.path(Path::new("kept").join(name))?, format)?;
        let mut removed =
            FormatWriter::create(&staged.path(Path::new("removed").join(name))?, format)?;
        let first = n;
        let changed = |now: u64| Error::InputChanged {
            path: path.clone(),
            before: totals.documents,
            now,
        };
        stream(path, &opts.text, true, |batch| {
            if n - first + batch.len() as u64 > totals.documents {
                return Err(changed(n - first + batch.len() as u64));
            }
            let (mut keep, mut drop, mut notes) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..batch.len() {
                let doc = n + i as u64;
                let root = roots[doc as usize];
                if root == doc {
                    keep.push(i);
                    continue;
                }
                let id = match &last {
                    Some((r, id)) if *r == root => id.clone(),
                    _ => {
                        let id = signed.ids.string(root)?;
                        last = Some((root, id.clone()));
                        id
                    }
                };
                let j = clusters.sims.get(doc as usize).map(|j| round(*j as f64));
                let note =
                    serde_json::json!({"reason": "near_duplicate", "kept": id, "jaccard": j});
                notes.push(json("removed note", &note, false)?);
                drop.push(i);
            }
            kept.write(&batch, &keep, None)?;
            removed.write(&batch, &drop, Some(&notes))?;
            n += batch.len() as u64;
            progress.advance(batch.len() as u64, batch.bytes());
            Ok(())
        })?;
        if n - first != totals.documents {
            return Err(changed(n - first));
        }
        kept.finish()?;
        removed.finish()?;
    }
    Ok(())
}
