//! The engine interface: chat requests in, completions out, for any backend.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// How to sample a completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Not part of the OpenAI API; sent to servers that take it (vLLM, SGLang, llama.cpp).
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default)]
    pub stop: Vec<String>,
    /// Generate at least this many tokens: stop tokens and strings do not end the completion
    /// before then (vLLM's `min_tokens`; benchmarks use it to fix the length).
    #[serde(default)]
    pub min_tokens: u32,
    /// Same seed, request, engine and weights: same output. `None`: a fresh seed per request.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Return per-token log-probabilities.
    #[serde(default)]
    pub logprobs: bool,
}

fn default_temperature() -> f32 {
    0.7
}
fn default_top_p() -> f32 {
    1.0
}
fn default_max_tokens() -> u32 {
    512
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: default_temperature(),
            top_p: default_top_p(),
            top_k: None,
            max_tokens: default_max_tokens(),
            stop: Vec::new(),
            min_tokens: 0,
            seed: None,
            logprobs: false,
        }
    }
}

/// A chat request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(default)]
    pub sampling: Sampling,
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop string or end-of-turn token.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Anything else the server said.
    Other(String),
}

/// One generated token and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
}

/// A completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// What produced a sample, for lineage: never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineIdentity {
    /// `openai` or `local`.
    pub kind: String,
    pub model: String,
}

/// A failed request, with where and why; retryable kinds were retried before this is returned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("{endpoint}: HTTP {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("{endpoint}: no reply within {seconds:.1} s")]
    Timeout { endpoint: String, seconds: f64 },
    #[error("{endpoint}: connection failed: {message}")]
    Connection { endpoint: String, message: String },
    #[error("{endpoint}: malformed reply: {message}")]
    Malformed { endpoint: String, message: String },
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted {
        attempts: u32,
        last: Box<EngineError>,
    },
    #[error("engine configuration: {0}")]
    Config(String),
}

impl From<tokens::Error> for EngineError {
    fn from(e: tokens::Error) -> Self {
        EngineError::Config(e.0)
    }
}

impl EngineError {
    /// Worth another try: rate limits, server errors, timeouts, dropped connections, bad replies.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Status { status, .. } => *status == 429 || *status >= 500,
            EngineError::Timeout { .. }
            | EngineError::Connection { .. }
            | EngineError::Malformed { .. } => true,
            EngineError::RetriesExhausted { .. } | EngineError::Config(_) => false,
        }
    }
}

/// An LLM engine. Async, so a flow can keep thousands of requests in flight.
pub trait Engine: Send + Sync {
    /// Kind and model, for lineage.
    fn identity(&self) -> EngineIdentity;

    /// Completes one request.
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, EngineError>>;

    /// Completes a batch; results are in request order. The default runs them concurrently (the
    /// engine's own limits apply).
    fn complete_batch<'a>(
        &'a self,
        requests: &'a [ChatRequest],
    ) -> BoxFuture<'a, Vec<Result<Completion, EngineError>>> {
        Box::pin(futures::future::join_all(
            requests.iter().map(|r| self.complete(r)),
        ))
    }
}

/// Phi-4's chat format: `<|im_start|>{role}<|im_sep|>{content}<|im_end|>` per message, then the
/// assistant's turn opened. Generation stops on `<|im_end|>` or `<|endoftext|>`.
pub fn phi4_prompt(messages: &[Message]) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str("<|im_start|>");
        s.push_str(&m.role);
        s.push_str("<|im_sep|>");
        s.push_str(&m.content);
        s.push_str("<|im_end|>");
    }
    s.push_str("<|im_start|>assistant<|im_sep|>");
    s
}

/// Phi-4's stop strings.
pub const PHI4_STOP: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi4_chat_format() {
        let p = phi4_prompt(&[
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
        ]);
        assert_eq!(
            p,
            "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>"
        );
    }

    #[test]
    fn sampling_defaults_and_strictness() {
        let s: Sampling = serde_json::from_str(r#"{"max_tokens": 5}"#).unwrap();
        assert_eq!(s.max_tokens, 5);
        assert_eq!(s.top_p, 1.0);
        assert!(serde_json::from_str::<Sampling>(r#"{"temp": 1}"#).is_err());
    }
}
