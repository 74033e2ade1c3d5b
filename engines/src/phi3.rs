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
//! - the KV cache is paged ([`crate::kv`]): one preallocated pool of blocks per layer, read and
//!   written through each sequence's block table, so sequences that share a prompt prefix share
//!   its blocks; new keys and values go in place, every sequence at its own position, by one
//!   scatter per layer;
//! - grouped-query attention folds each KV head's query heads into one matrix product instead of
//!   copying K and V per query head;
//! - on a GPU the decode step (one new token per sequence) runs the fused kernels of
//!   [`crate::kernels`]: five launches a layer where candle's operations take about seventeen.
//!
//! This file holds the model and its forward passes; beside it are the shape (`config`), the
//! paged KV cache's pool and block tables (`cache`), the fused decode step (`decode`), the
//! projections (`proj`), attention over the KV cache (`attention`), on the CPU read in place
//! (`in_place`), the MLP (`mlp`), loading GGUF files (`gguf`), the phase timer (`profile`) and
//! training on the same modules (`train`).

use crate::kernels::{self, Heads, Kernels};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};

mod attention;
mod cache;
mod config;
mod decode;
mod gguf;
mod in_place;
mod mlp;
mod profile;
mod proj;
// Training on the same modules: `Model::forward_train`, `Model::from_varmap`, `init_varmap`.
mod train;

use attention::{query_blocks, Attention, Batch, KvCache};
use cache::pool;
pub use config::Config;
use mlp::Mlp;
use profile::Clock;
pub use profile::Profile;
use proj::{dense, Proj};
pub use train::{init_varmap, parameters, ParamInit};

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

struct Layer {
    attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

/// Sequences fed together in one forward pass: `tokens[s]` (at least one) continue a sequence
/// that already holds `starts[s]` positions, in the KV cache's blocks `tables[s]` names (position
/// `p` in block `tables[s][p / block]`; see [`crate::kv`]). A table must reach the sequence's last
/// new position; blocks written in a pass (those of the new positions) belong to one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub tables: Vec<Vec<u32>>,
    pub tokens: Vec<Vec<u32>>,
    pub starts: Vec<usize>,
}

/// Positions per block of the KV cache unless [`Model::set_pool`] says otherwise.
pub const KV_BLOCK: usize = 32;

/// A Phi-3-architecture model with a paged KV cache: a pool of blocks, by default one table's
/// worth (the context) for each of `slots` sequences.
pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Proj,
    rope: Rope,
    caches: Vec<KvCache>,
    /// Sequences fed at once at most, and positions per sequence.
    slots: usize,
    context: usize,
    /// Positions per block of the caches.
    block: usize,
    cfg: Config,
    device: Device,
    profile: Option<std::sync::Arc<Profile>>,
    /// The decode step's fused path and its kernels (see [`Model::set_kernels`]).
    fused: Option<Kernels>,
    /// See [`query_blocks`].
    query_blocks: bool,
    /// Whether attention reads the KV pool in place where it can ([`in_place`]; see
    /// [`Model::set_attention_in_place`]).
    in_place: bool,
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
        // No slots (a model for training): no cache at all.
        let layers_cached = if slots == 0 { 0 } else { cfg.num_hidden_layers };
        let blocks = slots * context.div_ceil(KV_BLOCK);
        let caches = pool(cfg, layers_cached, blocks, KV_BLOCK, dtype, device)?;
        Ok(Model {
            slots,
            context,
            block: KV_BLOCK,
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
            in_place: std::env::var("PHIFORGE_ATTN_IN_PLACE").map_or(true, |v| v != "off"),
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
            block: self.block,
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
            block: 16,
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

    /// Positions a sequence may hold.
    pub fn context(&self) -> usize {
        if self.caches.is_empty() {
            0
        } else {
            self.context
        }
    }

    /// Feeds new tokens to the sequences of slots `0..b` (see [`Model::slot_table`]):
    /// `tokens[s]` (at least one) continue the sequence in slot `s`, which already holds
    /// `starts[s]` positions. Returns the logits (b, vocab) after each slot's last new token, in
    /// f32.
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
        if first + tokens.len() > self.slots {
            candle_core::bail!("forward needs 1..=slots sequences")
        }
        self.forward_groups(&[Group {
            tables: (first..first + tokens.len())
                .map(|s| self.slot_table(s))
                .collect(),
            tokens: tokens.to_vec(),
            starts: starts.to_vec(),
        }])
    }

    /// Feeds several groups of sequences in one pass (say the sequences decoding, one token
    /// each, and a chunk of a new prompt): their tokens share the projections, each group is
    /// padded only to its own longest. Returns the logits (sequences, vocab) after each
    /// sequence's last new token, group after group. No block may be written by two sequences.
    pub fn forward_groups(&self, groups: &[Group]) -> Result<Tensor> {
        self.check_groups(groups)?;
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
            (Some(k), Some(g)) => self.decode_fused(k, g, &mut clock)?,
            _ => self.forward_general(groups, &mut clock)?,
        };
        if let Some(p) = &self.profile {
            p.pass_ends(decode.is_some().then_some(clock.last));
        }
        Ok(logits)
    }

    /// The forward pass for any number of new tokens per sequence (prompts, and decode steps
    /// off the fused path), with candle's operations: every group's tokens go through the
    /// projections together, attention runs group by group. Returns the logits after each
    /// sequence's last new token, group after group.
    fn forward_general(&self, groups: &[Group], clock: &mut Clock) -> Result<Tensor> {
        let dtype = self.embed_tokens.embeddings().dtype();
        let dev = &self.device;
        let (kvh, block) = (self.cfg.num_key_value_heads, self.block);
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut last = Vec::new();
        // Every new token's (sequence of the pass, position), for the cache writes.
        let mut at = Vec::new();
        let mut tables: Vec<u32> = Vec::new();
        let width = self.width();
        let mut batches = Vec::with_capacity(groups.len());
        for g in groups {
            let (b, row) = (g.tokens.len(), ids.len());
            let l = g.tokens.iter().map(Vec::len).max().unwrap_or(1);
            let span = g.starts.iter().max().copied().unwrap_or(0) + l;
            let in_place = self.in_place && in_place::applies(dtype, dev);
            // No mask when attention reads in place (it knows each query's position) or every
            // query attends to every position (one new token each, all sequences equally long).
            let masked = !(in_place || l == 1 && g.starts.iter().all(|&s| s + 1 == span));
            let mut mask = vec![f32::NEG_INFINITY; if masked { b * l * span } else { 0 }];
            let first = tables.len() / width;
            tables.extend(crate::kv::padded(&g.tables, width));
            for (s, seq) in g.tokens.iter().enumerate() {
                let n = first + s;
                for j in 0..l {
                    // Padding repeats the last token at the next positions: its keys land in
                    // cache positions no query attends to before the sequence's own tokens
                    // overwrite them.
                    ids.push(seq[j.min(seq.len() - 1)]);
                    pos.push((g.starts[s] + j) as u32);
                    at.push((n, g.starts[s] + j));
                    if masked {
                        let r = &mut mask[(s * l + j) * span..(s * l + j + 1) * span];
                        for m in r.iter_mut().take(g.starts[s] + j + 1) {
                            *m = 0.0;
                        }
                    }
                }
                last.push((row + s * l + seq.len() - 1) as u32);
            }
            let kv = if in_place {
                attention::Reads::InPlace(in_place::HostTables {
                    table: tables[first * width..].to_vec(),
                    width,
                    starts: g.starts.clone(),
                })
            } else {
                // The blocks each sequence attends to, for the gathers.
                let reach = span.div_ceil(block);
                let blocks = crate::kv::gather_ids(&tables[first * width..], width, reach, kvh);
                let n = blocks.len();
                attention::Reads::Gathered {
                    blocks: Tensor::from_vec(blocks, n, dev)?,
                    mask: if masked {
                        Some(Tensor::from_vec(mask, (b, 1, 1, l, span), dev)?.to_dtype(dtype)?)
                    } else {
                        None
                    },
                }
            };
            batches.push(Batch {
                row,
                b,
                l,
                kv,
                span,
                query_blocks: self.query_blocks,
            });
        }
        let rows = crate::kv::rows(&tables, width, at, kvh, block, self.blocks())?;
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, dev)?;
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
                .forward(&h, (&cos, &sin), &batches, &rows, cache, clock)?;
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
