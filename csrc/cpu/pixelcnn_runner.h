// The program of the pixelcnn_generate CPU kernel (pixelcnn_decode.cpp): the packed matrices and caches of
// a PixelCNN / Gated PixelCNN, one batch-row group's run over image rows, and the head and draw. The two
// families' per-row and per-pixel steps are in pixelcnn_steps.h and gated_pixelcnn_steps.h, their elementwise
// rows in pixelcnn_rows.h.
//
// Colour sub-step g computes only output group g of every layer: with colour-group masks, output group g
// at pixel (i, j) depends there only on input groups <= g (mask B) or < g (mask A), which earlier
// sub-steps made final. A pixel therefore costs one pass through the network whatever the colour count.
//
// Weights (packed by arkern.models.pixelcnn_packing): one matrix per (layer, output group) holding only
// the taps the mask keeps, columns ordered (kernel row, kernel column, input channel) like the caches,
// packed as described in pixelcnn_decode.h; float32 or bfloat16 with float32 accumulation, or float64.
//
// Caches: per conv with a spatial kernel and per batch row, a ring of the layer's input rows,
// (rows, W + 2 pad, Cin) channel fastest, image row i in slot i % rows: one kernel row of taps is one
// contiguous run. Pad columns stay zero, rows above the image read as zero; row_begin == 0 clears them.
// Gated PixelCNN: the vertical stack runs once per image row over all columns (many columns share each
// weight tile), leaving per layer the 1x1 link row that the horizontal stack adds pixel by pixel.
//
// config = [kind, C, K, h, depth, kh_a, kw_a, kh_b, kw_b, E, residual, aligned, kh_0, kw_0, kwh_0, hh,
//           head_relu] (arkern.reference.pixelcnn_decode.PixelCNNLayout):
//   the image input: level v of colour group g is the E values table[v] (the model's prepare: E = 1 and
//     table[v] = its scaling of v, or a learned embedding), input channels C*E;
//   kind 0 PixelCNN: mask-A (kh_a, kw_a) input conv, `depth` blocks (relu, (kh_b, kw_b) mask-B conv, and if
//     `residual` relu, 1x1 mask-B conv, skip); then the head. Matrices, each over C groups: input conv,
//     per block [kxk(, 1x1)], head 1x1, head 1x1. Caches: input conv, then one per block.
//   kind 1 Gated PixelCNN: `depth` layers of vertical 'down' conv -> 2h, 1x1 link 2h -> 2h, horizontal
//     (1, kw) masked conv -> 2h (mask A first), gate, 1x1 mask-B conv h -> h, residual from the second
//     layer; then the head. Kernels: layer 0 vertical (kh_0, kw_0), horizontal kwh_0; the others (kh_a,
//     kw_a), kw_b. aligned 0: the link takes the vertical pre-activations (class bias included) of the row
//     above; aligned 1: the vertical stack reads the image shifted down one row and the link takes the same
//     row's pre-activations before the class bias. Matrices per layer: vertical, link (one each), then
//     horizontal and out over C groups; then the head. Caches per layer: vertical, horizontal.
//   head: (relu if head_relu), 1x1 h -> hh, relu, 1x1 hh -> C*K.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "pixelcnn_decode.h"
#include "pixelcnn_rows.h"
#include "team.h"

namespace arkern_pixelcnn {

constexpr int64_t kChunk = 64;    // (row, column) pairs per product in the vertical pass
constexpr int64_t kRowPiece = 8;  // (row, column) pairs per product in the PixelCNN row pass
constexpr int64_t kTileRowPiece = 64;  // the same on AMX tiles (4 tiles of 16 rows share every weight tile)

struct Dims {
  int64_t kind, C, K, h, depth, kh_a, kw_a, kh_b, kw_b, E, residual, aligned, kh_0, kw_0, kwh_0, hh, head_relu;
  int64_t cin(int64_t l) const { return l == 0 ? C * E : h; }  // Gated layer l's (and PixelCNN's first) inputs
  int64_t khv(int64_t l) const { return l == 0 ? kh_0 : kh_a; }  // Gated layer l's kernels
  int64_t kwv(int64_t l) const { return l == 0 ? kw_0 : kw_a; }
  int64_t kwh(int64_t l) const { return l == 0 ? kwh_0 : kw_b; }
};
constexpr size_t kConfigInts = 17;

// (m, n) of every packed matrix, in the order of the weight list.
inline std::vector<std::pair<int64_t, int64_t>> matrix_shapes(const Dims& d) {
  std::vector<std::pair<int64_t, int64_t>> s;
  const auto masked = [&](int64_t cin, int64_t cout, int64_t kh, int64_t kw, bool mask_a) {
    for (int64_t g = 0; g < d.C; ++g)
      s.emplace_back(cout / d.C, (kh / 2) * kw * cin + (kw / 2) * cin + (mask_a ? g : g + 1) * (cin / d.C));
  };
  if (d.kind == 0) {
    masked(d.cin(0), d.h, d.kh_a, d.kw_a, true);
    for (int64_t k = 0; k < d.depth; ++k) {
      masked(d.h, d.h, d.kh_b, d.kw_b, false);
      if (d.residual) masked(d.h, d.h, 1, 1, false);
    }
  } else {
    for (int64_t l = 0; l < d.depth; ++l) {
      s.emplace_back(2 * d.h, d.khv(l) * d.kwv(l) * d.cin(l));
      s.emplace_back(2 * d.h, 2 * d.h);
      masked(d.cin(l), 2 * d.h, 1, d.kwh(l), l == 0);
      masked(d.h, d.h, 1, 1, false);
    }
  }
  masked(d.h, d.hh, 1, 1, false);
  masked(d.hh, d.C * d.K, 1, 1, false);
  return s;
}

// Per matrix, the input where its AMX copy is cut in two (0: not cut): the PixelCNN's spatial convs multiply
// the taps of the rows above once per image row and those of the current row per pixel.
inline std::vector<int64_t> tile_splits(const Dims& d) {
  std::vector<int64_t> s(matrix_shapes(d).size(), 0);
  if (d.kind == 0) {
    const int64_t per_block = d.residual ? 2 : 1;
    for (int64_t g = 0; g < d.C; ++g) s[g] = (d.kh_a / 2) * d.kw_a * d.cin(0);
    for (int64_t k = 0; k < d.depth; ++k)
      for (int64_t g = 0; g < d.C; ++g) s[(1 + per_block * k) * d.C + g] = (d.kh_b / 2) * d.kw_b * d.h;
  }
  return s;
}

// (ring rows, columns, channels) of every cache for images of width W, in the order of the cache list.
inline std::vector<std::array<int64_t, 3>> cache_shapes(const Dims& d, int64_t W) {
  std::vector<std::array<int64_t, 3>> s;
  if (d.kind == 0) {
    s.push_back({d.kh_a / 2 + 1, W + 2 * (d.kw_a / 2), d.cin(0)});
    for (int64_t k = 0; k < d.depth; ++k) s.push_back({d.kh_b / 2 + 1, W + 2 * (d.kw_b / 2), d.h});
  } else {
    for (int64_t l = 0; l < d.depth; ++l) {
      s.push_back({d.khv(l), W + 2 * (d.kwv(l) / 2), d.cin(l)});
      s.push_back({1, W + 2 * (d.kwh(l) / 2), d.cin(l)});
    }
  }
  return s;
}

// One batch row's cache of one layer.
template <typename T>
struct Ring {
  T* p;
  int64_t rows, cols, cin;
  T* at(int64_t i, int64_t col) const { return p + ((i % rows) * cols + col) * cin; }  // i >= 0

  // The taps of an output whose window starts at cache column `col`: `full` whole kernel rows of kw
  // columns from image row `top` (zero above the image), then `tail` values of the next row.
  void gather(int64_t top, int64_t full, int64_t col, int64_t kw, int64_t tail, T* dst) const {
    const int64_t run = kw * cin;
    for (int64_t t = 0; t < full; ++t, dst += run) {
      if (top + t < 0) {
        std::fill(dst, dst + run, T(0));
      } else {
        std::copy_n(at(top + t, col), run, dst);
      }
    }
    if (tail > 0) std::copy_n(at(top + full, col), tail, dst);
  }
};

template <typename T, typename WT>
struct Runner {
  Dims d;
  int64_t B, H, W, row_begin, row_end;
  std::vector<Mat<T, WT>> mats;
  std::vector<const uint16_t*> tiles;  // per matrix its AMX copy (bfloat16 packs on AMX machines), else empty
  std::vector<int64_t> splits;         // tile_splits
  bool on_tiles = false;               // the products run on the AMX copies (bfloat16, amx level selected)
  std::vector<std::array<int64_t, 3>> cshape;
  std::vector<T*> caches;
  int64_t* image;
  const double* noise;
  const T* table;          // (K, E): the input values of each level
  const T* cond;           // (B, depth, 2h) or null
  const int64_t* forced;   // (B, C, H, W) or null
  T* logits_out;           // (B, rows, W, C*K) or null

  // Index of a matrix in `mats` (see matrix_shapes for the order).
  int64_t px(int64_t layer, int64_t g) const { return layer * d.C + g; }  // PixelCNN layer, group
  int64_t per_block() const { return d.residual ? 2 : 1; }  // PixelCNN matrices per block
  int64_t gx(int64_t l, int64_t k) const { return l * (2 + 2 * d.C) + k; }  // Gated layer l, k-th matrix
  int64_t head(int64_t which, int64_t g) const {
    return static_cast<int64_t>(mats.size()) - (2 - which) * d.C + g;
  }

  Ring<T> ring(size_t c, int64_t row) const {
    const auto& s = cshape[c];
    return {caches[c] + row * s[0] * s[1] * s[2], s[0], s[1], s[2]};
  }

  // out = tanh(a) * sigmoid(b) (n values): on AMX tiles by gate_parts (one polynomial per exponential, one
  // reciprocal, within a few float32 ulps of gate), whose cost matters next to the tiles' speed; elsewhere by
  // gate, as the float32 precision.
  void gate_row(const T* a, const T* b, T* out, int64_t n) const {
    if constexpr (std::is_same_v<T, float>) {
      if (on_tiles) {
        arkern_decode::gate_parts(a, b, out, n);
        return;
      }
    }
    gate(a, b, out, n);
  }

  // Per-group scratch (every buffer one per batch row of the group).
  struct Scratch {
    arkern_amx::line_vector<T> mem;
    std::vector<T*> gat, y, x, act, hin1, hin2, pg, pv, part, yp;
    T* link = nullptr;       // Gated: the link rows, (layer, column slot, batch row, pad16(2h)) (link_at)
    // Gated on AMX tiles with bfloat16 rings for every layer after the first (init_shadows): those layers' link
    // and horizontal conv are one tile pass per pixel (link_horizontal) from the link's bfloat16 inputs, vlink
    // ((layer, column, 32-input block, row of the group, 32), vlink_at), written by the vertical stack; their
    // link rows are needed only on image row 0 (aligned 0: all the bias, one column). Per layer the columns of
    // link rows kept (column j in slot j % lcol[l], lcol[l] = W or 1) and the first slot's index.
    bool fused = false;
    arkern_amx::line_vector<uint16_t> vlink;
    std::vector<int64_t> lcol, loff;
    int64_t rows = 0;        // the group's batch rows
    int64_t lrows = 0;       // link rows per (layer, column): the group's rows, on AMX tiles padded to 16
    // Gated on AMX tiles: per layer and row (pad_rows(rows) rows of pad16(2h)), what the tiles' sums start from
    // — the vertical conv's bias plus the row's class bias (v0), the horizontal convs' biases plus the class
    // bias (hx), and hx plus the link's bias (l0): the link rows then hold all a pixel adds to its horizontal
    // conv, whose tiles start from them (link_start).
    arkern_amx::line_vector<T> v0, hx, l0;
    int64_t pstride = 0;     // floats per partial-sum vector (the largest padded spatial-conv height)
    bool whole_convs = false;  // on AMX tiles with a full tile of rows: every spatial conv in one product per pixel
    std::vector<const T*> in;
    std::vector<double> u;   // the rows' uniforms of one draw
    std::vector<int64_t> v;  // the rows' drawn levels
    // On AMX tiles: per cache whose taps come in 32-input blocks of one column (init_shadows), its ring in
    // bfloat16 as the tiles read it, else empty; a column of zeros (the rows above the image); the tiles'
    // input blocks and products.
    std::vector<arkern_amx::line_vector<uint16_t>> shadow;
    arkern_amx::line_vector<uint16_t> zeros;
    std::vector<const uint16_t*> xk;
    int64_t ldy = 0;  // floats between two rows of y
    arkern_team::Session* team = nullptr;  // splits products over output tiles (csrc/cpu/team.h)
  };

  void run(int64_t r0, int64_t nb, Sampler& sampler, arkern_team::Session& team) const {
    const int64_t h = d.h, L = d.depth;
    int64_t max_n = 0, max_mp = 0;
    for (const auto& m : mats) {
      max_n = std::max(max_n, m.n);
      max_mp = std::max(max_mp, m.mp);
    }
    const int64_t act = (d.kind == 0 ? d.depth : L) * h;  // block / layer 1x1 inputs at the current pixel
    const int64_t hp = pad16(2 * h);
    Scratch s;
    // Fused where every layer after the first has both bfloat16 rings (the conditions of init_shadows).
    s.fused = on_tiles && d.kind == 1 && ARKERN_HAVE_AMX && L >= 2 && nb % arkern_amx::kTileRows == 0 &&
              h % arkern_amx::kTileK == 0 && (h / d.C) % arkern_amx::kTileK == 0;
    int64_t link = 0;
    for (int64_t l = 0; l < (d.kind == 1 ? L : 0); ++l) {
      s.loff.push_back(link / hp);
      s.lcol.push_back(s.fused && l > 0 ? 1 : W);
      link += s.lcol.back() * hp;
    }
    if (s.fused) s.vlink.assign(static_cast<size_t>((L - 1) * W * nb * 2 * h), uint16_t{0});
    int64_t n_v = 0;  // the vertical convs' taps
    if (d.kind == 1)
      for (int64_t l = 0; l < L; ++l) n_v = std::max(n_v, d.khv(l) * d.kwv(l) * d.cin(l));
    // PixelCNN: per spatial conv, output group and column, the partial sums over the rows above.
    int64_t part_mp = 0, n_above = 0;
    if (d.kind == 0)
      for (int64_t c = 0; c <= d.depth; ++c) {
        n_above = std::max(n_above, conv(c).above);
        for (int64_t g = 0; g < d.C; ++g) part_mp = std::max(part_mp, mats[px(conv(c).layer, g)].mp);
      }
    // On AMX tiles with at least a tile of rows, each pixel multiplies its whole window at once (its rows
    // fill the tiles, as many columns did in the row pass), so no partial sums are kept.
    const bool whole_convs = on_tiles && nb >= arkern_amx::kTileRows;
    const int64_t part = n_above > 0 && !whole_convs ? (1 + d.depth) * d.C * W * part_mp : 0;
    // On AMX tiles the product rows are 16 floats longer than the widest product: the tiles store 16 rows at
    // a stride of ldy floats, and at a multiple of 1 KB they fall into a quarter of the L1 sets (evicting each
    // other before the next pass reads them).
    const int64_t ldy = on_tiles ? max_mp + 16 : max_mp;
    // On AMX tiles every row starts on a cache line (the buffer does: line_vector), as the tiles need (amx.h).
    constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
    const auto line = [&](int64_t n) { return on_tiles ? (n + kLine - 1) / kLine * kLine : n; };
    const int64_t per_row = line(max_n) + ldy + line(h) + line(act) + line(h) + line(d.hh) + link + line(part);
    // On AMX tiles every per-row buffer has pad_rows(nb) rows: the tiles store their padding rows too.
    const int64_t nr = on_tiles ? arkern_amx::pad_rows(nb) : nb;
    s.mem.assign(nr * per_row + (d.kind == 1 ? kChunk * (line(n_v) + hp) : 0), T(0));
    T* p = s.mem.data();
    const auto carve = [&p](std::vector<T*>& v, int64_t count, int64_t size) {
      v.resize(count);
      for (auto& q : v) { q = p; p += size; }
    };
    carve(s.gat, nr, line(max_n));
    carve(s.y, nr, ldy);
    carve(s.x, nr, line(h));
    carve(s.act, nr, line(act));
    carve(s.hin1, nr, line(h));
    carve(s.hin2, nr, line(d.hh));
    s.link = p;
    p += nr * link;
    s.rows = nb;
    s.lrows = nr;
    carve(s.part, nr, line(part));
    if (d.kind == 1) {
      carve(s.pg, kChunk, line(n_v));
      carve(s.pv, kChunk, hp);
    }
    s.yp.resize(std::max(nb, kChunk));
    s.pstride = part_mp;
    s.ldy = ldy;
    s.whole_convs = whole_convs;
    s.in.resize(std::max(nb, kChunk));
    s.u.resize(nb);
    s.v.resize(nb);
    s.team = &team;
    std::optional<arkern_amx::TileScope> tile_scope;  // one tile configuration for the whole run
    if (on_tiles) tile_scope.emplace();
    if (row_begin == 0) {
      for (size_t c = 0; c < caches.size(); ++c)
        for (int64_t b = 0; b < nb; ++b) {
          const Ring<T> r = ring(c, r0 + b);
          std::fill(r.p, r.p + r.rows * r.cols * r.cin, T(0));
        }
    }
    if (on_tiles) init_shadows(r0, nb, s);
    if (on_tiles && d.kind == 1) init_starts(r0, nb, s);
    for (int64_t i = row_begin; i < row_end; ++i) {
      if (d.kind == 1) {
        gated_row(i, r0, nb, s);
      } else {
        pixelcnn_row(i, r0, nb, s);
      }
      for (int64_t j = 0; j < W; ++j)
        for (int64_t g = 0; g < d.C; ++g) {
          if (d.kind == 0) {
            pixelcnn_step(i, j, g, r0, nb, s);
          } else {
            gated_step(i, j, g, r0, nb, s);
          }
          head_and_draw(i, j, g, r0, nb, s, sampler);
        }
      team.step_done();
    }
  }

  void product(const Mat<T, WT>& m, int64_t nb, const std::vector<T*>& x, Scratch& s, T* const* y) const {
    for (int64_t b = 0; b < nb; ++b) s.in[b] = x[b];
    mv(m, nb, 0, m.n, s.in.data(), y, s.team);
  }

  // Inputs [ja, jz) of y = b + W x in the pack's precision, on the AMX copy of that range when there is one
  // (output tiles split over `team` as matvec_range otherwise).
  void mv(const Mat<T, WT>& m, int64_t nb, int64_t ja, int64_t jz, const T* const* x, T* const* y,
          arkern_team::Session* team) const {
    const uint16_t* t = nullptr;
    const size_t k = static_cast<size_t>(&m - mats.data());
    if (!tiles.empty()) {
      const int64_t cut = splits[k];
      if (ja == 0 && jz == cut && cut > 0) t = tiles[k];
      if (ja == cut && jz == m.n) t = tiles[k] + (cut > 0 ? m.mp * arkern_amx::pad32(cut) : 0);
    }
    product_range(m, nb, ja, jz, x, y, t, team);
  }

  // Spatial conv c of the PixelCNN program: 0 the mask-A input conv, 1 + k the mask-B conv of block k.
  struct Conv {
    int64_t layer, above, kw, centre, cin;  // matrix layer index, kernel rows above, width, kw / 2, inputs
  };
  Conv conv(int64_t c) const {
    if (c == 0) return {0, d.kh_a / 2, d.kw_a, d.kw_a / 2, d.cin(0)};
    return {1 + per_block() * (c - 1), d.kh_b / 2, d.kw_b, d.kw_b / 2, d.h};
  }
  // Gated: the link row of layer l at column j for batch row b of the group. A pixel reads one contiguous run
  // per layer (all the group's rows), so that the hardware prefetchers stream the link rows back from memory.
  T* link_at(const Scratch& s, int64_t b, int64_t l, int64_t j) const {
    return s.link + ((s.loff[l] + (s.lcol[l] == 1 ? 0 : j)) * s.lrows + b) * pad16(2 * d.h);
  }
  // Gated, fused: the 32-input block k of layer l's (> 0) link inputs at column j, for the group's rows (vlink).
  uint16_t* vlink_at(Scratch& s, int64_t l, int64_t j, int64_t k) const {
    return s.vlink.data() + ((((l - 1) * W + j) * (2 * d.h / arkern_amx::kTileK) + k) * s.rows) * arkern_amx::kTileK;
  }
  // Gated on AMX tiles: row b of layer l's v0 / hx / l0 (Scratch).
  const T* start_row(const Scratch& s, const arkern_amx::line_vector<T>& v, int64_t l, int64_t b) const {
    return v.data() + (l * s.lrows + b) * pad16(2 * d.h);
  }

  // Gated on AMX tiles: Scratch's v0, hx and l0 for the group of nb rows from r0 (the padding rows without a
  // class bias). aligned 1: the link takes the vertical pre-activations before the class bias, so v0 has none.
  void init_starts(int64_t r0, int64_t nb, Scratch& s) const {
    const int64_t L = d.depth, h = d.h, hp = pad16(2 * h), nr = s.lrows, hg2 = 2 * h / d.C;
    for (auto* v : {&s.v0, &s.hx, &s.l0}) v->assign(static_cast<size_t>(L * nr * hp), T(0));
    for (int64_t l = 0; l < L; ++l)
      for (int64_t b = 0; b < nr; ++b) {
        const T* c = cond != nullptr && b < nb ? cond + ((r0 + b) * L + l) * 2 * h : nullptr;
        T* v0 = const_cast<T*>(start_row(s, s.v0, l, b));
        T* hx = const_cast<T*>(start_row(s, s.hx, l, b));
        T* l0 = const_cast<T*>(start_row(s, s.l0, l, b));
        const T* vb = mats[gx(l, 0)].b;
        const T* lb = mats[gx(l, 1)].b;
        for (int64_t m = 0; m < 2 * h; ++m) {
          const T cm = c != nullptr ? c[m] : T(0);
          v0[m] = c != nullptr && !d.aligned ? vb[m] + cm : vb[m];
          hx[m] = c != nullptr ? mats[gx(l, 2 + m / hg2)].b[m % hg2] + cm : mats[gx(l, 2 + m / hg2)].b[m % hg2];
          l0[m] = lb[m] + hx[m];
        }
      }
  }

  // On AMX tiles: y (pad_rows(nb) rows, row stride ldy) = c0 + W x for matrix k (c0: row stride ldc, 0: one row
  // for every row), x[b] the m.n inputs of row b rounded into the tile input block (In::relu: relu(x[b]),
  // relu_bf16; In::gate: the gate of x[b] and the m.n values after them, gate_bf16).
  enum class In { put, relu, gate };
  template <In in = In::put>
  void tiles_into(size_t k, int64_t nb, const T* const* x, T* y, int64_t ldy, const T* c0, int64_t ldc) const {
    if constexpr (std::is_same_v<WT, at::BFloat16>) {
      const Mat<T, WT>& m = mats[k];
      arkern_amx::Batch& batch = arkern_amx::thread_batch();
      batch.begin(nb, m.n);
      for (int64_t b = 0; b < nb; ++b) {
        if constexpr (in == In::relu) {
          relu_bf16(x[b], m.n, batch.row(b));
        } else if constexpr (in == In::gate) {
          gate_bf16(x[b], x[b] + m.n, m.n, batch.row(b));
        } else {
          batch.put(b, 0, x[b], m.n);
        }
      }
      batch.multiply_into(tiles[k], nullptr, m.mp, y, ldy, c0, ldc);
    } else {
      (void)k, (void)nb, (void)x, (void)y, (void)ldy, (void)c0, (void)ldc;
    }
  }
  // Where input channel ch (a multiple of 32) of ring row `slot`, column col, batch row b of the group sits in
  // the bfloat16 copy of cache c (Scratch::shadow, init_shadows).
  uint16_t* shadow_at(Scratch& s, int64_t c, int64_t slot, int64_t col, int64_t b, int64_t ch) const {
    const auto& sh = cshape[c];  // ring rows, columns, input channels
    const int64_t r16 = arkern_amx::pad_rows(s.rows);
    return s.shadow[c].data() + (((slot * sh[1] + col) * (sh[2] / arkern_amx::kTileK) + ch / arkern_amx::kTileK) * r16 + b) *
                                    arkern_amx::kTileK + ch % arkern_amx::kTileK;
  }
  T* partial(const Scratch& s, int64_t b, int64_t c, int64_t g, int64_t j) const {
    return s.part[b] + ((c * d.C + g) * W + j) * s.pstride;
  }

  // Tile input row q from column j of ring rg (the AMX paths): `rows` kernel rows of `run` inputs from image
  // row `top` on, each rounded to bfloat16; zeros for the rows above the image (top + t < 0).
  static void put_rows(arkern_amx::Batch& batch, int64_t q, const Ring<T>& rg, int64_t top, int64_t rows,
                       int64_t j, int64_t run) {
    for (int64_t t = 0; t < rows; ++t) {
      if (top + t < 0) {
        std::fill(batch.row(q) + t * run, batch.row(q) + (t + 1) * run, uint16_t{0});
      } else {
        batch.put(q, t * run, rg.at(top + t, j), run);
      }
    }
  }

  // On AMX tiles, the caches of the block convs (PixelCNN, with whole convs) and of the vertical (a group of
  // a multiple of 16 rows) and horizontal stacks (Gated, from the second layer) whose taps come in blocks of 32
  // inputs within one column (input channels and colour groups multiples of 32) keep a bfloat16 copy of their
  // ring: (ring row, column, block of 32 input channels, row of the group (padded to 16 rows of zeros), 32
  // channels), see shadow_at. The tiles then load each window from it directly (a tile is 1 KB in one run),
  // instead of rounding it from the rows' float32 rings into an input block: the same bfloat16 values (to_bf16
  // of the same floats), half the bytes, one contiguous run per column for the prefetchers. The float32 rings
  // keep only the rows a call leaves behind where nothing else reads them (PixelCNN, Gated horizontal).
  void init_shadows(int64_t r0, int64_t nb, Scratch& s) const {
    s.shadow.assign(caches.size(), {});
#if ARKERN_HAVE_AMX
    if constexpr (std::is_same_v<WT, at::BFloat16>) {
      constexpr int64_t kK = arkern_amx::kTileK;
      const int64_t r16 = arkern_amx::pad_rows(nb);
      const auto fits = [&](int64_t cin) { return cin % kK == 0 && (cin / d.C) % kK == 0; };
      std::vector<bool> want(caches.size(), false);
      if (d.kind == 0 && s.whole_convs) {
        for (int64_t c = 1; c <= d.depth; ++c) want[c] = conv(c).above > 0 && fits(conv(c).cin);
      } else if (d.kind == 1) {
        for (int64_t l = 1; l < d.depth; ++l) {
          want[2 * l] = nb % arkern_amx::kTileRows == 0 && fits(d.cin(l));
          want[2 * l + 1] = fits(d.cin(l));
        }
      }
      for (size_t c = 0; c < caches.size(); ++c) {
        if (!want[c]) continue;
        const auto& sh = cshape[c];  // ring rows, columns, input channels
        s.shadow[c].assign(static_cast<size_t>(sh[0] * sh[1] * r16 * sh[2]), uint16_t{0});
        for (int64_t slot = 0; slot < sh[0]; ++slot)
          for (int64_t col = 0; col < sh[1]; ++col)
            for (int64_t b = 0; b < nb; ++b)
              for (int64_t ch = 0; ch < sh[2]; ch += kK)
                arkern_amx::to_bf16(ring(c, r0 + b).at(slot, col) + ch, kK, shadow_at(s, c, slot, col, b, ch));
        s.zeros.assign(std::max(s.zeros.size(), static_cast<size_t>(r16 * kK)), uint16_t{0});
      }
    }
#else
    (void)r0, (void)nb;
#endif
    // The fused Gated path (Scratch::fused, decided before this with the same conditions) keeps one column of
    // link rows per later layer: it needs both rings of every later layer.
    for (int64_t l = 1; s.fused && l < d.depth; ++l)
      TORCH_CHECK(shadowed(s, 2 * l) && shadowed(s, 2 * l + 1), "pixelcnn_generate: internal error: the fused "
                  "Gated path lacks the bfloat16 rings of layer ", l);
  }

  bool shadowed(const Scratch& s, size_t c) const { return c < s.shadow.size() && !s.shadow[c].empty(); }

  // Values n (a multiple of 32) of batch row b from src into the bfloat16 copy of cache c at (slot, col, ch);
  // relu: relu(src), without storing it as float32 (the same values as shadow_put of relu(src)).
  template <bool relu = false>
  void shadow_put(Scratch& s, size_t c, int64_t slot, int64_t col, int64_t b, int64_t ch, const T* src, int64_t n) const {
    if constexpr (std::is_same_v<WT, at::BFloat16>) {
      uint16_t* dst = shadow_at(s, c, slot, col, b, ch);
      const int64_t block = arkern_amx::pad_rows(s.rows) * arkern_amx::kTileK;  // between 32-channel blocks
      for (int64_t q = 0; q < n; q += arkern_amx::kTileK, dst += block) {
        if constexpr (relu) {
          relu_bf16(src + q, arkern_amx::kTileK, dst);
        } else {
          arkern_amx::to_bf16(src + q, arkern_amx::kTileK, dst);
        }
      }
    } else {
      (void)s, (void)c, (void)slot, (void)col, (void)b, (void)ch, (void)src, (void)n;
    }
  }

  // W x on tiles for every row of the group, x the window of cache c read from its bfloat16 copy: `rows`
  // whole kernel rows of kw columns from image row top (zeros above the image), then `tail` inputs of the next
  // row, from column col; w: the matrix m's AMX copy, cut after its first `cut` inputs (tile_splits; 0: not
  // cut). The products, pad_rows(nb) rows of m.mp, go to y (row stride ldy), their sums starting from c0 (row
  // stride ldc; 0: one row, e.g. the bias, for every row).
  void shadow_product(Scratch& s, size_t c, int64_t top, int64_t rows, int64_t kw, int64_t tail, int64_t col,
                      const uint16_t* w, int64_t cut, const Mat<T, WT>& m, T* y, int64_t ldy, const T* c0,
                      int64_t ldc) const {
#if ARKERN_HAVE_AMX
    constexpr int64_t kK = arkern_amx::kTileK;
    const int64_t cin = cshape[c][2], slots = cshape[c][0], per_row = kw * cin / kK;
    const int64_t kb = (rows * kw * cin + tail) / kK;
    s.xk.resize(static_cast<size_t>(kb));
    for (int64_t kk = 0; kk < kb; ++kk) {
      const int64_t row = top + kk / per_row, off = (kk % per_row) * kK;
      s.xk[kk] = row < 0 ? s.zeros.data() : shadow_at(s, c, row % slots, col + off / cin, 0, off % cin);
    }
    const arkern_amx::Part parts[2] = {{w, cut / kK}, {w + m.mp * cut, kb - cut / kK}};
    const int64_t r16 = arkern_amx::pad_rows(s.rows);
    if constexpr (std::is_same_v<T, float>)
      arkern_amx::matmul_at(s.xk.data(), r16, kK, cut > 0 ? parts : parts + 1, cut > 0 && kb > cut / kK ? 2 : 1,
                            m.mp, y, ldy, c0, ldc);
#else
    (void)c, (void)top, (void)rows, (void)kw, (void)tail, (void)col, (void)w, (void)cut, (void)m, (void)y,
        (void)ldy, (void)c0, (void)ldc;
#endif
  }

  // PixelCNN (pixelcnn_steps.h).
  T* const* conv_shadowed(int64_t c, int64_t i, int64_t j, int64_t g, int64_t nb, Scratch& s) const;
  void pixelcnn_row(int64_t i, int64_t r0, int64_t nb, Scratch& s) const;
  void pixelcnn_row_tiles(int64_t i, int64_t r0, int64_t nb, Scratch& s) const;
  T* const* conv_at(int64_t c, int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s, T* out = nullptr,
                    int64_t ldo = 0) const;
  void pixelcnn_step(int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s) const;

  // Gated PixelCNN (gated_pixelcnn_steps.h).
  void gated_row(int64_t i, int64_t r0, int64_t nb, Scratch& s) const;
  void vertical_tiles(int64_t l, int64_t ip, int64_t p0, int64_t n, int64_t r0, Scratch& s) const;
  template <typename RowOf>
  void link_tiles(int64_t l, int64_t n, RowOf row_of, T* const* out, Scratch& s) const;
  void horizontal_tiles(int64_t l, int64_t i, int64_t j, int64_t k, int64_t r0, int64_t nb, Scratch& s) const;
  void gated_step(int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s) const;
  void link_horizontal(int64_t l, int64_t i, int64_t j, int64_t g, Scratch& s) const;

  void head_and_draw(int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s, Sampler& sampler) const {
    const int64_t C = d.C, K = d.K, E = d.E, hg = d.h / C, hhg = d.hh / C;
    if (on_tiles && C == 1) {  // one colour group: the head's inputs are only this step's, rounded straight
      for (int64_t b = 0; b < nb; ++b) s.in[b] = s.x[b];  // from x and y into the tile input blocks
      if (d.head_relu) {
        tiles_into<In::relu>(head(0, g), nb, s.in.data(), s.y[0], s.ldy, mats[head(0, g)].b, 0);
      } else {
        tiles_into(head(0, g), nb, s.in.data(), s.y[0], s.ldy, mats[head(0, g)].b, 0);
      }
      for (int64_t b = 0; b < nb; ++b) s.in[b] = s.y[b];
      tiles_into<In::relu>(head(1, g), nb, s.in.data(), s.y[0], s.ldy, mats[head(1, g)].b, 0);
    } else {
      for (int64_t b = 0; b < nb; ++b) {
        if (d.head_relu) {
          row_op<RowOp::relu>(s.hin1[b] + g * hg, s.x[b] + g * hg, hg);
        } else {
          row_op<RowOp::copy>(s.hin1[b] + g * hg, s.x[b] + g * hg, hg);
        }
      }
      if (on_tiles) {
        tiles_into(head(0, g), nb, s.hin1.data(), s.y[0], s.ldy, mats[head(0, g)].b, 0);
      } else {
        product(mats[head(0, g)], nb, s.hin1, s, s.y.data());
      }
      for (int64_t b = 0; b < nb; ++b) row_op<RowOp::relu>(s.hin2[b] + g * hhg, s.y[b], hhg);
      if (on_tiles) {
        tiles_into(head(1, g), nb, s.hin2.data(), s.y[0], s.ldy, mats[head(1, g)].b, 0);
      } else {
        product(mats[head(1, g)], nb, s.hin2, s, s.y.data());
      }
    }
    const auto pos = [&](int64_t b) { return (((r0 + b) * C + g) * H + i) * W + j; };
    for (int64_t b = 0; b < nb; ++b) {
      s.in[b] = s.y[b];
      s.u[b] = noise[pos(b)];
    }
    if (forced == nullptr) sampler.draw(s.in.data(), nb, K, s.u.data(), s.v.data());
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t row = r0 + b;
      const int64_t v = forced != nullptr ? forced[pos(b)] : s.v[b];
      image[pos(b)] = v;
      if (logits_out != nullptr)
        std::copy_n(s.y[b], K, logits_out + (((row * (row_end - row_begin) + i - row_begin) * W + j) * C + g) * K);
      // the image input (the model's prepare: table[v]) of the first conv (Gated: of both stacks)
      const T* x = table + v * E;
      if (d.kind == 0) {
        std::copy_n(x, E, ring(0, row).at(i, j + d.kw_a / 2) + g * E);
      } else {
        std::copy_n(x, E, ring(0, row).at(d.aligned ? i + 1 : i, j + d.kw_0 / 2) + g * E);
        std::copy_n(x, E, ring(1, row).at(i, j + d.kwh_0 / 2) + g * E);
      }
    }
  }
};

}  // namespace arkern_pixelcnn
