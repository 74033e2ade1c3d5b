//! The flags every command that reads a corpus shares (`audit`, `decontaminate`, `neardup`,
//! `filter`), and what they set up.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct CorpusArgs {
    /// Documents: files, folders of text files or globs (JSON lines, .gz, .zst, Parquet, .txt).
    #[arg(long, short = 'i', num_args = 1.., required = true)]
    pub input: Vec<String>,
    /// Field with the document text (a chat `messages` array is joined).
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Field with the document id (else FILE:LINE).
    #[arg(long, default_value = "id")]
    pub id_field: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl CorpusArgs {
    /// Starts the worker threads (`--threads`) and gives the input files, globs and folders
    /// expanded.
    pub fn start(&self) -> Result<Vec<PathBuf>> {
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("setting up worker threads")?;
        }
        Ok(corpus::expand_inputs(&self.input)?)
    }

    /// Where a document's text and id are.
    pub fn spec(&self) -> corpus::TextSpec {
        corpus::TextSpec {
            text_field: self.text_field.clone(),
            id_field: self.id_field.clone(),
        }
    }
}
