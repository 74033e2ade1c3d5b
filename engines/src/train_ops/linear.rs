//! A dense projection `x · wᵀ` with its own backward pass.
//!
//! candle's `x.matmul(&w.t())` (what `candle_nn::Linear` runs) makes the transposed view of `w` a
//! node of the graph: the backward pass gives that view a zeroed gradient buffer, adds the
//! product's gradient into it, transposes it and adds it again into a zeroed buffer for `w`. Here
//! the backward pass returns `dw = dᵀ·x` in `w`'s own layout, and `dx = d·w`.

use super::slice_f32;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// `x` (n, in) times the transpose of `w` (out, in): (n, out).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let ((_, k), (_, k2)) = (x.dims2()?, w.dims2()?);
    if k != k2 {
        candle_core::bail!(
            "linear: {:?} against a weight of {:?}",
            x.shape(),
            w.shape()
        )
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice_f32(s1, l1, "linear")?, slice_f32(s2, l2, "linear")?);
        let ((n, k), (o, _)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        let out = super::gemm_product((n, o, k), x, (k, 1), w, (1, k), true);
        Ok((CpuStorage::F32(out), Shape::from((n, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        d: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = d.contiguous()?;
        let dx = product(&d, w, false)?;
        let dw = product(&d, x, true)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `a · b`, or (`transpose_lhs`) `aᵀ · b`, of f32 matrices on the CPU, with no backward pass:
/// for the backward passes of operations built on [`linear`].
pub fn product(a: &Tensor, b: &Tensor, transpose_lhs: bool) -> Result<Tensor> {
    a.contiguous()?
        .apply_op2_no_bwd(&b.contiguous()?, &Product { transpose_lhs })
}

/// See [`product`].
struct Product {
    transpose_lhs: bool,
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (slice_f32(s1, l1, "linear")?, slice_f32(s2, l2, "linear")?);
        let ((ar, ac), (br, bc)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        let (m, k, a_strides) = if self.transpose_lhs {
            (ac, ar, (1, ac))
        } else {
            (ar, ac, (ac, 1))
        };
        if k != br {
            candle_core::bail!("linear: a product of {:?} and {:?}", l1.shape(), l2.shape())
        }
        let out = super::gemm_product((m, bc, k), a, a_strides, b, (bc, 1), true);
        Ok((CpuStorage::F32(out), Shape::from((m, bc))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{input, max_diff};
    use super::*;
    use candle_core::{Device, Var};

    /// Against candle's `x.matmul(w.t())`: the same product and the same gradients.
    #[test]
    fn matches_candle_matmul() {
        let dev = Device::Cpu;
        let (n, k, o) = (7, 5, 3);
        let x = Var::from_vec(input(n * k, 1), (n, k), &dev).unwrap();
        let w = Var::from_vec(input(o * k, 2), (o, k), &dev).unwrap();
        let weigh = Tensor::from_vec(input(n * o, 3), (n, o), &dev).unwrap();
        let a = linear(&x, &w).unwrap();
        let b = x.matmul(&w.t().unwrap()).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
        let ga = (&a * &weigh)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (&b * &weigh)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w] {
            let (p, q) = (ga.get(v).unwrap(), gb.get(v).unwrap());
            assert_eq!(p.shape(), q.shape());
            assert!(
                max_diff(p, q) < 1e-4,
                "gradient differs by {}",
                max_diff(p, q)
            );
        }
    }
}
