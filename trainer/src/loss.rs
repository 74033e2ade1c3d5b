//! Cross-entropy with a loss mask: `sum_i w_i * (logsumexp(x_i) - x_i[t_i]) / denom`.
//!
//! candle's `cross_entropy` has no ignore index, so the weights (1 where a target counts, 0 where
//! the mask hides it) multiply the per-token losses here. On the CPU one custom operation computes
//! the per-row log-sum-exp in two vectorised passes over the logits and its backward writes the
//! gradient `w_i * (softmax(x_i) - onehot(t_i))` in one more (decomposed candle operations make
//! about ten passes over the (tokens × vocabulary) logits, which at Phi-4's vocabulary is most of a
//! small model's step). Elsewhere (CUDA) the decomposed operations run; a test checks that both
//! agree in value and gradient.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, InplaceOp1, Layout, Result, Shape, Tensor, D,
};
use engines::train_ops::{self, exp_scaled, log_sum_exp};
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

/// [`masked_cross_entropy`] of the logits `hidden · weightᵀ`, with `hidden` (N, H) and `weight`
/// (V, H) f32: the output projection and the loss in one. On the CPU its backward pass goes from
/// the loss to the gradients of `hidden` and `weight` without the logits' gradient becoming a node
/// of candle's graph; elsewhere it is the projection followed by [`masked_cross_entropy`].
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    weights: &[f32],
    denom: f32,
) -> Result<Tensor> {
    let (n, _) = hidden.dims2()?;
    let (v, _) = weight.dims2()?;
    if !(train_ops::fused(hidden) && train_ops::fused(weight)) {
        return masked_cross_entropy(&hidden.matmul(&weight.t()?)?, targets, weights, denom);
    }
    if targets.len() != n || weights.len() != n {
        candle_core::bail!("cross-entropy: {n} rows, {} targets", targets.len())
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross-entropy: target {t} outside the vocabulary of {v}")
    }
    let logits = train_ops::linear(&hidden.detach(), &weight.detach())?;
    let op = LinearXent(FusedXent {
        targets: Arc::new(targets.to_vec()),
        weights: Arc::new(weights.to_vec()),
        lse: Arc::new(Mutex::new(Vec::new())),
    });
    let per_row = hidden.apply_op3(weight, &logits, op)?;
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
        self.rows(contiguous_f32(s, l)?, n, v)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.logits_grad(arg, grad_res, false)?))
    }
}

impl FusedXent {
    /// Each row's weighted loss, keeping its log-sum-exp for the backward pass.
    fn rows(&self, x: &[f32], n: usize, v: usize) -> Result<(CpuStorage, Shape)> {
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

    /// The gradient with respect to the `logits` (N, V), given the rows' gradient `grad_res` (N):
    /// a new tensor, or (`in_place`) written over `logits`, which nothing may read afterwards.
    fn logits_grad(&self, logits: &Tensor, grad_res: &Tensor, in_place: bool) -> Result<Tensor> {
        let g = grad_res.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let lse = self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("cross-entropy: poisoned lock".into()))?
            .clone();
        let op = XentGrad {
            targets: self.targets.clone(),
            scale: g
                .iter()
                .zip(self.weights.iter())
                .map(|(g, w)| g * w)
                .collect(),
            lse,
        };
        if in_place {
            logits.inplace_op1(&op)?;
            Ok(logits.clone())
        } else {
            logits.apply_op1_no_bwd(&op)
        }
    }
}

/// [`FusedXent`] over the logits `hidden · weightᵀ`, given (detached) as the third argument:
/// the backward pass turns the logits' gradient straight into the gradients of `hidden` and
/// `weight` (two matrix products), so that no (N × V) gradient is ever a node of the graph (candle
/// would add each into a fresh zero tensor: two more passes over the largest tensor of the step).
struct LinearXent(FusedXent);

impl CustomOp3 for LinearXent {
    fn name(&self) -> &'static str {
        "masked-linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l3.shape().dims2()?;
        self.0.rows(contiguous_f32(s3, l3)?, n, v)
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        logits: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The logits are this operation's own (detached, made for it): overwritten by their
        // gradient, with no new (N, V) buffer.
        let d = self.0.logits_grad(logits, grad_res, true)?; // (N, V)
        let dh = train_ops::product(&d, weight, false)?; // (N, H)
        let dw = train_ops::product(&d, hidden, true)?; // (V, H)
        Ok((Some(dh), Some(dw), None))
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
        let (_, v) = l.shape().dims2()?;
        let mut out = contiguous_f32(s, l)?.to_vec();
        self.overwrite(&mut out, v)?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

impl InplaceOp1 for XentGrad {
    fn name(&self) -> &'static str {
        "masked-cross-entropy-grad-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let (_, v) = l.shape().dims2()?;
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("cross-entropy: logits must be contiguous")
        };
        match s {
            CpuStorage::F32(x) => self.overwrite(&mut x[a..b], v),
            _ => candle_core::bail!("cross-entropy: f32 logits expected"),
        }
    }
}

impl XentGrad {
    /// Replaces the logits `x` (rows of `v`) by their gradient.
    fn overwrite(&self, x: &mut [f32], v: usize) -> Result<()> {
        if self.lse.len() * v != x.len() {
            candle_core::bail!("cross-entropy: backward before forward")
        }
        x.par_chunks_mut(v).enumerate().for_each(|(i, row)| {
            let s = self.scale[i];
            if s == 0.0 {
                row.fill(0.0);
            } else {
                exp_scaled(row, self.lse[i], s);
                row[self.targets[i] as usize] -= s;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The projection fused with the loss against the projection followed by the loss: same
    /// loss, same gradients for the hidden states and the weight.
    #[test]
    fn linear_matches_projection_then_loss() {
        let dev = Device::Cpu;
        let (n, h, v) = (5, 8, 23);
        let hv: Vec<f32> = (0..n * h)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let wv: Vec<f32> = (0..v * h)
            .map(|i| ((i * 53 % 31) as f32 - 15.0) / 11.0)
            .collect();
        let hidden = Var::from_vec(hv, (n, h), &dev).unwrap();
        let weight = Var::from_vec(wv, (v, h), &dev).unwrap();
        let (targets, weights) = ([1u32, 22, 0, 7, 7], [1.0f32, 1.0, 0.0, 1.0, 1.0]);
        let a = linear_cross_entropy(&hidden, &weight, &targets, &weights, 4.0).unwrap();
        let logits = hidden.matmul(&weight.t().unwrap()).unwrap();
        let b = masked_cross_entropy(&logits, &targets, &weights, 4.0).unwrap();
        let (la, lb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        assert!((la - lb).abs() < 1e-5 * lb.abs(), "{la} vs {lb}");
        let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
        for var in [&hidden, &weight] {
            let (x, y) = (ga.get(var).unwrap(), gb.get(var).unwrap());
            let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "gradient differs by {d}");
        }
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
