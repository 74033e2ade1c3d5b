// Runs CUDA kernels on the CPU, for the kernel tests that need no GPU
// (engines/tests/kernels_emulated.rs). It covers what decode.cu uses and nothing more: thread and
// block indices, __syncthreads, __shfl_xor_sync, __shared__ memory (blocks run one after
// another), cached/streaming loads, and the f16/bf16 types and conversions (round to nearest
// even, as the hardware). Timing, memory ordering between blocks and occupancy are not emulated:
// this checks what a kernel computes, not how fast.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <ucontext.h>
#include <vector>

#define __device__
#define __host__
#define __forceinline__ inline
#define __global__
#define __shared__ static

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;

using std::max;
using std::min;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

struct uint4 {
  unsigned x, y, z, w;
};
struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};
template <typename T> inline T __ldg(const T *p) { return *p; }
template <typename T> inline T __ldcs(const T *p) { return *p; }
template <typename T> inline T __ldcg(const T *p) { return *p; }
// Blocks run one after another: every write is visible to the next block, and an atomic is a
// plain read-modify-write.
inline void __threadfence() {}
inline unsigned atomicAdd(unsigned *p, unsigned v) {
  const unsigned old = *p;
  *p = old + v;
  return old;
}

// bf16: the high half of an f32, rounded to nearest even.
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {uint16_t(0x7fc0)};
  u += 0x7fff + ((u >> 16) & 1);
  return {uint16_t(u >> 16)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 v) {
  return {__bfloat162float(v.x), __bfloat162float(v.y)};
}

// f16: the compiler's own _Float16 (IEEE binary16, round to nearest even).
struct __half {
  _Float16 v;
};
struct __half2 {
  __half x, y;
};
inline float __half2float(__half h) { return float(h.v); }
inline __half __float2half(float f) { return {_Float16(f)}; }
inline float2 __half22float2(__half2 v) { return {float(v.x.v), float(v.y.v)}; }

// Every CUDA thread of a block is a coroutine (ucontext) with a stack of its own; the scheduler
// resumes each once per pass, and a thread runs until its next synchronisation point. A warp
// shuffle is two such points (every lane writes, then every lane reads), and the lanes of a warp
// reach the same points together, as on the GPU; __syncthreads holds a thread until every thread
// of the block still running is held there too. No OS threads: fast, and the same every run.
enum EmuState { EMU_READY, EMU_WARP, EMU_BLOCK, EMU_DONE };
struct EmuThread {
  ucontext_t ctx;
  std::vector<char> stack;
  EmuState state;
};
inline ucontext_t emu_main;
inline std::vector<EmuThread> emu_threads;
inline std::vector<uint32_t> emu_lanes;  // one slot per thread, for shuffles (the value's bits)
inline unsigned emu_current = 0;
inline std::function<void()> emu_body;

inline void emu_yield(EmuState state) {
  EmuThread &t = emu_threads[emu_current];
  t.state = state;
  swapcontext(&t.ctx, &emu_main);
}

inline void __syncthreads() { emu_yield(EMU_BLOCK); }

template <typename V> inline V emu_shfl_xor(V v, int mask) {
  static_assert(sizeof(V) == 4);
  const unsigned t = threadIdx.x;
  std::memcpy(&emu_lanes[t], &v, 4);
  emu_yield(EMU_WARP);  // every lane has written
  V r;
  std::memcpy(&r, &emu_lanes[(t & ~31u) | ((t & 31u) ^ unsigned(mask))], 4);
  emu_yield(EMU_WARP);  // every lane has read
  return r;
}
inline float __shfl_xor_sync(unsigned, float v, int mask) { return emu_shfl_xor(v, mask); }
inline int __shfl_xor_sync(unsigned, int v, int mask) { return emu_shfl_xor(v, mask); }

inline void emu_entry() {
  emu_body();
  emu_threads[emu_current].state = EMU_DONE;  // then back to emu_main through uc_link
}

// Runs `kernel(args...)` over `grid` blocks of `threads` threads (a multiple of 32).
template <typename... P, typename... A>
void emu_launch(Dim3 grid, unsigned threads, void (*kernel)(P...), A... args) {
  gridDim = grid;
  blockDim = Dim3{threads, 1, 1};
  emu_body = [&] { kernel(P(args)...); };
  emu_threads.resize(threads);
  emu_lanes.assign(threads, 0u);
  for (auto &t : emu_threads) t.stack.resize(64 * 1024);
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        blockIdx = Dim3{x, y, z};
        for (auto &t : emu_threads) {
          getcontext(&t.ctx);
          t.ctx.uc_stack.ss_sp = t.stack.data();
          t.ctx.uc_stack.ss_size = t.stack.size();
          t.ctx.uc_link = &emu_main;
          makecontext(&t.ctx, emu_entry, 0);
          t.state = EMU_READY;
        }
        for (;;) {
          bool ran = false, live = false;
          for (unsigned i = 0; i < threads; i++) {
            EmuThread &t = emu_threads[i];
            if (t.state == EMU_DONE) continue;
            live = true;
            if (t.state == EMU_BLOCK) continue;
            ran = true;
            emu_current = i;
            threadIdx = Dim3{i, 0, 0};
            swapcontext(&emu_main, &t.ctx);
          }
          if (!live) break;
          if (!ran)  // every running thread waits at __syncthreads: release them
            for (auto &t : emu_threads)
              if (t.state == EMU_BLOCK) t.state = EMU_READY;
        }
      }
}
