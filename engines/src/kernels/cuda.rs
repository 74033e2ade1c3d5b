//! Launches the kernels of `kernels/decode.cu` on candle's CUDA storage: embedding, norms,
//! RoPE with the KV cache's writes, paged attention, SiLU and argmax here; the products of a few
//! rows in [`gemv`]; what every launch shares in `launch`.

mod gemv;
mod launch;

pub use gemv::{gemv, gemv_choices, gemv_rope, gemv_silu, launch_gemv, Gemv};
use launch::{address, aligned, alloc, check_cache, device, launch, same_dtype, storage};

use super::{Heads, Step};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, DType, Result, Tensor};

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
