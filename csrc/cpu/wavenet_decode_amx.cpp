// The WaveNet decode kernel's AMX path (run_rows_amx, declared in wavenet_decode.h): the bfloat16 precision
// on AMX tiles for a group of up to 64 batch rows on one thread.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "amx.h"
#include "decode_gate.h"
#include "decode_sampler.h"
#include "wavenet_decode.h"

namespace arkern_wavenet {

namespace {

// The ring slots of step t + 1 of one layer, fetched into the cache a step ahead (with many rows every slot
// is a miss otherwise: rings of large dilations do not stay cached).
inline void prefetch_next_slots(const float* ring, int64_t row0, int nb, int64_t d, int64_t t, int64_t R) {
  for (int b = 0; b < nb; ++b) {
    const float* next = ring + ((row0 + b) * d + (t + 1) % d) * R;
    for (int64_t c = 0; c < R; c += 16) __builtin_prefetch(next + c);
  }
}

}  // namespace

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

}  // namespace arkern_wavenet
