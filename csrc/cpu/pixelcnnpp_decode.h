// Building blocks of the pixelcnnpp_decode kernel (csrc/cpu/pixelcnnpp_decode.cpp): pointwise functions,
// shifted convs that cache their input map and compute outputs at any set of positions, gated resnets.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "pixelcnn_decode.h"

namespace arkern_pixelcnnpp {

using arkern_pixelcnn::Mat;
using arkern_pixelcnn::matvec;
using arkern_pixelcnn::pad16;

// ---------------------------------------------------------------- pointwise

#if defined(__AVX512F__)
inline __m512 elu16(__m512 x) {  // x > 0 ? x : e^x - 1
  const __m512 neg = _mm512_sub_ps(exp16(_mm512_min_ps(x, _mm512_setzero_ps())), _mm512_set1_ps(1.0f));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), neg, x);
}
#endif

// dst[0:n] = elu(s * x[0:n]) for s = +1 or -1.
inline void elu_into(const float* x, int64_t n, float s, float* dst) {
  int64_t k = 0;
#if defined(__AVX512F__)
  const __m512 sv = _mm512_set1_ps(s);
  for (; k + 16 <= n; k += 16) _mm512_storeu_ps(dst + k, elu16(_mm512_mul_ps(sv, _mm512_loadu_ps(x + k))));
#endif
  for (; k < n; ++k) {
    const float v = s * x[k];
    dst[k] = v > 0.0f ? v : std::expm1(v);
  }
}

// out[k] = x[k] + a[k] * sigmoid(b[k]) for k < n.
inline void gated_residual(const float* x, const float* a, const float* b, int64_t n, float* out) {
  int64_t k = 0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; k + 16 <= n; k += 16) {
    const __m512 sg = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(),
                                                                                 _mm512_loadu_ps(b + k)))));
    _mm512_storeu_ps(out + k, _mm512_fmadd_ps(_mm512_loadu_ps(a + k), sg, _mm512_loadu_ps(x + k)));
  }
#endif
  for (; k < n; ++k) out[k] = x[k] + a[k] / (1.0f + std::exp(-b[k]));
}

// ---------------------------------------------------------------- layers

struct Pos {
  int64_t b, i, j;  // batch row in the group, output row and column at the layer's scale
};

// Pointer arrays and buffers for one product over up to `cap` positions.
struct Scratch {
  int64_t cap = 0;
  std::vector<float> mem;
  std::vector<float*> gat, t1, t2, c, a;
  std::vector<const float*> in;
  std::vector<float*> out;
  arkern_team::Session* team = nullptr;  // splits products over output tiles (csrc/cpu/team.h)
  void init(int64_t positions, int64_t max_n, int64_t f) {
    cap = positions;
    const int64_t fp = pad16(2 * f);
    mem.assign(positions * (max_n + 4 * f + 4 * f + fp + fp), 0.0f);
    float* p = mem.data();
    const auto carve = [&](std::vector<float*>& v, int64_t size) {
      v.resize(positions);
      for (auto& q : v) { q = p; p += size; }
    };
    carve(gat, max_n);
    carve(t1, 4 * f);
    carve(t2, 4 * f);
    carve(c, fp);
    carve(a, fp);
    in.resize(positions);
    out.resize(positions);
  }
};

// A shifted conv's weights and geometry (shared by all groups).
struct ConvSpec {
  Mat<float, float> mat;
  int64_t kh, kw, top, left, right, cin, stride, W;  // W: the input map's width
};

// One group's cache of a conv's input: the last kh rows of the zero-padded input map (top kh - 1 rows,
// `left` / `right` columns of zeros), a ring in which padded row pi lives in slot pi % kh, channel fastest.
// An output row i reads the kh consecutive padded rows i * stride .. i * stride + kh - 1 (distinct slots).
// The decode schedule keeps the ring valid: an input row (or, in the per-pixel `ul` stream, an input pixel)
// is written only once every output that reads the row it replaces has been computed, i.e. after output
// row (or pixel) i of a stride-s conv, the next write is padded row i * s + kh at the earliest; and every
// output reads only columns that the current row has already written. The padding columns are never
// written; the top padding rows are zero until the first outputs, which read them, are done.
struct Conv {
  const ConvSpec* s;
  std::vector<float> cache;
  int64_t slots, cols;
  void reset(const ConvSpec& spec, int64_t nb) {
    s = &spec;
    slots = spec.kh;
    cols = spec.W + spec.left + spec.right;
    cache.assign(nb * slots * cols * spec.cin, 0.0f);
  }
  // Padded row pi, padded column pj of batch row b.
  float* at(int64_t b, int64_t pi, int64_t pj) {
    return cache.data() + ((b * slots + pi % slots) * cols + pj) * s->cin;
  }
  void write(int64_t b, int64_t i, int64_t j, const float* x) { std::copy_n(x, s->cin, at(b, s->top + i, s->left + j)); }
  // out[p] = b + W (window of output pos[p]) for np positions.
  void compute(const Pos* pos, int64_t np, float* const* out, Scratch& sc) {
    const int64_t run = s->kw * s->cin;
    for (int64_t p = 0; p < np; ++p) {
      for (int64_t t = 0; t < s->kh; ++t)
        std::copy_n(at(pos[p].b, pos[p].i * s->stride + t, pos[p].j * s->stride), run, sc.gat[p] + t * run);
      sc.in[p] = sc.gat[p];
    }
    matvec(s->mat, np, sc.in.data(), out, sc.team);
  }
};

// A gated resnet: x + a * sigmoid(b), [a, b] = conv_out(concat_elu(conv_in(concat_elu(x)) + nin(concat_elu(aux)))).
struct BlockSpec {
  ConvSpec conv_in, conv_out;
  Mat<float, float> nin;  // n == 0: no auxiliary input
  int64_t aux_parts;      // f-vectors concatenated into the auxiliary input (0, 1 or 2)
};

struct Block {
  const BlockSpec* s;
  Conv conv_in, conv_out;
  void reset(const BlockSpec& spec, int64_t nb) {
    s = &spec;
    conv_in.reset(spec.conv_in, nb);
    conv_out.reset(spec.conv_out, nb);
  }
  // out[p] = block(x[p], aux) at positions pos; aux1[p] (and aux2[p]) are f-vectors. out may alias x.
  void run(const Pos* pos, int64_t np, int64_t f, const float* const* x, const float* const* aux1,
           const float* const* aux2, float* const* out, Scratch& sc) {
    for (int64_t p = 0; p < np; ++p) {
      elu_into(x[p], f, 1.0f, sc.t1[p]);
      elu_into(x[p], f, -1.0f, sc.t1[p] + f);
      conv_in.write(pos[p].b, pos[p].i, pos[p].j, sc.t1[p]);
    }
    conv_in.compute(pos, np, sc.c.data(), sc);
    if (s->aux_parts > 0) {
      const int64_t na = s->aux_parts * f;
      for (int64_t p = 0; p < np; ++p) {
        elu_into(aux1[p], f, 1.0f, sc.t2[p]);
        if (s->aux_parts == 2) elu_into(aux2[p], f, 1.0f, sc.t2[p] + f);
        elu_into(aux1[p], f, -1.0f, sc.t2[p] + na);
        if (s->aux_parts == 2) elu_into(aux2[p], f, -1.0f, sc.t2[p] + na + f);
        sc.in[p] = sc.t2[p];
      }
      matvec(s->nin, np, sc.in.data(), sc.a.data(), sc.team);
      for (int64_t p = 0; p < np; ++p)
        for (int64_t k = 0; k < f; ++k) sc.c[p][k] += sc.a[p][k];
    }
    for (int64_t p = 0; p < np; ++p) {
      elu_into(sc.c[p], f, 1.0f, sc.t1[p]);
      elu_into(sc.c[p], f, -1.0f, sc.t1[p] + f);
      conv_out.write(pos[p].b, pos[p].i, pos[p].j, sc.t1[p]);
    }
    conv_out.compute(pos, np, sc.a.data(), sc);
    for (int64_t p = 0; p < np; ++p) gated_residual(x[p], sc.a[p], sc.a[p] + f, f, out[p]);
  }
};

}  // namespace arkern_pixelcnnpp
