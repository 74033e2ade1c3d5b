//! The decode step's fused operations (one new token per sequence), for the local engine on a GPU.
//!
//! candle runs every elementary operation as its own kernel. At batch 1 a Phi-4 step is about
//! 11 ms of weight products and some 700 small launches (docs/performance.md), so the decode step
//! on CUDA uses operations of its own (`kernels/decode.cu`):
//!
//! | operation | replaces |
//! | --- | --- |
//! | [`embed`] | candle's gather (which uploads its parameters at every call) |
//! | [`add_rms_norm`] | residual add, then RMSNorm |
//! | [`rope_cache`] | slicing q/k/v, RoPE on queries and keys, scaling, two cache scatters |
//! | [`attention`] | q·Kᵀ, softmax, ·V over each sequence's cached positions |
//! | [`silu_mul`] | slicing gate/up, SiLU, product |
//! | [`linear`] | cuBLAS for 1 to 4 rows: a GEMV that streams the weights (timed against cuBLAS per shape, the faster kept) |
//! | [`linear_rope_cache`], [`linear_silu`] | the GEMV with `rope_cache` or `silu_mul` as its epilogue |
//! | [`argmax`] | candle's argmax (one element at a time, its layout uploaded at every call) for the greedy tokens |
//!
//! Each has a fallback made of candle operations, used on the CPU and wherever [`Kernels`]
//! leaves its kernel off. Run on f32 copies of the inputs, the fallbacks are also the reference
//! the kernels are checked against ([`check`]; `phiforge bench-engine --check`, and at a small
//! width whenever a model loads on a GPU). The CUDA source is also run on the CPU, emulated, by
//! `engines/tests/kernels_emulated.rs`.

use candle_core::{DType, Result, Tensor, D};

/// Which of the fused kernels the decode step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kernels {
    pub norm: bool,
    pub rope: bool,
    pub attn: bool,
    pub silu: bool,
    pub gemv: bool,
    /// The greedy pick of the next tokens from the step's logits.
    pub argmax: bool,
}

impl Kernels {
    pub const ALL: Kernels = Kernels {
        norm: true,
        rope: true,
        attn: true,
        silu: true,
        gemv: true,
        argmax: true,
    };
    pub const NONE: Kernels = Kernels {
        norm: false,
        rope: false,
        attn: false,
        silu: false,
        gemv: false,
        argmax: false,
    };
    const NAMES: [&'static str; 6] = ["norm", "rope", "attn", "silu", "gemv", "argmax"];

    fn flag(&mut self, name: &str) -> Option<&mut bool> {
        match name {
            "norm" => Some(&mut self.norm),
            "rope" => Some(&mut self.rope),
            "attn" => Some(&mut self.attn),
            "silu" => Some(&mut self.silu),
            "gemv" => Some(&mut self.gemv),
            "argmax" => Some(&mut self.argmax),
            _ => None,
        }
    }

    /// `all`, `none`, or a comma-separated list of `norm`, `rope`, `attn`, `silu`, `gemv`,
    /// `argmax`.
    pub fn parse(spec: &str) -> std::result::Result<Kernels, String> {
        match spec.trim() {
            "all" => return Ok(Kernels::ALL),
            "none" | "" => return Ok(Kernels::NONE),
            _ => {}
        }
        let mut k = Kernels::NONE;
        for name in spec.split(',').map(str::trim) {
            *k.flag(name).ok_or_else(|| {
                format!(
                    "unknown kernel `{name}` (expected all, none or a list of {})",
                    Kernels::NAMES.join(", ")
                )
            })? = true;
        }
        Ok(k)
    }

    pub fn any(&self) -> bool {
        *self != Kernels::NONE
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = [
            self.norm,
            self.rope,
            self.attn,
            self.silu,
            self.gemv,
            self.argmax,
        ];
        match on.iter().filter(|&&b| b).count() {
            0 => write!(f, "none"),
            6 => write!(f, "all"),
            _ => {
                let names: Vec<&str> = Kernels::NAMES
                    .iter()
                    .zip(on)
                    .filter(|(_, b)| *b)
                    .map(|(n, _)| *n)
                    .collect();
                write!(f, "{}", names.join(","))
            }
        }
    }
}

/// The attention's shape: query heads, KV heads, head size, and positions per block of the
/// paged KV cache ([`crate::kv`]).
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub h: usize,
    pub kvh: usize,
    pub hd: usize,
    pub block: usize,
}

/// One decode step: row `r`'s new token at position `pos[r]` (`positions`, u32 on the device,
/// holds the same), in the caches' blocks its block table names: position `p` is at offset
/// `p % block` of block `tables[r][p / block]`. The caches are (blocks, KV heads, block, head
/// size); `tables` is (rows, width) u32 on the device, `table` the same on the host, row-major.
pub struct Step<'a> {
    pub positions: &'a Tensor,
    pub pos: &'a [u32],
    pub tables: &'a Tensor,
    pub table: &'a [u32],
}

impl Step<'_> {
    fn span(&self) -> usize {
        self.pos.iter().max().map_or(0, |&p| p as usize + 1)
    }

    /// Blocks per table.
    pub fn width(&self) -> usize {
        self.table.len() / self.pos.len().max(1)
    }
}

/// Whether the kernels can serve a model of this shape and dtype: head size 64, 96 or 128, at
/// most 8 query heads per KV head, rows of a multiple of 16 bytes.
pub fn supported(heads: Heads, hidden: usize, inter: usize, dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16 | DType::F32)
        && matches!(heads.hd, 64 | 96 | 128)
        && heads.kvh > 0
        && heads.h.is_multiple_of(heads.kvh)
        && heads.h / heads.kvh <= 8
        && hidden.is_multiple_of(8)
        && inter.is_multiple_of(8)
        && (heads.h * heads.hd).is_multiple_of(8)
}

#[cfg(feature = "cuda")]
fn on_gpu(t: &Tensor) -> bool {
    t.device().is_cuda()
}

/// The embedding rows of `ids` (b, u32) in `table` (vocab, hidden): (b, hidden). On a GPU a
/// gather kernel of its own (candle's uploads its parameters at every call).
pub fn embed(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_gpu(ids) {
        return cuda::embed(ids, table);
    }
    table.index_select(ids, 0)
}

/// `x + h` (the new residual stream) and its RMSNorm with weight `w`; rows are the last dim.
pub fn add_rms_norm(
    k: Kernels,
    x: &Tensor,
    h: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if k.norm && on_gpu(x) {
        return cuda::add_rms_norm(x, h, w, eps);
    }
    let _ = k;
    let s = (x + h)?;
    let y = candle_nn::ops::rms_norm(&s, w, eps as f32)?;
    Ok((s, y))
}

/// RoPE on the fused q/k/v output `qkv` (b, (h + 2 kvh) · hd) at each row's position, with the
/// f32 tables `cos`/`sin` (positions, hd / 2). Keys and values go into the caches `kc`/`vc`
/// (blocks, kvh, block, hd) at the rows' positions, in their tables' blocks; returns the queries
/// (b, h, hd) times `scale`.
#[allow(clippy::too_many_arguments)]
pub fn rope_cache(
    k: Kernels,
    qkv: &Tensor,
    step: &Step,
    cos: &Tensor,
    sin: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    heads: Heads,
    scale: f64,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if k.rope && on_gpu(qkv) {
        return cuda::rope_cache(qkv, step, cos, sin, kc, vc, heads, scale);
    }
    let _ = k;
    let Heads { h, kvh, hd, .. } = heads;
    let b = qkv.dim(0)?;
    let dtype = qkv.dtype();
    let qkv = qkv.reshape((b, 1, h + 2 * kvh, hd))?;
    let cos = cos.index_select(step.positions, 0)?.reshape((b, 1, ()))?;
    let sin = sin.index_select(step.positions, 0)?.reshape((b, 1, ()))?;
    let qk = qkv.narrow(2, 0, h + kvh)?.contiguous()?;
    let qk = candle_nn::rotary_emb::rope_thd(&qk, &cos.to_dtype(dtype)?, &sin.to_dtype(dtype)?)?;
    let q = (qk.narrow(2, 0, h)? * scale)?.reshape((b, h, hd))?;
    // (b, kvh, hd) each, written at every row's own position in one scatter.
    let key = qk.narrow(2, h, kvh)?.contiguous()?;
    let value = qkv.narrow(2, h + kvh, kvh)?.contiguous()?;
    let tokens = step.pos.iter().enumerate().map(|(r, &p)| (r, p as usize));
    let at = crate::kv::rows(
        step.table,
        step.width(),
        tokens,
        kvh,
        heads.block,
        kc.dim(0)?,
    )?;
    let at = Tensor::from_vec(at, b * kvh, qkv.device())?;
    crate::kv::write(kc, &at, &key)?;
    crate::kv::write(vc, &at, &value)?;
    Ok(q)
}

/// Attention of the queries `q` (b, h, hd), already scaled, over each row's cached positions
/// `0..=pos[r]`; returns (b, h · hd).
pub fn attention(
    k: Kernels,
    q: &Tensor,
    step: &Step,
    kc: &Tensor,
    vc: &Tensor,
    heads: Heads,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if k.attn && on_gpu(q) {
        return cuda::attention(q, step, kc, vc, heads);
    }
    let _ = k;
    let Heads { h, kvh, hd, .. } = heads;
    let b = q.dim(0)?;
    let span = step.span();
    // Each KV head serves h / kvh query heads: they are the rows of one product.
    let q = q.reshape((b, kvh, h / kvh, hd))?;
    // Each row's blocks up to the span, gathered into contiguous sequences.
    let width = span.div_ceil(heads.block);
    let ids = crate::kv::gather_ids(step.table, step.width(), width, kvh);
    let n = ids.len();
    let ids = Tensor::from_vec(ids, n, q.device())?;
    let keys = crate::kv::gather(kc, &ids, b)?.narrow(2, 0, span)?;
    let values = crate::kv::gather(vc, &ids, b)?.narrow(2, 0, span)?;
    let scores = q.matmul(&keys.transpose(2, 3)?)?;
    let scores = if step.pos.iter().all(|&p| p as usize + 1 == span) {
        scores
    } else {
        let mut mask = vec![f32::NEG_INFINITY; b * span];
        for (r, &p) in step.pos.iter().enumerate() {
            mask[r * span..r * span + p as usize + 1].fill(0.0);
        }
        let mask = Tensor::from_vec(mask, (b, 1, 1, span), q.device())?.to_dtype(q.dtype())?;
        scores.broadcast_add(&mask)?
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(&values)?.reshape((b, h * hd))
}

/// SiLU(gate) · up from the fused gate/up output `gu` (b, 2 · inter); returns (b, inter).
pub fn silu_mul(k: Kernels, gu: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if k.silu && on_gpu(gu) {
        return cuda::silu_mul(gu);
    }
    let _ = k;
    let inter = gu.dim(D::Minus1)? / 2;
    let gate = gu.narrow(D::Minus1, 0, inter)?;
    let up = gu.narrow(D::Minus1, inter, inter)?;
    up * candle_nn::ops::silu(&gate)?
}

/// The gate/up product of `x` with the fused weights `w` (2 · inter, k), then SiLU(gate) · up:
/// one kernel where the GEMV does this product ([`linear`]) and both kernels are on.
pub fn linear_silu(k: Kernels, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if k.gemv && k.silu && on_gpu(x) {
        if let Some(act) = cuda::gemv_silu(x, w, None)? {
            return Ok(act);
        }
    }
    silu_mul(k, &linear(k, x, w)?)
}

/// The q/k/v product of `x` with the fused weights `w`, then [`rope_cache`]: one kernel where the
/// GEMV does this product and both kernels are on.
#[allow(clippy::too_many_arguments)]
pub fn linear_rope_cache(
    k: Kernels,
    x: &Tensor,
    w: &Tensor,
    step: &Step,
    cos: &Tensor,
    sin: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    heads: Heads,
    scale: f64,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if k.gemv && k.rope && on_gpu(x) {
        if let Some(q) = cuda::gemv_rope(x, w, step, cos, sin, kc, vc, heads, scale, None)? {
            return Ok(q);
        }
    }
    let qkv = linear(k, x, w)?;
    rope_cache(k, &qkv, step, cos, sin, kc, vc, heads, scale)
}

/// `x` (b, k) times the weights `w` (n, k), transposed: (b, n).
pub fn linear(k: Kernels, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if k.gemv && on_gpu(x) {
        if let Some(y) = cuda::gemv(x, w)? {
            return Ok(y);
        }
    }
    let _ = k;
    x.matmul(&w.t()?)
}

/// The index of each row's largest value in `logits` (rows, vocab), as u32 (rows): the greedy
/// tokens. On a GPU, for f32 logits, a kernel of its own (the lowest index among equal values).
pub fn argmax(k: Kernels, logits: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if k.argmax && on_gpu(logits) && logits.dtype() == DType::F32 && logits.rank() == 2 {
        return cuda::argmax(logits);
    }
    let _ = k;
    logits.argmax(D::Minus1)
}

/// How each product of a few rows was done so far (our GEMV with one or two output columns a
/// warp, or cuBLAS), with the times that decided it; empty without CUDA.
pub fn gemv_choices() -> Vec<String> {
    #[cfg(feature = "cuda")]
    return cuda::gemv_choices();
    #[cfg(not(feature = "cuda"))]
    Vec::new()
}

mod check;
pub use check::{check, failures, CheckResult};

#[cfg(feature = "cuda")]
pub(crate) mod cuda;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_sets_parse_and_print() {
        assert_eq!(Kernels::parse("all"), Ok(Kernels::ALL));
        assert_eq!(Kernels::parse("none"), Ok(Kernels::NONE));
        let k = Kernels::parse("rope, attn").unwrap();
        assert!(k.rope && k.attn && !k.norm && !k.silu && !k.gemv && !k.argmax);
        assert_eq!(k.to_string(), "rope,attn");
        assert_eq!(Kernels::ALL.to_string(), "all");
        let all_but_gemv = Kernels::parse("norm,rope,attn,silu,argmax").unwrap();
        assert_eq!(
            all_but_gemv,
            Kernels {
                gemv: false,
                ..Kernels::ALL
            }
        );
        assert_eq!(all_but_gemv.to_string(), "norm,rope,attn,silu,argmax");
        assert_eq!(
            Kernels::parse(&Kernels::parse("norm,gemv").unwrap().to_string()),
            Kernels::parse("gemv,norm")
        );
        let err = Kernels::parse("norm,fast").unwrap_err();
        assert!(err.contains("`fast`") && err.contains("gemv"), "{err}");
    }

    /// On the CPU every operation is its fallback, whatever the set asks for.
    #[test]
    fn without_a_gpu_every_kernel_falls_back() {
        let dev = candle_core::Device::Cpu;
        let gu = Tensor::new(&[[1f32, -2.0, 3.0, 0.5]], &dev).unwrap();
        let got = silu_mul(Kernels::ALL, &gu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let silu = |x: f32| x / (1.0 + (-x).exp());
        let want = [silu(1.0) * 3.0, silu(-2.0) * 0.5];
        for (g, w) in got[0].iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        let logits = Tensor::new(&[[1f32, 3.0, 2.0], [0.0, -1.0, 4.0]], &dev).unwrap();
        let best = argmax(Kernels::ALL, &logits).unwrap();
        assert_eq!(best.to_vec1::<u32>().unwrap(), [1, 2]);
        assert!(check(
            &dev,
            Heads {
                h: 4,
                kvh: 1,
                hd: 64,
                block: 8
            },
            64,
            64,
            DType::F32
        )
        .unwrap()
        .is_empty());
    }
}
