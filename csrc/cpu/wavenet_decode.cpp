// wavenet_decode CPU kernel: the whole nv-wavenet network advanced T steps per call, sampling inside.
//
// One call runs, for every batch row and every step: embedding of the previous two samples, L gated
// dilated layers (ring buffer per layer), the skip sum, the head relu -> 1x1 -> relu -> 1x1, and a draw
// from the pre-drawn uniforms (softmax, temperature, top-k, top-p, inverse CDF: the decisions of
// arkern.distributions.sample_categorical, made by decode_sampler.h). The loop over steps never returns to
// Python. Ring buffers are (B, R, d) views of time-major (B, d, R) storage, so one step reads and writes R contiguous floats.
//
// Weights come pre-packed (arkern.models.wavenet.pack_wavenet with arkern.ops.wavenet_decode.pack_matrix;
// the layout is documented in arkern/reference/wavenet_decode.py): every matrix W (M x N) has its rows
// zero-padded to Mp = ceil16(M) and is stored as row tiles of up to 64 outputs, each tile transposed
// (N x tile width) and contiguous. A tile is then one stream of weights, multiplied into 16..64
// float32 accumulators per batch row held in AVX-512 registers; four batch rows share every weight load,
// and more rows share each tile while it is in cache (decode_matvec.h, WaveNetPacking). bfloat16 weights are
// widened to float32 with a shift (no avx512_bf16 needed); accumulation is always float32. Up to 64 batch rows
// run as one group whose every step a team of threads splits over output tiles (Rows below; csrc/cpu/team.h),
// 1-4 rows on two threads as a pipeline (Pipe below); more rows are split into groups run in parallel with
// at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

#include "amx.h"
#include "decode_gate.h"
#include "decode_matvec.h"
#include "decode_sampler.h"
#include "isa.h"
#include "team.h"

namespace {

using arkern_decode::gate;
using arkern_decode::Mat;
using arkern_decode::pad16;
using arkern_decode::Sampler;
using arkern_decode::WaveNetPacking;

constexpr int kMaxRows = 64;    // batch rows sharing each weight tile (4 at a time in registers)

// Step s of rows row0 .. row0 + nb - 1: each row's class drawn from its logits lg[b] at its uniform in noise
// (or taken from forced), written to samples (and the logits to logits_out when given) and shifted into the
// row's two previous classes prev[row].
void draw_and_record(Sampler& sampler, float* const* lg, int nb, int64_t A, int64_t row0, int64_t s, int64_t steps,
                     const double* noise, const int64_t* forced, int64_t* samples, float* logits_out, int64_t* prev) {
  double u[kMaxRows];
  int64_t drawn[kMaxRows];
  if (!forced) {
    for (int b = 0; b < nb; ++b) u[b] = noise[(row0 + b) * steps + s];
    sampler.draw(lg, nb, A, u, drawn);
  }
  for (int b = 0; b < nb; ++b) {
    const int64_t row = row0 + b;
    const int64_t y = forced ? forced[row * steps + s] : drawn[b];
    samples[row * steps + s] = y;
    if (logits_out) std::copy(lg[b], lg[b] + A, logits_out + (row * steps + s) * A);
    int64_t* pv = prev + row * 2;
    pv[0] = pv[1];
    pv[1] = y;
  }
}
constexpr int kPastMaxRows = 2; // row groups up to this size apply each past tap to d steps at once
constexpr int kPipeMaxRows = 4; // row groups up to this size run on two threads as a pipeline (Pipe)
constexpr int64_t kPipeBlock = 8;  // Pipe: the helper's past taps, up to this many steps at once
constexpr int kAmxMinRows = 4;  // bfloat16 row groups from this size use AMX tiles when selected (isa.h)

// The AMX copies of the matrices (arkern.ops.amx_layout.pack_vnni), in the order w_dil[0..L), w_rs[0..L),
// w_out, w_end; nullptr when the caller passed none.
struct Tiles {
  const uint16_t* base = nullptr;
  int64_t dil_stride = 0, rs_off = 0, rs_stride = 0, out_off = 0, end_off = 0;
};

// y[b] (+)= W[:, ja:jb] x[b][0 : jb - ja] for nb rows and the output tiles [t0, t1), starting from the bias
// when ja == 0 and from y[b] otherwise; W packed (mp x n) by arkern.ops.wavenet_decode.pack_matrix. Every
// output accumulates its inputs in the order j = 0, 1, ..., so splitting [0, n) into ranges, rows into
// groups or outputs into tiles gives bit-identical results.
template <typename WT>
void matvec_tiles(int nb, const WT* w, int64_t mp, int64_t n, int64_t ja, int64_t jb, const float* const* x,
                  float* const* y, const float* bias, int64_t t0, int64_t t1) {
  const Mat<float, WT> mat{w, bias, mp, mp, n};
  arkern_decode::matvec_range<WaveNetPacking>(mat, nb, ja, jb, x, y, t0 * arkern_decode::kTile,
                                              t1 * arkern_decode::kTile);
}

#if defined(__AVX512F__)
// NT whole tiles [t, t + NT) of y = (bias or y) + W[:, ja:jb] x for one row, their 4 * NT accumulator chains
// interleaved (tile_avx512 of decode_matvec.h runs one tile's 4 chains at a time).
template <typename WT, int NT>
void tiles_one_row(const WT* w, int64_t n, int64_t ja, int64_t jb, const float* x, float* y, const float* bias,
                   int64_t t) {
  constexpr int64_t kT = arkern_decode::kTile;
  constexpr int V = kT / 16;
  const float* init = ja == 0 ? bias : y;
  const WT* base = w + t * kT * n;  // tile t + k: base + k * kT * n, input j of it + j * kT
  __m512 acc[NT][V];
#pragma GCC unroll 4
  for (int k = 0; k < NT; ++k)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[k][v] = _mm512_loadu_ps(init + (t + k) * kT + 16 * v);
  for (int64_t j = ja; j < jb; ++j) {
    const __m512 xr = _mm512_set1_ps(x[j - ja]);
#pragma GCC unroll 4
    for (int k = 0; k < NT; ++k) {
      __m512 wv[V];
      arkern_decode::load_weights<WaveNetPacking, V>(base + k * kT * n + j * kT, wv);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[k][v] = _mm512_fmadd_ps(wv[v], xr, acc[k][v]);
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < NT; ++k)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(y + (t + k) * kT + 16 * v, acc[k][v]);
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
// tiles_one_row for bfloat16 weights, each widened by one unpack (a bfloat16 is the high half of its float32)
// instead of a widening move and a shift: of 32 weights, unpacklo gives outputs {0-3, 8-11, 16-19, 24-27} and
// unpackhi {4-7, 12-15, 20-23, 28-31}, so the accumulators hold the outputs in that order (permuted once when
// loaded and stored). The same products and sums as tiles_one_row.
template <int NT>
void tiles_one_row_bf16(const at::BFloat16* w, int64_t n, int64_t ja, int64_t jb, const float* x, float* y,
                        const float* bias, int64_t t) {
  constexpr int64_t kT = arkern_decode::kTile;
  const float* init = ja == 0 ? bias : y;
  const uint16_t* base = reinterpret_cast<const uint16_t*>(w) + t * kT * n;
  const __m512i to_lo = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const __m512i to_hi = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  const __m512i back_a = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i back_b = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  const __m512i zero = _mm512_setzero_si512();
  __m512 lo[NT][2], hi[NT][2];  // tile t + k, outputs 32h .. 32h + 31
#pragma GCC unroll 4
  for (int k = 0; k < NT; ++k)
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const float* p = init + (t + k) * kT + 32 * h;
      const __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
      lo[k][h] = _mm512_permutex2var_ps(a, to_lo, b);
      hi[k][h] = _mm512_permutex2var_ps(a, to_hi, b);
    }
  for (int64_t j = ja; j < jb; ++j) {
    const __m512 xr = _mm512_set1_ps(x[j - ja]);
#pragma GCC unroll 4
    for (int k = 0; k < NT; ++k)
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m512i wz = _mm512_loadu_si512(base + k * kT * n + j * kT + 32 * h);
        lo[k][h] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, wz)), xr, lo[k][h]);
        hi[k][h] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, wz)), xr, hi[k][h]);
      }
  }
#pragma GCC unroll 4
  for (int k = 0; k < NT; ++k)
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      float* p = y + (t + k) * kT + 32 * h;
      _mm512_storeu_ps(p, _mm512_permutex2var_ps(lo[k][h], back_a, hi[k][h]));
      _mm512_storeu_ps(p + 16, _mm512_permutex2var_ps(lo[k][h], back_b, hi[k][h]));
    }
}
#endif

#if defined(__AVX512F__)
// K whole tiles from tile t for one row (K <= 4): the bfloat16 unpacking kernel where built, else tiles_one_row.
template <typename WT>
void tiles_one_row_any(int64_t K, const WT* w, int64_t n, int64_t ja, int64_t jb, const float* x, float* y,
                       const float* bias, int64_t t) {
#if defined(__AVX512BW__)
  if constexpr (std::is_same_v<WT, at::BFloat16>) {
    switch (K) {
      case 4: tiles_one_row_bf16<4>(w, n, ja, jb, x, y, bias, t); return;
      case 3: tiles_one_row_bf16<3>(w, n, ja, jb, x, y, bias, t); return;
      case 2: tiles_one_row_bf16<2>(w, n, ja, jb, x, y, bias, t); return;
      default: tiles_one_row_bf16<1>(w, n, ja, jb, x, y, bias, t); return;
    }
  }
#endif
  switch (K) {
    case 4: tiles_one_row<WT, 4>(w, n, ja, jb, x, y, bias, t); return;
    case 3: tiles_one_row<WT, 3>(w, n, ja, jb, x, y, bias, t); return;
    case 2: tiles_one_row<WT, 2>(w, n, ja, jb, x, y, bias, t); return;
    default: tiles_one_row<WT, 1>(w, n, ja, jb, x, y, bias, t); return;
  }
}
#endif

// matvec_tiles, with a lone row on AVX-512 running up to four whole tiles at once. A row's product is
// latency-bound (one accumulator chain per output, each input's FMA waiting for the last); several tiles'
// chains in flight fill the FMA units. Every output keeps its order: bit-identical to matvec_tiles.
template <typename WT>
void matvec_rows(int nb, const WT* w, int64_t mp, int64_t n, int64_t ja, int64_t jb, const float* const* x,
                 float* const* y, const float* bias, int64_t t0, int64_t t1) {
#if defined(__AVX512F__)
  if (nb == 1 && jb > ja && arkern_isa::use_avx512()) {
    const int64_t whole = std::min(t1, mp / arkern_decode::kTile);
    // (a lone float32 tile gains nothing: it is tile_avx512 itself)
    const int64_t least = std::is_same_v<WT, float> ? 2 : 1;
    for (int64_t k; (k = std::min<int64_t>(4, whole - t0)) >= least; t0 += k)
      tiles_one_row_any<WT>(k, w, n, ja, jb, x[0], y[0], bias, t0);
  }
#endif
  if (t1 > t0) matvec_tiles<WT>(nb, w, mp, n, ja, jb, x, y, bias, t0, t1);
}

// ---------------------------------------------------------------- the network loop

struct Net {
  int64_t L, R, Rp, S, Sp, A, Ap;
  std::vector<int64_t> dil;
  const float* emb;    // (2, A, R): [table of sample t-2, table of sample t-1]
  const float* b_dil;  // (L, 2Rp)
  const float* b_rs;   // (L, Rp + Sp)
  const float* b_out;  // (Ap)
  const float* b_end;  // (Ap)
};

// One call's steps for batch rows [row0, row0 + nb), every step a chain of L + 3 phases run by a team
// (csrc/cpu/team.h; alone when it has one worker). Phase p <= L holds the output tiles of layer p's dilated
// conv (D) and of layer p - 1's skip outputs (K); each worker first brings its own buffers to the phase's
// input (the prologue: gate of layer p - 1, its residual outputs -- the same small product on every worker,
// which saves a second barrier per layer -- and x entering layer p). Phase L + 1 is the head's first 1x1
// conv, L + 2 the second; the caller then draws. Values shared between workers (the input x of every layer,
// the dilated conv's outputs, the skip sums, the head's outputs) are each written by one chunk.
template <typename WT>
struct Rows {
  // bfloat16 precision (docs/design.md): every matrix input is rounded to bfloat16 (the layer input x, which
  // the rings then hold rounded, the gate output, relu(skip), the head's hidden layer); sums stay float32.
  static constexpr bool kBf16 = std::is_same_v<WT, at::BFloat16>;
  enum Kind { kDuty, kDil, kSkip, kHead };
  struct Chunk {
    Kind kind;
    int64_t tile;
  };
  // Per-worker buffers (nb rows each).
  struct Own {
    std::vector<float> mem;
    float *x[kMaxRows], *g[kMaxRows], *tmp[kMaxRows], *in2[kMaxRows], *rs[kMaxRows], *h[kMaxRows], *o[kMaxRows];
    std::vector<const float*> past_x;
    std::vector<float*> past_y;
    int64_t ready = -1;  // the phase whose prologue is in the buffers
  };

  const Net& net;
  const WT *w_dil, *w_rs, *w_out, *w_end;
  const std::vector<float*>& rings;
  int64_t* prev;
  int64_t row0;
  int nb;
  int64_t t0, steps;
  const double* noise;
  const float *cond, *gbias;
  int64_t cond_frames, hop;
  const int64_t* forced;
  int64_t* samples;
  float* logits_out;

  int64_t two_rp = 0, rs_p = 0, res_tiles = 0, w_dil_stride = 0, w_rs_stride = 0;
  bool use_past = false;
  std::vector<std::vector<float>> past;  // per layer with d > 1 (nb <= kPastMaxRows): (nb, d, 2Rp)
  std::vector<float> shared;
  float *xs_mem = nullptr, *pre_mem = nullptr, *skip[kMaxRows], *o[kMaxRows], *lg[kMaxRows];
  std::vector<Own> own;
  std::vector<Chunk> first, middle, last, out_chunks, end_chunks;
  int64_t s = 0, t = 0, phase_id = 0;

  float* xs(int64_t l, int b) const { return xs_mem + (l * nb + b) * net.Rp; }
  float* pre(int64_t l, int b) const {  // the dilated conv's outputs (before cond/gbias) of layer l
    const int64_t d = net.dil[l];
    if (use_past && d > 1) return const_cast<float*>(past[l].data()) + (b * d + t % d) * two_rp;
    return pre_mem + ((l % 2) * nb + b) * two_rp;  // two buffers: layer l + 1 writes while l is read
  }

  // Phase chunk list: `a` tiles of one kind and `b` of another, interleaved so that every worker's range
  // (contiguous, see Crew) gets its share of both.
  static std::vector<Chunk> interleave(bool duty, Kind ka, int64_t a, int64_t off_a, Kind kb, int64_t b,
                                       int64_t off_b) {
    std::vector<std::pair<double, Chunk>> items;
    for (int64_t i = 0; i < a; ++i) items.push_back({(i + 0.5) / a, {ka, off_a + i}});
    for (int64_t i = 0; i < b; ++i) items.push_back({(i + 0.5) / b, {kb, off_b + i}});
    std::stable_sort(items.begin(), items.end(), [](const auto& u, const auto& v) { return u.first < v.first; });
    std::vector<Chunk> out;
    if (duty) out.push_back({kDuty, 0});
    for (const auto& it : items) out.push_back(it.second);
    return out;
  }

  void setup(int workers) {
    const int64_t L = net.L, R = net.R, Rp = net.Rp, Sp = net.Sp, Ap = net.Ap;
    two_rp = 2 * Rp;
    rs_p = Rp + Sp;
    res_tiles = arkern_decode::tiles(Rp);
    w_dil_stride = two_rp * 2 * R;
    w_rs_stride = rs_p * R;
    use_past = nb <= kPastMaxRows;
    int64_t dmax = 1;
    if (use_past) {
      past.resize(L);
      for (int64_t l = 0; l < L; ++l) {
        if (net.dil[l] > 1) past[l].assign(static_cast<size_t>(nb * net.dil[l] * two_rp), 0.0f);
        dmax = std::max(dmax, net.dil[l]);
      }
    }
    shared.assign(static_cast<size_t>(nb) * (L * Rp + 2 * two_rp + Sp + 2 * Ap), 0.0f);
    float* p = shared.data();
    xs_mem = p; p += L * nb * Rp;
    pre_mem = p; p += 2 * nb * two_rp;
    for (int b = 0; b < nb; ++b) {
      skip[b] = p; p += Sp;
      o[b] = p; p += Ap;
      lg[b] = p; p += Ap;
    }
    own.resize(workers);
    for (auto& w : own) {
      w.mem.assign(static_cast<size_t>(nb) * (Rp + Rp + two_rp + 2 * R + res_tiles * arkern_decode::kTile + rs_p +
                                              Sp + Ap), 0.0f);
      float* q = w.mem.data();
      for (int b = 0; b < nb; ++b) {
        w.x[b] = q; q += Rp;
        w.g[b] = q; q += Rp;
        w.tmp[b] = q; q += two_rp;
        w.in2[b] = q; q += 2 * R;
        w.rs[b] = q; q += res_tiles * arkern_decode::kTile + rs_p;  // room for whole tiles
        w.h[b] = q; q += Sp;
        w.o[b] = q; q += Ap;
      }
      w.past_x.resize(nb * dmax);
      w.past_y.resize(nb * dmax);
    }
    const int64_t dil_tiles = arkern_decode::tiles(two_rp), rs_tiles = arkern_decode::tiles(rs_p);
    first = interleave(false, kDil, dil_tiles, 0, kSkip, 0, 0);
    middle = interleave(true, kDil, dil_tiles, 0, kSkip, rs_tiles - res_tiles, res_tiles);
    last = interleave(true, kDil, 0, 0, kSkip, rs_tiles - res_tiles, res_tiles);
    out_chunks = interleave(false, kHead, arkern_decode::tiles(Ap), 0, kHead, 0, 0);
    end_chunks = out_chunks;
  }

  // Worker w's buffers brought to the input of phase p (once per phase and worker).
  void prologue(Own& w, int64_t p) {
    const int64_t L = net.L, R = net.R, Rp = net.Rp;
    if (p >= 1 && p <= L) {
      const int64_t l = p - 1;
      for (int b = 0; b < nb; ++b) {  // gate of layer l, with the conditioning added to a private copy
        const float* pr = pre(l, b);
        std::copy(pr, pr + two_rp, w.tmp[b]);
        const float* extra[2] = {cond ? cond + (((row0 + b) * cond_frames + t / hop) * L + l) * 2 * R : nullptr,
                                 gbias ? gbias + ((row0 + b) * L + l) * 2 * R : nullptr};
        for (const float* f : extra) {
          if (!f) continue;
          for (int64_t c = 0; c < R; ++c) {
            w.tmp[b][c] += f[c];
            w.tmp[b][Rp + c] += f[R + c];
          }
        }
        gate(w.tmp[b], w.tmp[b] + Rp, w.g[b], Rp);
        if constexpr (kBf16) arkern_amx::round_bf16(w.g[b], R);
      }
      matvec_tiles<WT>(nb, w_rs + l * w_rs_stride, rs_p, R, 0, R, w.g, w.rs, net.b_rs + l * rs_p, 0, res_tiles);
      if (p < L) {
        for (int b = 0; b < nb; ++b)
          for (int64_t c = 0; c < R; ++c) w.x[b][c] = xs(l, b)[c] + w.rs[b][c];
      }
    } else if (p == 0) {
      for (int b = 0; b < nb; ++b) std::copy(xs(0, b), xs(0, b) + R, w.x[b]);
    } else if (p == L + 1) {
      for (int b = 0; b < nb; ++b) {
        for (int64_t c = 0; c < net.Sp; ++c) w.h[b][c] = std::max(skip[b][c], 0.0f);
        if constexpr (kBf16) arkern_amx::round_bf16(w.h[b], net.S);
      }
    } else {
      for (int b = 0; b < nb; ++b) {
        for (int64_t c = 0; c < net.Ap; ++c) w.o[b][c] = std::max(o[b][c], 0.0f);
        if constexpr (kBf16) arkern_amx::round_bf16(w.o[b], net.A);
      }
    }
    if (p < L) {  // the dilated conv's input: [x(t - d), x(t)] (x(t) rounded in the bfloat16 precision)
      const int64_t pos = t % net.dil[p];
      for (int b = 0; b < nb; ++b) {
        if (!(use_past && net.dil[p] > 1)) {
          const float* slot = rings[p] + ((row0 + b) * net.dil[p] + pos) * R;  // time-major: R inputs of one time
          std::copy(slot, slot + R, w.in2[b]);
        }
        if constexpr (kBf16) {
          arkern_amx::round_bf16(w.x[b], R, w.in2[b] + R);
        } else {
          std::copy(w.x[b], w.x[b] + R, w.in2[b] + R);
        }
      }
    }
  }

  void run_chunk(int wid, int64_t p, const Chunk& c) {
    Own& w = own[wid];
    if (w.ready != phase_id) {
      prologue(w, p);
      w.ready = phase_id;
    }
    const int64_t L = net.L, R = net.R, Rp = net.Rp;
    const int64_t k = c.tile;
    switch (c.kind) {
      case kDuty: {  // layer p - 1 done: its input into the ring, skip outputs of the residual tiles; x(p)
        const int64_t l = p - 1, d = net.dil[l];
        for (int b = 0; b < nb; ++b) {
          float* slot = rings[l] + ((row0 + b) * d + t % d) * R;  // the ring holds the matrix input
          if constexpr (kBf16) {
            arkern_amx::round_bf16(xs(l, b), R, slot);
          } else {
            std::copy(xs(l, b), xs(l, b) + R, slot);
          }
          for (int64_t m = Rp; m < std::min(rs_p, res_tiles * arkern_decode::kTile); ++m) skip[b][m - Rp] += w.rs[b][m];
          if (p < L) std::copy(w.x[b], w.x[b] + R, xs(p, b));
        }
        break;
      }
      case kDil: {
        const int64_t l = p, d = net.dil[l];
        const WT* wl = w_dil + l * w_dil_stride;
        const float* bl = net.b_dil + l * two_rp;
        float* y[kMaxRows];
        for (int b = 0; b < nb; ++b) y[b] = pre(l, b);
        if (use_past && d > 1) {
          // The past tap: every d steps, W_past x[t - d] for the next d steps, from the d inputs in the ring.
          if (s % d == 0) {  // only the slots of the steps this call still runs
            const int64_t n = std::min(d, steps - s);
            float* pb = past[l].data();
            for (int b = 0; b < nb; ++b)
              for (int64_t q = 0; q < n; ++q) {
                const int64_t slot = (t + q) % d;
                w.past_x[b * n + q] = rings[l] + ((row0 + b) * d + slot) * R;
                w.past_y[b * n + q] = pb + (b * d + slot) * two_rp;
              }
            matvec_tiles<WT>(nb * static_cast<int>(n), wl, two_rp, 2 * R, 0, R, w.past_x.data(), w.past_y.data(),
                             bl, k, k + 1);
          }
          const float* now[kMaxRows];
          for (int b = 0; b < nb; ++b) now[b] = w.in2[b] + R;
          matvec_tiles<WT>(nb, wl, two_rp, 2 * R, R, 2 * R, now, y, bl, k, k + 1);  // ... plus W_now x[t]
        } else {
          matvec_tiles<WT>(nb, wl, two_rp, 2 * R, 0, 2 * R, w.in2, y, bl, k, k + 1);
        }
        break;
      }
      case kSkip: {
        const int64_t l = p - 1;
        matvec_tiles<WT>(nb, w_rs + l * w_rs_stride, rs_p, R, 0, R, w.g, w.rs, net.b_rs + l * rs_p, k, k + 1);
        const int64_t m1 = std::min(rs_p, (k + 1) * arkern_decode::kTile);
        for (int b = 0; b < nb; ++b)
          for (int64_t m = k * arkern_decode::kTile; m < m1; ++m) skip[b][m - Rp] += w.rs[b][m];
        break;
      }
      case kHead:
        if (p == L + 1) {
          matvec_tiles<WT>(nb, w_out, net.Ap, net.S, 0, net.S, w.h, o, net.b_out, k, k + 1);
        } else {
          matvec_tiles<WT>(nb, w_end, net.Ap, net.A, 0, net.A, w.o, lg, net.b_end, k, k + 1);
        }
        break;
    }
  }

  void run(arkern_team::Session& team, Sampler& sampler) {
    const int64_t L = net.L, R = net.R, A = net.A;
    for (s = 0; s < steps; ++s) {
      t = t0 + s;
      for (int b = 0; b < nb; ++b) {
        const int64_t* pv = prev + (row0 + b) * 2;
        const float* e_old = net.emb + pv[0] * R;
        const float* e_new = net.emb + (A + pv[1]) * R;
        for (int64_t c = 0; c < R; ++c) xs(0, b)[c] = e_old[c] + e_new[c];
        std::fill(skip[b], skip[b] + net.Sp, 0.0f);
      }
      for (int64_t p = 0; p <= L + 2; ++p) {
        const std::vector<Chunk>& list =
            p == 0 ? first : p < L ? middle : p == L ? last : p == L + 1 ? out_chunks : end_chunks;
        phase_id += 1;
        team.phase(static_cast<int64_t>(list.size()), [&](int wid, int64_t c) { run_chunk(wid, p, list[c]); });
      }
      draw_and_record(sampler, lg, nb, A, row0, s, steps, noise, forced, samples, logits_out, prev);
      team.step_done();
    }
  }
};

// 1 to 4 rows on a team of two: the steps as a pipeline instead of phases. A step's products at a few rows
// take about a microsecond each, too short to split over cores, so the work is split by kind (at 4 rows of
// WaveNet medium float32, 2.2x the step rate of Rows' tile-split phases on two threads). The caller (A) runs the chain each next layer waits
// for: the dilated conv's current-input tap, the gate and the residual outputs, then the head and the draw. Tasks
// off the chain go to the helper (B): each layer's skip outputs (needed at the head) and each layer's past tap
// W_past x[t - d] + b for the next step (its input is already in the ring). Tasks are claimed per layer with one
// CAS on a step counter, so each runs once; A takes over every task B has not claimed when it needs it (B
// descheduled, asleep or alone), computing past taps d steps at once as Rows does, and B computes them up to
// kPipeBlock steps at once. One Crew phase per step: chunk 0 is A's step, chunk 1 B's help until A's step is done.
// A waits only for a task B has started; B absent when A's step is done, or a wait longer than the crew's kStall,
// is a miss, and the Session then runs the next steps alone for a while (team.h). Every output keeps its
// accumulation order (the past tap starts the chain the current tap continues; skip contributions are summed per
// layer in order by A), so samples equal Rows' and 1 thread's bit for bit.
template <typename WT>
struct Pipe {
  using Atom = std::atomic<int64_t>;
  // bfloat16 precision (docs/design.md), as in Rows: the layer input x(t) (which the rings then hold), the
  // gate output, relu(skip) and the head's hidden layer are rounded to bfloat16 where they enter a product.
  static constexpr bool kBf16 = std::is_same_v<WT, at::BFloat16>;
  const Net& net;
  const WT *w_dil, *w_rs, *w_out, *w_end;
  const std::vector<float*>& rings;
  int64_t* prev;
  int64_t row0;
  int nb;
  int64_t t0, steps;
  const double* noise;
  const float *cond, *gbias;
  int64_t cond_frames, hop;
  const int64_t* forced;
  int64_t* samples;
  float* logits_out;

  int64_t two_rp = 0, rs_p = 0, res_tiles = 0, rs_tiles = 0, dil_tiles = 0, w_dil_stride = 0, w_rs_stride = 0;
  std::vector<std::vector<float>> past;           // per layer (nb, d, 2Rp): b + W_past x[t - d] (+ W_now x[t])
  std::vector<float> mem;
  float *g_mem = nullptr, *part_mem = nullptr;    // per layer: gate outputs (nb, Rp), skip outputs (nb, Sp)
  float *x[kMaxRows], *xq[kMaxRows], *tmp[kMaxRows], *rs_a[kMaxRows], *rs_b[kMaxRows], *skip[kMaxRows], *h[kMaxRows],
      *o[kMaxRows], *lg[kMaxRows];
  std::vector<const float*> px_a, px_b;
  std::vector<float*> py_a, py_b;
  // per layer: last step whose gate output is published / past tap claimed, done / skip task claimed, done
  std::unique_ptr<Atom[]> g_pub, past_claim, past_done, skip_claim, skip_done;
  alignas(64) Atom a_done{-1};  // last step A finished
  int64_t s = 0, t = 0;
  bool stalled = false;  // A waited too long for B this step

  float* gl(int64_t l, int b) const { return g_mem + (l * nb + b) * net.Rp; }
  float* part(int64_t l, int b) const { return part_mem + (l * nb + b) * net.Sp; }
  float* slot(int64_t l, int b, int64_t step) const {
    const int64_t d = net.dil[l];
    return const_cast<float*>(past[l].data()) + (b * d + (t0 + step) % d) * two_rp;
  }

  void setup() {
    const int64_t L = net.L, R = net.R, Rp = net.Rp, Sp = net.Sp, Ap = net.Ap;
    two_rp = 2 * Rp;
    rs_p = Rp + Sp;
    res_tiles = arkern_decode::tiles(Rp);
    rs_tiles = arkern_decode::tiles(rs_p);
    dil_tiles = arkern_decode::tiles(two_rp);
    w_dil_stride = two_rp * 2 * R;
    w_rs_stride = rs_p * R;
    int64_t dmax = 1;
    past.resize(L);
    for (int64_t l = 0; l < L; ++l) {
      past[l].assign(static_cast<size_t>(nb * net.dil[l] * two_rp), 0.0f);
      dmax = std::max(dmax, net.dil[l]);
    }
    const int64_t rs_room = rs_tiles * arkern_decode::kTile;
    mem.assign(static_cast<size_t>(nb) * (L * Rp + L * Sp + 2 * Rp + two_rp + 2 * rs_room + Sp + Sp + 2 * Ap), 0.0f);
    float* p = mem.data();
    g_mem = p; p += L * nb * Rp;
    part_mem = p; p += L * nb * Sp;
    for (int b = 0; b < nb; ++b) {
      x[b] = p; p += Rp;
      xq[b] = p; p += Rp;  // x rounded (float32: x itself)
      if constexpr (!kBf16) xq[b] = x[b];
      tmp[b] = p; p += two_rp;
      rs_a[b] = p; p += rs_room;
      rs_b[b] = p; p += rs_room;
      skip[b] = p; p += Sp;
      h[b] = p; p += Sp;
      o[b] = p; p += Ap;
      lg[b] = p; p += Ap;
    }
    px_a.resize(nb * dmax);
    py_a.resize(nb * dmax);
    px_b.resize(nb * kPipeBlock);
    py_b.resize(nb * kPipeBlock);
    for (auto* a : {&g_pub, &past_claim, &past_done, &skip_claim, &skip_done}) {
      a->reset(new Atom[L]);
      for (int64_t l = 0; l < L; ++l) (*a)[l].store(-1, std::memory_order_relaxed);
    }
  }

  // b + W_past x[t - d] into the slots of steps [first, first + n) of layer l (inputs from the ring).
  void past_tap(int64_t l, int64_t first, int64_t n, std::vector<const float*>& px, std::vector<float*>& py) {
    const int64_t d = net.dil[l], R = net.R;
    for (int b = 0; b < nb; ++b)
      for (int64_t k = 0; k < n; ++k) {
        px[b * n + k] = rings[l] + ((row0 + b) * d + (t0 + first + k) % d) * R;
        py[b * n + k] = slot(l, b, first + k);
      }
    matvec_rows<WT>(nb * static_cast<int>(n), w_dil + l * w_dil_stride, two_rp, 2 * R, 0, R, px.data(), py.data(),
                     net.b_dil + l * two_rp, 0, dil_tiles);
    past_done[l].store(first + n - 1, std::memory_order_release);
  }

  // Layer l's skip outputs at step `step` (from its published gate outputs) into part(l).
  void skip_task(int64_t l, float* const* rs) {
    const int64_t R = net.R, Rp = net.Rp;
    float* g[kMaxRows];
    for (int b = 0; b < nb; ++b) g[b] = gl(l, b);
    const int64_t m0 = res_tiles * arkern_decode::kTile;
    if (m0 >= rs_p) return;  // every skip output shares a tile with residual outputs: A has them
    matvec_rows<WT>(nb, w_rs + l * w_rs_stride, rs_p, R, 0, R, g, rs, net.b_rs + l * rs_p, res_tiles, rs_tiles);
    for (int b = 0; b < nb; ++b) std::copy(rs[b] + m0, rs[b] + rs_p, part(l, b) + m0 - Rp);
  }

  static bool claim(Atom& a, int64_t from, int64_t to) {
    int64_t cur = from;
    return a.compare_exchange_strong(cur, to, std::memory_order_acq_rel);
  }
  // Waits for a task B has claimed; longer than the crew's kStall is a miss (B descheduled mid-task).
  void wait_for(const Atom& a, int64_t v) {
    if (a.load(std::memory_order_acquire) >= v) return;
    const int64_t since = arkern_team::detail::now_ns();
    for (int spins = 0; a.load(std::memory_order_acquire) < v; ++spins) {
      arkern_team::detail::cpu_relax();
      if ((spins & 63) == 63 && !stalled && arkern_team::detail::now_ns() - since > arkern_team::Crew::kStall)
        stalled = true;
      if ((spins & 1023) == 1023) std::this_thread::yield();
    }
  }

  // A: step s, alone when `alone` (past taps then cover up to d steps at once).
  void step_a(bool alone, Sampler& sampler) {
    const int64_t L = net.L, R = net.R, Rp = net.Rp, Sp = net.Sp, A = net.A;
    for (int b = 0; b < nb; ++b) {
      const int64_t* pv = prev + (row0 + b) * 2;
      const float* e_old = net.emb + pv[0] * R;
      const float* e_new = net.emb + (A + pv[1]) * R;
      for (int64_t c = 0; c < R; ++c) x[b][c] = e_old[c] + e_new[c];
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t d = net.dil[l];
      if (past_claim[l].load(std::memory_order_acquire) < s) {
        const int64_t n = alone ? std::min(d, steps - s) : 1;
        if (claim(past_claim[l], s - 1, s + n - 1)) past_tap(l, s, n, px_a, py_a);
      }
      wait_for(past_done[l], s);
      float* y[kMaxRows];
      for (int b = 0; b < nb; ++b) {
        y[b] = slot(l, b, s);
        if constexpr (kBf16) arkern_amx::round_bf16(x[b], R, xq[b]);
      }
      matvec_rows<WT>(nb, w_dil + l * w_dil_stride, two_rp, 2 * R, R, 2 * R, xq, y, net.b_dil + l * two_rp, 0,
                       dil_tiles);  // ... plus W_now x[t]
      for (int b = 0; b < nb; ++b) {
        std::copy(y[b], y[b] + two_rp, tmp[b]);
        const float* extra[2] = {cond ? cond + (((row0 + b) * cond_frames + t / hop) * L + l) * 2 * R : nullptr,
                                 gbias ? gbias + ((row0 + b) * L + l) * 2 * R : nullptr};
        for (const float* f : extra) {
          if (!f) continue;
          for (int64_t c = 0; c < R; ++c) {
            tmp[b][c] += f[c];
            tmp[b][Rp + c] += f[R + c];
          }
        }
        gate(tmp[b], tmp[b] + Rp, gl(l, b), Rp);
        if constexpr (kBf16) arkern_amx::round_bf16(gl(l, b), R);
        std::copy(xq[b], xq[b] + R, rings[l] + ((row0 + b) * d + t % d) * R);  // the ring holds the matrix input
      }
      g_pub[l].store(s, std::memory_order_release);
      float* g[kMaxRows];
      for (int b = 0; b < nb; ++b) g[b] = gl(l, b);
      matvec_rows<WT>(nb, w_rs + l * w_rs_stride, rs_p, R, 0, R, g, rs_a, net.b_rs + l * rs_p, 0, res_tiles);
      for (int b = 0; b < nb; ++b) {
        for (int64_t c = 0; c < R; ++c) x[b][c] += rs_a[b][c];
        for (int64_t m = Rp; m < std::min(rs_p, res_tiles * arkern_decode::kTile); ++m) part(l, b)[m - Rp] = rs_a[b][m];
      }
    }
    for (int64_t l = 0; l < L; ++l) {  // skip outputs B has not taken
      if (skip_claim[l].load(std::memory_order_acquire) < s && claim(skip_claim[l], s - 1, s)) {
        skip_task(l, rs_a);
        skip_done[l].store(s, std::memory_order_release);
      }
    }
    for (int b = 0; b < nb; ++b) std::fill(skip[b], skip[b] + Sp, 0.0f);
    for (int64_t l = 0; l < L; ++l) {  // summed in layer order, as one thread does
      wait_for(skip_done[l], s);
      for (int b = 0; b < nb; ++b)
        for (int64_t c = 0; c < Sp; ++c) skip[b][c] += part(l, b)[c];
    }
    for (int b = 0; b < nb; ++b) {
      for (int64_t c = 0; c < Sp; ++c) h[b][c] = std::max(skip[b][c], 0.0f);
      if constexpr (kBf16) arkern_amx::round_bf16(h[b], net.S);
    }
    matvec_rows<WT>(nb, w_out, net.Ap, net.S, 0, net.S, h, o, net.b_out, 0, arkern_decode::tiles(net.Ap));
    for (int b = 0; b < nb; ++b) {
      for (int64_t c = 0; c < net.Ap; ++c) o[b][c] = std::max(o[b][c], 0.0f);
      if constexpr (kBf16) arkern_amx::round_bf16(o[b], net.A);
    }
    matvec_rows<WT>(nb, w_end, net.Ap, net.A, 0, net.A, o, lg, net.b_end, 0, arkern_decode::tiles(net.Ap));
    draw_and_record(sampler, lg, nb, A, row0, s, steps, noise, forced, samples, logits_out, prev);
    a_done.store(s, std::memory_order_release);
  }

  // B during step s: past taps A will need this step, skip outputs, past taps of step s + 1; until A is done.
  void help_b() {
    const int64_t L = net.L;
    int64_t lp = 0, ls = 0, ln = 0;  // next layer to look at: past (this step), skip, past (next step)
    for (int spins = 0; a_done.load(std::memory_order_acquire) < s; ++spins) {
      bool did = false;
      for (; lp < L && !did; ++lp)
        if (past_claim[lp].load(std::memory_order_acquire) < s && claim(past_claim[lp], s - 1, s)) {
          past_tap(lp, s, 1, px_b, py_b);
          did = true;
        }
      for (; !did && ls < L && g_pub[ls].load(std::memory_order_acquire) >= s; ++ls)
        if (claim(skip_claim[ls], s - 1, s)) {
          skip_task(ls, rs_b);
          skip_done[ls].store(s, std::memory_order_release);
          did = true;
        }
      for (; !did && s + 1 < steps && ln < L && g_pub[ln].load(std::memory_order_acquire) >= s; ++ln) {
        // x(t) is in the ring now: the taps of steps s + 1 .. s + d have their inputs (their slots are free)
        const int64_t n = std::min({net.dil[ln], kPipeBlock, steps - 1 - s});
        if (claim(past_claim[ln], s, s + n)) {
          past_tap(ln, s + 1, n, px_b, py_b);
          did = true;
        }
      }
      if (!did) arkern_team::detail::cpu_relax();
    }
  }

  void run(arkern_team::Session& team, Sampler& sampler) {
    const int64_t bounds[3] = {0, 1, 2};
    for (s = 0; s < steps; ++s) {
      t = t0 + s;
      const bool alone = !team.active();
      // B's chunk is help only: taken at once (and found finished) when no helper has picked it up
      team.phase(2, [&](int, int64_t c) {
        if (c == 0) {
          step_a(alone, sampler);
        } else {
          help_b();
        }
      }, bounds, 0);
      if (stalled) team.missed();
      stalled = false;
      team.step_done();
    }
  }
};

// The ring slots of step t + 1 of one layer, fetched into the cache a step ahead (with many rows every slot
// is a miss otherwise: rings of large dilations do not stay cached).
inline void prefetch_next_slots(const float* ring, int64_t row0, int nb, int64_t d, int64_t t, int64_t R) {
  for (int b = 0; b < nb; ++b) {
    const float* next = ring + ((row0 + b) * d + (t + 1) % d) * R;
    for (int64_t c = 0; c < R; c += 16) __builtin_prefetch(next + c);
  }
}

// The bfloat16 precision on AMX tiles for batch rows [row0, row0 + nb), nb <= kMaxRows, on this thread: the
// same network and rounding as Rows<at::BFloat16> (every matrix input rounded to bfloat16, the rings holding
// the rounded layer inputs), each product one tile pass over all rows (amx.h). Tiles: the matrices' AMX copies.
void run_rows_amx(const Net& net, const Tiles& tiles, const std::vector<float*>& rings, int64_t* prev, int64_t row0,
                  int nb, int64_t t0, int64_t steps, const double* noise, const float* cond, int64_t cond_frames,
                  int64_t hop, const float* gbias, const int64_t* forced, Sampler& sampler, int64_t* samples,
                  float* logits_out) {
  const int64_t L = net.L, R = net.R, Rp = net.Rp, Sp = net.Sp, A = net.A, Ap = net.Ap;
  const int64_t two_rp = 2 * Rp, rs_p = Rp + Sp;
  std::vector<float> buf(static_cast<size_t>(nb) * (Rp + 2 * Sp + 2 * Ap) + two_rp + Rp, 0.0f);
  float* p = buf.data();
  float *x[kMaxRows], *skip[kMaxRows], *h[kMaxRows], *o[kMaxRows], *lg[kMaxRows];
  for (int b = 0; b < nb; ++b) {
    x[b] = p; p += Rp;
    skip[b] = p; p += Sp;
    h[b] = p; p += Sp;
    o[b] = p; p += Ap;
    lg[b] = p; p += Ap;
  }
  float* pre = p;  // one row's dilated conv outputs, then its gate
  float* g = p + two_rp;
  arkern_amx::Batch& batch = arkern_amx::thread_batch();
  const arkern_amx::TileScope scope;  // the tile configuration for the whole call
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = t0 + s;
    for (int b = 0; b < nb; ++b) {
      const int64_t* pv = prev + (row0 + b) * 2;
      const float* e_old = net.emb + pv[0] * R;
      const float* e_new = net.emb + (A + pv[1]) * R;
      for (int64_t c = 0; c < R; ++c) x[b][c] = e_old[c] + e_new[c];
      std::fill(skip[b], skip[b] + Sp, 0.0f);
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t d = net.dil[l];
      const float* bd = net.b_dil + l * two_rp;
      const float* br = net.b_rs + l * rs_p;
      prefetch_next_slots(rings[l], row0, nb, d, t, R);
      // [x(t - d); x(t)] rounded straight from the ring and x into the tile inputs, then x(t) rounded replaces
      // x(t - d) in the ring (time-major: the R inputs of one time)
      batch.begin(nb, 2 * R);
      for (int b = 0; b < nb; ++b) {
        float* slot = rings[l] + ((row0 + b) * d + t % d) * R;
        batch.put(b, 0, slot, R);
        batch.put(b, R, x[b], R);
        arkern_amx::round_bf16(x[b], R, slot);
      }
      const float* yd = batch.multiply(tiles.base + l * tiles.dil_stride, two_rp);
      // the gate of bias + product (+ conditioning), rounded into the tile inputs of the residual/skip conv
      batch.begin(nb, R);
      for (int b = 0; b < nb; ++b) {
        const float* yb = yd + b * two_rp;
        float* pb = pre;
        for (int64_t c = 0; c < two_rp; ++c) pb[c] = yb[c] + bd[c];
        const float* extra[2] = {cond ? cond + (((row0 + b) * cond_frames + t / hop) * L + l) * 2 * R : nullptr,
                                 gbias ? gbias + ((row0 + b) * L + l) * 2 * R : nullptr};
        for (const float* f : extra) {
          if (!f) continue;
          for (int64_t c = 0; c < R; ++c) {
            pb[c] += f[c];
            pb[Rp + c] += f[R + c];
          }
        }
        arkern_decode::gate_fast(pb, pb + Rp, g, R);
        batch.put(b, 0, g, R);
      }
      const float* yr = batch.multiply(tiles.base + tiles.rs_off + l * tiles.rs_stride, rs_p);
      for (int b = 0; b < nb; ++b) {
        const float* yb = yr + b * rs_p;
        for (int64_t c = 0; c < R; ++c) x[b][c] += yb[c] + br[c];
        for (int64_t c = 0; c < Sp; ++c) skip[b][c] += yb[Rp + c] + br[Rp + c];
      }
    }
    for (int b = 0; b < nb; ++b)
      for (int64_t c = 0; c < Sp; ++c) h[b][c] = std::max(skip[b][c], 0.0f);
    batch.matvec(nb, h, net.S, tiles.base + tiles.out_off, Ap, net.b_out, o);
    for (int b = 0; b < nb; ++b)
      for (int64_t c = 0; c < Ap; ++c) o[b][c] = std::max(o[b][c], 0.0f);
    batch.matvec(nb, o, A, tiles.base + tiles.end_off, Ap, net.b_end, lg);
    draw_and_record(sampler, lg, nb, A, row0, s, steps, noise, forced, samples, logits_out, prev);
  }
}

void check_f32(const at::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
              "wavenet_generate: ", name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.numel() == numel, "wavenet_generate: ", name, " must have ", numel, " elements, got ", t.numel());
}

std::tuple<at::Tensor, at::Tensor> wavenet_generate_cpu(
    const at::Tensor& emb, const at::Tensor& w_dil, const at::Tensor& b_dil, const at::Tensor& w_rs,
    const at::Tensor& b_rs, const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& w_end,
    const at::Tensor& b_end, at::IntArrayRef dilations, at::TensorList rings, const at::Tensor& prev, int64_t t0,
    const at::Tensor& noise, const std::optional<at::Tensor>& cond, int64_t cond_hop,
    const std::optional<at::Tensor>& gbias, double temperature, int64_t top_k, double top_p,
    bool return_logits, const std::optional<at::Tensor>& forced, const std::optional<at::Tensor>& tiles) {
  arkern_isa::selected();  // an invalid ARKERN_ISA fails here, not inside a parallel region
  TORCH_CHECK(emb.dim() == 3 && emb.size(0) == 2, "wavenet_generate: emb must be (2, A, R), got ", emb.sizes());
  Net net;
  net.A = emb.size(1);
  net.R = emb.size(2);
  net.L = static_cast<int64_t>(dilations.size());
  net.Rp = pad16(net.R);
  net.Ap = pad16(net.A);
  TORCH_CHECK(net.A >= 1 && net.R >= 1 && net.L >= 1, "wavenet_generate: empty network");
  TORCH_CHECK(b_rs.dim() == 2 && b_rs.size(0) == net.L && b_rs.size(1) > net.Rp,
              "wavenet_generate: b_rs must be (L, Rp + Sp)");
  net.Sp = b_rs.size(1) - net.Rp;
  TORCH_CHECK(w_out.numel() % net.Ap == 0, "wavenet_generate: w_out size is not a multiple of Ap");
  net.S = w_out.numel() / net.Ap;
  TORCH_CHECK(net.S >= 1 && pad16(net.S) == net.Sp, "wavenet_generate: w_out and b_rs disagree on S");
  check_f32(emb, "emb", 2 * net.A * net.R);
  check_f32(b_dil, "b_dil", net.L * 2 * net.Rp);
  check_f32(b_rs, "b_rs", net.L * (net.Rp + net.Sp));
  check_f32(b_out, "b_out", net.Ap);
  check_f32(b_end, "b_end", net.Ap);
  const auto wt = w_dil.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kBFloat16, "wavenet_generate: weights must be float32 or bfloat16");
  const std::pair<const at::Tensor*, int64_t> mats[] = {
      {&w_dil, net.L * 2 * net.Rp * 2 * net.R}, {&w_rs, net.L * (net.Rp + net.Sp) * net.R},
      {&w_out, net.Ap * net.S}, {&w_end, net.Ap * net.A}};
  for (const auto& [t, n] : mats) {
    TORCH_CHECK(t->scalar_type() == wt && t->is_contiguous() && t->numel() == n,
                "wavenet_generate: packed weights must be contiguous, of one dtype, with ", n, " elements");
  }
  Tiles tl;
  if (tiles.has_value()) {
    using arkern_amx::packed_size;
    tl.dil_stride = packed_size(2 * net.Rp, 2 * net.R);
    tl.rs_off = net.L * tl.dil_stride;
    tl.rs_stride = packed_size(net.Rp + net.Sp, net.R);
    tl.out_off = tl.rs_off + net.L * tl.rs_stride;
    tl.end_off = tl.out_off + packed_size(net.Ap, net.S);
    const int64_t n = tl.end_off + packed_size(net.Ap, net.A);
    TORCH_CHECK(wt == at::kBFloat16 && tiles->scalar_type() == at::kBFloat16 && tiles->is_contiguous() &&
                    tiles->device().is_cpu() && tiles->numel() == n,
                "wavenet_generate: tiles (the AMX copy of bfloat16 weights) must be a contiguous bfloat16 CPU tensor "
                "of ", n, " elements");
    tl.base = reinterpret_cast<const uint16_t*>(tiles->data_ptr<at::BFloat16>());
  }
  TORCH_CHECK(prev.dim() == 2 && prev.size(1) == 2 && prev.scalar_type() == at::kLong && prev.is_contiguous(),
              "wavenet_generate: prev must be a contiguous int64 (B, 2) tensor");
  const int64_t B = prev.size(0);
  TORCH_CHECK(B == 0 || (prev.min().item<int64_t>() >= 0 && prev.max().item<int64_t>() < net.A),
              "wavenet_generate: prev holds samples outside [0, A)");
  TORCH_CHECK(noise.dim() == 2 && noise.size(0) == B && noise.scalar_type() == at::kDouble,
              "wavenet_generate: noise must be float64 (B, T)");
  const int64_t T = noise.size(1);
  TORCH_CHECK(t0 >= 0, "wavenet_generate: t0 must be >= 0");
  TORCH_CHECK(temperature > 0, "wavenet_generate: temperature must be > 0");
  TORCH_CHECK(top_k >= 0 && top_p > 0, "wavenet_generate: top_k must be >= 0 and top_p > 0");
  TORCH_CHECK(static_cast<int64_t>(rings.size()) == net.L, "wavenet_generate: need one ring buffer per layer");
  std::vector<float*> ring_ptrs(net.L);
  for (int64_t l = 0; l < net.L; ++l) {
    net.dil.push_back(dilations[l]);
    TORCH_CHECK(dilations[l] >= 1, "wavenet_generate: dilations must be >= 1");
    const auto& r = rings[l];
    TORCH_CHECK(r.scalar_type() == at::kFloat && r.dim() == 3 && r.size(0) == B && r.size(1) == net.R &&
                    r.size(2) == dilations[l] && r.transpose(1, 2).is_contiguous(),
                "wavenet_generate: ring buffer ", l, " must be float32 (B, R, ", dilations[l],
                ") with time-major storage (a transposed contiguous (B, d, R) tensor)");
    ring_ptrs[l] = r.data_ptr<float>();
  }
  const auto noise_c = noise.contiguous();
  int64_t frames = 0;
  at::Tensor cond_c, gbias_c, forced_c;
  if (cond.has_value()) {
    cond_c = cond->contiguous();
    TORCH_CHECK(cond_c.scalar_type() == at::kFloat && cond_c.dim() == 4 && cond_c.size(0) == B &&
                    cond_c.size(2) == net.L && cond_c.size(3) == 2 * net.R,
                "wavenet_generate: cond must be float32 (B, frames, L, 2R)");
    TORCH_CHECK(cond_hop >= 1, "wavenet_generate: cond_hop must be >= 1");
    frames = cond_c.size(1);
    TORCH_CHECK(T == 0 || (t0 + T - 1) / cond_hop < frames, "wavenet_generate: cond has ", frames,
                " frames, too few for steps up to ", t0 + T);
  }
  if (gbias.has_value()) {
    gbias_c = gbias->contiguous();
    TORCH_CHECK(gbias_c.scalar_type() == at::kFloat && gbias_c.numel() == B * net.L * 2 * net.R,
                "wavenet_generate: gbias must be float32 (B, L, 2R)");
  }
  if (forced.has_value()) {
    forced_c = forced->contiguous();
    TORCH_CHECK(forced_c.scalar_type() == at::kLong && forced_c.dim() == 2 && forced_c.size(0) == B &&
                    forced_c.size(1) == T, "wavenet_generate: forced must be int64 (B, T)");
    TORCH_CHECK(forced_c.numel() == 0 || (forced_c.min().item<int64_t>() >= 0 && forced_c.max().item<int64_t>() < net.A),
                "wavenet_generate: forced holds samples outside [0, A)");
  }
  net.emb = emb.data_ptr<float>();
  net.b_dil = b_dil.data_ptr<float>();
  net.b_rs = b_rs.data_ptr<float>();
  net.b_out = b_out.data_ptr<float>();
  net.b_end = b_end.data_ptr<float>();
  auto samples = at::empty({B, T}, prev.options());
  auto logits = return_logits ? at::empty({B, T, net.A}, emb.options()) : at::empty({0}, emb.options());
  // At most kMaxRows rows share weight loads; a single group is split over outputs by a team of threads (the
  // same weight slices on the same worker every step, see Rows), several groups run in parallel.
  const int64_t groups = (B + kMaxRows - 1) / kMaxRows;
  if (B == 0 || T == 0) return {samples, logits};
  const double* np = noise_c.data_ptr<double>();
  const float* cp = cond.has_value() ? cond_c.data_ptr<float>() : nullptr;
  const float* gp = gbias.has_value() ? gbias_c.data_ptr<float>() : nullptr;
  const int64_t* fp = forced.has_value() ? forced_c.data_ptr<int64_t>() : nullptr;
  int64_t* prev_p = prev.data_ptr<int64_t>();
  float* lo = return_logits ? logits.data_ptr<float>() : nullptr;
  const auto launch = [&](auto tag) {
    using WT = decltype(tag);
    const auto work = [&](int64_t g0, int64_t g1) {
      Sampler sampler(net.A, temperature, top_k, top_p);
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t r0 = grp * B / groups, r1 = (grp + 1) * B / groups;
        const int nb = static_cast<int>(r1 - r0);
        const uint64_t key = (((((1ull * 1009 + net.L) * 1009 + net.R) * 1009 + net.S) * 1009 + net.A) * 1009 +
                              nb) * 2 + (std::is_same_v<WT, float> ? 0 : 1);
        arkern_team::Session team(key);  // one worker inside a parallel region
        if (team.workers() == 2 && nb <= kPipeMaxRows) {
          Pipe<WT> pipe{net, w_dil.data_ptr<WT>(), w_rs.data_ptr<WT>(), w_out.data_ptr<WT>(), w_end.data_ptr<WT>(),
                        ring_ptrs, prev_p, r0, nb, t0, T, np, cp, gp, frames, cond_hop, fp,
                        samples.data_ptr<int64_t>(), lo};
          pipe.setup();
          pipe.run(team, sampler);
          continue;
        }
        Rows<WT> rows{net, w_dil.data_ptr<WT>(), w_rs.data_ptr<WT>(), w_out.data_ptr<WT>(), w_end.data_ptr<WT>(),
                      ring_ptrs, prev_p, r0, nb, t0, T, np, cp, gp, frames, cond_hop, fp,
                      samples.data_ptr<int64_t>(), lo};
        rows.setup(team.workers());
        rows.run(team, sampler);
      }
    };
    if (groups == 1) {
      work(0, 1);  // outside a parallel region: the team may split the outputs
    } else {
      at::parallel_for(0, groups, 1, work);
    }
  };
  // AMX (bfloat16 packs with tiles, rows enough to fill them): row groups of up to kMaxRows, one per thread
  const bool amx = wt == at::kBFloat16 && tl.base != nullptr && B >= kAmxMinRows && arkern_isa::use_amx();
  if (amx) {
    const int64_t amx_groups = std::max<int64_t>((B + kMaxRows - 1) / kMaxRows,
                                                 std::min<int64_t>(at::get_num_threads(), B / kAmxMinRows));
    const auto amx_work = [&](int64_t g0, int64_t g1) {
      Sampler sampler(net.A, temperature, top_k, top_p);
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t r0 = grp * B / amx_groups, r1 = (grp + 1) * B / amx_groups;
        run_rows_amx(net, tl, ring_ptrs, prev_p, r0, static_cast<int>(r1 - r0), t0, T, np, cp, frames, cond_hop, gp,
                     fp, sampler, samples.data_ptr<int64_t>(), lo);
      }
    };
    if (amx_groups == 1) {
      amx_work(0, 1);  // on this thread: a parallel region would wake the pool, whose idle threads then spin
    } else {
      at::parallel_for(0, amx_groups, 1, amx_work);
    }
  } else if (wt == at::kFloat) {
    launch(float{});
  } else {
    launch(at::BFloat16{});
  }
  arkern_isa::record("wavenet_generate", amx ? arkern_isa::Isa::amx
                                         : arkern_isa::use_avx512() ? arkern_isa::Isa::avx512 : arkern_isa::Isa::avx2);
  return {samples, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) { m.impl("wavenet_generate", &wavenet_generate_cpu); }
