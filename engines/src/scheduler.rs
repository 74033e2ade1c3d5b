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
//! The pool holds the prefix cache's capacity plus the sequences' budget: a whole context for
//! every slot by default, or [`Limits::kv_cache_tokens`]. A request is admitted only when the
//! blocks it may come to need (its prompt and `max_tokens`, within the context) fit the budget
//! beside what the running sequences hold and may still take, counting a block shared by several
//! tables once; so a sequence always finds its blocks, nothing is preempted, and with a budget
//! under slots × context as many sequences run as their lengths leave room for. Requests are
//! admitted first come, first served: one that does not fit waits for blocks, and those behind
//! it wait too.

mod sequence;

pub(crate) use sequence::Job;
use sequence::{advance, choose, fail, fail_all, finish, Active};

use crate::engine::{EngineError, FinishReason};
use crate::kernels::Kernels;
use crate::kv::BlockPool;
use crate::metrics::Metrics;
use crate::phi3::{Group, Model};
use crate::prefix::PrefixCache;
use crate::tokenizer::Codec;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Positions of the KV cache for running sequences, beside the prefix cache's (0: a whole
    /// context for every slot). Requests are admitted as their blocks fit; at least a context.
    pub kv_cache_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            step_tokens: 4_096,
            prefill_chunk: 2_048,
            prefix_cache_tokens: 32_768,
            prefix_block: 32,
            kv_cache_tokens: 0,
        }
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
    // The pool: the sequences' budget (a whole context for every slot unless set), and the
    // prefix cache's blocks.
    let block = limits.prefix_block.max(1);
    let mut capacity = limits.prefix_cache_tokens / block;
    let budget = match limits.kv_cache_tokens {
        0 => slots * ctx.div_ceil(block),
        n => n.div_ceil(block).max(ctx.div_ceil(block)),
    };
    if let Err(e) = model.set_pool(block, budget + capacity) {
        tracing::warn!(
            "local engine: no room for a KV cache of {} blocks of {block} positions ({e}); \
             the prefix cache is off",
            budget + capacity
        );
        capacity = 0;
        if let Err(e) = model.set_pool(block, budget) {
            let e = format!("no room for a KV cache of {budget} blocks of {block} positions: {e}");
            tracing::error!("local engine: {e}");
            while let Ok(jobs) = rx.recv() {
                jobs.into_iter()
                    .for_each(|j| fail(j, EngineError::Config(e.clone())));
            }
            return;
        }
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
    // Blocks the running sequences hold or may still take (see `committed_blocks`): it grows
    // with admissions, is recounted when sequences leave, and a pass leaves it as it is (a block
    // a table takes was reserved).
    let mut committed = 0;
    loop {
        if active.is_empty() {
            // Idle, or every sequence failed.
            committed = 0;
            metrics.kv_blocks_committed.set(0);
        }
        debug_assert_eq!(committed, committed_blocks(&active, pool.len()));
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
            // The cached blocks join the table as they are, one more reference each.
            let hit = cache.lookup(&waiting[i].prompt);
            let table: Vec<u32> = cache.values(&hit).copied().collect();
            let reserve = n
                .saturating_add(waiting[i].sampling.max_tokens as usize)
                .min(ctx)
                .div_ceil(block)
                .max(table.len());
            // Cached blocks no running sequence holds (the cache's is their one reference) join
            // the committed ones, and so do the blocks the table may still take.
            let adds = table.iter().filter(|&&b| pool.refs(b) == 1).count() + reserve - table.len();
            if committed + adds > budget {
                cache.release(&hit);
                if active.is_empty() {
                    // Cannot happen (a context fits the budget), but never wait for nothing.
                    if let Some(job) = waiting.remove(i) {
                        fail(
                            job,
                            EngineError::Config(format!(
                                "a request of {reserve} KV blocks does not fit the cache's {budget}"
                            )),
                        );
                    }
                    continue;
                }
                // First come, first served: it waits for blocks, and so do those behind it.
                break;
            }
            committed += adds;
            let Some(job) = waiting.remove(i) else {
                cache.release(&hit);
                break;
            };
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
                reserve,
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
        metrics.kv_blocks_committed.set(committed as i64);
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
            // Admission by reservations makes this impossible.
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
        let retired: Vec<(Active, FinishReason)> = finished
            .into_iter()
            .map(|(s, reason)| {
                let a = active.swap_remove(s);
                a.table.iter().for_each(|&b| pool.release(b));
                (a, reason)
            })
            .collect();
        // The figures first, so a client that has its reply reads them as they are after it.
        metrics.kv_blocks_used.set(pool.used() as i64);
        metrics
            .kv_block_refs
            .set(active.iter().map(|a| a.table.len()).sum::<usize>() as i64);
        if !retired.is_empty() {
            committed = committed_blocks(&active, pool.len());
            metrics.kv_blocks_committed.set(committed as i64);
        }
        for (a, reason) in retired {
            metrics.requests_finished.inc();
            finish(a, reason, codec.as_ref());
        }
    }
}

/// Blocks the running sequences hold, each counted once however many tables share it, plus
/// those their tables may still take up to their reservations. Admissions keep it within the
/// budget, and it only falls as sequences run (a block taken was reserved), so with the prefix
/// cache's blocks beside it, the pool always has the blocks a sequence asks for.
fn committed_blocks(active: &[Active], blocks: usize) -> usize {
    let mut held = vec![false; blocks];
    let mut n = 0;
    for a in active {
        for &b in &a.table {
            if let Some(h) = held.get_mut(b as usize) {
                n += usize::from(!std::mem::replace(h, true));
            }
        }
        n += a.reserve.saturating_sub(a.table.len());
    }
    n
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
