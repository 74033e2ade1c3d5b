//! A generation load for the local engine, as a flow or a server sees one: requests of mixed
//! prompt and output lengths, a share of them opening with one of a few common prefixes (a
//! flow's system prompt and transcript, one document under several instructions), arriving at a
//! set rate. [`run`] replays it and reports total tokens/s, time to first token and the time
//! between tokens (percentiles), so settings (the prefix cache on or off, the tokens per pass) can
//! be compared on the same requests.

use crate::engine::{EngineError, Sampling};
use crate::local::LocalEngine;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The load's shape; every draw is from `seed`, so a plan gives the same requests every time.
#[derive(Debug, Clone, Serialize)]
pub struct LoadPlan {
    pub requests: usize,
    /// Requests per second (Poisson arrivals); 0 sends them all at once.
    pub rate: f64,
    /// Prompt tokens, uniform in `[prompt.0, prompt.1]`.
    pub prompt: (usize, usize),
    /// Output tokens, uniform in `[output.0, output.1]` (exact: stop tokens are held off).
    pub output: (usize, usize),
    /// The share of requests that open with a common prefix.
    pub shared: f64,
    /// How many common prefixes there are (each request with one picks one at random).
    pub prefixes: usize,
    /// A shared prompt's prefix is this share of its length at most (the rest is its own).
    pub prefix_share: f64,
    pub seed: u64,
}

/// One request of a load.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// When it is sent, from the start.
    pub at: Duration,
    pub prompt: Vec<u32>,
    pub output: u32,
    /// The common prefix it opens with, if any.
    pub prefix: Option<usize>,
}

/// The requests of `plan`, token ids below `vocab`.
pub fn requests(plan: &LoadPlan, vocab: u32) -> Vec<LoadRequest> {
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let draw = |rng: &mut fastrand::Rng, (lo, hi): (usize, usize)| rng.usize(lo..=hi.max(lo));
    let tokens = |rng: &mut fastrand::Rng, n: usize| -> Vec<u32> {
        (0..n).map(|_| rng.u32(3..vocab.max(4))).collect()
    };
    // Each prefix as long as the longest prompt may share; a request takes as much of it as its
    // length allows.
    let longest = (plan.prompt.1 as f64 * plan.prefix_share) as usize;
    let prefixes: Vec<Vec<u32>> = (0..plan.prefixes)
        .map(|_| tokens(&mut rng, longest))
        .collect();
    let mut at = 0.0f64;
    (0..plan.requests)
        .map(|_| {
            if plan.rate > 0.0 {
                at += -(1.0 - rng.f64()).ln() / plan.rate;
            }
            let len = draw(&mut rng, plan.prompt);
            let output = draw(&mut rng, plan.output) as u32;
            let prefix = (!prefixes.is_empty() && rng.f64() < plan.shared)
                .then(|| rng.usize(..prefixes.len()));
            let prompt = match prefix {
                Some(p) => {
                    let keep = ((len as f64 * plan.prefix_share) as usize).min(prefixes[p].len());
                    let mut prompt = prefixes[p][..keep].to_vec();
                    prompt.extend(tokens(&mut rng, len - keep));
                    prompt
                }
                None => tokens(&mut rng, len),
            };
            LoadRequest {
                at: Duration::from_secs_f64(at),
                prompt,
                output,
                prefix,
            }
        })
        .collect()
}

/// `load` as JSON lines, one request a line (`at_s`: seconds from the start; `prompt`: token ids;
/// `output`: tokens to generate; `prefix`: the common prefix it opens with, or null), for feeding
/// the same requests to another engine.
pub fn to_jsonl(load: &[LoadRequest]) -> String {
    let mut out = String::new();
    for r in load {
        let line = serde_json::json!({
            "at_s": r.at.as_secs_f64(), "prompt": r.prompt, "output": r.output, "prefix": r.prefix,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// What one replay measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRecord {
    pub requests: usize,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// From the first request sent to the last token.
    pub wall_s: f64,
    /// Prompt and output tokens over the wall time.
    pub total_tok_s: f64,
    pub output_tok_s: f64,
    /// Time to first token (from each request's sending), milliseconds.
    pub ttft_ms_p50: f64,
    pub ttft_ms_p90: f64,
    pub ttft_ms_p99: f64,
    /// Time between a request's tokens, milliseconds.
    pub itl_ms_p50: f64,
    pub itl_ms_p90: f64,
    pub itl_ms_p99: f64,
    /// Prompt tokens the prefix cache supplied, and its hit rate (over whole blocks looked up).
    pub cached_prompt_tokens: u64,
    pub prefix_cache_hit_rate: f64,
    pub forward_passes: u64,
    /// The most requests decoding at once (spans from first token to last overlapping), and the
    /// KV cache's blocks (the prefix cache's among them).
    pub most_decoding: usize,
    pub kv_blocks: i64,
}

/// Replays `load` on `engine` (greedy, exact output lengths) and measures it.
pub async fn run(engine: &LocalEngine, load: &[LoadRequest]) -> Result<LoadRecord, EngineError> {
    let m = engine.metrics();
    let (cached0, passes0) = (m.prefix_cache_hit_tokens.get(), m.forward_passes.get());
    let start = tokio::time::Instant::now();
    let sent = load.iter().map(|r| async move {
        tokio::time::sleep_until(start + r.at).await;
        let sent = Instant::now();
        let sampling = Sampling {
            temperature: 0.0,
            max_tokens: r.output,
            min_tokens: r.output,
            ..Sampling::default()
        };
        let mut done = engine
            .complete_tokens_timed(vec![r.prompt.clone()], &sampling)
            .await;
        (sent, done.remove(0))
    });
    let done = futures::future::join_all(sent).await;
    let wall = start.elapsed().as_secs_f64();
    let mut ttft = Vec::new();
    let mut itl = Vec::new();
    let mut spans = Vec::new();
    let (mut prompt, mut output) = (0u64, 0u64);
    for (i, (sent, result)) in done.into_iter().enumerate() {
        let (c, ticks) = result?;
        if c.completion_tokens != load[i].output {
            return Err(EngineError::Config(format!(
                "request {i} got {} tokens of {}",
                c.completion_tokens, load[i].output
            )));
        }
        prompt += c.prompt_tokens as u64;
        output += c.completion_tokens as u64;
        if let (Some(first), Some(last)) = (ticks.first(), ticks.last()) {
            ttft.push(first.duration_since(sent).as_secs_f64() * 1000.0);
            spans.push((*first, *last));
        }
        itl.extend(
            ticks
                .windows(2)
                .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0),
        );
    }
    let pct = |v: &mut Vec<f64>, p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        round(v[i])
    };
    Ok(LoadRecord {
        requests: load.len(),
        prompt_tokens: prompt,
        output_tokens: output,
        wall_s: round(wall),
        total_tok_s: round((prompt + output) as f64 / wall),
        output_tok_s: round(output as f64 / wall),
        ttft_ms_p50: pct(&mut ttft, 0.5),
        ttft_ms_p90: pct(&mut ttft, 0.9),
        ttft_ms_p99: pct(&mut ttft, 0.99),
        itl_ms_p50: pct(&mut itl, 0.5),
        itl_ms_p90: pct(&mut itl, 0.9),
        itl_ms_p99: pct(&mut itl, 0.99),
        cached_prompt_tokens: m.prefix_cache_hit_tokens.get() - cached0,
        prefix_cache_hit_rate: round(m.prefix_cache_hit_rate.get()),
        forward_passes: m.forward_passes.get() - passes0,
        most_decoding: most_at_once(&spans),
        kv_blocks: m.kv_blocks.get(),
    })
}

/// The most of `spans` (first, last) that overlap at one instant: with each request's first and
/// last token, how many decoded at once.
pub fn most_at_once(spans: &[(Instant, Instant)]) -> usize {
    spans
        .iter()
        .map(|&(at, _)| {
            spans
                .iter()
                .filter(|&&(first, last)| first <= at && at <= last)
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_draws_the_same_requests_within_its_bounds() {
        let plan = LoadPlan {
            requests: 200,
            rate: 10.0,
            prompt: (100, 2000),
            output: (50, 1000),
            shared: 0.5,
            prefixes: 4,
            prefix_share: 0.8,
            seed: 3,
        };
        let a = requests(&plan, 1000);
        let b = requests(&plan, 1000);
        assert_eq!(a.len(), 200);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.at, &x.prompt, x.output), (y.at, &y.prompt, y.output));
        }
        assert!(a.iter().all(|r| (100..=2000).contains(&r.prompt.len())));
        assert!(a.iter().all(|r| (50..=1000).contains(&r.output)));
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        // About 20 s for 200 requests at 10 a second; about half share a prefix.
        let last = a.last().unwrap().at.as_secs_f64();
        assert!((12.0..30.0).contains(&last), "{last}");
        let shared: Vec<&LoadRequest> = a.iter().filter(|r| r.prefix.is_some()).collect();
        assert!((70..130).contains(&shared.len()), "{}", shared.len());
        // Two requests with one prefix open alike for 80% of the shorter one.
        let p = shared[0].prefix;
        let other = shared[1..].iter().find(|r| r.prefix == p).unwrap();
        let n = (shared[0].prompt.len().min(other.prompt.len()) as f64 * 0.8) as usize;
        assert_eq!(shared[0].prompt[..n], other.prompt[..n]);
        // Written out, each line gives its request back.
        let lines: Vec<serde_json::Value> = to_jsonl(&a)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), a.len());
        for (l, r) in lines.iter().zip(&a) {
            // To the nanosecond: serde_json's float parsing may be one unit in the last place off.
            assert!((l["at_s"].as_f64().unwrap() - r.at.as_secs_f64()).abs() < 1e-9);
            assert_eq!(l["output"], r.output);
            assert_eq!(l["prompt"], serde_json::json!(r.prompt));
        }
    }
}
