//! The crate's error type.

use std::path::PathBuf;

/// What went wrong planning or running a build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The recipe has problems (each with file, line, column and field).
    #[error(transparent)]
    Recipe(#[from] crate::recipe::Diagnostics),
    #[error(transparent)]
    Corpus(#[from] corpus::Error),
    #[error(transparent)]
    Dedup(#[from] dedup::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("store {path} was written by a newer phiforge (layout {found}; this one reads up to {supported}); use a newer phiforge or another output folder")]
    NewerStore {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("store {path} was written by an older phiforge (layout {found}), which kept samples in the store; this one keeps them in shard files. Remove the output folder (or build into another) and build again")]
    OlderStore { path: PathBuf, found: i64 },
    #[error("store {path} is in use by another phiforge process (a build running into the same output folder?)")]
    StoreBusy { path: PathBuf },
    #[error("source `{name}` was built as class `{old}` in {store}; the recipe now says `{new}`. Give the source a new name, or use another output folder")]
    SourceClassChanged {
        name: String,
        old: String,
        new: String,
        store: PathBuf,
    },
    #[error("stage `{stage}`: {message}")]
    Stage { stage: String, message: String },
    /// Units failed; the others are kept.
    #[error("stage `{stage}`: {failed} of {total} units failed; the others are kept, run the build again to retry. First failure: {first}")]
    UnitsFailed {
        stage: String,
        failed: usize,
        total: usize,
        first: String,
    },
    /// A unit's files do not match its completion record.
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("--force names `{0}`, which is not a stage of the recipe")]
    UnknownStage(String),
    #[error("slurm: {0}")]
    Slurm(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn stage(stage: &str, message: impl std::fmt::Display) -> Self {
        Error::Stage {
            stage: stage.to_string(),
            message: message.to_string(),
        }
    }
}
