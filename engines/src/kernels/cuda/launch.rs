//! What every launch of `kernels/decode.cu` needs: the compiled module, the device addresses of
//! candle's CUDA tensors, the launch itself, uninitialised outputs, and the checks of the KV
//! cache's shapes and block tables that the kernels rely on unchecked.

use crate::kernels::{Heads, Step};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaStream, DevicePtr, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, DType, Layout, Result, Shape, Storage, Tensor};

pub(super) mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

pub(super) const MODULE: &str = "phiforge_decode";

pub(super) fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        d => bail!("no fused decode kernel for {d:?}"),
    }
}

pub(super) fn storage(s: &Storage) -> Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("fused decode kernels need CUDA tensors"),
    }
}

/// The device address of a tensor's first element; the tensor must be contiguous (its
/// storage stays locked while the kernel is queued: the guard records the read when
/// dropped).
pub(super) fn address<'a>(
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
pub(super) fn aligned(t: &Tensor) -> Result<bool> {
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
pub(super) unsafe fn launch(
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
pub(super) fn alloc(dev: &CudaDevice, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
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

pub(super) fn device(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        _ => bail!("fused decode kernels need CUDA tensors"),
    }
}

pub(super) fn same_dtype(ts: &[&Tensor]) -> Result<DType> {
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
pub(super) fn check_cache(
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
