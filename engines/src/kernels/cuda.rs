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

/// That the caches `kc`/`vc` are pools of blocks (blocks, kvh, block, hd), that `step` has a
/// block table of `width` blocks for each of the `b` rows (u32, contiguous, on the device and
/// the same on the host), that every row's position is inside its table and every block a row
/// reaches (its table up to its position's block) inside the pools, and that the RoPE tables
/// cover the positions. The kernels index the pools with these, unchecked.
fn check_cache(
    what: &str,
    b: usize,
    step: &Step,
    rope: Option<(&Tensor, &Tensor)>,
    kc: &Tensor,
    vc: &Tensor,
    heads: Heads,
) -> Result<()> {
    let Heads { kvh, hd, block, .. } = heads;
    let blocks = kc.dim(0)?;
    let cache = [blocks, kvh, block, hd];
    let width = step.width();
    let rope_ok = match rope {
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
    let tables_ok = step.tables.dtype() == DType::U32
        && step.tables.dims() == [b, width]
        && step.tables.is_contiguous()
        && step.table.len() == b * width
        && step.positions.dtype() == DType::U32
        && step.positions.dims() == [b];
    if kc.dims() != cache
        || vc.dims() != cache
        || block == 0
        || step.pos.len() != b
        || !tables_ok
        || !rope_ok
    {
        bail!("{what}: inconsistent shapes")
    }
    // The kernels take positions, the block size and the width as i32.
    if width.saturating_mul(block) > i32::MAX as usize {
        bail!("{what}: tables of {width} blocks of {block} positions")
    }
    for (r, &p) in step.pos.iter().enumerate() {
        let p = p as usize;
        if p >= width * block {
            bail!("{what}: position {p} of row {r} past its table of {width} blocks of {block}")
        }
        let row = &step.table[r * width..(r + 1) * width];
        if let Some(&bad) = row[..=p / block].iter().find(|&&t| t as usize >= blocks) {
            bail!("{what}: row {r}'s table names block {bad}, past the pool of {blocks}")
        }
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
    let Heads { h, kvh, hd, block } = heads;
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
        Some(step.tables),
        Some(cos),
        Some(sin),
        Some(&q),
        Some(kc),
        Some(vc),
    ];
    let ints = [h, kvh, hd, block, step.width()].map(|v| v as i32);
    let scale = Some(scale as f32);
    // SAFETY: shapes checked above; every position is inside its table, every block it
    // reaches inside the caches.
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
    type Counters =
        std::sync::Mutex<std::collections::HashMap<candle_core::cuda_backend::DeviceId, Tensor>>;
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
    let Heads { h, kvh, hd, block } = heads;
    let b = q.dim(0)?;
    let rep = h / kvh;
    if q.dims() != [b, h, hd] || rep > 8 || !matches!(hd, 64 | 96 | 128) {
        bail!("attention: queries of shape {:?}", q.dims())
    }
    check_cache("attention", b, step, None, kc, vc, heads)?;
    let dev = device(q)?;
    // The split count follows the tables' size (the most positions a row can have) and the
    // kernel divides the longest row's positions among the splits itself (chunk 0): the launch
    // is the same at every step of a table width, as a CUDA graph replays it.
    let width = step.width();
    let splits = splits(&dev, b * kvh, width * block);
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
        Some(step.tables),
        Some(&out),
        part(0),
        part(1),
        part(2),
        part(3),
    ];
    let ints = [h, kvh, block, width, 0, splits].map(|v| v as i32);
    let r = if rep <= 4 { 4 } else { 8 };
    let kernel = format!("attn_decode_{}_{r}", hd / 32);
    let grid = (b as u32, kvh as u32, splits as u32);
    // SAFETY: shapes checked above (every position inside its table, every block a row reads
    // inside the caches); 4 warps per block, as ATT_WARPS.
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
