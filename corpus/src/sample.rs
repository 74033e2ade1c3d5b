//! Samples: the unit of data that flows between a build's stages, with its lineage.
//!
//! A sample's id is the xxh3-128 of its canonical content (the JSON of its text or messages), so
//! the same content always has the same id, whichever stage or run made it. Its lineage answers
//! "where did this row come from": the source file and line or the parent samples, the stage and
//! its fingerprint, and (for generated samples) engine, model and prompt-template hash.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_128;

/// The mix class of a sample (and of the source it came from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixClass {
    Synthetic,
    WebRewrite,
    Web,
    Code,
    Targeted,
}

impl MixClass {
    pub const ALL: [MixClass; 5] = [
        MixClass::Synthetic,
        MixClass::WebRewrite,
        MixClass::Web,
        MixClass::Code,
        MixClass::Targeted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MixClass::Synthetic => "synthetic",
            MixClass::WebRewrite => "web_rewrite",
            MixClass::Web => "web",
            MixClass::Code => "code",
            MixClass::Targeted => "targeted",
        }
    }

    /// The class named `s` (as [`MixClass::as_str`] writes it).
    pub fn parse(s: &str) -> Option<MixClass> {
        MixClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Phi-4's shares by tokens: 40% synthetic, 15% web rewrites, 15% web, 20% code, 10% targeted.
    pub fn default_weight(self) -> f64 {
        match self {
            MixClass::Synthetic => 0.40,
            MixClass::WebRewrite => 0.15,
            MixClass::Web => 0.15,
            MixClass::Code => 0.20,
            MixClass::Targeted => 0.10,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What a sample holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text { text: String },
    Messages { messages: Vec<Message> },
}

thread_local! {
    /// Where a content's canonical JSON is written to be hashed (reused, so hashing allocates
    /// nothing once it has grown).
    static CANONICAL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Content {
    /// The text, or the messages' contents joined with newlines.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text { text } => std::borrow::Cow::Borrowed(text),
            Content::Messages { messages } => std::borrow::Cow::Owned(
                messages
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        }
    }

    /// Bytes of text the content holds.
    pub fn text_bytes(&self) -> usize {
        match self {
            Content::Text { text } => text.len(),
            Content::Messages { messages } => messages.iter().map(|m| m.content.len()).sum(),
        }
    }

    /// The content id: xxh3-128 of the canonical JSON, as 32 hex digits.
    pub fn id(&self) -> String {
        CANONICAL.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            crate::canonical::write(&mut buf, self);
            let id = format!("{:032x}", xxh3_128(&buf));
            // A huge document does not keep its buffer's memory.
            if buf.capacity() > 16 << 20 {
                *buf = Vec::new();
            }
            id
        })
    }
}

/// Where a sample came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// The stage (or source) that made this content.
    pub stage: String,
    /// That stage's fingerprint.
    pub stage_fingerprint: String,
    /// The samples it was made from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// For read documents: file, line and the document's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_hash: Option<String>,
    /// Quality signals (scores, rubric results) by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quality: BTreeMap<String, f64>,
    /// For generated samples: every model call behind the sample, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<Turn>,
    /// For flows that iterate (self-revision): the rounds run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u32>,
}

/// One model call behind a generated sample.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// The agent (role) that made the call: `rewriter`, `author`, `critic`, ...
    pub agent: String,
    /// The engine's name in the recipe, and the model it served.
    pub engine: String,
    pub model: String,
    /// xxh3-128 of the request (messages and sampling), as 32 hex digits.
    pub prompt_hash: String,
    pub seed: u64,
    pub round: u32,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: String,
}

/// A document's place in a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    pub source: String,
    pub file: String,
    pub line: u64,
    pub id: String,
}

/// A sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub class: MixClass,
    #[serde(flatten)]
    pub content: Content,
    pub lineage: Lineage,
    /// Quality signals of this content, as a JSON object of named columns, once a `signals`
    /// stage has computed them (`curate::signals::Signals`); `None` before. Not part of the id,
    /// and not carried into new content: a sample made from this one starts without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<serde_json::Value>,
}

impl Sample {
    /// A sample of `content`, its id computed.
    pub fn new(class: MixClass, content: Content, lineage: Lineage) -> Sample {
        Sample {
            id: content.id(),
            class,
            content,
            lineage,
            signals: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_content_only() {
        let a = Sample::new(
            MixClass::Web,
            Content::Text { text: "hi".into() },
            Lineage::default(),
        );
        let b = Sample::new(
            MixClass::Code,
            Content::Text { text: "hi".into() },
            Lineage {
                stage: "x".into(),
                ..Default::default()
            },
        );
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        // The id is the xxh3-128 of the canonical JSON, as it always was.
        assert_eq!(a.id, format!("{:032x}", xxh3_128(br#"{"text":"hi"}"#)));
        let c = Content::Messages {
            messages: vec![Message {
                role: "user".into(),
                content: "hi".into(),
            }],
        };
        assert_ne!(c.id(), a.id);
        // Round trip through JSON.
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains("\"text\":\"hi\""), "{json}");
        let back: Sample = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert_eq!(MixClass::parse("web_rewrite"), Some(MixClass::WebRewrite));
    }
}
