"""causal_conv1d_varlen_states: every backend against the reference (values, dtype, channel-last strides,
gradient), the reference against the plain per-sequence formula and against causal_conv1d's final state;
upstream's own get-states case; opcheck; torch.compile; bad input. The `import causal_conv1d` shim and a
Mamba-style prefill + decode program: tests/applications/test_compat_causal_conv1d_install.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arkern.compat.causal_conv1d import causal_conv1d_varlen_states as compat_varlen_states
from arkern.ops import causal_conv1d, causal_conv1d_varlen_states
from arkern.ops.causal_conv1d_varlen import BACKENDS
from arkern.reference import causal_conv1d_varlen as ref
from arkern.testing import assert_close, noncontiguous
from tests.conftest import kernel_backends

ALL = ["reference"] + kernel_backends(BACKENDS)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _cu(seqlens: list[int], dtype: torch.dtype = torch.int32) -> torch.Tensor:
    return F.pad(torch.tensor(seqlens, dtype=torch.int64).cumsum(0), (1, 0)).to(dtype)


def _packed(seqlens: list[int], dim: int, dtype: torch.dtype) -> torch.Tensor:
    """(total_tokens, dim) as a column slice of a wider buffer (Mamba's xBC inside the in_proj output)."""
    wide = torch.randn(sum(seqlens), dim + 11).to(dtype)
    return wide[:, 3:3 + dim]


def _expected(x: torch.Tensor, cu: torch.Tensor, state_len: int) -> torch.Tensor:
    """The plain formula: each sequence as (dim, len), left-padded (or cropped: negative pad) to state_len."""
    b = cu.tolist()
    return torch.stack([F.pad(x[s:e].T, (state_len - (e - s), 0)) for s, e in zip(b[:-1], b[1:])])


def _check_layout(states: torch.Tensor, batch: int, dim: int, state_len: int) -> None:
    assert states.shape == (batch, dim, state_len)
    if batch and dim and state_len:
        assert states.stride() == (state_len * dim, 1, dim), states.stride()  # channel-last, as causal-conv1d


# (sequence lengths, state_len, dim): shorter than / equal to / longer than state_len, empty sequences,
# dim not a multiple of 16, batch 1, state_len 1, no sequences at all
CASES = [
    ([5, 1, 9, 3, 0, 4, 12], 4, 24),
    ([0, 0, 2], 3, 5),
    ([7], 7, 1),
    ([1], 6, 33),
    ([1, 30, 2, 0], 20, 37),
    ([0, 4, 3], 1, 17),
    ([], 3, 8),
]
CASE_IDS = ["mixed", "empty", "batch1-equal", "batch1-short", "long-state", "state1", "no-seq"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_is_the_per_sequence_formula(case):
    seqlens, state_len, dim = case
    x, cu = _packed(seqlens, dim, torch.float64), _cu(seqlens)
    states = ref.causal_conv1d_varlen_states(x, cu, state_len)
    _check_layout(states, len(seqlens), dim, state_len)
    if seqlens:
        assert torch.equal(states, _expected(x, cu, state_len))


def test_states_continue_causal_conv1d():
    """With state_len = K - 1 the state of a sequence is causal_conv1d's final state over that sequence."""
    seqlens, K, dim = [2, 3, 4, 9], 4, 6
    x, cu = _packed(seqlens, dim, torch.float64), _cu(seqlens)
    w = torch.randn(dim, 1, K, dtype=torch.float64)
    states = causal_conv1d_varlen_states(x, cu, K - 1)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        _, final = causal_conv1d(x[s:e].T.unsqueeze(0), w, groups=dim, return_final_state=True)
        assert torch.equal(states[i], final[0])


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference(backend, dtype, case):
    seqlens, state_len, dim = case
    x, cu = _packed(seqlens, dim, dtype), _cu(seqlens)
    states = causal_conv1d_varlen_states(x, cu, state_len, backend=backend)
    assert states.dtype == dtype
    _check_layout(states, len(seqlens), dim, state_len)
    assert torch.equal(states, ref.causal_conv1d_varlen_states(x, cu, state_len))  # a copy: exact


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": x.contiguous(), "token-strided": noncontiguous(x, dim=0),
            "channel-strided": noncontiguous(x, dim=1), "column-major": x.T.contiguous().T,
            "broadcast-token": x[:1].expand_as(x)}


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("layout", list(_layouts(torch.zeros(1, 1))))
def test_any_strides_and_index_dtype(backend, cu_dtype, layout):
    seqlens, state_len, dim = [3, 0, 8, 5], 5, 19
    x = _layouts(torch.randn(sum(seqlens), dim))[layout]
    cu = _cu(seqlens, cu_dtype)
    if layout == "token-strided":  # cu_seqlens strided too
        cu = torch.stack([cu, torch.full_like(cu, -9)], 1)[:, 0]
        assert not cu.is_contiguous()
    states = causal_conv1d_varlen_states(x, cu, state_len, backend=backend)
    _check_layout(states, len(seqlens), dim, state_len)
    assert torch.equal(states, _expected(x, cu, state_len))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient(backend, dtype):
    """grad x: each token kept in a state receives its slot's gradient, every other token zero."""
    seqlens, state_len, dim = [5, 1, 0, 9, 3], 4, 10
    cu = _cu(seqlens)
    x = torch.randn(sum(seqlens), dim, dtype=dtype)
    got, exp = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(len(seqlens), dim, state_len, dtype=dtype)
    (causal_conv1d_varlen_states(got, cu, state_len, backend=backend) * g).sum().backward()
    (ref.causal_conv1d_varlen_states(exp, cu, state_len) * g).sum().backward()
    assert_close(got.grad, exp.grad, name="grad x", dtype=dtype)
    kept = torch.zeros(sum(seqlens), dtype=torch.bool)
    src = ref.varlen_state_sources(cu, state_len)
    kept[src[src >= 0]] = True
    assert torch.all(got.grad[~kept] == 0) and torch.all(got.grad[kept].abs().sum(1) > 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("dim", [2048, 2048 + 16, 4096])
def test_upstream_get_states_case(dim, dtype):
    """causal-conv1d's own test: 100 sequences of 1..31 tokens, state_len 20, int64 cu_seqlens, exact."""
    seqlens = torch.randint(1, 32, (100,))
    x = torch.randn(int(seqlens.sum()), dim).to(dtype)
    cu = F.pad(seqlens.cumsum(0), (1, 0))
    out = compat_varlen_states(x, cu, 20)
    assert torch.equal(out, ref.causal_conv1d_varlen_states(x, cu, 20))


def test_opcheck():
    if BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float64):
        pytest.skip("cpu backend unavailable")
    op = torch.ops.arkern.causal_conv1d_varlen_states.default
    x = torch.randn(18, 7, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(op, (x, _cu([5, 0, 9, 4]), 6))
    torch.library.opcheck(op, (x[:, 1:6], _cu([18], torch.int64), 20))


def test_compile_fullgraph():
    seqlens, state_len, dim = [4, 1, 6], 3, 9
    x, cu = torch.randn(sum(seqlens), dim), _cu(seqlens)
    compiled = torch.compile(lambda x, cu: causal_conv1d_varlen_states(x, cu, state_len) * 2, fullgraph=True)
    assert torch.equal(compiled(x, cu), ref.causal_conv1d_varlen_states(x, cu, state_len) * 2)


X = torch.randn(10, 4)
CU = _cu([3, 7])


@pytest.mark.parametrize("args,exc,match", [
    ((X[0], CU, 2), ValueError, "x must have 2 dimensions"),
    ((X.int(), CU, 2), TypeError, "x must have dtype"),
    ((X, CU.float(), 2), TypeError, r"cu_seqlens must have dtype in \(int32, int64\)"),
    ((X, CU.unsqueeze(0), 2), ValueError, "cu_seqlens must have 1 dimensions"),
    ((X, CU[:0], 2), ValueError, "cu_seqlens must have batch \\+ 1 >= 1 entries"),
    ((X, torch.tensor([0, 7, 3, 10], dtype=torch.int32), 2), ValueError,
     r"cu_seqlens must be non-decreasing .* cu_seqlens\[2\] = 3 < cu_seqlens\[1\] = 7"),
    ((X, torch.tensor([0, 3, 9], dtype=torch.int32), 2), ValueError,
     r"cu_seqlens must end at the number of tokens in x \(x.shape\[0\] = 10\), got last value 9"),
    ((X, torch.tensor([0, 3, 11], dtype=torch.int32), 2), ValueError, "cu_seqlens must end at the number"),
    ((X, torch.tensor([-1, 3, 10], dtype=torch.int32), 2), ValueError, "cu_seqlens must start at a token index"),
    ((X, CU, 0), ValueError, "state_len must be >= 1, got 0"),
    ((X, CU, -3), ValueError, "state_len must be >= 1"),
    ((X, CU, 2.0), TypeError, "state_len must be an int"),
    ((X, CU, True), TypeError, "state_len must be an int"),
    (([[1.0]], CU, 2), TypeError, "x must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(args, exc, match):
    with pytest.raises(exc, match=f"causal_conv1d_varlen_states: {match}"):
        causal_conv1d_varlen_states(*args)
    with pytest.raises(exc, match=match):
        compat_varlen_states(*args)


@pytest.mark.parametrize("cu,match", [
    (torch.tensor([0, 7, 3, 10], dtype=torch.int32), "non-decreasing"),
    (torch.tensor([0, 3, 1 << 40]), "cu_seqlens must end at the number of tokens"),
    (torch.tensor([-5, 3, 10]), "start at a token index >= 0"),
])
def test_cpp_kernel_rechecks_cu_seqlens(cu, match):
    """Called past the Python validation (torch.ops directly), the C++ kernel refuses rather than read outside x."""
    if BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float32):
        pytest.skip("cpu backend unavailable")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.arkern.causal_conv1d_varlen_states(X, cu, 4)


def test_benchmark_baselines_compute_the_same():
    """The pure-PyTorch formulas the benchmarks compare against give the reference's results."""
    from arkern.bench.causal_conv1d_varlen import gather_varlen_states, pytorch_update, pytorch_varlen_states
    from arkern.reference.causal_conv1d import causal_conv1d_update as ref_update

    seqlens, state_len, dim = [5, 1, 0, 9, 4], 4, 12
    x, cu = _packed(seqlens, dim, torch.float64), _cu(seqlens, torch.int64)
    expected = ref.causal_conv1d_varlen_states(x, cu, state_len)
    for fn in (pytorch_varlen_states, gather_varlen_states):
        got = fn(x, cu, state_len)
        _check_layout(got, len(seqlens), dim, state_len)
        assert torch.equal(got, expected), fn.__name__
    w, b = torch.randn(dim, 4, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    state = torch.randn(3, dim, 4, dtype=torch.float64)
    state_ref = state.clone()
    for _ in range(3):
        xt = torch.randn(3, dim, dtype=torch.float64)
        expected = ref_update(xt, state_ref, w.unsqueeze(1), b, 1, dim, "silu")
        assert_close(pytorch_update(xt, state, w, b, True), expected, name="update")
        assert torch.equal(state, state_ref)
