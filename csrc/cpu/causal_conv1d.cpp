// causal_conv1d CPU kernels. Semantics: arkern/reference/causal_conv1d.py (the reference defines the op).
//
// y[b, o, t] = act(bias[o] + sum_{c in group(o), k} w[o, c', k] * xin[b, c, t - (K-1-k)*d]), where xin is
// x for times >= 0 and the initial state (or zeros) for the S0 = (K-1)*d times before.
//
// * Depthwise (groups == Cin == Cout): one pass per (batch, channel) row. The head t < S0, which reaches
//   into the initial state, runs on a small padded copy [initial state | first S0 inputs]; the body
//   t >= S0 reads x directly. Both are the same SIMD loop over time (taps unrolled for K = 2, 3, 4).
//   The backward runs per channel (so grad_weight/grad_bias need no reduction across threads): it
//   recomputes the pre-activation for silu, then grad_x/grad_initial_state is the same loop with the taps
//   reversed over a zero-padded copy of the pre-activation gradient.
// * Any other grouping: one GEMM per (group, tap) through ATen BLAS, per (batch, block of 512 steps):
//   y[b, o, L:] += W_k @ x[b, c, :T-L] (L = lag of tap k), the first L outputs from the initial state.
//   No padded copy of x is made.
// * Update: one fused pass per (row, channel) (per row for grouped convs): the past window is read from
//   the state (shift register or ring), the new tokens appended, the outputs computed, the state written.
//   One token in shift-register mode (Mamba's decode) has its own loop over channels.
// * silu is fused (a vectorised polynomial exp for float32); large outputs get transparent huge pages.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace {

// --------------------------------------------------------------------------------------- helpers

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
void silu_row(T* y, int64_t n) {
  for (int64_t t = 0; t < n; ++t) y[t] = y[t] / (T(1) + std::exp(-y[t]));
}

template <>
void silu_row<float>(float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) {
    const float v = y[t];
    y[t] = v / (1.0f + exp_approx(-v));
  }
}

// y = silu(y) in place (y contiguous), vectorised and parallel.
void silu_inplace(at::Tensor& y) {
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "causal_conv1d_silu", [&] {
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, y.numel(), int64_t(1) << 18, [&](int64_t i0, int64_t i1) { silu_row<scalar_t>(yp + i0, i1 - i0); });
  });
}

// out[t] = bias + sum_k w[k] * in[t + k*d] for t in [0, n): the causal conv of one row, `in` pointing at
// the input lagging the first output by S0. KC > 0: K known at compile time (taps unrolled).
template <typename T, int KC>
void conv_row(const T* in, const T* w, T bias, T* out, int64_t n, int64_t K, int64_t d) {
  if constexpr (KC > 0) {
    T wk[KC];
    for (int k = 0; k < KC; ++k) wk[k] = w[k];
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) {
      T acc = bias;
      for (int k = 0; k < KC; ++k) acc += wk[k] * in[t + k * d];
      out[t] = acc;
    }
  } else {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) out[t] = bias;
    for (int64_t k = 0; k < K; ++k) {
      const T wk = w[k];
      const T* src = in + k * d;
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) out[t] += wk * src[t];
    }
  }
}

template <typename T>
void conv_row_any(const T* in, const T* w, T bias, T* out, int64_t n, int64_t K, int64_t d) {
  if (n <= 0) return;
  switch (K) {
    case 1: conv_row<T, 1>(in, w, bias, out, n, K, d); break;
    case 2: conv_row<T, 2>(in, w, bias, out, n, K, d); break;
    case 3: conv_row<T, 3>(in, w, bias, out, n, K, d); break;
    case 4: conv_row<T, 4>(in, w, bias, out, n, K, d); break;
    default: conv_row<T, 0>(in, w, bias, out, n, K, d); break;
  }
}

// The pre-activation of one depthwise row. `head` is scratch of 2*S0 elements; x row contiguous in time.
template <typename T>
void depthwise_pre_row(const T* x, const T* init, const T* w, T bias, T* y, T* head, int64_t T_, int64_t K,
                       int64_t d, int64_t S0) {
  const int64_t nh = std::min(S0, T_);
  if (nh > 0) {  // outputs t < S0 read [initial state | x[0:nh]]
    if (init) std::copy(init, init + S0, head); else std::fill(head, head + S0, T(0));
    std::copy(x, x + nh, head + S0);
    conv_row_any<T>(head, w, bias, y, nh, K, d);
  }
  conv_row_any<T>(x, w, bias, y + S0, T_ - S0, K, d);  // outputs t >= S0: every tap inside x
}

struct ConvArgs {
  int64_t B, Cin, Cout, T, K, d, groups, S0;
};

ConvArgs check_conv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
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

// A fresh output tensor. Large outputs ask for transparent huge pages before their first touch: on Linux
// with THP in "madvise" mode, first-touch page faults of a fresh multi-MB output otherwise cost as much as
// the whole memory-bound kernel (PyTorch does the same for every allocation under THP_MEM_ALLOC_ENABLE=1).
// Advisory only: the values and the allocator's ownership are unchanged.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  auto y = at::empty(sizes, options);
#ifdef __linux__
  const uintptr_t huge = uintptr_t(2) << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(y.data_ptr()), bytes = y.nbytes();
  const uintptr_t lo = (p + huge - 1) & ~(huge - 1), hi = (p + bytes) & ~(huge - 1);
  if (bytes >= 4 * huge && hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
  return y;
}

bool is_depthwise(const ConvArgs& a) { return a.groups == a.Cin && a.Cin == a.Cout; }

at::Tensor time_contiguous(const at::Tensor& x) { return x.stride(2) == 1 ? x : x.contiguous(); }

// ------------------------------------------------------------------------------- depthwise path

template <typename T>
void depthwise_forward(const at::Tensor& x, const at::Tensor& w, const T* bias, const at::Tensor& init, bool silu,
                       at::Tensor& y, const ConvArgs& a) {
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  const T* ip = init.defined() ? init.data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  const int64_t sxb = x.stride(0), sxc = x.stride(1);
  const int64_t rows = a.B * a.Cin;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, a.T));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<T> head(2 * a.S0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / a.Cin, c = r % a.Cin;
      T* yr = yp + r * a.T;
      depthwise_pre_row<T>(xp + b * sxb + c * sxc, ip ? ip + r * a.S0 : nullptr, wp + c * a.K, bias ? bias[c] : T(0),
                           yr, head.data(), a.T, a.K, a.d, a.S0);
      if (silu) silu_row<T>(yr, a.T);  // while the row is in cache
    }
  });
}

template <typename T>
void depthwise_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, const T* bias,
                        const at::Tensor& init, bool silu, at::Tensor& gx, at::Tensor& gw, at::Tensor& gb,
                        at::Tensor& gi, const ConvArgs& a) {
  const T* gp = g.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  const T* ip = init.defined() ? init.data_ptr<T>() : nullptr;
  T* gxp = gx.defined() ? gx.data_ptr<T>() : nullptr;
  T* gwp = gw.defined() ? gw.data_ptr<T>() : nullptr;
  T* gbp = gb.defined() ? gb.data_ptr<T>() : nullptr;
  T* gip = gi.defined() ? gi.data_ptr<T>() : nullptr;
  const int64_t sxb = x.stride(0), sxc = x.stride(1), S0 = a.S0, T_ = a.T, K = a.K, d = a.d;
  at::parallel_for(0, a.Cin, 1, [&](int64_t c0, int64_t c1) {
    std::vector<T> head(2 * S0), pre(T_), gpad(2 * S0 + T_, T(0)), wrev(K), gwacc(K);
    for (int64_t c = c0; c < c1; ++c) {
      const T* wc = wp + c * K;
      for (int64_t k = 0; k < K; ++k) wrev[k] = wc[K - 1 - k];
      std::fill(gwacc.begin(), gwacc.end(), T(0));
      T gbacc = 0;
      for (int64_t b = 0; b < a.B; ++b) {
        const int64_t r = b * a.Cin + c;
        const T* xr = xp + b * sxb + c * sxc;
        const T* ir = ip ? ip + r * S0 : nullptr;
        const T* gr = gp + r * T_;
        T* gpre = gpad.data() + S0;  // gpad = [S0 zeros | dL/dpre (T) | S0 zeros]
        if (silu) {
          depthwise_pre_row<T>(xr, ir, wc, bias ? bias[c] : T(0), pre.data(), head.data(), T_, K, d, S0);
          for (int64_t t = 0; t < T_; ++t) {
            const T s = T(1) / (T(1) + std::exp(-pre[t]));
            gpre[t] = gr[t] * s * (T(1) + pre[t] * (T(1) - s));
          }
        } else {
          std::copy(gr, gr + T_, gpre);
        }
        if (gbp) {
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t t = 0; t < T_; ++t) acc += gpre[t];
          gbacc += acc;
        }
        if (gwp) {  // dL/dw[k] = sum_t gpre[t] * xin[t - lag_k]; xin[t - S0 + k*d] for t < S0 is in `head`
          const int64_t nh = std::min(S0, T_);
          if (nh > 0 && !silu) {
            if (ir) std::copy(ir, ir + S0, head.data()); else std::fill(head.begin(), head.begin() + S0, T(0));
            std::copy(xr, xr + nh, head.data() + S0);
          }
          for (int64_t k = 0; k < K; ++k) {
            T acc = 0;
            const T* hk = head.data() + k * d;
#pragma omp simd reduction(+ : acc)
            for (int64_t t = 0; t < nh; ++t) acc += gpre[t] * hk[t];
            const T* xk = xr + k * d;  // body: xin[t - S0 + k*d] = x[t - S0 + k*d]
#pragma omp simd reduction(+ : acc)
            for (int64_t t = S0; t < T_; ++t) acc += gpre[t] * xk[t - S0];
            gwacc[k] += acc;
          }
        }
        // dL/dxin[s] = sum_k w[k] * gpre[s - k*d] = sum_j wrev[j] * gpad[s + j*d], s in [0, S0 + T)
        if (gip) conv_row_any<T>(gpad.data(), wrev.data(), T(0), gip + r * S0, S0, K, d);
        if (gxp) conv_row_any<T>(gpad.data() + S0, wrev.data(), T(0), gxp + r * T_, T_, K, d);
      }
      if (gbp) gbp[c] = gbacc;
      if (gwp) std::copy(gwacc.begin(), gwacc.end(), gwp + c * K);
    }
  });
}

// --------------------------------------------------------------------------------- grouped path

// One GEMM per (group, tap) through ATen BLAS, per (batch, block of time steps) so that the output block
// stays in cache across taps and both threads have work at any batch size. Output columns t of tap k (lag
// L) read x[:, t - L] for t >= L and the initial state (if any; else zeros, skipped) for t < L.
at::Tensor grouped_pre(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       const at::Tensor& init, const ConvArgs& a) {
  constexpr int64_t TB = 512;
  const int64_t ci = a.Cin / a.groups, co = a.Cout / a.groups, nb = (a.T + TB - 1) / TB;
  auto y = empty_output({a.B, a.Cout, a.T}, x.options());
  const auto wt = w.permute({2, 0, 1}).contiguous();  // (K, Cout, ci): each tap a row-major matrix
  const at::Tensor bcol = bias.has_value() ? bias->detach().reshape({a.Cout, 1}) : at::Tensor();
  at::parallel_for(0, a.B * nb, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / nb, t0 = (q % nb) * TB, n = std::min(TB, a.T - t0);
      auto yb = y.select(0, b).narrow(1, t0, n);
      if (bcol.defined()) yb.copy_(bcol.expand({a.Cout, n})); else yb.zero_();
      for (int64_t g = 0; g < a.groups; ++g) {
        auto yg = yb.narrow(0, g * co, co);
        const auto xg = x.select(0, b).narrow(0, g * ci, ci);
        for (int64_t k = 0; k < a.K; ++k) {
          const int64_t L = (a.K - 1 - k) * a.d;
          const auto wk = wt.select(0, k).narrow(0, g * co, co);
          const int64_t s = std::max(t0, L);  // first output column of this block that reads x
          if (s < t0 + n) yg.narrow(1, s - t0, t0 + n - s).addmm_(wk, xg.narrow(1, s - L, t0 + n - s));
          const int64_t e = std::min(t0 + n, L);  // columns [t0, e) read the initial state
          if (init.defined() && e > t0)
            yg.narrow(1, 0, e - t0).addmm_(wk, init.select(0, b).narrow(0, g * ci, ci).narrow(1, a.S0 + t0 - L, e - t0));
        }
      }
    }
  });
  return y;
}

// ------------------------------------------------------------------------------------------- ops

at::Tensor causal_conv1d_cpu(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& bias_,
                             const std::optional<at::Tensor>& init_, int64_t dilation, int64_t groups, bool silu) {
  at::AutoDispatchBelowADInplaceOrView guard;  // ATen calls below are part of this kernel, not the graph
  const ConvArgs a = check_conv(x_, w_, bias_, init_, dilation, groups);
  const auto x = time_contiguous(x_.detach());
  const auto w = w_.detach().contiguous();
  const at::Tensor init = init_.has_value() ? init_->detach().contiguous() : at::Tensor();
  if (!is_depthwise(a)) {
    auto y = grouped_pre(x, w, bias_, init, a);
    if (silu) silu_inplace(y);
    return y;
  }
  auto y = empty_output({a.B, a.Cout, a.T}, x.options());
  const at::Tensor bias = bias_.has_value() ? bias_->detach().contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_cpu", [&] {
    depthwise_forward<scalar_t>(x, w, bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, init, silu, y, a);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_backward_cpu(
    const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& bias_,
    const std::optional<at::Tensor>& init_, int64_t dilation, int64_t groups, bool silu,
    std::array<bool, 4> output_mask) {
  at::AutoDispatchBelowADInplaceOrView guard;  // ATen calls below are part of this kernel, not the graph
  const ConvArgs a = check_conv(x_, w_, bias_, init_, dilation, groups);
  TORCH_CHECK(g_.dim() == 3 && g_.size(0) == a.B && g_.size(1) == a.Cout && g_.size(2) == a.T &&
              g_.scalar_type() == x_.scalar_type(),
              "causal_conv1d_backward: grad_out must be (", a.B, ", ", a.Cout, ", ", a.T, "), got ", g_.sizes());
  const auto g = g_.detach().contiguous();
  const auto x = time_contiguous(x_.detach());
  const auto w = w_.detach().contiguous();
  const at::Tensor init = init_.has_value() ? init_->detach().contiguous() : at::Tensor();
  const bool want_gi = output_mask[3] && init.defined();
  auto empty = [&] { return at::empty({0}, x.options()); };
  at::Tensor gx, gw, gb, gi;
  if (is_depthwise(a)) {
    gx = output_mask[0] ? empty_output({a.B, a.Cin, a.T}, x.options()) : at::Tensor();
    gw = output_mask[1] ? at::empty({a.Cout, 1, a.K}, x.options()) : at::Tensor();
    gb = output_mask[2] ? at::empty({a.Cout}, x.options()) : at::Tensor();
    gi = want_gi ? at::empty({a.B, a.Cin, a.S0}, x.options()) : at::Tensor();
    const at::Tensor bias = bias_.has_value() ? bias_->detach().contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_backward_cpu", [&] {
      depthwise_backward<scalar_t>(g, x, w, bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, init, silu,
                                   gx, gw, gb, gi, a);
    });
  } else {
    at::Tensor gpre = g;
    if (silu) {
      const auto pre = grouped_pre(x, w, bias_, init, a);
      const auto s = at::sigmoid(pre);
      gpre = g * s * (1 + pre * (1 - s));
    }
    const int64_t ci = a.Cin / a.groups, co = a.Cout / a.groups;
    gx = output_mask[0] ? at::zeros({a.B, a.Cin, a.T}, x.options()) : at::Tensor();
    gw = output_mask[1] ? at::zeros({a.Cout, ci, a.K}, x.options()) : at::Tensor();
    gb = output_mask[2] ? gpre.sum({0, 2}) : at::Tensor();
    gi = want_gi ? at::zeros({a.B, a.Cin, a.S0}, x.options()) : at::Tensor();
    for (int64_t grp = 0; grp < a.groups; ++grp) {
      const auto gg = gpre.narrow(1, grp * co, co);
      const auto xg = x.narrow(1, grp * ci, ci);
      for (int64_t k = 0; k < a.K; ++k) {
        const int64_t L = (a.K - 1 - k) * a.d;
        const auto wk = w.narrow(0, grp * co, co).select(2, k);  // (co, ci)
        const auto wkt = wk.t().unsqueeze(0).expand({a.B, ci, co});
        if (L < a.T) {
          const auto gv = gg.narrow(2, L, a.T - L);  // outputs that see x[:, :, 0:T-L] through tap k
          const auto xv = xg.narrow(2, 0, a.T - L);
          if (gx.defined()) {
            auto gxv = gx.narrow(1, grp * ci, ci).narrow(2, 0, a.T - L);
            gxv.baddbmm_(wkt, gv);
          }
          if (gw.defined()) gw.narrow(0, grp * co, co).select(2, k).add_(at::bmm(gv, xv.transpose(1, 2)).sum(0));
        }
        if (init.defined() && L > 0) {
          const int64_t n = std::min(L, a.T);
          const auto gv = gg.narrow(2, 0, n);
          const auto iv = init.narrow(1, grp * ci, ci).narrow(2, a.S0 - L, n);
          if (gi.defined()) {
            auto giv = gi.narrow(1, grp * ci, ci).narrow(2, a.S0 - L, n);
            giv.baddbmm_(wkt, gv);
          }
          if (gw.defined()) gw.narrow(0, grp * co, co).select(2, k).add_(at::bmm(gv, iv.transpose(1, 2)).sum(0));
        }
      }
    }
  }
  return {gx.defined() ? gx : empty(), gw.defined() ? gw : empty(), gb.defined() ? gb : empty(),
          gi.defined() ? gi : empty()};
}

// ---------------------------------------------------------------------------------------- update

inline int64_t pos_mod(int64_t v, int64_t m) { return ((v % m) + m) % m; }

// Where the input at relative time tau < 0 (before this call's first token) lives in a state row:
// shift register slot S + tau; ring slot (seqlen + tau) mod S. Only the K taps are read, never all S slots.
struct PastSlot {
  int64_t S, seqlen;
  bool ring;
  int64_t operator()(int64_t tau) const { return ring ? pos_mod(seqlen + tau, S) : S + tau; }
};

// Input of tap lag L for token i: this call's token i - L, or the state (read before any write of this call).
template <typename T>
inline T tap_value(const T* st, int64_t sss, const T* xr, int64_t i, int64_t L, const PastSlot& slot) {
  return L <= i ? xr[i - L] : st[slot(i - L) * sss];
}

// After a row's outputs: put its t tokens (xr) into the state row. Ring: token j at slot (seqlen + j) mod S
// (only the last S survive). Shift register: drop the t oldest, append the tokens, newest last.
template <typename T>
void store_tokens(T* st, int64_t sss, const T* xr, int64_t t, const PastSlot& slot) {
  const int64_t S = slot.S;
  if (S == 0) return;
  if (slot.ring) {
    for (int64_t j = std::max<int64_t>(0, t - S); j < t; ++j) st[pos_mod(slot.seqlen + j, S) * sss] = xr[j];
    return;
  }
  const int64_t keep = std::max<int64_t>(0, S - t);
  for (int64_t j = 0; j < keep; ++j) st[j * sss] = st[(j + t) * sss];
  for (int64_t j = keep; j < S; ++j) st[j * sss] = xr[t - S + j];
}

// One shift-register step (t == 1) for depthwise channels [c0, c1) of one row, the common decode case, when
// the state is the receptive field (S = K-1) or Mamba's d_conv-wide cache (S = K), dilation 1, rows of S
// contiguous values: everything is compile-time, so the shift is register moves instead of a memmove call
// per channel, and it vectorises.
template <typename T, int KC, int S>
void shift_step_tight(const T* __restrict xb, T* __restrict sb, const T* __restrict w, const T* bias,
                      T* __restrict yb, int64_t c0, int64_t c1) {
  static_assert(S >= KC - 1, "the state must hold the receptive field");
#pragma omp simd
  for (int64_t c = c0; c < c1; ++c) {
    T* st = sb + c * S;
    const T* wc = w + c * KC;
    const T v = xb[c];
    T acc = (bias ? bias[c] : T(0)) + wc[KC - 1] * v;
    for (int k = 0; k < KC - 1; ++k) acc += wc[k] * st[S - (KC - 1) + k];
    yb[c] = acc;
    for (int j = 0; j + 1 < S; ++j) st[j] = st[j + 1];
    st[S - 1] = v;
  }
}

// The same for any S >= (K-1)*d, dilation and state strides (taps unrolled for small K).
template <typename T, int KC>
void shift_step(const T* xb, T* sb, int64_t ssc, const T* w, const T* bias, T* yb, int64_t c0, int64_t c1,
                int64_t S, int64_t K, int64_t d) {
  const int64_t KK = KC > 0 ? KC : K;
  for (int64_t c = c0; c < c1; ++c) {
    T* st = sb + c * ssc;
    const T* wc = w + c * KK;
    const T v = xb[c];
    T acc = (bias ? bias[c] : T(0)) + wc[KK - 1] * v;
    for (int64_t k = 0; k + 1 < KK; ++k) acc += wc[k] * st[S - (KK - 1 - k) * d];
    yb[c] = acc;
    for (int64_t j = 0; j + 1 < S; ++j) st[j] = st[j + 1];
    st[S - 1] = v;
  }
}

template <typename T>
void update_general(const T* xp, T* sp, const T* wp, const T* bias, const int32_t* seq, const int32_t* idx, T* yp,
                    int64_t S, int64_t ssb, int64_t ssc, int64_t sss, const ConvArgs& a, int64_t t);

// Returns true when it applied silu itself (the fast path does it per channel block).
template <typename T>
bool update_kernel(const at::Tensor& x, at::Tensor& state, const at::Tensor& w, const T* bias, const int32_t* seq,
                   const int32_t* idx, bool silu, at::Tensor& y, const ConvArgs& a, int64_t t) {
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* sp = state.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const int64_t S = state.size(2), ssb = state.stride(0), ssc = state.stride(1), sss = state.stride(2);
  const int64_t K = a.K, d = a.d;
  if (is_depthwise(a) && seq == nullptr && t == 1 && sss == 1 && S >= 1) {
    // Channel blocks of 512; a thread gets at least 256K channels (~0.2 ms): below that a fork/join costs
    // more than it saves (and stalls badly when the other core is busy).
    constexpr int64_t CB = 512;
    const int64_t nblk = (a.Cin + CB - 1) / CB;
    at::parallel_for(0, a.B * nblk, (int64_t(1) << 18) / CB, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t b = q / nblk, c0 = (q % nblk) * CB, c1 = std::min(a.Cin, c0 + CB);
        const int64_t row = idx ? idx[b] : b;
        T* yb = yp + b * a.Cin;
        if (row < 0) {
          std::fill(yb + c0, yb + c1, T(0));
          continue;
        }
        const T* xb = xp + b * a.Cin;
        T* sb = sp + row * ssb;
        const bool tight = d == 1 && ssc == S && (S == K - 1 || S == K);
        if (tight && K == 4) {
          (S == 3 ? shift_step_tight<T, 4, 3> : shift_step_tight<T, 4, 4>)(xb, sb, wp, bias, yb, c0, c1);
        } else if (tight && K == 3) {
          (S == 2 ? shift_step_tight<T, 3, 2> : shift_step_tight<T, 3, 3>)(xb, sb, wp, bias, yb, c0, c1);
        } else {
          switch (K) {
            case 2: shift_step<T, 2>(xb, sb, ssc, wp, bias, yb, c0, c1, S, K, d); break;
            case 3: shift_step<T, 3>(xb, sb, ssc, wp, bias, yb, c0, c1, S, K, d); break;
            case 4: shift_step<T, 4>(xb, sb, ssc, wp, bias, yb, c0, c1, S, K, d); break;
            default: shift_step<T, 0>(xb, sb, ssc, wp, bias, yb, c0, c1, S, K, d); break;
          }
        }
        if (silu) silu_row<T>(yb + c0, c1 - c0);
      }
    });
    return true;
  }
  update_general<T>(xp, sp, wp, bias, seq, idx, yp, S, ssb, ssc, sss, a, t);
  return false;  // the general paths leave the pre-activation in y
}

template <typename T>
void update_general(const T* xp, T* sp, const T* wp, const T* bias, const int32_t* seq, const int32_t* idx, T* yp,
                    int64_t S, int64_t ssb, int64_t ssc, int64_t sss, const ConvArgs& a, int64_t t) {
  const int64_t K = a.K, d = a.d;
  const bool ring = seq != nullptr;
  if (is_depthwise(a)) {
    const int64_t grain = std::max<int64_t>(256, (int64_t(1) << 18) / std::max<int64_t>(1, t * K));
    at::parallel_for(0, a.B * a.Cin, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / a.Cin, c = r % a.Cin;
        const int64_t row = idx ? idx[b] : b;
        T* yr = yp + r * t;
        if (row < 0) {
          std::fill(yr, yr + t, T(0));
          continue;
        }
        T* st = sp + row * ssb + c * ssc;
        const T* xr = xp + r * t;
        const PastSlot slot{S, ring ? seq[b] : 0, ring};
        const T* wc = wp + c * K;
        for (int64_t i = 0; i < t; ++i) {
          T acc = bias ? bias[c] : T(0);
          for (int64_t k = 0; k < K; ++k) acc += wc[k] * tap_value(st, sss, xr, i, (K - 1 - k) * d, slot);
          yr[i] = acc;
        }
        store_tokens(st, sss, xr, t, slot);
      }
    });
    return;
  }
  // Grouped / dense: per row, gather each group's taps (ci*K values, in weight order) once per token, then
  // every output of the group is a contiguous dot product with its weight row.
  const int64_t ci = a.Cin / a.groups, co = a.Cout / a.groups, n = ci * K;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, a.Cout * n * t));
  at::parallel_for(0, a.B, grain, [&](int64_t b0, int64_t b1) {
    std::vector<T> taps(n);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = idx ? idx[b] : b;
      T* yb = yp + b * a.Cout * t;
      if (row < 0) {
        std::fill(yb, yb + a.Cout * t, T(0));
        continue;
      }
      const PastSlot slot{S, ring ? seq[b] : 0, ring};
      T* sr = sp + row * ssb;
      for (int64_t i = 0; i < t; ++i) {
        for (int64_t g = 0; g < a.groups; ++g) {
          for (int64_t cc = 0; cc < ci; ++cc) {
            const int64_t c = g * ci + cc;
            for (int64_t k = 0; k < K; ++k)
              taps[cc * K + k] = tap_value(sr + c * ssc, sss, xp + (b * a.Cin + c) * t, i, (K - 1 - k) * d, slot);
          }
          for (int64_t o = g * co; o < (g + 1) * co; ++o) {
            const T* wo = wp + o * n;
            T acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t e = 0; e < n; ++e) acc += wo[e] * taps[e];
            yb[o * t + i] = acc + (bias ? bias[o] : T(0));
          }
        }
      }
      for (int64_t c = 0; c < a.Cin; ++c) store_tokens(sr + c * ssc, sss, xp + (b * a.Cin + c) * t, t, slot);
    }
  });
}

at::Tensor causal_conv1d_update_cpu(const at::Tensor& x_, at::Tensor conv_state, const at::Tensor& w_,
                                    const std::optional<at::Tensor>& bias_, int64_t dilation, int64_t groups, bool silu,
                                    const std::optional<at::Tensor>& seqlens_,
                                    const std::optional<at::Tensor>& indices_) {
  at::AutoDispatchBelowADInplaceOrView guard;  // ATen calls below are part of this kernel, not the graph
  const ConvArgs a = check_conv(x_, w_, bias_, std::nullopt, dilation, groups);
  const int64_t t = a.T, B = a.B;
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.size(1) == a.Cin && conv_state.size(2) >= a.S0 &&
              conv_state.scalar_type() == x_.scalar_type(),
              "causal_conv1d_update: conv_state must be (pool, ", a.Cin, ", S >= ", a.S0, "), got ", conv_state.sizes());
  TORCH_CHECK(conv_state.device().is_cpu(), "causal_conv1d_update: conv_state must be a CPU tensor for this "
              "kernel, got ", conv_state.device());
  // Rows written over each other would make the outputs depend on the order of the writes.
  TORCH_CHECK(at::has_internal_overlap(conv_state) != at::MemOverlap::Yes,
              "causal_conv1d_update: conv_state has internal overlap: more than one element of the written-to "
              "tensor refers to a single memory location (e.g. an expand()-ed tensor); clone() it");
  const auto shared = at::get_overlap_status(conv_state, x_);
  TORCH_CHECK(shared != at::MemOverlapStatus::Full && shared != at::MemOverlapStatus::Partial,
              "causal_conv1d_update: conv_state must not share memory with x");
  const int64_t pool = conv_state.size(0);
  at::Tensor seq, idx;
  if (seqlens_.has_value()) {
    TORCH_CHECK(seqlens_->device().is_cpu(), "causal_conv1d_update: cache_seqlens must be a CPU tensor");
    seq = seqlens_->contiguous();
    TORCH_CHECK(seq.scalar_type() == at::kInt && seq.dim() == 1 && seq.size(0) == B,
                "causal_conv1d_update: cache_seqlens must be (", B, ",) int32");
  }
  if (indices_.has_value()) {
    TORCH_CHECK(indices_->device().is_cpu(), "causal_conv1d_update: conv_state_indices must be a CPU tensor");
    idx = indices_->contiguous();
    TORCH_CHECK(idx.scalar_type() == at::kInt && idx.dim() == 1 && idx.size(0) == B,
                "causal_conv1d_update: conv_state_indices must be (", B, ",) int32");
    const int32_t* ip = idx.data_ptr<int32_t>();
    std::vector<bool> used(static_cast<size_t>(pool), false);
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(ip[b] < pool, "causal_conv1d_update: conv_state_indices[", b, "] = ", ip[b],
                  " is out of range for a state pool of ", pool, " rows");
      if (ip[b] < 0) continue;  // padding row
      TORCH_CHECK(!used[ip[b]], "causal_conv1d_update: conv_state_indices repeats state row ", ip[b],
                  " (two batch rows would update the same state)");
      used[ip[b]] = true;
    }
  } else {
    TORCH_CHECK(pool == B, "causal_conv1d_update: conv_state has ", pool, " rows but x has batch ", B,
                " (pass conv_state_indices to use a larger pool)");
  }
  const auto x = x_.detach().contiguous();
  const auto w = w_.detach().contiguous();
  const at::Tensor bias = bias_.has_value() ? bias_->detach().contiguous() : at::Tensor();
  auto y = at::empty({B, a.Cout, t}, x.options());
  bool silu_done = false;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_update_cpu", [&] {
    silu_done = update_kernel<scalar_t>(x, conv_state, w, bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
                            seq.defined() ? seq.data_ptr<int32_t>() : nullptr,
                            idx.defined() ? idx.data_ptr<int32_t>() : nullptr, silu, y, a, t);
  });
  if (silu && !silu_done) silu_inplace(y);  // padding rows stay zero: silu(0) = 0
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) {
  m.impl("causal_conv1d", &causal_conv1d_cpu);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_cpu);
  m.impl("causal_conv1d_update", &causal_conv1d_update_cpu);
}
