//! Tokenizers without a model, for the local engine, the flows (splitting long inputs by tokens)
//! and the mixer's token shards: a `tokenizer.json` (Hugging Face), or Phi-4's own, which is
//! tiktoken's cl100k_base plus Phi-4's chat tokens and works offline.

use std::path::Path;

pub mod cl100k;
pub mod train;

/// A tokenizer that could not be made, or text it could not encode or decode.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// Text to token ids and back; special tokens written in the text (`<|im_start|>`) are recognised.
pub trait Codec: Send + Sync {
    fn encode(&self, text: &str) -> Result<Vec<u32>, Error>;
    /// Encodes with special tokens written in the text taken as plain text (tiktoken's
    /// `encode_ordinary`): what training data needs, where `<|endoftext|>` in a web page is text.
    fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>, Error> {
        self.encode(text)
    }
    /// Decodes, leaving special tokens out.
    fn decode(&self, ids: &[u32]) -> Result<String, Error>;
    /// Tokens that end a completion (`<|im_end|>`, `<|endoftext|>`).
    fn stop_ids(&self) -> Vec<u32>;
    /// Token ids are below this (special and added tokens included).
    fn vocab_size(&self) -> u32;
    /// The token that ends a document in training data (`<|endoftext|>`, or the tokenizer's own
    /// end token).
    fn end_of_text(&self) -> Option<u32>;
}

/// Phi-4's special tokens and their ids.
pub const PHI4_SPECIAL: &[(&str, u32)] = &[
    ("<|endoftext|>", 100_257),
    ("<|fim_prefix|>", 100_258),
    ("<|fim_middle|>", 100_259),
    ("<|fim_suffix|>", 100_260),
    ("<|im_start|>", 100_264),
    ("<|im_end|>", 100_265),
    ("<|im_sep|>", 100_266),
    ("<|endofprompt|>", 100_276),
];

/// Phi-4's vocabulary: cl100k_base's 100,256 ordinary tokens, its special tokens, and unused ids up
/// to the embedding's 100,352 rows.
pub const PHI4_VOCAB: u32 = 100_352;

/// Phi-4's tokenizer without any file: cl100k_base for text, Phi-4's ids for its chat tokens.
pub struct Phi4Tokenizer {
    enc: &'static cl100k::Cl100k,
}

impl Phi4Tokenizer {
    pub fn new() -> Result<Phi4Tokenizer, Error> {
        Ok(Phi4Tokenizer {
            enc: cl100k::Cl100k::get(),
        })
    }
}

impl Codec for Phi4Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        let mut ids = Vec::new();
        let mut rest = text;
        loop {
            // The earliest special token left in the text.
            let next = PHI4_SPECIAL
                .iter()
                .filter_map(|(s, id)| rest.find(s).map(|at| (at, *s, *id)))
                .min_by_key(|x| x.0);
            match next {
                Some((at, s, id)) => {
                    self.enc.encode_into(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + s.len()..];
                }
                None => {
                    self.enc.encode_into(rest, &mut ids);
                    return Ok(ids);
                }
            }
        }
    }

    fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>, Error> {
        Ok(self.enc.encode(text))
    }

    fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        // cl100k_base's ordinary tokens are 0..100256 (every one has bytes); everything above is
        // special or unused. The bytes of a cut-off completion may end inside a character, and
        // a model may emit any byte sequence: those become U+FFFD rather than an error.
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for id in ids {
            if let Some(b) = self.enc.token_bytes(*id) {
                bytes.extend_from_slice(b);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn stop_ids(&self) -> Vec<u32> {
        vec![100_265, 100_257]
    }

    /// Phi-4's embedding rows: cl100k_base's 100,256 tokens, its special tokens, padded to 100,352.
    fn vocab_size(&self) -> u32 {
        PHI4_VOCAB
    }

    fn end_of_text(&self) -> Option<u32> {
        Some(100_257)
    }
}

/// A Hugging Face `tokenizer.json`.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with its special tokens matched as text (`encode_ordinary`).
    ordinary: tokenizers::Tokenizer,
}

impl HfTokenizer {
    pub fn from_file(path: &Path) -> Result<HfTokenizer, Error> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error(format!("{}: {e}", path.display())))?;
        let mut ordinary = inner.clone();
        ordinary.set_encode_special_tokens(true);
        Ok(HfTokenizer { inner, ordinary })
    }
}

impl Codec for HfTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error(format!("tokenizing: {e}")))
    }

    fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>, Error> {
        self.ordinary
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error(format!("tokenizing: {e}")))
    }

    fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error(format!("decoding: {e}")))
    }

    fn stop_ids(&self) -> Vec<u32> {
        ["<|im_end|>", "<|endoftext|>", "<|end|>"]
            .iter()
            .filter_map(|t| self.inner.token_to_id(t))
            .collect()
    }

    fn vocab_size(&self) -> u32 {
        self.inner.get_vocab_size(true) as u32
    }

    fn end_of_text(&self) -> Option<u32> {
        ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"]
            .iter()
            .find_map(|t| self.inner.token_to_id(t))
    }
}

/// The tokenizer of a model folder: its `tokenizer.json` when present, else Phi-4's.
pub fn for_model(dir: &Path) -> Result<Box<dyn Codec>, Error> {
    let file = dir.join("tokenizer.json");
    if file.exists() {
        Ok(Box::new(HfTokenizer::from_file(&file)?))
    } else {
        Ok(Box::new(Phi4Tokenizer::new()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi4_chat_tokens_and_text_round_trip() {
        let t = Phi4Tokenizer::new().unwrap();
        let ids = t
            .encode("<|im_start|>user<|im_sep|>Hello, world!<|im_end|>")
            .unwrap();
        assert_eq!(ids[0], 100_264);
        assert!(ids.contains(&100_266));
        assert_eq!(*ids.last().unwrap(), 100_265);
        assert_eq!(t.decode(&ids).unwrap(), "userHello, world!");
        // cl100k_base's own ids for ordinary text.
        assert_eq!(t.encode("hello world").unwrap(), [15339, 1917]);
    }

    #[test]
    fn the_fast_encoder_gives_tiktokens_ids_on_real_text() {
        use std::io::Read;
        let ordinary = |t: &str| cl100k::Cl100k::get().encode(t);
        let tiktoken = tiktoken_rs::cl100k_base().unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/corpus");
        let mut checked = 0;
        for name in [
            "python-docs.jsonl.gz",
            "python-stdlib.jsonl.gz",
            "doc-sections.jsonl",
            "stdlib-functions.jsonl",
        ] {
            let path = std::path::Path::new(dir).join(name);
            let file = std::fs::File::open(&path).unwrap();
            let mut text = String::new();
            if name.ends_with(".gz") {
                flate2::read::GzDecoder::new(file)
                    .read_to_string(&mut text)
                    .unwrap();
            } else {
                std::io::BufReader::new(file)
                    .read_to_string(&mut text)
                    .unwrap();
            }
            for line in text.lines().take(400) {
                let doc: serde_json::Value = serde_json::from_str(line).unwrap();
                let t = doc["text"].as_str().unwrap_or_default();
                assert_eq!(ordinary(t), tiktoken.encode_ordinary(t), "{name}: {t}");
                checked += 1;
            }
        }
        assert!(checked >= 180, "{checked} documents checked");
        for odd in [
            "",
            " ",
            "  \n\n\t x",
            "日本語のテキスト 🚀🚀",
            "a\u{301}e\u{301}",
            "'s 've 're 123456789 ...!!!",
        ] {
            assert_eq!(ordinary(odd), tiktoken.encode_ordinary(odd), "{odd:?}");
        }
    }
}
