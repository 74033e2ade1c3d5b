//! [`check`]: every kernel against its candle fallback, on random inputs, in f32 and the model's
//! dtype (`phiforge bench-engine --check`, and at a small width whenever a model loads on a GPU).

use super::*;

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
/// paged caches of `heads.block` positions a block whose block tables are shuffled and share
/// their first blocks, attention split or not) in f32 and `dtype`, against its fallback on f32
/// copies of the same inputs. On the CPU there is nothing to check.
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
            // RoPE and cache writes, then attention: unequal lengths, short (one split) and long
            // (several), in a paged cache ([`paged`]).
            for long in [false, true] {
                let ctx = if long { 2048 } else { 96 };
                let pos: Vec<u32> = (0..b)
                    .map(|r| ((ctx - 1) as u32).saturating_sub(7 * r as u32 + (b as u32 % 3)))
                    .collect();
                let heads = Heads {
                    block: heads.block.max(1),
                    ..heads
                };
                let (blocks, width, tables) = paged(&pos, ctx, heads.block, b as u64);
                let positions = Tensor::new(pos.as_slice(), device)?;
                let tables_t = Tensor::from_vec(tables.clone(), (b, width), device)?;
                let step = Step {
                    positions: &positions,
                    pos: &pos,
                    tables: &tables_t,
                    table: &tables,
                };
                let table = |f: fn(f32) -> f32| -> Result<Tensor> {
                    let v: Vec<f32> = (0..ctx * heads.hd / 2)
                        .map(|i| f(i as f32 * 0.001))
                        .collect();
                    Tensor::from_vec(v, (ctx, heads.hd / 2), device)
                };
                let (cos, sin) = (table(f32::cos)?, table(f32::sin)?);
                let cache = [blocks, heads.kvh, heads.block, heads.hd];
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

/// Block tables for rows at positions `pos` (below `ctx`) in blocks of `block` positions: the
/// pool's size, the tables' width (enough for `ctx` positions) and the tables (rows × width,
/// row-major). The blocks are numbered in a shuffled order (`seed`); the rows share their first
/// blocks, those below every row's own position's block (read, never written: each row writes
/// only its own position, so no two rows write one block); entries past a row's position's
/// block name a spare block (the fallback reads them, masked, up to the longest row). The pool
/// has a few blocks no table names.
fn paged(pos: &[u32], ctx: usize, block: usize, seed: u64) -> (usize, usize, Vec<u32>) {
    let width = ctx.div_ceil(block);
    let last = |p: u32| p as usize / block;
    let shared = if pos.len() > 1 {
        pos.iter().map(|&p| last(p)).min().unwrap_or(0)
    } else {
        0
    };
    let own: usize = pos.iter().map(|&p| last(p) + 1 - shared).sum();
    let blocks = shared + own + 3;
    let mut ids: Vec<u32> = (0..blocks as u32).collect();
    fastrand::Rng::with_seed(seed).shuffle(&mut ids);
    let spare = ids[shared + own];
    let mut tables = vec![spare; pos.len() * width];
    let mut next = shared;
    for (r, &p) in pos.iter().enumerate() {
        let row = &mut tables[r * width..(r + 1) * width];
        row[..shared].copy_from_slice(&ids[..shared]);
        for t in &mut row[shared..=last(p)] {
            *t = ids[next];
            next += 1;
        }
    }
    (blocks, width, tables)
}

fn rel_err(got: &Tensor, want: &Tensor) -> Result<f64> {
    let got = got.to_dtype(DType::F32)?.flatten_all()?;
    let want = want.to_dtype(DType::F32)?.flatten_all()?;
    let diff = (got - &want)?.abs()?.max(0)?.to_scalar::<f32>()? as f64;
    let scale = want.abs()?.max(0)?.to_scalar::<f32>()? as f64;
    Ok(diff / scale.max(1e-12))
}
