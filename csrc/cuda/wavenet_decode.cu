// wavenet_decode CUDA kernel: T steps of the whole nv-wavenet network for a batch, in one launch.
//
// Design (persistent per-row-group blocks). Batch rows are independent: a step of one row needs only that
// row's previous samples and ring buffers. So each block owns ROWS (1, 2 or 4) batch rows for all T steps
// and never waits for another block — no grid-wide synchronisation, hence no co-residency requirement and
// no deadlock whatever the batch size. Inside a block, a step is the sequence
//
//   embedding -> per layer { ring read/write -> dilated conv + gate -> residual/skip } -> head -> draw
//
// separated by __syncthreads (4 per layer + 5), with every activation in shared memory. Weights are read
// once per step by every block, so they are what must stay on chip: at the start of the launch the block
// copies the longest prefix of the matrices, in the order a step reads them (dil_0, rs_0, dil_1, ...,
// out, end), that fits in its opt-in shared memory after the activations, and keeps it there for all T
// steps; the rest is read from global memory, where it stays L2-resident (the medium configuration's
// 2.7 MB fp32 / 1.4 MB bf16 fit the L2 of an A100 or H100). Each weight loaded is used for ROWS rows.
// nv-wavenet instead spreads one step's matrices over many blocks' registers and synchronises them
// through global-memory flags; that keeps every weight in registers but needs all blocks co-resident and
// a spin-wait protocol — this kernel trades that for independence of blocks.
//
// A matrix-vector product gives one output row per thread (threads stride over the padded rows): thread m
// walks its row's column j = 0, 1, ... (consecutive threads read consecutive addresses of a packed tile,
// so loads coalesce) with one float32 accumulator per batch row, starting from the bias — the order of
// the C++ kernel's AVX-512 loop; the gate is a separate pass over the 2Rp pre-activations, so that all
// threads share the dilated conv's rows. Ring buffers live in global memory (time-major, one
// slot of R floats per time), read and overwritten by the same thread.
//
// The draw runs in warp r for row r (ROWS <= 4 warps) in float64, with the decisions of the C++ Sampler
// (csrc/cpu/wavenet_decode.cpp): z = logit / T; top-k keeps z_i with fewer than k larger values (= the
// nth_element threshold); e = exp(z - max); top-p ranks classes by e (ties: lower class first) and drops a
// class once the mass before it reaches top_p; the inverse CDF at u * sum. Sums run sequentially in
// lane 0 in class (or rank) order, as in C++, so the same logits give the same class. The per-row
// scratch (z, e, order) is in global memory (workspace), so the class count is not bounded by shared
// memory.
#include "arkern_cuda.h"

#include <math.h>

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kTile = 64;  // rows per packed weight tile (pack_wavenet's TILE)

inline int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(uint16_t v) { return __uint_as_float(static_cast<unsigned>(v) << 16); }

// The bfloat16 precision (docs/design.md): with bfloat16 weights every matrix input is rounded to bfloat16
// (to nearest even), so the products are exact and only the float32 sums round.
__device__ __forceinline__ float matrix_input(float v, float) { return v; }
__device__ __forceinline__ float matrix_input(float v, uint16_t) {
  unsigned u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return v;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return __uint_as_float(u & 0xffff0000u);
}

// Activation floats of one row in shared memory: x (Rp) | in2 = [x(t-d); x(t)] (2Rp) | pre (2Rp) | g (Rp)
// | skip (Sp) | o (Ap) | logits (Ap) — a multiple of 16 floats; after the ROWS rows, 2 int64 per row of
// previous samples.
__host__ __device__ inline int64_t act_floats(int64_t Rp, int64_t Sp, int64_t Ap) { return 6 * Rp + Sp + 2 * Ap; }
inline int64_t row_bytes(int64_t Rp, int64_t Sp, int64_t Ap) {
  return act_floats(Rp, Sp, Ap) * static_cast<int64_t>(sizeof(float)) + 2 * static_cast<int64_t>(sizeof(int64_t));
}

template <typename WT>
struct Params {
  ArkernWaveNetArgs a;
  int64_t Rp, Sp, Ap;
  int64_t dil_size, rs_size, out_size, end_size;  // elements of one packed matrix of each kind
  int64_t n_cached;    // leading matrices (dil_0, rs_0, ..., dil_{L-1}, rs_{L-1}, out, end) in shared memory
  int64_t act_offset;  // byte offset of the activations in dynamic shared memory
};

// Matrix k of a step (k < 2L: layer k/2, dilated if k is even, else residual/skip; 2L: out; 2L + 1: end):
// its address in global memory, its offset in the shared-memory cache, and its size.
template <typename WT>
__device__ const WT* global_matrix(const Params<WT>& p, int64_t k) {
  const int64_t L = p.a.L;
  if (k == 2 * L) return static_cast<const WT*>(p.a.w_out);
  if (k == 2 * L + 1) return static_cast<const WT*>(p.a.w_end);
  return k % 2 == 0 ? static_cast<const WT*>(p.a.w_dil) + (k / 2) * p.dil_size
                    : static_cast<const WT*>(p.a.w_rs) + (k / 2) * p.rs_size;
}

template <typename WT>
__device__ int64_t cache_offset(const Params<WT>& p, int64_t k) {
  const int64_t per_layer = p.dil_size + p.rs_size;
  if (k >= 2 * p.a.L) return p.a.L * per_layer + (k == 2 * p.a.L ? 0 : p.out_size);
  return (k / 2) * per_layer + (k % 2 == 0 ? 0 : p.dil_size);
}

template <typename WT>
__device__ int64_t matrix_size(const Params<WT>& p, int64_t k) {
  if (k == 2 * p.a.L) return p.out_size;
  if (k == 2 * p.a.L + 1) return p.end_size;
  return k % 2 == 0 ? p.dil_size : p.rs_size;
}

template <typename WT>
__device__ __forceinline__ const WT* matrix(const Params<WT>& p, const WT* cache, int64_t k) {
  return k < p.n_cached ? cache + cache_offset(p, k) : global_matrix(p, k);
}

// acc[r] += sum_{j < n} W[m, j] * x[r * xs + j] for the packed W (Mp x N, row m), every row r < ROWS.
template <typename WT, int ROWS>
__device__ __forceinline__ void dot_rows(const WT* w, int64_t Mp, int64_t N, int64_t m, int64_t n, const float* x,
                                         int64_t xs, float (&acc)[ROWS]) {
  const int64_t m0 = m / kTile * kTile;
  const int64_t width = Mp - m0 < kTile ? Mp - m0 : kTile;
  const WT* col = w + m0 * N + (m - m0);
  for (int64_t j = 0; j < n; ++j) {
    const float wv = to_float(col[j * width]);
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[r] = fmaf(wv, matrix_input(x[r * xs + j], WT{}), acc[r]);
  }
}

__device__ __forceinline__ double warp_max(double v) {
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// The class drawn for one row by the calling warp (lane 0 returns it). lg: A float32 logits (shared);
// z, e: A doubles and order: A ints of global scratch owned by this row.
__device__ int64_t draw(const ArkernWaveNetArgs& a, const float* lg, double u, double* z, double* e, int* order) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t A = a.A;
  const bool top_k = a.top_k > 0 && a.top_k < A;
  for (int64_t i = lane; i < A; i += 32) {
    z[i] = static_cast<double>(lg[i]) / a.temperature;
    if (!top_k) e[i] = z[i];
  }
  __syncwarp();
  if (top_k) {  // keep z_i iff fewer than k classes have a larger z (the k-th largest value and above)
    for (int64_t i = lane; i < A; i += 32) {
      int64_t larger = 0;
      for (int64_t j = 0; j < A; ++j) larger += z[j] > z[i] ? 1 : 0;
      e[i] = larger < a.top_k ? z[i] : -INFINITY;
    }
  }
  double mx = -INFINITY;
  for (int64_t i = lane; i < A; i += 32) mx = fmax(mx, e[i]);
  mx = warp_max(mx);
  for (int64_t i = lane; i < A; i += 32) e[i] = exp(e[i] - mx);
  __syncwarp();
  if (a.top_p < 1.0) {
    for (int64_t i = lane; i < A; i += 32) {  // rank in order of decreasing e, ties by class
      int64_t rank = 0;
      for (int64_t j = 0; j < A; ++j) rank += (e[j] > e[i] || (e[j] == e[i] && j < i)) ? 1 : 0;
      order[rank] = static_cast<int>(i);
    }
    __syncwarp();
    if (lane == 0) {
      double total = 0.0;
      for (int64_t i = 0; i < A; ++i) total += e[i];
      double before = 0.0;  // probability mass of the classes ranked above this one
      for (int64_t rk = 0; rk < A; ++rk) {
        const int i = order[rk];
        const double p = e[i] / total;
        if (before >= a.top_p) e[i] = 0.0;
        before += p;
      }
    }
    __syncwarp();
  }
  int64_t y = 0;
  if (lane == 0) {
    double c = 0.0;
    for (int64_t i = 0; i < A; ++i) c += e[i];
    const double target = u * c;
    double run = 0.0;
    y = A;
    for (int64_t i = 0; i < A; ++i) {
      run += e[i];
      if (run > target) {
        y = i;
        break;
      }
    }
    if (y == A) {  // u * c rounded up to the total: the last class with mass
      y = A - 1;
      while (y > 0 && e[y] == 0.0) --y;
    }
  }
  return y;
}

template <typename WT, int ROWS>
__global__ void __launch_bounds__(kThreads) wavenet_kernel(const Params<WT> p) {
  static_assert(ROWS <= kWarps, "the draw runs one warp per row");
  extern __shared__ __align__(16) unsigned char smem[];
  const ArkernWaveNetArgs& a = p.a;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t L = a.L, R = a.R, S = a.S, A = a.A, Rp = p.Rp, Sp = p.Sp, Ap = p.Ap, T = a.T;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * ROWS;
  const int nb = static_cast<int>(a.B - row0 < ROWS ? a.B - row0 : ROWS);

  // weights kept on chip for the whole launch
  WT* cache = reinterpret_cast<WT*>(smem);
  for (int64_t k = 0; k < p.n_cached; ++k) {
    const WT* src = global_matrix(p, k);
    WT* dst = cache + cache_offset(p, k);
    for (int64_t i = tid; i < matrix_size(p, k); i += kThreads) dst[i] = src[i];
  }
  const int64_t stride = act_floats(Rp, Sp, Ap);
  float* act = reinterpret_cast<float*>(smem + p.act_offset);
  for (int64_t i = tid; i < ROWS * stride; i += kThreads) act[i] = 0.0f;  // rows past B stay zero
  float* x = act;              // row r at x + r * stride, and likewise below
  float* in2 = act + Rp;
  float* pre = act + 3 * Rp;
  float* g = act + 5 * Rp;
  float* skip = act + 6 * Rp;
  float* o = skip + Sp;
  float* lg = o + Ap;
  int64_t* prev = reinterpret_cast<int64_t*>(act + ROWS * stride);  // row r: [y[t-2], y[t-1]] at prev + 2r
  if (tid < ROWS * 2) prev[tid] = tid / 2 < nb ? a.prev[row0 * 2 + tid] : 0;
  __syncthreads();

  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = a.t0 + s;
    for (int64_t i = tid; i < ROWS * Sp; i += kThreads) skip[(i / Sp) * stride + i % Sp] = 0.0f;
    for (int64_t i = tid; i < ROWS * R; i += kThreads) {
      const int64_t r = i / R, c = i % R;
      x[r * stride + c] = a.emb[prev[2 * r] * R + c] + a.emb[(A + prev[2 * r + 1]) * R + c];
    }
    __syncthreads();
    for (int64_t l = 0; l < L; ++l) {
      const int64_t d = a.layers[L + l];
      float* ring = reinterpret_cast<float*>(a.layers[l]);
      for (int64_t i = tid; i < nb * R; i += kThreads) {  // the input d steps ago out, this step's in
        const int64_t r = i / R, c = i % R;
        float* slot = ring + ((row0 + r) * d + t % d) * R;
        in2[r * stride + c] = slot[c];
        in2[r * stride + R + c] = x[r * stride + c];
        slot[c] = matrix_input(x[r * stride + c], WT{});  // the ring holds matrix inputs
      }
      __syncthreads();
      const WT* wd = matrix(p, cache, 2 * l);
      const float* bd = a.b_dil + l * 2 * Rp;
      for (int64_t m = tid; m < 2 * Rp; m += kThreads) {  // rows [0, Rp): tanh half, [Rp, 2Rp): sigmoid half
        float acc[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[r] = bd[m];
        dot_rows<WT, ROWS>(wd, 2 * Rp, 2 * R, m, 2 * R, in2, stride, acc);
        const int64_t c = m < Rp ? m : m - Rp, col = m < Rp ? c : R + c;  // channel, column of cond/gbias
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          if (r < nb && c < R) {
            const int64_t b = row0 + r;
            if (a.cond) acc[r] += a.cond[((b * a.cond_frames + t / a.cond_hop) * L + l) * 2 * R + col];
            if (a.gbias) acc[r] += a.gbias[(b * L + l) * 2 * R + col];
          }
          pre[r * stride + m] = acc[r];
        }
      }
      __syncthreads();
      for (int64_t i = tid; i < ROWS * Rp; i += kThreads) {  // padded channels: tanh(0) * sigmoid(0) = 0
        const float* pr = pre + (i / Rp) * stride;
        const int64_t c = i % Rp;
        g[(i / Rp) * stride + c] = tanhf(pr[c]) / (1.0f + expf(-pr[Rp + c]));
      }
      __syncthreads();
      const WT* wrs = matrix(p, cache, 2 * l + 1);
      const float* brs = a.b_rs + l * (Rp + Sp);
      for (int64_t m = tid; m < Rp + Sp; m += kThreads) {  // residual rows [0, Rp), skip rows [Rp, Rp + Sp)
        float acc[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[r] = brs[m];
        dot_rows<WT, ROWS>(wrs, Rp + Sp, R, m, R, g, stride, acc);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          if (m < Rp) x[r * stride + m] += acc[r];
          else skip[r * stride + m - Rp] += acc[r];
        }
      }
      __syncthreads();
    }
    for (int64_t i = tid; i < ROWS * Sp; i += kThreads) {
      float& v = skip[(i / Sp) * stride + i % Sp];
      v = fmaxf(v, 0.0f);
    }
    __syncthreads();
    const WT* wo = matrix(p, cache, 2 * L);
    for (int64_t m = tid; m < Ap; m += kThreads) {
      float acc[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[r] = a.b_out[m];
      dot_rows<WT, ROWS>(wo, Ap, S, m, S, skip, stride, acc);
#pragma unroll
      for (int r = 0; r < ROWS; ++r) o[r * stride + m] = fmaxf(acc[r], 0.0f);
    }
    __syncthreads();
    const WT* we = matrix(p, cache, 2 * L + 1);
    for (int64_t m = tid; m < Ap; m += kThreads) {
      float acc[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[r] = a.b_end[m];
      dot_rows<WT, ROWS>(we, Ap, A, m, A, o, stride, acc);
#pragma unroll
      for (int r = 0; r < ROWS; ++r) lg[r * stride + m] = acc[r];
    }
    __syncthreads();
    const int warp = tid / 32, lane = tid % 32;
    if (warp < nb) {
      const int64_t b = row0 + warp;
      const float* row_lg = lg + warp * stride;
      if (a.logits) {
        for (int64_t i = lane; i < A; i += 32) a.logits[(b * T + s) * A + i] = row_lg[i];
      }
      int64_t y;
      if (a.forced) {
        y = a.forced[b * T + s];
      } else {
        double* z = static_cast<double*>(a.workspace) + b * 2 * A;
        int* order = reinterpret_cast<int*>(static_cast<double*>(a.workspace) + a.B * 2 * A) + b * A;
        y = draw(a, row_lg, a.noise[b * T + s], z, z + A, order);
      }
      if (lane == 0) {
        a.samples[b * T + s] = y;
        prev[2 * warp] = prev[2 * warp + 1];
        prev[2 * warp + 1] = y;
      }
    }
    __syncthreads();
  }
  if (tid < nb * 2) a.prev[row0 * 2 + tid] = prev[tid];
}

template <typename WT, int ROWS>
cudaError_t launch(const Params<WT>& p, unsigned blocks, size_t smem, cudaStream_t stream) {
  void (*kernel)(const Params<WT>) = &wavenet_kernel<WT, ROWS>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  Params<WT> copy = p;
  void* args[] = {&copy};
  return cudaLaunchKernel(kernel, dim3(blocks), dim3(kThreads), args, smem, stream);
}

cudaError_t optin_shared_bytes(int64_t* available) {
  int device = 0, bytes = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  *available = bytes;
  return err;
}

template <typename WT>
cudaError_t run(const ArkernWaveNetArgs* a, cudaStream_t stream) {
  if (a->B == 0 || a->T == 0) return cudaSuccess;
  Params<WT> p{};
  p.a = *a;
  p.Rp = pad16(a->R);
  p.Sp = pad16(a->S);
  p.Ap = pad16(a->A);
  p.dil_size = 2 * p.Rp * 2 * a->R;
  p.rs_size = (p.Rp + p.Sp) * a->R;
  p.out_size = p.Ap * a->S;
  p.end_size = p.Ap * a->A;
  int64_t available = 0;
  int device = 0, sms = 1;
  cudaError_t err = optin_shared_bytes(&available);
  if (err == cudaSuccess) err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  // rows per block: as few as keep every SM busy (more blocks, shorter steps), up to 4 (one warp per draw)
  int rows = a->B <= sms ? 1 : (a->B <= 2 * static_cast<int64_t>(sms) ? 2 : 4);
  const int64_t per_row = row_bytes(p.Rp, p.Sp, p.Ap);
  while (rows > 1 && rows * per_row > available) rows /= 2;
  if (rows * per_row > available) return cudaErrorInvalidValue;
  // cache the longest prefix of the matrices that fits after the activations
  int64_t cached_bytes = 0;
  for (int64_t k = 0; k < 2 * a->L + 2; ++k) {
    const int64_t size = k == 2 * a->L ? p.out_size : k == 2 * a->L + 1 ? p.end_size
                         : k % 2 == 0 ? p.dil_size : p.rs_size;
    const int64_t bytes = size * static_cast<int64_t>(sizeof(WT));
    if (cached_bytes + bytes + rows * per_row > available) break;
    cached_bytes += bytes;
    p.n_cached = k + 1;
  }
  p.act_offset = cached_bytes;  // every matrix is a multiple of 16 elements: the activations stay aligned
  const size_t smem = static_cast<size_t>(p.act_offset + rows * per_row);
  const int64_t blocks = (a->B + rows - 1) / rows;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  switch (rows) {
    case 4: return launch<WT, 4>(p, static_cast<unsigned>(blocks), smem, stream);
    case 2: return launch<WT, 2>(p, static_cast<unsigned>(blocks), smem, stream);
    default: return launch<WT, 1>(p, static_cast<unsigned>(blocks), smem, stream);
  }
}

}  // namespace

extern "C" int64_t arkern_wavenet_workspace_bytes(int64_t B, int64_t A) {
  return B * A * static_cast<int64_t>(2 * sizeof(double) + sizeof(int));
}

extern "C" cudaError_t arkern_wavenet_shared_bytes(int64_t R, int64_t S, int64_t A, int64_t* per_row,
                                                   int64_t* available) {
  *per_row = row_bytes(pad16(R), pad16(S), pad16(A));
  return optin_shared_bytes(available);
}

extern "C" cudaError_t arkern_wavenet_generate_cuda(const ArkernWaveNetArgs* a, cudaStream_t stream) {
  return a->weight_dtype == ARKERN_W_BF16 ? run<uint16_t>(a, stream) : run<float>(a, stream);
}
