// masked_conv2d CPU kernels: PixelCNN masked convolution computed over the kept taps only.
//
// Layout trick: x is copied once into a zero-padded buffer whose rows are [P zeros | W pixels]
// (P = (kW/2)*dilation, row pitch Wp = W + P) with `top` = (kH/2)*dilation zero rows above the image.
// A row's right overflow lands in the next row's leading zeros, so every tap (dy, dx) is a constant
// offset in the flattened pixel index, and the output is computed on the pitch-Wp grid (the P extra
// columns per row are discarded). Each kept tap is then one BLAS GEMM
//     Y[Cout, pixels] += W_tap[Cout, Cin] @ Xpad[Cin, pixels + offset(tap)]
// over a chunk of pixels that stays in cache while every tap accumulates into it. Only kept taps are
// visited: rows above the centre (all kW taps), the centre row left of the centre, and at the centre
// only the channel blocks the colour rule keeps (for output group go the kept inputs are the prefix of
// go (mask 'A') or go + 1 (mask 'B') groups). Masked taps are never loaded or multiplied, so
// causality is exact and grad_weight is exactly zero on them.
//
// With few input channels (<= 16) per-tap GEMMs would have a tiny K, so the kept taps of a pixel chunk
// are gathered into a column buffer first (the "packed" path below).
//
// Backward: grad_x is the transposed convolution over the same taps (GEMMs against a zero-padded
// grad_out grid); grad_weight is one GEMM per kept block reducing over the pixels of the whole batch
// (pixel-major copies of x and grad_out).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <climits>
#include <string_view>
#include <vector>

extern "C" {
// Fortran BLAS (MKL, exported by libtorch_cpu): column-major C = alpha * op(A) op(B) + beta * C.
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace {

inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float beta, float* c, int64_t ldc) {
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  const float one = 1.0f;
  sgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &beta, c, &lc);
}

inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
                 int64_t ldb, double beta, double* c, int64_t ldc) {
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  const double one = 1.0;
  dgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &beta, c, &lc);
}

// Geometry of one call: sizes and the padded grids.
struct Geo {
  int64_t n, cin, cout, h, w, kh, kw, dil, groups;
  int64_t top, pad, wp;  // zero rows above, zero columns per row, row pitch
  int64_t sx;            // elements per channel of the padded input: (top + h) * wp
  int64_t sg;            // elements per channel of the padded grad_out: (h + top) * wp + pad
  int64_t hw;            // elements per channel of an output grid: h * wp
  int64_t lq;            // grid positions that hold real pixels, first to last: (h - 1) * wp + w
};

// One kept block of the mask: tap (ky, kx), output channels [o0, o1), input channels [i0, i1).
struct Block {
  int64_t tap, shift;  // tap index ky * kW + kx; flattened input offset ((ky - kH/2) * wp + kx - kW/2) * dil
  int64_t o0, o1, i0, i1;
};

Geo make_geo(const at::Tensor& x, const at::Tensor& w, int64_t groups, int64_t dil) {
  Geo g{};
  g.n = x.size(0);
  g.cin = x.size(1);
  g.h = x.size(2);
  g.w = x.size(3);
  g.cout = w.size(0);
  g.kh = w.size(2);
  g.kw = w.size(3);
  g.dil = dil;
  g.groups = groups;
  g.top = (g.kh / 2) * dil;
  g.pad = (g.kw / 2) * dil;
  g.wp = g.w + g.pad;
  g.sx = (g.top + g.h) * g.wp;
  g.sg = (g.h + g.top) * g.wp + g.pad;
  g.hw = g.h * g.wp;
  g.lq = (g.h - 1) * g.wp + g.w;
  return g;
}

// Kept blocks: every full tap, then the centre's channel blocks. by_input=false (forward, grad_weight):
// one block per output group with its kept input prefix; by_input=true (grad_x): one block per input
// group with the suffix of output channels it feeds.
std::vector<Block> kept_blocks(const Geo& g, bool type_a, bool by_input) {
  std::vector<Block> out;
  const int64_t ch = g.kh / 2, cw = g.kw / 2;
  for (int64_t ky = 0; ky <= ch; ++ky) {
    for (int64_t kx = 0; kx < (ky < ch ? g.kw : cw); ++kx) {
      const int64_t shift = ((ky - ch) * g.wp + (kx - cw)) * g.dil;
      out.push_back({ky * g.kw + kx, shift, 0, g.cout, 0, g.cin});
    }
  }
  const int64_t centre = ch * g.kw + cw, cin_g = g.cin / g.groups, cout_g = g.cout / g.groups;
  for (int64_t grp = 0; grp < g.groups; ++grp) {
    if (!by_input) {  // output group grp sees input groups < grp ('A') or <= grp ('B')
      const int64_t i1 = (grp + (type_a ? 0 : 1)) * cin_g;
      if (i1 > 0) out.push_back({centre, 0, grp * cout_g, (grp + 1) * cout_g, 0, i1});
    } else {  // input group grp feeds output groups > grp ('A') or >= grp ('B')
      const int64_t o0 = (grp + (type_a ? 1 : 0)) * cout_g;
      if (o0 < g.cout) out.push_back({centre, 0, o0, g.cout, grp * cin_g, (grp + 1) * cin_g});
    }
  }
  return out;
}

bool parse_mask_type(std::string_view mask_type) {
  TORCH_CHECK(mask_type == "A" || mask_type == "B", "masked_conv2d: mask_type must be 'A' or 'B', got '",
              std::string(mask_type), "'");
  return mask_type == "A";
}

void check_args(const at::Tensor& x, const at::Tensor& w, int64_t groups, int64_t dil) {
  TORCH_CHECK(x.dim() == 4, "masked_conv2d: x must be 4-D (N, Cin, H, W), got ", x.sizes());
  TORCH_CHECK(w.dim() == 4, "masked_conv2d: weight must be 4-D (Cout, Cin, kH, kW), got ", w.sizes());
  TORCH_CHECK(x.size(1) >= 1 && w.size(0) >= 1, "masked_conv2d: need at least one input and output channel");
  TORCH_CHECK(w.size(1) == x.size(1), "masked_conv2d: weight has ", w.size(1), " input channels, x has ",
              x.size(1));
  TORCH_CHECK(w.size(2) % 2 == 1 && w.size(3) % 2 == 1, "masked_conv2d: kernel size must be odd, got ",
              w.size(2), "x", w.size(3));
  TORCH_CHECK(dil >= 1, "masked_conv2d: dilation must be >= 1, got ", dil);
  TORCH_CHECK(groups >= 1 && x.size(1) % groups == 0 && w.size(0) % groups == 0,
              "masked_conv2d: color_groups must divide the channel counts");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "masked_conv2d: x and weight dtypes differ");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "masked_conv2d: the cpu kernel takes float32 or float64");
  const int64_t wp = x.size(3) + (w.size(3) / 2) * dil;
  const int64_t rows = x.size(2) + 2 * (w.size(2) / 2) * dil + 1;
  TORCH_CHECK(wp < INT_MAX / std::max<int64_t>(rows, 1), "masked_conv2d: image too large for 32-bit BLAS");
}

// Pixels per work item: whole images when they fit in L2 next to their output (about 512 KiB per
// operand), split further so that every thread gets at least two items.
int64_t chunk_size(const Geo& g) {
  const int64_t cap = std::max<int64_t>(256, (128 * 1024) / std::max(g.cin, g.cout));
  const int64_t want_items = 2 * static_cast<int64_t>(at::get_num_threads());
  const int64_t nchunks = std::max((g.lq + cap - 1) / cap, (want_items + g.n - 1) / std::max<int64_t>(g.n, 1));
  const int64_t per = (g.lq + nchunks - 1) / nchunks;
  return std::max<int64_t>(1, std::min(per, g.lq));
}

// Copy x (N, C, H, W) into the zero-padded grid (N, C, sx): pixel (i, j) at (top + i) * wp + pad + j.
at::Tensor pad_input(const at::Tensor& x, const Geo& g) {
  auto xp = at::zeros({g.n, g.cin, g.sx}, x.options());
  auto dst = xp.narrow(2, g.top * g.wp, g.h * g.wp).view({g.n, g.cin, g.h, g.wp}).narrow(3, g.pad, g.w);
  dst.copy_(x);
  return xp;
}

// Copy grad_out (N, C, H, W) into the zero-padded grid (N, C, sg): pixel (i, j) at pad + i * wp + j.
at::Tensor pad_grad(const at::Tensor& go, const Geo& g) {
  auto gp = at::zeros({g.n, g.cout, g.sg}, go.options());
  gp.narrow(2, g.pad, g.h * g.wp).view({g.n, g.cout, g.h, g.wp}).narrow(3, 0, g.w).copy_(go);
  return gp;
}

// Y grid (N, Cout, hw): Y[:, :, q] for q < lq = bias + sum over kept blocks of W_blk @ Xpad[q + shift].
template <typename T>
void forward_kernel(const T* xp, const T* wt, const T* bias, T* y, const Geo& g, const std::vector<Block>& blocks) {
  const int64_t chunk = chunk_size(g);
  const int64_t nchunks = (g.lq + chunk - 1) / chunk;
  const int64_t base = g.top * g.wp + g.pad;  // padded index of output pixel (0, 0)
  at::parallel_for(0, g.n * nchunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / nchunks, q0 = (t % nchunks) * chunk;
      const int64_t len = std::min(chunk, g.lq - q0);
      const T* x_img = xp + img * g.cin * g.sx;
      T* y_img = y + img * g.cout * g.hw + q0;
      for (int64_t o = 0; o < g.cout; ++o) std::fill(y_img + o * g.hw, y_img + o * g.hw + len, bias ? bias[o] : T(0));
      for (const Block& b : blocks) {
        // row-major Y[o0:o1, q0:q0+len] += W[o0:o1, i0:i1] @ X[i0:i1, base+shift+q0 : ...]
        // column-major: Y^T (len x M) += X^T (len x K) @ W^T (K x M)
        const T* a = x_img + b.i0 * g.sx + base + b.shift + q0;
        const T* wb = wt + (b.tap * g.cout + b.o0) * g.cin + b.i0;
        gemm('N', 'N', len, b.o1 - b.o0, b.i1 - b.i0, a, g.sx, wb, g.cin, T(1), y_img + b.o0 * g.hw, g.hw);
      }
    }
  });
}

// grad_x grid (N, Cin, hw): GX[:, :, q] = sum over kept blocks of W_blk^T @ Gpad[pad + q - shift].
template <typename T>
void grad_input_kernel(const T* gp, const T* wt, T* gx, const Geo& g, const std::vector<Block>& blocks) {
  const int64_t chunk = chunk_size(g);
  const int64_t nchunks = (g.lq + chunk - 1) / chunk;
  at::parallel_for(0, g.n * nchunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / nchunks, q0 = (t % nchunks) * chunk;
      const int64_t len = std::min(chunk, g.lq - q0);
      const T* g_img = gp + img * g.cout * g.sg;
      T* gx_img = gx + img * g.cin * g.hw + q0;
      for (int64_t c = 0; c < g.cin; ++c) std::fill(gx_img + c * g.hw, gx_img + c * g.hw + len, T(0));
      for (const Block& b : blocks) {
        // row-major GX[i0:i1, q] += W[o0:o1, i0:i1]^T @ G[o0:o1, q - shift]
        // column-major: GX^T (len x Ki) += G^T (len x Ko) @ W (Ko x Ki), W stored row-major -> 'T'
        const T* a = g_img + b.o0 * g.sg + g.pad - b.shift + q0;
        const T* wb = wt + (b.tap * g.cout + b.o0) * g.cin + b.i0;
        gemm('N', 'T', len, b.i1 - b.i0, b.o1 - b.o0, a, g.sg, wb, g.cin, T(1), gx_img + b.i0 * g.hw, g.hw);
      }
    }
  });
}

// grad_weight with the batch folded into the reduction: x and grad_out in pixel-major (channels-last)
// layouts (N * sx, C) where output pixel (i, j) of image n sits at the row of input pixel (i, j) in the
// padded input. grad_out is zero on every pad row, so one GEMM per kept block reduces over all images:
//     GW[o0:o1, i0:i1] = G[a0:a1, o0:o1]^T @ X[a0 + shift : a1 + shift, i0:i1]
// with a0 = the first real pixel of image 0 and a1 = one past the last of image N-1 (every read stays
// inside the buffer by the same bounds as the forward). Pixel-major operands keep this long-K GEMM
// efficient in BLAS, which threads each call.
// `images` of the batch at a time (all of them unless 32-bit BLAS sizes force smaller groups), added
// into gw. The reduction is split into one pixel range per thread (single-threaded GEMMs into
// per-thread accumulators, then summed): BLAS threads a long-K GEMM with a 64 x 64 output poorly.
template <typename T>
void grad_weight_batched(const T* xa, const T* ga, T* gw, const Geo& g, const std::vector<Block>& blocks,
                         int64_t images) {
  const int64_t base = g.top * g.wp + g.pad;
  const int64_t k = (images - 1) * g.sx + g.lq;
  const int64_t per = g.kh * g.kw * g.cout * g.cin;
  // Nested inside another parallel region parallel_for runs inline: one accumulator is enough then.
  const int64_t nthreads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t parts = std::max<int64_t>(1, std::min(nthreads, k / 256));
  std::vector<T> acc(static_cast<size_t>(parts * per), T(0));
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t part = p0; part < p1; ++part) {
      const int64_t k0 = k * part / parts, k1 = k * (part + 1) / parts;
      T* mine = acc.data() + part * per;
      for (const Block& b : blocks) {
        // column-major: GW^T (Ki x Ko) += X^T (Ki x K, stored pixel-major -> 'N') @ G (K x Ko, stored -> 'T')
        gemm('N', 'T', b.i1 - b.i0, b.o1 - b.o0, k1 - k0, xa + (base + b.shift + k0) * g.cin + b.i0, g.cin,
             ga + (base + k0) * g.cout + b.o0, g.cout, T(1), mine + (b.tap * g.cout + b.o0) * g.cin + b.i0, g.cin);
      }
    }
  });
  for (int64_t part = 0; part < parts; ++part) {
    const T* src = acc.data() + part * per;
    for (int64_t i = 0; i < per; ++i) gw[i] += src[i];
  }
}

// (N, C, H, W) -> (N * sx, C) zero-padded, pixel (i, j) of image n in row n * sx + (top + i) * wp + pad + j.
at::Tensor pad_pixel_major(const at::Tensor& t, const Geo& g) {
  const int64_t n = t.size(0), c = t.size(1);
  auto out = at::zeros({n, g.sx, c}, t.options());
  out.narrow(1, g.top * g.wp, g.h * g.wp).view({n, g.h, g.wp, c}).narrow(2, g.pad, g.w).copy_(t.permute({0, 2, 3, 1}));
  return out;
}

// ---------------------------------------------------------------- packed path (few input channels)
//
// With few input channels a per-tap GEMM has a tiny K. Instead the kept taps of a pixel chunk are
// gathered into a column buffer, rows ordered [full taps x Cin | centre x Cin], and each output
// group is one GEMM whose K is the prefix of that buffer its mask keeps (the centre channels kept by
// the colour rule are a prefix of the centre rows). Still only kept taps are read or multiplied.
struct Packed {
  std::vector<int64_t> shifts;  // per packed tap, its flattened input offset
  std::vector<int64_t> taps;    // per packed tap, its index ky * kW + kx
  std::vector<int64_t> k_go;    // per output group, the kept prefix of the packed rows
  int64_t kt = 0;               // packed rows: taps.size() * Cin
  int64_t full = 0;             // rows of the full taps (every output channel keeps them)
};

Packed make_packed(const Geo& g, bool type_a) {
  Packed p;
  const int64_t ch = g.kh / 2, cw = g.kw / 2, cin_g = g.cin / g.groups;
  for (int64_t ky = 0; ky <= ch; ++ky)
    for (int64_t kx = 0; kx < (ky < ch ? g.kw : cw); ++kx) {
      p.taps.push_back(ky * g.kw + kx);
      p.shifts.push_back(((ky - ch) * g.wp + (kx - cw)) * g.dil);
    }
  const int64_t full = static_cast<int64_t>(p.taps.size()) * g.cin;
  p.full = full;
  const bool centre_used = !(type_a && g.groups == 1);
  if (centre_used) {
    p.taps.push_back(ch * g.kw + cw);
    p.shifts.push_back(0);
  }
  for (int64_t go = 0; go < g.groups; ++go) p.k_go.push_back(full + (go + (type_a ? 0 : 1)) * cin_g);
  p.kt = static_cast<int64_t>(p.taps.size()) * g.cin;
  return p;
}

// (kH * kW, Cout, Cin) -> (Cout, kt): row o holds the packed taps' weights in packed-row order.
at::Tensor pack_weight(const at::Tensor& wt, const Packed& p) {
  const auto idx = at::tensor(p.taps, at::kLong);
  return wt.index_select(0, idx).permute({1, 0, 2}).contiguous().view({wt.size(1), p.kt});
}

// col[(t * Cin + c) * len + q] = Xpad[c, base + shift_t + q0 + q]
template <typename T>
void gather_columns(const T* x_img, T* col, const Geo& g, const Packed& p, int64_t q0, int64_t len) {
  const int64_t base = g.top * g.wp + g.pad;
  const int64_t nt = static_cast<int64_t>(p.taps.size());
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t c = 0; c < g.cin; ++c) {
      const T* src = x_img + c * g.sx + base + p.shifts[t] + q0;
      std::copy(src, src + len, col + (t * g.cin + c) * len);
    }
}

template <typename T>
void forward_packed(const T* xp, const T* wpk, const T* bias, T* y, const Geo& g, const Packed& p) {
  const int64_t chunk = chunk_size(g);
  const int64_t nchunks = (g.lq + chunk - 1) / chunk;
  const int64_t cout_g = g.cout / g.groups;
  at::parallel_for(0, g.n * nchunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> col(static_cast<size_t>(p.kt * chunk));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / nchunks, q0 = (t % nchunks) * chunk;
      const int64_t len = std::min(chunk, g.lq - q0);
      T* y_img = y + img * g.cout * g.hw + q0;
      for (int64_t o = 0; o < g.cout; ++o) std::fill(y_img + o * g.hw, y_img + o * g.hw + len, bias ? bias[o] : T(0));
      gather_columns(xp + img * g.cin * g.sx, col.data(), g, p, q0, len);
      // column-major: Y^T (len x M) += col^T (len x K) @ Wpk^T (K x M). The full taps are shared by every
      // output channel (one GEMM); each output group then adds its kept prefix of the centre rows.
      if (p.full > 0) gemm('N', 'N', len, g.cout, p.full, col.data(), len, wpk, p.kt, T(1), y_img, g.hw);
      for (int64_t go = 0; go < g.groups; ++go) {
        const int64_t kc = p.k_go[go] - p.full;
        if (kc <= 0) continue;
        gemm('N', 'N', len, cout_g, kc, col.data() + p.full * len, len, wpk + go * cout_g * p.kt + p.full, p.kt, T(1),
             y_img + go * cout_g * g.hw, g.hw);
      }
    }
  });
}

// grad of the packed weight (Cout, kt): sum over images and pixels of G[o, q] * col[k, q], per-thread
// accumulators reduced at the end; only each output group's kept prefix is computed.
template <typename T>
void grad_weight_packed(const T* xp, const T* gp, T* gwpk, const Geo& g, const Packed& p) {
  const int64_t chunk = chunk_size(g);
  const int64_t nchunks = (g.lq + chunk - 1) / chunk;
  const int64_t cout_g = g.cout / g.groups, per = g.cout * p.kt;
  const int64_t nthreads = at::in_parallel_region() ? 1 : at::get_num_threads();
  std::vector<T> acc(static_cast<size_t>(nthreads * per), T(0));
  at::parallel_for(0, g.n * nchunks, 1, [&](int64_t t0, int64_t t1) {
    const int64_t tid = nthreads == 1 ? 0 : std::min<int64_t>(at::get_thread_num(), nthreads - 1);
    T* mine = acc.data() + tid * per;
    std::vector<T> col(static_cast<size_t>(p.kt * chunk));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / nchunks, q0 = (t % nchunks) * chunk;
      const int64_t len = std::min(chunk, g.lq - q0);
      gather_columns(xp + img * g.cin * g.sx, col.data(), g, p, q0, len);
      for (int64_t go = 0; go < g.groups; ++go) {
        if (p.k_go[go] == 0) continue;
        // column-major: GWpk^T (K x M) += col (K x len, stored as col^T -> 'T') @ G^T (len x M)
        const T* gb = gp + img * g.cout * g.sg + go * cout_g * g.sg + g.pad + q0;
        gemm('T', 'N', p.k_go[go], cout_g, len, col.data(), len, gb, g.sg, T(1), mine + go * cout_g * p.kt, p.kt);
      }
    }
  });
  std::fill(gwpk, gwpk + per, T(0));
  for (int64_t tid = 0; tid < nthreads; ++tid) {
    const T* src = acc.data() + tid * per;
    for (int64_t i = 0; i < per; ++i) gwpk[i] += src[i];
  }
}

// Few input channels: per-tap GEMMs would have K = Cin; gather the kept taps instead.
bool use_packed(const Geo& g) { return g.cin <= 16; }

// weight (Cout, Cin, kH, kW) -> (kH * kW, Cout, Cin), so that each tap is a row-major GEMM operand.
at::Tensor taps_major(const at::Tensor& w) {
  return w.permute({2, 3, 0, 1}).contiguous().view({w.size(2) * w.size(3), w.size(0), w.size(1)});
}

at::Tensor masked_conv2d_cpu(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& b_,
                             std::string_view mask_type, int64_t color_groups, int64_t dilation) {
  check_args(x_, w_, color_groups, dilation);
  const bool type_a = parse_mask_type(mask_type);
  const auto x = x_.contiguous();
  const Geo g = make_geo(x, w_, color_groups, dilation);
  at::Tensor bias;
  if (b_.has_value()) {
    TORCH_CHECK(b_->dim() == 1 && b_->numel() == g.cout, "masked_conv2d: bias must have shape (", g.cout, ",)");
    TORCH_CHECK(b_->scalar_type() == x.scalar_type(), "masked_conv2d: bias dtype differs from x");
    bias = b_->contiguous();
  }
  if (g.n == 0 || g.h == 0 || g.w == 0 || g.cout == 0) return at::zeros({g.n, g.cout, g.h, g.w}, x.options());
  const auto wt = taps_major(w_);
  auto y = at::empty({g.n, g.cout, g.hw}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_conv2d_cpu", [&] {
    const auto xp = pad_input(x, g);
    const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    if (use_packed(g)) {
      const Packed p = make_packed(g, type_a);
      const auto wpk = pack_weight(wt, p);
      forward_packed<scalar_t>(xp.data_ptr<scalar_t>(), wpk.data_ptr<scalar_t>(), bp, y.data_ptr<scalar_t>(), g, p);
    } else {
      forward_kernel<scalar_t>(xp.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), bp, y.data_ptr<scalar_t>(), g,
                               kept_blocks(g, type_a, false));
    }
  });
  return y.view({g.n, g.cout, g.h, g.wp}).narrow(3, 0, g.w).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& go_, const at::Tensor& x_, const at::Tensor& w_, std::string_view mask_type,
    int64_t color_groups, int64_t dilation, std::array<bool, 3> output_mask) {
  check_args(x_, w_, color_groups, dilation);
  const bool type_a = parse_mask_type(mask_type);
  const auto x = x_.contiguous();
  const Geo g = make_geo(x, w_, color_groups, dilation);
  TORCH_CHECK(go_.dim() == 4 && go_.size(0) == g.n && go_.size(1) == g.cout && go_.size(2) == g.h &&
                  go_.size(3) == g.w,
              "masked_conv2d_backward: grad_out must be (", g.n, ", ", g.cout, ", ", g.h, ", ", g.w, "), got ",
              go_.sizes());
  TORCH_CHECK(go_.scalar_type() == x.scalar_type(), "masked_conv2d_backward: grad_out dtype differs from x");
  at::Tensor gx = output_mask[0] ? at::zeros_like(x) : at::empty({0}, x.options());
  at::Tensor gw = output_mask[1] ? at::zeros_like(w_, at::MemoryFormat::Contiguous) : at::empty({0}, w_.options());
  at::Tensor gb = output_mask[2] ? go_.sum({0, 2, 3}) : at::empty({0}, w_.options());
  if (g.n == 0 || g.h == 0 || g.w == 0 || g.cout == 0 || !(output_mask[0] || output_mask[1])) return {gx, gw, gb};
  const auto wt = taps_major(w_);
  const auto gp = (output_mask[0] || (output_mask[1] && use_packed(g))) ? pad_grad(go_, g) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_conv2d_backward_cpu", [&] {
    if (output_mask[0]) {
      auto gxg = at::empty({g.n, g.cin, g.hw}, x.options());
      grad_input_kernel<scalar_t>(gp.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), gxg.data_ptr<scalar_t>(), g,
                                  kept_blocks(g, type_a, true));
      gx = gxg.view({g.n, g.cin, g.h, g.wp}).narrow(3, 0, g.w).contiguous();
    }
    if (output_mask[1]) {
      auto gwt = at::zeros({g.kh * g.kw, g.cout, g.cin}, x.options());
      if (use_packed(g)) {
        const Packed p = make_packed(g, type_a);
        const auto xp = pad_input(x, g);
        auto gwpk = at::empty({g.cout, p.kt}, x.options());
        grad_weight_packed<scalar_t>(xp.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), gwpk.data_ptr<scalar_t>(), g, p);
        // scatter the packed rows back to their taps, keeping only each group's kept prefix
        const int64_t nt = static_cast<int64_t>(p.taps.size()), cout_g = g.cout / g.groups;
        for (int64_t go = 0; go < g.groups; ++go)
          for (int64_t t = 0; t < nt; ++t) {
            const int64_t keep = std::clamp<int64_t>(p.k_go[go] - t * g.cin, 0, g.cin);
            if (keep == 0) continue;
            gwt[p.taps[t]].narrow(0, go * cout_g, cout_g).narrow(1, 0, keep)
                .copy_(gwpk.narrow(0, go * cout_g, cout_g).narrow(1, t * g.cin, keep));
          }
      } else {
        const auto blocks = kept_blocks(g, type_a, false);
        const int64_t group = std::max<int64_t>(1, (INT_MAX - 1) / g.sx);  // check_args: sx < INT_MAX
        for (int64_t n0 = 0; n0 < g.n; n0 += group) {
          const int64_t cnt = std::min(group, g.n - n0);
          const auto xa = pad_pixel_major(x.narrow(0, n0, cnt), g);
          const auto ga = pad_pixel_major(go_.narrow(0, n0, cnt), g);
          grad_weight_batched<scalar_t>(xa.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), gwt.data_ptr<scalar_t>(), g,
                                        blocks, cnt);
        }
      }
      gw = gwt.view({g.kh, g.kw, g.cout, g.cin}).permute({2, 3, 0, 1}).contiguous();
    }
  });
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cpu);
}
