//! `dedup_exact`: keeps the first sample of each content id, in the stage's input order (inputs as
//! listed, then their views in order, then rows); the others are dropped as `duplicate`.
//!
//! It must see every input, yet holds only ids, in two kinds of unit:
//!
//! 1. *scan* units, one per partition of the ids by hash (one partition until the ids outgrow
//!    `execution.dedup_partition_rows`): each reads the id column of every view and notes, per
//!    view, the rows whose id (in its partition) was seen before. Output: a small `.dups` file.
//! 2. *apply* units, one per view: the view's decisions from every partition's notes, written as a
//!    filter's are. A view whose decisions do not change keeps its key, so the stages after it do
//!    not run again.
//!
//! The `.dups` format: `PFDUPS1\0`, the view count `V` (u64), `V + 1` offsets (u64, counted in
//! rows), then the rows (u32, ascending per view), all little-endian.

use crate::unit::{create_shard, finish_shard, Produced, UnitSpec, Work};
use crate::view::View;
use crate::{Error, Result};
use corpus::shard::{FileInfo, Projection};
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use xxhash_rust::xxh3::xxh3_128;

const MAGIC: &[u8; 8] = b"PFDUPS1\0";
/// The reason exact dedup drops a sample for.
pub const DUPLICATE: &str = "duplicate";

/// The id as a number: content ids are 32 hex digits; anything else is hashed.
fn id_hash(id: &str) -> u128 {
    u128::from_str_radix(id, 16).unwrap_or_else(|_| xxh3_128(id.as_bytes()))
}

/// How many partitions `rows` ids need at `per_partition` ids each.
pub fn partitions(rows: u64, per_partition: u64) -> u32 {
    rows.div_ceil(per_partition.max(1))
        .clamp(1, u32::MAX as u64) as u32
}

/// The scan units of a whole-set stage over `views`: exact dedup's one per partition of
/// `per_partition` ids; near-duplicate removal's one, since clusters span every input (its memory
/// is bounded by its disk passes).
pub fn scan_units(
    stage: &str,
    fp: &str,
    views: &[View],
    near_dup: bool,
    per_partition: u64,
) -> Vec<UnitSpec> {
    if near_dup {
        let work = Work::NearDupScan {
            views: views.to_vec(),
        };
        return vec![UnitSpec::new(stage, fp, "scan".into(), work)];
    }
    let parts = partitions(views.iter().map(|v| v.rows).sum(), per_partition);
    (0..parts)
        .map(|part| {
            let work = Work::DedupScan {
                views: views.to_vec(),
                part,
                parts,
            };
            UnitSpec::new(stage, fp, format!("scan {part} of {parts}"), work)
        })
        .collect()
}

/// Scan unit: which rows of `views` repeat an id of partition `part` of `parts` seen earlier.
pub fn scan(
    spec: &UnitSpec,
    root: &Path,
    views: &[View],
    part: u32,
    parts: u32,
) -> Result<Produced> {
    let mut seen: HashSet<u128> = HashSet::new();
    let mut dups: Vec<Vec<u32>> = vec![Vec::new(); views.len()];
    let mut rows = 0u64;
    for (v, view) in views.iter().enumerate() {
        let mut reader = view.open(root, Projection::Ids)?;
        let mut k = 0u32;
        while let Some(entries) = reader.next_entries()? {
            for e in entries {
                let h = id_hash(e.id.as_deref().unwrap_or_default());
                if (h as u64) % parts as u64 == part as u64 && !seen.insert(h) {
                    dups[v].push(k);
                }
                k += 1;
            }
        }
        rows += k as u64;
    }
    let info = write_dups(root, spec.file(DUPS), &dups)?;
    Ok(Produced {
        files: vec![info],
        rows_in: rows,
        run: rows,
        ..Default::default()
    })
}

/// The suffix of the files [`write_dups`] writes.
pub(super) const DUPS: &str = ".dups";

/// The `.dups` files among scan units' outputs (a near-duplicate scan also writes its clusters),
/// for the apply units.
pub fn dups_files<'a>(outputs: impl IntoIterator<Item = &'a FileInfo>) -> Vec<FileInfo> {
    outputs
        .into_iter()
        .filter(|f| f.path.to_string_lossy().ends_with(DUPS))
        .cloned()
        .collect()
}

/// Writes a `.dups` file at `rel` noting, per view, the rows to drop (ascending).
pub(super) fn write_dups(
    root: &Path,
    rel: std::path::PathBuf,
    dups: &[Vec<u32>],
) -> Result<FileInfo> {
    let mut f = corpus::atomic::AtomicFile::create(&root.join(&rel))?;
    let io = |e| Error::io(root.join(&rel), e);
    f.write_all(MAGIC).map_err(io)?;
    f.write_all(&(dups.len() as u64).to_le_bytes())
        .map_err(io)?;
    let mut offset = 0u64;
    f.write_all(&offset.to_le_bytes()).map_err(io)?;
    for d in dups {
        offset += d.len() as u64;
        f.write_all(&offset.to_le_bytes()).map_err(io)?;
    }
    for d in dups {
        for r in d {
            f.write_all(&r.to_le_bytes()).map_err(io)?;
        }
    }
    let written = f.commit()?;
    Ok(FileInfo {
        path: rel,
        rows: offset,
        bytes: written.bytes,
        checksum: written.checksum(),
    })
}

/// The rows of view `index` that a scan file notes as repeats.
fn read_dups(root: &Path, scan: &FileInfo, index: u32) -> Result<Vec<u32>> {
    let path = root.join(&scan.path);
    let bad = |m: &str| Error::Corrupt {
        path: path.clone(),
        message: m.to_string(),
    };
    let mut f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut head = [0u8; 16];
    f.read_exact(&mut head).map_err(|e| Error::io(&path, e))?;
    if &head[..8] != MAGIC {
        return Err(bad("not a dedup scan file"));
    }
    let views = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
    if index as u64 >= views {
        return Err(bad("has no entry for this view"));
    }
    let mut offsets = [0u8; 16];
    f.seek(SeekFrom::Start(16 + 8 * index as u64))
        .and_then(|_| f.read_exact(&mut offsets))
        .map_err(|e| Error::io(&path, e))?;
    let start = u64::from_le_bytes(offsets[..8].try_into().unwrap_or_default());
    let end = u64::from_le_bytes(offsets[8..].try_into().unwrap_or_default());
    if end < start {
        return Err(bad("offsets out of order"));
    }
    let mut body = vec![0u8; ((end - start) * 4) as usize];
    f.seek(SeekFrom::Start(16 + 8 * (views + 1) + 4 * start))
        .and_then(|_| f.read_exact(&mut body))
        .map_err(|e| Error::io(&path, e))?;
    Ok(body
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Apply unit: the decisions for view `index` of the stage, from every partition's scan; the
/// rows the scans note are dropped for `reason`.
pub fn apply(
    spec: &UnitSpec,
    root: &Path,
    view: &View,
    index: u32,
    scans: &[FileInfo],
    reason: &str,
) -> Result<Produced> {
    let mut dups = Vec::new();
    for s in scans {
        dups.extend(read_dups(root, s, index)?);
    }
    dups.sort_unstable();
    let mut next = dups.iter().peekable();
    let rel = spec.file(".parquet");
    let mut w = create_shard(root, &rel)?;
    let mut reader = view.open(root, Projection::Ids)?;
    let (mut k, mut kept, mut dropped) = (0u32, 0u64, 0u64);
    while let Some(entries) = reader.next_entries()? {
        for e in entries {
            let id = e.id.as_deref().unwrap_or_default();
            if next.peek() == Some(&&k) {
                next.next();
                w.push_decision(id, Some(reason))?;
                dropped += 1;
            } else {
                w.push_decision(id, None)?;
                kept += 1;
            }
            k += 1;
        }
    }
    if next.next().is_some() {
        return Err(Error::stage(
            &spec.stage,
            "a dedup scan names rows past the end of its view; run the build again with --force",
        ));
    }
    let info = finish_shard(w, &rel)?;
    let mut counts = std::collections::BTreeMap::new();
    if dropped > 0 {
        counts.insert(reason.to_string(), dropped);
    }
    Ok(Produced {
        views: vec![view.filtered(info.clone(), kept)],
        files: vec![info],
        rows_in: view.rows,
        rows_out: kept,
        run: view.rows,
        dropped: counts,
        ..Default::default()
    })
}
