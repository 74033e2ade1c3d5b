//! Training on the inference model's own weights and modules (a child module of [`super`], so it
//! reads the layers' private fields).
//!
//! The inference pass writes keys and values into the KV cache in place and runs candle's fused
//! operations (`rms_norm`, `softmax_last_dim`, `rope_thd`), none of which has a backward pass.
//! [`Model::forward_train`] computes the same function with operations autograd follows: in f32 on
//! the CPU the fused operations of [`crate::train_ops`] (RMS norm, the projections, attention and
//! the MLP, each with its own backward pass), elsewhere candle's decomposed RMS norm, softmax and
//! rotation and a causal mask; grouped-query attention by folding each KV head's query heads into
//! one product (no copies of K and V); and no cache at all.
//!
//! A model for training is built with no cache slots ([`Model::from_varmap`]), so no cache is
//! allocated; its variables come from [`init_varmap`] (transformers' Phi-3 initialisation, seeded) or
//! from a checkpoint.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use engines::phi3::{init_varmap, Config, Model};
//! # fn main() -> candle_core::Result<()> {
//! let cfg = Config::phi4();
//! let vars = init_varmap(&cfg, 0, &Device::Cpu)?;
//! let model = Model::from_varmap(&cfg, &vars, DType::F32)?;
//! let ids = Tensor::zeros((1, 8), DType::U32, &Device::Cpu)?;
//! let logits = model.forward_train(&ids)?; // (1, 8, vocab)
//! # Ok(()) }
//! ```

use super::{Attention, Config, Mlp, Model};
use crate::train_ops;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{RmsNorm, VarBuilder, VarMap};
use std::collections::HashMap;
use std::sync::Arc;

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    /// Normal with mean 0 and this standard deviation (transformers' `initializer_range`, 0.02).
    Normal(f64),
    /// All ones (the RMS norms' weights).
    Ones,
}

/// Every parameter of the model: its Hugging Face name, shape and initialisation, in a fixed order
/// (embeddings, then layer by layer, then the final norm and the output projection).
pub fn parameters(cfg: &Config) -> Vec<(String, Vec<usize>, ParamInit)> {
    let (hs, hd) = (cfg.hidden_size, cfg.head_dim());
    let (h, kvh, inter) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.intermediate_size,
    );
    let normal = ParamInit::Normal(0.02);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, hs],
        normal,
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((
            format!("{p}.self_attn.qkv_proj.weight"),
            vec![(h + 2 * kvh) * hd, hs],
            normal,
        ));
        out.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![hs, h * hd],
            normal,
        ));
        out.push((
            format!("{p}.mlp.gate_up_proj.weight"),
            vec![2 * inter, hs],
            normal,
        ));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![hs, inter], normal));
        out.push((
            format!("{p}.input_layernorm.weight"),
            vec![hs],
            ParamInit::Ones,
        ));
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![hs],
            ParamInit::Ones,
        ));
    }
    out.push(("model.norm.weight".to_string(), vec![hs], ParamInit::Ones));
    if !cfg.tie_word_embeddings {
        out.push((
            "lm_head.weight".to_string(),
            vec![cfg.vocab_size, hs],
            normal,
        ));
    }
    out
}

/// splitmix64: a small seeded generator, so that initial weights depend on the seed alone (candle's
/// CPU generator cannot be seeded).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// `n` normal samples (Box-Muller) with standard deviation `std`.
fn normal(n: usize, std: f64, rng: &mut SplitMix) -> Vec<f32> {
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let (u1, u2) = (rng.unit(), rng.unit());
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let t = std::f64::consts::TAU * u2;
        v.push((r * t.cos()) as f32);
        v.push((r * t.sin()) as f32);
    }
    v.truncate(n);
    v
}

/// The model's variables in f32 on `device`, initialised as transformers' Phi-3 does (normal(0,
/// 0.02) for projections and embeddings, ones for norms), from `seed` alone: each parameter has its
/// own stream, so its values do not depend on the others' shapes.
pub fn init_varmap(cfg: &Config, seed: u64, device: &Device) -> Result<VarMap> {
    cfg.check()?;
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("the variable map's lock is poisoned".into()))?;
        for (k, (name, shape, init)) in parameters(cfg).into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let t = match init {
                ParamInit::Ones => Tensor::ones(shape, DType::F32, device)?,
                ParamInit::Normal(std) => {
                    let mut rng =
                        SplitMix(seed ^ (k as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
                    Tensor::from_vec(normal(n, std, &mut rng), shape, device)?
                }
            };
            data.insert(name, candle_core::Var::from_tensor(&t)?);
        }
    }
    Ok(varmap)
}

impl Model {
    /// A model without a KV cache (no memory for one), for [`Model::forward_train`]; the
    /// inference [`Model::forward`] refuses it (no slots).
    pub fn for_training(cfg: &Config, vb: VarBuilder) -> Result<Model> {
        Model::new(cfg, vb, 0, 0)
    }

    /// A model without a KV cache on the variables of `varmap` (f32 master weights), computing in
    /// `dtype`: in f32 the layers hold the variables themselves; in another dtype they hold
    /// converted copies, and gradients flow back through the conversion to the f32 variables.
    pub fn from_varmap(cfg: &Config, varmap: &VarMap, dtype: DType) -> Result<Model> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("the variable map's lock is poisoned".into()))?;
        let device = match data.values().next() {
            Some(v) => v.device().clone(),
            None => candle_core::bail!("an empty variable map"),
        };
        let mut tensors = HashMap::with_capacity(data.len());
        for (name, var) in data.iter() {
            tensors.insert(name.clone(), var.as_tensor().to_dtype(dtype)?);
        }
        drop(data);
        Model::for_training(cfg, VarBuilder::from_tensors(tensors, dtype, &device))
    }

    /// The logits (b, l, vocab), in the model's dtype, for every position of `ids` (b, l) u32,
    /// each attending to the positions before it in its own row, from position 0. Uses only
    /// operations with a backward pass; no cache.
    pub fn forward_train(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_train_with(ids, true)
    }

    /// What [`Model::forward_train`] feeds the output projection: the final norm's output
    /// (b·l, hidden), row `i·l + j` for position `j` of row `i`. A trainer that fuses the
    /// projection ([`Model::output_weight`]) with its loss starts here, and never holds the
    /// logits' gradient as a graph node.
    pub fn forward_train_hidden(&self, ids: &Tensor) -> Result<Tensor> {
        self.hidden_with(ids, true)
    }

    /// The output projection's weight (vocab, hidden): the embeddings' when they are tied.
    pub fn output_weight(&self) -> Result<&Tensor> {
        self.lm_head
            .weight()
            .ok_or_else(|| candle_core::Error::Msg("a quantized output projection".into()))
    }

    /// [`Model::forward_train`]; `fused`: with the fused operations of [`crate::train_ops`] where
    /// they apply (f32 on the CPU), else with candle's decomposed ones.
    fn forward_train_with(&self, ids: &Tensor, fused: bool) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let h = self.hidden_with(ids, fused)?;
        self.lm_head.forward(&h)?.reshape((b, l, ()))
    }

    fn hidden_with(&self, ids: &Tensor, fused: bool) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if l == 0 || l > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "forward_train: sequence length {l} not in 1..={}",
                self.cfg.max_position_embeddings
            )
        }
        let dtype = self.dtype();
        let dev = &self.device;
        let cos = self.rope.cos.narrow(0, 0, l)?.to_dtype(dtype)?;
        let sin = self.rope.sin.narrow(0, 0, l)?.to_dtype(dtype)?;
        let fused = fused && train_ops::fused(self.embed_tokens.embeddings());
        let pass = if fused {
            Pass::Fused(Arc::new((
                cos.flatten_all()?.to_vec1::<f32>()?,
                sin.flatten_all()?.to_vec1::<f32>()?,
            )))
        } else {
            Pass::Decomposed {
                cos,
                sin,
                mask: causal_mask(l, dev)?,
            }
        };
        let mut x = self.embed_tokens.forward(&ids.flatten_all()?)?; // (b*l, hidden)
        for layer in &self.layers {
            let h = norm(&layer.input_layernorm, &x, fused)?;
            let h = layer.attn.forward_train(&h, b, l, &pass)?;
            let x1 = (x + h)?;
            let h = norm(&layer.post_attention_layernorm, &x1, fused)?;
            let h = layer.mlp.forward_train(&h, fused)?;
            x = (x1 + h)?;
        }
        norm(&self.norm, &x, fused)
    }
}

/// How a training pass computes attention's rotation, mask and softmax.
enum Pass {
    /// The fused CPU operations: RoPE's `cos` and `sin` tables (l, head size / 2), row-major.
    Fused(Arc<(Vec<f32>, Vec<f32>)>),
    /// candle's operations on any device: the tables as tensors, and the causal mask.
    Decomposed {
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
    },
}

/// A projection: [`train_ops::linear`] when fused and dense, else the module itself.
fn project(p: &super::Proj, x: &Tensor, fused: bool) -> Result<Tensor> {
    match (fused, p.weight()) {
        (true, Some(w)) => train_ops::linear(x, w),
        _ => p.forward(x),
    }
}

/// RMS norm, fused, or by decomposed operations (candle's fused one has no backward); both
/// accumulate in f32.
fn norm(n: &RmsNorm, x: &Tensor, fused: bool) -> Result<Tensor> {
    if fused {
        train_ops::rms_norm(x, n.weight(), n.eps() as f32)
    } else {
        candle_nn::ops::rms_norm_slow(x, n.weight(), n.eps() as f32)
    }
}

/// (l, l) f32: 0 where a query may attend (the key is not after it), -inf elsewhere.
fn causal_mask(l: usize, dev: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (l, l), dev)
}

impl Attention {
    /// `x` (b*l, hidden) → (b*l, hidden).
    fn forward_train(&self, x: &Tensor, b: usize, l: usize, pass: &Pass) -> Result<Tensor> {
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let rep = h / kvh;
        let dtype = x.dtype();
        let qkv = project(&self.qkv_proj, x, matches!(pass, Pass::Fused(_)))?;
        let scale = 1.0 / (hd as f64).sqrt();
        // Query head g*rep + r reads KV head g (transformers' repeat_kv): fold the `rep` query
        // heads of each KV head into the rows of one product (no copies of K and V).
        let out = match pass {
            Pass::Fused(rope) => {
                let shape = train_ops::Attention {
                    b,
                    l,
                    heads: h,
                    kv_heads: kvh,
                    head_dim: hd,
                    scale: scale as f32,
                    rope: rope.clone(),
                };
                train_ops::attention(&qkv, &shape)?
            }
            Pass::Decomposed { cos, sin, mask } => {
                let qkv = qkv.reshape((b, l, h + 2 * kvh, hd))?;
                // (b, heads, l, hd) each.
                let q = qkv.narrow(2, 0, h)?.transpose(1, 2)?.contiguous()?;
                let k = qkv.narrow(2, h, kvh)?.transpose(1, 2)?.contiguous()?;
                let v = qkv.narrow(2, h + kvh, kvh)?.transpose(1, 2)?.contiguous()?;
                let q = candle_nn::rotary_emb::rope_slow(&q, cos, sin)?;
                let k = candle_nn::rotary_emb::rope_slow(&k, cos, sin)?;
                let q = (q * scale)?.reshape((b, kvh, rep * l, hd))?;
                let scores = q.matmul(&k.t()?)?; // (b, kvh, rep*l, l)
                let scores = scores
                    .to_dtype(DType::F32)?
                    .reshape((b, kvh, rep, l, l))?
                    .broadcast_add(mask)?;
                let probs = candle_nn::ops::softmax(&scores, D::Minus1)?
                    .to_dtype(dtype)?
                    .reshape((b, kvh, rep * l, l))?;
                // (b, kvh, rep*l, hd) = (b, h, l, hd) → (b*l, h*hd).
                probs
                    .matmul(&v)?
                    .reshape((b, h, l, hd))?
                    .transpose(1, 2)?
                    .reshape((b * l, h * hd))?
            }
        };
        project(&self.o_proj, &out, matches!(pass, Pass::Fused(_)))
    }
}

impl Mlp {
    /// `x` (b*l, hidden) → (b*l, hidden).
    fn forward_train(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if let (true, Some(wgu), Some(wd)) =
            (fused, self.gate_up_proj.weight(), self.down_proj.weight())
        {
            return train_ops::mlp(x, wgu, wd);
        }
        let gu = self.gate_up_proj.forward(x)?;
        let gate = gu.narrow(D::Minus1, 0, self.inter)?;
        let up = gu.narrow(D::Minus1, self.inter, self.inter)?;
        self.down_proj.forward(&(up * gate.silu()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 96, "hidden_size": 64, "intermediate_size": 112, "num_hidden_layers": 2,
            "num_attention_heads": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 64, "hidden_act": "silu",
            "tie_word_embeddings": false
        }))
        .unwrap()
    }

    /// The training pass computes what the inference pass computes: at every prefix length of
    /// two different rows, its logits equal the cached forward's last-position logits.
    #[test]
    fn forward_train_matches_inference() {
        let cfg = tiny();
        let dev = Device::Cpu;
        let vars = init_varmap(&cfg, 7, &dev).unwrap();
        // Non-trivial norm weights, so that a norm applied wrongly shows.
        for (name, var) in vars.data().lock().unwrap().iter() {
            if name.contains("norm") {
                let n = var.as_tensor().elem_count();
                let w: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
                var.set(&Tensor::from_vec(w, n, &dev).unwrap()).unwrap();
            }
        }
        let train = Model::from_varmap(&cfg, &vars, DType::F32).unwrap();
        assert_eq!(train.slots(), 0, "no cache for training");
        let infer = Model::new(
            &cfg,
            VarBuilder::from_varmap(&vars, DType::F32, &dev),
            2,
            64,
        )
        .unwrap();
        let l = 20;
        let rows: Vec<Vec<u32>> = (0..2u32)
            .map(|s| (0..l as u32).map(|i| (i * 37 + s * 11 + 3) % 96).collect())
            .collect();
        let ids = Tensor::new(rows.clone(), &dev).unwrap();
        let logits = train.forward_train(&ids).unwrap();
        assert_eq!(logits.dims(), &[2, l, 96]);
        for p in [1, 5, l] {
            let prefixes: Vec<Vec<u32>> = rows.iter().map(|r| r[..p].to_vec()).collect();
            let want = infer.forward(&prefixes, &[0, 0]).unwrap(); // (2, vocab)
            let got = logits.narrow(1, p - 1, 1).unwrap().squeeze(1).unwrap();
            let diff = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4 * scale.max(1.0), "prefix {p}: max diff {diff}");
        }
    }

    /// Gradients reach every variable, through a bf16 copy too, and are f32 there.
    #[test]
    fn gradients_reach_f32_variables() {
        let cfg = tiny();
        let dev = Device::Cpu;
        let vars = init_varmap(&cfg, 1, &dev).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let model = Model::from_varmap(&cfg, &vars, dtype).unwrap();
            let ids = Tensor::new(&[[1u32, 2, 3, 4], [5, 6, 7, 8]], &dev).unwrap();
            let loss = model
                .forward_train(&ids)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            for var in vars.all_vars() {
                let g = grads.get(var.as_tensor()).expect("a gradient per variable");
                assert_eq!(g.dtype(), DType::F32);
                assert_eq!(g.shape(), var.shape());
            }
        }
    }

    /// The fused CPU operations and candle's decomposed ones compute the same logits and the same
    /// gradient for every variable (non-trivial norm weights, a loss that weighs every logit
    /// differently).
    #[test]
    fn fused_matches_decomposed() {
        let cfg = tiny();
        let dev = Device::Cpu;
        let vars = init_varmap(&cfg, 11, &dev).unwrap();
        for (name, var) in vars.data().lock().unwrap().iter() {
            if name.contains("norm") {
                let n = var.as_tensor().elem_count();
                let w: Vec<f32> = (0..n).map(|i| 0.6 + (i % 5) as f32 / 5.0).collect();
                var.set(&Tensor::from_vec(w, n, &dev).unwrap()).unwrap();
            }
        }
        let model = Model::from_varmap(&cfg, &vars, DType::F32).unwrap();
        let (b, l) = (3, 17);
        let ids: Vec<u32> = (0..b * l).map(|i| (i as u32 * 53 + 7) % 96).collect();
        let ids = Tensor::from_vec(ids, (b, l), &dev).unwrap();
        let weigh: Vec<f32> = (0..b * l * 96)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let weigh = Tensor::from_vec(weigh, (b, l, 96), &dev).unwrap();
        let run = |fused: bool| {
            let logits = model.forward_train_with(&ids, fused).unwrap();
            let loss = (&logits * &weigh).unwrap().sum_all().unwrap();
            (logits, loss.backward().unwrap())
        };
        let ((la, ga), (lb, gb)) = (run(true), run(false));
        let max_abs = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let d = max_abs(&(&la - &lb).unwrap());
        assert!(d < 1e-5 * max_abs(&lb).max(1.0), "logits differ by {d}");
        for (name, var) in vars.data().lock().unwrap().iter() {
            let (a, b) = (
                ga.get(var.as_tensor()).unwrap(),
                gb.get(var.as_tensor()).unwrap(),
            );
            assert_eq!(a.shape(), b.shape(), "{name}");
            let d = max_abs(&(a - b).unwrap());
            let m = max_abs(b);
            assert!(m > 0.0, "{name}: no gradient");
            assert!(
                d <= 1e-4 * m,
                "{name}: gradients differ by {d} (largest {m})"
            );
        }
    }

    /// Same seed, same weights; another seed, other weights; about the intended spread.
    #[test]
    fn init_is_seeded() {
        let cfg = tiny();
        let a = init_varmap(&cfg, 3, &Device::Cpu).unwrap();
        let b = init_varmap(&cfg, 3, &Device::Cpu).unwrap();
        let c = init_varmap(&cfg, 4, &Device::Cpu).unwrap();
        let get = |m: &VarMap, n: &str| {
            m.data().lock().unwrap()[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let name = "model.embed_tokens.weight";
        let (x, y, z) = (get(&a, name), get(&b, name), get(&c, name));
        assert_eq!(x, y);
        assert_ne!(x, z);
        let var = x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64;
        assert!((var.sqrt() - 0.02).abs() < 0.002, "std {}", var.sqrt());
        assert!(get(&a, "model.norm.weight").iter().all(|&v| v == 1.0));
    }
}
