//! The model's paged KV cache ([`crate::kv`]): the pool of blocks every layer holds, its shape,
//! and the check of a pass's block tables.

use super::{Config, Group, KvCache, Model};
use candle_core::{DType, Device, Result, Tensor};

/// Every layer's KV cache: `blocks` blocks of `block` positions (see [`crate::kv`]).
pub(super) fn pool(
    cfg: &Config,
    layers: usize,
    blocks: usize,
    block: usize,
    dtype: DType,
    device: &Device,
) -> Result<Vec<KvCache>> {
    let shape = (blocks, cfg.num_key_value_heads, block, cfg.head_dim());
    (0..layers)
        .map(|_| {
            Ok(KvCache {
                k: Tensor::zeros(shape, dtype, device)?,
                v: Tensor::zeros(shape, dtype, device)?,
            })
        })
        .collect()
}

impl Model {
    /// Sequences fed at once at most (the batch), each with a table of [`Model::width`] blocks.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Sets how many sequences are fed at once at most; the pool stays as it is (a scheduler
    /// sizes it with [`Model::set_pool`] and hands blocks out by its own count).
    pub fn set_slots(&mut self, slots: usize) {
        self.slots = slots.max(1);
    }

    /// Whether attention on the CPU in f32 reads the KV pool in place (the default, unless
    /// `PHIFORGE_ATTN_IN_PLACE=off`) or gathers each sequence's blocks for candle's products, as
    /// it does on a GPU; both give the same logits, within rounding.
    pub fn set_attention_in_place(&mut self, on: bool) {
        self.in_place = on;
    }

    /// Positions per block of the KV cache.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Blocks a sequence's table holds at most: its context's.
    pub fn width(&self) -> usize {
        self.context.div_ceil(self.block.max(1))
    }

    /// Blocks in the KV cache's pool (numbered `0..blocks`).
    pub fn blocks(&self) -> usize {
        self.caches.first().map(|c| c.k.dims()[0]).unwrap_or(0)
    }

    /// Reallocates the KV cache as `blocks` blocks of `block` positions (what it held is lost).
    pub fn set_pool(&mut self, block: usize, blocks: usize) -> Result<()> {
        if self.caches.is_empty() {
            return Ok(());
        }
        if block == 0 || blocks == 0 {
            candle_core::bail!("a KV cache needs blocks of at least one position")
        }
        // The old pool goes first: both may not fit at once.
        let n = self.caches.len();
        self.caches.clear();
        self.caches = pool(&self.cfg, n, blocks, block, self.dtype(), &self.device)?;
        self.block = block;
        #[cfg(feature = "cuda")]
        self.graphs_mut().clear();
        Ok(())
    }

    /// The table of sequence `slot` when the pool is read as [`Model::slots`] sequences of a
    /// whole context each (as [`Model::new`] sizes it): blocks `slot × width..(slot + 1) × width`.
    pub fn slot_table(&self, slot: usize) -> Vec<u32> {
        let w = self.width();
        (slot * w..(slot + 1) * w).map(|b| b as u32).collect()
    }

    /// That every group of a pass is well formed and every table reaches its new positions in
    /// the pool, and that no block is written by two sequences.
    pub(super) fn check_groups(&self, groups: &[Group]) -> Result<()> {
        let (block, blocks, width) = (self.block, self.blocks(), self.width());
        let mut written = std::collections::HashSet::new();
        for g in groups {
            let b = g.tokens.len();
            if b == 0 || b != g.starts.len() || b != g.tables.len() {
                candle_core::bail!("forward needs sequences, each with a start and a table")
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
            for (t, &start) in g.tables.iter().zip(&g.starts) {
                let reach = (start + l).div_ceil(block);
                if t.len() < reach || t.len() > width || t.iter().any(|&b| b as usize >= blocks) {
                    candle_core::bail!(
                        "a block table must reach position {} within {width} blocks of the pool's {blocks}",
                        start + l - 1
                    )
                }
                for &b in &t[start / block..reach] {
                    if !written.insert(b) {
                        candle_core::bail!("two sequences of one pass write block {b}")
                    }
                }
            }
        }
        Ok(())
    }
}
