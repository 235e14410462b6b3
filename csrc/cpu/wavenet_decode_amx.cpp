// The WaveNet decode kernel's AMX path (run_rows_amx, declared in wavenet_decode.h): the bfloat16 precision
// on AMX tiles for a group of up to 64 batch rows on one thread.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "amx.h"
#include "decode_gate.h"
#include "decode_sampler.h"
#include "wavenet_decode.h"

namespace arkern_wavenet {

namespace {

constexpr int64_t kLayersAhead = 2;  // the ring slots fetched into L2 this many layers before their input pass

// The ring and slot of the input pass kLayersAhead layers after layer l of step t (in step t + 1 for the last layers).
inline std::pair<const Ring*, int64_t> slot_ahead(const Net& net, const Rings& rings, int64_t l, int64_t t) {
  const int64_t la = (l + kLayersAhead) % net.L, ta = l + kLayersAhead < net.L ? t : t + 1;
  return {&rings[la], ta % net.dil[la]};
}

// Row `row`'s slot of that input pass, fetched into L2 (rings of large dilations do not stay cached), a row at a
// time between the gates' arithmetic: issued all at once, the prefetches stall on full fill buffers. Two layers
// ahead (~15 µs at batch 64) covers the latency, and the slots are still in L2 when read; fetched a step ahead into
// L1 (prefetcht0, the previous choice) they evicted the step's working set from L1 and could be evicted from L2
// again by the step's ~2 MB of weights and rings before their pass (together ~7% more CPU time per call at batch 64,
// A/B in one process, loaded machine).
inline void prefetch_slot(const Ring& ring, int64_t row, int64_t slot, int64_t R) {
  const float* p = ring.at(row, slot);
  for (int64_t c = 0; c < R; c += 16) __builtin_prefetch(p + c, 0, 2);
}

// Y (rows16 x mp, row stride ldy) = C0 + X W^T on the tiles (arkern_amx::matmul, the sums starting from C0, row
// stride ldc; 0: a bias row); W: VNNI tiles with kb tiles per output block, X: bfloat16 bits, row stride ldx.
// Reached only when arkern_isa::use_amx().
inline void tile_product(const uint16_t* x, int64_t rows16, int64_t ldx, const uint16_t* w, int64_t kb, int64_t mp,
                         const float* c0, int64_t ldc, float* y, int64_t ldy) {
#if ARKERN_HAVE_AMX
  const arkern_amx::Part part{w, kb};
  arkern_amx::matmul(x, rows16, ldx, &part, 1, mp, y, ldy, c0, ldc);
#else  // unreachable: arkern_isa never selects amx in such a build
  (void)x, (void)rows16, (void)ldx, (void)w, (void)kb, (void)mp, (void)c0, (void)ldc, (void)y, (void)ldy;
#endif
}

constexpr int kSlotAhead = 8;  // rows

// Row b's input of a layer in one pass: in[0 : R) = bf16(slot) (x(t - d)), in[R : 2R) = bf16(x) (x(t)), then
// slot = x(t) as the tiles read it and x += br. Where R is a multiple of 32 (VCVTNE2PS2BF16), the slot gets the
// tile input's bits widened (2 instructions per 16 values instead of round_bf16's 8; ~2-3% less CPU time per call
// at batch 64): round_bf16(x), except that a denormal x is stored as zero, as the tiles read it in this step
// (amx.h, to_bf16; round_bf16 would keep the one that rounds up to 2^-126).
inline void layer_input(float* slot, float* x, const float* br, int64_t R, uint16_t* in) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  if (R % 32 == 0) {
    for (int64_t j = 0; j < R; j += 32) {
      const __m512 s0 = _mm512_loadu_ps(slot + j), s1 = _mm512_loadu_ps(slot + j + 16);
      const __m512 x0 = _mm512_loadu_ps(x + j), x1 = _mm512_loadu_ps(x + j + 16);
      const __m512bh si = _mm512_cvtne2ps_pbh(s1, s0), xi = _mm512_cvtne2ps_pbh(x1, x0);
      const __m512i xb = reinterpret_cast<const __m512i&>(xi);
      _mm512_storeu_si512(in + j, reinterpret_cast<const __m512i&>(si));
      _mm512_storeu_si512(in + R + j, xb);
      const __m256i lo = _mm512_castsi512_si256(xb), hi = _mm512_extracti64x4_epi64(xb, 1);
      _mm512_storeu_si512(slot + j, _mm512_slli_epi32(_mm512_cvtepu16_epi32(lo), 16));
      _mm512_storeu_si512(slot + j + 16, _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
      _mm512_storeu_ps(x + j, _mm512_add_ps(x0, _mm512_loadu_ps(br + j)));
      _mm512_storeu_ps(x + j + 16, _mm512_add_ps(x1, _mm512_loadu_ps(br + j + 16)));
    }
    return;
  }
#endif
  arkern_amx::to_bf16(slot, R, in);
  arkern_amx::to_bf16(x, R, in + R);
  arkern_amx::round_bf16(x, R, slot);
  for (int64_t c = 0; c < R; ++c) x[c] += br[c];
}

// out[0 : R) = bf16(tanh(a) sigmoid(b)) (gate_parts, then to_bf16, in one pass where R is a multiple of 32); g: a
// row of R floats of scratch.
inline void gate_input(const float* a, const float* b, int64_t R, float* g, uint16_t* out) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  if (R % 32 == 0) {
    for (int64_t j = 0; j < R; j += 32) {
      const __m512 g0 = arkern_decode::gate16_parts(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j));
      const __m512 g1 = arkern_decode::gate16_parts(_mm512_loadu_ps(a + j + 16), _mm512_loadu_ps(b + j + 16));
      const __m512bh v = _mm512_cvtne2ps_pbh(g1, g0);
      _mm512_storeu_si512(out + j, reinterpret_cast<const __m512i&>(v));
    }
    return;
  }
#endif
  arkern_decode::gate_parts(a, b, g, R);
  arkern_amx::to_bf16(g, R, out);
}

// out[0 : n) = bf16(max(src, 0)) (one pass where n is a multiple of 32); tmp: a row of n floats of scratch.
inline void relu_input(const float* src, int64_t n, float* tmp, uint16_t* out) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  if (n % 32 == 0) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 32) {
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_max_ps(_mm512_loadu_ps(src + j + 16), zero),
                                             _mm512_max_ps(_mm512_loadu_ps(src + j), zero));
      _mm512_storeu_si512(out + j, reinterpret_cast<const __m512i&>(v));
    }
    return;
  }
#endif
  for (int64_t c = 0; c < n; ++c) tmp[c] = std::max(src[c], 0.0f);
  arkern_amx::to_bf16(tmp, n, out);
}

}  // namespace

// The bfloat16 precision on AMX tiles for batch rows [row0, row0 + nb), nb <= kMaxRows, on this thread: the
// same network and rounding as Rows<at::BFloat16> (every matrix input rounded to bfloat16, the rings holding
// the rounded layer inputs), each product one tile pass over all rows (amx.h). Tiles: the matrices' AMX copies.
//
// The tiles' accumulators start from what the outputs add to, so no pass re-reads a product: the dilated conv's
// from its bias (its outputs go straight to the gate), a layer's residual outputs from x (+ the layer's residual
// bias), the head's from their biases. The skip sums are one product per step after the last layer, of every
// layer's gate output (kept rounded) by the layers' skip matrices, starting from the L layers' skip biases (summed
// once per call): the sums stay in the accumulators through all layers instead of being loaded and stored per
// layer. The last layer's residual outputs, which nothing reads, are not computed. Only the order of float32 sums
// differs from the other levels.
void run_rows_amx(const Net& net, const Tiles& tiles, const Rings& rings, int64_t* prev, int64_t row0,
                  int nb, int64_t t0, int64_t steps, const double* noise, const float* cond, int64_t cond_frames,
                  int64_t hop, const float* gbias, const int64_t* forced, Sampler& sampler, int64_t* samples,
                  float* logits_out) {
  const int64_t L = net.L, R = net.R, Rp = net.Rp, Sp = net.Sp, A = net.A, Ap = net.Ap;
  const int64_t two_rp = 2 * Rp, rs_p = Rp + Sp, r16 = arkern_amx::pad_rows(nb);
  // X (r16 x Rp) and the skip sums (r16 x Sp): the accumulators' homes, zero in rows nb .. r16 - 1; both
  // this block and the gates below start on a cache line (line_vector), as every tile row then does
  arkern_amx::line_vector<float> buf(static_cast<size_t>(r16) * (Rp + Sp + two_rp + 2 * Ap) + two_rp + Rp + 2 * Sp,
                                     0.0f);
  float* p = buf.data();
  float* xm = p; p += r16 * Rp;
  float* skip = p; p += r16 * Sp;
  float* yd = p; p += r16 * two_rp;  // the dilated conv's outputs (bias included)
  float* om = p; p += r16 * Ap;      // the head's hidden layer (bias included)
  float* lgm = p; p += r16 * Ap;     // the logits (bias included)
  float *x[kMaxRows], *lg[kMaxRows];
  for (int b = 0; b < nb; ++b) {
    x[b] = xm + b * Rp;
    lg[b] = lgm + b * Ap;
  }
  float* pre = p; p += two_rp;  // one row's dilated conv outputs plus conditioning
  float* g = p; p += Rp;        // one row's gate
  float* h = p; p += Sp;        // one row's relu(skip)
  float* skip_bias = p;         // the L layers' skip biases, summed in layer order
  for (int64_t l = 0; l < L; ++l)
    for (int64_t c = 0; c < Sp; ++c) skip_bias[c] += net.b_rs[l * rs_p + Rp + c];
  const int64_t kb_dil = arkern_amx::pad32(2 * R) / arkern_amx::kTileK,
                kb_rs = arkern_amx::pad32(R) / arkern_amx::kTileK,
                kb_out = arkern_amx::pad32(net.S) / arkern_amx::kTileK,
                kb_end = arkern_amx::pad32(A) / arkern_amx::kTileK;
  // Every layer's gate output of the step, rounded (r16 x L blocks of ld_g; zero in the padding columns and rows):
  // the residual conv of layer l reads block l, the skip convs of all layers are one product at the head, the L
  // layers' matrices as parts, so that the skip sums stay in the tiles' accumulators through all layers.
  const int64_t ld_g = kb_rs * arkern_amx::kTileK, ld_gates = L * ld_g;
  arkern_amx::line_vector<uint16_t> gates(static_cast<size_t>(r16 * ld_gates), uint16_t{0});
#if ARKERN_HAVE_AMX
  std::vector<arkern_amx::Part> skip_parts;
  for (int64_t l = 0; l < L; ++l)  // the skip outputs' blocks start after the residual outputs' Rp / 16
    skip_parts.push_back({tiles.base + tiles.rs_off + l * tiles.rs_stride + (Rp / 16) * kb_rs * arkern_amx::kTileElems,
                          kb_rs});
#endif
  arkern_amx::Batch& batch = arkern_amx::thread_batch();
  const arkern_amx::TileScope scope;  // the tile configuration for the whole call
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = t0 + s;
    for (int b = 0; b < nb; ++b) {
      const int64_t* pv = prev + (row0 + b) * 2;
      const float* e_old = net.emb + pv[0] * R;
      const float* e_new = net.emb + (A + pv[1]) * R;
      for (int64_t c = 0; c < R; ++c) x[b][c] = e_old[c] + e_new[c];
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t d = net.dil[l];
      const float* br = net.b_rs + l * rs_p;
      const uint16_t* w_rs = tiles.base + tiles.rs_off + l * tiles.rs_stride;
      // [x(t - d); x(t)] rounded straight from the ring and x into the tile inputs, then x(t) rounded replaces
      // x(t - d) in the ring (time-major: the R inputs of one time); x gets the residual bias
      batch.begin(nb, 2 * R);
      const int64_t now = t % d;
      for (int b = 0; b < nb; ++b) {
        float* slot = rings[l].at(row0 + b, now);
        if (b + kSlotAhead < nb) {  // into L1 a few rows ahead (prefetch_slot left it in L2)
          const float* ahead = rings[l].at(row0 + b + kSlotAhead, now);
          for (int64_t c = 0; c < R; c += 16) __builtin_prefetch(ahead + c);
        }
        layer_input(slot, x[b], br, R, batch.row(b));
      }
      tile_product(batch.row(0), r16, batch.ld(), tiles.base + l * tiles.dil_stride, kb_dil, two_rp,
                   net.b_dil + l * two_rp, 0, yd, two_rp);
      // the gate of bias + product (+ conditioning), rounded into the tile inputs of the residual / skip convs
      const auto [ring_ahead, ahead_slot] = slot_ahead(net, rings, l, t);
      for (int b = 0; b < nb; ++b) {
        const float* pb = yd + b * two_rp;
        const float* extra[2] = {cond ? cond + (((row0 + b) * cond_frames + t / hop) * L + l) * 2 * R : nullptr,
                                 gbias ? gbias + ((row0 + b) * L + l) * 2 * R : nullptr};
        if (extra[0] || extra[1]) {
          std::copy(pb, pb + two_rp, pre);
          for (const float* f : extra) {
            if (!f) continue;
            for (int64_t c = 0; c < R; ++c) {
              pre[c] += f[c];
              pre[Rp + c] += f[R + c];
            }
          }
          pb = pre;
        }
        gate_input(pb, pb + Rp, R, g, gates.data() + b * ld_gates + l * ld_g);
        prefetch_slot(*ring_ahead, row0 + b, ahead_slot, R);
      }
      if (l + 1 < L)  // x entering layer l + 1 (the last layer's residual outputs feed nothing)
        tile_product(gates.data() + l * ld_g, r16, ld_gates, w_rs, kb_rs, Rp, xm, Rp, xm, Rp);
    }
    // the skip sums: the L layers' skip biases + every layer's skip conv of its gate, one product
#if ARKERN_HAVE_AMX
    arkern_amx::matmul(gates.data(), r16, ld_gates, skip_parts.data(), static_cast<int>(L), Sp, skip, Sp, skip_bias, 0);
#endif
    // the head: relu(skip) -> 1x1 (from its bias) -> relu -> 1x1 (from its bias), each input rounded into the tiles
    batch.begin(nb, net.S);
    for (int b = 0; b < nb; ++b) relu_input(skip + b * Sp, net.S, h, batch.row(b));
    tile_product(batch.row(0), r16, batch.ld(), tiles.base + tiles.out_off, kb_out, Ap, net.b_out, 0, om, Ap);
    batch.begin(nb, A);
    for (int b = 0; b < nb; ++b) relu_input(om + b * Ap, A, om + b * Ap, batch.row(b));
    tile_product(batch.row(0), r16, batch.ld(), tiles.base + tiles.end_off, kb_end, Ap, net.b_end, 0, lgm, Ap);
    draw_and_record(sampler, lg, nb, A, row0, s, steps, noise, forced, samples, logits_out, prev);
  }
}

}  // namespace arkern_wavenet
