// Vector math shared by the CPU decode kernels (wavenet_decode.cpp, pixelcnn_decode.cpp, pixelcnnpp_decode.cpp):
// exp of 16 floats (also as the parts 2^n and e^r - 1) and of 8 doubles, tanh and sigmoid of 16 floats.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

// e^r ~ 1 + r + r^2 p(r) on |r| <= ln2 / 2: p's coefficients from r^5 down to r^0 (exp16, exp_neg_parts16).
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// exp of 16 floats: x = n ln2 + r (ln 2 split in two for accuracy), e^r by a degree-6 polynomial, 2^n
// by scalef. About 1 ulp on [-87, 88]; inputs are clamped there.
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
#pragma GCC unroll 5
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

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

// e^{-y} = 2^n (1 + q) for 16 floats y in [-88, 87], as its two parts: n the nearest integer to -y / ln 2 (1.5 * 2^23
// added and taken away), two_n = 2^n, q = e^r - 1 for r = -y - n ln 2 (ln 2 in two parts) by exp16's polynomial,
// accurate relative to q itself (no 1 + r rounded first), so that 1 - e^{-y} = (1 - 2^n) - 2^n q loses nothing
// near y = 0 (n = 0 there). r is held negated, which saves negating y.
inline void exp_neg_parts16(__m512 y, __m512& two_n, __m512& q) {
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  const __m512 n = _mm512_sub_ps(_mm512_fnmadd_ps(y, _mm512_set1_ps(1.44269504088896341f), magic), magic);
  __m512 rn = _mm512_fmadd_ps(n, _mm512_set1_ps(0.693359375f), y);  // -r
  rn = _mm512_fmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), rn);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
#pragma GCC unroll 5
  for (int i = 1; i < 6; ++i) p = _mm512_fnmadd_ps(p, rn, _mm512_set1_ps(kExpPoly[i]));  // p(r) at r = -rn
  q = _mm512_fmsub_ps(p, _mm512_mul_ps(rn, rn), rn);  // r + r^2 p(r)
  two_n = _mm512_scalef_ps(_mm512_set1_ps(1.0f), n);
}

// tanh(x) for |x| < 0.625 by an odd polynomial (no cancellation near 0); tanh16 uses it there.
inline __m512 tanh_near0_16(__m512 x) {
  const __m512 s = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(2.06390887954e-2f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-5.37397155531e-2f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.33314422036e-1f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-3.33332819422e-1f));
  return _mm512_fmadd_ps(_mm512_mul_ps(p, s), x, x);
}

// tanh: the odd polynomial for |x| < 0.625, 1 - 2 / (e^{2|x|} + 1) beyond.
inline __m512 tanh16(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 small = tanh_near0_16(x);
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
