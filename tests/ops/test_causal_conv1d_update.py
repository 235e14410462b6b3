"""causal_conv1d_update: decoding token by token (shift register, ring buffer, padding rows, multi-token
steps) equals causal_conv1d on the full sequence, state contents included; kernels vs the reference
update; opcheck; bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arkern.ops import causal_conv1d_update
from arkern.ops.causal_conv1d import UPDATE_BACKENDS
from arkern.reference import causal_conv1d as ref
from arkern.testing import assert_close, noncontiguous
from tests.conftest import kernel_backends

ALL = ["reference"] + kernel_backends(UPDATE_BACKENDS)
F64 = torch.float64

# (Cin, Cout, groups, K, dilation)
CONVS = [(8, 8, 8, 4, 1), (6, 6, 6, 3, 3), (4, 4, 4, 1, 1), (4, 6, 2, 2, 4), (6, 6, 1, 5, 2)]


def _conv(cin, cout, groups, K, dtype=F64):
    return torch.randn(cout, cin // groups, K, dtype=dtype), torch.randn(cout, dtype=dtype)


def _ring_state(full, seqlens, S):
    """Ring state after each row b has seen full[b, :, :seqlens[b]]: slot tau mod S holds time tau (zeros
    for times < 0)."""
    B, C, _ = full.shape
    state = full.new_zeros(B, C, S)
    for b in range(B):
        for tau in range(max(0, int(seqlens[b]) - S), int(seqlens[b])):
            state[b, :, tau % S] = full[b, :, tau]
    return state


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: "C{}-O{}-g{}-K{}-d{}".format(*c))
@pytest.mark.parametrize("chunk", [1, 3])
def test_shift_register_decode_equals_full_sequence(backend, cfg, chunk):
    cin, cout, groups, K, d = cfg
    B, T, s0 = 3, 14, (K - 1) * d
    w, b = _conv(cin, cout, groups, K)
    x = torch.randn(B, cin, T, dtype=F64)
    init = torch.randn(B, cin, s0, dtype=F64)
    y_full, final = ref.causal_conv1d(x, w, b, d, groups, "silu", init, True)
    state = noncontiguous(init.clone(), 1)  # any strides: updated in place through them
    ys = []
    for t0 in range(0, T, chunk):
        xt = x[:, :, t0:t0 + chunk]
        if chunk == 1:
            ys.append(causal_conv1d_update(xt[:, :, 0], state, w, b, d, groups, "silu", backend=backend)[..., None])
        else:
            ys.append(causal_conv1d_update(xt, state, w, b, d, groups, "silu", backend=backend))
    assert_close(torch.cat(ys, dim=-1), y_full, name="decoded y")
    assert_close(state, final, name="state == final state")


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: "C{}-O{}-g{}-K{}-d{}".format(*c))
@pytest.mark.parametrize("chunk,extra", [(1, 0), (1, 5), (2, 3), (4, 1)])
def test_ring_buffer_decode_equals_full_sequence(backend, cfg, chunk, extra):
    # rows at different positions (cache_seqlens differ); S = S0 + extra slots; chunk > S wraps the ring
    cin, cout, groups, K, d = cfg
    B, steps, s0 = 4, 9, (K - 1) * d
    S = s0 + extra
    w, b = _conv(cin, cout, groups, K)
    seqlens = torch.tensor([0, 3, 11, 1], dtype=torch.int32)
    full = torch.randn(B, cin, int(seqlens.max()) + steps * chunk, dtype=F64)
    y_full = ref.causal_conv1d(full, w, b, d, groups, None)
    state = _ring_state(full, seqlens, S)
    for j in range(steps):
        pos = seqlens.long()[:, None] + torch.arange(chunk) + j * chunk  # (B, chunk) absolute times
        xt = full.gather(2, pos[:, None, :].expand(B, cin, chunk))
        seq = (seqlens + j * chunk).to(torch.int32)
        xin = xt[:, :, 0] if chunk == 1 else xt
        y = causal_conv1d_update(xin, state, w, b, d, groups, None, cache_seqlens=seq, backend=backend)
        y = y[..., None] if chunk == 1 else y
        assert_close(y, y_full.gather(2, pos[:, None, :].expand(B, cout, chunk)), name=f"ring step {j}")
    assert_close(state, _ring_state(full, seqlens + steps * chunk, S), name="ring state contents")


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("ring", [False, True])
@pytest.mark.parametrize("groups,cout", [(6, 6), (3, 6)])
def test_padding_rows_and_state_pool(backend, ring, groups, cout):
    cin, K, d, pool, T = 6, 3, 2, 7, 6
    s0 = (K - 1) * d
    w, b = _conv(cin, cout, groups, K)
    idx = torch.tensor([5, -1, 0, 2, -3], dtype=torch.int32)
    B = idx.numel()
    x = torch.randn(B, cin, T, dtype=F64)
    y_full, final = ref.causal_conv1d(x, w, b, d, groups, None, None, True)
    S = s0 + (3 if ring else 0)
    state = torch.randn(pool, cin, S, dtype=F64)
    state[idx[idx >= 0].long()] = 0
    before = state.clone()
    for t in range(T):
        seq = torch.full((B,), t, dtype=torch.int32) if ring else None
        y = causal_conv1d_update(x[:, :, t], state, w, b, d, groups, None, cache_seqlens=seq,
                                 conv_state_indices=idx, backend=backend)
        live = idx >= 0
        assert torch.all(y[~live] == 0), "padding rows must output zero"
        assert_close(y[live], y_full[live, :, t], name=f"live rows, step {t}")
    untouched = torch.ones(pool, dtype=torch.bool)
    untouched[idx[idx >= 0].long()] = False
    assert torch.equal(state[untouched], before[untouched]), "rows not selected must be untouched"
    if not ring:
        for row_b, row in enumerate(idx.tolist()):
            if row >= 0:
                assert_close(state[row], final[row_b], name=f"state row {row}")


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 4), groups=st.integers(1, 3), cpg=st.integers(1, 3), depthwise=st.booleans(),
       K=st.integers(1, 5), d=st.integers(1, 4), extra=st.integers(0, 4), t=st.integers(1, 7),
       ring=st.booleans(), pad=st.booleans(), silu=st.booleans(), seed=st.integers(0, 2**16))
def test_property_cpu_vs_reference_update(B, groups, cpg, depthwise, K, d, extra, t, ring, pad, silu, seed):
    # arbitrary state contents, ring positions (also past many wraps), pools and padding rows
    if UPDATE_BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), F64):
        pytest.skip("cpu backend unavailable")
    g = torch.Generator().manual_seed(seed)
    cin = groups * cpg
    groups, cout = (cin, cin) if depthwise else (groups, 2 * groups)
    S = (K - 1) * d + extra
    w = torch.randn(cout, cin // groups, K, dtype=F64, generator=g)
    b = torch.randn(cout, dtype=F64, generator=g)
    x = torch.randn(B, cin, t, dtype=F64, generator=g)
    pool = B + 2 if pad else B
    state = torch.randn(pool, cin, S, dtype=F64, generator=g)
    seq = torch.randint(0, 1000, (B,), dtype=torch.int32, generator=g) if ring else None
    idx = None
    if pad:
        idx = torch.randperm(pool, generator=g)[:B].to(torch.int32)
        idx[0] = -1
    act = "silu" if silu else None
    s_cpu, s_ref = state.clone(), state.clone()
    y = causal_conv1d_update(x, s_cpu, w, b, d, groups, act, seq, idx, backend="cpu")
    yr = ref.causal_conv1d_update(x, s_ref, w, b, d, groups, act, seq, idx)
    assert_close(y, yr, name="y")
    assert torch.equal(s_cpu, s_ref), "state updates differ"


@pytest.mark.parametrize("K", [2, 3, 4, 5])
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("extra", [0, 1])
def test_update_float32_large_batch(K, pad, extra):
    # the common decode step: depthwise, S = K-1 (or K: Mamba's d_conv-wide cache), one token, float32,
    # many channels (vectorised path)
    if UPDATE_BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float32):
        pytest.skip("cpu backend unavailable")
    w, b = _conv(600, 600, 600, K, torch.float32)
    x = torch.randn(16, 600, dtype=torch.float32)
    state = torch.randn(18, 600, K - 1 + extra)
    idx = torch.randperm(18)[:16].to(torch.int32)
    idx[3] = -1
    idx = idx if pad else None
    if not pad:
        state = state[:16]
    s_ref = state.clone()
    y = causal_conv1d_update(x, state, w, b, 1, 600, "silu", conv_state_indices=idx, backend="cpu")
    assert_close(y, ref.causal_conv1d_update(x, s_ref, w, b, 1, 600, "silu", conv_state_indices=idx), name="y")
    assert torch.equal(state, s_ref)


def test_opcheck():
    if UPDATE_BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), F64):
        pytest.skip("cpu backend unavailable")
    w, b = _conv(6, 6, 6, 3)
    x = torch.randn(3, 6, 2, dtype=F64)
    seq = torch.tensor([0, 4, 9], dtype=torch.int32)
    idx = torch.tensor([2, -1, 0], dtype=torch.int32)
    op = torch.ops.arkern.causal_conv1d_update.default
    torch.library.opcheck(op, (x, torch.randn(3, 6, 4, dtype=F64), w, b, 2, 6, True, seq, idx))
    torch.library.opcheck(op, (x, torch.randn(3, 6, 4, dtype=F64), w, None, 1, 6, False, None, None))


def _bad(x, state, w, b, **kw):
    kw.setdefault("groups", 6)
    kw.setdefault("dilation", 2)
    return causal_conv1d_update(x, state, w, b, **kw)


I32 = torch.int32


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, s, w, b: _bad(x[0], s, w, b), ValueError, "x must have 2 or 3 dimensions"),
    (lambda x, s, w, b: _bad(x, s[0], w, b), ValueError, "conv_state must have 3 dimensions"),
    (lambda x, s, w, b: _bad(x, s[:, :, :3], w, b), ValueError, r"conv_state must have shape \(pool, 6, S\)"),
    (lambda x, s, w, b: _bad(x, s[:, :5], w, b), ValueError, "conv_state must have shape"),
    (lambda x, s, w, b: _bad(x, s.float(), w, b), TypeError, "conv_state has dtype float32"),
    (lambda x, s, w, b: _bad(x, s[:2], w, b), ValueError, "conv_state has 2 rows but x has batch 3"),
    (lambda x, s, w, b: _bad(x[:, :5], s, w, b), ValueError, "groups=6 must divide"),
    (lambda x, s, w, b: _bad(x, s, w, b, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda x, s, w, b: _bad(x, s, w, b, groups=4), ValueError, "groups=4 must divide"),
    (lambda x, s, w, b: _bad(x, s, w, b, cache_seqlens=torch.zeros(3, dtype=torch.int64)), TypeError,
     "cache_seqlens must have dtype in \\(int32\\)"),
    (lambda x, s, w, b: _bad(x, s, w, b, cache_seqlens=torch.zeros(2, dtype=I32)), ValueError,
     "cache_seqlens must have shape"),
    (lambda x, s, w, b: _bad(x, s, w, b, conv_state_indices=torch.tensor([0, 1, 3], dtype=I32)), ValueError,
     "conv_state_indices must be < 3"),
    (lambda x, s, w, b: _bad(x, s, w, b, conv_state_indices=torch.tensor([0, 1, 1], dtype=I32)), ValueError,
     "conv_state_indices must not repeat"),
    (lambda x, s, w, b: _bad(x, s, w, b, conv_state_indices=torch.tensor([0, 1, 2])), TypeError,
     "conv_state_indices must have dtype"),
    (lambda x, s, w, b: _bad(x, s, w, b, activation="gelu"), ValueError, "activation must be one of"),
    (lambda x, s, w, b: _bad(x.half(), s.half(), w.half(), b.half(), backend="cpu"), RuntimeError,
     "float16 is not supported"),
])
def test_bad_input(call, exc, match):
    if "float16" in match and UPDATE_BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float64):
        pytest.skip("cpu backend unavailable (the float16 check is about its dtype support)")
    w, b = _conv(6, 6, 6, 3)
    x, state = torch.randn(3, 6, dtype=F64), torch.zeros(3, 6, 4, dtype=F64)
    with pytest.raises(exc, match=match):
        call(x, state, w, b)


def test_kernel_rejects_out_of_range_index_directly():
    # the C++ kernel re-checks what Python validated, so a direct op call cannot write out of bounds
    if UPDATE_BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), F64):
        pytest.skip("cpu backend unavailable")
    w, b = _conv(6, 6, 6, 3)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.arkern.causal_conv1d_update(torch.randn(2, 6, 1, dtype=F64), torch.zeros(2, 6, 4, dtype=F64), w, b,
                                              2, 6, False, None, torch.tensor([0, 2], dtype=I32))


def _step(backend, state, **kw):
    w, b = _conv(6, 6, 6, 3)
    return causal_conv1d_update(torch.randn(state.shape[0], 6, dtype=F64), state, w, b, 1, 6, backend=backend, **kw)


def _direct(state, idx=None, x=None):
    w, b = _conv(6, 6, 6, 3)
    x = torch.randn(2, 6, 1, dtype=F64) if x is None else x
    return torch.ops.arkern.causal_conv1d_update(x, state, w, b, 1, 6, False, None, idx)


CALLS = [pytest.param(lambda s, b=b: _step(b, s), id=b) for b in ["reference", "cpu", "triton"]] + [
    pytest.param(_direct, id="torch.ops")]


def _runnable(call_id):
    backend = "cpu" if call_id == "torch.ops" else call_id
    reasons = UPDATE_BACKENDS.not_supported_reasons(backend, torch.device("cpu"), F64)
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.mark.parametrize("call", CALLS)
def test_state_write_is_visible_to_autograd(call, request):
    # the write of conv_state bumps its version counter: a backward that saved the old state fails
    # instead of silently using the new values (torch's rule for every in-place op)
    _runnable(request.node.callspec.id)
    a = torch.randn(2, 6, 2, dtype=F64, requires_grad=True)
    state = torch.randn(2, 6, 2, dtype=F64)
    loss = (a * state).sum()  # saves state for the gradient of a
    version = state._version
    call(state)
    assert state._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("call", CALLS)
def test_state_must_not_be_a_leaf_requiring_grad(call, request):
    _runnable(request.node.callspec.id)
    state = torch.zeros(2, 6, 2, dtype=F64, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        call(state)
    with torch.no_grad():  # allowed there, as for any in-place op
        call(state)


@pytest.mark.parametrize("call", CALLS)
def test_inference_state_only_inside_inference_mode(call, request):
    _runnable(request.node.callspec.id)
    with torch.inference_mode():
        state = torch.zeros(2, 6, 2, dtype=F64)
        call(state)  # fine inside
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        call(state)


@pytest.mark.parametrize("backend", ALL)
def test_expanded_state_is_refused(backend):
    # an expand()-ed state would have its rows written over each other
    state = torch.zeros(1, 6, 2, dtype=F64).expand(2, 6, 2)
    with pytest.raises(ValueError, match="conv_state has internal overlap"):
        _step(backend, state)


def test_kernel_checks_its_own_preconditions():
    # whoever calls the C++ op directly: a repeated state row, an overlapping state, a state on another
    # device (meta) are refused before anything is written
    if UPDATE_BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), F64):
        pytest.skip("cpu backend unavailable")
    with pytest.raises(RuntimeError, match="repeats state row 1"):
        _direct(torch.zeros(3, 6, 2, dtype=F64), torch.tensor([1, 1], dtype=I32))
    with pytest.raises(RuntimeError, match="conv_state has internal overlap"):
        _direct(torch.zeros(1, 6, 2, dtype=F64).expand(2, 6, 2))
    with pytest.raises(ValueError, match="conv_state on meta"):
        _direct(torch.zeros(2, 6, 2, dtype=F64, device="meta"))
    state = torch.zeros(2, 6, 2, dtype=F64)
    with pytest.raises(RuntimeError, match="must not share memory with x"):
        _direct(state, x=state.view(-1)[:12].view(2, 6, 1))


@pytest.mark.parametrize("backend", ALL)
def test_zero_tokens(backend):
    # a step with no tokens returns (B, Cout, 0) and leaves the state as it was, on every backend
    w, b = _conv(6, 6, 6, 3)
    state = torch.randn(2, 6, 2, dtype=F64)
    before = state.clone()
    y = causal_conv1d_update(torch.randn(2, 6, 0, dtype=F64), state, w, b, 1, 6, backend=backend)
    assert y.shape == (2, 6, 0)
    assert torch.equal(state, before)
