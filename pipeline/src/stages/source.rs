//! Sources: documents read into the build.
//!
//! Each file of a source (or text folder: its `.txt`/`.md` files are one input) is one unit. The
//! unit streams the file and cuts its samples into parts of about `execution.unit_mb` of text, in
//! file order; each part is a view of its own, in slot `FILE#K`, and one unit of every per-sample
//! stage after it.
//!
//! A file is known by its name relative to the recipe's folder (so the folder a build starts from
//! does not matter) and the xxh3 of its bytes, streamed. A build that finds a file's size and
//! modification time as recorded reuses the recorded hash instead of reading the file again.

use crate::recipe::{Recipe, Source};
use crate::sample::{Content, Lineage, Sample, SourceRef};
use crate::stages::fingerprint;
use crate::unit::{create_shard, finish_shard, Produced, UnitSpec};
use crate::view::View;
use crate::{Error, Result};
use corpus::{BatchReader, TextSpec};
use rayon::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

/// Version of reading: bump when the samples read from the same file change.
const VERSION: u32 = 1;

/// The fingerprint of reading `source`.
pub fn source_fingerprint(name: &str, source: &Source) -> String {
    fingerprint(&json!({
        "type": "source", "version": VERSION, "name": name,
        "class": source.class, "format": source.format,
        "text_field": source.text_field, "id_field": source.id_field,
    }))
}

/// The files (and text folders) of source `name`, in order.
pub fn files(recipe: &Recipe, name: &str) -> Result<Vec<PathBuf>> {
    let source = &recipe.sources[name];
    let pattern = recipe.resolve(&source.path).to_string_lossy().into_owned();
    Ok(corpus::expand_inputs(&[pattern])?)
}

/// A file's name as the build records it: relative to the recipe's folder where it lies inside it.
pub fn relative(recipe: &Recipe, path: &Path) -> String {
    path.strip_prefix(&recipe.dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn mtime_ns(m: &std::fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A cheap signature of a file's state: its size and modification time (of every text file, for a
/// folder). When it matches the recorded one, the recorded content hash is reused.
pub fn signature(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(format!("{}:{}", meta.len(), mtime_ns(&meta)));
    }
    let mut h = Xxh3::new();
    for (file, rel) in corpus::text_files(path)? {
        let m = std::fs::metadata(&file).map_err(|e| Error::io(&file, e))?;
        h.update(format!("{rel}\0{}:{}\n", m.len(), mtime_ns(&m)).as_bytes());
    }
    Ok(format!("dir:{:016x}", h.digest()))
}

/// The content hash of a file (its bytes, streamed) or text folder (each text file's name and
/// hash).
pub fn content_hash(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return Ok(corpus::atomic::hash_file(path)?.checksum());
    }
    let mut h = Xxh3::new();
    for (file, rel) in corpus::text_files(path)? {
        let w = corpus::atomic::hash_file(&file)?;
        h.update(format!("{rel}\0{}\n", w.checksum()).as_bytes());
    }
    Ok(format!("dir:{:016x}", h.digest()))
}

/// Reads one source document into a sample.
fn source_sample(name: &str, source: &Source, fp: &str, file: &str, doc: corpus::Doc) -> Sample {
    Sample::new(
        source.class,
        Content::Text {
            text: doc.text.into_owned(),
        },
        Lineage {
            stage: format!("source:{name}"),
            stage_fingerprint: fp.to_string(),
            source: Some(SourceRef {
                source: name.to_string(),
                file: file.to_string(),
                line: doc.line,
                id: doc.id.into_owned(),
            }),
            ..Default::default()
        },
    )
}

/// Runs a source unit: reads `file` (relative to the recipe's folder) into parts.
pub fn run(
    spec: &UnitSpec,
    root: &Path,
    recipe: &Recipe,
    name: &str,
    file: &str,
    hash: &str,
) -> Result<Produced> {
    let source = recipe
        .sources
        .get(name)
        .ok_or_else(|| Error::stage(name, "no such source in the recipe"))?;
    let path = recipe.resolve(file);
    if content_hash(&path)? != hash {
        return Err(Error::stage(
            name,
            format!("{file} changed while the build ran; run the build again"),
        ));
    }
    let text_spec = TextSpec {
        text_field: source.text_field.clone(),
        id_field: source.id_field.clone(),
    };
    let unit_bytes = recipe.execution.unit_bytes();
    let mut out = Produced::default();
    let mut part: Option<(corpus::shard::ShardWriter, PathBuf)> = None;
    let mut part_bytes = 0u64;
    let finish = |part: &mut Option<(corpus::shard::ShardWriter, PathBuf)>,
                  out: &mut Produced|
     -> Result<()> {
        if let Some((w, rel)) = part.take() {
            let info = finish_shard(w, &rel)?;
            out.views.push(View {
                slot: format!("{file}#{}", out.views.len()),
                rows: info.rows,
                base: info.clone(),
                filters: Vec::new(),
            });
            out.files.push(info);
        }
        Ok(())
    };
    for batch in BatchReader::open(&path, &text_spec, false)? {
        let batch = batch?;
        let samples: Vec<Sample> = (0..batch.len())
            .into_par_iter()
            .map(|i| {
                let doc = batch.doc(i, &text_spec)?;
                Ok(source_sample(name, source, &spec.fingerprint, file, doc))
            })
            .collect::<Result<_>>()?;
        for s in &samples {
            if part_bytes >= unit_bytes {
                finish(&mut part, &mut out)?;
                part_bytes = 0;
            }
            if part.is_none() {
                let rel = spec.file(&format!("-{}.parquet", out.views.len()));
                part = Some((create_shard(root, &rel)?, rel));
            }
            if let Some((w, _)) = part.as_mut() {
                w.push_sample(s, None)?;
            }
            part_bytes += s.content.text_bytes() as u64;
        }
        out.rows_in += samples.len() as u64;
    }
    finish(&mut part, &mut out)?;
    out.rows_out = out.rows_in;
    out.run = 1;
    Ok(out)
}
