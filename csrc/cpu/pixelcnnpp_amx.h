// The AMX-BF16 products of the pixelcnnpp_decode kernel (csrc/cpu/pixelcnnpp_decode.cpp) for a group of batch
// rows in the bfloat16 precision (docs/design.md): the inputs the kernel stores rounded to bfloat16 (as
// float32) are converted exactly into the tile input block (arkern_amx::Batch), multiplied by a matrix's VNNI
// copy (arkern.ops.pixelcnnpp_decode.pack_tiles: a matrix whole, or its two column halves — a (2, 2) conv's top
// and bottom kernel rows, a two-part nin's `u` and `ul` columns) and summed in float32 on the tiles.
// Products over many rows (the row passes: every column of a row) run in pieces of kTilePiece rows, so that
// a piece's inputs and the matrix stay in L2 while the tiles run over it; each row's sums depend only on its
// own inputs, so the results do not depend on the pieces or the group.
#pragma once

#include <algorithm>
#include <cstdint>

#include "amx.h"

namespace arkern_pixelcnnpp {

constexpr int64_t kTilePiece = 64;  // rows per tile product (4 tiles of 16 rows share every weight tile)

// y[r] = bias + W x[r] (bias == nullptr: y[r] += W x[r]) for r < rows; W (mp x n) given by its VNNI tiles t;
// put(batch, q, r) fills row q of the tile input block (columns [0, n), arkern_amx::Batch::put) with the inputs
// of row r, e.g. straight from a ring of cached rows. Inside a TileScope.
template <class Put>
void tiles_product_from(const uint16_t* t, int64_t n, int64_t mp, int64_t rows, const float* bias, float* const* y,
                        Put&& put) {
  arkern_amx::Batch& batch = arkern_amx::thread_batch();
  for (int64_t r0 = 0; r0 < rows; r0 += kTilePiece) {
    const int64_t nr = std::min(kTilePiece, rows - r0);
    batch.begin(nr, n);
    for (int64_t q = 0; q < nr; ++q) put(batch, q, r0 + q);
    const float* out = batch.multiply(t, mp);
    for (int64_t q = 0; q < nr; ++q) {
      const float* o = out + q * mp;
      float* dst = y[r0 + q];
      if (bias != nullptr) {
        for (int64_t m = 0; m < mp; ++m) dst[m] = o[m] + bias[m];
      } else {
        for (int64_t m = 0; m < mp; ++m) dst[m] += o[m];
      }
    }
  }
}

// The same with x[r] (n values) as row r's inputs.
inline void tiles_product(const uint16_t* t, int64_t n, int64_t mp, int64_t rows, const float* const* x,
                          const float* bias, float* const* y) {
  tiles_product_from(t, n, mp, rows, bias, y,
                     [&](arkern_amx::Batch& batch, int64_t q, int64_t r) { batch.put(q, 0, x[r], n); });
}

// y[r] += W1 x1[r] + W2 x2[r] for r < rows, both summed in one pass of the tiles (W1: tiles t1, n1 inputs;
// W2: tiles t2, n2 inputs, or n2 == 0); both matrices have mp rows. Inside a TileScope.
inline void tiles_product2(const uint16_t* t1, int64_t n1, const float* const* x1, const uint16_t* t2, int64_t n2,
                           const float* const* x2, int64_t mp, int64_t rows, float* const* y) {
  arkern_amx::Batch& batch = arkern_amx::thread_batch();
  for (int64_t r0 = 0; r0 < rows; r0 += kTilePiece) {
    const int64_t nr = std::min(kTilePiece, rows - r0);
    batch.begin(nr, n1, n2);
    for (int64_t r = 0; r < nr; ++r) {
      batch.put(r, 0, x1[r0 + r], n1);
      if (n2 > 0) batch.put(r, batch.second(), x2[r0 + r], n2);
    }
    const float* out = n2 > 0 ? batch.multiply2(t1, t2, mp) : batch.multiply(t1, mp);
    for (int64_t r = 0; r < nr; ++r) {
      const float* o = out + r * mp;
      float* dst = y[r0 + r];
      for (int64_t m = 0; m < mp; ++m) dst[m] += o[m];
    }
  }
}

}  // namespace arkern_pixelcnnpp
