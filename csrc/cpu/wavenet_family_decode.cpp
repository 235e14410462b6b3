// wavenet_family_generate CPU kernel: the generalised WaveNet family (arkern/models/wavenet.py) advanced T
// steps per call, sampling inside. Semantics and packed layout: arkern/reference/wavenet_family_decode.py.
//
// Per step and batch row: the input (two embedding tables of the last two classes, or w * y + b of the last
// scalar sample), L gated layers with K taps each on ring buffers of (K-1)·d inputs (time-major), residual and
// skip 1x1 convs (the model's scalings are folded into the packed weights), the head relu -> 1x1 (S -> E) ->
// relu -> 1x1 (E -> O), and the draw from pre-drawn uniforms: softmax (one uniform: the decisions of
// arkern.distributions.sample_categorical, made by decode_sampler.h), mixture of logistics (the component
// from the first uniform by the same categorical draw over the mixture logits, then the logistic quantile of
// the second) or one Gaussian (one uniform through the inverse normal CDF). The matrix products use the tiled
// mat-vecs of decode_matvec.h (WaveNetPacking); with one or two rows per group, every past tap of a dilated
// layer is applied to d steps at once from its ring buffer, in the same accumulation order as the per-step
// product, so results do not depend on grouping or chunking. Batch rows are split into groups run with
// at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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

constexpr int kMaxRows = 64;
constexpr int kPastMaxRows = 2;
constexpr double kUEps = 1e-5;  // continuous draws clamp their uniform (arkern.models.wavenet_heads.U_EPS)

enum Head : int64_t { kSoftmax = 0, kMixture = 1, kGaussian = 2 };

template <typename WT>
void mv_range(int nb, const WT* w, int64_t mp, int64_t n, int64_t ja, int64_t jb, const float* const* x,
              float* const* y, const float* bias) {
  const Mat<float, WT> mat{w, bias, mp, mp, n};
  arkern_decode::matvec_range<WaveNetPacking>(mat, nb, ja, jb, x, y);
}

// Φ⁻¹(p) for p in (0, 1): Acklam's rational approximation, refined by one Halley step on erfc (~1e-15).
double ndtri(double p) {
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                             1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  double x;
  if (p < 0.02425) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p > 1 - 0.02425) {
    const double q = std::sqrt(-2 * std::log1p(-p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  }
  const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
  const double u = e * std::sqrt(2 * M_PI) * std::exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}

struct Net {
  int64_t K, L, R, Rp, H, Hp, S, Sp, E, Ep, O, Op, A, M;
  bool scalar;
  Head head;
  double log_scale_min;
  std::vector<int64_t> dil;
  const float *emb, *b_dil, *b_rs, *b_out, *b_end;
};

struct Io {  // per-call tensors (row-major over the batch)
  float* const* rings;
  int64_t* prev_i;
  double* prev_f;
  const double* noise;
  int64_t noise_per_step;
  const float *cond, *gbias;
  int64_t cond_frames, hop;
  const int64_t* forced_i;
  const double* forced_f;
  int64_t* out_i;
  double* out_f;
  float* logits;
};

template <typename WT>
void run_rows(const Net& net, const WT* w_dil, const WT* w_rs, const WT* w_out, const WT* w_end, const Io& io,
              int64_t row0, int nb, int64_t t0, int64_t steps, Sampler* sampler) {
  const int64_t K = net.K, L = net.L, R = net.R, Rp = net.Rp, H = net.H, Hp = net.Hp, S = net.S, Sp = net.Sp;
  const int64_t Ep = net.Ep, O = net.O, Op = net.Op, M = net.M;
  const int64_t gp = 2 * Hp, rs_p = Rp + Sp, kr = K * R;
  std::vector<float> buf(static_cast<size_t>(nb) * (Rp + kr + gp + Hp + rs_p + 2 * Sp + Ep + Op), 0.0f);
  float* p = buf.data();
  float *x[kMaxRows], *in[kMaxRows], *pre[kMaxRows], *g[kMaxRows], *rs[kMaxRows], *skip[kMaxRows], *h[kMaxRows],
      *o[kMaxRows], *lg[kMaxRows], *cur[kMaxRows];
  for (int b = 0; b < nb; ++b) {
    x[b] = p; p += Rp;
    in[b] = p; p += kr;
    pre[b] = p; p += gp;
    g[b] = p; p += Hp;
    rs[b] = p; p += rs_p;
    skip[b] = p; p += Sp;
    h[b] = p; p += Sp;
    o[b] = p; p += Ep;
    lg[b] = p; p += Op;
  }
  const size_t w_dil_stride = gp * kr, w_rs_stride = rs_p * H;
  std::vector<std::vector<float>> past;  // with 1-2 rows: the past taps of the next d steps, per layer
  std::vector<const float*> past_x;
  std::vector<float*> past_y;
  if (nb <= kPastMaxRows) {
    past.resize(L);
    int64_t dmax = 1;
    for (int64_t l = 0; l < L; ++l) {
      if (net.dil[l] > 1) past[l].assign(static_cast<size_t>(nb * net.dil[l] * gp), 0.0f);
      dmax = std::max(dmax, net.dil[l]);
    }
    past_x.resize(nb * dmax);
    past_y.resize(nb * dmax);
  }
  double u[kMaxRows];
  int64_t drawn[kMaxRows];
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = t0 + s;
    for (int b = 0; b < nb; ++b) {
      const int64_t row = row0 + b;
      if (net.scalar) {
        const float y = static_cast<float>(io.prev_f[row * 2 + 1]);
        for (int64_t c = 0; c < R; ++c) x[b][c] = net.emb[c] * y + net.emb[R + c];
      } else {
        const float* e_old = net.emb + io.prev_i[row * 2] * R;
        const float* e_new = net.emb + (net.A + io.prev_i[row * 2 + 1]) * R;
        for (int64_t c = 0; c < R; ++c) x[b][c] = e_old[c] + e_new[c];
      }
      std::fill(skip[b], skip[b] + Sp, 0.0f);
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t d = net.dil[l], span = (K - 1) * d, pos = t % span;
      const WT* wl = w_dil + l * w_dil_stride;
      const float* bl = net.b_dil + l * gp;
      float* ring = io.rings[l];
      float** pl = pre;
      if (!past.empty() && d > 1) {
        float* pb = past[l].data();
        if (s % d == 0) {  // taps 0..K-2 of the next n steps, all already in the ring
          const int64_t n = std::min(d, steps - s);
          for (int64_t k = 0; k + 1 < K; ++k) {
            for (int b = 0; b < nb; ++b)
              for (int64_t j = 0; j < n; ++j) {
                const int64_t tap = ((t + j - (K - 1 - k) * d) % span + span) % span;
                past_x[b * n + j] = ring + ((row0 + b) * span + tap) * R;
                past_y[b * n + j] = pb + (b * d + (t + j) % d) * gp;
              }
            mv_range<WT>(nb * static_cast<int>(n), wl, gp, kr, k * R, (k + 1) * R, past_x.data(), past_y.data(),
                         bl);
          }
        }
        for (int b = 0; b < nb; ++b) {
          std::copy(x[b], x[b] + R, ring + ((row0 + b) * span + pos) * R);
          cur[b] = pb + (b * d + t % d) * gp;
        }
        mv_range<WT>(nb, wl, gp, kr, (K - 1) * R, kr, x, cur, bl);  // ... plus the tap of x(t)
        pl = cur;
      } else {
        for (int b = 0; b < nb; ++b) {
          float* base = ring + (row0 + b) * span * R;
          for (int64_t k = 0; k + 1 < K; ++k) {
            const int64_t tap = ((t - (K - 1 - k) * d) % span + span) % span;
            std::copy(base + tap * R, base + (tap + 1) * R, in[b] + k * R);
          }
          std::copy(x[b], x[b] + R, in[b] + (K - 1) * R);
          std::copy(x[b], x[b] + R, base + pos * R);  // after reading: it replaces tap 0
        }
        mv_range<WT>(nb, wl, gp, kr, 0, kr, in, pre, bl);
      }
      for (int b = 0; b < nb; ++b) {
        const int64_t row = row0 + b;
        const float* extra[2] = {
            io.cond ? io.cond + ((row * io.cond_frames + t / io.hop) * L + l) * 2 * H : nullptr,
            io.gbias ? io.gbias + (row * L + l) * 2 * H : nullptr};
        for (const float* f : extra) {
          if (!f) continue;
          for (int64_t c = 0; c < H; ++c) {
            pl[b][c] += f[c];
            pl[b][Hp + c] += f[H + c];
          }
        }
        gate(pl[b], pl[b] + Hp, g[b], Hp);
      }
      mv_range<WT>(nb, w_rs + l * w_rs_stride, rs_p, H, 0, H, g, rs, net.b_rs + l * rs_p);
      for (int b = 0; b < nb; ++b) {
        for (int64_t c = 0; c < R; ++c) x[b][c] += rs[b][c];
        for (int64_t c = 0; c < Sp; ++c) skip[b][c] += rs[b][Rp + c];
      }
    }
    for (int b = 0; b < nb; ++b)
      for (int64_t c = 0; c < Sp; ++c) h[b][c] = std::max(skip[b][c], 0.0f);
    mv_range<WT>(nb, w_out, Ep, S, 0, S, h, o, net.b_out);
    for (int b = 0; b < nb; ++b)
      for (int64_t c = 0; c < Ep; ++c) o[b][c] = std::max(o[b][c], 0.0f);
    mv_range<WT>(nb, w_end, Op, net.E, 0, net.E, o, lg, net.b_end);
    const bool forced = io.forced_i || io.forced_f;
    if (!forced && net.head != kGaussian) {
      for (int b = 0; b < nb; ++b) u[b] = io.noise[((row0 + b) * steps + s) * io.noise_per_step];
      sampler->draw(lg, nb, net.head == kSoftmax ? O : M, u, drawn);
    }
    for (int b = 0; b < nb; ++b) {
      const int64_t row = row0 + b, at = row * steps + s;
      if (io.logits) std::copy(lg[b], lg[b] + O, io.logits + at * O);
      if (net.head == kSoftmax) {
        const int64_t y = forced ? io.forced_i[at] : drawn[b];
        io.out_i[at] = y;
        io.prev_i[row * 2] = io.prev_i[row * 2 + 1];
        io.prev_i[row * 2 + 1] = y;
        continue;
      }
      double y;
      if (forced) {
        y = io.forced_f[at];
      } else {
        const int64_t k = net.head == kMixture ? drawn[b] : 0;
        const double mean = lg[b][net.head == kMixture ? M + k : 0];
        const double ls = std::max(static_cast<double>(lg[b][net.head == kMixture ? 2 * M + k : 1]),
                                   net.log_scale_min);
        const double v = std::min(std::max(io.noise[at * io.noise_per_step + io.noise_per_step - 1], kUEps),
                                  1.0 - kUEps);
        const double q = net.head == kMixture ? std::log(v) - std::log1p(-v) : ndtri(v);
        y = std::min(1.0, std::max(-1.0, mean + std::exp(ls) * q));
      }
      io.out_f[at] = y;
      io.prev_f[row * 2] = io.prev_f[row * 2 + 1];
      io.prev_f[row * 2 + 1] = y;
    }
  }
}

void check_f32(const at::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
              "wavenet_family_generate: ", name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.numel() == numel, "wavenet_family_generate: ", name, " must have ", numel, " elements, got ",
              t.numel());
}

// dims = [K, R, H, S, E, O, A, M, input (0 embedding, 1 scalar), head (0 softmax, 1 mixture, 2 Gaussian)]
std::tuple<at::Tensor, at::Tensor> wavenet_family_generate_cpu(
    const at::Tensor& emb, const at::Tensor& w_dil, const at::Tensor& b_dil, const at::Tensor& w_rs,
    const at::Tensor& b_rs, const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& w_end,
    const at::Tensor& b_end, at::IntArrayRef dims, at::IntArrayRef dilations, at::TensorList rings,
    const at::Tensor& prev, int64_t t0, const at::Tensor& noise, const std::optional<at::Tensor>& cond,
    int64_t cond_hop, const std::optional<at::Tensor>& gbias, double temperature, int64_t top_k, double top_p,
    double log_scale_min, bool return_logits, const std::optional<at::Tensor>& forced) {
  TORCH_CHECK(dims.size() == 10, "wavenet_family_generate: dims must hold 10 sizes");
  Net net;
  net.K = dims[0]; net.R = dims[1]; net.H = dims[2]; net.S = dims[3]; net.E = dims[4]; net.O = dims[5];
  net.A = dims[6]; net.M = dims[7];
  net.scalar = dims[8] == 1;
  TORCH_CHECK(dims[9] >= 0 && dims[9] <= 2, "wavenet_family_generate: unknown head");
  net.head = static_cast<Head>(dims[9]);
  net.L = static_cast<int64_t>(dilations.size());
  TORCH_CHECK(net.K >= 2 && net.R >= 1 && net.H >= 1 && net.S >= 1 && net.E >= 1 && net.O >= 1 && net.L >= 1 &&
                  net.A >= 1, "wavenet_family_generate: empty network");
  TORCH_CHECK(net.head != kMixture || (net.M >= 1 && net.O == 3 * net.M),
              "wavenet_family_generate: a mixture head has 3 x M outputs");
  TORCH_CHECK(net.head != kGaussian || net.O == 2, "wavenet_family_generate: a Gaussian head has 2 outputs");
  TORCH_CHECK(net.scalar == (net.head != kSoftmax), "wavenet_family_generate: scalar input goes with continuous heads");
  net.Rp = pad16(net.R); net.Hp = pad16(net.H); net.Sp = pad16(net.S); net.Ep = pad16(net.E); net.Op = pad16(net.O);
  net.log_scale_min = log_scale_min;
  const int64_t L = net.L, gp = 2 * net.Hp, kr = net.K * net.R;
  check_f32(emb, "emb", net.scalar ? 2 * net.R : 2 * net.A * net.R);
  check_f32(b_dil, "b_dil", L * gp);
  check_f32(b_rs, "b_rs", L * (net.Rp + net.Sp));
  check_f32(b_out, "b_out", net.Ep);
  check_f32(b_end, "b_end", net.Op);
  const auto wt = w_dil.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kBFloat16, "wavenet_family_generate: weights must be float32 or bfloat16");
  const std::pair<const at::Tensor*, int64_t> mats[] = {
      {&w_dil, L * gp * kr}, {&w_rs, L * (net.Rp + net.Sp) * net.H}, {&w_out, net.Ep * net.S},
      {&w_end, net.Op * net.E}};
  for (const auto& [t, n] : mats)
    TORCH_CHECK(t->scalar_type() == wt && t->is_contiguous() && t->numel() == n && t->device().is_cpu(),
                "wavenet_family_generate: packed weights must be contiguous CPU tensors of one dtype, with ", n,
                " elements");
  const auto prev_type = net.scalar ? at::kDouble : at::kLong;
  TORCH_CHECK(prev.dim() == 2 && prev.size(1) == 2 && prev.scalar_type() == prev_type && prev.is_contiguous(),
              "wavenet_family_generate: prev must be a contiguous (B, 2) tensor of ", net.scalar ? "float64" : "int64");
  const int64_t B = prev.size(0);
  if (!net.scalar)
    TORCH_CHECK(B == 0 || (prev.min().item<int64_t>() >= 0 && prev.max().item<int64_t>() < net.A),
                "wavenet_family_generate: prev holds classes outside [0, A)");
  const int64_t per_step = net.head == kMixture ? 2 : 1;
  TORCH_CHECK(noise.scalar_type() == at::kDouble && noise.dim() == (per_step == 2 ? 3 : 2) && noise.size(0) == B &&
                  (per_step == 1 || noise.size(2) == 2),
              "wavenet_family_generate: noise must be float64 (B, T) or (B, T, 2) for a mixture head");
  const int64_t T = noise.size(1);
  TORCH_CHECK(t0 >= 0 && temperature > 0 && top_k >= 0 && top_p > 0, "wavenet_family_generate: bad t0 or warpers");
  TORCH_CHECK(static_cast<int64_t>(rings.size()) == L, "wavenet_family_generate: need one ring buffer per layer");
  std::vector<float*> ring_ptrs(L);
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK(dilations[l] >= 1, "wavenet_family_generate: dilations must be >= 1");
    net.dil.push_back(dilations[l]);
    const auto& r = rings[l];
    const int64_t span = (net.K - 1) * dilations[l];
    TORCH_CHECK(r.scalar_type() == at::kFloat && r.dim() == 3 && r.size(0) == B && r.size(1) == net.R &&
                    r.size(2) == span && r.transpose(1, 2).is_contiguous() && r.device().is_cpu(),
                "wavenet_family_generate: ring buffer ", l, " must be float32 (B, R, ", span,
                ") with time-major storage");
    ring_ptrs[l] = r.data_ptr<float>();
  }
  const auto noise_c = noise.contiguous();
  at::Tensor cond_c, gbias_c, forced_c;
  Io io{};
  io.rings = ring_ptrs.data();
  io.noise = noise_c.data_ptr<double>();
  io.noise_per_step = per_step;
  io.hop = 1;
  if (cond.has_value()) {
    cond_c = cond->contiguous();
    TORCH_CHECK(cond_c.scalar_type() == at::kFloat && cond_c.dim() == 4 && cond_c.size(0) == B &&
                    cond_c.size(2) == L && cond_c.size(3) == 2 * net.H,
                "wavenet_family_generate: cond must be float32 (B, frames, L, 2H)");
    TORCH_CHECK(cond_hop >= 1, "wavenet_family_generate: cond_hop must be >= 1");
    io.cond_frames = cond_c.size(1);
    TORCH_CHECK(T == 0 || (t0 + T - 1) / cond_hop < io.cond_frames, "wavenet_family_generate: cond has ",
                io.cond_frames, " frames, too few for steps up to ", t0 + T);
    io.cond = cond_c.data_ptr<float>();
    io.hop = cond_hop;
  }
  if (gbias.has_value()) {
    gbias_c = gbias->contiguous();
    TORCH_CHECK(gbias_c.scalar_type() == at::kFloat && gbias_c.numel() == B * L * 2 * net.H,
                "wavenet_family_generate: gbias must be float32 (B, L, 2H)");
    io.gbias = gbias_c.data_ptr<float>();
  }
  if (forced.has_value()) {
    forced_c = forced->contiguous();
    TORCH_CHECK(forced_c.scalar_type() == prev_type && forced_c.dim() == 2 && forced_c.size(0) == B &&
                    forced_c.size(1) == T, "wavenet_family_generate: forced must be (B, T) of prev's dtype");
    if (net.scalar) {
      io.forced_f = forced_c.data_ptr<double>();
    } else {
      TORCH_CHECK(forced_c.numel() == 0 || (forced_c.min().item<int64_t>() >= 0 &&
                                            forced_c.max().item<int64_t>() < net.A),
                  "wavenet_family_generate: forced holds classes outside [0, A)");
      io.forced_i = forced_c.data_ptr<int64_t>();
    }
  }
  net.emb = emb.data_ptr<float>();
  net.b_dil = b_dil.data_ptr<float>();
  net.b_rs = b_rs.data_ptr<float>();
  net.b_out = b_out.data_ptr<float>();
  net.b_end = b_end.data_ptr<float>();
  auto samples = at::empty({B, T}, prev.options());
  auto logits = return_logits ? at::empty({B, T, net.O}, emb.options()) : at::empty({0}, emb.options());
  if (B == 0 || T == 0) return {samples, logits};
  if (net.scalar) {
    io.prev_f = prev.data_ptr<double>();
    io.out_f = samples.data_ptr<double>();
  } else {
    io.prev_i = prev.data_ptr<int64_t>();
    io.out_i = samples.data_ptr<int64_t>();
  }
  io.logits = return_logits ? logits.data_ptr<float>() : nullptr;
  const int64_t groups = std::max<int64_t>((B + kMaxRows - 1) / kMaxRows, std::min<int64_t>(B, at::get_num_threads()));
  const int64_t classes = net.head == kSoftmax ? net.O : std::max<int64_t>(net.M, 1);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    Sampler sampler(classes, temperature, top_k, top_p);
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t r0 = grp * B / groups, r1 = (grp + 1) * B / groups;
      for (int64_t row0 = r0; row0 < r1; row0 += kMaxRows) {
        const int nb = static_cast<int>(std::min<int64_t>(kMaxRows, r1 - row0));
        if (wt == at::kFloat)
          run_rows<float>(net, w_dil.data_ptr<float>(), w_rs.data_ptr<float>(), w_out.data_ptr<float>(),
                          w_end.data_ptr<float>(), io, row0, nb, t0, T, &sampler);
        else
          run_rows<at::BFloat16>(net, w_dil.data_ptr<at::BFloat16>(), w_rs.data_ptr<at::BFloat16>(),
                                 w_out.data_ptr<at::BFloat16>(), w_end.data_ptr<at::BFloat16>(), io, row0, nb, t0,
                                 T, &sampler);
      }
    }
  });
  return {samples, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) { m.impl("wavenet_family_generate", &wavenet_family_generate_cpu); }
