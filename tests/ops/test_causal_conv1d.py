"""causal_conv1d: every backend against the reference, forward and gradients (x, weight, bias,
initial_state); states; causality; opcheck; torch.compile; the nn layer; bad input.
Decode (causal_conv1d_update) is tested in test_causal_conv1d_update.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arkern.nn import CausalConv1d
from arkern.ops import causal_conv1d
from arkern.ops.causal_conv1d import BACKENDS
from arkern.reference import causal_conv1d as ref
from arkern.testing import assert_close, channels_last_1d, noncontiguous
from tests.conftest import kernel_backends

KERNELS = kernel_backends(BACKENDS)


def _cpu_available() -> bool:
    return not BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float64)


def _inputs(B, cin, cout, groups, K, d, T, dtype, *, bias=True, init=False):
    x = torch.randn(B, cin, T, dtype=dtype)
    w = torch.randn(cout, cin // groups, K, dtype=dtype) / (cin // groups * K) ** 0.5
    b = torch.randn(cout, dtype=dtype) if bias else None
    i = torch.randn(B, cin, (K - 1) * d, dtype=dtype) if init else None
    return x, w, b, i


def _leaves(ts):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in ts]


def _check(backend, x, w, b, i, d, groups, activation, dtype, *, layout=None):
    """Forward, final state and all four gradients of `backend` vs the reference."""
    got, exp = _leaves((x, w, b, i)), _leaves((x, w, b, i))
    if layout is not None:  # same values, other strides; still a leaf that collects its gradient
        got[0] = layout(x.detach()).requires_grad_()
        assert not got[0].is_contiguous()
    y, f = causal_conv1d(got[0], got[1], got[2], d, groups, activation, got[3], True, backend=backend)
    yr, fr = ref.causal_conv1d(exp[0], exp[1], exp[2], d, groups, activation, exp[3], True)
    assert_close(y, yr, name="y", dtype=dtype)
    assert_close(f, fr, name="final_state", dtype=dtype)
    gy, gf = torch.randn_like(yr), torch.randn_like(fr)
    ((y * gy).sum() + (f * gf).sum()).backward()
    ((yr * gy).sum() + (fr * gf).sum()).backward()
    for name, a, e in zip(("grad x", "grad weight", "grad bias", "grad initial_state"), got, exp):
        if a is not None:
            assert_close(a.grad, e.grad, name=name, dtype=dtype, scale=4)


# (B, Cin, Cout, groups, K, dilation, T): depthwise, dense, intermediate groupings; K 1..8; T short and long
CONFIGS = [
    (2, 8, 8, 8, 4, 1, 129),   # Mamba's depthwise K=4
    (1, 5, 5, 5, 2, 1, 1),     # T=1, batch 1
    (2, 7, 7, 7, 3, 2, 2),     # T shorter than S0
    (2, 6, 6, 6, 5, 3, 151),
    (1, 3, 3, 3, 7, 8, 151),
    (2, 4, 4, 4, 8, 1, 7),     # generic-K depthwise, T < S0
    (3, 6, 6, 6, 1, 1, 7),     # K=1
    (2, 4, 6, 1, 2, 8, 129),   # dense, WaveNet-style K=2
    (1, 6, 4, 1, 3, 2, 7),
    (2, 8, 12, 4, 4, 3, 151),  # intermediate grouping
    (2, 6, 6, 3, 5, 2, 2),     # grouped, T < S0
    (1, 4, 8, 4, 3, 1, 129),   # depthwise with channel multiplier 2 (groups == Cin != Cout)
]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "B{}-C{}-O{}-g{}-K{}-d{}-T{}".format(*c))
@pytest.mark.parametrize("activation", [None, "silu"])
def test_matches_reference(backend, dtype, cfg, activation):
    B, cin, cout, groups, K, d, T = cfg
    x, w, b, i = _inputs(B, cin, cout, groups, K, d, T, dtype, init=True)
    _check(backend, x, w, b, None, d, groups, activation, dtype)
    _check(backend, x, w, None, i, d, groups, activation, dtype)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("layout", [noncontiguous, channels_last_1d], ids=["strided", "channel_last"])
@pytest.mark.parametrize("groups,cout", [(16, 16), (1, 8), (4, 8)])
def test_noncontiguous_and_channel_last(backend, layout, groups, cout):
    x, w, b, i = _inputs(2, 16, cout, groups, 4, 2, 37, torch.float64, init=True)
    _check(backend, x, noncontiguous(w, 0), b, noncontiguous(i, 1), 2, groups, "silu", torch.float64, layout=layout)
    _check(backend, x, w, b, None, 2, groups, None, torch.float64, layout=layout)


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("groups", [1, 6])
def test_chunked_with_states_equals_full_sequence(backend, groups):
    # y over [x1 | x2] == y over x1, then x2 started from x1's final state; final states agree too
    K, d = 3, 4
    x, w, b, _ = _inputs(2, 6, 6, groups, K, d, 40, torch.float64)
    y_full, f_full = causal_conv1d(x, w, b, d, groups, "silu", None, True, backend=backend)
    for cut in (3, 8, 9, 25):  # chunks shorter and longer than S0 = 8
        y1, f1 = causal_conv1d(x[:, :, :cut], w, b, d, groups, "silu", None, True, backend=backend)
        y2, f2 = causal_conv1d(x[:, :, cut:], w, b, d, groups, "silu", f1, True, backend=backend)
        assert_close(torch.cat([y1, y2], dim=-1), y_full, name=f"chunked y (cut {cut})")
        assert_close(f2, f_full, name=f"final state (cut {cut})")
    # the final state of a long sequence is its last S0 inputs; of a short one, padded on the left
    assert torch.equal(f_full, x[:, :, -K * d + d:])
    init = torch.randn(2, 6, (K - 1) * d, dtype=torch.float64)
    _, f_short = causal_conv1d(x[:, :, :3], w, b, d, groups, None, init, True, backend=backend)
    assert torch.equal(f_short, torch.cat([init[:, :, 3:], x[:, :, :3]], dim=-1))
    _, f_zero = causal_conv1d(x[:, :, :3], w, b, d, groups, None, None, True, backend=backend)
    assert torch.equal(f_zero[:, :, :5], torch.zeros(2, 6, 5, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("groups,cout,K,d", [(4, 4, 4, 1), (4, 4, 3, 3), (1, 2, 2, 5), (2, 4, 5, 2)])
def test_exact_causality_and_dilation_holes(backend, groups, cout, K, d):
    # dy[:, :, t] / dx[:, :, t'] is exactly 0 for t' > t, and for lags t - t' that are not a tap (k*d)
    T = 23
    x = torch.randn(1, 4, T, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, 4 // groups, K, dtype=torch.float64)
    y = causal_conv1d(x, w, None, d, groups, "silu", backend=backend)
    for t in range(T):
        (g,) = torch.autograd.grad(y[0, :, t].sum(), x, retain_graph=True)
        lag = t - torch.arange(T)
        reachable = (lag >= 0) & (lag <= (K - 1) * d) & (lag % d == 0)
        assert torch.all(g[0][:, ~reachable] == 0), f"output {t} sees an input it must not"
        assert torch.all(g[0][:, reachable].abs().sum(0) > 0)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), groups=st.integers(1, 3), cpg=st.integers(1, 3), mult=st.integers(1, 2),
       K=st.integers(1, 6), d=st.integers(1, 5), T=st.integers(1, 40), activation=st.sampled_from([None, "silu"]),
       bias=st.booleans(), init=st.booleans(), depthwise=st.booleans())
def test_property_cpu(B, groups, cpg, mult, K, d, T, activation, bias, init, depthwise):
    if not _cpu_available():
        pytest.skip("cpu backend unavailable")
    cin = groups * cpg
    groups, cout = (cin, cin) if depthwise else (groups, groups * mult)
    x, w, b, i = _inputs(B, cin, cout, groups, K, d, T, torch.float64, bias=bias, init=init)
    _check("cpu", x, w, b, i, d, groups, activation, torch.float64)


def test_large_depthwise_float32():
    # big enough to be split across threads, with rows of every length class
    if not _cpu_available():
        pytest.skip("cpu backend unavailable")
    x, w, b, i = _inputs(3, 64, 64, 64, 4, 1, 1000, torch.float32, init=True)
    _check("cpu", x, w, b, i, 1, 64, "silu", torch.float32)


def test_opcheck():
    if not _cpu_available():
        pytest.skip("cpu backend unavailable")
    for groups, cout in ((6, 6), (2, 4)):
        x, w, b, i = _inputs(2, 6, cout, groups, 3, 2, 9, torch.float64, init=True)
        args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), i.requires_grad_(), 2, groups, True)
        torch.library.opcheck(torch.ops.arkern.causal_conv1d.default, args)
        torch.library.opcheck(torch.ops.arkern.causal_conv1d.default, (x, w, None, None, 1, groups, False))


def test_nn_layer_is_drop_in_for_conv1d():
    conv = torch.nn.Conv1d(6, 4, 3, dilation=2, groups=2).double()
    layer = CausalConv1d(6, 4, 3, dilation=2, groups=2, dtype=torch.float64)
    layer.load_state_dict(conv.state_dict())  # same keys, same shapes
    assert isinstance(layer, torch.nn.Conv1d)
    x = torch.randn(2, 6, 11, dtype=torch.float64)
    assert_close(layer(x), ref.causal_conv1d(x, conv.weight, conv.bias, 2, 2), name="layer")
    init = torch.randn(2, 6, 4, dtype=torch.float64)
    assert_close(layer(x, initial_state=init), ref.causal_conv1d(x, conv.weight, conv.bias, 2, 2, None, init),
                 name="layer with initial_state")
    assert layer.init_state(5).shape == (5, 6, 4) and not layer.init_state(5).any()


@pytest.mark.parametrize("groups,activation", [(6, "silu"), (2, None)])
def test_nn_layer_step_matches_forward(groups, activation):
    layer = CausalConv1d(6, 6, 4, dilation=2, groups=groups, activation=activation, dtype=torch.float64)
    x = torch.randn(3, 6, 13, dtype=torch.float64)
    state = layer.init_state(3)
    steps = torch.stack([layer.step(x[:, :, t], state) for t in range(13)], dim=-1)
    assert_close(steps, layer(x), name="step-by-step")


def test_compile_fullgraph():
    model = torch.nn.Sequential(CausalConv1d(8, 8, 4, groups=8, activation="silu"),
                                CausalConv1d(8, 4, 2, dilation=4))
    x = torch.randn(2, 8, 33)
    compiled = torch.compile(model, fullgraph=True)
    assert_close(compiled(x), model(x), name="compiled")

    def decode(x, states):  # WaveNet-style cached decoding: step() mutates the states in place
        outs = []
        for t in range(x.shape[-1]):
            h = x[:, :, t]
            for layer, state in zip(model, states):
                h = layer.step(h, state)
            outs.append(h)
        return torch.stack(outs, dim=-1)

    states = [[layer.init_state(2) for layer in model] for _ in range(2)]
    with torch.no_grad():
        y = torch.compile(decode, fullgraph=True)(x[:, :, :6], states[0])
        assert_close(y, decode(x[:, :, :6], states[1]), name="compiled decode")
        assert_close(y, model(x[:, :, :6]), name="compiled decode vs forward")
    for a, e in zip(*states):
        assert torch.equal(a, e)


def _bad(x, w, b, i, **kw):
    kw.setdefault("groups", 6)  # the inputs are depthwise, K=3, dilation 2
    kw.setdefault("dilation", 2)
    return causal_conv1d(x, w, b, initial_state=i, **kw)


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w, b, i: _bad(x[0], w, b, i), ValueError, "x must have 3 dimensions"),
    (lambda x, w, b, i: _bad(x, w[0], b, i), ValueError, "weight must have 3 dimensions"),
    (lambda x, w, b, i: _bad(x[:, :5], w.repeat(1, 6, 1), b, None, groups=1), ValueError,
     "x has 5 channels but weight expects 6"),
    (lambda x, w, b, i: _bad(x, w, b, i, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda x, w, b, i: _bad(x, w, b, None, dilation=1.5), TypeError, "dilation must be an int"),
    (lambda x, w, b, i: _bad(x, w, b, None, groups=4), ValueError, "groups=4 must divide"),
    (lambda x, w, b, i: _bad(x, w, b, None, groups=0), ValueError, "groups must be >= 1"),
    (lambda x, w, b, i: _bad(x, w, b[:2], i), ValueError, "bias must have shape"),
    (lambda x, w, b, i: _bad(x, w, b, i[:, :, :2]), ValueError, "initial_state must have shape"),
    (lambda x, w, b, i: _bad(x, w, b, i.float()), TypeError, "initial_state has dtype float32"),
    (lambda x, w, b, i: _bad(x, w.float(), b, i), TypeError, "weight has dtype"),
    (lambda x, w, b, i: _bad(x, w, b, i, activation="relu"), ValueError, "activation must be one of"),
    (lambda x, w, b, i: _bad(x.int(), w, b, i), TypeError, "x must have dtype"),
    (lambda x, w, b, i: _bad(x, w, b, i, backend="nope"), ValueError, "backend must be one of"),
    (lambda x, w, b, i: _bad(x.half(), w.half(), b.half(), i.half(), backend="cpu"), RuntimeError,
     "float16 is not supported"),
])
def test_bad_input(call, exc, match):
    if "float16" in match and BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float64):
        pytest.skip("cpu backend unavailable (the float16 check is about its dtype support)")
    x, w, b, i = _inputs(2, 6, 6, 6, 3, 2, 9, torch.float64, init=True)
    with pytest.raises(exc, match=match):
        call(x, w, b, i)


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("groups,cout", [(4, 4), (1, 6)])
@pytest.mark.parametrize("dilation", [5, 10**9, 2**62])
def test_taps_before_time_zero_cost_nothing(backend, groups, cout, dilation):
    # With no initial state, taps lagging >= T read only zeros: dilation >= T leaves the last tap alone (the
    # current input), with no memory or error that grows with the dilation; the dropped taps get zero grad.
    x, w, b, _ = _inputs(2, 4, cout, groups, 3, 1, 5, torch.float64)
    x, w, b = _leaves((x, w, b))
    y = causal_conv1d(x, w, b, dilation, groups, backend=backend)
    xe, we, be = _leaves((x, w, b))
    if dilation < 5:
        ye = ref.causal_conv1d(xe, we, be, dilation, groups)
    else:
        ye = ref.causal_conv1d(xe, we[..., -1:], be, 1, groups)
    assert_close(y, ye, name="y", dtype=torch.float64)
    g = torch.randn_like(y)
    y.backward(g)
    ye.backward(g)
    assert_close(x.grad, xe.grad, name="grad x", dtype=torch.float64)
    assert_close(w.grad, we.grad, name="grad weight", dtype=torch.float64)
    if dilation >= 5:
        assert torch.equal(w.grad[..., :-1], torch.zeros_like(w.grad[..., :-1]))


def test_kernel_checks_dilation_overflow_directly():
    if not _cpu_available():
        pytest.skip("cpu backend unavailable")
    x, w = torch.randn(1, 1, 8), torch.randn(1, 1, 3)
    with pytest.raises(RuntimeError, match="dilation"):
        torch.ops.arkern.causal_conv1d(x, w, None, None, 2**62, 1, False)


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
def test_float32_silu_at_the_extremes(backend):
    # the vectorised exp of the C++ kernel clamped its argument: silu(-1e37) came out as -0.061
    v = torch.tensor([-3e38, -1e37, -1e4, -100.0, -89.0, -88.5, -87.5, -20.0, 0.0, 20.0, 1e30, float("inf"),
                      float("-inf"), float("nan")])
    x = v.view(1, -1, 1)
    y = causal_conv1d(x, torch.ones(v.numel(), 1, 1), None, 1, v.numel(), "silu", backend=backend).flatten()
    assert_close(y, torch.nn.functional.silu(v), name="silu", dtype=torch.float32)
    assert torch.equal(torch.signbit(y[:5]), torch.signbit(torch.nn.functional.silu(v[:5])))
