//! Telling formats apart and expanding input arguments into files.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Stream compression of a JSON-lines file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The kind of a document file, told from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    JsonLines(Compression),
    /// An Apache Parquet file.
    Parquet,
    /// One plain-text file: a single document.
    Text,
    /// A folder: every `.txt`/`.md` file beneath it is one document.
    TextDir,
}

impl Format {
    /// Tells the format of `path` from its name (and, for folders, from the file system).
    pub fn detect(path: &Path) -> Result<Format> {
        if path.is_dir() {
            return Ok(Format::TextDir);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
            (s, Compression::Gzip)
        } else if let Some(s) = name.strip_suffix(".zst") {
            (s, Compression::Zstd)
        } else {
            (name.as_str(), Compression::None)
        };
        let ext = stem.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        match (ext, compression) {
            ("jsonl" | "json" | "ndjson", c) => Ok(Format::JsonLines(c)),
            ("parquet", Compression::None) => Ok(Format::Parquet),
            ("txt" | "md", Compression::None) => Ok(Format::Text),
            _ => Err(Error::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Expands `FILE|DIR|GLOB` arguments into files, in argument order and sorted within a glob.
/// A folder stays one entry (read as [`Format::TextDir`]). An argument that matches nothing is an
/// error, never silently ignored; the same file named twice is kept once.
pub fn expand_inputs<S: AsRef<str>>(args: &[S]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for arg in args {
        let arg = arg.as_ref();
        let path = Path::new(arg);
        let found: Vec<PathBuf> = if path.exists() {
            vec![path.to_path_buf()]
        } else if arg.contains(['*', '?', '[']) {
            let paths = glob::glob(arg).map_err(|e| Error::Glob {
                pattern: arg.to_string(),
                message: e.to_string(),
            })?;
            let mut v = Vec::new();
            for p in paths {
                let p = p.map_err(|e| {
                    let path = e.path().to_path_buf();
                    Error::io(path, e.into())
                })?;
                if p.is_file() {
                    v.push(p);
                }
            }
            v.sort();
            v
        } else {
            Vec::new()
        };
        if found.is_empty() {
            return Err(Error::NoMatch {
                pattern: arg.to_string(),
            });
        }
        for p in found {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_from_names() {
        let f = |s: &str| Format::detect(Path::new(s));
        assert_eq!(f("a.jsonl").unwrap(), Format::JsonLines(Compression::None));
        assert_eq!(
            f("a.JSONL.gz").unwrap(),
            Format::JsonLines(Compression::Gzip)
        );
        assert_eq!(
            f("a.ndjson.zst").unwrap(),
            Format::JsonLines(Compression::Zstd)
        );
        assert_eq!(f("x/b.parquet").unwrap(), Format::Parquet);
        assert_eq!(f("notes.txt").unwrap(), Format::Text);
        assert!(matches!(f("a.csv"), Err(Error::UnknownFormat { .. })));
        assert!(matches!(
            f("a.parquet.gz"),
            Err(Error::UnknownFormat { .. })
        ));
    }

    #[test]
    fn unmatched_input_is_an_error() {
        let e = expand_inputs(&["/nonexistent/*.jsonl"]).unwrap_err();
        assert!(e.to_string().contains("matches no file"), "{e}");
    }
}
