// arkern::_categorical_draw: the categorical draw of the fused CPU samplers (decode_sampler.h) on its own, so
// that tests can give it any logits and uniforms (e.g. uniforms on a CDF boundary) and compare its two ways,
// and benchmarks can time it. Its reference is arkern.distributions.sample_categorical. The schema is defined
// here (not in arkern/ops): it is not a public op, and exists only with the compiled extension.
#include <torch/library.h>

#include <ATen/ATen.h>

#include "decode_sampler.h"

namespace {

// logits (N, K) float32 or float64, u (N,) float64 -> (N,) int64 classes; screen: false sends every row
// through the float64 steps.
at::Tensor categorical_draw(const at::Tensor& logits, const at::Tensor& u, double temperature, int64_t top_k,
                            double top_p, bool screen) {
  TORCH_CHECK(logits.device().is_cpu() && u.device().is_cpu(), "_categorical_draw: logits and u must be CPU tensors");
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) >= 1, "_categorical_draw: logits must be (N, K) with K >= 1, got ",
              logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "_categorical_draw: logits must be float32 or float64, got ", logits.scalar_type());
  TORCH_CHECK(u.dim() == 1 && u.size(0) == logits.size(0) && u.scalar_type() == at::kDouble,
              "_categorical_draw: u must be float64 of shape (", logits.size(0), ",), got ", u.scalar_type(), " ",
              u.sizes());
  TORCH_CHECK(temperature > 0 && top_k >= 0 && top_p > 0, "_categorical_draw: need temperature > 0, top_k >= 0 "
              "(0: off), top_p > 0 (>= 1: off), got ", temperature, ", ", top_k, ", ", top_p);
  const int64_t n = logits.size(0), k = logits.size(1);
  const at::Tensor lc = logits.contiguous(), uc = u.contiguous();
  at::Tensor out = at::empty({n}, logits.options().dtype(at::kLong));
  arkern_decode::Sampler sampler(k, temperature, top_k, top_p);
  sampler.screen_rows = screen;
  AT_DISPATCH_FLOATING_TYPES(lc.scalar_type(), "_categorical_draw", [&] {
    std::vector<const scalar_t*> rows(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) rows[r] = lc.data_ptr<scalar_t>() + r * k;
    sampler.draw(rows.data(), n, k, uc.data_ptr<double>(), out.data_ptr<int64_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(arkern, m) {
  m.def("_categorical_draw(Tensor logits, Tensor u, float temperature, int top_k, float top_p, bool screen) -> Tensor",
        &categorical_draw);
}
