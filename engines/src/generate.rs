//! One-off generation: prompts (or chat records) in, one JSON line per completion out. What
//! `phiforge generate` runs, for trying an engine.
//!
//! Input records are JSON lines with `prompt` (a string, sent as one user message) or `messages`
//! (a chat), and an optional `id`. Every input gets one output line, in input order: the
//! completion, or `error` saying why it failed after retries; nothing is dropped silently.

use crate::engine::{ChatRequest, Engine, Message, Sampling};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// One thing to generate for.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub id: String,
    pub messages: Vec<Message>,
}

/// Why the inputs cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Corpus(#[from] corpus::Error),
    #[error("{path}: line {line}: {message}")]
    Record {
        path: String,
        line: u64,
        message: String,
    },
}

/// Reads prompts from a JSON-lines file (plain, `.gz` or `.zst`); `system` is prepended to each.
pub fn read_prompts(path: &Path, system: Option<&str>) -> Result<Vec<Prompt>, InputError> {
    let mut out = Vec::new();
    for (line, rec) in corpus::read_records(path)? {
        let bad = |message: String| InputError::Record {
            path: path.display().to_string(),
            line,
            message,
        };
        let id = match rec.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Number(_)) => v.to_string(),
            _ => line.to_string(),
        };
        let mut messages: Vec<Message> = system
            .map(|s| vec![Message::new("system", s)])
            .unwrap_or_default();
        match (rec.get("prompt"), rec.get("messages")) {
            (Some(Value::String(p)), None) => messages.push(Message::new("user", p.clone())),
            (None, Some(m)) => {
                let chat: Vec<Message> = serde_json::from_value(m.clone()).map_err(|e| {
                    bad(format!(
                        "`messages` is not a list of {{role, content}}: {e}"
                    ))
                })?;
                messages.extend(chat);
            }
            (Some(_), Some(_)) => return Err(bad("has both `prompt` and `messages`".into())),
            _ => return Err(bad("needs a `prompt` string or a `messages` list".into())),
        }
        out.push(Prompt { id, messages });
    }
    Ok(out)
}

/// Counts of a generation run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub completed: usize,
    pub failed: usize,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub seconds: f64,
}

/// Generates for every prompt with `engine` and writes one JSON line each to `out`, in order.
/// `done` is called after each completion (for a progress bar).
pub async fn generate(
    engine: &dyn Engine,
    prompts: &[Prompt],
    sampling: &Sampling,
    out: &mut dyn Write,
    done: &(dyn Fn() + Sync),
) -> std::io::Result<Summary> {
    let started = std::time::Instant::now();
    let identity = engine.identity();
    let requests: Vec<ChatRequest> = prompts
        .iter()
        .map(|p| ChatRequest {
            messages: p.messages.clone(),
            sampling: sampling.clone(),
        })
        .collect();
    let results = futures::future::join_all(requests.iter().map(|r| async move {
        let result = engine.complete(r).await;
        done();
        result
    }))
    .await;
    let mut summary = Summary::default();
    for (p, r) in prompts.iter().zip(results) {
        let line = match r {
            Ok(c) => {
                summary.completed += 1;
                summary.prompt_tokens += c.prompt_tokens as u64;
                summary.completion_tokens += c.completion_tokens as u64;
                serde_json::json!({
                    "id": p.id, "messages": p.messages, "completion": c.text,
                    "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens, "logprobs": c.logprobs,
                    "engine": identity,
                })
            }
            Err(e) => {
                summary.failed += 1;
                serde_json::json!({"id": p.id, "messages": p.messages, "error": e.to_string(), "engine": identity})
            }
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
