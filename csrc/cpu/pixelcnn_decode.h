// The building blocks of the PixelCNN-family decode kernels (pixelcnn_decode.cpp, pixelcnnpp_decode.cpp): the
// shared decode headers bound to the packed layout of arkern.ops.pixelcnn_decode.tile_matrix (bfloat16 tiles
// interleave pairs of 16-output groups; arkern/reference/pixelcnn_decode.py documents the layout).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "amx.h"
#include "decode_gate.h"
#include "decode_matvec.h"
#include "decode_sampler.h"
#include "isa.h"
#include "simd_math.h"
#include "team.h"

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

// Worker w of `workers` gets the output tiles [bounds[w], bounds[w + 1]) of a matrix with mp padded rows:
// contiguous runs with about equal numbers of outputs (the last tile may be narrower).
inline void tile_bounds(int64_t mp, int workers, int64_t* bounds) {
  const int64_t n = arkern_decode::tiles(mp);
  bounds[0] = 0;
  int64_t k = 0;
  for (int w = 1; w < workers; ++w) {
    const double target = static_cast<double>(mp) * w / workers;
    while (k < n && std::abs(std::min<int64_t>(mp, (k + 1) * arkern_decode::kTile) - target) <
                        std::abs(std::min<int64_t>(mp, k * arkern_decode::kTile) - target))
      ++k;
    bounds[w] = k;
  }
  bounds[workers] = n;
}

// Inputs [ja, jz) of y = b + W x with the output tiles split over a decode team (csrc/cpu/team.h; null or
// one worker: this thread). Every output is computed as by matvec_range, whichever worker runs its tile.
template <typename T, typename WT>
inline void matvec_range(const Mat<T, WT>& mat, int64_t rows, int64_t ja, int64_t jz, const T* const* x, T* const* y,
                         arkern_team::Session* team) {
  const int64_t n = arkern_decode::tiles(mat.mp);
  if (team == nullptr || !team->active() || n <= 1 || ja == jz) {
    matvec_range(mat, rows, ja, jz, x, y);
    return;
  }
  int64_t bounds[arkern_team::Crew::kMaxWorkers + 1];
  tile_bounds(mat.mp, team->workers(), bounds);
  team->phase(n, [&](int, int64_t k) {
    arkern_decode::matvec_range<arkern_decode::PixelCNNPacking>(mat, rows, ja, jz, x, y, k * arkern_decode::kTile,
                                                                (k + 1) * arkern_decode::kTile);
  }, bounds);
}

// y[r][0 : mp] = b + W x[r] for `rows` rows, split over a decode team as above.
template <typename T, typename WT>
inline void matvec(const Mat<T, WT>& mat, int64_t rows, const T* const* x, T* const* y, arkern_team::Session* team) {
  matvec_range(mat, rows, 0, mat.n, x, y, team);
}

// Inputs [ja, jz) of y = b + W x (as matvec_range) in the precision of the weights: float32 / float64 as is;
// the bfloat16 precision (docs/design.md) rounds every input to bfloat16 and multiplies on AMX tiles when that
// level is selected and `tiles` (the VNNI copy of W[:, ja:jz], arkern.ops.amx_layout) is given, else widens
// the weights on the float32 tile kernels (output tiles split over `team` as matvec_range; the AMX products
// run on this thread: one core's tiles outrun the team's float32 split).
template <typename T, typename WT>
void product_range(const Mat<T, WT>& mat, int64_t rows, int64_t ja, int64_t jz, const T* const* x, T* const* y,
                   const uint16_t* tiles, arkern_team::Session* team) {
  if constexpr (std::is_same_v<WT, at::BFloat16>) {
    if (ja < jz && tiles != nullptr && arkern_isa::use_amx()) {
      const arkern_amx::TileScope scope;
      arkern_amx::thread_batch().matvec(rows, x, jz - ja, tiles, mat.mp, ja == 0 ? mat.b : nullptr, y);
      return;
    }
    thread_local std::vector<float> buf;
    thread_local std::vector<float*> ptr;
    const int64_t n = jz - ja;
    buf.resize(static_cast<size_t>(rows * n));
    ptr.resize(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) ptr[r] = buf.data() + r * n;
    arkern_amx::round_rows(rows, x, n, ptr.data());
    matvec_range(mat, rows, ja, jz, ptr.data(), y, team);
  } else {
    (void)tiles;
    matvec_range(mat, rows, ja, jz, x, y, team);
  }
}

}  // namespace arkern_pixelcnn
