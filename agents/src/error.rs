use std::path::PathBuf;

/// Why a flow could not run (as opposed to a sample it dropped, which is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("template `{name}`: {message}")]
    Template { name: String, message: String },
    #[error("{field}: {message}")]
    Config { field: String, message: String },
    #[error(transparent)]
    Corpus(#[from] corpus::Error),
}

impl Error {
    /// The first of a configuration's problems (by field), as an error.
    pub(crate) fn first_problem<F: Into<String>>(problems: Vec<(F, String)>) -> Result<(), Error> {
        match problems.into_iter().next() {
            Some((field, message)) => Err(Error::Config {
                field: field.into(),
                message,
            }),
            None => Ok(()),
        }
    }
}
