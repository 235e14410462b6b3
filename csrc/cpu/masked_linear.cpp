// masked_linear CPU kernels: y = x @ (W * M)^T + b, touching only the weights the mask keeps.
//
// Two paths:
// * Prefix-shaped masks (every row keeps a prefix of the columns once they are ordered by how many rows
//   keep them: true of every MADE degree mask). Rows sorted by prefix length are cut into a few chunks,
//   and each chunk is one dense GEMM over only the columns up to its longest prefix, with the masked,
//   reordered weight (masked entries inside a chunk's rectangle contribute exact zeros). The masked
//   triangle is skipped in blocks while every flop runs in the BLAS micro-kernel. Masks are layer
//   constants, so the plan is cached, keyed by the mask's contents.
// * Any other mask is compressed into runs (for every output row k, the contiguous ranges of kept
//   inputs) and the loops walk only those runs: a masked weight is never loaded or multiplied.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

namespace {

// ---------------------------------------------------------------- general masks: runs of kept inputs

struct Runs {
  std::vector<int64_t> row_ptr;  // runs of row k: [row_ptr[k], row_ptr[k+1])
  std::vector<int64_t> start, len;
};

Runs mask_runs(const bool* m, int64_t out, int64_t in) {
  Runs r;
  r.row_ptr.reserve(out + 1);
  r.row_ptr.push_back(0);
  for (int64_t k = 0; k < out; ++k) {
    const bool* row = m + k * in;
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
void forward_runs(const T* xp, const T* wp, const T* bp, T* yp, int64_t n, int64_t in, int64_t out,
                  const Runs& r) {
  constexpr int64_t RB = 4;  // rows of x per pass: each kept weight is loaded once for RB rows
  const int64_t blocks = (n + RB - 1) / RB;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * RB, rows = std::min<int64_t>(RB, n - i0);
      const T* x0 = xp + i0 * in;
      const T* x1 = xp + (i0 + std::min<int64_t>(1, rows - 1)) * in;
      const T* x2 = xp + (i0 + std::min<int64_t>(2, rows - 1)) * in;
      const T* x3 = xp + (i0 + std::min<int64_t>(3, rows - 1)) * in;
      for (int64_t k = 0; k < out; ++k) {
        const T* wk = wp + k * in;
        T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (int64_t q = r.row_ptr[k]; q < r.row_ptr[k + 1]; ++q) {
          const int64_t s = r.start[q], l = r.len[q];
#pragma omp simd reduction(+ : a0, a1, a2, a3)
          for (int64_t d = s; d < s + l; ++d) {
            const T w = wk[d];
            a0 += x0[d] * w;
            a1 += x1[d] * w;
            a2 += x2[d] * w;
            a3 += x3[d] * w;
          }
        }
        const T bias = bp ? bp[k] : T(0);
        const T acc[RB] = {a0, a1, a2, a3};
        for (int64_t j = 0; j < rows; ++j) yp[(i0 + j) * out + k] = acc[j] + bias;
      }
    }
  });
}

// grad_x[i, d] = sum_k g[i, k] * W[k, d] over kept (k, d); rows of x are independent.
template <typename T>
void grad_x_runs(const T* gp, const T* wp, T* gxp, int64_t n, int64_t in, int64_t out, const Runs& r) {
  at::parallel_for(0, n, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t i = n0; i < n1; ++i) {
      T* gxi = gxp + i * in;
      for (int64_t k = 0; k < out; ++k) {
        const T gik = gp[i * out + k];
        const T* wk = wp + k * in;
        for (int64_t q = r.row_ptr[k]; q < r.row_ptr[k + 1]; ++q) {
          const int64_t s = r.start[q], l = r.len[q];
#pragma omp simd
          for (int64_t d = s; d < s + l; ++d) gxi[d] += gik * wk[d];
        }
      }
    }
  });
}

// grad_W[k, d] = sum_i g[i, k] * x[i, d] over kept (k, d); rows of W are independent.
template <typename T>
void grad_w_runs(const T* gp, const T* xp, T* gwp, int64_t n, int64_t in, int64_t out, const Runs& r) {
  at::parallel_for(0, out, 4, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      T* gwk = gwp + k * in;
      for (int64_t i = 0; i < n; ++i) {
        const T gik = gp[i * out + k];
        const T* xi = xp + i * in;
        for (int64_t q = r.row_ptr[k]; q < r.row_ptr[k + 1]; ++q) {
          const int64_t s = r.start[q], l = r.len[q];
#pragma omp simd
          for (int64_t d = s; d < s + l; ++d) gwk[d] += gik * xi[d];
        }
      }
    }
  });
}

// ---------------------------------------------------------------- prefix-shaped masks: chunked GEMMs

struct Plan {
  bool prefix = false;             // false: not prefix-shaped in any column order (use the runs path)
  bool col_identity = true;        // the column order is the natural one
  std::vector<int64_t> col_order;  // columns, most-kept first
  std::vector<int64_t> row_order;  // output rows, shortest prefix first
  std::vector<int64_t> row_len;    // prefix length of each row, in row_order
  std::vector<int64_t> chunk_start, chunk_len;  // chunk c: sorted rows [start[c], start[c+1]), columns [0, len[c])
  at::Tensor cols, rows;           // col_order / row_order as int64 tensors
  Runs runs;                       // the runs of the mask, for the general path
};

// One scalar pass over the mask: column counts, a stable sort of the columns by count, then a prefix
// check of every row in that order.
Plan make_plan(const bool* m, int64_t out, int64_t in) {
  Plan p;
  p.runs = mask_runs(m, out, in);
  if (out == 0 || in == 0) return p;
  std::vector<int64_t> count(in, 0);
  for (int64_t k = 0; k < out; ++k)
    for (int64_t d = 0; d < in; ++d) count[d] += m[k * in + d];
  p.col_order.resize(in);
  for (int64_t d = 0; d < in; ++d) p.col_order[d] = d;
  std::stable_sort(p.col_order.begin(), p.col_order.end(), [&](int64_t a, int64_t b) { return count[a] > count[b]; });
  std::vector<int64_t> len(out);
  for (int64_t k = 0; k < out; ++k) {
    const bool* row = m + k * in;
    int64_t j = 0;
    while (j < in && row[p.col_order[j]]) ++j;
    len[k] = j;
    for (int64_t t = j; t < in; ++t)
      if (row[p.col_order[t]]) return p;  // not a prefix
  }
  p.row_order.resize(out);
  for (int64_t k = 0; k < out; ++k) p.row_order[k] = k;
  std::stable_sort(p.row_order.begin(), p.row_order.end(), [&](int64_t a, int64_t b) { return len[a] < len[b]; });
  p.row_len.resize(out);
  for (int64_t i = 0; i < out; ++i) p.row_len[i] = len[p.row_order[i]];
  const int64_t chunk = std::max<int64_t>(64, (out + 7) / 8);
  for (int64_t k0 = 0; k0 < out; k0 += chunk) {
    p.chunk_start.push_back(k0);
    p.chunk_len.push_back(p.row_len[std::min(out, k0 + chunk) - 1]);
  }
  p.chunk_start.push_back(out);
  for (int64_t d = 0; d < in; ++d) p.col_identity = p.col_identity && p.col_order[d] == d;
  p.cols = at::tensor(p.col_order, at::kLong);
  p.rows = at::tensor(p.row_order, at::kLong);
  p.prefix = true;
  return p;
}

// Plans are cached (a few masks, newest last), keyed by the mask's shape and bytes.
std::shared_ptr<const Plan> plan_for(const at::Tensor& mask_) {
  static std::mutex mu;
  static std::vector<std::pair<std::vector<char>, std::shared_ptr<const Plan>>> cache;
  const auto mask = mask_.contiguous();
  const bool* m = mask.data_ptr<bool>();
  const int64_t out = mask.size(0), in = mask.size(1);
  std::vector<char> key(2 * sizeof(int64_t) + out * in);
  std::memcpy(key.data(), &out, sizeof(int64_t));
  std::memcpy(key.data() + sizeof(int64_t), &in, sizeof(int64_t));
  std::memcpy(key.data() + 2 * sizeof(int64_t), m, out * in);
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& e : cache)
      if (e.first == key) return e.second;
  }
  auto plan = std::make_shared<const Plan>(make_plan(m, out, in));
  std::lock_guard<std::mutex> lock(mu);
  cache.emplace_back(std::move(key), plan);
  if (cache.size() > 16) cache.erase(cache.begin());
  return plan;
}

// wm[i, j] = W[row_order[i], col_order[j]] for j < row_len[i], else 0: the masked weight, reordered.
template <typename T>
void gather_masked_weight(const T* w, T* wm, const Plan& p, int64_t out, int64_t in) {
  at::parallel_for(0, out, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* src = w + p.row_order[i] * in;
      T* dst = wm + i * in;
      const int64_t l = p.row_len[i];
      if (p.col_identity) {
        std::copy(src, src + l, dst);
      } else {
        for (int64_t j = 0; j < l; ++j) dst[j] = src[p.col_order[j]];
      }
      std::fill(dst + l, dst + in, T(0));
    }
  });
}

at::Tensor masked_weight(const at::Tensor& w, const Plan& p) {
  auto wm = at::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "masked_linear_gather", [&] {
    gather_masked_weight<scalar_t>(w.data_ptr<scalar_t>(), wm.data_ptr<scalar_t>(), p, w.size(0), w.size(1));
  });
  return wm;
}

// ---------------------------------------------------------------- ops

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
  const auto x = x_.contiguous();
  const auto w = w_.contiguous();
  const int64_t n = x.size(0), in = x.size(1), out = w.size(0);
  TORCH_CHECK(!b_.has_value() || b_->numel() == out, "masked_linear: bias must have ", out, " elements");
  auto y = at::empty({n, out}, x.options());
  const auto plan = plan_for(mask);
  if (plan->prefix) {
    // y[:, rows of chunk c] = x[:, cols < len_c] @ Wm[rows of chunk c, cols < len_c]^T
    const auto xs = plan->col_identity ? x : x.index_select(1, plan->cols);
    const auto wm = masked_weight(w, *plan);
    auto ys = at::empty({n, out}, x.options());
    for (size_t c = 0; c + 1 < plan->chunk_start.size(); ++c) {
      const int64_t k0 = plan->chunk_start[c], rows = plan->chunk_start[c + 1] - k0, len = plan->chunk_len[c];
      auto yc = ys.narrow(1, k0, rows);
      if (len > 0) {
        yc.copy_(at::mm(xs.narrow(1, 0, len), wm.narrow(0, k0, rows).narrow(1, 0, len).t()));
      } else {
        yc.zero_();
      }
    }
    y.index_copy_(1, plan->rows, ys);
    if (b_.has_value()) y.add_(*b_);
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_linear_cpu", [&] {
    const at::Tensor b = b_.has_value() ? b_->contiguous() : at::Tensor();
    forward_runs<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                           y.data_ptr<scalar_t>(), n, in, out, plan->runs);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(
    const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& mask,
    std::array<bool, 3> output_mask) {
  check_args(x_, w_, mask);
  const auto g = g_.contiguous();
  const auto x = x_.contiguous();
  const auto w = w_.contiguous();
  const int64_t n = x.size(0), in = x.size(1), out = w.size(0);
  TORCH_CHECK(g.dim() == 2 && g.size(0) == n && g.size(1) == out, "masked_linear_backward: grad_out must be (",
              n, ", ", out, "), got ", g.sizes());
  at::Tensor gx = output_mask[0] ? at::zeros_like(x) : at::empty({0}, x.options());
  at::Tensor gw = output_mask[1] ? at::zeros_like(w) : at::empty({0}, w.options());
  at::Tensor gb = output_mask[2] ? g.sum(0) : at::empty({0}, w.options());
  const auto plan = plan_for(mask);
  if (plan->prefix) {
    const auto xs = plan->col_identity ? x : x.index_select(1, plan->cols);
    const auto wm = masked_weight(w, *plan);
    const auto gs = g.index_select(1, plan->rows);
    auto gxs = output_mask[0] ? at::zeros_like(x) : at::Tensor();
    auto gws = output_mask[1] ? at::zeros_like(w) : at::Tensor();
    for (size_t c = 0; c + 1 < plan->chunk_start.size(); ++c) {
      const int64_t k0 = plan->chunk_start[c], rows = plan->chunk_start[c + 1] - k0, len = plan->chunk_len[c];
      if (len == 0) continue;
      const auto gc = gs.narrow(1, k0, rows);
      if (output_mask[0]) gxs.narrow(1, 0, len).addmm_(gc, wm.narrow(0, k0, rows).narrow(1, 0, len));
      if (output_mask[1]) gws.narrow(0, k0, rows).narrow(1, 0, len).copy_(at::mm(gc.t(), xs.narrow(1, 0, len)));
    }
    if (output_mask[0]) gx = plan->col_identity ? gxs : gx.index_copy_(1, plan->cols, gxs);
    if (output_mask[1]) {
      // exact zeros on masked weights: clear each sorted row beyond its prefix, then undo both orders
      for (int64_t i = 0; i < out; ++i) gws[i].narrow(0, plan->row_len[i], in - plan->row_len[i]).zero_();
      const auto unsorted = plan->col_identity ? gws : gws.index_select(1, std::get<1>(plan->cols.sort()));
      gw.index_copy_(0, plan->rows, unsorted);
    }
    return {gx, gw, gb};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_linear_backward_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    if (output_mask[0]) grad_x_runs<scalar_t>(gp, w.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), n, in, out, plan->runs);
    if (output_mask[1]) grad_w_runs<scalar_t>(gp, x.data_ptr<scalar_t>(), gw.data_ptr<scalar_t>(), n, in, out, plan->runs);
  });
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_backward", &masked_linear_backward_cpu);
}
