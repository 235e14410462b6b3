// The categorical draw of the CPU decode kernels, in float64: the same steps in the same order as
// arkern.distributions.sample_categorical (docs/design.md, "Exactness"), so that a kernel and the Python
// samplers pick the same class from the same logits and uniform.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
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

  // Draw rows [0, n) of logits[r] (k classes each) at uniforms u[r] into out[r].
  template <typename T>
  void draw(const T* const* logits, int64_t n, int64_t k, const double* u, int64_t* out) {
    for (int64_t r0 = 0; r0 < n; r0 += kRows) {
      const int64_t m = std::min<int64_t>(kRows, n - r0);
      for (int64_t r = 0; r < m; ++r) kept_weights(logits[r0 + r], k, e.data() + r * k);
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
