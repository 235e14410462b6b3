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
// With whole convs on AMX tiles, the spatial convs of the blocks whose taps come in blocks of 32 inputs within
// one column (input channels and groups multiples of 32) keep a bfloat16 copy of their ring: (ring row, column,
// block of 32 input channels, row of the group (padded to 16 rows of zeros), 32 channels), see shadow_at. The
// tiles then load each pixel's window from it directly (a tile is 1 KB in one run), instead of rounding it from
// the rows' float32 rings into an input block: the same bfloat16 values (to_bf16 of the same floats), half the
// bytes, and one contiguous run per column for the prefetchers. The float32 rings then need only the rows the call
// leaves behind (pixelcnn_step).
template <typename T, typename WT>
void Runner<T, WT>::init_shadows(int64_t r0, int64_t nb, Scratch& s) const {
  s.shadow.assign(static_cast<size_t>(1 + d.depth), {});
#if ARKERN_HAVE_AMX
  if constexpr (std::is_same_v<WT, at::BFloat16>) {
    const int64_t r16 = arkern_amx::pad_rows(nb);
    for (int64_t c = 1; c <= d.depth; ++c) {
      const Conv cv = conv(c);
      if (cv.above == 0 || cv.cin % arkern_amx::kTileK != 0 || (cv.cin / d.C) % arkern_amx::kTileK != 0) continue;
      const auto& sh = cshape[c];  // ring rows, columns, input channels
      auto& v = s.shadow[c];
      v.assign(static_cast<size_t>(sh[0] * sh[1] * r16 * sh[2]), uint16_t{0});
      for (int64_t slot = 0; slot < sh[0]; ++slot)
        for (int64_t col = 0; col < sh[1]; ++col)
          for (int64_t b = 0; b < nb; ++b)
            for (int64_t ch = 0; ch < sh[2]; ch += arkern_amx::kTileK)
              arkern_amx::to_bf16(ring(c, r0 + b).at(slot, col) + ch, arkern_amx::kTileK,
                                  shadow_at(s, c, slot, col, b, ch));
      s.zeros.assign(std::max(s.zeros.size(), static_cast<size_t>(r16 * arkern_amx::kTileK)), uint16_t{0});
    }
  }
#else
  (void)r0, (void)nb;
#endif
}

// conv_at for a conv with a bfloat16 ring (init_shadows): the whole window of every row at once, the tiles
// loading its 32-input blocks from the ring's columns; the same inputs, sums and order as conv_at's input block.
template <typename T, typename WT>
T* const* Runner<T, WT>::conv_shadowed(int64_t c, int64_t i, int64_t j, int64_t g, int64_t nb, Scratch& s) const {
#if ARKERN_HAVE_AMX
  if constexpr (std::is_same_v<WT, at::BFloat16>) {
    constexpr int64_t kK = arkern_amx::kTileK;
    const Conv cv = conv(c);
    const int64_t k = px(cv.layer, g), cin = cv.cin, slots = cshape[c][0];
    const Mat<T, WT>& m = mats[k];
    const int64_t na = cv.above * cv.kw * cin, kb1 = na / kK, kb2 = (m.n - na) / kK, per_row = cv.kw * cin / kK;
    const int64_t r16 = arkern_amx::pad_rows(nb);
    s.xk.resize(static_cast<size_t>(kb1 + kb2));
    for (int64_t kk = 0; kk < kb1; ++kk) {  // the rows above (zeros above the image), then row i
      const int64_t row = i - cv.above + kk / per_row, off = (kk % per_row) * kK;
      s.xk[kk] = row < 0 ? s.zeros.data() : shadow_at(s, c, row % slots, j + off / cin, 0, off % cin);
    }
    for (int64_t kk = 0; kk < kb2; ++kk) s.xk[kb1 + kk] = shadow_at(s, c, i % slots, j + kk * kK / cin, 0, kk * kK % cin);
    const arkern_amx::Part parts[2] = {{tiles[k], kb1}, {tiles[k] + m.mp * na, kb2}};
    s.yt.resize(static_cast<size_t>(r16 * m.mp));
    arkern_amx::matmul_at(s.xk.data(), r16, kK, parts, kb2 > 0 ? 2 : 1, m.mp, s.yt.data(), m.mp);
    for (int64_t b = 0; b < nb; ++b) {
      const float* yb = s.yt.data() + b * m.mp;
      s.yp[b] = s.y[b];
      for (int64_t o = 0; o < m.mp; ++o) s.yp[b][o] = yb[o] + m.b[o];
    }
  }
#else
  (void)c, (void)i, (void)j, (void)g, (void)nb;
#endif
  return s.yp.data();
}

template <typename T, typename WT>
T* const* Runner<T, WT>::conv_at(int64_t c, int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s) const {
  const Conv cv = conv(c);
  const int64_t na = cv.above * cv.kw * cv.cin;
  const int64_t allowed = (c == 0 ? g : g + 1) * (cv.cin / d.C);
  const int64_t k = px(cv.layer, g);
  const Mat<T, WT>& m = mats[k];
  if constexpr (std::is_same_v<WT, at::BFloat16>) {
    if (s.whole_convs && na > 0 && !s.shadow.empty() && !s.shadow[c].empty()) return conv_shadowed(c, i, j, g, nb, s);
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

template <typename T, typename WT>
void Runner<T, WT>::pixelcnn_step(int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s) const {
  const int64_t h = d.h, hg = h / d.C, cb = d.kw_b / 2;
  T* const* y = conv_at(0, i, j, g, r0, nb, s);
  for (int64_t b = 0; b < nb; ++b) std::copy_n(y[b], hg, s.x[b] + g * hg);
  for (int64_t k = 0; k < d.depth; ++k) {
    // With a bfloat16 ring (init_shadows) the float32 ring needs only the rows the call leaves behind.
    const bool shadowed = !s.shadow.empty() && !s.shadow[1 + k].empty();
    const bool keep = !shadowed || i >= row_end - cshape[1 + k][0];
    for (int64_t b = 0; b < nb; ++b) {
      T* dst = keep ? ring(1 + k, r0 + b).at(i, j + cb) + g * hg : s.gat[b];
      for (int64_t m = 0; m < hg; ++m) dst[m] = std::max(s.x[b][g * hg + m], T(0));
      if constexpr (std::is_same_v<WT, at::BFloat16>) {
        if (shadowed)
          for (int64_t ch = 0; ch < hg; ch += arkern_amx::kTileK)
            arkern_amx::to_bf16(dst + ch, arkern_amx::kTileK,
                                shadow_at(s, 1 + k, i % cshape[1 + k][0], j + cb, b, g * hg + ch));
      }
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

}  // namespace arkern_pixelcnn
