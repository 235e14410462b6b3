// The categorical draw of the CPU decode kernels, in float64: the same steps in the same order as
// arkern.distributions.sample_categorical (docs/design.md, "Exactness"), so that a kernel and the Python
// samplers pick the same class from the same logits and uniform. float32 logits without warpers first take a
// float32 pre-pass with proven error bounds (Sampler::screen), which returns the float64 steps' class when
// the uniform is not within its bounds of a CDF boundary, and leaves the row to the float64 steps otherwise.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "simd_math.h"

namespace arkern_decode {

inline double max_of(const double* z, int64_t k) {
  double mx = -std::numeric_limits<double>::infinity();
  int64_t i = 0;
#if defined(__AVX512F__)
  if (k >= 64) {
    // Four independent chains: the maximum of numbers does not depend on the order (only the sign of a zero
    // maximum may, which z - max does not see). With a NaN the order matters (VMAXPD returns its second
    // operand): such a row takes the single chain below, as before.
    const __m512d lo = _mm512_set1_pd(mx);
    __m512d m0 = lo, m1 = lo, m2 = lo, m3 = lo;
    __mmask8 nan = 0;
    for (; i + 32 <= k; i += 32) {
      const __m512d a = _mm512_loadu_pd(z + i), b = _mm512_loadu_pd(z + i + 8);
      const __m512d c = _mm512_loadu_pd(z + i + 16), d = _mm512_loadu_pd(z + i + 24);
      nan |= _mm512_cmp_pd_mask(a, b, _CMP_UNORD_Q) | _mm512_cmp_pd_mask(c, d, _CMP_UNORD_Q);
      m0 = _mm512_max_pd(m0, a);
      m1 = _mm512_max_pd(m1, b);
      m2 = _mm512_max_pd(m2, c);
      m3 = _mm512_max_pd(m3, d);
    }
    for (; i + 8 <= k; i += 8) {
      const __m512d a = _mm512_loadu_pd(z + i);
      nan |= _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q);
      m0 = _mm512_max_pd(m0, a);
    }
    for (int64_t r = i; r < k; ++r) nan |= static_cast<__mmask8>(std::isnan(z[r]));
    if (nan == 0) {
      mx = _mm512_reduce_max_pd(_mm512_max_pd(_mm512_max_pd(m0, m1), _mm512_max_pd(m2, m3)));
      for (; i < k; ++i) mx = std::max(mx, z[i]);
      return mx;
    }
    i = 0;
  }
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

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// e^x of 16 floats x in [-87, 0] for the draw's float32 pre-pass (Sampler::screen), with a bounded error:
// x = n ln2 + r (n in [-126, 0], |r| <= 0.3467, ln 2 in two parts), e^r by a degree-5 polynomial fitted for
// relative error on |r| <= 0.3467 (< 1e-7 in exact arithmetic), 2^n by scalef. Relative error < kExpErr on all
// of [-87, 0] with the rounding of r and of the Horner steps (measured over every float32 in [-87, 0]: < 1.7e-7).
constexpr double kExpErr = 1e-6;
inline __m512 exp16_screen(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(8.290283381938934e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.189809784293175e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666763722896576e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.999914765357971e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.999997019767761e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#endif

// The class drawn by inverse CDF of softmax(logits / temperature), restricted to the top-k logits and the
// top-p nucleus, at uniform u: the same steps in the same order as arkern.distributions.sample_categorical.
// Up to kRows rows are drawn together: each row's running sum stays sequential in class order (as torch's
// cumsum), but the rows' sums are interleaved so that their dependency chains overlap (8 chains keep both
// floating-point adders busy).
// NaN logits cannot make it read out of bounds (sort keys treat NaN as the smallest value).
struct Sampler {
  static constexpr int kRows = 8;
  double temperature;
  int64_t top_k;  // 0: off
  double top_p;   // >= 1: off
  std::vector<double> z, p, e, cum;
  std::vector<int64_t> order;
  Sampler(int64_t k, double t, int64_t topk, double topp)
      : temperature(t), top_k(topk), top_p(topp), z(k), p(k), e(kRows * k), cum(kRows * k), order(k) {}

  // Draw rows [0, n) of logits[r] (k classes each) at uniforms u[r] into out[r]. float32 logits without
  // warpers first go through screen(), which settles almost every row; the rest take the float64 steps.
  template <typename T>
  void draw(const T* const* logits, int64_t n, int64_t k, const double* u, int64_t* out) {
    const T* rows[kRows];
    int64_t idx[kRows];
    int m = 0;
    const auto flush = [&] {
      exact(rows, m, k, idx, u, out);
      m = 0;
    };
    for (int64_t r = 0; r < n; ++r) {
      if constexpr (std::is_same_v<T, float>) {
        if (screened() && screen(logits[r], k, u[r], out + r)) continue;
      }
      rows[m] = logits[r];
      idx[m++] = r;
      if (m == kRows) flush();
    }
    if (m > 0) flush();
  }

  // False: every row takes the float64 steps (the same classes; for tests that compare the two ways).
  bool screen_rows = true;

 private:
  std::vector<float> s32;  // screen(): the running sums

  bool screened() const {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    return screen_rows && temperature == 1.0 && top_k == 0 && top_p >= 1.0;
#else
    return false;
#endif
  }

  // The float64 steps for rows rows[0..m) (their indices idx[] into u and out).
  template <typename T>
  void exact(const T* const* rows, int m, int64_t k, const int64_t* idx, const double* u, int64_t* out) {
    for (int r = 0; r < m; ++r) kept_weights(rows[r], k, e.data() + r * k);
    switch (m) {
      case 8: running_sums<8>(k); break;
      case 7: running_sums<7>(k); break;
      case 6: running_sums<6>(k); break;
      case 5: running_sums<5>(k); break;
      case 4: running_sums<4>(k); break;
      case 3: running_sums<3>(k); break;
      case 2: running_sums<2>(k); break;
      default: running_sums<1>(k); break;
    }
    for (int r = 0; r < m; ++r) out[idx[r]] = pick(e.data() + r * k, cum.data() + r * k, k, u[idx[r]]);
  }

#if defined(__AVX512F__) && defined(__AVX512DQ__)
  // The float32 pre-pass of a row (temperature 1, no top-k / top-p): the class the float64 steps would pick,
  // or false when it cannot be sure. It forms, in float32, F_i ~ exp(x_i - max x) and running sums S_i, and
  // bounds |S_i - C_i| by B_i, C_i being the float64 steps' running sums (docs/design.md, "Exactness"). The
  // float64 steps pick the first i with C_i > v = u C_{k-1}; C never decreases (its terms are >= 0). With
  // v' = u S_{k-1} and |v - v'| <= Bv, a class j with S_j - v' > B_j + Bv and v' - S_{j-1} > B_{j-1} + Bv has
  // C_j > v >= C_{j-1}: it is their pick. Only a uniform within ~1e-6 of a CDF boundary fails the test.
  //
  // The bounds (max x = 0 maps to exactly 1 in both, so C_{k-1} >= 1):
  // - argument: x_i - max x rounded to float32 is off by <= 2^-24 |X|, which moves e^X by <= 1.0001 * 2^-24
  //   * |X| e^X <= 2.2e-8 (|X| e^X <= 1/e); below -87 F_i = 0 (e^X < 1.7e-38); so a1 = 2.3e-8 per class;
  // - exp16_screen: relative error < kExpErr (its comment); the float64 exp's ~1e-16 is folded in d1;
  // - the sums: each term passes through at most d float32 additions (at screen's end), so |S_i - sum F| <=
  //   gd sum F, gd = d 2^-24 / (1 - d 2^-24); the float64 running sums are within k 2^-53 C_i of theirs.
  bool screen(const float* l, int64_t k, double u, int64_t* out) {
    const int64_t nblk = (k + 15) / 16, ngrp = (nblk + 15) / 16;  // blocks of 16 classes, groups of 16 blocks
    if (static_cast<int64_t>(s32.size()) < ngrp * 272) s32.resize(static_cast<size_t>(ngrp * 272));
    float* f = s32.data();             // F, zero past k (ngrp * 256)
    float* ps = f + ngrp * 256;        // per block, the running sum at its end (ngrp * 16)
    const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    const auto mask_of = [k](int64_t b) {
      const int64_t left = k - b * 16;
      return left >= 16 ? static_cast<__mmask16>(0xffff) : left <= 0 ? static_cast<__mmask16>(0)
                                                                     : static_cast<__mmask16>((1u << left) - 1u);
    };
    __m512 mx = ninf;
    __mmask16 bad = 0;  // NaN or infinite logits: left to the float64 steps
    for (int64_t b = 0; b < nblk; ++b) {
      const __mmask16 t = mask_of(b);
      const __m512 v = _mm512_mask_loadu_ps(ninf, t, l + b * 16);
      bad |= _mm512_mask_fpclass_ps_mask(t, v, 0x99);  // QNaN | +inf | -inf | SNaN
      mx = _mm512_max_ps(mx, v);
    }
    if (bad != 0) return false;
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    const __m512 zero = _mm512_setzero_ps(), lo = _mm512_set1_ps(-87.0f);
    for (int64_t b = 0; b < ngrp * 16; ++b) {
      const __mmask16 t = mask_of(b);
      const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(t, l + b * 16), m);
      // F = 0 below -87 and in the lanes past k
      _mm512_storeu_ps(f + b * 16, _mm512_maskz_mov_ps(t & _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ),
                                                       exp16_screen(_mm512_max_ps(x, lo))));
    }
    // Block totals, 16 blocks at a time, by a tree of pairwise sums (transposing as it adds: lane q of the
    // result is block q's total); then their running sums, carried from group to group.
    alignas(64) static constexpr int32_t kIdx[4][2][16] = {
        {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}, {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}},
        {{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27}, {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}},
        {{0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29}, {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31}},
        {{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}, {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}}};
    __m512 carry = zero;
    for (int64_t g = 0; g < ngrp; ++g) {
      __m512 v[16];
      for (int q = 0; q < 16; ++q) v[q] = _mm512_loadu_ps(f + (g * 16 + q) * 16);
      for (int lv = 0, n = 16; lv < 4; ++lv, n /= 2) {
        const __m512i a = _mm512_load_si512(kIdx[lv][0]), c = _mm512_load_si512(kIdx[lv][1]);
        for (int q = 0; q < n / 2; ++q)
          v[q] = _mm512_add_ps(_mm512_permutex2var_ps(v[2 * q], a, v[2 * q + 1]),
                               _mm512_permutex2var_ps(v[2 * q], c, v[2 * q + 1]));
      }
      const __m512 sums = _mm512_add_ps(scan16(v[0]), carry);
      _mm512_storeu_ps(ps + g * 16, sums);
      carry = _mm512_permutexvar_ps(_mm512_set1_epi32(15), sums);
    }
    const double sk = ps[nblk - 1], vp = u * sk;
    // The block b of the pick: the number of block-end sums <= v'; in it, j = 16 b + the number of its running
    // sums <= v' (upper_bound of v' if the sums are sorted; the margins below check the two sums the pick rests
    // on, whatever j is; float32 compares: a v' within rounding of a sum fails the margins).
    const __m512 vf = _mm512_set1_ps(static_cast<float>(vp));
    int64_t b = 0;
    for (int64_t g = 0; g < ngrp; ++g) {
      const int64_t left = nblk - g * 16;
      const __mmask16 t = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
      b += __builtin_popcount(static_cast<unsigned>(_mm512_mask_cmp_ps_mask(t, _mm512_loadu_ps(ps + g * 16), vf, _CMP_LE_OQ)));
    }
    if (b >= nblk) return false;
    const float base = b > 0 ? ps[b - 1] : 0.0f;
    alignas(64) float sb[16];
    _mm512_store_ps(sb, _mm512_add_ps(scan16(_mm512_loadu_ps(f + b * 16)), _mm512_set1_ps(base)));
    const int cnt = __builtin_popcount(static_cast<unsigned>(
        _mm512_mask_cmp_ps_mask(mask_of(b), _mm512_load_ps(sb), vf, _CMP_LE_OQ)));
    const int64_t j = b * 16 + cnt;
    if (cnt == 16 || j >= k) return false;
    // Each F passes through at most 9 + ngrp float32 additions: 4 in the tree, 4 in the block sums' scan, one
    // per group carried, 4 in the block's scan or 1 adding the blocks before.
    const double d = static_cast<double>(9 + ngrp) * 0x1p-24;
    const double gd = d / (1.0 - d), d1 = kExpErr + 1e-12, a1 = 2.3e-8, c64 = static_cast<double>(k) * 2.3e-16;
    const auto bound = [&](int64_t i, double si) {
      return 1.02 * ((gd + d1) * si + static_cast<double>(i + 1) * a1) + c64 * (si + 1.0);
    };
    const double bv = std::fabs(u) * (1.01 * bound(k - 1, sk) + 2.3e-16 * (sk + 1.0));
    const double sj = sb[cnt], sjm = cnt > 0 ? sb[cnt - 1] : base;
    if (!(sj - vp > bound(j, sj) + bv)) return false;
    if (j > 0 && !(vp - sjm > bound(j - 1, sjm) + bv)) return false;
    *out = j;
    return true;
  }

  // Inclusive running sums of 16 floats (lane q: v[0] + ... + v[q], each term through at most 4 additions).
  static __m512 scan16(__m512 v) {
    const __m512i z = _mm512_setzero_si512();
    v = _mm512_add_ps(v, _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v), z, 15)));
    v = _mm512_add_ps(v, _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v), z, 14)));
    v = _mm512_add_ps(v, _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v), z, 12)));
    return _mm512_add_ps(v, _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v), z, 8)));
  }
#else
  bool screen(const float*, int64_t, double, int64_t*) { return false; }
#endif

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
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) cum[r * k + i] = (c[r] += e[r * k + i]);
  }

  // The first class whose running sum exceeds u * total; past the end (u * total rounds up to the
  // total): the last class kept.
  static int64_t pick(const double* e_row, const double* cum_row, int64_t k, double u) {
    // std::upper_bound's probes (the same halving, the same comparisons, so the same index even for sums
    // that are not sorted, e.g. with a NaN), without branches: the drawn class is unpredictable.
    const double v = u * cum_row[k - 1];
    int64_t idx = 0, len = k;
    while (len > 0) {
      const int64_t half = len >> 1;
      const bool right = !(v < cum_row[idx + half]);
      idx = right ? idx + half + 1 : idx;
      len = right ? len - half - 1 : half;
    }
    if (idx < k) return idx;
    for (int64_t i = k - 1; i >= 0; --i)
      if (e_row[i] > 0) return i;
    return k - 1;
  }
};

}  // namespace arkern_decode
