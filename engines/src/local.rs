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
use crate::kernels::Kernels;
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
    /// When each token was sampled (for latency figures: time to first token, between tokens).
    ticks: Option<std::sync::mpsc::Sender<std::time::Instant>>,
}

/// A sequence being generated, in a cache slot.
struct Active {
    job: Job,
    /// Tokens not yet fed to the model (the rest of the prompt, then each sampled token).
    pending: Vec<u32>,
    /// Positions already in the cache.
    len: usize,
    generated: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    rng: fastrand::Rng,
    /// Text already streamed.
    sent: String,
}

/// How much prompt the scheduler feeds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Padded prompt tokens (sequences × longest chunk) prefilled in one forward pass; new
    /// requests beyond it wait for the next pass.
    pub prefill_tokens: usize,
    /// Prompt tokens of one sequence fed per forward pass: longer prompts are fed in chunks
    /// (this bounds the attention scores' memory).
    pub prefill_chunk: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            prefill_tokens: 32_768,
            prefill_chunk: 4_096,
        }
    }
}

/// A model on this machine as an engine.
pub struct LocalEngine {
    jobs: mpsc::Sender<Vec<Job>>,
    codec: Arc<dyn Codec>,
    model_name: String,
}

impl LocalEngine {
    /// Starts the scheduler for `model` (its slots bound the batch) with `codec` as tokenizer.
    pub fn new(model: Model, codec: Arc<dyn Codec>, model_name: &str) -> LocalEngine {
        LocalEngine::with_limits(model, codec, model_name, Limits::default())
    }

    /// As [`LocalEngine::new`], with other prefill limits.
    pub fn with_limits(
        model: Model,
        codec: Arc<dyn Codec>,
        model_name: &str,
        limits: Limits,
    ) -> LocalEngine {
        let (tx, rx) = mpsc::channel::<Vec<Job>>();
        let c = codec.clone();
        let limits = Limits {
            prefill_tokens: limits.prefill_tokens.max(1),
            prefill_chunk: limits.prefill_chunk.max(1),
        };
        std::thread::spawn(move || schedule(model, c, rx, limits));
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
///
/// Newly admitted sequences are prefilled in a pass of their own (sequences already decoding
/// would otherwise be padded to the longest new prompt); every other pass decodes one token for
/// every active sequence.
fn schedule(model: Model, codec: Arc<dyn Codec>, rx: mpsc::Receiver<Vec<Job>>, limits: Limits) {
    let slots = model.slots();
    let stop_ids: Vec<u32> = codec
        .stop_ids()
        .into_iter()
        .filter(|&t| (t as usize) < model.config().vocab_size)
        .collect();
    let mut active: Vec<Active> = Vec::new();
    // Sequences in `active[fresh..]` are being prefilled.
    let mut fresh = 0;
    let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    loop {
        // Block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(jobs) => waiting.extend(jobs),
                Err(_) => return, // the engine was dropped
            }
        }
        while let Ok(jobs) = rx.try_recv() {
            waiting.extend(jobs);
        }
        if fresh == active.len() {
            let mut longest = 0;
            while active.len() < slots {
                let Some(job) = waiting.front() else {
                    break;
                };
                let n = job.prompt.len();
                if n == 0 || n >= model.context() {
                    let ctx = model.context();
                    if let Some(job) = waiting.pop_front() {
                        fail(
                            job,
                            EngineError::Config(format!(
                                "prompt of {n} tokens does not fit the context of {ctx}"
                            )),
                        );
                    }
                    continue;
                }
                let admitted = active.len() - fresh;
                if admitted > 0
                    && longest.max(n).min(limits.prefill_chunk) * (admitted + 1)
                        > limits.prefill_tokens
                {
                    break;
                }
                longest = longest.max(n);
                let Some(job) = waiting.pop_front() else {
                    break;
                };
                // An unseeded request gets a fresh seed: two of them sample differently.
                let seed = job.sampling.seed.unwrap_or_else(|| fastrand::u64(..));
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
        }
        if active.is_empty() {
            continue;
        }
        let first = if fresh < active.len() { fresh } else { 0 };
        let tokens: Vec<Vec<u32>> = active[first..]
            .iter()
            .map(|a| a.pending[..a.pending.len().min(limits.prefill_chunk)].to_vec())
            .collect();
        let starts: Vec<usize> = active[first..].iter().map(|a| a.len).collect();
        let picks = model
            .forward_at(first, &tokens, &starts)
            .and_then(|logits| {
                choose(
                    &logits,
                    model.kernels().unwrap_or(Kernels::NONE),
                    &mut active[first..],
                    &stop_ids,
                    limits.prefill_chunk,
                )
            });
        let picks = match picks {
            Ok(p) => p,
            Err(e) => {
                for a in active.drain(..) {
                    fail(a.job, EngineError::Config(format!("model: {e}")));
                }
                fresh = 0;
                continue;
            }
        };
        let mut finished = Vec::new();
        for (r, (token, logprob)) in picks.into_iter().enumerate() {
            let s = first + r;
            let a = &mut active[s];
            let fed = tokens[r].len();
            a.len += fed;
            a.pending.drain(..fed);
            if !a.pending.is_empty() {
                continue; // more of the prompt to feed
            }
            if let Some(ticks) = &a.job.ticks {
                let _ = ticks.send(std::time::Instant::now());
            }
            let sp = &a.job.sampling;
            let may_stop = a.generated.len() >= sp.min_tokens as usize;
            let mut reason = None;
            if stop_ids.contains(&token) && may_stop {
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
                } else if !sp.stop.is_empty() && a.generated.len() >= sp.min_tokens as usize {
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
        // Retire from the back, so slot numbers of the rest stay valid while compacting. Only
        // sequences of this pass finish, and the last active one is always among them when
        // prefilling (prefill passes cover the tail), so moved caches stay in their group.
        finished
            .sort_by_key(|f: &(usize, Result<FinishReason, EngineError>)| std::cmp::Reverse(f.0));
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
            finish(a, outcome, codec.as_ref());
        }
        if active[first.min(active.len())..]
            .iter()
            .all(|a| a.pending.len() == 1 && a.len > 0)
        {
            fresh = active.len();
        }
        fresh = fresh.min(active.len());
    }
}

/// Sends a finished sequence its completion.
fn finish(a: Active, outcome: Result<FinishReason, EngineError>, codec: &dyn Codec) {
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

/// Picks the next token of every sequence from its row of `logits` (rows, vocab), which it may
/// change in place. Greedy rows are decided on the device (only the token, and its
/// log-probability when asked for, come back); sampled rows are copied back and drawn on the
/// host. Below `min_tokens`, stop tokens are excluded. Rows still being prefilled (more than
/// `chunk` tokens pending) get no token. `kernels` decides how the greedy tokens are found
/// ([`crate::kernels::argmax`]).
fn choose(
    logits: &Tensor,
    kernels: Kernels,
    group: &mut [Active],
    stop_ids: &[u32],
    chunk: usize,
) -> candle_core::Result<Vec<(u32, f32)>> {
    let n = logits.dims2()?.0;
    let dev = logits.device();
    let banned: Vec<bool> = group
        .iter()
        .map(|a| (a.generated.len() as u32) < a.job.sampling.min_tokens)
        .collect();
    // Rows still being prefilled take the cheap greedy path and leave their random state alone.
    let (greedy, sampled): (Vec<usize>, Vec<usize>) = (0..n)
        .partition(|&i| group[i].job.sampling.temperature <= 0.0 || group[i].pending.len() > chunk);
    let wants_logprobs = greedy.iter().any(|&i| group[i].job.sampling.logprobs);
    // Every row greedy, no log-probabilities: the unmasked maximum stands unless it is a stop
    // token its row may not take yet (masking the stop tokens cannot move any other maximum), so
    // the stop tokens are masked only then.
    if sampled.is_empty() && !wants_logprobs {
        let best = crate::kernels::argmax(kernels, logits)?.to_vec1::<u32>()?;
        if !(0..n).any(|i| banned[i] && stop_ids.contains(&best[i])) {
            return Ok(best.into_iter().map(|t| (t, 0.0)).collect());
        }
    }
    if !stop_ids.is_empty() && banned.iter().any(|&b| b) {
        // Only the stop tokens' entries are touched: read them, add -inf where banned (0
        // elsewhere), write them back.
        let k = stop_ids.len();
        let ids: Vec<u32> = (0..n).flat_map(|_| stop_ids.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, (n, k), dev)?;
        let bias: Vec<f32> = banned
            .iter()
            .flat_map(|&b| std::iter::repeat_n(if b { f32::NEG_INFINITY } else { 0.0 }, k))
            .collect();
        let bias = Tensor::from_vec(bias, (n, k), dev)?;
        let masked = (logits.gather(&ids, 1)? + bias)?;
        logits.scatter_set(&ids, &masked, 1)?;
    }
    let mut out = vec![(0u32, 0f32); n];
    let logp = if !sampled.is_empty() || wants_logprobs {
        Some(candle_nn::ops::log_softmax(logits, D::Minus1)?)
    } else {
        None
    };
    if !greedy.is_empty() {
        let best = crate::kernels::argmax(kernels, logits)?.reshape((n, 1))?;
        let lp = match (&logp, wants_logprobs) {
            (Some(logp), true) => Some(logp.gather(&best, 1)?.flatten_all()?.to_vec1::<f32>()?),
            _ => None,
        };
        let best = best.flatten_all()?.to_vec1::<u32>()?;
        for &i in &greedy {
            out[i] = (best[i], lp.as_ref().map_or(0.0, |lp| lp[i]));
        }
    }
    if let (false, Some(logp)) = (sampled.is_empty(), &logp) {
        let idx: Vec<u32> = sampled.iter().map(|&i| i as u32).collect();
        let rows = logp
            .index_select(&Tensor::from_vec(idx, sampled.len(), dev)?, 0)?
            .to_vec2::<f32>()?;
        for (row, &i) in rows.iter().zip(&sampled) {
            let a = &mut group[i];
            out[i] = draw(row, &a.job.sampling, &mut a.rng);
        }
    }
    Ok(out)
}

/// Draws a token from log-probabilities `logp`: top-k, then top-p (nucleus), then a draw at the
/// temperature from `rng`. Only the head of the distribution is sorted (a vocabulary of 100k
/// tokens is not), so this is linear in the vocabulary. Returns the token and its log-probability.
pub fn draw(logp: &[f32], s: &Sampling, rng: &mut fastrand::Rng) -> (u32, f32) {
    let n = logp.len();
    if n == 0 {
        return (0, f32::NEG_INFINITY);
    }
    // Highest first; ties by token id, so the order does not depend on the algorithm.
    let rank = |a: &usize, b: &usize| logp[*b].total_cmp(&logp[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..n).collect();
    if let Some(k) = s.top_k {
        let k = (k as usize).clamp(1, n);
        if k < n {
            idx.select_nth_unstable_by(k - 1, rank);
            idx.truncate(k);
        }
    }
    let max = idx
        .iter()
        .map(|&i| logp[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let t = s.temperature.max(1e-6);
    let weight = |i: usize| (((logp[i] - max) / t) as f64).exp();
    let total: f64 = idx.iter().map(|&i| weight(i)).sum();
    let mut keep = idx.len();
    if s.top_p < 1.0 {
        // Grow a sorted head until it holds `top_p` of the mass.
        let target = s.top_p as f64 * total;
        let mut m = idx.len().min(64);
        'grow: loop {
            if m < idx.len() {
                idx.select_nth_unstable_by(m - 1, rank);
            }
            idx[..m].sort_by(rank);
            let mut cum = 0.0;
            for (k, &i) in idx[..m].iter().enumerate() {
                cum += weight(i);
                if cum >= target {
                    keep = k + 1;
                    break 'grow;
                }
            }
            if m == idx.len() {
                break;
            }
            m = (m * 8).min(idx.len());
        }
    }
    let kept = &idx[..keep];
    let total: f64 = kept.iter().map(|&i| weight(i)).sum();
    let mut x = rng.f64() * total;
    for &i in kept {
        let w = weight(i);
        if x < w {
            return (i as u32, logp[i]);
        }
        x -= w;
    }
    let i = kept[keep - 1];
    (i as u32, logp[i])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn logp(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    #[test]
    fn draws_keep_to_top_k_and_the_nucleus_in_proportion() {
        // 200 tokens: four likely ones, then a long tail.
        let mut probs = vec![0.4, 0.3, 0.2, 0.05];
        probs.extend(std::iter::repeat_n(0.05 / 196.0, 196));
        let lp = logp(&probs);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut count = |s: &Sampling, n: usize| {
            let mut seen = vec![0usize; lp.len()];
            for _ in 0..n {
                seen[draw(&lp, s, &mut rng).0 as usize] += 1;
            }
            seen
        };
        let base = Sampling {
            temperature: 1.0,
            ..Sampling::default()
        };
        // top_p 0.5: the nucleus is {0, 1} (0.4 < 0.5 <= 0.7), drawn 4:3.
        let seen = count(
            &Sampling {
                top_p: 0.5,
                ..base.clone()
            },
            7000,
        );
        assert_eq!(seen[0] + seen[1], 7000);
        assert!((seen[0] as f64 / 4000.0 - 1.0).abs() < 0.06, "{seen:?}");
        // top_k 3: only the first three, in proportion 4:3:2.
        let seen = count(
            &Sampling {
                top_k: Some(3),
                ..base.clone()
            },
            9000,
        );
        assert_eq!(seen[0] + seen[1] + seen[2], 9000);
        assert!((seen[2] as f64 / 2000.0 - 1.0).abs() < 0.1, "{seen:?}");
        // No limits: the tail gets its 5% (a nucleus reaching past the sorted head grows it).
        let seen = count(&base, 20_000);
        let tail: usize = seen[4..].iter().sum();
        assert!((tail as f64 / 1000.0 - 1.0).abs() < 0.15, "{tail}");
        let seen = count(
            &Sampling {
                top_p: 0.999,
                ..base.clone()
            },
            20_000,
        );
        let tail: usize = seen[4..].iter().sum();
        assert!(tail > 700, "{tail}");
        // The log-probability returned is the token's own.
        let (t, l) = draw(
            &lp,
            &Sampling {
                top_k: Some(1),
                ..base
            },
            &mut rng,
        );
        assert_eq!((t, l), (0, lp[0]));
    }
}
