// shifted_conv2d CPU kernels: PixelCNN++ causal convolutions (down / downright shift) and their
// transposed (upsampling) variant, forward and backward, without ever building a padded input.
//
// Every op here is a sum over kernel taps of one small relation between two spatial grids:
//   a "small" grid S (Sh x Sw) and a "big" grid B (Bh x Bw) with  b = o * stride + d  for o in S,
// where d = (dh, dw) depends on the tap. A tap only contributes at the rectangle of o where b lies
// inside B, computed exactly (valid_range) and re-checked with TORCH_CHECK; nothing outside the image is
// ever read or written, and no padded copy of any input is built.
//   conv forward            y[o]   += W_tap        @ x[b]     (gather: small = output, big = input)
//   conv grad input         gx[b]  += W_tap^T      @ g[o]     (scatter)
//   conv grad weight        gW_tap += g[o] x[b]^T             (outer)
//   transposed forward      y[b]   += W_tap^T      @ x[o]     (scatter: small = input, big = output)
//   transposed grad input   gx[o]  += W_tap        @ g[b]     (gather)
//   transposed grad weight  gW_tap += x[o] g[b]^T             (outer)
// Each tap is one GEMM (at::addmm_) over channels x (valid pixels) of one image:
// * stride 1: the tap's rectangle is one contiguous range of flattened pixels in both planes, used in
//   place; the few "wrapped" pixels the range crosses between rows (|dw| per row, inside the image) meet
//   a column-zeroed copy of one operand, so they add exact zeros (see Flat / ColumnMasks).
// * stride 2: the tap's pixels are packed into a small buffer (only in-image pixels), multiplied, and
//   added back to exactly the in-image outputs.
// Images run in parallel (at::parallel_for over the batch) when there are enough of them, else the
// GEMMs use the intra-op threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace {

struct Rect {  // o rows [i0, i0+ni), o cols [j0, j0+nj); b = o*s + (dh, dw)
  int64_t i0, ni, j0, nj;
};

// o in [lo, hi) such that 0 <= o*s + d < B and 0 <= o < S.
inline void valid_range(int64_t S, int64_t B, int64_t s, int64_t d, int64_t& lo, int64_t& n) {
  lo = d >= 0 ? 0 : (-d + s - 1) / s;
  const int64_t last = B - 1 - d;  // o*s <= last
  const int64_t hi = last < 0 ? 0 : std::min<int64_t>(S, last / s + 1);
  n = std::max<int64_t>(0, hi - lo);
}

struct Grid {
  int64_t Sh, Sw, Bh, Bw, s;
  Rect rect(int64_t dh, int64_t dw) const {
    Rect r{};
    valid_range(Sh, Bh, s, dh, r.i0, r.ni);
    valid_range(Sw, Bw, s, dw, r.j0, r.nj);
    if (r.ni > 0 && r.nj > 0) {  // the exact bounds every tap relies on
      TORCH_CHECK(r.i0 >= 0 && r.i0 + r.ni <= Sh && r.j0 >= 0 && r.j0 + r.nj <= Sw, "shifted_conv2d: bad rect");
      TORCH_CHECK(r.i0 * s + dh >= 0 && (r.i0 + r.ni - 1) * s + dh < Bh && r.j0 * s + dw >= 0 &&
                      (r.j0 + r.nj - 1) * s + dw < Bw, "shifted_conv2d: tap out of bounds");
    }
    return r;
  }
};

// dst (C, ni*nj) = plane[c, r0 + a*step, c0 + b*step] for a < ni, b < nj; plane is (C, H*W) contiguous.
template <typename T>
void pack_kernel(const T* plane, int64_t C, int64_t HW, int64_t W, int64_t r0, int64_t c0, int64_t ni,
                 int64_t nj, int64_t step, T* dst) {
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t a = 0; a < ni; ++a) {
      const T* row = plane + c * HW + (r0 + a * step) * W + c0;
      T* out = dst + (c * ni + a) * nj;
      if (step == 1) {
        std::copy(row, row + nj, out);
      } else {
#pragma omp simd
        for (int64_t b = 0; b < nj; ++b) out[b] = row[b * step];
      }
    }
  }
}

// plane[c, r0 + a*step, c0 + b*step] += src[c, a*nj + b]: the inverse of pack_kernel, accumulating.
template <typename T>
void unpack_add_kernel(const T* src, int64_t C, int64_t HW, int64_t W, int64_t r0, int64_t c0, int64_t ni,
                       int64_t nj, int64_t step, T* plane) {
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t a = 0; a < ni; ++a) {
      T* row = plane + c * HW + (r0 + a * step) * W + c0;
      const T* in = src + (c * ni + a) * nj;
#pragma omp simd
      for (int64_t b = 0; b < nj; ++b) row[b * step] += in[b];
    }
  }
}

// A region of a (C, H*W) plane: rows r0 + a*step (a < ni), columns c0 + b*step (b < nj).
struct Region {
  int64_t H, W, r0, c0, ni, nj, step;
  bool in_place() const { return step == 1 && c0 == 0 && nj == W; }
};

// The region as a (C, ni*nj) matrix: a strided view when it is whole rows, else a packed copy.
at::Tensor read_region(const at::Tensor& plane, const Region& g) {
  TORCH_CHECK(plane.is_contiguous() && plane.size(1) == g.H * g.W, "shifted_conv2d: plane must be (C, H*W)");
  TORCH_CHECK(g.r0 >= 0 && g.r0 + (g.ni - 1) * g.step < g.H && g.c0 >= 0 && g.c0 + (g.nj - 1) * g.step < g.W,
              "shifted_conv2d: region out of bounds");
  if (g.in_place()) return plane.narrow(1, g.r0 * g.W, g.ni * g.W);
  auto out = at::empty({plane.size(0), g.ni * g.nj}, plane.options());
  AT_DISPATCH_FLOATING_TYPES(plane.scalar_type(), "shifted_conv2d_pack", [&] {
    pack_kernel<scalar_t>(plane.data_ptr<scalar_t>(), plane.size(0), g.H * g.W, g.W, g.r0, g.c0, g.ni, g.nj,
                          g.step, out.data_ptr<scalar_t>());
  });
  return out;
}

// region(plane) += m @ p, with m (C, K) and p (K, ni*nj).
void add_region(at::Tensor& plane, const Region& g, const at::Tensor& m, const at::Tensor& p) {
  TORCH_CHECK(plane.is_contiguous() && plane.size(1) == g.H * g.W, "shifted_conv2d: plane must be (C, H*W)");
  TORCH_CHECK(g.r0 >= 0 && g.r0 + (g.ni - 1) * g.step < g.H && g.c0 >= 0 && g.c0 + (g.nj - 1) * g.step < g.W,
              "shifted_conv2d: region out of bounds");
  if (g.in_place()) {
    auto view = plane.narrow(1, g.r0 * g.W, g.ni * g.W);
    view.addmm_(m, p);
    return;
  }
  const auto t = at::mm(m, p).contiguous();
  AT_DISPATCH_FLOATING_TYPES(plane.scalar_type(), "shifted_conv2d_unpack", [&] {
    unpack_add_kernel<scalar_t>(t.data_ptr<scalar_t>(), plane.size(0), g.H * g.W, g.W, g.r0, g.c0, g.ni, g.nj,
                                g.step, plane.data_ptr<scalar_t>());
  });
}

Region small_region(const Grid& gr, const Rect& r) { return {gr.Sh, gr.Sw, r.i0, r.j0, r.ni, r.nj, 1}; }
Region big_region(const Grid& gr, const Rect& r, int64_t dh, int64_t dw) {
  return {gr.Bh, gr.Bw, r.i0 * gr.s + dh, r.j0 * gr.s + dw, r.ni, r.nj, gr.s};
}

// The taps of one op: per tap index t, the offset (dh, dw) and the (rows, cols) matrix used by the GEMM.
struct Taps {
  std::vector<int64_t> dh, dw;
  at::Tensor w;  // (taps, A, B) contiguous
};

// Run body(n0, n1) over the batch: in parallel over images when there are enough of them (each thread's
// GEMMs then run single-threaded), otherwise in one call whose GEMMs use the intra-op threads.
template <typename F>
void over_batch(int64_t N, const F& body) {
  if (N >= 2 && at::get_num_threads() > 1 && !at::in_parallel_region()) {
    const at::ThreadLocalState caller;  // grad / inference mode and dispatch keys of the calling thread
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      const at::ThreadLocalStateGuard same_state(caller);  // worker threads do not inherit them otherwise
      body(n0, n1);
    });
  } else if (N > 0) {
    body(0, N);
  }
}

// Stride 1 (small and big grids are both H x W): a tap shifts the flattened pixel index by a constant,
// so the rect's pixels, row-major from (i0, j0) to (i0+ni-1, j0+nj-1), are one contiguous range of each
// (C, H*W) plane and every tap is a single in-place GEMM on two strided views. That range also crosses
// the columns outside [j0, j0+nj) of the rows in between ("wrapped" pixels: in-bounds pixels of a
// neighbouring row, never outside the image); one operand is then taken from a copy whose columns there
// are zero, so wrapped pixels contribute exactly nothing.
struct Flat {
  int64_t start, bstart, len;  // small range [start, start+len), big range [bstart, bstart+len)
};

Flat flat_range(const Grid& gr, const Rect& r, int64_t dh, int64_t dw) {
  const int64_t W = gr.Sw;
  Flat f{r.i0 * W + r.j0, 0, (r.ni - 1) * W + r.nj};
  f.bstart = f.start + dh * W + dw;
  TORCH_CHECK(gr.s == 1 && gr.Sw == gr.Bw && gr.Sh == gr.Bh && f.start >= 0 && f.start + f.len <= gr.Sh * W &&
                  f.bstart >= 0 && f.bstart + f.len <= gr.Bh * W, "shifted_conv2d: flat tap out of bounds");
  return f;
}

// Copies of one (C, H*W) plane with the columns outside [c0, c0+nc) zeroed, made once per column range.
class ColumnMasks {
 public:
  ColumnMasks(at::Tensor plane, int64_t H, int64_t W) : plane_(std::move(plane)), H_(H), W_(W) {}
  at::Tensor get(int64_t c0, int64_t nc) {
    if (c0 == 0 && nc == W_) return plane_;
    for (const auto& e : cache_)
      if (e.c0 == c0 && e.nc == nc) return e.t;
    auto t = plane_.clone();
    auto v = t.view({t.size(0), H_, W_});
    v.narrow(2, 0, c0).zero_();
    v.narrow(2, c0 + nc, W_ - c0 - nc).zero_();
    cache_.push_back({c0, nc, t});
    return t;
  }

 private:
  struct Entry {
    int64_t c0, nc;
    at::Tensor t;
  };
  at::Tensor plane_;
  int64_t H_, W_;
  std::vector<Entry> cache_;
};

// out_small[n] (Cs, Sh*Sw) += sum_t taps.w[t] @ big[n][taps at o*s + d_t]
// Outputs start uninitialised: each image is set to its bias column (C, 1) or zero inside the
// parallel loop, so initialising the output is spread over the threads too.
void init_image(at::Tensor& o, const at::Tensor& bias_col) {
  if (bias_col.defined()) {
    o.copy_(bias_col.expand_as(o));
  } else {
    o.zero_();
  }
}

void gather(at::Tensor& out_small, const at::Tensor& big, const Grid& gr, const Taps& taps,
            const at::Tensor& bias_col) {
  over_batch(out_small.size(0), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      auto o = out_small[n].view({out_small.size(1), gr.Sh * gr.Sw});
      init_image(o, bias_col);
      const auto b = big[n].view({big.size(1), gr.Bh * gr.Bw});
      ColumnMasks masked(b, gr.Bh, gr.Bw);
      for (size_t t = 0; t < taps.dh.size(); ++t) {
        const Rect r = gr.rect(taps.dh[t], taps.dw[t]);
        if (r.ni == 0 || r.nj == 0) continue;
        if (gr.s == 1) {  // wrapped outputs read zeroed columns of the input
          const Flat f = flat_range(gr, r, taps.dh[t], taps.dw[t]);
          o.narrow(1, f.start, f.len).addmm_(taps.w[t], masked.get(r.j0 + taps.dw[t], r.nj).narrow(1, f.bstart, f.len));
          continue;
        }
        add_region(o, small_region(gr, r), taps.w[t], read_region(b, big_region(gr, r, taps.dh[t], taps.dw[t])));
      }
    }
  });
}

// out_big[n] (Cb, Bh*Bw) at o*s + d_t += taps.w[t] @ small[n][o]
void scatter(at::Tensor& out_big, const at::Tensor& small, const Grid& gr, const Taps& taps,
             const at::Tensor& bias_col) {
  over_batch(out_big.size(0), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      auto o = out_big[n].view({out_big.size(1), gr.Bh * gr.Bw});
      init_image(o, bias_col);
      const auto sm = small[n].view({small.size(1), gr.Sh * gr.Sw});
      ColumnMasks masked(sm, gr.Sh, gr.Sw);
      for (size_t t = 0; t < taps.dh.size(); ++t) {
        const Rect r = gr.rect(taps.dh[t], taps.dw[t]);
        if (r.ni == 0 || r.nj == 0) continue;
        if (gr.s == 1) {  // wrapped outputs receive W @ 0 from zeroed columns of the source
          const Flat f = flat_range(gr, r, taps.dh[t], taps.dw[t]);
          o.narrow(1, f.bstart, f.len).addmm_(taps.w[t], masked.get(r.j0, r.nj).narrow(1, f.start, f.len));
          continue;
        }
        add_region(o, big_region(gr, r, taps.dh[t], taps.dw[t]), taps.w[t], read_region(sm, small_region(gr, r)));
      }
    }
  });
}

// (taps, Ca, Cb): out[t] = sum_n sum_o small[n][:, o] big[n][:, o*s + d_t]^T, with per-thread partial sums.
at::Tensor outer(const at::Tensor& small, const at::Tensor& big, const Grid& gr, const std::vector<int64_t>& dh,
                 const std::vector<int64_t>& dw) {
  const int64_t N = small.size(0), T = static_cast<int64_t>(dh.size());
  const int64_t parts = (N >= 2 && !at::in_parallel_region()) ? std::min<int64_t>(N, at::get_num_threads()) : 1;
  auto partial = at::zeros({parts, T, small.size(1), big.size(1)}, small.options());
  const at::ThreadLocalState caller;
  auto body = [&](int64_t p0, int64_t p1) {
    const at::ThreadLocalStateGuard same_state(caller);
    for (int64_t p = p0; p < p1; ++p) {
      auto acc = partial[p];
      for (int64_t n = N * p / parts; n < N * (p + 1) / parts; ++n) {
        const auto sm = small[n].view({small.size(1), gr.Sh * gr.Sw});
        const auto b = big[n].view({big.size(1), gr.Bh * gr.Bw});
        // The second GEMM operand pixel-major ((pixels, Cb) rows), so that each GEMM is A @ B with both
        // operands row-major: MKL runs that 2-3x faster than A @ B^T at these shapes (K = pixels).
        const auto b_pix = gr.s == 1 ? b.t().contiguous() : at::Tensor();
        ColumnMasks masked(sm, gr.Sh, gr.Sw);
        for (int64_t t = 0; t < T; ++t) {
          const Rect r = gr.rect(dh[t], dw[t]);
          if (r.ni == 0 || r.nj == 0) continue;
          if (gr.s == 1) {  // wrapped pixel pairs meet a zeroed column
            const Flat f = flat_range(gr, r, dh[t], dw[t]);
            acc[t].addmm_(masked.get(r.j0, r.nj).narrow(1, f.start, f.len), b_pix.narrow(0, f.bstart, f.len));
            continue;
          }
          acc[t].addmm_(read_region(sm, small_region(gr, r)),
                        read_region(b, big_region(gr, r, dh[t], dw[t])).t().contiguous());
        }
      }
    }
  };
  if (parts > 1) {
    at::parallel_for(0, parts, 1, body);
  } else {
    body(0, parts);
  }
  return parts > 1 ? partial.sum(0) : partial[0];
}

// ---------------------------------------------------------------- geometry of the two ops

bool parse_shift(std::string_view shift) {
  TORCH_CHECK(shift == "down" || shift == "downright", "shifted_conv2d: shift must be 'down' or 'downright', got ",
              std::string(shift));
  return shift == "downright";
}

void check_common(const char* op, const at::Tensor& x, const at::Tensor& w, int64_t stride, bool downright) {
  TORCH_CHECK(x.dim() == 4 && w.dim() == 4, op, ": x and weight must be 4-D, got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), op, ": x and weight dtypes differ");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": float32/float64 only");
  TORCH_CHECK(w.size(2) >= 1 && w.size(3) >= 1, op, ": empty kernel");
  TORCH_CHECK(downright || w.size(3) % 2 == 1, op, ": shift 'down' needs an odd kernel width, got ", w.size(3));
  TORCH_CHECK(x.size(2) >= 1 && x.size(3) >= 1, op, ": x must have H, W >= 1, got ", x.sizes());
}

// conv: small = output (Ho, Wo), big = input (H, W); tap (kh, kw) reads input o*s + (kh - (kH-1), kw - left).
Grid conv_grid(const at::Tensor& x, int64_t stride) {
  const int64_t H = x.size(2), W = x.size(3);
  return {(H + stride - 1) / stride, (W + stride - 1) / stride, H, W, stride};
}

void conv_offsets(const at::Tensor& w, bool downright, std::vector<int64_t>& dh, std::vector<int64_t>& dw) {
  const int64_t kH = w.size(2), kW = w.size(3), left = downright ? kW - 1 : (kW - 1) / 2;
  for (int64_t kh = 0; kh < kH; ++kh)
    for (int64_t kw = 0; kw < kW; ++kw) {
      dh.push_back(kh - (kH - 1));
      dw.push_back(kw - left);
    }
}

// transposed: small = input (H, W), big = output (H*s, W*s); input o lands on output o*s + (kh, kw - left).
Grid transpose_grid(const at::Tensor& x, int64_t stride) {
  const int64_t H = x.size(2), W = x.size(3);
  return {H, W, H * stride, W * stride, stride};
}

void transpose_offsets(const at::Tensor& w, bool downright, std::vector<int64_t>& dh, std::vector<int64_t>& dw) {
  const int64_t kH = w.size(2), kW = w.size(3), left = downright ? 0 : (kW - 1) / 2;
  for (int64_t kh = 0; kh < kH; ++kh)
    for (int64_t kw = 0; kw < kW; ++kw) {
      dh.push_back(kh);
      dw.push_back(kw - left);
    }
}

// (A, B, kH, kW) weight -> (kH*kW, A, B) contiguous tap matrices, optionally transposed to (kH*kW, B, A).
at::Tensor tap_matrices(const at::Tensor& w, bool transpose) {
  const int64_t taps = w.size(2) * w.size(3);
  return transpose ? w.permute({2, 3, 1, 0}).reshape({taps, w.size(1), w.size(0)}).contiguous()
                   : w.permute({2, 3, 0, 1}).reshape({taps, w.size(0), w.size(1)}).contiguous();
}

// (kH*kW, A, B) tap gradients -> (A, B, kH, kW).
at::Tensor untap(const at::Tensor& g, const at::Tensor& w) {
  return g.view({w.size(2), w.size(3), w.size(0), w.size(1)}).permute({2, 3, 0, 1}).contiguous();
}

// The bias as a (C, 1) column (undefined without bias), checked against the output channels.
at::Tensor bias_column(const std::optional<at::Tensor>& bias, int64_t channels, const at::Tensor& like) {
  if (!bias.has_value()) return at::Tensor();
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == channels, "shifted_conv2d: bias must have ", channels,
              " elements, got ", bias->sizes());
  TORCH_CHECK(bias->scalar_type() == like.scalar_type(), "shifted_conv2d: bias dtype differs from x");
  return bias->detach().contiguous().view({channels, 1});
}

// ---------------------------------------------------------------- ops

at::Tensor shifted_conv2d_cpu(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& bias,
                              std::string_view shift, int64_t stride) {
  const at::NoGradGuard no_grad;  // kernels are called below autograd; never record their internals
  const bool dr = parse_shift(shift);
  check_common("shifted_conv2d", x_, w_, stride, dr);
  TORCH_CHECK(w_.size(1) == x_.size(1), "shifted_conv2d: weight expects ", w_.size(1), " input channels, x has ",
              x_.size(1));
  const auto x = x_.detach().contiguous();
  const Grid gr = conv_grid(x, stride);
  Taps taps;
  conv_offsets(w_, dr, taps.dh, taps.dw);
  taps.w = tap_matrices(w_.detach(), false);  // (taps, Cout, Cin)
  auto y = at::empty({x.size(0), w_.size(0), gr.Sh, gr.Sw}, x.options());
  gather(y, x, gr, taps, bias_column(bias, w_.size(0), x));
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> shifted_conv2d_backward_cpu(
    const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& w_, std::string_view shift, int64_t stride,
    std::array<bool, 3> output_mask) {
  const at::NoGradGuard no_grad;  // kernels are called below autograd; never record their internals
  const bool dr = parse_shift(shift);
  check_common("shifted_conv2d_backward", x_, w_, stride, dr);
  const auto x = x_.detach().contiguous();
  const auto g = g_.detach().contiguous();
  const Grid gr = conv_grid(x, stride);
  TORCH_CHECK(g.dim() == 4 && g.size(0) == x.size(0) && g.size(1) == w_.size(0) && g.size(2) == gr.Sh &&
                  g.size(3) == gr.Sw && g.scalar_type() == x.scalar_type(),
              "shifted_conv2d_backward: grad_out has shape ", g.sizes(), ", expected (", x.size(0), ", ", w_.size(0),
              ", ", gr.Sh, ", ", gr.Sw, ")");
  std::vector<int64_t> dh, dw;
  conv_offsets(w_, dr, dh, dw);
  at::Tensor gx = at::empty({0}, x.options()), gw = at::empty({0}, x.options()), gb = at::empty({0}, x.options());
  if (output_mask[0]) {
    gx = at::empty_like(x);
    scatter(gx, g, gr, Taps{dh, dw, tap_matrices(w_.detach(), true)}, at::Tensor());  // (taps, Cin, Cout)
  }
  if (output_mask[1]) gw = untap(outer(g, x, gr, dh, dw), w_);
  if (output_mask[2]) gb = g.sum({0, 2, 3});
  return {gx, gw, gb};
}

at::Tensor shifted_conv_transpose2d_cpu(const at::Tensor& x_, const at::Tensor& w_,
                                        const std::optional<at::Tensor>& bias, std::string_view shift,
                                        int64_t stride) {
  const at::NoGradGuard no_grad;  // kernels are called below autograd; never record their internals
  const bool dr = parse_shift(shift);
  check_common("shifted_conv_transpose2d", x_, w_, stride, dr);
  TORCH_CHECK(w_.size(0) == x_.size(1), "shifted_conv_transpose2d: weight expects ", w_.size(0),
              " input channels, x has ", x_.size(1));
  const auto x = x_.detach().contiguous();
  const Grid gr = transpose_grid(x, stride);
  Taps taps;
  transpose_offsets(w_, dr, taps.dh, taps.dw);
  taps.w = tap_matrices(w_.detach(), true);  // (taps, Cout, Cin)
  auto y = at::empty({x.size(0), w_.size(1), gr.Bh, gr.Bw}, x.options());
  scatter(y, x, gr, taps, bias_column(bias, w_.size(1), x));
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> shifted_conv_transpose2d_backward_cpu(
    const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& w_, std::string_view shift, int64_t stride,
    std::array<bool, 3> output_mask) {
  const at::NoGradGuard no_grad;  // kernels are called below autograd; never record their internals
  const bool dr = parse_shift(shift);
  check_common("shifted_conv_transpose2d_backward", x_, w_, stride, dr);
  const auto x = x_.detach().contiguous();
  const auto g = g_.detach().contiguous();
  const Grid gr = transpose_grid(x, stride);
  TORCH_CHECK(g.dim() == 4 && g.size(0) == x.size(0) && g.size(1) == w_.size(1) && g.size(2) == gr.Bh &&
                  g.size(3) == gr.Bw && g.scalar_type() == x.scalar_type(),
              "shifted_conv_transpose2d_backward: grad_out has shape ", g.sizes(), ", expected (", x.size(0), ", ",
              w_.size(1), ", ", gr.Bh, ", ", gr.Bw, ")");
  std::vector<int64_t> dh, dw;
  transpose_offsets(w_, dr, dh, dw);
  at::Tensor gx = at::empty({0}, x.options()), gw = at::empty({0}, x.options()), gb = at::empty({0}, x.options());
  if (output_mask[0]) {
    gx = at::empty_like(x);
    gather(gx, g, gr, Taps{dh, dw, tap_matrices(w_.detach(), false)}, at::Tensor());  // (taps, Cin, Cout)
  }
  if (output_mask[1]) gw = untap(outer(x, g, gr, dh, dw), w_);
  if (output_mask[2]) gb = g.sum({0, 2, 3});
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) {
  m.impl("shifted_conv2d", &shifted_conv2d_cpu);
  m.impl("shifted_conv2d_backward", &shifted_conv2d_backward_cpu);
  m.impl("shifted_conv_transpose2d", &shifted_conv_transpose2d_cpu);
  m.impl("shifted_conv_transpose2d_backward", &shifted_conv_transpose2d_backward_cpu);
}
