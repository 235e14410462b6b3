// What the causal_conv1d CPU kernels share (causal_conv1d.cpp: forward and backward; causal_conv1d_update.cpp:
// the decode update): the argument checks and the fused silu.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

namespace arkern_causal_conv1d {

// silu(v) = v * sigmoid(v) over a row, written so the float loop vectorises: exp via 2^n * p(r).
// Correct over the whole float range: above ln(FLT_MAX) the result is +inf (so silu(-1e37) = -0, as
// torch gives), below -87 it is clamped to exp(-87) (1 + that rounds to 1), and 2^n is built from two
// halves so that n = 128 (v up to ln(FLT_MAX)) does not overflow the exponent field. NaN stays NaN in
// silu (v / anything) and never reaches the float-to-int conversion.
inline float exp_approx(float v) {
  const bool overflow = v > 88.72283f;  // e^v > FLT_MAX
  float c = v > -87.0f ? v : -87.0f;    // NaN-safe clamps: a NaN compares false and becomes -87
  c = c < 88.72283f ? c : 88.72283f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (c * 1.44269504088896341f + kRound) - kRound;
  const float r = c - n * 0.693145751953125f - n * 1.428606765330187045e-06f;  // c - n*ln2, two parts
  float p = 1.9875691500e-4f;  // Cephes expf polynomial on [-ln2/2, ln2/2]
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n), half = ni >> 1;  // 2^n = 2^half * 2^(n - half), n in [-126, 128]
  const float s1 = __builtin_bit_cast(float, (half + 127) << 23);
  const float s2 = __builtin_bit_cast(float, (ni - half + 127) << 23);
  return overflow ? __builtin_inff() : p * s1 * s2;
}

template <typename T>
inline void silu_row(T* y, int64_t n) {
  for (int64_t t = 0; t < n; ++t) y[t] = y[t] / (T(1) + std::exp(-y[t]));
}

template <>
inline void silu_row<float>(float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) {
    const float v = y[t];
    y[t] = v / (1.0f + exp_approx(-v));
  }
}

// y = silu(y) in place (y contiguous), vectorised and parallel.
inline void silu_inplace(at::Tensor& y) {
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "causal_conv1d_silu", [&] {
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, y.numel(), int64_t(1) << 18, [&](int64_t i0, int64_t i1) { silu_row<scalar_t>(yp + i0, i1 - i0); });
  });
}

struct ConvArgs {
  int64_t B, Cin, Cout, T, K, d, groups, S0;
};

inline ConvArgs check_conv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                    const std::optional<at::Tensor>& init, int64_t dilation, int64_t groups) {
  TORCH_CHECK(x.dim() == 3, "causal_conv1d: x must be (B, Cin, T), got ", x.sizes());
  TORCH_CHECK(w.dim() == 3, "causal_conv1d: weight must be (Cout, Cin/groups, K), got ", w.sizes());
  TORCH_CHECK(dilation >= 1, "causal_conv1d: dilation must be >= 1, got ", dilation);
  TORCH_CHECK(groups >= 1 && x.size(1) % groups == 0 && w.size(0) % groups == 0,
              "causal_conv1d: groups must divide Cin and Cout");
  TORCH_CHECK(w.size(1) * groups == x.size(1), "causal_conv1d: weight has ", w.size(1), " input channels per group, "
              "x has ", x.size(1), " channels for ", groups, " groups");
  TORCH_CHECK(w.size(2) >= 1, "causal_conv1d: kernel size must be >= 1");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "causal_conv1d: x and weight dtypes differ");
  TORCH_CHECK(w.size(2) - 1 <= std::numeric_limits<int64_t>::max() / dilation,
              "causal_conv1d: dilation = ", dilation, " overflows (K-1)*dilation for K = ", w.size(2));
  const auto cpu = [](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.device().is_cpu(), "causal_conv1d: ", name, " must be a CPU tensor for this kernel, got ",
                t.device());
  };
  cpu("x", x);
  cpu("weight", w);
  if (bias.has_value()) cpu("bias", *bias);
  if (init.has_value()) cpu("initial_state", *init);
  ConvArgs a{x.size(0), x.size(1), w.size(0), x.size(2), w.size(2), dilation, groups, (w.size(2) - 1) * dilation};
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == a.Cout && bias->scalar_type() == x.scalar_type(),
                "causal_conv1d: bias must be (", a.Cout, ",) of the dtype of x");
  if (init.has_value())
    TORCH_CHECK(init->dim() == 3 && init->size(0) == a.B && init->size(1) == a.Cin && init->size(2) == a.S0 &&
                init->scalar_type() == x.scalar_type(),
                "causal_conv1d: initial_state must be (", a.B, ", ", a.Cin, ", ", a.S0, "), got ", init->sizes());
  return a;
}

inline bool is_depthwise(const ConvArgs& a) { return a.groups == a.Cin && a.Cin == a.Cout; }

}  // namespace arkern_causal_conv1d
