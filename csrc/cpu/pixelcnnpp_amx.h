// The AMX-BF16 products of the pixelcnnpp_decode kernel (csrc/cpu/pixelcnnpp_decode.cpp) for a group of batch
// rows in the bfloat16 precision (docs/design.md): the inputs the kernel stores as bfloat16 bits (the convs'
// rings) are copied, the others (rounded to bfloat16 as float32) converted exactly, into the tile input block
// (arkern_amx::Batch), multiplied by a matrix's VNNI
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
  thread_local std::vector<float> outbuf;
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

// y[r] = bias + W x[r] (bias == nullptr: y[r] += W x[r]) for r < rows; W (mp x n): tiles t; x[r]: n values.
inline void tiles_product(const uint16_t* t, int64_t n, int64_t mp, int64_t rows, const float* const* x,
                          const float* bias, float* const* y) {
  tiles_product_from(t, n, nullptr, 0, mp, rows, bias, nullptr, y,
                     [&](arkern_amx::Batch& batch, int64_t q, int64_t r) { batch.put(q, 0, x[r], n); });
}

}  // namespace arkern_pixelcnnpp
