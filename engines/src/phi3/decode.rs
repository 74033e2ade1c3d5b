//! The decode step on the fused path (one new token per sequence, on a GPU): the kernels of
//! [`crate::kernels`], five launches a layer, and a CUDA graph of the whole step where there is one.

use super::{Clock, Model, Proj};
use crate::kernels::{self, Kernels, Step};
use candle_core::{DType, Result, Tensor};

impl Model {
    /// The decode step on the fused path: one new token per sequence; see [`crate::kernels`].
    /// A CUDA graph of the step where there is one (not while profiling: the phases are timed
    /// one by one).
    pub(super) fn decode_fused(
        &self,
        k: Kernels,
        g: &super::Group,
        clock: &mut Clock,
    ) -> Result<Tensor> {
        let dev = &self.device;
        let pos: Vec<u32> = g.starts.iter().map(|&s| s as u32).collect();
        let ids: Vec<u32> = g.tokens.iter().map(|t| t[0]).collect();
        // Tables of one width, so they make one (b, width) tensor.
        let width = self.width();
        let table = crate::kv::padded(&g.tables, width);
        #[cfg(feature = "cuda")]
        if clock.profile.is_none() {
            let mut graphs = match self.graphs.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let step = |ids: &Tensor, positions: &Tensor, tables: &Tensor| {
                let mut quiet = Clock {
                    profile: None,
                    last: std::time::Instant::now(),
                    prompt: false,
                };
                let step = Step {
                    positions,
                    pos: &pos,
                    tables,
                    table: &table,
                };
                self.decode_step(k, ids, &step, &mut quiet)
            };
            if let Some(logits) = graphs.run(dev, &ids, &pos, &table, step)? {
                return Ok(logits);
            }
        }
        let positions = Tensor::new(pos.as_slice(), dev)?;
        let tables = Tensor::from_vec(table.clone(), (pos.len(), width), dev)?;
        let ids = Tensor::new(ids.as_slice(), dev)?;
        let step = Step {
            positions: &positions,
            pos: &pos,
            tables: &tables,
            table: &table,
        };
        self.decode_step(k, &ids, &step, clock)
    }

    /// One fused decode step on tensors already on the device: the token ids (u32, one per
    /// sequence) and the step's positions and block tables.
    fn decode_step(
        &self,
        k: Kernels,
        ids: &Tensor,
        step: &Step,
        clock: &mut Clock,
    ) -> Result<Tensor> {
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
            let q = kernels::linear_rope_cache(k, &h, wqkv, step, cos, sin, kc, vc, heads, scale)?;
            clock.mark("qkv_proj_rope")?;
            let a = kernels::attention(k, &q, step, kc, vc, heads)?;
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
}
