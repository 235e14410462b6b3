// CUDA forward kernel for masked_conv2d (PixelCNN masked convolution). Semantics:
// arkern/reference/masked_conv2d.py. Each thread computes one output (n, o, i, j) and visits only the
// taps the mask keeps: every tap of the rows above the centre, the taps left of the centre in the centre
// row, and at the centre the input channel groups the colour rule allows (gi < go for 'A', gi <= go for
// 'B'). Masked taps are never loaded, so causality is exact.
#include "arkern_cuda.h"

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void masked_conv2d_fwd_kernel(ArkernMaskedConv2dArgs a) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.N * a.Cout * a.H * a.W) return;
  const int64_t j = idx % a.W, i = (idx / a.W) % a.H, o = (idx / (a.W * a.H)) % a.Cout, n = idx / (a.W * a.H * a.Cout);
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.w);
  const int64_t rh = a.kH / 2, rw = a.kW / 2;
  T acc = a.bias ? static_cast<const T*>(a.bias)[o] : T(0);
  for (int64_t ky = 0; ky <= rh; ++ky) {
    const int64_t iy = i + (ky - rh) * a.dilation;
    if (iy < 0) continue;
    const int64_t kx_end = ky < rh ? a.kW : rw;  // centre row: strictly left of the centre
    for (int64_t kx = 0; kx < kx_end; ++kx) {
      const int64_t ix = j + (kx - rw) * a.dilation;
      if (ix < 0 || ix >= a.W) continue;
      for (int64_t c = 0; c < a.Cin; ++c)
        acc += w[o * a.swo + c * a.swc + ky * a.swh + kx * a.sww] * x[n * a.sxn + c * a.sxc + iy * a.sxh + ix * a.sxw];
    }
  }
  // centre tap: input groups allowed by the colour rule form a prefix of the channels
  const int64_t go = o / (a.Cout / a.color_groups);
  const int64_t c_end = (go + (a.mask_b ? 1 : 0)) * (a.Cin / a.color_groups);
  for (int64_t c = 0; c < c_end; ++c)
    acc += w[o * a.swo + c * a.swc + rh * a.swh + rw * a.sww] * x[n * a.sxn + c * a.sxc + i * a.sxh + j * a.sxw];
  static_cast<T*>(a.y)[idx] = acc;
}

template <typename T>
cudaError_t launch(const ArkernMaskedConv2dArgs* a, cudaStream_t s) {
  const int64_t total = a->N * a->Cout * a->H * a->W;
  if (total > 0)
    masked_conv2d_fwd_kernel<T><<<static_cast<unsigned>((total + kThreads - 1) / kThreads), kThreads, 0, s>>>(*a);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t arkern_masked_conv2d_fwd_cuda(const ArkernMaskedConv2dArgs* a, cudaStream_t stream) {
  return a->dtype == ARKERN_F64 ? launch<double>(a, stream) : launch<float>(a, stream);
}
