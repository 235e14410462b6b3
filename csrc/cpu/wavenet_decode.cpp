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
// widened to float32 with a shift (no avx512_bf16 needed); accumulation is always float32. Batch rows are split into groups run in parallel with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "decode_gate.h"
#include "decode_matvec.h"
#include "decode_sampler.h"

namespace {

using arkern_decode::gate;
using arkern_decode::Mat;
using arkern_decode::pad16;
using arkern_decode::Sampler;
using arkern_decode::WaveNetPacking;

constexpr int kMaxRows = 64;    // batch rows sharing each weight tile (4 at a time in registers)
constexpr int kPastMaxRows = 2; // row groups up to this size apply each past tap to d steps at once

// y[b] (+)= W[:, ja:jb] x[b][0 : jb - ja] for nb rows, starting from the bias when ja == 0 and from y[b]
// otherwise; W packed (mp x n) by arkern.ops.wavenet_decode.pack_matrix. Every output accumulates its inputs
// in the order j = 0, 1, ..., so splitting [0, n) into ranges, or rows into groups, gives bit-identical results.
template <typename WT>
void matvec_range(int nb, const WT* w, int64_t mp, int64_t n, int64_t ja, int64_t jb, const float* const* x,
                  float* const* y, const float* bias) {
  const Mat<float, WT> mat{w, bias, mp, mp, n};
  arkern_decode::matvec_range<WaveNetPacking>(mat, nb, ja, jb, x, y);
}

// y[b] = bias + W x[b] for nb rows.
template <typename WT>
void matvec(int nb, const WT* w, int64_t mp, int64_t n, const float* const* x, float* const* y, const float* bias) {
  matvec_range<WT>(nb, w, mp, n, 0, n, x, y, bias);
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

template <typename WT>
void run_rows(const Net& net, const WT* w_dil, const WT* w_rs, const WT* w_out, const WT* w_end,
              const std::vector<float*>& rings, int64_t* prev, int64_t row0, int nb, int64_t t0, int64_t steps,
              const double* noise, const float* cond, int64_t cond_frames, int64_t hop, const float* gbias,
              const int64_t* forced, Sampler& sampler, int64_t* samples, float* logits_out) {
  const int64_t L = net.L, R = net.R, Rp = net.Rp, S = net.S, Sp = net.Sp, A = net.A, Ap = net.Ap;
  const int64_t two_rp = 2 * Rp, rs_p = Rp + Sp;
  std::vector<float> buf(static_cast<size_t>(nb) * (Rp + 2 * R + two_rp + Rp + rs_p + Sp + Sp + 2 * Ap), 0.0f);
  float* p = buf.data();
  float *x[kMaxRows], *in2[kMaxRows], *pre[kMaxRows], *g[kMaxRows], *rs[kMaxRows], *skip[kMaxRows], *h[kMaxRows],
      *o[kMaxRows], *lg[kMaxRows];
  for (int b = 0; b < nb; ++b) {
    x[b] = p; p += Rp;
    in2[b] = p; p += 2 * R;
    pre[b] = p; p += two_rp;
    g[b] = p; p += Rp;
    rs[b] = p; p += rs_p;
    skip[b] = p; p += Sp;
    h[b] = p; p += Sp;
    o[b] = p; p += Ap;
    lg[b] = p; p += Ap;
  }
  const size_t w_dil_stride = two_rp * 2 * R, w_rs_stride = rs_p * R;
  // With few rows the weights are streamed from memory once per step for one or two rows: then the past
  // tap of each dilated layer (half its weights) is applied to d steps at once, from the ring buffer.
  std::vector<std::vector<float>> past;
  std::vector<const float*> past_x;
  std::vector<float*> past_y;
  float* cur[kMaxRows];
  double u[kMaxRows];
  int64_t drawn[kMaxRows];
  if (nb <= kPastMaxRows) {
    past.resize(L);
    int64_t dmax = 1;
    for (int64_t l = 0; l < L; ++l) {
      if (net.dil[l] > 1) past[l].assign(static_cast<size_t>(nb * net.dil[l] * two_rp), 0.0f);
      dmax = std::max(dmax, net.dil[l]);
    }
    past_x.resize(nb * dmax);
    past_y.resize(nb * dmax);
  }
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
      const int64_t d = net.dil[l], pos = t % d;
      const WT* wl = w_dil + l * w_dil_stride;
      const float* bl = net.b_dil + l * two_rp;
      float** pl = pre;
      if (!past.empty() && d > 1) {
        // The past tap: every d steps, W_past x[t - d] for the next d steps, from the d inputs in the ring.
        float* pb = past[l].data();
        if (s % d == 0) {  // only the slots of the steps this call still runs
          const int64_t n = std::min(d, steps - s);
          for (int b = 0; b < nb; ++b)
            for (int64_t k = 0; k < n; ++k) {
              const int64_t slot = (t + k) % d;
              past_x[b * n + k] = rings[l] + ((row0 + b) * d + slot) * R;
              past_y[b * n + k] = pb + (b * d + slot) * two_rp;
            }
          matvec_range<WT>(nb * static_cast<int>(n), wl, two_rp, 2 * R, 0, R, past_x.data(), past_y.data(), bl);
        }
        for (int b = 0; b < nb; ++b) {
          std::copy(x[b], x[b] + R, rings[l] + ((row0 + b) * d + pos) * R);
          cur[b] = pb + (b * d + pos) * two_rp;
        }
        matvec_range<WT>(nb, wl, two_rp, 2 * R, R, 2 * R, x, cur, bl);  // ... plus W_now x[t]
        pl = cur;
      } else {
        for (int b = 0; b < nb; ++b) {
          float* slot = rings[l] + ((row0 + b) * d + pos) * R;  // time-major: the R inputs of one time
          std::copy(slot, slot + R, in2[b]);                   // the input d steps ago ...
          std::copy(x[b], x[b] + R, slot);                     // ... replaced by this step's input
          std::copy(x[b], x[b] + R, in2[b] + R);
        }
        matvec<WT>(nb, wl, two_rp, 2 * R, in2, pre, bl);
      }
      for (int b = 0; b < nb; ++b) {
        const float* extra[2] = {
            cond ? cond + (((row0 + b) * cond_frames + t / hop) * L + l) * 2 * R : nullptr,
            gbias ? gbias + ((row0 + b) * L + l) * 2 * R : nullptr};
        for (const float* f : extra) {
          if (!f) continue;
          for (int64_t c = 0; c < R; ++c) {
            pl[b][c] += f[c];
            pl[b][Rp + c] += f[R + c];
          }
        }
        gate(pl[b], pl[b] + Rp, g[b], Rp);
      }
      matvec<WT>(nb, w_rs + l * w_rs_stride, rs_p, R, g, rs, net.b_rs + l * rs_p);
      for (int b = 0; b < nb; ++b) {
        for (int64_t c = 0; c < R; ++c) x[b][c] += rs[b][c];
        for (int64_t c = 0; c < Sp; ++c) skip[b][c] += rs[b][Rp + c];
      }
    }
    for (int b = 0; b < nb; ++b)
      for (int64_t c = 0; c < Sp; ++c) h[b][c] = std::max(skip[b][c], 0.0f);
    matvec<WT>(nb, w_out, Ap, S, h, o, net.b_out);
    for (int b = 0; b < nb; ++b)
      for (int64_t c = 0; c < Ap; ++c) o[b][c] = std::max(o[b][c], 0.0f);
    matvec<WT>(nb, w_end, Ap, A, o, lg, net.b_end);
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
    bool return_logits, const std::optional<at::Tensor>& forced) {
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
  // Row groups: at most kMaxRows rows share weight loads; at least one group per thread when B allows.
  const int64_t groups = std::max<int64_t>((B + kMaxRows - 1) / kMaxRows, std::min<int64_t>(B, at::get_num_threads()));
  if (B == 0 || T == 0) return {samples, logits};
  const double* np = noise_c.data_ptr<double>();
  const float* cp = cond.has_value() ? cond_c.data_ptr<float>() : nullptr;
  const float* gp = gbias.has_value() ? gbias_c.data_ptr<float>() : nullptr;
  const int64_t* fp = forced.has_value() ? forced_c.data_ptr<int64_t>() : nullptr;
  int64_t* prev_p = prev.data_ptr<int64_t>();
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    Sampler sampler(net.A, temperature, top_k, top_p);
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t r0 = grp * B / groups, r1 = (grp + 1) * B / groups;
      for (int64_t row0 = r0; row0 < r1; row0 += kMaxRows) {
        const int nb = static_cast<int>(std::min<int64_t>(kMaxRows, r1 - row0));
        float* lo = return_logits ? logits.data_ptr<float>() : nullptr;
        if (wt == at::kFloat) {
          run_rows<float>(net, w_dil.data_ptr<float>(), w_rs.data_ptr<float>(), w_out.data_ptr<float>(),
                          w_end.data_ptr<float>(), ring_ptrs, prev_p, row0, nb, t0, T, np, cp, frames, cond_hop, gp,
                          fp, sampler, samples.data_ptr<int64_t>(), lo);
        } else {
          run_rows<at::BFloat16>(net, w_dil.data_ptr<at::BFloat16>(), w_rs.data_ptr<at::BFloat16>(),
                                 w_out.data_ptr<at::BFloat16>(), w_end.data_ptr<at::BFloat16>(), ring_ptrs, prev_p,
                                 row0, nb, t0, T, np, cp, frames, cond_hop, gp, fp, sampler,
                                 samples.data_ptr<int64_t>(), lo);
        }
      }
    }
  });
  return {samples, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) { m.impl("wavenet_generate", &wavenet_generate_cpu); }
