// Building blocks of the pixelcnnpp_decode kernel (csrc/cpu/pixelcnnpp_decode.cpp): pointwise functions,
// shifted convs that cache their input map and compute outputs at any set of positions, gated resnets.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "pixelcnn_decode.h"
#include "pixelcnnpp_amx.h"

namespace arkern_pixelcnnpp {

using arkern_pixelcnn::Mat;
using arkern_pixelcnn::pad16;

// One packed matrix: float32 weights, or bfloat16 ones for the bfloat16 precision (docs/design.md: the kernel
// rounds every matrix input to bfloat16 where it stores it, see matrix_input; the float32 tile kernels widen the
// weights, products are summed in float32). m, mp, n, b as in Mat; `f` or `h` holds the weights. A bfloat16
// pack on an AMX machine also has the matrix's VNNI copy (arkern.ops.pixelcnnpp_decode.pack_tiles): t[0] the
// tiles of all its columns, or with `halves` t[0] / t[1] those of its two column groups of n / 2 each (a (2, 2)
// conv's top / bottom kernel row; a two-part nin's `u` / `ul` columns).
struct PMat {
  Mat<float, float> f;
  Mat<float, at::BFloat16> h;
  bool bf16 = false, halves = false;
  int64_t m = 0, mp = 0, n = 0;
  const float* b = nullptr;
  const uint16_t* t[2] = {nullptr, nullptr};
  // The tiles of columns [ja, jz) when the copy has them as one group, else null.
  const uint16_t* tiles(int64_t ja, int64_t jz) const {
    if (!halves) return ja == 0 && jz == n ? t[0] : nullptr;
    if (ja == 0 && jz == n / 2) return t[0];
    return ja == n / 2 && jz == n ? t[1] : nullptr;
  }
  template <class Fn>
  void visit(Fn&& fn) const {
    if (bf16) {
      fn(h);
    } else {
      fn(f);
    }
  }
};

// x[0:n] as the products of `mat` read it: rounded to bfloat16 in place in the bfloat16 precision.
inline void matrix_input(const PMat& mat, float* x, int64_t n) {
  if (mat.bf16) arkern_amx::round_bf16(x, n);
}

// Inputs [ja, jz) of y = b + W x for `rows` rows, output tiles split over `team` (arkern_pixelcnn::matvec_range).
inline void product(const PMat& mat, int64_t rows, int64_t ja, int64_t jz, const float* const* x, float* const* y,
                    arkern_team::Session* team) {
  mat.visit([&](const auto& m) { arkern_pixelcnn::matvec_range(m, rows, ja, jz, x, y, team); });
}

// ---------------------------------------------------------------- pointwise

#if defined(__AVX512F__)
inline __m512 elu16(__m512 x) {  // x > 0 ? x : e^x - 1
  const __m512 neg = _mm512_sub_ps(exp16(_mm512_min_ps(x, _mm512_setzero_ps())), _mm512_set1_ps(1.0f));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), neg, x);
}
#endif

// dst[0:n] = elu(s * x[0:n]) for s = +1 or -1.
inline void elu_into(const float* x, int64_t n, float s, float* dst) {
  int64_t k = 0;
#if defined(__AVX512F__)
  const __m512 sv = _mm512_set1_ps(s);
  for (; k + 16 <= n; k += 16) _mm512_storeu_ps(dst + k, elu16(_mm512_mul_ps(sv, _mm512_loadu_ps(x + k))));
#endif
  for (; k < n; ++k) {
    const float v = s * x[k];
    dst[k] = v > 0.0f ? v : std::expm1(v);
  }
}

// pos[0:n] = elu(x[0:n]) and neg[0:n] = elu(-x[0:n]), the values of elu_into(x, n, +-1, .), with one exp per
// value: the one of the two that is not x or -x is e^(-|x|) - 1 (e^0 - 1 when x is zero or NaN, as elu16).
inline void elu_pair(const float* x, int64_t n, float* pos, float* neg) {
  int64_t k = 0;
#if defined(__AVX512F__)
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), minus = _mm512_set1_ps(-1.0f);
  for (; k + 16 <= n; k += 16) {
    const __m512 v = _mm512_loadu_ps(x + k), nv = _mm512_mul_ps(minus, v);
    const __m512 e = _mm512_sub_ps(exp16(_mm512_min_ps(_mm512_min_ps(v, nv), zero)), one);
    _mm512_storeu_ps(pos + k, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), e, v));
    _mm512_storeu_ps(neg + k, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(nv, zero, _CMP_GT_OQ), e, nv));
  }
#endif
  if (k < n) {
    elu_into(x + k, n - k, 1.0f, pos + k);
    elu_into(x + k, n - k, -1.0f, neg + k);
  }
}

// out[k] = x[k] + a[k] * sigmoid(b[k]) for k < n.
inline void gated_residual(const float* x, const float* a, const float* b, int64_t n, float* out) {
  int64_t k = 0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; k + 16 <= n; k += 16) {
    const __m512 sg = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(),
                                                                                 _mm512_loadu_ps(b + k)))));
    _mm512_storeu_ps(out + k, _mm512_fmadd_ps(_mm512_loadu_ps(a + k), sg, _mm512_loadu_ps(x + k)));
  }
#endif
  for (; k < n; ++k) out[k] = x[k] + a[k] / (1.0f + std::exp(-b[k]));
}

// ---------------------------------------------------------------- layers

struct Pos {
  int64_t b, i, j;  // batch row in the group, output row and column at the layer's scale
};

// Pointer arrays and buffers for one product over up to `cap` positions.
struct Scratch {
  int64_t cap = 0;
  std::vector<float> mem;
  std::vector<float*> gat, t1, t2, c, a, z;
  std::vector<const float*> in;
  std::array<std::vector<const float*>, 4> xs;  // inputs of a split product's terms
  std::vector<float*> out;
  arkern_team::Session* team = nullptr;  // splits products over output tiles (csrc/cpu/team.h)
  bool tiles = false;                     // the products run on AMX tiles (pixelcnnpp_amx.h) where a copy exists
  void init(int64_t positions, int64_t max_n, int64_t f) {
    cap = positions;
    const int64_t fp = pad16(2 * f);
    mem.assign(positions * (max_n + 4 * f + 4 * f + 3 * fp), 0.0f);
    float* p = mem.data();
    const auto carve = [&](std::vector<float*>& v, int64_t size) {
      v.resize(positions);
      for (auto& q : v) { q = p; p += size; }
    };
    carve(gat, max_n);
    carve(t1, 4 * f);
    carve(t2, 4 * f);
    carve(c, fp);
    carve(a, fp);
    carve(z, fp);
    in.resize(positions);
    for (auto& v : xs) v.resize(positions);
    out.resize(positions);
  }
};

// y[p] (+)= W[:, ja:jz] x[p] for np positions (from the bias when ja == 0, else adding to y[p], as
// arkern_decode::matvec_range), for the row passes: with 8 or more positions, one team phase of (position
// half, output tile) chunks, so that two workers do equal work whatever the number of output tiles (the
// halves are cut at a multiple of 4 positions, the kernel's row groups); fewer positions: split over output
// tiles. Each output's sum order depends on np only, not on the threads.
// On AMX tiles (sc.tiles, the copy of W[:, ja:jz] exists): one tile product, pieces of kTilePiece positions.
inline void rows_product(const PMat& mat, int64_t np, int64_t ja, int64_t jz, const float* const* x,
                         float* const* y, const Scratch& sc) {
  if (const uint16_t* t = sc.tiles ? mat.tiles(ja, jz) : nullptr) {
    tiles_product(t, jz - ja, mat.mp, np, x, ja == 0 ? mat.b : nullptr, y);
    return;
  }
  arkern_team::Session* team = sc.team;
  if (np < 8 || team == nullptr) {
    product(mat, np, ja, jz, x, y, team);
    return;
  }
  const int64_t half = (np / 2 + 3) / 4 * 4, T = arkern_decode::tiles(mat.mp);
  const auto chunk = [&](int64_t h, int64_t k) {
    const int64_t p0 = h == 0 ? 0 : half, p1 = h == 0 ? half : np;
    mat.visit([&](const auto& m) {
      arkern_decode::matvec_range<arkern_decode::PixelCNNPacking>(m, p1 - p0, ja, jz, x + p0, y + p0,
                                                                  k * arkern_decode::kTile,
                                                                  (k + 1) * arkern_decode::kTile);
    });
  };
  if (!team->active()) {  // alone: both halves of a tile back to back, while the tile is in L2
    for (int64_t k = 0; k < T; ++k)
      for (int64_t h = 0; h < 2; ++h) chunk(h, k);
    return;
  }
  team->phase(2 * T, [&](int, int64_t c) { chunk(c / T, c % T); });
}

// One term of a split product: inputs [ja, ja + len) of `mat` (ja > 0: the term adds to its output).
struct Term {
  const PMat* mat = nullptr;
  int64_t ja = 0, len = 0;
  const float* const* x = nullptr;  // x[p][0] is input ja of position p
};

// y[p] += (the terms of half 0) and, from zero, z[p] = (the terms of half 1); then y[p] += z[p], for `rows`
// positions; every term's matrix has mp (padded) outputs. One team phase of (half, output tile) chunks: with
// two workers each streams one half of the weights. Each output is summed in the same order whoever runs it.
inline void split_product(const Term* h0, int n0, const Term* h1, int n1, int64_t rows, int64_t mp,
                          float* const* y, float* const* z, arkern_team::Session* team) {
  for (int64_t p = 0; p < rows; ++p) std::fill_n(z[p], mp, 0.0f);
  const int64_t T = arkern_decode::tiles(mp);
  const auto chunk = [&](int, int64_t c) {
    const bool second = c >= T;
    const int64_t k = second ? c - T : c;
    const Term* h = second ? h1 : h0;
    for (int t = 0; t < (second ? n1 : n0); ++t)
      h[t].mat->visit([&](const auto& m) {
        arkern_decode::matvec_range<arkern_decode::PixelCNNPacking>(m, rows, h[t].ja, h[t].ja + h[t].len, h[t].x,
                                                                    second ? z : y, k * arkern_decode::kTile,
                                                                    (k + 1) * arkern_decode::kTile);
      });
  };
  if (team != nullptr) {
    team->phase(2 * T, chunk);  // default ownership: worker 0 half 0, worker 1 half 1
  } else {
    for (int64_t c = 0; c < 2 * T; ++c) chunk(0, c);
  }
  for (int64_t p = 0; p < rows; ++p)
    for (int64_t m = 0; m < mp; ++m) y[p][m] += z[p][m];
}

// A shifted conv's weights and geometry (shared by all groups).
struct ConvSpec {
  PMat mat;
  int64_t kh, kw, top, left, right, cin, stride, W;  // W: the input map's width
};

// One group's cache of a conv's input: the last kh rows of the zero-padded input map (top kh - 1 rows,
// `left` / `right` columns of zeros), a ring in which padded row pi lives in slot pi % kh, channel fastest.
// An output row i reads the kh consecutive padded rows i * stride .. i * stride + kh - 1 (distinct slots).
// The decode schedule keeps the ring valid: an input row (or, in the per-pixel `ul` stream, an input pixel)
// is written only once every output that reads the row it replaces has been computed (or, for a row-split
// conv, once the row pass that reads it has run), i.e. after output row (or pixel) i of a stride-s conv, the
// next write is padded row i * s + kh at the earliest; and every output reads only columns that the current
// row has already written. The padding columns are never written; the top padding rows are zero until the
// first outputs, which read them, are done.
//
// A row-split conv (the `ul` stream's (2, 2) convs) computes its outputs in two parts: once per output row,
// `top` = b + W (top kernel row) for every column (row_pass: the input row above, known when the row starts,
// many columns sharing each weight tile); per pixel, the bottom kernel row's two taps (left: input column
// j - 1, right: column j of the current input row) as the two halves of a split_product.
//
// On AMX tiles (`tiles`: every product of the conv runs there) the ring holds the inputs as bfloat16 bits
// (cache16, the same layout) instead of float32 values rounded to bfloat16: the tiles' input block gets each
// window by copying its runs, not by rounding them again, and the ring is half the bytes. Where every kernel
// row's run is whole 32-input blocks (kw * cin a multiple of 32), a tile of 16 positions that are one batch
// row's consecutive columns reads their windows where the ring holds them, rows cin * stride elements apart
// (rows_at, tiles_product_at: the row passes at the scales 16 or more columns wide); the other tiles' windows
// are copied. The ring starts on a 64-byte boundary, so a tile row's 32 inputs are one cache line when cin is a
// multiple of 32 (rows 64 bytes apart or more; else some rows straddle two lines: slower, the same values).
struct Conv {
  const ConvSpec* s;
  std::vector<float> cache, top;
  arkern_amx::line_vector<uint16_t> cache16;
  int64_t slots, cols, out_w = 0;
  bool tiles = false;
  void reset(const ConvSpec& spec, int64_t nb, bool row_split = false, bool on_tiles = false) {
    s = &spec;
    slots = spec.kh;
    cols = spec.W + spec.left + spec.right;
    tiles = on_tiles && spec.mat.t[0] != nullptr;
    if (tiles) {
      cache16.assign(nb * slots * cols * spec.cin, 0);
    } else {
      cache.assign(nb * slots * cols * spec.cin, 0.0f);
    }
    if (row_split) {
      TORCH_CHECK(spec.kh == 2 && spec.kw == 2, "pixelcnnpp_generate: a row-split conv must be (2, 2)");
      out_w = spec.W / spec.stride;
      top.assign(nb * out_w * spec.mat.mp, 0.0f);
    }
  }
  // Padded row pi, padded column pj of batch row b.
  float* at(int64_t b, int64_t pi, int64_t pj) {
    return cache.data() + ((b * slots + pi % slots) * cols + pj) * s->cin;
  }
  uint16_t* at16(int64_t b, int64_t pi, int64_t pj) {
    return cache16.data() + ((b * slots + pi % slots) * cols + pj) * s->cin;
  }
  uint16_t* slot16(int64_t b, int64_t i, int64_t j) { return at16(b, s->top + i, s->left + j); }
  // The tiles can read the windows in the ring: every kernel row's run is whole 32-input blocks.
  bool in_place() const { return s->kw * s->cin % arkern_amx::kTileK == 0; }
  // The 32-input blocks of kernel rows 0 .. kr - 1 of the windows of positions p[0 .. 15] (nr >= 16 of them
  // given) as they lie in the ring: xk[k] block k of p[0]'s window, *ld the elements between two positions'
  // windows; false unless the 16 are one batch row's consecutive columns of one output row.
  bool rows_at(const Pos* p, int64_t nr, int64_t kr, const uint16_t** xk, int64_t* ld) {
    if (nr < arkern_amx::kTileRows) return false;
    for (int64_t q = 1; q < arkern_amx::kTileRows; ++q)
      if (p[q].b != p[0].b || p[q].i != p[0].i || p[q].j != p[0].j + q) return false;
    const int64_t kbr = s->kw * s->cin / arkern_amx::kTileK;
    for (int64_t t = 0; t < kr; ++t) {
      const uint16_t* base = at16(p[0].b, p[0].i * s->stride + t, p[0].j * s->stride);
      for (int64_t c = 0; c < kbr; ++c) xk[t * kbr + c] = base + c * arkern_amx::kTileK;
    }
    *ld = s->stride * s->cin;
    return true;
  }
  // Input (i, j) of batch row b, stored as the conv's products read it (matrix_input).
  void write(int64_t b, int64_t i, int64_t j, const float* x) {
    if (tiles) {
      arkern_amx::to_bf16(x, s->cin, slot16(b, i, j));
      return;
    }
    float* dst = slot(b, i, j);
    if (s->mat.bf16) {
      arkern_amx::round_bf16(x, s->cin, dst);
    } else {
      std::copy_n(x, s->cin, dst);
    }
  }
  float* slot(int64_t b, int64_t i, int64_t j) { return at(b, s->top + i, s->left + j); }  // input (i, j)
  // out[p] = b + W (window of output pos[p]) for np positions.
  void compute(const Pos* pos, int64_t np, float* const* out, Scratch& sc) {
    const int64_t run = s->kw * s->cin;
    if (tiles && in_place()) {  // each window read where the ring holds it, where it can be (rows_at)
      tiles_product_at(s->mat.t[0], s->mat.n, s->mat.mp, np, kTilePiece, s->mat.b, out,
                       [&](int64_t r0, const uint16_t** xk, int64_t* ld) {
                         return rows_at(pos + r0, np - r0, s->kh, xk, ld);
                       },
                       [&](uint16_t* dst, int64_t p) {
                         for (int64_t t = 0; t < s->kh; ++t)
                           std::copy_n(at16(pos[p].b, pos[p].i * s->stride + t, pos[p].j * s->stride), run,
                                       dst + t * run);
                       });
      return;
    }
    if (tiles) {  // each window's kernel rows copied from the ring into the tiles' input block
      tiles_product_from(s->mat.t[0], s->mat.n, nullptr, 0, s->mat.mp, np, s->mat.b, nullptr, out,
                         [&](arkern_amx::Batch& batch, int64_t q, int64_t p) {
                           for (int64_t t = 0; t < s->kh; ++t)
                             std::copy_n(at16(pos[p].b, pos[p].i * s->stride + t, pos[p].j * s->stride), run,
                                         batch.row(q) + t * run);
                         });
      return;
    }
    for (int64_t p = 0; p < np; ++p) {
      for (int64_t t = 0; t < s->kh; ++t)
        std::copy_n(at(pos[p].b, pos[p].i * s->stride + t, pos[p].j * s->stride), run, sc.gat[p] + t * run);
      sc.in[p] = sc.gat[p];
    }
    rows_product(s->mat, np, 0, s->mat.n, sc.in.data(), out, sc);
  }
  // Row-split: the top kernel row's part of output pos[p] (one row's positions).
  float* top_at(const Pos& p) { return top.data() + (p.b * out_w + p.j) * s->mat.mp; }
  void row_pass(const Pos* pos, int64_t np, Scratch& sc) {
    if (tiles && in_place()) {  // the top kernel row read where the ring holds it, where it can be (rows_at)
      const int64_t run = s->kw * s->cin;
      for (int64_t p = 0; p < np; ++p) sc.out[p] = top_at(pos[p]);
      tiles_product_at(s->mat.t[0], run, s->mat.mp, np, kTilePiece, s->mat.b, sc.out.data(),
                       [&](int64_t r0, const uint16_t** xk, int64_t* ld) {
                         return rows_at(pos + r0, np - r0, 1, xk, ld);
                       },
                       [&](uint16_t* dst, int64_t p) {
                         std::copy_n(at16(pos[p].b, pos[p].i * s->stride, pos[p].j * s->stride), run, dst);
                       });
      return;
    }
    if (tiles) {
      const int64_t run = s->kw * s->cin;
      for (int64_t p = 0; p < np; ++p) sc.out[p] = top_at(pos[p]);
      tiles_product_from(s->mat.t[0], run, nullptr, 0, s->mat.mp, np, s->mat.b, nullptr, sc.out.data(),
                         [&](arkern_amx::Batch& batch, int64_t q, int64_t p) {
                           std::copy_n(at16(pos[p].b, pos[p].i * s->stride, pos[p].j * s->stride), run, batch.row(q));
                         });
      return;
    }
    for (int64_t p = 0; p < np; ++p) {
      sc.in[p] = at(pos[p].b, pos[p].i * s->stride, pos[p].j * s->stride);
      sc.out[p] = top_at(pos[p]);
    }
    rows_product(s->mat, np, 0, s->kw * s->cin, sc.in.data(), sc.out.data(), sc);
  }
  // Row-split, per pixel: y[p] = the top part; the bottom row's taps as two terms (inputs in sc.xs[0], [1]).
  void bottom_terms(const Pos* pos, int64_t np, float* const* y, Scratch& sc, Term* left, Term* right) {
    for (int64_t p = 0; p < np; ++p) {
      std::copy_n(top_at(pos[p]), s->mat.mp, y[p]);
      sc.xs[0][p] = at(pos[p].b, pos[p].i * s->stride + 1, pos[p].j * s->stride);
      sc.xs[1][p] = sc.xs[0][p] + s->cin;
    }
    *left = {&s->mat, 2 * s->cin, s->cin, sc.xs[0].data()};
    *right = {&s->mat, 3 * s->cin, s->cin, sc.xs[1].data()};
  }
  // On tiles: out[p] = top part + the bottom row's two taps (one run of the ring), and with n2 > 0 the columns
  // W2 (tiles t2) times x2[p] (n2 float32 values, rounded as they go into the tiles), in one tile product.
  void bottom_product(const Pos* pos, int64_t np, const uint16_t* t2, int64_t n2, const float* const* x2,
                      float* const* out, Scratch& sc) {
    const int64_t run = 2 * s->cin;
    for (int64_t p = 0; p < np; ++p) sc.xs[1][p] = top_at(pos[p]);
    tiles_product_from(s->mat.t[1], run, t2, n2, s->mat.mp, np, nullptr, sc.xs[1].data(), out,
                       [&](arkern_amx::Batch& batch, int64_t q, int64_t p) {
                         std::copy_n(at16(pos[p].b, pos[p].i * s->stride + 1, pos[p].j * s->stride), run,
                                     batch.row(q));
                         if (n2 > 0) batch.put(q, batch.second(), x2[p], n2);
                       });
  }
  // Row-split, per pixel: out[p] = the whole output at pos[p] (top part + bottom row).
  void compute_split(const Pos* pos, int64_t np, float* const* out, Scratch& sc) {
    if (tiles) {
      bottom_product(pos, np, nullptr, 0, nullptr, out, sc);
      return;
    }
    Term left, right;
    bottom_terms(pos, np, out, sc, &left, &right);
    split_product(&left, 1, &right, 1, np, s->mat.mp, out, sc.z.data(), sc.team);
  }
};

// A gated resnet: x + a * sigmoid(b), [a, b] = conv_out(concat_elu(conv_in(concat_elu(x)) + nin(concat_elu(aux)))).
struct BlockSpec {
  ConvSpec conv_in, conv_out;
  PMat nin;               // n == 0: no auxiliary input
  int64_t aux_parts;      // f-vectors concatenated into the auxiliary input (0, 1 or 2)
};

struct Block {
  const BlockSpec* s;
  Conv conv_in, conv_out;
  void reset(const BlockSpec& spec, int64_t nb, bool row_split = false, bool on_tiles = false) {
    s = &spec;
    conv_in.reset(spec.conv_in, nb, row_split, on_tiles);
    conv_out.reset(spec.conv_out, nb, row_split, on_tiles);
  }
  // The concat_elu of v[p], [elu(v[p]), elu(-v[p])], written into conv's input window at pos[p].
  static void write_concat_elu(Conv& conv, const Pos* pos, int64_t np, int64_t f, const float* const* v,
                               Scratch& sc) {
    if (conv.tiles) {  // through a float32 scratch row into the bfloat16 ring
      for (int64_t p = 0; p < np; ++p) {
        float* d = sc.t1[0];
        elu_pair(v[p], f, d, d + f);
        arkern_amx::to_bf16(d, 2 * f, conv.slot16(pos[p].b, pos[p].i, pos[p].j));
      }
      return;
    }
    for (int64_t p = 0; p < np; ++p) {  // straight into the ring (Conv::write's rounding in place)
      float* d = conv.slot(pos[p].b, pos[p].i, pos[p].j);
      elu_pair(v[p], f, d, d + f);
      matrix_input(conv.s->mat, d, 2 * f);
    }
  }
  // The block's second half, from conv_in's outputs (plus the nin's) in sc.c: conv_out on their concat_elu
  // (split: its bottom row only, after its row pass), then out[p] = x[p] + gate.
  void finish(const Pos* pos, int64_t np, int64_t f, const float* const* x, float* const* out, Scratch& sc,
              bool split) {
    write_concat_elu(conv_out, pos, np, f, sc.c.data(), sc);
    if (split) {
      conv_out.compute_split(pos, np, sc.a.data(), sc);
    } else {
      conv_out.compute(pos, np, sc.a.data(), sc);
    }
    for (int64_t p = 0; p < np; ++p) gated_residual(x[p], sc.a[p], sc.a[p] + f, f, out[p]);
  }

  // out[p] = block(x[p], aux) at positions pos; aux1[p] (and aux2[p]) are f-vectors. out may alias x.
  void run(const Pos* pos, int64_t np, int64_t f, const float* const* x, const float* const* aux1,
           const float* const* aux2, float* const* out, Scratch& sc) {
    write_concat_elu(conv_in, pos, np, f, x, sc);
    conv_in.compute(pos, np, sc.c.data(), sc);
    if (s->aux_parts > 0) {
      const int64_t na = s->aux_parts * f;
      for (int64_t p = 0; p < np; ++p) {
        elu_pair(aux1[p], f, sc.t2[p], sc.t2[p] + na);
        if (s->aux_parts == 2) elu_pair(aux2[p], f, sc.t2[p] + f, sc.t2[p] + na + f);
        matrix_input(s->nin, sc.t2[p], 2 * na);
        sc.in[p] = sc.t2[p];
      }
      rows_product(s->nin, np, 0, s->nin.n, sc.in.data(), sc.a.data(), sc);
      for (int64_t p = 0; p < np; ++p)
        for (int64_t k = 0; k < f; ++k) sc.c[p][k] += sc.a[p][k];
    }
    finish(pos, np, f, x, out, sc, false);
  }

  // Row-split block (the `ul` stream), once per row of its scale, at every column of the row (pos): the
  // parts of its two convs that see only the row above, and its nin on the `u` stream's values u[p] (all of
  // the auxiliary input with one part, the first part with two), which the `u` stream computed for the row.
  // The nin's columns: [elu(u), elu(-u)] with one part; [elu(u), elu(ul), elu(-u), elu(-ul)] with two.
  void row_pass(const Pos* pos, int64_t np, int64_t f, const float* const* u, Scratch& sc) {
    conv_in.row_pass(pos, np, sc);
    if (s->aux_parts > 0) {
      for (int64_t p = 0; p < np; ++p) {
        elu_pair(u[p], f, sc.t2[p], sc.t2[p] + f);
        matrix_input(s->nin, sc.t2[p], 2 * f);
        sc.in[p] = sc.t2[p];
        sc.xs[0][p] = sc.t2[p] + f;
      }
      if (s->aux_parts == 1) {
        rows_product(s->nin, np, 0, s->nin.n, sc.in.data(), sc.a.data(), sc);
      } else if (sc.tiles && s->nin.t[0] != nullptr) {  // the `u` columns as one group: [elu(u), elu(-u)]
        tiles_product(s->nin.t[0], 2 * f, s->nin.mp, np, sc.in.data(), s->nin.b, sc.a.data());
      } else {
        rows_product(s->nin, np, 0, f, sc.in.data(), sc.a.data(), sc);
        rows_product(s->nin, np, 2 * f, 3 * f, sc.xs[0].data(), sc.a.data(), sc);
      }
      for (int64_t p = 0; p < np; ++p) {
        float* t = conv_in.top_at(pos[p]);
        for (int64_t k = 0; k < f; ++k) t[k] += sc.a[p][k];
      }
    }
    conv_out.row_pass(pos, np, sc);
  }

  // Row-split block per pixel (positions pos, one per batch row, after row_pass for their row): as run, the
  // convs' bottom rows and the nin's `ul` part (aux2[p], with two parts) added to the row pass's parts.
  void run_split(const Pos* pos, int64_t np, int64_t f, const float* const* x, const float* const* aux2,
                 float* const* out, Scratch& sc) {
    write_concat_elu(conv_in, pos, np, f, x, sc);
    if (s->aux_parts == 2) {
      for (int64_t p = 0; p < np; ++p) {
        elu_pair(aux2[p], f, sc.t2[p], sc.t2[p] + f);
        matrix_input(s->nin, sc.t2[p], 2 * f);
        sc.xs[2][p] = sc.t2[p];
        sc.xs[3][p] = sc.t2[p] + f;
      }
    }
    if (conv_in.tiles) {  // top part + the bottom row's taps + the nin's `ul` part
      const bool nin = s->aux_parts == 2;
      TORCH_CHECK(!nin || s->nin.t[1] != nullptr, "pixelcnnpp_generate: a two-part nin without its AMX copy");
      conv_in.bottom_product(pos, np, nin ? s->nin.t[1] : nullptr, nin ? 2 * f : 0, sc.xs[2].data(), sc.c.data(), sc);
      finish(pos, np, f, x, out, sc, true);
      return;
    }
    Term h0[2], h1[2];
    conv_in.bottom_terms(pos, np, sc.c.data(), sc, &h0[0], &h1[0]);
    int nt = 1;
    if (s->aux_parts == 2) {
      h0[1] = {&s->nin, f, f, sc.xs[2].data()};
      h1[1] = {&s->nin, 3 * f, f, sc.xs[3].data()};
      nt = 2;
    }
    split_product(h0, nt, h1, nt, np, s->conv_in.mat.mp, sc.c.data(), sc.z.data(), sc.team);
    finish(pos, np, f, x, out, sc, true);
  }
};

}  // namespace arkern_pixelcnnpp
