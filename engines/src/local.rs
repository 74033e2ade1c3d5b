//! The local engine: the Phi-3/Phi-4 model of [`crate::phi3`] on this machine (CPU; CUDA with the
//! `cuda` feature), behind the same [`Engine`] trait as a server.
//!
//! Requests go to one scheduler thread that owns the model ([`crate::scheduler`]: continuous
//! batching, prompts prefilled in chunks beside the sequences decoding, a prefix cache).

use crate::engine::Sampling;
use crate::engine::{phi4_prompt, ChatRequest, Completion, Engine, EngineError, EngineIdentity};
pub use crate::metrics::Metrics;
use crate::phi3::Model;
pub use crate::scheduler::Limits;
use crate::scheduler::{schedule, Job};
use crate::tokenizer::Codec;
use candle_core::Device;
use futures::future::BoxFuture;
use std::sync::mpsc;
use std::sync::Arc;

/// A model on this machine as an engine.
pub struct LocalEngine {
    jobs: mpsc::Sender<Vec<Job>>,
    codec: Arc<dyn Codec>,
    model_name: String,
    metrics: Metrics,
}

impl LocalEngine {
    /// Starts the scheduler for `model` (its slots bound the batch) with `codec` as tokenizer.
    pub fn new(model: Model, codec: Arc<dyn Codec>, model_name: &str) -> LocalEngine {
        LocalEngine::with_limits(model, codec, model_name, Limits::default())
    }

    /// As [`LocalEngine::new`], with other scheduling limits.
    pub fn with_limits(
        model: Model,
        codec: Arc<dyn Codec>,
        model_name: &str,
        limits: Limits,
    ) -> LocalEngine {
        let (tx, rx) = mpsc::channel::<Vec<Job>>();
        let c = codec.clone();
        let limits = Limits {
            step_tokens: limits.step_tokens.max(1),
            prefill_chunk: limits.prefill_chunk.max(1),
            ..limits
        };
        let metrics = Metrics::default();
        let m = metrics.clone();
        std::thread::spawn(move || schedule(model, c, rx, limits, m));
        LocalEngine {
            jobs: tx,
            codec,
            model_name: model_name.to_string(),
            metrics,
        }
    }

    /// The scheduler's live figures (queue depth, prefix cache hits, tokens/s).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The engine's tokenizer.
    pub fn codec(&self) -> &Arc<dyn Codec> {
        &self.codec
    }

    /// Completes a raw prompt (no chat format), optionally streaming text deltas to `stream`.
    pub async fn complete_text(
        &self,
        prompt: &str,
        sampling: &Sampling,
        stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<Completion, EngineError> {
        let prompt = self.codec.encode(prompt)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(vec![Job {
                prompt,
                sampling: sampling.clone(),
                reply: tx,
                stream,
                ticks: None,
            }])
            .map_err(|_| EngineError::Config("the local engine has stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Config("the local engine stopped before answering".into()))?
    }

    /// `n` completions of one raw prompt, sent together: the first prefills the prompt, the others
    /// copy its blocks from the prefix cache. Sample `i` is seeded `seed + i` when the request
    /// has a seed (one seed for all would give `n` equal samples).
    pub async fn complete_text_n(
        &self,
        prompt: &str,
        sampling: &Sampling,
        n: usize,
    ) -> Vec<Result<Completion, EngineError>> {
        let prompt = match self.codec.encode(prompt) {
            Ok(p) => p,
            Err(e) => return vec![Err(e.into())],
        };
        let mut replies = Vec::with_capacity(n);
        let jobs: Vec<Job> = (0..n)
            .map(|i| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                replies.push(rx);
                Job {
                    prompt: prompt.clone(),
                    sampling: Sampling {
                        seed: sampling.seed.map(|s| s.wrapping_add(i as u64)),
                        ..sampling.clone()
                    },
                    reply: tx,
                    stream: None,
                    ticks: None,
                }
            })
            .collect();
        if self.jobs.send(jobs).is_err() {
            return vec![Err(EngineError::Config(
                "the local engine has stopped".into(),
            ))];
        }
        let mut out = Vec::with_capacity(n);
        for rx in replies {
            out.push(rx.await.unwrap_or_else(|_| {
                Err(EngineError::Config(
                    "the local engine stopped before answering".into(),
                ))
            }));
        }
        out
    }

    /// Completes prompts given as token ids, all admitted together (a batch arrives whole at the
    /// scheduler, so it is prefilled in as few passes as the budget allows).
    pub async fn complete_tokens(
        &self,
        prompts: Vec<Vec<u32>>,
        sampling: &Sampling,
    ) -> Vec<Result<Completion, EngineError>> {
        self.complete_tokens_timed(prompts, sampling)
            .await
            .into_iter()
            .map(|r| r.map(|(c, _)| c))
            .collect()
    }

    /// [`Self::complete_tokens`], with the instant each completion's tokens were sampled (a
    /// stop token that ends a completion included), for time to first token and between tokens.
    pub async fn complete_tokens_timed(
        &self,
        prompts: Vec<Vec<u32>>,
        sampling: &Sampling,
    ) -> Vec<Result<(Completion, Vec<std::time::Instant>), EngineError>> {
        let mut replies = Vec::with_capacity(prompts.len());
        let jobs: Vec<Job> = prompts
            .into_iter()
            .map(|prompt| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (ticks, times) = std::sync::mpsc::channel();
                replies.push((rx, times));
                Job {
                    prompt,
                    sampling: sampling.clone(),
                    reply: tx,
                    stream: None,
                    ticks: Some(ticks),
                }
            })
            .collect();
        if self.jobs.send(jobs).is_err() {
            return replies
                .iter()
                .map(|_| Err(EngineError::Config("the local engine has stopped".into())))
                .collect();
        }
        let mut out = Vec::with_capacity(replies.len());
        for (rx, times) in replies {
            let done = rx.await.unwrap_or_else(|_| {
                Err(EngineError::Config(
                    "the local engine stopped before answering".into(),
                ))
            });
            // The reply is sent after the last tick, so every tick is already queued.
            out.push(done.map(|c| (c, times.try_iter().collect())));
        }
        out
    }

    /// Completes a chat, optionally streaming text deltas to `stream`.
    pub async fn complete_chat(
        &self,
        request: &ChatRequest,
        stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<Completion, EngineError> {
        self.complete_text(&phi4_prompt(&request.messages), &request.sampling, stream)
            .await
    }
}

impl Engine for LocalEngine {
    fn identity(&self) -> EngineIdentity {
        EngineIdentity {
            kind: "local".into(),
            model: self.model_name.clone(),
        }
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, EngineError>> {
        Box::pin(self.complete_chat(request, None))
    }
}

/// The device to run on: CUDA when built with it and present, else the CPU.
pub fn default_device() -> Device {
    Device::cuda_if_available(0).unwrap_or(Device::Cpu)
}
