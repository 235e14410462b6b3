// pixelcnn_decode CPU kernel: sample PixelCNN / Gated PixelCNN images without returning to Python.
//
// One call runs image rows [row_begin, row_end) of a batch in raster order: for every pixel, every colour
// sub-step g (R, then G, then B), every layer, the head, and the draw from the pre-drawn uniform (float64
// softmax, temperature, top-k, top-p, inverse CDF: the decisions of arkern.distributions.sample_categorical).
// This file checks the arguments and runs groups of batch rows; the program (layout, config, caches) is
// pixelcnn_runner.h, the families' steps pixelcnn_steps.h and gated_pixelcnn_steps.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "gated_pixelcnn_steps.h"
#include "pixelcnn_runner.h"
#include "pixelcnn_steps.h"
#include "team.h"

namespace {

using namespace arkern_pixelcnn;

constexpr int64_t kMaxRows = 32;  // batch rows run in lockstep, sharing every weight tile
constexpr int64_t kMaxTileRows = 64;  // the same on AMX tiles (4 tiles of 16 rows)

#define CHECK_ARG(cond, ...) TORCH_CHECK(cond, "pixelcnn_generate: ", __VA_ARGS__)

at::Tensor pixelcnn_generate_cpu(at::IntArrayRef config, at::TensorList weights, at::TensorList biases,
                                 const at::Tensor& input_table, at::TensorList caches, const at::Tensor& image, const at::Tensor& noise,
                                 const std::optional<at::Tensor>& cond, int64_t row_begin, int64_t row_end,
                                 double temperature, int64_t top_k, double top_p, bool return_logits,
                                 const std::optional<at::Tensor>& forced, at::TensorList tiles) {
  arkern_isa::selected();  // an invalid ARKERN_ISA fails here, not inside a parallel region
  CHECK_ARG(config.size() == kConfigInts, "config must hold ", kConfigInts, " ints, got ", config.size());
  const Dims d{config[0], config[1], config[2],  config[3],  config[4],  config[5],  config[6],  config[7], config[8],
               config[9], config[10], config[11], config[12], config[13], config[14], config[15], config[16]};
  CHECK_ARG(d.kind == 0 || d.kind == 1, "config kind must be 0 (PixelCNN) or 1 (GatedPixelCNN), got ", d.kind);
  CHECK_ARG(d.C >= 1 && d.K >= 2 && d.h >= 1 && d.h % d.C == 0 && d.depth >= (d.kind == 1 ? 1 : 0) && d.E >= 1 &&
                d.hh >= 1 && d.hh % d.C == 0,
            "bad network sizes C=", d.C, " K=", d.K, " h=", d.h, " depth=", d.depth, " E=", d.E, " hh=", d.hh);
  CHECK_ARG((d.residual == 0 || d.residual == 1) && (d.aligned == 0 || d.aligned == 1) &&
                (d.head_relu == 0 || d.head_relu == 1) && (d.kind == 0 || d.residual == 1) &&
                (d.kind == 1 || (d.aligned == 0 && d.kh_0 == 0 && d.kw_0 == 0 && d.kwh_0 == 0)),
            "bad flags residual=", d.residual, " aligned=", d.aligned, " head_relu=", d.head_relu, " for kind ", d.kind);
  CHECK_ARG(d.kh_a >= 1 && d.kw_a >= 1 && d.kh_b >= 1 && d.kw_b >= 1 && d.kw_a % 2 == 1 && d.kw_b % 2 == 1 &&
                (d.kind == 1 || (d.kh_a % 2 == 1 && d.kh_b % 2 == 1)) &&
                (d.kind == 0 || (d.kh_b == 1 && d.kh_0 >= 1 && d.kw_0 % 2 == 1 && d.kwh_0 % 2 == 1)),
            "unsupported kernel sizes (", d.kh_a, ", ", d.kw_a, "), (", d.kh_b, ", ", d.kw_b, "), (", d.kh_0, ", ",
            d.kw_0, "), ", d.kwh_0);
  CHECK_ARG(image.dim() == 4 && image.scalar_type() == at::kLong && image.is_contiguous() && image.device().is_cpu() &&
                image.size(1) == d.C,
            "image must be a contiguous int64 CPU tensor (B, ", d.C, ", H, W), got ", image.sizes());
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3);
  CHECK_ARG(noise.sizes() == image.sizes() && noise.scalar_type() == at::kDouble && noise.device().is_cpu(),
            "noise must be float64 with the image's shape ", image.sizes(), ", got ", noise.sizes());
  CHECK_ARG(0 <= row_begin && row_begin <= row_end && row_end <= H, "rows [", row_begin, ", ", row_end,
            ") outside the image of height ", H);
  CHECK_ARG(temperature > 0 && top_k >= 0 && top_p > 0, "need temperature > 0, top_k >= 0 and top_p > 0");
  const auto shapes = matrix_shapes(d);
  CHECK_ARG(weights.size() == shapes.size() && biases.size() == shapes.size(), "expected ", shapes.size(),
            " weight and bias tensors for this config, got ", weights.size(), " and ", biases.size());
  const auto wt = weights[0].scalar_type(), at_ = biases[0].scalar_type();
  CHECK_ARG((at_ == at::kFloat && (wt == at::kFloat || wt == at::kBFloat16)) || (at_ == at::kDouble && wt == at::kDouble),
            "weights/biases must be float32/float32, bfloat16/float32 or float64/float64, got ", wt, "/", at_);
  for (size_t k = 0; k < shapes.size(); ++k) {
    const auto [m, n] = shapes[k];
    CHECK_ARG(weights[k].scalar_type() == wt && weights[k].is_contiguous() && weights[k].device().is_cpu() &&
                  weights[k].numel() == pad16(m) * n,
              "weight ", k, " must be a contiguous ", wt, " CPU tensor of ", pad16(m) * n, " elements (",
              pad16(m), " x ", n, " packed), got ", weights[k].numel());
    CHECK_ARG(biases[k].scalar_type() == at_ && biases[k].is_contiguous() && biases[k].device().is_cpu() &&
                  biases[k].numel() == pad16(m),
              "bias ", k, " must be a contiguous ", at_, " CPU tensor of ", pad16(m), " elements");
  }
  CHECK_ARG(input_table.scalar_type() == at_ && input_table.is_contiguous() && input_table.device().is_cpu() &&
                input_table.sizes() == at::IntArrayRef({d.K, d.E}),
            "input_table must be a contiguous ", at_, " CPU tensor (", d.K, ", ", d.E, "), got ", input_table.sizes());
  const auto splits = tile_splits(d);
  CHECK_ARG(tiles.empty() || (tiles.size() == shapes.size() && wt == at::kBFloat16),
            "tiles (the AMX copy of bfloat16 weights) must be empty or hold one tensor per matrix (",
            shapes.size(), ") of a bfloat16 pack, got ", tiles.size());
  for (size_t k = 0; k < tiles.size(); ++k) {
    const auto [m, n] = shapes[k];
    const int64_t cut = splits[k];
    const int64_t numel = pad16(m) * (arkern_amx::pad32(cut) + arkern_amx::pad32(n - cut));
    CHECK_ARG(tiles[k].scalar_type() == at::kBFloat16 && tiles[k].is_contiguous() && tiles[k].device().is_cpu() &&
                  tiles[k].numel() == numel,
              "tiles ", k, " must be a contiguous bfloat16 CPU tensor of ", numel, " elements, got ", tiles[k].numel());
  }
  const auto cshape = cache_shapes(d, W);
  CHECK_ARG(caches.size() == cshape.size(), "expected ", cshape.size(), " caches, got ", caches.size());
  for (size_t c = 0; c < cshape.size(); ++c) {
    const auto& s = cshape[c];
    CHECK_ARG(caches[c].scalar_type() == at_ && caches[c].is_contiguous() && caches[c].device().is_cpu() &&
                  caches[c].sizes() == at::IntArrayRef({B, s[0], s[1], s[2]}),
              "cache ", c, " must be a contiguous ", at_, " CPU tensor (", B, ", ", s[0], ", ", s[1], ", ", s[2],
              "), got ", caches[c].sizes());
  }
  at::Tensor cond_c, forced_c;
  if (cond.has_value()) {
    CHECK_ARG(d.kind == 1, "cond is only for GatedPixelCNN");
    cond_c = cond->contiguous();
    CHECK_ARG(cond_c.scalar_type() == at_ && cond_c.device().is_cpu() &&
                  cond_c.sizes() == at::IntArrayRef({B, d.depth, 2 * d.h}),
              "cond must be ", at_, " (", B, ", ", d.depth, ", ", 2 * d.h, "), got ", cond_c.sizes());
  }
  if (forced.has_value()) {
    forced_c = forced->contiguous();
    CHECK_ARG(forced_c.scalar_type() == at::kLong && forced_c.sizes() == image.sizes() && forced_c.device().is_cpu(),
              "forced must be int64 with the image's shape");
    CHECK_ARG(forced_c.numel() == 0 || (forced_c.min().item<int64_t>() >= 0 && forced_c.max().item<int64_t>() < d.K),
              "forced holds levels outside [0, ", d.K, ")");
  }
  const int64_t rows = row_end - row_begin;
  auto logits = return_logits ? at::empty({B, rows, W, d.C * d.K}, biases[0].options())
                              : at::empty({0}, biases[0].options());
  if (B == 0 || rows == 0 || W == 0) return logits;
  const auto noise_c = noise.contiguous();
  const int64_t threads = at::get_num_threads();
  // Up to kMaxRows rows run as one group whose products a team of threads splits over output tiles
  // (csrc/cpu/team.h), when the per-pixel products have at least two tiles (h / C > 64) or at batch 1;
  // otherwise the rows are split into groups run in parallel.
  // On AMX tiles a group's per-pixel products run on its own thread (one core's tiles outrun a split of
  // them), so groups of up to kMaxTileRows rows run in parallel instead.
  const bool on_tiles = wt == at::kBFloat16 && !tiles.empty() && arkern_isa::use_amx();
  const bool split_outputs = !on_tiles && (B == 1 || arkern_decode::tiles(pad16(d.h / d.C)) >= 2);
  const int64_t max_rows = on_tiles ? kMaxTileRows : kMaxRows;
  const int64_t groups = std::max<int64_t>((B + max_rows - 1) / max_rows, split_outputs ? 1 : std::min<int64_t>(B, threads));

  const auto launch = [&](auto tag_t, auto tag_w) {
    using T = decltype(tag_t);
    using WT = decltype(tag_w);
    Runner<T, WT> run{d, B, H, W, row_begin, row_end};
    for (size_t k = 0; k < shapes.size(); ++k) {
      const auto [m, n] = shapes[k];
      run.mats.push_back({weights[k].data_ptr<WT>(), biases[k].data_ptr<T>(), m, pad16(m), n});
    }
    for (const auto& t : tiles) run.tiles.push_back(reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()));
    run.splits = splits;
    run.on_tiles = on_tiles;
    run.cshape = cshape;
    for (const auto& c : caches) run.caches.push_back(c.data_ptr<T>());
    run.image = image.data_ptr<int64_t>();
    run.noise = noise_c.data_ptr<double>();
    run.table = input_table.data_ptr<T>();
    run.cond = cond.has_value() ? cond_c.data_ptr<T>() : nullptr;
    run.forced = forced.has_value() ? forced_c.data_ptr<int64_t>() : nullptr;
    run.logits_out = return_logits ? logits.data_ptr<T>() : nullptr;
    const auto work = [&](int64_t g0, int64_t g1) {
      Sampler sampler(d.K, temperature, top_k, top_p);
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t b0 = grp * B / groups, b1 = (grp + 1) * B / groups;
        for (int64_t r0 = b0; r0 < b1; r0 += max_rows) {
          const int64_t nb = std::min(max_rows, b1 - r0);
          uint64_t key = 2;  // the workload, for the team's rate memory
          for (int64_t v : {d.kind, d.C, d.K, d.h, d.depth, d.kh_a, d.kw_a, d.kh_b, d.kw_b, d.E, d.residual,
                            d.aligned, d.kh_0, d.kw_0, d.kwh_0, d.hh, d.head_relu, W, nb,
                            static_cast<int64_t>(sizeof(T) + sizeof(WT))})
            key = key * 1000003 + static_cast<uint64_t>(v);
          arkern_team::Session team(key);  // one worker inside a parallel region
          run.run(r0, nb, sampler, team);
        }
      }
    };
    if (groups == 1) {
      work(0, 1);  // outside a parallel region: the team may split the products
    } else {
      at::parallel_for(0, groups, 1, work);
    }
  };
  if (at_ == at::kDouble) {
    launch(double{}, double{});
  } else if (wt == at::kBFloat16) {
    launch(float{}, at::BFloat16{});
  } else {
    launch(float{}, float{});
  }
  arkern_isa::record("pixelcnn_generate", on_tiles ? arkern_isa::Isa::amx
                                          : arkern_isa::use_avx512() ? arkern_isa::Isa::avx512 : arkern_isa::Isa::avx2);
  return logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) { m.impl("pixelcnn_generate", &pixelcnn_generate_cpu); }
