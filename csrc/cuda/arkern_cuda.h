// C ABI of arkern's CUDA kernels: raw pointers, element strides and a cudaStream_t — no torch headers,
// so these sources compile with nvcc alone (the CPU torch wheel lacks some CUDA headers). The bindings
// in csrc/cuda_bindings.cpp, compiled only when torch has CUDA, validate tensors and call these.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

// dtype codes for the `dtype` arguments
enum ArkernDtype { ARKERN_F32 = 0, ARKERN_F64 = 1 };

// ----------------------------------------------------------------------------- causal_conv1d
// y[b, o, t] = act(bias[o] + sum_{c in group(o), k} w[o, c - g0, k] * xin[b, c, t - (K-1-k)*dilation])
// with xin at negative times read from init_state[b, c, S0 + time] (S0 = (K-1)*dilation), or zero when
// init_state is null. final_state (optional) receives the last S0 inputs.
struct ArkernCausalConv1dArgs {
  int dtype;
  int64_t B, Cin, Cout, T, K, dilation, groups;
  int silu;
  const void* x; int64_t sxb, sxc, sxt;
  const void* w; int64_t swo, swc, swk;
  const void* bias;  // (Cout,) contiguous or null
  const void* init_state; int64_t sib, sic, sis;  // (B, Cin, S0) or null
  void* y; int64_t syb, syo, syt;
  void* final_state; int64_t sfb, sfc, sfs;  // (B, Cin, S0) or null
};

// grads: grad_y (B, Cout, T) in; grad_final (optional) (B, Cin, S0) in; grad_x, grad_w, grad_bias,
// grad_init out (each optional, contiguous). grad_w/grad_bias are fully overwritten.
struct ArkernCausalConv1dBackwardArgs {
  ArkernCausalConv1dArgs fwd;  // fwd.y / fwd.final_state unused
  const void* grad_y; int64_t sgb, sgo, sgt;
  const void* grad_final; int64_t sgfb, sgfc, sgfs;
  void* grad_x;     // (B, Cin, T) contiguous
  void* grad_w;     // (Cout, Cin/groups, K) contiguous
  void* grad_bias;  // (Cout,)
  void* grad_init;  // (B, Cin, S0) contiguous
  void* workspace;  // B*Cout*T elements of the dtype (pre-activation gradient)
};

// One or a few decode steps: x (B, Cin, t) new inputs, conv_state (pool, Cin, S) holds the inputs before
// them, updated in place. cache_seqlens null: shift register (newest last). Else ring buffer, token at
// absolute time tau stored at tau % S, cache_seqlens[b] = tokens already seen. conv_state_indices null: row b uses state row b;
// else state row conv_state_indices[b], and a negative index is a padding row (y = 0, state untouched).
struct ArkernCausalConv1dUpdateArgs {
  int dtype;
  int64_t B, Cin, Cout, t, K, dilation, groups, S, pool;
  int silu;
  const void* x; int64_t sxb, sxc, sxt;
  void* state; int64_t ssb, ssc, sss;
  const void* w; int64_t swo, swc, swk;
  const void* bias;
  const int32_t* cache_seqlens;
  const int32_t* conv_state_indices;
  void* y; int64_t syb, syo, syt;
};

// ----------------------------------------------------------------------------- masked_conv2d
// PixelCNN masked convolution forward, "same" padding, stride 1, computing only the kept taps.
struct ArkernMaskedConv2dArgs {
  int dtype;
  int64_t N, Cin, Cout, H, W, kH, kW, dilation, color_groups;
  int mask_b;  // 1: mask 'B', 0: mask 'A'
  const void* x; int64_t sxn, sxc, sxh, sxw;
  const void* w; int64_t swo, swc, swh, sww;
  const void* bias;
  void* y;  // (N, Cout, H, W) contiguous
};

#ifdef __cplusplus
extern "C" {
#endif
cudaError_t arkern_causal_conv1d_fwd_cuda(const ArkernCausalConv1dArgs* a, cudaStream_t stream);
cudaError_t arkern_causal_conv1d_bwd_cuda(const ArkernCausalConv1dBackwardArgs* a, cudaStream_t stream);
cudaError_t arkern_causal_conv1d_update_cuda(const ArkernCausalConv1dUpdateArgs* a, cudaStream_t stream);
cudaError_t arkern_masked_conv2d_fwd_cuda(const ArkernMaskedConv2dArgs* a, cudaStream_t stream);
#ifdef __cplusplus
}
#endif
