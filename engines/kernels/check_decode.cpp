// decode.cu's kernels, run on the CPU by emulate.h, against plain loops in double precision.
// Built and run by engines/tests/kernels_emulated.rs (c++ -std=c++20 -DPHIFORGE_EMULATE); prints
// one line per comparison and exits 1 if any is out of tolerance. The GPU itself is checked by
// `phiforge bench-engine --check`, against candle's operations.
#include "decode.cu"

#include <algorithm>
#include <cstdio>
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

template <typename T>
void compare(const std::string &what, const std::vector<T> &got, const std::vector<double> &want) {
  double diff = 0.0, scale = 1e-12;
  for (size_t i = 0; i < want.size(); i++) {
    diff = std::max(diff, std::fabs(double(to_f(got[i])) - want[i]));
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

// The q/k/v product fused with rope_cache, against the product followed by the rope reference.
template <typename T>
void check_gemv_rope(int rows, int h, int kvh, int hd, int ctx, int k, std::mt19937 &rng,
                     int prefetch = 0) {
  const int slots = rows + 1, first = 1, half = hd / 2, n = (h + 2 * kvh) * hd;
  std::vector<uint32_t> pos(rows);
  for (int r = 0; r < rows; r++) pos[r] = uint32_t(ctx - 1 - 5 * r);
  std::vector<float> cos(size_t(ctx) * half), sin(size_t(ctx) * half);
  for (size_t i = 0; i < cos.size(); i++) {
    cos[i] = float(std::cos(0.37 * double(i)));
    sin[i] = float(std::sin(0.37 * double(i)));
  }
  auto x = random<T>(size_t(rows) * k, rng), w = random<T>(size_t(n) * k, rng, 0.05f);
  const size_t cache = size_t(slots) * kvh * ctx * hd;
  auto kc = random<T>(cache, rng), vc = random<T>(cache, rng);
  auto want_k = as_double(kc), want_v = as_double(vc);
  std::vector<T> q(size_t(rows) * h * hd);
  const float scale = 1.0f / std::sqrt(float(hd));
  emu_launch({unsigned(((h + 2 * kvh) * half + 3) / 4)}, 128,
             Kernels<T>::gemv_rope[prefetch][rows - 1],
             x.data(), w.data(), pos.data(), cos.data(), sin.data(), q.data(), kc.data(), vc.data(),
             k, h, kvh, hd, ctx, first, scale);
  const auto y = products(x, w, rows, k, n);
  std::vector<double> want_q(q.size());
  for (int r = 0; r < rows; r++) {
    const size_t p = pos[r], slot = first + r;
    for (int head = 0; head < h + 2 * kvh; head++)
      for (int i = 0; i < half; i++) {
        const double x1 = y[size_t(r) * n + head * hd + i], x2 = y[size_t(r) * n + head * hd + i + half];
        const double c = cos[p * half + i], s = sin[p * half + i];
        if (head < h) {
          want_q[(size_t(r) * h + head) * hd + i] = (x1 * c - x2 * s) * scale;
          want_q[(size_t(r) * h + head) * hd + i + half] = (x2 * c + x1 * s) * scale;
        } else if (head < h + kvh) {
          const size_t at = ((slot * kvh + (head - h)) * ctx + p) * hd;
          want_k[at + i] = x1 * c - x2 * s;
          want_k[at + i + half] = x2 * c + x1 * s;
        } else {
          const size_t at = ((slot * kvh + (head - h - kvh)) * ctx + p) * hd;
          want_v[at + i] = x1;
          want_v[at + i + half] = x2;
        }
      }
  }
  const std::string tag = "rows " + std::to_string(rows) + " heads " + std::to_string(h) + "/" +
                          std::to_string(kvh) + " hd " + std::to_string(hd);
  compare("gemv_rope q " + tag, q, want_q);
  compare("gemv_rope keys " + tag, kc, want_k);
  compare("gemv_rope values " + tag, vc, want_v);
}

// RoPE and cache writes, then attention over the written caches, for rows in slots first.. at
// unequal positions, with `splits` splits of the positions.
template <typename T>
void check_attention(int rows, int h, int kvh, int hd, int ctx, int splits, std::mt19937 &rng) {
  const int slots = rows + 2, first = 2, half = hd / 2, rep = h / kvh;
  std::vector<uint32_t> pos(rows);
  for (int r = 0; r < rows; r++) pos[r] = uint32_t(std::max(0, ctx - 1 - 9 * r - (r % 2) * 3));
  const int span = int(*std::max_element(pos.begin(), pos.end())) + 1;
  const int chunk = (span + splits - 1) / splits;
  std::vector<float> cos(size_t(ctx) * half), sin(size_t(ctx) * half);
  for (int p = 0; p < ctx; p++)
    for (int i = 0; i < half; i++) {
      const double a = p * std::pow(10000.0, -2.0 * i / hd);
      cos[size_t(p) * half + i] = float(std::cos(a));
      sin[size_t(p) * half + i] = float(std::sin(a));
    }
  const size_t cache = size_t(slots) * kvh * ctx * hd;
  auto kc = random<T>(cache, rng), vc = random<T>(cache, rng);
  auto qkv = random<T>(size_t(rows) * (h + 2 * kvh) * hd, rng);
  std::vector<T> q(size_t(rows) * h * hd);
  const float scale = 1.0f / std::sqrt(float(hd));
  auto want_k = as_double(kc), want_v = as_double(vc);
  emu_launch({unsigned(rows), 3}, 128, Kernels<T>::rope, qkv.data(), pos.data(), cos.data(),
             sin.data(), q.data(), kc.data(), vc.data(), h, kvh, hd, ctx, first, scale);
  std::vector<double> want_q(q.size());
  for (int r = 0; r < rows; r++) {
    const size_t p = pos[r], slot = first + r;
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
          const size_t at = ((slot * kvh + (head - h)) * ctx + p) * hd;
          want_k[at + i] = o1;
          want_k[at + i + half] = o2;
        } else {
          const size_t at = ((slot * kvh + (head - h - kvh)) * ctx + p) * hd;
          want_v[at + i] = x1;
          want_v[at + i + half] = x2;
        }
      }
  }
  const std::string tag = "rows " + std::to_string(rows) + " heads " + std::to_string(h) + "/" +
                          std::to_string(kvh) + " hd " + std::to_string(hd) + " splits " +
                          std::to_string(splits);
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
             out.data(), pm.data(), pl.data(), pacc.data(), counters.data(), h, kvh, ctx, first,
             splits % 2 ? 0 : chunk, splits);
  for (auto c : counters)
    if (c != 0) {
      failures++;
      std::printf("FAIL a split counter was left at %u\n", c);
    }
  // Reference over the caches as the kernel left them, with the queries it wrote.
  std::vector<double> want(out.size());
  for (int r = 0; r < rows; r++)
    for (int head = 0; head < h; head++) {
      const int g = head / rep;
      const size_t base = ((size_t(first + r) * kvh + g) * ctx) * hd;
      const int len = int(pos[r]) + 1;
      std::vector<double> sc(len);
      double m = -INFINITY;
      for (int p = 0; p < len; p++) {
        double s = 0.0;
        for (int d = 0; d < hd; d++)
          s += double(to_f(q[(size_t(r) * h + head) * hd + d])) * to_f(kc[base + size_t(p) * hd + d]);
        sc[p] = s;
        m = std::max(m, s);
      }
      double l = 0.0;
      for (auto &s : sc) l += (s = std::exp(s - m));
      for (int d = 0; d < hd; d++) {
        double a = 0.0;
        for (int p = 0; p < len; p++) a += sc[p] * to_f(vc[base + size_t(p) * hd + d]);
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
  check_gemv_rope<T>(2, 4, 1, 128, 40, 264, rng, 1);
  check_gemv_rope<T>(1, 4, 1, 128, 40, 264, rng);
  check_gemv_rope<T>(3, 4, 2, 64, 40, 520, rng);
  check_gemv_rope<T>(4, 8, 1, 96, 30, 136, rng);
  // Head sizes 64, 96, 128; 1, 2, 4 and 8 query heads per KV head; one split and several.
  check_attention<T>(1, 4, 1, 128, 300, 1, rng);
  check_attention<T>(3, 8, 2, 128, 300, 5, rng);
  check_attention<T>(2, 4, 2, 64, 70, 3, rng);
  check_attention<T>(2, 8, 1, 96, 40, 1, rng);
  check_attention<T>(1, 2, 2, 64, 129, 4, rng);
  check_attention<T>(2, 4, 1, 64, 40, 9, rng);  // more splits than the shorter row fills
  check_attention<T>(1, 4, 1, 128, 300, 40, rng);  // more splits than a warp has lanes
  check_attention<T>(2, 8, 1, 96, 300, 27, rng);   // two query heads a warp in the merge
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
