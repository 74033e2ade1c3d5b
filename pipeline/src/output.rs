//! Final outputs: the samples of every stage no other stage reads, as `output.shards` files each,
//! and the manifest.
//!
//! File `K` of `N` of a stage holds the stage's rows `K·R/N` to `(K+1)·R/N` (R rows in all), in the
//! stage's order, so each file is one unit reading only the views it covers: files run in parallel
//! (or as Slurm tasks), and one whose rows did not change keeps its key and is not rewritten.
//! Parquet (zstd) by default, JSON lines on request (`output.format`). `OUT/manifest.json` lists
//! every file with its size, rows and checksum, with the recipe's fingerprint.

use crate::recipe::OutputFormat;
use crate::unit::{Done, Produced, Slice, UnitSpec, Work};
use crate::view::View;
use crate::{Error, Result};
use corpus::atomic::AtomicFile;
use corpus::output::OutputWriter;
use corpus::shard::{FileInfo, Projection};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// The fingerprint of a stage's outputs: the stage's, the format and the file count.
pub fn fingerprint(stage_fp: &str, format: OutputFormat, shards: usize) -> String {
    crate::stages::fingerprint(&serde_json::json!({
        "output": stage_fp, "format": format, "shards": shards,
    }))
}

/// The units that write stage `stage`'s `shards` output files from its views.
pub fn units(
    stage: &str,
    fp: &str,
    views: &[View],
    shards: usize,
    format: OutputFormat,
) -> Vec<UnitSpec> {
    let total: u64 = views.iter().map(|v| v.rows).sum();
    let n = shards.max(1) as u64;
    (0..n)
        .map(|k| {
            let (lo, hi) = (k * total / n, (k + 1) * total / n);
            let mut slices = Vec::new();
            let mut start = 0u64;
            for v in views {
                let end = start + v.rows;
                let (a, b) = (lo.max(start), hi.min(end));
                if a < b {
                    slices.push(Slice {
                        view: v.clone(),
                        skip: a - start,
                        take: b - a,
                    });
                }
                start = end;
            }
            let dest = format!("{stage}/part-{k:05}-of-{n:05}.{}", format.extension());
            UnitSpec::new(
                stage,
                fp,
                dest.clone(),
                Work::Output {
                    slices,
                    dest,
                    format,
                },
            )
        })
        .collect()
}

/// Where an output unit writes its samples.
enum Sink {
    Parquet(Box<OutputWriter>),
    Jsonl(Box<AtomicFile>, u64),
}

/// Output unit: writes `dest` (relative to `root`) from `slices`.
pub fn write_part(
    root: &Path,
    slices: &[Slice],
    dest: &str,
    format: OutputFormat,
) -> Result<Produced> {
    let path = root.join(dest);
    let mut sink = match format {
        OutputFormat::Parquet => Sink::Parquet(Box::new(OutputWriter::create(&path)?)),
        OutputFormat::Jsonl => Sink::Jsonl(Box::new(AtomicFile::create(&path)?), 0),
    };
    for slice in slices {
        let v = &slice.view;
        if let Sink::Parquet(w) = &mut sink {
            // A whole shard of samples only is copied as it is encoded.
            if v.filters.is_empty()
                && v.rows == v.base.rows
                && slice.skip == 0
                && slice.take == v.rows
            {
                w.copy_shard(&root.join(&v.base.path))?;
                continue;
            }
        }
        let mut reader = slice.view.open(root, Projection::Full)?;
        let (mut seen, end) = (0u64, slice.skip + slice.take);
        'view: while let Some(entries) = reader.next_entries()? {
            for e in entries {
                if seen >= end {
                    break 'view;
                }
                seen += 1;
                if seen <= slice.skip {
                    continue;
                }
                let Some(s) = e.sample else { continue };
                match &mut sink {
                    Sink::Parquet(w) => w.push_sample(&s)?,
                    Sink::Jsonl(f, rows) => {
                        serde_json::to_writer(&mut **f, &s)
                            .map_err(|e| Error::stage("output", format!("{dest}: {e}")))?;
                        f.write_all(b"\n").map_err(|e| Error::io(&path, e))?;
                        *rows += 1;
                    }
                }
            }
        }
        if seen < end {
            return Err(Error::Corrupt {
                path: root.join(&slice.view.base.path),
                message: format!("the view ended after {seen} rows; {end} were expected"),
            });
        }
    }
    let info = match sink {
        Sink::Parquet(w) => w.finish()?,
        Sink::Jsonl(f, rows) => {
            let w = f.commit()?;
            FileInfo {
                path: path.clone(),
                rows,
                bytes: w.bytes,
                checksum: w.checksum(),
            }
        }
    };
    let rows = info.rows;
    Ok(Produced {
        files: vec![FileInfo {
            path: dest.into(),
            ..info
        }],
        rows_in: rows,
        rows_out: rows,
        run: rows,
        ..Default::default()
    })
}

/// One output file in the manifest.
#[derive(Debug, Serialize)]
struct ManifestFile<'a> {
    path: String,
    bytes: u64,
    rows: u64,
    checksum: &'a str,
}

#[derive(Debug, Serialize)]
struct ManifestStage<'a> {
    name: &'a str,
    fingerprint: &'a str,
    rows: u64,
    files: Vec<ManifestFile<'a>>,
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    manifest_version: u32,
    phiforge_version: &'static str,
    recipe: &'a str,
    recipe_fingerprint: &'a str,
    format: OutputFormat,
    stages: Vec<ManifestStage<'a>>,
}

/// Writes `OUT/manifest.json` for the final stages' output units (name, fingerprint, records).
pub fn write_manifest(
    root: &Path,
    recipe: &str,
    recipe_fp: &str,
    format: OutputFormat,
    stages: &[(String, String, Vec<Done>)],
) -> Result<()> {
    let m = Manifest {
        manifest_version: 1,
        phiforge_version: env!("CARGO_PKG_VERSION"),
        recipe,
        recipe_fingerprint: recipe_fp,
        format,
        stages: stages
            .iter()
            .map(|(name, fp, done)| {
                let files: Vec<ManifestFile> = done
                    .iter()
                    .flat_map(|d| &d.out.files)
                    .map(|f| ManifestFile {
                        path: f.path.to_string_lossy().into_owned(),
                        bytes: f.bytes,
                        rows: f.rows,
                        checksum: &f.checksum,
                    })
                    .collect();
                ManifestStage {
                    name,
                    fingerprint: fp,
                    rows: files.iter().map(|f| f.rows).sum(),
                    files,
                }
            })
            .collect(),
    };
    let body = serde_json::to_vec_pretty(&m).map_err(|e| Error::stage("manifest", e))?;
    corpus::atomic::write(&root.join("manifest.json"), &body)?;
    Ok(())
}

/// Removes `part-*` files of a stage's output folder that are not among `keep` (left by an
/// earlier shard count or format).
pub fn remove_stale_parts(root: &Path, stage: &str, keep: &[String]) -> Result<()> {
    let dir = root.join(stage);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = format!("{stage}/{name}");
        if name.starts_with("part-") && !keep.contains(&rel) {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}
