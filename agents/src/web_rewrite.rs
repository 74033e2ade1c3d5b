//! Web rewrites: an organic document rewritten into a clear, self-contained, educational form
//! that keeps its facts (Phi-4's web-rewrite class), with Nemotron-CC-style checks.
//!
//! 1. A document longer than `max_input_tokens` (Phi-4's tokenizer) is split at paragraph, then
//!    line, then token boundaries, and each part is rewritten on its own.
//! 2. Each part is asked with the prompt template (MiniJinja; variables `text` and `prefix`). The
//!    reply must begin with the required `prefix` (stripped); a reply without it, or that refuses,
//!    is asked again with a new seed, up to `max_attempts` in all.
//! 3. The joined rewrite must be between `min_ratio` and `max_ratio` of the input's length in
//!    characters.
//!
//! A document that fails a check is dropped with the check's name as its reason: `no_prefix`,
//! `refusal`, `too_short`, `too_long`, `empty`.

use crate::cache::RequestCache;
use crate::client::{CallError, Client, Place};
use crate::prompts::{self, Prompts};
use crate::{Error, Generated};
use corpus::sample::{Content, Turn};
use engines::engine::{Message, Sampling};
use engines::tokenizer::Codec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The default prompt, after Nemotron-CC's rephrasing prompts and Phi-4's web rewrites.
pub const DEFAULT_PROMPT: &str = "\
Rewrite the text below as a clear, self-contained, educational passage for a student of the \
subject: explain terms a newcomer would not know, put the ideas in a logical order, and use \
complete sentences. Keep every fact, number, name and code example exactly; add no facts, \
opinions or links. Leave out navigation, advertising and other page furniture.

Begin your answer with \"{{ prefix }}\" and then give only the rewritten passage.

Text:
{{ text }}";

/// The system message sent before the prompt.
pub const DEFAULT_SYSTEM: &str =
    "You are an expert teacher and technical writer who rewrites web pages into textbook-quality prose.";

/// Settings of the `web_rewrite` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebRewriteConfig {
    /// The engine's name in the recipe's `engines`.
    pub engine: String,
    /// A MiniJinja template replacing [`DEFAULT_PROMPT`] (variables `text`, `prefix`).
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    /// The reply must begin with this (it is stripped); `""` asks for no prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_max_input_tokens")]
    pub max_input_tokens: usize,
    #[serde(default = "default_min_ratio")]
    pub min_ratio: f64,
    #[serde(default = "default_max_ratio")]
    pub max_ratio: f64,
    /// Asks per part before the document is dropped (a reply without the prefix, or a refusal,
    /// is asked again with a new seed).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_sampling() -> Sampling {
    Sampling {
        temperature: 0.7,
        max_tokens: 2048,
        ..Sampling::default()
    }
}
fn default_prefix() -> String {
    "Rewritten passage:".into()
}
fn default_max_input_tokens() -> usize {
    1500
}
fn default_min_ratio() -> f64 {
    0.3
}
fn default_max_ratio() -> f64 {
    3.0
}
fn default_max_attempts() -> u32 {
    3
}

impl WebRewriteConfig {
    /// Problems with the settings, by field.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.max_input_tokens < 16 {
            p.push(("max_input_tokens", "must be at least 16".to_string()));
        }
        if !(self.min_ratio >= 0.0 && self.min_ratio < self.max_ratio) {
            p.push((
                "min_ratio",
                format!(
                    "needs 0 <= min_ratio < max_ratio, got {} and {}",
                    self.min_ratio, self.max_ratio
                ),
            ));
        }
        if self.max_attempts == 0 {
            p.push(("max_attempts", "must be at least 1".to_string()));
        }
        p.extend(prompts::problems(&[("prompt", &self.prompt)]));
        p
    }
}

/// The running flow.
pub struct WebRewrite {
    config: WebRewriteConfig,
    client: Client,
    prompts: Prompts,
    tokenizer: Arc<dyn Codec>,
    recipe_seed: u64,
}

impl WebRewrite {
    pub fn new(config: WebRewriteConfig, client: Client, recipe_seed: u64) -> Result<Self, Error> {
        Error::first_problem(config.problems())?;
        let prompts = Prompts::new(&[("prompt", WebRewrite::prompt_text(&config))])?;
        let tokenizer = engines::tokenizer::Phi4Tokenizer::new().map_err(|e| Error::Config {
            field: "tokenizer".into(),
            message: e.to_string(),
        })?;
        Ok(WebRewrite {
            config,
            client,
            prompts,
            tokenizer: Arc::new(tokenizer),
            recipe_seed,
        })
    }

    /// The prompt template's text (for fingerprints).
    pub fn prompt_text(config: &WebRewriteConfig) -> &str {
        config.prompt.as_deref().unwrap_or(DEFAULT_PROMPT)
    }

    /// Rewrites the document `text` of sample `id`.
    pub async fn rewrite(
        &self,
        cache: &RequestCache,
        id: &str,
        text: &str,
    ) -> Result<Generated, CallError> {
        let c = &self.config;
        let input = text.trim();
        if input.is_empty() {
            return Ok(Generated::Dropped("empty".into()));
        }
        let parts = split(input, c.max_input_tokens, &*self.tokenizer)?;
        let mut turns: Vec<Turn> = Vec::new();
        let mut out: Vec<String> = Vec::with_capacity(parts.len());
        for (round, part) in parts.iter().enumerate() {
            let prompt = self.prompts.render(
                "prompt",
                minijinja::context! {text => part, prefix => c.prefix},
            )?;
            let mut messages = vec![Message::new(
                "system",
                c.system.as_deref().unwrap_or(DEFAULT_SYSTEM),
            )];
            messages.push(Message::new("user", prompt));
            let place = Place {
                recipe_seed: self.recipe_seed,
                sample: id,
                agent: "rewriter",
                round: round as u32,
                attempt: 0,
            };
            let accept = |reply: &str| check_reply(reply, &c.prefix);
            let rewritten = self
                .client
                .ask_until(
                    cache,
                    &messages,
                    &c.sampling,
                    place,
                    c.max_attempts,
                    &mut turns,
                    accept,
                )
                .await?;
            match rewritten {
                Ok(body) => out.push(body),
                Err(problem) => return Ok(Generated::Dropped(problem.into())),
            }
        }
        let joined = out.join("\n\n");
        let ratio = joined.chars().count() as f64 / input.chars().count().max(1) as f64;
        if ratio < c.min_ratio {
            return Ok(Generated::Dropped("too_short".into()));
        }
        if ratio > c.max_ratio {
            return Ok(Generated::Dropped("too_long".into()));
        }
        let mut quality = BTreeMap::new();
        quality.insert(
            "length_ratio".to_string(),
            (ratio * 1000.0).round() / 1000.0,
        );
        Ok(Generated::Samples(vec![crate::Output {
            content: Content::Text { text: joined },
            quality,
            turns,
            rounds: None,
        }]))
    }
}

impl crate::Flow for WebRewrite {
    fn run<'a>(
        &'a self,
        cache: &'a RequestCache,
        id: &'a str,
        input: &'a Content,
    ) -> futures::future::BoxFuture<'a, Result<Generated, CallError>> {
        Box::pin(async move { self.rewrite(cache, id, &input.text()).await })
    }

    fn client(&self) -> &Client {
        &self.client
    }
}

/// The rewrite in `reply`, or the check it fails.
fn check_reply(reply: &str, prefix: &str) -> Result<String, &'static str> {
    let t = reply.trim();
    let lower: String = t.chars().take(40).collect::<String>().to_lowercase();
    if crate::gates::REFUSALS.iter().any(|r| lower.starts_with(r)) {
        return Err("refusal");
    }
    let body = if prefix.is_empty() {
        t
    } else {
        match t.strip_prefix(prefix) {
            Some(rest) => rest.trim_start(),
            None => return Err("no_prefix"),
        }
    };
    if body.is_empty() {
        return Err("empty");
    }
    Ok(body.to_string())
}

/// `text` in parts of at most `max_tokens` tokens: whole paragraphs while they fit, a long
/// paragraph by lines, a long line by tokens.
fn split(text: &str, max_tokens: usize, codec: &dyn Codec) -> Result<Vec<String>, CallError> {
    let count = |s: &str| codec.encode(s).map(|t| t.len());
    if count(text)? <= max_tokens {
        return Ok(vec![text.to_string()]);
    }
    // Pieces no longer than the limit, in order, with the separator that followed each.
    let mut pieces: Vec<(String, &str)> = Vec::new();
    for para in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        if count(para)? <= max_tokens {
            pieces.push((para.to_string(), "\n\n"));
            continue;
        }
        for line in para.lines() {
            let ids = codec.encode(line)?;
            if ids.len() <= max_tokens {
                pieces.push((line.to_string(), "\n"));
            } else {
                for chunk in ids.chunks(max_tokens) {
                    pieces.push((codec.decode(chunk)?, " "));
                }
            }
        }
        if let Some(last) = pieces.last_mut() {
            last.1 = "\n\n";
        }
    }
    let mut parts = Vec::new();
    let (mut cur, mut cur_tokens) = (String::new(), 0usize);
    for (piece, sep) in pieces {
        let n = count(&piece)?;
        if !cur.is_empty() && cur_tokens + n > max_tokens {
            parts.push(std::mem::take(&mut cur).trim().to_string());
            cur_tokens = 0;
        }
        cur.push_str(&piece);
        cur.push_str(sep);
        cur_tokens += n + 1;
    }
    if !cur.trim().is_empty() {
        parts.push(cur.trim().to_string());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_and_the_prefix_stripped() {
        assert_eq!(
            check_reply("Rewritten passage: Ducks lay eggs.", "Rewritten passage:"),
            Ok("Ducks lay eggs.".into())
        );
        assert_eq!(
            check_reply("Ducks lay eggs.", "Rewritten passage:"),
            Err("no_prefix")
        );
        assert_eq!(
            check_reply("I'm sorry, but I can't.", "Rewritten passage:"),
            Err("refusal")
        );
        assert_eq!(
            check_reply("Rewritten passage:   ", "Rewritten passage:"),
            Err("empty")
        );
        assert_eq!(check_reply(" Plain. ", ""), Ok("Plain.".into()));
    }

    #[test]
    fn long_documents_split_into_parts_within_the_limit_and_nothing_is_lost() {
        let codec = engines::tokenizer::Phi4Tokenizer::new().unwrap();
        let para =
            |k: usize| format!("Paragraph {k} says that the value of x is {k} and explains why.");
        let text: String = (0..40).map(para).collect::<Vec<_>>().join("\n\n");
        let parts = split(&text, 60, &codec).unwrap();
        assert!(parts.len() > 5, "{}", parts.len());
        for p in &parts {
            assert!(codec.encode(p).unwrap().len() <= 60, "{p}");
        }
        assert_eq!(parts.join("\n\n"), text);
        // One line longer than the limit is cut by tokens.
        let long = "word ".repeat(300);
        let parts = split(long.trim(), 50, &codec).unwrap();
        assert!(parts.len() >= 6);
        assert_eq!(parts.join(" ").split_whitespace().count(), 300);
        assert_eq!(split("short", 50, &codec).unwrap(), ["short"]);
    }
}
