//! Phi-3's MLP, `down(silu(gate) · up)` with the fused `gate_up` projection, in one operation
//! with its own backward pass.
//!
//! Forward: `gu = h·W_guᵀ`, `a = silu(gu_gate) · gu_up`, `out = a·W_downᵀ`, keeping `gu` and `a`
//! for the backward pass, which computes `da = d·W_down`, `dW_down = dᵀ·a`, `dgu` from `da`
//! (SwiGLU's derivative), `dh = dgu·W_gu` and `dW_gu = dguᵀ·h`. Against three operations, the two
//! intermediates (the widest tensors of a layer) are not nodes of candle's graph, so autograd gives
//! them no zeroed gradient buffers and makes no extra passes over them.

use super::{gemm_product, linear::product, sig_silu, slice_f32, swiglu_row, SwigluGrad};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The MLP of hidden states `h` (n, hidden) with `w_gate_up` (2·inter, hidden) and `w_down`
/// (hidden, inter): (n, hidden).
pub fn mlp(h: &Tensor, w_gate_up: &Tensor, w_down: &Tensor) -> Result<Tensor> {
    let ((_, hidden), (gu, hidden2), (hidden3, inter)) =
        (h.dims2()?, w_gate_up.dims2()?, w_down.dims2()?);
    if hidden != hidden2 || hidden != hidden3 || gu != 2 * inter {
        candle_core::bail!(
            "mlp: hidden states {:?}, gate_up {:?}, down {:?}",
            h.shape(),
            w_gate_up.shape(),
            w_down.shape()
        )
    }
    h.contiguous()?.apply_op3(
        &w_gate_up.contiguous()?,
        &w_down.contiguous()?,
        Mlp {
            kept: Mutex::new(None),
        },
    )
}

struct Mlp {
    /// `gu` (n, 2·inter) and `a` (n, inter), kept by the forward pass for the backward one.
    kept: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp3 for Mlp {
    fn name(&self) -> &'static str {
        "fused-mlp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = slice_f32(s1, l1, "mlp")?;
        let (wgu, wd) = (slice_f32(s2, l2, "mlp")?, slice_f32(s3, l3, "mlp")?);
        let ((n, hidden), (inter2, _)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        let inter = inter2 / 2;
        let gu = gemm_product((n, inter2, hidden), h, (hidden, 1), wgu, (1, hidden), true);
        let mut a = vec![0f32; n * inter];
        a.par_chunks_mut(inter)
            .zip(gu.par_chunks(inter2))
            .for_each(|(a, gu)| swiglu_row(gu, a));
        let out = gemm_product((n, hidden, inter), &a, (inter, 1), wd, (1, inter), true);
        if let Ok(mut kept) = self.kept.lock() {
            *kept = Some((gu, a));
        }
        Ok((CpuStorage::F32(out), Shape::from((n, hidden))))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w_gate_up: &Tensor,
        w_down: &Tensor,
        _res: &Tensor,
        d: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let kept = self
            .kept
            .lock()
            .map_err(|_| candle_core::Error::Msg("mlp: poisoned lock".into()))?
            .take();
        let Some((gu, a)) = kept else {
            candle_core::bail!("mlp: backward without its forward")
        };
        let (n, _) = h.dims2()?;
        let (inter2, _) = w_gate_up.dims2()?;
        let gu = Tensor::from_vec(gu, (n, inter2), &Device::Cpu)?;
        let a = Tensor::from_vec(a, (n, inter2 / 2), &Device::Cpu)?;
        let d = d.contiguous()?;
        let da = product(&d, w_down, false)?; // (n, inter)
        let dw_down = product(&d, &a, true)?; // (hidden, inter)
        let dgu = gu.apply_op2_no_bwd(&da, &SwigluGrad)?; // (n, 2·inter)
        let dh = product(&dgu, w_gate_up, false)?; // (n, hidden)
        let dw_gate_up = product(&dgu, h, true)?; // (2·inter, hidden)
        Ok((Some(dh), Some(dw_gate_up), Some(dw_down)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{input, max_diff};
    use super::*;
    use candle_core::Var;

    /// Against projection, SwiGLU and projection by candle's operations: the same output and the
    /// same gradients for the input and both weights.
    #[test]
    fn matches_candle_operations() {
        let dev = Device::Cpu;
        let (n, hidden, inter) = (6, 5, 4);
        let h = Var::from_vec(input(n * hidden, 1), (n, hidden), &dev).unwrap();
        let wgu = Var::from_vec(input(2 * inter * hidden, 2), (2 * inter, hidden), &dev).unwrap();
        let wd = Var::from_vec(input(hidden * inter, 3), (hidden, inter), &dev).unwrap();
        let weigh = Tensor::from_vec(input(n * hidden, 4), (n, hidden), &dev).unwrap();
        let got = mlp(&h, &wgu, &wd).unwrap();
        let gu = h.matmul(&wgu.t().unwrap()).unwrap();
        let (g, u) = (
            gu.narrow(1, 0, inter).unwrap(),
            gu.narrow(1, inter, inter).unwrap(),
        );
        let a = (g.silu().unwrap() * u).unwrap();
        let want = a.matmul(&wd.t().unwrap()).unwrap();
        // Relative to the largest value: the sums run in another order.
        let zero = want.zeros_like().unwrap();
        let tol = |t: &Tensor| 1e-6 * max_diff(t, &zero).max(1.0);
        let d = max_diff(&got, &want);
        assert!(d < tol(&want), "outputs differ by {d}");
        let ga = (&got * &weigh)
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
        for v in [&h, &wgu, &wd] {
            let (p, q) = (ga.get(v).unwrap(), gb.get(v).unwrap());
            assert_eq!(p.shape(), q.shape());
            let d = max_diff(p, q);
            assert!(d < tol(q), "gradient differs by {d}");
        }
    }
}

/// `silu(gate) · up`, element by element, for inference: one vectorised pass on rayon's threads
/// where candle makes two on one thread (its `silu`, then the product). `gate` and `up` are f32 on the CPU, of one shape. No backward pass.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        candle_core::bail!("silu_mul: gate {:?} and up {:?}", gate.shape(), up.shape())
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

struct SiluMul;

/// Elements per task of [`silu_mul`].
const SILU_CHUNK: usize = 16_384;

simd!(silu_mul_chunk, fn(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = sig_silu(g).1 * u;
    }
});

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (
            slice_f32(s1, l1, "silu_mul")?,
            slice_f32(s2, l2, "silu_mul")?,
        );
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(SILU_CHUNK)
            .zip(g.par_chunks(SILU_CHUNK).zip(u.par_chunks(SILU_CHUNK)))
            .for_each(|(o, (g, u))| silu_mul_chunk(g, u, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
