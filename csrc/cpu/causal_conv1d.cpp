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
// * Update (the decode step): causal_conv1d_update.cpp; the checks and the fused silu: causal_conv1d.h.
// * silu is fused (a vectorised polynomial exp for float32); large outputs get transparent huge pages.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "causal_conv1d.h"

namespace {

using namespace arkern_causal_conv1d;  // the checks and the silu both causal_conv1d kernels share

// --------------------------------------------------------------------------------------- helpers

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

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) {
  m.impl("causal_conv1d", &causal_conv1d_cpu);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_cpu);
}
