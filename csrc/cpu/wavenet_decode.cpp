// wavenet_decode CPU kernel: the whole nv-wavenet network advanced T steps per call, sampling inside.
//
// One call runs, for every batch row and every step: embedding of the previous two samples, L gated
// dilated layers (ring buffer per layer), the skip sum, the head relu -> 1x1 -> relu -> 1x1, and a draw
// from the pre-drawn uniforms (softmax, temperature, top-k, top-p, inverse CDF: the decisions of
// arkern.distributions.sample_categorical, made by decode_sampler.h). The loop over steps never returns to
// Python. Ring buffers are (B, R, d) views of time-major (B, d, R) or (d, B, R) storage, so one step reads and writes
// R contiguous floats per row (one block per layer for a group of rows in the second storage).
//
// Weights come pre-packed (arkern.models.wavenet.pack_wavenet with arkern.ops.wavenet_decode.pack_matrix;
// the layout is documented in arkern/reference/wavenet_decode.py): every matrix W (M x N) has its rows
// zero-padded to Mp = ceil16(M) and is stored as row tiles of up to 64 outputs, each tile transposed
// (N x tile width) and contiguous. A tile is then one stream of weights, multiplied into 16..64
// float32 accumulators per batch row held in AVX-512 registers; four batch rows share every weight load,
// and more rows share each tile while it is in cache (decode_matvec.h, WaveNetPacking). bfloat16 weights are
// widened to float32 with a shift (no avx512_bf16 needed); accumulation is always float32. Up to 64 batch rows
// run as one group whose every step a team of threads splits over output tiles (Rows; csrc/cpu/team.h),
// 1-4 rows on two threads as a pipeline (Pipe); more rows are split into groups run in parallel with
// at::parallel_for.
//
// This file validates the arguments and dispatches row groups; the parts are in wavenet_decode.h (shared
// pieces), wavenet_decode_rows.h (Rows), wavenet_decode_pipe.h (Pipe) and wavenet_decode_amx.cpp (AMX tiles).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "amx.h"
#include "decode_sampler.h"
#include "isa.h"
#include "team.h"
#include "wavenet_decode.h"
#include "wavenet_decode_pipe.h"
#include "wavenet_decode_rows.h"

namespace {

using namespace arkern_wavenet;

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
  Rings ring_ptrs;
  for (int64_t l = 0; l < net.L; ++l) {
    net.dil.push_back(dilations[l]);
    TORCH_CHECK(dilations[l] >= 1, "wavenet_generate: dilations must be >= 1");
    const auto& r = rings[l];
    const int64_t d = dilations[l];
    // "rows" storage (B, d, R) or "slots" storage (d, B, R), seen as (B, R, d)
    const bool shape = r.scalar_type() == at::kFloat && r.dim() == 3 && r.size(0) == B && r.size(1) == net.R &&
                       r.size(2) == d && r.device().is_cpu();
    const bool rows = shape && r.transpose(1, 2).is_contiguous();
    const bool slots = shape && r.permute({2, 0, 1}).is_contiguous();
    TORCH_CHECK(rows || slots, "wavenet_generate: ring buffer ", l, " must be float32 (B, R, ", d,
                ") with time-major storage: a view of a contiguous (B, ", d, ", R) or (", d, ", B, R) tensor");
    ring_ptrs.push_back(Ring{r.data_ptr<float>(), r.stride(0), r.stride(2)});
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
