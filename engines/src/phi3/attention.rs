//! Attention of a forward pass, group by group, over the paged KV cache: the fused QKV
//! projection and RoPE on every packed row at once, then one scatter of the new keys and values
//! into the pool, then attention group by group: on the CPU in f32 reading the pool in place
//! ([`super::in_place`]), elsewhere over each group's blocks gathered into one tensor (long prompt
//! chunks a block of queries at a time on the CPU).

use super::in_place::{self, HostTables};
use super::profile::Clock;
use super::proj::{dense, dense_forward, split_rows, Proj};
use super::Config;
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// Preallocated keys and values of one layer: pools of (blocks, KV heads, block, head size),
/// see [`crate::kv`].
#[derive(Debug, Clone)]
pub(super) struct KvCache {
    pub(super) k: Tensor,
    pub(super) v: Tensor,
}

pub(super) struct Attention {
    pub(super) qkv_proj: Proj,
    /// The queries', keys' and values' rows of `qkv_proj`, used apart when several rows go
    /// through: their outputs are then contiguous, where slices of the fused output are strided,
    /// and every strided operation uploads its layout, which stalls the GPU's queue.
    pub(super) split: Option<Vec<Linear>>,
    pub(super) o_proj: Proj,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
}

impl Attention {
    pub(super) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
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
    /// The projections run on all T rows at once, then the T new keys and values go into the
    /// cache at `rows` (T × KV heads, see [`crate::kv::rows`]), then attention runs group by
    /// group.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        groups: &[Batch],
        rows: &Tensor,
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
        // Every new key and value to its sequence's block and position, in one scatter each.
        crate::kv::write(&cache.k, rows, &k)?;
        crate::kv::write(&cache.v, rows, &v)?;
        clock.mark("kv_write")?;
        let mut outs = Vec::with_capacity(groups.len());
        for g in groups {
            let of_group = |x: &Tensor, heads: usize| -> Result<Tensor> {
                if groups.len() == 1 {
                    x.reshape((g.b, g.l, heads, hd))
                } else {
                    x.narrow(1, g.row, g.b * g.l)?
                        .reshape((g.b, g.l, heads, hd))
                }
            };
            let out = self.attend(&of_group(&q, h)?, g, cache, clock)?;
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

    /// Attention of one group: queries (b, l, heads, head size) of its sequences, over the
    /// positions their tables' blocks hold (the new ones written already); returns (b, l, heads ×
    /// head size).
    fn attend(&self, q: &Tensor, g: &Batch, cache: &KvCache, clock: &mut Clock) -> Result<Tensor> {
        let (b, l) = (g.b, g.l);
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let rep = h / kvh;
        // Each KV head serves `rep` query heads: fold them into the rows of one product. The
        // scale is applied in the copy that makes the queries contiguous.
        let scale = 1.0 / (hd as f64).sqrt();
        let q = (q * scale)?; // (b, l, h, hd), contiguous
        let (blocks, mask) = match &g.kv {
            // On the CPU in f32, each sequence's blocks are read where they lie.
            Reads::InPlace(tables) => {
                let out = if l == 1 {
                    in_place::decode(&q, &cache.k, &cache.v, tables)?
                } else {
                    in_place::prompt(&q, &cache.k, &cache.v, tables)?
                };
                clock.mark("attn_in_place")?;
                return Ok(out);
            }
            Reads::Gathered { blocks, mask } => (blocks, mask),
        };
        let t = g.span;
        // Each sequence's blocks, gathered into contiguous (b, kvh, span, hd).
        let keys = crate::kv::gather(&cache.k, blocks, b)?.narrow(2, 0, t)?;
        let values = crate::kv::gather(&cache.v, blocks, b)?.narrow(2, 0, t)?;
        clock.mark("kv_gather")?;
        if g.query_blocks && l >= 2 * QUERY_BLOCK {
            if let Some(mask) = mask {
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
        let scores = match mask {
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

/// Whether long prompt chunks whose blocks are gathered attend a block of queries at a time: on
/// the CPU (for dtypes other than f32, or with `PHIFORGE_ATTN_IN_PLACE=off`), unless
/// `PHIFORGE_QUERY_BLOCKS=off` (to measure what it brings). GPUs attend at once (unmeasured
/// there).
pub(super) fn query_blocks(device: &Device) -> bool {
    device.is_cpu() && std::env::var("PHIFORGE_QUERY_BLOCKS").map_or(true, |v| v != "off")
}

/// One group of a forward pass: `b` sequences, `l` new tokens each (shorter ones padded), shared
/// by every layer.
pub(super) struct Batch {
    /// The group's first row in the pass's packed tokens.
    pub(super) row: usize,
    pub(super) b: usize,
    pub(super) l: usize,
    /// How attention reads the group's blocks.
    pub(super) kv: Reads,
    /// Cache positions attended to: max(starts) + l.
    pub(super) span: usize,
    /// Long chunks attend a block of queries at a time ([`Attention::attend_blocks`]).
    pub(super) query_blocks: bool,
}

/// How a group's attention reads its sequences' KV blocks, decided once per pass.
pub(super) enum Reads {
    /// On the CPU in f32: each sequence's blocks read where they lie, through its table on the
    /// host ([`in_place`]).
    InPlace(HostTables),
    /// Gathered into one tensor for candle's products: `blocks` names each sequence's, as
    /// [`crate::kv::gather`] takes them; `mask` (b, 1, 1, l, span) in the model's dtype is 0
    /// where attended and -inf elsewhere, none when every query attends to every position (one
    /// new token each, all sequences equally long).
    Gathered {
        blocks: Tensor,
        mask: Option<Tensor>,
    },
}
