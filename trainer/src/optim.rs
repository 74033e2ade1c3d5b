//! AdamW with f32 moments, the learning-rate schedule, and clipping by global norm.
//!
//! candle's own `AdamW` keeps its moments in the parameters' dtype and has no schedule or
//! clipping; here the parameters are always the f32 master weights (a bf16 run computes on a
//! converted copy) and both moments are f32. Each parameter's state is one f32 tensor of twice its
//! size (first moment, then second). On the CPU the update is two fused in-place passes (moments,
//! then weights); elsewhere it runs as candle operations. The update is PyTorch's AdamW:
//! `p -= lr·wd·p; m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
//! p -= lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + ε)`, with `g` already scaled by the clipping
//! factor; weight decay applies to matrices only.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Storage, Tensor, Var};

/// The learning rate at `step` (0-based): linear warmup from `lr / warmup` to `lr` over
/// `warmup` steps, then cosine decay to `min_lr` at the last step (`steps - 1`).
pub fn learning_rate(step: u64, steps: u64, warmup: u64, lr: f64, min_lr: f64) -> f64 {
    let warmup = warmup.min(steps);
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let decay = steps.saturating_sub(warmup + 1);
    if decay == 0 {
        return lr;
    }
    let t = ((step - warmup) as f64 / decay as f64).min(1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// The AdamW settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One parameter's optimizer state.
pub struct ParamState {
    pub name: String,
    pub var: Var,
    /// (2 × elements) f32: the first moment, then the second.
    pub moments: Tensor,
    /// Whether weight decay applies (matrices, not norms).
    pub decay: bool,
}

/// AdamW over named f32 variables.
pub struct AdamW {
    pub settings: AdamWSettings,
    pub params: Vec<ParamState>,
    /// Updates done so far (the bias correction's t is this + 1 for the next one).
    pub t: u64,
    /// Whether the CPU runs the fused in-place update (`false`: candle operations, as CUDA).
    pub fused_cpu: bool,
}

impl AdamW {
    /// Zero moments for each `(name, var)`.
    pub fn new(params: Vec<(String, Var)>, settings: AdamWSettings) -> Result<AdamW> {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                Ok(ParamState {
                    decay: var.rank() >= 2,
                    moments: Tensor::zeros(2 * n, DType::F32, var.device())?,
                    name,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            settings,
            params,
            t: 0,
            fused_cpu: true,
        })
    }

    /// One update with learning rate `lr`; `grads[i]` is parameter `i`'s gradient (f32, the
    /// parameter's shape), multiplied by `scale` first (the clipping factor).
    pub fn step(&mut self, grads: &[Tensor], lr: f64, scale: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            candle_core::bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )
        }
        self.t += 1;
        let s = self.settings;
        let bc1 = 1.0 - s.beta1.powi(self.t as i32);
        let bc2 = 1.0 - s.beta2.powi(self.t as i32);
        let fused = self.fused_cpu;
        for (p, g) in self.params.iter_mut().zip(grads) {
            let g = g.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
            let wd = if p.decay { s.weight_decay } else { 0.0 };
            let param = p.var.as_tensor().flatten_all()?;
            if fused && param.device().is_cpu() && param.is_contiguous() {
                p.moments.inplace_op2(
                    &g,
                    &MomentsOp {
                        beta1: s.beta1 as f32,
                        beta2: s.beta2 as f32,
                        scale: scale as f32,
                    },
                )?;
                param.inplace_op2(
                    &p.moments,
                    &UpdateOp {
                        lr: lr as f32,
                        decay: (1.0 - lr * wd) as f32,
                        bc1: bc1 as f32,
                        bc2_sqrt: bc2.sqrt() as f32,
                        eps: s.eps as f32,
                    },
                )?;
            } else {
                let n = g.elem_count();
                let g = (g * scale)?;
                let m = ((p.moments.narrow(0, 0, n)? * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
                let v = ((p.moments.narrow(0, n, n)? * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
                let denom = ((&v / bc2)?.sqrt()? + s.eps)?;
                let upd = ((&m / bc1)? / denom)?;
                let new = ((param * (1.0 - lr * wd))? - (upd * lr)?)?;
                p.var.set(&new.reshape(p.var.shape())?)?;
                p.moments = Tensor::cat(&[&m, &v], 0)?;
            }
        }
        Ok(())
    }
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("AdamW: non-contiguous state")
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("AdamW: f32 state expected"),
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("AdamW: non-contiguous gradient")
    };
    Ok(&s.as_slice::<f32>()?[a..b])
}

/// `m = β1·m + (1-β1)·g·scale; v = β2·v + (1-β2)·(g·scale)²`, in place on the state.
struct MomentsOp {
    beta1: f32,
    beta2: f32,
    scale: f32,
}

impl InplaceOp2 for MomentsOp {
    fn name(&self) -> &'static str {
        "adamw-moments"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let mv = slice_mut(dst, dst_l)?;
        let g = slice(src, src_l)?;
        let n = g.len();
        if mv.len() != 2 * n {
            candle_core::bail!("AdamW: state of {} for {n} elements", mv.len())
        }
        let (m, v) = mv.split_at_mut(n);
        let (b1, b2, s) = (self.beta1, self.beta2, self.scale);
        for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
            let g = g * s;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
        }
        Ok(())
    }
}

/// `p = p·decay - lr·(m/bc1) / (sqrt(v)/sqrt(bc2) + ε)`, in place on the weights.
struct UpdateOp {
    lr: f32,
    decay: f32,
    bc1: f32,
    bc2_sqrt: f32,
    eps: f32,
}

impl InplaceOp2 for UpdateOp {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let p = slice_mut(dst, dst_l)?;
        let mv = slice(src, src_l)?;
        let n = p.len();
        if mv.len() != 2 * n {
            candle_core::bail!("AdamW: state of {} for {n} elements", mv.len())
        }
        let (m, v) = mv.split_at(n);
        let step = self.lr / self.bc1;
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            *p = *p * self.decay - step * m / (v.sqrt() / self.bc2_sqrt + self.eps);
        }
        Ok(())
    }
}

/// The global L2 norm of `grads` (accumulated in f64).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads {
        let (storage, layout) = g.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => {
                sum += v[a..b]
                    .chunks(4096)
                    .map(|c| c.iter().map(|&x| (x * x) as f64).sum::<f64>())
                    .sum::<f64>();
            }
            _ => {
                drop(storage);
                let s = g
                    .to_dtype(DType::F32)?
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?;
                sum += s.to_scalar::<f64>()?;
            }
        }
    }
    Ok(sum.sqrt())
}

/// The factor that brings a gradient of norm `norm` within `max` (1 when clipping is off or not
/// needed), as PyTorch's `clip_grad_norm_`.
pub fn clip_factor(norm: f64, max: f64) -> f64 {
    if max > 0.0 && norm > max {
        max / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let lr = |s| learning_rate(s, 10, 3, 1.0, 0.1);
        assert!((lr(0) - 1.0 / 3.0).abs() < 1e-12);
        assert!((lr(2) - 1.0).abs() < 1e-12);
        assert!((lr(3) - 1.0).abs() < 1e-12);
        assert!((lr(9) - 0.1).abs() < 1e-12);
        assert!(lr(5) < lr(4) && lr(6) < lr(5));
        assert_eq!(learning_rate(0, 1, 0, 0.5, 0.1), 0.5);
    }

    /// The fused CPU update and the candle-operations update (what CUDA runs) against a scalar
    /// reference of PyTorch's AdamW, with decay on the matrix only.
    #[test]
    fn adamw_matches_reference() {
        let dev = Device::Cpu;
        let s = AdamWSettings {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let w0: Vec<f32> = (0..6).map(|i| i as f32 * 0.3 - 0.7).collect();
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|k| (0..6).map(|i| ((i + k) as f32 * 0.37).sin()).collect())
            .collect();
        // Reference.
        let (mut p, mut m, mut v) = (
            w0.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            [0f64; 6],
            [0f64; 6],
        );
        let (lr, scale) = (0.01, 0.5);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..6 {
                let g = g[i] as f64 * scale;
                p[i] *= 1.0 - lr * s.weight_decay;
                m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g;
                v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g * g;
                let mh = m[i] / (1.0 - s.beta1.powi(t));
                let vh = v[i] / (1.0 - s.beta2.powi(t));
                p[i] -= lr * mh / (vh.sqrt() + s.eps);
            }
        }
        let fused = {
            let var = Var::from_vec(w0.clone(), (2, 3), &dev).unwrap();
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], s).unwrap();
            for g in &grads {
                let g = Tensor::from_vec(g.clone(), (2, 3), &dev).unwrap();
                opt.step(&[g], lr, scale).unwrap();
            }
            var.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        // The candle-operations path (what CUDA runs).
        let generic = {
            let var = Var::from_vec(w0.clone(), (2, 3), &dev).unwrap();
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], s).unwrap();
            opt.fused_cpu = false;
            for g in &grads {
                let g = Tensor::from_vec(g.clone(), (2, 3), &dev).unwrap();
                opt.step(&[g], lr, scale).unwrap();
            }
            var.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        for i in 0..6 {
            assert!(
                (fused[i] as f64 - p[i]).abs() < 1e-6,
                "{i}: {} vs {}",
                fused[i],
                p[i]
            );
            assert!((generic[i] as f64 - p[i]).abs() < 1e-6);
        }
    }

    #[test]
    fn norm_and_clipping() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[3f32, 0.0], &dev).unwrap();
        let b = Tensor::new(&[[4f32]], &dev).unwrap();
        let n = global_norm(&[a, b]).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        assert!((clip_factor(n, 1.0) - 0.2).abs() < 1e-6);
        assert_eq!(clip_factor(n, 10.0), 1.0);
        assert_eq!(clip_factor(n, 0.0), 1.0);
    }
}
