// Pipe: 1-4 WaveNet rows on a team of two threads, each step split by kind of task (the chain every layer
// waits for on the caller, skip outputs and past taps on the helper). Part of the wavenet_decode kernel
// (wavenet_decode.h).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "amx.h"
#include "decode_gate.h"
#include "decode_matvec.h"
#include "decode_sampler.h"
#include "isa.h"
#include "team.h"
#include "wavenet_decode.h"

namespace arkern_wavenet {

using arkern_decode::gate;

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
  const Rings& rings;
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
        px[b * n + k] = rings[l].at(row0 + b, (t0 + first + k) % d);
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
        std::copy(xq[b], xq[b] + R, rings[l].at(row0 + b, t % d));  // the ring holds the matrix input
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

}  // namespace arkern_wavenet
