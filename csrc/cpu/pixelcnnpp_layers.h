// The packed weights of the pixelcnnpp_decode kernel (csrc/cpu/pixelcnnpp_decode.cpp): every layer's matrix,
// read from the op's weight list in the order arkern.models.pixelcnnpp_packing.pack_pixelcnnpp adds them (and
// arkern.reference.pixelcnnpp_decode.unpack reads them), with its AMX copy when there is one.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <vector>

#include "pixelcnnpp_decode.h"

namespace arkern_pixelcnnpp {

// Every layer's weights, in the order of the packed weight list.
struct Layers {
  int64_t C, M, bins, f, R, H, W, P;
  ConvSpec u_init, ul_init_down, ul_init_right;
  std::array<std::vector<BlockSpec>, 3> up_u, up_ul, dn_u, dn_ul;  // index: scale (0 = full resolution)
  std::array<ConvSpec, 2> down_u, down_ul;                         // scale s -> s + 1
  std::array<std::array<PMat, 6>, 2> up_u_taps;                    // scale s + 1 -> s, tap (kh, kw) of (2, 3)
  std::array<std::array<PMat, 4>, 2> up_ul_taps;                    // tap (kh, kw) of (2, 2)
  std::array<const float*, 2> up_u_bias, up_ul_bias;
  PMat out;
  int64_t max_n = 0;

  int64_t n_dn(int64_t s) const { return s == 2 ? R : R + 1; }
};

struct Cursor {
  const std::vector<at::Tensor>& w;
  const std::vector<at::Tensor>& b;
  at::TensorList tiles;  // empty, or one AMX copy per matrix (arkern.ops.pixelcnnpp_decode.pack_tiles)
  size_t k = 0;
  int64_t* max_n;
  PMat next(int64_t m, int64_t n, bool halves = false) {
    TORCH_CHECK(k < w.size(), "pixelcnnpp_generate: too few packed weights for the config");
    const auto& wt = w[k];
    const auto& bt = b[k];
    ++k;
    TORCH_CHECK(wt.numel() == pad16(m) * n && bt.numel() == pad16(m),
                "pixelcnnpp_generate: packed weight ", k - 1, " must be ", pad16(m), " x ", n, " with a bias of ",
                pad16(m), ", got ", wt.numel(), " and ", bt.numel(), " elements");
    *max_n = std::max(*max_n, n);
    PMat mat;
    mat.bf16 = wt.scalar_type() == at::kBFloat16;
    mat.m = m;
    mat.mp = pad16(m);
    mat.n = n;
    mat.b = bt.data_ptr<float>();
    if (mat.bf16) {
      mat.h = {wt.data_ptr<at::BFloat16>(), mat.b, m, mat.mp, n};
    } else {
      mat.f = {wt.data_ptr<float>(), mat.b, m, mat.mp, n};
    }
    if (!tiles.empty()) {  // the groups of arkern.ops.pixelcnnpp_decode.tile_groups
      const auto& tt = tiles[k - 1];
      const int64_t group = halves ? n / 2 : n, groups = n == 0 ? 0 : halves ? 2 : 1;
      TORCH_CHECK(mat.bf16 && tt.scalar_type() == at::kBFloat16 && tt.is_contiguous() && tt.device().is_cpu() &&
                      tt.numel() == groups * arkern_amx::packed_size(mat.mp, group),
                  "pixelcnnpp_generate: tiles ", k - 1, " must be the contiguous bfloat16 AMX copy of a bfloat16 ",
                  mat.mp, " x ", n, " matrix (", groups * arkern_amx::packed_size(mat.mp, group),
                  " elements), got ", tt.scalar_type(), " with ", tt.numel());
      mat.halves = halves;
      if (groups > 0) mat.t[0] = reinterpret_cast<const uint16_t*>(tt.data_ptr<at::BFloat16>());
      if (groups > 1) mat.t[1] = mat.t[0] + arkern_amx::packed_size(mat.mp, group);
    }
    return mat;
  }
  ConvSpec conv(int64_t cin, int64_t cout, int64_t kh, int64_t kw, bool down, int64_t stride, int64_t w) {
    ConvSpec c;
    c.mat = next(cout, kh * kw * cin, kh == 2 && kw == 2);  // (2, 2): split by kernel row
    c.kh = kh;
    c.kw = kw;
    c.top = kh - 1;
    c.left = down ? (kw - 1) / 2 : kw - 1;
    c.right = down ? (kw - 1) / 2 : 0;
    c.cin = cin;
    c.stride = stride;
    c.W = w;
    return c;
  }
  BlockSpec block(int64_t f, bool down, int64_t aux_parts, int64_t w) {
    BlockSpec s;
    const int64_t kw = down ? 3 : 2;
    s.conv_in = conv(2 * f, f, 2, kw, down, 1, w);
    s.aux_parts = aux_parts;
    if (aux_parts > 0) s.nin = next(f, 2 * aux_parts * f, aux_parts == 2);
    s.conv_out = conv(2 * f, 2 * f, 2, kw, down, 1, w);
    return s;
  }
};

inline Layers build_layers(at::IntArrayRef config, int64_t H, int64_t W, const std::vector<at::Tensor>& w,
                    const std::vector<at::Tensor>& b, at::TensorList tiles) {
  Layers L;
  L.C = config[0];
  L.M = config[1];
  L.bins = config[2];
  L.f = config[3];
  L.R = config[4];
  L.H = H;
  L.W = W;
  L.P = L.C == 3 ? 10 * L.M : L.M * (1 + 3 * L.C);
  TORCH_CHECK(tiles.empty() || tiles.size() == w.size(), "pixelcnnpp_generate: tiles must be empty or hold one ",
              "AMX copy per packed weight (", w.size(), "), got ", tiles.size());
  Cursor cur{w, b, tiles, 0, &L.max_n};
  const int64_t f = L.f, ci = L.C + 1;
  L.u_init = cur.conv(ci, f, 2, 3, true, 1, W);
  L.ul_init_down = cur.conv(ci, f, 1, 3, true, 1, W);
  L.ul_init_right = cur.conv(ci, f, 2, 1, false, 1, W);
  for (int64_t s = 0; s < 3; ++s)
    for (int64_t k = 0; k < L.R; ++k) L.up_u[s].push_back(cur.block(f, true, 0, W >> s));
  for (int64_t s = 0; s < 3; ++s)
    for (int64_t k = 0; k < L.R; ++k) L.up_ul[s].push_back(cur.block(f, false, 1, W >> s));
  for (int64_t s = 0; s < 2; ++s) L.down_u[s] = cur.conv(f, f, 2, 3, true, 2, W >> s);
  for (int64_t s = 0; s < 2; ++s) L.down_ul[s] = cur.conv(f, f, 2, 2, false, 2, W >> s);
  for (int64_t s = 0; s < 3; ++s)
    for (int64_t k = 0; k < L.n_dn(s); ++k) L.dn_u[s].push_back(cur.block(f, true, 1, W >> s));
  for (int64_t s = 0; s < 3; ++s)
    for (int64_t k = 0; k < L.n_dn(s); ++k) L.dn_ul[s].push_back(cur.block(f, false, 2, W >> s));
  // up-sampling layers: one matrix per kernel tap (zero bias), then the layer's bias alone (n = 0)
  for (int64_t s = 0; s < 2; ++s) {
    for (int64_t t = 0; t < 6; ++t) L.up_u_taps[s][t] = cur.next(f, f);
    L.up_u_bias[s] = cur.next(f, 0).b;
    for (int64_t t = 0; t < 4; ++t) L.up_ul_taps[s][t] = cur.next(f, f);
    L.up_ul_bias[s] = cur.next(f, 0).b;
  }
  L.out = cur.next(L.P, f);
  TORCH_CHECK(cur.k == w.size(), "pixelcnnpp_generate: ", w.size(), " packed weights, the config needs ", cur.k);
  return L;
}

}  // namespace arkern_pixelcnnpp
