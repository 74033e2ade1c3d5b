//! Units of work: what runs, in this process or as a Slurm task, and what each one leaves behind.
//!
//! A [`UnitSpec`] says everything a unit needs (its stage, fingerprint and [`Work`]: the files it
//! reads, by path and checksum), so it can run on any machine that sees the output folder. Its key
//! hashes the stage's fingerprint and the work's inputs, so the same work always has the same key
//! and its files the same names: `.phiforge/units/STAGE/KEY*`.
//!
//! A unit writes its files under temporary names, renames them into place, and last writes its
//! completion record ([`Done`]: files with sizes and checksums, the views it contributes, counts and
//! drop reasons) beside them, `KEY.done.json`. The build's store indexes these records; a record on
//! disk that the store has not seen (a build killed just after a unit finished, a Slurm task) is
//! checked against its files' checksums and taken in, not run again.

use crate::recipe::OutputFormat;
use crate::view::View;
use crate::{Error, Result};
use corpus::shard::{FileInfo, ShardWriter};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

/// The folder, inside the output folder, that holds the build's work.
pub const WORK_DIR: &str = ".phiforge";

/// A run of rows of a view: `take` rows after the first `skip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub view: View,
    pub skip: u64,
    pub take: u64,
}

/// What a unit does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "work", rename_all = "snake_case")]
pub enum Work {
    /// Reads one source file (or text folder), given relative to the recipe's folder, whose bytes
    /// hash to `hash`, into parts of about `execution.unit_mb` each.
    Source { file: String, hash: String },
    /// Runs a per-sample stage over one view; `memo` is the same stage's earlier output for this
    /// slot, whose results are reused for inputs seen before.
    PerSample {
        view: View,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memo: Option<FileInfo>,
    },
    /// Exact dedup, partition `part` of `parts` (by id hash): which rows of the views repeat an
    /// id seen earlier.
    DedupScan {
        views: Vec<View>,
        part: u32,
        parts: u32,
    },
    /// Near-duplicate removal: the clusters of all the views' samples, and the rows to drop.
    NearDupScan { views: Vec<View> },
    /// Exact dedup or near-duplicate removal: the decisions for view number `index`, from every
    /// scan.
    DedupApply {
        view: View,
        index: u32,
        scans: Vec<FileInfo>,
    },
    /// Writes one final output file (`dest`, relative to the output folder) from these slices.
    Output {
        slices: Vec<Slice>,
        dest: String,
        format: OutputFormat,
    },
}

impl Work {
    /// What the work reads, as text: the part of the unit key besides the fingerprint.
    fn identity(&self) -> String {
        match self {
            Work::Source { file, hash } => format!("source\n{file}\n{hash}"),
            Work::PerSample { view, .. } => format!("per_sample\n{}", view.key()),
            Work::DedupScan { views, part, parts } => {
                let keys: Vec<String> = views.iter().map(View::key).collect();
                format!("dedup_scan\n{part}/{parts}\n{}", keys.join("\n"))
            }
            Work::NearDupScan { views } => {
                let keys: Vec<String> = views.iter().map(View::key).collect();
                format!("near_dup_scan\n{}", keys.join("\n"))
            }
            Work::DedupApply { view, index, scans } => {
                let sums: Vec<&str> = scans.iter().map(|s| s.checksum.as_str()).collect();
                format!("dedup_apply\n{index}\n{}\n{}", view.key(), sums.join("\n"))
            }
            Work::Output {
                slices,
                dest,
                format,
            } => {
                let mut s = format!("output\n{dest}\n{}", format.extension());
                for sl in slices {
                    s.push_str(&format!("\n{} {} {}", sl.view.key(), sl.skip, sl.take));
                }
                s
            }
        }
    }
}

/// A unit: its key, its stage and fingerprint, its slot and its work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpec {
    pub key: String,
    pub stage: String,
    pub fingerprint: String,
    pub slot: String,
    pub work: Work,
}

impl UnitSpec {
    /// A unit of `stage` (fingerprint `fp`) in `slot`; its key is computed.
    pub fn new(stage: &str, fp: &str, slot: String, work: Work) -> UnitSpec {
        let mut h = Xxh3::new();
        h.update(fp.as_bytes());
        h.update(b"\n");
        h.update(work.identity().as_bytes());
        UnitSpec {
            key: format!("{:032x}", h.digest128()),
            stage: stage.to_string(),
            fingerprint: fp.to_string(),
            slot,
            work,
        }
    }

    /// A file of this unit, relative to the output folder: `.phiforge/units/STAGE/KEY{suffix}`.
    pub fn file(&self, suffix: &str) -> PathBuf {
        Path::new(WORK_DIR)
            .join("units")
            .join(&self.stage)
            .join(format!("{}{suffix}", self.key))
    }
}

/// What a unit produced: its files, views and counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Produced {
    /// Every file the unit wrote (paths relative to the output folder).
    pub files: Vec<FileInfo>,
    /// The views the unit contributes to its stage's output, in order.
    pub views: Vec<View>,
    /// Inputs read (source units: records read).
    pub rows_in: u64,
    /// Samples in the unit's views.
    pub rows_out: u64,
    /// Inputs whose result was reused from the slot's earlier unit.
    pub cached: u64,
    /// Inputs computed.
    pub run: u64,
    /// Inputs dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// What a transform changed in the samples it made, by kind (PII replaced, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub changed: BTreeMap<String, u64>,
}

/// A finished unit's completion record: the unit, and what it produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub key: String,
    pub stage: String,
    pub fingerprint: String,
    pub slot: String,
    #[serde(flatten)]
    pub out: Produced,
    pub seconds: f64,
}

impl Done {
    /// Where the record of unit `key` of `stage` lies.
    pub fn path(root: &Path, stage: &str, key: &str) -> PathBuf {
        root.join(WORK_DIR)
            .join("units")
            .join(stage)
            .join(format!("{key}.done.json"))
    }

    /// Writes the record (after the unit's files are in place).
    pub(crate) fn write(&self, root: &Path) -> Result<()> {
        let body = serde_json::to_vec_pretty(self).map_err(|e| Error::stage(&self.stage, e))?;
        corpus::atomic::write(&Done::path(root, &self.stage, &self.key), &body)?;
        Ok(())
    }

    /// The record of `spec` left on disk, if there is one and its files match it byte for byte
    /// (checksums); a record whose files do not match is ignored (the unit runs again).
    pub fn read_verified(root: &Path, spec: &UnitSpec) -> Result<Option<Done>> {
        let path = Done::path(root, &spec.stage, &spec.key);
        let body = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let Ok(done) = serde_json::from_slice::<Done>(&body) else {
            tracing::warn!(
                "{}: unreadable completion record; the unit runs again",
                path.display()
            );
            return Ok(None);
        };
        if done.key != spec.key || done.fingerprint != spec.fingerprint {
            return Ok(None);
        }
        for f in &done.out.files {
            let ok = match corpus::atomic::hash_file(&root.join(&f.path)) {
                Ok(w) => w.bytes == f.bytes && w.checksum() == f.checksum,
                Err(_) => false,
            };
            if !ok {
                tracing::warn!(
                    "{}: does not match its completion record; unit {} runs again",
                    f.path.display(),
                    spec.key
                );
                return Ok(None);
            }
        }
        Ok(Some(done))
    }

    /// Whether the unit's files are all present with their recorded sizes (what a build checks of
    /// units its store records: one `stat` each).
    pub fn files_present(&self, root: &Path) -> bool {
        self.out.files.iter().all(|f| {
            std::fs::metadata(root.join(&f.path))
                .map(|m| m.len() == f.bytes)
                .unwrap_or(false)
        })
    }
}

/// Starts a work shard at `rel` (relative to `root`).
pub(crate) fn create_shard(root: &Path, rel: &Path) -> Result<ShardWriter> {
    Ok(ShardWriter::create(&root.join(rel))?)
}

/// Completes a shard started with [`create_shard`]; its record names it relative to `root`.
pub(crate) fn finish_shard(w: ShardWriter, rel: &Path) -> Result<FileInfo> {
    let mut info = w.finish()?;
    info.path = rel.to_path_buf();
    Ok(info)
}
