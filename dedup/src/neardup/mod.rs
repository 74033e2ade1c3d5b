//! Near-duplicate removal for corpora of any size: MinHash signatures, LSH buckets on disk by
//! band, candidate pairs checked by exact Jaccard similarity, clusters by union-find, and one
//! document kept per cluster.
//!
//! [`run`] makes three passes:
//!
//! 1. **Signatures.** Every input is streamed in batches ([`corpus::BatchReader`]); on all cores,
//!    each document's word shingles (of the normalised tokens, [`crate::minhash::MinHasher`]) are
//!    hashed, deduplicated and summarised by `bands x rows` minimum hashes. Each band's bucket key
//!    is appended with the document's index to that band's file on disk; the document's id and
//!    its shingle set go to on-disk tables.
//! 2. **Candidates and clusters.** Each band file is sorted (in memory up to
//!    [`Settings::memory_mb`], else in sorted runs merged from disk); documents sharing a bucket
//!    become candidate pairs: each with the bucket's first document and with the one before it,
//!    so a bucket of `k` documents gives at most `2k` pairs, not `k²`. The pairs are sorted and
//!    deduplicated the same way, and each is measured by the exact Jaccard similarity of the two
//!    shingle sets (read back from disk); with [`Settings::verify`] only pairs at or above
//!    [`Settings::threshold`] join clusters (union-find, the root being the cluster's first
//!    document).
//! 3. **Outputs.** The inputs are streamed again and written, in their own format, to `kept/` (the
//!    first document of each cluster, in input order, and every document in no cluster) and
//!    `removed/` (the others, each annotated `{"reason": "near_duplicate", "kept": ID,
//!    "jaccard": J}` naming the kept document), beside `clusters.jsonl` (one line per cluster:
//!    `{"kept", "size", "dropped", "jaccard"}`) and `report.json` ([`Report`]).
//!
//! **What counts as a near-duplicate.** datatrove's MinHash (FineWeb's setting, 5-word shingles,
//! 14 bands of 8 rows) has no threshold: any shared bucket makes two documents duplicates, so the
//! S-curve of the bands decides (a pair of Jaccard similarity `s` collides with probability
//! `1 - (1 - s^rows)^bands`; one half at [`Settings::lsh_threshold`], 0.685 for 14 x 8).
//! `verify: false` does the same. By default a colliding pair is a near-duplicate only when the
//! exact Jaccard similarity of its shingle sets is at least [`Settings::threshold`], 0.5 (The
//! Pile's MinHash threshold): low enough to keep what FineWeb's bands find, while dropping
//! collisions that share little text. Either way the report gives the share of candidates at or
//! above the threshold (the precision of the buckets against exact Jaccard). Catching more
//! distant copies takes more, shorter bands and a lower threshold: 25 bands of 2 rows at 0.3
//! find copies with a tenth of their words changed (Jaccard about 0.4), which FineWeb's bands
//! almost never do.
//!
//! **Memory.** Text is never held beyond a few batches. What stays in memory grows with the
//! number of documents, not their size: about 28 bytes per document (the union-find roots, the
//! offsets of the id and shingle tables, each document's similarity to its kept one), plus the
//! sort budget. Everything else (band buckets, candidate pairs, shingle sets, ids, cluster
//! members) is on disk, in a work folder inside the output's staging folder that is removed
//! before the output is committed; the shingle sets take about 8 bytes per word of text. One
//! `clusters.jsonl` line holds its whole cluster.
//!
//! ```no_run
//! use dedup::neardup::{run, NoProgress, RunOptions, Settings};
//! # fn main() -> dedup::Result<()> {
//! let opts = RunOptions { text: Default::default(), settings: Settings::default() };
//! let report = run(&["docs.jsonl".into()], "out/neardup".as_ref(), &opts, &NoProgress)?;
//! println!("{} of {} documents removed", report.removed, report.documents);
//! # Ok(()) }
//! ```

mod passes;
mod spill;
mod store;

use crate::minhash::MinHashSettings;
use crate::report::InputTotals;
use crate::{Error, Result};
use corpus::{StagedDir, TextSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Version of the `report.json` layout.
pub const REPORT_FORMAT: u32 = 1;

/// How near-duplicates are found; FineWeb's MinHash setting by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Words (normalised tokens) per shingle.
    pub shingle: usize,
    /// LSH bands: two documents are candidates when all rows of one band agree.
    pub bands: usize,
    /// Hash functions per band; a signature has `bands x rows` of them.
    pub rows: usize,
    /// Least exact Jaccard similarity of two shingle sets for a candidate pair to be
    /// near-duplicates (The Pile's 0.5 by default).
    pub threshold: f64,
    /// Join only candidate pairs at or above the threshold; off, every bucket collision is a
    /// near-duplicate (as datatrove does; the report still measures them against the threshold).
    pub verify: bool,
    /// Seeds the hash functions.
    pub seed: u64,
    /// Megabytes of records sorted in memory at once (more are sorted in runs on disk).
    pub memory_mb: usize,
}

impl Default for Settings {
    fn default() -> Self {
        let m = MinHashSettings::default();
        Settings {
            shingle: m.shingle,
            bands: m.bands,
            rows: m.rows,
            threshold: 0.5,
            verify: true,
            seed: m.seed,
            memory_mb: 512,
        }
    }
}

impl Settings {
    /// The Jaccard similarity at which a pair shares a bucket with probability 1/2:
    /// `(1 - 0.5^(1/bands))^(1/rows)`.
    pub fn lsh_threshold(&self) -> f64 {
        let (b, r) = (self.bands.max(1) as f64, self.rows.max(1) as f64);
        (1.0 - 0.5f64.powf(1.0 / b)).powf(1.0 / r)
    }

    fn minhash(&self) -> MinHashSettings {
        MinHashSettings {
            shingle: self.shingle,
            bands: self.bands,
            rows: self.rows,
            seed: self.seed,
        }
    }

    /// Refuses settings out of range.
    pub fn check(&self) -> Result<()> {
        let bad = |name, message: &str| {
            Err(Error::Setting {
                name,
                message: message.into(),
            })
        };
        if self.shingle == 0 {
            return bad("shingle", "must be at least 1");
        }
        if self.bands == 0 || self.rows == 0 {
            return bad("bands", "bands and rows must be at least 1");
        }
        if self.bands * self.rows > 4096 {
            return bad("bands", "bands x rows must be at most 4096 hash functions");
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return bad("threshold", "must be a Jaccard similarity in [0, 1]");
        }
        if self.memory_mb == 0 {
            return bad("memory_mb", "must be at least 1");
        }
        Ok(())
    }
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub text: TextSpec,
    pub settings: Settings,
}

pub use crate::audit::{NoProgress, Progress};

/// Seconds per pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageSeconds {
    pub signatures: f64,
    pub candidates: f64,
    pub clusters: f64,
    pub writing: f64,
}

/// What a run did: written as `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: u32,
    pub phiforge_version: &'static str,
    pub normalization: &'static str,
    pub settings: Settings,
    /// The bands' own threshold (see [`Settings::lsh_threshold`]).
    pub lsh_threshold: f64,
    pub inputs: Vec<InputTotals>,
    pub documents: u64,
    /// Input bytes read (uncompressed; whole JSON lines or rows).
    pub bytes: u64,
    /// Bytes of document text.
    pub text_bytes: u64,
    /// Documents without words: never candidates, always kept.
    pub empty_documents: u64,
    pub seconds: f64,
    /// Text megabytes (10^6 bytes) per second, all passes included.
    pub mb_per_s: f64,
    pub threads: usize,
    pub stage_seconds: StageSeconds,
    /// Bucket collisions emitted (pairs with the bucket's first and previous document).
    pub collisions: u64,
    /// Distinct candidate pairs.
    pub candidates: u64,
    /// Candidate pairs whose exact Jaccard similarity is at or above the threshold.
    pub similar_pairs: u64,
    /// `similar_pairs / candidates`: the precision of the LSH candidates against exact Jaccard
    /// at the threshold (`None` without candidates).
    pub candidate_precision: Option<f64>,
    /// Candidate pairs joined into clusters: the similar ones with verification, all without.
    pub merged_pairs: u64,
    /// `similar_pairs / merged_pairs`: the precision of the pairs acted on (1 with
    /// verification).
    pub precision: Option<f64>,
    pub clusters: u64,
    /// Documents in clusters, kept ones included.
    pub clustered_documents: u64,
    pub removed: u64,
    pub kept: u64,
}

fn json<T: Serialize>(what: &str, v: &T, pretty: bool) -> Result<String> {
    let r = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    };
    r.map_err(|e| Error::Serialize {
        what: what.into(),
        message: e.to_string(),
    })
}

/// Removes near-duplicates from `inputs`, writing `kept/`, `removed/`, `clusters.jsonl` and
/// `report.json` into `out` (completely or not at all). Returns the report.
pub fn run(
    inputs: &[PathBuf],
    out: &Path,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    let started = Instant::now();
    let s = opts.settings;
    s.check()?;
    let names = crate::audit::output_names(inputs)?;
    let staged = StagedDir::create(out)?;
    let work = staged.path(".work")?;
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let mut secs = StageSeconds::default();

    progress.stage("signatures");
    let t = Instant::now();
    let signed = passes::signatures(inputs, &work, opts, progress)?;
    secs.signatures = t.elapsed().as_secs_f64();

    progress.stage("candidates");
    let t = Instant::now();
    let found = passes::candidates(&signed, &work, &s)?;
    secs.candidates = t.elapsed().as_secs_f64();

    progress.stage("clusters");
    let t = Instant::now();
    let clusters_path = staged.path("clusters.jsonl")?;
    let clusters = passes::clusters(&signed, &found.roots, &clusters_path, &work, &s)?;
    secs.clusters = t.elapsed().as_secs_f64();

    progress.stage("writing");
    let t = Instant::now();
    passes::write(
        inputs,
        &names,
        &signed,
        &found.roots,
        &clusters,
        &staged,
        opts,
        progress,
    )?;
    secs.writing = t.elapsed().as_secs_f64();

    std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let seconds = started.elapsed().as_secs_f64();
    let documents = signed.documents;
    let report = Report {
        format: REPORT_FORMAT,
        phiforge_version: env!("CARGO_PKG_VERSION"),
        normalization: crate::normalize::NORMALIZATION_VERSION,
        settings: s,
        lsh_threshold: s.lsh_threshold(),
        documents,
        bytes: signed.inputs.iter().map(|i| i.bytes).sum(),
        text_bytes: signed.text_bytes,
        inputs: signed.inputs,
        empty_documents: signed.empty,
        seconds,
        mb_per_s: if seconds > 0.0 {
            signed.text_bytes as f64 / 1e6 / seconds
        } else {
            0.0
        },
        threads: rayon::current_num_threads(),
        stage_seconds: secs,
        collisions: found.collisions,
        candidates: found.candidates,
        similar_pairs: found.similar,
        candidate_precision: (found.candidates > 0)
            .then(|| found.similar as f64 / found.candidates as f64),
        merged_pairs: found.merged,
        precision: (found.merged > 0)
            .then(|| found.similar.min(found.merged) as f64 / found.merged as f64),
        clusters: clusters.clusters,
        clustered_documents: clusters.clusters + clusters.removed,
        removed: clusters.removed,
        kept: documents - clusters.removed,
    };
    std::fs::write(
        staged.path("report.json")?,
        json("report.json", &report, true)? + "\n",
    )
    .map_err(|e| Error::io(out.join("report.json"), e))?;
    staged.commit(Some("report.json"))?;
    Ok(report)
}

/// Near-duplicates among documents a caller reads itself (a build's `near_dup` stage): hand
/// them over in order with [`Clusterer::add`], then [`Clusterer::finish`] names the kept
/// document of every removed one. The passes are [`run`]'s; work files go to a folder the
/// caller gives, and memory holds what [`run`]'s does.
pub struct Clusterer {
    work: PathBuf,
    settings: Settings,
    signer: passes::Signer,
}

/// A document [`Clusterer::finish`] found to be a near-duplicate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Removal {
    /// Its place among the documents added (0-based).
    pub doc: u64,
    /// The place of the document kept in its stead (its cluster's first).
    pub kept: u64,
    /// The exact Jaccard similarity of the two documents' shingle sets.
    pub jaccard: f32,
}

/// What [`Clusterer::finish`] found.
#[derive(Debug, Clone)]
pub struct Clustered {
    pub documents: u64,
    pub clusters: u64,
    pub candidates: u64,
    pub similar_pairs: u64,
    /// Removed documents, in order.
    pub removed: Vec<Removal>,
}

impl Clusterer {
    /// Starts with no documents; `work` (created if absent) holds the passes' files.
    pub fn new(work: &Path, settings: Settings) -> Result<Clusterer> {
        settings.check()?;
        std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
        Ok(Clusterer {
            work: work.to_path_buf(),
            settings,
            signer: passes::Signer::create(work, &settings)?,
        })
    }

    /// Adds `items` as the next documents, signed on all cores; `doc` gives an item's id and
    /// text.
    pub fn add<T: Sync, I: AsRef<str>, X: AsRef<str>>(
        &mut self,
        items: &[T],
        doc: impl Fn(&T) -> (I, X) + Sync,
    ) -> Result<()> {
        self.signer.add(items, |t| Ok(doc(t)))
    }

    /// Finds the clusters, writes them to `clusters_jsonl` (one line per cluster: `kept`,
    /// `size`, `dropped`, `jaccard`) and gives every removed document.
    pub fn finish(self, clusters_jsonl: &Path) -> Result<Clustered> {
        let signed = self.signer.finish(Vec::new())?;
        let found = passes::candidates(&signed, &self.work, &self.settings)?;
        let clusters = passes::clusters(
            &signed,
            &found.roots,
            clusters_jsonl,
            &self.work,
            &self.settings,
        )?;
        let removed = found
            .roots
            .iter()
            .enumerate()
            .filter(|(i, r)| **r != *i as u64)
            .map(|(i, &kept)| Removal {
                doc: i as u64,
                kept,
                jaccard: clusters.sims.get(i).copied().unwrap_or(f32::NAN),
            })
            .collect();
        Ok(Clustered {
            documents: signed.documents,
            clusters: clusters.clusters,
            candidates: found.candidates,
            similar_pairs: found.similar,
            removed,
        })
    }
}

#[cfg(test)]
mod tests;
