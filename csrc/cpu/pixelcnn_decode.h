// The building blocks of the PixelCNN-family decode kernels (pixelcnn_decode.cpp, pixelcnnpp_decode.cpp): the
// shared decode headers bound to the packed layout of arkern.ops.pixelcnn_decode.tile_matrix (bfloat16 tiles
// interleave pairs of 16-output groups; arkern/reference/pixelcnn_decode.py documents the layout).
#pragma once

#include <cstdint>

#include "decode_gate.h"
#include "decode_matvec.h"
#include "decode_sampler.h"
#include "simd_math.h"

namespace arkern_pixelcnn {

using arkern_decode::gate;
using arkern_decode::Mat;
using arkern_decode::pad16;
using arkern_decode::Sampler;

// Inputs [ja, jz) of y = b + W x for `rows` rows (see arkern_decode::matvec_range).
template <typename T, typename WT>
inline void matvec_range(const Mat<T, WT>& mat, int64_t rows, int64_t ja, int64_t jz, const T* const* x, T* const* y) {
  arkern_decode::matvec_range<arkern_decode::PixelCNNPacking>(mat, rows, ja, jz, x, y);
}

// y[r][0 : mp] = b + W x[r] for `rows` rows.
template <typename T, typename WT>
inline void matvec(const Mat<T, WT>& mat, int64_t rows, const T* const* x, T* const* y) {
  arkern_decode::matvec<arkern_decode::PixelCNNPacking>(mat, rows, x, y);
}

}  // namespace arkern_pixelcnn
