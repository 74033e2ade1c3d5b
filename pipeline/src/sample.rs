//! Samples: the unit of data that flows between stages, with its lineage.
//!
//! A sample's id is the xxh3-128 of its canonical content (the JSON of its text or messages), so
//! the same content always has the same id, whichever stage or run made it. Its lineage answers
//! "where did this row come from": the source file and line or the parent samples, the stage and
//! its fingerprint, and (for generated samples) engine, model and prompt-template hash.

use crate::recipe::MixClass;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_128;

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

impl Content {
    /// The text, or the messages' contents joined with newlines.
    pub fn text(&self) -> String {
        match self {
            Content::Text { text } => text.clone(),
            Content::Messages { messages } => messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// The content id: xxh3-128 of the canonical JSON, as 32 hex digits.
    pub fn id(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        format!("{:032x}", xxh3_128(&canonical))
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
}

impl Sample {
    /// A sample of `content`, its id computed.
    pub fn new(class: MixClass, content: Content, lineage: Lineage) -> Sample {
        Sample {
            id: content.id(),
            class,
            content,
            lineage,
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
    }
}
