//! Fused CPU operations with their own backward pass, for training on the CPU.
//!
//! candle's autograd runs every element-wise operation as a separate pass over memory, and for each
//! node of the graph adds the gradient into a fresh zero tensor; its fused operations
//! (`rms_norm`, `softmax_last_dim`, `rope`) have no backward at all. A small model's step is then
//! mostly bookkeeping around its matrix products. Each operation here does one layer function in
//! one pass forward and one pass backward:
//!
//! - [`rms_norm`]: `x / rms(x) * w`, its backward giving both `dx` and `dw`;
//! - [`attention`]: causal grouped-query attention with RoPE, from the fused `qkv` projection to
//!   the output projection's input, its probabilities kept for the backward pass;
//! - [`mlp`]: Phi-3's MLP (the fused `gate_up` projection, SwiGLU, the down projection) in one
//!   operation, its two intermediates kept out of the graph;
//! - [`linear`]: `x · wᵀ` whose backward gives `w` its gradient in `w`'s own layout (candle's
//!   `matmul(w.t())` makes the transposed view a node of its own, with its own gradient buffer).
//!
//! They take f32 on the CPU only; [`fused`] says when they apply (elsewhere the model runs candle's
//! decomposed operations, which autograd follows on any device).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Whether the fused operations can run on `t`: f32 on the CPU.
pub fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn slice_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// e^x to within about 2 ulp for x in [-87, 88] (Cephes' expf: range reduction by ln 2, a
/// degree-6 polynomial); below -87 it returns about 0. Branch-free and without float-to-integer
/// conversions (Rust's saturating `as` does not vectorise): `n = round(x / ln 2)` comes from adding
/// 1.5·2²³, whose float then holds `n` in its low mantissa bits, which become 2ⁿ's exponent.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let k = x.mul_add(std::f32::consts::LOG2_E, SHIFTER);
    let n = k - SHIFTER;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 5e-1);
    let p = (p * r).mul_add(r, r) + 1.0;
    // k's bits are 0x4B40_0000 + n; shifted by 23 only n + 127, the biased exponent, remains.
    let bits = k.to_bits().wrapping_add(127) << 23;
    p * f32::from_bits(bits)
}

/// Runs the body compiled for AVX-512 or for AVX2 and FMA where the CPU has them (the loops then
/// vectorise to the CPU's width, with fused multiply-adds), plainly elsewhere.
macro_rules! simd {
    ($(#[$m:meta])* $vis:vis $name:ident, fn($($a:ident: $t:ty),*) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide($($a: $t),*) $(-> $r)? $body
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($a: $t),*) $(-> $r)? $body
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features `wide` is compiled for.
                    return unsafe { wide($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `fast` is compiled for.
                    return unsafe { fast($($a),*) };
                }
            }
            $body
        }
    };
}
pub(crate) use simd;

/// `A·B` (m×n, row-major, a new buffer) with `A(i,p) = a[i·ars + p·acs]` and
/// `B(p,j) = b[p·brs + j·bcs]`: the `gemm` crate's product (candle's own on the CPU), on the
/// calling thread or (`parallel`) on rayon's.
fn gemm_product(
    mnk: (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    parallel: bool,
) -> Vec<f32> {
    let mut c = vec![0f32; mnk.0 * mnk.1];
    gemm_into(&mut c, false, mnk, a, a_strides, b, b_strides, parallel);
    c
}

/// `dst += A·B` (`accumulate`) or `dst = A·B`, `dst` m×n row-major, the operands as
/// [`gemm_product`] takes them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (ars, acs): (usize, usize),
    b: &[f32],
    (brs, bcs): (usize, usize),
    parallel: bool,
) {
    assert!(dst.len() >= m * n, "a matrix product past its output");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(m, ars, k, acs) < a.len() && last(k, brs, n, bcs) < b.len(),
        "a matrix product outside its operands"
    );
    // SAFETY: every element read is inside `a` or `b`, every one written inside `dst` (both
    // checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            acs as isize,
            ars as isize,
            b.as_ptr(),
            bcs as isize,
            brs as isize,
            // dst × 1 (when read) + A·B × 1.
            1.0,
            1.0,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(rayon::current_num_threads())
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

const LANES: usize = 16;

simd!(
    /// `log(sum(exp(row)))`, stable (the maximum subtracted first), in two vectorised passes.
    pub log_sum_exp, fn(row: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            m[j] = if c[j] > m[j] { c[j] } else { m[j] };
        }
    }
    let mut max = rest.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for v in m {
        max = max.max(v);
    }
    if !max.is_finite() {
        return max;
    }
    let mut s = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            s[j] += fast_exp(c[j] - max);
        }
    }
    let mut sum: f32 = rest.iter().map(|&x| fast_exp(x - max)).sum();
    sum += s.iter().sum::<f32>();
    max + sum.ln()
});

simd!(
    /// `row = exp(row - shift) * scale`, in place: with `shift` the row's [`log_sum_exp`], its
    /// softmax times `scale`.
    pub exp_scaled, fn(row: &mut [f32], shift: f32, scale: f32) {
    for x in row.iter_mut() {
        *x = fast_exp(*x - shift) * scale;
    }
});

mod attention;
mod linear;
mod mlp;
pub use attention::{attention, Attention};
pub use linear::{linear, product};
pub use mlp::{mlp, silu_mul};

// ---------------------------------------------------------------------------------------------
// RMS norm

/// `x / sqrt(mean(x²) + eps) * w` over the last dimension of `x`; `w` has that dimension's size.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

#[inline(always)]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

simd!(norm_row, fn(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let a = inv_rms(x, eps);
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
        *y = x * a * w;
    }
});

// One row's `dx` (into `dx`) and its share of `dw` (added into `dw`).
simd!(norm_row_grad, fn(x: &[f32], w: &[f32], dy: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32]) {
    let a = inv_rms(x, eps);
    let dot: f32 = x.iter().zip(w).zip(dy).map(|((x, w), g)| x * w * g).sum();
    let c = a * a * a * dot / x.len() as f32;
    for i in 0..x.len() {
        dx[i] = a * w[i] * dy[i] - c * x[i];
        dw[i] += dy[i] * x[i] * a;
    }
});

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            slice_f32(s1, l1, "rms norm")?,
            slice_f32(s2, l2, "rms norm")?,
        );
        let d = w.len();
        if l1.shape().dims().last() != Some(&d) {
            candle_core::bail!("rms norm: {:?} against a weight of {d}", l1.shape())
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(y, x)| norm_row(x, w, self.eps, y));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count() / w.elem_count();
        // One pass writes `dx` in rows 0..n and `dw` in row n.
        let packed = x.apply_op2_no_bwd(
            &dy.contiguous()?,
            &RmsNormGrad {
                w: w.flatten_all()?.to_vec1::<f32>()?,
                eps: self.eps,
            },
        )?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, 1)?.reshape(w.shape())?.contiguous()?;
        Ok((Some(dx), Some(dw)))
    }
}

struct RmsNormGrad {
    w: Vec<f32>,
    eps: f32,
}

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (
            slice_f32(s1, l1, "rms norm")?,
            slice_f32(s2, l2, "rms norm")?,
        );
        let d = self.w.len();
        let n = x.len() / d;
        let mut out = vec![0f32; (n + 1) * d];
        let (dx, dw_out) = out.split_at_mut(n * d);
        // Rows in blocks, each block summing its own `dw`, then the blocks' sums added.
        let block = n.div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(block * d)
            .zip(x.par_chunks(block * d).zip(dy.par_chunks(block * d)))
            .map(|(dx, (x, dy))| {
                let mut dw = vec![0f32; d];
                for ((dx, x), dy) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)) {
                    norm_row_grad(x, &self.w, dy, self.eps, dx, &mut dw);
                }
                dw
            })
            .collect();
        for p in partial {
            for (o, v) in dw_out.iter_mut().zip(p) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n + 1, d))))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// (sigmoid(g), silu(g)).
#[inline(always)]
fn sig_silu(g: f32) -> (f32, f32) {
    let e = fast_exp(-g.abs());
    let s = if g >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    };
    (s, g * s)
}

simd!(swiglu_row, fn(gu: &[f32], out: &mut [f32]) {
    let (g, u) = gu.split_at(out.len());
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = sig_silu(g).1 * u;
    }
});

simd!(swiglu_row_grad, fn(gu: &[f32], d: &[f32], dgu: &mut [f32]) {
    let i = d.len();
    let (g, u) = gu.split_at(i);
    let (dg, du) = dgu.split_at_mut(i);
    for k in 0..i {
        let (s, silu) = sig_silu(g[k]);
        du[k] = d[k] * silu;
        dg[k] = d[k] * u[k] * (s + silu * (1.0 - s));
    }
});

/// SwiGLU's gradient with respect to `gu` (…, 2i), from `gu` and the gradient of `silu(gate) · up`
/// (…, i).
struct SwigluGrad;

impl CustomOp2 for SwigluGrad {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gu = slice_f32(s1, l1, "swiglu")?;
        let d = slice_f32(s2, l2, "swiglu")?;
        let w = *l1.shape().dims().last().unwrap_or(&0);
        let mut out = vec![0f32; gu.len()];
        out.par_chunks_mut(w)
            .zip(gu.par_chunks(w).zip(d.par_chunks(w / 2)))
            .for_each(|(dgu, (gu, d))| swiglu_row_grad(gu, d, dgu));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Inputs and comparisons for the operations' tests.
#[cfg(test)]
mod test_util {
    use candle_core::Tensor;

    /// `n` values spread over about [-2.6, 2.7], different for each `seed`.
    pub fn input(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 31) % 211) as f32 / 40.0 - 2.6)
            .collect()
    }

    /// The largest absolute difference of two tensors of one shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all());
        d.and_then(|d| d.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{input, max_diff};
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..4200 {
            let x = -80.0 + i as f32 * 0.04;
            let (a, b) = (fast_exp(x), x.exp());
            assert!((a - b).abs() <= 4e-7 * b, "{x}: {a} vs {b}");
        }
        assert!(fast_exp(-1000.0) < 1e-37);
    }

    #[test]
    fn silu_mul_matches_candles_operations() {
        let dev = Device::Cpu;
        // Past a chunk, so several tasks share the work; gates of both signs, some large.
        let n = 3 * 16_384 + 5;
        let gate =
            Tensor::from_vec(input(n, 3).iter().map(|v| v * 9.0).collect(), n, &dev).unwrap();
        let up = Tensor::from_vec(input(n, 5), n, &dev).unwrap();
        let want = (&up * candle_nn::ops::silu(&gate).unwrap()).unwrap();
        let got = silu_mul(&gate, &up).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        assert!(silu_mul(&gate, &up.narrow(0, 0, 4).unwrap()).is_err());
    }

    /// Each operation against its decomposed form: the same values and the same gradient.
    #[test]
    fn ops_match_their_decomposed_forms() {
        let dev = Device::Cpu;
        let weigh = |t: &Tensor| {
            let w = Tensor::from_vec(input(t.elem_count(), 9), t.shape(), &dev).unwrap();
            (t * w).unwrap().sum_all().unwrap()
        };
        // RMS norm: dx and dw.
        let x = Var::from_vec(input(5 * 12, 1), (5, 12), &dev).unwrap();
        let w = Var::from_vec(input(12, 2), 12, &dev).unwrap();
        let a = rms_norm(&x, &w, 1e-5).unwrap();
        let b = candle_nn::ops::rms_norm_slow(&x, &w, 1e-5).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
        let (ga, gb) = (weigh(&a).backward().unwrap(), weigh(&b).backward().unwrap());
        for v in [&x, &w] {
            let d = max_diff(ga.get(v).unwrap(), gb.get(v).unwrap());
            assert!(d < 1e-4, "rms norm gradient differs by {d}");
        }
        // SwiGLU, large gates of both signs included.
        let gu = Var::from_vec(
            input(4 * 10, 4).iter().map(|v| v * 9.0).collect(),
            (4, 10),
            &dev,
        )
        .unwrap();
        let rows = gu.as_tensor().to_vec2::<f32>().unwrap();
        let a: Vec<f32> = rows
            .iter()
            .flat_map(|r| {
                let mut o = vec![0f32; 5];
                swiglu_row(r, &mut o);
                o
            })
            .collect();
        let a = Tensor::from_vec(a, (4, 5), &dev).unwrap();
        let (g, u) = (gu.narrow(1, 0, 5).unwrap(), gu.narrow(1, 5, 5).unwrap());
        let b = (g.silu().unwrap() * u).unwrap();
        assert!(max_diff(&a, &b) < 1e-4);
        // The gradient of `weigh` with respect to SwiGLU's output is its weights.
        let d = Tensor::from_vec(input(4 * 5, 9), (4, 5), &dev).unwrap();
        let ga = gu.apply_op2_no_bwd(&d, &SwigluGrad).unwrap();
        let gb = weigh(&b).backward().unwrap();
        assert!(max_diff(&ga, gb.get(&gu).unwrap()) < 1e-4);
    }
}
