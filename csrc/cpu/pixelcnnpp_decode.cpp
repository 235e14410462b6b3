// pixelcnnpp_decode CPU kernel: sample PixelCNN++ images without returning to Python.
//
// One call samples whole images: every row, pixel, layer of both streams at every scale, and the draw
// from the discretized logistic mixture, following the schedule of arkern.models.pixelcnnpp's cached
// decoder (PixelCNNppDecoder):
// - at the start of image row i, the whole `u` stream (it sees only rows above) for row i at every scale
//   that gets a new row there (scale 1 on even rows, scale 2 on rows divisible by 4), many columns
//   sharing each weight tile;
// - then, for the same rows, the `ul` stream's row pass: every (2, 2) conv of the `ul` stream (the resnets'
//   convs and the stride-2 conv into the scale) computes the part of its outputs that sees only the input
//   row above (its top kernel row, plus the resnets' nin on the `u` stream's values) for all columns at once,
//   again sharing each weight tile over many columns;
// - per pixel, the rest of the `ul` stream at full resolution (the bottom kernel row's two taps, the nin's
//   `ul` part), and at the pixels where a stride-2 layer produces a new output ((2r, 2c) for scale 1,
//   (4q, 4p) for scale 2) that scale's `ul` layers: about half of the `ul` weights, as two halves (left and
//   right tap) that a team of two threads streams one each (split_product in pixelcnnpp_decode.h);
// - the output 1x1 conv and the draw (float64, the decisions of
//   arkern.distributions.sample_discretized_logistic_mixture), whose pixel is fed back at once.
//
// Every shifted conv keeps the last kh rows of its zero-padded input map (top kh-1; 'down' (kw-1)/2 left
// and right, 'downright' kw-1 left) as a ring of rows, channel fastest, so one kernel row of taps is one
// contiguous run (Conv in pixelcnnpp_decode.h); a stride-2 conv keeps its full-resolution input's rows
// the same way. The final down-pass `u` and `ul` of scales 1 and 2, which the up-samplings read, are kept
// for one row of their scale: row r of scale s - 1 up-samples from row r / 2 of scale s, the newest one.
// So the memory of a batch row does not grow with the image height. Matrices are packed as
// in pixelcnn_decode.h (columns ordered kernel row, kernel column, input channel), all float32 or all bfloat16.
//
// bfloat16 packs run the bfloat16 precision (docs/design.md): every matrix input is rounded to bfloat16 where
// the kernel stores it for its products (matrix_input in pixelcnnpp_decode.h): the convs' input rings (the
// image and ones channel, concat_elu values, the stride-2 convs' inputs), the nins' concat_elu(aux), the
// up-samplings' inputs (the coarse scales' final rows) and the output conv's elu(ul); the float32 tile kernels
// multiply them by the widened bfloat16 weights, products exact in float32, summed in float32. On AMX tiles the
// convs' rings hold bfloat16 bits (Conv in pixelcnnpp_decode.h), copied into the tiles' input block.
//
// config = [C, M, bins, f, R]: image channels, mixture components, levels per channel, filters, gated
// resnets per scale in the up pass (R + 1 in the down pass at scales 0 and 1, R at scale 2). The weight
// list order is fixed by arkern.models.pixelcnnpp_packing.pack_pixelcnnpp (mirrored in Layers below).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "pixelcnnpp_decode.h"
#include "pixelcnnpp_layers.h"

namespace {

using namespace arkern_pixelcnnpp;

constexpr int64_t kMaxRows = 16;      // batch rows decoded in lockstep (sharing every weight tile)
constexpr int64_t kMaxTileRows = 64;  // the same on AMX tiles (4 tiles of 16 rows share every weight tile)
constexpr int64_t kMinTileBatch = 4;  // smaller batches run the float32 tile kernels (and the team) at amx too

// ---------------------------------------------------------------- the draw (float64)

// quantize then dequantize (arkern.distributions, float64): the level of x on the `bins` grid of [-1, 1]
// into *level, and its value. A NaN (from broken parameters) lands on level 0.
__attribute__((optimize("fp-contract=off"))) double grid_level(double x, int64_t bins, int64_t* level) {
  double q = std::nearbyint((x + 1.0) * (bins - 1) / 2.0);
  if (!(q == q)) q = 0.0;
  q = std::min(std::max(q, 0.0), static_cast<double>(bins - 1));
  *level = static_cast<int64_t>(q);
  return q * (2.0 / (bins - 1)) - 1.0;
}

// The levels of one pixel from its mixture parameters and uniforms u[0] (component), u[1 + c] (channel c),
// as arkern.distributions.sample_discretized_logistic_mixture decides them.
__attribute__((optimize("fp-contract=off"))) void draw_pixel(const float* params, const double* u, int64_t ustride,
                                                             const Layers& L, double temperature, int64_t* levels) {
  const int64_t M = L.M, C = L.C;
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t m = 0; m < M; ++m) mx = std::max(mx, static_cast<double>(params[m]));
  double cum[64], e[64];
  double c = 0.0;
  for (int64_t m = 0; m < M; ++m) cum[m] = (c += (e[m] = std::exp(static_cast<double>(params[m]) - mx)));
  const double target = u[0] * c;
  int64_t k = std::upper_bound(cum, cum + M, target) - cum;
  if (k >= M) {  // u * total rounded up to the total: the last class with mass
    k = M - 1;
    while (k > 0 && e[k] == 0.0) --k;
  }
  const auto grid = [&](double x, int64_t* level) { return grid_level(x, L.bins, level); };
  double x[3], v[3];
  for (int64_t ch = 0; ch < C; ++ch) {
    const double mu = params[M + ch * M + k];
    const double ls = std::max(static_cast<double>(params[M + C * M + ch * M + k]), -7.0);
    const double s = std::exp(ls) * temperature;
    const double uu = std::min(std::max(u[(1 + ch) * ustride], 1e-5), 1.0 - 1e-5);
    x[ch] = mu + s * (std::log(uu) - std::log1p(-uu));
  }
  if (C == 3) {
    const float* co = params + M + 2 * C * M;
    const double c0 = std::tanh(static_cast<double>(co[k])), c1 = std::tanh(static_cast<double>(co[M + k]));
    const double c2 = std::tanh(static_cast<double>(co[2 * M + k]));
    v[0] = grid(x[0], levels);
    v[1] = grid(x[1] + c0 * v[0], levels + 1);
    v[2] = grid(x[2] + c1 * v[0] + c2 * v[1], levels + 2);
  } else {
    for (int64_t ch = 0; ch < C; ++ch) v[ch] = grid(x[ch], levels + ch);
  }
}

// The network input of a pixel: its C values in [-1, 1] (float32, as model.prepare computes them), then 1.
__attribute__((optimize("fp-contract=off"))) void pixel_input(const int64_t* levels, int64_t stride, int64_t C,
                                                              int64_t bins, float* dst) {
  const float step = static_cast<float>(2.0 / (bins - 1));
  for (int64_t c = 0; c < C; ++c) {
    const float t = static_cast<float>(levels[c * stride]) * step;
    dst[c] = t - 1.0f;
  }
  dst[C] = 1.0f;
}

// ---------------------------------------------------------------- one group of batch rows

// The decoding state of nb batch rows run in lockstep. Every f-vector is stored with stride fs =
// pad16(f): a product writes whole 16-float groups.
struct Group {
  const Layers& L;
  int64_t nb, row0 = 0, fs;
  int64_t* image = nullptr;          // (B, C, H, W)
  const double* noise = nullptr;     // (B, 1 + C, H, W)
  const int64_t* forced = nullptr;   // (B, C, H, W) or null
  float* params_out = nullptr;       // (B, H, W, P) or null
  double temperature = 1.0;

  Conv u_init, ul_init_down, ul_init_right;
  std::array<std::vector<Block>, 3> up_u, up_ul, dn_u, dn_ul;
  std::array<Conv, 2> down_u, down_ul;
  Scratch sc;
  // per scale s: the u stream's current row, (k, nb, W_s) f-vectors: up pass values k = 0..R, down pass
  // values k = 0..n_dn - 1; for s = 1, 2 the newest row of the final down-pass u and ul, (nb, W_s): row
  // r / 2 of scale s when scale s - 1 is at row r (the u stream computes scale s first when r is even; the
  // ul stream writes pixel (r / 2, c / 2) before it is read at (r, c), and rewrites that row only when
  // scale s - 1 reaches row r + 2)
  std::array<std::vector<float>, 3> u_up, u_dn, u_dn_row, ul_dn_row;
  std::vector<float> u_row, ul_down_row, up_row, ul_vals, right, upb, fin, hbuf, acc, prev, outp;
  std::vector<Pos> pos;
  std::vector<const float*> xp, a1, a2, src;
  std::vector<float*> yp, dst;

  Group(const Layers& layers, int64_t nb_, bool on_tiles) : L(layers), nb(nb_), fs(pad16(layers.f)) {
    const int64_t W = L.W;
    u_init.reset(L.u_init, nb, false, on_tiles);
    ul_init_down.reset(L.ul_init_down, nb, false, on_tiles);
    ul_init_right.reset(L.ul_init_right, nb, false, on_tiles);
    for (int64_t s = 0; s < 3; ++s) {
      const auto make = [&](const std::vector<BlockSpec>& specs, std::vector<Block>& blocks, bool row_split) {
        blocks.resize(specs.size());
        for (size_t k = 0; k < specs.size(); ++k) blocks[k].reset(specs[k], nb, row_split, on_tiles);
      };
      make(L.up_u[s], up_u[s], false);
      make(L.up_ul[s], up_ul[s], true);
      make(L.dn_u[s], dn_u[s], false);
      make(L.dn_ul[s], dn_ul[s], true);
      const int64_t ws = W >> s;
      u_up[s].assign((L.R + 1) * nb * ws * fs, 0.0f);
      u_dn[s].assign(std::max<int64_t>(1, L.n_dn(s)) * nb * ws * fs, 0.0f);
      if (s > 0) {
        u_dn_row[s].assign(nb * ws * fs, 0.0f);
        ul_dn_row[s].assign(nb * ws * fs, 0.0f);
      }
    }
    for (int64_t s = 0; s < 2; ++s) {
      down_u[s].reset(L.down_u[s], nb, false, on_tiles);
      down_ul[s].reset(L.down_ul[s], nb, true, on_tiles);
    }
    const int64_t np = nb * W;
    sc.init(np, L.max_n, L.f);
    for (auto* v : {&u_row, &ul_down_row, &up_row}) v->assign(np * fs, 0.0f);
    ul_vals.assign(3 * (L.R + 1) * nb * fs, 0.0f);
    for (auto* v : {&right, &upb, &fin, &hbuf}) v->assign(nb * fs, 0.0f);
    acc.assign(fs, 0.0f);
    prev.assign(nb * (L.C + 1), 0.0f);
    outp.assign(nb * pad16(L.P), 0.0f);
    pos.resize(np);
    for (auto* v : {&xp, &a1, &a2, &src}) v->resize(np);
    for (auto* v : {&yp, &dst}) v->resize(np);
  }

  float* row_at(std::vector<float>& buf, int64_t s, int64_t k, int64_t b, int64_t c) {
    const int64_t ws = L.W >> s;
    return buf.data() + ((k * nb + b) * ws + c) * fs;
  }
  float* dn_at(std::vector<float>& row, int64_t s, int64_t b, int64_t c) {
    return row.data() + (b * (L.W >> s) + c) * fs;
  }
  float* ul_val(int64_t s, int64_t k, int64_t b) { return ul_vals.data() + ((s * (L.R + 1) + k) * nb + b) * fs; }
  float* vec(std::vector<float>& buf, int64_t b) { return buf.data() + b * fs; }

  // y[b] = bias + W x[b] for the nb rows (on tiles when the group runs there).
  void group_product(const PMat& m, const float* const* x, float* const* y) {
    if (sc.tiles && m.t[0] != nullptr) {
      tiles_product(m.t[0], m.n, m.mp, nb, x, m.b, y);
    } else {
      product(m, nb, 0, m.n, x, y, sc.team);
    }
  }

  int64_t row_positions(int64_t s, int64_t r) {
    const int64_t ws = L.W >> s;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c = 0; c < ws; ++c) pos[b * ws + c] = {b, r, c};
    return nb * ws;
  }
  void pixel_positions(int64_t r, int64_t c) {
    for (int64_t b = 0; b < nb; ++b) pos[b] = {b, r, c};
  }

  // The u stream for image row i at every scale that gets a new row there.
  void start_row(int64_t i) {
    const int64_t W = L.W, R = L.R, C = L.C, H = L.H, f = L.f;
    if (i == 0) {
      std::fill(u_row.begin(), u_row.end(), 0.0f);
      std::fill(ul_down_row.begin(), ul_down_row.end(), 0.0f);
    } else {
      float in[4];
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t j = 0; j < W; ++j) {
          pixel_input(image + ((row0 + b) * C * H + i - 1) * W + j, H * W, C, L.bins, in);
          u_init.write(b, i - 1, j, in);
          ul_init_down.write(b, i - 1, j, in);
        }
      const int64_t np = row_positions(0, i - 1);  // down shift: stream row i is the init convs' row i - 1
      for (int64_t p = 0; p < np; ++p) yp[p] = u_row.data() + p * fs;
      u_init.compute(pos.data(), np, yp.data(), sc);
      for (int64_t p = 0; p < np; ++p) yp[p] = ul_down_row.data() + p * fs;
      ul_init_down.compute(pos.data(), np, yp.data(), sc);
    }
    const int64_t rows[3] = {i, i % 2 == 0 ? i / 2 : -1, i % 4 == 0 ? i / 4 : -1};
    for (int64_t s = 0; s < 3 && rows[s] >= 0; ++s) {  // up pass
      const int64_t r = rows[s], np = row_positions(s, r);
      if (s == 0) {
        std::copy(u_row.begin(), u_row.end(), u_up[0].begin());
      } else {
        for (int64_t p = 0; p < np; ++p) yp[p] = row_at(u_up[s], s, 0, pos[p].b, pos[p].j);
        down_u[s - 1].compute(pos.data(), np, yp.data(), sc);
      }
      for (int64_t k = 0; k < R; ++k) {
        for (int64_t p = 0; p < np; ++p) {
          xp[p] = row_at(u_up[s], s, k, pos[p].b, pos[p].j);
          yp[p] = row_at(u_up[s], s, k + 1, pos[p].b, pos[p].j);
        }
        up_u[s][k].run(pos.data(), np, f, xp.data(), nullptr, nullptr, yp.data(), sc);
      }
      if (s < 2)
        for (int64_t p = 0; p < np; ++p)
          down_u[s].write(pos[p].b, r, pos[p].j, row_at(u_up[s], s, R, pos[p].b, pos[p].j));
    }
    for (int64_t s = 2; s >= 0; --s) {  // down pass
      const int64_t r = rows[s];
      if (r < 0) continue;
      const int64_t np = row_positions(s, r);
      if (s == 2) {
        for (int64_t p = 0; p < np; ++p) xp[p] = row_at(u_up[2], 2, R, pos[p].b, pos[p].j);
      } else {
        up_sample_u_row(s, r);
        for (int64_t p = 0; p < np; ++p) xp[p] = up_row.data() + p * fs;
      }
      for (int64_t k = 0; k < L.n_dn(s); ++k) {
        const int64_t ak = s == 2 ? R - 1 - k : R - k;  // the up pass values, last first
        for (int64_t p = 0; p < np; ++p) {
          a1[p] = row_at(u_up[s], s, ak, pos[p].b, pos[p].j);
          yp[p] = row_at(u_dn[s], s, k, pos[p].b, pos[p].j);
        }
        dn_u[s][k].run(pos.data(), np, f, xp.data(), a1.data(), nullptr, yp.data(), sc);
        for (int64_t p = 0; p < np; ++p) xp[p] = yp[p];
      }
      if (s > 0)  // the input of the up-sampling into scale s - 1
        for (int64_t p = 0; p < np; ++p) {
          float* d = dn_at(u_dn_row[s], s, pos[p].b, pos[p].j);
          std::copy_n(xp[p], f, d);
          matrix_input(L.up_u_taps[s - 1][0], d, f);
        }
    }
  }

  // The row passes of the `ul` stream's row-split convs (Conv, Block in pixelcnnpp_decode.h) for image row i
  // at every scale that gets a new row there, after start_row(i): the stride-2 conv into that scale, then
  // its resnets of both passes (their nin's `u` parts read the `u` stream's values of the same row).
  void ul_row_pass(int64_t i) {
    const int64_t rows[3] = {i, i % 2 == 0 ? i / 2 : -1, i % 4 == 0 ? i / 4 : -1};
    for (int64_t s = 0; s < 3 && rows[s] >= 0; ++s) {
      const int64_t np = row_positions(s, rows[s]);
      if (s > 0) down_ul[s - 1].row_pass(pos.data(), np, sc);
      for (int64_t k = 0; k < L.R; ++k) {
        for (int64_t p = 0; p < np; ++p) a1[p] = row_at(u_up[s], s, k + 1, pos[p].b, pos[p].j);
        up_ul[s][k].row_pass(pos.data(), np, L.f, a1.data(), sc);
      }
      for (int64_t k = 0; k < L.n_dn(s); ++k) {
        for (int64_t p = 0; p < np; ++p) a1[p] = row_at(u_dn[s], s, k, pos[p].b, pos[p].j);
        dn_ul[s][k].row_pass(pos.data(), np, L.f, a1.data(), sc);
      }
    }
  }

  // Row r of scale s from row r / 2 of scale s + 1 through the (2, 3) 'down' transposed conv: output
  // column c gets tap (r % 2, kw) of input column (c + 1 - kw) / 2 where that is a whole column.
  void up_sample_u_row(int64_t s, int64_t r) {
    const int64_t f = L.f, ws = L.W >> s, kh = r % 2;
    if (sc.tiles && L.up_u_taps[s][0].t[0] != nullptr) {  // per tap, every column it reaches in one tile product
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t c = 0; c < ws; ++c) std::copy_n(L.up_u_bias[s], f, up_row.data() + (b * ws + c) * fs);
      for (int64_t kw = 0; kw < 3; ++kw) {
        int64_t q = 0;
        for (int64_t b = 0; b < nb; ++b)
          for (int64_t c = 0; c < ws; ++c) {
            const int64_t t = c + 1 - kw;
            if (t < 0 || t % 2 != 0 || t / 2 >= ws / 2) continue;
            a1[q] = dn_at(u_dn_row[s + 1], s + 1, b, t / 2);
            yp[q++] = up_row.data() + (b * ws + c) * fs;
          }
        const PMat& tap = L.up_u_taps[s][kh * 3 + kw];
        tiles_product(tap.t[0], f, tap.mp, q, a1.data(), nullptr, yp.data());  // o += W x
      }
      return;
    }
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c = 0; c < ws; ++c) {
        float* o = up_row.data() + (b * ws + c) * fs;
        std::copy_n(L.up_u_bias[s], f, o);
        for (int64_t kw = 0; kw < 3; ++kw) {
          const int64_t t = c + 1 - kw;
          if (t < 0 || t % 2 != 0 || t / 2 >= ws / 2) continue;
          const float* xs[1] = {dn_at(u_dn_row[s + 1], s + 1, b, t / 2)};
          float* ys[1] = {acc.data()};
          const PMat& tap = L.up_u_taps[s][kh * 3 + kw];
          product(tap, 1, 0, tap.n, xs, ys, sc.team);  // zero bias: W x
          for (int64_t k = 0; k < f; ++k) o[k] += acc[k];
        }
      }
  }

  // Output (r, c) of scale s from pixel (r / 2, c / 2) of scale s + 1 through the (2, 2) 'downright'
  // transposed conv (one tap, (r % 2, c % 2)), into upb.
  void up_sample_ul(int64_t s, int64_t r, int64_t c) {
    for (int64_t b = 0; b < nb; ++b) {
      xp[b] = dn_at(ul_dn_row[s + 1], s + 1, b, c / 2);
      yp[b] = vec(upb, b);
    }
    group_product(L.up_ul_taps[s][(r % 2) * 2 + (c % 2)], xp.data(), yp.data());
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t k = 0; k < L.f; ++k) yp[b][k] += L.up_ul_bias[s][k];
  }

  // The up pass of the ul stream at (r, c) of scale s from ul_val(s, 0, .): values 1..R.
  void ul_level(int64_t s, int64_t r, int64_t c) {
    const int64_t R = L.R;
    pixel_positions(r, c);
    for (int64_t k = 0; k < R; ++k) {
      for (int64_t b = 0; b < nb; ++b) {
        xp[b] = ul_val(s, k, b);
        yp[b] = ul_val(s, k + 1, b);
      }
      up_ul[s][k].run_split(pos.data(), nb, L.f, xp.data(), nullptr, yp.data(), sc);
    }
    if (s < 2)
      for (int64_t b = 0; b < nb; ++b) down_ul[s].write(b, r, c, ul_val(s, R, b));
  }

  // The stride-2 conv of scale s - 1 at (r, c), then the up pass of scale s there.
  void ul_level_from_below(int64_t s, int64_t r, int64_t c) {
    pixel_positions(r, c);
    for (int64_t b = 0; b < nb; ++b) yp[b] = ul_val(s, 0, b);
    down_ul[s - 1].compute_split(pos.data(), nb, yp.data(), sc);
    ul_level(s, r, c);
  }

  // The down pass of the ul stream at (r, c) of scale s from src[b]; the result in dst[b].
  void ul_down(int64_t s, int64_t r, int64_t c) {
    const int64_t R = L.R, n = L.n_dn(s);
    pixel_positions(r, c);
    if (n == 0)
      for (int64_t b = 0; b < nb; ++b) std::copy_n(src[b], L.f, dst[b]);
    for (int64_t k = 0; k < n; ++k) {
      const int64_t ak = s == 2 ? R - 1 - k : R - k;
      for (int64_t b = 0; b < nb; ++b) a2[b] = ul_val(s, ak, b);
      const float* const* x = k == 0 ? static_cast<const float* const*>(src.data())
                                     : static_cast<const float* const*>(dst.data());  // in place after the first
      dn_ul[s][k].run_split(pos.data(), nb, L.f, x, a2.data(), dst.data(), sc);
    }
  }

  // Mixture parameters of pixel (i, j) for the nb rows, into outp (nb x pad16(P)).
  void step(int64_t i, int64_t j) {
    const int64_t f = L.f, R = L.R;
    if (j > 0) {  // the right-shifted (2, 1) conv of the pixel to the left
      pixel_positions(i, j - 1);
      for (int64_t b = 0; b < nb; ++b) yp[b] = vec(right, b);
      ul_init_right.compute(pos.data(), nb, yp.data(), sc);
    }
    for (int64_t b = 0; b < nb; ++b) {
      const float* d = ul_down_row.data() + (b * L.W + j) * fs;
      float* v = ul_val(0, 0, b);
      for (int64_t k = 0; k < f; ++k) v[k] = j > 0 ? d[k] + right[b * fs + k] : d[k];
    }
    ul_level(0, i, j);
    if (i % 2 == 0 && j % 2 == 0) {
      const int64_t r = i / 2, c = j / 2;
      ul_level_from_below(1, r, c);
      if (r % 2 == 0 && c % 2 == 0) {
        const int64_t q = r / 2, p = c / 2;
        ul_level_from_below(2, q, p);
        for (int64_t b = 0; b < nb; ++b) {
          src[b] = ul_val(2, R, b);
          dst[b] = dn_at(ul_dn_row[2], 2, b, p);
        }
        ul_down(2, q, p);
        for (int64_t b = 0; b < nb; ++b) matrix_input(L.up_ul_taps[1][0], dst[b], f);  // up-sampled from here on
      }
      up_sample_ul(1, r, c);
      for (int64_t b = 0; b < nb; ++b) {
        src[b] = vec(upb, b);
        dst[b] = dn_at(ul_dn_row[1], 1, b, c);
      }
      ul_down(1, r, c);
      for (int64_t b = 0; b < nb; ++b) matrix_input(L.up_ul_taps[0][0], dst[b], f);
    }
    up_sample_ul(0, i, j);
    for (int64_t b = 0; b < nb; ++b) {
      src[b] = vec(upb, b);
      dst[b] = vec(fin, b);
    }
    ul_down(0, i, j);
    for (int64_t b = 0; b < nb; ++b) {
      elu_into(vec(fin, b), f, 1.0f, vec(hbuf, b));
      matrix_input(L.out, vec(hbuf, b), f);
      xp[b] = vec(hbuf, b);
      yp[b] = outp.data() + b * pad16(L.P);
    }
    group_product(L.out, xp.data(), yp.data());
  }

  void run(arkern_team::Session& team, bool on_tiles) {
    const int64_t H = L.H, W = L.W, C = L.C, P = L.P;
    sc.team = &team;
    sc.tiles = on_tiles;
    std::optional<arkern_amx::TileScope> tile_scope;  // one tile configuration for the whole run
    if (on_tiles) tile_scope.emplace();
    for (int64_t i = 0; i < H; ++i) {
      start_row(i);
      ul_row_pass(i);
      for (int64_t j = 0; j < W; ++j) {
        step(i, j);
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t row = row0 + b;
          const float* prm = outp.data() + b * pad16(P);
          int64_t lv[3];
          if (forced != nullptr) {
            for (int64_t c = 0; c < C; ++c) lv[c] = forced[((row * C + c) * H + i) * W + j];
          } else {
            draw_pixel(prm, noise + (row * (1 + C) * H + i) * W + j, H * W, L, temperature, lv);
          }
          for (int64_t c = 0; c < C; ++c) image[((row * C + c) * H + i) * W + j] = lv[c];
          if (params_out != nullptr) std::copy_n(prm, P, params_out + ((row * H + i) * W + j) * P);
          float* pv = prev.data() + b * (C + 1);
          pixel_input(lv, 1, C, L.bins, pv);
          ul_init_right.write(b, i, j, pv);  // the input of the right-shifted conv at (i, j)
        }
      }
      if (i % 4 == 3) team.step_done();  // the team's rate is measured over blocks of four rows (equal work)
    }
  }
};

at::Tensor pixelcnnpp_generate_cpu(at::IntArrayRef config, at::TensorList weights, at::TensorList biases,
                                   const at::Tensor& image, const at::Tensor& noise, double temperature,
                                   bool return_params, const std::optional<at::Tensor>& forced,
                                   at::TensorList tiles) {
  TORCH_CHECK(config.size() == 5, "pixelcnnpp_generate: config must be [C, M, bins, f, R]");
  const int64_t C = config[0], M = config[1], bins = config[2], f = config[3], R = config[4];
  TORCH_CHECK((C == 1 || C == 3) && M >= 1 && M <= 64 && bins >= 2 && f >= 1 && R >= 0,
              "pixelcnnpp_generate: bad config [C=", C, ", M=", M, ", bins=", bins, ", f=", f, ", R=", R, "]");
  TORCH_CHECK(image.dim() == 4 && image.size(1) == C && image.scalar_type() == at::kLong && image.is_contiguous(),
              "pixelcnnpp_generate: image must be a contiguous int64 (B, ", C, ", H, W) tensor");
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3);
  TORCH_CHECK(H >= 4 && W >= 4 && H % 4 == 0 && W % 4 == 0,
              "pixelcnnpp_generate: H and W must be positive multiples of 4, got ", H, "x", W);
  TORCH_CHECK(noise.scalar_type() == at::kDouble && noise.dim() == 4 && noise.size(0) == B &&
                  noise.size(1) == 1 + C && noise.size(2) == H && noise.size(3) == W,
              "pixelcnnpp_generate: noise must be float64 (B, 1 + C, H, W)");
  TORCH_CHECK(temperature > 0, "pixelcnnpp_generate: temperature must be > 0");
  arkern_isa::selected();  // an invalid ARKERN_ISA fails here, not inside a parallel region
  std::vector<at::Tensor> w, b;
  const auto wt = weights.empty() ? at::kFloat : weights[0].scalar_type();
  for (const auto& t : weights) {
    TORCH_CHECK((wt == at::kFloat || wt == at::kBFloat16) && t.scalar_type() == wt && t.is_contiguous() &&
                    t.device().is_cpu(),
                "pixelcnnpp_generate: packed weights must be contiguous CPU tensors, all float32 or all bfloat16");
    w.push_back(t);
  }
  for (const auto& t : biases) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
                "pixelcnnpp_generate: biases must be contiguous float32 CPU tensors");
    b.push_back(t);
  }
  TORCH_CHECK(w.size() == b.size(), "pixelcnnpp_generate: one bias per packed weight");
  const Layers L = build_layers(config, H, W, w, b, tiles);
  at::Tensor forced_c;
  if (forced.has_value()) {
    forced_c = forced->contiguous();
    TORCH_CHECK(forced_c.scalar_type() == at::kLong && forced_c.sizes() == image.sizes(),
                "pixelcnnpp_generate: forced must be int64 with the image's shape");
    TORCH_CHECK(forced_c.numel() == 0 || (forced_c.min().item<int64_t>() >= 0 && forced_c.max().item<int64_t>() < bins),
                "pixelcnnpp_generate: forced holds levels outside [0, bins)");
  }
  const auto noise_c = noise.contiguous();
  auto params = return_params ? at::empty({B, H, W, L.P}, image.options().dtype(at::kFloat))
                              : at::empty({0}, image.options().dtype(at::kFloat));
  if (B == 0) return params;
  // Up to kMaxRows rows run as one group whose products a team of threads splits over output tiles
  // (csrc/cpu/team.h) when they have at least two tiles (f > 64) or at batch 1; otherwise the rows are split
  // into groups run in parallel. On AMX tiles (a bfloat16 pack with its AMX copy, the amx level, a batch of
  // kMinTileBatch or more) every group runs on its own thread, groups of up to kMaxTileRows rows in parallel:
  // on an idle machine 2.2x faster at batch 64 than one group whose tile products' outputs the team splits
  // (the caller's float32 elementwise work then runs alone), which is better only while another process
  // holds a core. A row's tile sums do not depend on the other rows.
  const bool on_tiles = wt == at::kBFloat16 && !tiles.empty() && arkern_isa::use_amx() && B >= kMinTileBatch;
  const bool split_outputs = !on_tiles && (B == 1 || arkern_decode::tiles(pad16(f)) >= 2);
  const int64_t max_rows = on_tiles ? kMaxTileRows : kMaxRows;
  const int64_t groups = std::max<int64_t>((B + max_rows - 1) / max_rows,
                                           split_outputs ? 1 : std::min<int64_t>(B, at::get_num_threads()));
  int64_t* img = image.data_ptr<int64_t>();
  const double* np = noise_c.data_ptr<double>();
  const int64_t* fp = forced.has_value() ? forced_c.data_ptr<int64_t>() : nullptr;
  float* pp = return_params ? params.data_ptr<float>() : nullptr;
  const auto work = [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t r0 = g * B / groups, r1 = (g + 1) * B / groups;
      if (r1 <= r0) continue;
      Group grp(L, r1 - r0, on_tiles);
      grp.row0 = r0;
      grp.image = img;
      grp.noise = np;
      grp.forced = fp;
      grp.params_out = pp;
      grp.temperature = temperature;
      uint64_t key = 3;  // the workload, for the team's rate memory
      for (int64_t v : {C, M, f, R, H, W, r1 - r0, int64_t{wt == at::kBFloat16}, int64_t{on_tiles}})
        key = key * 1000003 + static_cast<uint64_t>(v);
      arkern_team::Session team(key);  // one worker inside a parallel region
      grp.run(team, on_tiles);
    }
  };
  if (groups == 1) {
    work(0, 1);  // outside a parallel region: the team may split the products
  } else {
    at::parallel_for(0, groups, 1, work);
  }
  arkern_isa::record("pixelcnnpp_generate", on_tiles                    ? arkern_isa::Isa::amx
                                            : arkern_isa::use_avx512() ? arkern_isa::Isa::avx512
                                                                       : arkern_isa::Isa::avx2);
  return params;
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) { m.impl("pixelcnnpp_generate", &pixelcnnpp_generate_cpu); }
