//! Writing outputs so that nothing half-written is ever left under a final name.

use crate::read::Raw;
use crate::{Batch, Compression, Error, Format, Result};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An output folder assembled under a temporary name beside its target and moved into place by
/// [`StagedDir::commit`]. Dropped without a commit, it removes itself, so a failed run leaves the
/// target as it was.
pub struct StagedDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Prepares a staging folder for `target` (which may already exist: a commit replaces the
    /// entries it writes and leaves others alone).
    pub fn create(target: &Path) -> Result<StagedDir> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let staging = parent.join(format!(".{name}.phiforge-tmp-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(StagedDir {
            target: target.to_path_buf(),
            staging,
            committed: false,
        })
    }

    /// Where to write `relative` while staging (its parent folders are created).
    pub fn path(&self, relative: impl AsRef<Path>) -> Result<PathBuf> {
        let p = self.staging.join(relative);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        Ok(p)
    }

    /// The final folder.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the staged entries into the target. `last` (if staged) is moved after all others, so
    /// its presence marks a complete output.
    pub fn commit(mut self, last: Option<&str>) -> Result<()> {
        // Everything staged reaches the disk before any of it is moved into place.
        sync_tree(&self.staging)?;
        if !self.target.exists() {
            std::fs::rename(&self.staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
        } else {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&self.staging)
                .map_err(|e| Error::io(&self.staging, e))?
                .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(&self.staging, e)))
                .collect::<Result<_>>()?;
            entries.sort_by_key(|p| {
                p.file_name()
                    .map(|n| Some(n.to_string_lossy()) == last.map(Into::into))
            });
            for from in entries {
                let Some(name) = from.file_name() else {
                    continue;
                };
                let to = self.target.join(name);
                if to.is_dir() {
                    std::fs::remove_dir_all(&to).map_err(|e| Error::io(&to, e))?;
                }
                std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
            }
            std::fs::remove_dir_all(&self.staging).map_err(|e| Error::io(&self.staging, e))?;
        }
        crate::atomic::sync_dir(&self.target)?;
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::atomic::sync_dir(parent)?;
        }
        self.committed = true;
        Ok(())
    }
}

/// Fsyncs every file and folder under `dir`.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&path, e))?;
        }
    }
    crate::atomic::sync_dir(dir)
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// A byte sink that compresses as its file name says; [`LineSink::finish`] completes the stream.
pub struct LineSink {
    path: PathBuf,
    inner: Sink,
}

enum Sink {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

/// Creates `path` for writing, compressed with `c`.
pub fn open_writer(path: &Path, c: Compression) -> Result<LineSink> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let buf = BufWriter::with_capacity(1 << 20, file);
    let inner = match c {
        Compression::None => Sink::Plain(buf),
        Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
            buf,
            flate2::Compression::new(6),
        )),
        Compression::Zstd => {
            Sink::Zstd(zstd::stream::write::Encoder::new(buf, 3).map_err(|e| Error::io(path, e))?)
        }
    };
    Ok(LineSink {
        path: path.to_path_buf(),
        inner,
    })
}

impl LineSink {
    /// Writes `bytes` (the caller adds newlines).
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let r = match &mut self.inner {
            Sink::Plain(w) => w.write_all(bytes),
            Sink::Gzip(w) => w.write_all(bytes),
            Sink::Zstd(w) => w.write_all(bytes),
        };
        r.map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes and closes the stream (writing the compression trailer).
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        let r = match self.inner {
            Sink::Plain(mut w) => w.flush(),
            Sink::Gzip(w) => w.finish().and_then(|mut w| w.flush()),
            Sink::Zstd(w) => w.finish().and_then(|mut w| w.flush()),
        };
        r.map_err(|e| Error::io(&path, e))
    }
}

/// Writes chosen records of input batches to `dest` in the input's own format, unchanged, with an
/// optional annotation per record (a JSON object text), which is added as the field `_phiforge`
/// (JSON lines), the column `_phiforge` (Parquet), or a line of `_phiforge.jsonl` in the output
/// folder (text folders; `NAME._phiforge.jsonl` beside a single text file).
pub struct FormatWriter {
    dest: PathBuf,
    kind: WriterKind,
}

enum WriterKind {
    Lines(LineSink),
    Parquet(Option<ArrowWriter<File>>),
    /// Text files, copied; `single` for one file (written as `dest` itself) rather than a folder.
    Files {
        single: bool,
        notes: Option<LineSink>,
    },
}

impl FormatWriter {
    /// Prepares `dest` for records of `format` (for a text folder or file, `dest` is a folder).
    pub fn create(dest: &Path, format: Format) -> Result<FormatWriter> {
        let kind = match format {
            Format::JsonLines(c) => WriterKind::Lines(open_writer(dest, c)?),
            Format::Parquet => WriterKind::Parquet(None),
            Format::Text => WriterKind::Files {
                single: true,
                notes: None,
            },
            Format::TextDir => {
                std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
                WriterKind::Files {
                    single: false,
                    notes: None,
                }
            }
        };
        Ok(FormatWriter {
            dest: dest.to_path_buf(),
            kind,
        })
    }

    /// Writes records `rows` of `batch`, with `notes[k]` for `rows[k]` when given.
    pub fn write(&mut self, batch: &Batch, rows: &[usize], notes: Option<&[String]>) -> Result<()> {
        let note = |k: usize| notes.map(|n| n[k].as_str());
        match &mut self.kind {
            WriterKind::Lines(sink) => {
                for (k, &i) in rows.iter().enumerate() {
                    let Raw::Line(line) = batch.raw(i) else {
                        continue;
                    };
                    match note(k) {
                        Some(n) => sink.write_all(&annotate_line(line, n))?,
                        None => sink.write_all(line)?,
                    }
                    sink.write_all(b"\n")?;
                }
            }
            WriterKind::Parquet(writer) => {
                let Some(rb) = batch.record_batch() else {
                    return Ok(());
                };
                let idx = UInt32Array::from_iter_values(rows.iter().map(|&i| i as u32));
                let mut cols: Vec<ArrayRef> = rb
                    .columns()
                    .iter()
                    .map(|c| arrow_select::take::take(c.as_ref(), &idx, None))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::parquet(&self.dest, e))?;
                let mut fields: Vec<Arc<Field>> = rb.schema().fields().iter().cloned().collect();
                if notes.is_some() {
                    cols.push(Arc::new(StringArray::from_iter_values(
                        (0..rows.len()).map(|k| note(k).unwrap_or("")),
                    )));
                    fields.push(Arc::new(Field::new("_phiforge", DataType::Utf8, false)));
                }
                let schema = Arc::new(Schema::new(fields));
                let out = RecordBatch::try_new(schema.clone(), cols)
                    .map_err(|e| Error::parquet(&self.dest, e))?;
                if writer.is_none() {
                    let file = File::create(&self.dest).map_err(|e| Error::io(&self.dest, e))?;
                    *writer = Some(
                        ArrowWriter::try_new(file, schema, None)
                            .map_err(|e| Error::parquet(&self.dest, e))?,
                    );
                }
                if let Some(w) = writer {
                    w.write(&out).map_err(|e| Error::parquet(&self.dest, e))?;
                }
            }
            WriterKind::Files {
                single,
                notes: notes_sink,
            } => {
                for (k, &i) in rows.iter().enumerate() {
                    let Raw::File { path, relative } = batch.raw(i) else {
                        continue;
                    };
                    let to = if *single {
                        self.dest.clone()
                    } else {
                        self.dest.join(relative)
                    };
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                    }
                    std::fs::copy(path, &to).map_err(|e| Error::io(&to, e))?;
                    if let Some(n) = note(k) {
                        if notes_sink.is_none() {
                            let notes_path = if *single {
                                let mut p = self.dest.clone().into_os_string();
                                p.push("._phiforge.jsonl");
                                PathBuf::from(p)
                            } else {
                                self.dest.join("_phiforge.jsonl")
                            };
                            *notes_sink = Some(open_writer(&notes_path, Compression::None)?);
                        }
                        if let Some(s) = notes_sink {
                            let file = serde_json::to_string(relative).unwrap_or_default();
                            s.write_all(
                                format!("{{\"file\":{file},\"_phiforge\":{n}}}\n").as_bytes(),
                            )?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Completes the output. A Parquet output that received no batch at all is not created.
    pub fn finish(self) -> Result<()> {
        match self.kind {
            WriterKind::Lines(sink) => sink.finish(),
            WriterKind::Parquet(Some(w)) => w
                .close()
                .map(|_| ())
                .map_err(|e| Error::parquet(&self.dest, e)),
            WriterKind::Parquet(None) => Ok(()),
            WriterKind::Files { notes: Some(s), .. } => s.finish(),
            WriterKind::Files { notes: None, .. } => Ok(()),
        }
    }
}

/// Adds `"_phiforge": note` as the last field of a JSON object line, leaving the rest of its bytes
/// as they were.
fn annotate_line(line: &[u8], note: &str) -> Vec<u8> {
    let end = line.iter().rposition(|&b| b == b'}').unwrap_or(line.len());
    let body = &line[..end];
    let empty = body
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    let mut out = Vec::with_capacity(line.len() + note.len() + 16);
    out.extend_from_slice(body);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"_phiforge\":");
    out.extend_from_slice(note.as_bytes());
    out.extend_from_slice(&line[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_keeps_the_line() {
        let out = annotate_line(br#"{"text": "a}b", "id": 1}"#, r#"{"v":1}"#);
        assert_eq!(out, br#"{"text": "a}b", "id": 1,"_phiforge":{"v":1}}"#);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["_phiforge"]["v"], 1);
        assert_eq!(annotate_line(b"{ }", "1"), b"{ \"_phiforge\":1}");
    }

    #[test]
    fn staged_dir_is_removed_without_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        {
            let s = StagedDir::create(&target).unwrap();
            std::fs::write(s.path("a.txt").unwrap(), "x").unwrap();
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let s = StagedDir::create(&target).unwrap();
        std::fs::write(s.path("a.txt").unwrap(), "x").unwrap();
        s.commit(None).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a.txt")).unwrap(), "x");
        let s = StagedDir::create(&target).unwrap();
        std::fs::write(s.path("a.txt").unwrap(), "y").unwrap();
        std::fs::write(s.path("b.txt").unwrap(), "z").unwrap();
        s.commit(Some("a.txt")).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a.txt")).unwrap(), "y");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
