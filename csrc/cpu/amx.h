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
// 32 outputs) share every A and B tile load. W may come as parts (column blocks packed separately, e.g. a
// conv's taps above the current row and in it), summed in the same accumulators. The code is compiled with a function target attribute, so every
// x86-64 build has it; callers run it only when arkern_isa::use_amx() (isa.h), which also means the OS has
// granted the tile state to this process.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
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

// dst[j] = to_bf16(src[j]) for j < n, for the tiles. With AVX512-BF16, VCVTNE2PS2BF16 converts 32 values per
// instruction, rounding to nearest even like to_bf16 but reading denormal inputs as zero; the tiles read
// denormal bfloat16 inputs as zero too, so the products differ only for an input just below 2^-126 that
// to_bf16 rounds up to 2^-126 (by at most 2^-126 |w|).
inline void to_bf16(const float* src, int64_t n, uint16_t* dst) {
  int64_t j = 0;
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  for (; j + 32 <= n; j += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + j + 16), _mm512_loadu_ps(src + j));
    _mm512_storeu_si512(dst + j, reinterpret_cast<const __m512i&>(v));
  }
  if (j < n) {
    const __mmask16 k = n - j >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - j)) - 1u);
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(k, src + j));
    _mm256_mask_storeu_epi16(dst + j, k, reinterpret_cast<const __m256i&>(v));
    j += 16;
    if (j < n) {
      const __mmask16 k2 = static_cast<__mmask16>((1u << (n - j)) - 1u);
      const __m256bh v2 = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(k2, src + j));
      _mm256_mask_storeu_epi16(dst + j, k2, reinterpret_cast<const __m256i&>(v2));
    }
    return;
  }
#elif defined(__AVX512F__) && defined(__AVX512BW__)
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

// Memory for what the tiles load and store, at 64-byte (cache line) boundaries: a tile row that straddles two
// cache lines costs the tile load or store about 7x the time (a 1 KB TILELOADD from L1: ~2 ns aligned, ~15 ns at
// a 16-byte offset, which is where malloc puts large blocks). In a buffer that starts on a line, every tile row
// whose offset is a multiple of 64 bytes stays on one line (rows a multiple of 32 bfloat16 or 16 float32 apart).
template <typename T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <typename U>
  LineAllocator(const LineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{64}); }
  template <typename U>
  bool operator==(const LineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAllocator<U>&) const { return false; }
};
template <typename T>
using line_vector = std::vector<T, LineAllocator<T>>;

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
  // GCC's _tile_loadconfig does not tell the optimizer that it reads *cfg: inlined, the stores above were
  // removed as dead and LDTILECFG faulted on a half-written configuration. The empty asm reads cfg from memory.
  asm volatile("" : : "m"(cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// One run of a product's inputs: the VNNI tiles of the columns W[:, a:b] (kb = pad32(b - a) / 32 tiles per
// output block, blocks stored one after the other), multiplied by the next 32 kb columns of X.
struct Part {
  const uint16_t* w;
  int64_t kb;
};

// The accumulator tiles 0..3 of an MR x NR block (16 rows x 16 outputs each): set to zero, or stored to y (the
// block's first output, row stride ldy floats).
template <int MR, int NR>
ARKERN_AMX_TARGET inline void zero_acc() {
  _tile_zero(0);
  if constexpr (NR > 1) _tile_zero(1);
  if constexpr (MR > 1) _tile_zero(2);
  if constexpr (MR > 1 && NR > 1) _tile_zero(3);
}

// The accumulators set to c0 (the block's first value, row stride ldc floats; ldc == 0: the same row for every
// row, e.g. a bias), or to zero when c0 is null.
template <int MR, int NR>
ARKERN_AMX_TARGET inline void start_acc(const float* c0, int64_t ldc) {
  if (c0 == nullptr) {
    zero_acc<MR, NR>();
    return;
  }
  const int64_t cs = ldc * 4;
  _tile_loadd(0, c0, cs);
  if constexpr (NR > 1) _tile_loadd(1, c0 + 16, cs);
  if constexpr (MR > 1) _tile_loadd(2, c0 + kTileRows * ldc, cs);
  if constexpr (MR > 1 && NR > 1) _tile_loadd(3, c0 + kTileRows * ldc + 16, cs);
}

template <int MR, int NR>
ARKERN_AMX_TARGET inline void store_acc(float* y, int64_t ldy) {
  const int64_t ys = ldy * 4;
  _tile_stored(0, y, ys);
  if constexpr (NR > 1) _tile_stored(1, y + 16, ys);
  if constexpr (MR > 1) _tile_stored(2, y + kTileRows * ldy, ys);
  if constexpr (MR > 1 && NR > 1) _tile_stored(3, y + kTileRows * ldy + 16, ys);
}

// One 32-input step of an MR x NR block: the accumulators += X times the VNNI tile w of output block ob and, for
// NR > 1, the tile kb further on (block ob + 1); X's first 16 rows at x0 (ld0 elements apart), its second 16
// (MR > 1) at x1 (ld1 apart). Each input tile is loaded just before its first product (the tiles are not
// renamed: a load waits until the products reading the register's previous tile have read it), ~8% faster than
// all four loads first; each accumulator's products are the same in the same order.
template <int MR, int NR>
ARKERN_AMX_TARGET inline void multiply_acc2(const uint16_t* x0, int64_t ld0, const uint16_t* x1, int64_t ld1,
                                            const uint16_t* w, int64_t kb) {
  _tile_loadd(6, w, 64);
  _tile_loadd(4, x0, ld0 * 2);
  _tile_dpbf16ps(0, 4, 6);
  if constexpr (NR > 1) {
    _tile_loadd(7, w + kb * kTileElems, 64);
    _tile_dpbf16ps(1, 4, 7);
  }
  if constexpr (MR > 1) {
    _tile_loadd(5, x1, ld1 * 2);
    _tile_dpbf16ps(2, 5, 6);
  }
  if constexpr (MR > 1 && NR > 1) _tile_dpbf16ps(3, 5, 7);
}

// The second input tile's rows right after the first's (a block of rows ldx elements apart).
template <int MR, int NR>
ARKERN_AMX_TARGET inline void multiply_acc(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t kb) {
  multiply_acc2<MR, NR>(x, ldx, x + kTileRows * ldx, ldx, w, kb);
}

// Into L1, what multiply_acc2<MR, NR>(x0, ld0, x1, ld1, w, kb) will load: the MR x 16 input rows' 64 bytes and the
// NR weight tiles. Issued a 32-input step ahead: a tile load waits for the products still reading its register
// (tiles are not renamed), so a load that misses L1 stalls the tiles.
template <int MR, int NR>
inline void prefetch_step2(const uint16_t* x0, int64_t ld0, const uint16_t* x1, int64_t ld1, const uint16_t* w,
                           int64_t kb) {
  for (int64_t r = 0; r < kTileRows; ++r) _mm_prefetch(reinterpret_cast<const char*>(x0 + r * ld0), _MM_HINT_T0);
  if constexpr (MR > 1)
    for (int64_t r = 0; r < kTileRows; ++r) _mm_prefetch(reinterpret_cast<const char*>(x1 + r * ld1), _MM_HINT_T0);
  const char* wb = reinterpret_cast<const char*>(w);
  for (int64_t l = 0; l < 16; ++l) _mm_prefetch(wb + l * 64, _MM_HINT_T0);
  if constexpr (NR > 1)
    for (int64_t l = 0; l < 16; ++l) _mm_prefetch(wb + kb * kTileElems * 2 + l * 64, _MM_HINT_T0);
}

// prefetch_step2 for multiply_acc's inputs (the second tile's rows right after the first's).
template <int MR, int NR>
inline void prefetch_step(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t kb) {
  prefetch_step2<MR, NR>(x, ldx, x + kTileRows * ldx, ldx, w, kb);
}

// MR x NR blocks of 16 rows x 16 outputs, output blocks ob (and ob + 1) summed over every part; x: the first
// row (stride ldx elements); y: the first output (stride ldy floats). The sums start from zero, or from c0 (the
// block's first value, row stride ldc floats; ldc == 0: the same row for every row, e.g. a bias) when given.
template <int MR, int NR>
ARKERN_AMX_TARGET inline void block(const uint16_t* x, int64_t ldx, const Part* parts, int nparts, int64_t ob,
                                    float* y, int64_t ldy, const float* c0 = nullptr, int64_t ldc = 0) {
  start_acc<MR, NR>(c0, ldc);
  for (int p = 0; p < nparts; ++p) {
    const int64_t kb = parts[p].kb;
    const uint16_t* w = parts[p].w + ob * kb * kTileElems;
    for (int64_t k = 0; k < kb; ++k) {
      if (k + 1 < kb) prefetch_step<MR, NR>(x + (k + 1) * kTileK, ldx, w + (k + 1) * kTileElems, kb);
      multiply_acc<MR, NR>(x + k * kTileK, ldx, w + k * kTileElems, kb);
    }
    x += kb * kTileK;
  }
  store_acc<MR, NR>(y, ldy);
}

ARKERN_AMX_TARGET inline void release() { _tile_release(); }

// Y[r][0 : mp] = sum_j X[r][j] W[:, j] for r < rows16 (a multiple of 16), W given as parts whose inputs follow
// each other in X (bfloat16 bits, row stride ldx >= 32 * total kb, zeros in every part's padding columns);
// Y: float32, row stride ldy >= mp. With c0: Y = C0 + X W^T, the tiles' sums starting from C0 (row stride ldc
// floats; ldc == 0: one row, e.g. a bias, for every row; C0 may be Y itself, ldc == ldy, to accumulate in place).
// The tiles must be configured (a TileScope).
ARKERN_AMX_TARGET inline void matmul(const uint16_t* x, int64_t rows16, int64_t ldx, const Part* parts, int nparts,
                                     int64_t mp, float* y, int64_t ldy, const float* c0 = nullptr, int64_t ldc = 0) {
  const int64_t nblk = mp / 16;
  for (int64_t ob = 0; ob < nblk; ob += 2) {
    float* yb = y + ob * 16;
    const float* cb = c0 != nullptr ? c0 + ob * 16 : nullptr;
    const bool two = ob + 1 < nblk;
    int64_t r = 0;
    for (; r + 2 * kTileRows <= rows16; r += 2 * kTileRows) {
      const float* cr = cb != nullptr ? cb + r * ldc : nullptr;
      if (two) {
        block<2, 2>(x + r * ldx, ldx, parts, nparts, ob, yb + r * ldy, ldy, cr, ldc);
      } else {
        block<2, 1>(x + r * ldx, ldx, parts, nparts, ob, yb + r * ldy, ldy, cr, ldc);
      }
    }
    if (r < rows16) {
      const float* cr = cb != nullptr ? cb + r * ldc : nullptr;
      if (two) {
        block<1, 2>(x + r * ldx, ldx, parts, nparts, ob, yb + r * ldy, ldy, cr, ldc);
      } else {
        block<1, 1>(x + r * ldx, ldx, parts, nparts, ob, yb + r * ldy, ldy, cr, ldc);
      }
    }
  }
}

// The same as block() with the inputs read where they live: the 32 inputs of k-block kk (counted over all
// parts) of row r at xk[kk] + r * ldx, e.g. one column of a cache that stores a group's rows side by side; the
// sums start from zero or from c0 as block()'s.
template <int MR, int NR>
ARKERN_AMX_TARGET inline void block_at(const uint16_t* const* xk, int64_t ldx, const Part* parts, int nparts,
                                       int64_t ob, int64_t r, float* y, int64_t ldy, const float* c0 = nullptr,
                                       int64_t ldc = 0) {
  start_acc<MR, NR>(c0, ldc);
  for (int p = 0; p < nparts; ++p) {
    const int64_t kb = parts[p].kb;
    const uint16_t* w = parts[p].w + ob * kb * kTileElems;
    for (int64_t k = 0; k < kb; ++k) {
      if (k + 1 < kb) prefetch_step<MR, NR>(xk[k + 1] + r * ldx, ldx, w + (k + 1) * kTileElems, kb);
      multiply_acc<MR, NR>(xk[k] + r * ldx, ldx, w + k * kTileElems, kb);
    }
    xk += kb;
  }
  store_acc<MR, NR>(y, ldy);
}

// matmul() with the inputs read where they live (block_at): Y[r] = sum over k-blocks kk of the 32 inputs at
// xk[kk] + r * ldx times their weights, for r < rows16 (a multiple of 16; every row readable and, where W has
// zero-padded columns, zero). The same sums in the same order as matmul() on the same inputs; with c0 (row stride
// ldc floats, 0: one row for every row; may be Y itself with ldc == ldy) the sums start from C0 as matmul()'s.
ARKERN_AMX_TARGET inline void matmul_at(const uint16_t* const* xk, int64_t rows16, int64_t ldx, const Part* parts,
                                        int nparts, int64_t mp, float* y, int64_t ldy, const float* c0 = nullptr,
                                        int64_t ldc = 0) {
  const int64_t nblk = mp / 16;
  for (int64_t ob = 0; ob < nblk; ob += 2) {
    float* yb = y + ob * 16;
    const float* cb = c0 != nullptr ? c0 + ob * 16 : nullptr;
    const bool two = ob + 1 < nblk;
    int64_t r = 0;
    for (; r + 2 * kTileRows <= rows16; r += 2 * kTileRows) {
      const float* cr = cb != nullptr ? cb + r * ldc : nullptr;
      if (two) {
        block_at<2, 2>(xk, ldx, parts, nparts, ob, r, yb + r * ldy, ldy, cr, ldc);
      } else {
        block_at<2, 1>(xk, ldx, parts, nparts, ob, r, yb + r * ldy, ldy, cr, ldc);
      }
    }
    if (r < rows16) {
      const float* cr = cb != nullptr ? cb + r * ldc : nullptr;
      if (two) {
        block_at<1, 2>(xk, ldx, parts, nparts, ob, r, yb + r * ldy, ldy, cr, ldc);
      } else {
        block_at<1, 1>(xk, ldx, parts, nparts, ob, r, yb + r * ldy, ldy, cr, ldc);
      }
    }
  }
}

#endif  // ARKERN_HAVE_AMX

// The tile configuration of matmul() for the life of the scope, on this thread (loaded on entering the
// outermost scope, released on leaving it: other code on the thread, e.g. oneDNN's, may configure the tiles its
// own way between two scopes). Scopes nest: a kernel holds one for its whole call, and code that may also run on
// a team's worker threads opens its own.
class TileScope {
 public:
#if ARKERN_HAVE_AMX
  TileScope() {
    if (depth()++ == 0) configure();
  }
  ~TileScope() {
    if (--depth() == 0) release();
  }
#else
  TileScope() = default;
#endif
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;

 private:
  static int& depth() {
    static thread_local int d = 0;
    return d;
  }
};

// Scratch for the tile products of a batch of rows: the rows' inputs rounded to bfloat16 into a zero-padded
// (rows16 x 32kb) block, the products into a float32 block that the caller reads (or matvec adds the bias to
// and scatters). Every output of a row depends only on that row's inputs, whatever the number of rows. One per
// thread (thread_batch); the buffers grow as needed.
class Batch {
 public:
  // Starts a product of `rows` rows of n1 (+ n2) inputs: sizes the input block (pad_rows(rows) x ld(), the n1
  // inputs in columns [0, n1), the n2 in [second(), second() + n2), second() = pad32(n1), ld() = second() +
  // pad32(n2)), zeroes its padding (the other columns, and rows [rows, pad_rows(rows))) and returns it. The
  // caller fills the input columns of rows [0, rows), e.g. with put().
  uint16_t* begin(int64_t rows, int64_t n1, int64_t n2 = 0) {
    second_ = pad32(n1);
    ld_ = second_ + pad32(n2);
    r16_ = pad_rows(rows);
    if (x_.size() < static_cast<size_t>(r16_ * ld_)) x_.resize(static_cast<size_t>(r16_ * ld_));
    for (int64_t r = 0; r < rows; ++r) {
      std::fill(row(r) + n1, row(r) + second_, uint16_t{0});
      std::fill(row(r) + second_ + n2, row(r) + ld_, uint16_t{0});
    }
    std::fill(row(rows), row(r16_), uint16_t{0});
    return x_.data();
  }

  int64_t ld() const { return ld_; }
  int64_t second() const { return second_; }
  uint16_t* row(int64_t r) { return x_.data() + r * ld_; }

  // Row r, columns [col, col + count): src rounded to bfloat16.
  void put(int64_t r, int64_t col, const float* src, int64_t count) { to_bf16(src, count, row(r) + col); }

  // Y = X W^T for the block begin() started: pad_rows(rows) x mp float32 (row stride mp), valid until the next
  // product; W: the VNNI tiles of an (mp x n1) matrix (n2 == 0). Inside a TileScope.
  const float* multiply(const uint16_t* w, int64_t mp) { return multiply2(w, nullptr, mp); }

  // The same for the inputs of both runs: w1, w2 the tiles of W[:, :n1] and W[:, n1:] (mp rows each).
  const float* multiply2(const uint16_t* w1, const uint16_t* w2, int64_t mp) {
#if ARKERN_HAVE_AMX
    if (y_.size() < static_cast<size_t>(r16_ * mp)) y_.resize(static_cast<size_t>(r16_ * mp));
    const Part parts[2] = {{w1, second_ / kTileK}, {w2, (ld_ - second_) / kTileK}};
    matmul(x_.data(), r16_, ld_, parts, ld_ > second_ ? 2 : 1, mp, y_.data(), mp);
#else  // unreachable: arkern_isa never selects amx in such a build
    (void)w1, (void)w2, (void)mp;
#endif
    return y_.data();
  }

  // The same product stored into the caller's y (row stride ldy floats, pad_rows(rows) rows: the padding rows
  // too), the sums starting from zero or from c0 (row stride ldc floats; 0: one row, e.g. a bias, for every
  // row; may be y itself with ldc == ldy), as matmul()'s.
  void multiply_into(const uint16_t* w1, const uint16_t* w2, int64_t mp, float* y, int64_t ldy,
                     const float* c0 = nullptr, int64_t ldc = 0) {
#if ARKERN_HAVE_AMX
    const Part parts[2] = {{w1, second_ / kTileK}, {w2, (ld_ - second_) / kTileK}};
    matmul(x_.data(), r16_, ld_, parts, ld_ > second_ && w2 != nullptr ? 2 : 1, mp, y, ldy, c0, ldc);
#else  // unreachable: arkern_isa never selects amx in such a build
    (void)w1, (void)w2, (void)mp, (void)y, (void)ldy, (void)c0, (void)ldc;
#endif
  }

  // y[r][0 : mp] = bias + W x[r] (bias == nullptr: y[r] += W x[r]) for r < rows; x[r] holds n floats; W
  // packed by pack_vnni (mp x n). Inside a TileScope.
  void matvec(int64_t rows, const float* const* x, int64_t n, const uint16_t* w, int64_t mp, const float* bias,
              float* const* y) {
    matvec2(rows, x, n, nullptr, 0, w, mp, bias, y);
  }

  // The same with x[r] = [x1[r] (n1 values); x2[r] (n2 values)], n = n1 + n2.
  void matvec2(int64_t rows, const float* const* x1, int64_t n1, const float* const* x2, int64_t n2,
               const uint16_t* w, int64_t mp, const float* bias, float* const* y) {
    begin(rows, n1 + n2);
    for (int64_t r = 0; r < rows; ++r) {
      put(r, 0, x1[r], n1);
      if (n2 > 0) put(r, n1, x2[r], n2);
    }
    const float* out = multiply(w, mp);
    for (int64_t r = 0; r < rows; ++r) {
      const float* yr = out + r * mp;
      float* dst = y[r];
      if (bias != nullptr) {
        for (int64_t m = 0; m < mp; ++m) dst[m] = yr[m] + bias[m];
      } else {
        for (int64_t m = 0; m < mp; ++m) dst[m] += yr[m];
      }
    }
  }

 private:
  line_vector<uint16_t> x_;
  line_vector<float> y_;
  int64_t ld_ = 0, second_ = 0, r16_ = 0;
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
