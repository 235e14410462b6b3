// The gated unit tanh(a) * sigmoid(b) of the CPU decode kernels (WaveNet layers, Gated PixelCNN stacks).
#pragma once

#include <cmath>
#include <cstdint>

#include "simd_math.h"

namespace arkern_decode {

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

}  // namespace arkern_decode
