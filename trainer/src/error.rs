//! The trainer's errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest or shard that does not match its entry (size, checksum, header, counts).
    #[error(transparent)]
    Manifest(#[from] mixes::manifest::ManifestError),
    #[error("tensor operation: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Atomic(#[from] corpus::Error),
    /// A setting that cannot be used.
    #[error("train settings: {0}")]
    Config(String),
    /// A class the mix planned for has no tokens.
    #[error("class `{class}` has no data in the mix (its target share is {target_share})")]
    EmptyClass { class: String, target_share: f64 },
    /// Not enough tokens for what the settings ask.
    #[error("not enough data: {0}")]
    NoData(String),
    /// The run would not fit in memory.
    #[error(
        "the run needs about {needed_gib:.2} GiB on {device} but {available_gib:.2} GiB is available \
         ({detail}); lower batch_size, sequence_length or the model's size, or use accumulation"
    )]
    TooLarge {
        device: String,
        needed_gib: f64,
        available_gib: f64,
        detail: String,
    },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// The loss stopped being a number.
    #[error("step {step}: loss {loss}")]
    Diverged { step: u64, loss: f32 },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl ToString) -> Error {
        Error::Checkpoint {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
