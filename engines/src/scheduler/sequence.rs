//! The scheduler's sequences: the request each serves, its block table and what it has
//! generated; picking each pass's tokens ([`choose`]), taking them in ([`advance`]), and replying
//! when a sequence ends ([`finish`]).

use crate::engine::{Completion, EngineError, FinishReason, Sampling, TokenLogprob};
use crate::kernels::Kernels;
use crate::kv::BlockPool;
use crate::sample::draw;
use crate::tokenizer::Codec;
use candle_core::{Tensor, D};
use std::time::Instant;

/// A request as the scheduler takes it.
pub(crate) struct Job {
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub reply: tokio::sync::oneshot::Sender<Result<Completion, EngineError>>,
    /// Text deltas as tokens are generated (for streaming replies).
    pub stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// When each token was sampled (for latency figures: time to first token, between tokens).
    pub ticks: Option<std::sync::mpsc::Sender<Instant>>,
}

/// A sequence being generated.
pub(super) struct Active {
    pub(super) job: Job,
    /// Its KV cache blocks, in order (shared prefix blocks first).
    pub(super) table: Vec<u32>,
    /// Blocks its table may come to hold: its prompt and `max_tokens`, within the context.
    pub(super) reserve: usize,
    /// Tokens not yet fed to the model (the rest of the prompt, then each sampled token).
    pub(super) pending: Vec<u32>,
    /// Whether `pending` is still the prompt's.
    pub(super) prefilling: bool,
    /// Admission order: prompt chunks go to the first admitted first.
    pub(super) order: u64,
    /// Positions already in the cache.
    pub(super) len: usize,
    pub(super) generated: Vec<u32>,
    pub(super) logprobs: Vec<TokenLogprob>,
    pub(super) rng: fastrand::Rng,
    /// Text already streamed.
    pub(super) sent: String,
}

pub(super) fn fail(job: Job, e: EngineError) {
    let _ = job.reply.send(Err(e));
}

/// Fails every active sequence with the model's error `e`, handing their blocks back.
pub(super) fn fail_all(active: &mut Vec<Active>, pool: &mut BlockPool, e: &dyn std::fmt::Display) {
    for a in active.drain(..) {
        a.table.iter().for_each(|&b| pool.release(b));
        fail(a.job, EngineError::Config(format!("model: {e}")));
    }
}

/// Takes a sampled token into `a`; returns why it ends, if it does.
pub(super) fn advance(
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
pub(super) fn finish(a: Active, reason: FinishReason, codec: &dyn Codec) {
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
pub(super) fn choose(
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
