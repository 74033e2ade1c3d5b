//! Throughput of the local engine, measured the way `../shared/gpu/hf_bench.py` measures
//! transformers, so the two print comparable JSON lines side by side.
//!
//! For each batch size B: B random prompts of P tokens go through the engine together, once with
//! one new token (prefill and the first token) and once with G new tokens (`min_tokens` = G, so
//! stop tokens cannot end them early); decode time is the difference, over G − 1 steps. The
//! weights can be random ([`random_model`], made directly on the device, so the full Phi-4 shape
//! needs no checkpoint) or a real model.

use crate::engine::{Completion, EngineError, Sampling};
use crate::local::LocalEngine;
use crate::phi3::{Config, Model};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::Serialize;
use std::time::Instant;

/// Weights drawn from N(0, 0.02²) on the device (norm weights are ones), like transformers'
/// `_init_weights` for this architecture. A GPU draws them itself (seeded through the device); on
/// the CPU, whose generator cannot be seeded, they come from `rng`.
struct RandomWeights {
    rng: std::sync::Mutex<fastrand::Rng>,
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        if name.ends_with("norm.weight") {
            Tensor::ones(s, dtype, dev)
        } else if dev.is_cpu() {
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| candle_core::Error::Msg("random weights: poisoned lock".into()))?;
            // Box–Muller: two uniforms make one normal draw.
            let values: Vec<f32> = (0..s.elem_count())
                .map(|_| {
                    let (u, v) = (1.0 - rng.f32(), rng.f32());
                    0.02 * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
                })
                .collect();
            Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
        } else {
            Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
        }
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A model of shape `cfg` with random weights made on `device` (seeded), and a cache of `slots`
/// sequences × `context` positions.
pub fn random_model(
    cfg: &Config,
    dtype: DType,
    device: &Device,
    slots: usize,
    context: usize,
    seed: u64,
) -> Result<Model> {
    if !device.is_cpu() {
        device.set_seed(seed)?;
    }
    let weights = RandomWeights {
        rng: std::sync::Mutex::new(fastrand::Rng::with_seed(seed)),
    };
    let vb = VarBuilder::from_backend(Box::new(weights), dtype, device.clone());
    Model::new(cfg, vb, slots, context)
}

/// The tiny shape of `hf_bench.py --tiny`: Phi-4's head size (128) and GQA ratio (4), small
/// otherwise; for CPU smoke runs.
pub fn tiny_config() -> Config {
    Config {
        vocab_size: 1024,
        hidden_size: 512,
        intermediate_size: 1792,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        max_position_embeddings: 4096,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..Config::phi4()
    }
}

/// One batch size's figures; the field names are `hf_bench.py`'s.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub engine: String,
    pub batch: usize,
    pub prompt_len: usize,
    pub gen_len: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: Option<f64>,
    pub ms_per_step: Option<f64>,
    pub prefill_ms: f64,
    pub decode_s: f64,
    pub generate_s: f64,
    pub generate1_s: f64,
    pub e2e_tok_s: f64,
    pub decode_steps: usize,
    pub layers: usize,
    pub device: String,
    pub dtype: String,
    /// The decode step's fused kernels (`none`: candle's operations).
    pub kernels: String,
    /// Whether decode steps may be replayed as CUDA graphs.
    pub graphs: bool,
    /// With [`Plan::profile`]: milliseconds per decode pass by phase (the device synchronized
    /// after every phase, so the figures above are slower than without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_ms_per_pass: Option<std::collections::BTreeMap<String, f64>>,
    /// The same for the passes that fed the prompts (`prompt_passes` of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_profile_ms_per_pass: Option<std::collections::BTreeMap<String, f64>>,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    pub batches: Vec<usize>,
    pub prompt_len: usize,
    pub gen_len: usize,
    pub seed: u64,
    /// The model's phase record ([`Model::enable_profiling`]), reported per batch size.
    pub profile: Option<std::sync::Arc<crate::phi3::Profile>>,
    /// The model's decode kernels and graph setting, as reported in each record.
    pub kernels: String,
    pub graphs: bool,
}

/// Random prompts of `len` tokens below `vocab` (deterministic in `seed`).
fn prompts(b: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..b)
        .map(|_| (0..len).map(|_| rng.u32(0..vocab as u32)).collect())
        .collect()
}

fn greedy(tokens: u32) -> Sampling {
    Sampling {
        temperature: 0.0,
        max_tokens: tokens,
        min_tokens: tokens,
        ..Sampling::default()
    }
}

/// Sends the batch and waits for every completion; fails on the first error or short completion.
/// Returns each completion's token times.
async fn generate(
    engine: &LocalEngine,
    batch: Vec<Vec<u32>>,
    tokens: u32,
) -> std::result::Result<Vec<Vec<Instant>>, EngineError> {
    let done = engine.complete_tokens_timed(batch, &greedy(tokens)).await;
    let done: Vec<(Completion, Vec<Instant>)> =
        done.into_iter().collect::<std::result::Result<_, _>>()?;
    if let Some((c, _)) = done
        .iter()
        .find(|(c, t)| c.completion_tokens != tokens || t.len() != tokens as usize)
    {
        return Err(EngineError::Config(format!(
            "a completion has {} tokens, {tokens} were asked for",
            c.completion_tokens
        )));
    }
    Ok(done.into_iter().map(|(_, t)| t).collect())
}

/// Where one call's time went: until every sequence had its first token (the prompt's prefill
/// and one sampling), and from then to the last token.
fn split(start: Instant, times: &[Vec<Instant>]) -> (f64, f64) {
    let first = times
        .iter()
        .filter_map(|t| t.first())
        .max()
        .copied()
        .unwrap_or(start);
    let last = times
        .iter()
        .filter_map(|t| t.last())
        .max()
        .copied()
        .unwrap_or(first);
    (
        first.duration_since(start).as_secs_f64(),
        last.duration_since(first).as_secs_f64(),
    )
}

/// Runs `plan` on `engine` (whose model has `cfg`'s shape), calling `each` with every batch
/// size's record as it is measured. A short warm-up runs first (kernels load, caches fill), and
/// before each batch size a few unmeasured steps at that size.
pub fn run(
    engine: &LocalEngine,
    cfg: &Config,
    device: &str,
    dtype: DType,
    plan: &Plan,
    mut each: impl FnMut(&Record),
) -> std::result::Result<Vec<Record>, EngineError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EngineError::Config(format!("async runtime: {e}")))?;
    let (p, g) = (plan.prompt_len, plan.gen_len.max(1));
    let vocab = cfg.vocab_size;
    let mut out = Vec::new();
    rt.block_on(async {
        let first = plan.batches.first().copied().unwrap_or(1);
        generate(engine, prompts(first, p.min(32), vocab, 12_345), 2).await?;
        for &b in &plan.batches {
            let batch = prompts(b, p, vocab, plan.seed + b as u64);
            // Three decode steps at this batch size first, unmeasured: what is set up once per
            // batch shape (the GEMV's timing, a CUDA graph's recording and verification) is not
            // part of the figures.
            generate(engine, prompts(b, p.min(32), vocab, 54_321), 4).await?;
            if let Some(p) = &plan.profile {
                p.take();
                p.take_prompt();
            }
            // One call: the prefill figure is the time to every sequence's first token, the
            // decode figure the time from there to the last token (the peer measures the same
            // two as a one-token call and the difference of a full one).
            let t = Instant::now();
            let times = generate(engine, batch, g as u32).await?;
            let gen = t.elapsed().as_secs_f64();
            let (gen1, decode) = split(t, &times);
            let profile = plan.profile.as_ref().map(|p| per_pass(&p.take()));
            let prompt_profile = plan.profile.as_ref().map(|p| per_pass(&p.take_prompt()));
            let steps = if decode > 0.0 { g - 1 } else { 0 };
            let r = Record {
                engine: "phiforge".into(),
                batch: b,
                prompt_len: p,
                gen_len: g,
                prefill_tok_s: round((b * p) as f64 / gen1, 2),
                decode_tok_s: (steps > 0).then(|| round((b * steps) as f64 / decode, 2)),
                ms_per_step: (steps > 0).then(|| round(decode * 1000.0 / steps as f64, 3)),
                prefill_ms: round(gen1 * 1000.0, 3),
                decode_s: round(decode, 4),
                generate_s: round(gen, 4),
                generate1_s: round(gen1, 4),
                e2e_tok_s: round((b * g) as f64 / gen, 2),
                decode_steps: steps,
                layers: cfg.num_hidden_layers,
                device: device.into(),
                dtype: format!("{dtype:?}").to_lowercase(),
                kernels: plan.kernels.clone(),
                graphs: plan.graphs,
                profile_ms_per_pass: profile,
                prompt_profile_ms_per_pass: prompt_profile,
            };
            each(&r);
            out.push(r);
        }
        Ok::<(), EngineError>(())
    })?;
    Ok(out)
}

/// Milliseconds per pass of each phase (passes: how often the last phase ran), and the passes.
fn per_pass(phases: &[(&'static str, f64, u64)]) -> std::collections::BTreeMap<String, f64> {
    let passes = phases
        .iter()
        .find(|p| p.0 == "lm_head")
        .map(|p| p.2)
        .unwrap_or(1)
        .max(1) as f64;
    let mut out: std::collections::BTreeMap<String, f64> = phases
        .iter()
        .map(|(name, s, _)| (name.to_string(), round(s * 1000.0 / passes, 4)))
        .collect();
    let total: f64 = phases.iter().map(|p| p.1).sum();
    out.insert("total".into(), round(total * 1000.0 / passes, 4));
    out.insert("passes".into(), passes);
    out
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The fused decode path against the general one on `model` itself: `b` sequences of unequal
/// lengths are prefilled, then one decode step runs on each path (the second overwrites the
/// first's cache entries) and their logits are compared. The model is left on its own path.
pub fn check_paths(
    model: &mut Model,
    kernels: crate::kernels::Kernels,
    b: usize,
    seed: u64,
) -> Result<crate::kernels::CheckResult> {
    let before = model.kernels();
    // Direct launches: a graph replays exactly what it recorded (it checks that itself).
    let graphs = model.graphs();
    model.set_graphs(false);
    let b = b.clamp(1, model.slots());
    let vocab = model.config().vocab_size;
    // Unequal lengths spread over the cache (the step's new token needs one more position).
    let ctx = model.context().max(3);
    let lens: Vec<usize> = (0..b).map(|i| 1 + (ctx - 3) * (i + 1) / b).collect();
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| prompts(1, n, vocab, seed + i as u64).remove(0))
        .collect();
    let next: Vec<Vec<u32>> = prompts.iter().map(|p| vec![p[0]]).collect();
    let result = (|| {
        model.set_kernels(None)?;
        model.forward(&prompts, &vec![0; b])?;
        let want = model.forward(&next, &lens)?;
        model.set_kernels(Some(kernels))?;
        let got = model.forward(&next, &lens)?;
        let diff = (&got - &want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let err = (diff / scale.max(1e-12)) as f64;
        let dtype = model.dtype();
        // f32: the two paths differ by summation order only. 16-bit: each path rounds in its own
        // places (RoPE, softmax, SiLU) through every layer, a few per cent of the largest logit
        // after 40 layers; a wrong index or position is off by the whole logit.
        let tolerance = if dtype == DType::F32 { 1e-3 } else { 0.15 };
        Ok(crate::kernels::CheckResult {
            op: format!("model decode step, batch {b}, kernels {kernels}"),
            dtype: format!("{dtype:?}").to_lowercase(),
            max_rel_err: err,
            tolerance,
            ok: err <= tolerance,
        })
    })();
    model.set_kernels(before)?;
    model.set_graphs(graphs);
    result
}
