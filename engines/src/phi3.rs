//! The Phi-3 architecture (Phi-4's), for the local engine, written for batched serving.
//!
//! `Config` mirrors Hugging Face's `config.json`; every layer is `new(cfg, vb)` plus `forward`, and
//! `vb.pp(..)` follows the checkpoint's tensor names (`model.layers.N.self_attn.qkv_proj`, ...), so
//! the same code loads any Phi-3-architecture checkpoint. What differs from candle-transformers'
//! `phi3.rs`:
//!
//! - RoPE angles are computed in f32 whatever the weights' dtype (bf16 positions are wrong past
//!   ~256), then applied in the activations' dtype as transformers does;
//! - every sequence of a batch has its own position, so prompts of different lengths batch together
//!   (padded queries are masked);
//! - the KV cache is preallocated (slots × KV heads × context × head size) and written in place,
//!   every sequence at its own position, by one scatter per layer;
//! - grouped-query attention folds each KV head's query heads into one matrix product instead of
//!   copying K and V per query head;
//! - on a GPU the decode step (one new token per sequence) runs the fused kernels of
//!   [`crate::kernels`]: five launches a layer where candle's operations take about seventeen.

use crate::kernels::{self, Heads, Kernels, Step};
use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{linear_no_bias, Embedding, Linear, RmsNorm, VarBuilder};
use serde::Deserialize;

// Training on the same modules: `Model::forward_train`, `Model::from_varmap`, `init_varmap`.
#[path = "phi3_train.rs"]
mod train;
pub use train::{init_varmap, parameters, ParamInit};

/// The model's shape, as in `config.json` (keys the model does not use are ignored). Both
/// layouts of RoPE settings are read: `rope_theta` at the top (Phi-4's own file) and
/// `rope_parameters` (files written by transformers 5).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Long-context RoPE scaling (Phi-3-128k); not used by Phi-4, refused here.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

fn default_act() -> String {
    "silu".into()
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;
    fn try_from(r: RawConfig) -> std::result::Result<Config, String> {
        let params = r.rope_parameters.as_ref();
        let theta = r
            .rope_theta
            .or_else(|| {
                params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .ok_or("config.json has neither `rope_theta` nor `rope_parameters.rope_theta`")?;
        let mut rope_scaling = r.rope_scaling;
        if let Some(kind) = params
            .and_then(|p| p.get("rope_type"))
            .and_then(|v| v.as_str())
        {
            if kind != "default" {
                rope_scaling = params.cloned();
            }
        }
        let partial = r.partial_rotary_factor.or_else(|| {
            params
                .and_then(|p| p.get("partial_rotary_factor"))
                .and_then(|v| v.as_f64())
        });
        // `eos_token_id` may be a list; the first is the end of text.
        let eos = match r.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32),
            Some(serde_json::Value::Array(a)) => {
                a.first().and_then(|v| v.as_u64()).map(|v| v as u32)
            }
            _ => None,
        };
        Ok(Config {
            vocab_size: r.vocab_size,
            hidden_size: r.hidden_size,
            intermediate_size: r.intermediate_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            num_key_value_heads: r.num_key_value_heads,
            rms_norm_eps: r.rms_norm_eps,
            rope_theta: theta,
            max_position_embeddings: r.max_position_embeddings,
            hidden_act: r.hidden_act,
            tie_word_embeddings: r.tie_word_embeddings,
            bos_token_id: r.bos_token_id,
            eos_token_id: eos,
            rope_scaling,
            partial_rotary_factor: partial,
        })
    }
}

impl Config {
    /// Phi-4: 40 layers, hidden 5120, 40 heads, 10 KV heads, RoPE θ 250,000, vocabulary 100,352,
    /// 16K context.
    pub fn phi4() -> Config {
        Config {
            vocab_size: 100_352,
            hidden_size: 5120,
            intermediate_size: 17_920,
            num_hidden_layers: 40,
            num_attention_heads: 40,
            num_key_value_heads: 10,
            rms_norm_eps: 1e-5,
            rope_theta: 250_000.0,
            max_position_embeddings: 16_384,
            hidden_act: "silu".into(),
            tie_word_embeddings: false,
            bos_token_id: Some(100_257),
            eos_token_id: Some(100_265),
            rope_scaling: None,
            partial_rotary_factor: None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Refuses shapes this implementation does not compute.
    pub fn check(&self) -> Result<()> {
        if self.hidden_act != "silu" {
            candle_core::bail!(
                "hidden_act `{}` is not supported (Phi-3/Phi-4 use silu)",
                self.hidden_act
            )
        }
        if self.rope_scaling.is_some() {
            candle_core::bail!("rope_scaling (long-context Phi-3) is not supported; Phi-4 has none")
        }
        if self.partial_rotary_factor.is_some_and(|f| f != 1.0) {
            candle_core::bail!("partial_rotary_factor is not supported")
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            candle_core::bail!("heads must divide the hidden size, and KV heads the heads")
        }
        Ok(())
    }
}

/// A projection: dense weights, or GGUF-quantized ones for CPU use.
enum Proj {
    Dense(Linear),
    Quant(QMatMul),
}

/// `x · wᵀ` for dense weights `w` (out × in). On the CPU a product of 2 to 64 rows (decode steps,
/// small prompt chunks) is computed as `(w · xᵀ)ᵀ`: the matrix-product kernel then streams the
/// weights as they lie instead of repacking their transpose at every call, which made such
/// products 2 to 4 times slower (docs/performance.md). One row, many rows and GPUs go as they are.
fn dense_forward(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let w = l.weight();
    let k = x.dim(D::Minus1)?;
    let rows = x.elem_count() / k.max(1);
    if !w.device().is_cpu() || l.bias().is_some() || !(2..=64).contains(&rows) {
        return l.forward(x);
    }
    let out = w.matmul(&x.reshape((rows, k))?.t()?)?.t()?.contiguous()?;
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = w.dim(0)?;
    }
    out.reshape(shape)
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Proj::Dense(l) => dense_forward(l, x),
            Proj::Quant(q) => q.forward(x),
        }
    }
}

impl Proj {
    /// The dense weights (out × in), if not quantized.
    fn weight(&self) -> Option<&Tensor> {
        match self {
            Proj::Dense(l) => Some(l.weight()),
            Proj::Quant(_) => None,
        }
    }
}

fn dense(i: usize, o: usize, vb: VarBuilder) -> Result<Proj> {
    Ok(Proj::Dense(linear_no_bias(i, o, vb)?))
}

/// Views of consecutive row blocks of a dense projection's weights (no copy): the projections
/// a fused checkpoint tensor holds. `None` for quantized weights.
fn split_rows(p: &Proj, sizes: &[usize]) -> Result<Option<Vec<Linear>>> {
    let Proj::Dense(l) = p else {
        return Ok(None);
    };
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &n in sizes {
        out.push(Linear::new(l.weight().narrow(0, start, n)?, None));
        start += n;
    }
    Ok(Some(out))
}

/// RoPE tables: angles computed in f32 (bf16 angles are wrong past ~256 positions); `cos`/`sin`
/// of shape (max positions, head size / 2).
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &Config, dev: &Device) -> Result<Rope> {
        let dim = cfg.head_dim();
        let inv: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| (1.0 / cfg.rope_theta.powf(i as f64 / dim as f64)) as f32)
            .collect();
        let n = cfg.max_position_embeddings;
        let inv = Tensor::from_vec(inv, (1, dim / 2), dev)?;
        let t = Tensor::arange(0u32, n as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((n, 1))?;
        let freqs = t.matmul(&inv)?;
        Ok(Rope {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    /// `cos` and `sin` at `positions` (b × l, row-major), shaped (b, l, head size / 2) in `dtype`:
    /// as in transformers, the f32 tables are cast to the activations' dtype for the rotation.
    fn at(&self, positions: &Tensor, b: usize, l: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let cos = self.cos.index_select(positions, 0)?.reshape((b, l, ()))?;
        let sin = self.sin.index_select(positions, 0)?.reshape((b, l, ()))?;
        Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
    }
}

/// Preallocated keys and values of one layer: (slots, KV heads, context, head size).
#[derive(Debug, Clone)]
struct KvCache {
    k: Tensor,
    v: Tensor,
}

struct Attention {
    qkv_proj: Proj,
    /// The queries', keys' and values' rows of `qkv_proj`, used apart when several rows go
    /// through: their outputs are then contiguous, where slices of the fused output are strided,
    /// and every strided operation uploads its layout, which stalls the GPU's queue.
    split: Option<Vec<Linear>>,
    o_proj: Proj,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let hd = cfg.head_dim();
        let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let qkv_proj = dense(cfg.hidden_size, (h + 2 * kvh) * hd, vb.pp("qkv_proj"))?;
        Ok(Attention {
            split: split_rows(&qkv_proj, &[h * hd, kvh * hd, kvh * hd])?,
            qkv_proj,
            o_proj: dense(
                cfg.num_attention_heads * hd,
                cfg.hidden_size,
                vb.pp("o_proj"),
            )?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
        })
    }

    /// `x` (1, T, hidden): the new tokens of every group of the pass, packed (each group's rows
    /// padded to its longest); RoPE's `cos` and `sin` (1, T, head size / 2) at their positions.
    /// The projections run on all T rows at once, attention group by group.
    fn forward(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        groups: &[Batch],
        cache: &KvCache,
        clock: &mut Clock,
    ) -> Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let (cos, sin) = rope;
        let (q, k, v) = match (&self.split, t > 1) {
            (Some(split), true) => {
                let q = dense_forward(&split[0], x)?.reshape((1, t, h, hd))?;
                let k = dense_forward(&split[1], x)?.reshape((1, t, kvh, hd))?;
                let v = dense_forward(&split[2], x)?.reshape((1, t, kvh, hd))?;
                clock.mark("qkv_proj")?;
                let q = candle_nn::rotary_emb::rope_thd(&q, cos, sin)?;
                let k = candle_nn::rotary_emb::rope_thd(&k, cos, sin)?;
                (q, k, v)
            }
            _ => {
                // One row (its slices are contiguous), or quantized weights.
                let qkv = self.qkv_proj.forward(x)?.reshape((1, t, h + 2 * kvh, hd))?;
                clock.mark("qkv_proj")?;
                // Queries and keys are rotated together, in one kernel.
                let qk = qkv.narrow(2, 0, h + kvh)?.contiguous()?;
                let qk = candle_nn::rotary_emb::rope_thd(&qk, cos, sin)?;
                (
                    qk.narrow(2, 0, h)?,
                    qk.narrow(2, h, kvh)?,
                    qkv.narrow(2, h + kvh, kvh)?,
                )
            }
        };
        clock.mark("rope")?;
        let mut outs = Vec::with_capacity(groups.len());
        for g in groups {
            let rows = |x: &Tensor, heads: usize| -> Result<Tensor> {
                if groups.len() == 1 {
                    x.reshape((g.b, g.l, heads, hd))
                } else {
                    x.narrow(1, g.row, g.b * g.l)?
                        .reshape((g.b, g.l, heads, hd))
                }
            };
            let out = self.attend(
                &rows(&q, h)?,
                &rows(&k, kvh)?,
                &rows(&v, kvh)?,
                g,
                cache,
                clock,
            )?;
            outs.push(out.reshape((1, g.b * g.l, h * hd))?);
        }
        let out = match outs.len() {
            1 => outs.remove(0),
            _ => Tensor::cat(&outs, 1)?,
        };
        let out = self.o_proj.forward(&out)?;
        clock.mark("o_proj")?;
        Ok(out)
    }

    /// Attention of one group: queries, keys and values (b, l, heads, head size) of the sequences
    /// in cache slots `g.first..g.first + b`; returns (b, l, heads × head size).
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: &Batch,
        cache: &KvCache,
        clock: &mut Clock,
    ) -> Result<Tensor> {
        let (b, l) = (g.b, g.l);
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let rep = h / kvh;
        // (b, kvh, l, hd): no copy when l is 1 and the slices are contiguous.
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        // Every slot's new keys and values go to its own positions in one scatter each, in place.
        let keys = cache.k.narrow(0, g.first, b)?;
        let values = cache.v.narrow(0, g.first, b)?;
        keys.scatter_set(&g.write_at, &k, 2)?;
        values.scatter_set(&g.write_at, &v, 2)?;
        clock.mark("kv_write")?;
        let t = g.span;
        // Views of the cache, not copies: the products read it with its strides.
        let keys = keys.narrow(2, 0, t)?;
        let values = values.narrow(2, 0, t)?;
        // Each KV head serves `rep` query heads: fold them into the rows of one product. The
        // scale is applied in the copy that makes the queries contiguous.
        let scale = 1.0 / (hd as f64).sqrt();
        let q = (q * scale)?; // (b, l, h, hd), contiguous
        if g.query_blocks && l >= 2 * QUERY_BLOCK {
            if let Some(mask) = &g.mask {
                return self.attend_blocks(&q, &keys, &values, mask, g, clock);
            }
        }
        let q = if l == 1 {
            q.reshape((b, kvh, rep, hd))?
        } else {
            q.reshape((b, l, kvh, rep, hd))?
                .permute((0, 2, 3, 1, 4))?
                .contiguous()?
                .reshape((b, kvh, rep * l, hd))?
        };
        let scores = q.matmul(&keys.transpose(2, 3)?)?;
        clock.mark("attn_qk")?;
        let scores = match &g.mask {
            Some(mask) => scores.reshape((b, kvh, rep, l, t))?.broadcast_add(mask)?,
            None => scores,
        };
        // Softmax accumulates in f32 whatever the dtype.
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, kvh, rep * l, t))?;
        clock.mark("attn_softmax")?;
        let out = probs.matmul(&values)?; // (b, kvh, rep*l, hd)
        clock.mark("attn_pv")?;
        out.reshape((b, h, l, hd))?
            .transpose(1, 2)?
            .reshape((b, l, h * hd))
    }

    /// [`Attention::attend`] for a long chunk of prompt (`q` scaled, (b, l, heads, head size);
    /// `keys` and `values` the cache's views up to the group's span): the queries go a block of
    /// [`QUERY_BLOCK`] positions at a time, each against the cached positions it may see and no
    /// further, so the causal mask's upper triangle, half the products and the softmax of a
    /// prompt read in one chunk, is never computed, and the scores held at once are a block's.
    fn attend_blocks(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: &Tensor,
        g: &Batch,
        clock: &mut Clock,
    ) -> Result<Tensor> {
        let (b, l, t) = (g.b, g.l, g.span);
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let rep = h / kvh;
        // The longest sequence starts at t - l; a block's queries see no position past its end.
        let first = t - l;
        let q = q.reshape((b, l, kvh, rep, hd))?.permute((0, 2, 3, 1, 4))?;
        let mut outs = Vec::with_capacity(l.div_ceil(QUERY_BLOCK));
        for j in (0..l).step_by(QUERY_BLOCK) {
            let n = QUERY_BLOCK.min(l - j);
            let seen = (first + j + n).min(t);
            let qj = q
                .narrow(3, j, n)?
                .contiguous()?
                .reshape((b, kvh, rep * n, hd))?;
            let scores = qj.matmul(&keys.narrow(2, 0, seen)?.transpose(2, 3)?)?;
            clock.mark("attn_qk")?;
            let scores = scores
                .reshape((b, kvh, rep, n, seen))?
                .broadcast_add(&mask.narrow(3, j, n)?.narrow(4, 0, seen)?)?;
            let probs =
                candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, kvh, rep * n, seen))?;
            clock.mark("attn_softmax")?;
            let out = probs.matmul(&values.narrow(2, 0, seen)?)?;
            outs.push(out.reshape((b, kvh, rep, n, hd))?);
            clock.mark("attn_pv")?;
        }
        Tensor::cat(&outs, 3)? // (b, kvh, rep, l, hd)
            .reshape((b, h, l, hd))?
            .transpose(1, 2)?
            .reshape((b, l, h * hd))
    }
}

/// Query positions per block when a long prompt chunk attends ([`Attention::attend_blocks`]);
/// chunks of fewer than two blocks attend at once.
const QUERY_BLOCK: usize = 256;

/// Whether long prompt chunks attend a block of queries at a time: on the CPU, unless
/// `PHIFORGE_QUERY_BLOCKS=off` (to measure what it brings). GPUs attend at once (unmeasured
/// there).
fn query_blocks(device: &Device) -> bool {
    device.is_cpu() && std::env::var("PHIFORGE_QUERY_BLOCKS").map_or(true, |v| v != "off")
}

/// Copies `src` (1, KV heads, l, head size) into `cache` at slot `slot`, positions `start..`, in
/// place (a slot's block is contiguous, so every head's rows go in one strided copy).
fn write_at(cache: &Tensor, src: &Tensor, slot: usize, start: usize) -> Result<()> {
    cache.narrow(0, slot, 1)?.slice_set(src, 2, start)
}

struct Mlp {
    gate_up_proj: Proj,
    /// The gate's and the up projection's rows of `gate_up_proj`, used apart when several rows
    /// go through (see `Attention::split`).
    split: Option<Vec<Linear>>,
    down_proj: Proj,
    inter: usize,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let gate_up_proj = dense(
            cfg.hidden_size,
            2 * cfg.intermediate_size,
            vb.pp("gate_up_proj"),
        )?;
        Ok(Mlp {
            split: split_rows(
                &gate_up_proj,
                &[cfg.intermediate_size, cfg.intermediate_size],
            )?,
            gate_up_proj,
            down_proj: dense(cfg.intermediate_size, cfg.hidden_size, vb.pp("down_proj"))?,
            inter: cfg.intermediate_size,
        })
    }

    fn forward(&self, x: &Tensor, clock: &mut Clock) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (gate, up) = match (&self.split, b * l > 1) {
            (Some(split), true) => (dense_forward(&split[0], x)?, dense_forward(&split[1], x)?),
            _ => {
                let gu = self.gate_up_proj.forward(x)?;
                (
                    gu.narrow(D::Minus1, 0, self.inter)?,
                    gu.narrow(D::Minus1, self.inter, self.inter)?,
                )
            }
        };
        clock.mark("gate_up_proj")?;
        let act = (up * candle_nn::ops::silu(&gate)?)?;
        clock.mark("silu_mul")?;
        let out = self.down_proj.forward(&act)?;
        clock.mark("down_proj")?;
        Ok(out)
    }
}

struct Layer {
    attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

/// Where a forward pass spends its time, per phase (projections, attention, ...), for finding
/// what to speed up: decode passes (one new token per sequence) and passes that carry prompt
/// tokens, apart. Measuring synchronizes the device after every phase, which slows the pass
/// and removes the overlap of host and device: use it to compare phases, not for throughput.
#[derive(Debug, Default)]
pub struct Profile {
    phases: std::sync::Mutex<Vec<(&'static str, f64, u64)>>,
    /// The same, for passes with prompt tokens.
    prompt_phases: std::sync::Mutex<Vec<(&'static str, f64, u64)>>,
    /// When the last pass ended: the time until the next one is the scheduler's (sampling,
    /// bookkeeping).
    last_end: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Profile {
    /// Adds `seconds` to phase `name` (of a pass with prompt tokens if `prompt`).
    fn add(&self, name: &'static str, seconds: f64, prompt: bool) {
        let phases = if prompt {
            &self.prompt_phases
        } else {
            &self.phases
        };
        if let Ok(mut p) = phases.lock() {
            match p.iter_mut().find(|e| e.0 == name) {
                Some(e) => {
                    e.1 += seconds;
                    e.2 += 1;
                }
                None => p.push((name, seconds, 1)),
            }
        }
    }

    fn pass_starts(&self, now: std::time::Instant) {
        let last = self.last_end.lock().ok().and_then(|mut l| l.take());
        if let Some(t) = last {
            self.add("between_passes", (now - t).as_secs_f64(), false);
        }
    }

    /// `now`: the end of a timed pass; `None`: an untimed pass ran (the gap is not the scheduler's).
    fn pass_ends(&self, now: Option<std::time::Instant>) {
        if let Ok(mut l) = self.last_end.lock() {
            *l = now;
        }
    }

    /// The prompt passes' phases so far, as [`Profile::take`] gives the decode passes'.
    pub fn take_prompt(&self) -> Vec<(&'static str, f64, u64)> {
        self.prompt_phases
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// The decode passes' phases so far, in first-seen order: (name, seconds, times), and starts
    /// over.
    pub fn take(&self) -> Vec<(&'static str, f64, u64)> {
        if let Ok(mut l) = self.last_end.lock() {
            *l = None;
        }
        self.phases
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// Marks the end of each phase of a pass when profiling (otherwise does nothing).
struct Clock<'a> {
    profile: Option<(&'a Profile, &'a Device)>,
    last: std::time::Instant,
    /// The pass carries prompt tokens.
    prompt: bool,
}

impl Clock<'_> {
    fn mark(&mut self, name: &'static str) -> Result<()> {
        if let Some((profile, device)) = self.profile {
            device.synchronize()?;
            let now = std::time::Instant::now();
            profile.add(name, (now - self.last).as_secs_f64(), self.prompt);
            self.last = now;
        }
        Ok(())
    }
}

/// One group of a forward pass: `b` sequences in consecutive cache slots, `l` new tokens each
/// (shorter ones padded), shared by every layer.
pub(crate) struct Batch {
    /// The group's first row in the pass's packed tokens.
    row: usize,
    b: usize,
    l: usize,
    /// The first cache slot of the group (its sequences are in slots `first..first + b`).
    first: usize,
    /// Cache position of every new key and value: (b, KV heads, l, head size) u32, for a scatter.
    write_at: Tensor,
    /// Cache positions attended to: max(starts) + l.
    span: usize,
    /// (b, 1, 1, l, span) in the model's dtype: 0 where attended, -inf elsewhere; none when every
    /// query attends to every position (one new token each, all sequences equally long).
    mask: Option<Tensor>,
    /// Long chunks attend a block of queries at a time ([`Attention::attend_blocks`]).
    query_blocks: bool,
}

/// Sequences fed together in one forward pass: slots `first..first + tokens.len()`, where
/// `tokens[s]` (at least one) continue a sequence that already holds `starts[s]` positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub first: usize,
    pub tokens: Vec<Vec<u32>>,
    pub starts: Vec<usize>,
}

/// A Phi-3-architecture model with a KV cache of `slots` sequences.
pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Proj,
    rope: Rope,
    caches: Vec<KvCache>,
    cfg: Config,
    device: Device,
    profile: Option<std::sync::Arc<Profile>>,
    /// The decode step's fused path and its kernels (see [`Model::set_kernels`]).
    fused: Option<Kernels>,
    /// See [`query_blocks`].
    query_blocks: bool,
    /// CUDA graphs of the fused decode step, by batch shape (see [`Model::set_graphs`]).
    #[cfg(feature = "cuda")]
    graphs: std::sync::Mutex<crate::graph::Graphs>,
}

impl Model {
    /// Loads the weights from `vb` and allocates a cache of `slots` × `context` positions.
    pub fn new(cfg: &Config, vb: VarBuilder, slots: usize, context: usize) -> Result<Model> {
        cfg.check()?;
        let context = context.min(cfg.max_position_embeddings);
        let vm = vb.pp("model");
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vm.pp("embed_tokens"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let vl = vm.pp("layers").pp(i);
            layers.push(Layer {
                attn: Attention::new(cfg, vl.pp("self_attn"))?,
                mlp: Mlp::new(cfg, vl.pp("mlp"))?,
                input_layernorm: candle_nn::rms_norm(
                    cfg.hidden_size,
                    cfg.rms_norm_eps,
                    vl.pp("input_layernorm"),
                )?,
                post_attention_layernorm: candle_nn::rms_norm(
                    cfg.hidden_size,
                    cfg.rms_norm_eps,
                    vl.pp("post_attention_layernorm"),
                )?,
            });
        }
        let norm = candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vm.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Proj::Dense(Linear::new(embed_tokens.embeddings().clone(), None))
        } else {
            dense(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        };
        Model::assemble(
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            vb.dtype(),
            vb.device(),
            slots,
            context,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: &Config,
        embed_tokens: Embedding,
        layers: Vec<Layer>,
        norm: RmsNorm,
        lm_head: Proj,
        dtype: DType,
        device: &Device,
        slots: usize,
        context: usize,
    ) -> Result<Model> {
        let context = context.min(cfg.max_position_embeddings);
        let shape = (slots, cfg.num_key_value_heads, context, cfg.head_dim());
        // No slots (a model for training): no cache at all.
        let layers_cached = if slots == 0 { 0 } else { cfg.num_hidden_layers };
        let caches = (0..layers_cached)
            .map(|_| {
                Ok(KvCache {
                    k: Tensor::zeros(shape, dtype, device)?,
                    v: Tensor::zeros(shape, dtype, device)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Model {
            rope: Rope::new(cfg, device)?,
            embed_tokens,
            layers,
            norm,
            lm_head,
            caches,
            cfg: cfg.clone(),
            device: device.clone(),
            profile: None,
            fused: None,
            query_blocks: query_blocks(device),
            #[cfg(feature = "cuda")]
            graphs: std::sync::Mutex::new(crate::graph::Graphs::new(device.is_cuda())),
        }
        .with_default_kernels())
    }

    fn heads(&self) -> Heads {
        Heads {
            h: self.cfg.num_attention_heads,
            kvh: self.cfg.num_key_value_heads,
            hd: self.cfg.head_dim(),
            ctx: self.context(),
        }
    }

    /// Whether the fused decode path can run this model: dense weights, and a shape the kernels
    /// serve.
    pub fn supports_kernels(&self) -> bool {
        let dense = self.lm_head.weight().is_some()
            && self.layers.iter().all(|l| {
                [
                    &l.attn.qkv_proj,
                    &l.attn.o_proj,
                    &l.mlp.gate_up_proj,
                    &l.mlp.down_proj,
                ]
                .iter()
                .all(|p| p.weight().is_some())
            });
        dense
            && kernels::supported(
                self.heads(),
                self.cfg.hidden_size,
                self.cfg.intermediate_size,
                self.embed_tokens.embeddings().dtype(),
            )
    }

    /// On a GPU the fused decode step with every kernel, once they pass a quick check against
    /// candle's operations on this GPU (at small widths; `PHIFORGE_DECODE_KERNELS` = `none`, or a
    /// list as `bench-engine --kernels` takes, overrides the set); on the CPU the general step.
    fn with_default_kernels(mut self) -> Model {
        if !self.device.is_cuda() || self.caches.is_empty() || !self.supports_kernels() {
            return self;
        }
        let wanted = match std::env::var("PHIFORGE_DECODE_KERNELS") {
            Ok(spec) => match Kernels::parse(&spec) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!("PHIFORGE_DECODE_KERNELS: {e}; using all");
                    Kernels::ALL
                }
            },
            Err(_) => Kernels::ALL,
        };
        if !wanted.any() {
            return self;
        }
        let heads = Heads {
            ctx: 0,
            ..self.heads()
        };
        let dtype = self.dtype();
        match kernels::check(&self.device, heads, 256, 512, dtype) {
            Ok(results) => {
                let bad = kernels::failures(&results);
                if bad.is_empty() {
                    self.fused = Some(wanted);
                } else {
                    tracing::warn!(
                        "fused decode kernels off, out of tolerance on this GPU: {}",
                        bad.join("; ")
                    );
                }
            }
            Err(e) => tracing::warn!("fused decode kernels off, their check failed: {e}"),
        }
        self
    }

    /// Chooses the decode step: `None`, the general forward pass (candle's operations, as for
    /// prompts); `Some(k)`, the fused path, with the kernels `k` names and candle operations in
    /// place of the others (on the CPU there are no kernels: the fused path then runs candle
    /// operations only, which is how the tests check it there). Fails for quantized weights or
    /// a shape the kernels do not serve.
    pub fn set_kernels(&mut self, kernels: Option<Kernels>) -> Result<()> {
        if kernels.is_some() && !self.supports_kernels() {
            candle_core::bail!(
                "the fused decode path needs dense weights, a head size of 64, 96 or 128 and at \
                 most 8 query heads per KV head"
            )
        }
        self.fused = kernels;
        // Recorded steps launch the kernels they were recorded with.
        #[cfg(feature = "cuda")]
        self.graphs_mut().clear();
        Ok(())
    }

    /// Whether the fused decode step is recorded as a CUDA graph per batch shape (up to
    /// `graph::MAX_BATCH` sequences) and replayed (on by default on a GPU). No effect
    /// on the CPU or off the fused path.
    pub fn set_graphs(&mut self, on: bool) {
        #[cfg(feature = "cuda")]
        {
            let cuda = self.device.is_cuda();
            self.graphs_mut().set_enabled(on && cuda);
        }
        #[cfg(not(feature = "cuda"))]
        let _ = on;
    }

    /// Whether decode steps may be CUDA graphs.
    pub fn graphs(&self) -> bool {
        #[cfg(feature = "cuda")]
        return self.graphs.lock().is_ok_and(|g| g.enabled());
        #[cfg(not(feature = "cuda"))]
        false
    }

    #[cfg(feature = "cuda")]
    fn graphs_mut(&mut self) -> &mut crate::graph::Graphs {
        match self.graphs.get_mut() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The decode step's kernels (`None`: the general forward pass).
    pub fn kernels(&self) -> Option<Kernels> {
        self.fused
    }

    /// Loads a GGUF file of the `phi3` architecture (llama.cpp's tensor names), keeping quantized
    /// weights quantized (for CPU use); norms and embeddings are dequantized to f32.
    pub fn from_gguf(
        path: &std::path::Path,
        device: &Device,
        slots: usize,
        context: usize,
    ) -> Result<Model> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        let ct = gguf_file::Content::read(&mut file).map_err(|e| e.with_path(path))?;
        let md = |k: &str| {
            ct.metadata.get(k).ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: no `{k}` in the metadata", path.display()))
            })
        };
        let arch = md("general.architecture")?.to_string()?.clone();
        if arch != "phi3" {
            candle_core::bail!("{}: architecture `{arch}`, expected phi3", path.display())
        }
        let embd = ct.tensor(&mut file, "token_embd.weight", device)?;
        let (vocab, hidden) = embd.shape().dims2()?;
        let cfg = Config {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: md("phi3.feed_forward_length")?.to_u32()? as usize,
            num_hidden_layers: md("phi3.block_count")?.to_u32()? as usize,
            num_attention_heads: md("phi3.attention.head_count")?.to_u32()? as usize,
            num_key_value_heads: md("phi3.attention.head_count_kv")?.to_u32()? as usize,
            rms_norm_eps: md("phi3.attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_theta: ct
                .metadata
                .get("phi3.rope.freq_base")
                .map(|v| v.to_f32())
                .transpose()?
                .unwrap_or(10_000.0) as f64,
            max_position_embeddings: md("phi3.context_length")?.to_u32()? as usize,
            hidden_act: "silu".into(),
            tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: None,
            partial_rotary_factor: None,
        };
        cfg.check()?;
        let mut get = |name: &str| ct.tensor(&mut file, name, device);
        let quant = |t: candle_core::quantized::QTensor| -> Result<Proj> {
            Ok(Proj::Quant(QMatMul::from_qtensor(t)?))
        };
        let norm = |t: candle_core::quantized::QTensor| -> Result<RmsNorm> {
            Ok(RmsNorm::new(t.dequantize(device)?, cfg.rms_norm_eps))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn: Attention {
                    qkv_proj: quant(get(&format!("{p}.attn_qkv.weight"))?)?,
                    split: None,
                    o_proj: quant(get(&format!("{p}.attn_output.weight"))?)?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim(),
                },
                mlp: Mlp {
                    gate_up_proj: quant(get(&format!("{p}.ffn_up.weight"))?)?,
                    split: None,
                    down_proj: quant(get(&format!("{p}.ffn_down.weight"))?)?,
                    inter: cfg.intermediate_size,
                },
                input_layernorm: norm(get(&format!("{p}.attn_norm.weight"))?)?,
                post_attention_layernorm: norm(get(&format!("{p}.ffn_norm.weight"))?)?,
            });
        }
        let output_norm = norm(get("output_norm.weight")?)?;
        let embeddings = embd.dequantize(device)?;
        let lm_head = if cfg.tie_word_embeddings {
            Proj::Dense(Linear::new(embeddings.clone(), None))
        } else {
            quant(get("output.weight")?)?
        };
        let embed_tokens = Embedding::new(embeddings, hidden);
        Model::assemble(
            &cfg,
            embed_tokens,
            layers,
            output_norm,
            lm_head,
            DType::F32,
            device,
            slots,
            context,
        )
    }

    /// Loads a Hugging Face model folder: `config.json` and its `*.safetensors` shards.
    pub fn load(
        dir: &std::path::Path,
        dtype: DType,
        device: &Device,
        slots: usize,
        context: usize,
    ) -> Result<Model> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", config_path.display())))?;
        let cfg: Config = serde_json::from_str(&text)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", config_path.display())))?;
        let mut shards: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        shards.sort();
        if shards.is_empty() {
            candle_core::bail!("{}: no .safetensors weights", dir.display())
        }
        // SAFETY: the weight files are mapped read-only and not modified while the model lives.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&shards, dtype, device)? };
        Model::new(&cfg, vb, slots, context)
    }

    /// Sequences the cache holds at once.
    pub fn slots(&self) -> usize {
        self.caches.first().map(|c| c.k.dims()[0]).unwrap_or(0)
    }

    /// Moves the first `len` cached positions of slot `from` to slot `to` (to keep active
    /// sequences in slots `0..n`).
    pub fn move_slot(&self, from: usize, to: usize, len: usize) -> Result<()> {
        if len == 0 || from == to {
            return Ok(());
        }
        let kv = self.read_kv(from, 0, len)?;
        self.write_kv(to, 0, &kv)
    }

    /// A copy of the keys and values of slot `slot`'s positions `start..start + len`: two
    /// tensors (1, KV heads, len, head size) per layer, keys first.
    pub fn read_kv(&self, slot: usize, start: usize, len: usize) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(2 * self.caches.len());
        for c in &self.caches {
            for t in [&c.k, &c.v] {
                out.push(
                    t.narrow(0, slot, 1)?
                        .narrow(2, start, len)?
                        .force_contiguous()?,
                );
            }
        }
        Ok(out)
    }

    /// Writes what [`Model::read_kv`] read into slot `slot` from position `start` on.
    pub fn write_kv(&self, slot: usize, start: usize, kv: &[Tensor]) -> Result<()> {
        if kv.len() != 2 * self.caches.len() {
            candle_core::bail!(
                "keys and values of {} layers for {}",
                kv.len() / 2,
                self.caches.len()
            )
        }
        for (c, kv) in self.caches.iter().zip(kv.chunks(2)) {
            write_at(&c.k, &kv[0], slot, start)?;
            write_at(&c.v, &kv[1], slot, start)?;
        }
        Ok(())
    }

    /// Starts timing every phase of every pass (see [`Profile`]); returns the shared record.
    pub fn enable_profiling(&mut self) -> std::sync::Arc<Profile> {
        self.profile
            .get_or_insert_with(|| std::sync::Arc::new(Profile::default()))
            .clone()
    }

    /// The weights' dtype (the activations' and the cache's too).
    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Cache positions available per slot.
    pub fn context(&self) -> usize {
        self.caches.first().map(|c| c.k.dims()[2]).unwrap_or(0)
    }

    /// Feeds new tokens to slots `0..b`: `tokens[s]` (at least one) continue the sequence in slot
    /// `s`, which already holds `starts[s]` positions. Returns the logits (b, vocab) after each
    /// slot's last new token, in f32.
    pub fn forward(&self, tokens: &[Vec<u32>], starts: &[usize]) -> Result<Tensor> {
        self.forward_at(0, tokens, starts)
    }

    /// As [`Model::forward`], for the sequences in slots `first..first + b`.
    pub fn forward_at(
        &self,
        first: usize,
        tokens: &[Vec<u32>],
        starts: &[usize],
    ) -> Result<Tensor> {
        self.forward_groups(&[Group {
            first,
            tokens: tokens.to_vec(),
            starts: starts.to_vec(),
        }])
    }

    /// Feeds several groups of sequences in one pass (say the sequences decoding, one token
    /// each, and a chunk of a new prompt): their tokens share the projections, each group is
    /// padded only to its own longest. Returns the logits (sequences, vocab) after each
    /// sequence's last new token, group after group. Groups must not share slots.
    pub fn forward_groups(&self, groups: &[Group]) -> Result<Tensor> {
        let mut used = vec![false; self.slots()];
        for g in groups {
            let b = g.tokens.len();
            if b == 0 || b != g.starts.len() || g.first + b > self.slots() {
                candle_core::bail!("forward needs 1..=slots sequences, each with a start")
            }
            if g.tokens.iter().any(Vec::is_empty) {
                candle_core::bail!("every sequence needs at least one new token")
            }
            let l = g.tokens.iter().map(Vec::len).max().unwrap_or(0);
            let span = g.starts.iter().max().copied().unwrap_or(0) + l;
            if span > self.context() {
                candle_core::bail!(
                    "sequence longer than the cache ({span} > {})",
                    self.context()
                )
            }
            for u in &mut used[g.first..g.first + b] {
                if std::mem::replace(u, true) {
                    candle_core::bail!("two groups of one pass share a cache slot")
                }
            }
        }
        let decode = match groups {
            [g] if g.tokens.iter().all(|t| t.len() == 1) => Some(g),
            _ => None,
        };
        if groups.is_empty() {
            candle_core::bail!("forward needs at least one group")
        }
        // Decode passes and passes with prompt tokens are timed apart (the latter would swamp
        // the former's averages); only decode passes count the time between passes.
        let profile = self.profile.as_deref();
        let mut clock = Clock {
            profile: profile.map(|p| (p, &self.device)),
            last: std::time::Instant::now(),
            prompt: decode.is_none(),
        };
        if let Some(p) = profile {
            self.device.synchronize()?;
            clock.last = std::time::Instant::now();
            if decode.is_some() {
                p.pass_starts(clock.last);
            }
        }
        let logits = match (self.fused, decode) {
            (Some(k), Some(g)) => {
                self.decode_fused(k, g.first, &g.tokens, &g.starts, &mut clock)?
            }
            _ => self.forward_general(groups, &mut clock)?,
        };
        if let Some(p) = &self.profile {
            p.pass_ends(decode.is_some().then_some(clock.last));
        }
        Ok(logits)
    }

    /// The decode step on the fused path: one new token per sequence; see [`crate::kernels`].
    /// A CUDA graph of the step where there is one (not while profiling: the phases are timed
    /// one by one).
    fn decode_fused(
        &self,
        k: Kernels,
        first: usize,
        tokens: &[Vec<u32>],
        starts: &[usize],
        clock: &mut Clock,
    ) -> Result<Tensor> {
        let dev = &self.device;
        let pos: Vec<u32> = starts.iter().map(|&s| s as u32).collect();
        let ids: Vec<u32> = tokens.iter().map(|t| t[0]).collect();
        #[cfg(feature = "cuda")]
        if clock.profile.is_none() {
            let mut graphs = match self.graphs.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let step = |ids: &Tensor, positions: &Tensor| {
                let mut quiet = Clock {
                    profile: None,
                    last: std::time::Instant::now(),
                    prompt: false,
                };
                self.decode_step(k, first, ids, positions, &pos, &mut quiet)
            };
            if let Some(logits) = graphs.run(dev, first, &ids, &pos, step)? {
                return Ok(logits);
            }
        }
        let positions = Tensor::new(pos.as_slice(), dev)?;
        let ids = Tensor::new(ids.as_slice(), dev)?;
        self.decode_step(k, first, &ids, &positions, &pos, clock)
    }

    /// One fused decode step on tensors already on the device: token ids and positions (u32,
    /// one per sequence; `pos` holds the positions on the host too).
    fn decode_step(
        &self,
        k: Kernels,
        first: usize,
        ids: &Tensor,
        positions: &Tensor,
        pos: &[u32],
        clock: &mut Clock,
    ) -> Result<Tensor> {
        let step = Step {
            first,
            positions,
            pos,
        };
        let mut x = kernels::embed(ids, self.embed_tokens.embeddings())?;
        clock.mark("inputs_embed")?;
        let heads = self.heads();
        let scale = 1.0 / (heads.hd as f64).sqrt();
        fn weight(p: &Proj) -> Result<&Tensor> {
            p.weight()
                .ok_or_else(|| candle_core::Error::Msg("fused decode: quantized weights".into()))
        }
        let Some(first_layer) = self.layers.first() else {
            candle_core::bail!("a model without layers")
        };
        let norm0 = &first_layer.input_layernorm;
        let mut h = candle_nn::ops::rms_norm(&x, norm0.weight(), norm0.eps() as f32)?;
        clock.mark("norms_residuals")?;
        for (i, (layer, cache)) in self.layers.iter().zip(&self.caches).enumerate() {
            let (attn, mlp) = (&layer.attn, &layer.mlp);
            let (kc, vc) = (&cache.k, &cache.v);
            let (cos, sin) = (&self.rope.cos, &self.rope.sin);
            let wqkv = weight(&attn.qkv_proj)?;
            let q = kernels::linear_rope_cache(k, &h, wqkv, &step, cos, sin, kc, vc, heads, scale)?;
            clock.mark("qkv_proj_rope")?;
            let a = kernels::attention(k, &q, &step, kc, vc, heads)?;
            clock.mark("attention")?;
            let o = kernels::linear(k, &a, weight(&attn.o_proj)?)?;
            clock.mark("o_proj")?;
            let post = &layer.post_attention_layernorm;
            let (x1, h1) = kernels::add_rms_norm(k, &x, &o, post.weight(), post.eps())?;
            clock.mark("norms_residuals")?;
            let act = kernels::linear_silu(k, &h1, weight(&mlp.gate_up_proj)?)?;
            clock.mark("gate_up_proj_silu")?;
            let d = kernels::linear(k, &act, weight(&mlp.down_proj)?)?;
            clock.mark("down_proj")?;
            // The next layer's input norm, or the final one.
            let next = self
                .layers
                .get(i + 1)
                .map_or(&self.norm, |l| &l.input_layernorm);
            (x, h) = kernels::add_rms_norm(k, &x1, &d, next.weight(), next.eps())?;
            clock.mark("norms_residuals")?;
        }
        let logits = kernels::linear(k, &h, weight(&self.lm_head)?)?.to_dtype(DType::F32)?;
        clock.mark("lm_head")?;
        Ok(logits)
    }

    /// The forward pass for any number of new tokens per sequence (prompts, and decode steps
    /// off the fused path), with candle's operations: every group's tokens go through the
    /// projections together, attention runs group by group. Returns the logits after each
    /// sequence's last new token, group after group.
    fn forward_general(&self, groups: &[Group], clock: &mut Clock) -> Result<Tensor> {
        let dtype = self.embed_tokens.embeddings().dtype();
        let dev = &self.device;
        let (kvh, hd) = (self.cfg.num_key_value_heads, self.cfg.head_dim());
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut last = Vec::new();
        let mut batches = Vec::with_capacity(groups.len());
        for g in groups {
            let (b, row) = (g.tokens.len(), ids.len());
            let l = g.tokens.iter().map(Vec::len).max().unwrap_or(1);
            let span = g.starts.iter().max().copied().unwrap_or(0) + l;
            // No mask when every query attends to every position (one new token each, all
            // sequences equally long): the usual decode step.
            let masked = !(l == 1 && g.starts.iter().all(|&s| s + 1 == span));
            let mut mask = vec![f32::NEG_INFINITY; if masked { b * l * span } else { 0 }];
            let mut at = Vec::with_capacity(b * l);
            for (s, seq) in g.tokens.iter().enumerate() {
                for j in 0..l {
                    // Padding repeats the last token at the next positions: its keys land in
                    // cache positions no query attends to before the sequence's own tokens
                    // overwrite them.
                    ids.push(seq[j.min(seq.len() - 1)]);
                    pos.push((g.starts[s] + j) as u32);
                    at.push((g.starts[s] + j) as u32);
                    if masked {
                        let r = &mut mask[(s * l + j) * span..(s * l + j + 1) * span];
                        for m in r.iter_mut().take(g.starts[s] + j + 1) {
                            *m = 0.0;
                        }
                    }
                }
                last.push((row + s * l + seq.len() - 1) as u32);
            }
            batches.push(Batch {
                row,
                b,
                l,
                first: g.first,
                write_at: Tensor::from_vec(at, (b, 1, l, 1), dev)?
                    .broadcast_as((b, kvh, l, hd))?
                    .contiguous()?,
                span,
                query_blocks: self.query_blocks,
                mask: if masked {
                    Some(Tensor::from_vec(mask, (b, 1, 1, l, span), dev)?.to_dtype(dtype)?)
                } else {
                    None
                },
            });
        }
        let t = ids.len();
        let positions = Tensor::from_vec(pos, t, dev)?;
        let (cos, sin) = self.rope.at(&positions, 1, t, dtype)?;
        let input = Tensor::from_vec(ids, (1, t), dev)?;
        let mut x = self.embed_tokens.forward(&input)?;
        clock.mark("inputs_embed")?;
        for (layer, cache) in self.layers.iter().zip(&self.caches) {
            let r = x.clone();
            let h = layer.input_layernorm.forward(&x)?;
            clock.mark("norms_residuals")?;
            let h = layer
                .attn
                .forward(&h, (&cos, &sin), &batches, cache, clock)?;
            let x1 = (h + r)?;
            let h = layer.post_attention_layernorm.forward(&x1)?;
            clock.mark("norms_residuals")?;
            let h = layer.mlp.forward(&h, clock)?;
            x = (h + x1)?;
            clock.mark("norms_residuals")?;
        }
        // The last real token of each sequence.
        let h = if last.len() == t {
            x.reshape((t, ()))?
        } else {
            let n = last.len();
            x.reshape((t, ()))?
                .index_select(&Tensor::from_vec(last, n, dev)?, 0)?
        };
        let logits = self
            .norm
            .forward(&h)?
            .apply(&self.lm_head)?
            .to_dtype(DType::F32)?;
        clock.mark("lm_head")?;
        Ok(logits)
    }
}
