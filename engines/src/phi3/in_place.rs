//! Attention on the CPU in f32 that reads each sequence's keys and values where they lie in the
//! paged pool ([`crate::kv`]), through its block table, instead of gathering them into one tensor
//! for candle's products (a copy as large as what attention reads):
//!
//! - [`decode`]: one new token per sequence, one task per (sequence, KV head): a pass for the
//!   scores, a softmax, a pass over the values;
//! - [`prompt`]: several new tokens per sequence (prompt chunks), flash-style: a task per
//!   (sequence, block of [`QUERY_BLOCK`] queries) walks the positions its queries may see in tiles
//!   of [`KEY_TILE`], `S = Q·Kᵀ` and `O += P·V` by the `gemm` crate, with the softmax kept online
//!   (a running maximum and sum per query), so no score matrix, mask or probabilities tensor is
//!   ever made and the causal mask's upper triangle is never computed.

use crate::train_ops::{fast_exp, gemm_into, simd};
use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// A group's block tables on the host: `b` rows of `width` blocks, and the position of each
/// sequence's first new token.
pub(super) struct HostTables {
    pub(super) table: Vec<u32>,
    pub(super) width: usize,
    pub(super) starts: Vec<usize>,
}

/// Whether attention can read the pool in place: f32 on the CPU.
pub(super) fn applies(dtype: DType, device: &candle_core::Device) -> bool {
    device.is_cpu() && dtype == DType::F32
}

/// Queries per task of [`prompt`], and positions per tile of keys and values.
const QUERY_BLOCK: usize = 64;
const KEY_TILE: usize = 128;

/// The pools' f32 data, the shape (kvh, block, hd) of their blocks, and where position `p` of
/// KV head `g` of table row `s` starts in them.
struct Pools<'a> {
    k: &'a [f32],
    v: &'a [f32],
    kvh: usize,
    block: usize,
    hd: usize,
    t: &'a HostTables,
}

impl Pools<'_> {
    #[inline(always)]
    fn at(&self, s: usize, g: usize, p: usize) -> usize {
        let blk = self.t.table[s * self.t.width + p / self.block] as usize;
        ((blk * self.kvh + g) * self.block + p % self.block) * self.hd
    }
}

/// Runs `f` over the pools of `k` and `v` (blocks, kvh, block, hd), which must be contiguous f32
/// on the CPU.
fn with_pools<T>(
    k: &Tensor,
    v: &Tensor,
    t: &HostTables,
    f: impl FnOnce(&Pools) -> Result<T>,
) -> Result<T> {
    let (_, kvh, block, hd) = k.dims4()?;
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*ks, &*vs) else {
        candle_core::bail!("attention in place needs the KV cache on the CPU")
    };
    if !kl.is_contiguous() || !vl.is_contiguous() || v.dims() != k.dims() {
        candle_core::bail!("attention in place needs contiguous pools of one shape")
    }
    let pools = Pools {
        k: &kc.as_slice::<f32>()?[kl.start_offset()..],
        v: &vc.as_slice::<f32>()?[vl.start_offset()..],
        kvh,
        block,
        hd,
        t,
    };
    f(&pools)
}

/// Attention of one new token per sequence (`q` (b, 1, heads, head size), scaled) over its
/// positions `0..=start`: each (sequence, KV head) on its own thread, one pass for the scores, a
/// softmax, one pass over the values. Returns (b, 1, heads × head size).
pub(super) fn decode(q: &Tensor, k: &Tensor, v: &Tensor, t: &HostTables) -> Result<Tensor> {
    let (b, _, h, hd) = q.dims4()?;
    let qv = q.flatten_all()?.to_vec1::<f32>()?;
    let out = with_pools(k, v, t, |pools| {
        let kvh = pools.kvh;
        let rep = h / kvh;
        let mut out = vec![0f32; b * h * hd];
        // Chunk (s, g) of the output: the rep query heads of KV head g of sequence s, contiguous.
        out.par_chunks_mut(rep * hd).enumerate().for_each(|(i, o)| {
            let (s, g) = (i / kvh, i % kvh);
            let len = t.starts[s] + 1;
            let mut scores = vec![0f32; rep * len];
            for p in 0..len {
                let key = &pools.k[pools.at(s, g, p)..][..hd];
                for j in 0..rep {
                    let qj = &qv[(s * h + g * rep + j) * hd..][..hd];
                    scores[j * len + p] = dot(qj, key);
                }
            }
            for j in 0..rep {
                let sc = &mut scores[j * len..(j + 1) * len];
                let m = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut sum = 0f32;
                for x in sc.iter_mut() {
                    *x = (*x - m).exp();
                    sum += *x;
                }
                sc.iter_mut().for_each(|x| *x /= sum);
            }
            for p in 0..len {
                let val = &pools.v[pools.at(s, g, p)..][..hd];
                for j in 0..rep {
                    let w = scores[j * len + p];
                    o[j * hd..(j + 1) * hd]
                        .iter_mut()
                        .zip(val)
                        .for_each(|(o, v)| *o += w * v);
                }
            }
        });
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, 1, h * hd), q.device())
}

/// Causal attention of `l` new tokens per sequence (`q` (b, l, heads, head size), scaled; query
/// `j` of sequence `s` at position `starts[s] + j`, its key and value written already) over the
/// positions each may see. Returns (b, l, heads × head size).
pub(super) fn prompt(q: &Tensor, k: &Tensor, v: &Tensor, t: &HostTables) -> Result<Tensor> {
    let (b, l, h, hd) = q.dims4()?;
    let qv = q.flatten_all()?.to_vec1::<f32>()?;
    let out = with_pools(k, v, t, |pools| {
        let mut out = vec![0f32; b * l * h * hd];
        // Task (s, block of queries): their rows of every head, contiguous in the output.
        out.par_chunks_mut(l * h * hd)
            .enumerate()
            .flat_map(|(s, o)| {
                o.par_chunks_mut(QUERY_BLOCK * h * hd)
                    .enumerate()
                    .map(move |(i, o)| (s, i * QUERY_BLOCK, o))
            })
            .for_each(|(s, first, o)| {
                let n = o.len() / (h * hd);
                for g in 0..pools.kvh {
                    query_block(pools, &qv, (s, first, n), (l, h, g), o);
                }
            });
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, l, h * hd), q.device())
}

/// Queries `first..first + n` of sequence `s` (of `l`), their `rep` heads of KV head `g`: rows
/// `jj × rep + r`, flash-style over tiles of keys and values, written into `o` (n, heads × hd).
fn query_block(
    pools: &Pools,
    qv: &[f32],
    (s, first, n): (usize, usize, usize),
    (l, h, g): (usize, usize, usize),
    o: &mut [f32],
) {
    let (hd, kvh) = (pools.hd, pools.kvh);
    let rep = h / kvh;
    let rows = n * rep;
    let start = pools.t.starts[s];
    // The block's queries, contiguous.
    let mut q = vec![0f32; rows * hd];
    for jj in 0..n {
        let src = ((s * l + first + jj) * h + g * rep) * hd;
        q[jj * rep * hd..(jj + 1) * rep * hd].copy_from_slice(&qv[src..src + rep * hd]);
    }
    let mut acc = vec![0f32; rows * hd];
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let (mut kt, mut vt) = (vec![0f32; KEY_TILE * hd], vec![0f32; KEY_TILE * hd]);
    let mut scores = vec![0f32; rows * KEY_TILE];
    // The last query sees positions up to start + first + n - 1.
    let seen = start + first + n;
    for t0 in (0..seen).step_by(KEY_TILE) {
        let nk = KEY_TILE.min(seen - t0);
        // The tile's keys and values, a block's run of positions at a time.
        let mut p = t0;
        while p < t0 + nk {
            let run = (pools.block - p % pools.block).min(t0 + nk - p);
            let at = pools.at(s, g, p);
            let dst = (p - t0) * hd..(p - t0 + run) * hd;
            kt[dst.clone()].copy_from_slice(&pools.k[at..at + run * hd]);
            vt[dst].copy_from_slice(&pools.v[at..at + run * hd]);
            p += run;
        }
        // S = Q·Kᵀ: (rows, nk).
        gemm_into(
            &mut scores,
            false,
            (rows, nk, hd),
            &q,
            (hd, 1),
            &kt,
            (1, hd),
            false,
        );
        for i in 0..rows {
            // Query i sees the tile's positions up to its own.
            let pos = start + first + i / rep;
            let visible = (pos + 1).saturating_sub(t0).min(nk);
            let row = &mut scores[i * nk..(i + 1) * nk];
            let scale = online_softmax(row, visible, &mut max[i], &mut sum[i]);
            if scale != 1.0 {
                acc[i * hd..(i + 1) * hd]
                    .iter_mut()
                    .for_each(|x| *x *= scale);
            }
        }
        // O += P·V: (rows, hd).
        gemm_into(
            &mut acc,
            true,
            (rows, hd, nk),
            &scores,
            (nk, 1),
            &vt,
            (hd, 1),
            false,
        );
    }
    for jj in 0..n {
        for r in 0..rep {
            let i = jj * rep + r;
            let inv = 1.0 / sum[i];
            let dst = &mut o[(jj * h + g * rep + r) * hd..][..hd];
            for (d, a) in dst.iter_mut().zip(&acc[i * hd..(i + 1) * hd]) {
                *d = a * inv;
            }
        }
    }
}

simd!(
    /// One tile of a query's scores `row`, of which the first `visible` count: turns them into
    /// `exp(score - max)` (0 past `visible`) with `max` the running maximum, adds them to the
    /// running `sum`, and returns the factor by which what was accumulated under the old maximum
    /// must shrink.
    online_softmax, fn(row: &mut [f32], visible: usize, max: &mut f32, sum: &mut f32) -> f32 {
    // The maximum in sixteen lanes (a plain fold of `max` does not vectorise).
    let mut lanes = [*max; 16];
    let chunks = row[..visible].chunks_exact(16);
    let m = chunks.remainder().iter().fold(*max, |a, &b| a.max(b));
    for c in chunks {
        for j in 0..16 {
            lanes[j] = if c[j] > lanes[j] { c[j] } else { lanes[j] };
        }
    }
    let m = lanes.iter().fold(m, |a, &b| a.max(b));
    let scale = if m == *max { 1.0 } else { fast_exp(*max - m) };
    let mut s = 0f32;
    for x in row[..visible].iter_mut() {
        *x = fast_exp(*x - m);
        s += *x;
    }
    row[visible..].iter_mut().for_each(|x| *x = 0.0);
    *sum = *sum * scale + s;
    *max = m;
    scale
});

/// `a · b` in eight lanes (so the compiler vectorises it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
