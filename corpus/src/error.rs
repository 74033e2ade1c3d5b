//! The crate's error type: every variant names the file, and the line where there is one.

use std::path::PathBuf;

/// What went wrong reading or writing documents, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading failed part-way (a corrupt or truncated `.gz`/`.zst` stream, a read error).
    #[error("{path}: line {line}: cannot read further: {source}")]
    Stream {
        path: PathBuf,
        line: u64,
        #[source]
        source: std::io::Error,
    },
    /// One record is unusable: malformed JSON, invalid UTF-8, a missing or mistyped field.
    #[error("{path}: line {line}: {reason}")]
    BadRecord {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    /// A file holds no records at all.
    #[error("{path}: the file is empty (no records)")]
    Empty { path: PathBuf },
    /// The file's kind cannot be told from its name.
    #[error("{path}: unknown input format (expected .jsonl/.json/.ndjson, optionally .gz or .zst, .parquet, .txt/.md, or a folder)")]
    UnknownFormat { path: PathBuf },
    /// A Parquet file could not be read or written.
    #[error("{path}: parquet: {message}")]
    Parquet { path: PathBuf, message: String },
    /// A Parquet column the caller asked for is missing or of an unusable type.
    #[error("{path}: parquet column `{column}`: {message}")]
    ParquetColumn {
        path: PathBuf,
        column: String,
        message: String,
    },
    /// An input argument matched no file.
    #[error("input `{pattern}` matches no file")]
    NoMatch { pattern: String },
    /// An input glob pattern is malformed.
    #[error("input `{pattern}` is not a valid glob: {message}")]
    Glob { pattern: String, message: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Error::Parquet {
            path: path.into(),
            message: e.to_string(),
        }
    }

    /// True for errors confined to one record, which a caller may count and skip.
    pub fn is_record_error(&self) -> bool {
        matches!(self, Error::BadRecord { .. })
    }
}
