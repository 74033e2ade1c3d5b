//! Cross-entropy with a loss mask: `sum_i w_i * (logsumexp(x_i) - x_i[t_i]) / denom`.
//!
//! candle's `cross_entropy` has no ignore index, so the weights (1 where a target counts, 0 where
//! the mask hides it) multiply the per-token losses here. On the CPU one custom operation computes
//! the per-row log-sum-exp in two vectorised passes over the logits and its backward writes the
//! gradient `w_i * (softmax(x_i) - onehot(t_i))` in one more (decomposed candle operations make
//! about ten passes over the (tokens × vocabulary) logits, which at Phi-4's vocabulary is most of a
//! small model's step). Elsewhere (CUDA) the decomposed operations run; a test checks that both
//! agree in value and gradient.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// The masked mean cross-entropy of `logits` (N, V) f32 against `targets` (N); `weights` (N) are
/// 1 or 0 (any non-negative weight works); the sum is divided by `denom` (the count of targets of
/// the whole optimizer step, so that accumulated micro-batches add up to one batch's mean).
pub fn masked_cross_entropy(
    logits: &Tensor,
    targets: &[u32],
    weights: &[f32],
    denom: f32,
) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n || weights.len() != n {
        candle_core::bail!("cross-entropy: {n} rows, {} targets", targets.len())
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross-entropy: target {t} outside the vocabulary of {v}")
    }
    let logits = logits.to_dtype(DType::F32)?;
    let per_row = if logits.device().is_cpu() {
        logits.contiguous()?.apply_op1(FusedXent {
            targets: Arc::new(targets.to_vec()),
            weights: Arc::new(weights.to_vec()),
            lse: Arc::new(Mutex::new(Vec::new())),
        })?
    } else {
        decomposed_rows(&logits, targets, weights)?
    };
    per_row.sum_all()? / denom.max(1e-12) as f64
}

/// `w_i * (logsumexp(x_i) - x_i[t_i])` per row, by candle's operations (any device).
pub fn decomposed_rows(logits: &Tensor, targets: &[u32], weights: &[f32]) -> Result<Tensor> {
    let dev = logits.device();
    let n = targets.len();
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let t = Tensor::from_slice(targets, (n, 1), dev)?;
    let picked = logp.gather(&t, 1)?.squeeze(1)?;
    let w = Tensor::from_slice(weights, n, dev)?;
    (picked * w)?.neg()
}

struct FusedXent {
    targets: Arc<Vec<u32>>,
    weights: Arc<Vec<f32>>,
    /// Each row's log-sum-exp, kept by the forward pass for the backward one.
    lse: Arc<Mutex<Vec<f32>>>,
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("cross-entropy: logits must be contiguous"),
    }
}

impl CustomOp1 for FusedXent {
    fn name(&self) -> &'static str {
        "masked-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        let x = contiguous_f32(s, l)?;
        let rows: Vec<(f32, f32)> = x
            .par_chunks(v)
            .zip(self.targets.par_iter().zip(self.weights.par_iter()))
            .map(|(row, (&t, &w))| {
                let lse = log_sum_exp(row);
                let loss = if w == 0.0 {
                    0.0
                } else {
                    w * (lse - row[t as usize])
                };
                (loss, lse)
            })
            .collect();
        let (loss, lse): (Vec<f32>, Vec<f32>) = rows.into_iter().unzip();
        if let Ok(mut keep) = self.lse.lock() {
            *keep = lse;
        }
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let lse = self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("cross-entropy: poisoned lock".into()))?
            .clone();
        let grad = arg.apply_op1_no_bwd(&XentGrad {
            targets: self.targets.clone(),
            scale: g
                .iter()
                .zip(self.weights.iter())
                .map(|(g, w)| g * w)
                .collect(),
            lse,
        })?;
        Ok(Some(grad))
    }
}

/// The gradient of [`FusedXent`] with respect to the logits.
struct XentGrad {
    targets: Arc<Vec<u32>>,
    /// The incoming gradient times the row's weight.
    scale: Vec<f32>,
    lse: Vec<f32>,
}

impl CustomOp1 for XentGrad {
    fn name(&self) -> &'static str {
        "masked-cross-entropy-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        let x = contiguous_f32(s, l)?;
        if self.lse.len() != n {
            candle_core::bail!("cross-entropy: backward before forward")
        }
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .enumerate()
            .for_each(|(i, (o, row))| {
                let s = self.scale[i];
                if s != 0.0 {
                    softmax_scaled(row, self.lse[i], s, o);
                    o[self.targets[i] as usize] -= s;
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// log(sum(exp(row))), stable.
fn log_sum_exp(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { log_sum_exp_avx2(row) };
    }
    log_sum_exp_generic(row)
}

/// `out = exp(row - lse) * scale`.
fn softmax_scaled(row: &[f32], lse: f32, scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: as above.
        return unsafe { softmax_scaled_avx2(row, lse, scale, out) };
    }
    softmax_scaled_generic(row, lse, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn log_sum_exp_avx2(row: &[f32]) -> f32 {
    log_sum_exp_generic(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_scaled_avx2(row: &[f32], lse: f32, scale: f32, out: &mut [f32]) {
    softmax_scaled_generic(row, lse, scale, out)
}

const LANES: usize = 16;

#[inline(always)]
fn log_sum_exp_generic(row: &[f32]) -> f32 {
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
}

#[inline(always)]
fn softmax_scaled_generic(row: &[f32], lse: f32, scale: f32, out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(row) {
        *o = fast_exp(x - lse) * scale;
    }
}

/// e^x for x ≤ 0 to within about 2 ulp (Cephes' expf: range reduction by ln 2, a degree-6
/// polynomial), branch-free so that the loops above vectorise. Below -87 it returns 0.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 5e-1);
    let p = (p * r).mul_add(r, r) + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..2000 {
            let x = -80.0 + i as f32 * 0.04;
            let (a, b) = (fast_exp(x), x.exp());
            assert!((a - b).abs() <= 4e-7 * b, "{x}: {a} vs {b}");
        }
        assert!(fast_exp(-1000.0) < 1e-37);
    }

    /// The fused CPU operation against log_softmax + gather + masked mean: same loss, same
    /// gradient; masked rows contribute nothing.
    #[test]
    fn fused_matches_decomposed() {
        let dev = Device::Cpu;
        let (n, v) = (6, 37);
        let x: Vec<f32> = (0..n * v)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 9.0)
            .collect();
        let targets = [3u32, 0, 36, 5, 5, 20];
        let weights = [1.0f32, 0.0, 1.0, 1.0, 0.0, 1.0];
        let var = Var::from_vec(x, (n, v), &dev).unwrap();
        let fused = masked_cross_entropy(var.as_tensor(), &targets, &weights, 4.0).unwrap();
        let g1 = fused.backward().unwrap();
        let plain = (decomposed_rows(var.as_tensor(), &targets, &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            / 4.0)
            .unwrap();
        let g2 = plain.backward().unwrap();
        let (a, b) = (
            fused.to_scalar::<f32>().unwrap(),
            plain.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
        let d = (g1.get(var.as_tensor()).unwrap() - g2.get(var.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "gradient differs by {d}");
        // A masked row has no gradient.
        let g = g1.get(var.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!(g[1].iter().all(|&x| x == 0.0));
        // Uniform logits: the loss is ln V.
        let flat = Tensor::zeros((2, v), DType::F32, &dev).unwrap();
        let l = masked_cross_entropy(&flat, &[1, 2], &[1.0, 1.0], 2.0).unwrap();
        assert!((l.to_scalar::<f32>().unwrap() - (v as f32).ln()).abs() < 1e-5);
    }
}
