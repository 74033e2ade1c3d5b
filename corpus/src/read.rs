//! Streaming readers: a file comes in as bounded [`Batch`]es, and each record is parsed on demand
//! so callers can parse in parallel. Beside them: Arrow columns as strings and JSON values
//! (`columns`), the records' declared fields (`fields`), and whole files read at once (`records`).

use crate::extract::{parse_line, TextSpec};
use crate::{Compression, Error, Format, Result};
use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod columns;
mod fields;
mod records;
use columns::{json_values, string_column};
pub use fields::Fields;
pub(crate) use records::read_records;
pub use records::{read_all, read_json_records};

/// A JSON-lines batch is cut after this many bytes of input (or at the end of the file).
pub const BATCH_BYTES: usize = 4 << 20;
const PARQUET_BATCH_ROWS: usize = 4096;

/// One document: its id, its text and where it came from (1-based line or row; 1 for a text file).
#[derive(Debug, Clone)]
pub struct Doc<'a> {
    pub id: Cow<'a, str>,
    pub text: Cow<'a, str>,
    pub line: u64,
}

/// A bounded slice of one input file.
pub struct Batch {
    path: Arc<PathBuf>,
    kind: Kind,
    bytes: u64,
    blank_lines: u64,
}

enum Kind {
    Lines {
        buf: Vec<u8>,
        /// (1-based line number, start, end) of each non-blank line in `buf`.
        lines: Vec<(u64, usize, usize)>,
    },
    Rows {
        first_row: u64,
        ids: Option<Vec<String>>,
        texts: Vec<Option<String>>,
        batch: RecordBatch,
    },
    Files {
        files: Vec<(PathBuf, String, std::result::Result<String, String>)>,
    },
}

/// The original form of one record, for writers that copy records through unchanged.
pub enum Raw<'a> {
    /// The line's bytes, without its newline.
    Line(&'a [u8]),
    /// Row `index` of [`Batch::record_batch`].
    Row(usize),
    /// A text file: its path and its path relative to the input folder.
    File { path: &'a Path, relative: &'a str },
}

impl Batch {
    /// Number of records in the batch.
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Lines { lines, .. } => lines.len(),
            Kind::Rows { texts, .. } => texts.len(),
            Kind::Files { files } => files.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Input bytes this batch covers (uncompressed).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Blank (whitespace-only) lines passed over in this batch.
    pub fn blank_lines(&self) -> u64 {
        self.blank_lines
    }

    /// The file this batch came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The Arrow batch behind a Parquet batch.
    pub fn record_batch(&self) -> Option<&RecordBatch> {
        match &self.kind {
            Kind::Rows { batch, .. } => Some(batch),
            _ => None,
        }
    }

    /// The original form of record `i`.
    pub fn raw(&self, i: usize) -> Raw<'_> {
        match &self.kind {
            Kind::Lines { buf, lines } => {
                let (_, s, e) = lines[i];
                Raw::Line(&buf[s..e])
            }
            Kind::Rows { .. } => Raw::Row(i),
            Kind::Files { files } => Raw::File {
                path: &files[i].0,
                relative: &files[i].1,
            },
        }
    }

    /// The 1-based line (JSON lines), row (Parquet) or 1 (text file) of record `i`.
    pub fn line(&self, i: usize) -> u64 {
        match &self.kind {
            Kind::Lines { lines, .. } => lines[i].0,
            Kind::Rows { first_row, .. } => first_row + i as u64,
            Kind::Files { .. } => 1,
        }
    }

    /// Parses record `i`. Errors are [`Error::BadRecord`] naming file and line.
    pub fn doc<'a>(&'a self, i: usize, spec: &TextSpec) -> Result<Doc<'a>> {
        self.doc_with(i, spec, &Fields::none()).map(|(doc, _)| doc)
    }

    /// Parses record `i` and gives the values of `fields` (from [`Batch::fields`]) in it, in the
    /// order named: a JSON line is parsed once for both.
    pub fn doc_with<'a>(
        &'a self,
        i: usize,
        spec: &TextSpec,
        fields: &Fields,
    ) -> Result<(Doc<'a>, Vec<serde_json::Value>)> {
        let line = self.line(i);
        let bad = |reason: String| Error::BadRecord {
            path: self.path.to_path_buf(),
            line,
            reason,
        };
        match &self.kind {
            Kind::Lines { buf, lines } => {
                let (_, s, e) = lines[i];
                let bytes = &buf[s..e];
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| bad(format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1)))?;
                let ex = parse_line(text, spec, &fields.names)
                    .map_err(|e| bad(format!("invalid JSON: {e}")))?;
                let body = match (ex.text, ex.messages) {
                    (Some(t), _) => t
                        .into_text()
                        .map_err(|m| bad(format!("field `{}` {m}", spec.text_field)))?,
                    (None, Some(m)) if spec.falls_back_to_messages() => m
                        .into_text()
                        .map_err(|m| bad(format!("field `messages` {m}")))?,
                    _ => return Err(bad(format!("missing text field `{}`", spec.text_field))),
                };
                let id = match ex.id {
                    Some(id) => id,
                    None => Cow::Owned(format!("{}:{line}", self.path.display())),
                };
                let doc = Doc {
                    id,
                    text: body,
                    line,
                };
                Ok((doc, ex.fields))
            }
            Kind::Rows { ids, texts, .. } => {
                let text = texts[i]
                    .as_deref()
                    .ok_or_else(|| bad(format!("field `{}` is null", spec.text_field)))?;
                let id = match ids {
                    Some(ids) => Cow::Borrowed(ids[i].as_str()),
                    None => Cow::Owned(format!("{}:{line}", self.path.display())),
                };
                let doc = Doc {
                    id,
                    text: Cow::Borrowed(text),
                    line,
                };
                Ok((doc, fields.row(i)))
            }
            Kind::Files { files } => {
                let (_, rel, text) = &files[i];
                let text = text.as_ref().map_err(|m| bad(m.clone()))?;
                let doc = Doc {
                    id: Cow::Borrowed(rel.as_str()),
                    text: Cow::Borrowed(text.as_str()),
                    line,
                };
                Ok((doc, fields.row(i)))
            }
        }
    }
}

/// Streams one input file as [`Batch`]es.
pub struct BatchReader {
    path: Arc<PathBuf>,
    inner: Inner,
    records: u64,
}

enum Inner {
    Lines {
        reader: Box<dyn BufRead + Send>,
        line: u64,
        done: bool,
    },
    Parquet {
        reader: ParquetRecordBatchReader,
        row: u64,
        text_col: String,
        id_col: Option<String>,
    },
    Files {
        pending: std::vec::IntoIter<(PathBuf, String)>,
    },
}

impl BatchReader {
    /// Opens `path` in the format its name says. `keep_all_columns` reads every Parquet column
    /// (needed to copy rows through); otherwise only the text and id columns are read.
    pub fn open(path: &Path, spec: &TextSpec, keep_all_columns: bool) -> Result<BatchReader> {
        let format = Format::detect(path)?;
        let inner = match format {
            Format::JsonLines(c) => Inner::Lines {
                reader: open_reader(path, c)?,
                line: 0,
                done: false,
            },
            Format::Parquet => open_parquet(path, spec, keep_all_columns)?,
            Format::Text => Inner::Files {
                pending: vec![(
                    path.to_path_buf(),
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                )]
                .into_iter(),
            },
            Format::TextDir => Inner::Files {
                pending: text_files(path)?.into_iter(),
            },
        };
        Ok(BatchReader {
            path: Arc::new(path.to_path_buf()),
            inner,
            records: 0,
        })
    }

    /// The next batch, or `None` at the end. An input that ends with no record at all is
    /// [`Error::Empty`].
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let batch = match &mut self.inner {
            Inner::Lines { reader, line, done } => {
                if *done {
                    None
                } else {
                    let mut buf = Vec::with_capacity(BATCH_BYTES + (64 << 10));
                    let mut lines = Vec::new();
                    let mut blank = 0;
                    while buf.len() < BATCH_BYTES {
                        let start = buf.len();
                        let n =
                            reader
                                .read_until(b'\n', &mut buf)
                                .map_err(|source| Error::Stream {
                                    path: self.path.to_path_buf(),
                                    line: *line + 1,
                                    source,
                                })?;
                        if n == 0 {
                            *done = true;
                            break;
                        }
                        *line += 1;
                        let mut end = buf.len();
                        while end > start && matches!(buf[end - 1], b'\n' | b'\r') {
                            end -= 1;
                        }
                        if buf[start..end].iter().all(u8::is_ascii_whitespace) {
                            blank += 1;
                        } else {
                            lines.push((*line, start, end));
                        }
                    }
                    let bytes = buf.len() as u64;
                    if lines.is_empty() && blank == 0 {
                        None
                    } else {
                        Some(Batch {
                            path: self.path.clone(),
                            kind: Kind::Lines { buf, lines },
                            bytes,
                            blank_lines: blank,
                        })
                    }
                }
            }
            Inner::Parquet {
                reader,
                row,
                text_col,
                id_col,
            } => match reader.next() {
                None => None,
                Some(rb) => {
                    let rb = rb.map_err(|e| Error::parquet(self.path.as_ref(), e))?;
                    let texts = string_column(&self.path, &rb, text_col)?;
                    let ids = match id_col {
                        Some(c) => Some(
                            string_column(&self.path, &rb, c)?
                                .into_iter()
                                .enumerate()
                                .map(|(k, v)| {
                                    v.unwrap_or_else(|| {
                                        format!("{}:{}", self.path.display(), *row + 1 + k as u64)
                                    })
                                })
                                .collect(),
                        ),
                        None => None,
                    };
                    let bytes = texts.iter().flatten().map(|t| t.len() as u64).sum();
                    let first_row = *row + 1;
                    *row += rb.num_rows() as u64;
                    Some(Batch {
                        path: self.path.clone(),
                        kind: Kind::Rows {
                            first_row,
                            ids,
                            texts,
                            batch: rb,
                        },
                        bytes,
                        blank_lines: 0,
                    })
                }
            },
            Inner::Files { pending } => {
                let mut files = Vec::new();
                let mut bytes = 0usize;
                while bytes < BATCH_BYTES {
                    let Some((path, rel)) = pending.next() else {
                        break;
                    };
                    let data = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                    bytes += data.len();
                    let text = String::from_utf8(data).map_err(|e| {
                        format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to() + 1)
                    });
                    files.push((path, rel, text));
                }
                if files.is_empty() {
                    None
                } else {
                    Some(Batch {
                        path: self.path.clone(),
                        kind: Kind::Files { files },
                        bytes: bytes as u64,
                        blank_lines: 0,
                    })
                }
            }
        };
        match &batch {
            Some(b) => self.records += b.len() as u64,
            None if self.records == 0 => {
                return Err(Error::Empty {
                    path: self.path.to_path_buf(),
                })
            }
            None => {}
        }
        Ok(batch)
    }
}

impl BatchReader {
    /// Hands every batch to `each`, in order, while a thread of its own reads (decompresses,
    /// parses, splits) up to two batches ahead. The first error, the reader's or `each`'s, ends
    /// the reading and is returned.
    pub fn read_ahead<E: From<Error>>(
        self,
        mut each: impl FnMut(Batch) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(2);
            scope.spawn(move || {
                for b in self {
                    if tx.send(b).is_err() {
                        break;
                    }
                }
            });
            // Leaving early drops `rx`, which ends the reader's thread at its next send.
            for batch in rx {
                each(batch?)?;
            }
            Ok(())
        })
    }
}

impl Iterator for BatchReader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

pub(crate) fn open_reader(path: &Path, c: Compression) -> Result<Box<dyn BufRead + Send>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(match c {
        Compression::None => Box::new(BufReader::with_capacity(1 << 20, file)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(BufReader::new(file)),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            1 << 20,
            zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(path, e))?,
        )),
    })
}

/// The `.txt`/`.md` files under folder `dir` (each one document of a text-folder input), with
/// their paths relative to it, sorted.
pub fn text_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    walk_text_files(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

fn walk_text_files(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            walk_text_files(root, &path, out)?;
        } else if matches!(Format::detect(&path), Ok(Format::Text)) {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push((path, rel));
        }
    }
    Ok(())
}

fn open_parquet(path: &Path, spec: &TextSpec, all_columns: bool) -> Result<Inner> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path, e))?;
    let schema = builder.schema().clone();
    if schema.field_with_name(&spec.text_field).is_err() {
        return Err(Error::ParquetColumn {
            path: path.to_path_buf(),
            column: spec.text_field.clone(),
            message: "no such column".into(),
        });
    }
    let id_col = schema
        .field_with_name(&spec.id_field)
        .ok()
        .map(|_| spec.id_field.clone());
    let builder = if all_columns {
        builder
    } else {
        let wanted: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name() == &spec.text_field || Some(f.name()) == id_col.as_ref())
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
        builder.with_projection(mask)
    };
    let reader = builder
        .with_batch_size(PARQUET_BATCH_ROWS)
        .build()
        .map_err(|e| Error::parquet(path, e))?;
    Ok(Inner::Parquet {
        reader,
        row: 0,
        text_col: spec.text_field.clone(),
        id_col,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(body).unwrap();
        p
    }

    fn docs(path: &Path) -> Result<Vec<(String, String, u64)>> {
        let spec = TextSpec::default();
        let mut out = Vec::new();
        for b in BatchReader::open(path, &spec, false)? {
            let b = b?;
            for i in 0..b.len() {
                let d = b.doc(i, &spec)?;
                out.push((d.id.into_owned(), d.text.into_owned(), d.line));
            }
        }
        Ok(out)
    }

    #[test]
    fn reads_text_messages_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.jsonl",
            br#"{"id": 7, "text": "hello \"world\"", "extra": [1, {"x": null}]}

{"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": [{"type": "text", "text": "a."}]}]}
"#,
        );
        let d = docs(&p).unwrap();
        assert_eq!(d[0], ("7".into(), "hello \"world\"".into(), 1));
        assert_eq!(d[1].1, "q?\na.");
        assert_eq!(d[1].2, 3);
        assert!(d[1].0.ends_with("a.jsonl:3"));
    }

    #[test]
    fn bad_records_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "b.jsonl",
            b"{\"text\": \"ok\"}\n{\"text\": \"cut\n",
        );
        let e = docs(&p).unwrap_err().to_string();
        assert!(e.contains("b.jsonl: line 2: invalid JSON"), "{e}");
        let p = write(dir.path(), "c.jsonl", b"{\"body\": \"x\"}\n");
        let e = docs(&p).unwrap_err().to_string();
        assert!(e.contains("line 1: missing text field `text`"), "{e}");
        let p = write(dir.path(), "d.jsonl", b"{\"text\": \"\xff\"}\n");
        let e = docs(&p).unwrap_err().to_string();
        assert!(e.contains("line 1: invalid UTF-8"), "{e}");
        let p = write(dir.path(), "e.jsonl", b"{\"text\": 3}\n");
        let e = docs(&p).unwrap_err().to_string();
        assert!(e.contains("is a number"), "{e}");
        let p = write(dir.path(), "f.jsonl", b"\n\n");
        assert!(matches!(docs(&p), Err(Error::Empty { .. })));
    }

    #[test]
    fn corrupt_gzip_is_a_stream_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in 0..2000 {
            writeln!(gz, "{{\"text\": \"line number {i} with some words\"}}").unwrap();
        }
        let mut bytes = gz.finish().unwrap();
        let n = bytes.len();
        bytes.truncate(n / 2);
        let p = write(dir.path(), "g.jsonl.gz", &bytes);
        let e = docs(&p).unwrap_err();
        assert!(matches!(e, Error::Stream { .. }), "{e}");
        assert!(e.to_string().contains("g.jsonl.gz: line"), "{e}");
    }
}
