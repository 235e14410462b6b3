// The Gated PixelCNN steps of the pixelcnn_generate CPU kernel (Runner, pixelcnn_runner.h): the vertical
// stack once per image row (the link rows, or with Scratch::fused the link's bfloat16 inputs), and per pixel the
// horizontal stack; float32 tiles or AMX tiles.
#pragma once

#include <algorithm>
#include <vector>

#include "pixelcnn_runner.h"

namespace arkern_pixelcnn {

// The vertical stack (all columns) -> per layer link rows for row i (fused, layers > 0: the link's bfloat16
// inputs, vlink, which link_horizontal multiplies per pixel): on image row i - 1 (aligned 0), or on row i of its
// down-shifted input (aligned 1: layer 0's cache holds image row r as row r + 1).
template <typename T, typename WT>
void Runner<T, WT>::gated_row(int64_t i, int64_t r0, int64_t nb, Scratch& s) const {
  const int64_t h = d.h, L = d.depth, hp = pad16(2 * h), cv = d.kw_a / 2;
  if (i == 0 && !d.aligned) {  // nothing above row 0: the link sees zeros, its output is its bias
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t l = 0; l < L; ++l)
        for (int64_t j = 0; j < s.lcol[l]; ++j)
          std::copy_n(on_tiles ? start_row(s, s.l0, l, b) : mats[gx(l, 1)].b, hp, link_at(s, b, l, j));
    return;
  }
  const int64_t ip = d.aligned ? i : i - 1, total = nb * W;
  for (int64_t l = 0; l < L; ++l) {
    const Mat<T, WT>& vm = mats[gx(l, 0)];
    const Mat<T, WT>& lm = mats[gx(l, 1)];
    const int64_t kh = d.khv(l), kw = d.kwv(l);
    // With a bfloat16 ring (init_shadows) a chunk is one column of the group's rows, (row, column) pair
    // p0 + q at row (p0 + q) % nb; else nb rows of consecutive columns, at row (p0 + q) / W. On tiles each
    // pair's sums do not depend on the chunk.
    const bool bf16_ring = shadowed(s, 2 * l);
    const int64_t chunk = bf16_ring ? nb : kChunk;
    // The next layer's vertical input: with a bfloat16 ring, its float32 ring needs only the rows the call
    // leaves behind (the last of them is on image row last_ip).
    const bool next_bf16 = l + 1 < L && shadowed(s, 2 * (l + 1));
    const int64_t last_ip = d.aligned ? row_end - 1 : row_end - 2;
    const bool next_keep = l + 1 < L && ip > last_ip - cshape[2 * (l + 1)][0];
    const auto row_of = [&](int64_t p) { return bf16_ring ? p % nb : p / W; };
    const auto col_of = [&](int64_t p) { return bf16_ring ? p / nb : p % W; };
    for (int64_t p0 = 0; p0 < total; p0 += chunk) {
      const int64_t n = std::min(chunk, total - p0);
      if (bf16_ring) {  // the sums start from the bias (+ the class bias, aligned 0): v0
        shadow_product(s, 2 * l, ip - kh + 1, kh, kw, 0, col_of(p0), tiles[gx(l, 0)], 0, vm, s.pv[0], hp,
                       start_row(s, s.v0, l, 0), hp);
      } else if (on_tiles) {
        vertical_tiles(l, ip, p0, n, r0, s);
      } else {
        for (int64_t q = 0; q < n; ++q) {
          const int64_t b = (p0 + q) / W, j = (p0 + q) % W;
          ring(2 * l, r0 + b).gather(ip - kh + 1, kh, j, kw, 0, s.pg[q]);
        }
        product(vm, n, s.pg, s, s.pv.data());
      }
      T* out[kChunk];
      for (int64_t q = 0; q < n; ++q) out[q] = link_at(s, row_of(p0 + q), l, col_of(p0 + q));
      // The link: on tiles it also adds what the horizontal stack adds (l0 = its bias + hx); fused (layers > 0),
      // only its inputs are stored here and link_horizontal multiplies them per pixel.
      const auto link_product = [&] {
        if (bf16_ring && s.fused) {  // only the inputs, rounded for link_horizontal
          constexpr int64_t kK = arkern_amx::kTileK;
          if constexpr (std::is_same_v<T, float>)
            for (int64_t q = 0; q < n; ++q)
              for (int64_t k = 0; k < 2 * h; k += kK)
                arkern_amx::to_bf16(s.pv[q] + k, kK, vlink_at(s, l, col_of(p0), k / kK) + q * kK);
          return;
        }
        if (bf16_ring) {  // one column of the group's rows: contiguous link rows
          tiles_into(gx(l, 1), n, s.pv.data(), out[0], hp, start_row(s, s.l0, l, 0), hp);
          return;
        }
        if (on_tiles) {
          link_tiles(l, n, [&](int64_t q) { return row_of(p0 + q); }, out, s);
          return;
        }
        product(lm, n, s.pv, s, out);
      };
      if (d.aligned) link_product();  // the link before the class bias
      for (int64_t q = 0; q < n; ++q) {
        const int64_t b = row_of(p0 + q), j = col_of(p0 + q);
        if (cond != nullptr && !(bf16_ring && !d.aligned)) {  // (in v0 already)
          const T* c = cond + ((r0 + b) * L + l) * 2 * h;
          for (int64_t m = 0; m < 2 * h; ++m) s.pv[q][m] += c[m];
        }
        if (l + 1 < L) {
          if constexpr (std::is_same_v<T, float>) {
            if (next_bf16 && !next_keep) {  // only the bfloat16 ring: the gate rounded straight into it
              gate_bf16(s.pv[q], s.pv[q] + h, h, shadow_at(s, 2 * (l + 1), ip % cshape[2 * (l + 1)][0], j + cv, b, 0),
                        arkern_amx::pad_rows(s.rows) * arkern_amx::kTileK);  // (shadow_at's 32-channel blocks)
              continue;
            }
          }
          T* dst = ring(2 * (l + 1), r0 + b).at(ip, j + cv);
          gate_row(s.pv[q], s.pv[q] + h, dst, h);
          if (next_bf16) shadow_put(s, 2 * (l + 1), ip % cshape[2 * (l + 1)][0], j + cv, b, 0, dst, h);
        }
      }
      if (!d.aligned) link_product();  // the link after the class bias
    }
  }
}

// The vertical conv of Gated layer l on AMX tiles for the n (row, column) pairs from p0, its window ending at
// image row ip: the kh kernel rows of taps (zero above the image) rounded straight from the ring into the
// tile input block; s.pv[q] = bias + W x.
template <typename T, typename WT>
void Runner<T, WT>::vertical_tiles(int64_t l, int64_t ip, int64_t p0, int64_t n, int64_t r0, Scratch& s) const {
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

// The link of Gated layer l on AMX tiles without a bfloat16 ring (the first layer) for n (row, column) pairs:
// out[q] = (b + W x) + hx of the pair's row (x = s.pv[q] rounded): the tiles' sums from zero, then the bias,
// then hx — the values of product() followed by adding hx, in one pass over the link rows.
template <typename T, typename WT>
template <typename RowOf>
void Runner<T, WT>::link_tiles(int64_t l, int64_t n, RowOf row_of, T* const* out, Scratch& s) const {
  if constexpr (std::is_same_v<WT, at::BFloat16>) {
    const Mat<T, WT>& m = mats[gx(l, 1)];
    arkern_amx::Batch& batch = arkern_amx::thread_batch();
    batch.begin(n, m.n);
    for (int64_t q = 0; q < n; ++q) batch.put(q, 0, s.pv[q], m.n);
    const float* y = batch.multiply(tiles[gx(l, 1)], m.mp);
    const int64_t h2 = 2 * d.h;
    for (int64_t q = 0; q < n; ++q) {
      const float* yq = y + q * m.mp;
      const T* hx = start_row(s, s.hx, l, row_of(q));
      T* o = out[q];
      for (int64_t c = 0; c < h2; ++c) o[c] = (yq[c] + m.b[c]) + hx[c];
      for (int64_t c = h2; c < m.mp; ++c) o[c] = yq[c] + m.b[c];
    }
  } else {
    (void)l, (void)n, (void)row_of, (void)out, (void)s;
  }
}

// The horizontal conv (matrix k) of Gated layer l at (i, j) on AMX tiles: its taps (one contiguous run of
// the ring) rounded straight into the tile input block; s.y = W x + the link row (which holds the bias and class
// bias too on tiles).
template <typename T, typename WT>
void Runner<T, WT>::horizontal_tiles(int64_t l, int64_t i, int64_t j, int64_t k, int64_t r0, int64_t nb, Scratch& s) const {
  if constexpr (std::is_same_v<WT, at::BFloat16>) {
    const Mat<T, WT>& m = mats[k];
    arkern_amx::Batch& batch = arkern_amx::thread_batch();
    batch.begin(nb, m.n);
    for (int64_t b = 0; b < nb; ++b) batch.put(b, 0, ring(2 * l + 1, r0 + b).at(i, j), m.n);
    const int64_t g = k - gx(l, 2);
    batch.multiply_into(tiles[k], nullptr, m.mp, s.y[0], s.ldy, link_at(s, 0, l, j) + g * 2 * (d.h / d.C), pad16(2 * d.h));
  } else {
    (void)l, (void)i, (void)j, (void)k, (void)r0, (void)nb, (void)s;
  }
}

// Fused (Scratch::fused), Gated layer l > 0 at pixel (i, j), colour group g: s.y = l0 + (the link's outputs of
// group g) (the link's bfloat16 inputs at column j, vlink) + W_h (the horizontal taps) in one tile pass, the
// sums starting from l0 (the link's bias + the horizontal conv's bias + class bias) — the same products in the
// same order as the link rows (tiles_into from l0) continued by the horizontal conv from them (shadow_product),
// without storing and loading the link rows between (float32 values, kept exactly in the accumulators).
template <typename T, typename WT>
void Runner<T, WT>::link_horizontal(int64_t l, int64_t i, int64_t j, int64_t g, Scratch& s) const {
#if ARKERN_HAVE_AMX
  if constexpr (std::is_same_v<WT, at::BFloat16> && std::is_same_v<T, float>) {
    constexpr int64_t kK = arkern_amx::kTileK;
    const int64_t c = 2 * l + 1, cin = cshape[c][2], hg2 = 2 * (d.h / d.C), kl = 2 * d.h / kK;
    const Mat<T, WT>& m = mats[gx(l, 2 + g)];
    const int64_t kx = m.n / kK;  // the taps: (kwh / 2) columns and g + 1 groups of the current one, in 32s
    s.xk.resize(static_cast<size_t>(kl + kx));
    for (int64_t k = 0; k < kl; ++k) s.xk[k] = vlink_at(s, l, j, k);
    for (int64_t k = 0; k < kx; ++k)
      s.xk[kl + k] = shadow_at(s, c, i % cshape[c][0], j + k * kK / cin, 0, k * kK % cin);
    const arkern_amx::Part parts[2] = {{tiles[gx(l, 1)] + g * hg2 / 16 * kl * arkern_amx::kTileElems, kl},
                                       {tiles[gx(l, 2 + g)], kx}};
    arkern_amx::matmul_at(s.xk.data(), s.rows, kK, parts, 2, m.mp, s.y[0], s.ldy, start_row(s, s.l0, l, 0) + g * hg2,
                          pad16(2 * d.h));
  } else {
    (void)l, (void)i, (void)j, (void)g, (void)s;
  }
#else
  (void)l, (void)i, (void)j, (void)g, (void)s;
#endif
}

template <typename T, typename WT>
void Runner<T, WT>::gated_step(int64_t i, int64_t j, int64_t g, int64_t r0, int64_t nb, Scratch& s) const {
  const int64_t C = d.C, h = d.h, hg = h / C, L = d.depth;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t cin = d.cin(l), allowed = (l == 0 ? g : g + 1) * (cin / C), ch = d.kwh(l) / 2;
    const int64_t kh = gx(l, 2 + g);
    // With a bfloat16 ring (init_shadows) the float32 ring needs only the row the call leaves behind.
    const bool bf16_ring = shadowed(s, 2 * l + 1), keep = !bf16_ring || i == row_end - 1;
    for (int64_t b = 0; b < nb; ++b) {
      const Ring<T> r = ring(2 * l + 1, r0 + b);
      if (l > 0 && keep) std::copy_n(s.x[b] + g * hg, hg, r.at(i, j + ch) + g * hg);
      if (bf16_ring) shadow_put(s, 2 * l + 1, 0, j + ch, b, g * hg, s.x[b] + g * hg, hg);
      if (!on_tiles) r.gather(i, 0, j, d.kwh(l), ch * cin + allowed, s.gat[b]);
    }
    if (bf16_ring && s.fused && (i > 0 || d.aligned)) {
      link_horizontal(l, i, j, g, s);
    } else if (bf16_ring) {  // the sums start from the link rows (incl. the bias and class bias on tiles)
      const Mat<T, WT>& m = mats[kh];
      shadow_product(s, 2 * l + 1, i, 0, d.kwh(l), m.n, j, tiles[kh], 0, m, s.y[0], s.ldy,
                     link_at(s, 0, l, j) + g * 2 * hg, pad16(2 * h));
    } else if (on_tiles) {
      horizontal_tiles(l, i, j, kh, r0, nb, s);
    } else {
      product(mats[kh], nb, s.gat, s, s.y.data());
    }
    const Mat<T, WT>& mo = mats[gx(l, 2 + C + g)];
    if (on_tiles && C == 1) {  // one colour group: the gate rounded straight into the 1x1's tile input block
      for (int64_t b = 0; b < nb; ++b) s.in[b] = s.y[b];
      tiles_into<In::gate>(gx(l, 2 + C + g), nb, s.in.data(), s.y[0], s.ldy, mo.b, 0);
    }
    for (int64_t b = 0; b < nb && !(on_tiles && C == 1); ++b) {
      T* pre = s.y[b];
      if (!on_tiles) {
        const T* lk = link_at(s, b, l, j) + g * 2 * hg;
        for (int64_t m = 0; m < 2 * hg; ++m) pre[m] += lk[m];
      }
      if (cond != nullptr && !on_tiles) {
        const T* c = cond + ((r0 + b) * L + l) * 2 * h + g * 2 * hg;
        for (int64_t m = 0; m < 2 * hg; ++m) pre[m] += c[m];
      }
      gate_row(pre, pre + hg, s.act[b] + l * h + g * hg, hg);
      s.in[b] = s.act[b] + l * h;
    }
    if (on_tiles && C > 1) {
      tiles_into(gx(l, 2 + C + g), nb, s.in.data(), s.y[0], s.ldy, mo.b, 0);
    } else if (!on_tiles) {
      mv(mo, nb, 0, mo.n, s.in.data(), s.y.data(), s.team);
    }
    for (int64_t b = 0; b < nb; ++b) {
      if (l == 0) {
        row_op<RowOp::zero_add>(s.x[b] + g * hg, s.y[b], hg);
      } else {
        row_op<RowOp::add>(s.x[b] + g * hg, s.y[b], hg);
      }
    }
  }
}

}  // namespace arkern_pixelcnn
