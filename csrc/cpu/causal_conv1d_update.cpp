// causal_conv1d_update CPU kernel (the decode step of causal_conv1d). Semantics:
// arkern/reference/causal_conv1d.py (the reference defines the op).
//
// One fused pass per (row, channel) (per row for grouped convs): the past window is read from the state (shift
// register or ring), the new tokens appended, the outputs computed, the state written. One token in
// shift-register mode (Mamba's decode) has its own loop over channels.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "causal_conv1d.h"

namespace {

using namespace arkern_causal_conv1d;  // the checks and the silu both causal_conv1d kernels share

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

TORCH_LIBRARY_IMPL(arkern, CPU, m) { m.impl("causal_conv1d_update", &causal_conv1d_update_cpu); }
