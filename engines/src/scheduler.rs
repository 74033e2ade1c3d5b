//! The local engine's scheduler: one thread owns the model and runs continuous batching.
//!
//! Requests wait in a queue and are admitted as soon as fewer than the model's slots (its batch)
//! are running; finished sequences leave at once, so short requests do not wait for long ones.
//! Every forward pass feeds one token to each sequence that is decoding and, within a budget of
//! tokens per pass ([`Limits::step_tokens`]), chunks of new prompts: a long new prompt is prefilled
//! a chunk per pass, beside the sequences already decoding, instead of stalling them.
//!
//! The KV cache is [paged](crate::kv): each sequence has a block table, given blocks from the
//! pool as it grows and handing them back when it ends. A new request first looks up its prompt
//! in the [prefix cache](crate::prefix): the blocks found go into its table as they are, shared
//! by reference with every other sequence reading them, and only the rest of the prompt is fed.
//! Once a prompt is in, its whole blocks enter the prefix cache, again by reference. A request
//! that shares more of its prompt with one still being prefilled than the cache holds waits for
//! that prefill (other requests go ahead of it), so `n` samples of one prompt, or many requests
//! over one document, compute and hold the shared part once.
//!
//! The pool has a whole context's blocks for every slot plus the prefix cache's capacity, so a
//! sequence always finds the blocks it needs.

use crate::engine::{Completion, EngineError, FinishReason, Sampling, TokenLogprob};
use crate::kernels::Kernels;
use crate::kv::BlockPool;
use crate::metrics::Metrics;
use crate::phi3::{Group, Model};
use crate::prefix::PrefixCache;
use crate::sample::draw;
use crate::tokenizer::Codec;
use candle_core::{Tensor, D};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Job {
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub reply: tokio::sync::oneshot::Sender<Result<Completion, EngineError>>,
    /// Text deltas as tokens are generated (for streaming replies).
    pub stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// When each token was sampled (for latency figures: time to first token, between tokens).
    pub ticks: Option<std::sync::mpsc::Sender<Instant>>,
}

/// How the scheduler feeds the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tokens fed per forward pass: one per decoding sequence, the rest of the budget to chunks
    /// of prompts (first admitted first). Bounds a pass's time, so decoding sequences keep their
    /// pace while a long prompt comes in.
    pub step_tokens: usize,
    /// Prompt tokens of one sequence fed per forward pass at most (bounds the attention scores'
    /// memory).
    pub prefill_chunk: usize,
    /// Positions the prefix cache holds (0: no prefix cache).
    pub prefix_cache_tokens: usize,
    /// Tokens per prefix-cache block: prefixes are matched and cached a whole block at a time.
    pub prefix_block: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            step_tokens: 4_096,
            prefill_chunk: 2_048,
            prefix_cache_tokens: 32_768,
            prefix_block: 32,
        }
    }
}

/// A sequence being generated.
struct Active {
    job: Job,
    /// Its KV cache blocks, in order (shared prefix blocks first).
    table: Vec<u32>,
    /// Tokens not yet fed to the model (the rest of the prompt, then each sampled token).
    pending: Vec<u32>,
    /// Whether `pending` is still the prompt's.
    prefilling: bool,
    /// Admission order: prompt chunks go to the first admitted first.
    order: u64,
    /// Positions already in the cache.
    len: usize,
    generated: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    rng: fastrand::Rng,
    /// Text already streamed.
    sent: String,
}

fn fail(job: Job, e: EngineError) {
    let _ = job.reply.send(Err(e));
}

/// Fails every active sequence with the model's error `e`, handing their blocks back.
fn fail_all(active: &mut Vec<Active>, pool: &mut BlockPool, e: &dyn std::fmt::Display) {
    for a in active.drain(..) {
        a.table.iter().for_each(|&b| pool.release(b));
        fail(a.job, EngineError::Config(format!("model: {e}")));
    }
}

/// Tokens generated over a sliding window of time.
struct Rate {
    window: std::collections::VecDeque<(Instant, u64)>,
}

impl Rate {
    fn add(&mut self, tokens: u64) -> f64 {
        let now = Instant::now();
        self.window.push_back((now, tokens));
        while self
            .window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(10))
        {
            self.window.pop_front();
        }
        let span = self
            .window
            .front()
            .map_or(0.0, |(t, _)| now.duration_since(*t).as_secs_f64());
        let total: u64 = self.window.iter().map(|w| w.1).sum();
        if span > 0.0 {
            total as f64 / span
        } else {
            0.0
        }
    }
}

/// The scheduler loop: admit waiting jobs into free slots, run one forward pass, sample, retire.
pub(crate) fn schedule(
    mut model: Model,
    codec: Arc<dyn Codec>,
    rx: mpsc::Receiver<Vec<Job>>,
    limits: Limits,
    metrics: Metrics,
) {
    let slots = model.slots();
    let ctx = model.context();
    let stop_ids: Vec<u32> = codec
        .stop_ids()
        .into_iter()
        .filter(|&t| (t as usize) < model.config().vocab_size)
        .collect();
    // The pool: a whole context for every slot, and the prefix cache's blocks.
    let mut block = limits.prefix_block.max(1);
    let mut capacity = limits.prefix_cache_tokens / block;
    let blocks = slots * ctx.div_ceil(block) + capacity;
    if let Err(e) = model.set_pool(block, blocks) {
        tracing::warn!(
            "local engine: no room for a KV cache of {blocks} blocks of {block} positions \
             ({e}); the prefix cache is off"
        );
        (block, capacity) = (model.block(), 0);
    }
    let mut pool = BlockPool::new(model.blocks());
    metrics.kv_blocks.set(pool.len() as i64);
    let mut cache: PrefixCache<u32> = PrefixCache::new(block, capacity);
    let mut active: Vec<Active> = Vec::new();
    let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    let mut admitted = 0u64;
    let mut rate = Rate {
        window: Default::default(),
    };
    let kernels = model.kernels().unwrap_or(Kernels::NONE);
    let mut evicted = 0;
    loop {
        // Block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(jobs) => waiting.extend(jobs),
                Err(_) => {
                    // The engine was dropped: what its prefix cache saved, for the log.
                    let (prompt, hit) = (
                        metrics.prompt_tokens.get(),
                        metrics.prefix_cache_hit_tokens.get(),
                    );
                    if prompt > 0 {
                        tracing::info!(
                            "local engine: {hit} of {prompt} prompt tokens ({:.1}%) from the prefix cache, {} tokens generated in {} forward passes",
                            100.0 * hit as f64 / prompt as f64,
                            metrics.generated_tokens.get(),
                            metrics.forward_passes.get()
                        );
                    }
                    return;
                }
            }
        }
        while let Ok(jobs) = rx.try_recv() {
            waiting.extend(jobs);
        }
        let mut i = 0;
        while active.len() < slots && i < waiting.len() {
            let n = waiting[i].prompt.len();
            if n == 0 || n >= ctx {
                if let Some(job) = waiting.remove(i) {
                    fail(
                        job,
                        EngineError::Config(format!(
                            "prompt of {n} tokens does not fit the context of {ctx}"
                        )),
                    );
                }
                continue;
            }
            if waits_for_prefill(&waiting[i].prompt, &active, &cache) {
                i += 1;
                continue;
            }
            let Some(job) = waiting.remove(i) else {
                break;
            };
            // The cached blocks join the table as they are, one more reference each.
            let hit = cache.lookup(&job.prompt);
            let table: Vec<u32> = cache.values(&hit).copied().collect();
            table.iter().for_each(|&b| pool.share(b));
            cache.release(&hit);
            let reused = table.len() * block;
            metrics.prompt_tokens.inc_by(n as u64);
            if cache.capacity() > 0 {
                // Whole blocks of all but the last token are looked up.
                let whole = ((n - 1) / block * block) as u64;
                let looked_up = metrics.prefix_cache_lookup_tokens.inc_by(whole) + whole;
                let hits = metrics.prefix_cache_hit_tokens.inc_by(reused as u64) + reused as u64;
                metrics
                    .prefix_cache_hit_rate
                    .set(hits as f64 / looked_up.max(1) as f64);
            }
            // An unseeded request gets a fresh seed: two of them sample differently.
            let seed = job.sampling.seed.unwrap_or_else(|| fastrand::u64(..));
            admitted += 1;
            active.push(Active {
                table,
                pending: job.prompt[reused..].to_vec(),
                prefilling: true,
                order: admitted,
                len: reused,
                generated: Vec::new(),
                logprobs: Vec::new(),
                rng: fastrand::Rng::with_seed(seed),
                sent: String::new(),
                job,
            });
        }
        metrics.queue_depth.set(waiting.len() as i64);
        metrics.running.set(active.len() as i64);
        if active.is_empty() {
            continue;
        }
        let fed = plan(&active, &limits);
        // Every sequence fed gets the blocks its new positions need.
        let short = active.iter_mut().zip(&fed).any(|(a, &n)| {
            while a.table.len() * block < a.len + n {
                match pool.alloc() {
                    Some(b) => a.table.push(b),
                    None => return true,
                }
            }
            false
        });
        if short {
            // The pool is sized so this cannot happen.
            fail_all(
                &mut active,
                &mut pool,
                &"the KV cache's pool ran out of blocks",
            );
            continue;
        }
        let groups = groups(&active, &fed);
        let rows: Vec<usize> = (0..active.len()).filter(|&s| fed[s] > 0).collect();
        // Rows whose prompt is not done after this pass: they get no token.
        let mid: Vec<bool> = rows
            .iter()
            .map(|&s| active[s].prefilling && fed[s] < active[s].pending.len())
            .collect();
        metrics.forward_passes.inc();
        let picks = model.forward_groups(&groups).and_then(|logits| {
            let mut group: Vec<&mut Active> = active
                .iter_mut()
                .enumerate()
                .filter(|(s, _)| fed[*s] > 0)
                .map(|(_, a)| a)
                .collect();
            choose(&logits, kernels, &mut group, &mid, &stop_ids)
        });
        let picks = match picks {
            Ok(p) => p,
            Err(e) => {
                fail_all(&mut active, &mut pool, &e);
                continue;
            }
        };
        let mut finished = Vec::new();
        let mut sampled = 0u64;
        for (&s, (token, logprob)) in rows.iter().zip(picks) {
            let a = &mut active[s];
            a.len += fed[s];
            a.pending.drain(..fed[s]);
            if !a.pending.is_empty() {
                continue; // more of the prompt to feed
            }
            if std::mem::replace(&mut a.prefilling, false) {
                // The whole prompt is in now: its whole blocks enter the cache by reference
                // (the sequence goes on writing only past them).
                let table = &a.table;
                let mut taken = Vec::new();
                let _ = cache.insert(&a.job.prompt, |i| {
                    taken.push(table[i]);
                    Ok::<u32, std::convert::Infallible>(table[i])
                });
                taken.into_iter().for_each(|b| pool.share(b));
                cache
                    .take_evicted()
                    .into_iter()
                    .for_each(|b| pool.release(b));
            }
            if let Some(ticks) = &a.job.ticks {
                let _ = ticks.send(Instant::now());
            }
            sampled += 1;
            match advance(a, token, logprob, &stop_ids, codec.as_ref(), ctx) {
                Some(r) => finished.push((s, r)),
                None => a.pending = vec![token],
            }
        }
        metrics.generated_tokens.inc_by(sampled);
        metrics.generated_tokens_per_second.set(rate.add(sampled));
        let counts = cache.counts();
        metrics.prefix_cache_blocks.set(cache.len() as i64);
        metrics
            .prefix_cache_evictions
            .inc_by(counts.evicted - std::mem::replace(&mut evicted, counts.evicted));
        // Retire from the back, so the indices of the rest stay valid.
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (s, reason) in finished {
            let a = active.swap_remove(s);
            a.table.iter().for_each(|&b| pool.release(b));
            metrics.requests_finished.inc();
            finish(a, reason, codec.as_ref());
        }
        metrics.kv_blocks_used.set(pool.used() as i64);
        metrics
            .kv_block_refs
            .set(active.iter().map(|a| a.table.len()).sum::<usize>() as i64);
    }
}

/// Whether `prompt` shares more whole blocks with a prompt still being prefilled than the cache
/// holds: it then waits, and finds them cached once that prefill is done.
fn waits_for_prefill(prompt: &[u32], active: &[Active], cache: &PrefixCache<u32>) -> bool {
    if cache.capacity() == 0 || prompt.len() <= cache.block() {
        return false;
    }
    let block = cache.block();
    let usable = prompt.len() - 1;
    let shared = active
        .iter()
        .filter(|a| {
            a.prefilling && a.job.prompt[..block.min(a.job.prompt.len())] == prompt[..block]
        })
        .map(|a| {
            let common = a
                .job
                .prompt
                .iter()
                .zip(&prompt[..usable])
                .take_while(|(x, y)| x == y)
                .count();
            common / block
        })
        .max()
        .unwrap_or(0);
    shared > 0 && shared * block > cache.peek(prompt)
}

/// Tokens fed to each slot this pass: one to every decoding sequence, then prompt chunks from
/// the rest of the budget, first admitted first (at least one token when a prompt waits, so
/// prompts move even when decoding takes the whole budget).
fn plan(active: &[Active], limits: &Limits) -> Vec<usize> {
    let mut fed: Vec<usize> = active.iter().map(|a| usize::from(!a.prefilling)).collect();
    let decoding: usize = fed.iter().sum();
    let mut left = limits.step_tokens.saturating_sub(decoding).max(1);
    let mut prefilling: Vec<usize> = (0..active.len())
        .filter(|&s| active[s].prefilling)
        .collect();
    prefilling.sort_by_key(|&s| active[s].order);
    for s in prefilling {
        if left == 0 {
            break;
        }
        let c = active[s].pending.len().min(limits.prefill_chunk).min(left);
        fed[s] = c;
        left -= c;
    }
    fed
}

/// The pass's groups: runs of consecutive sequences fed the same number of tokens (so no group
/// is padded), in order.
fn groups(active: &[Active], fed: &[usize]) -> Vec<Group> {
    let mut out: Vec<(usize, Group, usize)> = Vec::new();
    for (s, a) in active.iter().enumerate() {
        let n = fed[s];
        if n == 0 {
            continue;
        }
        match out.last_mut() {
            Some((l, g, next)) if *l == n && *next == s => {
                g.tables.push(a.table.clone());
                g.tokens.push(a.pending[..n].to_vec());
                g.starts.push(a.len);
                *next = s + 1;
            }
            _ => out.push((
                n,
                Group {
                    tables: vec![a.table.clone()],
                    tokens: vec![a.pending[..n].to_vec()],
                    starts: vec![a.len],
                },
                s + 1,
            )),
        }
    }
    out.into_iter().map(|(_, g, _)| g).collect()
}

/// Takes a sampled token into `a`; returns why it ends, if it does.
fn advance(
    a: &mut Active,
    token: u32,
    logprob: f32,
    stop_ids: &[u32],
    codec: &dyn Codec,
    ctx: usize,
) -> Option<FinishReason> {
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
        if a.generated.len() >= sp.max_tokens as usize || a.len + 1 >= ctx {
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
    reason
}

/// Sends a finished sequence its completion.
fn finish(a: Active, reason: FinishReason, codec: &dyn Codec) {
    let result = codec
        .decode(&a.generated)
        .map_err(EngineError::from)
        .map(|mut text| {
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
            Completion {
                text,
                finish_reason: reason,
                prompt_tokens: a.job.prompt.len() as u32,
                completion_tokens: a.generated.len() as u32,
                logprobs: a.job.sampling.logprobs.then_some(a.logprobs),
            }
        });
    if let (Some(tx), Ok(c)) = (&a.job.stream, &result) {
        if c.text.len() > a.sent.len() && c.text.starts_with(a.sent.as_str()) {
            let _ = tx.send(c.text[a.sent.len()..].to_string());
        }
    }
    let _ = a.job.reply.send(result);
}

/// Picks the next token of every row of `logits` (rows, vocab), which it may change in place;
/// row `i` is `group[i]`'s. Greedy rows are decided on the device (only the token, and its
/// log-probability when asked for, come back); sampled rows are copied back and drawn on the
/// host. Below `min_tokens`, stop tokens are excluded. Rows still being prefilled (`mid`) get no
/// token: they take the greedy path and leave their random state alone. `kernels` decides how
/// the greedy tokens are found ([`crate::kernels::argmax`]).
fn choose(
    logits: &Tensor,
    kernels: Kernels,
    group: &mut [&mut Active],
    mid: &[bool],
    stop_ids: &[u32],
) -> candle_core::Result<Vec<(u32, f32)>> {
    let n = logits.dims2()?.0;
    let dev = logits.device();
    let banned: Vec<bool> = group
        .iter()
        .map(|a| (a.generated.len() as u32) < a.job.sampling.min_tokens)
        .collect();
    let (greedy, sampled): (Vec<usize>, Vec<usize>) =
        (0..n).partition(|&i| group[i].job.sampling.temperature <= 0.0 || mid[i]);
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
