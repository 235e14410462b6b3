// The building blocks of the WaveNet decode kernel (wavenet_decode.cpp and the files it is split into): the
// network's dimensions and biases (Net), the AMX copies of its matrices (Tiles), the end of a step (draw and
// record), the tiled product bound to arkern.ops.wavenet_decode.pack_matrix, and the three ways a row group runs
// its steps: Rows (wavenet_decode_rows.h; phases split over a team by output tiles), Pipe (wavenet_decode_pipe.h;
// 1-4 rows on two threads as a pipeline) and run_rows_amx (wavenet_decode_amx.cpp; AMX tiles, one thread).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "decode_matvec.h"
#include "decode_sampler.h"

namespace arkern_wavenet {

using arkern_decode::Mat;
using arkern_decode::pad16;
using arkern_decode::Sampler;
using arkern_decode::WaveNetPacking;

constexpr int kMaxRows = 64;    // batch rows sharing each weight tile (4 at a time in registers)
constexpr int kPastMaxRows = 2; // row groups up to this size apply each past tap to d steps at once
constexpr int kPipeMaxRows = 4; // row groups up to this size run on two threads as a pipeline (Pipe)
constexpr int64_t kPipeBlock = 8;  // Pipe: the helper's past taps, up to this many steps at once
constexpr int kAmxMinRows = 4;  // bfloat16 row groups from this size use AMX tiles when selected (isa.h)

// A layer's ring buffer (d slots): batch row `row`'s input of time s sits at at(row, s % d), R contiguous floats;
// rows and slots are row_stride / slot_stride floats apart. Two storages (arkern.ops.wavenet_decode): "rows",
// (B, d, R), each row's ring contiguous; "slots", (d, B, R), a slot's rows contiguous -- a step of a row group
// then reads and writes one contiguous block per layer (a stream for the prefetchers) instead of a piece per row.
struct Ring {
  float* base;
  int64_t row_stride, slot_stride;
  float* at(int64_t row, int64_t slot) const { return base + row * row_stride + slot * slot_stride; }
};
using Rings = std::vector<Ring>;

struct Net {
  int64_t L, R, Rp, S, Sp, A, Ap;
  std::vector<int64_t> dil;
  const float* emb;    // (2, A, R): [table of sample t-2, table of sample t-1]
  const float* b_dil;  // (L, 2Rp)
  const float* b_rs;   // (L, Rp + Sp)
  const float* b_out;  // (Ap)
  const float* b_end;  // (Ap)
};

// Step s of rows row0 .. row0 + nb - 1: each row's class drawn from its logits lg[b] at its uniform in noise
// (or taken from forced), written to samples (and the logits to logits_out when given) and shifted into the
// row's two previous classes prev[row].
inline void draw_and_record(Sampler& sampler, float* const* lg, int nb, int64_t A, int64_t row0, int64_t s,
                            int64_t steps, const double* noise, const int64_t* forced, int64_t* samples,
                            float* logits_out, int64_t* prev) {
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

// The bfloat16 precision on AMX tiles for batch rows [row0, row0 + nb), nb <= kMaxRows, on this thread: the
// same network and rounding as Rows<at::BFloat16> (every matrix input rounded to bfloat16, the rings holding
// the rounded layer inputs), each product one tile pass over all rows (amx.h). Tiles: the matrices' AMX copies.
void run_rows_amx(const Net& net, const Tiles& tiles, const Rings& rings, int64_t* prev, int64_t row0,
                  int nb, int64_t t0, int64_t steps, const double* noise, const float* cond, int64_t cond_frames,
                  int64_t hop, const float* gbias, const int64_t* forced, Sampler& sampler, int64_t* samples,
                  float* logits_out);

}  // namespace arkern_wavenet
