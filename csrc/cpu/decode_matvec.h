// Tiled matrix-vector products shared by the CPU decode kernels (wavenet_decode.cpp, pixelcnn_decode.cpp,
// pixelcnnpp_decode.cpp); the packed layout is documented in arkern/reference/wavenet_decode.py and
// arkern/reference/pixelcnn_decode.py, and the reasons for it in docs/design.md ("Backends").
//
// A packed matrix W (m x n) has its rows zero-padded to mp = ceil16(m) and is stored as row tiles of up to
// 64 outputs, each tile transposed (n x width) and contiguous. One tile is a stream of 16..64 weights per
// input, multiplied into 1..4 zmm accumulators per row; four rows share every weight load and, when more
// rows share a tile, it is cut into L1-resident blocks of Packing::kJBlock inputs. Accumulation is float32
// (or float64 for float64 models), inputs in the order j = 0, 1, ... within every accumulator.
//
// The two packers differ in small ways, described by a Packing policy:
// - WaveNetPacking: bfloat16 tiles keep the float32 order (widened with one shift per 16 weights; when more
//   than 4 rows share a tile, each L1 block is widened to float32 once); one accumulator chain per output,
//   so a row gets bit-identical results in any row group (the WaveNet kernel relies on it).
// - PixelCNNPacking: bfloat16 tiles interleave each pair of 16-output groups (outputs k and 16 + k share a
//   32-bit lane, see bf16_slot), so one 512-bit load widens to 32 weights with a shift and an AND; a single
//   row gets two accumulator chains (even / odd inputs) so that enough FMAs are in flight.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "isa.h"

namespace arkern_decode {

constexpr int64_t kTile = 64;  // outputs per weight tile

inline int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

struct WaveNetPacking {
  static constexpr bool kInterleavedBf16 = false;
  static constexpr bool kSplitSingleRow = false;
  static constexpr bool kWidenBf16Blocks = true;
  static constexpr int64_t kJBlock = 32;  // inputs per L1 block (<= 8 KB as float32)
};

struct PixelCNNPacking {
  static constexpr bool kInterleavedBf16 = true;
  static constexpr bool kSplitSingleRow = true;
  static constexpr bool kWidenBf16Blocks = false;
  static constexpr int64_t kJBlock = 64;  // inputs per L1 block (<= 16 KB)
};

// One packed matrix: y = b + W x, W (m x n) stored as described above, bias padded to mp.
template <typename T, typename WT>
struct Mat {
  const WT* w = nullptr;
  const T* b = nullptr;
  int64_t m = 0, mp = 0, n = 0;
};

// Storage position of output m in one input's row of an interleaved bfloat16 tile of width w.
inline int bf16_slot(int m, int w) {
  const int p = m / 32 * 32, k = m % 32;
  if (p + 32 > w) return m;  // a last group of 16 is stored as is
  return p + (k < 16 ? 2 * k : 2 * (k - 16) + 1);
}

inline float widen(float v) { return v; }
inline float widen(at::BFloat16 v) { return static_cast<float>(v); }
inline double widen(double v) { return v; }

// y[r][m0 : m0 + 16V] = (init ? init : y[r])[m0 : ...] + sum_{0 <= j < jn} blk[j] x[r][xj + j] for NB rows;
// blk is (jn x 16V), contiguous.
template <class P, typename T, typename WT, int NB, int V>
void tile_generic(const WT* blk, int64_t jn, const T* const* x, int64_t xj, T* const* y, int64_t m0,
                  const T* init) {
  constexpr int W = 16 * V;
  T acc[NB][W];
  for (int r = 0; r < NB; ++r)
    for (int m = 0; m < W; ++m) acc[r][m] = (init ? init : y[r])[m0 + m];
  for (int64_t j = 0; j < jn; ++j) {
    const WT* wj = blk + j * W;
    T wf[W];
    for (int m = 0; m < W; ++m) {
      if constexpr (std::is_same_v<WT, at::BFloat16> && P::kInterleavedBf16) {
        wf[m] = widen(wj[bf16_slot(m, W)]);
      } else {
        wf[m] = static_cast<T>(widen(wj[m]));
      }
    }
    for (int r = 0; r < NB; ++r) {
      const T xr = x[r][xj + j];
#pragma omp simd
      for (int m = 0; m < W; ++m) acc[r][m] += wf[m] * xr;
    }
  }
  for (int r = 0; r < NB; ++r)
    for (int m = 0; m < W; ++m) y[r][m0 + m] = acc[r][m];
}

#if defined(__AVX512F__)
// The 16V weights of one input, widened to float32.
template <class P, int V>
inline void load_weights(const float* p, __m512 (&w)[V]) {
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_ps(p + 16 * v);
}

template <class P, int V>
inline void load_weights(const at::BFloat16* p, __m512 (&w)[V]) {  // bf16 -> fp32: the high 16 bits
  int v = 0;
  if constexpr (P::kInterleavedBf16) {
    const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
#pragma GCC unroll 2
    for (; v + 1 < V; v += 2) {
      const __m512i pair = _mm512_loadu_si512(p + 16 * v);
      w[v] = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
      w[v + 1] = _mm512_castsi512_ps(_mm512_and_si512(pair, high));
    }
  }
#pragma GCC unroll 4
  for (; v < V; ++v) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * v));
    w[v] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// The float32 tile in AVX-512 registers (same contract as tile_generic). With P::kSplitSingleRow a single
// row gets two accumulator sets (even / odd inputs), summed at the end.
template <class P, typename WT, int NB, int V>
void tile_avx512(const WT* blk, int64_t jn, const float* const* x, int64_t xj, float* const* y, int64_t m0,
                 const float* init) {
  constexpr int S = NB == 1 && P::kSplitSingleRow ? 2 : 1;
  constexpr int W = 16 * V;
  __m512 acc[S][NB][V];
#pragma GCC unroll 4
  for (int r = 0; r < NB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      acc[0][r][v] = _mm512_loadu_ps((init ? init : y[r]) + m0 + 16 * v);
      if constexpr (S == 2) acc[S - 1][r][v] = _mm512_setzero_ps();
    }
  int64_t j = 0;
  for (; j + S <= jn; j += S) {
#pragma GCC unroll 2
    for (int s = 0; s < S; ++s) {
      __m512 w[V];
      load_weights<P, V>(blk + (j + s) * W, w);
#pragma GCC unroll 4
      for (int r = 0; r < NB; ++r) {
        const __m512 xr = _mm512_set1_ps(x[r][xj + j + s]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[s][r][v] = _mm512_fmadd_ps(w[v], xr, acc[s][r][v]);
      }
    }
  }
  for (; j < jn; ++j) {
    __m512 w[V];
    load_weights<P, V>(blk + j * W, w);
#pragma GCC unroll 4
    for (int r = 0; r < NB; ++r) {
      const __m512 xr = _mm512_set1_ps(x[r][xj + j]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[0][r][v] = _mm512_fmadd_ps(w[v], xr, acc[0][r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < NB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      __m512 a = acc[0][r][v];
      if constexpr (S == 2) a = _mm512_add_ps(a, acc[S - 1][r][v]);
      _mm512_storeu_ps(y[r] + m0 + 16 * v, a);
    }
}
#endif

template <class P, typename T, typename WT, int NB, int V>
inline void tile(const WT* blk, int64_t jn, const T* const* x, int64_t xj, T* const* y, int64_t m0, const T* init) {
#if defined(__AVX512F__)
  // the hand-written AVX-512 tile unless a lower level is forced (arkern_isa: ARKERN_ISA=avx2)
  if constexpr (std::is_same_v<T, float>) {
    if (arkern_isa::use_avx512()) {
      tile_avx512<P, WT, NB, V>(blk, jn, x, xj, y, m0, init);
    } else {
      tile_generic<P, T, WT, NB, V>(blk, jn, x, xj, y, m0, init);
    }
  } else {
    tile_generic<P, T, WT, NB, V>(blk, jn, x, xj, y, m0, init);
  }
#else
  tile_generic<P, T, WT, NB, V>(blk, jn, x, xj, y, m0, init);
#endif
}

// One block of inputs for `rows` rows, four at a time.
template <class P, typename T, typename WT, int V>
void tile_group(const WT* blk, int64_t jn, int64_t rows, const T* const* x, int64_t xj, T* const* y, int64_t m0,
                const T* init) {
  for (int64_t r = 0; r < rows; r += 4) {
    switch (std::min<int64_t>(4, rows - r)) {
      case 4: tile<P, T, WT, 4, V>(blk, jn, x + r, xj, y + r, m0, init); break;
      case 3: tile<P, T, WT, 3, V>(blk, jn, x + r, xj, y + r, m0, init); break;
      case 2: tile<P, T, WT, 2, V>(blk, jn, x + r, xj, y + r, m0, init); break;
      default: tile<P, T, WT, 1, V>(blk, jn, x + r, xj, y + r, m0, init); break;
    }
  }
}

// Inputs [ja, jz) of one tile for `rows` rows; x[r][0] is input ja. More than 4 rows: the tile is cut into
// blocks of P::kJBlock inputs, each streamed from memory by the first 4 rows and re-read from L1 by the others.
template <class P, typename T, typename WT, int V>
void tile_rows(const WT* blk, int64_t ja, int64_t jz, int64_t rows, const T* const* x, T* const* y, int64_t m0,
               const T* bias) {
  constexpr int64_t W = 16 * V;
  const int64_t step = rows > 4 ? P::kJBlock : jz - ja;
  for (int64_t j0 = ja; j0 < jz; j0 += step) {
    const int64_t jn = std::min(jz, j0 + step) - j0;
    const WT* bp = blk + j0 * W;
    const T* init = j0 == 0 ? bias : nullptr;
    if constexpr (P::kWidenBf16Blocks && std::is_same_v<T, float> && std::is_same_v<WT, at::BFloat16>) {
      if (rows > 4) {  // widened once per block rather than once per 4 rows
        alignas(64) float wide[P::kJBlock * W];
        for (int64_t i = 0; i < jn * W; ++i) wide[i] = static_cast<float>(bp[i]);
        tile_group<P, float, float, V>(wide, jn, rows, x, j0 - ja, y, m0, init);
        continue;
      }
    }
    tile_group<P, T, WT, V>(bp, jn, rows, x, j0 - ja, y, m0, init);
  }
}

// Inputs [ja, jz) of y = b + W x: y[r][0 : mp] (+)= W[:, ja:jz] x[r][0 : jz - ja] for `rows` rows, starting
// from the bias when ja == 0 and from y[r] otherwise. Only outputs [m_begin, m_end) when given (m_begin a
// multiple of kTile; m_end < 0: to mp): a team of threads splits a product over whole tiles (team.h).
template <class P, typename T, typename WT>
void matvec_range(const Mat<T, WT>& mat, int64_t rows, int64_t ja, int64_t jz, const T* const* x, T* const* y,
                  int64_t m_begin = 0, int64_t m_end = -1) {
  if (m_end < 0 || m_end > mat.mp) m_end = mat.mp;
  if (ja == jz) {  // e.g. a mask-A 1x1 conv of the first colour group: only the bias
    if (ja == 0)
      for (int64_t r = 0; r < rows; ++r) std::copy(mat.b + m_begin, mat.b + m_end, y[r] + m_begin);
    return;
  }
  for (int64_t m0 = m_begin; m0 < m_end; m0 += kTile) {
    const WT* blk = mat.w + m0 * mat.n;
    switch (std::min(kTile, mat.mp - m0) / 16) {
      case 4: tile_rows<P, T, WT, 4>(blk, ja, jz, rows, x, y, m0, mat.b); break;
      case 3: tile_rows<P, T, WT, 3>(blk, ja, jz, rows, x, y, m0, mat.b); break;
      case 2: tile_rows<P, T, WT, 2>(blk, ja, jz, rows, x, y, m0, mat.b); break;
      default: tile_rows<P, T, WT, 1>(blk, ja, jz, rows, x, y, m0, mat.b); break;
    }
  }
}

// Number of output tiles of a packed matrix with mp (padded) rows.
inline int64_t tiles(int64_t mp) { return (mp + kTile - 1) / kTile; }

// y[r][0 : mp] = b + W x[r] for `rows` rows; x[r] holds n values, y[r] room for mp.
template <class P, typename T, typename WT>
void matvec(const Mat<T, WT>& mat, int64_t rows, const T* const* x, T* const* y) {
  matvec_range<P>(mat, rows, 0, mat.n, x, y);
}

}  // namespace arkern_decode
