//! `near_dup`: near-duplicate removal across every input of the stage ([`dedup::neardup`]:
//! MinHash signatures, LSH buckets on disk, candidates checked by exact Jaccard similarity,
//! clusters by union-find). The first sample of each cluster, in the stage's input order, is
//! kept; the others are dropped as `near_duplicate`.
//!
//! It must see every input, in two kinds of unit, as exact dedup ([`super::dedup_exact`]):
//!
//! 1. one *scan* unit streams the text of every view into the clusterer, whose work files (band
//!    buckets, shingle sets, ids) sit on disk beside the unit's output and are removed when it
//!    ends. It writes a `.dups` file (dedup's format: per view, the rows to drop) and a
//!    `.clusters.jsonl` naming, for each cluster, the kept sample, the dropped ones and their
//!    Jaccard similarities to it.
//! 2. *apply* units, one per view, turn the `.dups` file into the view's decisions.
//!
//! Memory holds one batch of text and about 28 bytes per sample (see [`dedup::neardup`]).

use super::dedup_exact::write_dups;
use crate::sample::Sample;
use crate::unit::{Produced, UnitSpec};
use crate::view::View;
use crate::{Error, Result};
use corpus::shard::Projection;
use dedup::neardup::{Clusterer, Settings};
use std::path::Path;

/// The reason a near-duplicate is dropped for.
pub const NEAR_DUPLICATE: &str = "near_duplicate";

/// Scan unit: clusters the samples of `views`, noting the rows to drop.
pub fn scan(spec: &UnitSpec, root: &Path, views: &[View], settings: &Settings) -> Result<Produced> {
    let work = root.join(spec.file(".work"));
    if work.exists() {
        // Left by a scan that was killed.
        std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    }
    let result = cluster(spec, root, views, settings, &work);
    let cleaned = std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e));
    let produced = result?;
    cleaned?;
    Ok(produced)
}

fn cluster(
    spec: &UnitSpec,
    root: &Path,
    views: &[View],
    settings: &Settings,
    work: &Path,
) -> Result<Produced> {
    let stage = |e: dedup::Error| Error::stage(&spec.stage, e);
    let mut clusterer = Clusterer::new(work, *settings).map_err(stage)?;
    // Where each view's rows start among the samples handed to the clusterer.
    let mut starts = Vec::with_capacity(views.len() + 1);
    let mut rows = 0u64;
    for view in views {
        starts.push(rows);
        // Ids and texts: the stored signals are not parsed.
        let mut reader = view.open(root, Projection::Text)?;
        while let Some(entries) = reader.next_entries()? {
            let samples = view.samples(root, &entries)?;
            clusterer
                .add(&samples, |s: &&Sample| {
                    let s: &Sample = s;
                    (s.id.as_str(), s.content.text())
                })
                .map_err(stage)?;
            rows += samples.len() as u64;
        }
    }
    starts.push(rows);
    let clusters_rel = spec.file(".clusters.jsonl");
    let found = clusterer.finish(&root.join(&clusters_rel)).map_err(stage)?;
    let mut dups: Vec<Vec<u32>> = vec![Vec::new(); views.len()];
    let mut v = 0;
    for r in &found.removed {
        while r.doc >= starts[v + 1] {
            v += 1;
        }
        dups[v].push((r.doc - starts[v]) as u32);
    }
    let info = write_dups(root, spec.file(super::dedup_exact::DUPS), &dups)?;
    let clusters = corpus::atomic::hash_file(&root.join(&clusters_rel))?;
    Ok(Produced {
        files: vec![
            info,
            corpus::shard::FileInfo {
                path: clusters_rel,
                rows: found.clusters,
                bytes: clusters.bytes,
                checksum: clusters.checksum(),
            },
        ],
        rows_in: rows,
        run: rows,
        ..Default::default()
    })
}
