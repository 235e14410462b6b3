// masked_linear CPU kernels: y = x @ (W * M)^T + b, touching only the weights the mask keeps.
//
// The mask is compressed once per call into runs: for every output row k, the contiguous ranges
// [start, start+len) of inputs with M[k, d] = 1. All loops walk those runs, so a masked weight is never
// loaded or multiplied, and inner loops stay contiguous (vectorisable).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <array>
#include <vector>

namespace {

struct Runs {
  std::vector<int64_t> row_ptr;  // runs of row k: [row_ptr[k], row_ptr[k+1])
  std::vector<int64_t> start, len;
};

Runs mask_runs(const at::Tensor& mask) {
  auto m = mask.contiguous();
  const bool* p = m.data_ptr<bool>();
  const int64_t out = m.size(0), in = m.size(1);
  Runs r;
  r.row_ptr.reserve(out + 1);
  r.row_ptr.push_back(0);
  for (int64_t k = 0; k < out; ++k) {
    const bool* row = p + k * in;
    int64_t d = 0;
    while (d < in) {
      while (d < in && !row[d]) ++d;
      const int64_t s = d;
      while (d < in && row[d]) ++d;
      if (d > s) {
        r.start.push_back(s);
        r.len.push_back(d - s);
      }
    }
    r.row_ptr.push_back(static_cast<int64_t>(r.start.size()));
  }
  return r;
}

template <typename T>
void forward_impl(const T* xp, const T* wp, const T* bp, T* yp, int64_t n, int64_t in, int64_t out,
                  const Runs& r) {
  at::parallel_for(0, n, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t i = n0; i < n1; ++i) {
      const T* xi = xp + i * in;
      for (int64_t k = 0; k < out; ++k) {
        const T* wk = wp + k * in;
        T acc = bp ? bp[k] : T(0);
        for (int64_t q = r.row_ptr[k]; q < r.row_ptr[k + 1]; ++q) {
          const int64_t s = r.start[q], l = r.len[q];
          T part = 0;
#pragma omp simd reduction(+ : part)
          for (int64_t d = 0; d < l; ++d) part += xi[s + d] * wk[s + d];
          acc += part;
        }
        yp[i * out + k] = acc;
      }
    }
  });
}

// grad_x[i, d] = sum_k g[i, k] * W[k, d] over kept (k, d); rows of x are independent.
template <typename T>
void grad_x_impl(const T* gp, const T* wp, T* gxp, int64_t n, int64_t in, int64_t out, const Runs& r) {
  at::parallel_for(0, n, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t i = n0; i < n1; ++i) {
      T* gxi = gxp + i * in;
      for (int64_t k = 0; k < out; ++k) {
        const T gik = gp[i * out + k];
        const T* wk = wp + k * in;
        for (int64_t q = r.row_ptr[k]; q < r.row_ptr[k + 1]; ++q) {
          const int64_t s = r.start[q], l = r.len[q];
#pragma omp simd
          for (int64_t d = 0; d < l; ++d) gxi[s + d] += gik * wk[s + d];
        }
      }
    }
  });
}

// grad_W[k, d] = sum_i g[i, k] * x[i, d] over kept (k, d); rows of W are independent.
template <typename T>
void grad_w_impl(const T* gp, const T* xp, T* gwp, int64_t n, int64_t in, int64_t out, const Runs& r) {
  at::parallel_for(0, out, 4, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      T* gwk = gwp + k * in;
      for (int64_t i = 0; i < n; ++i) {
        const T gik = gp[i * out + k];
        const T* xi = xp + i * in;
        for (int64_t q = r.row_ptr[k]; q < r.row_ptr[k + 1]; ++q) {
          const int64_t s = r.start[q], l = r.len[q];
#pragma omp simd
          for (int64_t d = 0; d < l; ++d) gwk[s + d] += gik * xi[s + d];
        }
      }
    }
  });
}

void check_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& mask) {
  TORCH_CHECK(x.dim() == 2, "masked_linear: x must be 2-D (N, in), got ", x.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(1) == x.size(1), "masked_linear: weight must be (out, ", x.size(1),
              "), got ", w.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.sizes() == w.sizes(),
              "masked_linear: mask must be bool with the shape of weight");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "masked_linear: x and weight dtypes differ");
}

at::Tensor masked_linear_cpu(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& b_,
                             const at::Tensor& mask) {
  check_args(x_, w_, mask);
  auto x = x_.contiguous();
  auto w = w_.contiguous();
  const int64_t n = x.size(0), in = x.size(1), out = w.size(0);
  auto y = at::empty({n, out}, x.options());
  if (b_.has_value()) {
    TORCH_CHECK(b_->numel() == out, "masked_linear: bias must have ", out, " elements");
  }
  const Runs r = mask_runs(mask);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_linear_cpu", [&] {
    at::Tensor b = b_.has_value() ? b_->contiguous() : at::Tensor();
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                           b.defined() ? b.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), n, in, out, r);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(
    const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& mask,
    std::array<bool, 3> output_mask) {
  check_args(x_, w_, mask);
  auto g = g_.contiguous();
  auto x = x_.contiguous();
  auto w = w_.contiguous();
  const int64_t n = x.size(0), in = x.size(1), out = w.size(0);
  TORCH_CHECK(g.dim() == 2 && g.size(0) == n && g.size(1) == out, "masked_linear_backward: grad_out must be (",
              n, ", ", out, "), got ", g.sizes());
  const Runs r = mask_runs(mask);
  at::Tensor gx = output_mask[0] ? at::zeros_like(x) : at::empty({0}, x.options());
  at::Tensor gw = output_mask[1] ? at::zeros_like(w) : at::empty({0}, w.options());
  at::Tensor gb = output_mask[2] ? g.sum(0) : at::empty({0}, w.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_linear_backward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    if (output_mask[0]) grad_x_impl<scalar_t>(gp, wp, gx.data_ptr<scalar_t>(), n, in, out, r);
    if (output_mask[1]) grad_w_impl<scalar_t>(gp, xp, gw.data_ptr<scalar_t>(), n, in, out, r);
  });
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_backward", &masked_linear_backward_cpu);
}
