// Fused kernels for the local engine's decode step (one new token per sequence), where candle's
// general kernels cost one launch per elementary operation: at batch 1 the weight products are
// most of a step and some 700 small launches the rest (docs/performance.md).
//
// - embed:        the new tokens' embedding rows;
// - add_rms_norm: residual add and the next RMSNorm in one pass over the row;
// - rope_cache:   RoPE (f32 tables) on the fused q/k/v output; queries out (scaled), keys and
//                 values written straight into the paged KV cache at each sequence's position;
// - attn_decode:  attention of each sequence's one query per head over its cached positions,
//                 read through its block table (grouped-query: one block reads a KV head once
//                 for all its query heads), split over positions when the batch alone cannot
//                 fill the GPU (flash-decoding), the last block of each KV head to finish
//                 merging the splits;
// - silu_mul:     SiLU(gate) * up on the fused gate/up output;
// - gemv:         y = x Wᵀ for 1 to 4 rows, streaming the weights with 16-byte loads (two
//                 shapes of work per warp; the engine times both against cuBLAS per shape);
// - argmax_rows:  the greedy token of each row of f32 logits.
//
// Every kernel computes in f32 and rounds once to the storage type. Each has a reference made of
// candle operations (engines/src/kernels.rs); `phiforge bench-engine --check` compares the two.
//
// The KV cache is paged (engines/src/kv.rs): each layer's keys, and its values, are one pool of
// shape (blocks, kvh, bs, hd), bs positions a block. Row r of a step has a block table, row r of
// `tables` (rows, width) u32: its position p is at offset p % bs of block tables[r·width + p / bs],
// so element d of KV head g there is at ((blk·kvh + g)·bs + p % bs)·hd + d. Tables may share
// blocks (common prefixes, read only); a row writes only its own new position pos[r].

#ifdef PHIFORGE_EMULATE
#include "emulate.h"  // on the CPU, for the tests (engines/tests/kernels_emulated.rs)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#endif

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // `part` may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = lane < warps ? part[lane] : 0.0f;
  return warp_sum(v);
}

// ---------------------------------------------------------------------------------------------
// embed: out (n, d) = rows ids[r] of table (vocab, d). Grid (n, blocks).
template <typename T>
__device__ void embed(const uint32_t *__restrict__ ids, const T *__restrict__ table,
                      T *__restrict__ out, int d) {
  const size_t r = blockIdx.x;
  const T *src = table + (size_t)ids[r] * d;
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < d; i += gridDim.y * blockDim.x)
    out[r * d + i] = src[i];
}

// ---------------------------------------------------------------------------------------------
// add_rms_norm: for each row, s = x + h (rounded to T, as the separate add would), xo = s,
// y = s * rsqrt(mean(s²) + eps) * w. Grid: one block per row. Each thread keeps its NORM_MAX
// elements in registers and issues all its loads at once (a row of 5120 is one round trip, not
// ten); rows longer than blockDim·NORM_MAX take a second, slower loop.
#define NORM_MAX 8
template <typename T>
__device__ void add_rms_norm(const T *__restrict__ x, const T *__restrict__ h,
                             const T *__restrict__ w, T *__restrict__ xo, T *__restrict__ y, int d,
                             float eps) {
  const size_t row = blockIdx.x;
  x += row * d;
  h += row * d;
  xo += row * d;
  y += row * d;
  const int stride = blockDim.x, fast = min(d, stride * NORM_MAX);
  float xs[NORM_MAX], hs[NORM_MAX], sum[NORM_MAX];
#pragma unroll
  for (int k = 0; k < NORM_MAX; k++) {
    const int i = threadIdx.x + k * stride;
    xs[k] = i < fast ? to_f(x[i]) : 0.0f;
    hs[k] = i < fast ? to_f(h[i]) : 0.0f;
  }
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < NORM_MAX; k++) {
    const int i = threadIdx.x + k * stride;
    sum[k] = to_f(from_f<T>(xs[k] + hs[k]));
    if (i < fast) {
      xo[i] = from_f<T>(sum[k]);
      ss += sum[k] * sum[k];
    }
  }
  for (int i = fast + threadIdx.x; i < d; i += stride) {
    const T v = from_f<T>(to_f(x[i]) + to_f(h[i]));
    xo[i] = v;
    ss += to_f(v) * to_f(v);
  }
  const float scale = rsqrtf(block_sum(ss) / d + eps);
#pragma unroll
  for (int k = 0; k < NORM_MAX; k++) {
    const int i = threadIdx.x + k * stride;
    if (i < fast) y[i] = from_f<T>(scale * sum[k] * to_f(w[i]));
  }
  for (int i = fast + threadIdx.x; i < d; i += stride) {
    y[i] = from_f<T>(scale * to_f(xo[i]) * to_f(w[i]));
  }
}

// ---------------------------------------------------------------------------------------------
// One pair of elements (i, i + hd/2) of head `head` of row `row` (the q/k/v product's values x1,
// x2): queries rotated and scaled into q, keys rotated and values as they are into the caches at
// offset `off` (the row's position p % bs) of block `blk` (its table's entry for p). c, s: the
// f32 tables at p.
template <typename T>
__device__ __forceinline__ void rope_store(size_t row, int head, int i, float x1, float x2,
                                           size_t blk, int off, const float *c, const float *s,
                                           T *q, T *kc, T *vc, int h, int kvh, int hd, int bs,
                                           float scale) {
  const int half = hd / 2;
  if (head < h + kvh) {
    const float o1 = x1 * c[i] - x2 * s[i];
    const float o2 = x2 * c[i] + x1 * s[i];
    if (head < h) {
      T *o = q + (row * h + head) * (size_t)hd;
      o[i] = from_f<T>(o1 * scale);
      o[i + half] = from_f<T>(o2 * scale);
    } else {
      T *o = kc + ((blk * kvh + (head - h)) * bs + off) * (size_t)hd;
      o[i] = from_f<T>(o1);
      o[i + half] = from_f<T>(o2);
    }
  } else {
    T *o = vc + ((blk * kvh + (head - h - kvh)) * bs + off) * (size_t)hd;
    o[i] = from_f<T>(x1);
    o[i + half] = from_f<T>(x2);
  }
}

// ---------------------------------------------------------------------------------------------
// rope_cache: qkv is (n, (h + 2 kvh) hd): h query heads, then kvh key heads, then kvh value heads.
// Row r is the new token of its sequence at position pos[r], which goes to offset pos[r] % bs of
// block tables[r·width + pos[r] / bs]. Rotation as transformers' rotate_half (first and second
// halves of each head), with the f32 tables cos/sin (positions, hd / 2). Queries go to q
// (n, h, hd), times `scale`; keys and values to the caches (blocks, kvh, bs, hd). Grid
// (n, blocks): each thread one pair of elements (for a decode step's few rows, a loop over the
// row would be a chain of memory round trips).
template <typename T>
__device__ void rope_cache(const T *__restrict__ qkv, const uint32_t *__restrict__ pos,
                           const uint32_t *__restrict__ tables, const float *__restrict__ cos,
                           const float *__restrict__ sin, T *__restrict__ q, T *__restrict__ kc,
                           T *__restrict__ vc, int h, int kvh, int hd, int bs, int width,
                           float scale) {
  const size_t row = blockIdx.x;
  const int half = hd / 2;
  const size_t p = pos[row];
  const size_t blk = tables[row * width + p / bs];
  const int off = (int)(p % bs);
  const T *src = qkv + row * (size_t)(h + 2 * kvh) * hd;
  const float *c = cos + p * half;
  const float *s = sin + p * half;
  const int total = (h + 2 * kvh) * half;
  for (int j = blockIdx.y * blockDim.x + threadIdx.x; j < total; j += gridDim.y * blockDim.x) {
    const int head = j / half, i = j % half;
    const T *xh = src + (size_t)head * hd;
    rope_store<T>(row, head, i, to_f(xh[i]), to_f(xh[i + half]), blk, off, c, s, q, kc, vc, h,
                  kvh, hd, bs, scale);
  }
}

// ---------------------------------------------------------------------------------------------
// attn_decode: q (n, h, E·32) already scaled; row r attends to its positions 0..pos[r], found
// through its block table (row r of `tables`, width blocks; caches (blocks, kvh, bs, E·32)).
// Grid (n, kvh, splits), ATT_WARPS warps per block; block (r, g, sp) takes the rep = h / kvh
// query heads of KV head g over positions [sp·chunk, (sp + 1)·chunk). Each warp walks its own
// groups of ATT_U positions with an online softmax (lane l holds elements l, l + 32, ...), then
// the warps merge in shared memory. With one split the block writes out (n, h·hd) in T;
// otherwise it writes its running max, sum and unnormalised output, which the last block of
// (r, g) to finish merges (counters: one per (r, g), zero between launches). chunk ≤ 0: the
// kernel splits the longest row's positions itself, in chunks of a multiple of ATT_U (a launch
// whose arguments do not change from step to step, as a CUDA graph replays it).
#define ATT_WARPS 4
#define ATT_U 4
// The most splits a launch may have (engines/src/kernels.rs caps them so).
#define ATT_MAX_SPLITS 256

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}


template <typename T, int E, int R>
__device__ void attn_decode(const T *q, const T *kc, const T *vc, const uint32_t *pos,
                            const uint32_t *tables, T *out, float *pm, float *pl, float *pacc,
                            unsigned *counters, int h, int kvh, int bs, int width, int chunk,
                            int splits) {
  constexpr int HD = E * 32;
  const int row = blockIdx.x, g = blockIdx.y, sp = blockIdx.z;
  const int rep = h / kvh;
  const int len = (int)pos[row] + 1;
  if (chunk <= 0) {  // from the longest row (kept on the device, for CUDA graphs)
    int span = 1;
    for (int r = 0; r < (int)gridDim.x; r++) span = max(span, (int)pos[r] + 1);
    // A multiple of ATT_U: with bs one too, no warp's group of positions spans two blocks.
    chunk = ((span + splits - 1) / splits + ATT_U - 1) / ATT_U * ATT_U;
  }
  const int p0 = sp * chunk;
  const int p1 = min(len, p0 + chunk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  float qr[R][E], acc[R][E], m[R], l[R];
#pragma unroll
  for (int j = 0; j < R; j++) {
    m[j] = -INFINITY;
    l[j] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; e++) {
      acc[j][e] = 0.0f;
      qr[j][e] = j < rep ? to_f(q[((size_t)row * h + g * rep + j) * HD + e * 32 + lane]) : 0.0f;
    }
  }
  // This row's block table, and KV head g's first element of a block: position o of block blk
  // is at kb + (blk·kvh·bs + o)·HD.
  const uint32_t *tab = tables + (size_t)row * width;
  const T *kb = kc + (size_t)g * bs * HD;
  const T *vb = vc + (size_t)g * bs * HD;
  const size_t stride = (size_t)kvh * bs;  // positions from one block to the next
  // Each warp takes ATT_U consecutive positions at a time, all their loads issued before any
  // arithmetic, then folds them into its running softmax in one update. A group's block number
  // is loaded one group ahead (issued right after the previous group's keys and values), so
  // that its own loads wait for nothing; a group that spans two blocks (bs or chunk not a
  // multiple of ATT_U) looks up each position's block as it goes.
  constexpr int STEP = ATT_WARPS * ATT_U;
  int p = p0 + warp * ATT_U;
  uint32_t next = p < p1 ? __ldg(tab + p / bs) : 0u;
  for (; p < p1; p += STEP) {
    const int o = p % bs;
    const uint32_t blk = next;
    float kv[ATT_U][E], vv[ATT_U][E];
    if (o + ATT_U <= bs) {  // the group in one block
      const size_t at = (blk * stride + o) * HD;
#pragma unroll
      for (int u = 0; u < ATT_U; u++) {
        const bool in = p + u < p1;
#pragma unroll
        for (int e = 0; e < E; e++) {
          kv[u][e] = in ? to_f(kb[at + u * HD + e * 32 + lane]) : 0.0f;
          vv[u][e] = in ? to_f(vb[at + u * HD + e * 32 + lane]) : 0.0f;
        }
      }
    } else {
#pragma unroll
      for (int u = 0; u < ATT_U; u++) {
        const bool in = p + u < p1;
        const int pu = p + u;
        const size_t at = in ? ((size_t)__ldg(tab + pu / bs) * stride + pu % bs) * HD : 0;
#pragma unroll
        for (int e = 0; e < E; e++) {
          kv[u][e] = in ? to_f(kb[at + e * 32 + lane]) : 0.0f;
          vv[u][e] = in ? to_f(vb[at + e * 32 + lane]) : 0.0f;
        }
      }
    }
    next = p + STEP < p1 ? __ldg(tab + (p + STEP) / bs) : 0u;
#pragma unroll
    for (int j = 0; j < R; j++) {
      if (j < rep) {
        float sc[ATT_U];
        float mn = m[j];
#pragma unroll
        for (int u = 0; u < ATT_U; u++) {
          float d = 0.0f;
#pragma unroll
          for (int e = 0; e < E; e++) d += qr[j][e] * kv[u][e];
          sc[u] = p + u < p1 ? warp_sum(d) : -INFINITY;
          mn = fmaxf(mn, sc[u]);
        }
        const float corr = expf(m[j] - mn);  // 0 while m is -inf; mn is finite here
        l[j] *= corr;
#pragma unroll
        for (int e = 0; e < E; e++) acc[j][e] *= corr;
#pragma unroll
        for (int u = 0; u < ATT_U; u++) {
          const float pe = expf(sc[u] - mn);  // 0 past the end
          l[j] += pe;
#pragma unroll
          for (int e = 0; e < E; e++) acc[j][e] += pe * vv[u][e];
        }
        m[j] = mn;
      }
    }
  }

  __shared__ float sm_m[ATT_WARPS][R], sm_l[ATT_WARPS][R], sm_acc[ATT_WARPS][R][HD];
#pragma unroll
  for (int j = 0; j < R; j++) {
    if (lane == 0) {
      sm_m[warp][j] = m[j];
      sm_l[warp][j] = l[j];
    }
#pragma unroll
    for (int e = 0; e < E; e++) sm_acc[warp][j][e * 32 + lane] = acc[j][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < rep * HD; idx += blockDim.x) {
    const int j = idx / HD, d = idx % HD;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm_m[w][j]);
    float L = 0.0f, A = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < ATT_WARPS; w++) {
        const float f = expf(sm_m[w][j] - M);
        L += sm_l[w][j] * f;
        A += sm_acc[w][j][d] * f;
      }
    }
    const size_t head = (size_t)row * h + g * rep + j;
    if (splits == 1) {
      out[head * HD + d] = from_f<T>(L > 0.0f ? A / L : 0.0f);
    } else {
      const size_t at = head * splits + sp;
      pacc[at * HD + d] = A;
      if (d == 0) {
        pm[at] = M;
        pl[at] = L;
      }
    }
  }
  // The last block of (row, g) to finish merges the splits (no second launch); it resets the
  // counter for the next launch.
  if (splits > 1) {
    __shared__ bool last;
    __threadfence();  // this block's partials are visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned *c = counters + (size_t)row * kvh + g;
      last = atomicAdd(c, 1u) == (unsigned)splits - 1;
      if (last) *c = 0u;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // The partials were written by other blocks: read through L2 (ldcg). First each split's
    // weight for each query head of the group, exp(m_s - M) / L (M the largest running max, L
    // the sum of the running sums rescaled to it), one warp per head, lanes over the splits.
    __shared__ float sw[R][ATT_MAX_SPLITS];
    for (int j = warp; j < rep; j += ATT_WARPS) {
      const size_t head = (size_t)row * h + g * rep + j;
      const float *hm = pm + head * splits, *hl = pl + head * splits;
      float M = -INFINITY;
      for (int s = lane; s < splits; s += 32) M = fmaxf(M, __ldcg(hm + s));
      M = warp_max(M);
      float L = 0.0f;
      for (int s = lane; s < splits; s += 32) {
        const float ms = __ldcg(hm + s);
        const float e = ms == -INFINITY ? 0.0f : expf(ms - M);
        sw[j][s] = e;
        L += __ldcg(hl + s) * e;
      }
      const float inv = 1.0f / warp_sum(L);  // L > 0: split 0 always has positions
      for (int s = lane; s < splits; s += 32) sw[j][s] *= inv;
    }
    __syncthreads();
    // Then every output element is the weighted sum of the splits' outputs: four elements a
    // thread (16-byte loads), all splits' loads independent of one another.
    for (int idx = threadIdx.x; idx < rep * HD / 4; idx += blockDim.x) {
      const int j = idx / (HD / 4), d = idx % (HD / 4) * 4;
      const size_t head = (size_t)row * h + g * rep + j;
      const float *a = pacc + head * splits * HD + d;
      float4 A = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 8
      for (int s = 0; s < splits; s++) {
        const float4 v = __ldcg(reinterpret_cast<const float4 *>(a + (size_t)s * HD));
        const float f = sw[j][s];
        A.x += v.x * f;
        A.y += v.y * f;
        A.z += v.z * f;
        A.w += v.w * f;
      }
      T *o = out + head * HD + d;
      o[0] = from_f<T>(A.x);
      o[1] = from_f<T>(A.y);
      o[2] = from_f<T>(A.z);
      o[3] = from_f<T>(A.w);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// silu_mul: gu (n, 2 inter), gate then up; out (n, inter) = silu(gate) * up.
template <typename T>
__device__ void silu_mul(const T *gu, T *out, int n, int inter) {
  const size_t total = (size_t)n * inter;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (size_t)gridDim.x * blockDim.x) {
    const size_t r = idx / inter, c = idx % inter;
    const float g = to_f(gu[r * 2 * inter + c]);
    const float u = to_f(gu[r * 2 * inter + inter + c]);
    out[idx] = from_f<T>(g / (1.0f + expf(-g)) * u);
  }
}

// ---------------------------------------------------------------------------------------------
// gemv: y (NB, n) = x (NB, k) · w (n, k)ᵀ. Each warp computes C output columns (1 or 2) for all
// NB rows; lanes stride over 16-byte chunks of the weight rows (read once, streamed past the
// caches), eight chunks in flight per lane, and of x (read by every warp, cached). k·sizeof(T)
// must be a multiple of 16 and the pointers 16-byte aligned (checked by the caller).
// The dot product of two 16-byte chunks of T.
template <typename T> __device__ __forceinline__ float dot16(uint4 a, uint4 b) {
  const T *x = reinterpret_cast<const T *>(&a);
  const T *y = reinterpret_cast<const T *>(&b);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 16 / (int)sizeof(T); i++) s += to_f(x[i]) * to_f(y[i]);
  return s;
}

// A 16-byte chunk of a weight row, read once: L = 0 streams it past the caches (evict-first);
// L = 1 skips L1 and asks L2 to fetch the whole 256-byte line (fewer, larger DRAM requests).
// Which is faster depends on the GPU; the engine times both.
template <int L> __device__ __forceinline__ uint4 load_w(const uint4 *p);
template <> __device__ __forceinline__ uint4 load_w<0>(const uint4 *p) { return __ldcs(p); }
template <> __device__ __forceinline__ uint4 load_w<1>(const uint4 *p) {
#ifdef PHIFORGE_EMULATE
  return *p;
#else
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
#endif
}

// The dot products of the NB rows of x with C weight rows, summed over the warp (every lane
// gets them): lanes stride over 16-byte chunks, 8 / C chunks of each weight row in flight per
// lane, all of a round's weight loads issued before any arithmetic (the last round's predicated).
template <typename T, int NB, int C, int L>
__device__ __forceinline__ void warp_dots(const T *__restrict__ x, const uint4 *const (&wr)[C],
                                          int k, float (&a)[C][NB]) {
  constexpr int V = 16 / sizeof(T);  // elements per 16-byte chunk
  constexpr int U = 8 / C;
  const int lane = threadIdx.x % 32;
  const int chunks = k / V;
  const uint4 *xv = reinterpret_cast<const uint4 *>(x);
#pragma unroll
  for (int c = 0; c < C; c++)
#pragma unroll
    for (int b = 0; b < NB; b++) a[c][b] = 0.0f;
  for (int i = lane; i < chunks; i += 32 * U) {
    uint4 u[C][U];
#pragma unroll
    for (int c = 0; c < C; c++)
#pragma unroll
      for (int j = 0; j < U; j++)
        u[c][j] = i + 32 * j < chunks ? load_w<L>(wr[c] + i + 32 * j) : uint4{0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < U; j++) {
      if (i + 32 * j < chunks) {
#pragma unroll
        for (int b = 0; b < NB; b++) {
          const uint4 xb = __ldg(xv + (size_t)b * chunks + i + 32 * j);
#pragma unroll
          for (int c = 0; c < C; c++) a[c][b] += dot16<T>(u[c][j], xb);
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < C; c++)
#pragma unroll
    for (int b = 0; b < NB; b++) a[c][b] = warp_sum(a[c][b]);
}

template <typename T, int NB, int C, int L>
__device__ void gemv(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y, int k,
                     int n) {
  const int col = ((blockIdx.x * blockDim.x + threadIdx.x) / 32) * C;
  if (col >= n) return;
  const uint4 *wr[C];
#pragma unroll
  for (int c = 0; c < C; c++)
    wr[c] = reinterpret_cast<const uint4 *>(w + (size_t)min(col + c, n - 1) * k);
  float a[C][NB];
  warp_dots<T, NB, C, L>(x, wr, k, a);
  if (threadIdx.x % 32 == 0) {
#pragma unroll
    for (int c = 0; c < C; c++)
#pragma unroll
      for (int b = 0; b < NB; b++)
        if (col + c < n) y[(size_t)b * n + col + c] = from_f<T>(a[c][b]);
  }
}

// gemv_silu: the gate/up product and SiLU(gate)·up in one: warp p takes rows p (gate) and
// p + inter (up) of the fused weights; out (NB, inter). The products are rounded to T first, as
// the separate product would store them.
template <typename T, int NB, int L>
__device__ void gemv_silu(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ out,
                          int k, int inter) {
  const int p = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (p >= inter) return;
  const uint4 *wr[2] = {reinterpret_cast<const uint4 *>(w + (size_t)p * k),
                        reinterpret_cast<const uint4 *>(w + (size_t)(p + inter) * k)};
  float a[2][NB];
  warp_dots<T, NB, 2, L>(x, wr, k, a);
  if (threadIdx.x % 32 == 0) {
#pragma unroll
    for (int b = 0; b < NB; b++) {
      const float g = to_f(from_f<T>(a[0][b])), u = to_f(from_f<T>(a[1][b]));
      out[(size_t)b * inter + p] = from_f<T>(g / (1.0f + expf(-g)) * u);
    }
  }
}

// gemv_rope: the q/k/v product and rope_cache in one: warp p takes the pair (i, i + hd/2) of head
// p / (hd/2), rows of the fused weights; row b of x is the new token at pos[b], stored through
// row b of the block tables as rope_cache does. The products are rounded to T first, as the
// separate product would store them.
template <typename T, int NB, int L>
__device__ void gemv_rope(const T *__restrict__ x, const T *__restrict__ w,
                          const uint32_t *__restrict__ pos, const uint32_t *__restrict__ tables,
                          const float *__restrict__ cos, const float *__restrict__ sin,
                          T *__restrict__ q, T *__restrict__ kc, T *__restrict__ vc, int k, int h,
                          int kvh, int hd, int bs, int width, float scale) {
  const int half = hd / 2;
  const int p = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (p >= (h + 2 * kvh) * half) return;
  const int head = p / half, i = p % half;
  const size_t col = (size_t)head * hd + i;
  const uint4 *wr[2] = {reinterpret_cast<const uint4 *>(w + col * k),
                        reinterpret_cast<const uint4 *>(w + (col + half) * k)};
  float a[2][NB];
  warp_dots<T, NB, 2, L>(x, wr, k, a);
  if (threadIdx.x % 32 == 0) {
#pragma unroll
    for (int b = 0; b < NB; b++) {
      const size_t at = pos[b];
      const size_t blk = tables[(size_t)b * width + at / bs];
      rope_store<T>(b, head, i, to_f(from_f<T>(a[0][b])), to_f(from_f<T>(a[1][b])), blk,
                    (int)(at % bs), cos + at * half, sin + at * half, q, kc, vc, h, kvh, hd, bs,
                    scale);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// argmax_rows: x (n, v) f32 logits; out[r] = the index of row r's largest element, the lowest
// index among equal ones (NaN never wins; a row without a number gives 0). One block per row,
// the row read with independent 16-byte loads where v is a multiple of 4 (candle's argmax
// walks it one element at a time, a layout lookup each).
__device__ __forceinline__ void arg_better(float v, int i, float &bv, int &bi) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

__device__ __forceinline__ void warp_arg_max(float &bv, int &bi) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    arg_better(ov, oi, bv, bi);
  }
}

extern "C" __global__ void argmax_rows_f32(const float *x, uint32_t *out, int v) {
  const int NONE = 0x7fffffff;
  const float *row = x + (size_t)blockIdx.x * v;
  float bv = -INFINITY;
  int bi = NONE;
  if (v % 4 == 0) {
    const float4 *r4 = reinterpret_cast<const float4 *>(row);
#pragma unroll 4
    for (int i = threadIdx.x; i < v / 4; i += blockDim.x) {
      const float4 f = r4[i];
      arg_better(f.x, 4 * i, bv, bi);
      arg_better(f.y, 4 * i + 1, bv, bi);
      arg_better(f.z, 4 * i + 2, bv, bi);
      arg_better(f.w, 4 * i + 3, bv, bi);
    }
  } else {
#pragma unroll 4
    for (int i = threadIdx.x; i < v; i += blockDim.x) arg_better(row[i], i, bv, bi);
  }
  warp_arg_max(bv, bi);
  __shared__ float sv[32];
  __shared__ int si[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (warp == 0) {
    bv = lane < warps ? sv[lane] : -INFINITY;
    bi = lane < warps ? si[lane] : NONE;
    warp_arg_max(bv, bi);
    if (lane == 0) out[blockIdx.x] = bi == NONE ? 0u : (uint32_t)bi;
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points, one per storage type (suffix f32, f16, bf16 as candle names its dtypes).
#define DECODE_OPS(T, SFX)                                                                       \
  extern "C" __global__ void embed_##SFX(const uint32_t *ids, const T *table, T *out, int d) {   \
    embed<T>(ids, table, out, d);                                                                \
  }                                                                                              \
  extern "C" __global__ void add_rms_norm_##SFX(const T *x, const T *h, const T *w, T *xo, T *y, \
                                                int d, float eps) {                              \
    add_rms_norm<T>(x, h, w, xo, y, d, eps);                                                     \
  }                                                                                              \
  extern "C" __global__ void rope_cache_##SFX(                                                   \
      const T *qkv, const uint32_t *pos, const uint32_t *tables, const float *cos,               \
      const float *sin, T *q, T *kc, T *vc, int h, int kvh, int hd, int bs, int width,           \
      float scale) {                                                                             \
    rope_cache<T>(qkv, pos, tables, cos, sin, q, kc, vc, h, kvh, hd, bs, width, scale);          \
  }                                                                                              \
  extern "C" __global__ void silu_mul_##SFX(const T *gu, T *out, int n, int inter) {             \
    silu_mul<T>(gu, out, n, inter);                                                              \
  }                                                                                              \
  GEMV(T, SFX, 1)                                                                                \
  GEMV(T, SFX, 2)                                                                                \
  GEMV(T, SFX, 3)                                                                                \
  GEMV(T, SFX, 4)                                                                                \
  ATTN(T, SFX, 2, 4)                                                                             \
  ATTN(T, SFX, 2, 8)                                                                             \
  ATTN(T, SFX, 3, 4)                                                                             \
  ATTN(T, SFX, 3, 8)                                                                             \
  ATTN(T, SFX, 4, 4)                                                                             \
  ATTN(T, SFX, 4, 8)

// gemv<NB>c<C>[p]: NB rows, C output columns a warp, p: the L2-prefetching loads;
// gemv_silu<NB>[p], gemv_rope<NB>[p]: with their epilogues.
#define GEMV(T, SFX, NB)                                                                         \
  GEMV_L(T, SFX, NB, , 0)                                                                        \
  GEMV_L(T, SFX, NB, p, 1)

#define GEMV_L(T, SFX, NB, P, L)                                                                 \
  extern "C" __global__ void gemv##NB##c1##P##_##SFX(const T *x, const T *w, T *y, int k,        \
                                                     int n) {                                    \
    gemv<T, NB, 1, L>(x, w, y, k, n);                                                            \
  }                                                                                              \
  extern "C" __global__ void gemv##NB##c2##P##_##SFX(const T *x, const T *w, T *y, int k,        \
                                                     int n) {                                    \
    gemv<T, NB, 2, L>(x, w, y, k, n);                                                            \
  }                                                                                              \
  extern "C" __global__ void gemv_silu##NB##P##_##SFX(const T *x, const T *w, T *out, int k,     \
                                                      int inter) {                               \
    gemv_silu<T, NB, L>(x, w, out, k, inter);                                                    \
  }                                                                                              \
  extern "C" __global__ void gemv_rope##NB##P##_##SFX(                                           \
      const T *x, const T *w, const uint32_t *pos, const uint32_t *tables, const float *cos,     \
      const float *sin, T *q, T *kc, T *vc, int k, int h, int kvh, int hd, int bs, int width,    \
      float scale) {                                                                             \
    gemv_rope<T, NB, L>(x, w, pos, tables, cos, sin, q, kc, vc, k, h, kvh, hd, bs, width,        \
                        scale);                                                                  \
  }

// attn_decode_<E>_<R>: head size E·32, up to R query heads per KV head.
#define ATTN(T, SFX, E, R)                                                                       \
  extern "C" __global__ void attn_decode_##E##_##R##_##SFX(                                      \
      const T *q, const T *kc, const T *vc, const uint32_t *pos, const uint32_t *tables, T *out, \
      float *pm, float *pl, float *pacc, unsigned *counters, int h, int kvh, int bs, int width,  \
      int chunk, int splits) {                                                                   \
    attn_decode<T, E, R>(q, kc, vc, pos, tables, out, pm, pl, pacc, counters, h, kvh, bs, width, \
                         chunk, splits);                                                         \
  }

DECODE_OPS(float, f32)
DECODE_OPS(__half, f16)
DECODE_OPS(__nv_bfloat16, bf16)
