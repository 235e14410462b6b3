// causal_conv1d_varlen_states CPU kernel. Semantics: arkern/reference/causal_conv1d_varlen.py.
//
// The result has shape (batch, dim, state_len) and strides (state_len * dim, 1, dim): the memory of a contiguous
// (batch, state_len, dim) tensor, as causal-conv1d returns it (allocated with those strides, not as a view). Row j
// of sequence i is token `end_i - state_len + j` of x when that token belongs to the sequence, else zeros, so
// the kernel is a gather of whole token rows: a memcpy per row when x's rows are contiguous, a strided
// element copy otherwise. The copy moves bytes, so every dtype takes the same path. Rows are split over
// threads. cu_seqlens is re-checked here (start >= 0, non-decreasing, last value = total tokens), so no
// caller can make the kernel read outside x.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace {

template <typename I>
void read_bounds(const at::Tensor& cu, std::vector<int64_t>& out) {
  const I* p = cu.data_ptr<I>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(p[i]);
}

// cu_seqlens as int64 host values, checked so that every [start, end) lies inside [0, total).
std::vector<int64_t> checked_bounds(const at::Tensor& cu_seqlens, int64_t total) {
  const auto cu = cu_seqlens.contiguous();
  std::vector<int64_t> b(cu.numel());
  if (cu.scalar_type() == at::kInt) {
    read_bounds<int32_t>(cu, b);
  } else {
    read_bounds<int64_t>(cu, b);
  }
  TORCH_CHECK(b[0] >= 0, "causal_conv1d_varlen_states: cu_seqlens must start at a token index >= 0, got ", b[0]);
  for (size_t i = 1; i < b.size(); ++i)
    TORCH_CHECK(b[i] >= b[i - 1], "causal_conv1d_varlen_states: cu_seqlens must be non-decreasing, but cu_seqlens[",
                i, "] = ", b[i], " < cu_seqlens[", i - 1, "] = ", b[i - 1]);
  TORCH_CHECK(b.back() == total, "causal_conv1d_varlen_states: cu_seqlens must end at the number of tokens in x (",
              total, "), got last value ", b.back());
  return b;
}

// Large outputs ask for transparent huge pages before their first touch (with THP in "madvise" mode the
// first-touch page faults of a fresh multi-MB output otherwise cost as much as the copy). Advisory only.
void advise_huge_pages(const at::Tensor& t) {
#ifdef __linux__
  const uintptr_t huge = uintptr_t(2) << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr()), bytes = t.nbytes();
  const uintptr_t lo = (p + huge - 1) & ~(huge - 1), hi = (p + bytes) & ~(huge - 1);
  if (bytes >= 4 * huge && hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

// n elements of type U from src (stride `stride`, in elements) to contiguous dst.
template <typename U>
void copy_strided(char* dst, const char* src, int64_t n, int64_t stride) {
  U* d = reinterpret_cast<U*>(dst);
  const U* s = reinterpret_cast<const U*>(src);
  for (int64_t e = 0; e < n; ++e) d[e] = s[e * stride];
}

void copy_row(char* dst, const char* src, int64_t n, int64_t stride, int64_t size) {
  if (stride == 1) {
    std::memcpy(dst, src, static_cast<size_t>(n * size));
    return;
  }
  switch (size) {
    case 2: copy_strided<uint16_t>(dst, src, n, stride); break;
    case 4: copy_strided<uint32_t>(dst, src, n, stride); break;
    case 8: copy_strided<uint64_t>(dst, src, n, stride); break;
    default:
      for (int64_t e = 0; e < n; ++e) std::memcpy(dst + e * size, src + e * stride * size, static_cast<size_t>(size));
  }
}

at::Tensor causal_conv1d_varlen_states_cpu(const at::Tensor& x, const at::Tensor& cu_seqlens, int64_t state_len) {
  TORCH_CHECK(x.dim() == 2, "causal_conv1d_varlen_states: x must be (total_tokens, dim), got ", x.sizes());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 1 &&
                  (cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong),
              "causal_conv1d_varlen_states: cu_seqlens must be a non-empty 1-D int32 or int64 tensor, got ",
              cu_seqlens.scalar_type(), " ", cu_seqlens.sizes());
  TORCH_CHECK(cu_seqlens.device().is_cpu(), "causal_conv1d_varlen_states: cu_seqlens must be on the CPU like x");
  TORCH_CHECK(state_len >= 1, "causal_conv1d_varlen_states: state_len must be >= 1, got ", state_len);
  const int64_t total = x.size(0), dim = x.size(1), batch = cu_seqlens.numel() - 1;
  const std::vector<int64_t> bounds = checked_bounds(cu_seqlens, total);
  auto states = at::empty_strided({batch, dim, state_len}, {state_len * dim, 1, dim}, x.options());
  const int64_t rows = batch * state_len;
  if (rows == 0 || dim == 0) return states;
  advise_huge_pages(states);

  const int64_t size = static_cast<int64_t>(x.element_size());
  const int64_t sx_tok = x.stride(0), sx_dim = x.stride(1);
  const char* xp = static_cast<const char*>(x.data_ptr());
  char* sp = static_cast<char*>(states.data_ptr());
  const int64_t row_bytes = dim * size;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / row_bytes);  // ~64 KB of copying per task
  at::parallel_for(0, rows, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t i = r / state_len, j = r % state_len;
      const int64_t src = bounds[i + 1] - state_len + j;  // the token slot j of sequence i holds
      char* dst = sp + r * row_bytes;
      if (src < bounds[i]) {
        std::memset(dst, 0, static_cast<size_t>(row_bytes));  // before the sequence's first token
      } else {
        copy_row(dst, xp + src * sx_tok * size, dim, sx_dim, size);
      }
    }
  });
  return states;
}

}  // namespace

TORCH_LIBRARY_IMPL(arkern, CPU, m) {
  m.impl("causal_conv1d_varlen_states", &causal_conv1d_varlen_states_cpu);
}
