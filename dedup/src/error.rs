//! The crate's error type.

use std::path::PathBuf;

/// What went wrong loading benchmarks or auditing a corpus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing documents failed (the inner error names file and line).
    #[error(transparent)]
    Corpus(#[from] corpus::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `--benchmarks` named neither a file, a folder nor a bundled set.
    #[error("unknown benchmark `{spec}`: not a file or folder, and not a bundled set (standard, {known})")]
    UnknownBenchmark { spec: String, known: String },
    #[error("{path}: no benchmark files (.jsonl, .jsonl.gz, .jsonl.zst, .parquet) in this folder")]
    NoBenchmarkFiles { path: PathBuf },
    /// A benchmark folder holds a folder: its files are not read, so the folder is refused.
    #[error("{path}: a benchmark folder must hold benchmark files only, but it holds the folder `{sub}`; name that folder (or its files) as a benchmark of its own")]
    BenchmarkSubfolder { path: PathBuf, sub: PathBuf },
    /// No record of a benchmark file has the field the mapping names.
    #[error("{path}: no record has the field `{field}`; name the right one with --field-map (e.g. question=problem,answer=solution)")]
    MissingBenchmarkField { path: PathBuf, field: String },
    #[error("{path}: line {line}: {message}")]
    BadBenchmarkRecord {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("field map `{spec}`: {message}")]
    FieldMap { spec: String, message: String },
    /// A setting is out of range.
    #[error("setting `{name}`: {message}")]
    Setting { name: &'static str, message: String },
    /// Two inputs would write the same output file.
    #[error("inputs {first} and {second} would both be written as `{name}`; rename one")]
    OutputClash {
        first: PathBuf,
        second: PathBuf,
        name: String,
    },
    #[error("{what}: {message}")]
    Serialize { what: String, message: String },
    /// An input changed between two passes over it.
    #[error("{path}: held {before} records in the first pass and {now} in the last; the input changed during the run")]
    InputChanged {
        path: PathBuf,
        before: u64,
        now: u64,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
