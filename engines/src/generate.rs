//! One-off generation: prompts (or chat records) in, one JSON line per completion out. What
//! `phiforge generate` runs, for trying an engine.
//!
//! Input records are JSON lines with `prompt` (a string, sent as one user message) or `messages`
//! (a chat), and an optional `id` (default: the line number); ids are unique. Every input gets one
//! output line, written as soon as it finishes: the completion, or `error` saying why it failed
//! after retries; nothing is dropped silently.
//!
//! An output file is also the run's record: a run into a file an earlier run wrote ([`resume`])
//! sends only the prompts that have no completion there yet. Error lines and a last line cut off
//! by a kill are taken out first, so those prompts run again; a file written with another engine
//! or other sampling settings is refused rather than mixed.

use crate::engine::{ChatRequest, Engine, Message, Sampling};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
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
    let mut seen: HashMap<String, u64> = HashMap::new();
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
        if let Some(first) = seen.insert(id.clone(), line) {
            return Err(bad(format!(
                "id `{id}` is already the id of line {first} (ids must be unique)"
            )));
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

/// Requests handed to the engine at once; the engine's own limits decide how many are in flight.
const IN_FLIGHT: usize = 4096;

/// Generates for every prompt with `engine` and writes one JSON line each to `out` as it
/// finishes (flushed, so a killed run keeps every finished line). `done` is called after each
/// completion (for a progress bar).
pub async fn generate(
    engine: &dyn Engine,
    prompts: &[Prompt],
    sampling: &Sampling,
    out: &mut dyn Write,
    done: &(dyn Fn() + Sync),
) -> std::io::Result<Summary> {
    let started = std::time::Instant::now();
    let identity = engine.identity();
    let mut finished = futures::stream::iter(prompts)
        .map(|p| async move {
            let request = ChatRequest {
                messages: p.messages.clone(),
                sampling: sampling.clone(),
            };
            (p, engine.complete(&request).await)
        })
        .buffer_unordered(IN_FLIGHT);
    let mut summary = Summary::default();
    while let Some((p, r)) = finished.next().await {
        done();
        let line = match r {
            Ok(c) => {
                summary.completed += 1;
                summary.prompt_tokens += c.prompt_tokens as u64;
                summary.completion_tokens += c.completion_tokens as u64;
                json!({
                    "id": p.id, "messages": p.messages, "completion": c.text,
                    "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens, "logprobs": c.logprobs,
                    "engine": identity, "sampling": sampling,
                })
            }
            Err(e) => {
                summary.failed += 1;
                json!({"id": p.id, "messages": p.messages, "error": e.to_string(), "engine": identity, "sampling": sampling})
            }
        };
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        out.write_all(&bytes)?;
        out.flush()?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Why an earlier run's output cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Line {
        path: String,
        line: u64,
        message: String,
    },
    #[error(transparent)]
    Rewrite(#[from] corpus::Error),
}

/// The ids an earlier run completed in `path` (none when it does not exist) with this engine and
/// these sampling settings. Error lines and a last line without its newline (cut off by a kill)
/// are removed from the file (rewritten atomically), so those prompts run again; a line written
/// by another engine or with other settings is an error.
pub fn resume(
    path: &Path,
    engine: &crate::engine::EngineIdentity,
    sampling: &Sampling,
) -> Result<HashSet<String>, ResumeError> {
    let io = |source| ResumeError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(io(e)),
    };
    let (engine, sampling) = (json!(engine), json!(sampling));
    let mut done = HashSet::new();
    let mut kept = Vec::new();
    let mut dropped = false;
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io)? == 0 {
            break;
        }
        line += 1;
        if buf.last() != Some(&b'\n') {
            dropped = true; // cut off mid-write
            break;
        }
        let bad = |message: String| ResumeError::Line {
            path: path.display().to_string(),
            line,
            message,
        };
        let v: Value = serde_json::from_slice(&buf)
            .map_err(|e| bad(format!("not a line this command wrote ({e})")))?;
        if v.get("engine") != Some(&engine) || v.get("sampling") != Some(&sampling) {
            return Err(bad(format!(
                "written with another engine or other sampling settings ({} {}); write to another file to run with these",
                v.get("engine").unwrap_or(&Value::Null),
                v.get("sampling").unwrap_or(&Value::Null)
            )));
        }
        if v.get("error").is_some() {
            dropped = true;
            continue;
        }
        match v.get("id").and_then(Value::as_str) {
            Some(id) => {
                done.insert(id.to_string());
            }
            None => return Err(bad("no `id`".into())),
        }
        kept.extend_from_slice(&buf);
    }
    if dropped {
        corpus::atomic::write(path, &kept)?;
    }
    Ok(done)
}
