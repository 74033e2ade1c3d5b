//! The generation flows: seeds (documents, code, questions) in, synthetic training samples out,
//! over the engine trait of the `engines` crate (an OpenAI-compatible server or the local Phi
//! model; flows never touch candle).
//!
//! - [`client`]: how a flow calls a model: through the [`cache`], with a seed derived from where
//!   the call sits (recipe seed, sample, agent, round, attempt), and a lineage turn per call;
//! - [`cache`]: the request cache, one append-only file per unit of work, flushed per reply, so a
//!   killed build sends no finished request again and raw replies outlive their parsing;
//! - [`web_rewrite`]: organic documents rewritten into textbook-like passages (the web-rewrite
//!   class), with Nemotron-CC-style checks;
//! - [`self_revision`]: draft, critique against a rubric (scores parsed per criterion), revise,
//!   until the rubric passes, the score stops improving or rounds run out; the best draft is kept;
//! - [`instruction_reversal`]: the instruction behind an existing output (code, a document),
//!   checked by regenerating the output from it (ROUGE-L; for Python, that both parse);
//! - [`multi_agent`]: an author writes a question from the seed, one or N solvers answer it
//!   (plurality answer kept, too easy and too hard questions dropped), a critic checks it;
//! - [`gates`]: quality gates every generation stage applies to what its flow made (length,
//!   refusals, boilerplate, exact and near duplicates of samples already kept);
//! - [`stats`]: counts for progress displays (requests, cached replies, tokens, kept, dropped);
//! - [`parse`]: reading structured replies (JSON with required fields, tagged sections, a regex).
//!
//! Each flow turns one input into [`Generated`]: new samples with their lineage turns and quality
//! signals, or a drop with its reason. The pipeline's stages run flows unit by unit.

pub mod cache;
pub mod client;
mod error;
pub mod gates;
pub mod instruction_reversal;
pub mod multi_agent;
pub mod parse;
mod prompts;
pub mod self_revision;
pub mod stats;
pub mod web_rewrite;

pub use error::Error;

use cache::RequestCache;
use client::{CallError, Client};
use corpus::sample::{Content, Turn};
use futures::future::BoxFuture;
use std::collections::BTreeMap;

/// A generation flow: one input's content in, [`Generated`] out, asking through `cache`.
pub trait Flow: Send + Sync {
    fn run<'a>(
        &'a self,
        cache: &'a RequestCache,
        id: &'a str,
        input: &'a Content,
    ) -> BoxFuture<'a, Result<Generated, CallError>>;
    /// The engine the flow asks (named in lineage).
    fn client(&self) -> &Client;
}

/// What a flow made of one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Generated {
    Samples(Vec<Output>),
    /// Nothing usable, for this reason (counted in the build's report).
    Dropped(String),
}

/// One generated sample, before the pipeline gives it its id and lineage.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub content: Content,
    pub quality: BTreeMap<String, f64>,
    pub turns: Vec<Turn>,
    pub rounds: Option<u32>,
}

impl Output {
    /// A two-turn chat: `user` asks, `assistant` answers.
    pub fn chat(
        user: String,
        assistant: String,
        quality: BTreeMap<String, f64>,
        turns: Vec<Turn>,
    ) -> Output {
        let message = |role: &str, content| corpus::sample::Message {
            role: role.into(),
            content,
        };
        Output {
            content: Content::Messages {
                messages: vec![message("user", user), message("assistant", assistant)],
            },
            quality,
            turns,
            rounds: None,
        }
    }
}
