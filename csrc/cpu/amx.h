// AMX-BF16 tile kernels for the batched matrix products of the fused samplers' bfloat16 precision, and the
// bfloat16 rounding that precision is defined by (docs/design.md, "bfloat16 precision").
//
// A matrix W (mp x n, mp a multiple of 16) is stored for the tiles as VNNI pairs (packed in Python by
// arkern.ops.amx_layout.pack_vnni): for each block of 16 outputs o and each block of 32 inputs k, one
// 1 KB tile of 16 rows, row r holding W[o0 + q][k0 + 2r + p] at position 2q + p (q < 16, p < 2); blocks are
// stored output block by output block, inputs zero-padded to a multiple of 32.
//
// matmul() computes Y (rows16 x mp, float32) = X (rows16 x 32kb, bfloat16 rows) W^T with TDPBF16PS: every
// product of two bfloat16 values is exact in float32 and the sums are float32 (the order within a tile is
// the hardware's, and denormal inputs and results are flushed to zero). Four accumulator tiles (32 rows x
// 32 outputs) share every A and B tile load. The code is compiled with a function target attribute, so every
// x86-64 build has it; callers run it only when arkern_isa::use_amx() (isa.h), which also means the OS has
// granted the tile state to this process.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// ARKERN_NO_AMX (a -D flag) builds without the tile kernels, as a compiler without AMX support does.
#if !defined(ARKERN_NO_AMX) && defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define ARKERN_HAVE_AMX 1
#include <immintrin.h>
#define ARKERN_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))
#else
#define ARKERN_HAVE_AMX 0
#endif

namespace arkern_amx {

// float32 -> bfloat16 bits, round to nearest even (as torch's .to(torch.bfloat16)); NaN stays NaN.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// f rounded to the nearest bfloat16, as a float32.
inline float round_bf16(float f) {
  const uint32_t u = static_cast<uint32_t>(to_bf16(f)) << 16;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
// 16 floats' bits -> the bits of the nearest bfloat16 in the high half (to_bf16, 16 at a time).
inline __m512i round_bits16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i r = _mm512_add_epi32(
      u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
}
#endif

// dst[j] = round_bf16(src[j]) for j < n (dst may be src).
inline void round_bf16(const float* src, int64_t n, float* dst) {
  int64_t j = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_ps(dst + j, _mm512_castsi512_ps(_mm512_and_si512(round_bits16(_mm512_loadu_ps(src + j)),
                                                                   _mm512_set1_epi32(static_cast<int>(0xffff0000u)))));
#endif
  for (; j < n; ++j) dst[j] = round_bf16(src[j]);
}

inline void round_bf16(float* x, int64_t n) { round_bf16(x, n, x); }

// dst[j] = to_bf16(src[j]) for j < n.
inline void to_bf16(const float* src, int64_t n, uint16_t* dst) {
  int64_t j = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_bits16(_mm512_loadu_ps(src + j)), 16)));
#endif
  for (; j < n; ++j) dst[j] = to_bf16(src[j]);
}

constexpr int64_t kTileRows = 16;    // rows of an A / C tile, pairs of inputs of a B tile
constexpr int64_t kTileK = 32;       // bfloat16 inputs per A row / B tile
constexpr int64_t kTileElems = 512;  // bfloat16 values per B tile

inline int64_t pad32(int64_t n) { return (n + 31) / 32 * 32; }
inline int64_t pad_rows(int64_t rows) { return (rows + kTileRows - 1) / kTileRows * kTileRows; }

// bfloat16 elements of a VNNI-packed (mp x n) matrix.
inline int64_t packed_size(int64_t mp, int64_t n) { return mp * pad32(n); }

#if ARKERN_HAVE_AMX

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (2 x 2 blocks of 16 rows x 16 float32), 4-5: A (16 rows x 32 bfloat16), 6-7: B.
ARKERN_AMX_TARGET inline void configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kTileRows;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// MR x NR blocks of 16 rows x 16 outputs; x: the first row (stride ldx elements); w: the kb tiles of the
// first output block (the second follows at w + kb tiles); y: the first output (stride ldy floats).
template <int MR, int NR>
ARKERN_AMX_TARGET inline void block(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t kb, float* y,
                                    int64_t ldy) {
  _tile_zero(0);
  if constexpr (NR > 1) _tile_zero(1);
  if constexpr (MR > 1) _tile_zero(2);
  if constexpr (MR > 1 && NR > 1) _tile_zero(3);
  const int64_t xs = ldx * 2;
  for (int64_t k = 0; k < kb; ++k) {
    _tile_loadd(4, x + k * kTileK, xs);
    if constexpr (MR > 1) _tile_loadd(5, x + kTileRows * ldx + k * kTileK, xs);
    _tile_loadd(6, w + k * kTileElems, 64);
    if constexpr (NR > 1) _tile_loadd(7, w + (kb + k) * kTileElems, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NR > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MR > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (MR > 1 && NR > 1) _tile_dpbf16ps(3, 5, 7);
  }
  const int64_t ys = ldy * 4;
  _tile_stored(0, y, ys);
  if constexpr (NR > 1) _tile_stored(1, y + 16, ys);
  if constexpr (MR > 1) _tile_stored(2, y + kTileRows * ldy, ys);
  if constexpr (MR > 1 && NR > 1) _tile_stored(3, y + kTileRows * ldy + 16, ys);
}

ARKERN_AMX_TARGET inline void release() { _tile_release(); }

// Y[r][0 : mp] = sum_j X[r][j] W[:, j] for r < rows16 (a multiple of 16); X: bfloat16 bits, row stride ldx
// >= 32 kb with zeros in columns [n, 32 kb); W: VNNI tiles of an (mp x n) matrix, kb = ceil(n / 32);
// Y: float32, row stride ldy >= mp. The tiles must be configured (a TileScope).
ARKERN_AMX_TARGET inline void matmul(const uint16_t* x, int64_t rows16, int64_t ldx, const uint16_t* w, int64_t mp,
                                     int64_t kb, float* y, int64_t ldy) {
  const int64_t nblk = mp / 16, tiles_per_blk = kb * kTileElems;
  for (int64_t ob = 0; ob < nblk; ob += 2) {
    const uint16_t* wb = w + ob * tiles_per_blk;
    float* yb = y + ob * 16;
    const bool two = ob + 1 < nblk;
    int64_t r = 0;
    for (; r + 2 * kTileRows <= rows16; r += 2 * kTileRows) {
      if (two) {
        block<2, 2>(x + r * ldx, ldx, wb, kb, yb + r * ldy, ldy);
      } else {
        block<2, 1>(x + r * ldx, ldx, wb, kb, yb + r * ldy, ldy);
      }
    }
    if (r < rows16) {
      if (two) {
        block<1, 2>(x + r * ldx, ldx, wb, kb, yb + r * ldy, ldy);
      } else {
        block<1, 1>(x + r * ldx, ldx, wb, kb, yb + r * ldy, ldy);
      }
    }
  }
}

#endif  // ARKERN_HAVE_AMX

// The tile configuration of matmul() for the life of the scope, on this thread (loaded on entry, released on
// exit: other code on the thread, e.g. oneDNN's, may configure the tiles its own way between two scopes).
class TileScope {
 public:
#if ARKERN_HAVE_AMX
  TileScope() { configure(); }
  ~TileScope() { release(); }
#else
  TileScope() = default;
#endif
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// Scratch for y[r] = bias + W x[r] over a batch of rows with the tile kernel: the rows' inputs rounded to
// bfloat16 into a zero-padded (rows16 x 32kb) block, the products into a float32 block, then the bias added
// and the rows scattered to their destinations. Every output of a row depends only on that row's inputs,
// whatever the number of rows. One per thread (thread_batch); the buffers grow as needed.
class Batch {
 public:
  // y[r][0 : mp] = bias + W x[r] (bias == nullptr: y[r] += W x[r]) for r < rows; x[r] holds n floats; W
  // packed by pack_vnni (mp x n). Inside a TileScope.
  void matvec(int64_t rows, const float* const* x, int64_t n, const uint16_t* w, int64_t mp, const float* bias,
              float* const* y) {
    matvec2(rows, x, n, nullptr, 0, w, mp, bias, y);
  }

  // The same with x[r] = [x1[r] (n1 values); x2[r] (n2 values)], n = n1 + n2.
  void matvec2(int64_t rows, const float* const* x1, int64_t n1, const float* const* x2, int64_t n2,
               const uint16_t* w, int64_t mp, const float* bias, float* const* y) {
#if ARKERN_HAVE_AMX
    const int64_t n = n1 + n2, ld = pad32(n), r16 = pad_rows(rows);
    if (x_.size() < static_cast<size_t>(r16 * ld)) x_.resize(static_cast<size_t>(r16 * ld));
    if (y_.size() < static_cast<size_t>(r16 * mp)) y_.resize(static_cast<size_t>(r16 * mp));
    for (int64_t r = 0; r < r16; ++r) {
      uint16_t* xr = x_.data() + r * ld;
      if (r < rows) {
        to_bf16(x1[r], n1, xr);
        if (n2 > 0) to_bf16(x2[r], n2, xr + n1);
        std::fill(xr + n, xr + ld, uint16_t{0});
      } else {
        std::fill(xr, xr + ld, uint16_t{0});
      }
    }
    matmul(x_.data(), r16, ld, w, mp, ld / kTileK, y_.data(), mp);
    for (int64_t r = 0; r < rows; ++r) {
      const float* yr = y_.data() + r * mp;
      if (bias != nullptr) {
        for (int64_t m = 0; m < mp; ++m) y[r][m] = yr[m] + bias[m];
      } else {
        for (int64_t m = 0; m < mp; ++m) y[r][m] += yr[m];
      }
    }
#else  // unreachable: arkern_isa never selects amx in such a build
    (void)rows, (void)x1, (void)n1, (void)x2, (void)n2, (void)w, (void)mp, (void)bias, (void)y;
#endif
  }

 private:
  std::vector<uint16_t> x_;
  std::vector<float> y_;
};

inline Batch& thread_batch() {
  static thread_local Batch batch;
  return batch;
}

// x rounded to bfloat16 into dst[r] (n floats each) for r < rows, for the float32 tile kernels.
inline void round_rows(int64_t rows, const float* const* x, int64_t n, float* const* dst) {
  for (int64_t r = 0; r < rows; ++r) round_bf16(x[r], n, dst[r]);
}

}  // namespace arkern_amx
