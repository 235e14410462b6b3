// pixelcnn_decode CPU kernel: sample PixelCNN / Gated PixelCNN images without returning to Python.
//
// One call runs image rows [row_begin, row_end) of a batch in raster order: for every pixel, every colour
// sub-step g (R, then G, then B), every layer, the head, and the draw from the pre-drawn uniform (float64
// softmax, temperature, top-k, top-p, inverse CDF: the decisions of arkern.distributions.sample_categorical).
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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <type_traits>

#include "pixelcnn_decode.h"
#include "team.h"

namespace {

using namespace arkern_pixelcnn;

constexpr int64_t kMaxRows = 32;  // batch rows run in lockstep, sharing every weight tile
constexpr int64_t kMaxTileRows = 64;  // the same on AMX tiles (4 tiles of 16 rows)
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
std::vector<std::pair<int64_t, int64_t>> matrix_shapes(const Dims& d) {
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
std::vector<int64_t> tile_splits(const Dims& d) {
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
std::vector<std::array<int64_t, 3>> cache_shapes(const Dims& d, int64_t W) {
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

  // out = tanh(a) * sigmoid(b) (n values): on AMX tiles by gate_fast, whose one reciprocal matters next to the
  // tiles' speed; elsewhere by gate, as the float32 precision.
  void gate_row(const T* a, const T* b, T* out, int64_t n) const {
    if constexpr (std::is_same_v<T, float>) {
      if (on_tiles) {
        gate_fast(a, b, out, n);
        return;
      }
    }
    gate(a, b, out, n);
  }

  // Per-group scratch (every buffer one per batch row of the group).
  struct Scratch {
    std::vector<T> mem;
    std::vector<T*> gat, y, x, act, hin1, hin2, link, pg, pv, part, yp;
    int64_t pstride = 0;     // floats per partial-sum vector (the largest padded spatial-conv height)
    bool whole_convs = false;  // on AMX tiles with a full tile of rows: every spatial conv in one product per pixel
    std::vector<const T*> in;
    std::vector<double> u;   // the rows' uniforms of one draw
    std::vector<int64_t> v;  // the rows' drawn levels
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
    const int64_t link = d.kind == 1 ? L * W * hp : 0;
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
    const int64_t per_row = max_n + max_mp + h + act + h + d.hh + link + part;
    Scratch s;
    s.mem.assign(nb * per_row + (d.kind == 1 ? kChunk * (n_v + hp) : 0), T(0));
    T* p = s.mem.data();
    const auto carve = [&p](std::vector<T*>& v, int64_t count, int64_t size) {
      v.resize(count);
      for (auto& q : v) { q = p; p += size; }
    };
    carve(s.gat, nb, max_n);
    carve(s.y, nb, max_mp);
    carve(s.x, nb, h);
    carve(s.act, nb, act);
    carve(s.hin1, nb, h);
    carve(s.hin2, nb, d.hh);
    carve(s.link, nb, link);
    carve(s.part, nb, part);
    if (d.kind == 1) {
      carve(s.pg, kChunk, n_v);
      carve(s.pv, kChunk, hp);
    }
    s.yp.resize(std::max(nb, kChunk));
    s.pstride = part_mp;
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

  // Start of image row i: every spatial conv's taps in the rows above (final since row i - 1 ended) for
  // all columns at once, so that many columns share each weight tile. Each pixel then adds only the taps
  // of its own row: for a 3x3 mask-B conv 2 of 5 kernel taps, for a 7x7 mask-A conv 3 of 24.
  void pixelcnn_row(int64_t i, int64_t r0, int64_t nb, Scratch& s) const {
    // Pieces of kRowPiece (row, column) pairs, the same whatever the thread count (a piece's products group
    // its rows the same way, so its sums are bit-identical), split between the decode team (csrc/cpu/team.h)
    // when it is on: one phase per image row, each worker the same columns every row.
    const int64_t total = nb * W;
    int64_t n_above = 0;
    for (int64_t c = 0; c <= d.depth; ++c) n_above = std::max(n_above, conv(c).above * conv(c).kw * conv(c).cin);
    if (n_above == 0 || s.whole_convs) return;
    if constexpr (std::is_same_v<WT, at::BFloat16>) {
      if (on_tiles) {
        pixelcnn_row_tiles(i, r0, nb, s);
        return;
      }
    }
    s.team->phase((total + kRowPiece - 1) / kRowPiece, [&](int, int64_t piece) {
      const int64_t p0 = piece * kRowPiece, n = std::min(kRowPiece, total - p0);
      std::vector<T> buf(kRowPiece * n_above);
      const T* in[kRowPiece];
      T* out[kRowPiece];
      for (int64_t c = 0; c <= d.depth; ++c) {
        const Conv cv = conv(c);
        const int64_t na = cv.above * cv.kw * cv.cin;
        if (na == 0) continue;
        for (int64_t g = 0; g < d.C; ++g) {
          const Mat<T, WT>& m = mats[px(cv.layer, g)];
          for (int64_t q = 0; q < n; ++q) {
            const int64_t b = (p0 + q) / W, j = (p0 + q) % W;
            T* dst = buf.data() + q * n_above;
            ring(c, r0 + b).gather(i - cv.above, cv.above, j, cv.kw, 0, dst);
            in[q] = dst;
            out[q] = partial(s, b, c, g, j);
          }
          mv(m, n, 0, na, in, out, nullptr);
        }
      }
    });
  }

  // pixelcnn_row on AMX tiles: pieces of kTileRowPiece (row, column) pairs, each pair's taps rounded to
  // bfloat16 straight from the ring into the tile input block once per conv, then multiplied by every
  // output group's matrix. A pair's sums do not depend on the other rows of its piece.
  void pixelcnn_row_tiles(int64_t i, int64_t r0, int64_t nb, Scratch& s) const {
    const int64_t total = nb * W;
    s.team->phase((total + kTileRowPiece - 1) / kTileRowPiece, [&](int, int64_t piece) {
      const arkern_amx::TileScope scope;  // this thread may be a team worker
      arkern_amx::Batch& batch = arkern_amx::thread_batch();
      const int64_t p0 = piece * kTileRowPiece, n = std::min(kTileRowPiece, total - p0);
      for (int64_t c = 0; c <= d.depth; ++c) {
        const Conv cv = conv(c);
        const int64_t run = cv.kw * cv.cin, na = cv.above * run;
        if (na == 0) continue;
        batch.begin(n, na);
        for (int64_t q = 0; q < n; ++q) {
          const int64_t b = (p0 + q) / W, j = (p0 + q) % W;
          put_rows(batch, q, ring(c, r0 + b), i - cv.above, cv.above, j, run);
        }
        for (int64_t g = 0; g < d.C; ++g) {
          const int64_t k = px(cv.layer, g);
          const Mat<T, WT>& m = mats[k];
          const float* y = batch.multiply(tiles[k], m.mp);
          for (int64_t q = 0; q < n; ++q) {
            const int64_t b = (p0 + q) / W, j = (p0 + q) % W;
            T* out = partial(s, b, c, g, j);
            const float* yq = y + q * m.mp;
            for (int64_t o = 0; o < m.mp; ++o) out[o] = yq[o] + m.b[o];
          }
        }
      }
    });
  }

  // Output group g of spatial conv c at (i, j) for the nb rows: the row-start partial sum plus the taps of
  // row i (inputs left of the centre, and the centre's allowed groups). Returns the output rows.
  T* const* conv_at(int64_t c, int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s) const {
    const Conv cv = conv(c);
    const int64_t na = cv.above * cv.kw * cv.cin;
    const int64_t allowed = (c == 0 ? g : g + 1) * (cv.cin / d.C);
    const int64_t k = px(cv.layer, g);
    const Mat<T, WT>& m = mats[k];
    if constexpr (std::is_same_v<WT, at::BFloat16>) {
      if (s.whole_convs && na > 0) {  // the taps of the rows above, then of row i, straight from the ring
        arkern_amx::Batch& batch = arkern_amx::thread_batch();
        const int64_t run = cv.kw * cv.cin, n = m.n - na;
        batch.begin(nb, na, n);
        for (int64_t b = 0; b < nb; ++b) {
          const Ring<T> rg = ring(c, r0 + b);
          put_rows(batch, b, rg, i - cv.above, cv.above, j, run);
          batch.put(b, batch.second(), rg.at(i, j), n);
        }
        const float* y = batch.multiply2(tiles[k], tiles[k] + m.mp * arkern_amx::pad32(na), m.mp);
        for (int64_t b = 0; b < nb; ++b) {
          const float* yb = y + b * m.mp;
          s.yp[b] = s.y[b];
          for (int64_t o = 0; o < m.mp; ++o) s.yp[b][o] = yb[o] + m.b[o];
        }
        return s.yp.data();
      }
      if (on_tiles && m.n > na) {  // the taps of row i rounded straight from the ring into the tile input block
        arkern_amx::Batch& batch = arkern_amx::thread_batch();
        const int64_t n = m.n - na;
        batch.begin(nb, n);
        for (int64_t b = 0; b < nb; ++b) batch.put(b, 0, ring(c, r0 + b).at(i, j), n);
        const float* y = batch.multiply(tiles[k] + (na > 0 ? m.mp * arkern_amx::pad32(na) : 0), m.mp);
        for (int64_t b = 0; b < nb; ++b) {
          const float* yb = y + b * m.mp;
          if (na > 0) {
            s.yp[b] = partial(s, b, c, g, j);
            for (int64_t o = 0; o < m.mp; ++o) s.yp[b][o] += yb[o];
          } else {
            s.yp[b] = s.y[b];
            for (int64_t o = 0; o < m.mp; ++o) s.yp[b][o] = yb[o] + m.b[o];
          }
        }
        return s.yp.data();
      }
    }
    for (int64_t b = 0; b < nb; ++b) {
      ring(c, r0 + b).gather(i, 0, j, cv.kw, cv.centre * cv.cin + allowed, s.gat[b]);
      s.in[b] = s.gat[b];
      s.yp[b] = na > 0 ? partial(s, b, c, g, j) : s.y[b];
    }
    mv(m, nb, na, m.n, s.in.data(), s.yp.data(), s.team);
    return s.yp.data();
  }

  void pixelcnn_step(int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s) const {
    const int64_t h = d.h, hg = h / d.C, cb = d.kw_b / 2;
    T* const* y = conv_at(0, i, j, g, r0, nb, s);
    for (int64_t b = 0; b < nb; ++b) std::copy_n(y[b], hg, s.x[b] + g * hg);
    for (int64_t k = 0; k < d.depth; ++k) {
      for (int64_t b = 0; b < nb; ++b) {
        T* dst = ring(1 + k, r0 + b).at(i, j + cb) + g * hg;
        for (int64_t m = 0; m < hg; ++m) dst[m] = std::max(s.x[b][g * hg + m], T(0));
      }
      y = conv_at(1 + k, i, j, g, r0, nb, s);
      if (!d.residual) {  // a plain block: its conv's output is the next block's input
        for (int64_t b = 0; b < nb; ++b) std::copy_n(y[b], hg, s.x[b] + g * hg);
        continue;
      }
      for (int64_t b = 0; b < nb; ++b) {
        T* u = s.act[b] + k * h;
        for (int64_t m = 0; m < hg; ++m) u[g * hg + m] = std::max(y[b][m], T(0));
        s.in[b] = u;
      }
      const Mat<T, WT>& m1 = mats[px(2 + 2 * k, g)];  // residual: 2 matrices per block
      mv(m1, nb, 0, m1.n, s.in.data(), s.y.data(), s.team);
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t m = 0; m < hg; ++m) s.x[b][g * hg + m] += s.y[b][m];
    }
  }

  // The vertical stack (all columns) -> per layer link rows for row i: on image row i - 1 (aligned 0), or
  // on row i of its down-shifted input (aligned 1: layer 0's cache holds image row r as row r + 1).
  void gated_row(int64_t i, int64_t r0, int64_t nb, Scratch& s) const {
    const int64_t h = d.h, L = d.depth, hp = pad16(2 * h), cv = d.kw_a / 2;
    const auto link_at = [&](int64_t b, int64_t l, int64_t j) { return s.link[b] + (l * W + j) * hp; };
    if (i == 0 && !d.aligned) {  // nothing above row 0: the link sees zeros, its output is its bias
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t l = 0; l < L; ++l)
          for (int64_t j = 0; j < W; ++j) std::copy_n(mats[gx(l, 1)].b, hp, link_at(b, l, j));
      return;
    }
    const int64_t ip = d.aligned ? i : i - 1, total = nb * W;
    for (int64_t l = 0; l < L; ++l) {
      const Mat<T, WT>& vm = mats[gx(l, 0)];
      const Mat<T, WT>& lm = mats[gx(l, 1)];
      const int64_t kh = d.khv(l), kw = d.kwv(l);
      for (int64_t p0 = 0; p0 < total; p0 += kChunk) {
        const int64_t n = std::min(kChunk, total - p0);
        if (on_tiles) {
          vertical_tiles(l, ip, p0, n, r0, s);
        } else {
          for (int64_t q = 0; q < n; ++q) {
            const int64_t b = (p0 + q) / W, j = (p0 + q) % W;
            ring(2 * l, r0 + b).gather(ip - kh + 1, kh, j, kw, 0, s.pg[q]);
          }
          product(vm, n, s.pg, s, s.pv.data());
        }
        T* out[kChunk];
        for (int64_t q = 0; q < n; ++q) out[q] = link_at((p0 + q) / W, l, (p0 + q) % W);
        if (d.aligned) product(lm, n, s.pv, s, out);  // the link before the class bias
        for (int64_t q = 0; q < n; ++q) {
          const int64_t b = (p0 + q) / W, j = (p0 + q) % W;
          if (cond != nullptr) {
            const T* c = cond + ((r0 + b) * L + l) * 2 * h;
            for (int64_t m = 0; m < 2 * h; ++m) s.pv[q][m] += c[m];
          }
          if (l + 1 < L) gate_row(s.pv[q], s.pv[q] + h, ring(2 * (l + 1), r0 + b).at(ip, j + cv), h);
        }
        if (!d.aligned) product(lm, n, s.pv, s, out);  // the link after the class bias
      }
    }
  }

  // The vertical conv of Gated layer l on AMX tiles for the n (row, column) pairs from p0, its window ending at
  // image row ip: the kh kernel rows of taps (zero above the image) rounded straight from the ring into the
  // tile input block; s.pv[q] = bias + W x.
  void vertical_tiles(int64_t l, int64_t ip, int64_t p0, int64_t n, int64_t r0, Scratch& s) const {
    if constexpr (std::is_same_v<WT, at::BFloat16>) {
      const int64_t k = gx(l, 0), kh = d.khv(l), run = d.kwv(l) * d.cin(l);
      const Mat<T, WT>& m = mats[k];
      arkern_amx::Batch& batch = arkern_amx::thread_batch();
      batch.begin(n, m.n);
      for (int64_t q = 0; q < n; ++q) {
        const int64_t b = (p0 + q) / W, j = (p0 + q) % W;
        put_rows(batch, q, ring(2 * l, r0 + b), ip - kh + 1, kh, j, run);
      }
      const float* y = batch.multiply(tiles[k], m.mp);
      for (int64_t q = 0; q < n; ++q) {
        const float* yq = y + q * m.mp;
        for (int64_t o = 0; o < m.mp; ++o) s.pv[q][o] = yq[o] + m.b[o];
      }
    } else {
      (void)l, (void)ip, (void)p0, (void)n, (void)r0, (void)s;
    }
  }

  // The horizontal conv (matrix k) of Gated layer l at (i, j) on AMX tiles: its taps (one contiguous run of
  // the ring) rounded straight into the tile input block; y = bias + W x into s.y.
  void horizontal_tiles(int64_t l, int64_t i, int64_t j, int64_t k, int64_t r0, int64_t nb, Scratch& s) const {
    if constexpr (std::is_same_v<WT, at::BFloat16>) {
      const Mat<T, WT>& m = mats[k];
      arkern_amx::Batch& batch = arkern_amx::thread_batch();
      batch.begin(nb, m.n);
      for (int64_t b = 0; b < nb; ++b) batch.put(b, 0, ring(2 * l + 1, r0 + b).at(i, j), m.n);
      const float* y = batch.multiply(tiles[k], m.mp);
      for (int64_t b = 0; b < nb; ++b) {
        const float* yb = y + b * m.mp;
        for (int64_t o = 0; o < m.mp; ++o) s.y[b][o] = yb[o] + m.b[o];
      }
    } else {
      (void)l, (void)i, (void)j, (void)k, (void)r0, (void)nb, (void)s;
    }
  }

  void gated_step(int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s) const {
    const int64_t C = d.C, h = d.h, hg = h / C, L = d.depth, hp = pad16(2 * h);
    for (int64_t l = 0; l < L; ++l) {
      const int64_t cin = d.cin(l), allowed = (l == 0 ? g : g + 1) * (cin / C), ch = d.kwh(l) / 2;
      const int64_t kh = gx(l, 2 + g);
      for (int64_t b = 0; b < nb; ++b) {
        const Ring<T> r = ring(2 * l + 1, r0 + b);
        if (l > 0) std::copy_n(s.x[b] + g * hg, hg, r.at(i, j + ch) + g * hg);
        if (!on_tiles) r.gather(i, 0, j, d.kwh(l), ch * cin + allowed, s.gat[b]);
      }
      if (on_tiles) {
        horizontal_tiles(l, i, j, kh, r0, nb, s);
      } else {
        product(mats[kh], nb, s.gat, s, s.y.data());
      }
      for (int64_t b = 0; b < nb; ++b) {
        T* pre = s.y[b];
        const T* lk = s.link[b] + (l * W + j) * hp + g * 2 * hg;
        for (int64_t m = 0; m < 2 * hg; ++m) pre[m] += lk[m];
        if (cond != nullptr) {
          const T* c = cond + ((r0 + b) * L + l) * 2 * h + g * 2 * hg;
          for (int64_t m = 0; m < 2 * hg; ++m) pre[m] += c[m];
        }
        gate_row(pre, pre + hg, s.act[b] + l * h + g * hg, hg);
        s.in[b] = s.act[b] + l * h;
      }
      const Mat<T, WT>& mo = mats[gx(l, 2 + C + g)];
      mv(mo, nb, 0, mo.n, s.in.data(), s.y.data(), s.team);
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t m = 0; m < hg; ++m) s.x[b][g * hg + m] = (l == 0 ? T(0) : s.x[b][g * hg + m]) + s.y[b][m];
    }
  }

  void head_and_draw(int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s, Sampler& sampler) const {
    const int64_t C = d.C, K = d.K, E = d.E, hg = d.h / C, hhg = d.hh / C;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t m = 0; m < hg; ++m) {
        const T x = s.x[b][g * hg + m];
        s.hin1[b][g * hg + m] = d.head_relu ? std::max(x, T(0)) : x;
      }
    product(mats[head(0, g)], nb, s.hin1, s, s.y.data());
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t m = 0; m < hhg; ++m) s.hin2[b][g * hhg + m] = std::max(s.y[b][m], T(0));
    product(mats[head(1, g)], nb, s.hin2, s, s.y.data());
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

#define CHECK_ARG(cond, ...) TORCH_CHECK(cond, "pixelcnn_generate: ", __VA_ARGS__)

at::Tensor pixelcnn_generate_cpu(at::IntArrayRef config, at::TensorList weights, at::TensorList biases,
                                 const at::Tensor& input_table, at::TensorList caches, const at::Tensor& image, const at::Tensor& noise,
                                 const std::optional<at::Tensor>& cond, int64_t row_begin, int64_t row_end,
                                 double temperature, int64_t top_k, double top_p, bool return_logits,
                                 const std::optional<at::Tensor>& forced, at::TensorList tiles) {
  arkern_isa::selected();  // an invalid ARKERN_ISA fails here, not inside a parallel region
  CHECK_ARG(config.size() == kConfigInts, "config must hold ", kConfigInts, " ints, got ", config.size());
  const Dims d{config[0], config[1], config[2],  config[3],  config[4],  config[5],  config[6],  config[7], config[8],
               config[9], config[10], config[11], config[12], config[13], config[14], config[15], config[16]};
  CHECK_ARG(d.kind == 0 || d.kind == 1, "config kind must be 0 (PixelCNN) or 1 (GatedPixelCNN), got ", d.kind);
  CHECK_ARG(d.C >= 1 && d.K >= 2 && d.h >= 1 && d.h % d.C == 0 && d.depth >= (d.kind == 1 ? 1 : 0) && d.E >= 1 &&
                d.hh >= 1 && d.hh % d.C == 0,
            "bad network sizes C=", d.C, " K=", d.K, " h=", d.h, " depth=", d.depth, " E=", d.E, " hh=", d.hh);
  CHECK_ARG((d.residual == 0 || d.residual == 1) && (d.aligned == 0 || d.aligned == 1) &&
                (d.head_relu == 0 || d.head_relu == 1) && (d.kind == 0 || d.residual == 1) &&
                (d.kind == 1 || (d.aligned == 0 && d.kh_0 == 0 && d.kw_0 == 0 && d.kwh_0 == 0)),
            "bad flags residual=", d.residual, " aligned=", d.aligned, " head_relu=", d.head_relu, " for kind ", d.kind);
  CHECK_ARG(d.kh_a >= 1 && d.kw_a >= 1 && d.kh_b >= 1 && d.kw_b >= 1 && d.kw_a % 2 == 1 && d.kw_b % 2 == 1 &&
                (d.kind == 1 || (d.kh_a % 2 == 1 && d.kh_b % 2 == 1)) &&
                (d.kind == 0 || (d.kh_b == 1 && d.kh_0 >= 1 && d.kw_0 % 2 == 1 && d.kwh_0 % 2 == 1)),
            "unsupported kernel sizes (", d.kh_a, ", ", d.kw_a, "), (", d.kh_b, ", ", d.kw_b, "), (", d.kh_0, ", ",
            d.kw_0, "), ", d.kwh_0);
  CHECK_ARG(image.dim() == 4 && image.scalar_type() == at::kLong && image.is_contiguous() && image.device().is_cpu() &&
                image.size(1) == d.C,
            "image must be a contiguous int64 CPU tensor (B, ", d.C, ", H, W), got ", image.sizes());
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3);
  CHECK_ARG(noise.sizes() == image.sizes() && noise.scalar_type() == at::kDouble && noise.device().is_cpu(),
            "noise must be float64 with the image's shape ", image.sizes(), ", got ", noise.sizes());
  CHECK_ARG(0 <= row_begin && row_begin <= row_end && row_end <= H, "rows [", row_begin, ", ", row_end,
            ") outside the image of height ", H);
  CHECK_ARG(temperature > 0 && top_k >= 0 && top_p > 0, "need temperature > 0, top_k >= 0 and top_p > 0");
  const auto shapes = matrix_shapes(d);
  CHECK_ARG(weights.size() == shapes.size() && biases.size() == shapes.size(), "expected ", shapes.size(),
            " weight and bias tensors for this config, got ", weights.size(), " and ", biases.size());
  const auto wt = weights[0].scalar_type(), at_ = biases[0].scalar_type();
  CHECK_ARG((at_ == at::kFloat && (wt == at::kFloat || wt == at::kBFloat16)) || (at_ == at::kDouble && wt == at::kDouble),
            "weights/biases must be float32/float32, bfloat16/float32 or float64/float64, got ", wt, "/", at_);
  for (size_t k = 0; k < shapes.size(); ++k) {
    const auto [m, n] = shapes[k];
    CHECK_ARG(weights[k].scalar_type() == wt && weights[k].is_contiguous() && weights[k].device().is_cpu() &&
                  weights[k].numel() == pad16(m) * n,
              "weight ", k, " must be a contiguous ", wt, " CPU tensor of ", pad16(m) * n, " elements (",
              pad16(m), " x ", n, " packed), got ", weights[k].numel());
    CHECK_ARG(biases[k].scalar_type() == at_ && biases[k].is_contiguous() && biases[k].device().is_cpu() &&
                  biases[k].numel() == pad16(m),
              "bias ", k, " must be a contiguous ", at_, " CPU tensor of ", pad16(m), " elements");
  }
  CHECK_ARG(input_table.scalar_type() == at_ && input_table.is_contiguous() && input_table.device().is_cpu() &&
                input_table.sizes() == at::IntArrayRef({d.K, d.E}),
            "input_table must be a contiguous ", at_, " CPU tensor (", d.K, ", ", d.E, "), got ", input_table.sizes());
  const auto splits = tile_splits(d);
  CHECK_ARG(tiles.empty() || (tiles.size() == shapes.size() && wt == at::kBFloat16),
            "tiles (the AMX copy of bfloat16 weights) must be empty or hold one tensor per matrix (",
            shapes.size(), ") of a bfloat16 pack, got ", tiles.size());
  for (size_t k = 0; k < tiles.size(); ++k) {
    const auto [m, n] = shapes[k];
    const int64_t cut = splits[k];
    const int64_t numel = pad16(m) * (arkern_amx::pad32(cut) + arkern_amx::pad32(n - cut));
    CHECK_ARG(tiles[k].scalar_type() == at::kBFloat16 && tiles[k].is_contiguous() && tiles[k].device().is_cpu() &&
                  tiles[k].numel() == numel,
              "tiles ", k, " must be a contiguous bfloat16 CPU tensor of ", numel, " elements, got ", tiles[k].numel());
  }
  const auto cshape = cache_shapes(d, W);
  CHECK_ARG(caches.size() == cshape.size(), "expected ", cshape.size(), " caches, got ", caches.size());
  for (size_t c = 0; c < cshape.size(); ++c) {
    const auto& s = cshape[c];
    CHECK_ARG(caches[c].scalar_type() == at_ && caches[c].is_contiguous() && caches[c].device().is_cpu() &&
                  caches[c].sizes() == at::IntArrayRef({B, s[0], s[1], s[2]}),
              "cache ", c, " must be a contiguous ", at_, " CPU tensor (", B, ", ", s[0], ", ", s[1], ", ", s[2],
              "), got ", caches[c].sizes());
  }
  at::Tensor cond_c, forced_c;
  if (cond.has_value()) {
    CHECK_ARG(d.kind == 1, "cond is only for GatedPixelCNN");
    cond_c = cond->contiguous();
    CHECK_ARG(cond_c.scalar_type() == at_ && cond_c.device().is_cpu() &&
                  cond_c.sizes() == at::IntArrayRef({B, d.depth, 2 * d.h}),
              "cond must be ", at_, " (", B, ", ", d.depth, ", ", 2 * d.h, "), got ", cond_c.sizes());
  }
  if (forced.has_value()) {
    forced_c = forced->contiguous();
    CHECK_ARG(forced_c.scalar_type() == at::kLong && forced_c.sizes() == image.sizes() && forced_c.device().is_cpu(),
              "forced must be int64 with the image's shape");
    CHECK_ARG(forced_c.numel() == 0 || (forced_c.min().item<int64_t>() >= 0 && forced_c.max().item<int64_t>() < d.K),
              "forced holds levels outside [0, ", d.K, ")");
  }
  const int64_t rows = row_end - row_begin;
  auto logits = return_logits ? at::empty({B, rows, W, d.C * d.K}, biases[0].options())
                              : at::empty({0}, biases[0].options());
  if (B == 0 || rows == 0 || W == 0) return logits;
  const auto noise_c = noise.contiguous();
  const int64_t threads = at::get_num_threads();
  // Up to kMaxRows rows run as one group whose products a team of threads splits over output tiles
  // (csrc/cpu/team.h), when the per-pixel products have at least two tiles (h / C > 64) or at batch 1;
  // otherwise the rows are split into groups run in parallel.
  // On AMX tiles a group's per-pixel products run on its own thread (one core's tiles outrun a split of
  // them), so groups of up to kMaxTileRows rows run in parallel instead.
  const bool on_tiles = wt == at::kBFloat16 && !tiles.empty() && arkern_isa::use_amx();
  const bool split_outputs = !on_tiles && (B == 1 || arkern_decode::tiles(pad16(d.h / d.C)) >= 2);
  const int64_t max_rows = on_tiles ? kMaxTileRows : kMaxRows;
  const int64_t groups = std::max<int64_t>((B + max_rows - 1) / max_rows, split_outputs ? 1 : std::min<int64_t>(B, threads));

  const auto launch = [&](auto tag_t, auto tag_w) {
    using T = decltype(tag_t);
    using WT = decltype(tag_w);
    Runner<T, WT> run{d, B, H, W, row_begin, row_end};
    for (size_t k = 0; k < shapes.size(); ++k) {
      const auto [m, n] = shapes[k];
      run.mats.push_back({weights[k].data_ptr<WT>(), biases[k].data_ptr<T>(), m, pad16(m), n});
    }
    for (const auto& t : tiles) run.tiles.push_back(reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()));
    run.splits = splits;
    run.on_tiles = on_tiles;
    run.cshape = cshape;
    for (const auto& c : caches) run.caches.push_back(c.data_ptr<T>());
    run.image = image.data_ptr<int64_t>();
    run.noise = noise_c.data_ptr<double>();
    run.table = input_table.data_ptr<T>();
    run.cond = cond.has_value() ? cond_c.data_ptr<T>() : nullptr;
    run.forced = forced.has_value() ? forced_c.data_ptr<int64_t>() : nullptr;
    run.logits_out = return_logits ? logits.data_ptr<T>() : nullptr;
    const auto work = [&](int64_t g0, int64_t g1) {
      Sampler sampler(d.K, temperature, top_k, top_p);
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t b0 = grp * B / groups, b1 = (grp + 1) * B / groups;
        for (int64_t r0 = b0; r0 < b1; r0 += max_rows) {
          const int64_t nb = std::min(max_rows, b1 - r0);
          uint64_t key = 2;  // the workload, for the team's rate memory
          for (int64_t v : {d.kind, d.C, d.K, d.h, d.depth, d.kh_a, d.kw_a, d.kh_b, d.kw_b, d.E, d.residual,
                            d.aligned, d.kh_0, d.kw_0, d.kwh_0, d.hh, d.head_relu, W, nb,
                            static_cast<int64_t>(sizeof(T) + sizeof(WT))})
            key = key * 1000003 + static_cast<uint64_t>(v);
          arkern_team::Session team(key);  // one worker inside a parallel region
          run.run(r0, nb, sampler, team);
        }
      }
    };
    if (groups == 1) {
      work(0, 1);  // outside a parallel region: the team may split the products
    } else {
      at::parallel_for(0, groups, 1, work);
    }
  };
  if (at_ == at::kDouble) {
    launch(double{}, double{});
  } else if (wt == at::kBFloat16) {
    launch(float{}, at::BFloat16{});
  } else {
    launch(float{}, float{});
  }
  arkern_isa::record("pixelcnn_generate", on_tiles ? arkern_isa::Isa::amx
                                          : arkern_isa::use_avx512() ? arkern_isa::Isa::avx512 : arkern_isa::Isa::avx2);
  return logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) { m.impl("pixelcnn_generate", &pixelcnn_generate_cpu); }
