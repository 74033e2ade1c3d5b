//! The local engine: the Phi-3/Phi-4 model of [`crate::phi3`] on this machine (CPU; CUDA with the
//! `cuda` feature), behind the same [`Engine`] trait as a server.
//!
//! One scheduler thread owns the model and runs continuous batching: requests wait in a queue,
//! take a free cache slot as soon as one is free (a new prompt is prefilled in the same forward pass
//! as the other sequences' next tokens), and leave as soon as they finish, so short requests do not
//! wait for long ones. Active sequences are kept in slots `0..n`: a finished sequence's slot is
//! filled by moving the last one's cache into it.

use crate::engine::{
    phi4_prompt, ChatRequest, Completion, Engine, EngineError, EngineIdentity, FinishReason,
    Sampling, TokenLogprob,
};
use crate::phi3::Model;
use crate::tokenizer::Codec;
use candle_core::{Device, Tensor, D};
use futures::future::BoxFuture;
use std::sync::mpsc;
use std::sync::Arc;

struct Job {
    prompt: Vec<u32>,
    sampling: Sampling,
    reply: tokio::sync::oneshot::Sender<Result<Completion, EngineError>>,
    /// Text deltas as tokens are generated (for streaming replies).
    stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// A sequence being generated, in a cache slot.
struct Active {
    job: Job,
    /// Tokens to feed next (the prompt first, then each sampled token).
    pending: Vec<u32>,
    /// Positions already in the cache.
    len: usize,
    generated: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    rng: fastrand::Rng,
    /// Text already streamed.
    sent: String,
}

/// A model on this machine as an engine.
pub struct LocalEngine {
    jobs: mpsc::Sender<Job>,
    codec: Arc<dyn Codec>,
    model_name: String,
}

impl LocalEngine {
    /// Starts the scheduler for `model` (its slots bound the batch) with `codec` as tokenizer.
    pub fn new(model: Model, codec: Arc<dyn Codec>, model_name: &str) -> LocalEngine {
        let (tx, rx) = mpsc::channel::<Job>();
        let c = codec.clone();
        std::thread::spawn(move || schedule(model, c, rx));
        LocalEngine {
            jobs: tx,
            codec,
            model_name: model_name.to_string(),
        }
    }
}

fn fail(job: Job, e: EngineError) {
    let _ = job.reply.send(Err(e));
}

/// The scheduler loop: admit waiting jobs into free slots, run one forward pass, sample, retire.
fn schedule(model: Model, codec: Arc<dyn Codec>, rx: mpsc::Receiver<Job>) {
    let slots = model.slots();
    let stop_ids = codec.stop_ids();
    let mut active: Vec<Active> = Vec::new();
    let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    loop {
        // Block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return, // the engine was dropped
            }
        }
        while let Ok(job) = rx.try_recv() {
            waiting.push_back(job);
        }
        while active.len() < slots {
            let Some(job) = waiting.pop_front() else {
                break;
            };
            if job.prompt.is_empty() || job.prompt.len() >= model.context() {
                let n = job.prompt.len();
                let ctx = model.context();
                fail(
                    job,
                    EngineError::Config(format!(
                        "prompt of {n} tokens does not fit the context of {ctx}"
                    )),
                );
                continue;
            }
            let seed = job.sampling.seed.unwrap_or(0);
            active.push(Active {
                pending: job.prompt.clone(),
                len: 0,
                generated: Vec::new(),
                logprobs: Vec::new(),
                rng: fastrand::Rng::with_seed(seed),
                sent: String::new(),
                job,
            });
        }
        if active.is_empty() {
            continue;
        }
        let tokens: Vec<Vec<u32>> = active.iter().map(|a| a.pending.clone()).collect();
        let starts: Vec<usize> = active.iter().map(|a| a.len).collect();
        let logits = match model.forward(&tokens, &starts) {
            Ok(l) => l,
            Err(e) => {
                for a in active.drain(..) {
                    fail(a.job, EngineError::Config(format!("model: {e}")));
                }
                continue;
            }
        };
        let mut finished = Vec::new();
        for (s, a) in active.iter_mut().enumerate() {
            a.len += a.pending.len();
            let row = match logits.get(s) {
                Ok(r) => r,
                Err(e) => {
                    finished.push((s, Err(EngineError::Config(format!("model: {e}")))));
                    continue;
                }
            };
            let (token, logprob) = match sample(&row, &a.job.sampling, &mut a.rng) {
                Ok(t) => t,
                Err(e) => {
                    finished.push((s, Err(EngineError::Config(format!("sampling: {e}")))));
                    continue;
                }
            };
            let sp = &a.job.sampling;
            let mut reason = None;
            if stop_ids.contains(&token) {
                reason = Some(FinishReason::Stop);
            } else {
                a.generated.push(token);
                if sp.logprobs {
                    a.logprobs.push(TokenLogprob {
                        token: codec.decode(&[token]).unwrap_or_default(),
                        logprob,
                    });
                }
                if a.generated.len() >= sp.max_tokens as usize || a.len + 1 >= model.context() {
                    reason = Some(FinishReason::Length);
                } else if !sp.stop.is_empty() {
                    let text = codec.decode(&a.generated).unwrap_or_default();
                    if sp.stop.iter().any(|st| text.ends_with(st.as_str())) {
                        reason = Some(FinishReason::Stop);
                    }
                }
            }
            if let (Some(tx), None) = (&a.job.stream, &reason) {
                // Stream what the new token adds to the text (a partial UTF-8 character waits).
                let text = codec.decode(&a.generated).unwrap_or_default();
                if text.len() > a.sent.len()
                    && text.starts_with(a.sent.as_str())
                    && !text.ends_with('\u{fffd}')
                {
                    let _ = tx.send(text[a.sent.len()..].to_string());
                    a.sent = text;
                }
            }
            match reason {
                Some(r) => finished.push((s, Ok(r))),
                None => a.pending = vec![token],
            }
        }
        // Retire from the back, so slot numbers of the rest stay valid while compacting.
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (s, outcome) in finished {
            let last = active.len() - 1;
            if s != last {
                if let Err(e) = model.move_slot(last, s, active[last].len) {
                    for a in active.drain(..) {
                        fail(a.job, EngineError::Config(format!("model: {e}")));
                    }
                    break;
                }
            }
            let a = active.swap_remove(s);
            let result = outcome.and_then(|reason| {
                let mut text = codec.decode(&a.generated)?;
                if reason == FinishReason::Stop {
                    if let Some(st) = a
                        .job
                        .sampling
                        .stop
                        .iter()
                        .find(|st| text.ends_with(st.as_str()))
                    {
                        text.truncate(text.len() - st.len());
                    }
                }
                Ok(Completion {
                    text,
                    finish_reason: reason,
                    prompt_tokens: a.job.prompt.len() as u32,
                    completion_tokens: a.generated.len() as u32,
                    logprobs: a.job.sampling.logprobs.then_some(a.logprobs),
                })
            });
            if let (Some(tx), Ok(c)) = (&a.job.stream, &result) {
                if c.text.len() > a.sent.len() && c.text.starts_with(a.sent.as_str()) {
                    let _ = tx.send(c.text[a.sent.len()..].to_string());
                }
            }
            let _ = a.job.reply.send(result);
        }
    }
}

/// Picks the next token from one row of logits: greedy at temperature 0, else top-k, then top-p
/// (nucleus), then a draw from `rng`. Returns the token and its log-probability.
pub fn sample(
    logits: &Tensor,
    s: &Sampling,
    rng: &mut fastrand::Rng,
) -> candle_core::Result<(u32, f32)> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?.to_vec1::<f32>()?;
    if s.temperature <= 0.0 {
        let (best, lp) = logp
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |m, (i, &v)| {
                if v > m.1 {
                    (i, v)
                } else {
                    m
                }
            });
        return Ok((best as u32, lp));
    }
    let mut order: Vec<usize> = (0..logp.len()).collect();
    order.sort_by(|&a, &b| logp[b].total_cmp(&logp[a]));
    if let Some(k) = s.top_k {
        order.truncate((k as usize).max(1));
    }
    // Probabilities at the temperature, over the kept tokens.
    let max = logp[order[0]];
    let mut weights: Vec<f64> = order
        .iter()
        .map(|&i| (((logp[i] - max) / s.temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cum = 0.0;
    let mut keep = weights.len();
    for (k, w) in weights.iter().enumerate() {
        cum += w / total;
        if cum >= s.top_p as f64 {
            keep = k + 1;
            break;
        }
    }
    weights.truncate(keep);
    let total: f64 = weights.iter().sum();
    let mut x = rng.f64() * total;
    for (k, w) in weights.iter().enumerate() {
        if x < *w {
            return Ok((order[k] as u32, logp[order[k]]));
        }
        x -= w;
    }
    let i = order[keep - 1];
    Ok((i as u32, logp[i]))
}

impl LocalEngine {
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
            .send(Job {
                prompt,
                sampling: sampling.clone(),
                reply: tx,
                stream,
            })
            .map_err(|_| EngineError::Config("the local engine has stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Config("the local engine stopped before answering".into()))?
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
