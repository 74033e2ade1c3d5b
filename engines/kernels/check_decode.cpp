// decode.cu's kernels, run on the CPU by emulate.h, against plain loops in double precision.
// Built and run by engines/tests/kernels_emulated.rs (c++ -std=c++20 -DPHIFORGE_EMULATE); prints
// one line per comparison and exits 1 if any is out of tolerance. The GPU itself is checked by
// `phiforge bench-engine --check`, against candle's operations.
#include "decode.cu"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>

static int failures = 0;
static int checks = 0;

template <typename T> const char *type_name();
template <> const char *type_name<float>() { return "f32"; }
template <> const char *type_name<__half>() { return "f16"; }
template <> const char *type_name<__nv_bfloat16>() { return "bf16"; }

// Each storage type's one rounding, relative to the largest reference value.
template <typename T> double tolerance() { return std::is_same<T, float>::value ? 2e-5 : 1.6e-2; }

template <typename T> std::vector<T> random(size_t n, std::mt19937 &rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<T> v(n);
  for (auto &x : v) x = from_f<T>(d(rng));
  return v;
}

template <typename T> std::vector<double> as_double(const std::vector<T> &v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = to_f(v[i]);
  return out;
}

// Rows of random logits for argmax_rows: row 1 has its maximum at two places, row 2 is all -inf
// but one, row 3 has NaNs (at the front too), row 4 is all NaN; the rest are plain.
std::vector<float> argmax_rows_input(int rows, int v, std::mt19937 &rng) {
  std::vector<float> x = random<float>((size_t)rows * v, rng);
  auto row = [&](int r) { return x.data() + (size_t)r * v; };
  if (rows > 1) row(1)[v / 3] = row(1)[v - 2] = 9.0f;
  if (rows > 2) {
    std::fill(row(2), row(2) + v, -INFINITY);
    row(2)[v - 1] = -1.0f;
  }
  if (rows > 3) {
    row(3)[0] = row(3)[v / 2] = NAN;
    row(3)[v / 5] = 8.0f;
  }
  if (rows > 4) std::fill(row(4), row(4) + v, NAN);
  return x;
}

// NaN must be where the reference has NaN (a cache's entries no kernel may touch), and nowhere
// else (a kernel that read them).
template <typename T>
void compare(const std::string &what, const std::vector<T> &got, const std::vector<double> &want) {
  double diff = 0.0, scale = 1e-12;
  for (size_t i = 0; i < want.size(); i++) {
    const double g = to_f(got[i]);
    if (std::isnan(g) || std::isnan(want[i])) {
      if (std::isnan(g) != std::isnan(want[i])) diff = INFINITY;
      continue;
    }
    diff = std::max(diff, std::fabs(g - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  const double err = diff / scale;
  const bool ok = err <= tolerance<T>() && std::isfinite(err);
  checks++;
  if (!ok) failures++;
  std::printf("%s %-4s %-44s max rel err %.3g\n", ok ? "ok  " : "FAIL", type_name<T>(), what.c_str(),
              err);
}

template <typename T> struct Kernels;
#define KERNELS(T, SFX)                                                                   \
  template <> struct Kernels<T> {                                                         \
    static constexpr auto embed = embed_##SFX;                                            \
    static constexpr auto norm = add_rms_norm_##SFX;                                      \
    static constexpr auto rope = rope_cache_##SFX;                                        \
    static constexpr auto silu = silu_mul_##SFX;                                          \
    static constexpr decltype(gemv_silu1_##SFX) *gemv_silu[2][4] = {                      \
        {gemv_silu1_##SFX, gemv_silu2_##SFX, gemv_silu3_##SFX, gemv_silu4_##SFX},         \
        {gemv_silu1p_##SFX, gemv_silu2p_##SFX, gemv_silu3p_##SFX, gemv_silu4p_##SFX}};    \
    static constexpr decltype(gemv_rope1_##SFX) *gemv_rope[2][4] = {                      \
        {gemv_rope1_##SFX, gemv_rope2_##SFX, gemv_rope3_##SFX, gemv_rope4_##SFX},         \
        {gemv_rope1p_##SFX, gemv_rope2p_##SFX, gemv_rope3p_##SFX, gemv_rope4p_##SFX}};    \
    static constexpr decltype(gemv1c1_##SFX) *gemv[2][2][4] = {                           \
        {{gemv1c1_##SFX, gemv2c1_##SFX, gemv3c1_##SFX, gemv4c1_##SFX},                    \
         {gemv1c2_##SFX, gemv2c2_##SFX, gemv3c2_##SFX, gemv4c2_##SFX}},                   \
        {{gemv1c1p_##SFX, gemv2c1p_##SFX, gemv3c1p_##SFX, gemv4c1p_##SFX},                \
         {gemv1c2p_##SFX, gemv2c2p_##SFX, gemv3c2p_##SFX, gemv4c2p_##SFX}}};              \
    static auto attn(int e, int r) {                                                      \
      decltype(attn_decode_4_4_##SFX) *f[3][2] = {                                        \
          {attn_decode_2_4_##SFX, attn_decode_2_8_##SFX},                                 \
          {attn_decode_3_4_##SFX, attn_decode_3_8_##SFX},                                 \
          {attn_decode_4_4_##SFX, attn_decode_4_8_##SFX}};                                \
      return f[e - 2][r == 8];                                                            \
    }                                                                                     \
  };
KERNELS(float, f32)
KERNELS(__half, f16)
KERNELS(__nv_bfloat16, bf16)

// As engines/src/kernels.rs launches it: enough threads for NORM_MAX elements each, 32 to 1024.
unsigned norm_threads(int d) {
  const int t = (d + NORM_MAX - 1) / NORM_MAX;
  return unsigned(std::min(1024, std::max(32, (t + 31) / 32 * 32)));
}

template <typename T> void check_norm(int rows, int d, std::mt19937 &rng) {
  auto x = random<T>(size_t(rows) * d, rng), h = random<T>(size_t(rows) * d, rng);
  auto w = random<T>(d, rng);
  std::vector<T> xo(x.size()), y(x.size());
  const float eps = 1e-5f;
  emu_launch({unsigned(rows)}, norm_threads(d), Kernels<T>::norm, x.data(), h.data(), w.data(),
             xo.data(), y.data(), d, eps);
  std::vector<double> want_s(x.size()), want_y(x.size());
  for (int r = 0; r < rows; r++) {
    double ss = 0.0;
    for (int i = 0; i < d; i++) {
      const size_t at = size_t(r) * d + i;
      // The sum is rounded to T, as a separate add would store it.
      want_s[at] = to_f(from_f<T>(to_f(x[at]) + to_f(h[at])));
      ss += want_s[at] * want_s[at];
    }
    const double scale = 1.0 / std::sqrt(ss / d + eps);
    for (int i = 0; i < d; i++) {
      const size_t at = size_t(r) * d + i;
      want_y[at] = want_s[at] * scale * to_f(w[i]);
    }
  }
  const std::string tag = "rows " + std::to_string(rows) + " d " + std::to_string(d);
  compare("add_rms_norm sum " + tag, xo, want_s);
  compare("add_rms_norm norm " + tag, y, want_y);
}

template <typename T> void check_embed(int rows, int vocab, int d, std::mt19937 &rng) {
  auto table = random<T>(size_t(vocab) * d, rng);
  std::vector<uint32_t> ids(rows);
  for (int r = 0; r < rows; r++) ids[r] = uint32_t((r * 7 + 3) % vocab);
  std::vector<T> out(size_t(rows) * d);
  emu_launch({unsigned(rows), unsigned((d + 1023) / 1024)}, 256, Kernels<T>::embed, ids.data(),
             table.data(), out.data(), d);
  std::vector<double> want(out.size());
  for (int r = 0; r < rows; r++)
    for (int i = 0; i < d; i++) want[size_t(r) * d + i] = to_f(table[size_t(ids[r]) * d + i]);
  compare("embed rows " + std::to_string(rows) + " d " + std::to_string(d), out, want);
}

template <typename T> void check_silu(int rows, int inter, std::mt19937 &rng) {
  auto gu = random<T>(size_t(rows) * 2 * inter, rng, 2.0f);
  std::vector<T> out(size_t(rows) * inter);
  emu_launch({unsigned((rows * inter + 255) / 256)}, 256, Kernels<T>::silu, gu.data(), out.data(),
             rows, inter);
  std::vector<double> want(out.size());
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < inter; c++) {
      const double g = to_f(gu[size_t(r) * 2 * inter + c]);
      const double u = to_f(gu[size_t(r) * 2 * inter + inter + c]);
      want[size_t(r) * inter + c] = g / (1.0 + std::exp(-g)) * u;
    }
  compare("silu_mul rows " + std::to_string(rows) + " inter " + std::to_string(inter), out, want);
}

template <typename T>
void check_gemv(int rows, int cols, int k, int n, std::mt19937 &rng, int prefetch = 0) {
  auto x = random<T>(size_t(rows) * k, rng), w = random<T>(size_t(n) * k, rng, 0.05f);
  std::vector<T> y(size_t(rows) * n);
  emu_launch({unsigned((n + 4 * cols - 1) / (4 * cols))}, 128,
             Kernels<T>::gemv[prefetch][cols - 1][rows - 1],
             x.data(), w.data(), y.data(), k, n);
  std::vector<double> want(y.size());
  for (int b = 0; b < rows; b++)
    for (int j = 0; j < n; j++) {
      double s = 0.0;
      for (int i = 0; i < k; i++) s += double(to_f(x[size_t(b) * k + i])) * to_f(w[size_t(j) * k + i]);
      want[size_t(b) * n + j] = s;
    }
  compare("gemv rows " + std::to_string(rows) + " " + std::to_string(n) + "x" + std::to_string(k) +
              ", " + std::to_string(cols) + " column(s) a warp" + (prefetch ? ", prefetch" : ""),
          y, want);
}

// x (rows, k) · w (n, k)ᵀ in double, each product rounded to T as a stored product would be.
template <typename T>
std::vector<double> products(const std::vector<T> &x, const std::vector<T> &w, int rows, int k,
                             int n) {
  std::vector<double> y(size_t(rows) * n);
  for (int b = 0; b < rows; b++)
    for (int j = 0; j < n; j++) {
      double s = 0.0;
      for (int i = 0; i < k; i++) s += double(to_f(x[size_t(b) * k + i])) * to_f(w[size_t(j) * k + i]);
      y[size_t(b) * n + j] = to_f(from_f<T>(float(s)));
    }
  return y;
}

template <typename T>
void check_gemv_silu(int rows, int k, int inter, std::mt19937 &rng, int prefetch = 0) {
  auto x = random<T>(size_t(rows) * k, rng), w = random<T>(size_t(2 * inter) * k, rng, 0.05f);
  std::vector<T> out(size_t(rows) * inter);
  emu_launch({unsigned((inter + 3) / 4)}, 128, Kernels<T>::gemv_silu[prefetch][rows - 1], x.data(),
             w.data(), out.data(), k, inter);
  const auto y = products(x, w, rows, k, 2 * inter);
  std::vector<double> want(out.size());
  for (int b = 0; b < rows; b++)
    for (int j = 0; j < inter; j++) {
      const double g = y[size_t(b) * 2 * inter + j], u = y[size_t(b) * 2 * inter + inter + j];
      want[size_t(b) * inter + j] = g / (1.0 + std::exp(-g)) * u;
    }
  compare("gemv_silu rows " + std::to_string(rows) + " inter " + std::to_string(inter), out, want);
}

// A paged KV cache's block tables (engines/src/kv.rs) for rows at positions `pos`: blocks of bs
// positions, numbered in a shuffled order; the rows share their first blocks (those below every
// row's own position's block: read, never written); each row's table has a spare entry past its
// last block. Entries past a row's last block name the poison block, which no kernel may touch.
struct Paged {
  int bs = 0, width = 0, blocks = 0, shared = 0;
  uint32_t poison = 0;
  std::vector<uint32_t> tables;  // (rows, width), row-major
  std::vector<uint32_t> pos;

  // The element index of (row r's position p, KV head g, lane 0) in a (blocks, kvh, bs, hd) pool.
  size_t at(int r, int g, size_t p, int kvh, int hd) const {
    const size_t blk = tables[size_t(r) * width + p / bs];
    return ((blk * kvh + g) * bs + p % bs) * hd;
  }

  size_t size(int kvh, int hd) const { return size_t(blocks) * kvh * bs * hd; }

  std::string describe() const {
    return " bs " + std::to_string(bs) + " shared " + std::to_string(shared);
  }

  // A random pool, NaN wherever no row of the step may read: the poison block, and the positions
  // past a row's own in its last block.
  template <typename T> std::vector<T> pool(int kvh, int hd, std::mt19937 &rng) const {
    auto v = random<T>(size(kvh, hd), rng);
    auto fill_nan = [&](size_t blk, int from) {
      for (int g = 0; g < kvh; g++)
        for (int o = from; o < bs; o++)
          std::fill_n(v.begin() + ((blk * kvh + g) * bs + o) * hd, hd, from_f<T>(NAN));
    };
    fill_nan(poison, 0);
    for (size_t r = 0; r < pos.size(); r++)
      fill_nan(tables[r * width + pos[r] / bs], int(pos[r] % bs) + 1);
    return v;
  }
};

Paged paged(const std::vector<uint32_t> &pos, int bs, std::mt19937 &rng) {
  Paged t;
  const int rows = int(pos.size());
  t.bs = bs;
  t.pos = pos;
  int last = 0, shared = 1 << 30, needed = 0;
  for (auto p : pos) {
    last = std::max(last, int(p) / bs);
    shared = std::min(shared, int(p) / bs);
  }
  t.shared = rows > 1 ? shared : 0;
  for (auto p : pos) needed += int(p) / bs + 1 - t.shared;
  needed += t.shared;
  t.width = last + 2;
  t.blocks = needed + 2;  // the poison block, and one no table names
  std::vector<uint32_t> ids(t.blocks);
  std::iota(ids.begin(), ids.end(), 0u);
  std::shuffle(ids.begin(), ids.end(), rng);
  t.poison = ids[needed];
  t.tables.assign(size_t(rows) * t.width, t.poison);
  int next = 0;
  for (int j = 0; j < t.shared; j++, next++)
    for (int r = 0; r < rows; r++) t.tables[size_t(r) * t.width + j] = ids[next];
  for (int r = 0; r < rows; r++)
    for (int j = t.shared; j <= int(pos[r]) / bs; j++)
      t.tables[size_t(r) * t.width + j] = ids[next++];
  // No row writes a block another row reads (or writes).
  for (int r = 0; r < rows; r++)
    for (int s = 0; s < rows; s++)
      for (int j = 0; s != r && j <= int(pos[s]) / bs; j++)
        if (t.tables[size_t(s) * t.width + j] == t.tables[size_t(r) * t.width + pos[r] / bs]) {
          std::printf("bad test setup: row %d writes a block of row %d\n", r, s);
          std::exit(2);
        }
  return t;
}

// The q/k/v product fused with rope_cache, against the product followed by the rope reference.
template <typename T>
void check_gemv_rope(int rows, int h, int kvh, int hd, int ctx, int bs, int k, std::mt19937 &rng,
                     int prefetch = 0) {
  const int half = hd / 2, n = (h + 2 * kvh) * hd;
  std::vector<uint32_t> pos(rows);
  for (int r = 0; r < rows; r++) pos[r] = uint32_t(ctx - 1 - 5 * r);
  const Paged t = paged(pos, bs, rng);
  std::vector<float> cos(size_t(ctx) * half), sin(size_t(ctx) * half);
  for (size_t i = 0; i < cos.size(); i++) {
    cos[i] = float(std::cos(0.37 * double(i)));
    sin[i] = float(std::sin(0.37 * double(i)));
  }
  auto x = random<T>(size_t(rows) * k, rng), w = random<T>(size_t(n) * k, rng, 0.05f);
  auto kc = t.pool<T>(kvh, hd, rng), vc = t.pool<T>(kvh, hd, rng);
  auto want_k = as_double(kc), want_v = as_double(vc);
  std::vector<T> q(size_t(rows) * h * hd);
  const float scale = 1.0f / std::sqrt(float(hd));
  emu_launch({unsigned(((h + 2 * kvh) * half + 3) / 4)}, 128,
             Kernels<T>::gemv_rope[prefetch][rows - 1], x.data(), w.data(), pos.data(),
             t.tables.data(), cos.data(), sin.data(), q.data(), kc.data(), vc.data(), k, h, kvh, hd,
             bs, t.width, scale);
  const auto y = products(x, w, rows, k, n);
  std::vector<double> want_q(q.size());
  for (int r = 0; r < rows; r++) {
    const size_t p = pos[r];
    for (int head = 0; head < h + 2 * kvh; head++)
      for (int i = 0; i < half; i++) {
        const double x1 = y[size_t(r) * n + head * hd + i], x2 = y[size_t(r) * n + head * hd + i + half];
        const double c = cos[p * half + i], s = sin[p * half + i];
        if (head < h) {
          want_q[(size_t(r) * h + head) * hd + i] = (x1 * c - x2 * s) * scale;
          want_q[(size_t(r) * h + head) * hd + i + half] = (x2 * c + x1 * s) * scale;
        } else if (head < h + kvh) {
          const size_t at = t.at(r, head - h, p, kvh, hd);
          want_k[at + i] = x1 * c - x2 * s;
          want_k[at + i + half] = x2 * c + x1 * s;
        } else {
          const size_t at = t.at(r, head - h - kvh, p, kvh, hd);
          want_v[at + i] = x1;
          want_v[at + i + half] = x2;
        }
      }
  }
  const std::string tag = "rows " + std::to_string(rows) + " heads " + std::to_string(h) + "/" +
                          std::to_string(kvh) + " hd " + std::to_string(hd) + t.describe();
  compare("gemv_rope q " + tag, q, want_q);
  compare("gemv_rope keys " + tag, kc, want_k);
  compare("gemv_rope values " + tag, vc, want_v);
}

// RoPE and cache writes, then attention over the written caches, for rows at unequal positions
// (the longest ctx - 1) in a paged cache of blocks of bs positions (shuffled, the rows' first
// blocks shared), with `splits` splits of the positions.
template <typename T>
void check_attention(int rows, int h, int kvh, int hd, int ctx, int bs, int splits,
                     std::mt19937 &rng) {
  const int half = hd / 2, rep = h / kvh;
  std::vector<uint32_t> pos(rows);
  for (int r = 0; r < rows; r++) pos[r] = uint32_t(std::max(0, ctx - 1 - 9 * r - (r % 2) * 3));
  const Paged t = paged(pos, bs, rng);
  const int span = int(*std::max_element(pos.begin(), pos.end())) + 1;
  const int chunk = (span + splits - 1) / splits;
  std::vector<float> cos(size_t(ctx) * half), sin(size_t(ctx) * half);
  for (int p = 0; p < ctx; p++)
    for (int i = 0; i < half; i++) {
      const double a = p * std::pow(10000.0, -2.0 * i / hd);
      cos[size_t(p) * half + i] = float(std::cos(a));
      sin[size_t(p) * half + i] = float(std::sin(a));
    }
  auto kc = t.pool<T>(kvh, hd, rng), vc = t.pool<T>(kvh, hd, rng);
  auto qkv = random<T>(size_t(rows) * (h + 2 * kvh) * hd, rng);
  std::vector<T> q(size_t(rows) * h * hd);
  const float scale = 1.0f / std::sqrt(float(hd));
  auto want_k = as_double(kc), want_v = as_double(vc);
  emu_launch({unsigned(rows), 3}, 128, Kernels<T>::rope, qkv.data(), pos.data(), t.tables.data(),
             cos.data(), sin.data(), q.data(), kc.data(), vc.data(), h, kvh, hd, bs, t.width,
             scale);
  std::vector<double> want_q(q.size());
  for (int r = 0; r < rows; r++) {
    const size_t p = pos[r];
    for (int head = 0; head < h + 2 * kvh; head++)
      for (int i = 0; i < half; i++) {
        const T *src = qkv.data() + (size_t(r) * (h + 2 * kvh) + head) * hd;
        const double x1 = to_f(src[i]), x2 = to_f(src[i + half]);
        const double c = cos[p * half + i], s = sin[p * half + i];
        const double o1 = x1 * c - x2 * s, o2 = x2 * c + x1 * s;
        if (head < h) {
          want_q[(size_t(r) * h + head) * hd + i] = o1 * scale;
          want_q[(size_t(r) * h + head) * hd + i + half] = o2 * scale;
        } else if (head < h + kvh) {
          const size_t at = t.at(r, head - h, p, kvh, hd);
          want_k[at + i] = o1;
          want_k[at + i + half] = o2;
        } else {
          const size_t at = t.at(r, head - h - kvh, p, kvh, hd);
          want_v[at + i] = x1;
          want_v[at + i + half] = x2;
        }
      }
  }
  const std::string tag = "rows " + std::to_string(rows) + " heads " + std::to_string(h) + "/" +
                          std::to_string(kvh) + " hd " + std::to_string(hd) + " splits " +
                          std::to_string(splits) + t.describe();
  compare("rope_cache q " + tag, q, want_q);
  compare("rope_cache keys " + tag, kc, want_k);
  compare("rope_cache values " + tag, vc, want_v);

  std::vector<T> out(size_t(rows) * h * hd);
  std::vector<float> pm(size_t(rows) * h * splits), pl(pm.size()), pacc(pm.size() * hd);
  const int r_max = rep <= 4 ? 4 : 8;
  // Odd split counts let the kernel find the chunk itself (chunk 0), as under a CUDA graph.
  std::vector<unsigned> counters(size_t(rows) * kvh, 0u);
  emu_launch({unsigned(rows), unsigned(kvh), unsigned(splits)}, 128,
             Kernels<T>::attn(hd / 32, r_max), q.data(), kc.data(), vc.data(), pos.data(),
             t.tables.data(), out.data(), pm.data(), pl.data(), pacc.data(), counters.data(), h,
             kvh, bs, t.width, splits % 2 ? 0 : chunk, splits);
  for (auto c : counters)
    if (c != 0) {
      failures++;
      std::printf("FAIL a split counter was left at %u\n", c);
    }
  // Reference over the caches as the kernel left them, with the queries it wrote, each position
  // found through the row's table.
  std::vector<double> want(out.size());
  for (int r = 0; r < rows; r++)
    for (int head = 0; head < h; head++) {
      const int g = head / rep;
      const int len = int(pos[r]) + 1;
      std::vector<double> sc(len);
      double m = -INFINITY;
      for (int p = 0; p < len; p++) {
        double s = 0.0;
        for (int d = 0; d < hd; d++)
          s += double(to_f(q[(size_t(r) * h + head) * hd + d])) * to_f(kc[t.at(r, g, p, kvh, hd) + d]);
        sc[p] = s;
        m = std::max(m, s);
      }
      double l = 0.0;
      for (auto &s : sc) l += (s = std::exp(s - m));
      for (int d = 0; d < hd; d++) {
        double a = 0.0;
        for (int p = 0; p < len; p++) a += sc[p] * to_f(vc[t.at(r, g, p, kvh, hd) + d]);
        want[(size_t(r) * h + head) * hd + d] = a / l;
      }
    }
  compare("attention " + tag, out, want);
}

template <typename T> void check_all(std::mt19937 &rng) {
  check_embed<T>(3, 50, 2100, rng);
  check_norm<T>(1, 512, rng);
  check_norm<T>(3, 5120, rng);
  check_norm<T>(2, 100, rng);     // a partial warp of elements
  check_norm<T>(1, 9000, rng);    // past 1024 threads × NORM_MAX: the second loop
  check_silu<T>(2, 1792, rng);
  for (int cols = 1; cols <= 2; cols++) {
    for (int rows = 1; rows <= 4; rows++) check_gemv<T>(rows, cols, 2056, 21, rng);
    check_gemv<T>(1, cols, 264, 7, rng);  // fewer chunks per lane than one round
  }
  for (int rows = 1; rows <= 4; rows++) check_gemv_silu<T>(rows, 520, 37, rng);
  check_gemv<T>(2, 1, 2056, 21, rng, 1);  // the prefetching loads
  check_gemv<T>(3, 2, 264, 7, rng, 1);
  check_gemv_silu<T>(2, 520, 37, rng, 1);
  // Blocks of 16 positions (the last partly filled), of 7, and of 3 (fewer than a warp's group
  // of ATT_U positions: a group spans blocks).
  check_gemv_rope<T>(2, 4, 1, 128, 40, 16, 264, rng, 1);
  check_gemv_rope<T>(1, 4, 1, 128, 40, 16, 264, rng);
  check_gemv_rope<T>(3, 4, 2, 64, 40, 7, 520, rng);
  check_gemv_rope<T>(4, 8, 1, 96, 30, 3, 136, rng);
  // Head sizes 64, 96, 128; 1, 2, 4 and 8 query heads per KV head; one split and several; blocks
  // of 16 positions (the rows' last ones partly filled, or a row's position the first of its
  // block), and of 7, 5, 3 and 1.
  check_attention<T>(1, 4, 1, 128, 300, 16, 1, rng);
  check_attention<T>(3, 8, 2, 128, 300, 16, 5, rng);
  check_attention<T>(2, 4, 2, 64, 70, 7, 3, rng);
  check_attention<T>(2, 8, 1, 96, 40, 3, 1, rng);
  check_attention<T>(1, 2, 2, 64, 129, 16, 4, rng);
  check_attention<T>(4, 4, 1, 64, 96, 16, 2, rng);  // positions 95, 83, 77, 65: four rows
  check_attention<T>(2, 4, 1, 64, 40, 5, 9, rng);  // more splits than the shorter row fills
  check_attention<T>(2, 2, 1, 64, 33, 1, 3, rng);  // a block a position
  check_attention<T>(1, 4, 1, 128, 300, 32, 40, rng);  // more splits than a warp has lanes
  check_attention<T>(2, 8, 1, 96, 300, 16, 27, rng);   // two query heads a warp in the merge
}

// argmax_rows against a plain loop (the first index of the largest value, NaN never chosen), on
// rows with ties, -inf, NaN, and a row with no number at all; exact.
void check_argmax(int rows, int v, std::mt19937 &rng) {
  std::vector<float> x = argmax_rows_input(rows, v, rng);
  std::vector<uint32_t> out(rows, 12345u);
  emu_launch({unsigned(rows)}, 1024, argmax_rows_f32, x.data(), out.data(), v);
  int wrong = 0;
  for (int r = 0; r < rows; r++) {
    uint32_t want = 0;
    float best = -INFINITY;
    bool any = false;
    for (int i = 0; i < v; i++) {
      const float e = x[(size_t)r * v + i];
      if (!std::isnan(e) && (!any || e > best)) {
        best = e;
        want = i;
        any = true;
      }
    }
    wrong += out[r] != want;
  }
  checks++;
  if (wrong) failures++;
  std::printf("%s f32  argmax rows %d vocab %-30d %d rows wrong\n", wrong ? "FAIL" : "ok  ", rows,
              v, wrong);
}

int main() {
  std::mt19937 rng(20261126);
  check_argmax(5, 4096, rng);
  check_argmax(5, 1001, rng);
  check_argmax(2, 100352, rng);
  check_all<float>(rng);
  check_all<__nv_bfloat16>(rng);
  check_all<__half>(rng);
  std::printf("%d of %d checks failed\n", failures, checks);
  return failures ? 1 : 0;
}
