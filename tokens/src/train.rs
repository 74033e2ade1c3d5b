//! Training a small byte-level BPE tokenizer (`tokenizer.json`) with the `tokenizers` crate's own
//! trainer: for small models trained from scratch (the quickstart's), where Phi-4's vocabulary of
//! 100,352 tokens would be most of the model.
//!
//! The tokenizer splits text as GPT-2 does (byte-level, no prefix space), so every text encodes
//! and decodes back unchanged, and it carries Phi-4's chat and end-of-text tokens as special
//! tokens, so chats and token shards look the same as with Phi-4's tokenizer.

use crate::Error;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder, TokenizerImpl};

/// The special tokens a trained tokenizer carries, first in its vocabulary (ids 0, 1, ...).
pub const SPECIAL: [&str; 4] = ["<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>"];

type Bpe = TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>;

/// Trains a tokenizer of `vocab` tokens (special tokens and the 256 bytes included) on `texts`
/// and writes it to `out` as a `tokenizer.json`.
pub fn train_bpe<I, S>(texts: I, vocab: usize, out: &Path) -> Result<(), Error>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let min = 256 + SPECIAL.len() + 1;
    if vocab < min {
        return Err(Error(format!(
            "a vocabulary of {vocab} tokens: a byte-level tokenizer needs at least {min}"
        )));
    }
    let err = |e: tokenizers::Error| Error(format!("training a tokenizer: {e}"));
    let bytes = ByteLevel::new(false, true, true);
    let mut tok: Bpe = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(bytes))
        .with_post_processor(Some(bytes))
        .with_decoder(Some(bytes))
        .build()
        .map_err(err)?;
    let special: Vec<AddedToken> = SPECIAL.iter().map(|s| AddedToken::from(*s, true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(special)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    tok.train(&mut trainer, texts).map_err(err)?;
    tok.save(out, false)
        .map_err(|e| Error(format!("{}: {e}", out.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Codec, HfTokenizer};

    #[test]
    fn a_trained_tokenizer_round_trips_and_knows_its_special_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tokenizer.json");
        let texts = [
            "def add(a, b):\n    return a + b\n",
            "The quick brown fox jumps over the lazy dog. The dog sleeps.",
            "Ünïcödé text, tabs\tand  double  spaces.\r\n",
        ];
        let corpus = texts.iter().cycle().take(60);
        train_bpe(corpus, 300, &out).unwrap();
        let t = HfTokenizer::from_file(&out).unwrap();
        assert_eq!(t.vocab_size(), 300);
        assert_eq!(t.end_of_text(), Some(0));
        for text in texts {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), text);
        }
        // Special tokens in text are one token each.
        let ids = t.encode("<|im_start|>user<|im_sep|>hi<|im_end|>").unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), 3);
        assert!(train_bpe(texts.iter(), 100, &out).is_err());
    }
}
