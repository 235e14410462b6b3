// The AMX-BF16 products of the pixelcnnpp_decode kernel (csrc/cpu/pixelcnnpp_decode.cpp) for a group of batch
// rows in the bfloat16 precision (docs/design.md): the inputs the kernel stores as bfloat16 bits (the convs'
// rings) are read in place (tiles_product_at) or copied, the others (rounded to bfloat16 as float32) converted
// exactly, into the tile input block (arkern_amx::Batch), multiplied by a matrix's VNNI
// copy (arkern.ops.pixelcnnpp_decode.pack_tiles: a matrix whole, or its two column halves — a (2, 2) conv's top
// and bottom kernel rows, a two-part nin's `u` and `ul` columns) and summed in float32 on the tiles.
// Products over many rows (the row passes: every column of a row) run in pieces of kTilePiece rows, so that
// a piece's inputs stay in L2 while the tiles run over it. The kernel runs each group of rows on tiles on one
// thread (groups in parallel over threads). Each row's sums depend only on its own inputs, so the results depend
// neither on the pieces, nor the group, nor the threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "amx.h"

namespace arkern_pixelcnnpp {

constexpr int64_t kTilePiece = 64;  // rows per tile product (4 tiles of 16 rows share every weight tile)

// The product of the input block `batch` holds (rows r16, a multiple of 16; columns [0, second()) by the
// tiles t1, the rest by t2), mp outputs, into out (r16 x mp), by arkern_amx::matmul (which prefetches each step's
// inputs and weights a step ahead: ~12-18% less CPU time in the row passes' products, CIFAR batch 64).
inline void tiles_multiply(arkern_amx::Batch& batch, int64_t r16, const uint16_t* t1, const uint16_t* t2, int64_t mp,
                           float* out) {
#if ARKERN_HAVE_AMX
  const int64_t kb1 = batch.second() / arkern_amx::kTileK, kb2 = (batch.ld() - batch.second()) / arkern_amx::kTileK;
  const arkern_amx::Part parts[2] = {{t1, kb1}, {t2, kb2}};
  arkern_amx::matmul(batch.row(0), r16, batch.ld(), parts, kb2 > 0 ? 2 : 1, mp, out, mp);
#else  // unreachable: arkern_isa never selects amx in such a build
  (void)batch, (void)r16, (void)t1, (void)t2, (void)mp, (void)out;
#endif
}

// y[r] = init[r] + W1 x1 + W2 x2 (init == nullptr: bias + ..., both null: y[r] += ...) for r < rows: W1 (mp x n1)
// given by its VNNI tiles t1, W2 (mp x n2) by t2 (or n2 == 0); put(batch, q, r) fills row q of the tile input block with row r's
// inputs (columns [0, n1), and [batch.second(), batch.second() + n2)), e.g. straight from a ring of cached
// rows. Inside a TileScope.
template <class Put>
void tiles_product_from(const uint16_t* t1, int64_t n1, const uint16_t* t2, int64_t n2, int64_t mp, int64_t rows,
                        const float* bias, const float* const* init, float* const* y, Put&& put) {
  arkern_amx::Batch& batch = arkern_amx::thread_batch();
  thread_local arkern_amx::line_vector<float> outbuf;
  for (int64_t r0 = 0; r0 < rows; r0 += kTilePiece) {
    const int64_t nr = std::min(kTilePiece, rows - r0), r16 = arkern_amx::pad_rows(nr);
    batch.begin(nr, n1, n2);
    for (int64_t q = 0; q < nr; ++q) put(batch, q, r0 + q);
    if (outbuf.size() < static_cast<size_t>(r16 * mp)) outbuf.resize(static_cast<size_t>(r16 * mp));
    float* const out = outbuf.data();
    tiles_multiply(batch, r16, t1, t2, mp, out);
    for (int64_t q = 0; q < nr; ++q) {
      const float* o = out + q * mp;
      float* dst = y[r0 + q];
      if (init != nullptr) {
        const float* in = init[r0 + q];
        for (int64_t m = 0; m < mp; ++m) dst[m] = in[m] + o[m];
      } else if (bias != nullptr) {
        for (int64_t m = 0; m < mp; ++m) dst[m] = o[m] + bias[m];
      } else {
        for (int64_t m = 0; m < mp; ++m) dst[m] += o[m];
      }
    }
  }
}

#if ARKERN_HAVE_AMX
// One 16-row (MR = 1) or two 16-row (MR = 2) tiles' block of NR x 16 outputs: the accumulators summed over the kb
// k-blocks of one part, in order (as arkern_amx::block), the first tile's k-block k read at a[k] (rows la
// elements apart), the second's at b[k] (rows lb apart); w: the output block's first weight tile (the next
// block's kb tiles further on). Each input step and weight tile prefetched into L1 a step ahead.
template <int MR, int NR>
ARKERN_AMX_TARGET inline void block_rows(const uint16_t* const* a, int64_t la, const uint16_t* const* b, int64_t lb,
                                         const uint16_t* w, int64_t kb, float* y, int64_t ldy) {
  using namespace arkern_amx;
  zero_acc<MR, NR>();
  for (int64_t k = 0; k < kb; ++k) {
    if (k + 1 < kb)
      prefetch_step2<MR, NR>(a[k + 1], la, MR > 1 ? b[k + 1] : nullptr, lb, w + (k + 1) * kTileElems, kb);
    multiply_acc2<MR, NR>(a[k], la, MR > 1 ? b[k] : nullptr, lb, w + k * kTileElems, kb);
  }
  store_acc<MR, NR>(y, ldy);
}

// out (tiles x 16 rows, row stride mp) = X W^T, W (mp x 32 kb): the VNNI tiles w of one part; tile t's k-block k
// of inputs at xk[t * kb + k], its rows ld[t] elements apart. The same sums in the same order as
// arkern_amx::matmul on the same inputs.
ARKERN_AMX_TARGET inline void matmul_rows(const uint16_t* const* xk, const int64_t* ld, int64_t tiles,
                                          const uint16_t* w, int64_t kb, int64_t mp, float* out) {
  const int64_t nblk = mp / 16;
  for (int64_t ob = 0; ob < nblk; ob += 2) {
    const uint16_t* wb = w + ob * kb * arkern_amx::kTileElems;
    const bool two = ob + 1 < nblk;
    int64_t t = 0;
    for (; t + 2 <= tiles; t += 2) {
      float* y = out + t * 16 * mp + ob * 16;
      if (two) {
        block_rows<2, 2>(xk + t * kb, ld[t], xk + (t + 1) * kb, ld[t + 1], wb, kb, y, mp);
      } else {
        block_rows<2, 1>(xk + t * kb, ld[t], xk + (t + 1) * kb, ld[t + 1], wb, kb, y, mp);
      }
    }
    if (t < tiles) {
      float* y = out + t * 16 * mp + ob * 16;
      if (two) {
        block_rows<1, 2>(xk + t * kb, ld[t], nullptr, 0, wb, kb, y, mp);
      } else {
        block_rows<1, 1>(xk + t * kb, ld[t], nullptr, 0, wb, kb, y, mp);
      }
    }
  }
}
#endif

// y[r] = bias + W x[r] for r < rows, W (mp x n, n a multiple of 32): tiles t; the inputs read where they live
// when they can be: at(r0, xk, &ld) sets xk[k] (k < n / 32) to k-block k of row r0 and ld to the elements between
// rows r0 .. r0 + 15 and returns true, or returns false, and then put(dst, r) copies row r's n inputs (bfloat16
// bits) to dst for each row of that tile (a block of copies, rows past `rows` zero). The same sums as
// tiles_product_from with the same inputs, in pieces of `piece` rows (a multiple of 16). Inside a TileScope.
template <class At, class Put>
void tiles_product_at(const uint16_t* t, int64_t n, int64_t mp, int64_t rows, int64_t piece, const float* bias,
                      float* const* y, At&& at, Put&& put) {
#if ARKERN_HAVE_AMX
  const int64_t kb = n / arkern_amx::kTileK;
  thread_local std::vector<const uint16_t*> xk;
  thread_local std::vector<int64_t> ld;
  thread_local arkern_amx::line_vector<uint16_t> copies;
  thread_local arkern_amx::line_vector<float> outbuf;
  for (int64_t r0 = 0; r0 < rows; r0 += piece) {
    const int64_t nr = std::min(piece, rows - r0), tiles = (nr + 15) / 16;
    if (xk.size() < static_cast<size_t>(tiles * kb)) xk.resize(static_cast<size_t>(tiles * kb));
    if (ld.size() < static_cast<size_t>(tiles)) ld.resize(static_cast<size_t>(tiles));
    int64_t copied = 0;  // tiles whose rows are copied
    for (int64_t q = 0; q < tiles; ++q)
      if (!at(r0 + 16 * q, xk.data() + q * kb, &ld[q])) ld[q] = -1 - copied++;
    if (copied > 0) {
      if (copies.size() < static_cast<size_t>(copied * 16 * n)) copies.resize(static_cast<size_t>(copied * 16 * n));
      for (int64_t q = 0; q < tiles; ++q) {
        if (ld[q] >= 0) continue;
        uint16_t* blk = copies.data() + (-1 - ld[q]) * 16 * n;
        for (int64_t r = 0; r < 16; ++r) {
          if (r0 + 16 * q + r < rows) {
            put(blk + r * n, r0 + 16 * q + r);
          } else {
            std::fill_n(blk + r * n, n, uint16_t{0});
          }
        }
        for (int64_t k = 0; k < kb; ++k) xk[q * kb + k] = blk + k * arkern_amx::kTileK;
        ld[q] = n;
      }
    }
    if (outbuf.size() < static_cast<size_t>(tiles * 16 * mp)) outbuf.resize(static_cast<size_t>(tiles * 16 * mp));
    matmul_rows(xk.data(), ld.data(), tiles, t, kb, mp, outbuf.data());
    for (int64_t q = 0; q < nr; ++q) {
      const float* o = outbuf.data() + q * mp;
      float* dst = y[r0 + q];
      for (int64_t m = 0; m < mp; ++m) dst[m] = o[m] + bias[m];
    }
  }
#else  // unreachable: arkern_isa never selects amx in such a build
  (void)t, (void)n, (void)mp, (void)rows, (void)piece, (void)bias, (void)y, (void)at, (void)put;
#endif
}

// y[r] = bias + W x[r] (bias == nullptr: y[r] += W x[r]) for r < rows; W (mp x n): tiles t; x[r]: n values.
inline void tiles_product(const uint16_t* t, int64_t n, int64_t mp, int64_t rows, const float* const* x,
                          const float* bias, float* const* y) {
  tiles_product_from(t, n, nullptr, 0, mp, rows, bias, nullptr, y,
                     [&](arkern_amx::Batch& batch, int64_t q, int64_t r) { batch.put(q, 0, x[r], n); });
}

}  // namespace arkern_pixelcnnpp
