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

/// The attention's shape: query heads, KV heads, head size, cache positions per slot.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub h: usize,
    pub kvh: usize,
    pub hd: usize,
    pub ctx: usize,
}

/// One decode step: the sequences in cache slots `first..first + b`, row `r`'s new token at
/// position `pos[r]` (`positions`, u32 on the device, holds the same).
pub struct Step<'a> {
    pub first: usize,
    pub positions: &'a Tensor,
    pub pos: &'a [u32],
}

impl Step<'_> {
    fn span(&self) -> usize {
        self.pos.iter().max().map_or(0, |&p| p as usize + 1)
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
/// (slots, kvh, ctx, hd) at the rows' slots and positions; returns the queries (b, h, hd) times
/// `scale`.
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
    // (b, kvh, 1, hd) each, written at every row's own position in one scatter.
    let key = qk.narrow(2, h, kvh)?.transpose(1, 2)?.contiguous()?;
    let value = qkv.narrow(2, h + kvh, kvh)?.transpose(1, 2)?.contiguous()?;
    let at = step
        .positions
        .reshape((b, 1, 1, 1))?
        .broadcast_as((b, kvh, 1, hd))?
        .contiguous()?;
    kc.narrow(0, step.first, b)?.scatter_set(&at, &key, 2)?;
    vc.narrow(0, step.first, b)?.scatter_set(&at, &value, 2)?;
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
    let keys = kc.narrow(0, step.first, b)?.narrow(2, 0, span)?;
    let values = vc.narrow(0, step.first, b)?.narrow(2, 0, span)?;
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

/// One comparison of a kernel against its reference.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub op: String,
    pub dtype: String,
    /// Largest |kernel − reference|, over the largest |reference|.
    pub max_rel_err: f64,
    pub tolerance: f64,
    pub ok: bool,
}

/// The comparisons out of tolerance, one line each (empty: all passed).
pub fn failures(results: &[CheckResult]) -> Vec<String> {
    results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} ({}): {:.2e}", r.op, r.dtype, r.max_rel_err))
        .collect()
}

/// Runs every kernel on random inputs of `heads`' shape (several batch sizes, unequal lengths,
/// sequences in later slots, attention split or not) in f32 and `dtype`, against its fallback on
/// f32 copies of the same inputs. On the CPU there is nothing to check.
pub fn check(
    device: &candle_core::Device,
    heads: Heads,
    hidden: usize,
    inter: usize,
    dtype: DType,
) -> Result<Vec<CheckResult>> {
    if !device.is_cuda() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for dt in [DType::F32, dtype] {
        // f32 differs from the reference by summation order only; 16-bit types by one rounding.
        let tol = if dt == DType::F32 { 2e-4 } else { 2e-2 };
        let mut push = |op: String, got: &Tensor, want: &Tensor| -> Result<()> {
            let err = rel_err(got, want)?;
            out.push(CheckResult {
                op,
                dtype: format!("{dt:?}").to_lowercase(),
                max_rel_err: err,
                tolerance: tol,
                ok: err <= tol,
            });
            Ok(())
        };
        let (on, off) = (Kernels::ALL, Kernels::NONE);
        let rand = |shape: &[usize]| -> Result<Tensor> {
            Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dt)
        };
        let f32s = |t: &Tensor| t.to_dtype(DType::F32);
        for b in [1usize, 3, 4, 8] {
            // Embedding rows.
            let table = rand(&[97, hidden])?;
            let ids: Vec<u32> = (0..b as u32).map(|r| (r * 31 + 5) % 97).collect();
            let ids = Tensor::new(ids.as_slice(), device)?;
            push(
                format!("embed b{b}"),
                &embed(&ids, &table)?,
                &f32s(&table)?.index_select(&ids, 0)?,
            )?;
            // Norm.
            let (x, hh, w) = (rand(&[b, hidden])?, rand(&[b, hidden])?, rand(&[hidden])?);
            let (s1, y1) = add_rms_norm(on, &x, &hh, &w, 1e-5)?;
            let (s2, y2) = add_rms_norm(off, &f32s(&x)?, &f32s(&hh)?, &f32s(&w)?, 1e-5)?;
            push(format!("add_rms_norm b{b} sum"), &s1, &s2)?;
            push(format!("add_rms_norm b{b} norm"), &y1, &y2)?;
            // SiLU · up.
            let gu = rand(&[b, 2 * inter])?;
            push(
                format!("silu_mul b{b}"),
                &silu_mul(on, &gu)?,
                &silu_mul(off, &f32s(&gu)?)?,
            )?;
            // Products: both GEMV shapes of work (1 to 4 rows), then whatever `linear` chose.
            let (x, w) = (rand(&[b, hidden])?, (rand(&[inter, hidden])? * 0.05)?);
            let want = linear(off, &f32s(&x)?, &f32s(&w)?)?;
            #[cfg(feature = "cuda")]
            for how in [
                cuda::Gemv::Warp1,
                cuda::Gemv::Warp2,
                cuda::Gemv::Warp1Prefetch,
                cuda::Gemv::Warp2Prefetch,
            ] {
                if let Some(got) = cuda::launch_gemv(&x, &w, how)? {
                    push(format!("gemv {how:?} b{b} {inter}x{hidden}"), &got, &want)?;
                }
            }
            push(
                format!("linear b{b} {inter}x{hidden}"),
                &linear(on, &x, &w)?,
                &want,
            )?;
            // The gate/up product with SiLU·up in its epilogue, against product then fallback
            // (the product rounded to the dtype first, as the kernel does).
            let w2 = (rand(&[2 * inter, hidden])? * 0.05)?;
            let want = silu_mul(
                off,
                &f32s(&linear(off, &f32s(&x)?, &f32s(&w2)?)?.to_dtype(dt)?)?,
            )?;
            #[cfg(feature = "cuda")]
            for how in [cuda::Gemv::Warp2, cuda::Gemv::Warp2Prefetch] {
                if let Some(got) = cuda::gemv_silu(&x, &w2, Some(how))? {
                    push(
                        format!("gemv_silu {how:?} b{b} {inter}x{hidden}"),
                        &got,
                        &want,
                    )?;
                }
            }
            push(
                format!("linear_silu b{b} {inter}x{hidden}"),
                &linear_silu(on, &x, &w2)?,
                &want,
            )?;
            // RoPE and cache writes, then attention: rows in slots 2.., unequal lengths, short
            // (one split) and long (several).
            for long in [false, true] {
                let slots = b + 2;
                let ctx = if long { 2048 } else { 96 };
                let pos: Vec<u32> = (0..b)
                    .map(|r| ((ctx - 1) as u32).saturating_sub(7 * r as u32 + (b as u32 % 3)))
                    .collect();
                let positions = Tensor::new(pos.as_slice(), device)?;
                let step = Step {
                    first: 2,
                    positions: &positions,
                    pos: &pos,
                };
                let heads = Heads { ctx, ..heads };
                let table = |f: fn(f32) -> f32| -> Result<Tensor> {
                    let v: Vec<f32> = (0..ctx * heads.hd / 2)
                        .map(|i| f(i as f32 * 0.001))
                        .collect();
                    Tensor::from_vec(v, (ctx, heads.hd / 2), device)
                };
                let (cos, sin) = (table(f32::cos)?, table(f32::sin)?);
                let cache = [slots, heads.kvh, ctx, heads.hd];
                let (kc, vc) = (rand(&cache)?, rand(&cache)?);
                let (kc2, vc2) = (f32s(&kc)?, f32s(&vc)?);
                let qkv = rand(&[b, (heads.h + 2 * heads.kvh) * heads.hd])?;
                let scale = 1.0 / (heads.hd as f64).sqrt();
                let q1 = rope_cache(on, &qkv, &step, &cos, &sin, &kc, &vc, heads, scale)?;
                let q2 = rope_cache(
                    off,
                    &f32s(&qkv)?,
                    &step,
                    &cos,
                    &sin,
                    &kc2,
                    &vc2,
                    heads,
                    scale,
                )?;
                let tag = if long { "long" } else { "short" };
                push(format!("rope_cache b{b} {tag} q"), &q1, &q2)?;
                push(format!("rope_cache b{b} {tag} keys"), &kc, &kc2)?;
                push(format!("rope_cache b{b} {tag} values"), &vc, &vc2)?;
                #[cfg(feature = "cuda")]
                {
                    // The q/k/v product with RoPE and the cache writes in its epilogue, from a
                    // fresh copy of the caches, against product then fallback.
                    let x = rand(&[b, hidden])?;
                    let wq = (rand(&[(heads.h + 2 * heads.kvh) * heads.hd, hidden])? * 0.05)?;
                    let qkv = linear(off, &f32s(&x)?, &f32s(&wq)?)?.to_dtype(dt)?;
                    let (kc3, vc3) = (kc.copy()?, vc.copy()?);
                    let (kc4, vc4) = (f32s(&kc)?, f32s(&vc)?);
                    let want = rope_cache(
                        off,
                        &f32s(&qkv)?,
                        &step,
                        &cos,
                        &sin,
                        &kc4,
                        &vc4,
                        heads,
                        scale,
                    )?;
                    for how in [cuda::Gemv::Warp2, cuda::Gemv::Warp2Prefetch] {
                        let (kc3, vc3) = (kc3.copy()?, vc3.copy()?);
                        let (x, w) = (&x, &wq);
                        let run = cuda::gemv_rope;
                        let got =
                            run(x, w, &step, &cos, &sin, &kc3, &vc3, heads, scale, Some(how))?;
                        if let Some(got) = got {
                            let tag = format!("{how:?} b{b} {tag}");
                            push(format!("gemv_rope {tag} q"), &got, &want)?;
                            push(format!("gemv_rope {tag} keys"), &kc3, &kc4)?;
                            push(format!("gemv_rope {tag} values"), &vc3, &vc4)?;
                        }
                    }
                }
                let a1 = attention(on, &q1, &step, &kc, &vc, heads)?;
                let a2 = attention(off, &f32s(&q1)?, &step, &f32s(&kc)?, &f32s(&vc)?, heads)?;
                push(format!("attention b{b} {tag}"), &a1, &a2)?;
            }
        }
    }
    // Greedy tokens: the same index exactly (random logits have no ties), with and without
    // 16-byte loads (vocabularies of a multiple of 4, or not).
    for (b, vocab) in [(1usize, 4096usize), (5, 4099), (3, 100_352)] {
        let logits = Tensor::randn(0f32, 1.0, (b, vocab), device)?;
        let got = argmax(Kernels::ALL, &logits)?.to_vec1::<u32>()?;
        let want = argmax(Kernels::NONE, &logits)?.to_vec1::<u32>()?;
        let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        out.push(CheckResult {
            op: format!("argmax b{b} vocab {vocab} (rows wrong)"),
            dtype: "f32".into(),
            max_rel_err: wrong as f64,
            tolerance: 0.0,
            ok: wrong == 0 && got.len() == b,
        });
    }
    Ok(out)
}

fn rel_err(got: &Tensor, want: &Tensor) -> Result<f64> {
    let got = got.to_dtype(DType::F32)?.flatten_all()?;
    let want = want.to_dtype(DType::F32)?.flatten_all()?;
    let diff = (got - &want)?.abs()?.max(0)?.to_scalar::<f32>()? as f64;
    let scale = want.abs()?.max(0)?.to_scalar::<f32>()? as f64;
    Ok(diff / scale.max(1e-12))
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    //! Launches the kernels of `kernels/decode.cu` on candle's CUDA storage.

    use super::{Heads, Step};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaStream, DevicePtr, LaunchConfig, PushKernelArg, SyncOnDrop,
    };
    use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{bail, DType, Layout, Result, Shape, Storage, Tensor};

    mod ptx {
        include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
    }

    const MODULE: &str = "phiforge_decode";

    fn suffix(dtype: DType) -> Result<&'static str> {
        match dtype {
            DType::F32 => Ok("f32"),
            DType::F16 => Ok("f16"),
            DType::BF16 => Ok("bf16"),
            d => bail!("no fused decode kernel for {d:?}"),
        }
    }

    fn storage(s: &Storage) -> Result<&CudaStorage> {
        match s {
            Storage::Cuda(c) => Ok(c),
            _ => bail!("fused decode kernels need CUDA tensors"),
        }
    }

    /// The device address of a tensor's first element; the tensor must be contiguous (its
    /// storage stays locked while the kernel is queued: the guard records the read when
    /// dropped).
    fn address<'a>(
        s: &'a CudaStorage,
        l: &Layout,
        stream: &'a CudaStream,
    ) -> Result<(u64, SyncOnDrop<'a>)> {
        if !l.is_contiguous() {
            bail!("fused decode kernels need contiguous tensors")
        }
        let (ptr, guard) = match &s.slice {
            CudaStorageSlice::F32(x) => x.device_ptr(stream),
            CudaStorageSlice::F16(x) => x.device_ptr(stream),
            CudaStorageSlice::BF16(x) => x.device_ptr(stream),
            CudaStorageSlice::U32(x) => x.device_ptr(stream),
            _ => bail!("fused decode kernels: unsupported dtype {:?}", s.dtype()),
        };
        Ok((
            ptr + (l.start_offset() * s.dtype().size_in_bytes()) as u64,
            guard,
        ))
    }

    /// Whether `t`'s first element is 16-byte aligned (for 16-byte loads).
    fn aligned(t: &Tensor) -> Result<bool> {
        let dev = device(t)?;
        let stream = dev.cuda_stream();
        let (s, l) = t.storage_and_layout();
        let (p, _guard) = address(storage(&s)?, l, &stream)?;
        Ok(p % 16 == 0)
    }

    /// Launches `kernel` of decode.cu (its name without the dtype suffix) for `dtype` on a
    /// `grid` of blocks of `block` threads, with the arguments every kernel there takes, in
    /// this order: the device addresses of `tensors` (`None`: a null pointer), then `ints`,
    /// then `float` if any.
    ///
    /// # Safety
    /// The tensors must hold what the kernel reads and writes for this grid and these
    /// integers: the callers check shapes, positions and alignment first.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch(
        dev: &CudaDevice,
        kernel: &str,
        dtype: DType,
        grid: (u32, u32, u32),
        block: u32,
        tensors: &[Option<&Tensor>],
        ints: &[i32],
        float: Option<f32>,
    ) -> Result<()> {
        let stream = dev.cuda_stream();
        let locks: Vec<_> = tensors
            .iter()
            .map(|t| t.map(|t| t.storage_and_layout()))
            .collect();
        let mut ptrs = Vec::with_capacity(locks.len());
        let mut guards = Vec::with_capacity(locks.len());
        for lock in &locks {
            match lock {
                Some((s, l)) => {
                    let (p, g) = address(storage(s)?, l, &stream)?;
                    ptrs.push(p);
                    guards.push(g);
                }
                None => ptrs.push(0u64),
            }
        }
        let name = format!("{kernel}_{}", suffix(dtype)?);
        let f = dev.get_or_load_custom_func(&name, MODULE, ptx::DECODE)?;
        let mut bld = f.builder();
        for p in &ptrs {
            bld.arg(p);
        }
        for i in ints {
            bld.arg(i);
        }
        if let Some(x) = &float {
            bld.arg(x);
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the caller's (see above).
        unsafe { bld.launch(cfg) }.w()?;
        drop(guards);
        Ok(())
    }

    /// A new, uninitialised tensor of `shape` (every element is written by the kernel).
    fn alloc(dev: &CudaDevice, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        // SAFETY: the caller's kernel writes every element before anything reads it.
        let slice = unsafe {
            match dtype {
                DType::F32 => CudaStorageSlice::F32(dev.alloc::<f32>(n)?),
                DType::F16 => CudaStorageSlice::F16(dev.alloc::<half::f16>(n)?),
                DType::BF16 => CudaStorageSlice::BF16(dev.alloc::<half::bf16>(n)?),
                DType::U32 => CudaStorageSlice::U32(dev.alloc::<u32>(n)?),
                d => bail!("fused decode kernels: unsupported dtype {d:?}"),
            }
        };
        let s = CudaStorage {
            slice,
            device: dev.clone(),
        };
        Ok(Tensor::from_storage(
            Storage::Cuda(s),
            shape,
            BackpropOp::none(),
            false,
        ))
    }

    fn device(t: &Tensor) -> Result<CudaDevice> {
        match t.device() {
            candle_core::Device::Cuda(d) => Ok(d.clone()),
            _ => bail!("fused decode kernels need CUDA tensors"),
        }
    }

    fn same_dtype(ts: &[&Tensor]) -> Result<DType> {
        let d = ts[0].dtype();
        if ts.iter().any(|t| t.dtype() != d) {
            bail!("fused decode kernels: mixed dtypes")
        }
        Ok(d)
    }

    /// That `b` rows' keys and values fit the caches `kc`/`vc` at `step`'s slots and positions,
    /// and the RoPE tables cover those positions.
    fn check_cache(
        what: &str,
        b: usize,
        step: &Step,
        tables: Option<(&Tensor, &Tensor)>,
        kc: &Tensor,
        vc: &Tensor,
        heads: Heads,
    ) -> Result<()> {
        let Heads { kvh, hd, ctx, .. } = heads;
        let cache = [kc.dim(0)?, kvh, ctx, hd];
        let tables_ok = match tables {
            None => true,
            Some((cos, sin)) => {
                let (rows, half) = cos.dims2()?;
                cos.dtype() == DType::F32
                    && sin.dtype() == DType::F32
                    && sin.dims() == cos.dims()
                    && half == hd / 2
                    && step.pos.iter().all(|&p| (p as usize) < rows)
            }
        };
        if kc.dims() != cache
            || vc.dims() != cache
            || step.first + b > cache[0]
            || step.pos.len() != b
            || step.pos.iter().any(|&p| p as usize >= ctx)
            || !tables_ok
        {
            bail!("{what}: inconsistent shapes or positions")
        }
        Ok(())
    }

    pub fn embed(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
        let b = ids.dim(0)?;
        let (_, d) = table.dims2()?;
        if ids.dtype() != DType::U32 || ids.rank() != 1 {
            bail!("embed: ids must be a u32 vector")
        }
        let dtype = table.dtype();
        let dev = device(table)?;
        let out = alloc(&dev, dtype, (b, d))?;
        let grid = (b as u32, d.div_ceil(1024) as u32, 1);
        let tensors = [Some(ids), Some(table), Some(&out)];
        // SAFETY: out is b × d; the ids are the engine's tokens, rows of the table.
        unsafe { launch(&dev, "embed", dtype, grid, 256, &tensors, &[d as i32], None) }?;
        Ok(out)
    }

    pub fn argmax(logits: &Tensor) -> Result<Tensor> {
        let (rows, vocab) = logits.dims2()?;
        let dev = device(logits)?;
        // 16-byte loads need the rows to start 16-byte aligned; a view elsewhere gets a copy.
        let logits = if logits.is_contiguous() && aligned(logits)? {
            logits.clone()
        } else {
            logits.copy()?
        };
        let out = alloc(&dev, DType::U32, rows)?;
        let tensors = [Some(&logits), Some(&out)];
        // SAFETY: one block per row of `vocab` f32 values; out has one u32 per row.
        unsafe {
            launch(
                &dev,
                "argmax_rows",
                DType::F32,
                (rows as u32, 1, 1),
                1024,
                &tensors,
                &[vocab as i32],
                None,
            )
        }?;
        Ok(out)
    }

    /// Copies `src` into `dst` (same dtype and element count, both contiguous), on the stream:
    /// a graph's result goes to a buffer that outlives it.
    pub fn copy_into(dst: &Tensor, src: &Tensor) -> Result<()> {
        if dst.dtype() != src.dtype() || dst.elem_count() != src.elem_count() {
            bail!(
                "copy_into: {:?} {:?} into {:?} {:?}",
                src.dtype(),
                src.shape(),
                dst.dtype(),
                dst.shape()
            )
        }
        let dev = device(dst)?;
        let stream = dev.cuda_stream();
        let (s1, l1) = dst.storage_and_layout();
        let (s2, l2) = src.storage_and_layout();
        let p1 = address(storage(&s1)?, l1, &stream)?;
        let p2 = address(storage(&s2)?, l2, &stream)?;
        let bytes = src.elem_count() * src.dtype().size_in_bytes();
        // SAFETY: both ranges are live, contiguous and `bytes` long.
        unsafe {
            candle_core::cuda_backend::cudarc::driver::result::memcpy_dtod_async(
                p1.0,
                p2.0,
                bytes,
                stream.cu_stream(),
            )
        }
        .w()
    }

    /// Copies `host` into the u32 tensor `dst` (as many elements), on the stream.
    pub fn upload_u32(dst: &Tensor, host: &[u32]) -> Result<()> {
        if dst.dtype() != DType::U32 || dst.elem_count() != host.len() {
            bail!(
                "upload: {} values into {:?} {:?}",
                host.len(),
                dst.dtype(),
                dst.shape()
            )
        }
        let dev = device(dst)?;
        let stream = dev.cuda_stream();
        let (s, l) = dst.storage_and_layout();
        let p = address(storage(&s)?, l, &stream)?;
        // SAFETY: `dst` holds host.len() u32 values; the host slice outlives the call (a
        // pageable copy is staged before it returns).
        unsafe {
            candle_core::cuda_backend::cudarc::driver::result::memcpy_htod_async(
                p.0,
                host,
                stream.cu_stream(),
            )
        }
        .w()
    }

    pub fn add_rms_norm(x: &Tensor, h: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let dtype = same_dtype(&[x, h, w])?;
        let d = x.dim(candle_core::D::Minus1)?;
        if h.dims() != x.dims() || w.dims() != [d] {
            bail!(
                "add_rms_norm: shapes {:?}, {:?}, {:?}",
                x.dims(),
                h.dims(),
                w.dims()
            )
        }
        let rows = x.elem_count() / d;
        let dev = device(x)?;
        let (xo, y) = (
            alloc(&dev, dtype, x.shape())?,
            alloc(&dev, dtype, x.shape())?,
        );
        // Eight elements a thread (NORM_MAX) in registers, 32 to 1024 threads.
        let threads = d.div_ceil(8).next_multiple_of(32).clamp(32, 1024) as u32;
        let grid = (rows as u32, 1, 1);
        let tensors = [Some(x), Some(h), Some(w), Some(&xo), Some(&y)];
        let (ints, eps) = ([d as i32], Some(eps as f32));
        // SAFETY: the tensors are contiguous and sized for `rows` × `d`.
        unsafe {
            launch(
                &dev,
                "add_rms_norm",
                dtype,
                grid,
                threads,
                &tensors,
                &ints,
                eps,
            )
        }?;
        Ok((xo, y))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rope_cache(
        qkv: &Tensor,
        step: &Step,
        cos: &Tensor,
        sin: &Tensor,
        kc: &Tensor,
        vc: &Tensor,
        heads: Heads,
        scale: f64,
    ) -> Result<Tensor> {
        let dtype = same_dtype(&[qkv, kc, vc])?;
        let Heads { h, kvh, hd, ctx } = heads;
        let b = qkv.dim(0)?;
        if qkv.dims() != [b, (h + 2 * kvh) * hd] {
            bail!("rope_cache: q/k/v of shape {:?}", qkv.dims())
        }
        check_cache("rope_cache", b, step, Some((cos, sin)), kc, vc, heads)?;
        let dev = device(qkv)?;
        let q = alloc(&dev, dtype, (b, h, hd))?;
        // One pair of elements a thread.
        let grid = (b as u32, ((h + 2 * kvh) * hd / 2).div_ceil(128) as u32, 1);
        let tensors = [
            Some(qkv),
            Some(step.positions),
            Some(cos),
            Some(sin),
            Some(&q),
            Some(kc),
            Some(vc),
        ];
        let ints = [h, kvh, hd, ctx, step.first].map(|v| v as i32);
        let scale = Some(scale as f32);
        // SAFETY: shapes checked above; every position is inside the cache.
        unsafe { launch(&dev, "rope_cache", dtype, grid, 128, &tensors, &ints, scale) }?;
        Ok(q)
    }

    /// Blocks that keep the GPU busy: splits of the positions are added until the batch's
    /// (sequence, KV head) blocks reach about two per multiprocessor.
    fn splits(dev: &CudaDevice, blocks: usize, span: usize) -> usize {
        use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
        static SMS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let sms = *SMS.get_or_init(|| {
            dev.cuda_stream()
                .context()
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_or(132, |n| n.max(1) as usize)
        });
        (2 * sms)
            .div_ceil(blocks.max(1))
            .min(span.div_ceil(32))
            .clamp(1, 256) // at most ATT_MAX_SPLITS (decode.cu)
    }

    /// The split counters of the device's decode attention: one per (sequence, KV head), zero
    /// between launches (the kernel's last block for each resets it). Splits happen only when
    /// the batch's blocks are fewer than about two per multiprocessor, so a few thousand are
    /// plenty.
    fn split_counters(dev: &CudaDevice, n: usize) -> Result<Tensor> {
        const N: usize = 4096;
        type Counters = std::sync::Mutex<
            std::collections::HashMap<candle_core::cuda_backend::DeviceId, Tensor>,
        >;
        static COUNTERS: std::sync::OnceLock<Counters> = std::sync::OnceLock::new();
        if n > N {
            bail!("attention: {n} split counters wanted, {N} kept")
        }
        let mut map = match COUNTERS.get_or_init(Default::default).lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(t) = map.get(&dev.id()) {
            return Ok(t.clone());
        }
        let t = Tensor::zeros(N, DType::U32, &candle_core::Device::Cuda(dev.clone()))?;
        map.insert(dev.id(), t.clone());
        Ok(t)
    }

    pub fn attention(
        q: &Tensor,
        step: &Step,
        kc: &Tensor,
        vc: &Tensor,
        heads: Heads,
    ) -> Result<Tensor> {
        let dtype = same_dtype(&[q, kc, vc])?;
        let Heads { h, kvh, hd, ctx } = heads;
        let b = q.dim(0)?;
        let rep = h / kvh;
        if q.dims() != [b, h, hd] || rep > 8 || !matches!(hd, 64 | 96 | 128) {
            bail!("attention: queries of shape {:?}", q.dims())
        }
        check_cache("attention", b, step, None, kc, vc, heads)?;
        let dev = device(q)?;
        // The split count follows the cache's size and the kernel divides the longest row's
        // positions among the splits itself (chunk 0): the launch is the same at every step, as
        // a CUDA graph replays it.
        let splits = splits(&dev, b * kvh, ctx);
        let out = alloc(&dev, dtype, (b, h * hd))?;
        // Split, each block leaves its partial results and the last block of each (sequence,
        // KV head) to finish merges them.
        let parts = if splits > 1 {
            let n = b * h * splits;
            Some([
                alloc(&dev, DType::F32, n)?,
                alloc(&dev, DType::F32, n)?,
                alloc(&dev, DType::F32, n * hd)?,
                split_counters(&dev, b * kvh)?,
            ])
        } else {
            None
        };
        let part = |i: usize| parts.as_ref().map(|p| &p[i]);
        let tensors = [
            Some(q),
            Some(kc),
            Some(vc),
            Some(step.positions),
            Some(&out),
            part(0),
            part(1),
            part(2),
            part(3),
        ];
        let ints = [h, kvh, ctx, step.first, 0, splits].map(|v| v as i32);
        let r = if rep <= 4 { 4 } else { 8 };
        let kernel = format!("attn_decode_{}_{r}", hd / 32);
        let grid = (b as u32, kvh as u32, splits as u32);
        // SAFETY: shapes checked above; 4 warps per block, as ATT_WARPS.
        unsafe { launch(&dev, &kernel, dtype, grid, 128, &tensors, &ints, None) }?;
        Ok(out)
    }

    pub fn silu_mul(gu: &Tensor) -> Result<Tensor> {
        let dtype = gu.dtype();
        let (b, two) = gu.dims2()?;
        let inter = two / 2;
        let dev = device(gu)?;
        let out = alloc(&dev, dtype, (b, inter))?;
        let grid = ((b * inter).div_ceil(256).min(65_535) as u32, 1, 1);
        let ints = [b as i32, inter as i32];
        // SAFETY: `out` holds b × inter elements, `gu` b × 2·inter.
        unsafe {
            launch(
                &dev,
                "silu_mul",
                dtype,
                grid,
                256,
                &[Some(gu), Some(&out)],
                &ints,
                None,
            )
        }?;
        Ok(out)
    }

    /// How a product of a few rows is done: our GEMV with one or two output columns a warp,
    /// its weight loads streamed past the caches or prefetching whole L2 lines; or cuBLAS.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Gemv {
        Warp1,
        Warp2,
        Warp1Prefetch,
        Warp2Prefetch,
        Cublas,
    }

    const WAYS: [Gemv; 5] = [
        Gemv::Warp1,
        Gemv::Warp2,
        Gemv::Warp1Prefetch,
        Gemv::Warp2Prefetch,
        Gemv::Cublas,
    ];

    impl Gemv {
        /// The kernel name's suffix for the loads: `p` for the prefetching ones.
        fn loads(self) -> &'static str {
            match self {
                Gemv::Warp1Prefetch | Gemv::Warp2Prefetch => "p",
                _ => "",
            }
        }

        fn columns(self) -> usize {
            match self {
                Gemv::Warp1 | Gemv::Warp1Prefetch => 1,
                _ => 2,
            }
        }
    }

    type GemvKey = (usize, usize, usize, DType);
    type Choices = std::sync::Mutex<std::collections::HashMap<GemvKey, (Gemv, [f64; 5])>>;

    /// The choice made for each (rows, n, k, dtype) seen, and the times that made it (µs).
    fn choices() -> &'static Choices {
        static CHOICES: std::sync::OnceLock<Choices> = std::sync::OnceLock::new();
        CHOICES.get_or_init(Default::default)
    }

    /// Every choice so far, one line each: shape, the five times, the winner.
    pub fn gemv_choices() -> Vec<String> {
        let map = match choices().lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut lines: Vec<String> = map
            .iter()
            .map(|((b, n, k, d), (c, t))| {
                format!(
                    "{b}x{k} · {n}x{k}ᵀ {d:?}: one column a warp {:.1} µs, two {:.1} µs, \
                     prefetching {:.1} / {:.1} µs, cuBLAS {:.1} µs -> {c:?}",
                    t[0], t[1], t[2], t[3], t[4]
                )
            })
            .collect();
        lines.sort();
        lines
    }

    /// `x` (b, k) · `w` (n, k)ᵀ with our GEMV, or `None` where cuBLAS does it: more than 4
    /// rows, unaligned or strided operands, or cuBLAS timed faster for this shape ([`choose`]).
    pub fn gemv(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
        if !eligible(x, w)? {
            return Ok(None);
        }
        match choose(x, w)? {
            Gemv::Cublas => Ok(None),
            c => run_gemv(x, w, c).map(Some),
        }
    }

    /// Whether our GEMV can take `x` (b, k) · `w` (n, k)ᵀ: 1 to 4 rows, one dtype, contiguous
    /// operands whose rows are a multiple of 16 bytes and which start 16-byte aligned.
    fn eligible(x: &Tensor, w: &Tensor) -> Result<bool> {
        let (b, k) = x.dims2()?;
        let (_, k2) = w.dims2()?;
        let dtype = x.dtype();
        Ok((1..=4).contains(&b)
            && k == k2
            && w.dtype() == dtype
            && x.is_contiguous()
            && w.is_contiguous()
            && (k * dtype.size_in_bytes()).is_multiple_of(16)
            && aligned(x)?
            && aligned(w)?)
    }

    /// How this shape's product is done: the first time a shape is seen, the five ways are
    /// timed (ten runs each, on the GPU's clock) and the fastest kept.
    fn choose(x: &Tensor, w: &Tensor) -> Result<Gemv> {
        let (b, k) = x.dims2()?;
        let n = w.dim(0)?;
        let key = (b, n, k, x.dtype());
        let known = match choices().lock() {
            Ok(m) => m.get(&key).map(|c| c.0),
            Err(p) => p.into_inner().get(&key).map(|c| c.0),
        };
        if let Some(c) = known {
            return Ok(c);
        }
        // Timed on the GPU with events, after runs that fill the stream's queue, so the figure
        // is the kernels' time and not the host's launching.
        use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
        let stream = device(x)?.cuda_stream();
        let timed = |e: candle_core::cuda_backend::cudarc::driver::DriverError| {
            candle_core::Error::Msg(format!("timing a product: {e:?}"))
        };
        let mut times = [0f64; 5];
        for (i, c) in WAYS.into_iter().enumerate() {
            let run = || -> Result<()> {
                match c {
                    Gemv::Cublas => x.matmul(&w.t()?).map(drop),
                    _ => run_gemv(x, w, c).map(drop),
                }
            };
            for _ in 0..3 {
                run()?;
            }
            let reps = 10;
            let start = stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(timed)?;
            for _ in 0..reps {
                run()?;
            }
            let end = stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(timed)?;
            times[i] = start.elapsed_ms(&end).map_err(timed)? as f64 * 1e3 / reps as f64;
        }
        let best = WAYS
            .into_iter()
            .zip(times)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(Gemv::Cublas, |(c, _)| c);
        tracing::debug!("GEMV {b}x{k} · {n}x{k}ᵀ: {times:.1?} µs -> {best:?}");
        match choices().lock() {
            Ok(mut m) => m.insert(key, (best, times)),
            Err(p) => p.into_inner().insert(key, (best, times)),
        };
        Ok(best)
    }

    /// The way to use: `force`, or the timing's choice for this shape ([`choose`]).
    fn way(x: &Tensor, w: &Tensor, force: Option<Gemv>) -> Result<Gemv> {
        match force {
            Some(how) => Ok(how),
            None => choose(x, w),
        }
    }

    /// The gate/up product with SiLU·up in its epilogue (`gemv_silu`), where our GEMV does this
    /// shape's product; `None` where cuBLAS does (`force`: these loads, whatever the timing
    /// chose).
    pub fn gemv_silu(x: &Tensor, w: &Tensor, force: Option<Gemv>) -> Result<Option<Tensor>> {
        if !eligible(x, w)? || !w.dim(0)?.is_multiple_of(2) {
            return Ok(None);
        }
        let how = way(x, w, force)?;
        if how == Gemv::Cublas {
            return Ok(None);
        }
        let (b, k) = x.dims2()?;
        let inter = w.dim(0)? / 2;
        let dtype = x.dtype();
        let dev = device(x)?;
        let out = alloc(&dev, dtype, (b, inter))?;
        let kernel = format!("gemv_silu{b}{}", how.loads());
        // One (gate, up) pair of rows a warp, 4 warps a block.
        let grid = (inter.div_ceil(4) as u32, 1, 1);
        let tensors = [Some(x), Some(w), Some(&out)];
        let ints = [k as i32, inter as i32];
        // SAFETY: x is b × k, w is 2·inter × k, out is b × inter, contiguous and aligned.
        unsafe { launch(&dev, &kernel, dtype, grid, 128, &tensors, &ints, None) }?;
        Ok(Some(out))
    }

    /// The q/k/v product with rope_cache in its epilogue (`gemv_rope`), where our GEMV does this
    /// shape's product; `None` where cuBLAS does (`force`: these loads, whatever the timing
    /// chose).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_rope(
        x: &Tensor,
        w: &Tensor,
        step: &Step,
        cos: &Tensor,
        sin: &Tensor,
        kc: &Tensor,
        vc: &Tensor,
        heads: Heads,
        scale: f64,
        force: Option<Gemv>,
    ) -> Result<Option<Tensor>> {
        let Heads { h, kvh, hd, ctx } = heads;
        if !eligible(x, w)? || w.dim(0)? != (h + 2 * kvh) * hd {
            return Ok(None);
        }
        let how = way(x, w, force)?;
        if how == Gemv::Cublas {
            return Ok(None);
        }
        let (b, k) = x.dims2()?;
        let dtype = same_dtype(&[x, w, kc, vc])?;
        check_cache("gemv_rope", b, step, Some((cos, sin)), kc, vc, heads)?;
        let dev = device(x)?;
        let q = alloc(&dev, dtype, (b, h, hd))?;
        let kernel = format!("gemv_rope{b}{}", how.loads());
        // One pair (i, i + hd/2) of a head a warp, 4 warps a block.
        let grid = (((h + 2 * kvh) * hd / 2).div_ceil(4) as u32, 1, 1);
        let tensors = [
            Some(x),
            Some(w),
            Some(step.positions),
            Some(cos),
            Some(sin),
            Some(&q),
            Some(kc),
            Some(vc),
        ];
        let ints = [k, h, kvh, hd, ctx, step.first].map(|v| v as i32);
        let scale = Some(scale as f32);
        // SAFETY: shapes checked above; every position is inside the cache.
        unsafe { launch(&dev, &kernel, dtype, grid, 128, &tensors, &ints, scale) }?;
        Ok(Some(q))
    }

    /// Our GEMV; `None` where it does not apply ([`eligible`]) or for cuBLAS.
    pub fn launch_gemv(x: &Tensor, w: &Tensor, how: Gemv) -> Result<Option<Tensor>> {
        if how == Gemv::Cublas || !eligible(x, w)? {
            return Ok(None);
        }
        run_gemv(x, w, how).map(Some)
    }

    /// Our GEMV on operands [`eligible`] has accepted, `how` one of its four forms.
    fn run_gemv(x: &Tensor, w: &Tensor, how: Gemv) -> Result<Tensor> {
        let (b, k) = x.dims2()?;
        let n = w.dim(0)?;
        let dtype = x.dtype();
        let cols = how.columns();
        let dev = device(x)?;
        let y = alloc(&dev, dtype, (b, n))?;
        let kernel = format!("gemv{b}c{cols}{}", how.loads());
        // 4 warps a block: small blocks spread evenly over the multiprocessors (the last wave of
        // a weight-streaming kernel is its waste).
        let grid = (n.div_ceil(4 * cols) as u32, 1, 1);
        let tensors = [Some(x), Some(w), Some(&y)];
        let ints = [k as i32, n as i32];
        // SAFETY: x is b × k, w is n × k, y is b × n, all contiguous and 16-byte aligned.
        unsafe { launch(&dev, &kernel, dtype, grid, 128, &tensors, &ints, None) }?;
        Ok(y)
    }
}

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
                ctx: 8
            },
            64,
            64,
            DType::F32
        )
        .unwrap()
        .is_empty());
    }
}
