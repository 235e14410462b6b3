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

// ----------------------------------------------------------------------------- wavenet_decode
// The fused WaveNet sampler (arkern/ops/wavenet_decode.py): T steps of an nv-wavenet network for B rows in
// one launch, drawing every sample inside the kernel. Weights as packed by pack_wavenet: every matrix
// (M x N) has its rows zero-padded to Mp = ceil16(M) and is stored as tiles of up to 64 rows, each tile
// transposed (N x width) and contiguous; Rp, Sp, Ap = ceil16(R), ceil16(S), ceil16(A).
enum ArkernWeightDtype { ARKERN_W_F32 = 0, ARKERN_W_BF16 = 1 };

struct ArkernWaveNetArgs {
  int weight_dtype;  // ArkernWeightDtype of the four packed matrices
  int64_t B, T, L, R, S, A, t0;
  const float* emb;                        // (2, A, R): tables of y[t-2] and y[t-1]
  const void* w_dil; const float* b_dil;   // L x (2Rp x 2R) on [x(t-d); x(t)], rows [tanh half; sigmoid half]; (L, 2Rp)
  const void* w_rs; const float* b_rs;     // L x ((Rp+Sp) x R) rows [residual; skip]; (L, Rp+Sp)
  const void* w_out; const float* b_out;   // Ap x S; (Ap)
  const void* w_end; const float* b_end;   // Ap x A; (Ap)
  const int64_t* layers;  // device (2L): ring buffer addresses (float, time-major (B, d_l, R)), then d_l
  int64_t* prev;          // (B, 2) [y[t-2], y[t-1]], updated in place
  const double* noise;    // (B, T) uniforms in [0, 1)
  const float* cond; int64_t cond_frames, cond_hop;  // (B, frames, L, 2R) or null
  const float* gbias;     // (B, L, 2R) or null
  double temperature; int64_t top_k; double top_p;  // top_k 0: off; top_p >= 1: off
  const int64_t* forced;  // (B, T) samples fed instead of the drawn ones, or null
  int64_t* samples;       // (B, T) out
  float* logits;          // (B, T, A) out, or null
  void* workspace;        // arkern_wavenet_workspace_bytes(B, A) bytes of device memory
};

#ifdef __cplusplus
extern "C" {
#endif
cudaError_t arkern_causal_conv1d_fwd_cuda(const ArkernCausalConv1dArgs* a, cudaStream_t stream);
cudaError_t arkern_causal_conv1d_bwd_cuda(const ArkernCausalConv1dBackwardArgs* a, cudaStream_t stream);
cudaError_t arkern_causal_conv1d_update_cuda(const ArkernCausalConv1dUpdateArgs* a, cudaStream_t stream);
cudaError_t arkern_masked_conv2d_fwd_cuda(const ArkernMaskedConv2dArgs* a, cudaStream_t stream);
// Bytes of the sampling workspace of arkern_wavenet_generate_cuda for B rows of A classes.
int64_t arkern_wavenet_workspace_bytes(int64_t B, int64_t A);
// Shared memory one batch row's activations need, and the current device's opt-in limit per block.
cudaError_t arkern_wavenet_shared_bytes(int64_t R, int64_t S, int64_t A, int64_t* per_row, int64_t* available);
cudaError_t arkern_wavenet_generate_cuda(const ArkernWaveNetArgs* a, cudaStream_t stream);
#ifdef __cplusplus
}
#endif
