// Rows: the steps of a WaveNet row group as a chain of phases that a team of threads splits by output tiles
// (csrc/cpu/team.h); alone when the team has one worker. Part of the wavenet_decode kernel (wavenet_decode.h).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "amx.h"
#include "decode_gate.h"
#include "decode_matvec.h"
#include "decode_sampler.h"
#include "team.h"
#include "wavenet_decode.h"

namespace arkern_wavenet {

using arkern_decode::gate;

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
          const float* slot = rings[p].at(row0 + b, pos);  // R inputs of one time
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
          float* slot = rings[l].at(row0 + b, t % d);  // the ring holds the matrix input
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
                w.past_x[b * n + q] = rings[l].at(row0 + b, slot);
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

}  // namespace arkern_wavenet
