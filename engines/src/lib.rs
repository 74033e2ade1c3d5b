//! LLM engines behind one interface, for the generation stages.
//!
//! - [`config`]: one engine's settings as a recipe or `phiforge generate` declares them, checked,
//!   with the identity that goes into fingerprints, and the engine built from them;
//! - [`engine`]: the [`Engine`](engine::Engine) trait (batches of chat requests in, completions
//!   with finish reason, token counts and optional log-probabilities out; async), and Phi-4's chat
//!   format;
//! - [`openai`]: any OpenAI-compatible server (vLLM, SGLang, llama.cpp) with endpoints spread,
//!   concurrency and rate limits, bounded retries and a secret-safe API key;
//! - [`phi3`]: the Phi-3 architecture (Phi-4's) on candle, written for batched serving: per-sequence
//!   positions, a paged KV cache ([`kv`]: a pool of blocks read through block tables, so sequences
//!   share prefix blocks by reference), grouped-query attention; safetensors or GGUF;
//! - [`kernels`]: the decode step's fused CUDA kernels (`kernels/decode.cu`), with the candle
//!   operations they replace as fallbacks and reference; `graph` (feature `cuda`): that step
//!   recorded as a CUDA graph and replayed;
//! - [`local`]: that model as an engine (CPU, or CUDA with the `cuda` feature), fed by the
//!   [`scheduler`]: continuous batching, prompts prefilled in chunks beside the sequences
//!   decoding, the KV blocks given and taken back, and the [`prefix`] cache of prompt prefixes'
//!   blocks, reporting
//!   [`metrics`]; [`sample`]: top-k, top-p and temperature draws; [`tokenizer`]:
//!   `tokenizer.json`, or Phi-4's own offline;
//!   [`hub`]: models in the local Hugging Face cache by repository id;
//! - [`serve`]: the local engine behind an OpenAI-compatible HTTP API (`phiforge serve`), with
//!   Prometheus metrics;
//! - [`generate`]: one-off generation (`phiforge generate`); [`bench`](mod@bench): engine
//!   throughput, measured like transformers' peer script; [`load`]: a load of mixed requests
//!   replayed with latency percentiles (`phiforge bench-load`);
//! - `testing` (feature `test-server`): a fault-injecting server on loopback for tests.
//!
//! The generation flows that use these engines live in the `agents` crate.
//!
//! ```no_run
//! use engines::engine::{ChatRequest, Engine, Message, Sampling};
//! use engines::openai::{OpenAiConfig, OpenAiEngine};
//! # async fn run() -> Result<(), engines::engine::EngineError> {
//! let engine = OpenAiEngine::new(OpenAiConfig::new("http://127.0.0.1:8000/v1", "phi-4"))?;
//! let req = ChatRequest { messages: vec![Message::new("user", "Name a prime.")], sampling: Sampling::default() };
//! let done = engine.complete(&req).await?;
//! println!("{} ({:?})", done.text, done.finish_reason);
//! # Ok(()) }
//! ```

pub mod bench;
pub mod bench_setup;
pub mod config;
pub mod engine;
pub mod generate;
#[cfg(feature = "cuda")]
pub mod graph;
pub mod hub;
pub mod kernels;
pub mod kv;
pub mod load;
pub mod local;
pub mod metrics;
pub mod openai;
pub mod phi3;
pub mod prefix;
pub mod sample;
pub mod scheduler;
pub mod serve;
#[cfg(feature = "test-server")]
pub mod testing;
pub mod train_ops;
/// The tokenizers (the `tokens` crate), as the engines use them.
pub use tokens as tokenizer;
