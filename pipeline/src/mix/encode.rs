//! A sample as the trainer sees it: token ids, the end-of-text token after them, and for a chat a
//! loss mask that counts the assistant's turns only.
//!
//! A chat is laid out in Phi-4's format, `<|im_start|>ROLE<|im_sep|>CONTENT<|im_end|>` per
//! message; the assistant's content and its `<|im_end|>` count in the loss, everything else
//! (system and user turns, every header, the end-of-text token) does not.

use crate::{Error, Result};
use corpus::sample::Content;
use std::path::Path;
use tokens::Codec;

/// The mix's tokenizer, with its end-of-text token and vocabulary.
pub struct Encoder {
    codec: Box<dyn Codec>,
    /// `phi4`, or the tokenizer.json's path as the recipe gives it.
    pub name: String,
    pub eos: u32,
    pub vocab: u32,
}

impl Encoder {
    /// `spec`: `phi4`, or a tokenizer.json (relative to `dir`).
    pub fn new(spec: &str, dir: &Path) -> Result<Encoder> {
        let err = |e: tokens::Error| Error::stage("mix", format!("mix.tokenizer: {e}"));
        let codec: Box<dyn Codec> = if spec == "phi4" {
            Box::new(tokens::Phi4Tokenizer::new().map_err(err)?)
        } else {
            let path = crate::recipe::resolve(dir, spec);
            Box::new(tokens::HfTokenizer::from_file(&path).map_err(err)?)
        };
        let eos = codec.end_of_text().ok_or_else(|| {
            Error::stage(
                "mix",
                format!(
                    "mix.tokenizer: `{spec}` has no end-of-text token (<|endoftext|>, </s>, <eos>)"
                ),
            )
        })?;
        Ok(Encoder {
            vocab: codec.vocab_size(),
            codec,
            name: spec.to_string(),
            eos,
        })
    }

    /// Text as text: a special token's name written in it (`<|endoftext|>` in a web page) is
    /// not that token.
    fn ids(&self, text: &str) -> Result<Vec<u32>> {
        self.codec
            .encode_ordinary(text)
            .map_err(|e| Error::stage("mix", format!("tokenizing: {e}")))
    }

    /// Markup with special tokens (a chat turn's header).
    fn markup(&self, text: &str) -> Result<Vec<u32>> {
        self.codec
            .encode(text)
            .map_err(|e| Error::stage("mix", format!("tokenizing: {e}")))
    }

    /// A sample's tokens and, for a chat, its loss mask.
    pub fn encode(&self, content: &Content) -> Result<(Vec<u32>, Option<Vec<bool>>)> {
        match content {
            Content::Text { text } => {
                let mut ids = self.ids(text)?;
                ids.push(self.eos);
                Ok((ids, None))
            }
            Content::Messages { messages } => {
                let (mut ids, mut mask) = (Vec::new(), Vec::new());
                let mut put = |part: Vec<u32>, counts: bool| {
                    mask.extend(std::iter::repeat_n(counts, part.len()));
                    ids.extend(part);
                };
                for m in messages {
                    let assistant = m.role == "assistant";
                    put(
                        self.markup(&format!("<|im_start|>{}<|im_sep|>", m.role))?,
                        false,
                    );
                    put(self.ids(&m.content)?, assistant);
                    put(self.markup("<|im_end|>")?, assistant);
                }
                put(vec![self.eos], false);
                Ok((ids, Some(mask)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corpus::sample::Message;

    #[test]
    fn chats_count_the_assistant_only() {
        let e = Encoder::new("phi4", Path::new(".")).unwrap();
        assert_eq!((e.eos, e.vocab), (100_257, 100_352));
        let (ids, mask) = e
            .encode(&Content::Text {
                text: "Hello world".into(),
            })
            .unwrap();
        assert_eq!(ids, [9906, 1917, 100_257]);
        assert_eq!(mask, None);
        // A special token's name in a text is text.
        let (ids, _) = e
            .encode(&Content::Text {
                text: "<|endoftext|>".into(),
            })
            .unwrap();
        assert!(
            ids.len() > 2 && !ids[..ids.len() - 1].contains(&100_257),
            "{ids:?}"
        );
        let chat = Content::Messages {
            messages: vec![
                Message {
                    role: "user".into(),
                    content: "Hi".into(),
                },
                Message {
                    role: "assistant".into(),
                    content: "Hello world".into(),
                },
            ],
        };
        let (ids, mask) = e.encode(&chat).unwrap();
        let mask = mask.unwrap();
        assert_eq!(ids.len(), mask.len());
        let counted: Vec<u32> = ids
            .iter()
            .zip(&mask)
            .filter(|(_, m)| **m)
            .map(|(i, _)| *i)
            .collect();
        // "Hello world" and <|im_end|>.
        assert_eq!(counted, [9906, 1917, 100_265]);
        assert_eq!(ids.last(), Some(&100_257));
        assert_eq!(ids[0], 100_264);
    }
}
