// CUDA registrations of arkern ops: validate tensors, fill the C ABI structs of csrc/cuda/arkern_cuda.h
// and launch on the current stream. Compiled only when the installed torch has CUDA (setup.py); the
// .cu sources themselves never see a torch header.
//
//   causal_conv1d, causal_conv1d_backward, causal_conv1d_update  -> csrc/cuda/causal_conv1d.cu
//   masked_conv2d (forward)                                      -> csrc/cuda/masked_conv2d.cu
//   wavenet_generate                                             -> csrc/cuda/wavenet_decode.cu
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

// ----------------------------------------------------------------------------- wavenet_generate

void wavenet_tensor(const at::Tensor& ref, const at::Tensor& t, const char* name, at::ScalarType dtype,
                    int64_t numel) {
  TORCH_CHECK(t.device() == ref.device(), "wavenet_generate (CUDA): ", name, " must be on ", ref.device(),
              ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous(), "wavenet_generate (CUDA): ", name,
              " must be a contiguous ", dtype, " tensor, got ", t.scalar_type());
  TORCH_CHECK(t.numel() == numel, "wavenet_generate (CUDA): ", name, " must have ", numel, " elements, got ",
              t.numel());
}

int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

std::tuple<at::Tensor, at::Tensor> wavenet_generate_cuda(
    const at::Tensor& emb, const at::Tensor& w_dil, const at::Tensor& b_dil, const at::Tensor& w_rs,
    const at::Tensor& b_rs, const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& w_end,
    const at::Tensor& b_end, at::IntArrayRef dilations, at::TensorList rings, const at::Tensor& prev, int64_t t0,
    const at::Tensor& noise, const c10::optional<at::Tensor>& cond, int64_t cond_hop,
    const c10::optional<at::Tensor>& gbias, double temperature, int64_t top_k, double top_p, bool return_logits,
    const c10::optional<at::Tensor>& forced, const c10::optional<at::Tensor>& /*tiles: the CPU kernel's AMX copy*/) {
  TORCH_CHECK(noise.is_cuda(), "wavenet_generate (CUDA): noise must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(noise.device());
  TORCH_CHECK(emb.dim() == 3 && emb.size(0) == 2, "wavenet_generate (CUDA): emb must be (2, A, R), got ", emb.sizes());
  ArkernWaveNetArgs a{};
  a.A = emb.size(1);
  a.R = emb.size(2);
  a.L = static_cast<int64_t>(dilations.size());
  TORCH_CHECK(a.A >= 1 && a.R >= 1 && a.L >= 1, "wavenet_generate (CUDA): empty network");
  const int64_t Rp = pad16(a.R), Ap = pad16(a.A);
  TORCH_CHECK(b_rs.dim() == 2 && b_rs.size(0) == a.L && b_rs.size(1) > Rp,
              "wavenet_generate (CUDA): b_rs must be (L, Rp + Sp)");
  const int64_t Sp = b_rs.size(1) - Rp;
  TORCH_CHECK(w_out.numel() % Ap == 0, "wavenet_generate (CUDA): w_out size is not a multiple of Ap");
  a.S = w_out.numel() / Ap;
  TORCH_CHECK(a.S >= 1 && pad16(a.S) == Sp, "wavenet_generate (CUDA): w_out and b_rs disagree on S");
  wavenet_tensor(noise, emb, "emb", at::kFloat, 2 * a.A * a.R);
  wavenet_tensor(noise, b_dil, "b_dil", at::kFloat, a.L * 2 * Rp);
  wavenet_tensor(noise, b_rs, "b_rs", at::kFloat, a.L * (Rp + Sp));
  wavenet_tensor(noise, b_out, "b_out", at::kFloat, Ap);
  wavenet_tensor(noise, b_end, "b_end", at::kFloat, Ap);
  const auto wt = w_dil.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kBFloat16, "wavenet_generate (CUDA): weights must be float32 or bfloat16");
  a.weight_dtype = wt == at::kFloat ? ARKERN_W_F32 : ARKERN_W_BF16;
  wavenet_tensor(noise, w_dil, "w_dil", wt, a.L * 2 * Rp * 2 * a.R);
  wavenet_tensor(noise, w_rs, "w_rs", wt, a.L * (Rp + Sp) * a.R);
  wavenet_tensor(noise, w_out, "w_out", wt, Ap * a.S);
  wavenet_tensor(noise, w_end, "w_end", wt, Ap * a.A);
  TORCH_CHECK(noise.dim() == 2 && noise.scalar_type() == at::kDouble,
              "wavenet_generate (CUDA): noise must be float64 (B, T)");
  a.B = noise.size(0);
  a.T = noise.size(1);
  wavenet_tensor(noise, prev, "prev", at::kLong, a.B * 2);
  TORCH_CHECK(prev.dim() == 2, "wavenet_generate (CUDA): prev must be (B, 2)");
  TORCH_CHECK(a.B == 0 || (prev.min().item<int64_t>() >= 0 && prev.max().item<int64_t>() < a.A),
              "wavenet_generate (CUDA): prev holds samples outside [0, A)");
  TORCH_CHECK(t0 >= 0, "wavenet_generate (CUDA): t0 must be >= 0");
  TORCH_CHECK(temperature > 0, "wavenet_generate (CUDA): temperature must be > 0");
  TORCH_CHECK(top_k >= 0 && top_p > 0, "wavenet_generate (CUDA): top_k must be >= 0 and top_p > 0");
  TORCH_CHECK(static_cast<int64_t>(rings.size()) == a.L, "wavenet_generate (CUDA): need one ring buffer per layer");
  at::Tensor layers = at::empty({2 * a.L}, prev.options().device(at::kCPU));
  int64_t* lp = layers.data_ptr<int64_t>();
  for (int64_t l = 0; l < a.L; ++l) {
    const at::Tensor& r = rings[l];
    TORCH_CHECK(dilations[l] >= 1, "wavenet_generate (CUDA): dilations must be >= 1");
    TORCH_CHECK(r.device() == noise.device() && r.scalar_type() == at::kFloat && r.dim() == 3 && r.size(0) == a.B &&
                    r.size(1) == a.R && r.size(2) == dilations[l] && r.transpose(1, 2).is_contiguous(),
                "wavenet_generate (CUDA): ring buffer ", l, " must be float32 (B, R, ", dilations[l], ") on ",
                noise.device(), " with time-major storage (a transposed contiguous (B, d, R) tensor)");
    lp[l] = reinterpret_cast<int64_t>(r.data_ptr<float>());
    lp[a.L + l] = dilations[l];
  }
  const at::Tensor layers_dev = layers.to(noise.device());
  const at::Tensor noise_c = noise.contiguous();
  at::Tensor cond_c, gbias_c, forced_c;
  if (cond.has_value()) {
    cond_c = cond->contiguous();
    TORCH_CHECK(cond_c.device() == noise.device() && cond_c.scalar_type() == at::kFloat && cond_c.dim() == 4 &&
                    cond_c.size(0) == a.B && cond_c.size(2) == a.L && cond_c.size(3) == 2 * a.R,
                "wavenet_generate (CUDA): cond must be float32 (B, frames, L, 2R) on ", noise.device());
    TORCH_CHECK(cond_hop >= 1, "wavenet_generate (CUDA): cond_hop must be >= 1");
    a.cond_frames = cond_c.size(1);
    TORCH_CHECK(a.T == 0 || (t0 + a.T - 1) / cond_hop < a.cond_frames, "wavenet_generate (CUDA): cond has ",
                a.cond_frames, " frames, too few for steps up to ", t0 + a.T);
    a.cond = cond_c.data_ptr<float>();
    a.cond_hop = cond_hop;
  }
  if (gbias.has_value()) {
    gbias_c = gbias->contiguous();
    wavenet_tensor(noise, gbias_c, "gbias", at::kFloat, a.B * a.L * 2 * a.R);
    a.gbias = gbias_c.data_ptr<float>();
  }
  if (forced.has_value()) {
    forced_c = forced->contiguous();
    TORCH_CHECK(forced_c.dim() == 2 && forced_c.size(0) == a.B && forced_c.size(1) == a.T,
                "wavenet_generate (CUDA): forced must be int64 (B, T)");
    wavenet_tensor(noise, forced_c, "forced", at::kLong, a.B * a.T);
    TORCH_CHECK(forced_c.numel() == 0 ||
                    (forced_c.min().item<int64_t>() >= 0 && forced_c.max().item<int64_t>() < a.A),
                "wavenet_generate (CUDA): forced holds samples outside [0, A)");
    a.forced = forced_c.data_ptr<int64_t>();
  }
  int64_t per_row = 0, available = 0;
  launched(arkern_wavenet_shared_bytes(a.R, a.S, a.A, &per_row, &available), "wavenet_generate (device query)");
  TORCH_CHECK(per_row <= available, "wavenet_generate (CUDA): one batch row's activations need ", per_row,
              " bytes of shared memory, this device allows ", available, " per block (use a smaller network, or "
              "the triton / cpu backend)");
  at::Tensor samples = at::empty({a.B, a.T}, prev.options());
  at::Tensor logits = return_logits ? at::empty({a.B, a.T, a.A}, emb.options()) : at::empty({0}, emb.options());
  const at::Tensor workspace =
      at::empty({arkern_wavenet_workspace_bytes(a.B, a.A)}, noise.options().dtype(at::kByte));
  a.t0 = t0;
  a.emb = emb.data_ptr<float>();
  a.w_dil = w_dil.data_ptr();
  a.b_dil = b_dil.data_ptr<float>();
  a.w_rs = w_rs.data_ptr();
  a.b_rs = b_rs.data_ptr<float>();
  a.w_out = w_out.data_ptr();
  a.b_out = b_out.data_ptr<float>();
  a.w_end = w_end.data_ptr();
  a.b_end = b_end.data_ptr<float>();
  a.layers = layers_dev.data_ptr<int64_t>();
  a.prev = prev.data_ptr<int64_t>();
  a.noise = noise_c.data_ptr<double>();
  a.temperature = temperature;
  a.top_k = top_k;
  a.top_p = top_p;
  a.samples = samples.data_ptr<int64_t>();
  a.logits = return_logits ? logits.data_ptr<float>() : nullptr;
  a.workspace = workspace.data_ptr();
  launched(arkern_wavenet_generate_cuda(&a, stream()), "wavenet_generate");
  return {samples, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CUDA, m) {
  m.impl("causal_conv1d", &causal_conv1d_cuda);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_cuda);
  m.impl("causal_conv1d_update", &causal_conv1d_update_cuda);
  m.impl("masked_conv2d", &masked_conv2d_cuda);
  m.impl("wavenet_generate", &wavenet_generate_cuda);
}
