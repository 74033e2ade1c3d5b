//! LLM engines behind one interface, for the generation stages.
//!
//! - [`engine`]: the [`Engine`](engine::Engine) trait (batches of chat requests in, completions
//!   with finish reason, token counts and optional log-probabilities out; async), and Phi-4's chat
//!   format;
//! - [`openai`]: any OpenAI-compatible server (vLLM, SGLang, llama.cpp) with endpoints spread,
//!   concurrency and rate limits, bounded retries and a secret-safe API key;
//! - `testing` (feature `test-server`): a fault-injecting server on loopback for tests.
//!
//! The local candle engine on Phi-4's architecture, `phiforge serve` and the three generation flows
//! come next.
//!
//! ```no_run
//! use agents::engine::{ChatRequest, Engine, Message, Sampling};
//! use agents::openai::{OpenAiConfig, OpenAiEngine};
//! # async fn run() -> Result<(), agents::engine::EngineError> {
//! let engine = OpenAiEngine::new(OpenAiConfig::new("http://127.0.0.1:8000/v1", "phi-4"))?;
//! let req = ChatRequest { messages: vec![Message::new("user", "Name a prime.")], sampling: Sampling::default() };
//! let done = engine.complete(&req).await?;
//! println!("{} ({:?})", done.text, done.finish_reason);
//! # Ok(()) }
//! ```

pub mod engine;
pub mod generate;
pub mod local;
pub mod openai;
pub mod phi3;
pub mod serve;
#[cfg(feature = "test-server")]
pub mod testing;
pub mod tokenizer;
