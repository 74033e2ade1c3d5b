//! The products of a few rows by a weight matrix in decode steps: our GEMV kernels (one or two
//! output columns a warp, loads streamed or prefetched), fused with SiLU or with RoPE and the KV
//! cache's writes, or cuBLAS, whichever the device runs fastest for each shape.

use super::launch::{aligned, alloc, check_cache, device, launch, same_dtype};
use crate::kernels::{Heads, Step};
use candle_core::{DType, Result, Tensor};

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
    let Heads { h, kvh, hd, block } = heads;
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
        Some(step.tables),
        Some(cos),
        Some(sin),
        Some(&q),
        Some(kc),
        Some(vc),
    ];
    let ints = [k, h, kvh, hd, block, step.width()].map(|v| v as i32);
    let scale = Some(scale as f32);
    // SAFETY: shapes checked above; every position is inside its table, every block it
    // reaches inside the caches.
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
