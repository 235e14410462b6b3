// The PixelCNN steps of the pixelcnn_generate CPU kernel (Runner, pixelcnn_runner.h): the row pass over the
// taps of the rows above, and per pixel its spatial convs' remaining taps and the residual blocks; float32
// tiles or AMX tiles.
#pragma once

#include <algorithm>
#include <vector>

#include "pixelcnn_runner.h"

namespace arkern_pixelcnn {

// Start of image row i: every spatial conv's taps in the rows above (final since row i - 1 ended) for
// all columns at once, so that many columns share each weight tile. Each pixel then adds only the taps
// of its own row: for a 3x3 mask-B conv 2 of 5 kernel taps, for a 7x7 mask-A conv 3 of 24.
template <typename T, typename WT>
void Runner<T, WT>::pixelcnn_row(int64_t i, int64_t r0, int64_t nb, Scratch& s) const {
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
template <typename T, typename WT>
void Runner<T, WT>::pixelcnn_row_tiles(int64_t i, int64_t r0, int64_t nb, Scratch& s) const {
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
// conv_at for a conv with a bfloat16 ring (init_shadows): the whole window of every row at once, the tiles
// loading its 32-input blocks from the ring's columns (shadow_product); the same inputs, sums and order as
// conv_at's input block.
template <typename T, typename WT>
T* const* Runner<T, WT>::conv_shadowed(int64_t c, int64_t i, int64_t j, int64_t g, int64_t nb, Scratch& s) const {
  if constexpr (std::is_same_v<WT, at::BFloat16>) {
    const Conv cv = conv(c);
    const int64_t k = px(cv.layer, g);
    const Mat<T, WT>& m = mats[k];
    const int64_t na = cv.above * cv.kw * cv.cin;
    shadow_product(s, c, i - cv.above, cv.above, cv.kw, m.n - na, j, tiles[k], na, m, s.y[0], s.ldy, m.b, 0);
    for (int64_t b = 0; b < nb; ++b) s.yp[b] = s.y[b];
  } else {
    (void)c, (void)i, (void)j, (void)g, (void)nb;
  }
  return s.yp.data();
}

// out (row stride ldo; null: s.y): where whole convs on tiles without a bfloat16 ring store the products.
template <typename T, typename WT>
T* const* Runner<T, WT>::conv_at(int64_t c, int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s,
                                 T* out, int64_t ldo) const {
  const Conv cv = conv(c);
  const int64_t na = cv.above * cv.kw * cv.cin;
  const int64_t allowed = (c == 0 ? g : g + 1) * (cv.cin / d.C);
  const int64_t k = px(cv.layer, g);
  const Mat<T, WT>& m = mats[k];
  if constexpr (std::is_same_v<WT, at::BFloat16>) {
    if (s.whole_convs && na > 0 && shadowed(s, c)) return conv_shadowed(c, i, j, g, nb, s);
    if (s.whole_convs && na > 0) {  // the taps of the rows above, then of row i, straight from the ring
      arkern_amx::Batch& batch = arkern_amx::thread_batch();
      const int64_t run = cv.kw * cv.cin, n = m.n - na;
      batch.begin(nb, na, n);
      for (int64_t b = 0; b < nb; ++b) {
        const Ring<T> rg = ring(c, r0 + b);
        put_rows(batch, b, rg, i - cv.above, cv.above, j, run);
        batch.put(b, batch.second(), rg.at(i, j), n);
      }
      if (out == nullptr) {
        out = s.y[0];
        ldo = s.ldy;
      }
      batch.multiply_into(tiles[k], tiles[k] + m.mp * arkern_amx::pad32(na), m.mp, out, ldo, m.b, 0);
      for (int64_t b = 0; b < nb; ++b) s.yp[b] = out + b * ldo;
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

template <typename T, typename WT>
void Runner<T, WT>::pixelcnn_step(int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s) const {
  const int64_t h = d.h, hg = h / d.C, cb = d.kw_b / 2;
  // On tiles, where the input conv's outputs are exactly group g's (no padding outputs), its tiles store them
  // straight into x (the rows of x are contiguous).
  const bool into_x = on_tiles && mats[px(0, g)].mp == hg;
  T* const* y = conv_at(0, i, j, g, r0, nb, s, into_x ? s.x[0] + g * hg : nullptr, h);
  if (y[0] != s.x[0] + g * hg)
    for (int64_t b = 0; b < nb; ++b) row_op<RowOp::copy>(s.x[b] + g * hg, y[b], hg);
  bool put = false;  // block k's ring input is in place (fused with block k - 1's residual sum)
  for (int64_t k = 0; k < d.depth; ++k) {
    // With a bfloat16 ring (init_shadows) the float32 ring needs only the rows the call leaves behind.
    const bool bf16_ring = shadowed(s, 1 + k);
    const bool keep = !bf16_ring || i >= row_end - cshape[1 + k][0];
    for (int64_t b = 0; b < nb && !put; ++b) {
      if (keep) row_op<RowOp::relu>(ring(1 + k, r0 + b).at(i, j + cb) + g * hg, s.x[b] + g * hg, hg);
      if (bf16_ring) shadow_put<true>(s, 1 + k, i % cshape[1 + k][0], j + cb, b, g * hg, s.x[b] + g * hg, hg);
    }
    put = false;
    y = conv_at(1 + k, i, j, g, r0, nb, s);
    if (!d.residual) {  // a plain block: its conv's output is the next block's input
      for (int64_t b = 0; b < nb; ++b) row_op<RowOp::copy>(s.x[b] + g * hg, y[b], hg);
      continue;
    }
    const Mat<T, WT>& m1 = mats[px(2 + 2 * k, g)];  // residual: 2 matrices per block
    if (on_tiles && d.C == 1) {  // one colour group: relu(y) rounded straight into the tile input block
      for (int64_t b = 0; b < nb; ++b) s.in[b] = y[b];
      tiles_into<In::relu>(px(2 + 2 * k, g), nb, s.in.data(), s.y[0], s.ldy, m1.b, 0);
      // The next block's bfloat16 ring input rounded in the same pass as the sum, where its float32 ring
      // is not kept (one colour group: its 32-input blocks are whole).
      put = k + 1 < d.depth && shadowed(s, 2 + k) && i < row_end - cshape[2 + k][0];
      for (int64_t b = 0; b < nb; ++b) {
        if constexpr (std::is_same_v<T, float>) {
          if (put) {
            for (int64_t q = 0; q < hg; q += arkern_amx::kTileK)
              add_relu_bf16(s.x[b] + q, s.y[b] + q, arkern_amx::kTileK,
                            shadow_at(s, 2 + k, i % cshape[2 + k][0], j + cb, b, q));
            continue;
          }
        }
        row_op<RowOp::add>(s.x[b] + g * hg, s.y[b], hg);
      }
      continue;
    }
    for (int64_t b = 0; b < nb; ++b) {
      T* u = s.act[b] + k * h;
      row_op<RowOp::relu>(u + g * hg, y[b], hg);
      s.in[b] = u;
    }
    if (on_tiles) {
      tiles_into(px(2 + 2 * k, g), nb, s.in.data(), s.y[0], s.ldy, m1.b, 0);
    } else {
      mv(m1, nb, 0, m1.n, s.in.data(), s.y.data(), s.team);
    }
    for (int64_t b = 0; b < nb; ++b) row_op<RowOp::add>(s.x[b] + g * hg, s.y[b], hg);
  }
}

}  // namespace arkern_pixelcnn
