// CUDA registrations of arkern ops: validate tensors, fill the C ABI structs of csrc/cuda/arkern_cuda.h
// and launch on the current stream. Compiled only when the installed torch has CUDA (setup.py); the
// .cu sources themselves never see a torch header.
//
//   causal_conv1d, causal_conv1d_backward, causal_conv1d_update  -> csrc/cuda/causal_conv1d.cu
//   masked_conv2d (forward)                                      -> csrc/cuda/masked_conv2d.cu
// (masked_conv2d_backward on CUDA is registered from Python: arkern/ops/masked_conv2d.py.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/arkern_cuda.h"

namespace {

int dtype_code(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "arkern CUDA kernels: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "arkern CUDA kernels: ", name, " must be float32 or float64, got ", t.scalar_type());
  return t.scalar_type() == at::kFloat ? ARKERN_F32 : ARKERN_F64;
}

void same(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device() && t.scalar_type() == ref.scalar_type(), "arkern CUDA kernels: ", name,
              " must be on ", ref.device(), " with dtype ", ref.scalar_type());
}

void launched(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "arkern: CUDA launch of ", what, " failed: ", cudaGetErrorString(err));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Forward arguments of causal_conv1d; the contiguous bias is kept alive by the caller.
ArkernCausalConv1dArgs conv_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                 const c10::optional<at::Tensor>& init, int64_t dilation, int64_t groups, bool silu) {
  const int code = dtype_code(x, "x");
  same(x, w, "weight");
  TORCH_CHECK(x.dim() == 3 && w.dim() == 3 && x.size(1) == w.size(1) * groups && dilation >= 1 && groups >= 1 &&
                  w.size(0) % groups == 0,
              "causal_conv1d (CUDA): bad shapes x ", x.sizes(), " weight ", w.sizes(), " groups ", groups);
  ArkernCausalConv1dArgs a{};
  a.dtype = code;
  a.B = x.size(0); a.Cin = x.size(1); a.Cout = w.size(0); a.T = x.size(2); a.K = w.size(2);
  a.dilation = dilation; a.groups = groups; a.silu = silu ? 1 : 0;
  a.x = x.data_ptr(); a.sxb = x.stride(0); a.sxc = x.stride(1); a.sxt = x.stride(2);
  a.w = w.data_ptr(); a.swo = w.stride(0); a.swc = w.stride(1); a.swk = w.stride(2);
  if (bias.defined()) {
    same(x, bias, "bias");
    TORCH_CHECK(bias.numel() == a.Cout, "causal_conv1d (CUDA): bias must have ", a.Cout, " elements");
    a.bias = bias.data_ptr();
  }
  if (init.has_value()) {
    const at::Tensor& s = *init;
    same(x, s, "initial_state");
    TORCH_CHECK(s.dim() == 3 && s.size(0) == a.B && s.size(1) == a.Cin && s.size(2) == (a.K - 1) * dilation,
                "causal_conv1d (CUDA): initial_state must be (B, Cin, (K-1)*dilation), got ", s.sizes());
    a.init_state = s.data_ptr(); a.sib = s.stride(0); a.sic = s.stride(1); a.sis = s.stride(2);
  }
  return a;
}

at::Tensor contiguous_bias(const c10::optional<at::Tensor>& bias) {
  return bias.has_value() ? bias->contiguous() : at::Tensor();
}

at::Tensor causal_conv1d_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const c10::optional<at::Tensor>& initial_state, int64_t dilation, int64_t groups,
                              bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor b = contiguous_bias(bias);
  ArkernCausalConv1dArgs a = conv_args(x, weight, b, initial_state, dilation, groups, silu);
  at::Tensor y = at::empty({a.B, a.Cout, a.T}, x.options());
  a.y = y.data_ptr(); a.syb = y.stride(0); a.syo = y.stride(1); a.syt = y.stride(2);
  launched(arkern_causal_conv1d_fwd_cuda(&a, stream()), "causal_conv1d");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& initial_state, int64_t dilation, int64_t groups, bool silu,
    std::array<bool, 4> output_mask) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor b = contiguous_bias(bias);
  ArkernCausalConv1dBackwardArgs g{};
  g.fwd = conv_args(x, weight, b, initial_state, dilation, groups, silu);
  const ArkernCausalConv1dArgs& a = g.fwd;
  same(x, grad_out, "grad_out");
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == a.B && grad_out.size(1) == a.Cout && grad_out.size(2) == a.T,
              "causal_conv1d_backward (CUDA): grad_out must be (B, Cout, T), got ", grad_out.sizes());
  g.grad_y = grad_out.data_ptr(); g.sgb = grad_out.stride(0); g.sgo = grad_out.stride(1); g.sgt = grad_out.stride(2);
  const at::Tensor workspace = at::empty({a.B, a.Cout, a.T}, x.options());
  g.workspace = workspace.data_ptr();
  const auto none = x.new_empty({0});
  at::Tensor gx = output_mask[0] ? at::empty({a.B, a.Cin, a.T}, x.options()) : none;
  at::Tensor gw = output_mask[1] ? at::empty(weight.sizes(), weight.options()) : none;
  at::Tensor gb = output_mask[2] && bias.has_value() ? at::empty({a.Cout}, x.options()) : none;
  at::Tensor gi = output_mask[3] && initial_state.has_value() ? at::empty(initial_state->sizes(), x.options()) : none;
  g.grad_x = output_mask[0] ? gx.data_ptr() : nullptr;
  g.grad_w = output_mask[1] ? gw.data_ptr() : nullptr;
  g.grad_bias = gb.numel() ? gb.data_ptr() : nullptr;
  g.grad_init = gi.numel() ? gi.data_ptr() : nullptr;
  launched(arkern_causal_conv1d_bwd_cuda(&g, stream()), "causal_conv1d_backward");
  return {gx, gw, gb, gi};
}

at::Tensor causal_conv1d_update_cuda(const at::Tensor& x, at::Tensor& conv_state, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, int64_t dilation, int64_t groups, bool silu,
                                     const c10::optional<at::Tensor>& cache_seqlens,
                                     const c10::optional<at::Tensor>& conv_state_indices) {
  const c10::cuda::CUDAGuard guard(x.device());
  ArkernCausalConv1dUpdateArgs a{};
  a.dtype = dtype_code(x, "x");
  same(x, conv_state, "conv_state");
  same(x, weight, "weight");
  TORCH_CHECK(x.dim() == 3 && conv_state.dim() == 3 && weight.dim() == 3 && conv_state.size(1) == x.size(1) &&
                  x.size(1) == weight.size(1) * groups && conv_state.size(2) >= (weight.size(2) - 1) * dilation,
              "causal_conv1d_update (CUDA): bad shapes x ", x.sizes(), " conv_state ", conv_state.sizes(), " weight ",
              weight.sizes());
  const at::Tensor b = contiguous_bias(bias);
  a.B = x.size(0); a.Cin = x.size(1); a.Cout = weight.size(0); a.t = x.size(2); a.K = weight.size(2);
  a.dilation = dilation; a.groups = groups; a.S = conv_state.size(2); a.pool = conv_state.size(0);
  a.silu = silu ? 1 : 0;
  a.x = x.data_ptr(); a.sxb = x.stride(0); a.sxc = x.stride(1); a.sxt = x.stride(2);
  a.state = conv_state.data_ptr(); a.ssb = conv_state.stride(0); a.ssc = conv_state.stride(1);
  a.sss = conv_state.stride(2);
  a.w = weight.data_ptr(); a.swo = weight.stride(0); a.swc = weight.stride(1); a.swk = weight.stride(2);
  a.bias = b.defined() ? b.data_ptr() : nullptr;
  at::Tensor seqlens, rows;
  if (cache_seqlens.has_value()) {
    seqlens = cache_seqlens->to(x.device(), at::kInt).contiguous();
    TORCH_CHECK(seqlens.numel() == a.B, "causal_conv1d_update (CUDA): cache_seqlens must have B elements");
    a.cache_seqlens = seqlens.data_ptr<int32_t>();
  }
  if (conv_state_indices.has_value()) {
    rows = conv_state_indices->to(x.device(), at::kInt).contiguous();
    TORCH_CHECK(rows.numel() == a.B, "causal_conv1d_update (CUDA): conv_state_indices must have B elements");
    a.conv_state_indices = rows.data_ptr<int32_t>();
  }
  at::Tensor y = at::empty({a.B, a.Cout, a.t}, x.options());
  a.y = y.data_ptr(); a.syb = y.stride(0); a.syo = y.stride(1); a.syt = y.stride(2);
  launched(arkern_causal_conv1d_update_cuda(&a, stream()), "causal_conv1d_update");
  return y;
}

at::Tensor masked_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              c10::string_view mask_type, int64_t color_groups, int64_t dilation) {
  const c10::cuda::CUDAGuard guard(x.device());
  ArkernMaskedConv2dArgs a{};
  a.dtype = dtype_code(x, "x");
  same(x, weight, "weight");
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && x.size(1) == weight.size(1) && weight.size(2) % 2 == 1 &&
                  weight.size(3) % 2 == 1 && color_groups >= 1 && x.size(1) % color_groups == 0 &&
                  weight.size(0) % color_groups == 0 && dilation >= 1,
              "masked_conv2d (CUDA): bad shapes x ", x.sizes(), " weight ", weight.sizes());
  TORCH_CHECK(mask_type == "A" || mask_type == "B", "masked_conv2d (CUDA): mask_type must be 'A' or 'B'");
  const at::Tensor b = contiguous_bias(bias);
  a.N = x.size(0); a.Cin = x.size(1); a.Cout = weight.size(0); a.H = x.size(2); a.W = x.size(3);
  a.kH = weight.size(2); a.kW = weight.size(3); a.dilation = dilation; a.color_groups = color_groups;
  a.mask_b = mask_type == "B" ? 1 : 0;
  a.x = x.data_ptr(); a.sxn = x.stride(0); a.sxc = x.stride(1); a.sxh = x.stride(2); a.sxw = x.stride(3);
  a.w = weight.data_ptr(); a.swo = weight.stride(0); a.swc = weight.stride(1); a.swh = weight.stride(2);
  a.sww = weight.stride(3);
  if (b.defined()) {
    same(x, b, "bias");
    TORCH_CHECK(b.numel() == a.Cout, "masked_conv2d (CUDA): bias must have ", a.Cout, " elements");
    a.bias = b.data_ptr();
  }
  at::Tensor y = at::empty({a.N, a.Cout, a.H, a.W}, x.options());
  a.y = y.data_ptr();
  launched(arkern_masked_conv2d_fwd_cuda(&a, stream()), "masked_conv2d");
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CUDA, m) {
  m.impl("causal_conv1d", &causal_conv1d_cuda);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_cuda);
  m.impl("causal_conv1d_update", &causal_conv1d_update_cuda);
  m.impl("masked_conv2d", &masked_conv2d_cuda);
}
