//! Causal grouped-query attention straight from the fused `qkv` projection, in one operation with
//! its own backward pass.
//!
//! Forward, for each (batch row, KV head) block, on one thread: gather the block's queries (its
//! `rep` query heads stacked, `rep·l` rows), keys and values out of `qkv`, rotating queries and keys
//! (RoPE, half-split as transformers' `rotate_half`); `S = Q·Kᵀ`; `P = softmax(scale·S)` over the
//! keys each query may see (the rest 0); `O = P·V`, written straight into the (b·l, heads·head
//! size) layout the output projection reads. `P` is kept for the backward pass, which per block
//! computes `dP = dO·Vᵀ`, `dS = scale·P∘(dP − rowsum(dP∘P))`, `dQ = dS·K`, `dK = dSᵀ·Q`,
//! `dV = Pᵀ·dO`, rotates `dQ` and `dK` back and writes all three into one (b·l, width) gradient of
//! `qkv`. The products are the `gemm` crate's (candle's own CPU matrix products), one block per task.
//!
//! Against candle's operations this saves the graph nodes of the split heads, the scores, the
//! probabilities and the head merge, each of which autograd would give a zeroed gradient buffer and
//! an extra pass.

use super::{fast_exp, gemm_product as product, slice_f32};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// The shape of one attention call.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Batch rows and sequence length: `qkv` is (b·l, (heads + 2·kv_heads)·head_dim).
    pub b: usize,
    pub l: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores before the softmax (1/√head_dim).
    pub scale: f32,
    /// RoPE's `cos` and `sin` at positions 0..l, each (l, head_dim / 2) row-major.
    pub rope: Arc<(Vec<f32>, Vec<f32>)>,
}

/// Causal attention of `qkv` (b·l, width) as `a` describes: (b·l, heads·head_dim).
pub fn attention(qkv: &Tensor, a: &Attention) -> Result<Tensor> {
    let (rows, width) = qkv.dims2()?;
    let hd = a.head_dim;
    if a.kv_heads == 0 || !a.heads.is_multiple_of(a.kv_heads) || !hd.is_multiple_of(2) {
        candle_core::bail!(
            "attention: {} heads over {} KV heads of size {hd}",
            a.heads,
            a.kv_heads
        )
    }
    if rows != a.b * a.l || width != (a.heads + 2 * a.kv_heads) * hd {
        candle_core::bail!("attention: qkv {:?} for {a:?}", qkv.shape())
    }
    if a.rope.0.len() != a.l * hd / 2 || a.rope.1.len() != a.rope.0.len() {
        candle_core::bail!(
            "attention: rotation tables of {} for {} positions",
            a.rope.0.len(),
            a.l
        )
    }
    qkv.contiguous()?.apply_op1(AttentionOp {
        a: a.clone(),
        probs: Arc::new(Mutex::new(Vec::new())),
    })
}

/// Rotates one head's vector by the angles `(c, s)` (forward) or by their opposite (backward).
#[inline(always)]
fn rotate(src: &[f32], c: &[f32], s: &[f32], back: bool, dst: &mut [f32]) {
    let half = c.len();
    let (x1, x2) = src.split_at(half);
    let (y1, y2) = dst.split_at_mut(half);
    let sign = if back { -1.0 } else { 1.0 };
    for k in 0..half {
        let sk = sign * s[k];
        y1[k] = x1[k] * c[k] - x2[k] * sk;
        y2[k] = x2[k] * c[k] + x1[k] * sk;
    }
}

simd!(softmax_row, fn(s: &[f32], scale: f32, p: &mut [f32]) {
    let max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for (p, &s) in p.iter_mut().zip(s) {
        *p = fast_exp(scale * (s - max));
    }
    let inv = 1.0 / p.iter().sum::<f32>();
    for p in p.iter_mut() {
        *p *= inv;
    }
});

simd!(softmax_row_grad, fn(p: &[f32], dp: &[f32], scale: f32, ds: &mut [f32]) {
    let dot: f32 = p.iter().zip(dp).map(|(a, b)| a * b).sum();
    for ((ds, &p), &dp) in ds.iter_mut().zip(p).zip(dp) {
        *ds = scale * p * (dp - dot);
    }
});

impl Attention {
    fn rep(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Block (`bi`, `g`)'s queries (rep·l, hd; row `r·l + p` is query head `g·rep + r` at
    /// position `p`), keys and values (l, hd), rotated, out of `qkv`.
    fn gather(&self, qkv: &[f32], bi: usize, g: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (l, hd, rep, w) = (self.l, self.head_dim, self.rep(), self.width());
        let half = hd / 2;
        let (mut q, mut k, mut v) = (
            vec![0f32; rep * l * hd],
            vec![0f32; l * hd],
            vec![0f32; l * hd],
        );
        for p in 0..l {
            let row = &qkv[(bi * l + p) * w..(bi * l + p + 1) * w];
            let (c, s) = (
                &self.rope.0[p * half..(p + 1) * half],
                &self.rope.1[p * half..(p + 1) * half],
            );
            for r in 0..rep {
                let col = (g * rep + r) * hd;
                rotate(
                    &row[col..col + hd],
                    c,
                    s,
                    false,
                    &mut q[(r * l + p) * hd..(r * l + p + 1) * hd],
                );
            }
            let col = (self.heads + g) * hd;
            rotate(
                &row[col..col + hd],
                c,
                s,
                false,
                &mut k[p * hd..(p + 1) * hd],
            );
            let col = (self.heads + self.kv_heads + g) * hd;
            v[p * hd..(p + 1) * hd].copy_from_slice(&row[col..col + hd]);
        }
        (q, k, v)
    }
}

struct AttentionOp {
    a: Attention,
    /// The probabilities of every block, kept by the forward pass for the backward one.
    probs: Arc<Mutex<Vec<f32>>>,
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(&self, st: &CpuStorage, lay: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice_f32(st, lay, "attention")?;
        let a = &self.a;
        let (b, l, hd, rep, kvh) = (a.b, a.l, a.head_dim, a.rep(), a.kv_heads);
        let rl = rep * l;
        let mut probs = vec![0f32; b * kvh * rl * l];
        // Each block: its probabilities in place, its output (rep·l, hd) returned.
        let outs: Vec<Vec<f32>> = probs
            .par_chunks_mut(rl * l)
            .enumerate()
            .map(|(blk, pr)| {
                let (q, k, v) = a.gather(qkv, blk / kvh, blk % kvh);
                let s = product((rl, l, hd), &q, (hd, 1), &k, (1, hd), false);
                for (i, (s, p)) in s.chunks(l).zip(pr.chunks_mut(l)).enumerate() {
                    let seen = i % l + 1;
                    softmax_row(&s[..seen], a.scale, &mut p[..seen]);
                }
                product((rl, hd, l), pr, (l, 1), &v, (hd, 1), false)
            })
            .collect();
        // (b·l, heads·hd): row bi·l + p, columns of query head g·rep + r.
        let ow = a.heads * hd;
        let mut out = vec![0f32; b * l * ow];
        out.par_chunks_mut(l * ow)
            .enumerate()
            .for_each(|(bi, rows)| {
                for g in 0..kvh {
                    let o = &outs[bi * kvh + g];
                    for r in 0..rep {
                        for p in 0..l {
                            let dst = p * ow + (g * rep + r) * hd;
                            rows[dst..dst + hd]
                                .copy_from_slice(&o[(r * l + p) * hd..(r * l + p + 1) * hd]);
                        }
                    }
                }
            });
        if let Ok(mut keep) = self.probs.lock() {
            *keep = probs;
        }
        Ok((CpuStorage::F32(out), Shape::from((b * l, ow))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, d: &Tensor) -> Result<Option<Tensor>> {
        let probs = std::mem::take(
            &mut *self
                .probs
                .lock()
                .map_err(|_| candle_core::Error::Msg("attention: poisoned lock".into()))?,
        );
        let op = AttentionGrad {
            a: self.a.clone(),
            probs: Mutex::new(probs),
        };
        Ok(Some(qkv.apply_op2_no_bwd(&d.contiguous()?, &op)?))
    }
}

/// The gradient of [`AttentionOp`] with respect to `qkv`, from `qkv` and the output's gradient.
struct AttentionGrad {
    a: Attention,
    probs: Mutex<Vec<f32>>,
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "fused-causal-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = slice_f32(s1, l1, "attention")?;
        let dout = slice_f32(s2, l2, "attention")?;
        let a = &self.a;
        let (b, l, hd, rep, kvh) = (a.b, a.l, a.head_dim, a.rep(), a.kv_heads);
        let (rl, ow, w) = (rep * l, a.heads * hd, a.width());
        let probs = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("attention: poisoned lock".into()))?;
        if probs.len() != b * kvh * rl * l || dout.len() != b * l * ow {
            candle_core::bail!("attention: backward without its forward")
        }
        // Each block: (dQ (rep·l, hd), dK (l, hd), dV (l, hd)), not yet rotated back.
        let grads: Vec<[Vec<f32>; 3]> = probs
            .par_chunks(rl * l)
            .enumerate()
            .map(|(blk, pr)| {
                let (bi, g) = (blk / kvh, blk % kvh);
                let (q, k, v) = a.gather(qkv, bi, g);
                let mut d_o = vec![0f32; rl * hd];
                for r in 0..rep {
                    for p in 0..l {
                        let src = (bi * l + p) * ow + (g * rep + r) * hd;
                        d_o[(r * l + p) * hd..(r * l + p + 1) * hd]
                            .copy_from_slice(&dout[src..src + hd]);
                    }
                }
                let dp = product((rl, l, hd), &d_o, (hd, 1), &v, (1, hd), false);
                let mut ds = vec![0f32; rl * l];
                for (i, ((p, dp), ds)) in pr
                    .chunks(l)
                    .zip(dp.chunks(l))
                    .zip(ds.chunks_mut(l))
                    .enumerate()
                {
                    let seen = i % l + 1;
                    softmax_row_grad(&p[..seen], &dp[..seen], a.scale, &mut ds[..seen]);
                }
                let dq = product((rl, hd, l), &ds, (l, 1), &k, (hd, 1), false);
                let dk = product((l, hd, rl), &ds, (1, l), &q, (hd, 1), false);
                let dv = product((l, hd, rl), pr, (1, l), &d_o, (hd, 1), false);
                [dq, dk, dv]
            })
            .collect();
        let half = hd / 2;
        let mut out = vec![0f32; b * l * w];
        out.par_chunks_mut(l * w)
            .enumerate()
            .for_each(|(bi, rows)| {
                for p in 0..l {
                    let row = &mut rows[p * w..(p + 1) * w];
                    let (c, s) = (
                        &a.rope.0[p * half..(p + 1) * half],
                        &a.rope.1[p * half..(p + 1) * half],
                    );
                    for g in 0..kvh {
                        let [dq, dk, dv] = &grads[bi * kvh + g];
                        for r in 0..rep {
                            let col = (g * rep + r) * hd;
                            rotate(
                                &dq[(r * l + p) * hd..(r * l + p + 1) * hd],
                                c,
                                s,
                                true,
                                &mut row[col..col + hd],
                            );
                        }
                        let col = (a.heads + g) * hd;
                        rotate(
                            &dk[p * hd..(p + 1) * hd],
                            c,
                            s,
                            true,
                            &mut row[col..col + hd],
                        );
                        let col = (a.heads + kvh + g) * hd;
                        row[col..col + hd].copy_from_slice(&dv[p * hd..(p + 1) * hd]);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b * l, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{input, max_diff};
    use super::*;
    use candle_core::{Device, Var, D};

    /// Against candle's operations (split, rotate, repeat K/V per query head, masked softmax,
    /// merge): the same output and the same gradient of `qkv`, with 2 query heads per KV head.
    #[test]
    fn matches_candle_operations() {
        let dev = Device::Cpu;
        let (b, l, h, kvh, hd) = (2, 5, 4, 2, 6);
        let w = (h + 2 * kvh) * hd;
        let qkv = Var::from_vec(input(b * l * w, 1), (b * l, w), &dev).unwrap();
        let cos: Vec<f32> = input(l * hd / 2, 2).iter().map(|v| v.cos()).collect();
        let sin: Vec<f32> = input(l * hd / 2, 2).iter().map(|v| v.sin()).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let shape = Attention {
            b,
            l,
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
            scale,
            rope: Arc::new((cos.clone(), sin.clone())),
        };
        let a = attention(&qkv, &shape).unwrap();

        let cos = Tensor::from_vec(cos, (l, hd / 2), &dev).unwrap();
        let sin = Tensor::from_vec(sin, (l, hd / 2), &dev).unwrap();
        let x = qkv.reshape((b, l, h + 2 * kvh, hd)).unwrap();
        let part = |first, count| {
            x.narrow(2, first, count)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = candle_nn::rotary_emb::rope_slow(&part(0, h), &cos, &sin).unwrap();
        let k = candle_nn::rotary_emb::rope_slow(&part(h, kvh), &cos, &sin).unwrap();
        let v = part(h + kvh, kvh);
        // Query head i reads KV head i / (h / kvh).
        let repeat = |t: &Tensor| {
            let heads: Vec<Tensor> = (0..h)
                .map(|i| t.narrow(1, i / (h / kvh), 1).unwrap())
                .collect();
            Tensor::cat(&heads, 1).unwrap()
        };
        let (k, v) = (repeat(&k), repeat(&v));
        let mask: Vec<f32> = (0..l * l)
            .map(|i| {
                if i % l <= i / l {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (l, l), &dev).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale as f64)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let want = probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b * l, h * hd))
            .unwrap();

        assert_eq!(a.dims(), want.dims());
        assert!(
            max_diff(&a, &want) < 1e-5,
            "outputs differ by {}",
            max_diff(&a, &want)
        );
        let weigh = Tensor::from_vec(input(b * l * h * hd, 3), (b * l, h * hd), &dev).unwrap();
        let ga = (&a * &weigh)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (&want * &weigh)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (ga, gb) = (ga.get(&qkv).unwrap(), gb.get(&qkv).unwrap());
        assert!(
            max_diff(ga, gb) < 1e-5,
            "gradients differ by {}",
            max_diff(ga, gb)
        );
    }
}
