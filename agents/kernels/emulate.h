// Runs CUDA kernels on the CPU, one std::thread per CUDA thread, for the kernel tests that need no
// GPU (agents/tests/kernels_emulated.rs). It covers what decode.cu uses and nothing more: thread
// and block indices, __syncthreads, __shfl_xor_sync, __shared__ memory (blocks run one after
// another), cached/streaming loads, and the f16/bf16 types and conversions (round to nearest
// even, as the hardware). Timing, memory ordering between blocks and occupancy are not emulated:
// this checks what a kernel computes, not how fast.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __device__
#define __host__
#define __forceinline__ inline
#define __global__
#define __shared__ static

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;

using std::min;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

struct uint4 {
  unsigned x, y, z, w;
};
struct float2 {
  float x, y;
};
template <typename T> inline T __ldg(const T *p) { return *p; }
template <typename T> inline T __ldcs(const T *p) { return *p; }

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

// Barriers of the running block and of each of its warps.
struct EmuBlock {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> lanes;  // one slot per thread, for shuffles
};
inline EmuBlock *emu_block = nullptr;

inline void __syncthreads() { emu_block->block->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
  const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
  auto &bar = *emu_block->warps[warp];
  emu_block->lanes[t] = v;
  bar.arrive_and_wait();
  const float r = emu_block->lanes[warp * 32 + (lane ^ unsigned(mask))];
  bar.arrive_and_wait();
  return r;
}

// Runs `kernel(args...)` over `grid` blocks of `threads` threads (a multiple of 32).
template <typename... P, typename... A>
void emu_launch(Dim3 grid, unsigned threads, void (*kernel)(P...), A... args) {
  gridDim = grid;
  blockDim = Dim3{threads, 1, 1};
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        EmuBlock b;
        b.block = std::make_unique<std::barrier<>>(threads);
        for (unsigned w = 0; w < threads / 32; w++)
          b.warps.push_back(std::make_unique<std::barrier<>>(32));
        b.lanes.assign(threads, 0.0f);
        emu_block = &b;
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; t++) {
          pool.emplace_back([&, t] {
            threadIdx = Dim3{t, 0, 0};
            blockIdx = Dim3{x, y, z};
            kernel(P(args)...);
            // A thread that is done no longer holds back __syncthreads or its warp.
            b.block->arrive_and_drop();
            b.warps[t / 32]->arrive_and_drop();
          });
        }
        for (auto &th : pool) th.join();
        emu_block = nullptr;
      }
}
