//! Views: what one unit of a stage reads.
//!
//! A view is a shard of samples (a source part, or what a transforming stage wrote) with the
//! decisions of the filters applied to it since, in order. Filters do not copy samples: each writes
//! one decision per row that reached it (kept, or dropped with a reason), and the next stage reads
//! the shard through that mask. A view's key hashes its files' checksums, so a view is known by its
//! content, whichever build or machine made it.
//!
//! A view also has a *slot*: where it sits in the build (the source, file and part it came from,
//! prefixed with the input name where a stage has several), stable while its content changes. A
//! per-sample stage looks up its previous unit in the same slot to reuse the results of inputs it
//! has already seen.

use crate::{Error, Result};
use corpus::shard::{FileInfo, Projection, ShardReader};
use serde::{Deserialize, Serialize};
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

/// A shard read through the decisions of the filters after it; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Where in the build the view sits (stable across rebuilds).
    pub slot: String,
    /// The shard of samples (its tombstones are not part of the view).
    pub base: FileInfo,
    /// The filters' decision files, in the order they ran; each has one row per row that got
    /// through the ones before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FileInfo>,
    /// Samples the view yields.
    pub rows: u64,
}

impl View {
    /// The content key: xxh3-128 of the files' checksums.
    pub fn key(&self) -> String {
        let mut h = Xxh3::new();
        for f in self.files() {
            h.update(f.checksum.as_bytes());
            h.update(b"\n");
        }
        format!("{:032x}", h.digest128())
    }

    /// Every file the view reads.
    pub fn files(&self) -> impl Iterator<Item = &FileInfo> {
        std::iter::once(&self.base).chain(&self.filters)
    }

    /// The same view in another slot.
    pub fn in_slot(&self, slot: String) -> View {
        View {
            slot,
            ..self.clone()
        }
    }

    /// This view after a filter's decisions, of which `kept` kept their row.
    pub fn filtered(&self, decisions: FileInfo, kept: u64) -> View {
        let mut v = self.clone();
        v.filters.push(decisions);
        v.rows = kept;
        v
    }

    /// The samples of `entries` read from this view; a row that is not a sample is corrupt.
    pub fn samples<'a>(
        &self,
        root: &Path,
        entries: &'a [corpus::shard::Entry],
    ) -> Result<Vec<&'a crate::sample::Sample>> {
        entries
            .iter()
            .map(|e| {
                e.sample.as_ref().ok_or_else(|| Error::Corrupt {
                    path: root.join(&self.base.path),
                    message: format!("row {} of the view is not a sample", e.row + 1),
                })
            })
            .collect()
    }

    /// A reader of the view's samples (`root`: the output folder the files' paths start from).
    pub fn open(&self, root: &Path, projection: Projection) -> Result<ShardReader> {
        let base = root.join(&self.base.path);
        let reader = ShardReader::open(&base, projection)?;
        if self.filters.is_empty() && self.rows == self.base.rows {
            return Ok(reader); // no tombstones, no filters: every row
        }
        Ok(reader.with_mask(self.mask(root)?)?)
    }

    /// Which rows of the base shard the view yields, checked against every decision file.
    fn mask(&self, root: &Path) -> Result<Vec<bool>> {
        let base = decisions(root, &self.base)?;
        let mut keep: Vec<bool> = base
            .iter()
            .map(|(id, dropped)| id.is_some() && dropped.is_none())
            .collect();
        for f in &self.filters {
            let path = root.join(&f.path);
            let rows = decisions(root, f)?;
            let mut next = rows.iter();
            for (k, live) in keep.iter_mut().enumerate() {
                if !*live {
                    continue;
                }
                let Some((id, dropped)) = next.next() else {
                    return Err(corrupt(&path, "has fewer rows than its input"));
                };
                if id != &base[k].0 {
                    return Err(corrupt(
                        &path,
                        &format!("row for {:?} where its input has {:?}", id, base[k].0),
                    ));
                }
                *live = dropped.is_none();
            }
            if next.next().is_some() {
                return Err(corrupt(&path, "has more rows than its input"));
            }
        }
        let live = keep.iter().filter(|k| **k).count() as u64;
        if live != self.rows {
            return Err(corrupt(
                &root.join(&self.base.path),
                &format!("the view yields {live} rows, its record says {}", self.rows),
            ));
        }
        Ok(keep)
    }
}

fn corrupt(path: &Path, message: &str) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        message: format!("does not match the build's records: {message}"),
    }
}

/// Every row's `id` and `dropped` of a shard.
pub(crate) fn decisions(
    root: &Path,
    file: &FileInfo,
) -> Result<Vec<(Option<String>, Option<String>)>> {
    let mut r = ShardReader::open(&root.join(&file.path), Projection::Decisions)?;
    let mut out = Vec::with_capacity(r.rows() as usize);
    while let Some(entries) = r.next_entries()? {
        out.extend(entries.into_iter().map(|e| (e.id, e.dropped)));
    }
    Ok(out)
}
