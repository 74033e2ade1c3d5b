//! The projections of a layer: dense weights (with the CPU's row-product fast path) or
//! GGUF-quantized ones, and views of the rows of a fused checkpoint tensor.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{linear_no_bias, Linear, VarBuilder};

/// A projection: dense weights, or GGUF-quantized ones for CPU use.
pub(super) enum Proj {
    Dense(Linear),
    Quant(QMatMul),
}

/// `x · wᵀ` for dense weights `w` (out × in). On the CPU a product of 2 to 64 rows (decode steps,
/// small prompt chunks) is computed as `(w · xᵀ)ᵀ`: the matrix-product kernel then streams the
/// weights as they lie instead of repacking their transpose at every call, which made such
/// products 2 to 4 times slower (docs/performance.md). One row, many rows and GPUs go as they are.
pub(super) fn dense_forward(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let w = l.weight();
    let k = x.dim(D::Minus1)?;
    let rows = x.elem_count() / k.max(1);
    if !w.device().is_cpu() || l.bias().is_some() || !(2..=64).contains(&rows) {
        return l.forward(x);
    }
    let out = w.matmul(&x.reshape((rows, k))?.t()?)?.t()?.contiguous()?;
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = w.dim(0)?;
    }
    out.reshape(shape)
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Proj::Dense(l) => dense_forward(l, x),
            Proj::Quant(q) => q.forward(x),
        }
    }
}

impl Proj {
    /// The dense weights (out × in), if not quantized.
    pub(super) fn weight(&self) -> Option<&Tensor> {
        match self {
            Proj::Dense(l) => Some(l.weight()),
            Proj::Quant(_) => None,
        }
    }
}

pub(super) fn dense(i: usize, o: usize, vb: VarBuilder) -> Result<Proj> {
    Ok(Proj::Dense(linear_no_bias(i, o, vb)?))
}

/// Views of consecutive row blocks of a dense projection's weights (no copy): the projections
/// a fused checkpoint tensor holds. `None` for quantized weights.
pub(super) fn split_rows(p: &Proj, sizes: &[usize]) -> Result<Option<Vec<Linear>>> {
    let Proj::Dense(l) = p else {
        return Ok(None);
    };
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &n in sizes {
        out.push(Linear::new(l.weight().narrow(0, start, n)?, None));
        start += n;
    }
    Ok(Some(out))
}
