// CUDA kernels for causal_conv1d (forward, backward) and causal_conv1d_update. Semantics:
// arkern/reference/causal_conv1d.py. Raw pointers + element strides; every index is bounds-checked.
#include "arkern_cuda.h"

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename T>
__device__ __forceinline__ T sigmoid(T v) { return T(1) / (T(1) + exp(-v)); }

// input at time tau (may be negative: then the initial state, or zero)
template <typename T>
__device__ __forceinline__ T x_at(const ArkernCausalConv1dArgs& a, int64_t b, int64_t c, int64_t tau) {
  const int64_t s0 = (a.K - 1) * a.dilation;
  if (tau >= 0) return static_cast<const T*>(a.x)[b * a.sxb + c * a.sxc + tau * a.sxt];
  if (a.init_state == nullptr || s0 + tau < 0) return T(0);
  return static_cast<const T*>(a.init_state)[b * a.sib + c * a.sic + (s0 + tau) * a.sis];
}

template <typename T>
__device__ T preactivation(const ArkernCausalConv1dArgs& a, int64_t b, int64_t o, int64_t t) {
  const int64_t cpg_in = a.Cin / a.groups, cpg_out = a.Cout / a.groups;
  const int64_t c0 = (o / cpg_out) * cpg_in;
  const T* w = static_cast<const T*>(a.w);
  T acc = a.bias ? static_cast<const T*>(a.bias)[o] : T(0);
  for (int64_t ci = 0; ci < cpg_in; ++ci)
    for (int64_t k = 0; k < a.K; ++k)
      acc += w[o * a.swo + ci * a.swc + k * a.swk] * x_at<T>(a, b, c0 + ci, t - (a.K - 1 - k) * a.dilation);
  return acc;
}

template <typename T>
__global__ void fwd_kernel(ArkernCausalConv1dArgs a) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * a.Cout * a.T) return;
  const int64_t t = idx % a.T, o = (idx / a.T) % a.Cout, b = idx / (a.T * a.Cout);
  T v = preactivation<T>(a, b, o, t);
  if (a.silu) v = v * sigmoid(v);
  static_cast<T*>(a.y)[b * a.syb + o * a.syo + t * a.syt] = v;
}

template <typename T>
__global__ void final_state_kernel(ArkernCausalConv1dArgs a) {
  const int64_t s0 = (a.K - 1) * a.dilation;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * a.Cin * s0) return;
  const int64_t j = idx % s0, c = (idx / s0) % a.Cin, b = idx / (s0 * a.Cin);
  static_cast<T*>(a.final_state)[b * a.sfb + c * a.sfc + j * a.sfs] = x_at<T>(a, b, c, a.T - s0 + j);
}

// gpre = dL/d(pre-activation), contiguous (B, Cout, T)
template <typename T>
__global__ void grad_pre_kernel(ArkernCausalConv1dBackwardArgs g) {
  const ArkernCausalConv1dArgs& a = g.fwd;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * a.Cout * a.T) return;
  const int64_t t = idx % a.T, o = (idx / a.T) % a.Cout, b = idx / (a.T * a.Cout);
  T gy = static_cast<const T*>(g.grad_y)[b * g.sgb + o * g.sgo + t * g.sgt];
  if (a.silu) {
    const T p = preactivation<T>(a, b, o, t), s = sigmoid(p);
    gy *= s * (T(1) + p * (T(1) - s));
  }
  static_cast<T*>(g.workspace)[idx] = gy;
}

// sum over outputs fed by input channel c at time tau (tau may be negative: the initial state)
template <typename T>
__device__ T grad_input_at(const ArkernCausalConv1dBackwardArgs& g, int64_t b, int64_t c, int64_t tau) {
  const ArkernCausalConv1dArgs& a = g.fwd;
  const int64_t cpg_in = a.Cin / a.groups, cpg_out = a.Cout / a.groups;
  const int64_t grp = c / cpg_in, ci = c - grp * cpg_in;
  const T* w = static_cast<const T*>(a.w);
  const T* gp = static_cast<const T*>(g.workspace);
  T acc = 0;
  for (int64_t o = grp * cpg_out; o < (grp + 1) * cpg_out; ++o)
    for (int64_t k = 0; k < a.K; ++k) {
      const int64_t t_out = tau + (a.K - 1 - k) * a.dilation;
      if (t_out >= 0 && t_out < a.T) acc += gp[(b * a.Cout + o) * a.T + t_out] * w[o * a.swo + ci * a.swc + k * a.swk];
    }
  // the final state is a copy of the last S0 inputs
  const int64_t s0 = (a.K - 1) * a.dilation, j = tau - (a.T - s0);
  if (g.grad_final != nullptr && j >= 0 && j < s0)
    acc += static_cast<const T*>(g.grad_final)[b * g.sgfb + c * g.sgfc + j * g.sgfs];
  return acc;
}

template <typename T>
__global__ void grad_x_kernel(ArkernCausalConv1dBackwardArgs g) {
  const ArkernCausalConv1dArgs& a = g.fwd;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * a.Cin * a.T) return;
  const int64_t t = idx % a.T, c = (idx / a.T) % a.Cin, b = idx / (a.T * a.Cin);
  static_cast<T*>(g.grad_x)[idx] = grad_input_at<T>(g, b, c, t);
}

template <typename T>
__global__ void grad_init_kernel(ArkernCausalConv1dBackwardArgs g) {
  const ArkernCausalConv1dArgs& a = g.fwd;
  const int64_t s0 = (a.K - 1) * a.dilation;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * a.Cin * s0) return;
  const int64_t s = idx % s0, c = (idx / s0) % a.Cin, b = idx / (s0 * a.Cin);
  static_cast<T*>(g.grad_init)[idx] = grad_input_at<T>(g, b, c, s - s0);
}

template <typename T>
__device__ T block_sum(T v) {
  __shared__ T buf[kThreads];
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  return buf[0];
}

// one block per weight element (o, ci, k): reduce over (b, t)
template <typename T>
__global__ void grad_w_kernel(ArkernCausalConv1dBackwardArgs g) {
  const ArkernCausalConv1dArgs& a = g.fwd;
  const int64_t cpg_in = a.Cin / a.groups, cpg_out = a.Cout / a.groups;
  const int64_t e = blockIdx.x, k = e % a.K, ci = (e / a.K) % cpg_in, o = e / (a.K * cpg_in);
  const int64_t c = (o / cpg_out) * cpg_in + ci, lag = (a.K - 1 - k) * a.dilation;
  const T* gp = static_cast<const T*>(g.workspace);
  T acc = 0;
  for (int64_t i = threadIdx.x; i < a.B * a.T; i += blockDim.x) {
    const int64_t b = i / a.T, t = i % a.T;
    acc += gp[(b * a.Cout + o) * a.T + t] * x_at<T>(a, b, c, t - lag);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) static_cast<T*>(g.grad_w)[e] = acc;
}

template <typename T>
__global__ void grad_bias_kernel(ArkernCausalConv1dBackwardArgs g) {
  const ArkernCausalConv1dArgs& a = g.fwd;
  const int64_t o = blockIdx.x;
  const T* gp = static_cast<const T*>(g.workspace);
  T acc = 0;
  for (int64_t i = threadIdx.x; i < a.B * a.T; i += blockDim.x) acc += gp[((i / a.T) * a.Cout + o) * a.T + i % a.T];
  acc = block_sum(acc);
  if (threadIdx.x == 0) static_cast<T*>(g.grad_bias)[o] = acc;
}

// one block per batch row; tokens in order: first the outputs (tap lag 0 is the token itself, lag >= 1
// reads the state as it was before this token: shift register slot S - lag, ring slot
// (seqlen + i - lag) mod S), then the token is written into the state.
template <typename T>
__global__ void update_kernel(ArkernCausalConv1dUpdateArgs a) {
  const int64_t b = blockIdx.x;
  const int64_t row = a.conv_state_indices ? a.conv_state_indices[b] : b;
  T* y = static_cast<T*>(a.y);
  if (row < 0 || row >= a.pool) {  // padding row (validated host-side; never index out of the pool)
    for (int64_t e = threadIdx.x; e < a.Cout * a.t; e += blockDim.x)
      y[b * a.syb + (e / a.t) * a.syo + (e % a.t) * a.syt] = T(0);
    return;
  }
  T* st = static_cast<T*>(a.state) + row * a.ssb;
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.w);
  const int64_t seqlen = a.cache_seqlens ? a.cache_seqlens[b] : 0;
  const int64_t cpg_in = a.Cin / a.groups, cpg_out = a.Cout / a.groups;
  for (int64_t i = 0; i < a.t; ++i) {
    for (int64_t o = threadIdx.x; o < a.Cout; o += blockDim.x) {
      const int64_t c0 = (o / cpg_out) * cpg_in;
      T acc = a.bias ? static_cast<const T*>(a.bias)[o] : T(0);
      for (int64_t ci = 0; ci < cpg_in; ++ci)
        for (int64_t k = 0; k < a.K; ++k) {
          const int64_t lag = (a.K - 1 - k) * a.dilation;
          T v;
          if (lag == 0) {
            v = x[b * a.sxb + (c0 + ci) * a.sxc + i * a.sxt];
          } else {
            int64_t p = a.cache_seqlens ? (seqlen + i - lag) % a.S : a.S - lag;
            if (p < 0) p += a.S;
            v = st[(c0 + ci) * a.ssc + p * a.sss];
          }
          acc += w[o * a.swo + ci * a.swc + k * a.swk] * v;
        }
      if (a.silu) acc = acc * sigmoid(acc);
      y[b * a.syb + o * a.syo + i * a.syt] = acc;
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < a.Cin && a.S > 0; c += blockDim.x) {
      const T v = x[b * a.sxb + c * a.sxc + i * a.sxt];
      if (a.cache_seqlens) {
        st[c * a.ssc + ((seqlen + i) % a.S) * a.sss] = v;
      } else {
        for (int64_t s = 0; s + 1 < a.S; ++s) st[c * a.ssc + s * a.sss] = st[c * a.ssc + (s + 1) * a.sss];
        st[c * a.ssc + (a.S - 1) * a.sss] = v;
      }
    }
    __syncthreads();
  }
}

template <typename T>
cudaError_t launch_fwd(const ArkernCausalConv1dArgs* a, cudaStream_t s) {
  if (a->B * a->Cout * a->T > 0) fwd_kernel<T><<<blocks_for(a->B * a->Cout * a->T), kThreads, 0, s>>>(*a);
  const int64_t s0 = (a->K - 1) * a->dilation;
  if (a->final_state && a->B * a->Cin * s0 > 0)
    final_state_kernel<T><<<blocks_for(a->B * a->Cin * s0), kThreads, 0, s>>>(*a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const ArkernCausalConv1dBackwardArgs* g, cudaStream_t s) {
  const ArkernCausalConv1dArgs& a = g->fwd;
  const int64_t s0 = (a.K - 1) * a.dilation;
  if (a.B * a.Cout * a.T > 0) grad_pre_kernel<T><<<blocks_for(a.B * a.Cout * a.T), kThreads, 0, s>>>(*g);
  if (g->grad_x && a.B * a.Cin * a.T > 0) grad_x_kernel<T><<<blocks_for(a.B * a.Cin * a.T), kThreads, 0, s>>>(*g);
  if (g->grad_init && a.B * a.Cin * s0 > 0)
    grad_init_kernel<T><<<blocks_for(a.B * a.Cin * s0), kThreads, 0, s>>>(*g);
  const int64_t nw = a.Cout * (a.Cin / a.groups) * a.K;
  if (g->grad_w && nw > 0) grad_w_kernel<T><<<static_cast<unsigned>(nw), kThreads, 0, s>>>(*g);
  if (g->grad_bias && a.Cout > 0) grad_bias_kernel<T><<<static_cast<unsigned>(a.Cout), kThreads, 0, s>>>(*g);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_update(const ArkernCausalConv1dUpdateArgs* a, cudaStream_t s) {
  if (a->B > 0) update_kernel<T><<<static_cast<unsigned>(a->B), kThreads, 0, s>>>(*a);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t arkern_causal_conv1d_fwd_cuda(const ArkernCausalConv1dArgs* a, cudaStream_t stream) {
  return a->dtype == ARKERN_F64 ? launch_fwd<double>(a, stream) : launch_fwd<float>(a, stream);
}

extern "C" cudaError_t arkern_causal_conv1d_bwd_cuda(const ArkernCausalConv1dBackwardArgs* a, cudaStream_t stream) {
  return a->fwd.dtype == ARKERN_F64 ? launch_bwd<double>(a, stream) : launch_bwd<float>(a, stream);
}

extern "C" cudaError_t arkern_causal_conv1d_update_cuda(const ArkernCausalConv1dUpdateArgs* a, cudaStream_t stream) {
  return a->dtype == ARKERN_F64 ? launch_update<double>(a, stream) : launch_update<float>(a, stream);
}
