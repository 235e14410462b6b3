// Building blocks of the pixelcnn_decode kernel (csrc/cpu/pixelcnn_decode.cpp): packed matrix-vector
// products shared by many rows, the gated unit, and the float64 categorical draw.
//
// Packed matrix (arkern.ops.pixelcnn_decode.tile_matrix): W (m x n), rows zero-padded to mp = ceil16(m),
// stored as row tiles of up to 64 outputs, each tile transposed (n x width) and contiguous. One tile is a
// stream of 16..64 weights per input, multiplied into 1..4 zmm accumulators per row; four rows share every
// weight load and, when more rows share a tile, it is cut into L1-resident blocks of kJBlock inputs.
// bfloat16 tiles interleave each pair of 16-output groups (outputs k and 16 + k share a 32-bit lane,
// see bf16_slot), so one 512-bit load widens to 32 float32 weights with one shift and one AND.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "simd_math.h"

namespace arkern_pixelcnn {

constexpr int64_t kTile = 64;    // outputs per weight tile
constexpr int64_t kJBlock = 64;  // inputs per L1 block (<= 16 KB) of a tile shared by more than 4 rows

inline int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

// One packed matrix: y = b + W x, W (m x n) stored as described above, bias padded to mp.
template <typename T, typename WT>
struct Mat {
  const WT* w = nullptr;
  const T* b = nullptr;
  int64_t m = 0, mp = 0, n = 0;
};

// Storage position of output m in one input's row of a bfloat16 tile of width w (see the top of the file).
inline int bf16_slot(int m, int w) {
  const int p = m / 32 * 32, k = m % 32;
  if (p + 32 > w) return m;  // a last group of 16 is stored as is
  return p + (k < 16 ? 2 * k : 2 * (k - 16) + 1);
}

inline float widen(float v) { return v; }
inline float widen(at::BFloat16 v) { return static_cast<float>(v); }
inline double widen(double v) { return v; }

// y[r][m0 : m0 + 16V] = (j0 == 0 ? bias : y[r]) + sum_{j0 <= j < j1} blk[j] x[r][j - xo] for NB rows.
template <typename T, typename WT, int NB, int V>
void tile_generic(const WT* blk, int64_t j0, int64_t j1, const T* const* x, int64_t xo, T* const* y, int64_t m0,
                  const T* bias) {
  constexpr int W = 16 * V;
  T acc[NB][W];
  for (int r = 0; r < NB; ++r)
    for (int m = 0; m < W; ++m) acc[r][m] = (j0 == 0 ? bias : y[r])[m0 + m];
  for (int64_t j = j0; j < j1; ++j) {
    const WT* wj = blk + j * W;
    T wf[W];
    for (int m = 0; m < W; ++m) {
      if constexpr (std::is_same_v<WT, at::BFloat16>) {
        wf[m] = widen(wj[bf16_slot(m, W)]);
      } else {
        wf[m] = static_cast<T>(widen(wj[m]));
      }
    }
    for (int r = 0; r < NB; ++r) {
      const T xr = x[r][j - xo];
#pragma omp simd
      for (int m = 0; m < W; ++m) acc[r][m] += wf[m] * xr;
    }
  }
  for (int r = 0; r < NB; ++r)
    for (int m = 0; m < W; ++m) y[r][m0 + m] = acc[r][m];
}

#if defined(__AVX512F__)
// The 16V weights of one input, widened to float32.
template <int V>
inline void load_weights(const float* p, __m512 (&w)[V]) {
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_ps(p + 16 * v);
}
template <int V>
inline void load_weights(const at::BFloat16* p, __m512 (&w)[V]) {  // bf16 -> fp32: the high 16 bits
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
#pragma GCC unroll 2
  for (int v = 0; v + 1 < V; v += 2) {
    const __m512i pair = _mm512_loadu_si512(p + 16 * v);
    w[v] = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
    w[v + 1] = _mm512_castsi512_ps(_mm512_and_si512(pair, high));
  }
  if constexpr (V % 2 == 1) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * (V - 1)));
    w[V - 1] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// The float32 tile in AVX-512 registers. A single row gets two accumulator sets (even / odd inputs) so
// that enough independent FMA chains are in flight.
template <typename WT, int NB, int V>
void tile_avx512(const WT* blk, int64_t j0, int64_t j1, const float* const* x, int64_t xo, float* const* y,
                 int64_t m0, const float* bias) {
  constexpr int S = NB == 1 ? 2 : 1;
  constexpr int W = 16 * V;
  __m512 acc[S][NB][V];
#pragma GCC unroll 4
  for (int r = 0; r < NB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      acc[0][r][v] = _mm512_loadu_ps((j0 == 0 ? bias : y[r]) + m0 + 16 * v);
      if constexpr (S == 2) acc[1][r][v] = _mm512_setzero_ps();
    }
  int64_t j = j0;
  for (; j + S <= j1; j += S) {
#pragma GCC unroll 2
    for (int s = 0; s < S; ++s) {
      __m512 w[V];
      load_weights<V>(blk + (j + s) * W, w);
#pragma GCC unroll 4
      for (int r = 0; r < NB; ++r) {
        const __m512 xr = _mm512_set1_ps(x[r][j + s - xo]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[s][r][v] = _mm512_fmadd_ps(w[v], xr, acc[s][r][v]);
      }
    }
  }
  for (; j < j1; ++j) {
    __m512 w[V];
    load_weights<V>(blk + j * W, w);
#pragma GCC unroll 4
    for (int r = 0; r < NB; ++r) {
      const __m512 xr = _mm512_set1_ps(x[r][j - xo]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[0][r][v] = _mm512_fmadd_ps(w[v], xr, acc[0][r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < NB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      __m512 a = acc[0][r][v];
      if constexpr (S == 2) a = _mm512_add_ps(a, acc[1][r][v]);
      _mm512_storeu_ps(y[r] + m0 + 16 * v, a);
    }
}
#endif

template <typename T, typename WT, int NB, int V>
inline void tile(const WT* blk, int64_t j0, int64_t j1, const T* const* x, int64_t xo, T* const* y, int64_t m0,
                 const T* bias) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    tile_avx512<WT, NB, V>(blk, j0, j1, x, xo, y, m0, bias);
  } else {
    tile_generic<T, WT, NB, V>(blk, j0, j1, x, xo, y, m0, bias);
  }
#else
  tile_generic<T, WT, NB, V>(blk, j0, j1, x, xo, y, m0, bias);
#endif
}

template <typename T, typename WT, int V>
void tile_rows(const WT* blk, int64_t ja, int64_t jz, int64_t rows, const T* const* x, T* const* y, int64_t m0,
               const T* bias) {
  const int64_t jb = rows > 4 ? kJBlock : jz - ja;
  for (int64_t j0 = ja; j0 < jz; j0 += jb) {
    const int64_t j1 = std::min(jz, j0 + jb);
    for (int64_t r = 0; r < rows; r += 4) {
      switch (std::min<int64_t>(4, rows - r)) {
        case 4: tile<T, WT, 4, V>(blk, j0, j1, x + r, ja, y + r, m0, bias); break;
        case 3: tile<T, WT, 3, V>(blk, j0, j1, x + r, ja, y + r, m0, bias); break;
        case 2: tile<T, WT, 2, V>(blk, j0, j1, x + r, ja, y + r, m0, bias); break;
        default: tile<T, WT, 1, V>(blk, j0, j1, x + r, ja, y + r, m0, bias); break;
      }
    }
  }
}

// Columns [ja, jz) of y = b + W x: y[r][0 : mp] (+)= W[:, ja:jz] x[r][0 : jz - ja] for `rows` rows, starting
// from the bias when ja == 0 and from y[r] otherwise. Splitting [0, n) this way changes only the rounding.
template <typename T, typename WT>
void matvec_range(const Mat<T, WT>& mat, int64_t rows, int64_t ja, int64_t jz, const T* const* x, T* const* y) {
  if (ja == jz) {  // e.g. a mask-A 1x1 conv of the first colour group: only the bias
    if (ja == 0)
      for (int64_t r = 0; r < rows; ++r) std::copy(mat.b, mat.b + mat.mp, y[r]);
    return;
  }
  for (int64_t m0 = 0; m0 < mat.mp; m0 += kTile) {
    const WT* blk = mat.w + m0 * mat.n;
    switch (std::min(kTile, mat.mp - m0) / 16) {
      case 4: tile_rows<T, WT, 4>(blk, ja, jz, rows, x, y, m0, mat.b); break;
      case 3: tile_rows<T, WT, 3>(blk, ja, jz, rows, x, y, m0, mat.b); break;
      case 2: tile_rows<T, WT, 2>(blk, ja, jz, rows, x, y, m0, mat.b); break;
      default: tile_rows<T, WT, 1>(blk, ja, jz, rows, x, y, m0, mat.b); break;
    }
  }
}

// y[r][0 : mp] = b + W x[r] for `rows` rows; x[r] holds n values, y[r] room for mp.
template <typename T, typename WT>
void matvec(const Mat<T, WT>& mat, int64_t rows, const T* const* x, T* const* y) {
  matvec_range(mat, rows, 0, mat.n, x, y);
}

// ---------------------------------------------------------------- gated unit: tanh(a) * sigmoid(b)

#if defined(__AVX512F__)
// tanh: an odd polynomial for |x| < 0.625 (no cancellation near 0), 1 - 2 / (e^{2|x|} + 1) beyond.
inline __m512 tanh16(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 s = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(2.06390887954e-2f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-5.37397155531e-2f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.33314422036e-1f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-3.33332819422e-1f));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, s), x, x);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 big = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f),
                                                      _mm512_add_ps(exp16(_mm512_add_ps(ax, ax)), one)));
  const __m512 signed_big = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(big), _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN))));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ), signed_big, small);
}

inline __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}
#endif

// out[c] = tanh(a[c]) * sigmoid(b[c]) for c < n.
inline void gate(const float* a, const float* b, float* out, int64_t n) {
  int64_t c = 0;
#if defined(__AVX512F__)
  for (; c + 16 <= n; c += 16)
    _mm512_storeu_ps(out + c, _mm512_mul_ps(tanh16(_mm512_loadu_ps(a + c)), sigmoid16(_mm512_loadu_ps(b + c))));
  if (c < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - c)) - 1u);
    const __m512 g = _mm512_mul_ps(tanh16(_mm512_maskz_loadu_ps(k, a + c)), sigmoid16(_mm512_maskz_loadu_ps(k, b + c)));
    _mm512_mask_storeu_ps(out + c, k, g);
    return;
  }
#endif
  for (; c < n; ++c) out[c] = std::tanh(a[c]) / (1.0f + std::exp(-b[c]));
}

inline void gate(const double* a, const double* b, double* out, int64_t n) {
  for (int64_t c = 0; c < n; ++c) out[c] = std::tanh(a[c]) / (1.0 + std::exp(-b[c]));
}

// ---------------------------------------------------------------- the draw (float64, as the Python sampler)

#if defined(__AVX512F__)
// exp of 8 doubles: x = n ln2 + r with |r| <= ln2 / 2 (ln 2 in two parts), e^r by its Taylor series to
// r^13 (truncation < 1e-17), 2^n by scalef (gradual underflow to 0; exp(0) == 1 exactly). ~1 ulp, like
// the float64 exp torch uses. -inf gives 0.
inline __m512d exp8d(__m512d x) {
  x = _mm512_min_pd(_mm512_max_pd(x, _mm512_set1_pd(-746.0)), _mm512_set1_pd(709.0));
  const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), x);
  r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
  static constexpr double kInvFact[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720,
                                          1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800,
                                          1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
  __m512d p = _mm512_set1_pd(kInvFact[13]);
  for (int i = 12; i >= 0; --i) p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(kInvFact[i]));
  return _mm512_scalef_pd(p, n);
}
#endif

inline double max_of(const double* z, int64_t k) {
  double mx = -std::numeric_limits<double>::infinity();
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512d m = _mm512_set1_pd(mx);
  for (; i + 8 <= k; i += 8) m = _mm512_max_pd(m, _mm512_loadu_pd(z + i));
  mx = _mm512_reduce_max_pd(m);
#endif
  for (; i < k; ++i) mx = std::max(mx, z[i]);
  return mx;
}

// e[i] = exp(z[i] - mx)
inline void exp_shifted(const double* z, double mx, double* e, int64_t k) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512d m = _mm512_set1_pd(mx);
  for (; i + 8 <= k; i += 8) _mm512_storeu_pd(e + i, exp8d(_mm512_sub_pd(_mm512_loadu_pd(z + i), m)));
  if (i < k) {
    const __mmask8 t = static_cast<__mmask8>((1u << (k - i)) - 1u);
    _mm512_mask_storeu_pd(e + i, t, exp8d(_mm512_sub_pd(_mm512_maskz_loadu_pd(t, z + i), m)));
    return;
  }
#endif
  for (; i < k; ++i) e[i] = std::exp(z[i] - mx);
}

// The class drawn by inverse CDF of softmax(logits / temperature), restricted to the top-k logits and the
// top-p nucleus, at uniform u: the same steps in the same order as arkern.sampling.sample_categorical.
// Up to kRows rows are drawn together: each row's running sum stays sequential in class order (as torch's
// cumsum), but the rows' sums are interleaved so that their dependency chains overlap.
// NaN logits cannot make it read out of bounds (sort keys treat NaN as the smallest value).
struct Sampler {
  static constexpr int kRows = 4;
  double temperature;
  int64_t top_k;  // 0: off
  double top_p;   // >= 1: off
  std::vector<double> z, p, e, cum;
  std::vector<int64_t> order;
  Sampler(int64_t k, double t, int64_t topk, double topp)
      : temperature(t), top_k(topk), top_p(topp), z(k), p(k), e(kRows * k), cum(kRows * k), order(k) {}

  // Draw rows [0, n) of logits[r] (k classes each) at uniforms u[r] into out[r].
  template <typename T>
  void draw(const T* const* logits, int64_t n, int64_t k, const double* u, int64_t* out) {
    for (int64_t r0 = 0; r0 < n; r0 += kRows) {
      const int64_t m = std::min<int64_t>(kRows, n - r0);
      for (int64_t r = 0; r < m; ++r) kept_weights(logits[r0 + r], k, e.data() + r * k);
      switch (m) {
        case 4: running_sums<4>(k); break;
        case 3: running_sums<3>(k); break;
        case 2: running_sums<2>(k); break;
        default: running_sums<1>(k); break;
      }
      for (int64_t r = 0; r < m; ++r) out[r0 + r] = pick(e.data() + r * k, cum.data() + r * k, k, u[r0 + r]);
    }
  }

 private:
  // e[i] = exp(z[i] - max z) for the classes top-k and top-p keep, 0 for the others.
  template <typename T>
  void kept_weights(const T* logits, int64_t k, double* e_row) {
    const double neg_inf = -std::numeric_limits<double>::infinity();
    const auto key = [neg_inf](double v) { return std::isnan(v) ? neg_inf : v; };
    if (temperature == 1.0) {  // x / 1 == x: skip the divisions
      for (int64_t i = 0; i < k; ++i) z[i] = static_cast<double>(logits[i]);
    } else {
      for (int64_t i = 0; i < k; ++i) z[i] = static_cast<double>(logits[i]) / temperature;
    }
    if (top_k > 0 && top_k < k) {
      for (int64_t i = 0; i < k; ++i) p[i] = key(z[i]);
      std::nth_element(p.begin(), p.begin() + (top_k - 1), p.begin() + k, std::greater<double>());
      const double kth = p[top_k - 1];
      for (int64_t i = 0; i < k; ++i)
        if (z[i] < kth) z[i] = neg_inf;
    }
    exp_shifted(z.data(), max_of(z.data(), k), e_row, k);
    if (top_p < 1.0) {
      double total = 0.0;
      for (int64_t i = 0; i < k; ++i) total += e_row[i];
      for (int64_t i = 0; i < k; ++i) p[i] = key(e_row[i] / total);
      std::iota(order.begin(), order.begin() + k, int64_t(0));
      std::stable_sort(order.begin(), order.begin() + k, [this](int64_t a, int64_t b) { return p[a] > p[b]; });
      double before = 0.0;  // probability mass ranked above this class
      for (int64_t r = 0; r < k; ++r) {
        const int64_t i = order[r];
        const double pi = e_row[i] / total;
        if (before >= top_p) e_row[i] = 0.0;
        before += pi;
      }
    }
  }

  template <int R>
  void running_sums(int64_t k) {
    double c[R] = {};
    for (int64_t i = 0; i < k; ++i)
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) cum[r * k + i] = (c[r] += e[r * k + i]);
  }

  // The first class whose running sum exceeds u * total; past the end (u * total rounds up to the
  // total): the last class kept.
  static int64_t pick(const double* e_row, const double* cum_row, int64_t k, double u) {
    const int64_t idx = std::upper_bound(cum_row, cum_row + k, u * cum_row[k - 1]) - cum_row;
    if (idx < k) return idx;
    for (int64_t i = k - 1; i >= 0; --i)
      if (e_row[i] > 0) return i;
    return k - 1;
  }
};

}  // namespace arkern_pixelcnn
