//! `phiforge train-tokenizer`: a small byte-level BPE `tokenizer.json` learnt from documents, for
//! models trained from scratch (the quickstart's).

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// Documents to learn from: JSON lines (plain, .gz, .zst), Parquet, text files, folders or
    /// globs. They are held in memory while the tokenizer learns: meant for samples of a corpus.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Tokens in the vocabulary, the 256 bytes and the special tokens included.
    #[arg(long, default_value_t = 4096)]
    vocab: usize,
    /// Where the tokenizer.json goes.
    #[arg(long)]
    out: PathBuf,
}

pub fn train_tokenizer(a: TrainTokenizerArgs) -> Result<()> {
    let spec = corpus::TextSpec::default();
    let mut texts = Vec::new();
    let mut bytes = 0;
    for path in corpus::expand_inputs(&a.input)? {
        let mut reader = corpus::BatchReader::open(&path, &spec, false)?;
        while let Some(batch) = reader.next_batch()? {
            for i in 0..batch.len() {
                let doc = batch.doc(i, &spec)?;
                bytes += doc.text.len();
                texts.push(doc.text.into_owned());
            }
        }
    }
    tokens::train::train_bpe(texts.iter(), a.vocab, &a.out)
        .with_context(|| format!("learning a vocabulary of {} tokens", a.vocab))?;
    println!(
        "wrote {} ({} tokens, learnt from {} documents, {:.1} MB)",
        a.out.display(),
        a.vocab,
        texts.len(),
        bytes as f64 / 1e6
    );
    Ok(())
}
