// The elementwise rows of the pixelcnn_generate CPU kernel's steps (pixelcnn_runner.h): relu / add / copy rows in
// whole AVX-512 vectors, and the relu, residual-add-then-relu and gate rows rounded straight into a tile input
// block for the AMX products.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "amx.h"
#include "decode_gate.h"

namespace arkern_pixelcnn {

// Rows of a step's elementwise work: dst = relu(src) (std::max(x, 0): -0 and NaN kept), dst += src, dst = 0 + src
// (a sum's first term), dst = src. In
// whole 16-float vectors with AVX-512 (a masked tail): the tile input rounding (to_bf16) reads these rows back
// in 16-float vectors at once, which the store buffer forwards only from stores of the same vectors (narrower
// stores make such a load wait until they reach the cache).
enum class RowOp { relu, add, zero_add, copy };
template <RowOp op, typename T>
inline void row_op(T* dst, const T* src, int64_t n) {
  int64_t m = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    const auto f = [](__m512 d, __m512 v) {
      if constexpr (op == RowOp::relu) return _mm512_max_ps(_mm512_setzero_ps(), v);  // 0 > v ? 0 : v
      if constexpr (op == RowOp::add) return _mm512_add_ps(d, v);
      if constexpr (op == RowOp::zero_add) return _mm512_add_ps(_mm512_setzero_ps(), v);
      if constexpr (op == RowOp::copy) return v;
    };
    for (; m + 16 <= n; m += 16) _mm512_storeu_ps(dst + m, f(_mm512_loadu_ps(dst + m), _mm512_loadu_ps(src + m)));
    if (m < n) {
      const __mmask16 k = static_cast<__mmask16>((1u << (n - m)) - 1u);
      _mm512_mask_storeu_ps(dst + m, k, f(_mm512_maskz_loadu_ps(k, dst + m), _mm512_maskz_loadu_ps(k, src + m)));
    }
    return;
  }
#endif
  for (; m < n; ++m) {
    if constexpr (op == RowOp::relu) dst[m] = std::max(src[m], T(0));
    if constexpr (op == RowOp::add) dst[m] += src[m];
    if constexpr (op == RowOp::zero_add) dst[m] = T(0) + src[m];
    if constexpr (op == RowOp::copy) dst[m] = src[m];
  }
}

// dst[0 : n] = to_bf16(relu(src[0 : n])) for the tiles, without storing relu(src) as float32: the same
// instructions per value as row_op<relu> then arkern_amx::to_bf16 (the same bits).
inline void relu_bf16(const float* src, int64_t n, uint16_t* dst) {
  int64_t m = 0;
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  const __m512 z = _mm512_setzero_ps();
  for (; m + 32 <= n; m += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_max_ps(z, _mm512_loadu_ps(src + m + 16)),
                                           _mm512_max_ps(z, _mm512_loadu_ps(src + m)));
    _mm512_storeu_si512(dst + m, reinterpret_cast<const __m512i&>(v));
  }
#endif
  for (; m < n; m += 32) {
    alignas(64) float buf[32];
    const int64_t c = std::min<int64_t>(32, n - m);
    row_op<RowOp::relu>(buf, src + m, c);
    arkern_amx::to_bf16(buf, c, dst + m);
  }
}

// x[0 : n] += y[0 : n], and dst[0 : n] = to_bf16(relu(x)) of the sums, in one pass: the same instructions per
// value as row_op<add>, then relu_bf16 (the same bits).
inline void add_relu_bf16(float* x, const float* y, int64_t n, uint16_t* dst) {
  int64_t m = 0;
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  const __m512 z = _mm512_setzero_ps();
  for (; m + 32 <= n; m += 32) {
    const __m512 a = _mm512_add_ps(_mm512_loadu_ps(x + m), _mm512_loadu_ps(y + m));
    const __m512 b = _mm512_add_ps(_mm512_loadu_ps(x + m + 16), _mm512_loadu_ps(y + m + 16));
    _mm512_storeu_ps(x + m, a);
    _mm512_storeu_ps(x + m + 16, b);
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_max_ps(z, b), _mm512_max_ps(z, a));
    _mm512_storeu_si512(dst + m, reinterpret_cast<const __m512i&>(v));
  }
#endif
  if (m < n) {
    row_op<RowOp::add>(x + m, y + m, n - m);
    relu_bf16(x + m, n - m, dst + m);
  }
}

// dst[0 : n] = to_bf16(tanh(a) * sigmoid(b)) by gate_parts for the tiles, without storing the gate as float32:
// the same instructions per value as gate_parts then arkern_amx::to_bf16 (the same bits). Values [m, m + 32) go
// to dst + m / 32 * stride (stride 32: one run; a bfloat16 ring's blocks of 32 channels are further apart).
inline void gate_bf16(const float* a, const float* b, int64_t n, uint16_t* dst, int64_t stride = 32) {
  int64_t m = 0;
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  for (; m + 32 <= n; m += 32) {
    const __m512 lo = arkern_decode::gate16_parts(_mm512_loadu_ps(a + m), _mm512_loadu_ps(b + m));
    const __m512 hi = arkern_decode::gate16_parts(_mm512_loadu_ps(a + m + 16), _mm512_loadu_ps(b + m + 16));
    const __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
    _mm512_storeu_si512(dst + m / 32 * stride, reinterpret_cast<const __m512i&>(v));
  }
#endif
  for (; m < n; m += 32) {
    alignas(64) float buf[32];
    const int64_t c = std::min<int64_t>(32, n - m);
    arkern_decode::gate_parts(a + m, b + m, buf, c);
    arkern_amx::to_bf16(buf, c, dst + m / 32 * stride);
  }
}

}  // namespace arkern_pixelcnn
